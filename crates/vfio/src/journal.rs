//! The restore journal: before any change to a PCI function or a module
//! parameter, the state it replaces is appended to a file and fsynced. If the
//! run ends normally it restores and clears the journal; if it crashes, the
//! next run (or `cargo xtask restore`) replays it. Replay walks the entries
//! newest first, so the state from before the first change wins.
//!
//! Format (text, one entry per line, fields separated by one space, values
//! percent-encoded, `-` for "none"):
//! ```text
//! ukci-vfio-journal 1
//! driver 0000:01:00.0 nvme
//! driver_override 0000:01:00.0 -
//! sriov_drivers_autoprobe 0000:01:00.0 1
//! sriov_numvfs 0000:01:00.0 0
//! module_param vfio_pci/enable_sriov N
//! ```
//! A last line without its newline (a write cut by a crash) is ignored: its
//! change was not made yet, since changes follow the fsync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sysfs::{SysWrite, Sysfs};

pub const HEADER: &str = "ukci-vfio-journal 1";

/// The state one change replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Driver {
        bdf: String,
        prev: Option<String>,
    },
    DriverOverride {
        bdf: String,
        prev: Option<String>,
    },
    Numvfs {
        bdf: String,
        prev: u32,
    },
    Autoprobe {
        bdf: String,
        prev: bool,
    },
    ModuleParam {
        module: String,
        param: String,
        prev: String,
    },
}

impl Entry {
    pub fn to_line(&self) -> String {
        let opt = |v: &Option<String>| v.as_deref().map_or("-".to_owned(), encode);
        match self {
            Entry::Driver { bdf, prev } => format!("driver {} {}", encode(bdf), opt(prev)),
            Entry::DriverOverride { bdf, prev } => {
                format!("driver_override {} {}", encode(bdf), opt(prev))
            }
            Entry::Numvfs { bdf, prev } => format!("sriov_numvfs {} {prev}", encode(bdf)),
            Entry::Autoprobe { bdf, prev } => {
                format!(
                    "sriov_drivers_autoprobe {} {}",
                    encode(bdf),
                    u8::from(*prev)
                )
            }
            Entry::ModuleParam {
                module,
                param,
                prev,
            } => format!(
                "module_param {}/{} {}",
                encode(module),
                encode(param),
                encode(prev)
            ),
        }
    }

    pub fn parse_line(line: &str) -> Option<Entry> {
        let mut f = line.split(' ');
        let (kind, target, value) = (f.next()?, f.next()?, f.next()?);
        if f.next().is_some() {
            return None;
        }
        let opt = |v: &str| -> Option<Option<String>> {
            if v == "-" {
                Some(None)
            } else {
                decode(v).map(Some)
            }
        };
        let bdf = decode(target)?;
        Some(match kind {
            "driver" => Entry::Driver {
                bdf,
                prev: opt(value)?,
            },
            "driver_override" => Entry::DriverOverride {
                bdf,
                prev: opt(value)?,
            },
            "sriov_numvfs" => Entry::Numvfs {
                bdf,
                prev: value.parse().ok()?,
            },
            "sriov_drivers_autoprobe" => Entry::Autoprobe {
                bdf,
                prev: match value {
                    "1" => true,
                    "0" => false,
                    _ => return None,
                },
            },
            "module_param" => {
                let (m, p) = target.split_once('/')?;
                Entry::ModuleParam {
                    module: decode(m)?,
                    param: decode(p)?,
                    prev: decode(value)?,
                }
            }
            _ => return None,
        })
    }

    /// The state a change is about to replace, read now; `None` for changes
    /// with nothing to restore (a reset).
    pub fn before(sys: &Sysfs, w: &SysWrite) -> std::io::Result<Option<Entry>> {
        Ok(Some(match w {
            SysWrite::DriverOverride { bdf, .. } => Entry::DriverOverride {
                bdf: bdf.clone(),
                prev: sys.driver_override(bdf),
            },
            SysWrite::Unbind { bdf, .. }
            | SysWrite::Bind { bdf, .. }
            | SysWrite::DriversProbe { bdf } => Entry::Driver {
                bdf: bdf.clone(),
                prev: sys.driver(bdf),
            },
            SysWrite::SriovNumvfs { bdf, .. } => Entry::Numvfs {
                bdf: bdf.clone(),
                prev: sys.sriov_numvfs(bdf)?,
            },
            SysWrite::SriovAutoprobe { bdf, .. } => Entry::Autoprobe {
                bdf: bdf.clone(),
                prev: sys.sriov_drivers_autoprobe(bdf)?,
            },
            SysWrite::ModuleParam { module, param, .. } => Entry::ModuleParam {
                module: module.clone(),
                param: param.clone(),
                prev: sys.module_param(module, param)?,
            },
            SysWrite::Reset { .. } => return Ok(None),
        }))
    }
}

