//! `cargo xtask ci`: everything the project checks about itself, in the
//! order that fails fastest.

use anyhow::Result;
use ukci_runner::exitcode;
use ukci_runner::session::Layout;
use xshell::{Shell, cmd};

pub fn run(layout: &Layout) -> Result<i32> {
    if let Err(code) = crate::prereq::ensure(layout) {
        return Ok(code);
    }
    let sh = Shell::new()?;
    // The HTML report's test needs a browser: installed here as `test`
    // installs what it lacks, or asked for.
    if crate::prereq::is_root() || std::env::var_os("CI").is_some() {
        crate::prereq::install_ci_tools(&sh)?;
    }
    sh.change_dir(&layout.root);
    step("format (workspace)");
    cmd!(sh, "cargo fmt --all --check").run()?;
    step("clippy (workspace)");
    cmd!(
        sh,
        "cargo clippy --workspace --all-targets --quiet -- -D warnings"
    )
    .run()?;
    {
        let _guest = sh.push_dir("guest");
        step("format (guest)");
        cmd!(sh, "cargo fmt --all --check").run()?;
        step("clippy (guest)");
        cmd!(sh, "cargo clippy --release --quiet -- -D warnings")
            .env_remove("RUSTFLAGS")
            .run()?;
    }
    step("build the guest");
    crate::guest::build(layout)?;
    step("unit and integration tests");
    // The browser test checks the report of the run below instead of
    // making one of its own.
    cmd!(sh, "cargo test --workspace -- --skip {BROWSER_TEST}").run()?;
    step("every manifest: cargo xtask test");
    // A fresh process: the tests above rebuilt this very binary.
    cmd!(sh, "cargo xtask test").run()?;
    step("the HTML report of that run in headless Chromium");
    let report = layout.reports().join("latest");
    cmd!(sh, "cargo test -p xtask --test browser")
        .env("UKCI_BROWSER_REPORT", &report)
        .env("UKCI_REQUIRE_CHROMIUM", "1")
        .run()?;
    eprintln!(
        "ci: the report's screenshot: {}",
        report.join("screenshot.png").display()
    );
    eprintln!("ci: every step passed");
    Ok(exitcode::OK)
}

/// The test that loads a run's HTML report in Chromium (xtask/tests/browser.rs).
const BROWSER_TEST: &str = "html_report_in_a_browser";

fn step(what: &str) {
    eprintln!("\n== {what}");
}
