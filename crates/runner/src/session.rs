//! One `cargo xtask test` run: manifests → plan → execute → reports.

use crate::diag::Diagnostics;
use crate::durations::{self, History};
use crate::events::{self, Event, TestRun, WireRun};
use crate::exec;
use crate::host::{self, AccelChoice, HostFacts};
use crate::hostconfig::{self, HostCheckContext};
use crate::lane::{self, LaneContext};
use crate::manifest::{self, AccelRequest, Manifest};
use crate::outcome::Outcome;
use crate::plan::{self, Decision, PlanOptions, PlannedTest};
use crate::reproduce::Rerun;
use crate::rundir::{self, RunDir};
use crate::{exitcode, html, junit, terminal};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;
use ukci_vfio::journal::Why;
use ukci_vhost::accel::Accel;
use ukci_vhost::kernel::{Kernel, KernelSpec, KernelStore, Refresh};

/// Where things live in a checkout.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
    /// Overrides `<root>/reports`.
    pub reports: Option<PathBuf>,
}

impl Layout {
    pub fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    /// The per-user cache every checkout shares: host kernels, initramfs
    /// images, the private apt lists.
    pub fn cache(&self) -> PathBuf {
        ukci_vhost::cache::user_dir()
    }
    pub fn reports(&self) -> PathBuf {
        self.reports
            .clone()
            .unwrap_or_else(|| self.root.join("reports"))
    }
    /// Where runs keep their scratch images: one folder per run.
    pub fn scratch_root(&self) -> PathBuf {
        self.images().join("scratch")
    }
    /// This process's scratch folder, `images/scratch/<pid>`.
    pub fn scratch(&self) -> PathBuf {
        self.scratch_root().join(std::process::id().to_string())
    }
    /// The guest image a run boots (copied there after a build).
    pub fn guest_image(&self) -> PathBuf {
        self.images().join("ukci-guest")
    }
    /// What the installed QEMU is and can do, kept between runs (see
    /// [`host::qemu_facts`]).
    pub fn qemu_facts(&self) -> PathBuf {
        self.images().join("qemu-facts.txt")
    }
    /// The restore journal of this host: every device change is written
    /// here first, and replayed by the next run or `cargo xtask restore`.
    pub fn journal(&self) -> PathBuf {
        self.images().join("restore.journal")
    }
    /// The host config naming the PCI functions ukci may use.
    pub fn host_config(&self) -> PathBuf {
        std::env::var_os("UKCI_HOST_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/ukci/host.toml"))
    }
}

