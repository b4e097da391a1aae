//! `cr.arch.*`: the architectural CR0/CR4 rules that are pure register logic
//! (SDM Vol. 2 "MOV—Move to/from Control Registers", Vol. 3 §2.5). Each
//! refused write goes through [`Cpu::probe_cr0`]/[`Cpu::probe_cr4`], so a
//! hypervisor that accepts it has it undone at once and the register is
//! back to its old value when the check ends.
//!
//! Which writes are attempted, and why they are safe to attempt:
//! * Reserved bits: if wrongly accepted they do nothing until restored.
//! * CR0.NW without CD: caching attributes; harmless for the instant before
//!   the restore.
//! * CR0.PE cleared with PG set: refused by KVM for two reasons (PG without
//!   PE, and it would leave IA-32e mode). QEMU's TCG does not check it
//!   (code reading of `helper_write_crN`/`cpu_x86_update_cr0`) and applies
//!   it; the CPU stays in 64-bit code at CPL 0 there, and the guest's probe
//!   puts CR0 back in the same instruction sequence.
//! * CR4 feature bits without their CPUID bit: with the [`Cpu`] contract
//!   (supervisor-only mappings, interrupts off, PKRU/PKRS 0) none of SMEP,
//!   SMAP, PKE, PKS, UMIP, FSGSBASE, VMXE, SMXE, OSXSAVE, KL, UINTR,
//!   LAM_SUP, CET or PCIDE changes how the next instructions run.
//!
//! Not attempted, because a hypervisor that wrongly accepts them kills the
//! guest before the restore can run: clearing CR0.PG or CR4.PAE in long
//! mode, toggling CR4.LA57 on a CPU that has it (a long-mode toggle, which
//! must #GP whatever CPUID says, but if applied switches the paging
//! structures), setting CR4.LASS (supervisor fetches from the lower half
//! fault) or CR4.FRED (events go through unset FRED MSRs). CR4.LA57 *is*
//! probed when CPUID says the CPU lacks it: hardware without LA57 cannot
//! walk 5-level tables, and QEMU's TCG refuses any LA57 toggle in 64-bit
//! code (`helper_write_crN`). It comes last all the same.

use crate::cpu::{Cpu, CpuidBit};
use crate::regs::{cr0, cr4, feature};
use crate::steps::{Cr, Run};
use core::fmt::Write;
use ukci_protocol::Reporter;

/// CR0 bits 63:32 are reserved and must #GP (SDM Vol. 3 §2.5). Bits in
/// 31:0 that are reserved are silently ignored by KVM and not architecturally
/// required to fault, so they are not checked.
const CR0_RESERVED: [(&str, u32); 2] = [("bit-32", 32), ("bit-63", 63)];

/// CR4 bits reserved on every processor to date (15 has never been
/// assigned; 33 and up lie beyond FRED; 63 is the top).
const CR4_RESERVED: [(&str, u32); 3] = [("bit-15", 15), ("bit-40", 40), ("bit-63", 63)];

/// A CR4 bit and the CPUID bit(s) that enumerate it.
struct Cr4Feature {
    name: &'static str,
    bit: u64,
    cpuid: &'static [CpuidBit],
}

const fn feat(name: &'static str, bit: u64, cpuid: &'static [CpuidBit]) -> Cr4Feature {
    Cr4Feature { name, bit, cpuid }
}

const CR4_FEATURES: [Cr4Feature; 15] = [
    feat("umip", cr4::UMIP, &[feature::UMIP]),
    feat("vmxe", cr4::VMXE, &[feature::VMX]),
    feat("smxe", cr4::SMXE, &[feature::SMX]),
    feat("fsgsbase", cr4::FSGSBASE, &[feature::FSGSBASE]),
    feat("pcide", cr4::PCIDE, &[feature::PCID]),
    feat("osxsave", cr4::OSXSAVE, &[feature::XSAVE]),
    feat("kl", cr4::KL, &[feature::KL]),
    feat("smep", cr4::SMEP, &[feature::SMEP]),
    feat("smap", cr4::SMAP, &[feature::SMAP]),
    feat("pke", cr4::PKE, &[feature::PKU]),
    feat("cet", cr4::CET, &[feature::CET_SS, feature::CET_IBT]),
    feat("pks", cr4::PKS, &[feature::PKS]),
    feat("uintr", cr4::UINTR, &[feature::UINTR]),
    feat("lam-sup", cr4::LAM_SUP, &[feature::LAM]),
    // Last: the one whose wrongful acceptance would be the most disruptive.
    feat("la57", cr4::LA57, &[feature::LA57]),
];

