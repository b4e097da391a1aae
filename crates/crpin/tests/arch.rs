//! The `cr.arch.*` checks against accelerator models: they pass where the
//! architectural rules hold, fail naming the rule and bit where an
//! accelerator bends it (TCG, a kvm_pvm-like CR4 path), and always leave CR0
//! and CR4 as they found them.

mod common;
mod model;

use common::run;
use model::{Accel, Features, Machine, Pinning};
use proptest::prelude::*;
use ukci_crpin::regs::cr0;
use ukci_crpin::{
    CHECKS, check_cr0_combinations, check_cr0_reserved, check_cr4_features, check_cr4_reserved,
};
use ukci_protocol::Reporter;
use ukci_protocol::line::Status;

type Check = fn(&mut Machine, &mut Reporter<String>);
const CR0_RESERVED: Check = check_cr0_reserved::<Machine, String>;
const CR4_RESERVED: Check = check_cr4_reserved::<Machine, String>;
const CR4_FEATURES: Check = check_cr4_features::<Machine, String>;
const CR0_COMBINATIONS: Check = check_cr0_combinations::<Machine, String>;
const ARCH: [Check; 4] = [CR0_RESERVED, CR4_RESERVED, CR4_FEATURES, CR0_COMBINATIONS];

fn kvm() -> Machine {
    Machine::new(Pinning::None)
}

#[test]
fn every_rule_holds_on_kvm_and_the_registers_come_back() {
    let mut m = kvm().features(Features::QEMU64);
    let (c0, c4) = (m.cr0, m.cr4);
    for check in ARCH {
        let o = run(check, &mut m);
        o.assert_unique_names();
        assert!(o.failures().is_empty(), "{}", o.text);
    }
    assert_eq!((m.cr0, m.cr4), (c0, c4));
    assert!(
        m.history.is_empty(),
        "KVM refused every write, so nothing took effect"
    );
}

#[test]
fn reserved_bits_are_one_sub_check_each() {
    let o = run(CR0_RESERVED, &mut kvm());
    o.assert_all_pass();
    assert_eq!(
        o.names(),
        [
            "cr.arch.cr0-reserved: bit-32: fault",
            "cr.arch.cr0-reserved: bit-32: unchanged",
            "cr.arch.cr0-reserved: bit-63: fault",
            "cr.arch.cr0-reserved: bit-63: unchanged",
        ]
    );
    assert_eq!(
        o.get("cr.arch.cr0-reserved: bit-63: fault")
            .detail
            .as_deref(),
        Some(
            "cr0.before=0x80050033 cr0.written=0x8000000080050033 vector=13 error=0x0 cr0.after=0x80050033"
        )
    );
    let o = run(CR4_RESERVED, &mut kvm());
    o.assert_all_pass();
    assert_eq!(o.results.len(), 6);
}

#[test]
fn a_cr4_path_that_drops_reserved_bits_fails_the_fault_sub_check() {
    // This machine's kvm_pvm: no #GP, the bit silently dropped.
    let mut m = kvm().accel(Accel::PvmLike);
    let o = run(CR4_RESERVED, &mut m);
    for bit in [15, 40, 63] {
        assert_eq!(
            o.status(&format!("cr.arch.cr4-reserved: bit-{bit}: fault")),
            Status::Fail
        );
        assert_eq!(
            o.status(&format!("cr.arch.cr4-reserved: bit-{bit}: unchanged")),
            Status::Pass
        );
    }
    let d = o
        .get("cr.arch.cr4-reserved: bit-15: fault")
        .detail
        .clone()
        .unwrap();
    assert!(
        d.contains("cr4.written=0x86a0 vector=none cr4.after=0x6a0"),
        "{d}"
    );
}

