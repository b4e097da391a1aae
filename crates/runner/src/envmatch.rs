//! Environments and the conditions manifests put on them: requirements
//! (`requires`) and the environments an expectation applies in (`when`).

use serde::{Deserialize, Deserializer};
use std::fmt;

/// Everything a result depends on, as recorded in reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Environment {
    /// The accelerator the VMs actually run under: `kvm` or `tcg`.
    pub accel: String,
    /// Why `auto` chose this accelerator.
    pub accel_reason: String,
    pub qemu_version: Version,
    /// `uname -r` of the host the VMs run on.
    pub host_kernel: String,
    /// `kvm_intel`, `kvm_amd`, `kvm_pvm`, or none.
    pub kvm_module: Option<String>,
    /// The layer below the KVM under test, where ukci knows it: `tcg`
    /// inside a virtual host under TCG (QEMU's emulation of SVM is what
    /// kvm_amd runs on), `kvm` inside one under KVM.
    pub kvm_host: Option<String>,
    /// What the kernel said of its KVM modules (their dmesg lines, a load
    /// error), where ukci loaded them.
    pub kvm_log: String,
    pub cpu_model: String,
    /// Set when the tests run inside a virtual test host.
    pub virtual_host: Option<VirtualHost>,
}

/// The host kernel a virtual lane boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualHost {
    /// As the manifest or `--kernel` names it: `debian:6.12`.
    pub kernel: String,
    pub package: Option<String>,
    pub version: Option<String>,
    /// The emulated IOMMU and its mode.
    pub iommu: String,
}

impl Environment {
    /// The short label used in suite names: the accelerator on this host,
    /// the kernel in a virtual lane.
    pub fn label(&self) -> String {
        match &self.virtual_host {
            Some(v) => v.kernel.clone(),
            None => self.accel.clone(),
        }
    }

    /// The fingerprint written as report properties.
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        let mut p = match &self.virtual_host {
            None => vec![("lane", "local".to_string())],
            Some(v) => vec![
                ("lane", "virtual".to_string()),
                ("kernel", v.kernel.clone()),
                (
                    "kernel.package",
                    v.package.clone().unwrap_or_else(|| "none (dir:)".into()),
                ),
                (
                    "kernel.version",
                    v.version.clone().unwrap_or_else(|| "unknown".into()),
                ),
                ("iommu", v.iommu.clone()),
            ],
        };
        p.extend(vec![
            ("accel", self.accel.clone()),
            ("accel.reason", self.accel_reason.clone()),
            ("qemu.version", self.qemu_version.to_string()),
            ("host.kernel", self.host_kernel.clone()),
            (
                "kvm.module",
                self.kvm_module.clone().unwrap_or_else(|| "none".into()),
            ),
            (
                "kvm.host",
                self.kvm_host.clone().unwrap_or_else(|| "unknown".into()),
            ),
            ("cpu.model", self.cpu_model.clone()),
        ]);
        if !self.kvm_log.is_empty() {
            p.push(("kvm.log", self.kvm_log.clone()));
        }
        p
    }
}

/// A dotted version such as `10.0.2` or `6.12.95`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub Vec<u32>);

impl Version {
    /// Reads the leading dotted number of `s` (`6.1.0-28-amd64` → 6.1.0).
    pub fn parse_prefix(s: &str) -> Option<Version> {
        let head: String = s
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let parts: Option<Vec<u32>> = head
            .split('.')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().ok())
            .collect();
        parts.filter(|p| !p.is_empty()).map(Version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|p| p.to_string()).collect();
        f.write_str(&parts.join("."))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Ge,
    Gt,
    Le,
    Lt,
    /// Same leading components: `=6.1` matches 6.1.192.
    Eq,
}

/// `>=6.1, <6.13` and the like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionReq {
    text: String,
    terms: Vec<(Op, Version)>,
}

impl VersionReq {
    pub fn parse(s: &str) -> Result<VersionReq, String> {
        let mut terms = Vec::new();
        for term in s.split(',') {
            let t = term.trim();
            let (op, rest) = [
                (">=", Op::Ge),
                ("<=", Op::Le),
                (">", Op::Gt),
                ("<", Op::Lt),
                ("=", Op::Eq),
            ]
            .iter()
            .find_map(|(p, op)| t.strip_prefix(p).map(|r| (*op, r)))
            .unwrap_or((Op::Eq, t));
            let rest = rest.trim();
            let v = Version::parse_prefix(rest)
                .filter(|v| v.to_string() == rest)
                .ok_or_else(|| {
                    format!("`{s}` is not a version requirement; write e.g. \">=10.0\" or \">=6.1, <6.13\"")
                })?;
            terms.push((op, v));
        }
        Ok(VersionReq {
            text: s.trim().to_string(),
            terms,
        })
    }

