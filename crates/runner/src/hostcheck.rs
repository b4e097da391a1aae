//! Host checks: checks the runner runs on the host it is on (in a virtual
//! lane, inside the virtual host), reporting through the same protocol as
//! guest checks. Those that change devices touch only the PF they are given
//! and journal every change first (`ukci_vfio::Host`).

use crate::diag::{Diagnostics, SourceFile, shown};
use crate::vf;
use std::path::{Path, PathBuf};
use ukci_protocol::Reporter;
use ukci_vfio::checks::{self as vc, Lane};
use ukci_vfio::{Host, Sysfs};

/// What host checks work on.
#[derive(Clone, Debug, Default)]
pub struct HostContext {
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

type Run = fn(&mut Lane<'_>, &HostContext, &mut Reporter<&mut String>);

pub struct HostCheck {
    pub name: &'static str,
    pub summary: &'static str,
    run: Run,
}

pub const HOST_CHECKS: &[HostCheck] = &[
    HostCheck {
        name: "vfio.env",
        summary: "records the VFIO environment: vfio-pci with enable_sriov, IOMMU groups, the PF, /dev/vfio/devices",
        run: |l, _, r| vc::vfio_env(l, r),
    },
    HostCheck {
        name: "vf-token.rules",
        summary: "the VF-token rules with the PF on vfio-pci: the kernel selftest's cases and the uAPI's errnos",
        run: |l, _, r| vc::vf_token_rules(l, r),
    },
    HostCheck {
        name: "vf-token.kernel-pf",
        summary: "a token while the PF is on the kernel driver (EINVAL), vfio-pci refusing a PF whose VFs exist (EBUSY)",
        run: |l, _, r| vc::vf_token_kernel_pf(l, r),
    },
    HostCheck {
        name: "vf-token.cdev",
        summary: "the token through the vfio cdev / iommufd path, where the kernel has it",
        run: |l, _, r| vc::vf_token_cdev(l, r),
    },
    HostCheck {
        name: "vf-token.pf-driver",
        summary: "the userspace NVMe PF driver brings two VFs online, each VF ready through its own token-opened device",
        run: |l, _, r| vc::nvme_pf(l, 2, r),
    },
    HostCheck {
        name: "vf-token.qemu",
        summary: "QEMU refuses a VF without the token or with a wrong one, and starts the guest with the right one",
        run: vf::qemu_honours_token,
    },
    HostCheck {
        name: "vf-token.crash-recovery",
        summary: "the runner is SIGKILLed at points of a VF run; the next run restores every device exactly",
        run: vf::crash_recovery,
    },
    HostCheck {
        name: "vf-token.secrets",
        summary: "no file the run has written holds any VF token the run used (run it last)",
        run: vf::no_secret_files,
    },
];

pub fn find(name: &str) -> Option<&'static HostCheck> {
    HOST_CHECKS.iter().find(|c| c.name == name)
}

/// Runs host checks in order and returns the protocol text, as a guest's
/// serial log would read. The journal of an earlier crashed run is replayed
/// first (`Host::open`); every check leaves the PF as it found it.
pub fn run(checks: &[String], ctx: &HostContext) -> String {
    let mut out = String::new();
    let mut r = Reporter::new(&mut out);
    let Some(pf) = ctx.pf.clone() else {
        for name in checks {
            r.skip(name, format_args!("no SR-IOV PF to use: {}", ctx.pf_source));
        }
        r.finish();
        return out;
    };
    match Host::open(Sysfs::system(), &ctx.journal, &[pf.as_str()]) {
        Err(e) => {
            for name in checks {
                r.check(false, name, format_args!("cannot take the PF {pf}: {e}"));
            }
        }
        Ok((mut host, replay)) => {
            if !replay.restored.is_empty() || !replay.left.is_empty() {
                r.info(format_args!(
                    "restore journal of an earlier run replayed: {} restored, {} left",
                    replay.restored.len(),
                    replay.left.len()
                ));
            }
            for line in replay
                .left
                .iter()
                .map(ToString::to_string)
                .chain(replay.notes)
            {
                r.info(format_args!("{line}"));
            }
            let mut lane = Lane {
                host: &mut host,
                pf,
            };
            for name in checks {
                match find(name) {
                    Some(c) => (c.run)(&mut lane, ctx, &mut r),
                    None => {
                        r.check(false, name, format_args!("unknown host check"));
                    }
                }
            }
            if let Err(e) = host.restore() {
                r.check(false, "restore", format_args!("{e}"));
            }
        }
    }
    r.finish();
    out
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

    #[test]
    fn without_a_pf_every_host_check_skips_with_the_reason() {
        let ctx = HostContext {
            pf: None,
            pf_source: "no host config".into(),
            ..Default::default()
        };
        let out = run(&["vf-token.rules".into()], &ctx);
        assert!(
            out.contains("SKIP: vf-token.rules (no SR-IOV PF to use: no host config)"),
            "{out}"
        );
        assert!(out.contains("EXIT: STATUS=77"), "{out}");
    }
}
