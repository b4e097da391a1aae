//! The control-register checks (`cr-pin.*`, `cr.arch.*`). Their logic is
//! `ukci_crpin`, tested on the host against CPU models; this file is the
//! real CPU behind its `Cpu` and `Mmu` traits, and the guest-side
//! preconditions those traits state.

use super::Env;
use core::arch::{asm, naked_asm};
use ukci_crpin::{Cpu, Mmu, Probe, Prot, UmipInsn};
use ukci_guest::arch::fault::{self, CrProbe};
use ukci_guest::arch::paging::{self, PageTableFlags as Flags};
use ukci_guest::arch::{cpuid, regs, user};
use ukci_guest::report;

/// The test page the `Mmu` checks remap.
const TEST_PAGE: usize = 0;

/// The processor, as `ukci_crpin` sees it.
struct RealCpu;

fn conv(f: fault::Fault) -> ukci_crpin::Fault {
    ukci_crpin::Fault {
        vector: f.vector,
        error_code: f.error_code,
        cr2: f.cr2,
    }
}

fn probe(p: CrProbe) -> Probe {
    Probe {
        before: p.before,
        written: p.written,
        fault: p.fault.map(conv),
        after: p.after,
        restore: p.restore.map(|r| r.map_err(conv)),
    }
}

impl Cpu for RealCpu {
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = cpuid::cpuid(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    fn read_cr0(&mut self) -> u64 {
        regs::cr0()
    }

    fn read_cr3(&mut self) -> u64 {
        regs::cr3()
    }

    fn read_cr4(&mut self) -> u64 {
        regs::cr4()
    }

    fn write_cr0(&mut self, value: u64) -> Result<(), ukci_crpin::Fault> {
        // SAFETY: ukci_crpin writes CR0 only with WP toggled or with values
        // its checks expect to be refused (through probe_cr0 below when a
        // wrongful acceptance could hurt); the guest runs with either WP.
        unsafe { fault::try_write_cr0(value) }.map_err(conv)
    }

    fn write_cr4(&mut self, value: u64) -> Result<(), ukci_crpin::Fault> {
        // SAFETY: ukci_crpin sets only bits that cannot disturb the guest
        // under the preconditions `preconditions` establishes (supervisor
        // mappings, interrupts off, PKRU/PKRS 0); SMAP is tracked for the
        // accesses that need STAC.
        unsafe { fault::try_write_cr4(value) }.map_err(conv)
    }

    fn rdmsr(&mut self, msr: u32) -> Result<u64, ukci_crpin::Fault> {
        fault::try_rdmsr(msr).map_err(conv)
    }

    fn wrmsr(&mut self, msr: u32, value: u64) -> Result<(), ukci_crpin::Fault> {
        // SAFETY: ukci_crpin writes only the CR-pinning MSRs, with pins the
        // guest already satisfies or never uses (see its `pin` module).
        unsafe { fault::try_wrmsr(msr, value) }.map_err(conv)
    }

    fn hypercall(&mut self, nr: u64, [a0, a1, a2, a3]: [u64; 4]) -> Result<u64, ukci_crpin::Fault> {
        // SAFETY: only KVM_HC_LOCK_CR_UPDATE, with locks the guest satisfies.
        unsafe { fault::try_hypercall(nr, a0, a1, a2, a3) }.map_err(conv)
    }

    fn probe_cr0(&mut self, value: u64) -> Probe {
        // SAFETY: the probe restores CR0 in the same instruction sequence;
        // ukci_crpin never probes a value that breaks the next instructions.
        probe(unsafe { fault::probe_cr0(value) })
    }

    fn probe_cr4(&mut self, value: u64) -> Probe {
        // SAFETY: as for probe_cr0.
        probe(unsafe { fault::probe_cr4(value) })
    }
}

/// STAC/CLAC around `f` when asked to. A fault inside comes back through
/// `iretq` with AC as it was, so CLAC runs either way. Without `ac` neither
/// runs: AC is clear in the guest, and kvm_pvm fails to emulate CLAC
/// (measured: "KVM internal error", the VM wedged).
fn with_ac<R>(ac: bool, f: impl FnOnce() -> R) -> R {
    if ac {
        // SAFETY: STAC only sets EFLAGS.AC; callers pass `ac` only with SMAP.
        unsafe { asm!("stac", options(nomem, nostack)) };
    }
    let r = f();
    if ac {
        // SAFETY: CLAC only clears EFLAGS.AC.
        unsafe { asm!("clac", options(nomem, nostack)) };
    }
    r
}

impl Mmu for RealCpu {
    fn map_test_page(&mut self, prot: Prot) -> u64 {
        let addr = paging::test_page(TEST_PAGE);
        let mut flags = Flags::PRESENT;
        if prot.user {
            flags |= Flags::USER_ACCESSIBLE;
        }
        if prot.writable {
            flags |= Flags::WRITABLE;
        }
        if !prot.exec && regs::efer() & regs::EFER_NXE != 0 {
            flags |= Flags::NO_EXECUTE;
        }
        // SAFETY: the test page belongs to the running check.
        unsafe { paging::set_flags_4k(addr, flags) }.expect("test pages are identity-mapped");
        addr
    }

