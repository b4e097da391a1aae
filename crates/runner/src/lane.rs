//! The virtual lane: one boot of a host kernel under QEMU per (suite,
//! kernel), with this runner inside it as the agent. The agent runs the
//! suite's tests there and streams one event line per finished test on the
//! serial console; the same events are kept in the results folder, which is
//! what counts when the console interleaved them with kernel messages.

use crate::events::{EVENTS_FILE, Event, STARTED, TestRun, WireRun};
use crate::hostconfig::HostCheckContext;
use crate::manifest::kut;
use crate::outcome::{Outcome, SubResult};
use crate::plan::{PlannedTest, VirtualBoot};
use crate::rundir;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use ukci_vhost::boot::{self, Agent, BootConfig, BootError};
use ukci_vhost::initramfs::{self, InitramfsSpec};

/// What executing a plan needs besides the plan.
#[derive(Clone, Debug, Default)]
pub struct LaneContext {
    pub images: PathBuf,
    /// The per-user cache of host kernels and initramfs images
    /// ([`ukci_vhost::cache::user_dir`]).
    pub cache: PathBuf,
    /// `reports/<run>/vhost`: one results folder per boot below it.
    pub results: PathBuf,
    /// This runner's own binary, started as the agent inside the host.
    pub agent: PathBuf,
    /// For host checks and VF guests on this host.
    pub host_checks: HostCheckContext,
}

/// This runner's binary, to start as the agent. When a rebuild replaced the
/// file while this process runs, Linux reports it as "<path> (deleted)";
/// the new file at that path is the same program.
pub fn runner_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| "ukci".into());
    let s = exe.to_string_lossy();
    match s.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    }
}

/// Where the virtual host's SR-IOV NVMe PF sits (behind its root port).
pub const VIRTUAL_PF: &str = "0000:01:00.0";
/// The variable that tells the agent which PF it may use.
pub const PF_ENV: &str = "UKCI_PF";
/// Tells the agent what its host's KVM runs on ([`crate::plan::VHOST_ACCEL`]).
pub const KVM_HOST_ENV: &str = "UKCI_KVM_HOST";
/// Tells the agent the run's `--accel`, when one was given.
pub const ACCEL_ENV: &str = "UKCI_ACCEL";
/// Tells the agent the lane's KVM variant its host loaded.
pub const KVM_VARIANT_ENV: &str = "UKCI_KVM_VARIANT";
/// Where a KVM built by ukci says which patch set it was built from.
pub const KVM_BUILD_MARKER: &str = "/sys/module/kvm/parameters/ukci_variant";

/// The folder name of one boot's results: `<suite>@<kernel>`, and
/// `<suite>@<kernel>.boot<n>` for a boot after the first.
pub fn boot_dir_name(suite: &str, kernel: &str, boot_no: u32) -> String {
    let dir = rundir::env_dir_name(suite, kernel);
    match boot_no {
        1 => dir,
        n => format!("{dir}.boot{n}"),
    }
}

/// How often one (suite, kernel) may boot: a second boot runs only the tests
/// a first host that broke down (wedged, or QEMU crashed) left unreported;
/// any other host failure is final.
pub const MAX_BOOTS: u32 = 2;

/// Why a boot gave no agent status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFailure {
    pub why: String,
    /// The emulated host broke down (see [`boot::Failure::is_breakdown`]):
    /// the tests it left unreported may run again on a fresh host.
    pub breakdown: bool,
}

/// The error result for a test whose agent ran on another kernel than the
/// plan's (whose `uname -r` is the report's `host.kernel` property).
/// An error result when the KVM the host loaded is not the build the
/// variant asked for (a stock module, or another patch set's).
pub fn wrong_kvm(
    variant: Option<&crate::plan::KvmVariant>,
    loaded: Option<&str>,
    log: &str,
) -> Option<SubResult> {
    let want = variant?
        .patches
        .as_ref()?
        .file_name()?
        .to_string_lossy()
        .into_owned();
    (loaded != Some(want.as_str())).then(|| SubResult {
        name: "kvm.build".into(),
        outcome: Outcome::Error(format!(
            "the virtual host's KVM is {}, not the `{want}` build this variant loads: {log}",
            loaded.map_or("the kernel's own".to_string(), |l| format!(
                "the `{l}` build"
            ))
        )),
        detail: None,
    })
}

pub fn wrong_kernel(planned: &str, booted: &str) -> Option<SubResult> {
    (planned != booted).then(|| SubResult {
        name: "host.kernel".into(),
        outcome: Outcome::Error(format!(
            "the virtual host runs kernel `{booted}` (uname -r), the plan expected `{planned}`: \
             run `cargo xtask clean-cache` and run again"
        )),
        detail: None,
    })
}

