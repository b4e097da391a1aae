//! The CR-pinning checks against hypervisor models: they pass on the v3 and
//! RFC v1/v2 semantics, fail on each broken hypervisor naming the sub-check
//! that caught it, and skip with the exact reason where there is no pinning.

mod common;
mod model;

use common::{Outcome, run};
use model::{Accel, Features, Flaw, Heki, Machine, Pinning};
use proptest::prelude::*;
use ukci_crpin::regs::{cr0, cr4};
use ukci_crpin::{
    Abi, Cpu, check_detect, check_heki, check_v1, check_v3_high, check_v3_low, detect,
};
use ukci_protocol::Reporter;
use ukci_protocol::line::Status;

type Check = fn(&mut Machine, &mut Reporter<String>);
const DETECT: Check = check_detect::<Machine, String>;
const HIGH: Check = check_v3_high::<Machine, String>;
const LOW: Check = check_v3_low::<Machine, String>;
const V1: Check = check_v1::<Machine, String>;
const HEKI: Check = check_heki::<Machine, String>;

fn first_failure(o: &Outcome) -> &str {
    o.failures()
        .first()
        .copied()
        .unwrap_or_else(|| panic!("expected a failure in\n{}", o.text))
}

// ---- detection ----------------------------------------------------------

#[test]
fn detection_names_the_abi_that_answered() {
    for (pinning, abi) in [
        (Pinning::V3, Abi::V3),
        (Pinning::V3Fsgsbase, Abi::V3Fsgsbase),
        (Pinning::V1, Abi::V1),
        (Pinning::V2, Abi::V2),
    ] {
        let d = detect(&mut Machine::new(pinning));
        assert_eq!(d.abi(), Ok(abi), "{pinning:?}");
        let o = run(DETECT, &mut Machine::new(pinning));
        assert_eq!(o.status("cr-pin.detect: abi"), Status::Pass);
        let detail = o.get("cr-pin.detect: abi").detail.clone().unwrap();
        assert!(detail.starts_with(&format!("abi={abi} ")), "{detail}");
    }
}

#[test]
fn no_pinning_is_a_skip_with_the_reads_that_decided_it() {
    // Upstream KVM: 0x4b564d09 does not exist, and 0x4b564d07 is the
    // async-PF ACK MSR, which reads 0. CPUID bit 15 is set (it means
    // MSI_EXT_DEST_ID today) and must not count.
    let o = run(DETECT, &mut Machine::new(Pinning::None));
    let r = o.get("cr-pin.detect: abi");
    assert_eq!(r.status, Status::Skip);
    assert_eq!(
        r.reason.as_deref(),
        Some(
            "no CR pinning ABI: rdmsr 0x4b564d09 raised #GP(0); rdmsr 0x4b564d07 returned 0x0, \
             not the RFC v1/v2 allowed mask 0x300800; a read of 0 is not the ABI (TCG returns 0 for unknown MSRs; KVM reads 0x4b564d07 as MSR_KVM_ASYNC_PF_ACK, always 0)"
        )
    );
    assert!(
        o.infos
            .iter()
            .any(|i| i.contains("bit 15=1: v3 KVM_FEATURE_CR_PIN then, MSI_EXT_DEST_ID upstream"))
    );
    assert!(
        o.infos
            .iter()
            .any(|i| i == "cr-pin.detect: rdmsr 0x4b564d09 (v3 CR4 allowed) = #GP(0)")
    );
}

#[test]
fn an_msr_that_reads_zero_under_tcg_is_not_the_abi() {
    let mut m = Machine::new(Pinning::None).accel(Accel::Tcg);
    let v3 = detect(&mut m).v3().unwrap_err();
    assert_eq!(
        v3.to_string(),
        "rdmsr 0x4b564d09 returned 0x0, not the v3 allowed mask 0x300800 (or 0x310800 with FSGSBASE); \
         a read of 0 is not the ABI (TCG returns 0 for unknown MSRs; KVM reads 0x4b564d07 as MSR_KVM_ASYNC_PF_ACK, always 0)"
    );
    let o = run(DETECT, &mut m);
    assert!(
        o.get("cr-pin.detect: abi")
            .reason
            .as_deref()
            .unwrap()
            .contains("rdmsr 0x4b564d09 returned 0x0")
    );
    assert!(
        o.infos
            .iter()
            .any(|i| i.contains("signature=\"TCGTCGTCGTCG\""))
    );
}

