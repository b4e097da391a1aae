//! Which PCI functions must not be touched: one behind a mounted filesystem
//! (or active swap), or behind a network interface that is up. Taking such a
//! function away from its driver would pull the host's disk or network.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path};

use crate::sysfs::Sysfs;

/// Why `bdf` (or a device below it, e.g. behind a bridge) is in use by the
/// host, or `None` when it is free to take.
pub fn busy_reason(sys: &Sysfs, bdf: &str) -> Option<String> {
    block_in_use(sys, bdf).or_else(|| net_in_use(sys, bdf))
}

/// Whether the resolved sysfs path of a device lies below the function.
fn below(path: &Path, bdf: &str) -> bool {
    path.components()
        .any(|c| matches!(c, Component::Normal(n) if n == bdf))
}

fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Block devices below the function: the disks, their partitions and every
/// device stacked on them (dm, md: `holders/`), by kernel name.
fn block_devices_below(sys: &Sysfs, bdf: &str) -> BTreeSet<String> {
    let block = sys.sys("block");
    let mut found = BTreeSet::new();
    let mut todo: Vec<String> = names_in(&block)
        .into_iter()
        .filter(|d| fs::canonicalize(block.join(d)).is_ok_and(|p| below(&p, bdf)))
        .collect();
    while let Some(dev) = todo.pop() {
        if !found.insert(dev.clone()) {
            continue;
        }
        let Ok(dir) = fs::canonicalize(block.join(&dev)) else {
            continue;
        };
        for part in names_in(&dir) {
            if dir.join(&part).join("partition").exists() {
                todo.push(part.clone());
                todo.extend(names_in(&dir.join(&part).join("holders")));
            }
        }
        todo.extend(names_in(&dir.join("holders")));
    }
    found
}

/// The kernel name of a `/dev/...` mount source (following `/dev/mapper/x`
/// and `/dev/disk/by-*/...` links where they resolve).
fn dev_name(sys: &Sysfs, source: &str) -> Option<String> {
    let rel = source.strip_prefix("/dev/")?;
    let resolved = fs::canonicalize(sys.root().join("dev").join(rel))
        .ok()
        .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()));
    resolved.or_else(|| Some(Path::new(rel).file_name()?.to_string_lossy().into_owned()))
}

fn block_in_use(sys: &Sysfs, bdf: &str) -> Option<String> {
    let devs = block_devices_below(sys, bdf);
    if devs.is_empty() {
        return None;
    }
    let mounts = fs::read_to_string(sys.proc("mounts")).unwrap_or_default();
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(src), Some(at)) = (f.next(), f.next()) else {
            continue;
        };
        if let Some(name) = dev_name(sys, src).filter(|n| devs.contains(n)) {
            return Some(format!(
                "it backs the mounted filesystem {src} on {at} (block device {name})"
            ));
        }
    }
    let swaps = fs::read_to_string(sys.proc("swaps")).unwrap_or_default();
    for line in swaps.lines().skip(1) {
        let src = line.split_whitespace().next().unwrap_or("");
        if let Some(name) = dev_name(sys, src).filter(|n| devs.contains(n)) {
            return Some(format!(
                "it backs the active swap {src} (block device {name})"
            ));
        }
    }
    None
}

