//! Boots the virtual test host (a Debian kernel under QEMU with intel-iommu
//! and an SR-IOV NVMe) and runs the `vfio-agent` example inside it: the
//! journal replay after a crash, the token rules with the PF on the kernel
//! nvme driver and on vfio-pci, and the userspace PF driver bringing VFs
//! online. Skips, saying why, where QEMU or the kernel is missing.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ukci_protocol::Status;
use ukci_protocol::line::{self, Line};
use ukci_vhost::boot::{self, Agent, BootConfig};
use ukci_vhost::initramfs::{self, InitramfsSpec, ModuleLoad};
use ukci_vhost::kernel::{Kernel, KernelSpec, KernelStore, Refresh};

const PF: &str = "0000:01:00.0";

/// The per-user cache of kernels and initramfs images, as the runner uses it.
fn cache() -> PathBuf {
    ukci_vhost::cache::user_dir()
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

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
    store
        .get(&spec, Refresh::IfStale)
        .map_err(|e| format!("debian:{series}: {e}"))
}

/// Builds the agent example (always, so the host never runs a stale one)
/// into a target dir of its own: the outer cargo still holds the main one.
fn agent_binary() -> Result<PathBuf, String> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vfio-agent-build");
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "ukci-vfio",
            "--example",
            "vfio-agent",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the vfio-agent example failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(target.join("debug/examples/vfio-agent"))
}

#[derive(Debug)]
struct Outcome {
    status: Status,
    reason: Option<String>,
    detail: String,
}

fn parse(log: &str) -> (BTreeMap<String, Outcome>, Option<u32>) {
    let mut out = BTreeMap::new();
    let mut last: Option<String> = None;
    let mut exit = None;
    for l in log.lines() {
        match line::parse(l) {
            Some(Line::Result {
                status,
                name,
                reason,
            }) => {
                assert!(!out.contains_key(name), "result {name} reported twice");
                out.insert(
                    name.to_owned(),
                    Outcome {
                        status,
                        reason: reason.map(Into::into),
                        detail: String::new(),
                    },
                );
                last = Some(name.to_owned());
            }
            Some(Line::Detail(d)) => {
                if let Some(o) = last.as_ref().and_then(|n| out.get_mut(n)) {
                    o.detail = d.to_owned();
                }
            }
            Some(Line::Exit(s)) => exit = Some(s),
            _ => {}
        }
    }
    (out, exit)
}