/// What putting one entry back takes, given the state now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// Already as it was.
    AsWas,
    /// The device is gone (a VF after SR-IOV was disabled): nothing to do.
    Gone,
    Writes(Vec<SysWrite>),
}

/// Decides how to put `entry` back, reading the current state from `sys`.
pub fn restore_plan(sys: &Sysfs, entry: &Entry) -> Restore {
    let gone = |bdf: &str| !sys.exists(bdf);
    match entry {
        Entry::Driver { bdf, prev } => {
            if gone(bdf) {
                return Restore::Gone;
            }
            let now = sys.driver(bdf);
            if &now == prev {
                return Restore::AsWas;
            }
            let mut w = Vec::new();
            if let Some(d) = now {
                w.push(SysWrite::Unbind {
                    bdf: bdf.clone(),
                    driver: d,
                });
            }
            if let Some(d) = prev {
                w.push(SysWrite::Bind {
                    bdf: bdf.clone(),
                    driver: d.clone(),
                });
            }
            Restore::Writes(w)
        }
        Entry::DriverOverride { bdf, prev } => {
            if gone(bdf) {
                Restore::Gone
            } else if &sys.driver_override(bdf) == prev {
                Restore::AsWas
            } else {
                Restore::Writes(vec![SysWrite::DriverOverride {
                    bdf: bdf.clone(),
                    value: prev.clone(),
                }])
            }
        }
        Entry::Numvfs { bdf, prev } => {
            if gone(bdf) {
                return Restore::Gone;
            }
            let now = sys.sriov_numvfs(bdf).unwrap_or(0);
            let set = |n| SysWrite::SriovNumvfs {
                bdf: bdf.clone(),
                n,
            };
            match (now, *prev) {
                (a, b) if a == b => Restore::AsWas,
                // The PCI core refuses one non-zero count over another.
                (a, b) if a != 0 && b != 0 => Restore::Writes(vec![set(0), set(b)]),
                (_, b) => Restore::Writes(vec![set(b)]),
            }
        }
        Entry::Autoprobe { bdf, prev } => {
            if gone(bdf) {
                Restore::Gone
            } else if sys.sriov_drivers_autoprobe(bdf).ok() == Some(*prev) {
                Restore::AsWas
            } else {
                Restore::Writes(vec![SysWrite::SriovAutoprobe {
                    bdf: bdf.clone(),
                    on: *prev,
                }])
            }
        }
        Entry::ModuleParam {
            module,
            param,
            prev,
        } => match sys.module_param(module, param) {
            Err(_) => Restore::Gone,
            Ok(now) if &now == prev => Restore::AsWas,
            Ok(_) => Restore::Writes(vec![SysWrite::ModuleParam {
                module: module.clone(),
                param: param.clone(),
                value: prev.clone(),
            }]),
        },
    }
}

/// What a replay did, entry by entry (newest first).
#[derive(Debug, Default, Clone)]
pub struct ReplayReport {
    pub restored: Vec<String>,
    pub failed: Vec<String>,
}

impl ReplayReport {
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Puts every journaled state back, newest entry first. Keeps going past a
/// failure so one stuck device does not leave the others changed.
pub fn replay(sys: &Sysfs, entries: &[Entry]) -> ReplayReport {
    let mut report = ReplayReport::default();
    for e in entries.iter().rev() {
        match restore_plan(sys, e) {
            Restore::AsWas | Restore::Gone => {}
            Restore::Writes(ws) => {
                let res: std::result::Result<(), _> = ws.iter().try_for_each(|w| sys.write(w));
                match res {
                    Ok(()) => report.restored.push(e.to_line()),
                    Err(err) => report.failed.push(format!("{}: {err}", e.to_line())),
                }
            }
        }
    }
    report
}

/// Parses a journal file's text. Returns the entries and the lines it could
/// not use (reported, never fatal).
pub fn parse(text: &str) -> (Vec<Entry>, Vec<String>) {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => "",
    };
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for line in complete.lines() {
        if line == HEADER || line.is_empty() {
            continue;
        }
        match Entry::parse_line(line) {
            Some(e) => entries.push(e),
            None => bad.push(line.to_owned()),
        }
    }
    (entries, bad)
}

/// The journal file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Option<File>,
}

