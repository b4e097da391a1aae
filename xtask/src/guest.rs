//! Building the guest: its own cargo workspace under guest/, target
//! x86_64-unknown-none, installed into images/ for runs to boot: the PVH ELF
//! (`-kernel`) and the firmware-less ROM image (`-bios`) beside it.

use anyhow::{Context, Result, bail, ensure};
use std::path::{Path, PathBuf};
use ukci_runner::qemu;
use ukci_runner::session::Layout;
use xshell::{Shell, cmd};

pub const TARGET: &str = "x86_64-unknown-none";

/// The size of the `-bios` image: it ends at 4 GiB, and its top 128 KiB are
/// what the CPU sees through the ISA-BIOS alias the reset code runs from.
pub const ROM_SIZE: usize = 128 << 10;

/// Builds the release guest twice (PVH ELF, then the `rom` feature's ELF,
/// flattened) and installs both atomically as images/ukci-guest and
/// images/ukci-guest.rom (a run that is booting the previous image is not
/// disturbed).
pub fn build(layout: &Layout) -> Result<PathBuf> {
    let sh = Shell::new()?;
    let guest_dir = layout.root.join("guest");
    sh.change_dir(&guest_dir);
    let target_dir = guest_dir.join("target");
    let cargo_build = |target_dir: &Path, features: &[&str]| -> Result<Vec<u8>> {
        // The guest's .cargo/config.toml is found from the working directory;
        // RUSTFLAGS from the caller would replace its flags, so drop them.
        cmd!(
            sh,
            "cargo build --release --quiet --target-dir {target_dir} {features...}"
        )
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .quiet()
        .run()
        .context("building the guest failed")?;
        let built = target_dir.join(TARGET).join("release").join("ukci-guest");
        std::fs::read(&built).with_context(|| format!("reading {}", built.display()))
    };
    let pvh = cargo_build(&target_dir, &[])?;
    // Its own target directory: both builds put their ELF at the same path
    // in it, and another build running at the same time (parallel tests)
    // could swap the files between one build and its read.
    let rom_elf = cargo_build(&target_dir.join("rom"), &["--features", "rom"])?;
    let rom = flatten_rom(&rom_elf).context("making the ROM image")?;
    std::fs::create_dir_all(layout.images())?;
    let dest = layout.guest_image();
    install(&dest, &pvh)?;
    install(&qemu::rom_image_for(&dest), &rom)?;
    Ok(dest)
}

/// Writes `bytes` to `dest` through a temporary file and a rename, and only
/// if they differ: unchanged images keep their timestamp, which keys the KVM
/// probe cache.
fn install(dest: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(dest).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    let name = dest.file_name().context("image path without a name")?;
    let tmp = dest.with_file_name(format!(
        ".{}.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("installing {}", dest.display()))?;
    Ok(())
}

const PT_LOAD: u32 = 1;

/// The ROM image: every load segment of the ROM ELF with file contents,
/// placed at its physical (load) address within the last `ROM_SIZE` bytes
/// below 4 GiB. Segments with nothing in the file (.bss) are skipped; any
/// other segment outside the ROM is an error, as is a ROM without a reset
/// vector.
pub fn flatten_rom(elf: &[u8]) -> Result<Vec<u8>> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    // ELF64, little-endian.
    ensure!(
        elf.get(..6) == Some(b"\x7fELF\x02\x01".as_slice()),
        "not a little-endian ELF64 file"
    );
    let truncated = || anyhow::anyhow!("truncated ELF file");
    let phoff = u64_at(0x20).ok_or_else(truncated)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(truncated)? as usize;
    let phnum = u16_at(0x38).ok_or_else(truncated)? as usize;
    let base: u64 = (1 << 32) - ROM_SIZE as u64;
    let mut rom = vec![0u8; ROM_SIZE];
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let kind = u32_at(ph).ok_or_else(truncated)?;
        let offset = u64_at(ph + 8).ok_or_else(truncated)? as usize;
        let paddr = u64_at(ph + 24).ok_or_else(truncated)?;
        let filesz = u64_at(ph + 32).ok_or_else(truncated)?;
        if kind != PT_LOAD || filesz == 0 {
            continue;
        }
        if paddr < base || paddr + filesz > 1 << 32 {
            bail!(
                "load segment {i} at {paddr:#x} (+{filesz:#x}) is outside the ROM ({base:#x}-4 GiB)"
            );
        }
        let data = elf
            .get(offset..offset + filesz as usize)
            .ok_or_else(truncated)?;
        let at = (paddr - base) as usize;
        rom[at..at + data.len()].copy_from_slice(data);
    }
    ensure!(
        rom[ROM_SIZE - 16..].iter().any(|&b| b != 0),
        "nothing at the reset vector (0xfffffff0): not a ROM build"
    );
    Ok(rom)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with the given (paddr, bytes) load segments.
    fn elf(segments: &[(u64, &[u8])]) -> Vec<u8> {
        let phoff = 64usize;
        let data_at = phoff + 56 * segments.len();
        let mut e = vec![0u8; data_at];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (i, (paddr, bytes)) in segments.iter().enumerate() {
            let ph = phoff + 56 * i;
            let offset = e.len() as u64;
            e[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            e[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            e[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            e[ph + 32..ph + 40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            e.extend_from_slice(bytes);
        }
        e
    }

    #[test]
    fn segments_land_at_their_load_address_in_the_rom() {
        let rom = flatten_rom(&elf(&[
            (0xfffe_0000, b"kernel"),
            (0x0010_0000, b""), // .bss: nothing in the file
            (0xffff_fff0, b"\xea\x00\xf0\x00\xf0"),
        ]))
        .unwrap();
        assert_eq!(rom.len(), ROM_SIZE);
        assert_eq!(&rom[..6], b"kernel");
        assert_eq!(rom[ROM_SIZE - 16], 0xea);
    }

    #[test]
    fn a_segment_outside_the_rom_or_no_reset_vector_is_refused() {
        let e = flatten_rom(&elf(&[(0x0010_0000, b"pvh")])).unwrap_err();
        assert!(e.to_string().contains("outside the ROM"), "{e}");
        let e = flatten_rom(&elf(&[(0xfffe_0000, b"kernel")])).unwrap_err();
        assert!(e.to_string().contains("reset vector"), "{e}");
        assert!(flatten_rom(b"MZ").is_err());
    }
}
