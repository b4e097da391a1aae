//! The CI matrix: one job per (lane, kernel), derived from the manifests, as
//! JSON for a GitHub Actions `strategy.matrix` (`include` list).

use crate::manifest::Manifest;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The keys each matrix entry has; the workflow may use exactly these.
pub const KEYS: &[&str] = &["name", "lane", "kernel", "args"];

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Entry {
    /// The job's display name.
    pub name: String,
    /// `local` or `virtual`.
    pub lane: String,
    /// The host kernel of a virtual lane; empty for the local lane.
    pub kernel: String,
    /// Arguments for `cargo xtask test`.
    pub args: String,
}

#[derive(Debug, Serialize)]
pub struct Matrix {
    pub include: Vec<Entry>,
}

pub fn entries(manifests: &[Manifest], root: &Path) -> Vec<Entry> {
    let rel = |m: &Manifest| {
        m.path
            .strip_prefix(root)
            .unwrap_or(&m.path)
            .display()
            .to_string()
    };
    let mut local = Vec::new();
    let mut by_kernel: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in manifests {
        if m.is_virtual() {
            for k in m.kernels() {
                by_kernel.entry(k).or_default().push(rel(m));
            }
        } else {
            local.push(rel(m));
        }
    }
    let mut out = Vec::new();
    if !local.is_empty() {
        out.push(Entry {
            name: "local".into(),
            lane: "local".into(),
            kernel: String::new(),
            args: local.join(" "),
        });
    }
    for (k, ms) in by_kernel {
        out.push(Entry {
            name: format!("virtual {k}"),
            lane: "virtual".into(),
            args: format!("{} --kernel {k}", ms.join(" ")),
            kernel: k,
        });
    }
    out
}

pub fn generate(manifests: &[Manifest], root: &Path) -> String {
    serde_json::to_string(&Matrix {
        include: entries(manifests, root),
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;

    #[test]
    fn one_entry_for_the_local_lane_and_one_per_kernel() {
        let local = manifest::parse(
            Path::new("/r/manifests/a.toml"),
            "[[test]]\nname = \"t\"\nchecks = [\"boot.smoke\"]\n",
        )
        .unwrap();
        let virt = manifest::parse(
            Path::new("/r/manifests/v.toml"),
            "[lane]\nkind = \"virtual\"\nkernels = [\"debian:6.1\", \"debian:6.12\"]\n[[test]]\nname = \"t\"\nchecks = [\"vfio.env\"]\n",
        )
        .unwrap();
        let e = entries(&[local, virt], Path::new("/r"));
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].args, "manifests/a.toml");
        assert_eq!(e[1].kernel, "debian:6.1");
        assert_eq!(e[2].args, "manifests/v.toml --kernel debian:6.12");
        let json = serde_json::to_value(&e[2]).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = KEYS.to_vec();
        want.sort();
        assert_eq!(keys, want);
    }
}
