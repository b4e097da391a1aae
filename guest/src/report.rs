//! The guest's one `Reporter`, behind free functions so that checks, the
//! panic handler and the trap dispatcher all report through it.
//!
//! Each call borrows the reporter only for the length of one line. If a panic
//! or an unexpected exception hits while a line is being written, the abort
//! path finds the reporter busy and writes through a fresh one instead of
//! aliasing it (losing the tally, keeping the verdict).

use crate::exit;
use crate::serial::Serial;
use crate::sync::Global;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};
use ukci_protocol::line::Status;
use ukci_protocol::{Reporter, Tally, Verdict};

static REPORTER: Global<Reporter<Serial>> = Global::new(Reporter::new(Serial));
static BUSY: AtomicBool = AtomicBool::new(false);
static PANICKING: AtomicBool = AtomicBool::new(false);

fn with<R>(f: impl FnOnce(&mut Reporter<Serial>) -> R) -> R {
    if BUSY.swap(true, Ordering::Acquire) {
        panic!("the reporter was re-entered");
    }
    // SAFETY: BUSY makes this the only live reference to the reporter.
    let r = f(unsafe { &mut *REPORTER.get() });
    BUSY.store(false, Ordering::Release);
    r
}

/// The reporter itself, for code that reports through a `&mut Reporter`
/// (such as the NVMe checks). It must not call the free functions here.
pub fn with_reporter<R>(f: impl FnOnce(&mut Reporter<Serial>) -> R) -> R {
    with(f)
}

/// Pushes a name prefix (a check, a sub-group) onto every following line.
pub fn push(prefix: &'static str) {
    with(|r| r.push(prefix));
}

pub fn pop() {
    with(|r| r.pop());
}

/// A pass or a fail, with the values seen as the `ukci-detail:` line.
pub fn check(ok: bool, name: &str, detail: fmt::Arguments<'_>) -> bool {
    with(|r| r.check(ok, name, detail))
}

pub fn result(status: Status, name: &str, detail: fmt::Arguments<'_>) {
    with(|r| r.result(status, name, detail));
}

pub fn skip(name: &str, reason: fmt::Arguments<'_>) {
    with(|r| r.skip(name, reason));
}

pub fn write_info(text: fmt::Arguments<'_>) {
    with(|r| r.info(text));
}

/// Lends the reporter to code that writes through a `Reporter` of its own
/// (the shared check crates), for as long as `f` runs. `f` must not call the
/// other functions here (they would find the reporter busy and panic).
pub fn lend<R>(f: impl FnOnce(&mut Reporter<Serial>) -> R) -> R {
    with(f)
}

pub fn tally() -> Tally {
    with(|r| r.tally())
}

/// `SUMMARY:` and `EXIT:`; the caller exits with the verdict.
pub fn finish() -> Verdict {
    with(|r| r.finish())
}

/// Reports an abort (`FAIL: <prefixes>: aborted` with `what` as detail) and
/// stops the VM with the abort status.
pub fn abort(what: fmt::Arguments<'_>) -> ! {
    let verdict = if BUSY.swap(true, Ordering::Acquire) {
        Reporter::new(Serial).abort(what)
    } else {
        // SAFETY: BUSY was free and is now held for good: nothing returns.
        unsafe { &mut *REPORTER.get() }.abort(what)
    };
    exit::exit(verdict)
}

pub fn abort_on_panic(info: &core::panic::PanicInfo) -> ! {
    if PANICKING.swap(true, Ordering::Relaxed) {
        exit::emergency("panic while aborting");
    }
    match info.location() {
        Some(at) => abort(format_args!(
            "panic at {}:{}: {}",
            at.file(),
            at.line(),
            info.message()
        )),
        None => abort(format_args!("panic: {}", info.message())),
    }
}

/// An `INFO:` line under the current prefixes.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::report::write_info(format_args!($($arg)*)) };
}

/// Raw text on the serial port, outside the protocol (ignored by parsers).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::serial::Serial, $($arg)*);
    }};
}

pub use crate::{info, println};
