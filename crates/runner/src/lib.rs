//! The ukci runner: manifests → plan → QEMU supervision → outcomes →
//! reports. See ARCHITECTURE.md for the map.

pub mod diag;
pub mod envmatch;
pub mod exec;
pub mod exitcode;
pub mod host;
pub mod hostcheck;
pub mod junit;
pub mod kut;
pub mod lane;
pub mod manifest;
pub mod matrix;
pub mod outcome;
pub mod plan;
pub mod qemu;
pub mod rundir;
pub mod session;
pub mod terminal;
pub mod units;
pub mod vf;
pub use ukci_supervise as supervise;
