//! The virtual lane's costs per kernel: fetching (first and cached), the
//! initramfs (first and cached), boot to agent-ready (cold and cached), a
//! whole lane run, a nested VM's start inside a host, and `kvm.toml` over its
//! kernels. Rows with a goal say whether it is met.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};
use ukci_runner::manifest::MachineType;
use ukci_runner::plan;
use ukci_runner::qemu::{self, VmConfig};
use ukci_runner::session::Layout;
use ukci_runner::supervise::{self, End};
use ukci_runner::units::ByteSize;
use ukci_vhost::accel::Accel;
use ukci_vhost::boot::{self, Agent, BootConfig, shell_quote};
use ukci_vhost::initramfs::{self, InitramfsSpec};
use ukci_vhost::kernel::{Kernel, KernelSpec, KernelStore, Refresh};
use ukci_vhost::vmlinux;

use crate::bench::Stats;

pub const KERNELS: &[&str] = &["debian:6.1", "debian:6.12", "debian:6.18", "debian:7.3"];

/// Boot to agent-ready with kernel and initramfs cached (issue 13).
const AGENT_READY_GOALS: &[(&str, f64)] = &[("debian:6.12", 3.0), ("debian:6.1", 14.0)];
/// A nested VM's start inside a virtual host, warm (issue 10).
const NESTED_START_GOAL: f64 = 1.5;
/// `manifests/kvm.toml` over its four kernels, everything cached.
const KVM_MANIFEST_GOAL: f64 = 240.0;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

/// One measured value beside its goal (an upper bound in seconds).
fn goal_row(what: &str, value: Option<f64>, goal: Option<f64>) {
    let value = value.map_or("  failed".to_string(), |v| format!("{v:>8.2}"));
    let verdict = match (value.trim().parse::<f64>().ok(), goal) {
        (Some(v), Some(g)) if v <= g => format!("goal <= {g} s: met"),
        (_, Some(g)) => format!("goal <= {g} s: NOT met"),
        (_, None) => "no goal".to_string(),
    };
    out!("{what:<60} {value} s   {verdict}");
}

/// Repeated measurements beside their goal, judged on the median: min and
/// median, or how many of them failed.
fn stats_row(what: &str, samples: &[Option<Duration>], goal: f64) {
    let failed = samples.iter().filter(|t| t.is_none()).count();
    let ok: Vec<Duration> = samples.iter().flatten().copied().collect();
    let Some(st) = Stats::of(ok).filter(|_| failed == 0) else {
        out!(
            "{what:<60} {failed} of {} failed   goal <= {goal} s: NOT met",
            samples.len()
        );
        return;
    };
    let (min, median) = (secs(st.min), secs(st.median));
    let verdict = if median <= goal { "met" } else { "NOT met" };
    out!(
        "{what:<60} {min:>8.2} min {median:>6.2} median (of {}) s   goal <= {goal} s (median): {verdict}",
        samples.len()
    );
}

/// A virtual host for `kernel` running `agent`, its folders under `target/bench-vhost/<tag>`.
fn host_config(
    layout: &Layout,
    kernel: &Kernel,
    initrd: &Path,
    tag: &str,
    agent: Agent,
) -> BootConfig {
    let dir = layout.root.join("target/bench-vhost").join(tag);
    BootConfig::new(
        &kernel.name,
        &kernel.vmlinuz,
        initrd,
        &dir.join("results"),
        &dir.join("scratch"),
        agent,
    )
}

fn true_agent() -> Agent {
    Agent {
        program: "/bin/true".into(),
        args: vec![],
        env: vec![],
        chroot: true,
    }
}

