//! `cargo xtask bench --kut`: kvm-unit-tests' default x86 set from the
//! shared tree under TCG, `cargo xtask test --jobs 2` against the tree's
//! own `run_tests.sh -j 2`, wall time. Under TCG a few tests run into
//! their cfg timeout and bound both runners alike, so both run once more
//! on the tests that finished within their timeout; the goal (ukci at
//! least 3× faster) is set on those. A last row runs the short ones alone
//! (under two seconds each under ukci), where what each runner adds per
//! test shows rather than the guests' own time.

use anyhow::{Result, anyhow};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};
use ukci_kut::decode;
use ukci_runner::session::Layout;
use ukci_runner::supervise::{self, End};

/// The goal on the tests that finish: ukci this many times faster.
const GOAL: f64 = 3.0;
/// Longer than the whole default set takes under TCG on two cores.
const LIMIT: Duration = Duration::from_secs(3600);

/// Tests under this long each (in ukci's run of the whole set) make the
/// row of short tests, where the runners' own costs per test show.
const SHORT: Duration = Duration::from_secs(2);

struct Timed {
    wall: Duration,
    /// Every test the runner reported, and those that hit their timeout.
    tests: BTreeSet<String>,
    timed_out: BTreeSet<String>,
    /// Per test, the time of its results (ukci's JUnit; empty for run_tests.sh).
    took: BTreeMap<String, Duration>,
}

pub fn run(layout: &Layout) -> Result<()> {
    println!("\nkvm-unit-tests x86 default set, shared tree, TCG, 2 jobs");
    let Some(tree) = crate::kut::shared_tree(layout).map_err(|e| anyhow!(e))? else {
        println!(
            "  skipped: {} is absent",
            layout.root.join(ukci_kut::tree::SHARED_TARBALL).display()
        );
        return Ok(());
    };
    let scratch = tempdir()?;
    let all = vec!["*".to_string()];
    let ours = ukci(&tree, &all, &scratch)?;
    let theirs = run_tests_sh(&tree, &[], &scratch)?;
    row("whole set", &ours, &theirs, None);
    let finishing: Vec<String> = theirs
        .tests
        .union(&ours.tests)
        .filter(|t| !ours.timed_out.contains(*t) && !theirs.timed_out.contains(*t))
        .cloned()
        .collect();
    let left_out: Vec<&String> = ours.timed_out.union(&theirs.timed_out).collect();
    println!(
        "  timed out (left out below): {}",
        left_out
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let short: Vec<String> = finishing
        .iter()
        .filter(|t| ours.took.get(*t).is_some_and(|d| *d < SHORT))
        .cloned()
        .collect();
    let ours = ukci(&tree, &finishing, &scratch)?;
    let theirs = run_tests_sh(&tree, &finishing, &scratch)?;
    row(
        &format!("{} tests that finish", finishing.len()),
        &ours,
        &theirs,
        Some(GOAL),
    );
    let ours = ukci(&tree, &short, &scratch)?;
    let theirs = run_tests_sh(&tree, &short, &scratch)?;
    row(
        &format!("{} of them under {} s each", short.len(), SHORT.as_secs()),
        &ours,
        &theirs,
        None,
    );
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn row(what: &str, ours: &Timed, theirs: &Timed, goal: Option<f64>) {
    let ratio = theirs.wall.as_secs_f64() / ours.wall.as_secs_f64();
    let verdict = goal.map_or(String::new(), |g| {
        format!(
            "  goal >= {g:.0}x: {}",
            if ratio >= g { "met" } else { "NOT met" }
        )
    });
    println!(
        "  {what:<28} ukci {:>7.1} s   run_tests.sh {:>7.1} s   {ratio:>5.2}x{verdict}",
        ours.wall.as_secs_f64(),
        theirs.wall.as_secs_f64()
    );
}

fn tempdir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("ukci-bench-kut-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// `cargo xtask test` of a manifest taking `tests` from the tree.
fn ukci(tree: &Path, tests: &[String], scratch: &Path) -> Result<Timed> {
    let manifest = scratch.join("kut.toml");
    std::fs::write(
        &manifest,
        ukci_runner::manifest::kut::manifest_text(tree, tests),
    )?;
    let reports = scratch.join("reports");
    let args: Vec<OsString> = vec![
        "test".into(),
        manifest.into(),
        "--accel".into(),
        "tcg".into(),
        "--jobs".into(),
        "2".into(),
        "--reports".into(),
        reports.clone().into(),
    ];
    let start = Instant::now();
    let fin = supervise::run(std::env::current_exe()?.as_os_str(), &args, LIMIT, |_| {});
    let wall = start.elapsed();
    if !matches!(fin.end, End::Exited(_)) {
        return Err(anyhow!("ukci ended with {:?}: {}", fin.end, fin.stderr));
    }
    let junit = std::fs::read_to_string(reports.join("latest/junit.xml"))?;
    let mut timed = Timed {
        wall,
        tests: BTreeSet::new(),
        timed_out: BTreeSet::new(),
        took: BTreeMap::new(),
    };
    for case in junit.split("<testcase ").skip(1) {
        let tag = case.split('>').next().unwrap_or("");
        let Some(test) = tag
            .split(" classname=\"kut.")
            .nth(1)
            .and_then(|s| s.split('"').next())
        else {
            continue;
        };
        let body = case.split("</testcase>").next().unwrap_or(case);
        if body.contains("timeout; duration=") && body.contains("<error") {
            timed.timed_out.insert(test.to_string());
        }
        timed.tests.insert(test.to_string());
    }
    timed.took = crate::bench_vhost::test_times(&junit)
        .into_iter()
        .filter_map(|(_, class, secs)| {
            let test = class.strip_prefix("kut.")?;
            Some((test.to_string(), Duration::from_secs_f64(secs)))
        })
        .collect();
    Ok(timed)
}

/// `ACCEL=tcg ./run_tests.sh -j 2 [tests]` in the tree.
fn run_tests_sh(tree: &Path, tests: &[String], scratch: &Path) -> Result<Timed> {
    let mut log_dir: OsString = "unittest_log_dir=".into();
    log_dir.push(scratch.join("logs"));
    let mut args: Vec<OsString> = vec![
        "ACCEL=tcg".into(),
        log_dir,
        "./run_tests.sh".into(),
        "-j".into(),
        "2".into(),
    ];
    args.extend(tests.iter().map(Into::into));
    let start = Instant::now();
    let fin = supervise::run_in(tree, "env".as_ref(), &args, LIMIT, |_| {});
    let wall = start.elapsed();
    if !matches!(fin.end, End::Exited(_)) {
        return Err(anyhow!(
            "run_tests.sh ended with {:?}: {}",
            fin.end,
            fin.stderr
        ));
    }
    let mut timed = Timed {
        wall,
        tests: BTreeSet::new(),
        timed_out: BTreeSet::new(),
        took: BTreeMap::new(),
    };
    for (_, name, why) in fin.stdout.lines().filter_map(decode::run_tests_line) {
        if why.starts_with("timeout; duration=") {
            timed.timed_out.insert(name.clone());
        }
        timed.tests.insert(name);
    }
    Ok(timed)
}
