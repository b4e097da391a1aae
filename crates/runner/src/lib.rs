//! The ukci runner: manifests → plan → QEMU supervision → outcomes →
//! reports. See ARCHITECTURE.md for the map.

pub mod diag;
pub mod envmatch;
pub mod exec;
pub mod exitcode;
pub mod host;
pub mod junit;
pub mod manifest;
pub mod outcome;
pub mod plan;
pub mod qemu;
pub mod session;
pub mod supervise;
pub mod terminal;
pub mod units;