pub fn run(layout: &Layout, boots: usize) -> Result<()> {
    out!("\nvirtual lane (TCG), seconds");
    out!(
        "{:<12} {:>9} {:>8} {:>10} {:>8} {:>14} {:>8} {:>10}",
        "kernel",
        "fetch 1st",
        "cached",
        "initrd 1st",
        "cached",
        "agent-ready min",
        "median",
        "lane total"
    );
    let fresh = layout.root.join("target/bench-images");
    let _ = std::fs::remove_dir_all(&fresh);
    let mut goals = Vec::new();
    for name in KERNELS {
        let spec = KernelSpec::parse(name)?;
        // A fresh cache for the first fetch and build; the real one after.
        let first = KernelStore::new(&fresh);
        let (k, fetch_first) = timed(|| first.get(&spec, Refresh::IfStale));
        let k = k?;
        let (_, initrd_first) = timed(|| initramfs::build(&fresh, &k, &InitramfsSpec::default()));
        let (_, unpack_first) = timed(|| vmlinux::for_boot(&fresh, &k.vmlinuz));
        let images = layout.cache();
        let store = KernelStore::new(&images);
        store.get(&spec, Refresh::IfStale)?;
        let (kernel, fetch_cached) = timed(|| store.get(&spec, Refresh::IfStale));
        let kernel = kernel?;
        initramfs::build(&images, &kernel, &InitramfsSpec::default())?;
        let (initrd, initrd_cached) =
            timed(|| initramfs::build(&images, &kernel, &InitramfsSpec::default()));
        let initrd = initrd?;
        let mut ready = Vec::new();
        for i in 0..boots {
            let tag = format!("{}-{i}", kernel.release);
            let cfg = host_config(layout, &kernel, &initrd.path, &tag, true_agent());
            ready.push(boot::run(&cfg, |_, _| {})?.agent_ready);
        }
        let ready = Stats::of(ready).context("no boots to measure")?;
        let lane = lane_total(layout, name)?;
        out!(
            "{name:<12} {:>9.2} {:>8.3} {:>10.3} {:>8.3} {:>14.2} {:>8.2} {:>10}",
            secs(fetch_first),
            secs(fetch_cached),
            secs(initrd_first),
            secs(initrd_cached),
            secs(ready.min),
            secs(ready.median),
            lane.map_or("failed".to_string(), |d| format!("{:.2}", secs(d))),
        );
        let goal = AGENT_READY_GOALS
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, g)| *g);
        goals.push((
            format!("agent-ready {name}, cold (fetch, initramfs, unpack, boot)"),
            secs(fetch_first + initrd_first + unpack_first + ready.min),
            None,
        ));
        goals.push((
            format!("agent-ready {name}, cached (median)"),
            secs(ready.median),
            goal,
        ));
    }
    let _ = std::fs::remove_dir_all(&fresh);
    out!("goals: cached initramfs < 1 s");
    for (what, v, goal) in goals {
        goal_row(&what, Some(v), goal);
    }
    Ok(())
}

/// The nested VMs one virtual host starts: each machine the lane's tests
/// use, under the host's KVM and under TCG, as the runner builds them.
fn nested_vms(guest: &Path) -> Vec<(String, VmConfig)> {
    let mut out = Vec::new();
    for accel in [Accel::Kvm, Accel::Tcg] {
        for machine in [MachineType::Microvm, MachineType::Q35] {
            let vm = VmConfig {
                machine,
                accel,
                cpu: qemu::default_cpu(accel, Some("kvm_amd")),
                memory: ByteSize::mib(64),
                smp: 1,
                pit: qemu::machine_has_pit(machine, accel, Some(plan::VHOST_ACCEL)),
                boot: plan::guest_boot(machine, guest, false),
                append: "checks=boot.smoke".into(),
                devices: vec![],
            };
            out.push((format!("{} [{accel}]", machine.qemu_name()), vm));
        }
    }
    out
}

/// A nested VM that has not finished after this long is killed and counted
/// as failed.
const NESTED_TIMEOUT_SECS: u32 = 30;

