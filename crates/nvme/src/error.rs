use crate::prp::PrpError;
use crate::status::Status;
use core::fmt;

/// What a bounded wait was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// CSTS.RDY to reach this value after a CC.EN change.
    Ready(bool),
    Completion {
        qid: u16,
        cid: u16,
        opcode: u8,
    },
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wait::Ready(want) => write!(f, "CSTS.RDY={}", *want as u8),
            Wait::Completion { qid, cid, opcode } => {
                write!(
                    f,
                    "completion of opcode {opcode:#04x} cid {cid} on queue {qid}"
                )
            }
        }
    }
}

/// Why a driver operation did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A bounded wait ran out. CSTS is what the controller showed then.
    Timeout {
        what: Wait,
        waited_ns: u64,
        csts: u32,
    },
    /// The clock stopped advancing while waiting: the wait was cut short
    /// rather than spinning forever.
    ClockStalled {
        what: Wait,
    },
    /// CAP and the other registers read zero while CSTS shows CFS: the way
    /// an offline SR-IOV secondary controller looks.
    Offline {
        csts: u32,
    },
    /// BAR0 reads all-ones: nothing decodes there.
    NoDevice,
    /// Controller Fatal Status while enabling or waiting.
    Fatal {
        csts: u32,
    },
    /// The controller cannot be driven the way this driver does it.
    Unsupported(&'static str),
    /// A command completed with an error status.
    Command {
        opcode: u8,
        qid: u16,
        status: Status,
    },
    /// The DMA provider ran out of memory.
    NoMemory {
        pages: usize,
    },
    /// A transfer larger than the controller (MDTS) or the driver allows.
    TooLarge {
        bytes: usize,
        max: usize,
    },
    Prp(PrpError),
    /// A buffer range outside the DMA buffer it names.
    OutOfBounds,
    /// A completion for a command that is not the one outstanding.
    StrayCompletion {
        qid: u16,
        expected_cid: u16,
        cid: u16,
    },
    QueueFull {
        qid: u16,
    },
    /// An earlier timeout left the queues in an unknown state; the
    /// controller must be reset first.
    NeedsReset,
}

impl From<PrpError> for Error {
    fn from(e: PrpError) -> Error {
        Error::Prp(e)
    }
}

impl Error {
    /// The status of a command that completed with an error.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Command { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout {
                what,
                waited_ns,
                csts,
            } => write!(
                f,
                "timed out after {} ms waiting for {what} (CSTS={csts:#x})",
                waited_ns / 1_000_000
            ),
            Error::ClockStalled { what } => {
                write!(f, "clock stopped advancing while waiting for {what}")
            }
            Error::Offline { csts } => write!(
                f,
                "controller registers read zero with CSTS={csts:#x}: an offline secondary \
                 controller (bring it online with Virtualization Management from the PF)"
            ),
            Error::NoDevice => f.write_str("BAR0 reads all-ones: no controller decodes there"),
            Error::Fatal { csts } => write!(f, "controller fatal status (CSTS={csts:#x})"),
            Error::Unsupported(why) => write!(f, "unsupported controller: {why}"),
            Error::Command {
                opcode,
                qid,
                status,
            } => write!(f, "opcode {opcode:#04x} on queue {qid} failed: {status}"),
            Error::NoMemory { pages } => write!(f, "out of DMA memory ({pages} pages wanted)"),
            Error::TooLarge { bytes, max } => {
                write!(f, "transfer of {bytes} bytes exceeds the maximum of {max}")
            }
            Error::Prp(e) => write!(f, "PRP: {e}"),
            Error::OutOfBounds => f.write_str("range outside its DMA buffer"),
            Error::StrayCompletion {
                qid,
                expected_cid,
                cid,
            } => write!(
                f,
                "queue {qid}: completion for cid {cid} while waiting for cid {expected_cid}"
            ),
            Error::QueueFull { qid } => write!(f, "submission queue {qid} is full"),
            Error::NeedsReset => {
                f.write_str("an earlier timeout left the queues unusable; reset the controller")
            }
        }
    }
}
