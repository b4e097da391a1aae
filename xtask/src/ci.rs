//! `cargo xtask ci`: everything the project checks about itself, in the
//! order that fails fastest.

use anyhow::Result;
use std::path::Path;
use xshell::{Shell, cmd};

pub fn run(root: &Path) -> Result<i32> {
    let sh = Shell::new()?;
    sh.change_dir(root);
    step("format (workspace)");
    cmd!(sh, "cargo fmt --all --check").run()?;
    step("clippy (workspace)");
    cmd!(
        sh,
        "cargo clippy --workspace --all-targets --quiet -- -D warnings"
    )
    .run()?;
    cmd!(sh, "cargo build --quiet --package ukci").run()?;
    let ukci = crate::ukci_binary(root);
    step("what this host lacks");
    // Installs what is missing (and Chromium, for the report's test below);
    // with nothing missing it needs no root.
    cmd!(sh, "{ukci} setup --ci").run()?;
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
    cmd!(sh, "{ukci} build").run()?;
    step("unit and integration tests");
    // The browser test checks the report of the run below instead of
    // making one of its own.
    cmd!(sh, "cargo test --workspace -- --skip {BROWSER_TEST}").run()?;
    step("every manifest: cargo xtask test");
    // Built again: the tests above may have rebuilt the binary.
    cmd!(sh, "cargo xtask test").run()?;
    step("the HTML report of that run in headless Chromium");
    let report = root.join("reports").join("latest");
    cmd!(sh, "cargo test -p ukci --test browser")
        .env("UKCI_BROWSER_REPORT", &report)
        .env("UKCI_REQUIRE_CHROMIUM", "1")
        .run()?;
    eprintln!(
        "ci: the report's screenshot: {}",
        report.join("screenshot.png").display()
    );
    eprintln!("ci: every step passed");
    Ok(0)
}

/// The test that loads a run's HTML report in Chromium (crates/ukci/tests/browser.rs).
const BROWSER_TEST: &str = "html_report_in_a_browser";

fn step(what: &str) {
    eprintln!("\n== {what}");
}
