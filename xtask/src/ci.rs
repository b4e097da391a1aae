//! `cargo xtask ci`: everything the project checks about itself, in the
//! order that fails fastest.

use anyhow::{Result, bail};
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
    // As root or in CI set-up installs it (and Chromium, for the report's
    // test below); elsewhere doctor says what to install.
    let ready = if is_root() || std::env::var_os("CI").is_some() {
        cmd!(sh, "{ukci} setup --ci").run().is_ok()
    } else {
        cmd!(sh, "{ukci} doctor").run().is_ok()
    };
    if !ready {
        bail!("this host is not ready for ci; run `sudo cargo xtask setup --ci`");
    }
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

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}
