//! The GDT (kernel and user segments, the TSS) and the stacks exceptions run
//! on. The order follows SYSCALL/SYSRET's expectations (kernel code, kernel
//! data, user data, user code), so a later `syscall` path needs no new GDT.

use crate::sync::Global;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
/// With RPL 3, as loaded into CS/SS for ring 3.
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
pub const TSS: u16 = 0x28;

/// IST slots (1-based, as IDT gates name them). General exceptions get their
/// own stack too, so a fault from ring 3 or on a broken kernel stack still
/// lands somewhere sane; #DF, NMI and #MC can arrive in the middle of another
/// exception and must not overwrite its frame.
pub const IST_EXCEPTION: u8 = 1;
pub const IST_DOUBLE_FAULT: u8 = 2;
pub const IST_NMI: u8 = 3;
pub const IST_MACHINE_CHECK: u8 = 4;

const STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

static STACKS: Global<[Stack; 4]> = Global::new([const { Stack([0; STACK_SIZE]) }; 4]);
static TSS_SEGMENT: Global<TaskStateSegment> = Global::new(TaskStateSegment::new());
static GDT: Global<GlobalDescriptorTable> = Global::new(GlobalDescriptorTable::new());

fn stack_top(i: usize) -> VirtAddr {
    // SAFETY: only the address is taken; the stacks are never read as Rust data.
    let base = unsafe { (&raw mut (*STACKS.get())[i]) as u64 };
    VirtAddr::new(base + STACK_SIZE as u64)
}

pub fn init() {
    // SAFETY: runs once at boot before any exception can be taken; the
    // statics live forever, as `lgdt`/`ltr` require.
    unsafe {
        let tss = &mut *TSS_SEGMENT.get();
        for slot in [IST_EXCEPTION, IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK] {
            let i = usize::from(slot - 1);
            tss.interrupt_stack_table[i] = stack_top(i);
        }
        // Every gate uses an IST, so RSP0 is only a fallback.
        tss.privilege_stack_table[0] = stack_top(0);

        let gdt = &mut *GDT.get();
        let selectors = [
            gdt.append(Descriptor::kernel_code_segment()),
            gdt.append(Descriptor::kernel_data_segment()),
            gdt.append(Descriptor::user_data_segment()),
            gdt.append(Descriptor::user_code_segment()),
            gdt.append(Descriptor::tss_segment(&*TSS_SEGMENT.get())),
        ];
        let want = [KERNEL_CS, KERNEL_DS, USER_DS, USER_CS, TSS];
        debug_assert!(selectors.iter().zip(want).all(|(s, w)| s.0 == w));
        (*GDT.get()).load();
        CS::set_reg(SegmentSelector(KERNEL_CS));
        SS::set_reg(SegmentSelector(KERNEL_DS));
        DS::set_reg(SegmentSelector(KERNEL_DS));
        ES::set_reg(SegmentSelector(KERNEL_DS));
        load_tss(SegmentSelector(TSS));
    }
}