    pub fn matches(&self, v: &Version) -> bool {
        self.terms.iter().all(|(op, want)| {
            let n = want.0.len();
            let have = Version(v.0.iter().copied().take(n).collect());
            match op {
                Op::Eq => have == *want,
                Op::Ge => have >= *want,
                Op::Gt => have > *want,
                Op::Le => have <= *want,
                Op::Lt => have < *want,
            }
        })
    }
}

impl fmt::Display for VersionReq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for VersionReq {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        VersionReq::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One value or a list of alternatives.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn contains(&self, v: &str) -> bool {
        match self {
            OneOrMany::One(s) => s == v,
            OneOrMany::Many(l) => l.iter().any(|s| s == v),
        }
    }
}

impl fmt::Display for OneOrMany {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OneOrMany::One(s) => f.write_str(s),
            OneOrMany::Many(l) => f.write_str(&l.join(" or ")),
        }
    }
}

/// Conditions on an environment; every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvMatch {
    /// `kvm` or `tcg`.
    pub accel: Option<OneOrMany>,
    pub qemu: Option<VersionReq>,
    pub host_kernel: Option<VersionReq>,
    /// `kvm_intel`, `kvm_amd`, `kvm_pvm` or `none`.
    pub kvm_module: Option<OneOrMany>,
    /// The layer below the KVM under test: `tcg`, `kvm` or `unknown`.
    pub kvm_host: Option<OneOrMany>,
}

impl EnvMatch {
    pub fn is_empty(&self) -> bool {
        *self == EnvMatch::default()
    }

    /// `Ok` when the environment matches, else the first mismatch in words.
    pub fn check(&self, env: &Environment) -> Result<(), String> {
        if let Some(a) = &self.accel
            && !a.contains(&env.accel)
        {
            return Err(format!(
                "needs accel {a}, this run uses {} ({})",
                env.accel, env.accel_reason
            ));
        }
        if let Some(q) = &self.qemu
            && !q.matches(&env.qemu_version)
        {
            return Err(format!(
                "needs QEMU {q}, this host has {}",
                env.qemu_version
            ));
        }
        if let Some(k) = &self.host_kernel {
            let v = Version::parse_prefix(&env.host_kernel).unwrap_or_default();
            if !k.matches(&v) {
                return Err(format!(
                    "needs host kernel {k}, this host runs {}",
                    env.host_kernel
                ));
            }
        }
        if let Some(m) = &self.kvm_module {
            let have = env.kvm_module.as_deref().unwrap_or("none");
            if !m.contains(have) {
                return Err(format!("needs KVM module {m}, this host has {have}"));
            }
        }
        if let Some(h) = &self.kvm_host {
            let have = env.kvm_host.as_deref().unwrap_or("unknown");
            if !h.contains(have) {
                return Err(format!("needs KVM running on {h}, here it runs on {have}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Environment {
        Environment {
            accel: "tcg".into(),
            accel_reason: "requested".into(),
            qemu_version: Version(vec![10, 0, 2]),
            host_kernel: "6.1.0-28-amd64".into(),
            kvm_module: Some("kvm_pvm".into()),
            kvm_host: None,
            kvm_log: String::new(),
            cpu_model: "AMD EPYC".into(),
            virtual_host: None,
        }
    }

    #[test]
    fn version_requirements() {
        let v = Version::parse_prefix("6.12.95+deb12-amd64").unwrap();
        assert_eq!(v, Version(vec![6, 12, 95]));
        assert!(VersionReq::parse(">=6.1, <6.13").unwrap().matches(&v));
        assert!(VersionReq::parse("6.12").unwrap().matches(&v));
        assert!(!VersionReq::parse("6.1").unwrap().matches(&v));
        assert!(VersionReq::parse("6.x").is_err());
        assert!(VersionReq::parse(">= ten").is_err());
    }

    #[test]
    fn mismatches_are_explained() {
        let m = EnvMatch {
            accel: Some(OneOrMany::One("kvm".into())),
            ..Default::default()
        };
        assert_eq!(
            m.check(&env()).unwrap_err(),
            "needs accel kvm, this run uses tcg (requested)"
        );
        let m = EnvMatch {
            kvm_module: Some(OneOrMany::Many(vec!["kvm_intel".into(), "kvm_amd".into()])),
            ..Default::default()
        };
        assert!(
            m.check(&env())
                .unwrap_err()
                .contains("kvm_intel or kvm_amd")
        );
        let m = EnvMatch {
            qemu: Some(VersionReq::parse(">=10.0").unwrap()),
            host_kernel: Some(VersionReq::parse("6.1").unwrap()),
            ..Default::default()
        };
        assert!(m.check(&env()).is_ok());
    }
}