/// Strings that look like a UUID (8-4-4-4-12 hex).
fn uuids(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    for i in 0..b.len().saturating_sub(35) {
        let w = &b[i..i + 36];
        let shape = w.iter().enumerate().all(|(j, c)| match j {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
        if shape {
            found.push(String::from_utf8_lossy(w).into_owned());
        }
    }
    found
}

fn lane(series: &str) {
    let kernel = match debian(series) {
        Ok(k) => k,
        Err(why) => return eprintln!("SKIP: {why}"),
    };
    let agent = match agent_binary() {
        Ok(a) => a,
        Err(why) => panic!("{why}"),
    };
    // The lane's modules plus the kernel nvme driver, so the PF starts on
    // nvme as on a real host and the kernel-PF rules can run.
    let mut spec = InitramfsSpec::default();
    if !spec.modules.iter().any(|m| m.name == "nvme") {
        spec.modules.push(ModuleLoad::new("nvme"));
    }
    let initrd = initramfs::build(&cache(), &kernel, &spec).unwrap();

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("vfio-{series}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let results = dir.join("results");
    fs::create_dir_all(&results).unwrap();
    let mut cfg = BootConfig::new(
        &kernel.name,
        &kernel.vmlinuz,
        &initrd.path,
        &results,
        &dir.join("scratch"),
        Agent {
            program: agent,
            args: vec![
                "--pf".into(),
                PF.into(),
                "--vfs".into(),
                "2".into(),
                "--crash-first".into(),
            ],
            env: vec![],
            chroot: true,
        },
    );
    cfg.timeout = Duration::from_secs(300);
    let t = Instant::now();
    let report = boot::run(&cfg, |at, l| eprintln!("[{:6.2}] {l}", at.as_secs_f64()))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{}: agent-ready {:.2} s, total {:.2} s (wall {:.2} s)",
        kernel.name,
        report.agent_ready.as_secs_f64(),
        report.total.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );

    let log = fs::read_to_string(results.join("vfio.log")).expect("the agent wrote vfio.log");
    let (results_by_name, exit) = parse(&log);
    let failed: Vec<String> = results_by_name
        .iter()
        .filter(|(_, o)| !matches!(o.status, Status::Pass | Status::Skip | Status::Xfail))
        .map(|(n, o)| format!("{n}: {:?} {}", o.status, o.detail))
        .collect();
    assert!(failed.is_empty(), "failed results:\n{}", failed.join("\n"));
    assert_eq!(exit, Some(1), "EXIT: STATUS=1 (pass)");

    let get = |name: &str| {
        results_by_name
            .get(name)
            .unwrap_or_else(|| panic!("no result {name} in\n{log}"))
    };
    // Every rule of the table ran and passed with its errno.
    for rule in ukci_vfio::checks::RULES {
        let prefix = if ["vf-open.token", "vf-open.none", "pf-bind.vfs-exist"].contains(&rule.name)
        {
            "vf-token.kernel-pf"
        } else if rule.name.starts_with("vf-open.online") {
            "vf-token.pf-driver"
        } else {
            "vf-token.rules"
        };
        let o = get(&format!("{prefix}: {}", rule.name));
        assert_eq!(o.status, Status::Pass, "{}: {}", rule.name, o.detail);
        if let Some(e) = rule.expect.errno {
            assert!(
                o.detail.contains(&format!("errno={e}")),
                "{}: {}",
                rule.name,
                o.detail
            );
        }
    }
    // The kernel said why, in its own words, the first time round.
    for (name, words) in [
        (
            "vf-token.rules: vf-open.unset.none",
            "vfio-pci 0000:01:00.1: VF token required to access device",
        ),
        (
            "vf-token.rules: init.diff",
            "vfio-pci 0000:01:00.1: Incorrect VF token provided for device",
        ),
        (
            "vf-token.rules: pf-reopen.vf-open.none",
            "vfio-pci 0000:01:00.0: VF token required to access device",
        ),
        (
            "vf-token.kernel-pf: vf-open.token",
            "VF token incorrectly provided, PF not bound to vfio-pci",
        ),
        (
            "vf-token.kernel-pf: pf-bind.vfs-exist",
            "Cannot bind to PF with SR-IOV enabled",
        ),
    ] {
        assert!(
            get(name).detail.contains(words),
            "{name}: {}",
            get(name).detail
        );
    }
    assert_eq!(get("vfio.journal: replay-after-crash").status, Status::Pass);
    assert!(
        get("vfio.journal: replay-after-crash")
            .detail
            .contains("driver=nvme")
    );
    assert_eq!(
        get("vfio.journal: restored-after-kernel-pf").status,
        Status::Pass
    );
    assert_eq!(get("vfio.journal: restored-at-end").status, Status::Pass);
    let env = &get("vfio.env: facts").detail;
    assert!(
        env.contains("vfio_pci.enable_sriov=Y") && env.contains("sriov_totalvfs=2"),
        "{env}"
    );
    // Debian builds 6.12 without IOMMUFD and 6.1 predates the cdev.
    assert!(env.contains("vfio_cdev=absent"), "{env}");
    let cdev = get("vf-token.cdev: bind.none");
    assert_eq!(cdev.status, Status::Skip);
    assert!(
        cdev.reason
            .as_deref()
            .unwrap_or("")
            .contains("/dev/vfio/devices")
    );
    // The PF driver: both secondaries online, each VF controller ready.
    let online = &get("vf-token.pf-driver: vfs-online").detail;
    for s in [
        "scid=1 vfn=1 online nvq=2 nvi=1",
        "scid=2 vfn=2 online nvq=2 nvi=1",
    ] {
        assert!(online.contains(s), "{online}");
    }
    for vf in 1..=2 {
        let d = &get(&format!("vf-token.pf-driver: vf.{vf}.ready")).detail;
        assert!(
            d.contains(&format!("identify_cntlid={vf} scid={vf}")),
            "{d}"
        );
    }
    assert!(
        get("vf-token.pf-driver: teardown")
            .detail
            .contains("sriov_numvfs=0")
    );

    // No token leaked: the only UUIDs anywhere are the fixed, unused one of
    // the unknown-option rule (which is never printed either).
    let serial = fs::read_to_string(&report.serial_log).unwrap();
    for text in [&log, &serial] {
        let seen = uuids(text);
        assert!(
            seen.is_empty(),
            "UUID-shaped strings in the output: {seen:?}"
        );
    }
    assert!(
        !results.join("vfio-journal").exists(),
        "the journal is cleared after restore"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn debian_6_12_vf_token_rules_and_pf_driver() {
    lane("6.12");
}

#[test]
fn debian_6_1_vf_token_rules_and_pf_driver() {
    lane("6.1");
}

#[test]
fn uuid_shapes_are_found() {
    let t = "x 2ab74924-c335-45f4-9b16-8569e5b08258 y <redacted> 1234";
    assert_eq!(
        uuids(t),
        vec!["2ab74924-c335-45f4-9b16-8569e5b08258".to_owned()]
    );
}
