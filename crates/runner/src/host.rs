//! Facts about the host the VMs run on, read from the system, and the KVM
//! usability probe behind `accel = "auto"`.

use crate::envmatch::Version;
use crate::manifest::MachineType;
use crate::qemu::{self, VmConfig};
use crate::supervise::{self, End, Finished};
use crate::units::ByteSize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ukci_protocol::Verdict;
use ukci_protocol::line::{self, Line};
use ukci_vhost::accel::Accel;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// `None` when QEMU is missing or does not answer `--version`.
    pub qemu_version: Option<Version>,
    pub host_kernel: String,
    pub kvm_module: Option<String>,
    /// The layer below this host's KVM, where known (see
    /// [`crate::envmatch::Environment::kvm_host`]).
    pub kvm_host: Option<Accel>,
    /// What the kernel said of its KVM modules, where ukci loaded them.
    pub kvm_log: String,
    /// The lane's KVM variant this host loaded (inside a virtual host).
    pub kvm_variant: Option<String>,
    /// The patch set of the loaded KVM build (inside a virtual host).
    pub kvm_build: Option<String>,
    pub cpu_model: String,
    /// Whether `/dev/kvm` exists and opens read-write.
    pub dev_kvm: Result<(), String>,
}

/// This host's facts; what QEMU is comes from `qemu_cache` when that file
/// still speaks for the installed QEMU (see [`qemu_facts`]).
pub fn detect(qemu_cache: &Path) -> HostFacts {
    HostFacts {
        qemu_version: qemu_facts(qemu_cache).version,
        host_kernel: host_kernel().unwrap_or_else(|| "unknown".into()),
        kvm_module: kvm_module(Path::new("/sys/module")),
        kvm_host: None,
        kvm_log: String::new(),
        kvm_variant: None,
        kvm_build: None,
        cpu_model: cpu_model(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
        dev_kvm: dev_kvm(),
    }
}

fn host_kernel() -> Option<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    Some(release.trim().to_string())
}

/// What the installed QEMU is and can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuFacts {
    /// `None` when QEMU is missing or does not answer `--version`.
    pub version: Option<Version>,
    /// Whether vfio-pci has the `vf-token` property (`-device vfio-pci,help`).
    pub vf_token: bool,
}

/// Asks QEMU what it is, once per QEMU binary and host kernel: each question
/// starts a QEMU, which costs more than the rest of a one-test run's set-up.
/// The answers are kept in `cache`, keyed by the binary found through `PATH`
/// (path, size, modification time) and the running kernel; a key that no
/// longer matches asks again. A missing QEMU is not cached.
pub fn qemu_facts(cache: &Path) -> QemuFacts {
    let key = qemu_key();
    if let Some(facts) = key.as_deref().and_then(|k| read_qemu_cache(cache, k)) {
        return facts;
    }
    let facts = QemuFacts {
        version: qemu_query(&["--version"]).and_then(|v| parse_qemu_version(&v)),
        vf_token: qemu_query(&["-device", "vfio-pci,help"]).is_some_and(|o| o.contains("vf-token")),
    };
    if let (Some(key), Some(version)) = (key, &facts.version) {
        let text = format!("{key}\nversion={version}\nvf-token={}\n", facts.vf_token);
        let _ = crate::rundir::replace_atomically(cache, |tmp| std::fs::write(tmp, text));
    }
    facts
}

/// The identity of the QEMU a run would start, and of the kernel it runs on.
fn qemu_key() -> Option<String> {
    let bin = find_in_path(qemu::QEMU, &std::env::var_os("PATH")?)?;
    let meta = std::fs::metadata(&bin).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!(
        "qemu={} size={} mtime={mtime} kernel={}",
        bin.display(),
        meta.len(),
        host_kernel()?
    ))
}

