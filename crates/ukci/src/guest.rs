//! Building the guest: its own cargo workspace under guest/, target
//! x86_64-unknown-none, installed into images/ for runs to boot: the PVH ELF
//! (`-kernel`) and the firmware-less ROM image (`-bios`) beside it.

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;
use ukci_runner::qemu;
use ukci_runner::rundir::replace_atomically;
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
///
/// Cargo is not asked at all when the images were built from the sources
/// there are now: see [`fingerprint`].
pub fn build(layout: &Layout) -> Result<PathBuf> {
    let guest_dir = layout.root.join("guest");
    let dest = layout.guest_image();
    let stamp = fingerprint_file(&dest);
    // Taken before building: sources edited during the build make the
    // record older than the images, and the next run builds again.
    let fingerprint = fingerprint(&guest_dir);
    let built = || dest.exists() && qemu::rom_image_for(&dest).exists();
    if fingerprint.is_some() && std::fs::read_to_string(&stamp).ok() == fingerprint && built() {
        return Ok(dest);
    }
    let sh = Shell::new()?;
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
    install(&dest, &pvh)?;
    install(&qemu::rom_image_for(&dest), &rom)?;
    if let Some(f) = fingerprint {
        replace_atomically(&stamp, |tmp| std::fs::write(tmp, f))
            .with_context(|| format!("writing {}", stamp.display()))?;
    }
    Ok(dest)
}

/// Where the fingerprint of the sources the images were built from is kept.
fn fingerprint_file(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".fingerprint");
    PathBuf::from(name)
}

/// A digest of everything a guest build depends on: the contents of guest/
/// and of every crate it builds from (its path dependencies, transitively),
/// the toolchain's library for the target, and this program (which holds
/// the build steps). `None` when the toolchain cannot be told without
/// rustup: then cargo decides.
pub fn fingerprint(guest_dir: &Path) -> Option<String> {
    let std_lib = crate::prereq::guest_target_dir(guest_dir)?.join("lib");
    let mut h = Sha256::new();
    for file in [std_lib, std::env::current_exe().ok()?] {
        let meta = std::fs::metadata(&file).ok()?;
        let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
        h.update(format!(
            "{} {} {}\n",
            file.display(),
            meta.len(),
            mtime.as_nanos()
        ));
    }
    for krate in crates_of(guest_dir).ok()? {
        for file in files_under(&krate).ok()? {
            let bytes = std::fs::read(&file).ok()?;
            h.update(format!("{} {}\n", file.display(), bytes.len()));
            h.update(&bytes);
        }
    }
    Some(format!("{:x}\n", h.finalize()))
}

/// The crate at `dir` and every crate it reaches through `path = ...`
/// dependencies, each once.
fn crates_of(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![dir.canonicalize()?];
    while let Some(krate) = todo.pop() {
        if !seen.insert(krate.clone()) {
            continue;
        }
        let manifest: toml::Table = std::fs::read_to_string(krate.join("Cargo.toml"))?.parse()?;
        let targets = manifest.get("target").and_then(|t| t.as_table());
        let tables = std::iter::once(&manifest).chain(
            targets
                .into_iter()
                .flat_map(|t| t.values().filter_map(|v| v.as_table())),
        );
        for table in tables {
            for kind in ["dependencies", "build-dependencies"] {
                let deps = table.get(kind).and_then(|d| d.as_table());
                for dep in deps.into_iter().flat_map(|d| d.values()) {
                    if let Some(path) = dep.get("path").and_then(|p| p.as_str()) {
                        todo.push(krate.join(path).canonicalize()?);
                    }
                }
            }
        }
    }
    Ok(seen)
}

/// Every file under `dir` but build output (`target/`), in a fixed order.
fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name() != Some("target".as_ref()) {
                    todo.push(path);
                }
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
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
    fn the_fingerprint_covers_every_crate_the_guest_builds_from_but_no_build_output() {
        let d = std::env::temp_dir().join(format!("ukci-guestfp-{}", std::process::id()));
        let write = |rel: &str, text: &str| {
            let f = d.join(rel);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, text).unwrap();
        };
        write(
            "guest/Cargo.toml",
            "[dependencies]\nx = \"1\"\np = { path = \"../crates/p\" }\n\
             [target.'cfg(x)'.build-dependencies]\nb = { path = \"../crates/b\" }\n",
        );
        write("guest/src/main.rs", "");
        write("guest/target/release/ukci-guest", "");
        write(
            "crates/p/Cargo.toml",
            "[dependencies]\nq = { path = \"../q\" }\n",
        );
        write(
            "crates/q/Cargo.toml",
            "[dependencies]\np = { path = \"../p\" }\n",
        );
        write("crates/b/Cargo.toml", "");
        write("crates/unused/Cargo.toml", "");
        let d = d.canonicalize().unwrap();
        let crates: Vec<PathBuf> = crates_of(&d.join("guest")).unwrap().into_iter().collect();
        let want: Vec<PathBuf> = ["crates/b", "crates/p", "crates/q", "guest"]
            .iter()
            .map(|c| d.join(c))
            .collect();
        assert_eq!(crates, want);
        assert_eq!(
            files_under(&d.join("guest")).unwrap(),
            vec![d.join("guest/Cargo.toml"), d.join("guest/src/main.rs")]
        );
        std::fs::remove_dir_all(&d).unwrap();
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
