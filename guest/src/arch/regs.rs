//! Plain readers of the control registers, EFER and RFLAGS, and MSR access
//! that is known not to fault. Raw `u64`s on purpose: checks compare bits the
//! typed flags of the `x86_64` crate may not name (reserved, newer ones).
//! Writes that may fault live in `fault` (`try_write_cr0` ...).

use core::arch::asm;

pub const MSR_EFER: u32 = 0xc000_0080;
pub const EFER_SCE: u64 = 1 << 0;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_UMIP: u64 = 1 << 11;
pub const CR4_FSGSBASE: u64 = 1 << 16;
pub const CR4_PCIDE: u64 = 1 << 17;
pub const CR4_SMEP: u64 = 1 << 20;
pub const CR4_SMAP: u64 = 1 << 21;

macro_rules! read_cr {
    ($(#[$doc:meta])* $name:ident, $reg:literal) => {
        $(#[$doc])*
        pub fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading a control register has no side effects.
            unsafe { asm!(concat!("mov {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}

read_cr!(cr0, "cr0");
read_cr!(
    /// The last page-fault address. Only meaningful right after a #PF; a
    /// recovered fault's CR2 is in its `Fault`.
    cr2,
    "cr2"
);
read_cr!(cr3, "cr3");
read_cr!(cr4, "cr4");

pub fn efer() -> u64 {
    // SAFETY: EFER exists on every CPU that reaches long mode.
    unsafe { rdmsr(MSR_EFER) }
}

pub fn rflags() -> u64 {
    x86_64::registers::rflags::read_raw()
}

/// # Safety
/// `msr` must exist (else #GP, an abort); use `fault::try_rdmsr` when unsure.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack, preserves_flags))
    };
    (hi as u64) << 32 | lo as u64
}

/// # Safety
/// `msr` must exist and `value` must be valid and keep the guest working;
/// use `fault::try_wrmsr` when unsure.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the write is valid and harmless.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    };
}
