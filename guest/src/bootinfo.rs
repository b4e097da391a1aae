//! What the boot loader tells the guest: QEMU's PVH `hvm_start_info`
//! (xen/include/public/arch-x86/hvm/start_info.h), copied into a static once.

use crate::sync::Global;

const PVH_MAGIC: u32 = 0x336e_c578;
/// Longer command lines are cut here (QEMU's own limit is far above).
const MAX_CMDLINE: usize = 4096;
pub const MAX_REGIONS: usize = 32;

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

pub struct BootInfo {
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
    let bytes = unsafe { core::slice::from_raw_parts(p, len) };
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
    }
}