/// `cr.arch.cr0-reserved`: setting CR0 bit 32 or 63 raises #GP(0) and leaves
/// CR0 unchanged. Sub-results `bit-32: fault|unchanged`, `bit-63: fault|unchanged`.
pub fn check_cr0_reserved<C: Cpu + ?Sized, W: Write>(cpu: &mut C, r: &mut Reporter<W>) {
    r.push(crate::CR0_RESERVED);
    let mut run = Run { cpu, r };
    for (name, bit) in CR0_RESERVED {
        let v = run.read(Cr::Cr0);
        run.cr_rejects(Cr::Cr0, name, v | 1 << bit);
    }
    run.r.pop();
}

/// `cr.arch.cr4-reserved`: setting CR4 bit 15, 40 or 63 raises #GP(0) and
/// leaves CR4 unchanged. Sub-results `bit-N: fault|unchanged`.
pub fn check_cr4_reserved<C: Cpu + ?Sized, W: Write>(cpu: &mut C, r: &mut Reporter<W>) {
    r.push(crate::CR4_RESERVED);
    let mut run = Run { cpu, r };
    for (name, bit) in CR4_RESERVED {
        let v = run.read(Cr::Cr4);
        run.cr_rejects(Cr::Cr4, name, v | 1 << bit);
    }
    run.r.pop();
}

/// `cr.arch.cr4-features`: setting a CR4 bit whose CPUID feature is absent
/// raises #GP(0) and leaves CR4 unchanged. One prefix per feature (`umip`,
/// `vmxe`, `smxe`, `fsgsbase`, `pcide`, `osxsave`, `kl`, `smep`, `smap`,
/// `pke`, `cet`, `pks`, `uintr`, `lam-sup`, `la57`) with `fault|unchanged`,
/// or a SKIP of that name when the feature is present (the rule does not
/// apply), the bit is already set, or another rule would raise the same
/// #GP (PCIDE with `CR3[11:0] != 0`, CET with CR0.WP clear).
pub fn check_cr4_features<C: Cpu + ?Sized, W: Write>(cpu: &mut C, r: &mut Reporter<W>) {
    r.push(crate::CR4_FEATURES);
    let mut run = Run { cpu, r };
    for f in &CR4_FEATURES {
        if let Some(b) = f.cpuid.iter().find(|b| b.present(run.cpu)) {
            run.r.skip(
                f.name,
                format_args!("{b} is set; the rule applies only to absent features"),
            );
            continue;
        }
        let v = run.read(Cr::Cr4);
        if v & f.bit != 0 {
            run.r.skip(
                f.name,
                format_args!("cr4={v:#x} already has the bit set although CPUID lacks it"),
            );
            continue;
        }
        if f.bit == cr4::PCIDE && run.cpu.read_cr3() & 0xfff != 0 {
            let cr3 = run.cpu.read_cr3();
            run.r.skip(
                f.name,
                format_args!("cr3={cr3:#x}: CR3[11:0] != 0 makes setting PCIDE #GP on its own"),
            );
            continue;
        }
        if f.bit == cr4::CET && run.read(Cr::Cr0) & cr0::WP == 0 {
            run.r.skip(
                f.name,
                format_args!("CR0.WP is clear, which makes setting CET #GP on its own"),
            );
            continue;
        }
        run.cr_rejects(Cr::Cr4, f.name, v | f.bit);
    }
    run.r.pop();
}

/// `cr.arch.cr0-combinations`: invalid CR0 combinations raise #GP(0) and
/// leave CR0 unchanged. Sub-results `nw-without-cd: fault|unchanged` and
/// `pg-without-pe: fault|unchanged` (PE cleared while PG stays set; in long
/// mode this must fault, see the module comment for why it is safe to try).
pub fn check_cr0_combinations<C: Cpu + ?Sized, W: Write>(cpu: &mut C, r: &mut Reporter<W>) {
    r.push(crate::CR0_COMBINATIONS);
    let mut run = Run { cpu, r };
    let v = run.read(Cr::Cr0);
    run.cr_rejects(Cr::Cr0, "nw-without-cd", (v | cr0::NW) & !cr0::CD);
    let v = run.read(Cr::Cr0);
    if v & cr0::PG == 0 {
        run.r.skip(
            "pg-without-pe",
            format_args!("cr0={v:#x}: paging is off, so clearing PE would be a valid mode switch"),
        );
    } else {
        run.cr_rejects(Cr::Cr0, "pg-without-pe", v & !cr0::PE);
    }
    run.r.pop();
}
