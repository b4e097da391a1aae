//! The ukci runner: manifests → plan → QEMU supervision → outcomes →
//! reports. See ARCHITECTURE.md for the map.

pub mod diag;
pub mod durations;
pub mod envmatch;
pub mod events;
pub mod exec;
pub mod exitcode;
pub mod host;
pub mod hostcheck;
pub mod hostconfig;
pub mod html;
pub mod junit;
pub mod kut;
pub mod lane;
pub mod manifest;
pub mod matrix;
pub mod outcome;
pub mod plan;
pub mod qemu;
pub mod reproduce;
pub mod rundir;
pub mod session;
pub mod terminal;
pub mod units;
pub mod vf;
pub use ukci_supervise as supervise;
