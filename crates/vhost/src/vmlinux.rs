//! The host kernel as an uncompressed ELF that QEMU starts at its PVH entry.
//!
//! A bzImage decompresses itself in the guest. Under TCG that costs 1 s for a
//! zstd kernel (6.12 and later) and 3.5–4 s for an xz one (6.1). The payload
//! inside a bzImage is the kernel's ELF (`vmlinux`, stripped); Debian builds
//! with `CONFIG_PVH`, so QEMU can load that ELF with `-kernel` and jump to its
//! PVH entry, initrd and command line as with the bzImage. It is unpacked
//! once on this host and cached in the per-user cache under `vmlinux/`, keyed
//! by the bzImage's path, size and mtime.
//!
//! A bzImage this cannot unpack (another compressor, no PVH entry) is booted
//! as it is: the result is the same host, only slower.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::cache::{self, EntryLock, Fnv};
use crate::initramfs::mtime;

/// Bumped whenever what is cached changes.
const FORMAT: &str = "ukci-vmlinux-1";

/// The payload's compression, from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Xz,
    Zstd,
}

/// Where the compressed kernel sits in a bzImage and how it is compressed:
/// `setup_sects` (0x1f1), `payload_offset` (0x248) and `payload_length`
/// (0x24c) of the boot protocol (2.08+), the payload counted from the end of
/// the real-mode setup. `None` when the bytes are not such a bzImage or the
/// compression is another one.
pub fn payload(bzimage: &[u8]) -> Option<(&[u8], Compression)> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(bzimage.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bzimage.get(o..o + 4)?.try_into().ok()?));
    if bzimage.get(0x202..0x206)? != b"HdrS" || u16_at(0x206)? < 0x208 {
        return None;
    }
    let setup_sects = match *bzimage.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + usize::try_from(u32_at(0x248)?).ok()?;
    let len = usize::try_from(u32_at(0x24c)?).ok()?;
    let data = bzimage.get(start..start.checked_add(len)?)?;
    let kind = if data.starts_with(b"\xfd7zXZ\0") {
        Compression::Xz
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        return None;
    };
    Some((data, kind))
}

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the note that carries the PVH entry point.
const PVH_NOTE: u32 = 18;

/// Whether an x86-64 ELF has a PVH entry note (in a `PT_NOTE` segment, as
/// QEMU looks for it).
pub fn has_pvh_entry(elf: &[u8]) -> bool {
    pvh_entry(elf).unwrap_or(false)
}

fn pvh_entry(elf: &[u8]) -> Option<bool> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return Some(false);
    }
    const PT_NOTE: u32 = 4;
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let (phentsize, phnum) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != PT_NOTE {
            continue;
        }
        let (mut at, size) = (
            usize::try_from(u64_at(ph + 8)?).ok()?,
            usize::try_from(u64_at(ph + 32)?).ok()?,
        );
        let end = at.checked_add(size)?;
        // Notes: namesz, descsz, type, then name and desc, each 4-aligned.
        while at + 12 <= end {
            let (namesz, descsz) = (u32_at(at)? as usize, u32_at(at + 4)? as usize);
            let name = elf.get(at + 12..at + 12 + namesz)?;
            if u32_at(at + 8)? == PVH_NOTE && name.starts_with(b"Xen") {
                return Some(true);
            }
            at += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
        }
    }
    Some(false)
}

fn unpack(data: &[u8], kind: Compression) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 5);
    match kind {
        Compression::Xz => {
            // The reader owns its input.
            xz4rust::XzReader::new(io::Cursor::new(data.to_vec())).read_to_end(&mut out)?;
        }
        Compression::Zstd => {
            let mut d = ruzstd::decoding::StreamingDecoder::new(data)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            d.read_to_end(&mut out)?;
        }
    }
    Ok(out)
}

