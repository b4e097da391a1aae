//! Everything that touches the CPU directly. Checks use the safe wrappers
//! here (`regs`, `cpuid`, `fault`, `paging`, `user`) and never write their
//! own descriptor tables or trap handling.

pub mod cpuid;
pub mod extable;
pub mod fault;
pub mod gdt;
pub mod idt;
pub mod paging;
pub mod port;
pub mod regs;
pub mod tsc;
pub mod user;

pub use crate::try_asm;

use crate::bootinfo::BootInfo;
use core::arch::global_asm;

global_asm!(include_str!("boot.s"), options(att_syntax));
global_asm!(include_str!("traps.s"));

/// Loads the guest's own GDT/TSS and IDT, refines the identity map from the
/// memory map and makes the ring-3 pages user-accessible. Faults are
/// recoverable (or reported) from here on.
pub fn init(boot: &BootInfo) {
    gdt::init();
    idt::init();
    paging::init(boot);
    user::init();
}
