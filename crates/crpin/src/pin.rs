//! The KVM CR-pinning checks: kvm-unit-tests' `cr_pin_high`, `cr_pin_low`
//! (v3 ABI, spec §1.6.2–1.6.3) and `cr_pin` (RFC v1/v2, §1.6.1), each step a
//! separate sub-result, plus the MSR rules of §1.4.1.
//!
//! A pin cannot be undone from inside the guest, so each entry point needs a
//! fresh VM, and the order of steps inside one matters: every MSR write a
//! broken hypervisor might wrongly accept is chosen so that accepting it
//! pins nothing the later steps or the guest need (a bit pinned to the value
//! it already has, or a bit the guest never uses).
//!
//! kvm-unit-tests' informational `report(1, ...)` and its self-check of a
//! locally computed value (high #12, #18) cannot fail, so they are not
//! results here.

use crate::cpu::{Cpu, CpuidBit};
use crate::detect::{Abi, detect};
use crate::regs::{cr0, cr4, feature, mask, msr};
use crate::steps::{Cr, Run};
use core::fmt::Write;
use ukci_protocol::Reporter;

const WP: u64 = cr0::WP;
const UMIP: u64 = cr4::UMIP;
const SMEP: u64 = cr4::SMEP;
const SMAP: u64 = cr4::SMAP;
/// kvm-unit-tests' "SOME" and "ALL".
const SOME: u64 = UMIP | SMEP;
const ALL: u64 = UMIP | SMEP | SMAP;

/// The first of `bits` the CPU lacks.
fn missing<C: Cpu + ?Sized>(cpu: &mut C, bits: &[CpuidBit]) -> Option<CpuidBit> {
    bits.iter().copied().find(|b| !b.present(cpu))
}

