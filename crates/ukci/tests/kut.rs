//! ukci against kvm-unit-tests' own `run_tests.sh`: the same tests of the
//! shared tree's default x86 set, on this host, under the same accelerator
//! (TCG, which `auto` chooses here and which every host has), both with two
//! jobs. Per test, the verdict (PASS, FAIL, SKIP) and the number of result
//! lines must agree. Skips, saying why, where the shared tarball is absent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ukci_kut::decode::run_tests_line;
use ukci_runner::supervise::{self, End};

fn root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .canonicalize()
        .unwrap()
}

/// Tests of the default set that end within seconds under TCG, with every
/// kind of verdict: passes, failures (TCG lacks what they test), skips
/// decided before QEMU starts (i386 only, kvm only, nodefault), ones QEMU
/// cannot start under TCG, ones the test itself skips (status 77).
const TESTS: &[&str] = &[
    "smptest",
    "smptest3",
    "eventinj",
    "ioapic",
    "pks",
    "pku",
    "rdpru",
    "realmode",
    "s3",
    "setjmp",
    "smap",
    "syscall",
    "tsc",
    "umip",
    "memory",
    "vmexit_cpuid",
    "intel_iommu",
    "hypercall",
    "msr",
    "msr64",
    "pcid-enabled",
    "pcid-disabled",
    "la57",
    "emulator",
    "svm_unsupported_instruction_intercept_test",
    "cmpxchg8b",
    "asyncpf",
    "pmu",
    "hyperv_stimer",
    "tsx-ctrl",
    "vmx",
    "cet",
    "access_fep",
];

/// What a runner said about one test.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    verdict: String,
    results: usize,
}

fn shared_tree() -> Option<PathBuf> {
    let tarball = root().join(ukci_kut::tree::SHARED_TARBALL);
    if !tarball.is_file() {
        eprintln!(
            "skipped: the shared kvm-unit-tests tarball {} is absent",
            tarball.display()
        );
        return None;
    }
    Some(
        ukci_kut::tree::prepare(&tarball, &ukci_vhost::cache::user_dir(), |s| {
            eprintln!("kvm-unit-tests: {s}")
        })
        .expect("the shared tree builds"),
    )
}

/// `ACCEL=tcg ./run_tests.sh -j 2 TESTS...` in the tree, its logs in `logs`.
fn run_tests_sh(tree: &Path, logs: &Path) -> BTreeMap<String, Seen> {
    let mut log_dir: std::ffi::OsString = "unittest_log_dir=".into();
    log_dir.push(logs);
    let mut args: Vec<std::ffi::OsString> = vec![
        "ACCEL=tcg".into(),
        log_dir,
        "./run_tests.sh".into(),
        "-j".into(),
        "2".into(),
    ];
    args.extend(TESTS.iter().map(Into::into));
    let fin = supervise::run_in(
        tree,
        "env".as_ref(),
        &args,
        Duration::from_secs(900),
        |_| {},
    );
    assert!(
        matches!(fin.end, End::Exited(_)),
        "{:?}: {}",
        fin.end,
        fin.stderr
    );
    let mut out = BTreeMap::new();
    for (verdict, name, _) in fin.stdout.lines().filter_map(run_tests_line) {
        let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
        out.insert(
            name,
            Seen {
                verdict: verdict.as_str().to_string(),
                results: result_lines(&log),
            },
        );
    }
    out
}

fn result_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            [
                "PASS: ", "FAIL: ", "SKIP: ", "XFAIL: ", "XPASS: ", "KFAIL: ",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .count()
}

/// `cargo xtask test` of a manifest taking `TESTS` from the tree.
fn ukci(tree: &Path, dir: &Path) -> BTreeMap<String, Seen> {
    let manifest = dir.join("kut-compare.toml");
    std::fs::write(
        &manifest,
        ukci_runner::manifest::kut::manifest_text(tree, TESTS),
    )
    .unwrap();
    let reports = dir.join("reports");
    let args: Vec<std::ffi::OsString> = vec![
        "test".into(),
        manifest.into(),
        "--accel".into(),
        "tcg".into(),
        "--jobs".into(),
        "2".into(),
        "--reports".into(),
        reports.clone().into(),
    ];
    let fin = supervise::run(
        env!("CARGO_BIN_EXE_ukci").as_ref(),
        &args,
        Duration::from_secs(900),
        |_| {},
    );
    assert!(
        matches!(fin.end, End::Exited(_)),
        "{:?}: {}",
        fin.end,
        fin.stderr
    );
    let junit = std::fs::read_to_string(reports.join("latest/junit.xml")).expect("a report");
    verdicts_from_junit(&junit)
}

/// Per test (classname `kut.NAME`): FAIL when a result failed or erred,
/// SKIP when every result was skipped, else PASS; and the results that
/// stand for a result line (the verdict's own result is named after the
/// test).
fn verdicts_from_junit(junit: &str) -> BTreeMap<String, Seen> {
    let mut cases: BTreeMap<String, Vec<(String, &str)>> = BTreeMap::new();
    for chunk in junit.split("<testcase ").skip(1) {
        let body = chunk.split("</testcase>").next().unwrap_or(chunk);
        // The start tag's attributes, before any text that could hold
        // `name="` itself.
        let tag = body.split('>').next().unwrap_or("");
        let attr = |k: &str| {
            let at = if tag.starts_with(&format!("{k}=\"")) {
                Some(k.len() + 2)
            } else {
                tag.find(&format!(" {k}=\"")).map(|i| i + k.len() + 3)
            };
            at.map(|i| tag[i..].split('"').next().unwrap_or("").to_string())
        };
        let (Some(name), Some(class)) = (attr("name"), attr("classname")) else {
            continue;
        };
        let Some(test) = class.strip_prefix("kut.") else {
            continue;
        };
        let status = if body.contains("<failure") || body.contains("<error") {
            "FAIL"
        } else if body.contains("type=\"skip\"") {
            "SKIP"
        } else {
            "PASS"
        };
        cases
            .entry(test.to_string())
            .or_default()
            .push((name, status));
    }
    cases
        .into_iter()
        .map(|(test, results)| {
            let verdict = if results.iter().any(|r| r.1 == "FAIL") {
                "FAIL"
            } else if results.iter().all(|r| r.1 == "SKIP") {
                "SKIP"
            } else {
                "PASS"
            };
            let lines = results.iter().filter(|r| r.0 != test).count();
            (
                test,
                Seen {
                    verdict: verdict.to_string(),
                    results: lines,
                },
            )
        })
        .collect()
}

#[test]
fn ukci_agrees_with_run_tests_sh_on_the_default_x86_set() {
    let Some(tree) = shared_tree() else { return };
    let dir = tempfile::tempdir().unwrap();
    let theirs = run_tests_sh(&tree, &dir.path().join("kut-logs"));
    let ours = ukci(&tree, dir.path());
    assert!(theirs.len() >= 20, "run_tests.sh ran {theirs:?}");
    let mut differ = Vec::new();
    for t in TESTS {
        let (a, b) = (theirs.get(*t), ours.get(*t));
        eprintln!("{t:<45} run_tests.sh {a:?}  ukci {b:?}");
        if a.is_none() || a != b {
            differ.push(*t);
        }
    }
    assert!(
        differ.is_empty(),
        "verdicts or result counts differ: {differ:?}"
    );
}
