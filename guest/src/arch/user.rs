//! Running a snippet in ring 3 and coming back.
//!
//! Ring-3 code lives in the `.user_text` section (page-aligned by linker.ld,
//! mapped user-accessible by [`init`]) and is an `extern "C" fn(u64) -> u64`,
//! typically a naked function:
//!
//! ```ignore
//! #[unsafe(naked)]
//! #[unsafe(link_section = ".user_text")]
//! extern "C" fn umip_sgdt(_: u64) -> u64 {
//!     core::arch::naked_asm!("sgdt [rsp - 16]", "ret")
//! }
//! let r = unsafe { user::run(umip_sgdt, 0) }; // Err(#GP(0)) with CR4.UMIP
//! ```
//!
//! [`run`] enters it with `iretq` on a user stack whose top holds the address
//! of [`ukci_user_return`], a `ud2` in the user section: when the snippet
//! returns, that `ud2` traps, and the dispatcher treats a #UD at exactly that
//! address as "returned RAX". Any other exception in ring 3 ends the run with
//! that `Fault`. No `int n` (which wedges kvm_pvm) and no SYSCALL setup.

use super::fault::Fault;
use super::idt::{TrapFrame, vector};
use super::paging::{self, Mapping, PAGE_4K, Page, PageTableFlags as Flags};
use super::{extable, gdt, regs};
use crate::sync::Global;
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A function in `.user_text`.
pub type UserFn = extern "C" fn(u64) -> u64;

global_asm!(
    ".pushsection .user_text, \"ax\"",
    ".global ukci_user_return",
    "ukci_user_return:",
    "    ud2",
    ".popsection",
);

unsafe extern "C" {
    fn ukci_user_return();
    static __user_text_start: u8;
    static __user_text_end: u8;
}

#[unsafe(link_section = ".bss.pages")]
static STACK: Global<Page> = Global::new(Page([0; PAGE_4K as usize]));

fn user_text() -> core::ops::Range<u64> {
    (&raw const __user_text_start) as u64..(&raw const __user_text_end) as u64
}

fn stack() -> u64 {
    STACK.get() as u64
}

/// Makes the user text (read-only) and the user stack accessible from ring 3.
pub fn init() {
    let text = user_text();
    for page in (text.start..text.end).step_by(PAGE_4K as usize) {
        let flags = Flags::PRESENT | Flags::USER_ACCESSIBLE;
        // SAFETY: these pages hold only `.user_text` code, which nothing writes.
        unsafe { paging::set_flags_4k(page, flags) }.expect("user text is identity-mapped");
    }
    let flags = Flags::PRESENT | Flags::WRITABLE | Flags::USER_ACCESSIBLE | Flags::NO_EXECUTE;
    let flags = if regs::efer() & regs::EFER_NXE != 0 {
        flags
    } else {
        flags - Flags::NO_EXECUTE
    };
    // SAFETY: the user stack page is used by ring-3 runs only.
    unsafe {
        paging::map_4k(
            stack(),
            Mapping {
                phys: stack(),
                flags,
            },
        )
    }
    .expect("user stack is identity-mapped");
}

/// State shared with the dispatcher for the one run in flight.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static KERNEL_RSP: AtomicU64 = AtomicU64::new(0);
static RESUME: AtomicU64 = AtomicU64::new(0);
static RETURNED: AtomicBool = AtomicBool::new(false);
static RETURN_VALUE: AtomicU64 = AtomicU64::new(0);

/// Runs `f(arg)` in ring 3 with interrupts off and IOPL 0. `Ok(rax)` if it
/// returned, `Err(fault)` for the exception that ended it.
///
/// # Safety
/// `f` must be in `.user_text` (checked: a panic otherwise) and must end
/// by returning or by an exception (an endless loop never comes back).
pub unsafe fn run(f: UserFn, arg: u64) -> Result<u64, Fault> {
    let entry = f as *const () as u64;
    assert!(
        user_text().contains(&entry),
        "user::run: {entry:#x} is not in .user_text"
    );
    let top = stack() + PAGE_4K - 16;
    let smap = regs::cr4() & regs::CR4_SMAP != 0;
    // SAFETY: the user stack is ours; with SMAP on, a supervisor write to a
    // user page needs RFLAGS.AC, which stac/clac set and clear around it.
    unsafe {
        if smap {
            asm!("stac", options(nomem, nostack));
        }
        (top as *mut u64).write_volatile(ukci_user_return as *const () as u64);
        if smap {
            asm!("clac", options(nomem, nostack));
        }
    }
    extable::begin();
    RETURNED.store(false, Ordering::Relaxed);
    ACTIVE.store(true, Ordering::Release);
    // SAFETY: iretq to ring 3 at `entry` on the user stack; the dispatcher
    // brings the CPU back to label 2 with RSP = KERNEL_RSP, on which RBX and
    // RBP (which asm! cannot clobber) were saved. All other registers are
    // declared clobbered.
    unsafe {
        asm!(
            "push rbx",
            "push rbp",
            "lea rax, [rip + 2f]",
            "mov [r8], rax",
            "mov [r9], rsp",
            "push {user_ss}",
            "push rdx",
            "push {rflags}",
            "push {user_cs}",
            "push rsi",
            "iretq",
            "2:",
            "pop rbp",
            "pop rbx",
            user_ss = const gdt::USER_DS,
            user_cs = const gdt::USER_CS,
            // Reserved bit 1 only: IF, DF, AC and IOPL all clear.
            rflags = const 0x2,
            in("rdi") arg,
            in("rsi") entry,
            in("rdx") top,
            in("r8") RESUME.as_ptr(),
            in("r9") KERNEL_RSP.as_ptr(),
            out("rax") _,
            out("r12") _,
            out("r13") _,
            out("r14") _,
            out("r15") _,
            clobber_abi("C"),
        );
    }
    if RETURNED.load(Ordering::Acquire) {
        Ok(RETURN_VALUE.load(Ordering::Relaxed))
    } else {
        extable::end().map(|()| 0)
    }
}

/// The dispatcher's hook for exceptions from ring 3: ends the run in flight
/// and resumes the kernel in [`run`]. Returns false if no run was active.
pub(super) fn on_trap(frame: &mut TrapFrame) -> bool {
    if !ACTIVE.swap(false, Ordering::Acquire) {
        return false;
    }
    if frame.vector() == vector::UD && frame.rip == ukci_user_return as *const () as u64 {
        RETURN_VALUE.store(frame.rax, Ordering::Relaxed);
        RETURNED.store(true, Ordering::Release);
    } else {
        extable::record(frame);
    }
    frame.rip = RESUME.load(Ordering::Relaxed);
    frame.rsp = KERNEL_RSP.load(Ordering::Relaxed);
    frame.cs = u64::from(gdt::KERNEL_CS);
    frame.ss = u64::from(gdt::KERNEL_DS);
    frame.rflags = 0x2;
    true
}