/// Every `*.toml` in `dir`, sorted.
pub fn all_manifests(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

/// Loads every manifest; all problems of all files are returned together.
pub fn load_manifests(paths: &[PathBuf]) -> Result<Vec<Manifest>, Diagnostics> {
    let mut out = Vec::new();
    let mut diags = Diagnostics::default();
    for p in paths {
        match manifest::load(p) {
            Ok(m) => {
                for w in &m.warnings {
                    eprintln!("warning: {w}");
                }
                out.push(m);
            }
            Err(d) => diags.extend(d),
        }
    }
    diags.into_result(out)
}

#[derive(Clone, Debug, Default)]
pub struct TestOptions {
    /// `--kernel`: the kernels of every virtual suite.
    pub kernels: Vec<String>,
    pub filter: Option<String>,
    pub accel: Option<AccelRequest>,
    pub jobs: usize,
    /// Unexpected skips (not declared by an expectation) count as failures.
    pub strict: bool,
}

/// Resolves `auto` once per run, only when some test needs it.
pub fn auto_accel(
    layout: &Layout,
    facts: &HostFacts,
    manifests: &[Manifest],
    opts: &PlanOptions,
) -> AccelChoice {
    let auto = AccelRequest::Auto;
    let needs_auto = opts.accel.is_none_or(|a| a == auto)
        && manifests.iter().any(|m| {
            m.tests
                .iter()
                .any(|t| t.accel.or(m.defaults.accel).unwrap_or(auto) == auto)
        });
    if opts.accel == Some(auto) || needs_auto {
        host::resolve_auto(
            facts,
            &layout.guest_image(),
            &layout.images().join("accel-probe.txt"),
            host::KVM_PROBE_LIMIT,
        )
    } else {
        AccelChoice {
            accel: Accel::Tcg,
            reason: "not used".into(),
        }
    }
}

/// A kernel that does not resolve: what and where, and the exit status
/// (`USAGE` for a `--kernel`, `MANIFEST` for a manifest's `lane.kernels`),
/// the same for every command.
#[derive(Debug)]
pub struct KernelError {
    pub message: String,
    pub code: i32,
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Resolves (fetching once, then from the cache) every kernel the virtual
/// suites of this run boot. Fails fast, before anything boots, with what is
/// wrong and where it was named.
pub fn resolve_kernels(
    layout: &Layout,
    manifests: &[Manifest],
    opts: &PlanOptions,
) -> Result<BTreeMap<String, Kernel>, KernelError> {
    let store = KernelStore::new(&layout.cache());
    let mut out = BTreeMap::new();
    for m in manifests.iter().filter(|m| m.is_virtual()) {
        for name in opts.kernels_for(m) {
            if out.contains_key(&name) {
                continue;
            }
            let fail = |what: String| {
                let declared = m
                    .lane
                    .iter()
                    .flat_map(|l| &l.kernels)
                    .find(|k| *k.get_ref() == name);
                match declared {
                    Some(k) if opts.kernels.is_empty() => KernelError {
                        message: m
                            .at(
                                k.span(),
                                what,
                                "a kernel is `debian:<major.minor>` of a Debian release ukci knows, or `dir:<path>`",
                            )
                            .to_string(),
                        code: exitcode::MANIFEST,
                    },
                    _ => KernelError {
                        message: format!("--kernel: {what}"),
                        code: exitcode::USAGE,
                    },
                }
            };
            let spec = KernelSpec::parse(&name).map_err(|e| fail(e.to_string()))?;
            let k = store
                .get(&spec, Refresh::IfStale)
                .map_err(|e| fail(format!("kernel `{name}`: {e}")))?;
            out.insert(name, k);
        }
    }
    Ok(out)
}

pub fn make_plan(layout: &Layout, manifests: &[Manifest], opts: &PlanOptions) -> Vec<PlannedTest> {
    let facts = host::detect(&layout.qemu_facts());
    let auto = auto_accel(layout, &facts, manifests, opts);
    plan::plan(
        manifests,
        &facts,
        &auto,
        &layout.guest_image(),
        &layout.scratch(),
        opts,
    )
}

/// What `restore` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// Everything is as it was (or there was nothing to do): what was done.
    Done(String),
    /// Another live run holds the journal: it is that run's, not a crashed
    /// one's, and nothing was replayed.
    Busy(String),
    /// Not everything could be put back; the journal is kept. Names each line
    /// left and what to do.
    Left(String),
}

impl Restored {
    pub fn exit_code(&self) -> i32 {
        match self {
            Restored::Done(_) => exitcode::OK,
            Restored::Busy(_) => exitcode::BUSY,
            Restored::Left(_) => exitcode::RESTORE,
        }
    }
}

/// Removes what runs that are gone (killed, or crashed) left: their scratch
/// folders, and report folders they never finished. Says what it removed.
pub fn reclaim_dead_runs(layout: &Layout) {
    for (dir, left_by_a_run) in [
        (
            layout.scratch_root(),
            rundir::is_run_scratch as fn(&Path) -> bool,
        ),
        (layout.reports(), rundir::is_unfinished_report),
    ] {
        for p in rundir::reclaim(&dir, left_by_a_run) {
            eprintln!("removed {}: a run that did not finish left it", p.display());
        }
    }
}

/// The longest file name Linux file systems take (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Every file and folder name a test's run will create (its log, its scratch
/// images, its virtual host's results folders) fits the file-name limit, and
/// no two tests write the same log: checked before anything runs, not found
/// out when the report is written.
pub fn check_file_names(plan: &[PlannedTest]) -> Result<(), String> {
    let mut logs: BTreeMap<PathBuf, &PlannedTest> = BTreeMap::new();
    for t in plan {
        let log = t.log_path();
        if let Some(other) = logs.insert(log.clone(), t) {
            return Err(format!(
                "{}: test `{}` in environment `{}` would write the same log as test `{}` of {} in environment `{}`: \
                 logs/{} (help: give the suites different names{})",
                t.manifest.display(),
                t.id(),
                t.env.label(),
                other.id(),
                other.manifest.display(),
                other.env.label(),
                log.display(),
                if t.boot.is_some() {
                    ", or kernels and KVM variants names that differ in more than punctuation"
                } else {
                    ""
                }
            ));
        }
        let mut names: Vec<(String, &str)> = log
            .iter()
            .map(|c| (c.to_string_lossy().into_owned(), "its log"))
            .collect();
        for s in &t.scratch {
            let name = s.path.file_name().unwrap_or_default().to_string_lossy();
            names.push((name.into_owned(), "a scratch image"));
        }
        if let Some(b) = &t.boot {
            names.push((
                lane::boot_dir_name(&b.suite, &b.label(), lane::MAX_BOOTS),
                "its virtual host's results folder",
            ));
        }
        if let Some((name, what)) = names.into_iter().find(|(n, _)| n.len() > NAME_MAX) {
            return Err(format!(
                "{}: test `{}`: the file name of {what} would be {} bytes, over the limit of {NAME_MAX}: {name} \
                 (help: shorten the suite or test name{})",
                t.manifest.display(),
                t.id(),
                name.len(),
                if t.boot.is_some() {
                    " or the kernel's name"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

/// Replays the restore journal a run that did not finish (killed, crashed)
/// left: puts back what it changed on this host, touching only the PF the
/// host config names. A journal a live run holds is left alone
/// ([`Restored::Busy`]); a line that cannot be put back stays in the journal,
/// with what to do ([`Restored::Left`]).
pub fn restore(layout: &Layout) -> Restored {
    let config = layout.host_config();
    // A host config that does not read names no PF: entries for it are
    // then kept and reported, never replayed unguarded.
    let pf = hostconfig::local_pf(&config).ok().and_then(|(pf, _)| pf);
    restore_with(
        ukci_vfio::Sysfs::system(),
        &layout.journal(),
        pf.as_deref(),
        &config,
    )
}

fn restore_with(
    sys: ukci_vfio::Sysfs,
    journal: &Path,
    pf: Option<&str>,
    config: &Path,
) -> Restored {
    if !journal.exists() {
        return Restored::Done(format!(
            "nothing to restore: no journal at {}",
            journal.display()
        ));
    }
    let allowed: Vec<&str> = pf.into_iter().collect();
    let rep = match ukci_vfio::Host::open(sys, journal, &allowed) {
        Ok((_, rep)) => rep,
        Err(e @ ukci_vfio::Error::Busy { .. }) => return Restored::Busy(e.to_string()),
        Err(e) => return Restored::Left(e.to_string()),
    };
    if rep.ok() {
        return Restored::Done(rep.notes.first().cloned().unwrap_or_else(|| {
            format!(
                "restored {} change(s) recorded in {}",
                rep.restored.len(),
                journal.display()
            )
        }));
    }
    let mut out = format!(
        "{} change(s) restored, {} left; the restore journal {} is kept:",
        rep.restored.len(),
        rep.left.len(),
        journal.display()
    );
    for l in &rep.left {
        out.push_str(&format!("\n  {l}"));
    }
    let has = |f: fn(&Why) -> bool| rep.left.iter().any(|l| f(&l.why));
    out.push_str("\nwhat to do:");
    if has(|w| matches!(w, Why::Unreadable)) {
        out.push_str(
            "\n  unreadable: put back by hand the state the line recorded (or correct the \
             line), then delete it from the journal",
        );
    }
    if has(|w| matches!(w, Why::Refused(_))) {
        out.push_str(&format!(
            "\n  refused: the host uses that function, or {} does not name it: free it \
             (unmount, take the interface down) or name it there",
            config.display()
        ));
    }
    if has(|w| matches!(w, Why::Failed(_))) {
        out.push_str("\n  failed: the error says why the kernel refused the write; fix that");
    }
    out.push_str(
        "\nthen run `cargo xtask restore` again; it removes the journal once nothing is left",
    );
    Restored::Left(out)
}

/// Runs the tests and writes the reports; returns the exit status.
pub fn run_tests(layout: &Layout, manifests: &[Manifest], opts: &TestOptions) -> i32 {
    match run_tests_steps(layout, manifests, opts) {
        Ok(status) | Err(status) => status,
    }
}

/// [`run_tests`] as its steps; `Err` carries the exit status of a run that
/// stopped early.
fn run_tests_steps(
    layout: &Layout,
    manifests: &[Manifest],
    opts: &TestOptions,
) -> Result<i32, i32> {
    let (pf, pf_source) = hostconfig::local_pf(&layout.host_config()).map_err(|d| {
        eprint!("{d}");
        exitcode::MANIFEST
    })?;
    reclaim_dead_runs(layout);
    // Both folders go away with these values on every way out of the run;
    // the report folder stays only once its report is complete.
    let run_name = run_name();
    let (report_dir, scratch_dir) = run_folders(layout, &run_name)?;
    restore_earlier_run(layout)?;
    let plan = plan_run(layout, manifests, opts)?;
    let dir = report_dir.path().to_path_buf();
    let lane = LaneContext {
        images: layout.images(),
        cache: layout.cache(),
        results: dir.join("vhost"),
        agent: lane::runner_binary(),
        host_checks: HostCheckContext {
            pf,
            pf_source,
            journal: layout.journal(),
            scratch: scratch_dir.path().to_path_buf(),
            guest: layout.guest_image(),
        },
    };
    let history_file = layout.cache().join(durations::FILE);
    let runs = execute_with_progress(&plan, opts, &lane, &History::load(&history_file));
    History::record(&history_file, took_here(&plan, &runs));
    let scanned = [dir.as_path(), scratch_dir.path()];
    if crate::supervise::interrupted() {
        eprintln!("interrupted: no report was written");
        return secret_scan(&scanned)
            .map(|()| exitcode::INTERRUPTED)
            .map_err(|e| {
                eprintln!("error: {e}");
                exitcode::ERROR
            });
    }
    let rerun = Rerun::here(opts.strict);
    eprint!("\n{}", terminal::summary(&plan, &runs));
    eprint!("{}", terminal::reproducers(&plan, &runs, &rerun));
    match write_reports(layout, &dir, &run_name, &plan, &runs, &rerun) {
        Ok(p) => {
            eprintln!("report: {}", p.display());
            report_dir.keep();
        }
        Err(e) => {
            eprintln!(
                "error: cannot write the report in {}: {e}; the folder is removed",
                dir.display()
            );
            return Err(exitcode::ERROR);
        }
    }
    secret_scan(&scanned).map_err(|e| {
        eprintln!("error: {e}");
        exitcode::ERROR
    })?;
    Ok(exit_status(&runs))
}

/// The run's report folder and scratch folder.
fn run_folders(layout: &Layout, run_name: &str) -> Result<(RunDir, RunDir), i32> {
    let report_dir = RunDir::create(&layout.reports().join(run_name)).map_err(|e| {
        eprintln!(
            "error: cannot write reports in {}: {e} (help: pass `--reports DIR` with a folder you can write)",
            layout.reports().display()
        );
        if layout.reports.is_some() {
            exitcode::USAGE
        } else {
            exitcode::HOST
        }
    })?;
    let scratch_dir = RunDir::create(&layout.scratch()).map_err(|e| {
        eprintln!(
            "error: cannot create the scratch folder in {}: {e}",
            layout.scratch_root().display()
        );
        exitcode::HOST
    })?;
    Ok((report_dir, scratch_dir))
}

/// Puts back what an earlier run left changed, before anything runs.
fn restore_earlier_run(layout: &Layout) -> Result<(), i32> {
    if !layout.journal().exists() {
        return Ok(());
    }
    match restore(layout) {
        Restored::Done(m) => eprintln!("{m}"),
        // That run puts back its own changes; a test here that needs the
        // PF reports the same.
        Restored::Busy(m) => eprintln!("note: not replayed: {m}"),
        Restored::Left(m) => {
            eprintln!("error: an earlier run left devices changed: {m}");
            return Err(exitcode::RESTORE);
        }
    }
    Ok(())
}

/// The run's plan, its kernels resolved and its file names checked.
fn plan_run(
    layout: &Layout,
    manifests: &[Manifest],
    opts: &TestOptions,
) -> Result<Vec<PlannedTest>, i32> {
    let mut popts = PlanOptions {
        filter: opts.filter.clone(),
        accel: opts.accel,
        kernels: opts.kernels.clone(),
        ..Default::default()
    };
    popts.resolved = resolve_kernels(layout, manifests, &popts).map_err(|e| {
        eprintln!("error: {e}");
        e.code
    })?;
    let plan = make_plan(layout, manifests, &popts);
    if plan.is_empty() {
        eprintln!("error: no test matches; `cargo xtask list` shows the plan");
        return Err(exitcode::USAGE);
    }
    check_file_names(&plan).map_err(|e| {
        eprintln!("error: {e}");
        exitcode::MANIFEST
    })?;
    Ok(plan)
}

/// How long each test that ran its VM on this host took, by history key
/// (tests in virtual hosts run one boot each; their order is the boot's).
fn took_here(plan: &[PlannedTest], runs: &[Option<TestRun>]) -> Vec<(String, Duration)> {
    plan.iter()
        .zip(runs)
        .filter(|(t, _)| t.boot.is_none())
        .filter_map(|(t, r)| {
            let r = r.as_ref()?;
            r.end.as_ref()?;
            Some((t.history_key(), r.elapsed))
        })
        .collect()
}

/// Executes the plan while the terminal shows its progress; each test's
/// run, by its place in the plan.
fn execute_with_progress(
    plan: &[PlannedTest],
    opts: &TestOptions,
    lane: &LaneContext,
    history: &History,
) -> Vec<Option<TestRun>> {
    let mut runs: Vec<Option<TestRun>> = vec![None; plan.len()];
    let mut term = terminal::Terminal::new(plan);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| exec::execute(plan, opts.jobs, lane, history, tx));
        for mut e in rx {
            // Marked before any reporter sees it: the result lines and the
            // summary count the same outcomes.
            if let (true, Event::Finished { idx, run }) = (opts.strict, &mut e) {
                mark_strict(&plan[*idx], run);
            }
            term.event(&e);
            if let Event::Finished { idx, run } = e {
                runs[idx] = Some(*run);
            }
        }
    });
    term.finish();
    runs
}

/// The end of every run: no file under `dirs` (what the run wrote, virtual
/// hosts' folders included) may hold any VF token the run used — its own or
/// one an agent or a child reported by digest. A hit names the files, never
/// the value.
pub fn secret_scan(dirs: &[&Path]) -> Result<(), String> {
    let tokens = ukci_vfio::token::remembered();
    let found: Vec<String> = dirs
        .iter()
        .flat_map(|d| ukci_vfio::token::files_holding_tokens(d, &tokens))
        .map(|p| p.display().to_string())
        .collect();
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "a VF token of this run was found in {} file(s): {} (help: remove them; they hold a secret that opens this host's VFs)",
            found.len(),
            found.join(", ")
        ))
    }
}

/// Inside a virtual host: runs the named tests of one manifest here and
/// reports each as an event line on stdout and in `results/events.jsonl`.
pub fn run_agent(layout: &Layout, manifest: &Path, tests: &[String], results: &Path) -> i32 {
    let manifests = match load_manifests(&[manifest.to_path_buf()]) {
        Ok(m) => m,
        Err(d) => {
            eprint!("{d}");
            return exitcode::MANIFEST;
        }
    };
    let facts = agent_facts(results);
    let scratch = results.join("scratch");
    let plan = agent_plan(layout, &manifests, &facts, &scratch, tests);
    let events_path = results.join(events::EVENTS_FILE);
    let mut events = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&events_path)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", events_path.display());
            return exitcode::ERROR;
        }
    };
    let lane_ctx = agent_context(layout, results, &scratch);
    // One test at a time: the host's vCPUs share one TCG thread, so nested
    // VMs side by side gain nothing, and a q35 guest with an NVMe under
    // kvm_amd beside another nested VM was seen printing nothing for 90 s
    // (alone it gives its verdict in 15 s).
    let jobs = 1;
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| exec::execute(&plan, jobs, &lane_ctx, &History::default(), tx));
        for e in rx {
            if let Event::Started { idx } = e {
                println!("\n{}{}", events::STARTED, plan[idx].id());
            } else if let Event::Finished { idx, mut run } = e {
                run.env = Some(plan[idx].env.clone());
                let w = WireRun::new(&plan[idx].id(), &run).on_kernel(&facts.host_kernel);
                if let Some(json) = w.to_json() {
                    let _ = writeln!(events, "{json}");
                    let _ = events.sync_data();
                }
                println!("\n{}", w.to_line());
            }
        }
    });
    let scanned = secret_scan(&[results]);
    // Each test removed its images; the folder goes too. An agent that never
    // gets here took its host down with it, and the host's run reclaims the
    // whole results folder.
    let _ = std::fs::remove_dir_all(&scratch);
    match scanned {
        Ok(()) => exitcode::OK,
        Err(e) => {
            eprintln!("error: {e}");
            exitcode::ERROR
        }
    }
}

