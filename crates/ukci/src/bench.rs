//! `cargo xtask bench`: boot-to-verdict times against the QEMU floor, and
//! the runner's overhead over the same QEMU command launched by hand.

use anyhow::Result;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use ukci_runner::events::{Event, TestRun};
use ukci_runner::exec;
use ukci_runner::host;
use ukci_runner::lane::LaneContext;
use ukci_runner::manifest::AccelRequest;
use ukci_runner::manifest::MachineType;
use ukci_runner::plan;
use ukci_runner::plan::PlanOptions;
use ukci_runner::qemu::{self, Boot, VmConfig};
use ukci_runner::session;
use ukci_runner::session::Layout;
use ukci_runner::supervise;
use ukci_runner::units::ByteSize;
use ukci_runner::{exitcode, outcome};
use ukci_vhost::accel::Accel;

/// The fastest and the middle of a set of measurements.
pub(crate) struct Stats {
    pub min: Duration,
    pub median: Duration,
}

impl Stats {
    pub fn of(mut samples: Vec<Duration>) -> Option<Stats> {
        samples.sort();
        Some(Stats {
            min: *samples.first()?,
            median: samples[samples.len() / 2],
        })
    }
}

fn measure(runs: usize, mut f: impl FnMut() -> bool) -> Option<Stats> {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        if !f() {
            return None;
        }
        v.push(t.elapsed());
    }
    Stats::of(v)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(name: &str, s: &Option<Stats>, floor: Option<&Stats>) {
    match s {
        Some(s) => {
            let ratio = floor.map_or(String::new(), |f| {
                format!("{:>6.2}x floor", ms(s.min) / ms(f.min))
            });
            out!(
                "{name:<44} {:>8.1} {:>8.1}  {ratio}",
                ms(s.min),
                ms(s.median)
            );
        }
        None => out!("{name:<44}   failed"),
    }
}

/// The QEMU floor: start with no machine (or just build `machine`) and quit
/// at once.
fn floor(machine: &str, accel: Accel) -> bool {
    let child = Command::new(qemu::QEMU)
        .args([
            "-M",
            machine,
            "-accel",
            accel.word(),
            "-display",
            "none",
            "-nodefaults",
            "-S",
            "-monitor",
            "stdio",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(b"quit\n");
    }
    child.wait().is_ok_and(|s| s.success())
}

fn vm(machine: MachineType, boot: Boot, accel: Accel, kvm_module: Option<&str>) -> VmConfig {
    VmConfig {
        machine,
        accel,
        cpu: qemu::default_cpu(accel, kvm_module),
        memory: ByteSize::mib(128),
        smp: 1,
        pit: true,
        boot,
        append: "checks=boot.smoke".into(),
        devices: vec![],
    }
}

/// The command as a person would type it, output read to the end.
fn by_hand(v: &VmConfig) -> bool {
    Command::new(qemu::QEMU)
        .args(v.args())
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.code() == Some(1))
}

/// The same VM through the runner: supervision, streaming, judging.
fn through_runner(v: &VmConfig) -> bool {
    let fin = supervise::run(
        qemu::QEMU.as_ref(),
        &v.args(),
        Duration::from_secs(20),
        |_| {},
    );
    let j = outcome::judge("bench", &["boot.smoke".to_string()], &fin);
    j.results.iter().all(|r| r.outcome.as_expected())
}

/// The runner's cost over the same QEMU started by hand, in percent.
const OVERHEAD_GOAL: f64 = 5.0;
/// A whole `ukci test` process running one microvm test, in ms (median).
const ONE_TEST_GOAL_MS: f64 = 60.0;

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "NOT met" }
}

/// The whole process of a one-test run, as people start it:
/// `ukci test manifests/cr-arch.toml --filter cr-arch.smap --accel tcg`
/// (host checks, guest freshness, plan, the VM, the reports).
fn one_test_run(layout: &Layout, runs: usize) {
    let Ok(ukci) = std::env::current_exe() else {
        return;
    };
    let reports = std::env::temp_dir().join(format!("ukci-bench-one-{}", std::process::id()));
    let args: Vec<std::ffi::OsString> = vec![
        "test".into(),
        layout.manifests().join("cr-arch.toml").into(),
        "--filter".into(),
        "cr-arch.smap".into(),
        "--accel".into(),
        "tcg".into(),
        "--reports".into(),
        reports.clone().into(),
    ];
    let s = measure(runs, || {
        let fin = supervise::run(ukci.as_os_str(), &args, Duration::from_secs(60), |_| {});
        fin.end == supervise::End::Exited(0)
    });
    let _ = std::fs::remove_dir_all(&reports);
    let name = "one-test run, whole process (cr-arch.smap) [tcg]";
    match &s {
        Some(st) => out!(
            "{name:<44} {:>8.1} {:>8.1}  goal <= {ONE_TEST_GOAL_MS} ms (median): {}",
            ms(st.min),
            ms(st.median),
            met(ms(st.median) <= ONE_TEST_GOAL_MS)
        ),
        None => out!("{name:<44}   failed"),
    }
}

pub fn run(layout: &Layout, runs: usize, virtual_only: bool) -> Result<i32> {
    if let Err(code) = crate::prereq::ensure(layout) {
        return Ok(code);
    }
    crate::guest::build(layout)?;
    if !virtual_only {
        host_rows(layout, runs)?;
    }
    crate::bench_vhost::run(layout, runs.min(3))?;
    crate::bench_vhost::nested_start(layout, "debian:6.12", runs)?;
    crate::bench_vhost::kvm_manifest(layout)?;
    crate::bench_vhost::vf_token(layout)?;
    crate::bench_kvm::run(layout)?;
    Ok(exitcode::OK)
}

