//! The hardware edge of the NVMe driver (`ukci-nvme`): BAR0 registers,
//! DMA pages from [`crate::dma`], the TSC clock, and finding the function.

use crate::arch::paging::MAPPED_LIMIT;
use crate::arch::tsc;
use crate::bootinfo::BootInfo;
use crate::dma;
use crate::pci::{self, Bar, ext_cap};
use core::fmt;
use ukci_nvme::checks::{Bdf, Function};
use ukci_nvme::hal::{Clock, Dma, DmaBuf, Mmio};

/// Class 01:08:02, NVM Express I/O controller.
pub const CLASS_NVME: u32 = 0x01_0802;
/// SR-IOV capability: TotalVFs.
const SRIOV_TOTAL_VFS: u16 = 0x0e;
/// BAR0 must hold the registers and at least the admin doorbells.
const MIN_BAR0: u64 = 0x1008;

/// BAR0, mapped uncached by the identity map. Accesses are volatile and
/// 32 bits wide.
pub struct Bar0 {
    base: u64,
    size: u64,
}

impl Bar0 {
    fn check(&self, offset: usize) -> u64 {
        assert!(
            (offset as u64) + 4 <= self.size && offset.is_multiple_of(4),
            "BAR0 access at {offset:#x} outside {:#x} bytes",
            self.size
        );
        self.base + offset as u64
    }
}

impl Mmio for Bar0 {
    fn read32(&mut self, offset: usize) -> u32 {
        let at = self.check(offset);
        // SAFETY: inside BAR0 (checked), which `open` verified lies in the
        // identity map below 4 GiB where non-RAM is mapped uncached.
        unsafe { (at as *const u32).read_volatile() }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        let at = self.check(offset);
        // SAFETY: as for `read32`.
        unsafe { (at as *mut u32).write_volatile(value) }
    }
}

/// Pages from the guest's DMA pool.
pub struct PoolDma;

impl Dma for PoolDma {
    fn alloc(&mut self, pages: usize) -> Option<DmaBuf> {
        dma::alloc(pages).map(|(addr, len)| DmaBuf { addr, len })
    }
    fn free(&mut self, buf: DmaBuf) {
        dma::free(buf.addr, buf.len)
    }
    fn read(&mut self, addr: u64, out: &mut [u8]) {
        dma::read(addr, out)
    }
    fn write(&mut self, addr: u64, data: &[u8]) {
        dma::write(addr, data)
    }
}

/// The calibrated TSC.
pub struct TscClock;

impl Clock for TscClock {
    fn now_ns(&mut self) -> u64 {
        tsc::now_ns()
    }
}

/// The NVMe function to drive, ready for `Controller::init`.
pub struct Device {
    pub pci: &'static pci::Function,
    pub function: Function,
    pub bar0: Bar0,
}

/// Why there is no device to drive.
pub enum OpenError {
    /// No NVMe function on the bus (a skip).
    Absent { scanned: usize },
    /// `nvme.bdf=` does not parse.
    BadBdf,
    /// `nvme.bdf=` names no function.
    NoSuchFunction(Bdf),
    /// `nvme.bdf=` names a function that is not NVMe.
    NotNvme(Bdf, u32),
    /// BAR0 unusable: not memory, unassigned, too small or out of reach.
    Bar0(Bdf, Bar),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Absent { scanned } => write!(
                f,
                "no NVMe function (class 01:08:02) among {scanned} PCI functions"
            ),
            OpenError::BadBdf => write!(f, "nvme.bdf is not bb:dd.f"),
            OpenError::NoSuchFunction(b) => write!(f, "nvme.bdf={b}: no such function"),
            OpenError::NotNvme(b, class) => {
                write!(f, "nvme.bdf={b}: class {class:06x} is not NVMe (010802)")
            }
            OpenError::Bar0(b, bar) => write!(
                f,
                "{b}: BAR0 is {bar}: needs memory of at least {MIN_BAR0:#x} bytes, \
                 assigned, below {MAPPED_LIMIT:#x}"
            ),
        }
    }
}

/// Finds the function (`nvme.bdf`, else the first of class 01:08:02),
/// checks that BAR0 is reachable, enables memory decoding and bus
/// mastering, and resets the DMA pool for a new controller.
pub fn open(boot: &BootInfo, bdf: Option<&str>) -> Result<Device, OpenError> {
    let f = match bdf {
        Some(s) => {
            let want = Bdf::parse(s).ok_or(OpenError::BadBdf)?;
            let f = pci::functions()
                .find(|f| {
                    f.bdf.bus == want.bus && f.bdf.device == want.dev && f.bdf.function == want.func
                })
                .ok_or(OpenError::NoSuchFunction(want))?;
            if f.class_code != CLASS_NVME {
                return Err(OpenError::NotNvme(want, f.class_code));
            }
            f
        }
        None => pci::find_class(CLASS_NVME).ok_or(OpenError::Absent {
            scanned: pci::functions().count(),
        })?,
    };
    let bdf = Bdf {
        bus: f.bdf.bus,
        dev: f.bdf.device,
        func: f.bdf.function,
    };
    let bar0 = match f.bars[0] {
        Bar::Memory { base, size, .. }
            if base != 0 && size >= MIN_BAR0 && base.saturating_add(size) <= MAPPED_LIMIT =>
        {
            Bar0 { base, size }
        }
        other => return Err(OpenError::Bar0(bdf, other)),
    };
    let config = f.config();
    let sriov_total_vfs = config
        .find_ext_capability(ext_cap::SRIOV)
        .map(|at| config.read16(at + SRIOV_TOTAL_VFS));
    config.enable_memory_and_bus_master();
    dma::init(boot);
    Ok(Device {
        pci: f,
        function: Function {
            bdf,
            vendor: f.vendor_id,
            device: f.device_id,
            sriov_total_vfs,
        },
        bar0,
    })
}