/// Whether the tests a failed boot left unreported get another boot.
pub fn boot_again(failure: &HostFailure, boot_no: u32, unreported: usize) -> bool {
    failure.breakdown && boot_no < MAX_BOOTS && unreported > 0
}

/// Boots the virtual host for the tests `idxs` (one suite, one kernel) and
/// sends their `Finished` events. A test the agent never reported ends as an
/// error naming what happened to the host, with its serial log; when the
/// host broke down, such tests first run once more on a fresh host, and the
/// breakdown is recorded on their results as a rerun.
pub fn run_boot(plan: &[PlannedTest], idxs: &[usize], ctx: &LaneContext, events: &Sender<Event>) {
    run_boots(plan, idxs, &ctx.results, events, |these, dir, on_line| {
        boot_and_run(plan, these, ctx, dir, on_line)
    });
}

/// [`run_boot`] with the boot itself as a parameter: `boot(tests, results
/// folder, on_line)` runs the agent for `tests` and returns its status.
fn run_boots(
    plan: &[PlannedTest],
    idxs: &[usize],
    results: &Path,
    events: &Sender<Event>,
    mut boot_and_run: impl FnMut(
        &[usize],
        &Path,
        &mut (dyn FnMut(&str) + Send),
    ) -> Result<i32, HostFailure>,
) {
    let boot = plan[idxs[0]]
        .boot
        .as_ref()
        .expect("a virtual test has a boot");
    for &i in idxs {
        let _ = events.send(Event::Started { idx: i });
    }
    let mut boots = Boots {
        plan,
        boot,
        events,
        pending: idxs.iter().map(|&i| (plan[i].id(), i)).collect(),
        reruns: Vec::new(),
    };
    for boot_no in 1..=MAX_BOOTS {
        let dir = results.join(boot_dir_name(&boot.suite, &boot.label(), boot_no));
        let these: Vec<usize> = boots.pending.values().copied().collect();
        let mut started: Vec<String> = Vec::new();
        let outcome = boot_and_run(&these, &dir, &mut |line| boots.on_line(line, &mut started));
        boots.read_events_file(&dir);
        let why = match outcome {
            Ok(status) => why_unreported(status),
            Err(failure)
                if boot_again(&failure, boot_no, boots.pending.len())
                    && !crate::supervise::interrupted() =>
            {
                boots.broke_down(&failure, boot_no, &dir);
                continue;
            }
            Err(failure) => failure.why,
        };
        boots.fail_unreported(&why, &dir, &started);
        break;
    }
}

/// The boots of one (suite, kernel, KVM variant): the tests no boot has
/// reported yet, and why earlier boots gave no result for them.
struct Boots<'a> {
    plan: &'a [PlannedTest],
    boot: &'a VirtualBoot,
    events: &'a Sender<Event>,
    /// Unreported tests: id → index in the plan.
    pending: BTreeMap<String, usize>,
    /// Why each earlier boot broke down, with its serial log.
    reruns: Vec<String>,
}