#[test]
fn an_allowed_mask_that_is_no_known_mask_is_not_the_abi() {
    let mut m = Machine::new(Pinning::V3);
    m.allowed_cr4 = cr4::SMEP;
    let why = detect(&mut m).v3().unwrap_err().to_string();
    assert_eq!(
        why,
        "rdmsr 0x4b564d09 returned 0x100000, not the v3 allowed mask 0x300800 (or 0x310800 with FSGSBASE)"
    );
}

// ---- v3 -----------------------------------------------------------------

const HIGH_NAMES: &[&str] = &[
    "cr0: allowed-mask",
    "cr0: set-wp: accepted",
    "cr0: set-wp: applied",
    "cr0: pin-high: accepted",
    "cr0: pin-high: read-back",
    "cr0: rewrite: accepted",
    "cr0: clear-wp: fault",
    "cr0: clear-wp: unchanged",
    "cr0-msr: allowed-write-same: accepted",
    "cr0-msr: allowed-write-same: read-back",
    "cr0-msr: allowed-write-other: fault",
    "cr0-msr: allowed-write-other: unchanged",
    "cr0-msr: pin-outside-allowed: fault",
    "cr0-msr: pin-outside-allowed: unchanged",
    "cr0-msr: pin-again: accepted",
    "cr0-msr: pin-again: read-back",
    "cr0-msr: unpin: fault",
    "cr0-msr: unpin: unchanged",
    "cr0-msr: overlap: fault",
    "cr0-msr: overlap: unchanged",
    "cr4: allowed-mask",
    "cr4: set-umip-smep: accepted",
    "cr4: set-umip-smep: applied",
    "cr4: pin-high: accepted",
    "cr4: pin-high: read-back",
    "cr4: rewrite: accepted",
    "cr4: clear-umip-smep: fault",
    "cr4: clear-umip-smep: unchanged",
    "cr4: clear-smep: fault",
    "cr4: clear-smep: unchanged",
    "cr4-msr: allowed-write-same: accepted",
    "cr4-msr: allowed-write-same: read-back",
    "cr4-msr: allowed-write-other: fault",
    "cr4-msr: allowed-write-other: unchanged",
    "cr4-msr: pin-outside-allowed: fault",
    "cr4-msr: pin-outside-allowed: unchanged",
    "cr4-msr: unpin: fault",
    "cr4-msr: unpin: unchanged",
    "cr4-low: clear-smap: accepted",
    "cr4-low: clear-smap: applied",
    "cr4-low: pin-low: accepted",
    "cr4-low: pin-low: read-back",
    "cr4-low: overlap-high: fault",
    "cr4-low: overlap-high: unchanged",
    "cr4-low: overlap-low: fault",
    "cr4-low: overlap-low: unchanged",
    "cr4-low: pin-outside-allowed: fault",
    "cr4-low: pin-outside-allowed: unchanged",
    "cr4-low: unpin: fault",
    "cr4-low: unpin: unchanged",
    "cr4-low: rewrite: accepted",
    "cr4-low: clear-umip-smep-set-smap: fault",
    "cr4-low: clear-umip-smep-set-smap: unchanged",
    "cr4-low: set-smap: fault",
    "cr4-low: set-smap: unchanged",
    "cr4-low: clear-smep: fault",
    "cr4-low: clear-smep: unchanged",
    "cr4-low: clear-smep-set-smap: fault",
    "cr4-low: clear-smep-set-smap: unchanged",
];

