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
    step("every manifest: cargo xtask test");
    // A fresh process: the tests above rebuilt this very binary.
    cmd!(sh, "cargo xtask test").run()?;
    eprintln!("ci: every step passed");
    Ok(exitcode::OK)
}

fn step(what: &str) {
    eprintln!("\n== {what}");
}
