//! A polling NVMe driver for the ukci guest, and the guest's NVMe checks.
//!
//! The same driver drives a physical function or an SR-IOV virtual function
//! (a secondary controller): nothing in it depends on which one it has.
//!
//! Layers, from the wire up:
//! - [`regs`], [`cmd`], [`status`], [`prp`], [`identify`]: pure encodings of the
//!   NVMe base specification. They allocate nothing and touch no hardware, so a
//!   host-side (std) userspace PF driver uses them as they are.
//! - [`hal`]: the three things the hardware edge must provide (register access,
//!   DMA memory, a clock). The guest implements them over its identity map; the
//!   [`model`] implements them in memory for tests.
//! - [`queue`] and [`ctrl`]: rings with phase tags, and the controller
//!   (enable/disable within CAP.TO, admin and I/O queues, bounded completion
//!   polling). Every wait ends: on time or with [`Error::Timeout`].
//! - [`checks`]: `nvme.identify`, `nvme.rw`, `nvme.queues` and `nvme.errors`,
//!   reporting through `ukci_protocol::Reporter`.
#![no_std]

#[cfg(any(test, feature = "model"))]
extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod checks;
pub mod cmd;
pub mod ctrl;
mod error;
pub mod hal;
pub mod identify;
#[cfg(any(test, feature = "model"))]
pub mod model;
pub mod prp;
pub mod queue;
pub mod regs;
pub mod status;

#[cfg(test)]
mod tests;

pub use cmd::{Command, Completion};
pub use ctrl::{Config, Controller, DmaRange};
pub use error::{Error, Wait};
pub use hal::{Clock, Dma, DmaBuf, Mmio};
pub use queue::IoQueue;
pub use status::{Code, Status};

/// The memory page size the driver configures (CC.MPS = 0). Every controller
/// supports it (CAP.MPSMIN is 4 KiB or larger, and larger is refused).
pub const PAGE_SIZE: usize = 4096;
