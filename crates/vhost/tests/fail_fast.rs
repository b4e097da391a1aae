//! A kernel that cannot resolve fails before anything boots, and says why.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ukci_vhost::kernel::{KernelSpec, KernelStore, Refresh};

fn store() -> KernelStore {
    KernelStore::new(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("vhost-fail-fast-images"))
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
        .get(&spec, Refresh::IfMissing)
        .unwrap_err()
        .to_string();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(
        msg,
        "kernel `dir:/nonexistent/ukci-kernel`: /nonexistent/ukci-kernel: no such directory"
    );
}

#[test]
fn a_series_apt_does_not_have_fails_fast() {
    if Command::new("apt-cache").arg("--version").output().is_err() {
        eprintln!("SKIP: apt-cache not available");
        return;
    }
    let spec = KernelSpec::parse("debian:5.99").unwrap();
    let t = Instant::now();
    let msg = store()
        .get(&spec, Refresh::IfMissing)
        .unwrap_err()
        .to_string();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        msg.contains("no Debian kernel package for `debian:5.99`"),
        "{msg}"
    );
    assert!(msg.contains("linux-image-5.99.*-amd64"), "{msg}");
}