#[test]
fn v3_high_passes_on_v3_with_stable_names() {
    for pinning in [Pinning::V3, Pinning::V3Fsgsbase] {
        let mut m = Machine::new(pinning);
        let o = run(HIGH, &mut m);
        o.assert_all_pass();
        o.assert_unique_names();
        let want: Vec<String> = HIGH_NAMES
            .iter()
            .map(|n| format!("cr-pin.v3.high: {n}"))
            .collect();
        assert_eq!(o.names(), want);
        // The pins are in place and the guest is where the check left it.
        assert_eq!(
            (m.cr0_high, m.cr4_high, m.cr4_low),
            (cr0::WP, cr4::UMIP | cr4::SMEP, cr4::SMAP)
        );
        assert_eq!(
            m.cr4 & (cr4::UMIP | cr4::SMEP | cr4::SMAP),
            cr4::UMIP | cr4::SMEP
        );
        assert!(m.hazards.is_empty(), "{:?}", m.hazards);
    }
}

#[test]
fn refused_writes_report_vector_error_and_both_values() {
    let o = run(HIGH, &mut Machine::new(Pinning::V3));
    let d = o
        .get("cr-pin.v3.high: cr0: clear-wp: fault")
        .detail
        .clone()
        .unwrap();
    assert_eq!(
        d,
        "cr0.before=0x80050033 cr0.written=0x80040033 vector=13 error=0x0 cr0.after=0x80050033"
    );
    let d = o
        .get("cr-pin.v3.high: cr0-msr: unpin: unchanged")
        .detail
        .clone()
        .unwrap();
    assert_eq!(
        d,
        "wrmsr=0x4b564d0b written=0x0 vector=13 error=0x0 before=0x10000 after=0x10000"
    );
}

#[test]
fn v3_low_passes_on_v3() {
    for pinning in [Pinning::V3, Pinning::V3Fsgsbase] {
        let mut m = Machine::new(pinning);
        let o = run(LOW, &mut m);
        o.assert_all_pass();
        o.assert_unique_names();
        assert_eq!(o.results.len(), 16);
        assert_eq!((m.cr0_low, m.cr0 & cr0::WP), (cr0::WP, 0));
    }
}

#[test]
fn v3_checks_skip_with_the_reason_without_v3() {
    for (pinning, accel, reason) in [
        (Pinning::None, Accel::Kvm, "rdmsr 0x4b564d09 raised #GP(0)"),
        (Pinning::V1, Accel::Kvm, "rdmsr 0x4b564d09 raised #GP(0)"),
        (
            // RFC v2's 0x4b564d09 is its CR4 PINNED MSR, readable and 0.
            Pinning::V2,
            Accel::Kvm,
            "rdmsr 0x4b564d09 returned 0x0, not the v3 allowed mask 0x300800 (or 0x310800 with FSGSBASE); \
             a read of 0 is not the ABI (TCG returns 0 for unknown MSRs; KVM reads 0x4b564d07 as MSR_KVM_ASYNC_PF_ACK, always 0)",
        ),
        (
            Pinning::None,
            Accel::Tcg,
            "rdmsr 0x4b564d09 returned 0x0, not the v3 allowed mask 0x300800 (or 0x310800 with FSGSBASE); \
             a read of 0 is not the ABI (TCG returns 0 for unknown MSRs; KVM reads 0x4b564d07 as MSR_KVM_ASYNC_PF_ACK, always 0)",
        ),
    ] {
        for (check, name) in [(HIGH, "cr-pin.v3.high"), (LOW, "cr-pin.v3.low")] {
            let mut m = Machine::new(pinning).accel(accel);
            let o = run(check, &mut m);
            assert_eq!(o.assert_skipped(name), reason, "{pinning:?} {accel:?}");
            assert!(m.history.is_empty(), "a skipped check wrote a CR");
        }
    }
}

/// Each broken hypervisor and the sub-check that must catch it first.
const HIGH_CATCHES: &[(Flaw, &str)] = &[
    (Flaw::NoEnforce, "cr-pin.v3.high: cr0: clear-wp: fault"),
    (Flaw::LosesPins, "cr-pin.v3.high: cr0: pin-high: read-back"),
    (
        Flaw::ViolationApplies,
        "cr-pin.v3.high: cr0: clear-wp: unchanged",
    ),
    (Flaw::GuestCanUnpin, "cr-pin.v3.high: cr0-msr: unpin: fault"),
    (
        Flaw::OverlapAccepted,
        "cr-pin.v3.high: cr0-msr: overlap: fault",
    ),
    (
        Flaw::AnyBitPinnable,
        "cr-pin.v3.high: cr0-msr: pin-outside-allowed: fault",
    ),
    (
        Flaw::AllowedMsrWritable,
        "cr-pin.v3.high: cr0-msr: allowed-write-other: fault",
    ),
];

