//! QEMU's firmware configuration device (fw_cfg, docs/specs/fw_cfg.rst) on
//! the x86 I/O ports, read through its DMA interface: one port write moves a
//! whole item, where the byte-wide data port would take one exit per byte.
//! The firmware-less boot gets its command line and memory map from here.

use crate::arch::port;
use crate::sync::Global;

const PORT_SELECTOR: u16 = 0x510;
const PORT_DATA: u16 = 0x511;
/// The DMA address register, big-endian: high half here, low half at +4;
/// writing the low half starts the transfer.
const PORT_DMA: u16 = 0x514;

const KEY_SIGNATURE: u16 = 0x0000;
const KEY_ID: u16 = 0x0001;
const KEY_FILE_DIR: u16 = 0x0019;
const ID_DMA: u32 = 1 << 1;

const DMA_ERROR: u32 = 1 << 0;
const DMA_READ: u32 = 1 << 1;
const DMA_SELECT: u32 = 1 << 3;

/// A DMA request; all fields big-endian.
#[repr(C, align(16))]
struct DmaAccess {
    control: u32,
    length: u32,
    address: u64,
}

/// Enough for QEMU's directory on every machine type (a few dozen files).
const MAX_FILES: usize = 128;
const DIR_ENTRY: usize = 64;
const NAME_LEN: usize = 56;
static DIR: Global<[u8; 4 + MAX_FILES * DIR_ENTRY]> = Global::new([0; 4 + MAX_FILES * DIR_ENTRY]);

/// Whether fw_cfg is there and offers DMA. Reads the signature and the
/// feature bits through the data port (8 bytes, the only byte-wise reads).
pub fn dma_present() -> bool {
    read_legacy(KEY_SIGNATURE) == u32::from_le_bytes(*b"QEMU") && read_legacy(KEY_ID) & ID_DMA != 0
}

/// The first four bytes of item `key`, little-endian.
fn read_legacy(key: u16) -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: selecting an item and reading the data port only move fw_cfg's
    // read cursor; no guest memory is involved.
    unsafe {
        port::outw(PORT_SELECTOR, key);
        for b in &mut bytes {
            *b = port::inb(PORT_DATA);
        }
    }
    u32::from_le_bytes(bytes)
}

/// Reads item `key` from its start into `buf`; past the item's end QEMU
/// fills zeros. False if the device flagged an error.
pub fn read(key: u16, buf: &mut [u8]) -> bool {
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    let access = DmaAccess {
        control: ((u32::from(key) << 16) | DMA_SELECT | DMA_READ).to_be(),
        length: len.to_be(),
        address: (buf.as_mut_ptr() as u64).to_be(),
    };
    let addr = (&raw const access) as u64;
    // SAFETY: the request describes `buf`, which is ours and writable for
    // `len` bytes, and QEMU completes it before the port write returns. The
    // port writes are compiler barriers (arch/port.rs), so `access` is in
    // memory before and `buf`/`access.control` are re-read after.
    unsafe {
        port::outl(PORT_DMA, ((addr >> 32) as u32).to_be());
        port::outl(PORT_DMA + 4, (addr as u32).to_be());
    }
    // SAFETY: `access` is a live local; the device wrote its control word.
    let control = u32::from_be(unsafe { (&raw const access.control).read_volatile() });
    control & DMA_ERROR == 0
}

/// A named item of the file directory: its key and size.
#[derive(Clone, Copy, Debug)]
pub struct File {
    pub key: u16,
    pub size: u32,
}

/// Looks `name` up in the file directory (one DMA transfer).
pub fn find(name: &str) -> Option<File> {
    // SAFETY: only this function uses DIR, and it is not re-entered (no
    // check runs before boot info is read).
    let dir = unsafe { &mut *DIR.get() };
    if !read(KEY_FILE_DIR, dir) {
        return None;
    }
    let count = u32::from_be_bytes([dir[0], dir[1], dir[2], dir[3]]) as usize;
    dir[4..]
        .chunks_exact(DIR_ENTRY)
        .take(count.min(MAX_FILES))
        .find_map(|e| {
            let file_name = &e[8..8 + NAME_LEN];
            let len = file_name.iter().position(|&c| c == 0).unwrap_or(NAME_LEN);
            (&file_name[..len] == name.as_bytes()).then(|| File {
                size: u32::from_be_bytes([e[0], e[1], e[2], e[3]]),
                key: u16::from_be_bytes([e[4], e[5]]),
            })
        })
}
