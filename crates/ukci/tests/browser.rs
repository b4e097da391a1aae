//! The HTML report of a real run, loaded in headless Chromium: the outcome
//! counts in the rendered page are the JUnit's, and a screenshot of it is
//! saved beside it (`screenshot.png`).
//!
//! `UKCI_BROWSER_REPORT` names the report folder to check (`cargo xtask ci`
//! passes the one of its run of every manifest); without it the test makes
//! a small real run of its own. Without Chromium the test is skipped with
//! the reason, unless `UKCI_REQUIRE_CHROMIUM` is set (as `ci` sets it): then
//! that is a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use ukci_runner::html::OUTCOMES;

const CHROMIUM: &str = "chromium";

/// The JUnit's results by outcome (`pass`, `fail`, … as the HTML names
/// them), read with an XML parser: a testcase is a pass unless it holds a
/// `failure`, `error` or `skipped`, whose `type` says which outcome.
fn junit_counts(xml: &str) -> BTreeMap<String, usize> {
    let doc = roxmltree::Document::parse(xml).expect("the JUnit parses");
    let mut counts: BTreeMap<String, usize> = OUTCOMES.iter().map(|o| (o.to_string(), 0)).collect();
    for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
        let outcome = case
            .children()
            .find(|c| {
                ["failure", "error", "skipped"]
                    .iter()
                    .any(|t| c.has_tag_name(*t))
            })
            .map_or("pass", |c| {
                c.attribute("type").expect("a type on every non-success")
            });
        *counts.get_mut(outcome).expect("a known outcome") += 1;
    }
    counts
}

/// In Chromium's DOM: the number of result cells of each outcome, and the
/// summary's count of each.
fn dom_counts(dom: &str) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut cells = BTreeMap::new();
    let mut summary = BTreeMap::new();
    for o in OUTCOMES {
        cells.insert(
            o.to_string(),
            dom.matches(&format!("data-outcome=\"{o}\"")).count(),
        );
        let shown = dom
            .split(&format!("data-count=\"{o}\">"))
            .nth(1)
            .and_then(|rest| rest.split('<').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no summary count for {o} in the DOM"));
        summary.insert(o.to_string(), shown);
    }
    (cells, summary)
}

/// Chromium on `page` with `what` (`--dump-dom`, `--screenshot=…`), its
/// own fresh profile and nothing that reaches the network; under a hard
/// limit. Its stdout.
fn chromium(page: &Path, what: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut args: Vec<std::ffi::OsString> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    .iter()
    .chain(what)
    .map(Into::into)
    .collect();
    args.push(format!("--user-data-dir={}", profile.path().display()).into());
    args.push(format!("file://{}", page.display()).into());
    let fin =
        ukci_runner::supervise::run(CHROMIUM.as_ref(), &args, Duration::from_secs(120), |_| {});
    assert!(
        matches!(fin.end, ukci_runner::supervise::End::Exited(0)),
        "{}: {:?}\n{}",
        fin.command,
        fin.end,
        fin.stderr
    );
    fin.stdout
}

/// The report folder to check: the one named, or a small real run's.
/// A relative `UKCI_BROWSER_REPORT` is taken from the checkout (cargo runs
/// tests in the package's folder).
fn report_folder(scratch: &Path) -> PathBuf {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    if let Some(dir) = std::env::var_os("UKCI_BROWSER_REPORT") {
        let dir = root.join(dir);
        return std::fs::canonicalize(&dir)
            .unwrap_or_else(|e| panic!("UKCI_BROWSER_REPORT: {}: {e}", dir.display()));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ukci"))
        .current_dir(root)
        .args(["test", "manifests/smoke.toml", "--filter", "smoke.microvm"])
        .arg("--reports")
        .arg(scratch)
        .env("CI", "1")
        .output()
        .expect("ukci runs");
    assert!(out.status.success(), "{out:?}");
    std::fs::canonicalize(scratch.join("latest")).unwrap()
}

#[test]
fn html_report_in_a_browser_shows_the_junit_counts() {
    if !ukci_runner::supervise::on_path(CHROMIUM) {
        let why = "chromium is not installed (`cargo xtask setup --ci` installs it)";
        assert!(std::env::var_os("UKCI_REQUIRE_CHROMIUM").is_none(), "{why}");
        return eprintln!("skipping: {why}");
    }
    let scratch = tempfile::tempdir().unwrap();
    let dir = report_folder(scratch.path());
    let junit = junit_counts(&std::fs::read_to_string(dir.join("junit.xml")).unwrap());
    let total: usize = junit.values().sum();
    assert!(total > 0, "an empty run proves nothing");

    let page = dir.join("index.html");
    let dom = chromium(&page, &["--dump-dom"]);
    let (cells, summary) = dom_counts(&dom);
    assert_eq!(
        cells, junit,
        "result cells in the rendered page vs the JUnit"
    );
    assert_eq!(summary, junit, "the page's summary vs the JUnit");

    let shot = dir.join("screenshot.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,1800",
            "--hide-scrollbars",
        ],
    );
    let png = std::fs::read(&shot).expect("Chromium saved the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!(
        "{total} results in the page as in the JUnit: {junit:?}; screenshot: {}",
        shot.display()
    );
}