/// The agent's plan of the named tests (all when none is named): the
/// accelerator `auto` decided here by a probe boot under this host's KVM,
/// the run's `--accel` applied as the runner outside applies it.
fn agent_plan(
    layout: &Layout,
    manifests: &[Manifest],
    facts: &HostFacts,
    scratch: &Path,
    tests: &[String],
) -> Vec<PlannedTest> {
    let opts = PlanOptions {
        accel: std::env::var(lane::ACCEL_ENV)
            .ok()
            .and_then(|a| AccelRequest::from_word(&a)),
        agent: true,
        ..Default::default()
    };
    let auto = host::resolve_auto(
        facts,
        &layout.guest_image(),
        &std::env::temp_dir().join("ukci-accel-probe.txt"),
        host::KVM_PROBE_LIMIT_NESTED,
    );
    println!("ukci-accel: auto = {} ({})", auto.accel, auto.reason);
    plan::plan(
        manifests,
        facts,
        &auto,
        &layout.guest_image(),
        scratch,
        &opts,
    )
    .into_iter()
    .filter(|t| tests.is_empty() || tests.contains(&t.test))
    .collect()
}

/// What the agent's tests work with: the PF the runner outside names, a
/// journal and scratch folder in the results folder.
fn agent_context(layout: &Layout, results: &Path, scratch: &Path) -> LaneContext {
    let pf = std::env::var(lane::PF_ENV).ok();
    LaneContext {
        images: layout.images(),
        cache: layout.cache(),
        results: results.to_path_buf(),
        agent: PathBuf::new(),
        host_checks: HostCheckContext {
            pf_source: if pf.is_some() {
                "the virtual host's SR-IOV NVMe".into()
            } else {
                format!("{} is not set", lane::PF_ENV)
            },
            pf,
            journal: results.join("restore.journal"),
            scratch: scratch.to_path_buf(),
            guest: layout.guest_image(),
        },
    }
}

