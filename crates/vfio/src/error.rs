//! Errors: what failed, on which device, the errno by name and the kernel's
//! own message when it logged one.

use std::fmt;
use std::time::Duration;

use ukci_nvme::Status as NvmeStatus;

use crate::errno::Errno;

/// A failed system call (ioctl, sysfs write, open) on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsError {
    /// The operation (`VFIO_GROUP_GET_DEVICE_FD`, `write sriov_numvfs`).
    pub op: String,
    /// What it was applied to (BDF, path, device name with the token redacted).
    pub target: String,
    pub errno: Errno,
    /// The kernel log lines about this device during the call, oldest first
    /// (the cause comes first; "probe ... failed" lines only echo the errno).
    pub kmsg: Vec<String>,
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.target, self.errno)?;
        if !self.kmsg.is_empty() {
            write!(f, " (kernel: \"{}\")", self.kmsg.join("\" | \""))?;
        }
        Ok(())
    }
}

impl std::error::Error for OsError {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Os(#[from] OsError),
    #[error("{bdf}: not touched: {reason} (free it first, or name another function)")]
    Refused { bdf: String, reason: String },
    #[error("{bdf}: not one of the PCI functions this run may change ({allowed})")]
    NotAllowed { bdf: String, allowed: String },
    #[error("{what}: NVMe status {}", nvme_status(status))]
    Nvme { what: String, status: NvmeStatus },
    #[error("{what}: no answer within {waited:?} ({state})")]
    Timeout {
        what: String,
        waited: Duration,
        state: String,
    },
    #[error("restore journal {path}: {what}")]
    Journal { path: String, what: String },
    #[error(
        "restore journal {path} is in use by {}, which may be changing devices now; \
         let it finish (it puts back what it changed), then try again",
        holder(*pid)
    )]
    Busy { path: String, pid: Option<u32> },
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The errno of a failed system call, if that is what this is.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Os(e) => Some(e.errno),
            _ => None,
        }
    }

    /// The kernel's messages about the device, if this is a failed call.
    pub fn kmsg(&self) -> &[String] {
        match self {
            Error::Os(e) => &e.kmsg,
            _ => &[],
        }
    }
}

/// The process holding a journal, as its lock file names it.
fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("ukci process {p}"),
        None => "another process (its pid is not written yet)".into(),
    }
}

/// A completion status as the PF driver's errors print it: the code, its
/// name and whether the controller said not to retry
/// (`0x120 Invalid Secondary Controller State (DNR)`).
fn nvme_status(s: &NvmeStatus) -> String {
    let dnr = if s.dnr() { " (DNR)" } else { "" };
    format!("{:#05x} {}{dnr}", s.code().value(), s.name())
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use ukci_nvme::Completion;

    #[test]
    fn nvme_errors_name_the_status_as_qemu_sends_it() {
        // QEMU: NVME_INVALID_SEC_CTRL_STATE | NVME_DNR = 0x4120, past the phase tag.
        let mut b = [0u8; 16];
        b[12..16].copy_from_slice(&((0x4120u32 << 17) | (1 << 16) | 7).to_le_bytes());
        let c = Completion::decode(&b);
        assert_eq!((c.cid, c.phase, c.status.is_success()), (7, true, false));
        let e = Error::Nvme {
            what: "0000:01:00.0: Virtualization Management SecondaryOnline Vq cntlid=1 nr=0".into(),
            status: c.status,
        };
        assert_eq!(
            e.to_string(),
            "0000:01:00.0: Virtualization Management SecondaryOnline Vq cntlid=1 nr=0: \
             NVMe status 0x120 Invalid Secondary Controller State (DNR)"
        );
        assert_eq!(
            nvme_status(&NvmeStatus(0x0002)),
            "0x002 Invalid Field in Command"
        );
    }
}