#[test]
fn tcg_cr0_rules_fail_by_name_and_cr0_is_put_back() {
    let mut m = kvm().accel(Accel::Tcg);
    let c0 = m.cr0;
    let o = run(CR0_RESERVED, &mut m);
    // TCG truncates CR0 to 32 bits: no fault, but nothing lands either.
    assert_eq!(
        o.failures(),
        [
            "cr.arch.cr0-reserved: bit-32: fault",
            "cr.arch.cr0-reserved: bit-63: fault"
        ]
    );

    let o = run(CR0_COMBINATIONS, &mut m);
    assert_eq!(
        o.failures(),
        [
            "cr.arch.cr0-combinations: nw-without-cd: fault",
            "cr.arch.cr0-combinations: nw-without-cd: unchanged",
            "cr.arch.cr0-combinations: pg-without-pe: fault",
            "cr.arch.cr0-combinations: pg-without-pe: unchanged",
        ]
    );
    let d = o
        .get("cr.arch.cr0-combinations: pg-without-pe: unchanged")
        .detail
        .clone()
        .unwrap();
    assert_eq!(
        d,
        "cr0.before=0x80050033 cr0.written=0x80050032 vector=none cr0.after=0x80050032 restored=0x80050033"
    );
    // The wrongly accepted PE clear was the last-but-one write; the very
    // next one put CR0 back.
    assert_eq!(m.cr0, c0);
    assert_eq!(m.history.last(), Some(&(0, c0)));
    assert_eq!(
        m.hazards.len(),
        1,
        "only the PE clear itself: {:?}",
        m.hazards
    );
}

#[test]
fn absent_features_are_probed_and_present_ones_skipped_with_the_cpuid_bit() {
    let o = run(CR4_FEATURES, &mut kvm());
    // MODERN has UMIP, VMX, FSGSBASE, PCID, XSAVE, SMEP, SMAP, PKU.
    assert_eq!(
        o.with(Status::Skip),
        [
            "cr.arch.cr4-features: umip",
            "cr.arch.cr4-features: vmxe",
            "cr.arch.cr4-features: fsgsbase",
            "cr.arch.cr4-features: pcide",
            "cr.arch.cr4-features: osxsave",
            "cr.arch.cr4-features: smep",
            "cr.arch.cr4-features: smap",
            "cr.arch.cr4-features: pke",
        ]
    );
    assert_eq!(
        o.get("cr.arch.cr4-features: smep").reason.as_deref(),
        Some("CPUID.7.0:EBX.SMEP[bit 7] is set; the rule applies only to absent features")
    );
    for f in ["smxe", "kl", "cet", "pks", "uintr", "lam-sup", "la57"] {
        for what in ["fault", "unchanged"] {
            assert_eq!(
                o.status(&format!("cr.arch.cr4-features: {f}: {what}")),
                Status::Pass,
                "{f}"
            );
        }
    }
    let o = run(CR4_FEATURES, &mut kvm().features(Features::EVERYTHING));
    assert_eq!(
        o.with(Status::Skip).len(),
        o.results.len(),
        "every feature present: nothing to probe"
    );
}

#[test]
fn tcg_dropping_an_absent_feature_bit_fails_the_fault_sub_check() {
    let mut m = kvm().accel(Accel::Tcg).features(Features::QEMU64);
    let o = run(CR4_FEATURES, &mut m);
    assert_eq!(o.status("cr.arch.cr4-features: smep: fault"), Status::Fail);
    assert_eq!(
        o.status("cr.arch.cr4-features: smep: unchanged"),
        Status::Pass
    );
    // LA57 is refused by TCG too (a long-mode toggle): the model agrees.
    assert_eq!(o.status("cr.arch.cr4-features: la57: fault"), Status::Pass);
}

#[test]
fn a_hypervisor_that_accepts_absent_features_is_caught_and_undone() {
    let mut m = kvm().accel(Accel::LaxCr4).features(Features::QEMU64);
    let c4 = m.cr4;
    let o = run(CR4_FEATURES, &mut m);
    for f in ["umip", "smep", "smap", "pke", "fsgsbase"] {
        assert_eq!(
            o.status(&format!("cr.arch.cr4-features: {f}: fault")),
            Status::Fail,
            "{f}"
        );
        assert_eq!(
            o.status(&format!("cr.arch.cr4-features: {f}: unchanged")),
            Status::Fail,
            "{f}"
        );
    }
    let d = o
        .get("cr.arch.cr4-features: smep: unchanged")
        .detail
        .clone()
        .unwrap();
    assert_eq!(
        d,
        "cr4.before=0x6a0 cr4.written=0x1006a0 vector=none cr4.after=0x1006a0 restored=0x6a0"
    );
    assert_eq!(m.cr4, c4, "every accepted bit was taken back");
}

