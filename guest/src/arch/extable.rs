//! The exception table: expected faults are recovered, not fatal.
//!
//! Each guarded piece of asm emits a `(start, end, fixup)` entry into the
//! `ukci_extable` section (gathered by linker.ld), the way Linux's
//! `_ASM_EXTABLE` and kvm-unit-tests' `ASM_TRY` do. When a ring-0 exception
//! hits with RIP in `[start, end)`, the dispatcher records the fault and
//! resumes at `fixup`, with every register as it was at the faulting
//! instruction. A range rather than a single RIP lets one entry guard a short
//! sequence (`xor edx, edx; div ecx`).
//!
//! [`try_asm!`] wraps this for any snippet and returns `Result<(), Fault>`;
//! `fault` builds the typed `try_*` helpers on it.

use super::fault::Fault;
use super::idt::{TrapFrame, vector};
use super::regs;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

#[repr(C)]
struct Entry {
    start: u64,
    end: u64,
    fixup: u64,
}

unsafe extern "C" {
    static __extable_start: Entry;
    static __extable_end: Entry;
}

fn entries() -> &'static [Entry] {
    // SAFETY: linker.ld puts the symbols around the section, which holds only
    // the 24-byte, 8-aligned entries emitted by `extable_entry!`.
    unsafe {
        let start = &raw const __extable_start;
        let end = &raw const __extable_end;
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// How many guarded sites the guest has (a sanity figure for boot.smoke).
pub fn len() -> usize {
    entries().len()
}

fn fixup_for(rip: u64) -> Option<u64> {
    entries()
        .iter()
        .find(|e| (e.start..e.end).contains(&rip))
        .map(|e| e.fixup)
}

/// The recovered faults of the guarded region in flight: the first one, and
/// the one after it (a sequence with two guarded instructions, such as
/// [`super::fault::probe_cr4`], can take two). One CPU and no interrupts:
/// only one guarded region runs at a time.
struct Record {
    vector: AtomicU8,
    error_code: AtomicU64,
    cr2: AtomicU64,
    rip: AtomicU64,
}

impl Record {
    const fn new() -> Self {
        Record {
            vector: AtomicU8::new(0),
            error_code: AtomicU64::new(0),
            cr2: AtomicU64::new(0),
            rip: AtomicU64::new(0),
        }
    }

    fn load(&self) -> Fault {
        Fault {
            vector: self.vector.load(Ordering::Relaxed),
            error_code: self.error_code.load(Ordering::Relaxed),
            cr2: self.cr2.load(Ordering::Relaxed),
            rip: self.rip.load(Ordering::Relaxed),
        }
    }
}

static RECORDS: [Record; 2] = [Record::new(), Record::new()];
/// How many faults the region in flight took (0, 1, 2 = two or more).
static HITS: AtomicU8 = AtomicU8::new(0);

/// An address `fault::try_call` jumps to: a fault with RIP there (e.g. an
/// instruction fetch #PF) returns to the caller instead of aborting.
pub(super) static CALL_TARGET: AtomicU64 = AtomicU64::new(0);

/// Records a fault: into the first slot, or the second if the first is
/// taken (a third overwrites the second).
pub(super) fn record(frame: &TrapFrame) {
    let hits = HITS.load(Ordering::Acquire);
    let slot = &RECORDS[usize::from(hits.min(1))];
    let v = frame.vector();
    slot.vector.store(v, Ordering::Relaxed);
    slot.error_code.store(frame.error_code, Ordering::Relaxed);
    slot.cr2.store(
        if v == vector::PF { regs::cr2() } else { 0 },
        Ordering::Relaxed,
    );
    slot.rip.store(frame.rip, Ordering::Relaxed);
    HITS.store(hits.saturating_add(1).min(2), Ordering::Release);
}

/// Starts a guarded region: forgets any earlier fault.
#[doc(hidden)]
pub fn begin() {
    HITS.store(0, Ordering::Release);
}

/// Ends a guarded region: the (first) fault it took, if any.
#[doc(hidden)]
pub fn end() -> Result<(), Fault> {
    match end_two() {
        [None, _] => Ok(()),
        [Some(f), _] => Err(f),
    }
}

/// Ends a guarded region: its first and second fault, in order.
#[doc(hidden)]
pub fn end_two() -> [Option<Fault>; 2] {
    let hits = HITS.swap(0, Ordering::AcqRel);
    [
        (hits >= 1).then(|| RECORDS[0].load()),
        (hits >= 2).then(|| RECORDS[1].load()),
    ]
}

/// The dispatcher's hook for ring-0 exceptions. Returns false if the fault
/// was not expected.
pub(super) fn on_trap(frame: &mut TrapFrame) -> bool {
    if let Some(fixup) = fixup_for(frame.rip) {
        record(frame);
        frame.rip = fixup;
        return true;
    }
    let target = CALL_TARGET.load(Ordering::Relaxed);
    if target != 0 && frame.rip == target {
        record(frame);
        // Nothing ran at the target: the return address `call` pushed is
        // still on top of the stack.
        // SAFETY: RSP is the kernel stack of the `try_call` that jumped here.
        frame.rip = unsafe { (frame.rsp as *const u64).read() };
        frame.rsp += 8;
        return true;
    }
    false
}

#[doc(hidden)]
#[macro_export]
/// The section entry for local labels `7770:` (start), `7771:` (end and
/// fixup), as an asm template string.
macro_rules! extable_entry {
    () => {
        concat!(
            ".pushsection ukci_extable, \"a\"\n",
            ".balign 8\n",
            ".quad 7770b, 7771b, 7771b\n",
            ".popsection"
        )
    };
}

/// Runs one asm template with an exception-table entry around it and
/// evaluates to `Result<(), Fault>`: `Err` with the vector, error code (and
/// CR2 for #PF) if any instruction in it faulted, in which case the rest of
/// the template was skipped and its outputs are garbage. Takes one template
/// literal (separate instructions with `;`) and the usual `asm!` operands;
/// must be used inside `unsafe`. Do not use labels 7770/7771 in the template.
///
/// ```ignore
/// // SAFETY: ud2 only raises #UD, which the table recovers.
/// let r = unsafe { try_asm!("ud2") };
/// assert_eq!(r.unwrap_err().vector, vector::UD);
/// ```
#[macro_export]
macro_rules! try_asm {
    ($template:literal $(, $($operands:tt)*)?) => {{
        $crate::arch::extable::begin();
        core::arch::asm!(
            "7770:",
            $template,
            "7771:",
            $crate::extable_entry!(),
            $($($operands)*)?
        );
        $crate::arch::extable::end()
    }};
}

pub use crate::{extable_entry, try_asm};