impl Boots<'_> {
    /// One line of the agent's console: a finished test, a test starting,
    /// or output shown beside the first unreported test.
    fn on_line(&mut self, line: &str, started: &mut Vec<String>) {
        if let Some(w) = WireRun::from_line(line) {
            self.finish(w);
        } else if let Some((_, id)) = line.trim_end_matches('\r').split_once(STARTED) {
            started.push(id.to_string());
        } else if let Some(&idx) = self.pending.values().next() {
            let _ = self.events.send(Event::Output {
                idx,
                line: line.to_string(),
            });
        }
    }

    /// Every event the agent kept in the results folder: the file is
    /// complete even where the console mangled a line.
    fn read_events_file(&mut self, dir: &Path) {
        if let Ok(text) = std::fs::read_to_string(dir.join(EVENTS_FILE)) {
            for w in text.lines().filter_map(WireRun::from_json) {
                self.finish(w);
            }
        }
    }

    /// Sends a test's `Finished` event the first time the agent reports it,
    /// with what the agent found and an error where the host was not the
    /// one planned (another kernel, another KVM build).
    fn finish(&mut self, w: WireRun) {
        let Some(idx) = self.pending.remove(&w.test) else {
            return;
        };
        let planned = &self.plan[idx];
        let booted = w.host_kernel.clone();
        let wrong_build = w
            .env
            .as_ref()
            .and_then(|e| wrong_kvm(self.boot.kvm.as_ref(), e.kvm_build.as_deref(), &e.kvm_log));
        let env = w.env.clone().map(|e| e.apply(&planned.env));
        let mut run = w.into_run();
        run.env = env;
        run.judged.results.extend(wrong_build);
        run.reruns = self.reruns.clone();
        if let Some(wrong) = wrong_kernel(&planned.env.host_kernel, &booted) {
            run.judged.results.push(wrong);
        }
        let _ = self.events.send(Event::Finished {
            idx,
            run: Box::new(run),
        });
    }

    /// Records a boot that broke down; its unreported tests get the next.
    fn broke_down(&mut self, failure: &HostFailure, boot_no: u32, dir: &Path) {
        let _ = self.events.send(Event::Output {
            idx: *self.pending.values().next().expect("pending is not empty"),
            line: format!(
                "virtual host {}: boot {boot_no} broke down; the {} unreported test(s) run on a fresh host",
                self.boot.kernel.name,
                self.pending.len()
            ),
        });
        self.reruns.push(format!(
            "{} (boot {boot_no}); serial log: {}",
            failure.why.lines().next().unwrap_or_default(),
            dir.join("serial.log").display()
        ));
    }

    /// Ends every test the last boot left unreported as an error that says
    /// `why`, whether the test had started, and where the serial log is.
    fn fail_unreported(self, why: &str, dir: &Path, started: &[String]) {
        let serial = std::fs::read_to_string(dir.join("serial.log")).unwrap_or_default();
        for (id, idx) in self.pending {
            let test = id
                .rsplit_once('.')
                .map_or(id.as_str(), |(_, t)| t)
                .to_string();
            let when = if started.contains(&id) {
                "while this test ran"
            } else {
                "before this test started"
            };
            let mut run = TestRun::without_vm(vec![SubResult {
                name: test,
                outcome: Outcome::Error(format!(
                    "virtual host {} ({when}): {why}; serial log: {}",
                    self.boot.kernel.name,
                    dir.join("serial.log").display()
                )),
                detail: None,
            }]);
            run.log = serial.clone();
            run.reruns = self.reruns.clone();
            let _ = self.events.send(Event::Finished {
                idx,
                run: Box::new(run),
            });
        }
    }
}

/// Why a test is unreported after the agent exited with `status`.
fn why_unreported(status: i32) -> String {
    match status {
        0 => "the agent finished without reporting this test".to_string(),
        status => format!("the agent exited with status {status} before reporting this test"),
    }
}

