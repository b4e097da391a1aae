//! KVM built from patch sets: the cold build time of each (kernel, set) of
//! `manifests/cr-pinning-kvm.toml`, as its build log recorded it, and what
//! reusing the cached build costs (goal: under a second).

use anyhow::Result;
use std::time::{Duration, Instant};
use ukci_runner::session::{self, Layout};
use ukci_vhost::kernel::{KernelSpec, KernelStore, Refresh};
use ukci_vhost::kvmbuild;

/// Cached reuse of a build must cost less than this.
const REUSE_GOAL: Duration = Duration::from_secs(1);

pub fn run(layout: &Layout) -> Result<()> {
    let manifest = layout.manifests().join("cr-pinning-kvm.toml");
    let manifests = session::load_manifests(std::slice::from_ref(&manifest))
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    let m = &manifests[0];
    let mut sets: Vec<_> = m
        .lane
        .iter()
        .flat_map(|l| &l.kvm)
        .filter_map(|v| v.get_ref().patches_from(&m.path))
        .collect();
    sets.sort();
    sets.dedup();
    out!("\nKVM from patch sets ({}), seconds", manifest.display());
    out!(
        "{:<12} {:<16} {:>10} {:>14} {:>6}",
        "kernel",
        "set",
        "cold build",
        "cached reuse",
        "goal"
    );
    let store = KernelStore::new(&layout.cache());
    for name in m.kernels() {
        let kernel = store.get(&KernelSpec::parse(&name)?, Refresh::IfStale)?;
        for set in &sets {
            // The first call builds when nothing is cached; the timed one
            // is a reuse.
            let first = kvmbuild::build(&layout.cache(), &kernel, set, &mut |_| {})?;
            let t = Instant::now();
            let again = kvmbuild::build(&layout.cache(), &kernel, set, &mut |_| {})?;
            let reuse = t.elapsed();
            let cold = std::fs::read_to_string(&first.log)
                .ok()
                .and_then(|l| kvmbuild::built_in(&l))
                .map_or("unknown".to_string(), |s| format!("{s:.1}"));
            out!(
                "{:<12} {:<16} {:>10} {:>14.3} {:>6}",
                name,
                set.file_name().unwrap_or_default().to_string_lossy(),
                cold,
                reuse.as_secs_f64(),
                if again.cached && reuse < REUSE_GOAL {
                    "met"
                } else {
                    "not met"
                }
            );
        }
    }
    out!(
        "(cold build: the log's own time, sources staged to modules checked; the first set of a \
         kernel compiles everything, the next ones only what their patches change)"
    );
    Ok(())
}
