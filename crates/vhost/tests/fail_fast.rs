//! A kernel that cannot resolve fails before anything boots, and says why.

use std::process::Command;
use std::time::{Duration, Instant};

use ukci_vhost::kernel::{KernelSpec, KernelStore, Refresh};

/// The per-user cache, as the runner uses it: its apt lists are already
/// there after the first run.
fn store() -> KernelStore {
    KernelStore::new(&ukci_vhost::cache::user_dir())
}

#[test]
fn a_bad_kernel_name_fails_with_the_accepted_forms() {
    let msg = KernelSpec::parse("debain:6.12").unwrap_err().to_string();
    assert!(
        msg.contains("`debain:6.12`") && msg.contains("unknown provider `debain`"),
        "{msg}"
    );
    assert!(
        msg.contains("debian:6.12") && msg.contains("dir:PATH"),
        "{msg}"
    );
}

#[test]
fn a_missing_dir_kernel_names_the_path() {
    let spec = KernelSpec::parse("dir:/nonexistent/ukci-kernel").unwrap();
    let t = Instant::now();
    let msg = store()
        .get(&spec, Refresh::IfStale)
        .unwrap_err()
        .to_string();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(
        msg,
        "kernel `dir:/nonexistent/ukci-kernel`: /nonexistent/ukci-kernel: no such directory"
    );
}

#[test]
fn a_series_no_suite_has_fails_fast_and_lists_the_series_there_are() {
    if Command::new("apt-cache").arg("--version").output().is_err() {
        eprintln!("SKIP: apt-cache not available");
        return;
    }
    let spec = KernelSpec::parse("debian:5.99").unwrap();
    let t = Instant::now();
    let msg = store()
        .get(&spec, Refresh::IfStale)
        .unwrap_err()
        .to_string();
    // At most two list updates (stale lists, then once more for the miss)
    // and a few apt-cache queries; nothing is downloaded.
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        msg.contains("no Debian kernel for `debian:5.99`") && msg.contains("trixie-backports"),
        "{msg}"
    );
    // bookworm has 6.1 and every default suite set has it.
    assert!(msg.contains("series there: 6.1, "), "{msg}");
    assert!(msg.contains("UKCI_DEBIAN_SUITES"), "{msg}");
}
