//! `cargo xtask ci`: everything the project checks about itself, in the
//! order that fails fastest.

use anyhow::{Result, bail};
use ukci_runner::exitcode;
use ukci_runner::session::{self, Layout, TestOptions};
use xshell::{Shell, cmd};

pub fn run(layout: &Layout) -> Result<i32> {
    if let Err(code) = crate::prereq::ensure(layout) {
        return Ok(code);
    }
    let sh = Shell::new()?;
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
    cmd!(sh, "cargo test --workspace").run()?;
    step("every manifest");
    ukci_runner::supervise::install_interrupt_handler().map_err(anyhow::Error::msg)?;
    let manifests = session::load_manifests(&session::all_manifests(&layout.manifests()))
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    let opts = TestOptions {
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..Default::default()
    };
    let code = session::run_tests(layout, &manifests, &opts);
    if code != exitcode::OK {
        bail!("the manifests did not pass (exit status {code})");
    }
    eprintln!("ci: every step passed");
    Ok(exitcode::OK)
}

fn step(what: &str) {
    eprintln!("\n== {what}");
}
