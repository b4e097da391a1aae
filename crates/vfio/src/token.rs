//! The VF token: a UUID shared by the PF's user and the VFs' users. It is a
//! secret (whoever knows it can open the VFs), so it never reaches an argv,
//! a log line or a report: [`Token`] prints as `<redacted>`, and the only
//! ways out are the VFIO calls in this crate and [`Token::write_private_with`].

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// What a token (or anything else secret) prints as.
pub const REDACTED: &str = "<redacted>";

/// A VF token. Byte order is the textual order (what the kernel's
/// `uuid_parse` produces and `VFIO_DEVICE_FEATURE` expects).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Uuid);

impl Token {
    /// A fresh version-4 UUID from the operating system's random source.
    pub fn random() -> Token {
        Token(Uuid::new_v4())
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

    /// Writes a file only the owner can read (mode 0600, created exclusively)
    /// whose content `render` makes from the token's text — a QEMU
    /// `-readconfig` file with `vf-token`, say — so that another process gets
    /// the token without an argv. Returns its path.
    pub fn write_private_with(
        &self,
        dir: &Path,
        render: impl FnOnce(&str) -> String,
    ) -> io::Result<PathBuf> {
        let path = dir.join(format!("vf-token-{}", Uuid::new_v4().simple()));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(render(&self.text()).as_bytes())?;
        f.sync_all()?;
        Ok(path)
    }

    /// Whether the token's text occurs in `haystack` (an argv, a file), for
    /// the checks that prove it never leaks.
    pub fn appears_in(&self, haystack: &[u8]) -> bool {
        let t = self.text();
        haystack
            .windows(t.len())
            .any(|w| w.eq_ignore_ascii_case(t.as_bytes()))
    }
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
    use std::os::unix::fs::PermissionsExt;

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
    fn the_private_file_is_owner_only_and_holds_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let t = Token::random();
        let p = t
            .write_private_with(dir.path(), |text| format!("{text}\n"))
            .unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n", t.text())
        );
        assert!(!p.to_string_lossy().contains(&t.text()));
    }
}