#[test]
fn rules_that_another_fault_would_mask_are_skipped_with_why() {
    let mut m = kvm().features(Features::QEMU64);
    m.cr3 |= 0x18; // PCD|PWT
    m.cr0 &= !cr0::WP;
    let o = run(CR4_FEATURES, &mut m);
    assert_eq!(
        o.get("cr.arch.cr4-features: pcide").reason.as_deref(),
        Some("cr3=0x100018: CR3[11:0] != 0 makes setting PCIDE #GP on its own")
    );
    assert_eq!(
        o.get("cr.arch.cr4-features: cet").reason.as_deref(),
        Some("CR0.WP is clear, which makes setting CET #GP on its own")
    );
}

#[test]
fn every_check_is_in_the_catalogue_and_dispatches() {
    for name in CHECKS {
        assert!(
            ukci_protocol::catalogue::find(name).is_some(),
            "{name} missing from the catalogue"
        );
        let mut m = kvm();
        let mut r = Reporter::new(String::new());
        assert!(ukci_crpin::run(name, &mut m, &mut r), "{name}");
        assert!(r.tally().tests > 0, "{name} reported nothing");
    }
    let mut r = Reporter::new(String::new());
    assert!(!ukci_crpin::run("cr.arch.smep", &mut kvm(), &mut r));
    for later in [
        "cr.arch.cr0-wp",
        "cr.arch.smep",
        "cr.arch.smap",
        "cr.arch.umip",
    ] {
        assert!(ukci_protocol::catalogue::find(later).is_some(), "{later}");
    }
}

fn features() -> impl Strategy<Value = Features> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(a, b, c, d, e)| Features {
            leaf1_ecx: a,
            leaf7_ebx: b,
            leaf7_ecx: c,
            leaf7_edx: d,
            leaf7_1_eax: e,
        })
}

proptest! {
    /// Whatever the CPU and the accelerator: the architectural checks leave
    /// CR0 and CR4 as they were, never leave the guest in a state it cannot
    /// survive for longer than one write, and fail exactly when the
    /// accelerator bends a rule.
    #[test]
    fn arch_checks_restore_and_judge(
        f in features(),
        accel in prop_oneof![Just(Accel::Kvm), Just(Accel::Tcg), Just(Accel::PvmLike)],
        cr3_low in 0u64..0x1000,
    ) {
        let mut m = kvm().features(f).accel(accel);
        m.cr3 |= cr3_low;
        let (c0, c4) = (m.cr0, m.cr4);
        let mut failures = 0;
        for check in ARCH {
            failures += run(check, &mut m).failures().len();
            prop_assert_eq!((m.cr0, m.cr4), (c0, c4));
        }
        // Every hazard was followed at once by the write that undid it.
        for (i, w) in m.history.iter().enumerate() {
            let back = if w.0 == 0 { c0 } else { c4 };
            if *w != (w.0, back) {
                prop_assert_eq!(m.history.get(i + 1), Some(&(w.0, back)));
            }
        }
        prop_assert_eq!(failures == 0, accel == Accel::Kvm);
    }
}

#[test]
fn faults_and_cpuid_bits_print_as_the_sdm_writes_them() {
    use ukci_crpin::Fault;
    use ukci_crpin::regs::feature;
    assert_eq!(Fault::gp(0).to_string(), "#GP(0)");
    assert_eq!(Fault::ud().to_string(), "#UD");
    assert_eq!(Fault::pf(2, 0x1000).to_string(), "#PF(0x2)");
    assert_eq!(
        Fault {
            vector: 32,
            error_code: 0,
            cr2: 0,
        }
        .to_string(),
        "vector 32"
    );
    assert_eq!(feature::SMEP.to_string(), "CPUID.7.0:EBX.SMEP[bit 7]");
    assert_eq!(feature::VMX.to_string(), "CPUID.1:ECX.VMX[bit 5]");
    assert_eq!(feature::LAM.to_string(), "CPUID.7.1:EAX.LAM[bit 26]");
}
