//! Physical Region Page entries: how a transfer's memory is described to the
//! controller.
//!
//! PRP1 points at the first byte (any dword-aligned offset in its page).
//! If the transfer ends within the next page, PRP2 is that page; if it needs
//! more, PRP2 points at a PRP list: one entry per remaining page, and when a
//! list page fills up its last entry points at the next list page instead.

use core::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrpError {
    /// Zero-length transfer.
    Empty,
    /// PRP1 must be dword aligned; list pointers and later pages page aligned.
    Misaligned { addr: u64 },
    /// The list area given is too small for this transfer.
    ListTooSmall {
        needed_pages: usize,
        have_pages: usize,
    },
}

impl fmt::Display for PrpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrpError::Empty => f.write_str("zero-length transfer"),
            PrpError::Misaligned { addr } => write!(f, "misaligned PRP address {addr:#x}"),
            PrpError::ListTooSmall {
                needed_pages,
                have_pages,
            } => write!(
                f,
                "PRP list needs {needed_pages} pages, {have_pages} available"
            ),
        }
    }
}

/// The two pointers that go into a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prp {
    pub prp1: u64,
    pub prp2: u64,
    /// Entries written to the list area (data entries and chain pointers);
    /// zero when no list is used.
    pub list_entries: usize,
}

/// Pages of memory the range `[addr, addr + len)` touches.
pub const fn pages_spanned(addr: u64, len: usize, page: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let p = page as u64;
    let first = addr / p;
    let last = (addr + len as u64 - 1) / p;
    (last - first + 1) as usize
}

/// List pages needed for a transfer (0 when PRP1/PRP2 suffice).
pub const fn list_pages(addr: u64, len: usize, page: usize) -> usize {
    let pages = pages_spanned(addr, len, page);
    if pages <= 2 {
        return 0;
    }
    let per_page = page / 8;
    let mut remaining = pages - 1;
    let mut n = 0;
    // Every list page but the last gives up one slot to the chain pointer.
    while remaining > per_page {
        remaining -= per_page - 1;
        n += 1;
    }
    n + 1
}

/// Builds the PRPs for a contiguous transfer of `len` bytes at `addr`.
/// List entries go through `put(slot, value)`, where slot `i` lives at
/// `list + 8 * i` in a contiguous area of `list_pages_have` page-aligned pages.
pub fn build(
    addr: u64,
    len: usize,
    page: usize,
    list: u64,
    list_pages_have: usize,
    mut put: impl FnMut(usize, u64),
) -> Result<Prp, PrpError> {
    if len == 0 {
        return Err(PrpError::Empty);
    }
    if addr & 3 != 0 {
        return Err(PrpError::Misaligned { addr });
    }
    let p = page as u64;
    let pages = pages_spanned(addr, len, page);
    let next = (addr & !(p - 1)) + p;
    match pages {
        1 => Ok(Prp {
            prp1: addr,
            prp2: 0,
            list_entries: 0,
        }),
        2 => Ok(Prp {
            prp1: addr,
            prp2: next,
            list_entries: 0,
        }),
        _ => {
            let needed = list_pages(addr, len, page);
            if needed > list_pages_have {
                return Err(PrpError::ListTooSmall {
                    needed_pages: needed,
                    have_pages: list_pages_have,
                });
            }
            if !list.is_multiple_of(p) {
                return Err(PrpError::Misaligned { addr: list });
            }
            let per_page = page / 8;
            let mut slot = 0;
            for i in 0..pages - 1 {
                let last_slot = slot % per_page == per_page - 1;
                let more_after = i + 1 < pages - 1;
                if last_slot && more_after {
                    // Chain to the next list page.
                    put(slot, list + ((slot / per_page + 1) * page) as u64);
                    slot += 1;
                }
                put(slot, next + i as u64 * p);
                slot += 1;
            }
            Ok(Prp {
                prp1: addr,
                prp2: list,
                list_entries: slot,
            })
        }
    }
}

