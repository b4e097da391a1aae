//! `cr-pin.heki`: the Heki RFC v3 hypercall `KVM_HC_LOCK_CR_UPDATE` (spec
//! §1.9). Pins are per VM and permanent, so this needs a fresh VM too.

use crate::cpu::{Cpu, Fault};
use crate::regs::{cr0, cr4, feature, heki};
use crate::steps::{Cr, Run};
use core::fmt::{self, Write};
use ukci_protocol::Reporter;

/// The CR numbers the hypercall takes in its first argument.
const CR0: u64 = 0;
const CR4: u64 = 4;

/// A hypercall's RAX, shown signed: KVM returns negative error numbers.
struct Ret(Result<u64, Fault>);

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(v) => match v as i64 {
                x if x == -heki::KVM_ENOSYS => f.write_str("-1000 (-KVM_ENOSYS)"),
                x if x == -heki::KVM_EINVAL => f.write_str("-22 (-KVM_EINVAL)"),
                x => write!(f, "{x}"),
            },
            Err(x) => write!(f, "{x}"),
        }
    }
}

fn lock<C: Cpu + ?Sized>(cpu: &mut C, cr: u64, mask: u64, flags: u64) -> Result<u64, Fault> {
    cpu.hypercall(heki::KVM_HC_LOCK_CR_UPDATE, [cr, mask, flags, 0])
}

/// Why the hypercall does not look like Heki v3, from the version query's
/// answer; `None` when it answered version 1.
fn heki_absent(version: Result<u64, Fault>) -> Option<impl fmt::Display> {
    struct Why(Result<u64, Fault>);
    impl fmt::Display for Why {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                Err(x) => write!(
                    f,
                    "hypercall {} (KVM_HC_LOCK_CR_UPDATE) raised {x}",
                    heki::KVM_HC_LOCK_CR_UPDATE
                ),
                Ok(_) => write!(
                    f,
                    "hypercall {} (KVM_HC_LOCK_CR_UPDATE) version query returned {}, not version {}",
                    heki::KVM_HC_LOCK_CR_UPDATE,
                    Ret(self.0),
                    heki::VERSION
                ),
            }
        }
    }
    (version != Ok(heki::VERSION)).then_some(Why(version))
}

/// Sub-results, under `cr-pin.heki: `: `version`, then the argument checks
/// `einval: cr0-without-wp`, `einval: cr4-outside-allowed`, `einval: cr3`
/// (each must return -KVM_EINVAL), then `cr0: set-wp: accepted|applied`,
/// `cr0: lock-wp`, `cr0: rewrite: accepted`, `cr0: clear-wp: fault|unchanged`,
/// then (SMEP) `cr4: set-smep: accepted|applied`, `cr4: lock-smep`,
/// `cr4: rewrite: accepted`, `cr4: clear-smep: fault|unchanged`.
pub fn check_heki<C: Cpu + ?Sized, W: Write>(cpu: &mut C, r: &mut Reporter<W>) {
    let version = lock(cpu, CR0, 0, heki::VERSION_FLAG);
    if let Some(why) = heki_absent(version) {
        return r.skip(crate::HEKI, format_args!("{why}"));
    }
    r.push(crate::HEKI);
    r.check(
        true,
        "version",
        format_args!(
            "cr=0 mask=0x0 flags={:#x} ret={}",
            heki::VERSION_FLAG,
            Ret(version)
        ),
    );
    let mut run = Run { cpu, r };

    // Before any real lock, and each harmless if wrongly accepted: PE and
    // PAE are always set in long mode, and CR3 has no pinnable bits.
    run.r.push("einval");
    for (name, cr, mask) in [
        ("cr0-without-wp", CR0, cr0::PE),
        ("cr4-outside-allowed", CR4, cr4::PAE),
        ("cr3", 3, 1 << 3),
    ] {
        let ret = lock(run.cpu, cr, mask, 0);
        run.r.check(
            ret == Ok((-heki::KVM_EINVAL) as u64),
            name,
            format_args!("cr={cr} mask={mask:#x} flags=0x0 ret={}", Ret(ret)),
        );
    }
    run.r.pop();

    run.r.push("cr0");
    let v = run.read(Cr::Cr0);
    run.cr_accepts(Cr::Cr0, "set-wp", v | cr0::WP, cr0::WP, 0);
    let ret = lock(run.cpu, CR0, cr0::WP, 0);
    run.r.check(
        ret == Ok(0),
        "lock-wp",
        format_args!("cr=0 mask={:#x} flags=0x0 ret={}", cr0::WP, Ret(ret)),
    );
    let v = run.read(Cr::Cr0);
    run.cr_accepts(Cr::Cr0, "rewrite", v, 0, 0);
    run.cr_rejects(Cr::Cr0, "clear-wp", v & !cr0::WP);
    run.r.pop();

    run.r.push("cr4");
    if !feature::SMEP.present(run.cpu) {
        run.r
            .skip("smep", format_args!("{} is clear", feature::SMEP));
    } else {
        let v = run.read(Cr::Cr4);
        run.cr_accepts(Cr::Cr4, "set-smep", v | cr4::SMEP, cr4::SMEP, 0);
        let ret = lock(run.cpu, CR4, cr4::SMEP, 0);
        run.r.check(
            ret == Ok(0),
            "lock-smep",
            format_args!("cr=4 mask={:#x} flags=0x0 ret={}", cr4::SMEP, Ret(ret)),
        );
        let v = run.read(Cr::Cr4);
        run.cr_accepts(Cr::Cr4, "rewrite", v, 0, 0);
        run.cr_rejects(Cr::Cr4, "clear-smep", v & !cr4::SMEP);
    }
    run.r.pop();
    run.r.pop();
}