/// The file `PATH` resolves `name` to, as `execvp` would: the first
/// executable regular file of that name.
pub fn find_in_path(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|f| {
            std::fs::metadata(f).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn read_qemu_cache(cache: &Path, key: &str) -> Option<QemuFacts> {
    let text = std::fs::read_to_string(cache).ok()?;
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    let version = Version::parse_prefix(lines.next()?.strip_prefix("version=")?)?;
    let vf_token = match lines.next()?.strip_prefix("vf-token=")? {
        "true" => true,
        "false" => false,
        _ => return None,
    };
    Some(QemuFacts {
        version: Some(version),
        vf_token,
    })
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
    pub accel: Accel,
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
            accel: Accel::Tcg,
            reason: format!("auto: {e}"),
        };
    }
    let key = probe_key(facts, guest);
    if let Some(choice) = read_cache(cache, &key) {
        return choice;
    }
    let probe = probe_kvm(facts, guest, limit);
    if probe.lasting {
        let text = format!("{key}\n{}\n{}\n", probe.choice.accel, probe.choice.reason);
        let _ = crate::rundir::replace_atomically(cache, |tmp| std::fs::write(tmp, text));
    }
    probe.choice
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
    if lines.next()? != key {
        return None;
    }
    let accel = Accel::from_word(lines.next()?)?;
    let reason = lines.next()?;
    Some(AccelChoice {
        accel,
        reason: format!("{reason} (cached)"),
    })
}

/// What a probe boot says about KVM, and whether that lasts: a verdict or a
/// timeout speaks for this host and is cached; a QEMU that failed before the
/// guest ran (no guest image yet, KVM busy) says nothing about KVM, so the
/// next run probes again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub choice: AccelChoice,
    pub lasting: bool,
}

fn probe_kvm(facts: &HostFacts, guest: &Path, limit: Duration) -> Probe {
    let module = facts.kvm_module.as_deref();
    let vm = VmConfig {
        machine: MachineType::Microvm,
        accel: Accel::Kvm,
        cpu: qemu::default_cpu(Accel::Kvm, module),
        memory: ByteSize::mib(64),
        smp: 1,
        pit: true,
        // The boot the q35 and pc tests use: through the firmware, which
        // is what makes KVM unusable under kvm_pvm.
        boot: qemu::Boot::Pvh {
            kernel: PathBuf::from(guest),
            firmware: qemu::Firmware::Machine,
        },
        append: "checks=boot.smoke".into(),
        devices: vec![],
    };
    let fin = supervise::run(qemu::QEMU.as_ref(), &vm.args(), limit, |_| {});
    judge_probe(&fin, module, limit)
}

