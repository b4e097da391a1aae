//! The host config (`/etc/ukci/host.toml`, `UKCI_HOST_CONFIG`): the PCI
//! functions ukci may change on this host, and the host-check context built
//! from it — what host checks and guests with a VF work on.

use crate::diag::{Diagnostics, SourceFile, shown};
use std::path::{Path, PathBuf};

/// What host checks and guests with a VF work on.
#[derive(Clone, Debug, Default)]
pub struct HostCheckContext {
    /// The SR-IOV PF the checks may use; `None` when nothing names one.
    pub pf: Option<String>,
    /// Where it was named, or why none was (for skip reasons).
    pub pf_source: String,
    /// The restore journal of this host.
    pub journal: PathBuf,
    /// A folder for files the checks create (scratch images, token files).
    pub scratch: PathBuf,
    /// The guest image, for checks that boot one.
    pub guest: PathBuf,
}

/// The PF of the local lane: named in the host config, or none, with where
/// it came from. A host config that exists but is wrong is an error: ukci
/// would otherwise skip every host check quietly.
pub fn local_pf(config: &Path) -> Result<(Option<String>, String), Diagnostics> {
    let Ok(text) = std::fs::read_to_string(config) else {
        return Ok((
            None,
            format!(
                "no host config at {} naming one (ukci touches only PCI functions named there: pf = \"0000:3b:00.0\")",
                config.display()
            ),
        ));
    };
    Ok(match parse_host_config(config, &text)? {
        Some(pf) => (Some(pf), format!("named in {}", config.display())),
        None => (None, format!("{} names no pf", config.display())),
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HostConfig {
    pf: Option<toml::Spanned<String>>,
}

fn parse_host_config(path: &Path, text: &str) -> Result<Option<String>, Diagnostics> {
    let src = SourceFile::new(path, text);
    let c: HostConfig = toml::from_str(text).map_err(|e| {
        Diagnostics::one(src.at(
            e.span().unwrap_or(0..0),
            e.message().trim().to_string(),
            "the host config holds one key: pf = \"0000:3b:00.0\"",
        ))
    })?;
    match c.pf {
        Some(pf) if !valid_bdf(pf.get_ref()) => Err(Diagnostics::one(src.at(
            pf.span(),
            format!(
                "pf = \"{}\" is not a PCI address like 0000:3b:00.0",
                shown(pf.get_ref())
            ),
            "name the SR-IOV PF by its full address, as in /sys/bus/pci/devices",
        ))),
        pf => Ok(pf.map(|p| p.into_inner())),
    }
}

fn valid_bdf(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_config_names_the_pf_or_says_why_not() {
        let parse =
            |t: &str| parse_host_config(Path::new("host.toml"), t).map_err(|d| d.to_string());
        assert_eq!(
            parse("pf = \"0000:3b:00.0\"\n"),
            Ok(Some("0000:3b:00.0".into()))
        );
        assert_eq!(parse(""), Ok(None));
        let e = parse("pf = \"3b:00.0\"\n").unwrap_err();
        assert!(
            e.contains("host.toml:1:6: pf = \"3b:00.0\" is not a PCI address"),
            "{e}"
        );
        let e = parse("pff = \"0000:3b:00.0\"\n").unwrap_err();
        assert!(e.contains("host.toml:1:1: unknown field `pff`"), "{e}");
        let (pf, why) = local_pf(Path::new("/nonexistent/ukci/host.toml")).unwrap();
        assert_eq!(pf, None);
        assert!(why.contains("/nonexistent/ukci/host.toml"), "{why}");
    }
}
