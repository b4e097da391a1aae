//! PCI configuration space access: port CF8/CFC (mechanism #1, the first 256
//! bytes) everywhere it exists, ECAM (all 4 KiB, needed for extended
//! capabilities such as SR-IOV) where the machine has it.

use crate::arch::port;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
const ENABLE: u32 = 1 << 31;

/// Q35's MCH (host bridge 00:00.0) and its PCIEXBAR register.
const Q35_MCH: (u16, u16) = (0x8086, 0x29c0);
const PCIEXBAR: u16 = 0x60;
const PCIEXBAR_ENABLE: u32 = 1;
/// Where SeaBIOS puts ECAM on Q35; used when nothing has enabled it yet.
const DEFAULT_ECAM: u32 = 0xb000_0000;

/// Bus, device, function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl Bdf {
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Bdf {
            bus,
            device,
            function,
        }
    }
}

/// `00:1f.3`, as lspci writes it.
impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
    }
}

static CF8_PRESENT: AtomicBool = AtomicBool::new(false);
static ECAM_BASE: AtomicU64 = AtomicU64::new(0);

/// Finds the access mechanisms. Port CF8 is there if it reads back what was
/// written (microvm has none). ECAM comes from Q35's PCIEXBAR, which is
/// enabled at the SeaBIOS address if firmware left it off.
pub(super) fn init() {
    // SAFETY: CONFIG_ADDRESS only latches an address; on machines without
    // it the port reads as all-ones and the write goes nowhere.
    let present = unsafe {
        port::outl(CONFIG_ADDRESS, ENABLE);
        port::inl(CONFIG_ADDRESS) == ENABLE
    };
    CF8_PRESENT.store(present, Ordering::Relaxed);
    if !present {
        return;
    }
    let host = ConfigSpace::new(Bdf::new(0, 0, 0));
    if (host.vendor_id(), host.device_id()) != Q35_MCH {
        return;
    }
    let low = host.read32(PCIEXBAR);
    let high = host.read32(PCIEXBAR + 4);
    let base = if low & PCIEXBAR_ENABLE != 0 {
        // Bits 2:1 give the size (256/128/64 buses) and so the base alignment.
        let mask: u32 = match (low >> 1) & 3 {
            0 => 0xf000_0000,
            1 => 0xf800_0000,
            _ => 0xfc00_0000,
        };
        (u64::from(high) << 32) | u64::from(low & mask)
    } else {
        host.write32(PCIEXBAR + 4, 0);
        host.write32(PCIEXBAR, DEFAULT_ECAM | PCIEXBAR_ENABLE);
        u64::from(DEFAULT_ECAM)
    };
    // The identity map ends at 4 GiB; a base above it stays unused.
    if base + (256 << 20) <= crate::arch::paging::MAPPED_LIMIT {
        ECAM_BASE.store(base, Ordering::Relaxed);
    }
}

pub fn cf8_present() -> bool {
    CF8_PRESENT.load(Ordering::Relaxed)
}

/// The ECAM base in use, if any.
pub fn ecam_base() -> Option<u64> {
    match ECAM_BASE.load(Ordering::Relaxed) {
        0 => None,
        base => Some(base),
    }
}

/// Which mechanism a read or write goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Cf8,
    Ecam,
}

/// The configuration space of one function. Reads that cannot be done (no
/// mechanism, an extended offset without ECAM) return all-ones, as a missing
/// device does; such writes are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigSpace {
    pub bdf: Bdf,
}

/// The common header registers.
pub mod reg {
    pub const VENDOR_ID: u16 = 0x00;
    pub const DEVICE_ID: u16 = 0x02;
    pub const COMMAND: u16 = 0x04;
    pub const STATUS: u16 = 0x06;
    pub const REVISION: u16 = 0x08;
    pub const CLASS: u16 = 0x09;
    pub const HEADER_TYPE: u16 = 0x0e;
    pub const BAR0: u16 = 0x10;
    pub const SECONDARY_BUS: u16 = 0x19;
    pub const CAPABILITIES: u16 = 0x34;
}

