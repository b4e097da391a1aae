//! The newc cpio format: the writer the image is built with, and a reader
//! for tests and diagnostics.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

/// File type bits of a cpio entry's mode.
pub mod mode {
    pub const DIR: u32 = 0o040000;
    pub const FILE: u32 = 0o100000;
    pub const SYMLINK: u32 = 0o120000;
    pub const CHAR: u32 = 0o020000;
}

/// Writes a newc (`070701`) cpio archive, the format the kernel unpacks as an
/// initramfs. Owner root, mtime 0, so the same input gives the same bytes.
pub struct CpioWriter<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            offset: 0,
            next_ino: 1,
        }
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, mode::DIR | perm, 2, (0, 0), b"")
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, mode::FILE | perm, 1, (0, 0), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, mode::SYMLINK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, mode::CHAR | perm, 1, (major, minor), b"")
    }

    /// Writes the `TRAILER!!!` entry and hands back the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), b"")?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: too big for cpio"),
            )
        })?;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08X}"));
        }
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.offset % 4) as usize) % 4;
        self.write(&[0; 3][..n])
    }
}

/// One entry read back from a newc archive (for tests and diagnostics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub name: String,
    pub mode: u32,
    pub nlink: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
    /// Offset of the header in the archive.
    pub offset: usize,
}

/// Reads a newc archive up to and including its trailer, checking magic and
/// 4-byte alignment of every header and data start.
pub fn read_cpio(mut archive: &[u8]) -> Result<Vec<CpioEntry>, String> {
    let total = archive.len();
    let mut entries = Vec::new();
    loop {
        let offset = total - archive.len();
        if !offset.is_multiple_of(4) {
            return Err(format!("header at {offset} not 4-byte aligned"));
        }
        if archive.len() < 110 {
            return Err(format!("truncated header at {offset}"));
        }
        let header = &archive[..110];
        if &header[..6] != b"070701" {
            return Err(format!("bad magic at {offset}"));
        }
        let field = |i: usize| {
            let s =
                std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).map_err(|e| e.to_string())?;
            u32::from_str_radix(s, 16).map_err(|e| format!("field {i} at {offset}: {e}"))
        };
        let (mode, nlink, size, rmaj, rmin, namesize) = (
            field(1)?,
            field(4)?,
            field(6)? as usize,
            field(9)?,
            field(10)?,
            field(11)? as usize,
        );
        let name_end = 110 + namesize;
        let data_start = name_end.next_multiple_of(4);
        let data_end = data_start + size;
        if archive.len() < data_end {
            return Err(format!("truncated entry at {offset}"));
        }
        if archive[name_end - 1] != 0 {
            return Err(format!("name at {offset} not NUL-terminated"));
        }
        if archive[name_end..data_start].iter().any(|&b| b != 0) {
            return Err(format!("non-zero name padding at {offset}"));
        }
        let name = String::from_utf8_lossy(&archive[110..name_end - 1]).into_owned();
        let data = archive[data_start..data_end].to_vec();
        let next = data_end.next_multiple_of(4).min(archive.len());
        archive = &archive[next..];
        let done = name == "TRAILER!!!";
        entries.push(CpioEntry {
            name,
            mode,
            nlink,
            rdev: (rmaj, rmin),
            data,
            offset,
        });
        if done {
            return Ok(entries);
        }
    }
}

/// Reads a whole file (small helper for callers checking an image).
pub fn read_cpio_file(path: &Path) -> Result<Vec<CpioEntry>, String> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    read_cpio(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_round_trips_names_modes_sizes_and_trailer() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("bin/busybox", 0o755, b"hello").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("empty", 0o644, b"").unwrap();
        w.file("abcd", 0o644, b"1234").unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);

        let e = read_cpio(&bytes).unwrap();
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev/console",
                "empty",
                "abcd",
                "TRAILER!!!"
            ]
        );
        assert_eq!(e[0].mode, mode::DIR | 0o755);
        assert_eq!(e[0].nlink, 2);
        assert_eq!(
            (e[1].mode, e[1].data.as_slice()),
            (mode::FILE | 0o755, &b"hello"[..])
        );
        assert_eq!(
            (e[2].mode, e[2].data.as_slice()),
            (mode::SYMLINK | 0o777, &b"busybox"[..])
        );
        assert_eq!((e[3].mode, e[3].rdev), (mode::CHAR | 0o600, (5, 1)));
        assert!(e[4].data.is_empty());
        assert_eq!(e[5].data, b"1234");
        assert_eq!(e[6].mode, 0);
        assert!(e.iter().all(|e| e.offset % 4 == 0));
        // The header is plain ASCII: magic then the inode number.
        assert_eq!(&bytes[..14], b"07070100000001");
    }

    #[test]
    fn cpio_reader_rejects_a_missing_trailer() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("a", 0o644, b"x").unwrap();
        let mut bytes = w.finish().unwrap();
        let cut = read_cpio(&bytes).unwrap().last().unwrap().offset;
        bytes.truncate(cut);
        assert!(read_cpio(&bytes).unwrap_err().contains("truncated"));
    }
}
