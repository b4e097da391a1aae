//! The guest's one address space: an identity map of the first 4 GiB.
//!
//! boot.s maps it with static 2 MiB pages; [`init`] marks pages that hold RAM
//! write-back and everything else (MMIO) uncached, from the PVH memory map.
//! For checks that need page-level control (CR0.WP, SMEP, SMAP, NX, #PF),
//! [`map_4k`] splits a 2 MiB page into 4 KiB pages on demand and changes one
//! of them. [`test_page`] hands out pages reserved for exactly that, which
//! the check runner resets to plain kernel pages between checks.

use super::{cpuid, regs};
use crate::bootinfo::BootInfo;
use crate::sync::Global;
use core::arch::asm;
use x86_64::structures::paging::PageTableFlags as Flags;

pub use x86_64::structures::paging::PageTableFlags;

pub const PAGE_4K: u64 = 4096;
pub const PAGE_2M: u64 = 2 << 20;
/// The end of the identity map.
pub const MAPPED_LIMIT: u64 = 4 << 30;

const ENTRIES: usize = 512;
const PD_ENTRIES: usize = (MAPPED_LIMIT / PAGE_2M) as usize;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// The 2 MiB leaf's PAT bit; a 4 KiB leaf has it at bit 7 (where PS is).
const PDE_PAT: u64 = 1 << 12;
const PTE_PAT: u64 = 1 << 7;

unsafe extern "C" {
    static mut boot_pml4: [u64; ENTRIES];
    static mut boot_pd: [u64; PD_ENTRIES];
}

#[repr(C, align(4096))]
struct Table([u64; ENTRIES]);

#[repr(C, align(4096))]
pub struct Page(pub [u8; PAGE_4K as usize]);

/// Page tables for split 2 MiB regions. The kernel image, the user pages and
/// the test pages all sit in the first 4 MiB, so a few are plenty.
const SPLIT_TABLES: usize = 4;
#[unsafe(link_section = ".bss.pages")]
static TABLES: Global<[Table; SPLIT_TABLES]> =
    Global::new([const { Table([0; ENTRIES]) }; SPLIT_TABLES]);
static TABLES_USED: Global<usize> = Global::new(0);

/// Pages a check may remap freely (not present, read-only, user, aliased).
pub const TEST_PAGES: usize = 8;
#[unsafe(link_section = ".bss.pages")]
static TEST_WINDOW: Global<[Page; TEST_PAGES]> =
    Global::new([const { Page([0; PAGE_4K as usize]) }; TEST_PAGES]);

/// What a 4 KiB page maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub phys: u64,
    pub flags: PageTableFlags,
}

/// Supervisor read-write, write-back: what RAM pages start as.
pub const KERNEL_RW: PageTableFlags = Flags::PRESENT.union(Flags::WRITABLE);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Outside the identity map or not 4 KiB aligned.
    BadAddress(u64),
    /// No page table left to split another 2 MiB region.
    OutOfTables,
}

pub fn init(boot: &BootInfo) {
    for i in 0..PD_ENTRIES {
        let start = i as u64 * PAGE_2M;
        let end = start + PAGE_2M;
        let ram = boot.ram().any(|r| r.start < end && r.end() > start);
        let caching = if ram {
            Flags::empty()
        } else {
            Flags::NO_CACHE | Flags::WRITE_THROUGH
        };
        let entry = start
            | (Flags::PRESENT
                | Flags::WRITABLE
                | Flags::HUGE_PAGE
                | Flags::ACCESSED
                | Flags::DIRTY
                | caching)
                .bits();
        // SAFETY: boot_pd is the live page directory; rewriting a 2 MiB leaf
        // with the same address only changes its caching, and CR3 is
        // reloaded below before anything relies on the new type.
        unsafe {
            (&raw mut boot_pd)
                .cast::<u64>()
                .add(i)
                .write_volatile(entry)
        };
    }
    if cpuid::features().nx {
        // SAFETY: EFER exists; NXE only gives meaning to bit 63 of page
        // table entries, which are all clear so far.
        unsafe { regs::wrmsr(regs::MSR_EFER, regs::efer() | regs::EFER_NXE) };
    }
    flush_all();
    // SAFETY: the guard page is reserved in boot.s for exactly this and
    // nothing is stored in it.
    unsafe { set_flags_4k(stack_guard(), Flags::empty()) }.expect("the guard page is mapped");
}

unsafe extern "C" {
    static boot_stack_guard: u8;
}

/// The unmapped page below the boot stack: a #PF there is a stack overflow.
pub fn stack_guard() -> u64 {
    (&raw const boot_stack_guard) as u64
}

/// Counts of 2 MiB pages mapped write-back and uncached (for boot.smoke).
pub fn caching_summary() -> (usize, usize) {
    let uc = (0..PD_ENTRIES)
        .filter(|&i| pde(i) & Flags::NO_CACHE.bits() != 0)
        .count();
    (PD_ENTRIES - uc, uc)
}

/// The physical address CR3 should hold.
pub fn root() -> u64 {
    (&raw const boot_pml4) as u64
}

fn pde(i: usize) -> u64 {
    // SAFETY: i < PD_ENTRIES; reading the live page directory.
    unsafe { (&raw const boot_pd).cast::<u64>().add(i).read_volatile() }
}

fn set_pde(i: usize, value: u64) {
    // SAFETY: i < PD_ENTRIES; callers keep the entry mapping what it did
    // (a split) or are `unsafe` themselves.
    unsafe {
        (&raw mut boot_pd)
            .cast::<u64>()
            .add(i)
            .write_volatile(value)
    }
}

