//! `ukci-nvme`'s hardware edge over VFIO: BAR0 as a VFIO region, DMA memory
//! as pages of one [`DmaBuffer`] mapped into the container, and the
//! monotonic clock. With these the host drives a controller with the same
//! driver the guest runs.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{Ordering, fence};
use std::thread::sleep;
use std::time::{Duration, Instant};

use ukci_nvme::{Clock, Dma, DmaBuf, Mmio, PAGE_SIZE};

use crate::error::{Error, Result};
use crate::vfio::{BAR0_REGION, Device, DmaBuffer, Region};

/// The first VFIO access that failed, shared between [`Bar0`] and whoever
/// reports the driver's errors: the trait's accesses cannot fail, so a
/// failed read returns all-ones (what a vanished device reads) and the
/// errno waits here.
pub type Fault = Rc<Cell<Option<Error>>>;

/// BAR0 of an open VFIO device, one `pread`/`pwrite` per access.
pub struct Bar0 {
    dev: Device,
    region: Region,
    fault: Fault,
}

impl Bar0 {
    pub fn new(dev: Device, fault: Fault) -> Result<Bar0> {
        let region = dev.region(BAR0_REGION)?;
        Ok(Bar0 { dev, region, fault })
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }

    fn note(&self, e: Error) {
        let first = self.fault.take().unwrap_or(e);
        self.fault.set(Some(first));
    }
}

impl Mmio for Bar0 {
    fn read32(&mut self, offset: usize) -> u32 {
        self.dev
            .read32(&self.region, offset as u64)
            .unwrap_or_else(|e| {
                self.note(e);
                u32::MAX
            })
    }

    fn write32(&mut self, offset: usize, value: u32) {
        if let Err(e) = self.dev.write32(&self.region, offset as u64, value) {
            self.note(e);
        }
    }
}

/// Whole pages handed out in order from one buffer that the device sees at
/// `iova`; nothing is given back before the buffer goes.
pub struct DmaPages {
    buf: DmaBuffer,
    iova: u64,
    used: usize,
}

impl DmaPages {
    /// `pages` zeroed pages the device will see at `iova` (the caller maps
    /// [`DmaPages::buffer`] there).
    pub fn new(pages: usize, iova: u64) -> Result<DmaPages> {
        Ok(DmaPages {
            buf: DmaBuffer::new(pages * PAGE_SIZE)?,
            iova,
            used: 0,
        })
    }

    pub fn buffer(&self) -> &DmaBuffer {
        &self.buf
    }

    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// The buffer offset of device address `addr`. The driver only uses
    /// addresses this allocator gave it; [`DmaBuffer`] checks the end.
    fn offset(&self, addr: u64) -> usize {
        let off = addr.checked_sub(self.iova).unwrap_or_else(|| {
            panic!("DMA address {addr:#x} below the buffer at {:#x}", self.iova)
        });
        off as usize
    }
}

impl Dma for DmaPages {
    fn alloc(&mut self, pages: usize) -> Option<DmaBuf> {
        let len = pages * PAGE_SIZE;
        if self.buf.len() - self.used < len {
            return None;
        }
        self.buf.fill(self.used, len, 0);
        let b = DmaBuf {
            addr: self.iova + self.used as u64,
            len,
        };
        self.used += len;
        Some(b)
    }

    /// Volatile copies behind a fence: what the device wrote before the
    /// completion just seen is read, not an earlier value.
    fn read(&mut self, addr: u64, out: &mut [u8]) {
        fence(Ordering::SeqCst);
        self.buf.read(self.offset(addr), out);
    }

    /// Volatile copies before a fence: the device sees them before the
    /// doorbell write that follows.
    fn write(&mut self, addr: u64, data: &[u8]) {
        self.buf.write(self.offset(addr), data);
        fence(Ordering::SeqCst);
    }

    fn fill(&mut self, addr: u64, len: usize, byte: u8) {
        self.buf.fill(self.offset(addr), len, byte);
        fence(Ordering::SeqCst);
    }
}

/// Monotonic time since the driver started; a poll sleeps 200 µs, which
/// leaves the CPU to a controller emulated on the same host.
pub struct Wall(Instant);

impl Wall {
    pub fn new() -> Wall {
        Wall(Instant::now())
    }
}

impl Default for Wall {
    fn default() -> Wall {
        Wall::new()
    }
}

impl Clock for Wall {
    fn now_ns(&mut self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }

    fn relax(&mut self) {
        sleep(Duration::from_micros(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_handed_out_in_order_at_the_device_address_and_run_out() {
        let mut d = DmaPages::new(3, 0x1000_0000).unwrap();
        let a = d.alloc(2).unwrap();
        let b = d.alloc(1).unwrap();
        assert_eq!((a.addr, a.len), (0x1000_0000, 2 * PAGE_SIZE));
        assert_eq!((b.addr, b.len), (0x1000_2000, PAGE_SIZE));
        assert_eq!(d.alloc(1), None);
    }

    #[test]
    fn reads_and_writes_go_to_the_buffer_offset_of_a_device_address() {
        let mut d = DmaPages::new(2, 0x2000_0000).unwrap();
        let page = d.alloc(2).unwrap();
        d.write(page.addr + 0x1004, &[1, 2, 3, 4]);
        assert_eq!(d.read32(page.addr + 0x1004), 0x0403_0201);
        let mut raw = [0u8; 4];
        d.buffer().read(0x1004, &mut raw);
        assert_eq!(raw, [1, 2, 3, 4]);
        d.fill(page.addr + 0x1004, 4, 0);
        assert_eq!(d.read32(page.addr + 0x1004), 0);
    }

    #[test]
    fn the_clock_moves_forward() {
        let mut c = Wall::new();
        let a = c.now_ns();
        c.relax();
        assert!(c.now_ns() > a);
    }
}
