//! Environments and the conditions manifests put on them: requirements
//! (`requires`) and the environments an expectation applies in (`when`).

use serde::{Deserialize, Deserializer, de};
use std::fmt;
use ukci_vhost::accel::Accel;

/// Everything a result depends on, as recorded in reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Environment {
    /// The accelerator the VMs actually run under; `None` in the plan of a
    /// virtual lane's test left to `auto`, which its agent decides.
    pub accel: Option<Accel>,
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
    pub kvm_host: Option<Accel>,
    /// What the kernel said of its KVM modules (their dmesg lines, a load
    /// error), where ukci loaded them.
    pub kvm_log: String,
    /// The lane's KVM variant (`[[lane.kvm]]` name); none for a kernel's own
    /// KVM outside a lane that declares variants.
    pub kvm_variant: Option<String>,
    /// The patch set of the KVM build that is loaded, as the build itself
    /// says; none for a kernel's own KVM.
    pub kvm_build: Option<String>,
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
        match (&self.virtual_host, &self.kvm_variant) {
            (Some(v), Some(k)) => format!("{}, {k}", v.kernel),
            (Some(v), None) => v.kernel.clone(),
            (None, _) => self.accel_word().to_string(),
        }
    }

    /// The accelerator as reports spell it: `kvm`, `tcg`, or `auto` where
    /// the agent of a virtual host decides.
    pub fn accel_word(&self) -> &'static str {
        self.accel.map_or("auto", Accel::word)
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
            ("accel", self.accel_word().to_string()),
            ("accel.reason", self.accel_reason.clone()),
            ("qemu.version", self.qemu_version.to_string()),
            ("host.kernel", self.host_kernel.clone()),
            (
                "kvm.module",
                self.kvm_module.clone().unwrap_or_else(|| "none".into()),
            ),
            (
                "kvm.host",
                self.kvm_host.map_or("unknown", Accel::word).to_string(),
            ),
            ("cpu.model", self.cpu_model.clone()),
        ]);
        if let Some(v) = &self.kvm_variant {
            p.push(("kvm.variant", v.clone()));
        }
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

/// Every key of `requires` and `when`, one row each: its name, how a
/// mismatch names it, the values it takes, and where an environment has it.
pub const KEYS: &[Key] = &[
    Key {
        name: "accel",
        says: "accel",
        values: Values::OneOf(&["kvm", "tcg"]),
        have: |e| e.accel_word().to_string(),
        why: Some(|e| &e.accel_reason),
        before_boot: false,
    },
    Key {
        name: "qemu",
        says: "QEMU",
        values: Values::Version,
        have: |e| e.qemu_version.to_string(),
        why: None,
        before_boot: true,
    },
    Key {
        name: "host_kernel",
        says: "host kernel",
        values: Values::Version,
        have: |e| e.host_kernel.clone(),
        why: None,
        before_boot: true,
    },
    Key {
        name: "kvm_module",
        says: "KVM module",
        values: Values::OneOf(&["kvm_intel", "kvm_amd", "kvm_pvm", "none"]),
        have: |e| e.kvm_module.clone().unwrap_or_else(|| "none".into()),
        why: None,
        before_boot: false,
    },
    Key {
        name: "kvm_variant",
        says: "KVM variant",
        values: Values::Name,
        have: |e| e.kvm_variant.clone().unwrap_or_else(|| "none".into()),
        why: None,
        before_boot: true,
    },
    Key {
        name: "kvm_host",
        says: "KVM running on",
        values: Values::OneOf(&["tcg", "kvm", "unknown"]),
        have: |e| e.kvm_host.map_or("unknown", Accel::word).to_string(),
        why: None,
        before_boot: false,
    },
];

/// One key of `requires`/`when`.
pub struct Key {
    pub name: &'static str,
    /// How a skip reason names it: "needs {says} ...".
    pub says: &'static str,
    pub values: Values,
    /// This environment's value.
    pub have: fn(&Environment) -> String,
    /// Why the environment has that value, when it was chosen.
    pub why: Option<fn(&Environment) -> &String>,
    /// Known before a virtual host boots; the others only its agent knows.
    pub before_boot: bool,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Key {
    fn eq(&self, o: &Key) -> bool {
        self.name == o.name
    }
}
impl Eq for Key {}

/// The values a key takes.
#[derive(Clone, Copy, Debug)]
pub enum Values {
    /// One of these names, or a list of them (any matches).
    OneOf(&'static [&'static str]),
    /// A version requirement such as `>=6.1, <6.13`.
    Version,
    /// A name the manifest itself defines (a KVM variant), or a list.
    Name,
}

/// What a key must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    OneOf(Vec<String>),
    Version(VersionReq),
}

impl Condition {
    fn matches(&self, have: &str) -> bool {
        match self {
            Condition::OneOf(l) => l.iter().any(|v| v == have),
            Condition::Version(req) => {
                req.matches(&Version::parse_prefix(have).unwrap_or_default())
            }
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::OneOf(l) => f.write_str(&l.join(" or ")),
            Condition::Version(v) => v.fmt(f),
        }
    }
}

/// Conditions on an environment; every one given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvMatch(pub Vec<(&'static Key, Condition)>);

