//! Host side of ukci's VF-token checks (Linux only).
//!
//! - [`sysfs`]: PCI functions through sysfs (reads, and the one raw writer);
//!   [`host::Host::apply`] is the only way changes are made: it refuses
//!   functions the caller did not name or the host is using ([`guard`]) and
//!   writes the [`journal`] before each change.
//! - [`vfio`]: the VFIO uAPI (container, groups, devices, regions, DMA,
//!   `VFIO_DEVICE_FEATURE`, cdev bind) with errno names and kernel messages
//!   ([`kmsg`]) in its errors.
//! - [`nvme_pf`]: a userspace NVMe PF driver over VFIO that brings SR-IOV
//!   secondary controllers online, driving the controller with `ukci-nvme`
//!   over [`nvme_hal`] (BAR0 as a VFIO region, DMA pages, the clock).
//! - [`checks`]: the VF-token rule checks, reporting through
//!   `ukci_protocol::Reporter` like guest checks.
//! - [`token`]: the VF token, which never prints.

pub mod checks;
pub mod errno;
pub mod error;
pub mod guard;
pub mod host;
pub mod journal;
pub mod kmsg;
pub mod nvme_hal;
pub mod nvme_pf;
pub mod sysfs;
pub mod token;
pub mod vfio;

pub use errno::Errno;
pub use error::{Error, OsError, Result};
pub use host::Host;
pub use sysfs::{SysWrite, Sysfs};
pub use token::Token;