const LOW_CATCHES: &[(Flaw, &str)] = &[
    (Flaw::NoEnforce, "cr-pin.v3.low: cr0: set-wp: fault"),
    (Flaw::LosesPins, "cr-pin.v3.low: cr0: pin-low: read-back"),
    (
        Flaw::ViolationApplies,
        "cr-pin.v3.low: cr0: set-wp: unchanged",
    ),
    (Flaw::GuestCanUnpin, "cr-pin.v3.low: cr0-msr: unpin: fault"),
    (
        Flaw::OverlapAccepted,
        "cr-pin.v3.low: cr0-msr: overlap: fault",
    ),
    (
        Flaw::AnyBitPinnable,
        "cr-pin.v3.low: cr0-msr: pin-outside-allowed: fault",
    ),
    (
        Flaw::AllowedMsrWritable,
        "cr-pin.v3.low: cr0-msr: allowed-write-other: fault",
    ),
];

#[test]
fn v3_checks_fail_on_each_broken_hypervisor_naming_the_sub_check() {
    for (check, catches) in [(HIGH, HIGH_CATCHES), (LOW, LOW_CATCHES)] {
        for &(flaw, name) in catches {
            let mut m = Machine::new(Pinning::V3).with(flaw);
            let o = run(check, &mut m);
            assert_eq!(first_failure(&o), name, "{flaw:?}\n{}", o.text);
        }
    }
}

#[test]
fn a_violating_mov_that_lands_anyway_is_undone() {
    let mut m = Machine::new(Pinning::V3).with(Flaw::ViolationApplies);
    let o = run(HIGH, &mut m);
    assert_eq!(
        o.status("cr-pin.v3.high: cr0: clear-wp: fault"),
        Status::Pass
    );
    let d = o
        .get("cr-pin.v3.high: cr0: clear-wp: unchanged")
        .detail
        .clone()
        .unwrap();
    assert!(
        d.ends_with("cr0.after=0x80040033 restored=0x80050033"),
        "{d}"
    );
    // Every later violation was caught the same way and undone: the guest
    // ends with its pinned bits set.
    assert_eq!(m.cr0 & cr0::WP, cr0::WP);
    assert_eq!(
        m.cr4 & (cr4::UMIP | cr4::SMEP | cr4::SMAP),
        cr4::UMIP | cr4::SMEP
    );
    for n in ["cr4: clear-smep: unchanged", "cr4-low: set-smap: unchanged"] {
        assert_eq!(o.status(&format!("cr-pin.v3.high: {n}")), Status::Fail);
    }
}

#[test]
fn a_hypervisor_that_does_not_enforce_fails_every_violation() {
    let mut m = Machine::new(Pinning::V3).with(Flaw::NoEnforce);
    let o = run(HIGH, &mut m);
    let failed = o.failures();
    for n in HIGH_NAMES.iter().filter(|n| {
        n.ends_with(": fault")
            && !n.contains("-msr:")
            && !n.contains("overlap")
            && !n.contains("unpin")
            && !n.contains("outside")
    }) {
        let full = format!("cr-pin.v3.high: {n}");
        assert!(
            failed.contains(&full.as_str()),
            "{full} did not fail\n{}",
            o.text
        );
    }
    // The MSR rules still hold on this hypervisor, and say so.
    assert_eq!(
        o.status("cr-pin.v3.high: cr0-msr: unpin: fault"),
        Status::Pass
    );
    // Each accepted violation was put back.
    assert_eq!(m.cr0 & cr0::WP, cr0::WP);
}

