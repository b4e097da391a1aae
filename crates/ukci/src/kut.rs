//! The kvm-unit-tests tree `test`, `list` and `bench` use when no tree is
//! named: the shared source tarball ([`ukci_kut::tree::SHARED_TARBALL`]),
//! built once into the per-user cache.

use std::path::PathBuf;
use ukci_runner::manifest::kut::DIR_ENV;
use ukci_runner::session::Layout;

/// The built shared tree; `Ok(None)` when the tarball is absent.
pub fn shared_tree(layout: &Layout) -> Result<Option<PathBuf>, String> {
    let tarball = layout.root.join(ukci_kut::tree::SHARED_TARBALL);
    if !tarball.is_file() {
        return Ok(None);
    }
    ukci_kut::tree::prepare(&tarball, &layout.cache(), |step| {
        eprintln!("kvm-unit-tests: {step}")
    })
    .map(Some)
}

/// Points `[kvm-unit-tests]` manifests at the shared tree, unless
/// `UKCI_KVM_UNIT_TESTS` already names one or no manifest has such a table.
/// Without the tarball the manifests' own `dir` applies.
pub fn provide_tree(layout: &Layout, manifests: &[PathBuf]) -> Result<(), String> {
    let wanted = manifests.iter().any(|p| {
        std::fs::read_to_string(p).is_ok_and(|t| {
            toml::from_str::<toml::Table>(&t).is_ok_and(|t| t.contains_key("kvm-unit-tests"))
        })
    });
    if !wanted || std::env::var_os(DIR_ENV).is_some() {
        return Ok(());
    }
    if let Some(dir) = shared_tree(layout)? {
        // SAFETY: called from main before any thread is started, so no
        // other thread reads the environment concurrently.
        unsafe { std::env::set_var(DIR_ENV, dir) };
    }
    Ok(())
}
