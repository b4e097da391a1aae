//! How long each test took when it last ran on this machine, kept per user
//! (`<cache>/durations.tsv`, one `seconds<TAB>key` line per test and
//! environment), so that the next run can start the longest tests first.
//! A file that cannot be read is no history: the order falls back to the
//! tests' timeouts.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The file's name in the per-user cache.
pub const FILE: &str = "durations.tsv";

/// Last-known durations by key (`suite.test@environment`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct History(BTreeMap<String, Duration>);

impl History {
    pub fn load(path: &Path) -> History {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        History(
            text.lines()
                .filter_map(|l| {
                    let (secs, key) = l.split_once('\t')?;
                    let secs: f64 = secs
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s >= 0.0)?;
                    Some((key.to_string(), Duration::from_secs_f64(secs)))
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<Duration> {
        self.0.get(key).copied()
    }

    /// Adds (or replaces) these durations and writes the whole history back
    /// atomically; another run's entries written meanwhile may be lost,
    /// which only costs ordering.
    pub fn record(path: &Path, took: impl IntoIterator<Item = (String, Duration)>) {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut h = History::load(path);
        h.0.extend(took);
        let text: String =
            h.0.iter()
                .map(|(k, d)| format!("{:.3}\t{k}\n", d.as_secs_f64()))
                .collect();
        let _ = crate::rundir::replace_atomically(path, |tmp| std::fs::write(tmp, text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_kept_per_key_and_updated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert_eq!(History::load(&path), History::default());
        History::record(
            &path,
            [("s.a@tcg".to_string(), Duration::from_millis(1500))],
        );
        History::record(
            &path,
            [
                ("s.b@tcg".to_string(), Duration::from_secs(40)),
                ("s.a@tcg".to_string(), Duration::from_millis(250)),
            ],
        );
        let h = History::load(&path);
        assert_eq!(h.get("s.a@tcg"), Some(Duration::from_millis(250)));
        assert_eq!(h.get("s.b@tcg"), Some(Duration::from_secs(40)));
        assert_eq!(h.get("s.a@kvm"), None);
        std::fs::write(&path, "garbage\n-1\ts.c@tcg\n2.5\ts.d@tcg\n").unwrap();
        let h = History::load(&path);
        assert_eq!(
            (h.get("s.c@tcg"), h.get("s.d@tcg")),
            (None, Some(Duration::from_millis(2500)))
        );
    }
}