#[test]
fn missing_cpu_features_skip_the_cr4_part_with_the_cpuid_bit() {
    let mut m = Machine::new(Pinning::V3).features(Features::QEMU64);
    let o = run(HIGH, &mut m);
    assert!(o.failures().is_empty(), "{}", o.text);
    let r = o.get("cr-pin.v3.high: cr4: umip-smep");
    assert_eq!(
        (r.status, r.reason.as_deref()),
        (Status::Skip, Some("CPUID.7.0:ECX.UMIP[bit 2] is clear"))
    );
    assert_eq!(
        o.status("cr-pin.v3.high: cr0: clear-wp: fault"),
        Status::Pass
    );

    let mut f = Features::MODERN;
    f.leaf7_ebx &= !(1 << 20);
    let o = run(HIGH, &mut Machine::new(Pinning::V3).features(f));
    assert!(o.failures().is_empty(), "{}", o.text);
    let r = o.get("cr-pin.v3.high: cr4-low");
    assert_eq!(
        (r.status, r.reason.as_deref()),
        (Status::Skip, Some("CPUID.7.0:EBX.SMAP[bit 20] is clear"))
    );
}

#[test]
fn pins_outlive_everything_but_reset() {
    // The model's own rule, which the high/low split relies on.
    let mut m = Machine::new(Pinning::V3);
    run(LOW, &mut m);
    assert!(m.write_cr0(m.cr0 | cr0::WP).is_err());
    assert!(m.wrmsr(ukci_crpin::regs::msr::CR0_PINNED_LOW, 0).is_err());
    m.reset();
    assert!(m.write_cr0(m.cr0 | cr0::WP).is_ok());
}

#[test]
fn checks_run_through_a_trait_object() {
    let mut m = Machine::new(Pinning::V3);
    let cpu: &mut dyn Cpu = &mut m;
    let mut r = Reporter::new(String::new());
    check_v3_low(cpu, &mut r);
    assert_eq!(r.tally().failures, 0);
    assert_eq!(r.tally().tests, 16);
}

// ---- RFC v1/v2 ----------------------------------------------------------

#[test]
fn v1_check_passes_on_rfc_v2() {
    let mut m = Machine::new(Pinning::V2);
    let o = run(V1, &mut m);
    o.assert_all_pass();
    o.assert_unique_names();
    assert_eq!(o.results.len(), 26);
    assert_eq!(m.cr4_pinned, cr4::UMIP | cr4::SMEP | cr4::SMAP);
}