/// `cr-pin.v3.high`: pins CR0.WP and CR4.UMIP|SMEP high, CR4.SMAP low, and
/// checks that violating MOVs fault and change nothing. SKIP when the v3 ABI
/// is absent.
///
/// Sub-results, under `cr-pin.v3.high: `:
/// * `cr0: allowed-mask`, `cr0: set-wp: accepted|applied`,
///   `cr0: pin-high: accepted|read-back`, `cr0: rewrite: accepted`,
///   `cr0: clear-wp: fault|unchanged`
/// * `cr0-msr: allowed-write-same: accepted|read-back`,
///   `cr0-msr: allowed-write-other: fault|unchanged`,
///   `cr0-msr: pin-outside-allowed: fault|unchanged`,
///   `cr0-msr: pin-again: accepted|read-back`, `cr0-msr: unpin: fault|unchanged`,
///   `cr0-msr: overlap: fault|unchanged`
/// * `cr4: allowed-mask`; then SKIP `cr4: umip-smep` if CPUID lacks UMIP or
///   SMEP, else `cr4: set-umip-smep: accepted|applied`,
///   `cr4: pin-high: accepted|read-back`, `cr4: rewrite: accepted`,
///   `cr4: clear-umip-smep: fault|unchanged`, `cr4: clear-smep: fault|unchanged`
/// * `cr4-msr: allowed-write-same`, `allowed-write-other`,
///   `pin-outside-allowed`, `unpin` (as for CR0)
/// * SKIP `cr4-low` if CPUID lacks SMAP, else `cr4-low: clear-smap:
///   accepted|applied`, `cr4-low: pin-low: accepted|read-back`,
///   `cr4-low: overlap-high`, `overlap-low`, `pin-outside-allowed`, `unpin`
///   (fault|unchanged), `cr4-low: rewrite: accepted`, and the violations
///   `clear-umip-smep-set-smap`, `set-smap`, `clear-smep`,
///   `clear-smep-set-smap` (fault|unchanged)
pub fn check_v3_high<C: Cpu + ?Sized, W: Write>(cpu: &mut C, r: &mut Reporter<W>) {
    let abi = match detect(cpu).v3() {
        Ok(abi) => abi,
        Err(why) => return r.skip(crate::V3_HIGH, format_args!("{why}")),
    };
    r.push(crate::V3_HIGH);
    r.info(format_args!("abi={abi}"));
    let mut run = Run { cpu, r };

    run.r.push("cr0");
    run.msr_equals("allowed-mask", msr::CR0_PIN_ALLOWED, mask::CR0_ALLOWED);
    let v = run.read(Cr::Cr0);
    run.cr_accepts(Cr::Cr0, "set-wp", v | WP, WP, 0);
    run.msr_accepts("pin-high", msr::CR0_PINNED_HIGH, WP, Some(WP));
    let v = run.read(Cr::Cr0);
    run.cr_accepts(Cr::Cr0, "rewrite", v, 0, 0);
    run.cr_rejects(Cr::Cr0, "clear-wp", v & !WP);
    run.r.pop();

    // After the CR0 steps, so that a wrongly accepted write here can no
    // longer change what they saw. PE is always set in long mode, so a
    // wrongly accepted PE pin is harmless.
    run.r.push("cr0-msr");
    run.msr_accepts(
        "allowed-write-same",
        msr::CR0_PIN_ALLOWED,
        mask::CR0_ALLOWED,
        Some(mask::CR0_ALLOWED),
    );
    run.msr_rejects("allowed-write-other", msr::CR0_PIN_ALLOWED, 0);
    run.msr_rejects("pin-outside-allowed", msr::CR0_PINNED_HIGH, WP | cr0::PE);
    run.msr_accepts("pin-again", msr::CR0_PINNED_HIGH, WP, Some(WP));
    run.msr_rejects("unpin", msr::CR0_PINNED_HIGH, 0);
    run.msr_rejects("overlap", msr::CR0_PINNED_LOW, WP);
    run.r.pop();

    run.r.push("cr4");
    run.msr_equals("allowed-mask", msr::CR4_PIN_ALLOWED, abi.cr4_allowed());
    if let Some(b) = missing(run.cpu, &[feature::UMIP, feature::SMEP]) {
        run.r.skip("umip-smep", format_args!("{b} is clear"));
        run.r.pop();
        run.r.pop();
        return;
    }
    let v = run.read(Cr::Cr4);
    run.cr_accepts(Cr::Cr4, "set-umip-smep", v | SOME, SOME, 0);
    run.msr_accepts("pin-high", msr::CR4_PINNED_HIGH, SOME, Some(SOME));
    let v = run.read(Cr::Cr4);
    run.cr_accepts(Cr::Cr4, "rewrite", v, 0, 0);
    run.cr_rejects(Cr::Cr4, "clear-umip-smep", v & !SOME);
    run.cr_rejects(Cr::Cr4, "clear-smep", v & !SMEP);
    run.r.pop();

    // PAE is always set in long mode: pinning it high is harmless.
    run.r.push("cr4-msr");
    let allowed = abi.cr4_allowed();
    run.msr_accepts(
        "allowed-write-same",
        msr::CR4_PIN_ALLOWED,
        allowed,
        Some(allowed),
    );
    run.msr_rejects("allowed-write-other", msr::CR4_PIN_ALLOWED, SOME);
    run.msr_rejects("pin-outside-allowed", msr::CR4_PINNED_HIGH, SOME | cr4::PAE);
    run.msr_rejects("unpin", msr::CR4_PINNED_HIGH, UMIP);
    run.r.pop();

    if let Some(b) = missing(run.cpu, &[feature::SMAP]) {
        run.r.skip("cr4-low", format_args!("{b} is clear"));
        run.r.pop();
        return;
    }
    run.r.push("cr4-low");
    let v = run.read(Cr::Cr4);
    run.cr_accepts(Cr::Cr4, "clear-smap", (v | SOME) & !SMAP, SOME, SMAP);
    // Pinning SMAP low while it is already clear: a pin neither reads nor
    // changes the CR (§1.4.1).
    run.msr_accepts("pin-low", msr::CR4_PINNED_LOW, SMAP, Some(SMAP));
    run.msr_rejects("overlap-high", msr::CR4_PINNED_HIGH, SOME | SMAP);
    run.msr_rejects("overlap-low", msr::CR4_PINNED_LOW, SMAP | SMEP);
    // VME is never used in long mode: pinning it low is harmless.
    run.msr_rejects("pin-outside-allowed", msr::CR4_PINNED_LOW, SMAP | cr4::VME);
    run.msr_rejects("unpin", msr::CR4_PINNED_LOW, 0);
    let v = run.read(Cr::Cr4);
    run.cr_accepts(Cr::Cr4, "rewrite", v, 0, 0);
    run.cr_rejects(Cr::Cr4, "clear-umip-smep-set-smap", (v & !SOME) | SMAP);
    run.cr_rejects(Cr::Cr4, "set-smap", v | SMAP);
    run.cr_rejects(Cr::Cr4, "clear-smep", v & !SMEP);
    run.cr_rejects(Cr::Cr4, "clear-smep-set-smap", (v & !SMEP) | SMAP);
    run.r.pop();
    run.r.pop();
}

