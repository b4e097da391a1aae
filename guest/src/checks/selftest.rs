//! Checks that misbehave on purpose, so the runner's handling of every way a
//! guest can end is itself tested.

use super::Env;
use ukci_guest::arch::idt;
use ukci_guest::{exit, report};

/// Never finishes and never prints: the runner must time out.
pub fn hang(_: &Env) {
    exit::halt_forever()
}

/// No IDT, then a fault: #UD cannot be delivered, nor the #GP that follows,
/// nor the #DF: the CPU shuts down. QEMU with `-no-reboot` exits 0.
pub fn triple_fault(_: &Env) {
    // SAFETY: ending the VM is the point; ud2 is the fault (not int3, which
    // wedges kvm_pvm instead of reaching the IDT).
    unsafe {
        idt::load_empty_idt();
        core::arch::asm!("ud2", options(nomem, nostack, noreturn));
    }
}

/// A Rust panic: the guest must report an abort and exit with status 127.
pub fn panic(_: &Env) {
    panic!("selftest.panic: deliberate panic");
}

/// A result and a summary but no `EXIT:` line and no exit: the runner must
/// treat the missing verdict as an error, not trust the summary.
pub fn no_exit(_: &Env) {
    report::check(true, "reached", format_args!("stopping without an exit"));
    ukci_guest::report::println!("SUMMARY: {}", report::tally());
    exit::halt_forever()
}
