//! Boots a real Debian host kernel as the virtual host and checks what its
//! agent saw. Skips, saying why, where QEMU or apt is missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ukci_vhost::boot::{self, Agent, BootConfig};
use ukci_vhost::boot::{BootError, Failure};
use ukci_vhost::initramfs::{self, InitramfsSpec};
use ukci_vhost::kernel::{Kernel, KernelSpec, KernelStore, Refresh};

/// The per-user cache of kernels and initramfs images, as the runner uses it.
fn cache() -> PathBuf {
    ukci_vhost::cache::user_dir()
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

/// Under the target folder, which the chrooted agent sees at its host path.
fn run_dir(tag: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("vhost-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

const AGENT: &str = r#"#!/bin/sh
# Test agent: records what the virtual host looks like into the results folder.
R="$UKCI_RESULTS"
uname -r > "$R/uname"
cat /sys/module/vfio_pci/parameters/enable_sriov > "$R/enable_sriov"
[ -d /sys/bus/pci/drivers/vfio-pci ] && echo yes > "$R/vfio_pci_driver"
PF=
for d in /sys/bus/pci/devices/*; do
	if [ "$(cat "$d/vendor")" = 0x1b36 ] && [ "$(cat "$d/device")" = 0x0010 ] && [ -e "$d/sriov_totalvfs" ]; then
		PF=$d
	fi
done
basename "$PF" > "$R/pf"
cat "$PF/sriov_totalvfs" > "$R/sriov_totalvfs"
echo vfio-pci > "$PF/driver_override"
# The PF starts on the kernel's nvme driver.
[ -e "$PF/driver" ] && echo "$(basename "$PF")" > "$PF/driver/unbind"
echo "$(basename "$PF")" > /sys/bus/pci/drivers_probe
basename "$(readlink "$PF/driver")" > "$R/pf_driver"
echo 2 > "$PF/sriov_numvfs"
ls -d "$PF"/virtfn* | wc -l > "$R/vfs"
ls /sys/kernel/iommu_groups | wc -l > "$R/iommu_groups"
if [ -e /dev/vfio/devices ]; then echo yes; else echo no; fi > "$R/vfio_devices"
echo "agent on $(uname -r): done"
exit 3
"#;

fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .trim()
        .to_owned()
}

/// The cached (or freshly fetched) Debian kernel, or why the test cannot run.
fn debian(series: &str) -> Result<Kernel, String> {
    if !have("qemu-system-x86_64") {
        return Err(
            "qemu-system-x86_64 not found (install qemu-system-x86 from bookworm-backports)".into(),
        );
    }
    let spec = KernelSpec::parse(&format!("debian:{series}")).unwrap();
    let store = KernelStore::new(&cache());
    if !store.is_cached(&spec) && !have("apt-cache") {
        return Err(format!("{spec} is not cached and apt is not available"));
    }
    Ok(store.get(&spec, Refresh::IfStale).unwrap())
}

#[test]
fn debian_6_12_virtual_host_runs_the_agent() {
    lane_facts("6.12");
}

/// 6.1 names its packages differently (6.1.0-NN) and ships plain .ko modules.
#[test]
fn debian_6_1_virtual_host_runs_the_agent() {
    lane_facts("6.1");
}

/// 7.3 comes from trixie-backports as three packages (a meta image, the
/// kernel in linux-binary, the modules in linux-modules), all under
/// usr/lib/modules.
#[test]
fn debian_7_3_virtual_host_runs_the_agent() {
    lane_facts("7.3");
}

fn lane_facts(series: &str) {
    let t = Instant::now();
    let kernel = match debian(series) {
        Ok(k) => k,
        Err(why) => return eprintln!("SKIP: {why}"),
    };
    eprintln!(
        "kernel {} {:?} in {:?}",
        kernel.release,
        kernel.version,
        t.elapsed()
    );

    let t = Instant::now();
    let initrd = initramfs::build(&cache(), &kernel, &InitramfsSpec::default()).unwrap();
    eprintln!(
        "initramfs {} (cached: {}) in {:?}",
        initrd.path.display(),
        initrd.cached,
        t.elapsed()
    );
    for m in ["vfio", "vfio_pci", "vfio_iommu_type1", "9p", "9pnet_virtio"] {
        assert!(
            initrd.load_order.iter().any(|l| l == m),
            "{m} not in {:?}",
            initrd.load_order
        );
    }

    let dir = run_dir(&format!("lane-{series}"));
    let results = dir.join("results");
    fs::create_dir_all(&results).unwrap();
    let script = results.join("agent.sh");
    fs::write(&script, AGENT).unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let agent = Agent {
        program: fs::canonicalize(&script).unwrap(),
        args: vec![],
        env: vec![],
        chroot: true,
    };
    let mut cfg = BootConfig::new(
        &kernel.name,
        &kernel.vmlinuz,
        &initrd.path,
        &results,
        &dir.join("scratch"),
        agent,
    );
    cfg.timeout = Duration::from_secs(180);
    let report = boot::run(&cfg, |at, line| {
        eprintln!("[{:6.2}] {line}", at.as_secs_f64())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "agent-ready after {:.2} s, total {:.2} s",
        report.agent_ready.as_secs_f64(),
        report.total.as_secs_f64()
    );

    assert_eq!(
        report.agent_status, 3,
        "the agent's own exit status comes back"
    );
    assert_eq!(read(&results, "agent-exit"), "3");
    assert_eq!(read(&results, "uname"), kernel.release);
    assert_eq!(read(&results, "enable_sriov"), "Y");
    assert_eq!(read(&results, "vfio_pci_driver"), "yes");
    assert_eq!(
        read(&results, "pf"),
        "0000:01:00.0",
        "the PF sits behind the root port"
    );
    assert_eq!(read(&results, "sriov_totalvfs"), "2");
    assert_eq!(read(&results, "pf_driver"), "vfio-pci");
    assert_eq!(read(&results, "vfs"), "2");
    let groups: u32 = read(&results, "iommu_groups").parse().unwrap();
    assert!(
        groups >= 3,
        "PF and both VFs each need an IOMMU group, got {groups}"
    );
    // Debian builds 6.12 to 7.3 without IOMMUFD, and 6.1 predates it: no VFIO cdev.
    assert_eq!(read(&results, "vfio_devices"), "no");
    let serial = fs::read_to_string(&report.serial_log).unwrap();
    assert!(
        serial.contains("agent on "),
        "agent output reaches the serial log"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_host_without_a_working_init_is_an_error_with_its_log() {
    let kernel = match debian("6.12") {
        Ok(k) => k,
        Err(why) => return eprintln!("SKIP: {why}"),
    };
    let initrd = initramfs::build(&cache(), &kernel, &InitramfsSpec::default()).unwrap();
    let dir = run_dir("panic");
    let agent = Agent {
        program: "/bin/true".into(),
        args: vec![],
        env: vec![],
        chroot: true,
    };
    let mut cfg = BootConfig::new(
        &kernel.name,
        &kernel.vmlinuz,
        &initrd.path,
        &dir.join("results"),
        &dir.join("scratch"),
        agent,
    );
    cfg.extra_append = vec!["rdinit=/no-such-init".into(), "init=/no-such-init".into()];
    cfg.timeout = Duration::from_secs(120);
    let err = boot::run(&cfg, |_, _| {}).unwrap_err();
    let BootError::Failed(f) = &err else {
        panic!("{err}")
    };
    assert!(matches!(f.failure, Failure::Panic(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("kernel panic: Kernel panic - not syncing"),
        "{msg}"
    );
    assert!(msg.contains(&f.serial_log.display().to_string()), "{msg}");
    assert!(
        fs::read_to_string(&f.serial_log)
            .unwrap()
            .contains("Kernel panic")
    );
    assert!(!dir.join("results/agent-exit").exists());
    fs::remove_dir_all(&dir).unwrap();
}