impl Journal {
    pub fn new(path: &Path) -> Journal {
        Journal {
            path: path.to_owned(),
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, what: impl std::fmt::Display) -> Error {
        Error::Journal {
            path: self.path.display().to_string(),
            what: what.to_string(),
        }
    }

    /// The entries on disk (empty when there is no journal).
    pub fn entries(&self) -> Result<Vec<Entry>> {
        match fs::read_to_string(&self.path) {
            Ok(t) => {
                if !t.starts_with(HEADER) {
                    return Err(self.err(format!("does not start with `{HEADER}`")));
                }
                Ok(parse(&t).0)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Appends an entry and makes it durable before returning.
    pub fn record(&mut self, e: &Entry) -> Result<()> {
        if self.file.is_none() {
            let existed = self.path.exists();
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| self.err(e))?;
            if !existed {
                writeln!(f, "{HEADER}").map_err(|e| self.err(e))?;
                f.sync_all().map_err(|e| self.err(e))?;
                sync_dir(&self.path).map_err(|e| self.err(e))?;
            }
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("opened above");
        let res = writeln!(f, "{}", e.to_line()).and_then(|()| f.sync_data());
        res.map_err(|err| self.err(err))
    }

    /// Removes the journal after everything was restored.
    pub fn clear(&mut self) -> Result<()> {
        self.file = None;
        match fs::remove_file(&self.path) {
            Ok(()) => sync_dir(&self.path).map_err(|e| self.err(e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}

fn sync_dir(file: &Path) -> io::Result<()> {
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty());
    File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

const SAFE: &[u8] = b"._:+-";

fn encode(v: &str) -> String {
    match v {
        // `-` alone means "none"; `%` alone is the empty string.
        "" => "%".into(),
        "-" => "%2D".into(),
        _ => v
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || SAFE.contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect(),
    }
}

fn decode(v: &str) -> Option<String> {
    if v == "%" {
        return Some(String::new());
    }
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const PF: &str = "0000:01:00.0";
    const VF: &str = "0000:01:00.1";

    #[test]
    fn lines_round_trip_including_odd_values() {
        let entries = [
            Entry::Driver {
                bdf: PF.into(),
                prev: Some("nvme".into()),
            },
            Entry::Driver {
                bdf: VF.into(),
                prev: None,
            },
            Entry::DriverOverride {
                bdf: PF.into(),
                prev: Some("-".into()),
            },
            Entry::DriverOverride {
                bdf: PF.into(),
                prev: Some("a b%c".into()),
            },
            Entry::Numvfs {
                bdf: PF.into(),
                prev: 3,
            },
            Entry::Autoprobe {
                bdf: PF.into(),
                prev: false,
            },
            Entry::ModuleParam {
                module: "vfio_pci".into(),
                param: "enable_sriov".into(),
                prev: "".into(),
            },
        ];
        for e in &entries {
            let line = e.to_line();
            assert_eq!(line.split(' ').count(), 3, "{line}");
            assert_eq!(Entry::parse_line(&line).as_ref(), Some(e), "{line}");
        }
        assert_eq!(entries[0].to_line(), "driver 0000:01:00.0 nvme");
        assert_eq!(entries[1].to_line(), "driver 0000:01:00.1 -");
    }

    #[test]
    fn a_torn_last_line_and_junk_are_not_replayed() {
        let text = format!("{HEADER}\nsriov_numvfs {PF} 0\nnonsense here x\ndriver {PF} nv");
        let (entries, bad) = parse(&text);
        assert_eq!(
            entries,
            vec![Entry::Numvfs {
                bdf: PF.into(),
                prev: 0
            }]
        );
        assert_eq!(bad, vec!["nonsense here x".to_owned()]);
    }

    /// A fake sysfs: PF bound to vfio-pci with 2 VFs, both drivers present.
    fn fake() -> (tempfile::TempDir, Sysfs) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["nvme", "vfio-pci"] {
            fs::create_dir_all(r.join("sys/bus/pci/drivers").join(d)).unwrap();
            for f in ["bind", "unbind"] {
                fs::write(r.join("sys/bus/pci/drivers").join(d).join(f), "").unwrap();
            }
        }
        let dev = r.join("sys/bus/pci/devices").join(PF);
        fs::create_dir_all(&dev).unwrap();
        symlink("../../../bus/pci/drivers/vfio-pci", dev.join("driver")).unwrap();
        fs::write(dev.join("driver_override"), "vfio-pci\n").unwrap();
        fs::write(dev.join("sriov_numvfs"), "2\n").unwrap();
        fs::write(dev.join("sriov_drivers_autoprobe"), "0\n").unwrap();
        fs::create_dir_all(r.join("sys/module/vfio_pci/parameters")).unwrap();
        fs::write(r.join("sys/module/vfio_pci/parameters/enable_sriov"), "Y\n").unwrap();
        let sys = Sysfs::new(r);
        (t, sys)
    }

    fn read(sys: &Sysfs, rel: &str) -> String {
        fs::read_to_string(sys.sys(rel)).unwrap()
    }

    #[test]
    fn plans_restore_what_changed_and_skip_what_did_not() {
        let (_t, sys) = fake();
        let back_to_nvme = Entry::Driver {
            bdf: PF.into(),
            prev: Some("nvme".into()),
        };
        assert_eq!(
            restore_plan(&sys, &back_to_nvme),
            Restore::Writes(vec![
                SysWrite::Unbind {
                    bdf: PF.into(),
                    driver: "vfio-pci".into()
                },
                SysWrite::Bind {
                    bdf: PF.into(),
                    driver: "nvme".into()
                },
            ])
        );
        let unbound = Entry::Driver {
            bdf: PF.into(),
            prev: None,
        };
        assert_eq!(
            restore_plan(&sys, &unbound),
            Restore::Writes(vec![SysWrite::Unbind {
                bdf: PF.into(),
                driver: "vfio-pci".into()
            }])
        );
        let same = Entry::Driver {
            bdf: PF.into(),
            prev: Some("vfio-pci".into()),
        };
        assert_eq!(restore_plan(&sys, &same), Restore::AsWas);
        let vf_gone = Entry::DriverOverride {
            bdf: VF.into(),
            prev: None,
        };
        assert_eq!(restore_plan(&sys, &vf_gone), Restore::Gone);
        // 2 → 1 VFs goes through 0.
        let one = Entry::Numvfs {
            bdf: PF.into(),
            prev: 1,
        };
        let set = |n| SysWrite::SriovNumvfs { bdf: PF.into(), n };
        assert_eq!(
            restore_plan(&sys, &one),
            Restore::Writes(vec![set(0), set(1)])
        );
    }

    #[test]
    fn replay_writes_the_oldest_state_last() {
        let (_t, sys) = fake();
        // What a run recorded, oldest first: the PF was on nvme with no
        // override, no VFs and autoprobe on; numvfs went 0 → 1 → 2.
        let entries = vec![
            Entry::Autoprobe {
                bdf: PF.into(),
                prev: true,
            },
            Entry::Driver {
                bdf: PF.into(),
                prev: Some("nvme".into()),
            },
            Entry::DriverOverride {
                bdf: PF.into(),
                prev: None,
            },
            Entry::Numvfs {
                bdf: PF.into(),
                prev: 0,
            },
            Entry::Numvfs {
                bdf: PF.into(),
                prev: 1,
            },
            Entry::DriverOverride {
                bdf: VF.into(),
                prev: None,
            },
            Entry::ModuleParam {
                module: "vfio_pci".into(),
                param: "enable_sriov".into(),
                prev: "N".into(),
            },
        ];
        let rep = replay(&sys, &entries);
        assert!(rep.ok(), "{:?}", rep.failed);
        // The VF entry was skipped (gone); the rest were written, newest first,
        // so the final numvfs write is the oldest value.
        assert_eq!(rep.restored.len(), 6, "{:?}", rep.restored);
        assert_eq!(rep.restored[0], "module_param vfio_pci/enable_sriov N");
        assert_eq!(read(&sys, "module/vfio_pci/parameters/enable_sriov"), "N");
        let dev = format!("bus/pci/devices/{PF}");
        assert_eq!(read(&sys, &format!("{dev}/sriov_numvfs")), "0");
        assert_eq!(read(&sys, &format!("{dev}/driver_override")), "\n");
        assert_eq!(read(&sys, &format!("{dev}/sriov_drivers_autoprobe")), "1");
        assert_eq!(read(&sys, "bus/pci/drivers/vfio-pci/unbind"), PF);
        assert_eq!(read(&sys, "bus/pci/drivers/nvme/bind"), PF);
    }

    #[test]
    fn the_journal_file_is_durable_appendable_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = Journal::new(&path);
        assert!(j.entries().unwrap().is_empty());
        let e = Entry::Numvfs {
            bdf: PF.into(),
            prev: 0,
        };
        j.record(&e).unwrap();
        // A second writer (the next run) sees it and appends.
        let mut j2 = Journal::new(&path);
        assert_eq!(j2.entries().unwrap(), vec![e.clone()]);
        j2.record(&e).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("{HEADER}\nsriov_numvfs {PF} 0\nsriov_numvfs {PF} 0\n")
        );
        j2.clear().unwrap();
        assert!(!path.exists());
        fs::write(&path, "something else\n").unwrap();
        assert!(j.entries().is_err(), "a foreign file is not replayed");
    }
}