/// A shell script that starts each VM `runs` times, each under a hard
/// timeout, and prints `ukci-bench: <index> <status> <nanoseconds>` per start.
fn nested_script(vms: &[(String, VmConfig)], runs: usize) -> String {
    let mut s = String::from("now() { date +%s%N; }\n");
    for (i, (_, vm)) in vms.iter().enumerate() {
        let timeout = ["timeout", "-s", "KILL", &NESTED_TIMEOUT_SECS.to_string()].map(String::from);
        let argv: Vec<String> = timeout
            .into_iter()
            .chain(std::iter::once(qemu::QEMU.to_string()))
            .chain(vm.args().iter().map(|a| a.to_string_lossy().into_owned()))
            .map(|w| shell_quote(&w))
            .collect();
        s.push_str(&format!(
            "for _ in $(seq {runs}); do t=$(now); {} </dev/null >/dev/null 2>&1; st=$?; \
             echo \"ukci-bench: {i} $st $(( $(now) - t ))\"; done\n",
            argv.join(" ")
        ));
    }
    s
}

/// How long a nested VM takes from QEMU's start to its exit inside a
/// virtual host of `kernel`: the first start (QEMU read over 9p) and the
/// later ones (from the host's page cache).
pub fn nested_start(layout: &Layout, kernel: &str, runs: usize) -> Result<()> {
    let runs = runs.clamp(3, 8);
    let images = layout.cache();
    let kernel = KernelStore::new(&images).get(&KernelSpec::parse(kernel)?, Refresh::IfStale)?;
    let initrd = initramfs::build(&images, &kernel, &InitramfsSpec::default())?;
    let vms = nested_vms(&layout.guest_image());
    let agent = Agent {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), nested_script(&vms, runs)],
        env: vec![],
        chroot: true,
    };
    let mut cfg = host_config(layout, &kernel, &initrd.path, "nested", agent);
    cfg.timeout = Duration::from_secs(300);
    let mut times: BTreeMap<usize, Vec<Option<Duration>>> = BTreeMap::new();
    boot::run(&cfg, |_, line| {
        let mut w = line.strip_prefix("ukci-bench: ").unwrap_or("").split(' ');
        if let (Some(i), Some(st), Some(ns)) = (w.next(), w.next(), w.next()) {
            let t = Duration::from_nanos(ns.trim().parse().unwrap_or(0));
            // isa-debug-exit: the guest's status 0 is QEMU's exit status 1.
            let ok = st == "1";
            if let Ok(i) = i.parse() {
                times.entry(i).or_default().push(ok.then_some(t));
            }
        }
    })
    .with_context(|| format!("the virtual host {} for the nested VM starts", kernel.name))?;
    out!(
        "\nnested VM inside a {} host: QEMU start to the guest's verdict, seconds",
        kernel.name
    );
    for (i, (name, _)) in vms.iter().enumerate() {
        let t = times.remove(&i).unwrap_or_default();
        let first = t.first().copied().flatten().map(secs);
        let later = &t[t.len().min(1)..];
        goal_row(&format!("nested {name}, first start"), first, None);
        stats_row(
            &format!("nested {name}, later starts"),
            later,
            NESTED_START_GOAL,
        );
    }
    Ok(())
}

/// `cargo xtask test manifests/kvm.toml` over its four kernels, cached.
pub fn kvm_manifest(layout: &Layout) -> Result<()> {
    let (passed, total) = test_run(layout, &["manifests/kvm.toml"], "target/bench-kvm")?;
    out!();
    goal_row(
        "kvm.toml on its four kernels, cached",
        passed.then_some(secs(total)),
        Some(KVM_MANIFEST_GOAL),
    );
    Ok(())
}

/// The longest a whole manifest run may take here (its lanes have their own
/// timeouts; this only bounds the child).
const TEST_RUN_LIMIT: Duration = Duration::from_secs(3 * 3600);

/// `cargo xtask test ARGS --reports DIR` (DIR under the checkout), quietly:
/// whether it passed, and its wall time.
fn test_run(layout: &Layout, args: &[&str], reports: &str) -> Result<(bool, Duration)> {
    // Through env(1) for CI=1 (plain output); manifests by absolute path,
    // since the child keeps this process's working folder.
    let mut argv: Vec<OsString> = vec![
        "CI=1".into(),
        std::env::current_exe()?.into(),
        "test".into(),
    ];
    argv.extend(args.iter().map(|a| match a.ends_with(".toml") {
        true => layout.root.join(a).into_os_string(),
        false => a.into(),
    }));
    argv.extend([
        "--reports".into(),
        layout.root.join(reports).into_os_string(),
    ]);
    let (fin, total) = timed(|| supervise::run("env".as_ref(), &argv, TEST_RUN_LIMIT, |_| {}));
    Ok((fin.end == End::Exited(0), total))
}

