//! The kernel's own words for a failure: the `/dev/kmsg` records that appear
//! while an operation runs, filtered by the device they name.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;

/// A position in the kernel log; [`Watch::lines_for`] returns what was logged
/// after it. Without `/dev/kmsg` (no permission, no device) it sees nothing.
pub struct Watch {
    file: Option<File>,
}

impl Watch {
    /// Starts watching at the end of the log.
    pub fn start() -> Watch {
        let w = Watch::from_oldest();
        if let Some(f) = &w.file {
            // SAFETY: lseek on a file descriptor we own; no memory is involved.
            unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_END) };
        }
        w
    }

    /// Watches from the oldest record the kernel still holds (its boot, on
    /// a fresh virtual host).
    pub fn from_oldest() -> Watch {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok();
        Watch { file }
    }

    /// Messages logged since the watch started (or since the last call).
    pub fn lines(&mut self) -> Vec<String> {
        let Some(f) = &mut self.file else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            // One read returns one record; EAGAIN at the end; EPIPE when the
            // ring overwrote records we had not read yet (keep going).
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(m) = record_message(&String::from_utf8_lossy(&buf[..n])) {
                        out.push(m.to_owned());
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }

    /// The messages since the watch started that name `bdf`.
    pub fn lines_for(&mut self, bdf: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| mentions(l, bdf))
            .collect()
    }
}

/// The message of one `/dev/kmsg` record (`pri,seq,ts,flags;message\n KEY=v`).
pub fn record_message(record: &str) -> Option<&str> {
    let (_, rest) = record.split_once(';')?;
    Some(rest.split('\n').next().unwrap_or(rest).trim_end())
}

/// Whether a message is about `bdf` (`vfio-pci 0000:01:00.1: ...`, or the
/// BDF anywhere as a whole word).
pub fn mentions(message: &str, bdf: &str) -> bool {
    message
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .any(|w| w.trim_end_matches(':') == bdf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_yields_its_message_without_the_dictionary() {
        let r = "6,1234,5678901,-;vfio-pci 0000:01:00.1: VF token required to access device\n SUBSYSTEM=pci\n DEVICE=+pci:0000:01:00.1\n";
        assert_eq!(
            record_message(r),
            Some("vfio-pci 0000:01:00.1: VF token required to access device")
        );
        assert_eq!(record_message("garbage"), None);
    }

    #[test]
    fn messages_match_their_device_only() {
        let m = "vfio-pci 0000:01:00.1: Incorrect VF token provided for device";
        assert!(mentions(m, "0000:01:00.1"));
        assert!(!mentions(m, "0000:01:00.0"));
        assert!(!mentions(m, "0000:01:00.10"));
        assert!(mentions(
            "pci 0000:01:00.1: probe with driver vfio-pci failed with error -16",
            "0000:01:00.1"
        ));
    }
}
