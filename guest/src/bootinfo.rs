//! What the boot loader tells the guest, copied into a static once: QEMU's
//! PVH `hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h) after
//! a `-kernel` boot, or the fw_cfg files `opt/ukci/cmdline` and `etc/e820`
//! after a firmware-less ROM boot.

use crate::fwcfg;
use crate::sync::Global;

/// How arch/boot.s was entered: the second argument of `rust_main`.
pub const ENTRY_PVH: u64 = 1;
pub const ENTRY_ROM: u64 = 2;
/// The fw_cfg file the runner puts the command line in for a ROM boot.
pub const FW_CFG_CMDLINE: &str = "opt/ukci/cmdline";
const FW_CFG_E820: &str = "etc/e820";
/// `struct e820_entry` as QEMU stores it: address, length (u64), type (u32),
/// packed, little-endian.
const E820_ENTRY: usize = 20;

const PVH_MAGIC: u32 = 0x336e_c578;
/// Longer command lines are cut here (QEMU's own limit is far above).
const MAX_CMDLINE: usize = 4096;
pub const MAX_REGIONS: usize = 32;

/// Where a ROM boot keeps what it read from fw_cfg (the PVH loader's
/// structures stay where QEMU put them).
static CMDLINE: Global<[u8; MAX_CMDLINE]> = Global::new([0; MAX_CMDLINE]);
static E820: Global<[u8; MAX_REGIONS * E820_ENTRY]> = Global::new([0; MAX_REGIONS * E820_ENTRY]);

#[repr(C)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    // Version 1 and later.
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
struct HvmMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// E820 region types, as the PVH memory map uses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    Ram,
    Reserved,
    Acpi,
    AcpiNvs,
    Unusable,
    Other(u32),
}

impl RegionKind {
    fn from_e820(kind: u32) -> Self {
        match kind {
            1 => RegionKind::Ram,
            2 => RegionKind::Reserved,
            3 => RegionKind::Acpi,
            4 => RegionKind::AcpiNvs,
            5 => RegionKind::Unusable,
            n => RegionKind::Other(n),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub start: u64,
    pub size: u64,
    pub kind: RegionKind,
}

impl Region {
    pub const fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }
}

/// The boot path the guest came in by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `-kernel` through the machine's firmware; see `start_info`.
    Pvh,
    /// `-bios` with this image, no firmware; boot info from fw_cfg.
    Rom {
        /// fw_cfg answered with DMA support (else there is no boot info).
        dma: bool,
    },
}

pub struct BootInfo {
    pub protocol: Protocol,
    /// Physical address of the start info, 0 if there was none.
    pub start_info: u64,
    /// `hvm_start_info.version`, `None` if the magic did not match.
    pub pvh_version: Option<u32>,
    pub cmdline: &'static str,
    pub rsdp: u64,
    regions: [Region; MAX_REGIONS],
    nr_regions: usize,
}

static BOOT_INFO: Global<BootInfo> = Global::new(BootInfo {
    protocol: Protocol::Pvh,
    start_info: 0,
    pvh_version: None,
    cmdline: "",
    rsdp: 0,
    regions: [Region {
        start: 0,
        size: 0,
        kind: RegionKind::Reserved,
    }; MAX_REGIONS],
    nr_regions: 0,
});