/// `cr-pin.v3.low`: pins CR0.WP low and checks that setting it faults and
/// changes nothing. SKIP when the v3 ABI is absent.
///
/// Sub-results, under `cr-pin.v3.low: `: `cr0: allowed-mask`,
/// `cr0: clear-wp: accepted|applied`, `cr0: pin-low: accepted|read-back`,
/// `cr0: rewrite: accepted`, `cr0: set-wp: fault|unchanged`, then
/// `cr0-msr: allowed-write-other`, `cr0-msr: overlap`,
/// `cr0-msr: pin-outside-allowed`, `cr0-msr: unpin` (fault|unchanged).
pub fn check_v3_low<C: Cpu + ?Sized, W: Write>(cpu: &mut C, r: &mut Reporter<W>) {
    let abi = match detect(cpu).v3() {
        Ok(abi) => abi,
        Err(why) => return r.skip(crate::V3_LOW, format_args!("{why}")),
    };
    r.push(crate::V3_LOW);
    r.info(format_args!("abi={abi}"));
    let mut run = Run { cpu, r };

    run.r.push("cr0");
    run.msr_equals("allowed-mask", msr::CR0_PIN_ALLOWED, mask::CR0_ALLOWED);
    let v = run.read(Cr::Cr0);
    run.cr_accepts(Cr::Cr0, "clear-wp", v & !WP, 0, WP);
    run.msr_accepts("pin-low", msr::CR0_PINNED_LOW, WP, Some(WP));
    let v = run.read(Cr::Cr0);
    run.cr_accepts(Cr::Cr0, "rewrite", v, 0, 0);
    run.cr_rejects(Cr::Cr0, "set-wp", v | WP);
    run.r.pop();

    // NW stays clear in a running guest: pinning it low is harmless.
    run.r.push("cr0-msr");
    run.msr_rejects("allowed-write-other", msr::CR0_PIN_ALLOWED, 0);
    run.msr_rejects("overlap", msr::CR0_PINNED_HIGH, WP);
    run.msr_rejects("pin-outside-allowed", msr::CR0_PINNED_LOW, WP | cr0::NW);
    run.msr_rejects("unpin", msr::CR0_PINNED_LOW, 0);
    run.r.pop();
    run.r.pop();
}

