//! The one definition of what a ukci guest says and how the runner reads it:
//! kvm-unit-tests' line protocol, its exit-status convention, and the
//! catalogue of checks the guest knows. Shared by the guest (no_std) and the
//! runner.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod catalogue;
pub mod exit;
pub mod line;
pub mod report;

pub use exit::Verdict;
pub use line::{Line, Status};
pub use report::{Reporter, Tally};