    fn read_u8(&mut self, addr: u64, ac: bool) -> Result<u8, ukci_crpin::Fault> {
        let mut v: u8 = 0;
        // SAFETY: `addr` is the check's test page; a fault is recovered.
        let r = with_ac(ac, || unsafe {
            ukci_guest::try_asm!("mov {v}, byte ptr [{a}]", a = in(reg) addr, v = inout(reg_byte) v,
                                 options(nostack))
        });
        r.map(|()| v).map_err(conv)
    }

    fn write_u8(&mut self, addr: u64, value: u8, ac: bool) -> Result<(), ukci_crpin::Fault> {
        // SAFETY: `addr` is the check's test page; a fault is recovered.
        let r = with_ac(ac, || unsafe {
            ukci_guest::try_asm!("mov byte ptr [{a}], {v}", a = in(reg) addr, v = in(reg_byte) value,
                                 options(nostack))
        });
        r.map_err(conv)
    }

    fn call(&mut self, addr: u64) -> Result<(), ukci_crpin::Fault> {
        // SAFETY: the check put a RET at `addr`.
        unsafe { fault::try_call(addr) }.map_err(conv)
    }

    fn user_insn(&mut self, insn: UmipInsn) -> Result<u64, ukci_crpin::Fault> {
        let f: user::UserFn = match insn {
            UmipInsn::Sgdt => user_sgdt,
            UmipInsn::Sidt => user_sidt,
            UmipInsn::Sldt => user_sldt,
            UmipInsn::Smsw => user_smsw,
            UmipInsn::Str => user_str,
        };
        // SAFETY: the snippets are in .user_text and return.
        unsafe { user::run(f, 0) }.map_err(conv)
    }
}

/// SGDT at CPL 3: returns the GDT base it stored.
#[unsafe(naked)]
#[unsafe(link_section = ".user_text")]
extern "C" fn user_sgdt(_: u64) -> u64 {
    naked_asm!("sgdt [rsp - 16]", "mov rax, [rsp - 14]", "ret")
}

/// SIDT at CPL 3: returns the IDT base it stored.
#[unsafe(naked)]
#[unsafe(link_section = ".user_text")]
extern "C" fn user_sidt(_: u64) -> u64 {
    naked_asm!("sidt [rsp - 16]", "mov rax, [rsp - 14]", "ret")
}

/// SLDT at CPL 3: returns the LDT selector.
#[unsafe(naked)]
#[unsafe(link_section = ".user_text")]
extern "C" fn user_sldt(_: u64) -> u64 {
    naked_asm!("xor eax, eax", "sldt ax", "ret")
}

/// SMSW at CPL 3: returns CR0[15:0].
#[unsafe(naked)]
#[unsafe(link_section = ".user_text")]
extern "C" fn user_smsw(_: u64) -> u64 {
    naked_asm!("xor eax, eax", "smsw rax", "ret")
}

/// STR at CPL 3: returns the TSS selector.
#[unsafe(naked)]
#[unsafe(link_section = ".user_text")]
extern "C" fn user_str(_: u64) -> u64 {
    naked_asm!("xor eax, eax", "str ax", "ret")
}

/// MSR_IA32_PKRS.
const MSR_PKRS: u32 = 0x6e1;
const CR4_PKE: u64 = 1 << 22;

/// Establishes what `ukci_crpin::Cpu` requires before a check may set
/// CR4.SMEP, SMAP, PKE, PKS, UMIP or FSGSBASE: interrupts off; the guest's
/// code, stack and data on supervisor pages; PKRU and IA32_PKRS zero.
/// Reports a FAIL `preconditions` and returns false if one cannot be met.
fn preconditions() -> bool {
    let mut bad: Option<(&str, u64)> = None;
    let rflags = regs::rflags();
    if rflags & (1 << 9) != 0 {
        bad = Some(("rflags.IF set", rflags));
    }
    let rsp: u64;
    // SAFETY: reads RSP.
    unsafe { asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags)) };
    static DATA: u8 = 0;
    for (what, addr) in [
        ("code", preconditions as *const () as u64),
        ("stack", rsp),
        ("data", &raw const DATA as u64),
    ] {
        match paging::translate(addr) {
            Some(m) if !m.flags.contains(Flags::USER_ACCESSIBLE) => {}
            _ => bad = bad.or(Some((what, addr))),
        }
    }
    let l7 = cpuid::cpuid(7, 0);
    if cpuid::features().pku {
        // PKRU is only reachable with CR4.PKE: set it for RDPKRU/WRPKRU.
        let cr4 = regs::cr4();
        // SAFETY: PKU is in CPUID; with supervisor-only mappings, PKE does
        // not change any access the guest makes, and CR4 is put back.
        unsafe {
            fault::try_write_cr4(cr4 | CR4_PKE).expect("CPUID has PKU");
            let pkru: u32;
            asm!("rdpkru", out("eax") pkru, in("ecx") 0, out("edx") _, options(nomem, nostack));
            if pkru != 0 {
                asm!("wrpkru", in("eax") 0, in("ecx") 0, in("edx") 0, options(nomem, nostack));
            }
            fault::try_write_cr4(cr4).expect("CR4 back as it was");
        }
    }
    if l7.ecx & (1 << 31) != 0 {
        // SAFETY: PKS is in CPUID, so the MSR exists; 0 grants every access.
        if fault::try_rdmsr(MSR_PKRS) != Ok(0) && unsafe { fault::try_wrmsr(MSR_PKRS, 0) }.is_err()
        {
            bad = bad.or(Some(("IA32_PKRS not writable", 0)));
        }
    }
    match bad {
        None => true,
        Some((what, v)) => {
            report::check(
                false,
                "preconditions",
                format_args!("{what}: {v:#x} (ukci_crpin needs supervisor-only mappings, IF=0)"),
            );
            false
        }
    }
}

/// Runs the `ukci_crpin` check `name` on the real CPU.
fn run(name: &'static str) {
    if !preconditions() {
        return;
    }
    let mut cpu = RealCpu;
    report::lend(|r| {
        // The check names itself; drop the prefix the check loop pushed.
        r.pop();
        let known = ukci_crpin::run_mmu(name, &mut cpu, r);
        r.push(name);
        if !known {
            r.check(
                false,
                "not in ukci_crpin",
                format_args!("registered in the guest but unknown to ukci_crpin"),
            );
        }
    });
}

macro_rules! checks {
    ($($f:ident => $name:ident),* $(,)?) => {
        $(pub fn $f(_: &Env) { run(ukci_crpin::$name) })*
    };
}

checks! {
    pin_detect => DETECT,
    pin_v3_high => V3_HIGH,
    pin_v3_low => V3_LOW,
    pin_v1 => V1,
    pin_heki => HEKI,
    cr0_reserved => CR0_RESERVED,
    cr4_reserved => CR4_RESERVED,
    cr4_features => CR4_FEATURES,
    cr0_combinations => CR0_COMBINATIONS,
    cr0_wp => CR0_WP,
    smep => SMEP,
    smap => SMAP,
    umip => UMIP,
}
