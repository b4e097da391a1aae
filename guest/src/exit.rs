//! Leaving the VM: isa-debug-exit with the verdict, or halting for good.

use crate::arch::port;
use crate::serial;
use ukci_protocol::Verdict;
use ukci_protocol::exit::ISA_DEBUG_EXIT_PORT;

/// Makes QEMU exit with `verdict.status()`. Without an isa-debug-exit device
/// the write goes nowhere and the guest halts; the runner's timeout ends it.
pub fn exit(verdict: Verdict) -> ! {
    // SAFETY: the isa-debug-exit port; the write ends the VM.
    unsafe { port::outl(ISA_DEBUG_EXIT_PORT, verdict.code()) };
    halt_forever()
}

/// Stops the CPU with interrupts off: nothing wakes it but NMI/SMI, and the
/// loop halts again after those.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// The last resort when the normal abort path cannot be trusted (an exception
/// inside the trap dispatcher, a panic while panicking): fixed text, no
/// formatting, no shared state.
pub fn emergency(what: &str) -> ! {
    serial::write_bytes(b"FAIL: aborted\nukci-detail: ");
    serial::write_bytes(what.as_bytes());
    serial::write_bytes(b"\nEXIT: STATUS=");
    write_decimal(Verdict::Abort.status());
    serial::write_bytes(b"\n");
    exit(Verdict::Abort)
}

fn write_decimal(mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    serial::write_bytes(&digits[i..]);
}
