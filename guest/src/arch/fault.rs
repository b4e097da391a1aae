//! Typed "try" forms of instructions that may fault, built on the exception
//! table: the Rust equivalent of kvm-unit-tests' `write_cr4_safe` and
//! friends. Each returns the `Fault` instead of aborting the guest.

use super::cpuid::{self, Vendor};
use super::extable::{self, CALL_TARGET, extable_entry, try_asm};
use super::idt::{self, vector};
use core::arch::asm;
use core::fmt;
use core::sync::atomic::Ordering;

/// An exception taken, and recovered from, by guarded code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub vector: u8,
    /// 0 for vectors without one.
    pub error_code: u64,
    /// The faulting address for #PF, else 0.
    pub cr2: u64,
    /// Where it happened.
    pub rip: u64,
}

impl Fault {
    pub fn is(&self, vector: u8) -> bool {
        self.vector == vector
    }

    pub fn is_gp0(&self) -> bool {
        self.vector == vector::GP && self.error_code == 0
    }

    /// `vector=13 error=0x0 rip=0x...` (+ `cr2=` for #PF), for a
    /// `ukci-detail:` line.
    pub fn detail(&self) -> FaultDetail {
        FaultDetail(*self)
    }
}

/// `#GP(0)`, `#PF(0x2) at 0xdead000`, `#UD`.
impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(idt::mnemonic(self.vector))?;
        if idt::has_error_code(self.vector) {
            match self.error_code {
                0 => f.write_str("(0)")?,
                e => write!(f, "({e:#x})")?,
            }
        }
        if self.vector == vector::PF {
            write!(f, " at {:#x}", self.cr2)?;
        }
        Ok(())
    }
}

pub struct FaultDetail(Fault);

impl fmt::Display for FaultDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = &self.0;
        write!(
            f,
            "vector={} error={:#x} rip={:#x}",
            x.vector, x.error_code, x.rip
        )?;
        if x.vector == vector::PF {
            write!(f, " cr2={:#x}", x.cr2)?;
        }
        Ok(())
    }
}

/// Reads an MSR; #GP for one the CPU does not have. (TCG returns 0 for
/// unknown MSRs instead; checks must expect that.)
pub fn try_rdmsr(msr: u32) -> Result<u64, Fault> {
    let (lo, hi): (u32, u32);
    // SAFETY: reading an MSR changes no memory; a #GP is recovered.
    unsafe { try_asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) }?;
    Ok((hi as u64) << 32 | lo as u64)
}

/// # Safety
/// If the write succeeds it takes effect: it must leave the guest working.
pub unsafe fn try_wrmsr(msr: u32, value: u64) -> Result<(), Fault> {
    // SAFETY: the caller vouches for the effect; a #GP is recovered.
    unsafe {
        try_asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
                 options(nostack))
    }
}

/// # Safety
/// If the write succeeds it takes effect: it must leave paging, protected mode
/// and caching usable (e.g. toggling WP is fine, clearing PG is not).
pub unsafe fn try_write_cr0(value: u64) -> Result<(), Fault> {
    // SAFETY: the caller vouches for the value; a #GP is recovered.
    unsafe { try_asm!("mov cr0, {}", in(reg) value, options(nostack)) }
}

/// # Safety
/// If the write succeeds it takes effect: the new root must map the guest
/// (the identity map) or the next instruction fetch faults fatally.
pub unsafe fn try_write_cr3(value: u64) -> Result<(), Fault> {
    // SAFETY: the caller vouches for the value; a #GP is recovered.
    unsafe { try_asm!("mov cr3, {}", in(reg) value, options(nostack)) }
}

/// # Safety
/// If the write succeeds it takes effect: it must not disable PAE or turn on
/// a protection the guest is not ready for (SMEP is fine: the kernel never
/// executes user pages; SMAP needs `stac` around user accesses).
pub unsafe fn try_write_cr4(value: u64) -> Result<(), Fault> {
    // SAFETY: the caller vouches for the value; a #GP is recovered.
    unsafe { try_asm!("mov cr4, {}", in(reg) value, options(nostack)) }
}

