//! Memory devices may read and write: whole pages of RAM above the guest,
//! handed out first-fit from a bitmap.
//!
//! The pool is the largest RAM region of the boot memory map above
//! [`POOL_FLOOR`] (which lies above the guest image, its stacks and the page
//! tables in either link), cut to [`MAX_POOL_PAGES`]. RAM is identity-mapped
//! write-back, so a page's bus address is its virtual address.
//!
//! Ordering: [`write`] and [`read`] are volatile copies followed by a
//! compiler fence, so a copy is neither dropped nor moved past the MMIO
//! access (a doorbell write, a completion poll) that follows it; x86 keeps
//! stores to write-back RAM ordered before a store to uncached MMIO.

use crate::bootinfo::BootInfo;
use crate::sync::Global;
use core::sync::atomic::{Ordering, compiler_fence};

pub const PAGE: u64 = 4096;
/// The pool starts at or above 4 MiB: the guest image (both links) ends
/// below that.
pub const POOL_FLOOR: u64 = 4 << 20;
/// 64 MiB at most: far more than any check needs.
pub const MAX_POOL_PAGES: usize = 16384;
/// The identity map ends here; the pool stays below.
const LIMIT: u64 = crate::arch::paging::MAPPED_LIMIT;

struct Pool {
    base: u64,
    pages: usize,
    used: [u64; MAX_POOL_PAGES / 64],
    in_use: usize,
}

static POOL: Global<Pool> = Global::new(Pool {
    base: 0,
    pages: 0,
    used: [0; MAX_POOL_PAGES / 64],
    in_use: 0,
});

fn pool() -> &'static mut Pool {
    // SAFETY: one CPU, no interrupts; every caller holds the reference only
    // for the length of one call and none of them re-enters another.
    unsafe { &mut *POOL.get() }
}

/// Takes the pool from the memory map. Every page is free afterwards:
/// call it again only when no device uses pool memory any more.
pub fn init(boot: &BootInfo) {
    let p = pool();
    let (mut base, mut pages) = (0, 0);
    for r in boot.ram() {
        let start = r.start.max(POOL_FLOOR).next_multiple_of(PAGE);
        let end = r.end().min(LIMIT) / PAGE * PAGE;
        if end > start {
            let n = ((end - start) / PAGE) as usize;
            if n > pages {
                (base, pages) = (start, n);
            }
        }
    }
    p.base = base;
    p.pages = pages.min(MAX_POOL_PAGES);
    p.used = [0; MAX_POOL_PAGES / 64];
    p.in_use = 0;
}

/// Frees every page (devices must have stopped using them).
pub fn reset() {
    let p = pool();
    p.used = [0; MAX_POOL_PAGES / 64];
    p.in_use = 0;
}

/// (first address, pages, pages in use).
pub fn stats() -> (u64, usize, usize) {
    let p = pool();
    (p.base, p.pages, p.in_use)
}

impl Pool {
    fn is_used(&self, i: usize) -> bool {
        self.used[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, first: usize, n: usize, used: bool) {
        for i in first..first + n {
            if used {
                self.used[i / 64] |= 1 << (i % 64);
            } else {
                self.used[i / 64] &= !(1 << (i % 64));
            }
        }
    }
}

/// `pages` contiguous zeroed pages: (address, length in bytes).
pub fn alloc(pages: usize) -> Option<(u64, usize)> {
    let p = pool();
    if pages == 0 || pages > p.pages {
        return None;
    }
    let mut run = 0;
    for i in 0..p.pages {
        if p.is_used(i) {
            run = 0;
            continue;
        }
        run += 1;
        if run == pages {
            let first = i + 1 - pages;
            p.set(first, pages, true);
            p.in_use += pages;
            let addr = p.base + first as u64 * PAGE;
            let len = pages * PAGE as usize;
            // SAFETY: the pages are RAM from the memory map, identity-mapped,
            // inside the pool and were free: nothing else refers to them.
            unsafe { core::ptr::write_bytes(addr as *mut u8, 0, len) };
            compiler_fence(Ordering::SeqCst);
            return Some((addr, len));
        }
    }
    None
}

/// Gives pages back; anything not allocated from the pool is ignored.
pub fn free(addr: u64, len: usize) {
    let p = pool();
    let end = p.base + p.pages as u64 * PAGE;
    if addr < p.base || !addr.is_multiple_of(PAGE) || addr + len as u64 > end {
        return;
    }
    let first = ((addr - p.base) / PAGE) as usize;
    let n = len.div_ceil(PAGE as usize);
    let freed = (first..first + n).filter(|&i| p.is_used(i)).count();
    p.set(first, n, false);
    p.in_use -= freed;
}

/// Whether `[addr, addr + len)` lies inside the pool.
fn inside(addr: u64, len: usize) -> bool {
    let p = pool();
    let end = p.base + p.pages as u64 * PAGE;
    addr >= p.base && addr.checked_add(len as u64).is_some_and(|e| e <= end)
}

/// Copies `data` to pool memory at `addr` with volatile stores.
///
/// # Panics
/// If the range is not inside the pool: a driver bug that would otherwise
/// corrupt the guest.
pub fn write(addr: u64, data: &[u8]) {
    assert!(
        inside(addr, data.len()),
        "dma write outside the pool at {addr:#x}"
    );
    let mut i = 0;
    while i < data.len() {
        let at = addr + i as u64;
        if at.is_multiple_of(8) && i + 8 <= data.len() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&data[i..i + 8]);
            // SAFETY: inside the pool (checked above), 8-aligned; pool pages
            // are identity-mapped RAM owned by the driver.
            unsafe { (at as *mut u64).write_volatile(u64::from_ne_bytes(w)) };
            i += 8;
        } else {
            // SAFETY: inside the pool, as above.
            unsafe { (at as *mut u8).write_volatile(data[i]) };
            i += 1;
        }
    }
    compiler_fence(Ordering::SeqCst);
}

/// Copies pool memory at `addr` into `out` with volatile loads.
///
/// # Panics
/// If the range is not inside the pool.
pub fn read(addr: u64, out: &mut [u8]) {
    assert!(
        inside(addr, out.len()),
        "dma read outside the pool at {addr:#x}"
    );
    compiler_fence(Ordering::SeqCst);
    let mut i = 0;
    while i < out.len() {
        let at = addr + i as u64;
        if at.is_multiple_of(8) && i + 8 <= out.len() {
            // SAFETY: inside the pool (checked above), 8-aligned.
            let w = unsafe { (at as *const u64).read_volatile() };
            out[i..i + 8].copy_from_slice(&w.to_ne_bytes());
            i += 8;
        } else {
            // SAFETY: inside the pool, as above.
            out[i] = unsafe { (at as *const u8).read_volatile() };
            i += 1;
        }
    }
}
