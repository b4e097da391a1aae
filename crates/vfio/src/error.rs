//! Errors: what failed, on which device, the errno by name and the kernel's
//! own message when it logged one.

use std::fmt;
use std::time::Duration;

use crate::errno::Errno;
use crate::nvme_wire::NvmeStatus;

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
    #[error("{what}: NVMe status {status}")]
    Nvme { what: String, status: NvmeStatus },
    #[error("{what}: no answer within {waited:?} ({state})")]
    Timeout {
        what: String,
        waited: Duration,
        state: String,
    },
    #[error("restore journal {path}: {what}")]
    Journal { path: String, what: String },
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
