//! The VF token: a UUID shared by the PF's user and the VFs' users. It is a
//! secret (whoever knows it can open the VFs), so it never reaches an argv,
//! a log line, a report or a file: [`Token`] prints as `<redacted>`, and the
//! only ways out are the VFIO calls in this crate and [`Token::sealed_config`],
//! an anonymous in-memory file that a child process inherits.
//!
//! Every token a process makes is remembered as a [`Digest`] (SHA-256 of its
//! text), which may be shown and passed between processes; the end-of-run
//! scan ([`files_holding_tokens`]) looks for every remembered token in every
//! file a run wrote.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// What a token (or anything else secret) prints as.
pub const REDACTED: &str = "<redacted>";

/// A VF token. Byte order is the textual order (what the kernel's
/// `uuid_parse` produces and `VFIO_DEVICE_FEATURE` expects).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Uuid);

impl Token {
    /// A fresh version-4 UUID from the operating system's random source,
    /// remembered for the end-of-run scan.
    pub fn random() -> Token {
        let t = Token(Uuid::new_v4());
        remember(t.digest());
        t
    }

    /// Reads a token's text (another process's, handed over a pipe) and
    /// remembers it.
    pub fn parse(text: &str) -> Option<Token> {
        let t = Token(Uuid::try_parse(text.trim()).ok()?);
        remember(t.digest());
        Some(t)
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Token {
        Token(Uuid::from_bytes(bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The hyphenated text form, only for building the VFIO device name.
    pub(crate) fn text(&self) -> String {
        self.0.hyphenated().to_string()
    }

    /// What the token may be shown as: the SHA-256 of its text.
    pub fn digest(&self) -> Digest {
        Digest::of(self.text().as_bytes())
    }

    /// An anonymous, sealed in-memory file whose content `render` makes
    /// from the token's text — a QEMU `-readconfig` file with `vf-token`,
    /// say. It never has a name on any filesystem; a child process reads it
    /// as [`SecretFile::path`] after inheriting it, and it is gone when the
    /// last descriptor closes.
    pub fn sealed_config(&self, render: impl FnOnce(&str) -> String) -> io::Result<SecretFile> {
        SecretFile::new(render(&self.text()).as_bytes())
    }

    /// Whether the token's text occurs in `haystack` (an argv, a file), for
    /// the checks that prove it never leaks.
    pub fn appears_in(&self, haystack: &[u8]) -> bool {
        uuids_in(haystack).any(|u| u == self.0)
    }
}

/// A sealed memfd holding a secret (see [`Token::sealed_config`]).
#[derive(Debug)]
pub struct SecretFile {
    fd: OwnedFd,
}

impl SecretFile {
    /// A sealed memfd holding `content`.
    pub fn new(content: &[u8]) -> io::Result<SecretFile> {
        // SAFETY: the name is a NUL-terminated literal; memfd_create returns
        // a new descriptor or -1 and touches no memory of ours.
        let raw = unsafe {
            libc::memfd_create(
                c"ukci-vf-token".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut f = File::from(fd);
        f.write_all(content)?;
        let seals =
            libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        // SAFETY: F_ADD_SEALS on a memfd we own; no pointers are passed.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SecretFile { fd: f.into() })
    }

    /// The descriptor a child must inherit (it is close-on-exec in this
    /// process, so no other child gets it).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The path a child that inherited [`Self::raw_fd`] opens it by.
    pub fn path(&self) -> PathBuf {
        proc_fd_path(self.raw_fd())
    }
}

/// `/proc/self/fd/N`: works in a process that has descriptor `N`, also
/// where `/dev/fd` does not exist (a bare initramfs).
pub fn proc_fd_path(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

/// The SHA-256 of a token's text: safe to print, log and pass around.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// Parses the 64 hex digits [`Digest`] prints as.
    pub fn parse(hex: &str) -> Option<Digest> {
        let hex = hex.trim();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Every token this process made, read or was told of.
static REMEMBERED: Mutex<BTreeSet<Digest>> = Mutex::new(BTreeSet::new());

/// Adds a token (by its digest) to those the end-of-run scan looks for.
pub fn remember(d: Digest) {
    REMEMBERED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(d);
}

/// The digests of every token this process made, read or was told of.
pub fn remembered() -> Vec<Digest> {
    REMEMBERED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .copied()
        .collect()
}

/// Every UUID written out in `text` (hyphenated, any case).
fn uuids_in(text: &[u8]) -> impl Iterator<Item = Uuid> + '_ {
    const LEN: usize = 36;
    let shaped = |w: &[u8]| {
        w.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
    };
    text.windows(LEN)
        .filter(move |w| shaped(w))
        .filter_map(|w| Uuid::try_parse_ascii(w).ok())
}

/// Files under `dir` (recursively) that hold the text of a token whose
/// digest is in `digests`. The paths are safe to show; the values are not
/// returned.
pub fn files_holding_tokens(dir: &Path, digests: &[Digest]) -> Vec<PathBuf> {
    let wanted: BTreeSet<Digest> = digests.iter().copied().collect();
    let holds = |bytes: &[u8]| {
        uuids_in(bytes).any(|u| wanted.contains(&Digest::of(u.hyphenated().to_string().as_bytes())))
    };
    let mut out = Vec::new();
    if wanted.is_empty() {
        return out;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() && std::fs::read(&p).is_ok_and(|b| holds(&b)) => {
                    out.push(p);
                }
                _ => {}
            }
        }
    }
    out.sort();
    out
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({REDACTED})")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// What follows the device name in `VFIO_GROUP_GET_DEVICE_FD`.
#[derive(Clone, Debug)]
pub enum NameToken<'a> {
    /// Just the device name.
    None,
    /// ` vf_token=<uuid>`.
    Token(&'a Token),
    /// Literal text after the name (malformed options in rule checks; not secret).
    Raw(&'a str),
}

impl NameToken<'_> {
    /// The full device name for the ioctl (contains the secret).
    pub(crate) fn device_name(&self, bdf: &str) -> String {
        match self {
            NameToken::None => bdf.to_owned(),
            NameToken::Token(t) => format!("{bdf} vf_token={}", t.text()),
            NameToken::Raw(s) => format!("{bdf} {s}"),
        }
    }

    /// The same name with the token redacted, for errors and reports.
    pub fn shown(&self, bdf: &str) -> String {
        match self {
            NameToken::None => bdf.to_owned(),
            NameToken::Token(_) => format!("{bdf} vf_token={REDACTED}"),
            NameToken::Raw(s) => format!("{bdf} {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_never_prints_its_value() {
        let t = Token::random();
        let text = t.text();
        for shown in [
            format!("{t}"),
            format!("{t:?}"),
            format!("{:?}", Some(&t)),
            NameToken::Token(&t).shown("0000:01:00.1"),
        ] {
            assert!(!shown.contains(&text), "{shown}");
            assert!(!shown.contains(&text[..8]), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
    }

    #[test]
    fn the_device_name_carries_the_token_in_text_order() {
        let t = Token::from_bytes([
            0x2a, 0xb7, 0x49, 0x24, 0xc3, 0x35, 0x45, 0xf4, 0x9b, 0x16, 0x85, 0x69, 0xe5, 0xb0,
            0x82, 0x58,
        ]);
        assert_eq!(
            NameToken::Token(&t).device_name("0000:03:00.1"),
            "0000:03:00.1 vf_token=2ab74924-c335-45f4-9b16-8569e5b08258"
        );
        assert_eq!(NameToken::None.device_name("0000:03:00.1"), "0000:03:00.1");
        assert_eq!(
            NameToken::Raw("vf_token=nope").shown("0000:03:00.1"),
            "0000:03:00.1 vf_token=nope"
        );
    }

    #[test]
    fn random_tokens_are_v4_and_differ() {
        let (a, b) = (Token::random(), Token::random());
        assert_ne!(a, b);
        assert_eq!(a.bytes()[6] >> 4, 4, "version nibble");
        assert_eq!(a.bytes()[8] >> 6, 0b10, "RFC 4122 variant");
    }

    #[test]
    fn the_sealed_config_has_no_name_and_holds_the_text() {
        let t = Token::random();
        let f = t
            .sealed_config(|text| format!("vf-token = \"{text}\"\n"))
            .unwrap();
        assert!(!f.path().to_string_lossy().contains(&t.text()));
        let link = std::fs::read_link(f.path()).unwrap();
        assert!(
            link.to_string_lossy().starts_with("/memfd:"),
            "not an anonymous file: {}",
            link.display()
        );
        assert_eq!(
            std::fs::read_to_string(f.path()).unwrap(),
            format!("vf-token = \"{}\"\n", t.text())
        );
        // Sealed: not even its owner can change it.
        let w = std::fs::OpenOptions::new()
            .write(true)
            .open(f.path())
            .and_then(|mut w| w.write_all(b"changed"));
        assert!(w.is_err(), "a sealed secret file was written");
    }

    #[test]
    fn the_scan_names_every_file_holding_a_remembered_token_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, other) = (Token::random(), Token::random(), Uuid::new_v4());
        std::fs::create_dir(dir.path().join("vhost")).unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("junit.xml", format!("<x>{}</x>", a.text().to_uppercase()));
        write("vhost/serial.log", format!("vf_token={}\r\n", b.text()));
        write("clean.log", format!("uuid {other} and {a}"));
        let found = files_holding_tokens(dir.path(), &[a.digest(), b.digest()]);
        let names: Vec<_> = found
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["junit.xml", "vhost/serial.log"]);
        assert!(files_holding_tokens(dir.path(), &[]).is_empty());
    }

    #[test]
    fn tokens_are_remembered_and_digests_round_trip() {
        let t = Token::random();
        assert!(remembered().contains(&t.digest()));
        let d = t.digest();
        assert_eq!(Digest::parse(&d.to_string()), Some(d));
        assert!(!d.to_string().contains(&t.text()[..8]));
        let heard = Token::parse(&format!(" {}\n", t.text())).unwrap();
        assert_eq!(heard, t);
        assert_eq!(Token::parse("nope"), None);
        assert_eq!(Digest::parse("zz"), None);
    }
}
