//! A kvm-unit-tests tree built from a source tarball, kept in the per-user
//! cache (`<cache>/kvm-unit-tests/<tarball name>-<hash>`) so that every
//! checkout and run on the machine builds it once. The tree is configured
//! and built where it stays (`config.mak` records its own absolute path),
//! under the entry's lock; a `.ukci-built` marker written last says it is
//! whole, and a tree without it is built again from scratch.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ukci_supervise::End;
use ukci_vhost::cache::{EntryLock, Fnv};

const MARKER: &str = ".ukci-built";

/// The kvm-unit-tests source the project tests against (upstream commit
/// 1da1819e, unmodified), relative to the workspace root. It is not part of
/// the repository: where it is absent, what needs it says so and skips.
pub const SHARED_TARBALL: &str = "../shared/third-party/kvm-unit-tests-1da1819e.tar.xz";

/// Whether `dir` looks like a configured and built tree: `config.mak`
/// from `./configure` and at least one test image from `make` in `arch`.
pub fn is_built(dir: &Path, arch_dir: &str) -> bool {
    dir.join("config.mak").is_file()
        && std::fs::read_dir(dir.join(arch_dir))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "flat"))
}

/// The cache entry of `tarball`: its name and a hash of its bytes.
pub fn entry_for(tarball: &Path, cache: &Path) -> io::Result<PathBuf> {
    let bytes = std::fs::read(tarball)?;
    let mut h = Fnv::new();
    h.bytes(&bytes);
    let name = tarball
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_end_matches(".tar.xz")
        .trim_end_matches(".tar.gz")
        .to_string();
    Ok(cache
        .join("kvm-unit-tests")
        .join(format!("{name}-{}", h.hex())))
}

/// The built tree of `tarball` in `cache`, extracting, configuring and
/// building it first when no whole one is there. `progress` hears each
/// step.
pub fn prepare(tarball: &Path, cache: &Path, progress: impl Fn(&str)) -> Result<PathBuf, String> {
    let entry =
        entry_for(tarball, cache).map_err(|e| format!("cannot read {}: {e}", tarball.display()))?;
    if entry.join(MARKER).is_file() {
        return Ok(entry);
    }
    let _lock =
        EntryLock::acquire(&entry).map_err(|e| format!("cannot lock {}: {e}", entry.display()))?;
    if entry.join(MARKER).is_file() {
        return Ok(entry);
    }
    let fail = |e: io::Error| format!("{}: {e}", entry.display());
    if entry.exists() {
        std::fs::remove_dir_all(&entry).map_err(fail)?;
    }
    std::fs::create_dir_all(&entry).map_err(fail)?;
    progress(&format!(
        "extracting {} into {}",
        tarball.display(),
        entry.display()
    ));
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let steps: [(&str, Vec<String>, u64); 3] = [
        (
            "tar",
            vec![
                "-xf".into(),
                tarball.display().to_string(),
                "-C".into(),
                entry.display().to_string(),
                "--strip-components=1".into(),
            ],
            120,
        ),
        ("./configure", vec![], 120),
        ("make", vec![format!("-j{jobs}")], 900),
    ];
    for (program, args, secs) in steps {
        if program != "tar" {
            progress(&format!(
                "{program} {} in {}",
                args.join(" "),
                entry.display()
            ));
        }
        run_in(&entry, program, &args, Duration::from_secs(secs))?;
    }
    std::fs::write(entry.join(MARKER), b"").map_err(fail)?;
    Ok(entry)
}

/// Runs one build step in `dir` under supervision.
fn run_in(dir: &Path, program: &str, args: &[String], timeout: Duration) -> Result<(), String> {
    let argv: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    let fin = ukci_supervise::run_in(dir, program.as_ref(), &argv, timeout, |_| {});
    match fin.end {
        End::Exited(0) => Ok(()),
        end => {
            let tail: Vec<&str> = fin.stderr.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(format!(
                "{program} {} in {} ended with {end:?}: {}",
                args.join(" "),
                dir.display(),
                tail.join(" | ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_built_when_it_has_config_mak_and_a_test_image() {
        let dir = std::env::temp_dir().join(format!("ukci-kut-tree-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("x86")).unwrap();
        assert!(!is_built(&dir, "x86"));
        std::fs::write(dir.join("config.mak"), b"ARCH=x86_64\n").unwrap();
        assert!(!is_built(&dir, "x86"), "configured, not built");
        std::fs::write(dir.join("x86/apic.flat"), b"").unwrap();
        assert!(is_built(&dir, "x86"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