#[test]
fn v1_check_passes_on_rfc_v1_and_skips_the_host_only_reads() {
    let mut m = Machine::new(Pinning::V1);
    let o = run(V1, &mut m);
    assert!(o.failures().is_empty(), "{}", o.text);
    assert_eq!(
        o.with(Status::Skip),
        [
            "cr-pin.v1: cr0: pin: read-back",
            "cr-pin.v1: cr4: pin: read-back",
            "cr-pin.v1: cr4-all: pin: read-back"
        ]
    );
    assert_eq!(
        o.get("cr-pin.v1: cr0: pin: read-back").reason.as_deref(),
        Some("rdmsr 0x4b564d08 raised #GP(0): RFC v1 lets only the host read PINNED")
    );
    // Same names as on v2, whichever order SMAP was pinned and set in.
    let v2 = run(V1, &mut Machine::new(Pinning::V2));
    let mut a = o.names();
    let mut b = v2.names();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn v1_check_skips_without_the_rfc_abi() {
    let o = run(V1, &mut Machine::new(Pinning::V3));
    assert_eq!(
        o.assert_skipped("cr-pin.v1"),
        "rdmsr 0x4b564d07 returned 0x0, not the RFC v1/v2 allowed mask 0x300800; \
         a read of 0 is not the ABI (TCG returns 0 for unknown MSRs; KVM reads 0x4b564d07 as MSR_KVM_ASYNC_PF_ACK, always 0)"
    );
    let o = run(V1, &mut Machine::new(Pinning::None).accel(Accel::PvmLike));
    assert!(
        o.assert_skipped("cr-pin.v1")
            .starts_with("rdmsr 0x4b564d07 returned 0x0")
    );
}

#[test]
fn v1_check_fails_on_broken_rfc_hypervisors() {
    for (pinning, flaw, name) in [
        (
            Pinning::V2,
            Flaw::NoEnforce,
            "cr-pin.v1: cr0: clear-wp: fault",
        ),
        (
            Pinning::V1,
            Flaw::NoEnforce,
            "cr-pin.v1: cr0: clear-wp: fault",
        ),
        (
            Pinning::V2,
            Flaw::LosesPins,
            "cr-pin.v1: cr0: pin: read-back",
        ),
        (
            Pinning::V1,
            Flaw::LosesPins,
            "cr-pin.v1: cr0: clear-wp: fault",
        ),
        (
            Pinning::V1,
            Flaw::ViolationApplies,
            "cr-pin.v1: cr0: clear-wp: unchanged",
        ),
        (
            Pinning::V2,
            Flaw::AnyBitPinnable,
            "cr-pin.v1: cr0: pin-outside-allowed: fault",
        ),
    ] {
        let o = run(V1, &mut Machine::new(pinning).with(flaw));
        assert_eq!(first_failure(&o), name, "{pinning:?} {flaw:?}");
    }
}

// ---- Heki ---------------------------------------------------------------

#[test]
fn heki_passes_on_heki_v3() {
    let mut m = Machine::new(Pinning::None).heki(Heki::V3);
    let o = run(HEKI, &mut m);
    o.assert_all_pass();
    o.assert_unique_names();
    assert_eq!((m.heki_cr0, m.heki_cr4), (cr0::WP, cr4::SMEP));
}

#[test]
fn heki_skips_with_the_hypercall_result() {
    let o = run(HEKI, &mut Machine::new(Pinning::V3));
    assert_eq!(
        o.assert_skipped("cr-pin.heki"),
        "hypercall 13 (KVM_HC_LOCK_CR_UPDATE) version query returned -1000 (-KVM_ENOSYS), not version 1"
    );
    let o = run(HEKI, &mut Machine::new(Pinning::None).accel(Accel::Tcg));
    assert_eq!(
        o.assert_skipped("cr-pin.heki"),
        "hypercall 13 (KVM_HC_LOCK_CR_UPDATE) raised #UD"
    );
}

#[test]
fn heki_fails_when_locks_are_not_enforced() {
    let mut m = Machine::new(Pinning::None).heki(Heki::NoEnforce);
    let o = run(HEKI, &mut m);
    assert_eq!(first_failure(&o), "cr-pin.heki: cr0: clear-wp: fault");
    assert_eq!(
        o.status("cr-pin.heki: cr4: clear-smep: fault"),
        Status::Fail
    );
    assert_eq!(
        m.cr4 & cr4::SMEP,
        cr4::SMEP,
        "the accepted violation was undone"
    );
}

#[test]
fn heki_skips_the_cr4_lock_without_smep() {
    let o = run(
        HEKI,
        &mut Machine::new(Pinning::None)
            .heki(Heki::V3)
            .features(Features::QEMU64),
    );
    assert!(o.failures().is_empty());
    assert_eq!(
        o.get("cr-pin.heki: cr4: smep").reason.as_deref(),
        Some("CPUID.7.0:EBX.SMEP[bit 7] is clear")
    );
}

// ---- the claim as a property ----------------------------------------------

proptest! {
    /// Any combination of flaws is caught by the high or the low check, and
    /// a hypervisor without flaws passes both; no check ever leaves the
    /// guest in a state it could not survive.
    #[test]
    fn v3_checks_pass_iff_the_hypervisor_is_right(
        flaws in proptest::sample::subsequence(model::ALL_FLAWS.to_vec(), 0..=model::ALL_FLAWS.len()),
        late in any::<bool>(),
    ) {
        let pinning = if late { Pinning::V3Fsgsbase } else { Pinning::V3 };
        let mut failures = 0;
        for check in [HIGH, LOW] {
            let mut m = Machine::new(pinning);
            for &f in &flaws {
                m = m.with(f);
            }
            let o = run(check, &mut m);
            failures += o.failures().len();
            prop_assert!(m.hazards.is_empty(), "{:?}", m.hazards);
        }
        prop_assert_eq!(failures == 0, flaws.is_empty());
    }
}
