//! COM1, polled: the guest's only output.

use crate::arch::port;
use core::fmt;

const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;

/// Programs 115200 8N1, FIFOs on, no interrupts. QEMU ignores the baud rate,
/// but a real 16550 (or a stricter model) needs it.
pub fn init() {
    const INIT: [(u16, u8); 7] = [
        (COM1 + 1, 0x00), // IER: no interrupts
        (COM1 + 3, 0x80), // LCR: DLAB
        (COM1, 0x01),     // divisor low: 115200
        (COM1 + 1, 0x00), // divisor high
        (COM1 + 3, 0x03), // LCR: 8N1
        (COM1 + 2, 0xc7), // FCR: FIFO on, cleared
        (COM1 + 4, 0x03), // MCR: DTR | RTS
    ];
    for (port, value) in INIT {
        // SAFETY: COM1's registers; writing them has no effect on memory.
        unsafe { port::outb(port, value) };
    }
}

fn put(byte: u8) {
    // SAFETY: reading LSR and writing THR of COM1 only moves a byte out.
    unsafe {
        while port::inb(LSR) & LSR_THR_EMPTY == 0 {}
        port::outb(COM1, byte);
    }
}

/// Writes bytes with `\n` turned into `\r\n`, as kvm-unit-tests does.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            put(b'\r');
        }
        put(b);
    }
}

/// The serial port as a `fmt::Write` sink; stateless, so any number of them
/// can exist.
#[derive(Clone, Copy, Default)]
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}