/// This virtual host's facts, with its KVM as `/init` loaded it: what the
/// modules said (the load log in `results`, the kernel's `kvm` lines) and
/// what KVM runs on (the runner says, through [`lane::KVM_HOST_ENV`]).
fn agent_facts(results: &Path) -> HostFacts {
    let mut facts = host::detect(&std::env::temp_dir().join("ukci-qemu-facts.txt"));
    facts.kvm_host = std::env::var(lane::KVM_HOST_ENV)
        .ok()
        .and_then(|a| Accel::from_word(&a));
    facts.kvm_variant = std::env::var(lane::KVM_VARIANT_ENV).ok();
    let loads =
        std::fs::read_to_string(results.join(ukci_vhost::initramfs::KVM_LOG)).unwrap_or_default();
    let dmesg = ukci_vfio::kmsg::Watch::from_oldest().lines();
    facts.kvm_log = kvm_log(&loads, &dmesg);
    facts.kvm_build = std::fs::read_to_string(lane::KVM_BUILD_MARKER)
        .ok()
        .map(|s| s.trim().to_string());
    if let Some(build) = &facts.kvm_build {
        facts.kvm_log = format!("kvm build: {build}; {}", facts.kvm_log);
    }
    if let Err(e) = &mut facts.dev_kvm {
        e.push_str(&format!(" ({})", facts.kvm_log));
    }
    facts
}