/// The kernel to hand QEMU for `bzimage`: its cached PVH ELF (unpacked now
/// when not cached yet), or the bzImage itself when it cannot be unpacked or
/// has no PVH entry. Errors are this host's (reading, writing the cache).
pub fn for_boot(cache_root: &Path, bzimage: &Path) -> io::Result<PathBuf> {
    let canonical = fs::canonicalize(bzimage)?;
    let meta = fs::metadata(&canonical)?;
    let mut h = Fnv::new();
    h.bytes(FORMAT.as_bytes())
        .bytes(canonical.as_os_str().as_encoded_bytes())
        .bytes(&meta.len().to_le_bytes())
        .bytes(&mtime(&meta).to_le_bytes());
    let dir = cache_root.join("vmlinux");
    let name = canonical.file_name().unwrap_or_default().to_string_lossy();
    let elf_path = dir.join(format!("{name}-{}.elf", h.hex()));
    // A bzImage that has nothing to unpack is remembered too, so it is read once.
    let none_path = dir.join(format!("{name}-{}.none", h.hex()));
    let known = || {
        if elf_path.exists() {
            Some(elf_path.clone())
        } else if none_path.exists() {
            Some(bzimage.to_owned())
        } else {
            None
        }
    };
    if let Some(p) = known() {
        return Ok(p);
    }
    fs::create_dir_all(&dir)?;
    let _lock = EntryLock::acquire(&elf_path)?;
    if let Some(p) = known() {
        return Ok(p);
    }
    let bytes = fs::read(&canonical)?;
    let elf = match payload(&bytes) {
        Some((data, kind)) => unpack(data, kind).ok().filter(|e| has_pvh_entry(e)),
        None => None,
    };
    match elf {
        Some(elf) => {
            cache::write_atomic(&elf_path, &elf)?;
            Ok(elf_path)
        }
        None => {
            cache::write_atomic(&none_path, b"")?;
            Ok(bzimage.to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage header with the given payload after 1 + 4 setup sectors.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 5 * 512 + 16];
        b[0x1f1] = 4;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        b[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(payload);
        b.extend_from_slice(b"tail");
        b
    }

    #[test]
    fn the_payload_is_found_by_the_header_and_known_by_its_magic() {
        let zstd = [0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3];
        let b = bzimage(&zstd);
        assert_eq!(payload(&b), Some((&zstd[..], Compression::Zstd)));
        let xz = *b"\xfd7zXZ\0abc";
        assert_eq!(payload(&bzimage(&xz)), Some((&xz[..], Compression::Xz)));
        // gzip, or no bzImage at all: booted as it is.
        assert_eq!(payload(&bzimage(b"\x1f\x8b\x08\0")), None);
        assert_eq!(payload(b"\x7fELF"), None);
        let mut old = bzimage(&zstd);
        old[0x206..0x208].copy_from_slice(&0x207u16.to_le_bytes());
        assert_eq!(
            payload(&old),
            None,
            "no payload fields before protocol 2.08"
        );
        let mut short = bzimage(&zstd);
        short.truncate(5 * 512 + 18);
        assert_eq!(payload(&short), None);
    }

    /// An ELF64 header and one PT_NOTE holding `notes`.
    fn elf_with_notes(notes: &[(&[u8], u32)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, ty) in notes {
            body.extend_from_slice(&(name.len() as u32).to_le_bytes());
            body.extend_from_slice(&4u32.to_le_bytes());
            body.extend_from_slice(&ty.to_le_bytes());
            body.extend_from_slice(name);
            body.resize(body.len().next_multiple_of(4), 0);
            body.extend_from_slice(&[0xaa; 4]);
        }
        let mut e = vec![0u8; 64 + 56];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        e[64..68].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        e[64 + 8..64 + 16].copy_from_slice(&120u64.to_le_bytes());
        e[64 + 32..64 + 40].copy_from_slice(&(body.len() as u64).to_le_bytes());
        e.extend_from_slice(&body);
        e
    }

    #[test]
    fn only_an_elf_with_the_xen_pvh_note_boots_at_its_pvh_entry() {
        assert!(has_pvh_entry(&elf_with_notes(&[
            (b"Linux\0", 1),
            (b"Xen\0", 18)
        ])));
        assert!(!has_pvh_entry(&elf_with_notes(&[
            (b"Xen\0", 17),
            (b"GNU\0", 18)
        ])));
        assert!(!has_pvh_entry(b"\x7fELF\x01\x01"));
        let mut cut = elf_with_notes(&[(b"Xen\0", 18)]);
        cut.truncate(130);
        assert!(!has_pvh_entry(&cut));
    }
}
