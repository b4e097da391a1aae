//! `cargo xtask`: the project's entry point in a checkout. `ci` runs the
//! project's own checks; every other command is the `ukci` binary's, built
//! here and run with the same arguments (`cargo xtask test` is `ukci test`).

mod ci;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Exit status when the `ukci` binary cannot be built or started (the
/// runner's "host not ready" status).
const CANNOT_RUN: i32 = 2;

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let root = root();
    let code = if args.first().is_some_and(|a| a == "ci") {
        ci::run(&root).unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            1
        })
    } else {
        run_ukci(&root, &args)
    };
    std::process::exit(code);
}

/// The checkout this xtask belongs to.
fn root() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    root.canonicalize().unwrap_or(root)
}

/// Builds the `ukci` binary and becomes it, with `args`; returns only when
/// that fails.
fn run_ukci(root: &Path, args: &[OsString]) -> i32 {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    match Command::new(&cargo)
        .args(["build", "--quiet", "--package", "ukci"])
        .current_dir(root)
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("error: building the ukci binary failed ({s})");
            return CANNOT_RUN;
        }
        Err(e) => {
            eprintln!("error: cannot run {}: {e}", cargo.to_string_lossy());
            return CANNOT_RUN;
        }
    }
    let ukci = ukci_binary(root);
    let err = Command::new(&ukci)
        .args(args)
        .env("UKCI_INVOKED_AS", "cargo xtask")
        .exec();
    eprintln!("error: cannot run {}: {err}", ukci.display());
    CANNOT_RUN
}

/// Where `cargo build` put the `ukci` binary: the debug profile of the
/// target folder cargo uses.
pub fn ukci_binary(root: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_relative() {
        root.join(target)
    } else {
        target
    };
    target.join("debug").join("ukci")
}
