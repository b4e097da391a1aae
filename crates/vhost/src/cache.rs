//! The per-user cache of host kernels, their initramfs images and the
//! private apt lists: `$XDG_CACHE_HOME/ukci` (default `~/.cache/ukci`),
//! shared by every checkout and every run on the machine.
//!
//! Several runs may fill the same entry at once, so every entry is written
//! under its own lock ([`EntryLock`]), into a temporary name no other writer
//! uses ([`temp_path`]), and put in place with one rename.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The cache directory from `XDG_CACHE_HOME` and `HOME` (the XDG base
/// directory rules: a relative or empty `XDG_CACHE_HOME` is ignored).
pub fn dir_from(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let absolute = |v: OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    xdg_cache_home
        .and_then(absolute)
        .or_else(|| home.and_then(absolute).map(|h| h.join(".cache")))
        .map(|base| base.join("ukci"))
}

/// This user's ukci cache; without `HOME` or `XDG_CACHE_HOME`, a directory
/// under the system's temporary directory.
pub fn user_dir() -> PathBuf {
    dir_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")).unwrap_or_else(|| {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        std::env::temp_dir().join(format!("ukci-cache-{uid}"))
    })
}

/// An exclusive lock on one cache entry, held until dropped. The lock is a
/// `flock` on `<entry>.lock`, so a crashed holder releases it with its last
/// descriptor and stale lock files are harmless.
#[derive(Debug)]
pub struct EntryLock {
    _file: fs::File,
}

impl EntryLock {
    /// Waits until this process holds the lock of `entry`.
    pub fn acquire(entry: &Path) -> io::Result<EntryLock> {
        let path = lock_path(entry);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok(EntryLock { _file: file })
    }
}

/// The lock file of a cache entry: a sibling named `<entry>.lock`.
pub fn lock_path(entry: &Path) -> PathBuf {
    let mut name = entry.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    entry.with_file_name(name)
}

/// A fresh temporary name beside `dest` (same directory, so a rename puts it
/// in place atomically): `.<name>.<pid>-<n>.tmp`, unique among the threads
/// and processes writing at the same time.
pub fn temp_path(dest: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    dest.with_file_name(format!(".{name}.{}-{n}.tmp", std::process::id()))
}

/// Whether `name` is one of [`temp_path`]'s names for an entry called `entry`.
pub fn is_temp_of(name: &str, entry: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_prefix(entry))
        .and_then(|n| n.strip_prefix('.'))
        .and_then(|n| n.strip_suffix(".tmp"))
        .and_then(|n| n.split_once('-'))
        .is_some_and(|(pid, k)| {
            [pid, k]
                .iter()
                .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// Writes `bytes` to `dest` all at once: readers see the old file or the
/// whole new one, never a part.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(dest);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Bytes taken by the files under `path` (0 when it does not exist);
/// symbolic links are not followed.
pub fn size_of(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| size_of(&e.path()))
        .sum()
}

/// Removes `path` and everything under it; the bytes that freed.
pub fn remove(path: &Path) -> io::Result<u64> {
    let size = size_of(path);
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map(|()| size),
        Ok(_) => fs::remove_file(path).map(|()| size),
    }
}

/// FNV-1a over length-delimited fields: the cache keys' hash (not for
/// anything an attacker chooses).
#[derive(Debug, Clone)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn new() -> Self {
        Fnv::default()
    }

    /// Adds one field.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // Length-delimit each field so ("ab","c") and ("a","bc") differ.
        for x in (b.len() as u64).to_le_bytes() {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// The hash as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// `1.5 GiB`, `320.0 MiB`, `12 KiB`, `80 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn cache_dir_follows_xdg_then_home() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            dir_from(os("/x/cache"), os("/home/u")),
            Some(PathBuf::from("/x/cache/ukci"))
        );
        assert_eq!(
            dir_from(None, os("/home/u")),
            Some(PathBuf::from("/home/u/.cache/ukci"))
        );
        // Relative or empty XDG_CACHE_HOME is invalid and ignored.
        assert_eq!(
            dir_from(os("rel"), os("/home/u")),
            Some(PathBuf::from("/home/u/.cache/ukci"))
        );
        assert_eq!(
            dir_from(os(""), os("/home/u")),
            Some(PathBuf::from("/home/u/.cache/ukci"))
        );
        assert_eq!(dir_from(None, None), None);
    }

    #[test]
    fn temp_names_are_unique_and_recognised() {
        let dest = Path::new("/c/initramfs/6.1.0-57-amd64-abc.cpio");
        let a = temp_path(dest);
        let b = temp_path(dest);
        assert_ne!(a, b);
        assert_eq!(a.parent(), dest.parent());
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(is_temp_of(name, "6.1.0-57-amd64-abc.cpio"), "{name}");
        assert!(!is_temp_of(name, "6.1.0-57-amd64-abc"), "{name}");
        assert!(!is_temp_of(
            "6.1.0-57-amd64-abc.cpio",
            "6.1.0-57-amd64-abc.cpio"
        ));
        assert!(!is_temp_of(".x.cpio.12-.tmp", "x.cpio"));
    }

    #[test]
    fn the_entry_lock_excludes_other_holders() {
        let dir = std::env::temp_dir().join(format!("ukci-cache-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let entry = dir.join("entry");
        let inside = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (entry, inside, most, start) =
                    (entry.clone(), inside.clone(), most.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..20 {
                        let _lock = EntryLock::acquire(&entry).unwrap();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "two holders at once");
        assert!(lock_path(&entry).is_file());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remove_reports_what_it_freed() {
        let dir = std::env::temp_dir().join(format!("ukci-cache-rm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("a/b")).unwrap();
        fs::write(dir.join("a/b/f"), [0u8; 3000]).unwrap();
        write_atomic(&dir.join("a/g"), &[1u8; 96]).unwrap();
        assert_eq!(fs::read(dir.join("a/g")).unwrap(), [1u8; 96]);
        assert_eq!(
            fs::read_dir(dir.join("a")).unwrap().count(),
            2,
            "no temp left"
        );
        assert_eq!(remove(&dir.join("a")).unwrap(), 3096);
        assert!(!dir.join("a").exists());
        assert_eq!(remove(&dir.join("a")).unwrap(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_size(80), "80 B");
        assert_eq!(human_size(12 * 1024), "12 KiB");
        assert_eq!(human_size(320 * 1024 * 1024), "320.0 MiB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
