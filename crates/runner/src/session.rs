//! One `cargo xtask test` run: manifests → plan → execute → reports.

use crate::diag::Diagnostics;
use crate::exec::{self, Event, TestRun};
use crate::host::{self, AccelChoice, HostFacts};
use crate::hostcheck::{self, HostContext};
use crate::lane::{self, LaneContext, WireRun};
use crate::manifest::{self, Accel, Manifest};
use crate::outcome::Outcome;
use crate::plan::{self, Decision, PlanOptions, PlannedTest};
use crate::{exitcode, junit, terminal};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
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
    /// The guest image a run boots (copied there after a build).
    pub fn guest_image(&self) -> PathBuf {
        self.images().join("ukci-guest")
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
            Ok(m) => out.push(m),
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
    pub accel: Option<Accel>,
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
    let needs_auto = opts.accel.is_none_or(|a| a == Accel::Auto)
        && manifests.iter().any(|m| {
            m.tests
                .iter()
                .any(|t| t.accel.or(m.defaults.accel).unwrap_or(Accel::Auto) == Accel::Auto)
        });
    if opts.accel == Some(Accel::Auto) || needs_auto {
        host::resolve_auto(
            facts,
            &layout.guest_image(),
            &layout.images().join("accel-probe.txt"),
        )
    } else {
        AccelChoice {
            accel: "tcg".into(),
            reason: "not used".into(),
        }
    }
}

/// Resolves (fetching once, then from the cache) every kernel the virtual
/// suites of this run boot. Fails fast, before anything boots, with what is
/// wrong and where it was named.
pub fn resolve_kernels(
    layout: &Layout,
    manifests: &[Manifest],
    opts: &PlanOptions,
) -> Result<BTreeMap<String, Kernel>, String> {
    let store = KernelStore::new(&layout.cache());
    let mut out = BTreeMap::new();
    for m in manifests.iter().filter(|m| m.is_virtual()) {
        for name in opts.kernels_for(m) {
            if out.contains_key(&name) {
                continue;
            }
            let whence = if opts.kernels.is_empty() {
                format!("{} (lane.kernels)", m.path.display())
            } else {
                "--kernel".to_string()
            };
            let spec = KernelSpec::parse(&name).map_err(|e| format!("{whence}: {e}"))?;
            let k = store
                .get(&spec, Refresh::IfStale)
                .map_err(|e| format!("{whence}: kernel `{name}`: {e}"))?;
            out.insert(name, k);
        }
    }
    Ok(out)
}

pub fn make_plan(layout: &Layout, manifests: &[Manifest], opts: &PlanOptions) -> Vec<PlannedTest> {
    let facts = host::detect();
    let auto = auto_accel(layout, &facts, manifests, opts);
    let scratch = layout
        .images()
        .join("scratch")
        .join(std::process::id().to_string());
    plan::plan(
        manifests,
        &facts,
        &auto,
        &layout.guest_image(),
        &scratch,
        opts,
    )
}

/// Runs the tests and writes the reports; returns the exit status.
/// Puts back whatever a crashed run left changed on this host, as its
/// journal recorded; a summary of what was done.
pub fn restore(layout: &Layout) -> Result<String, String> {
    let journal = layout.journal();
    if !journal.exists() {
        return Ok(format!(
            "nothing to restore: no journal at {}",
            journal.display()
        ));
    }
    let (_, rep) = ukci_vfio::Host::open(ukci_vfio::Sysfs::system(), &journal, &[])
        .map_err(|e| format!("{}: {e}", journal.display()))?;
    if rep.ok() {
        Ok(format!(
            "restored {} change(s) recorded in {}",
            rep.restored.len(),
            journal.display()
        ))
    } else {
        Err(format!(
            "{} change(s) could not be restored ({} restored); the journal {} is kept: {:?}",
            rep.failed.len(),
            rep.restored.len(),
            journal.display(),
            rep.failed
        ))
    }
}

