//! PCI: configuration access (`config`) and an enumeration of every function
//! behind the host bridge, bridges included, with decoded BARs.
//!
//! The first call to [`functions`] finds the access mechanisms and scans;
//! later calls return the same list. Drivers find their device with
//! [`find_class`], then use its [`ConfigSpace`] (command register,
//! capabilities, extended capabilities such as SR-IOV) and its [`Bar`]s.

mod config;

pub use config::{Bdf, ConfigSpace, Mechanism, cap, cf8_present, command, ecam_base, ext_cap, reg};

use crate::sync::Global;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

/// A decoded base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// Not implemented, or the upper half of the 64-bit BAR before it.
    None,
    Memory {
        base: u64,
        size: u64,
        is_64bit: bool,
        prefetchable: bool,
    },
    Io {
        base: u32,
        size: u32,
    },
}

/// `mem64 0xfebf0000 size 0x4000 pref`, `io 0xc000 size 0x40`.
impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Bar::None => f.write_str("none"),
            Bar::Memory {
                base,
                size,
                is_64bit,
                prefetchable,
            } => {
                let bits = if is_64bit { "64" } else { "32" };
                write!(f, "mem{bits} {base:#x} size {size:#x}")?;
                if prefetchable {
                    f.write_str(" pref")?;
                }
                Ok(())
            }
            Bar::Io { base, size } => write!(f, "io {base:#x} size {size:#x}"),
        }
    }
}

/// One function as found by the scan.
#[derive(Clone, Copy, Debug)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor_id: u16,
    pub device_id: u16,
    /// Class, subclass, programming interface.
    pub class_code: u32,
    pub revision: u8,
    /// Without the multi-function bit: 0 device, 1 PCI bridge, 2 CardBus.
    pub header_type: u8,
    pub bars: [Bar; 6],
}

impl Function {
    pub fn config(&self) -> ConfigSpace {
        ConfigSpace::new(self.bdf)
    }

    pub fn class_name(&self) -> &'static str {
        class_name(self.class_code)
    }

    /// The BARs that decode something, with their index.
    pub fn present_bars(&self) -> impl Iterator<Item = (usize, &Bar)> {
        self.bars
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != Bar::None)
    }
}

/// Upper bound on functions kept; a scan finding more says so in `truncated`.
pub const MAX_FUNCTIONS: usize = 64;

struct List {
    functions: [Option<Function>; MAX_FUNCTIONS],
    len: usize,
    truncated: bool,
}

static LIST: Global<List> = Global::new(List {
    functions: [None; MAX_FUNCTIONS],
    len: 0,
    truncated: false,
});
static SCANNED: AtomicBool = AtomicBool::new(false);

fn list() -> &'static List {
    if !SCANNED.load(Ordering::Acquire) {
        config::init();
        // SAFETY: single CPU; the list is written once, here, before the
        // flag below lets anyone read it.
        let list = unsafe { &mut *LIST.get() };
        if config::cf8_present() || config::ecam_base().is_some() {
            scan_bus(list, 0, 0);
        }
        SCANNED.store(true, Ordering::Release);
    }
    // SAFETY: written once above and never again.
    unsafe { &*LIST.get() }
}

/// Every function found, in scan order (depth-first through bridges).
pub fn functions() -> impl Iterator<Item = &'static Function> {
    let l = list();
    l.functions[..l.len].iter().flatten()
}

/// Whether the scan found more than [`MAX_FUNCTIONS`].
pub fn truncated() -> bool {
    list().truncated
}

/// The first function whose class code matches `class_code` (24 bits;
/// `0x010802` for NVMe).
pub fn find_class(class_code: u32) -> Option<&'static Function> {
    functions().find(|f| f.class_code == class_code)
}

pub fn find_id(vendor_id: u16, device_id: u16) -> Option<&'static Function> {
    functions().find(|f| f.vendor_id == vendor_id && f.device_id == device_id)
}

const HEADER_MULTIFUNCTION: u8 = 0x80;
const MAX_BRIDGE_DEPTH: u32 = 8;