/// Command register bits.
pub mod command {
    pub const IO: u16 = 1 << 0;
    pub const MEMORY: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Capability IDs (the list at 0x34).
pub mod cap {
    pub const PM: u8 = 0x01;
    pub const MSI: u8 = 0x05;
    pub const VENDOR: u8 = 0x09;
    pub const PCIE: u8 = 0x10;
    pub const MSIX: u8 = 0x11;
}

/// Extended capability IDs (the list at 0x100, ECAM only).
pub mod ext_cap {
    pub const AER: u16 = 0x0001;
    pub const ARI: u16 = 0x000e;
    pub const SRIOV: u16 = 0x0010;
}

const STATUS_CAP_LIST: u16 = 1 << 4;

impl ConfigSpace {
    pub const fn new(bdf: Bdf) -> Self {
        ConfigSpace { bdf }
    }

    /// How an access at `offset` would be made, if it can be.
    pub fn mechanism(&self, offset: u16) -> Option<Mechanism> {
        if ecam_base().is_some() && offset < 4096 {
            Some(Mechanism::Ecam)
        } else if cf8_present() && offset < 256 {
            Some(Mechanism::Cf8)
        } else {
            None
        }
    }

    fn ecam_addr(&self, base: u64, offset: u16) -> u64 {
        let b = self.bdf;
        base + ((b.bus as u64) << 20 | (b.device as u64) << 15 | (b.function as u64) << 12)
            + u64::from(offset)
    }

    fn cf8_select(&self, offset: u16) {
        let b = self.bdf;
        let addr = ENABLE
            | (b.bus as u32) << 16
            | (b.device as u32 & 0x1f) << 11
            | (b.function as u32 & 7) << 8
            | (offset as u32 & 0xfc);
        // SAFETY: selecting a config address has no effect by itself.
        unsafe { port::outl(CONFIG_ADDRESS, addr) };
    }

    pub fn read32(&self, offset: u16) -> u32 {
        match self.mechanism(offset) {
            Some(m) => self.read32_with(m, offset),
            None => u32::MAX,
        }
    }

    /// A read through a given mechanism (to compare them); all-ones if the
    /// machine lacks it or it cannot reach `offset`.
    pub fn read32_with(&self, mechanism: Mechanism, offset: u16) -> u32 {
        let offset = offset & !3;
        let reachable = match mechanism {
            Mechanism::Ecam => ecam_base().is_some() && offset < 4096,
            Mechanism::Cf8 => cf8_present() && offset < 256,
        };
        match reachable.then_some(mechanism) {
            // SAFETY: inside the ECAM window, which is identity-mapped UC.
            Some(Mechanism::Ecam) => unsafe {
                (self.ecam_addr(ECAM_BASE.load(Ordering::Relaxed), offset) as *const u32)
                    .read_volatile()
            },
            Some(Mechanism::Cf8) => {
                self.cf8_select(offset);
                // SAFETY: reads the selected config dword.
                unsafe { port::inl(CONFIG_DATA) }
            }
            None => u32::MAX,
        }
    }

    pub fn read16(&self, offset: u16) -> u16 {
        (self.read32(offset) >> ((offset & 2) * 8)) as u16
    }

    pub fn read8(&self, offset: u16) -> u8 {
        (self.read32(offset) >> ((offset & 3) * 8)) as u8
    }

    pub fn write32(&self, offset: u16, value: u32) {
        self.write(offset & !3, 4, value);
    }

    pub fn write16(&self, offset: u16, value: u16) {
        self.write(offset & !1, 2, u32::from(value));
    }

    pub fn write8(&self, offset: u16, value: u8) {
        self.write(offset, 1, u32::from(value));
    }