/// The accelerator a finished probe boot points to. Only a guest that
/// announced its verdict (`EXIT: STATUS=n`, and QEMU exited with n) ran:
/// QEMU's own errors exit with status 1 too, which is also a pass verdict.
pub fn judge_probe(fin: &Finished, module: Option<&str>, limit: Duration) -> Probe {
    let module = module.unwrap_or("unknown module");
    let announced = fin
        .stdout
        .lines()
        .find_map(|l| match line::parse(l.trim_end_matches('\r')) {
            Some(Line::Exit(s)) => Some(s),
            _ => None,
        });
    let (accel, lasting, reason) = match &fin.end {
        &End::Exited(s)
            if announced == Some(s as u32) && Verdict::from_status(s as u32).is_some() =>
        {
            (
                Accel::Kvm,
                true,
                format!("gave a verdict in {} ms", fin.elapsed.as_millis()),
            )
        }
        End::TimedOut(_) => (
            Accel::Tcg,
            true,
            format!(
                "gave no verdict within {} s{}",
                limit.as_secs(),
                if module == "kvm_pvm" {
                    " (kvm_pvm emulates firmware and paging-off code instruction by instruction)"
                } else {
                    ""
                }
            ),
        ),
        other => (
            Accel::Tcg,
            false,
            format!(
                "failed before a verdict: {other:?}; stderr: {}",
                fin.stderr.lines().next().unwrap_or("").trim()
            ),
        ),
    };
    Probe {
        choice: AccelChoice {
            accel,
            reason: format!("auto: a probe boot under KVM ({module}) {reason}"),
        },
        lasting,
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
    fn only_a_whole_qemu_cache_entry_for_this_key_is_read() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("qemu-facts.txt");
        std::fs::write(&cache, "k1\nversion=10.0.2\nvf-token=true\n").unwrap();
        let want = QemuFacts {
            version: Some(Version(vec![10, 0, 2])),
            vf_token: true,
        };
        assert_eq!(read_qemu_cache(&cache, "k1"), Some(want));
        assert_eq!(
            read_qemu_cache(&cache, "k2"),
            None,
            "another QEMU or kernel"
        );
        for cut in [
            "k1\n",
            "k1\nversion=10.0.2\n",
            "k1\nversion=x\nvf-token=true\n",
            "k1\nversion=10\nvf-token=\n",
        ] {
            std::fs::write(&cache, cut).unwrap();
            assert_eq!(read_qemu_cache(&cache, "k1"), None, "{cut:?}");
        }
    }

    #[test]
    fn the_qemu_in_use_is_the_first_executable_on_the_path() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (a, b, c) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
        for dir in [&a, &b, &c] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::write(a.join("q"), "not executable").unwrap();
        std::fs::create_dir(b.join("q")).unwrap();
        std::fs::write(c.join("q"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(c.join("q"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([&a, &b, &c]).unwrap();
        assert_eq!(find_in_path("q", &path), Some(c.join("q")));
        assert_eq!(find_in_path("r", &path), None);
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

    fn probe(end: End, stdout: &str, stderr: &str) -> Probe {
        let fin = Finished {
            end,
            stdout: stdout.into(),
            stderr: stderr.into(),
            elapsed: Duration::from_millis(21),
            ready_at: None,
            command: String::new(),
        };
        judge_probe(&fin, Some("kvm_intel"), KVM_PROBE_LIMIT)
    }

    #[test]
    fn a_probe_qemu_that_failed_before_the_guest_ran_is_not_cached() {
        // `cargo xtask list` before `build`: no guest image yet.
        let p = probe(
            End::Exited(1),
            "",
            "qemu-system-x86_64: could not open kernel file 'images/ukci-guest': No such file or directory\n",
        );
        assert_eq!(p.choice.accel, Accel::Tcg);
        assert!(!p.lasting);
        assert!(
            p.choice.reason.contains("could not open kernel file"),
            "{}",
            p.choice.reason
        );
        assert!(!probe(End::SpawnFailed("no qemu".into()), "", "").lasting);
        assert!(!probe(End::Signaled(9), "PASS: boot.smoke: x\n", "").lasting);
        // An EXIT line QEMU did not exit with is not the guest's verdict.
        assert!(!probe(End::Exited(1), "EXIT: STATUS=3\n", "").lasting);
    }

    #[test]
    fn a_verdict_or_a_timeout_is_cached() {
        let p = probe(
            End::Exited(1),
            "PASS: boot.smoke: long mode\r\nSUMMARY: 1 tests\r\nEXIT: STATUS=1\r\n",
            "",
        );
        assert_eq!(p.choice.accel, Accel::Kvm);
        assert!(p.lasting);
        assert!(p.choice.reason.contains("verdict in 21 ms"));
        let p = probe(End::TimedOut(KVM_PROBE_LIMIT), "", "");
        assert_eq!(p.choice.accel, Accel::Tcg);
        assert!(p.lasting);
    }

    #[test]
    fn only_a_whole_cache_entry_for_this_key_is_read() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("accel-probe.txt");
        std::fs::write(&cache, "k1\nkvm\nauto: verdict in 21 ms\n").unwrap();
        let c = read_cache(&cache, "k1").unwrap();
        assert_eq!(c.accel, Accel::Kvm);
        assert_eq!(c.reason, "auto: verdict in 21 ms (cached)");
        assert_eq!(read_cache(&cache, "k2"), None, "another host or guest");
        for cut in ["k1\n", "k1\nkvm\n", "k1\nkv\nwhy\n"] {
            std::fs::write(&cache, cut).unwrap();
            assert_eq!(read_cache(&cache, "k1"), None, "{cut:?}");
        }
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
