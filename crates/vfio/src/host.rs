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
    /// Opens the journal at `journal` and first puts back whatever an earlier
    /// run left changed. `allowed` are the functions this run may touch.
    pub fn open(sys: Sysfs, journal: &Path, allowed: &[&str]) -> Result<(Host, ReplayReport)> {
        let mut host = Host {
            sys,
            journal: Journal::new(journal),
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

    /// Replays the journal (newest change first) and removes it when every
    /// entry was put back. A failed entry is kept for the next attempt.
    pub fn restore(&mut self) -> Result<ReplayReport> {
        let entries = self.journal.entries()?;
        let report = journal::replay(&self.sys, &entries);
        if report.ok() {
            self.journal.clear()?;
        }
        Ok(report)
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
}