fn flush_all() {
    // SAFETY: reloading CR3 with the live root only drops TLB entries.
    unsafe { asm!("mov cr3, {}", in(reg) root(), options(nostack, preserves_flags)) };
}

fn invlpg(addr: u64) {
    // SAFETY: dropping one TLB entry has no other effect.
    unsafe { asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) };
}

/// Walks the tables by hand, as the CPU would for `virt`.
pub fn translate(virt: u64) -> Option<Mapping> {
    if virt >= MAPPED_LIMIT {
        return None;
    }
    let entry = pde((virt / PAGE_2M) as usize);
    let flags = PageTableFlags::from_bits_truncate(entry);
    if !flags.contains(Flags::PRESENT) {
        return None;
    }
    if flags.contains(Flags::HUGE_PAGE) {
        return Some(Mapping {
            phys: (entry & ADDR_MASK & !(PAGE_2M - 1)) + virt % PAGE_2M,
            flags,
        });
    }
    let table = (entry & ADDR_MASK) as *const u64;
    // SAFETY: a present non-leaf PDE points at one of our split tables.
    let pte = unsafe {
        table
            .add(((virt / PAGE_4K) % ENTRIES as u64) as usize)
            .read_volatile()
    };
    Some(Mapping {
        phys: (pte & ADDR_MASK) + virt % PAGE_4K,
        flags: PageTableFlags::from_bits_truncate(pte),
    })
}

/// Replaces the 2 MiB leaf covering `virt` by a table of 512 4 KiB pages with
/// the same addresses and attributes; a no-op if it is split already.
fn split(virt: u64) -> Result<&'static mut [u64; ENTRIES], MapError> {
    let i = (virt / PAGE_2M) as usize;
    let entry = pde(i);
    if entry & Flags::HUGE_PAGE.bits() == 0 {
        // SAFETY: a non-leaf PDE points at one of our split tables, which are
        // only reached through here.
        return Ok(unsafe { &mut *((entry & ADDR_MASK) as *mut [u64; ENTRIES]) });
    }
    // SAFETY: single CPU; TABLES_USED and TABLES are only used here.
    let table = unsafe {
        let used = &mut *TABLES_USED.get();
        if *used == SPLIT_TABLES {
            return Err(MapError::OutOfTables);
        }
        *used += 1;
        &mut (*TABLES.get())[*used - 1].0
    };
    let mut attrs = entry & !ADDR_MASK & !Flags::HUGE_PAGE.bits() & !PDE_PAT;
    if entry & PDE_PAT != 0 {
        attrs |= PTE_PAT;
    }
    let base = entry & ADDR_MASK & !(PAGE_2M - 1);
    for (k, pte) in table.iter_mut().enumerate() {
        *pte = (base + k as u64 * PAGE_4K) | attrs;
    }
    // The table is reachable from every privilege level; each 4 KiB leaf
    // decides (the boot tables' upper levels are user-accessible too).
    let table_entry = table.as_ptr() as u64
        | (Flags::PRESENT | Flags::WRITABLE | Flags::USER_ACCESSIBLE | Flags::ACCESSED).bits();
    set_pde(i, table_entry);
    flush_all();
    Ok(table)
}

/// Maps the 4 KiB page at `virt` to `to.phys` with `to.flags` (ACCESSED and
/// DIRTY are added so the CPU never writes the entry) and flushes it from the
/// TLB. Returns the previous mapping, to restore it with another `map_4k`.
///
/// # Safety
/// Code or data the guest still uses must stay mapped and writable where it
/// is written: only remap test pages ([`test_page`]), user pages, or pages
/// the caller otherwise owns.
pub unsafe fn map_4k(virt: u64, to: Mapping) -> Result<Mapping, MapError> {
    if virt >= MAPPED_LIMIT || !virt.is_multiple_of(PAGE_4K) || !to.phys.is_multiple_of(PAGE_4K) {
        return Err(MapError::BadAddress(virt));
    }
    let old = translate(virt).ok_or(MapError::BadAddress(virt))?;
    let table = split(virt)?;
    let slot = &mut table[((virt / PAGE_4K) % ENTRIES as u64) as usize];
    let flags = to.flags | Flags::ACCESSED | Flags::DIRTY;
    // SAFETY: a live PTE; the caller owns the page it maps.
    unsafe { (slot as *mut u64).write_volatile(to.phys | flags.bits()) };
    invlpg(virt);
    Ok(Mapping {
        phys: old.phys & !(PAGE_4K - 1),
        flags: old.flags & !Flags::HUGE_PAGE,
    })
}

/// `map_4k` of the page to itself: only the flags change.
///
/// # Safety
/// As for [`map_4k`].
pub unsafe fn set_flags_4k(addr: u64, flags: PageTableFlags) -> Result<Mapping, MapError> {
    // SAFETY: forwarded; the caller owns the page.
    unsafe { map_4k(addr, Mapping { phys: addr, flags }) }
}

/// The address of test page `i` (< [`TEST_PAGES`]). Checks own these pages
/// while they run and may map them any way they like.
pub fn test_page(i: usize) -> u64 {
    assert!(i < TEST_PAGES, "test page {i} out of range");
    // SAFETY: only the address is taken.
    unsafe { (&raw mut (*TEST_WINDOW.get())[i]) as u64 }
}

/// Maps every test page back to itself as a plain kernel page.
pub fn reset_test_window() {
    for i in 0..TEST_PAGES {
        let page = test_page(i);
        // SAFETY: test pages belong to no one between checks.
        let r = unsafe { set_flags_4k(page, KERNEL_RW) };
        r.expect("test pages lie inside the identity map");
    }
}