impl BootInfo {
    /// Reads the PVH start info at `addr`. A missing or foreign structure
    /// gives an empty `BootInfo` (no command line, so no checks run and the
    /// guest says so) rather than a crash.
    ///
    /// # Safety
    /// `addr` is 0 or the physical address of a PVH start info whose pointers
    /// (command line, memory map) stay valid and unchanged for the guest's
    /// life; called once, before anything else reads `BootInfo`.
    pub unsafe fn from_pvh(addr: u64) -> &'static BootInfo {
        // SAFETY: called once at boot, before any shared reference exists.
        let bi = unsafe { &mut *BOOT_INFO.get() };
        bi.start_info = addr;
        if addr == 0 {
            return bi;
        }
        // SAFETY: the caller guarantees `addr` points at a start info.
        let si = unsafe { &*(addr as *const HvmStartInfo) };
        if si.magic != PVH_MAGIC {
            return bi;
        }
        bi.pvh_version = Some(si.version);
        bi.rsdp = si.rsdp_paddr;
        // SAFETY: the caller guarantees the command line pointer is valid.
        bi.cmdline = unsafe { c_str(si.cmdline_paddr) };
        if si.version >= 1 && si.memmap_paddr != 0 {
            let n = (si.memmap_entries as usize).min(MAX_REGIONS);
            // SAFETY: version 1 start infos carry a memory map of
            // `memmap_entries` entries at `memmap_paddr`.
            let entries =
                unsafe { core::slice::from_raw_parts(si.memmap_paddr as *const HvmMemmapEntry, n) };
            for (slot, e) in bi.regions.iter_mut().zip(entries) {
                *slot = Region {
                    start: e.addr,
                    size: e.size,
                    kind: RegionKind::from_e820(e.kind),
                };
            }
            bi.nr_regions = n;
        }
        bi
    }

    /// Reads the command line and the memory map from fw_cfg. Without fw_cfg
    /// DMA, or with a file missing, that part stays empty (as for a missing
    /// PVH start info).
    ///
    /// # Safety
    /// Called once, before anything else reads `BootInfo`.
    pub unsafe fn from_fw_cfg() -> &'static BootInfo {
        // SAFETY: called once at boot, before any shared reference exists.
        let bi = unsafe { &mut *BOOT_INFO.get() };
        let dma = fwcfg::dma_present();
        bi.protocol = Protocol::Rom { dma };
        if !dma {
            return bi;
        }
        if let Some(f) = fwcfg::find(FW_CFG_CMDLINE) {
            // SAFETY: only this function uses CMDLINE, once.
            let buf = unsafe { &mut *CMDLINE.get() };
            let len = (f.size as usize).min(MAX_CMDLINE);
            if fwcfg::read(f.key, &mut buf[..len]) {
                let bytes = &buf[..len];
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(len);
                bi.cmdline = utf8_prefix(&bytes[..end]);
            }
        }
        if let Some(f) = fwcfg::find(FW_CFG_E820) {
            // SAFETY: only this function uses E820, once.
            let buf = unsafe { &mut *E820.get() };
            let len = (f.size as usize).min(buf.len());
            if fwcfg::read(f.key, &mut buf[..len]) {
                let entries = buf[..len].chunks_exact(E820_ENTRY);
                let n = entries.len();
                for (slot, e) in bi.regions.iter_mut().zip(entries) {
                    let u64_at =
                        |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().expect("8 bytes"));
                    *slot = Region {
                        start: u64_at(0),
                        size: u64_at(8),
                        kind: RegionKind::from_e820(u32::from_le_bytes(
                            e[16..20].try_into().expect("4 bytes"),
                        )),
                    };
                }
                bi.nr_regions = n.min(MAX_REGIONS);
            }
        }
        bi
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.nr_regions]
    }

    pub fn ram(&self) -> impl Iterator<Item = &Region> + '_ {
        self.regions().iter().filter(|r| r.kind == RegionKind::Ram)
    }

    pub fn ram_bytes(&self) -> u64 {
        self.ram().map(|r| r.size).sum()
    }
}

/// A NUL-terminated string at `addr`, cut at `MAX_CMDLINE` and at the first
/// byte that is not UTF-8 (the protocol is ASCII).
///
/// # Safety
/// `addr` is 0 or points at readable memory up to a NUL or `MAX_CMDLINE`.
unsafe fn c_str(addr: u64) -> &'static str {
    if addr == 0 {
        return "";
    }
    let p = addr as *const u8;
    let mut len = 0;
    // SAFETY: the caller guarantees readability up to the NUL or the limit.
    while len < MAX_CMDLINE && unsafe { p.add(len).read() } != 0 {
        len += 1;
    }
    // SAFETY: the `len` bytes were just read.
    utf8_prefix(unsafe { core::slice::from_raw_parts(p, len) })
}

/// `bytes` up to the first byte that is not UTF-8.
fn utf8_prefix(bytes: &'static [u8]) -> &'static str {
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
    }
}