/// One line of what the KVM modules did: each module's load outcome, then
/// the kernel's messages about KVM (`kvm_amd: Nested Paging enabled`, an
/// insmod's "disagrees about version of symbol").
pub fn kvm_log(loads: &str, dmesg: &[String]) -> String {
    let said = dmesg
        .iter()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("kvm") || l.contains("svm") || l.contains("vmx")
        })
        .map(|l| l.trim());
    loads
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .chain(said)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Under `--strict` a skip counts as a failure unless the manifest's plan
/// decided it (a requirement not met is still a skip).
fn mark_strict(t: &PlannedTest, run: &mut TestRun) {
    if t.decision != Decision::Run {
        return;
    }
    for r in &mut run.judged.results {
        if let Outcome::Skip(m) = &r.outcome {
            r.outcome = Outcome::Fail(format!("skipped under --strict: {m}"));
        }
    }
}

pub fn exit_status(runs: &[Option<TestRun>]) -> i32 {
    let all = runs.iter().flatten().flat_map(|r| &r.judged.results);
    let mut status = exitcode::OK;
    for r in all {
        match r.outcome {
            Outcome::Error(_) => return exitcode::ERROR,
            Outcome::Fail(_) | Outcome::Xpass(_) => status = exitcode::FAILED,
            _ => {}
        }
    }
    status
}

