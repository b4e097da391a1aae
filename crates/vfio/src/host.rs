//! The host's PCI functions as this crate may change them: only functions
//! the caller named (and their VFs), never one the host is using, and every
//! change journaled before it is made.

use std::path::Path;

use crate::error::{Error, Result};
use crate::guard;
use crate::journal::{self, Entry, Journal, ReplayReport};
use crate::sysfs::{SysWrite, Sysfs};

pub struct Host {
    sys: Sysfs,
    journal: Journal,
    allowed: Vec<String>,
}

impl Host {
    /// Takes the journal at `journal` (for as long as the `Host` lives; see
    /// [`Journal::open`]) and first puts back whatever an earlier run left
    /// changed. `allowed` are the functions this run may touch.
    pub fn open(sys: Sysfs, journal: &Path, allowed: &[&str]) -> Result<(Host, ReplayReport)> {
        let mut host = Host {
            sys,
            journal: Journal::open(journal)?,
            allowed: allowed.iter().map(|s| (*s).to_owned()).collect(),
        };
        let report = host.restore()?;
        Ok((host, report))
    }

    pub fn sys(&self) -> &Sysfs {
        &self.sys
    }

    pub fn journal_path(&self) -> &Path {
        self.journal.path()
    }

    /// Whether this run may change `bdf`: named by the caller (or a VF of a
    /// named PF), and neither it nor its VFs are in use by the host.
    pub fn may_touch(&self, bdf: &str) -> Result<()> {
        let named = self.allowed.iter().any(|a| a == bdf)
            || self
                .sys
                .physfn(bdf)
                .is_some_and(|pf| self.allowed.contains(&pf));
        if !named {
            return Err(Error::NotAllowed {
                bdf: bdf.to_owned(),
                allowed: self.allowed.join(", "),
            });
        }
        let vfs = self.sys.virtfns(bdf);
        for f in std::iter::once(bdf).chain(vfs.iter().map(String::as_str)) {
            if let Some(reason) = guard::busy_reason(&self.sys, f) {
                return Err(Error::Refused {
                    bdf: f.to_owned(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// The single path for changes: check, journal the state being replaced
    /// (fsynced), then write.
    pub fn apply(&mut self, w: SysWrite) -> Result<()> {
        if let Some(bdf) = w.bdf() {
            self.may_touch(bdf)?;
        }
        let before = Entry::before(&self.sys, &w).map_err(|e| {
            Error::Other(format!(
                "cannot read the state {} replaces: {e}",
                self.sys.path_of(&w).display()
            ))
        })?;
        if let Some(e) = before {
            self.journal.record(&e)?;
        }
        self.sys.write(&w)?;
        Ok(())
    }

    /// Replays the journal (newest change first) through the same guard as
    /// [`Host::apply`], and removes it when every entry was put back. When
    /// anything is left (an unreadable line, a refused or failed entry) the
    /// whole journal is kept for the next attempt.
    pub fn restore(&mut self) -> Result<ReplayReport> {
        let Some(contents) = self.journal.read()? else {
            return Ok(ReplayReport::default());
        };
        let mut report = journal::replay(&self.sys, &contents, |bdf| self.may_touch(bdf));
        if contents.is_empty() {
            report.notes.push(format!(
                "the restore journal {} recorded no change (a run stopped before its first): removed",
                self.journal.path().display()
            ));
        }
        if report.ok() {
            self.journal.clear()?;
        }
        Ok(report)
    }

    /// [`Self::restore`] where only the end matters: every function as it
    /// was, or an error that says what was left (the journal keeps it for
    /// the next run and `ukci restore`).
    pub fn put_back(&mut self) -> std::result::Result<(), String> {
        match self.restore() {
            Err(e) => Err(e.to_string()),
            Ok(r) => match r.left.first() {
                None => Ok(()),
                Some(first) => Err(format!(
                    "not put back: {first}{}",
                    match r.left.len() {
                        1 => String::new(),
                        n => format!(" and {} more journal entries", n - 1),
                    }
                )),
            },
        }
    }

    /// Binds `bdf` to `driver`: unbinds its current driver, sets
    /// `driver_override` so no other driver takes it, then binds. A refused
    /// probe comes back with its errno (e.g. EBUSY) and kernel message.
    pub fn bind(&mut self, bdf: &str, driver: &str) -> Result<()> {
        let now = self.sys.driver(bdf);
        if now.as_deref() == Some(driver) {
            return Ok(());
        }
        if let Some(d) = now {
            self.apply(SysWrite::Unbind {
                bdf: bdf.into(),
                driver: d,
            })?;
        }
        if self.sys.driver_override(bdf).as_deref() != Some(driver) {
            self.apply(SysWrite::DriverOverride {
                bdf: bdf.into(),
                value: Some(driver.into()),
            })?;
        }
        self.apply(SysWrite::Bind {
            bdf: bdf.into(),
            driver: driver.into(),
        })
    }

    pub fn unbind(&mut self, bdf: &str) -> Result<()> {
        match self.sys.driver(bdf) {
            Some(d) => self.apply(SysWrite::Unbind {
                bdf: bdf.into(),
                driver: d,
            }),
            None => Ok(()),
        }
    }

    /// Sets the number of VFs (through 0 when changing one non-zero count to another).
    pub fn set_numvfs(&mut self, bdf: &str, n: u32) -> Result<()> {
        let now = self.sys.sriov_numvfs(bdf).unwrap_or(0);
        if now == n {
            return Ok(());
        }
        if now != 0 && n != 0 {
            self.apply(SysWrite::SriovNumvfs {
                bdf: bdf.into(),
                n: 0,
            })?;
        }
        self.apply(SysWrite::SriovNumvfs { bdf: bdf.into(), n })
    }

    pub fn set_autoprobe(&mut self, bdf: &str, on: bool) -> Result<()> {
        if self.sys.sriov_drivers_autoprobe(bdf).ok() == Some(on) {
            return Ok(());
        }
        self.apply(SysWrite::SriovAutoprobe {
            bdf: bdf.into(),
            on,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    const PF: &str = "0000:01:00.0";

    fn fake(mounted: bool) -> (tempfile::TempDir, Sysfs) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let dev = r.join("sys/devices/pci0000:00/0000:00:01.0").join(PF);
        fs::create_dir_all(dev.join("nvme/nvme0/nvme0n1")).unwrap();
        fs::create_dir_all(r.join("sys/bus/pci/devices")).unwrap();
        symlink(&dev, r.join("sys/bus/pci/devices").join(PF)).unwrap();
        fs::write(dev.join("driver_override"), "(null)\n").unwrap();
        fs::write(dev.join("sriov_numvfs"), "0\n").unwrap();
        fs::create_dir_all(r.join("sys/block")).unwrap();
        symlink(dev.join("nvme/nvme0/nvme0n1"), r.join("sys/block/nvme0n1")).unwrap();
        fs::create_dir_all(r.join("proc")).unwrap();
        let mounts = if mounted {
            "/dev/nvme0n1 /data xfs rw 0 0\n"
        } else {
            ""
        };
        fs::write(r.join("proc/mounts"), mounts).unwrap();
        let sys = Sysfs::new(r);
        (t, sys)
    }

    #[test]
    fn changes_are_journaled_before_they_are_made() {
        let (t, sys) = fake(false);
        let jp = t.path().join("journal");
        let (mut host, rep) = Host::open(sys.clone(), &jp, &[PF]).unwrap();
        assert!(rep.restored.is_empty());
        host.set_numvfs(PF, 2).unwrap();
        host.apply(SysWrite::DriverOverride {
            bdf: PF.into(),
            value: Some("vfio-pci".into()),
        })
        .unwrap();
        assert_eq!(sys.attr(PF, "sriov_numvfs").unwrap(), "2");
        assert_eq!(
            fs::read_to_string(&jp).unwrap(),
            format!(
                "{}\nsriov_numvfs {PF} 0\ndriver_override {PF} -\n",
                journal::HEADER
            )
        );
        // A crash here: the next run replays the journal first.
        drop(host);
        let (host, rep) = Host::open(sys.clone(), &jp, &[PF]).unwrap();
        assert_eq!(rep.restored.len(), 2, "{rep:?}");
        assert_eq!(sys.attr(PF, "sriov_numvfs").unwrap(), "0");
        assert_eq!(sys.driver_override(PF), None);
        assert!(!host.journal_path().exists());
    }

    #[test]
    fn functions_not_named_are_refused_untouched() {
        let (t, sys) = fake(false);
        let (mut host, _) =
            Host::open(sys.clone(), &t.path().join("j"), &["0000:02:00.0"]).unwrap();
        let e = host.set_numvfs(PF, 1).unwrap_err();
        assert!(matches!(e, Error::NotAllowed { .. }), "{e}");
        assert_eq!(sys.attr(PF, "sriov_numvfs").unwrap(), "0");
        assert!(!t.path().join("j").exists(), "nothing journaled");
    }

    #[test]
    fn a_function_backing_a_mount_is_refused_untouched() {
        let (t, sys) = fake(true);
        let (mut host, _) = Host::open(sys.clone(), &t.path().join("j"), &[PF]).unwrap();
        let e = host.set_numvfs(PF, 1).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/dev/nvme0n1 on /data"), "{msg}");
        assert_eq!(sys.attr(PF, "sriov_numvfs").unwrap(), "0");
    }

    /// A journal a crashed run left: VFs on, then a line nobody can read.
    fn crashed(t: &tempfile::TempDir, sys: &Sysfs) -> (std::path::PathBuf, String) {
        fs::write(sys.device_dir(PF).join("sriov_numvfs"), "2\n").unwrap();
        let jp = t.path().join("journal");
        let text = format!(
            "{}\nsriov_numvfs {PF} 0\ndriver_override {PF} ?%zz\n",
            journal::HEADER
        );
        fs::write(&jp, &text).unwrap();
        (jp, text)
    }

    #[test]
    fn an_unreadable_line_is_reported_by_number_and_never_dropped() {
        let (t, sys) = fake(false);
        let (jp, text) = crashed(&t, &sys);
        let (mut host, rep) = Host::open(sys.clone(), &jp, &[PF]).unwrap();
        // What can be read is put back; the rest stays on disk.
        assert_eq!(rep.restored, vec![format!("sriov_numvfs {PF} 0")]);
        assert_eq!(sys.attr(PF, "sriov_numvfs").unwrap(), "0");
        assert_eq!(
            rep.left.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec![format!("line 3: `driver_override {PF} ?%zz`: unreadable")]
        );
        assert_eq!(fs::read_to_string(&jp).unwrap(), text);
        // This run's own changes are appended and put back; the line stays.
        host.set_numvfs(PF, 1).unwrap();
        let rep = host.restore().unwrap();
        assert_eq!(rep.left.len(), 1, "{rep:?}");
        assert_eq!(sys.attr(PF, "sriov_numvfs").unwrap(), "0");
        // Where only the end matters, the line left is an error.
        host.set_numvfs(PF, 1).unwrap();
        assert_eq!(
            host.put_back(),
            Err(format!(
                "not put back: line 3: `driver_override {PF} ?%zz`: unreadable"
            ))
        );
        assert_eq!(sys.attr(PF, "sriov_numvfs").unwrap(), "0");
        let now = fs::read_to_string(&jp).unwrap();
        assert!(now.starts_with(&text), "{now}");
        // Once a person deals with the line, the journal goes.
        drop(host);
        fs::write(&jp, format!("{}\nsriov_numvfs {PF} 0\n", journal::HEADER)).unwrap();
        let (_, rep) = Host::open(sys.clone(), &jp, &[PF]).unwrap();
        assert!(rep.ok() && !jp.exists(), "{rep:?}");
    }

    #[test]
    fn a_journal_cut_before_its_first_entry_is_empty_with_a_note() {
        let (t, sys) = fake(false);
        let jp = t.path().join("journal");
        for text in ["", "ukci-vfio-jour", journal::HEADER] {
            fs::write(&jp, text).unwrap();
            let (_, rep) = Host::open(sys.clone(), &jp, &[PF]).unwrap();
            assert!(rep.ok() && rep.restored.is_empty(), "{rep:?}");
            assert!(rep.notes[0].contains("recorded no change"), "{rep:?}");
            assert!(!jp.exists(), "{text:?}");
        }
    }

    #[test]
    fn a_second_run_neither_replays_nor_removes_the_journal_of_a_live_one() {
        let (t, sys) = fake(false);
        let jp = t.path().join("journal");
        let (mut a, _) = Host::open(sys.clone(), &jp, &[PF]).unwrap();
        a.set_numvfs(PF, 2).unwrap();
        let e = Host::open(sys.clone(), &jp, &[PF]).err().unwrap();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("in use by ukci process {}", std::process::id())),
            "{msg}"
        );
        assert_eq!(
            sys.attr(PF, "sriov_numvfs").unwrap(),
            "2",
            "A's change stands"
        );
        assert!(jp.exists());
        // A goes on journaling into the same file, and its restore is whole.
        a.set_numvfs(PF, 1).unwrap();
        assert_eq!(a.journal.read().unwrap().unwrap().entries.len(), 3);
        let rep = a.restore().unwrap();
        assert!(rep.ok(), "{rep:?}");
        assert_eq!(sys.attr(PF, "sriov_numvfs").unwrap(), "0");
        drop(a);
        Host::open(sys, &jp, &[PF]).unwrap();
    }

    #[test]
    fn replay_refuses_a_function_the_host_now_uses_and_keeps_the_entry() {
        let (t, sys) = fake(true);
        let (jp, _) = crashed(&t, &sys);
        let (_, rep) = Host::open(sys.clone(), &jp, &[PF]).unwrap();
        assert_eq!(sys.attr(PF, "sriov_numvfs").unwrap(), "2", "untouched");
        assert!(rep.restored.is_empty());
        let left: Vec<String> = rep.left.iter().map(ToString::to_string).collect();
        assert!(left[0].starts_with("line 2: "), "{left:?}");
        assert!(left[0].contains("/dev/nvme0n1 on /data"), "{left:?}");
        assert!(left[1].starts_with("line 3: "), "{left:?}");
        assert!(jp.exists());
    }

    #[test]
    fn replay_refuses_a_function_this_run_was_not_given() {
        let (t, sys) = fake(false);
        let (jp, text) = crashed(&t, &sys);
        let (_, rep) = Host::open(sys.clone(), &jp, &["0000:02:00.0"]).unwrap();
        assert_eq!(sys.attr(PF, "sriov_numvfs").unwrap(), "2", "untouched");
        assert!(
            matches!(&rep.left[0].why, journal::Why::Refused(r) if r.contains("not one of")),
            "{rep:?}"
        );
        assert_eq!(fs::read_to_string(&jp).unwrap(), text);
    }
}