/// `cargo xtask test manifests/vhost-smoke.toml --kernel K`, end to end.
/// `None` when the lane did not pass (its report is in target/bench-reports).
fn lane_total(layout: &Layout, kernel: &str) -> Result<Option<Duration>> {
    let args = ["manifests/vhost-smoke.toml", "--kernel", kernel];
    let (passed, d) = test_run(layout, &args, "target/bench-reports")?;
    Ok(passed.then_some(d))
}

/// The whole `vf-token.toml` run on its kernels, and per kernel the time of
/// each test (summed over its results, as the JUnit records it).
pub fn vf_token(layout: &Layout) -> Result<()> {
    let reports = "target/bench-vf-token";
    let (passed, total) = test_run(layout, &["manifests/vf-token.toml"], reports)?;
    anyhow::ensure!(passed, "manifests/vf-token.toml did not pass");
    let xml = std::fs::read_to_string(layout.root.join(reports).join("latest/junit.xml"))?;
    out!(
        "\nvf-token.toml on its kernels: {:.1} s (goal < 180 s)",
        secs(total)
    );
    for (suite, test, t) in test_times(&xml) {
        if ["rules", "vf-guest", "qemu", "crash-recovery"]
            .iter()
            .any(|n| test.ends_with(n))
        {
            out!("  {suite:<26} {test:<28} {t:>6.2} s");
        }
    }
    Ok(())
}

/// (suite, classname, seconds) from a JUnit report, in order.
pub(crate) fn test_times(xml: &str) -> Vec<(String, String, f64)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(tag[start..].split('"').next()?.to_string())
    };
    let mut out: Vec<(String, String, f64)> = Vec::new();
    let mut suite = String::new();
    for tag in xml.split('<') {
        if tag.starts_with("testsuite ") {
            suite = attr(tag, "name").unwrap_or_default();
        } else if tag.starts_with("testcase ") {
            let class = attr(tag, "classname").unwrap_or_default();
            let t: f64 = attr(tag, "time")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0.0);
            match out.iter_mut().find(|(s, c, _)| *s == suite && *c == class) {
                Some(e) => e.2 += t,
                None => out.push((suite.clone(), class, t)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_nested_qemu_runs_under_a_hard_timeout() {
        let vms = super::nested_vms(std::path::Path::new("/g/ukci-guest"));
        assert_eq!(vms.len(), 4);
        let script = super::nested_script(&vms, 2);
        let starts: Vec<&str> = script
            .lines()
            .filter(|l| l.contains("qemu-system"))
            .collect();
        assert_eq!(starts.len(), 4, "{script}");
        for l in starts {
            assert!(
                l.contains("'timeout' '-s' 'KILL' '30' 'qemu-system-x86_64'"),
                "{l}"
            );
            assert!(
                l.contains("'-accel' 'kvm'") || l.contains("'-accel' 'tcg'"),
                "{l}"
            );
        }
    }

    #[test]
    fn times_are_summed_per_suite_and_test() {
        let xml = r#"<testsuites><testsuite name="v [debian:6.1]"><testcase name="a" classname="v.rules" time="1.5"/>
            <testcase name="b" classname="v.rules" time="0.5"/></testsuite><testsuite name="v [debian:6.12]">
            <testcase name="a" classname="v.rules" time="2"/></testsuite></testsuites>"#;
        assert_eq!(
            super::test_times(xml),
            vec![
                ("v [debian:6.1]".into(), "v.rules".into(), 2.0),
                ("v [debian:6.12]".into(), "v.rules".into(), 2.0)
            ]
        );
    }
}
