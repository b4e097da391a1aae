//! `fault.selftest`: the fault-recovery machinery every later check relies
//! on. Each exception is raised on purpose, must arrive with the right
//! vector, error code and CR2, and the guest must carry on afterwards.

use super::Env;
use ukci_guest::arch::fault::{self, Fault};
use ukci_guest::arch::idt::vector;
use ukci_guest::arch::paging::{self, PageTableFlags as Flags};
use ukci_guest::arch::try_asm;
use ukci_guest::arch::{regs, user};
use ukci_guest::report;

pub fn selftest(_: &Env) {
    // SAFETY: ud2 only raises #UD.
    let ud = unsafe { try_asm!("ud2", options(nomem, nostack)) };
    expect(ud, vector::UD, None, "#UD from ud2");

    // SAFETY: a load from a non-canonical address raises #GP(0) and reads
    // nothing.
    let gp = unsafe {
        try_asm!("mov {v}, [{a}]", a = in(reg) 0x8000_0000_0000_0000u64, v = out(reg) _,
                 options(nostack))
    };
    expect_gp0(gp, "#GP on a non-canonical load");

    // SAFETY: dividing by zero raises #DE; the registers are declared.
    let de = unsafe {
        try_asm!("xor edx, edx; div ecx", in("ecx") 0u32, inout("eax") 1u32 => _, out("edx") _,
                 options(nomem, nostack))
    };
    expect(de, vector::DE, None, "#DE on a divide by zero");

    page_faults();
    msr_round_trip();
    ring3();
    // Reaching this line at all proves the recoveries resumed cleanly.
    let rflags = regs::rflags();
    report::check(
        rflags & (1 << 9) == 0,
        "interrupts stay off after recovery",
        format_args!("rflags={rflags:#x}"),
    );
}

/// A fault of `want` (with `error` if given) in `got`, or a FAIL saying what
/// happened instead.
fn expect(got: Result<(), Fault>, want: u8, error: Option<u64>, name: &str) -> bool {
    match got {
        Ok(()) => report::check(false, name, format_args!("no exception")),
        Err(f) => report::check(
            f.vector == want && error.is_none_or(|e| e == f.error_code),
            name,
            format_args!("{} ({f})", f.detail()),
        ),
    }
}

fn expect_gp0(got: Result<(), Fault>, name: &str) -> bool {
    expect(got, vector::GP, Some(0), name)
}

/// #PF error code bits.
const PF_PRESENT: u64 = 1 << 0;
const PF_WRITE: u64 = 1 << 1;
const PF_USER: u64 = 1 << 2;
const PF_FETCH: u64 = 1 << 4;

fn page_faults() {
    let page = paging::test_page(2);
    let addr = page + 0x10;

    // SAFETY: test pages belong to the running check.
    let old = unsafe { paging::set_flags_4k(page, Flags::empty()) };
    // SAFETY: the page is not present: the write faults and stores nothing.
    let r = unsafe { fault::try_write_u64(addr, 1) };
    pf_result(
        r,
        addr,
        PF_WRITE,
        "#PF on a write to a not-present page",
        old.is_ok(),
    );

    // SAFETY: as above; present again but read-only, and CR0.WP is set.
    let old = unsafe { paging::set_flags_4k(page, Flags::PRESENT) };
    // SAFETY: the write faults (CR0.WP) and stores nothing.
    let r = unsafe { fault::try_write_u64(addr, 1) };
    pf_result(
        r,
        addr,
        PF_PRESENT | PF_WRITE,
        "#PF on a write to a read-only page",
        old.is_ok(),
    );

    // SAFETY: not present again: the call faults on the instruction fetch
    // at the page, before anything there runs.
    let r = unsafe {
        let _ = paging::set_flags_4k(page, Flags::empty());
        fault::try_call(page)
    };
    // The fetch bit is reported only with EFER.NXE (or CR4.SMEP) on.
    let fetch = if regs::efer() & regs::EFER_NXE != 0 {
        PF_FETCH
    } else {
        0
    };
    pf_result(
        r,
        page,
        fetch,
        "#PF on a call into a not-present page",
        old.is_ok(),
    );
    // SAFETY: back to present and read-only.
    let _ = unsafe { paging::set_flags_4k(page, Flags::PRESENT) };

    // SAFETY: the page is readable: the read succeeds.
    let read = unsafe { fault::try_read_u64(addr) };
    match read {
        Ok(v) => report::check(
            true,
            "read from a read-only page",
            format_args!("value={v:#x}"),
        ),
        Err(f) => report::check(
            false,
            "read from a read-only page",
            format_args!("{}", f.detail()),
        ),
    };
}

fn pf_result(r: Result<(), Fault>, addr: u64, error: u64, name: &str, mapped: bool) {
    match r {
        Err(f) => report::check(
            mapped && f.vector == vector::PF && f.error_code == error && f.cr2 == addr,
            name,
            format_args!(
                "{} ({f}) expected error={error:#x} cr2={addr:#x}",
                f.detail()
            ),
        ),
        Ok(()) => report::check(false, name, format_args!("no exception, mapped={mapped}")),
    };
}

fn msr_round_trip() {
    let r = fault::try_rdmsr(regs::MSR_EFER);
    report::check(
        r == Ok(regs::efer()),
        "try_rdmsr(EFER) returns EFER",
        format_args!("{r:?}"),
    );
}

#[unsafe(naked)]
#[unsafe(link_section = ".user_text")]
extern "C" fn user_add_cpl(arg: u64) -> u64 {
    // Returns arg + 1 in the high bits and the CPL in the low two.
    core::arch::naked_asm!(
        "lea rax, [rdi + 1]",
        "shl rax, 8",
        "mov rcx, cs",
        "and ecx, 3",
        "or rax, rcx",
        "ret"
    )
}

#[unsafe(naked)]
#[unsafe(link_section = ".user_text")]
extern "C" fn user_hlt(_: u64) -> u64 {
    core::arch::naked_asm!("hlt", "ret")
}

#[unsafe(naked)]
#[unsafe(link_section = ".user_text")]
extern "C" fn user_load(addr: u64) -> u64 {
    core::arch::naked_asm!("mov rax, [rdi]", "ret")
}

fn ring3() {
    // SAFETY: the snippet is in .user_text and returns.
    let r = unsafe { user::run(user_add_cpl, 41) };
    report::check(
        r == Ok(42 << 8 | 3),
        "ring 3 round trip",
        format_args!("result={r:x?} expected=Ok({:#x})", 42 << 8 | 3),
    );

    // SAFETY: hlt in ring 3 raises #GP(0).
    let r = unsafe { user::run(user_hlt, 0) };
    expect_gp0(r.map(|_| ()), "#GP from hlt in ring 3");

    let kernel = paging::test_page(3);
    // SAFETY: the load from a supervisor page faults in ring 3.
    let r = unsafe { user::run(user_load, kernel) };
    pf_result(
        r.map(|_| ()),
        kernel,
        PF_PRESENT | PF_USER,
        "#PF on a ring-3 read of a kernel page",
        true,
    );

    // SAFETY: test page 3 is ours; user-readable for the next run only.
    let old = unsafe { paging::set_flags_4k(kernel, paging::KERNEL_RW | Flags::USER_ACCESSIBLE) };
    // SAFETY: the test page holds plain data.
    unsafe { (kernel as *mut u64).write_volatile(0x5a5a) };
    // SAFETY: the page is user-readable now: the load succeeds.
    let r = unsafe { user::run(user_load, kernel) };
    report::check(
        old.is_ok() && r == Ok(0x5a5a),
        "ring-3 read of a user page",
        format_args!("result={r:?}"),
    );
}
