//! The folders a run owns while it lives (its scratch folder under
//! `images/scratch/`, its report folder under `reports/`) and the reclaiming
//! of those a dead run left behind.
//!
//! A run holds a lock (`flock`) on each of its folders for as long as its
//! process lives. The kernel drops the lock when the process dies, however it
//! dies (SIGKILL included), so a folder whose lock is free belongs to no live
//! run. A folder is made under a hidden name, locked, and only then renamed
//! into place: no other run ever sees it unlocked.
//!
//! Files meant to outlive the run (a report, a cache) are replaced whole.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// A folder owned by this run. Dropping it removes it with everything in it
/// (on every way out of the run, a panic included) unless [`RunDir::keep`]
/// kept it.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    /// Held until after the folder is removed: the sign that a live run
    /// owns it.
    _lock: File,
    keep: bool,
}

impl RunDir {
    /// Creates the folder `path` (and its parent), locked. Fails if a live
    /// run owns a folder of that name.
    pub fn create(path: &Path) -> io::Result<RunDir> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::other(format!(
                "{} is not a folder name",
                path.display()
            )));
        };
        fs::create_dir_all(parent)?;
        let path = path.to_path_buf();
        if path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and another run owns it", path.display()),
            ));
        }
        let fresh = parent.join(format!(".{}.new", name.to_string_lossy()));
        let _ = fs::remove_dir_all(&fresh);
        fs::create_dir(&fresh)?;
        let lock = File::open(&fresh)?;
        lock.try_lock().map_err(io::Error::other)?;
        fs::rename(&fresh, &path)?;
        Ok(RunDir {
            path,
            _lock: lock,
            keep: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the folder in place for good (a finished report).
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes each folder in `parent` that `left_by_a_run` picks and whose lock
/// no live run holds; returns the folders removed.
pub fn reclaim(parent: &Path, left_by_a_run: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return vec![];
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if !e.file_type().is_ok_and(|t| t.is_dir()) || !left_by_a_run(&path) {
            continue;
        }
        let Ok(lock) = File::open(&path) else {
            continue;
        };
        if lock.try_lock().is_ok() && fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// Whether a folder in `images/scratch/` is a run's: `<pid>`, or
/// `<pid>-<suite>@<kernel>` as a virtual host's scratch folder was once named.
pub fn is_run_scratch(dir: &Path) -> bool {
    let name = file_name(dir);
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && (digits == name.len() || name.as_bytes()[digits] == b'-')
}

/// The file whose presence makes a report folder complete.
pub const JUNIT: &str = "junit.xml";
/// The report for people, beside it.
pub const HTML: &str = "index.html";
/// The folder of the tests' logs, beside them.
pub const LOGS: &str = "logs";

/// Whether a folder in `reports/` is a run's report that was never finished:
/// named like a run (`20261124-131502-12345`) and without its JUnit file.
pub fn is_unfinished_report(dir: &Path) -> bool {
    let parts: Vec<&str> = file_name(dir).split('-').collect();
    let digits = |s: &str, n: Option<usize>| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && n.is_none_or(|n| s.len() == n)
    };
    matches!(parts[..], [d, t, p] if digits(d, Some(8)) && digits(t, Some(6)) && digits(p, None))
        && !dir.join(JUNIT).exists()
}

/// Makes `path` by `make`-ing a temporary file beside it and renaming that
/// over it: readers see the old file or the whole new one, never a part.
/// The temporary file is this process's own, so runs replacing the same
/// file at once do not write into each other's.
pub fn replace_atomically(
    path: &Path,
    make: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let made = make(&tmp).and_then(|()| fs::rename(&tmp, path));
    if made.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    made
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// `<suite>@<env>` with the environment label made a file name:
/// `vf-token@debian-7.3--cr-pin-v3` for `debian:7.3, cr-pin-v3`.
pub fn env_dir_name(suite: &str, label: &str) -> String {
    let env: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{suite}@{env}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_folder_is_removed_when_the_run_ends_unless_kept() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let r = RunDir::create(&d.join("123")).unwrap();
        fs::create_dir(r.path().join("sub")).unwrap();
        fs::write(r.path().join("sub/a.img"), b"x").unwrap();
        drop(r);
        assert!(!d.join("123").exists(), "removed, empty folders included");
        RunDir::create(&d.join("124")).unwrap().keep();
        assert!(d.join("124").is_dir());
        assert_eq!(fs::read_dir(d).unwrap().count(), 1, "no hidden leftovers");
    }

    #[test]
    fn only_folders_no_live_run_holds_are_reclaimed() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let live = RunDir::create(&d.join("100")).unwrap();
        // What a SIGKILLed run leaves: a folder nobody holds a lock on.
        for dead in ["200", "300-vf-token@debian-6.1"] {
            fs::create_dir_all(d.join(dead).join("sub")).unwrap();
            fs::write(d.join(dead).join("sub/nvme-ns1.img"), b"x").unwrap();
        }
        fs::create_dir(d.join("bench-nvme")).unwrap();
        let mut removed = reclaim(d, is_run_scratch);
        removed.sort();
        assert_eq!(removed, [d.join("200"), d.join("300-vf-token@debian-6.1")]);
        assert!(live.path().is_dir(), "a live run's folder stays");
        assert!(d.join("bench-nvme").is_dir(), "not a run's folder");
        // Another live run cannot take the same name.
        assert!(RunDir::create(&d.join("100")).is_err());
        drop(live);
    }

    #[test]
    fn a_report_file_is_replaced_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let junit = d.path().join("junit.xml");
        replace_atomically(&junit, |tmp| fs::write(tmp, "<old/>")).unwrap();
        // A full disk: part of the file is written, then the write fails.
        let full = replace_atomically(&junit, |tmp| {
            fs::write(tmp, "<testsu")?;
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        });
        assert!(full.is_err());
        assert_eq!(fs::read_to_string(&junit).unwrap(), "<old/>");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "no temporary left");
        replace_atomically(&junit, |tmp| fs::write(tmp, "<new/>")).unwrap();
        assert_eq!(fs::read_to_string(&junit).unwrap(), "<new/>");
    }

    #[test]
    fn run_scratch_and_unfinished_report_names() {
        for (name, run) in [
            ("12345", true),
            ("12345-vf-token@debian-6.1", true),
            ("bench-nvme", false),
            ("-1", false),
            ("12a", false),
            ("", false),
        ] {
            assert_eq!(is_run_scratch(Path::new(name)), run, "{name}");
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let run = d.join("20261124-131502-12345");
        fs::create_dir_all(run.join("vhost")).unwrap();
        assert!(is_unfinished_report(&run));
        fs::write(run.join(JUNIT), "<testsuites/>").unwrap();
        assert!(!is_unfinished_report(&run), "a finished report stays");
        for other in ["latest", "2026-1-1", "20261124-131502-x", "notes"] {
            fs::create_dir_all(d.join(other)).unwrap();
            assert!(!is_unfinished_report(&d.join(other)), "{other}");
        }
    }
}
