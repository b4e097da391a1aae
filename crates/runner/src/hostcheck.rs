//! Host checks: checks the runner runs on the host it is on (in the virtual
//! lane, inside the virtual host), reporting through the same protocol as
//! guest checks.

use std::fmt::Write;
use std::path::Path;
use ukci_protocol::Reporter;

pub struct HostCheck {
    pub name: &'static str,
    pub summary: &'static str,
    pub run: fn(&mut Reporter<&mut String>),
}

pub const HOST_CHECKS: &[HostCheck] = &[HostCheck {
    name: "vhost.env",
    summary: "records the VFIO environment: vfio-pci with enable_sriov, IOMMU groups, the SR-IOV PF, /dev/vfio/devices",
    run: vhost_env,
}];

pub fn find(name: &str) -> Option<&'static HostCheck> {
    HOST_CHECKS.iter().find(|c| c.name == name)
}

/// Runs host checks in order and returns the protocol text, as a guest's
/// serial log would read.
pub fn run(checks: &[String]) -> String {
    let mut out = String::new();
    let mut r = Reporter::new(&mut out);
    for name in checks {
        match find(name) {
            Some(c) => {
                r.push(c.name);
                (c.run)(&mut r);
                r.pop();
            }
            None => {
                r.check(false, name, format_args!("unknown host check"));
            }
        }
    }
    r.finish();
    out
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn vhost_env(r: &mut Reporter<&mut String>) {
    vhost_env_at(Path::new("/"), r)
}

/// `vhost.env` against a root directory (a fake tree in tests).
fn vhost_env_at(root: &Path, r: &mut Reporter<&mut String>) {
    let sys = root.join("sys");
    let sriov = read(&sys.join("module/vfio_pci/parameters/enable_sriov"));
    r.check(
        sriov.as_deref() == Some("Y"),
        "vfio-pci loaded with enable_sriov",
        format_args!("enable_sriov={}", sriov.as_deref().unwrap_or("absent")),
    );
    let groups = std::fs::read_dir(sys.join("kernel/iommu_groups"))
        .map(|d| d.count())
        .unwrap_or(0);
    r.check(
        groups > 0,
        "IOMMU groups present",
        format_args!("iommu_groups={groups}"),
    );
    let mut pfs = String::new();
    let mut found = 0;
    if let Ok(devs) = std::fs::read_dir(sys.join("bus/pci/devices")) {
        let mut devs: Vec<_> = devs.flatten().map(|e| e.path()).collect();
        devs.sort();
        for d in devs {
            if let Some(total) = read(&d.join("sriov_totalvfs")) {
                found += 1;
                let name = d
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let group = std::fs::read_link(d.join("iommu_group"))
                    .ok()
                    .and_then(|g| g.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "none".into());
                let _ = write!(pfs, " pf={name} sriov_totalvfs={total} iommu_group={group}");
            }
        }
    }
    r.check(
        found > 0,
        "SR-IOV physical function present",
        format_args!("pfs={found}{pfs}"),
    );
    let cdev = root.join("dev/vfio/devices").exists();
    r.info(format_args!(
        "vfio cdev interface (/dev/vfio/devices): {}",
        if cdev {
            "present"
        } else {
            "absent (group/container API only)"
        }
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use ukci_protocol::line::{self, Line, Status};

    fn results(text: &str) -> Vec<(Status, String)> {
        text.lines()
            .filter_map(line::parse)
            .filter_map(|l| match l {
                Line::Result { status, name, .. } => Some((status, name.to_string())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn env_check_passes_on_a_ready_tree_and_names_what_is_missing() {
        let root = std::env::temp_dir().join(format!("ukci-hostcheck-{}", std::process::id()));
        let pf = root.join("sys/bus/pci/devices/0000:01:00.0");
        std::fs::create_dir_all(&pf).unwrap();
        std::fs::create_dir_all(root.join("sys/kernel/iommu_groups/3")).unwrap();
        std::fs::create_dir_all(root.join("sys/module/vfio_pci/parameters")).unwrap();
        std::fs::write(
            root.join("sys/module/vfio_pci/parameters/enable_sriov"),
            "Y\n",
        )
        .unwrap();
        std::fs::write(pf.join("sriov_totalvfs"), "2\n").unwrap();
        let mut out = String::new();
        let mut r = Reporter::new(&mut out);
        r.push("vhost.env");
        vhost_env_at(&root, &mut r);
        assert!(
            results(&out).iter().all(|(s, _)| *s == Status::Pass),
            "{out}"
        );
        assert!(out.contains("pf=0000:01:00.0 sriov_totalvfs=2"), "{out}");
        assert!(out.contains("/dev/vfio/devices): absent"), "{out}");

        std::fs::write(
            root.join("sys/module/vfio_pci/parameters/enable_sriov"),
            "N\n",
        )
        .unwrap();
        let mut out = String::new();
        let mut r = Reporter::new(&mut out);
        vhost_env_at(&root, &mut r);
        let failed: Vec<_> = results(&out)
            .into_iter()
            .filter(|(s, _)| *s == Status::Fail)
            .collect();
        assert_eq!(
            failed,
            vec![(
                Status::Fail,
                "vfio-pci loaded with enable_sriov".to_string()
            )]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