/// Reads 8 bytes at `addr` (#PF, #GP on a non-canonical address).
///
/// # Safety
/// A read that succeeds must be harmless (MMIO reads can have effects).
pub unsafe fn try_read_u64(addr: u64) -> Result<u64, Fault> {
    let v: u64;
    // SAFETY: the caller vouches for the read; a fault is recovered.
    unsafe { try_asm!("mov {v}, [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack)) }?;
    Ok(v)
}

/// Writes 8 bytes at `addr`.
///
/// # Safety
/// A write that succeeds must not corrupt anything the guest uses.
pub unsafe fn try_write_u64(addr: u64, value: u64) -> Result<(), Fault> {
    // SAFETY: the caller vouches for the write; a fault is recovered.
    unsafe { try_asm!("mov [{a}], {v}", a = in(reg) addr, v = in(reg) value, options(nostack)) }
}

/// Calls `addr` in ring 0 as an `extern "C" fn()`. A fault on the call itself
/// or on the first instruction fetch there (SMEP, NX, not present) comes back
/// as `Err`; a fault deeper inside the callee is not covered and aborts.
///
/// # Safety
/// Whatever is at `addr` runs with kernel privileges.
pub unsafe fn try_call(addr: u64) -> Result<(), Fault> {
    CALL_TARGET.store(addr, Ordering::Relaxed);
    // SAFETY: the caller vouches for the callee; faults at the call or its
    // target are recovered.
    let r = unsafe { try_asm!("call {a}", a = in(reg) addr, clobber_abi("C")) };
    CALL_TARGET.store(0, Ordering::Relaxed);
    r
}

macro_rules! hypercall {
    ($insn:literal, $nr:expr, $a0:expr, $a1:expr, $a2:expr, $a3:expr) => {{
        let ret: u64;
        extable::begin();
        // KVM's ABI takes the first argument in RBX, which LLVM reserves: swap
        // it in and out around the guarded instruction only, so a fault still
        // restores RBX.
        asm!(
            "xchg {a0}, rbx",
            concat!("7770: ", $insn),
            "7771:",
            "xchg {a0}, rbx",
            extable_entry!(),
            a0 = inout(reg) $a0 => _,
            inout("rax") $nr => ret,
            in("rcx") $a1,
            in("rdx") $a2,
            in("rsi") $a3,
        );
        extable::end().map(|()| ret)
    }};
}

/// Intel's hypercall instruction with KVM's register convention
/// (nr in RAX, arguments in RBX, RCX, RDX, RSI, result in RAX). #UD where
/// VMCALL is not the hypercall instruction (AMD without emulation, TCG).
///
/// # Safety
/// A hypercall that succeeds can change what the hypervisor does for this VM.
pub unsafe fn try_vmcall(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> Result<u64, Fault> {
    // SAFETY: the caller vouches for the hypercall; #UD/#GP are recovered.
    unsafe { hypercall!("vmcall", nr, a0, a1, a2, a3) }
}

/// AMD's hypercall instruction; as [`try_vmcall`].
///
/// # Safety
/// As for [`try_vmcall`].
pub unsafe fn try_vmmcall(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> Result<u64, Fault> {
    // SAFETY: the caller vouches for the hypercall; #UD/#GP are recovered.
    unsafe { hypercall!("vmmcall", nr, a0, a1, a2, a3) }
}

/// The hypercall instruction native to this CPU's vendor, as Linux's
/// `kvm_hypercall` picks it (KVM patches or emulates the other one).
///
/// # Safety
/// As for [`try_vmcall`].
pub unsafe fn try_hypercall(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> Result<u64, Fault> {
    // SAFETY: forwarded; the caller vouches for the hypercall.
    unsafe {
        match cpuid::vendor() {
            Vendor::Amd => try_vmmcall(nr, a0, a1, a2, a3),
            Vendor::Intel | Vendor::Other => try_vmcall(nr, a0, a1, a2, a3),
        }
    }
}

/// What [`probe_cr0`] / [`probe_cr4`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrProbe {
    pub before: u64,
    pub written: u64,
    /// The write's fault, if it raised one.
    pub fault: Option<Fault>,
    /// The register right after the write, before any restore.
    pub after: u64,
    /// `None` when the register kept its value; otherwise the result of
    /// writing `before` back.
    pub restore: Option<Result<(), Fault>>,
}

/// One guarded sequence for a MOV to CR that should be refused: read the old
/// value, write the new one, read back, and if the register changed write the
/// old value back, all before any other code runs (a fault's handler aside).
/// So a write a broken hypervisor wrongly accepts (CR0.PE cleared in long
/// mode, a reserved bit) is undone at the next instruction.
macro_rules! probe_cr {
    ($cr:literal, $value:expr) => {{
        let value: u64 = $value;
        let (before, after, write_faulted, restored, restore_faulted): (u64, u64, u64, u64, u64);
        extable::begin();
        // SAFETY (for the caller): both guarded instructions resume at their
        // own fixup with every register intact; the fixup labels only record
        // which of them faulted.
        asm!(
            "xor {wf:e}, {wf:e}",
            "xor {rs:e}, {rs:e}",
            "xor {rf:e}, {rf:e}",
            concat!("mov {before}, ", $cr),
            concat!("7770: mov ", $cr, ", {value}"),
            "jmp 2f",
            "7771: mov {wf:e}, 1",
            "2:",
            concat!("mov {after}, ", $cr),
            "cmp {after}, {before}",
            "je 4f",
            "mov {rs:e}, 1",
            concat!("7772: mov ", $cr, ", {before}"),
            "jmp 4f",
            "7773: mov {rf:e}, 1",
            "4:",
            ".pushsection ukci_extable, \"a\"",
            ".balign 8",
            ".quad 7770b, 7771b, 7771b",
            ".quad 7772b, 7773b, 7773b",
            ".popsection",
            value = in(reg) value,
            before = out(reg) before,
            after = out(reg) after,
            wf = out(reg) write_faulted,
            rs = out(reg) restored,
            rf = out(reg) restore_faulted,
            options(nostack),
        );
        let mut faults = extable::end_two().into_iter().flatten();
        let fault = (write_faulted != 0).then(|| faults.next().unwrap_or(UNKNOWN_FAULT));
        let restore = (restored != 0).then(|| {
            if restore_faulted != 0 {
                Err(faults.next().unwrap_or(UNKNOWN_FAULT))
            } else {
                Ok(())
            }
        });
        CrProbe {
            before,
            written: value,
            fault,
            after,
            restore,
        }
    }};
}

/// Stands in for a fault whose record was lost (cannot happen: two slots).
const UNKNOWN_FAULT: Fault = Fault {
    vector: 0xff,
    error_code: 0,
    cr2: 0,
    rip: 0,
};

/// Probes a MOV to CR0 with `value`; see [`CrProbe`].
///
/// # Safety
/// If the write is accepted it is in effect for the two instructions until
/// the restore: `value` must keep the next instructions running (see
/// `ukci_crpin`'s module docs for which values are never attempted).
pub unsafe fn probe_cr0(value: u64) -> CrProbe {
    // SAFETY: the caller vouches for the value; see probe_cr!.
    unsafe { probe_cr!("cr0", value) }
}

/// Probes a MOV to CR4 with `value`; see [`CrProbe`].
///
/// # Safety
/// As for [`probe_cr0`].
pub unsafe fn probe_cr4(value: u64) -> CrProbe {
    // SAFETY: the caller vouches for the value; see probe_cr!.
    unsafe { probe_cr!("cr4", value) }
}