pub fn run_tests(layout: &Layout, manifests: &[Manifest], opts: &TestOptions) -> i32 {
    if layout.journal().exists() {
        match restore(layout) {
            Ok(m) => eprintln!("{m}"),
            Err(e) => {
                eprintln!("error: an earlier run left devices changed: {e}");
                return exitcode::HOST;
            }
        }
    }
    let mut popts = PlanOptions {
        filter: opts.filter.clone(),
        accel: opts.accel,
        kernels: opts.kernels.clone(),
        ..Default::default()
    };
    match resolve_kernels(layout, manifests, &popts) {
        Ok(k) => popts.resolved = k,
        Err(e) => {
            eprintln!("error: {e}");
            return if opts.kernels.is_empty() {
                exitcode::MANIFEST
            } else {
                exitcode::USAGE
            };
        }
    }
    let plan = make_plan(layout, manifests, &popts);
    if plan.is_empty() {
        eprintln!("error: no test matches; `cargo xtask list` shows the plan");
        return exitcode::USAGE;
    }
    let run_name = run_name();
    let dir = layout.reports().join(&run_name);
    let mut runs: Vec<Option<TestRun>> = vec![None; plan.len()];
    let mut term = terminal::Terminal::new(&plan);
    let (pf, pf_source) = hostcheck::local_pf(&layout.host_config());
    let lane = LaneContext {
        images: layout.images(),
        cache: layout.cache(),
        results: dir.join("vhost"),
        agent: lane::runner_binary(),
        host: HostContext {
            pf,
            pf_source,
            journal: layout.journal(),
            scratch: layout
                .images()
                .join("scratch")
                .join(std::process::id().to_string()),
            guest: layout.guest_image(),
        },
    };
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| exec::execute(&plan, opts.jobs, &lane, tx));
        for e in rx {
            term.event(&e);
            if let Event::Finished { idx, run } = e {
                runs[idx] = Some(*run);
            }
        }
    });
    term.finish();
    if crate::supervise::interrupted() {
        eprintln!("interrupted: no report was written");
        return exitcode::INTERRUPTED;
    }
    if opts.strict {
        for (t, run) in plan.iter().zip(runs.iter_mut()) {
            mark_strict(t, run.as_mut());
        }
    }
    eprint!("\n{}", terminal::summary(&plan, &runs));
    match write_reports(layout, &dir, &run_name, &plan, &runs) {
        Ok(p) => eprintln!("report: {}", p.display()),
        Err(e) => {
            eprintln!("error: cannot write the report in {}: {e}", dir.display());
            return exitcode::ERROR;
        }
    }
    exit_status(&runs)
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
    let opts = PlanOptions {
        accel: Some(Accel::Tcg),
        agent: true,
        ..Default::default()
    };
    let facts = host::detect();
    let auto = AccelChoice {
        accel: "tcg".into(),
        reason: "inside the virtual host".into(),
    };
    let scratch = results.join("scratch");
    let plan: Vec<PlannedTest> = plan::plan(
        &manifests,
        &facts,
        &auto,
        &layout.guest_image(),
        &scratch,
        &opts,
    )
    .into_iter()
    .filter(|t| tests.is_empty() || tests.contains(&t.test))
    .collect();
    let events_path = results.join(lane::EVENTS_FILE);
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
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pf = std::env::var(lane::PF_ENV).ok();
    let lane_ctx = LaneContext {
        images: layout.images(),
        cache: layout.cache(),
        results: results.to_path_buf(),
        agent: PathBuf::new(),
        host: HostContext {
            pf_source: if pf.is_some() {
                "the virtual host's SR-IOV NVMe".into()
            } else {
                format!("{} is not set", lane::PF_ENV)
            },
            pf,
            journal: results.join("restore.journal"),
            scratch: results.join("scratch"),
            guest: layout.guest_image(),
        },
    };
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| exec::execute(&plan, cores, &lane_ctx, tx));
        for e in rx {
            if let Event::Started { idx } = e {
                println!("\n{}{}", lane::STARTED, plan[idx].id());
            } else if let Event::Finished { idx, run } = e {
                let w = WireRun::new(&plan[idx].id(), &run).on_kernel(&facts.host_kernel);
                if let Ok(json) = serde_json::to_string(&w) {
                    let _ = writeln!(events, "{json}");
                    let _ = events.sync_data();
                }
                println!("\n{}", w.to_line());
            }
        }
    });
    exitcode::OK
}

/// Under `--strict` a skip counts as a failure unless the manifest's plan
/// decided it (a requirement not met is still a skip).
fn mark_strict(t: &PlannedTest, run: Option<&mut TestRun>) {
    if t.decision != Decision::Run {
        return;
    }
    if let Some(run) = run {
        for r in &mut run.judged.results {
            if let Outcome::Skip(m) = &r.outcome {
                r.outcome = Outcome::Fail(format!("skipped under --strict: {m}"));
            }
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
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("logs"))?;
    for (t, run) in plan.iter().zip(runs) {
        let Some(run) = run else { continue };
        let mut log = run.log.clone();
        if !run.stderr.is_empty() {
            log.push_str("\n--- QEMU stderr ---\n");
            log.push_str(&run.stderr);
        }
        std::fs::write(dir.join("logs").join(format!("{}.log", t.id())), log)?;
    }
    let report = junit::report(run_name, plan, runs);
    let xml = report
        .to_string()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let path = dir.join("junit.xml");
    std::fs::write(&path, xml)?;
    let latest = layout.reports().join("latest");
    let _ = std::fs::remove_file(&latest);
    std::os::unix::fs::symlink(run_name, &latest)?;
    Ok(path)
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

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_416), (2025, 11, 24));
    }
}