    /// A naturally aligned write of `size` bytes (no read-modify-write: that
    /// would write back RW1C status bits).
    fn write(&self, offset: u16, size: u16, value: u32) {
        match self.mechanism(offset) {
            Some(Mechanism::Ecam) => {
                let addr = self.ecam_addr(ECAM_BASE.load(Ordering::Relaxed), offset);
                // SAFETY: inside the ECAM window; the caller chose the register.
                unsafe {
                    match size {
                        1 => (addr as *mut u8).write_volatile(value as u8),
                        2 => (addr as *mut u16).write_volatile(value as u16),
                        _ => (addr as *mut u32).write_volatile(value),
                    }
                }
            }
            Some(Mechanism::Cf8) => {
                self.cf8_select(offset);
                let data = CONFIG_DATA + (offset & 3);
                // SAFETY: writes the selected config register.
                unsafe {
                    match size {
                        1 => port::outb(data, value as u8),
                        2 => port::outw(data, value as u16),
                        _ => port::outl(data, value),
                    }
                }
            }
            None => {}
        }
    }

    pub fn vendor_id(&self) -> u16 {
        self.read16(reg::VENDOR_ID)
    }

    pub fn device_id(&self) -> u16 {
        self.read16(reg::DEVICE_ID)
    }

    /// Whether a function answers at this address.
    pub fn exists(&self) -> bool {
        self.vendor_id() != 0xffff
    }

    /// Class, subclass, programming interface as one 24-bit number
    /// (`0x010802` is an NVMe controller).
    pub fn class_code(&self) -> u32 {
        self.read32(reg::REVISION) >> 8
    }

    pub fn command(&self) -> u16 {
        self.read16(reg::COMMAND)
    }

    pub fn set_command(&self, value: u16) {
        self.write16(reg::COMMAND, value);
    }

    /// Turns on memory decoding and DMA, as a driver does before touching
    /// BAR0 and handing the device queue memory.
    pub fn enable_memory_and_bus_master(&self) {
        self.set_command(self.command() | command::MEMORY | command::BUS_MASTER);
    }

    /// The standard capability list: `(id, offset)`.
    pub fn capabilities(&self) -> Capabilities {
        let next = if self.read16(reg::STATUS) & STATUS_CAP_LIST != 0 {
            self.read8(reg::CAPABILITIES) & !3
        } else {
            0
        };
        Capabilities {
            config: *self,
            next,
            budget: 48,
        }
    }

    pub fn find_capability(&self, id: u8) -> Option<u16> {
        self.capabilities()
            .find(|&(c, _)| c == id)
            .map(|(_, at)| at)
    }

    /// The extended capability list (ECAM only): `(id, version, offset)`.
    pub fn ext_capabilities(&self) -> ExtCapabilities {
        let next = if self.mechanism(0x100) == Some(Mechanism::Ecam) {
            0x100
        } else {
            0
        };
        ExtCapabilities {
            config: *self,
            next,
            budget: 480,
        }
    }

    pub fn find_ext_capability(&self, id: u16) -> Option<u16> {
        self.ext_capabilities()
            .find(|&(c, _, _)| c == id)
            .map(|(_, _, at)| at)
    }
}

/// Walks the capability list; `budget` stops a malformed (looping) list.
pub struct Capabilities {
    config: ConfigSpace,
    next: u8,
    budget: u8,
}

impl Iterator for Capabilities {
    type Item = (u8, u16);

    fn next(&mut self) -> Option<(u8, u16)> {
        if self.next < 0x40 || self.budget == 0 {
            return None;
        }
        self.budget -= 1;
        let at = u16::from(self.next);
        let header = self.config.read16(at);
        self.next = (header >> 8) as u8 & !3;
        Some((header as u8, at))
    }
}

pub struct ExtCapabilities {
    config: ConfigSpace,
    next: u16,
    budget: u16,
}

impl Iterator for ExtCapabilities {
    type Item = (u16, u8, u16);

    fn next(&mut self) -> Option<(u16, u8, u16)> {
        if self.next < 0x100 || self.budget == 0 {
            return None;
        }
        self.budget -= 1;
        let at = self.next;
        let header = self.config.read32(at);
        if header == 0 || header == u32::MAX {
            return None;
        }
        self.next = (header >> 20) as u16 & !3;
        Some((header as u16, (header >> 16) as u8 & 0xf, at))
    }
}
