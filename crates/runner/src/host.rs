//! Facts about the host the VMs run on, read from the system, and the KVM
//! usability probe behind `accel = "auto"`.

use crate::envmatch::Version;
use crate::manifest::MachineType;
use crate::qemu::{self, VmConfig};
use crate::supervise::{self, End};
use crate::units::ByteSize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ukci_protocol::Verdict;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// `None` when QEMU is missing or does not answer `--version`.
    pub qemu_version: Option<Version>,
    pub host_kernel: String,
    pub kvm_module: Option<String>,
    /// The layer below this host's KVM, where known (see
    /// [`crate::envmatch::Environment::kvm_host`]).
    pub kvm_host: Option<String>,
    /// What the kernel said of its KVM modules, where ukci loaded them.
    pub kvm_log: String,
    pub cpu_model: String,
    /// Whether `/dev/kvm` exists and opens read-write.
    pub dev_kvm: Result<(), String>,
}

pub fn detect() -> HostFacts {
    HostFacts {
        qemu_version: qemu_version(),
        host_kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        kvm_module: kvm_module(Path::new("/sys/module")),
        kvm_host: None,
        kvm_log: String::new(),
        cpu_model: cpu_model(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
        dev_kvm: dev_kvm(),
    }
}

pub fn qemu_version() -> Option<Version> {
    parse_qemu_version(&qemu_query(&["--version"])?)
}

/// Runs QEMU for a query (`--version`, `-device X,help`) under the same
/// supervision as every other QEMU; its stdout, if it ran.
pub fn qemu_query(args: &[&str]) -> Option<String> {
    let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    let fin = supervise::run(qemu::QEMU.as_ref(), &args, Duration::from_secs(10), |_| {});
    match fin.end {
        End::Exited(0) => Some(fin.stdout),
        _ => None,
    }
}

/// `QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-...)` → 10.0.2.
pub fn parse_qemu_version(text: &str) -> Option<Version> {
    let rest = text.split("version ").nth(1)?;
    Version::parse_prefix(rest)
}

/// The vendor KVM module that is loaded, if any.
pub fn kvm_module(sys_module: &Path) -> Option<String> {
    ["kvm_pvm", "kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| sys_module.join(m).exists())
        .map(String::from)
}

pub fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn dev_kvm() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm cannot be opened: {e}"))
}

/// The accelerator `auto` resolves to, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: String,
    pub reason: String,
}

/// How long a probe boot under KVM may take before KVM counts as unusable:
/// a TCG boot of the guest takes well under a second here.
pub const KVM_PROBE_LIMIT: Duration = Duration::from_secs(2);

/// The same inside a virtual host under TCG, where starting any QEMU takes
/// seconds whatever its accelerator.
pub const KVM_PROBE_LIMIT_NESTED: Duration = Duration::from_secs(60);

/// Decides `auto` by booting the real guest under KVM once, for at most
/// `limit`. The answer is cached in `cache` keyed by everything it depends on.
pub fn resolve_auto(facts: &HostFacts, guest: &Path, cache: &Path, limit: Duration) -> AccelChoice {
    if let Err(e) = &facts.dev_kvm {
        return AccelChoice {
            accel: "tcg".into(),
            reason: format!("auto: {e}"),
        };
    }
    let key = probe_key(facts, guest);
    if let Some(choice) = read_cache(cache, &key) {
        return choice;
    }
    let choice = probe_kvm(facts, guest, limit);
    let _ = std::fs::write(
        cache,
        format!("{key}\n{}\n{}\n", choice.accel, choice.reason),
    );
    choice
}

fn probe_key(facts: &HostFacts, guest: &Path) -> String {
    let meta = std::fs::metadata(guest).ok();
    let stamp = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "kernel={} qemu={} kvm={} guest={stamp}",
        facts.host_kernel,
        facts.qemu_version.clone().unwrap_or_default(),
        facts.kvm_module.as_deref().unwrap_or("none"),
    )
}

fn read_cache(cache: &Path, key: &str) -> Option<AccelChoice> {
    let text = std::fs::read_to_string(cache).ok()?;
    let mut lines = text.lines();
    (lines.next()? == key).then(|| AccelChoice {
        accel: lines.next().unwrap_or("tcg").to_string(),
        reason: format!("{} (cached)", lines.next().unwrap_or("")),
    })
}

fn probe_kvm(facts: &HostFacts, guest: &Path, limit: Duration) -> AccelChoice {
    let module = facts.kvm_module.as_deref();
    let vm = VmConfig {
        machine: MachineType::Microvm,
        accel: "kvm".into(),
        cpu: qemu::default_cpu("kvm", module),
        memory: ByteSize::mib(64),
        smp: 1,
        // The boot the q35 and pc tests use: through the firmware, which
        // is what makes KVM unusable under kvm_pvm.
        boot: qemu::Boot::Pvh {
            kernel: PathBuf::from(guest),
        },
        append: "checks=boot.smoke".into(),
        devices: vec![],
    };
    let fin = supervise::run(qemu::QEMU.as_ref(), &vm.args(), limit, |_| {});
    let module = module.unwrap_or("unknown module");
    match fin.end {
        End::Exited(s) if Verdict::from_status(s as u32).is_some() => AccelChoice {
            accel: "kvm".into(),
            reason: format!(
                "auto: a probe boot under KVM ({module}) gave a verdict in {} ms",
                fin.elapsed.as_millis()
            ),
        },
        End::TimedOut(_) => AccelChoice {
            accel: "tcg".into(),
            reason: format!(
                "auto: a probe boot under KVM ({module}) gave no verdict within {} s{}",
                limit.as_secs(),
                if module == "kvm_pvm" {
                    " (kvm_pvm emulates firmware and paging-off code instruction by instruction)"
                } else {
                    ""
                }
            ),
        },
        other => AccelChoice {
            accel: "tcg".into(),
            reason: format!(
                "auto: a probe boot under KVM ({module}) failed: {other:?} {}",
                fin.stderr.lines().next().unwrap_or("")
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_versions_are_read_from_the_banner() {
        let v = parse_qemu_version(
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n",
        );
        assert_eq!(v, Some(Version(vec![10, 0, 2])));
        assert_eq!(parse_qemu_version("garbage"), None);
    }

    #[test]
    fn the_vendor_module_is_found_in_sysfs() {
        let d = std::env::temp_dir().join(format!("ukci-sysmod-{}", std::process::id()));
        std::fs::create_dir_all(d.join("kvm_pvm")).unwrap();
        std::fs::create_dir_all(d.join("kvm")).unwrap();
        assert_eq!(kvm_module(&d).as_deref(), Some("kvm_pvm"));
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(kvm_module(&d), None);
    }

    #[test]
    fn cpu_model_from_cpuinfo() {
        assert_eq!(
            cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n"),
            "AMD EPYC 7B13"
        );
        assert_eq!(cpu_model(""), "unknown");
    }
}