fn write_reports(
    layout: &Layout,
    dir: &Path,
    run_name: &str,
    plan: &[PlannedTest],
    runs: &[Option<TestRun>],
    rerun: &Rerun,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir.join(rundir::LOGS))?;
    for (t, run) in plan.iter().zip(runs) {
        let Some(run) = run else { continue };
        let path = dir.join(rundir::LOGS).join(t.log_path());
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)?;
        }
        std::fs::write(path, log_text(t, run, rerun))?;
    }
    std::fs::write(
        dir.join(rundir::HTML),
        html::report(run_name, plan, runs, rerun),
    )?;
    let report = junit::report(run_name, plan, runs, rerun);
    let xml = report
        .to_string()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // Whole or not at all: a full disk leaves no half-written junit.xml.
    let path = dir.join(rundir::JUNIT);
    rundir::replace_atomically(&path, |tmp| {
        std::fs::write(tmp, &xml)?;
        std::fs::File::open(tmp)?.sync_all()
    })?;
    rundir::replace_atomically(&layout.reports().join("latest"), |tmp| {
        std::os::unix::fs::symlink(run_name, tmp)
    })?;
    Ok(path)
}

/// A test's log file: how to run it again and its QEMU command line, each
/// line marked `# `, then the VM's serial log and QEMU's stderr.
fn log_text(t: &PlannedTest, run: &TestRun, rerun: &Rerun) -> String {
    let mut text: String = rerun
        .lines(t, run)
        .lines()
        .map(|l| format!("# {l}\n"))
        .collect();
    text.push('\n');
    text.push_str(&run.vm_log());
    text
}

