//! The IDT for all 32 exception vectors and the trap dispatcher.
//!
//! The IDT is our own rather than the `x86_64` crate's: that one does not let
//! a handler be installed on the reserved vectors (15, 22-27, 31), and a test
//! guest wants to see a hypervisor inject one of those rather than
//! triple-fault.
//!
//! Every vector goes through the stubs in `traps.s` to [`trap_dispatch`],
//! which tries, in order: a ring-3 run (`user`), the exception table
//! (`extable`), and otherwise reports an abort.

use super::{extable, gdt, paging, regs, user};
use crate::sync::Global;
use crate::{exit, report};
use core::sync::atomic::{AtomicU32, Ordering};
use x86_64::VirtAddr;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;

/// Exception vectors by mnemonic.
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const MF: u8 = 16;
    pub const AC: u8 = 17;
    pub const MC: u8 = 18;
    pub const XM: u8 = 19;
    pub const VE: u8 = 20;
    pub const CP: u8 = 21;
    pub const HV: u8 = 28;
    pub const VC: u8 = 29;
    pub const SX: u8 = 30;
}

/// `#GP`, `#PF`, ...; `#31` style for reserved vectors.
pub fn mnemonic(v: u8) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25",
        "#26", "#27", "#HV", "#VC", "#SX", "#31",
    ];
    NAMES.get(usize::from(v)).copied().unwrap_or("#??")
}

/// Whether the CPU pushes an error code for this vector.
pub const fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// The stack `traps.s` builds: general registers, then vector and error code
/// (0 if the CPU pushed none), then the CPU's own frame. The dispatcher may
/// change any field; `iretq` resumes from what it says.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl TrapFrame {
    pub fn vector(&self) -> u8 {
        self.vector as u8
    }

    pub fn from_user(&self) -> bool {
        self.cs & 3 == 3
    }
}

/// A 64-bit interrupt gate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// Present, DPL 0, 64-bit interrupt gate: IF is cleared on entry, and
    /// `int n` from ring 3 cannot reach it.
    const fn interrupt(handler: u64, ist: u8) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: gdt::KERNEL_CS,
            ist,
            attributes: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 32]);

static IDT: Global<Idt> = Global::new(Idt([Gate::MISSING; 32]));

unsafe extern "C" {
    /// The 32 entry stubs in `traps.s`, by vector.
    static trap_stubs: [u64; 32];
}

fn ist_for(v: u8) -> u8 {
    match v {
        vector::NMI => gdt::IST_NMI,
        vector::DF => gdt::IST_DOUBLE_FAULT,
        vector::MC => gdt::IST_MACHINE_CHECK,
        _ => gdt::IST_EXCEPTION,
    }
}

pub fn init() {
    // SAFETY: runs once at boot; the IDT is a static that lives forever and
    // every gate points at a stub in traps.s on an IST set up by gdt::init.
    unsafe {
        let idt = &mut *IDT.get();
        for (v, gate) in idt.0.iter_mut().enumerate() {
            *gate = Gate::interrupt(trap_stubs[v], ist_for(v as u8));
        }
        lidt(&DescriptorTablePointer {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: VirtAddr::from_ptr(IDT.get()),
        });
    }
}

/// How deep the dispatcher is nested. Anything but 1 inside it means the
/// dispatcher (or something it called) faulted.
static DEPTH: AtomicU32 = AtomicU32::new(0);

#[unsafe(no_mangle)]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    if DEPTH.fetch_add(1, Ordering::Relaxed) != 0 {
        exit::emergency("exception inside the trap dispatcher");
    }
    let handled = if frame.from_user() {
        user::on_trap(frame)
    } else {
        extable::on_trap(frame)
    };
    if !handled {
        unexpected(frame);
    }
    DEPTH.fetch_sub(1, Ordering::Relaxed);
}

fn unexpected(f: &TrapFrame) -> ! {
    let v = f.vector();
    let cr2 = if v == vector::PF { regs::cr2() } else { 0 };
    let guard = paging::stack_guard();
    let what = if v == vector::PF && (guard..guard + paging::PAGE_4K).contains(&cr2) {
        "kernel stack overflow: "
    } else {
        ""
    };
    report::abort(format_args!(
        "{what}unexpected {} vector={} error={:#x} rip={:#x} cs={:#x} rsp={:#x} rflags={:#x} cr2={:#x}",
        mnemonic(v),
        v,
        f.error_code,
        f.rip,
        f.cs,
        f.rsp,
        f.rflags,
        cr2
    ))
}

/// Loads an IDT with limit 0, so the next exception cannot be delivered:
/// #GP, then #DF, then a triple fault (shutdown; QEMU with `-no-reboot` exits).
///
/// # Safety
/// Every exception after this is fatal to the VM.
pub unsafe fn load_empty_idt() {
    // SAFETY: the caller accepts that the VM will shut down at the next fault.
    unsafe {
        lidt(&DescriptorTablePointer {
            limit: 0,
            base: VirtAddr::zero(),
        })
    };
}