/// Walks PRPs as a controller does: calls `visit(addr, len)` for each piece
/// of the `len`-byte transfer, reading list entries with `read_entry`.
/// The model controller uses it; tests use it to check [`build`].
pub fn walk(
    prp1: u64,
    prp2: u64,
    len: usize,
    page: usize,
    mut read_entry: impl FnMut(u64) -> u64,
    mut visit: impl FnMut(u64, usize),
) -> Result<(), PrpError> {
    if len == 0 {
        return Err(PrpError::Empty);
    }
    if prp1 & 3 != 0 {
        return Err(PrpError::Misaligned { addr: prp1 });
    }
    let p = page as u64;
    let first = (page - (prp1 % p) as usize).min(len);
    visit(prp1, first);
    let mut rest = len - first;
    if rest == 0 {
        return Ok(());
    }
    if rest <= page {
        if !prp2.is_multiple_of(p) {
            return Err(PrpError::Misaligned { addr: prp2 });
        }
        visit(prp2, rest);
        return Ok(());
    }
    if prp2 & 7 != 0 {
        return Err(PrpError::Misaligned { addr: prp2 });
    }
    let mut slot = prp2;
    while rest > 0 {
        let at_page_end = slot % p == p - 8;
        if at_page_end && rest > page {
            slot = read_entry(slot);
            if slot & 7 != 0 {
                return Err(PrpError::Misaligned { addr: slot });
            }
            continue;
        }
        let data = read_entry(slot);
        if !data.is_multiple_of(p) {
            return Err(PrpError::Misaligned { addr: data });
        }
        let n = rest.min(page);
        visit(data, n);
        rest -= n;
        slot += 8;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    const PAGE: usize = 4096;
    const LIST: u64 = 0x80_0000;

    /// Builds, then walks back, and checks the pieces cover exactly the range.
    fn round_trip(addr: u64, len: usize) -> (Prp, Vec<(u64, usize)>) {
        let mut list = BTreeMap::new();
        let have = list_pages(addr, len, PAGE);
        let prp = build(addr, len, PAGE, LIST, have, |slot, v| {
            assert!(slot < have * PAGE / 8, "slot {slot} outside the list area");
            assert!(
                list.insert(LIST + 8 * slot as u64, v).is_none(),
                "slot {slot} written twice"
            );
        })
        .unwrap();
        assert_eq!(prp.list_entries, list.len());
        let mut pieces = Vec::new();
        walk(
            prp.prp1,
            prp.prp2,
            len,
            PAGE,
            |a| list[&a],
            |a, n| pieces.push((a, n)),
        )
        .unwrap();
        // Contiguous, in order, and the right total.
        let mut at = addr;
        for &(a, n) in &pieces {
            assert_eq!(a, at, "piece at {a:#x}, expected {at:#x}");
            assert!(n > 0 && (a % PAGE as u64) as usize + n <= PAGE);
            at += n as u64;
        }
        assert_eq!(at, addr + len as u64);
        (prp, pieces)
    }

    #[test]
    fn one_page_needs_only_prp1() {
        let (prp, pieces) = round_trip(0x10_0000, 4096);
        assert_eq!((prp.prp1, prp.prp2), (0x10_0000, 0));
        assert_eq!(pieces.len(), 1);
        // 512 bytes at an offset, still within the page.
        let (prp, _) = round_trip(0x10_0200, 512);
        assert_eq!(prp.prp2, 0);
    }

    #[test]
    fn two_pages_use_prp2_as_a_page() {
        let (prp, _) = round_trip(0x10_0000, 8192);
        assert_eq!(prp.prp2, 0x10_1000);
        // An offset first page spills into a second page: still no list.
        let (prp, pieces) = round_trip(0x10_0e00, 1024);
        assert_eq!((prp.prp2, pieces.len()), (0x10_1000, 2));
    }

    #[test]
    fn more_pages_use_a_list() {
        let (prp, pieces) = round_trip(0x10_0000, 3 * 4096);
        assert_eq!(prp.prp2, LIST);
        assert_eq!(prp.list_entries, 2);
        assert_eq!(pieces.len(), 3);
        // Unaligned start: 2 pages of data touch 3 pages of memory.
        let (prp, pieces) = round_trip(0x10_0200, 8192);
        assert_eq!((prp.prp2, pieces.len()), (LIST, 3));
    }

    #[test]
    fn full_list_page_has_no_chain() {
        // 1 + 512 pages: exactly one full list page of data entries.
        assert_eq!(list_pages(0, 513 * PAGE, PAGE), 1);
        let (prp, _) = round_trip(0, 513 * PAGE);
        assert_eq!(prp.list_entries, 512);
    }

    #[test]
    fn long_lists_chain_across_pages() {
        // 1 + 513 pages: 511 data entries + chain, then 2 more entries.
        assert_eq!(list_pages(0, 514 * PAGE, PAGE), 2);
        let (prp, pieces) = round_trip(0, 514 * PAGE);
        assert_eq!(prp.list_entries, 514);
        assert_eq!(pieces.len(), 514);
        // Many chained pages, unaligned start and end.
        let len = 3000 * PAGE + 100;
        let (_, pieces) = round_trip(0x1_0000_0400, len);
        assert_eq!(pieces.len(), pages_spanned(0x1_0000_0400, len, PAGE));
        assert_eq!(list_pages(0x400, len, PAGE), 6);
    }

    #[test]
    fn every_length_and_offset_round_trips() {
        for offset in [0u64, 4, 512, 4092] {
            for pages in 0..6 {
                for extra in [1usize, 4, 4095, 4096] {
                    round_trip(0x20_0000 + offset, pages * PAGE + extra);
                }
            }
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert_eq!(
            build(0x1000, 0, PAGE, LIST, 1, |_, _| {}),
            Err(PrpError::Empty)
        );
        assert_eq!(
            build(0x1002, 16, PAGE, LIST, 1, |_, _| {}),
            Err(PrpError::Misaligned { addr: 0x1002 })
        );
        assert_eq!(
            build(0, 514 * PAGE, PAGE, LIST, 1, |_, _| {}),
            Err(PrpError::ListTooSmall {
                needed_pages: 2,
                have_pages: 1
            })
        );
        assert_eq!(
            build(0, 3 * PAGE, PAGE, LIST + 8, 1, |_, _| {}),
            Err(PrpError::Misaligned { addr: LIST + 8 })
        );
        // A walker refuses an unaligned middle page.
        assert_eq!(
            walk(0, 0x2004, 8192, PAGE, |_| 0, |_, _| {}),
            Err(PrpError::Misaligned { addr: 0x2004 })
        );
    }
}