/// This host's own rows: QEMU floors, boot-to-verdict per machine, the
/// runner's overhead, the CR manifests, the NVMe driver.
fn host_rows(layout: &Layout, runs: usize) -> Result<()> {
    let facts = host::detect(&layout.qemu_facts());
    let auto = host::resolve_auto(
        &facts,
        &layout.guest_image(),
        &layout.images().join("accel-probe.txt"),
        host::KVM_PROBE_LIMIT,
    );
    let module = facts.kvm_module.as_deref();
    let guest = layout.guest_image();
    out!("accel auto: {} ({})", auto.accel, auto.reason);
    out!("{runs} runs each, wall clock in ms\n");
    out!("{:<44} {:>8} {:>8}", "", "min", "median");
    let mut accels = vec![Accel::Tcg];
    if auto.accel == Accel::Kvm {
        accels.push(Accel::Kvm);
    }
    for accel in accels {
        let fl = measure(runs, || floor("none", accel));
        row(
            &format!("QEMU floor (-M none, quit at once) [{accel}]"),
            &fl,
            None,
        );
        let built = measure(runs, || floor("microvm", accel));
        row(
            &format!("microvm built, quit at once [{accel}]"),
            &built,
            fl.as_ref(),
        );
        // Each machine as the runner boots it; microvm also the other way,
        // so the ROM's gain over PVH through qboot shows.
        let mut boots: Vec<(MachineType, Boot)> =
            [MachineType::Microvm, MachineType::Q35, MachineType::Pc]
                .into_iter()
                .map(|m| (m, plan::guest_boot(m, &guest, false)))
                .collect();
        if matches!(boots[0].1, Boot::Rom { .. }) {
            boots.insert(
                1,
                (
                    MachineType::Microvm,
                    Boot::Pvh {
                        kernel: guest.clone(),
                        firmware: qemu::Firmware::Machine,
                    },
                ),
            );
        }
        for (m, boot) in boots {
            let method = match boot {
                Boot::Pvh { .. } => "pvh",
                Boot::Rom { .. } => "rom",
            };
            let v = vm(m, boot, accel, module);
            let s = measure(runs, || by_hand(&v));
            row(
                &format!("boot-to-verdict {} {method} [{accel}]", m.qemu_name()),
                &s,
                fl.as_ref(),
            );
        }
        let v = vm(
            MachineType::Microvm,
            plan::guest_boot(MachineType::Microvm, &guest, false),
            accel,
            module,
        );
        let hand = measure(runs, || by_hand(&v));
        let runner = measure(runs, || through_runner(&v));
        row(&format!("microvm by hand [{accel}]"), &hand, None);
        row(
            &format!("microvm through the runner [{accel}]"),
            &runner,
            None,
        );
        if let (Some(h), Some(r)) = (&hand, &runner) {
            let min = (ms(r.min) / ms(h.min) - 1.0) * 100.0;
            out!(
                "{:<44} {min:>+7.1}% (min) {:>+7.1}% (median)  goal <= {OVERHEAD_GOAL}% (min): {}",
                format!("runner overhead [{accel}]"),
                (ms(r.median) / ms(h.median) - 1.0) * 100.0,
                met(min <= OVERHEAD_GOAL)
            );
        }
    }
    one_test_run(layout, runs);
    cr_manifests(layout, runs);
    crate::bench_nvme::run(layout, runs)
}

/// The CR manifests as `cargo xtask test manifests/cr-arch.toml
/// manifests/cr-pinning.toml --accel tcg --jobs 2` runs them (plan, then
/// every VM through the executor with two workers), without the terminal
/// and the report: the wall time from planning to the last verdict.
fn cr_manifests(layout: &Layout, runs: usize) {
    let paths = ["cr-arch.toml", "cr-pinning.toml"].map(|m| layout.manifests().join(m));
    out!("\nCR manifests, --jobs 2 [tcg]");
    let manifests = match session::load_manifests(&paths) {
        Ok(m) => m,
        Err(d) => {
            eprint!("{d}");
            return;
        }
    };
    let opts = PlanOptions {
        accel: Some(AccelRequest::Tcg),
        ..Default::default()
    };
    let lane = LaneContext {
        images: layout.images(),
        results: std::env::temp_dir().join("ukci-bench-cr"),
        agent: std::env::current_exe().unwrap_or_else(|_| "ukci".into()),
        ..Default::default()
    };
    let mut vms = 0;
    let mut status = exitcode::OK;
    let s = measure(runs, || {
        let plan = session::make_plan(layout, &manifests, &opts);
        let (tx, rx) = mpsc::channel();
        let mut done: Vec<Option<TestRun>> = vec![None; plan.len()];
        std::thread::scope(|s| {
            s.spawn(|| exec::execute(&plan, 2, &lane, &Default::default(), tx));
            for e in rx {
                if let Event::Finished { idx, run } = e {
                    done[idx] = Some(*run);
                }
            }
        });
        vms = done.iter().flatten().filter(|r| r.end.is_some()).count();
        status = session::exit_status(&done);
        status == exitcode::OK
    });
    row(
        &format!("both manifests, {vms} VMs, exit {status}"),
        &s,
        None,
    );
}