/// `20261124-131502-12345`: sortable, unique per process.
fn run_name() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    format!(
        "{y:04}{mo:02}{d:02}-{:02}{:02}{:02}-{}",
        t / 3600,
        t / 60 % 60,
        t % 60,
        std::process::id()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal at `text` under an empty fake root; the host config names no PF.
    fn journal(text: &str) -> (tempfile::TempDir, PathBuf, ukci_vfio::Sysfs) {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("restore.journal");
        std::fs::write(&path, text).unwrap();
        let sys = ukci_vfio::Sysfs::new(t.path());
        (t, path, sys)
    }

    #[test]
    fn restore_keeps_an_unreadable_line_and_says_where_and_what_to_do() {
        let text = "ukci-vfio-journal 1\nsriov_numvfs 0000:7f:00.0 0\nmangled\n";
        let (_t, path, sys) = journal(text);
        let r = restore_with(sys, &path, None, Path::new("/etc/ukci/host.toml"));
        assert_eq!(r.exit_code(), exitcode::RESTORE);
        let Restored::Left(m) = r else {
            panic!("{r:?}")
        };
        assert!(m.contains("line 3: `mangled`: unreadable"), "{m}");
        assert!(m.contains("put back by hand"), "{m}");
        assert!(m.contains("run `cargo xtask restore` again"), "{m}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn restore_names_the_run_that_holds_the_journal_and_leaves_it_alone() {
        let text = "ukci-vfio-journal 1\nsriov_numvfs 0000:7f:00.0 0\n";
        let (_t, path, sys) = journal(text);
        let _held = ukci_vfio::journal::Journal::open(&path).unwrap();
        let r = restore_with(sys, &path, None, Path::new("/etc/ukci/host.toml"));
        assert_eq!(r.exit_code(), exitcode::BUSY);
        let Restored::Busy(m) = r else {
            panic!("{r:?}")
        };
        assert!(m.contains(&std::process::id().to_string()), "{m}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn restore_removes_a_journal_cut_before_its_first_entry_with_a_note() {
        let (_t, path, sys) = journal("");
        let r = restore_with(sys, &path, None, Path::new("/etc/ukci/host.toml"));
        let Restored::Done(m) = &r else {
            panic!("{r:?}")
        };
        assert!(m.contains("recorded no change"), "{m}");
        assert_eq!(r.exit_code(), exitcode::OK);
        assert!(!path.exists());
    }

    #[test]
    fn the_kvm_log_says_what_each_module_did_and_what_the_kernel_said() {
        let loads = "kvm: loaded\nkvm_amd: insmod failed: insmod: can't insert 'kvm_amd.ko': Invalid parameters\n\n";
        let dmesg = [
            "virtio_blk virtio0: 1/0/0 default/read/poll queues".to_string(),
            "kvm_amd: disagrees about version of symbol kvm_x86_ops ".to_string(),
            "SVM: TSC scaling supported".to_string(),
        ];
        assert_eq!(
            kvm_log(loads, &dmesg),
            "kvm: loaded; kvm_amd: insmod failed: insmod: can't insert 'kvm_amd.ko': Invalid parameters; \
             kvm_amd: disagrees about version of symbol kvm_x86_ops; SVM: TSC scaling supported"
        );
        assert_eq!(kvm_log("", &[]), "");
    }

    #[test]
    fn each_environment_keeps_its_own_logs() {
        let text = "[lane]\nkind = \"virtual\"\nkernels = [\"debian:6.1\", \"debian:6.12\"]\n\
            kvm = [{ name = \"stock\" }, { name = \"cr-pin-v3\" }]\n\
            [[test]]\nname = \"env\"\nchecks = [\"vfio.env\"]\n";
        let plan = crate::plan::tests::virtual_plan(text);
        assert_eq!(check_file_names(&plan), Ok(()));
        let logs: Vec<String> = plan
            .iter()
            .map(|t| t.log_path().display().to_string())
            .collect();
        assert_eq!(
            logs,
            [
                "v@debian-6.1--stock/env.log",
                "v@debian-6.1--cr-pin-v3/env.log",
                "v@debian-6.12--stock/env.log",
                "v@debian-6.12--cr-pin-v3/env.log",
            ]
        );
        let local =
            crate::plan::tests::virtual_plan("[[test]]\nname = \"env\"\nchecks = [\"vfio.env\"]\n");
        assert_eq!(local[0].log_path(), Path::new("v@tcg/env.log"));

        // Two kernels whose names differ only in punctuation would share a
        // log: refused before anything runs, naming both.
        let mut p = plan.clone();
        for t in p
            .iter_mut()
            .filter(|t| t.env.label().starts_with("debian:6.12"))
        {
            t.env.virtual_host.as_mut().unwrap().kernel = "debian-6.1".into();
        }
        let e = check_file_names(&p).unwrap_err();
        assert!(
            e.contains("environment `debian-6.1, stock` would write the same log as test `v.env`")
                && e.contains(
                    "in environment `debian:6.1, stock`: logs/v@debian-6.1--stock/env.log"
                ),
            "{e}"
        );
    }

    #[test]
    fn a_file_name_over_the_limit_is_caught_before_anything_runs() {
        let plan = crate::plan::tests::virtual_plan(crate::plan::tests::VIRTUAL);
        assert_eq!(check_file_names(&plan), Ok(()));
        // `<test>.log` at exactly the limit still fits.
        let mut p = plan.clone();
        p[0].test = "t".repeat(NAME_MAX - ".log".len());
        assert_eq!(p[0].log_path().file_name().unwrap().len(), NAME_MAX);
        assert_eq!(check_file_names(&p), Ok(()));
        p[0].test.push('t');
        let e = check_file_names(&p).unwrap_err();
        assert!(
            e.contains("its log would be 256 bytes, over the limit of 255")
                && e.contains("help: shorten the suite or test name"),
            "{e}"
        );
        // A long `dir:` kernel makes the virtual host's folder name too long.
        let mut p = plan.clone();
        p[0].boot.as_mut().unwrap().kernel.name = format!("dir:/{}", "k".repeat(250));
        let e = check_file_names(&p).unwrap_err();
        assert!(
            e.contains("its virtual host's results folder") && e.contains("the kernel's name"),
            "{e}"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_416), (2025, 11, 24));
    }
}