fn net_in_use(sys: &Sysfs, bdf: &str) -> Option<String> {
    let net = sys.sys("class/net");
    for ifname in names_in(&net) {
        let dir = net.join(&ifname);
        if !fs::canonicalize(dir.join("device")).is_ok_and(|p| below(&p, bdf)) {
            continue;
        }
        let oper = fs::read_to_string(dir.join("operstate")).unwrap_or_default();
        let flags = fs::read_to_string(dir.join("flags")).unwrap_or_default();
        let admin_up = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
            .is_ok_and(|f| f & 1 != 0);
        if oper.trim() == "up" || admin_up {
            return Some(format!(
                "it backs the network interface {ifname}, which is up (operstate {})",
                oper.trim()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    const PF: &str = "0000:01:00.0";
    const NIC: &str = "0000:02:00.0";

    /// A fake root with an NVMe disk (two partitions, one under dm-0) behind
    /// 0000:01:00.0 and a NIC at 0000:02:00.0.
    fn tree() -> (tempfile::TempDir, Sysfs) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let mk = |p: &str| fs::create_dir_all(r.join(p)).unwrap();
        let put = |p: &str, v: &str| fs::write(r.join(p), v).unwrap();
        let ctrl = "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/nvme/nvme0";
        mk(&format!("{ctrl}/nvme0n1/nvme0n1p1"));
        mk(&format!("{ctrl}/nvme0n1/nvme0n1p2/holders"));
        put(&format!("{ctrl}/nvme0n1/nvme0n1p1/partition"), "1");
        put(&format!("{ctrl}/nvme0n1/nvme0n1p2/partition"), "2");
        mk(&format!("{ctrl}/nvme0n1/holders"));
        mk("sys/devices/virtual/block/dm-0/holders");
        symlink(
            r.join("sys/devices/virtual/block/dm-0"),
            r.join(format!("{ctrl}/nvme0n1/nvme0n1p2/holders/dm-0")),
        )
        .unwrap();
        mk("sys/block");
        symlink(
            r.join(format!("{ctrl}/nvme0n1")),
            r.join("sys/block/nvme0n1"),
        )
        .unwrap();
        symlink(
            r.join("sys/devices/virtual/block/dm-0"),
            r.join("sys/block/dm-0"),
        )
        .unwrap();
        let nic = "sys/devices/pci0000:00/0000:00:02.0/0000:02:00.0";
        mk(&format!("{nic}/net/eth0"));
        mk("sys/class/net");
        symlink(
            r.join(format!("{nic}/net/eth0")),
            r.join("sys/class/net/eth0"),
        )
        .unwrap();
        symlink(r.join(nic), r.join(format!("{nic}/net/eth0/device"))).unwrap();
        put(&format!("{nic}/net/eth0/operstate"), "down\n");
        put(&format!("{nic}/net/eth0/flags"), "0x1002\n");
        mk("dev/mapper");
        put("dev/dm-0", "");
        symlink("../dm-0", r.join("dev/mapper/vg-root")).unwrap();
        mk("proc");
        put("proc/mounts", "proc /proc proc rw 0 0\n");
        put("proc/swaps", "Filename Type Size Used Priority\n");
        let sys = Sysfs::new(r);
        (t, sys)
    }

    fn set(root: &Path, rel: &str, v: &str) {
        fs::write(PathBuf::from(root).join(rel), v).unwrap();
    }

    #[test]
    fn a_free_function_is_allowed() {
        let (t, sys) = tree();
        assert_eq!(busy_reason(&sys, PF), None);
        assert_eq!(busy_reason(&sys, NIC), None);
        assert_eq!(busy_reason(&sys, "0000:03:00.0"), None);
        drop(t);
    }

    #[test]
    fn a_mounted_partition_refuses_the_function_and_its_bridge() {
        let (t, sys) = tree();
        set(
            t.path(),
            "proc/mounts",
            "/dev/nvme0n1p1 /boot ext4 rw 0 0\n",
        );
        let why = busy_reason(&sys, PF).unwrap();
        assert!(why.contains("/dev/nvme0n1p1 on /boot"), "{why}");
        assert!(
            busy_reason(&sys, "0000:00:01.0").is_some(),
            "the root port above it"
        );
        assert_eq!(busy_reason(&sys, NIC), None);
    }

    #[test]
    fn a_mounted_device_mapper_volume_on_a_partition_refuses_the_function() {
        let (t, sys) = tree();
        set(
            t.path(),
            "proc/mounts",
            "/dev/mapper/vg-root / ext4 rw 0 0\n",
        );
        let why = busy_reason(&sys, PF).unwrap();
        assert!(why.contains("dm-0"), "{why}");
    }

    #[test]
    fn active_swap_refuses_the_function() {
        let (t, sys) = tree();
        set(
            t.path(),
            "proc/swaps",
            "Filename Type Size Used Priority\n/dev/nvme0n1p2 partition 1024 0 -2\n",
        );
        assert!(busy_reason(&sys, PF).unwrap().contains("swap"));
    }

    #[test]
    fn an_up_interface_refuses_its_function() {
        let (t, sys) = tree();
        let eth = "sys/devices/pci0000:00/0000:00:02.0/0000:02:00.0/net/eth0";
        set(t.path(), &format!("{eth}/flags"), "0x1003\n");
        let why = busy_reason(&sys, NIC).unwrap();
        assert!(why.contains("eth0"), "{why}");
        set(t.path(), &format!("{eth}/flags"), "0x1002\n");
        set(t.path(), &format!("{eth}/operstate"), "up\n");
        assert!(busy_reason(&sys, NIC).is_some());
        assert_eq!(busy_reason(&sys, PF), None);
    }
}