fn scan_bus(list: &mut List, bus: u8, depth: u32) {
    for device in 0..32 {
        let first = ConfigSpace::new(Bdf::new(bus, device, 0));
        if !first.exists() {
            continue;
        }
        let functions = if first.read8(reg::HEADER_TYPE) & HEADER_MULTIFUNCTION != 0 {
            8
        } else {
            1
        };
        for function in 0..functions {
            let config = ConfigSpace::new(Bdf::new(bus, device, function));
            if !config.exists() {
                continue;
            }
            let f = probe(config);
            if list.len < MAX_FUNCTIONS {
                list.functions[list.len] = Some(f);
                list.len += 1;
            } else {
                list.truncated = true;
            }
            if f.header_type == 1 && depth < MAX_BRIDGE_DEPTH {
                // Bus numbers come from firmware; an unnumbered bridge (0) or
                // one pointing backwards is not followed.
                let secondary = config.read8(reg::SECONDARY_BUS);
                if secondary > bus {
                    scan_bus(list, secondary, depth + 1);
                }
            }
        }
    }
}

fn probe(config: ConfigSpace) -> Function {
    let header_type = config.read8(reg::HEADER_TYPE) & !HEADER_MULTIFUNCTION;
    let bar_count = match header_type {
        0 => 6,
        1 => 2,
        _ => 0,
    };
    Function {
        bdf: config.bdf,
        vendor_id: config.vendor_id(),
        device_id: config.device_id(),
        class_code: config.class_code(),
        revision: config.read8(reg::REVISION),
        header_type,
        bars: decode_bars(config, bar_count),
    }
}

const BAR_IO: u32 = 1;
const BAR_TYPE_64: u32 = 0b100;
const BAR_PREFETCHABLE: u32 = 0b1000;

/// Sizes the BARs the classic way: write all-ones, read back the mask,
/// restore. Decoding is off meanwhile so the device never answers at the
/// transient all-ones address.
fn decode_bars(config: ConfigSpace, count: usize) -> [Bar; 6] {
    let mut bars = [Bar::None; 6];
    let saved_command = config.command();
    config.set_command(saved_command & !(command::IO | command::MEMORY));
    let mut i = 0;
    while i < count {
        let at = reg::BAR0 + 4 * i as u16;
        let low = config.read32(at);
        config.write32(at, u32::MAX);
        let low_mask = config.read32(at);
        config.write32(at, low);
        if low & BAR_IO != 0 {
            let mask = low_mask & !3;
            if mask != 0 {
                // Devices may implement only 16 address bits.
                let mask = if mask >> 16 == 0 {
                    mask | 0xffff_0000
                } else {
                    mask
                };
                bars[i] = Bar::Io {
                    base: low & !3,
                    size: (!mask).wrapping_add(1),
                };
            }
            i += 1;
            continue;
        }
        let is_64bit = low & 0b110 == BAR_TYPE_64 && i + 1 < count;
        let (base, mask) = if is_64bit {
            let high = config.read32(at + 4);
            config.write32(at + 4, u32::MAX);
            let high_mask = config.read32(at + 4);
            config.write32(at + 4, high);
            (
                u64::from(high) << 32 | u64::from(low & !0xf),
                u64::from(high_mask) << 32 | u64::from(low_mask & !0xf),
            )
        } else {
            (
                u64::from(low & !0xf),
                0xffff_ffff_0000_0000 | u64::from(low_mask & !0xf),
            )
        };
        if mask & 0xffff_ffff != 0 || (is_64bit && mask >> 32 != 0) {
            bars[i] = Bar::Memory {
                base,
                size: (!mask).wrapping_add(1),
                is_64bit,
                prefetchable: low & BAR_PREFETCHABLE != 0,
            };
        }
        i += if is_64bit { 2 } else { 1 };
    }
    config.set_command(saved_command);
    bars
}

/// A short name for common class codes, for INFO lines.
pub fn class_name(class_code: u32) -> &'static str {
    match class_code >> 8 {
        0x0100 => "SCSI",
        0x0101 => "IDE",
        0x0106 => "SATA",
        0x0108 => "NVMe",
        0x0200 => "Ethernet",
        0x0300 => "VGA",
        0x0600 => "host bridge",
        0x0601 => "ISA bridge",
        0x0604 => "PCI bridge",
        0x0c05 => "SMBus",
        0x0c03 => "USB",
        0x0780 => "communication",
        0x0880 => "system peripheral",
        0x00ff | 0x0000 => "unclassified",
        _ => "other",
    }
}
