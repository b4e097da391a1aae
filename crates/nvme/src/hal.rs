//! The hardware edge. The guest implements these over BAR0 (mapped uncached)
//! and its identity-mapped RAM; host tests implement them with the model.

/// Access to the controller's registers at offsets into BAR0.
pub trait Mmio {
    fn read32(&mut self, offset: usize) -> u32;
    fn write32(&mut self, offset: usize, value: u32);

    /// Two 32-bit reads, low half first: every controller accepts those,
    /// while 64-bit accesses are optional for some.
    fn read64(&mut self, offset: usize) -> u64 {
        let lo = self.read32(offset) as u64;
        let hi = self.read32(offset + 4) as u64;
        lo | (hi << 32)
    }

    fn write64(&mut self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

/// A physically contiguous, page-aligned buffer the controller can reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaBuf {
    /// The address the device uses (physical in the guest, where it is also
    /// the virtual address).
    pub addr: u64,
    /// Length in bytes, a whole number of pages.
    pub len: usize,
}

impl DmaBuf {
    pub fn pages(&self) -> usize {
        self.len / crate::PAGE_SIZE
    }
}

/// DMA memory. Contents are reached through `read`/`write` rather than
/// slices, so that the driver needs no `unsafe` and the model can share the
/// memory with its controller.
///
/// Ordering contract: a `write` is visible to the device before any later
/// `Mmio` write (the doorbell), and a `read` sees what the device wrote before
/// the completion it follows. On x86 with write-back RAM and uncached BAR0,
/// volatile copies give both.
pub trait Dma {
    /// `pages` zeroed, contiguous, page-aligned pages, or `None` when out of
    /// memory.
    fn alloc(&mut self, pages: usize) -> Option<DmaBuf>;

    /// Gives a buffer back. A bump allocator may ignore this.
    fn free(&mut self, buf: DmaBuf) {
        let _ = buf;
    }

    fn read(&mut self, addr: u64, out: &mut [u8]);
    fn write(&mut self, addr: u64, data: &[u8]);

    fn read32(&mut self, addr: u64) -> u32 {
        let mut b = [0; 4];
        self.read(addr, &mut b);
        u32::from_le_bytes(b)
    }

    /// Fills `len` bytes at `addr` with `byte`.
    fn fill(&mut self, addr: u64, len: usize, byte: u8) {
        let chunk = [byte; 256];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len());
            self.write(addr + done as u64, &chunk[..n]);
            done += n;
        }
    }
}

/// A monotonic clock for bounded waits.
pub trait Clock {
    /// Nanoseconds since any fixed point; never goes backwards.
    fn now_ns(&mut self) -> u64;

    /// Called between polls (a `pause`, or a short delay).
    fn relax(&mut self) {
        core::hint::spin_loop();
    }
}

impl<T: Mmio + ?Sized> Mmio for &mut T {
    fn read32(&mut self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
    fn read64(&mut self, offset: usize) -> u64 {
        (**self).read64(offset)
    }
    fn write64(&mut self, offset: usize, value: u64) {
        (**self).write64(offset, value)
    }
}

impl<T: Dma + ?Sized> Dma for &mut T {
    fn alloc(&mut self, pages: usize) -> Option<DmaBuf> {
        (**self).alloc(pages)
    }
    fn free(&mut self, buf: DmaBuf) {
        (**self).free(buf)
    }
    fn read(&mut self, addr: u64, out: &mut [u8]) {
        (**self).read(addr, out)
    }
    fn write(&mut self, addr: u64, data: &[u8]) {
        (**self).write(addr, data)
    }
}

impl<T: Clock + ?Sized> Clock for &mut T {
    fn now_ns(&mut self) -> u64 {
        (**self).now_ns()
    }
    fn relax(&mut self) {
        (**self).relax()
    }
}
