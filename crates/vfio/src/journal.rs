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
//! change was not made yet, since changes follow the fsync. A 0-byte file or
//! a header cut short is a journal with no entry (a crash before the first).
//!
//! Nothing is dropped: a replay that leaves anything behind (a line that does
//! not parse, an entry the guard refuses, a failed write) keeps the whole
//! file and reports each such line by number. Only one process at a time
//! uses a journal: [`Journal::open`] takes its lock for as long as the
//! process may change devices, so one run never replays another's changes
//! while it is making them.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
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

/// An entry a replay could not put back. The journal keeps it, with every
/// other line, until a replay puts everything back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    /// The line in the journal file (the header is line 1).
    pub line: usize,
    pub text: String,
    pub why: Why,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The line does not parse: what it recorded is unknown here.
    Unreadable,
    /// The guard refused the function: not one this run may change, or in
    /// use by the host.
    Refused(String),
    /// A write failed.
    Failed(String),
}

impl fmt::Display for Left {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: `{}`: ", self.line, self.text)?;
        match &self.why {
            Why::Unreadable => write!(f, "unreadable"),
            Why::Refused(r) => write!(f, "refused: {r}"),
            Why::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// What a replay did.
#[derive(Debug, Default, Clone)]
pub struct ReplayReport {
    /// The entries put back, newest first.
    pub restored: Vec<String>,
    /// What was not put back, in journal order.
    pub left: Vec<Left>,
    /// Worth saying, not a problem (a journal that recorded no change).
    pub notes: Vec<String>,
}

impl ReplayReport {
    /// Everything was put back: the journal may go.
    pub fn ok(&self) -> bool {
        self.left.is_empty()
    }
}

/// Puts every journaled state back, newest entry first, writing only to
/// functions `may_touch` allows (the same guard as every change). Keeps going
/// past a refused or failed entry so one stuck device does not leave the
/// others changed; unreadable lines are reported as left.
pub fn replay(
    sys: &Sysfs,
    contents: &Contents,
    may_touch: impl Fn(&str) -> Result<()>,
) -> ReplayReport {
    let unreadable = contents.unreadable.iter().map(|(line, text)| Left {
        line: *line,
        text: text.clone(),
        why: Why::Unreadable,
    });
    let mut report = ReplayReport {
        left: unreadable.collect(),
        ..ReplayReport::default()
    };
    for (line, e) in contents.entries.iter().rev() {
        let Restore::Writes(ws) = restore_plan(sys, e) else {
            continue;
        };
        let left = |why| Left {
            line: *line,
            text: e.to_line(),
            why,
        };
        if let Err(err) = ws.iter().filter_map(SysWrite::bdf).try_for_each(&may_touch) {
            report.left.push(left(Why::Refused(err.to_string())));
            continue;
        }
        match ws.iter().try_for_each(|w| sys.write(w)) {
            Ok(()) => report.restored.push(e.to_line()),
            Err(err) => report.left.push(left(Why::Failed(err.to_string()))),
        }
    }
    report.left.sort_by_key(|l| l.line);
    report
}

/// A journal's whole lines after the header, by line number.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Contents {
    pub entries: Vec<(usize, Entry)>,
    /// Lines that do not parse, as written.
    pub unreadable: Vec<(usize, String)>,
}

impl Contents {
    /// Nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.unreadable.is_empty()
    }
}

/// Parses a journal file's text: `None` when it is not a journal. A 0-byte
/// file or a header cut short (a crash before the first entry) is a journal
/// with nothing in it; a last line without its newline is left out.
pub fn parse(text: &str) -> Option<Contents> {
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let mut lines = whole.lines().enumerate();
    match lines.next() {
        Some((_, HEADER)) => {}
        None if format!("{HEADER}\n").starts_with(text) => return Some(Contents::default()),
        _ => return None,
    }
    let mut contents = Contents::default();
    for (i, line) in lines.filter(|(_, l)| !l.is_empty()) {
        match Entry::parse_line(line) {
            Some(e) => contents.entries.push((i + 1, e)),
            None => contents.unreadable.push((i + 1, line.to_owned())),
        }
    }
    Some(contents)
}

/// Where the lock of the journal at `journal` lives: next to it, never
/// removed (the journal itself comes and goes).
pub fn lock_path(journal: &Path) -> PathBuf {
    let mut name = journal.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    journal.with_file_name(name)
}

