//! The decision logic of ukci's control-register checks, shared by the guest
//! (which runs it on the real processor) and the host (which tests it
//! against CPU models).
//!
//! * [`Cpu`] is the whole edge: CPUID, CR reads, and writes, MSR accesses
//!   and hypercalls that return the [`Fault`] they raised.
//! * [`detect`] decides which CR-pinning ABI, if any, the hypervisor speaks,
//!   by behaviour rather than by CPUID.
//! * The `check_*` functions are the guest checks named in
//!   `ukci_protocol::catalogue`. Each reports through a [`Reporter`]: one
//!   sub-result per thing observed, with stable names
//!   (`cr-pin.v3.high: cr0: clear-wp: fault`) and the values in the detail
//!   (`vector=13 error=0x0 cr0.before=...`).
//!   [`run`] dispatches on a check name.
//! * [`Mmu`] extends [`Cpu`] with a test page, supervisor accesses and CPL-3
//!   instructions for the checks of the protections themselves
//!   (`cr.arch.cr0-wp`, `smep`, `smap`, `umip`); [`run_mmu`] dispatches
//!   every check, these included.
//!
//! A check that pins needs a fresh VM: pins cannot be undone by the guest.
#![no_std]

mod arch;
mod cpu;
mod detect;
mod heki;
mod pin;
pub mod prot;
pub mod regs;
mod steps;

pub use arch::{
    check_cr0_combinations, check_cr0_reserved, check_cr4_features, check_cr4_reserved,
};
pub use cpu::{Cpu, CpuidBit, Fault, Probe};
pub use detect::{Abi, Absent, Detection, check_detect, detect};
pub use heki::check_heki;
pub use pin::{check_v1, check_v3_high, check_v3_low};
pub use prot::{Mmu, PfRule, Prot, UmipInsn, check_cr0_wp, check_smap, check_smep, check_umip};

use core::fmt::Write;
use ukci_protocol::Reporter;

pub const DETECT: &str = "cr-pin.detect";
pub const V3_HIGH: &str = "cr-pin.v3.high";
pub const V3_LOW: &str = "cr-pin.v3.low";
pub const V1: &str = "cr-pin.v1";
pub const HEKI: &str = "cr-pin.heki";
pub const CR0_RESERVED: &str = "cr.arch.cr0-reserved";
pub const CR4_RESERVED: &str = "cr.arch.cr4-reserved";
pub const CR4_FEATURES: &str = "cr.arch.cr4-features";
pub const CR0_COMBINATIONS: &str = "cr.arch.cr0-combinations";
pub const CR0_WP: &str = "cr.arch.cr0-wp";
pub const SMEP: &str = "cr.arch.smep";
pub const SMAP: &str = "cr.arch.smap";
pub const UMIP: &str = "cr.arch.umip";

/// The checks this crate implements, by catalogue name.
pub const CHECKS: [&str; 9] = [
    DETECT,
    V3_HIGH,
    V3_LOW,
    V1,
    HEKI,
    CR0_RESERVED,
    CR4_RESERVED,
    CR4_FEATURES,
    CR0_COMBINATIONS,
];

/// The checks that need [`Mmu`], by catalogue name.
pub const MMU_CHECKS: [&str; 4] = [CR0_WP, SMEP, SMAP, UMIP];

/// Runs the check called `name`; `false` if this crate has no such check.
pub fn run<C: Cpu + ?Sized, W: Write>(name: &str, cpu: &mut C, r: &mut Reporter<W>) -> bool {
    match name {
        DETECT => check_detect(cpu, r),
        V3_HIGH => check_v3_high(cpu, r),
        V3_LOW => check_v3_low(cpu, r),
        V1 => check_v1(cpu, r),
        HEKI => check_heki(cpu, r),
        CR0_RESERVED => check_cr0_reserved(cpu, r),
        CR4_RESERVED => check_cr4_reserved(cpu, r),
        CR4_FEATURES => check_cr4_features(cpu, r),
        CR0_COMBINATIONS => check_cr0_combinations(cpu, r),
        _ => return false,
    }
    true
}

/// Runs the check called `name`, from [`CHECKS`] or [`MMU_CHECKS`]; `false`
/// if this crate has no such check.
pub fn run_mmu<C: Mmu + ?Sized, W: Write>(name: &str, cpu: &mut C, r: &mut Reporter<W>) -> bool {
    match name {
        CR0_WP => check_cr0_wp(cpu, r),
        SMEP => check_smep(cpu, r),
        SMAP => check_smap(cpu, r),
        UMIP => check_umip(cpu, r),
        _ => return run(name, cpu, r),
    }
    true
}