/// What the host loads besides the lane's modules: the kernel's own KVM, or
/// kvm.ko and kvm-amd.ko built from the variant's patch set (cached; its
/// build log copied beside the serial log), with the variant's parameters.
fn kvm_spec(
    boot: &crate::plan::VirtualBoot,
    ctx: &LaneContext,
    dir: &Path,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<InitramfsSpec, String> {
    let mut spec = InitramfsSpec::default();
    let Some(variant) = &boot.kvm else {
        return Ok(spec);
    };
    spec.kvm_params = variant.params.clone();
    if let Some(set) = &variant.patches {
        let built = ukci_vhost::kvmbuild::build(&ctx.cache, &boot.kernel, set, &mut |l| {
            on_line(&format!("kvm build [{}]: {l}", variant.name));
        })
        .map_err(|e| {
            format!(
                "KVM variant `{}` ({}) for {}: {e}",
                variant.name,
                set.display(),
                boot.kernel.name
            )
        })?;
        let _ = std::fs::copy(&built.log, dir.join("kvm-build.log"));
        spec.replacements = built.modules;
    }
    Ok(spec)
}

/// Builds the initramfs, boots, runs the agent; the agent's exit status or
/// why the host failed.
fn boot_and_run(
    plan: &[PlannedTest],
    idxs: &[usize],
    ctx: &LaneContext,
    dir: &Path,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<i32, HostFailure> {
    let fail = |why: String| HostFailure {
        why,
        breakdown: false,
    };
    let first = &plan[idxs[0]];
    let boot = first.boot.as_ref().expect("a virtual test has a boot");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let spec = kvm_spec(boot, ctx, dir, on_line).map_err(fail)?;
    let initrd = initramfs::build(&ctx.cache, &boot.kernel, &spec)
        .map_err(|e| fail(format!("initramfs: {e}")))?;
    let tests: Vec<&str> = idxs.iter().map(|&i| plan[i].test.as_str()).collect();
    let agent = agent(boot, &tests, ctx, dir).map_err(fail)?;
    // The namespace image stays out of the results folder the agent writes
    // (and searches for secrets), in this run's scratch folder.
    let scratch = ctx
        .host_checks
        .scratch
        .join(dir.file_name().unwrap_or_default());
    let mut cfg = BootConfig::new(
        &boot.kernel.name,
        &boot.kernel.vmlinuz,
        &initrd.path,
        dir,
        &scratch,
        agent,
    );
    cfg.topology = boot.topology.clone();
    cfg.timeout = boot.timeout;
    // Kernel messages would interleave with the agent's event lines.
    cfg.extra_append.push("quiet".into());
    let report = boot::run(&cfg, |_, line| on_line(line)).map_err(|e| HostFailure {
        breakdown: matches!(&e, BootError::Failed(f) if f.failure.is_breakdown()),
        why: e.to_string(),
    });
    let _ = std::fs::remove_dir_all(&scratch);
    report.map(|r| r.agent_status)
}

/// How `/init` starts the agent: this runner's binary with the manifest,
/// the results folder and `tests`, and what the agent is told through its
/// environment (the PF it may use, what its KVM runs on, `--accel`, the KVM
/// variant).
fn agent(
    boot: &VirtualBoot,
    tests: &[&str],
    ctx: &LaneContext,
    dir: &Path,
) -> Result<Agent, String> {
    // The agent starts in another working directory.
    let manifest = std::fs::canonicalize(&boot.manifest)
        .map_err(|e| format!("{}: {e}", boot.manifest.display()))?;
    let mut args = vec![
        "agent".to_string(),
        manifest.display().to_string(),
        "--results".to_string(),
        dir.display().to_string(),
    ];
    for test in tests {
        args.push("--test".into());
        args.push(test.to_string());
    }
    Ok(Agent {
        program: ctx.agent.clone(),
        args,
        env: [
            ("CI", "1"),
            (PF_ENV, VIRTUAL_PF),
            (KVM_HOST_ENV, crate::plan::VHOST_ACCEL.word()),
        ]
        .into_iter()
        .chain(boot.accel.map(|a| (ACCEL_ENV, a.word())))
        .chain(
            boot.kvm
                .as_ref()
                .map(|k| (KVM_VARIANT_ENV, k.name.as_str())),
        )
        .map(|(k, v)| (k.to_string(), v.to_string()))
        // The kvm-unit-tests tree this run uses: the host sees it at the
        // same path on its read-only root.
        .chain(
            std::env::var(kut::DIR_ENV)
                .ok()
                .map(|d| (kut::DIR_ENV.to_string(), d)),
        )
        .collect(),
        chroot: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variant_whose_build_is_not_loaded_is_an_error() {
        let v3 = crate::plan::KvmVariant {
            name: "v3-guest-unpin".into(),
            patches: Some("manifests/../patches/kvm/cr-pin-v3".into()),
            params: vec!["crpin_flaw=guest-unpin".into()],
        };
        assert!(wrong_kvm(Some(&v3), Some("cr-pin-v3"), "").is_none());
        let stock = wrong_kvm(Some(&v3), None, "kvm_amd: insmod failed: Invalid argument").unwrap();
        assert!(
            matches!(&stock.outcome, Outcome::Error(m) if m.contains("the kernel's own")
                && m.contains("`cr-pin-v3` build") && m.contains("insmod failed")),
            "{stock:?}"
        );
        let other = wrong_kvm(Some(&v3), Some("heki"), "").unwrap();
        assert!(matches!(&other.outcome, Outcome::Error(m) if m.contains("the `heki` build")));
        // The kernel's own KVM, and a lane without variants, expect no build.
        let own = crate::plan::KvmVariant {
            patches: None,
            ..v3
        };
        assert!(wrong_kvm(Some(&own), None, "").is_none());
        assert!(wrong_kvm(None, Some("cr-pin-v3"), "").is_none());
    }

    /// One boot: the tests it reports and how it ends.
    type FakeBoot = Box<dyn Fn(&[String]) -> (Vec<&'static str>, Result<i32, HostFailure>)>;

    /// The debian:6.1 tests of a two-test virtual suite, run by `boots`
    /// (one closure per boot, given the tests it should run); the finished
    /// runs by test id.
    fn run_with_boots(boots: Vec<FakeBoot>) -> (BTreeMap<String, TestRun>, Vec<Vec<String>>) {
        let plan = crate::plan::tests::virtual_plan(crate::plan::tests::VIRTUAL);
        let idxs: Vec<usize> = (0..plan.len())
            .filter(|&i| plan[i].env.label() == "debian:6.1")
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut asked = Vec::new();
        let mut boots = boots.into_iter();
        run_boots(
            &plan,
            &idxs,
            Path::new("/nonexistent"),
            &tx,
            |these, _dir, on_line| {
                let ids: Vec<String> = these.iter().map(|&i| plan[i].id()).collect();
                asked.push(ids.clone());
                // The agent starts the first test it was given.
                on_line(&format!("noise{STARTED}{}\r", ids[0]));
                let (reported, status) = boots.next().expect("no more boots expected")(&ids);
                for id in reported {
                    on_line(
                        &WireRun::new(id, &pass_run())
                            .on_kernel("6.1.0-56-amd64")
                            .to_line(),
                    );
                }
                status
            },
        );
        drop(tx);
        let runs = rx
            .into_iter()
            .filter_map(|e| match e {
                Event::Finished { idx, run } => Some((plan[idx].id(), *run)),
                _ => None,
            })
            .collect();
        (runs, asked)
    }

    fn pass_run() -> TestRun {
        TestRun::without_vm(vec![SubResult {
            name: "r".into(),
            outcome: Outcome::Pass,
            detail: None,
        }])
    }

    fn wedged() -> Result<i32, HostFailure> {
        Err(HostFailure {
            why: "the host kernel wedged: task xtask:148 blocked".into(),
            breakdown: true,
        })
    }

    fn outcome(run: &TestRun) -> &str {
        run.judged.results[0].outcome.word()
    }

    #[test]
    fn a_wedged_host_gets_one_fresh_boot_for_the_unreported_tests() {
        let (runs, asked) = run_with_boots(vec![
            Box::new(|_| (vec!["v.env"], wedged())),
            Box::new(|_| (vec!["v.nested"], Ok(0))),
        ]);
        assert_eq!(asked, [vec!["v.env", "v.nested"], vec!["v.nested"]]);
        assert_eq!(outcome(&runs["v.env"]), "pass");
        assert!(
            runs["v.env"].reruns.is_empty(),
            "reported by the first boot"
        );
        assert_eq!(outcome(&runs["v.nested"]), "pass");
        let rerun = &runs["v.nested"].reruns;
        assert_eq!(rerun.len(), 1);
        assert!(
            rerun[0].starts_with(
                "the host kernel wedged: task xtask:148 blocked (boot 1); serial log: "
            ),
            "{rerun:?}"
        );
    }

    #[test]
    fn a_result_from_another_kernel_than_planned_is_an_error() {
        assert_eq!(wrong_kernel("6.1.0-56-amd64", "6.1.0-56-amd64"), None);
        let e = wrong_kernel("6.1.0-56-amd64", "6.12.117+deb12-amd64").unwrap();
        assert_eq!(e.name, "host.kernel");
        let msg = e.outcome.message().unwrap();
        assert!(msg.contains("runs kernel `6.12.117+deb12-amd64`"), "{msg}");
        assert!(
            wrong_kernel("6.1.0-56-amd64", "").is_some(),
            "an agent that names no kernel"
        );
    }

    #[test]
    fn a_second_wedge_or_any_other_host_failure_is_an_error() {
        let (runs, asked) = run_with_boots(vec![
            Box::new(|_| (vec![], wedged())),
            Box::new(|_| (vec![], wedged())),
        ]);
        assert_eq!(asked.len(), 2);
        for run in runs.values() {
            assert_eq!(outcome(run), "error");
            assert_eq!(run.reruns.len(), 1);
        }
        let msg = |id: &str| {
            runs[id].judged.results[0]
                .outcome
                .message()
                .unwrap()
                .to_string()
        };
        assert!(
            msg("v.env").contains("(while this test ran)"),
            "{}",
            msg("v.env")
        );
        assert!(msg("v.nested").contains("(before this test started)"));
        let (runs, asked) = run_with_boots(vec![Box::new(|_| {
            let failed = HostFailure {
                why: "kernel panic: Attempted to kill init!".into(),
                breakdown: false,
            };
            (vec!["v.env"], Err(failed))
        })]);
        assert_eq!(asked.len(), 1);
        assert_eq!(outcome(&runs["v.env"]), "pass");
        let msg = runs["v.nested"].judged.results[0]
            .outcome
            .message()
            .unwrap();
        assert!(msg.contains("Attempted to kill init"), "{msg}");
        assert!(msg.contains("(before this test started)"), "{msg}");
        assert!(runs["v.nested"].reruns.is_empty());
    }

    #[test]
    fn boot_folders_are_named_for_suite_and_kernel() {
        assert_eq!(
            boot_dir_name("vhost-smoke", "debian:6.12", 1),
            "vhost-smoke@debian-6.12"
        );
        assert_eq!(boot_dir_name("s", "dir:/a b", 1), "s@dir--a-b");
        assert_eq!(boot_dir_name("s", "debian:6.1", 2), "s@debian-6.1.boot2");
    }
}