impl EnvMatch {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Only the conditions on what is known before a virtual host boots.
    pub fn before_boot(&self) -> EnvMatch {
        EnvMatch(
            self.0
                .iter()
                .filter(|(k, _)| k.before_boot)
                .cloned()
                .collect(),
        )
    }

    /// `Ok` when the environment matches, else the first mismatch in words.
    pub fn check(&self, env: &Environment) -> Result<(), String> {
        for (key, want) in &self.0 {
            let have = (key.have)(env);
            if !want.matches(&have) {
                let why = key.why.map_or(String::new(), |w| format!(" ({})", w(env)));
                return Err(format!(
                    "needs {} {want}, this run has {have}{why}",
                    key.says
                ));
            }
        }
        Ok(())
    }
}

fn key_names() -> String {
    let names: Vec<String> = KEYS.iter().map(|k| format!("`{}`", k.name)).collect();
    names.join(", ")
}

impl<'de> Deserialize<'de> for EnvMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Table;
        impl<'de> de::Visitor<'de> for Table {
            type Value = EnvMatch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of conditions such as { accel = \"tcg\", qemu = \">=10.0\" }")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<EnvMatch, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key_seed(KeySeed)? {
                    out.push((key, map.next_value_seed(ValueSeed(key))?));
                }
                Ok(EnvMatch(out))
            }
        }
        d.deserialize_map(Table)
    }
}

/// A key name, looked up in [`KEYS`].
struct KeySeed;

impl<'de> de::DeserializeSeed<'de> for KeySeed {
    type Value = &'static Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static Key, D::Error> {
        let name = String::deserialize(d)?;
        KEYS.iter().find(|k| k.name == name).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown key `{}`, expected one of {}",
                crate::diag::shown(&name),
                key_names()
            ))
        })
    }
}

/// The value of `key`, checked against the values it takes.
struct ValueSeed(&'static Key);

impl<'de> de::DeserializeSeed<'de> for ValueSeed {
    type Value = Condition;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Condition, D::Error> {
        let key = self.0;
        match key.values {
            Values::Version => {
                let s = String::deserialize(d)?;
                VersionReq::parse(&s)
                    .map(Condition::Version)
                    .map_err(de::Error::custom)
            }
            Values::OneOf(_) | Values::Name => {
                #[derive(Deserialize)]
                #[serde(untagged, expecting = "a name or a list of names")]
                enum OneOrMany {
                    One(String),
                    Many(Vec<String>),
                }
                let list = match OneOrMany::deserialize(d)? {
                    OneOrMany::One(s) => vec![s],
                    OneOrMany::Many(l) => l,
                };
                let allowed: &[&str] = match key.values {
                    Values::OneOf(a) => a,
                    _ => &[],
                };
                let listed: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
                if list.is_empty() {
                    return Err(de::Error::custom(format!(
                        "`{}` lists no value{}",
                        key.name,
                        if listed.is_empty() {
                            String::new()
                        } else {
                            format!("; allowed: {}", listed.join(", "))
                        }
                    )));
                }
                if let Values::OneOf(allowed) = key.values
                    && let Some(bad) = list.iter().find(|v| !allowed.contains(&v.as_str()))
                {
                    return Err(de::Error::custom(format!(
                        "`{}` cannot be `{}`; allowed: {}",
                        key.name,
                        crate::diag::shown(bad),
                        listed.join(", ")
                    )));
                }
                Ok(Condition::OneOf(list))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Environment {
        Environment {
            accel: Some(Accel::Tcg),
            accel_reason: "requested".into(),
            qemu_version: Version(vec![10, 0, 2]),
            host_kernel: "6.1.0-28-amd64".into(),
            kvm_module: Some("kvm_pvm".into()),
            kvm_host: None,
            kvm_log: String::new(),
            kvm_variant: None,
            kvm_build: None,
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

    fn parse(text: &str) -> Result<EnvMatch, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
    }

    #[test]
    fn mismatches_are_explained() {
        let m = parse("accel = \"kvm\"").unwrap();
        assert_eq!(
            m.check(&env()).unwrap_err(),
            "needs accel kvm, this run has tcg (requested)"
        );
        let m = parse("kvm_module = [\"kvm_intel\", \"kvm_amd\"]").unwrap();
        assert_eq!(
            m.check(&env()).unwrap_err(),
            "needs KVM module kvm_intel or kvm_amd, this run has kvm_pvm"
        );
        let m = parse("qemu = \">=10.0\"\nhost_kernel = \"6.1\"").unwrap();
        assert!(m.check(&env()).is_ok());
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn keys_and_values_are_closed_sets() {
        let e = parse("accel = \"hvf\"").unwrap_err();
        assert!(
            e.contains("`accel` cannot be `hvf`") && e.contains("`tcg`"),
            "{e}"
        );
        let e = parse("kvm_module = [\"kvm_amd\", \"kvm_foo\"]").unwrap_err();
        assert!(e.contains("cannot be `kvm_foo`"), "{e}");
        let e = parse("acel = \"kvm\"").unwrap_err();
        assert!(
            e.contains("unknown key `acel`") && e.contains("`host_kernel`"),
            "{e}"
        );
        assert!(
            parse("qemu = \"ten\"")
                .unwrap_err()
                .contains("not a version requirement")
        );
        assert!(parse("accel = []").unwrap_err().contains("lists no value"));
    }
}