/// What makes a journal one process's: `flock` on [`lock_path`], which
/// holds the holder's pid. The kernel drops it when the holder exits, however
/// it exits; the descriptor is close-on-exec, so no child keeps it.
#[derive(Debug)]
struct Lock {
    _held: File,
}

impl Lock {
    fn take(journal: &Path) -> Result<Lock> {
        let path = lock_path(journal);
        let err = |what: io::Error| Error::Journal {
            path: path.display().to_string(),
            what: what.to_string(),
        };
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(err)?;
        // SAFETY: flock on a descriptor `f` owns; no memory is shared.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err(e));
            }
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            return Err(Error::Busy {
                path: journal.display().to_string(),
                pid: pid.trim().parse().ok(),
            });
        }
        f.set_len(0)
            .and_then(|()| writeln!(f, "{}", std::process::id()))
            .map_err(err)?;
        Ok(Lock { _held: f })
    }
}

/// The journal file, this process's alone while the value lives.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Option<File>,
    _lock: Lock,
}

impl Journal {
    /// Takes the journal at `path` (its lock, see [`lock_path`]) until
    /// dropped; [`Error::Busy`] names the process that holds it.
    pub fn open(path: &Path) -> Result<Journal> {
        Ok(Journal {
            path: path.to_owned(),
            file: None,
            _lock: Lock::take(path)?,
        })
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

    fn not_a_journal(&self) -> Error {
        self.err(format!(
            "does not start with `{HEADER}`: not a restore journal (move it away)"
        ))
    }

    /// What is on disk; `None` when there is no journal.
    pub fn read(&self) -> Result<Option<Contents>> {
        match fs::read(&self.path) {
            Ok(b) => parse(&String::from_utf8_lossy(&b))
                .map(Some)
                .ok_or_else(|| self.not_a_journal()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Opens the file to append to: a cut last line (never acted on) is cut
    /// off so the next entry starts a line of its own, and a journal with no
    /// whole line gets its header.
    fn open_for_append(&self) -> Result<File> {
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        let mut text = Vec::new();
        f.read_to_end(&mut text).map_err(|e| self.err(e))?;
        if parse(&String::from_utf8_lossy(&text)).is_none() {
            return Err(self.not_a_journal());
        }
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole == text.len() && whole > 0 {
            return Ok(f);
        }
        let res = f
            .set_len(whole as u64)
            .and_then(|()| match whole {
                0 => writeln!(f, "{HEADER}"),
                _ => Ok(()),
            })
            .and_then(|()| f.sync_all())
            .and_then(|()| sync_dir(&self.path));
        res.map_err(|e| self.err(e))?;
        Ok(f)
    }

    /// Appends an entry and makes it durable before returning.
    pub fn record(&mut self, e: &Entry) -> Result<()> {
        if self.file.is_none() {
            self.file = Some(self.open_for_append()?);
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
    fn a_torn_last_line_is_left_out_and_junk_is_kept_with_its_line_number() {
        let text = format!("{HEADER}\nsriov_numvfs {PF} 0\n\nnonsense here x\ndriver {PF} nv");
        let c = parse(&text).unwrap();
        assert_eq!(
            c.entries,
            vec![(
                2,
                Entry::Numvfs {
                    bdf: PF.into(),
                    prev: 0
                }
            )]
        );
        assert_eq!(c.unreadable, vec![(4, "nonsense here x".to_owned())]);
    }

    #[test]
    fn an_empty_file_or_a_cut_header_is_an_empty_journal_and_a_foreign_file_none() {
        for text in ["", "ukci-vf", HEADER, &format!("{HEADER}\n")] {
            assert_eq!(parse(text), Some(Contents::default()), "{text:?}");
        }
        for text in ["hello\n", "ukci-vfio-journal 12\n", "x"] {
            assert_eq!(parse(text), None, "{text:?}");
        }
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
        let entries: Vec<Entry> = vec![
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
        let contents = Contents {
            entries: entries.into_iter().enumerate().collect(),
            unreadable: vec![],
        };
        let rep = replay(&sys, &contents, |_| Ok(()));
        assert!(rep.ok(), "{:?}", rep.left);
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
    fn replay_asks_the_guard_and_keeps_what_it_refuses() {
        let (_t, sys) = fake();
        let contents = Contents {
            entries: vec![
                (
                    2,
                    Entry::Numvfs {
                        bdf: PF.into(),
                        prev: 0,
                    },
                ),
                (
                    3,
                    Entry::ModuleParam {
                        module: "vfio_pci".into(),
                        param: "enable_sriov".into(),
                        prev: "N".into(),
                    },
                ),
            ],
            unreadable: vec![(4, "junk".into())],
        };
        let asked = std::cell::RefCell::new(Vec::new());
        let rep = replay(&sys, &contents, |bdf| {
            asked.borrow_mut().push(bdf.to_owned());
            Err(Error::Refused {
                bdf: bdf.into(),
                reason: "it backs the mounted filesystem /dev/nvme0n1 on /data".into(),
            })
        });
        assert_eq!(asked.into_inner(), vec![PF.to_owned()]);
        let dev = format!("bus/pci/devices/{PF}");
        assert_eq!(
            read(&sys, &format!("{dev}/sriov_numvfs")),
            "2\n",
            "untouched"
        );
        // A module parameter belongs to no function: the guard is not asked.
        assert_eq!(rep.restored, vec!["module_param vfio_pci/enable_sriov N"]);
        let left: Vec<String> = rep.left.iter().map(ToString::to_string).collect();
        assert_eq!(
            left,
            vec![
                format!(
                    "line 2: `sriov_numvfs {PF} 0`: refused: {PF}: not touched: it backs the \
                     mounted filesystem /dev/nvme0n1 on /data (free it first, or name another \
                     function)"
                ),
                "line 4: `junk`: unreadable".to_owned(),
            ]
        );
        assert!(!rep.ok());
    }

    #[test]
    fn the_journal_file_is_durable_appendable_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.read().unwrap(), None);
        let e = Entry::Numvfs {
            bdf: PF.into(),
            prev: 0,
        };
        j.record(&e).unwrap();
        drop(j);
        // The next run sees it and appends.
        let mut j2 = Journal::open(&path).unwrap();
        assert_eq!(j2.read().unwrap().unwrap().entries, vec![(2, e.clone())]);
        j2.record(&e).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("{HEADER}\nsriov_numvfs {PF} 0\nsriov_numvfs {PF} 0\n")
        );
        j2.clear().unwrap();
        assert!(!path.exists());
        fs::write(&path, "something else\n").unwrap();
        assert!(j2.read().is_err(), "a foreign file is not replayed");
        assert!(j2.record(&e).is_err(), "nor appended to");
        assert_eq!(fs::read_to_string(&path).unwrap(), "something else\n");
    }

    #[test]
    fn appending_after_a_crash_cuts_the_torn_line_and_heads_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let e = Entry::Autoprobe {
            bdf: PF.into(),
            prev: true,
        };
        let line = e.to_line();
        for (on_disk, after) in [
            (
                format!("{HEADER}\nsriov_numvfs {PF} 0\ndriver {PF} nv"),
                format!("{HEADER}\nsriov_numvfs {PF} 0\n{line}\n"),
            ),
            (String::new(), format!("{HEADER}\n{line}\n")),
            ("ukci-vfio-jo".into(), format!("{HEADER}\n{line}\n")),
        ] {
            fs::write(&path, &on_disk).unwrap();
            let mut j = Journal::open(&path).unwrap();
            j.record(&e).unwrap();
            assert_eq!(fs::read_to_string(&path).unwrap(), after, "{on_disk:?}");
            let c = j.read().unwrap().unwrap();
            assert_eq!(c.entries.last(), Some(&(c.entries.len() + 1, e.clone())));
            assert!(c.unreadable.is_empty());
        }
    }

    #[test]
    fn one_process_at_a_time_and_the_busy_error_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("restore.journal");
        let held = Journal::open(&path).unwrap();
        assert_eq!(lock_path(&path), dir.path().join("restore.journal.lock"));
        // A second open (another run) is refused while the first holds it,
        // even before anything was recorded.
        let e = Journal::open(&path).unwrap_err();
        let me = std::process::id();
        assert!(
            matches!(&e, Error::Busy { pid: Some(p), .. } if *p == me),
            "{e:?}"
        );
        assert!(e.to_string().contains(&format!("ukci process {me}")), "{e}");
        // Another journal (crash recovery's per-point ones) is not held.
        drop(Journal::open(&dir.path().join("other.journal")).unwrap());
        drop(held);
        Journal::open(&path).unwrap();
    }
}