/// `cr-pin.v1`: the RFC v1/v2 ABI as kvm-unit-tests' February 2020
/// `cr_pin` test drives it. SKIP when neither is present.
///
/// The two RFCs disagree on two points and the check follows the one it
/// detected: RFC v1 lets only the host read the PINNED MSRs (so `read-back`
/// is a SKIP there), and the order of "pin SMAP" and "set SMAP" differs —
/// RFC v1 freezes a pinned bit at its current value, so SMAP is set first;
/// RFC v2 forces every allowed bit to the pinned value, so SMAP is pinned
/// first. The result names are the same either way.
///
/// Sub-results, under `cr-pin.v1: `: `cr0: allowed-mask`,
/// `cr0: set-wp: accepted|applied`, `cr0: pin: accepted|read-back`,
/// `cr0: rewrite: accepted`, `cr0: clear-wp: fault|unchanged`,
/// `cr0: pin-outside-allowed: fault`, `cr4: allowed-mask`, then (UMIP and
/// SMEP) `cr4: set-umip-smep: accepted|applied`, `cr4: pin: accepted|read-back`,
/// `cr4: rewrite: accepted`, `cr4: clear-umip-smep: fault|unchanged`,
/// `cr4: clear-smep: fault|unchanged`, then (SMAP) `cr4-all: pin:
/// accepted|read-back`, `cr4-all: set: accepted|applied`, `cr4-all: rewrite:
/// accepted`, `cr4-all: clear: fault|unchanged`.
pub fn check_v1<C: Cpu + ?Sized, W: Write>(cpu: &mut C, r: &mut Reporter<W>) {
    let abi = match detect(cpu).v1() {
        Ok(abi) => abi,
        Err(why) => return r.skip(crate::V1, format_args!("{why}")),
    };
    r.push(crate::V1);
    r.info(format_args!("abi={abi}"));
    let mut run = Run { cpu, r };

    run.r.push("cr0");
    run.msr_equals("allowed-mask", msr::V1_CR0_PIN_ALLOWED, mask::CR0_ALLOWED);
    let v = run.read(Cr::Cr0);
    run.cr_accepts(Cr::Cr0, "set-wp", v | WP, WP, 0);
    v1_pin(&mut run, abi, msr::V1_CR0_PINNED, WP);
    let v = run.read(Cr::Cr0);
    run.cr_accepts(Cr::Cr0, "rewrite", v, 0, 0);
    run.cr_rejects(Cr::Cr0, "clear-wp", v & !WP);
    // Both RFCs reject bits outside the allowed mask; whether the guest can
    // read the MSR differs, so only the fault is judged.
    let res = run.cpu.wrmsr(msr::V1_CR0_PINNED, WP | cr0::PE);
    run.r.push("pin-outside-allowed");
    run.r.check(
        res.is_err_and(|f| f.is_gp0()),
        "fault",
        format_args!(
            "wrmsr={:#x} written={:#x} {}",
            msr::V1_CR0_PINNED,
            WP | cr0::PE,
            crate::steps::Seen(res.err())
        ),
    );
    run.r.pop();
    run.r.pop();

    run.r.push("cr4");
    run.msr_equals("allowed-mask", msr::V1_CR4_PIN_ALLOWED, mask::CR4_ALLOWED);
    if let Some(b) = missing(run.cpu, &[feature::UMIP, feature::SMEP]) {
        run.r.skip("umip-smep", format_args!("{b} is clear"));
        run.r.pop();
        run.r.pop();
        return;
    }
    let v = run.read(Cr::Cr4);
    run.cr_accepts(Cr::Cr4, "set-umip-smep", v | SOME, SOME, 0);
    v1_pin(&mut run, abi, msr::V1_CR4_PINNED, SOME);
    let v = run.read(Cr::Cr4);
    run.cr_accepts(Cr::Cr4, "rewrite", v, 0, 0);
    run.cr_rejects(Cr::Cr4, "clear-umip-smep", v & !SOME);
    run.cr_rejects(Cr::Cr4, "clear-smep", v & !SMEP);
    run.r.pop();

    if let Some(b) = missing(run.cpu, &[feature::SMAP]) {
        run.r.skip("cr4-all", format_args!("{b} is clear"));
        run.r.pop();
        return;
    }
    run.r.push("cr4-all");
    let v = run.read(Cr::Cr4);
    if abi == Abi::V1 {
        run.cr_accepts(Cr::Cr4, "set", v | ALL, ALL, 0);
        v1_pin(&mut run, abi, msr::V1_CR4_PINNED, ALL);
    } else {
        v1_pin(&mut run, abi, msr::V1_CR4_PINNED, ALL);
        run.cr_accepts(Cr::Cr4, "set", v | ALL, ALL, 0);
    }
    let v = run.read(Cr::Cr4);
    run.cr_accepts(Cr::Cr4, "rewrite", v, 0, 0);
    run.cr_rejects(Cr::Cr4, "clear", v & !ALL);
    run.r.pop();
    run.r.pop();
}

/// `pin: accepted|read-back` for the RFC ABI: the read-back is a SKIP on
/// RFC v1, whose PINNED MSRs the guest cannot read.
fn v1_pin<C: Cpu + ?Sized, W: Write>(run: &mut Run<'_, C, W>, abi: Abi, msr: u32, bits: u64) {
    run.msr_accepts("pin", msr, bits, None);
    run.r.push("pin");
    match (abi, run.cpu.rdmsr(msr)) {
        (Abi::V1, Err(f)) => run.r.skip(
            "read-back",
            format_args!("rdmsr {msr:#x} raised {f}: RFC v1 lets only the host read PINNED"),
        ),
        _ => {
            run.read_back(msr, bits);
        }
    }
    run.r.pop();
}
