//! Manifests: the TOML schema, its parsing and its validation.
//!
//! Every problem is reported with `file:line:col`, the field and what is
//! allowed. Unknown fields are errors. Parsing stops at the first syntax or
//! type error (that is all serde can tell); the checks after parsing collect
//! every problem they find.

use crate::diag::{Diagnostic, Diagnostics, SourceFile};
use crate::envmatch::EnvMatch;
use crate::hostcheck;
use crate::units::{ByteSize, Timeout};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;
use ukci_protocol::catalogue;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub suite: SuiteInfo,
    #[serde(default)]
    pub defaults: MachineSettings,
    /// Requirements of the whole suite.
    #[serde(default)]
    pub requires: EnvMatch,
    /// Where the suite runs (default: this host).
    pub lane: Option<Lane>,
    #[serde(default, rename = "test")]
    pub tests: Vec<Test>,
    #[serde(default, rename = "expect")]
    pub expectations: Vec<Expectation>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteInfo {
    /// Defaults to the file stem.
    pub name: Option<String>,
    pub description: Option<String>,
}

/// How one VM is set up; each field falls back to `[defaults]`, then to the
/// built-in default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSettings {
    pub machine: Option<MachineType>,
    pub accel: Option<Accel>,
    /// A QEMU `-cpu` model name.
    pub cpu: Option<Spanned<String>>,
    pub memory: Option<Spanned<ByteSize>>,
    pub smp: Option<Spanned<u32>>,
    pub timeout: Option<Timeout>,
}

/// Where a suite runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lane {
    pub kind: Spanned<LaneKind>,
    /// Host kernels to boot (`debian:6.12`, `dir:PATH`); `--kernel`
    /// replaces the list.
    #[serde(default)]
    pub kernels: Vec<Spanned<String>>,
    /// The emulated SR-IOV NVMe of the virtual host.
    pub topology: Option<Spanned<TopologySpec>>,
    /// Hard limit for one boot of the virtual host, all its tests included.
    pub timeout: Option<Timeout>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LaneKind {
    /// This host.
    Local,
    /// A host kernel booted under QEMU with an emulated IOMMU and SR-IOV NVMe.
    Virtual,
}

/// The virtual host's SR-IOV NVMe; unset fields take the defaults for `vfs`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySpec {
    pub vfs: Option<u16>,
    pub vq_flexible: Option<u32>,
    pub vi_flexible: Option<u32>,
    pub max_ioqpairs: Option<u32>,
    pub msix_qsize: Option<u32>,
    pub namespaces: Option<u32>,
    pub namespace_size: Option<ByteSize>,
}

impl TopologySpec {
    pub fn resolve(&self) -> ukci_vhost::boot::Topology {
        let mut t = ukci_vhost::boot::Topology::with_vfs(self.vfs.unwrap_or(2));
        if let Some(v) = self.vq_flexible {
            t.vq_flexible = v;
        }
        if let Some(v) = self.vi_flexible {
            t.vi_flexible = v;
        }
        if let Some(v) = self.max_ioqpairs {
            t.max_ioqpairs = v;
        }
        if let Some(v) = self.msix_qsize {
            t.msix_qsize = v;
        }
        if let Some(v) = self.namespaces {
            t.namespaces = v;
        }
        if let Some(v) = self.namespace_size {
            t.namespace_bytes = v.bytes();
        }
        t
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    Q35,
    Pc,
    Microvm,
}

impl MachineType {
    pub fn qemu_name(self) -> &'static str {
        match self {
            MachineType::Q35 => "q35",
            MachineType::Pc => "pc",
            MachineType::Microvm => "microvm",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when it is usable for the guest, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Test {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub checks: Spanned<Vec<Spanned<String>>>,
    /// Check arguments, passed on the guest command line as `key=value`.
    #[serde(default)]
    pub args: BTreeMap<Spanned<String>, Spanned<ArgValue>>,
    pub machine: Option<MachineType>,
    pub accel: Option<Accel>,
    pub cpu: Option<Spanned<String>>,
    pub memory: Option<Spanned<ByteSize>>,
    pub smp: Option<Spanned<u32>>,
    pub timeout: Option<Timeout>,
    #[serde(default)]
    pub requires: EnvMatch,
    #[serde(default, rename = "device")]
    pub devices: Vec<Device>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ArgValue {
    Int(u64),
    Str(String),
    Bool(bool),
}

impl std::fmt::Display for ArgValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgValue::Int(n) => write!(f, "{n}"),
            ArgValue::Str(s) => f.write_str(s),
            ArgValue::Bool(b) => write!(f, "{}", u8::from(*b)),
        }
    }
}

/// A device given to the VM, declared rather than written as a QEMU string
/// so that it can be validated.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub kind: Spanned<DeviceKind>,
    /// NVMe: the controller's serial number.
    pub serial: Option<String>,
    /// NVMe: the size of the scratch image behind its namespace.
    pub size: Option<Spanned<ByteSize>>,
    /// NVMe: with more than 0 the controller is an SR-IOV physical function
    /// in an NVMe subsystem behind a PCIe root port.
    pub sriov_max_vfs: Option<Spanned<u16>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// An emulated NVMe controller with one namespace on a scratch image that
    /// the runner creates for the run.
    Nvme,
    /// A VF of the host's SR-IOV NVMe PF, brought online by ukci's userspace
    /// PF driver and passed through vfio-pci with the VF token.
    NvmeVf,
}

/// An outcome expected in some environment, with the reason.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// Glob over test names (default: every test).
    #[serde(default = "star")]
    pub test: String,
    /// Glob over sub-result names (default: every result).
    #[serde(default = "star")]
    pub result: String,
    /// The environment this applies in (default: every environment).
    #[serde(default)]
    pub when: EnvMatch,
    pub outcome: Spanned<ExpectedOutcome>,
    pub reason: Spanned<String>,
}

fn star() -> String {
    "*".into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedOutcome {
    /// A failure here is expected by design of the environment.
    Xfail,
    /// A failure here is a known bug of the environment.
    Kfail,
}

impl Test {
    /// This test's own machine settings (before `[defaults]` apply).
    pub fn machine_settings(&self) -> MachineSettings {
        MachineSettings {
            machine: self.machine,
            accel: self.accel,
            cpu: self.cpu.clone(),
            memory: self.memory.clone(),
            smp: self.smp.clone(),
            timeout: self.timeout,
        }
    }
}

impl Manifest {
    pub fn is_virtual(&self) -> bool {
        self.lane
            .as_ref()
            .is_some_and(|l| *l.kind.get_ref() == LaneKind::Virtual)
    }

    /// The kernels a virtual suite declares.
    pub fn kernels(&self) -> Vec<String> {
        self.lane
            .as_ref()
            .map(|l| l.kernels.iter().map(|k| k.get_ref().clone()).collect())
            .unwrap_or_default()
    }

    pub fn suite_name(&self) -> String {
        self.suite.name.clone().unwrap_or_else(|| {
            self.path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
    }
}

/// Reads, parses and validates one manifest.
pub fn load(path: &Path) -> Result<Manifest, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics::one(Diagnostic::file(
            path,
            format!("cannot read manifest: {e}"),
            "check the path; manifests live in manifests/*.toml",
        ))
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Manifest, Diagnostics> {
    let src = SourceFile::new(path, text);
    let mut manifest: Manifest = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        Diagnostics::one(src.at(
            span,
            e.message().trim().to_string(),
            "see the manifest reference in README.md",
        ))
    })?;
    manifest.path = path.to_path_buf();
    let mut diags = Diagnostics::default();
    validate(&manifest, &src, &mut diags);
    diags.into_result(manifest)
}

fn validate(m: &Manifest, src: &SourceFile, diags: &mut Diagnostics) {
    if m.tests.is_empty() {
        diags.push(Diagnostic::file(
            &m.path,
            "the manifest declares no tests".into(),
            "add at least one [[test]] table with a name and checks",
        ));
    }
    validate_machine(&m.defaults, src, diags);
    if let Some(lane) = &m.lane {
        validate_lane(lane, src, diags);
    }
    for (i, t) in m.tests.iter().enumerate() {
        if let Some(prev) = m.tests[..i]
            .iter()
            .find(|p| p.name.get_ref() == t.name.get_ref())
        {
            diags.push(src.at(
                t.name.span(),
                format!(
                    "test name `{}` is used twice (first at line {})",
                    t.name.get_ref(),
                    src.line_col(prev.name.span().start).0
                ),
                "give every [[test]] a unique name",
            ));
        }
        if !valid_name(t.name.get_ref()) {
            diags.push(src.at(
                t.name.span(),
                format!("invalid test name `{}`", t.name.get_ref()),
                "use letters, digits, `-`, `_` and `.`",
            ));
        }
        validate_test(t, src, diags);
    }
    for e in &m.expectations {
        if e.reason.get_ref().trim().is_empty() {
            diags.push(src.at(
                e.reason.span(),
                "an expectation needs a reason".into(),
                "say why this environment departs from the expected result",
            ));
        }
    }
}

fn validate_lane(lane: &Lane, src: &SourceFile, diags: &mut Diagnostics) {
    match lane.kind.get_ref() {
        LaneKind::Local => {
            if !lane.kernels.is_empty() || lane.topology.is_some() {
                diags.push(src.at(
                    lane.kind.span(),
                    "a local lane runs on this host: `kernels` and `topology` belong to a virtual lane".into(),
                    "use kind = \"virtual\" to boot host kernels",
                ));
            }
        }
        LaneKind::Virtual => {
            if lane.kernels.is_empty() {
                diags.push(src.at(
                    lane.kind.span(),
                    "a virtual lane needs at least one kernel".into(),
                    "e.g. kernels = [\"debian:6.1\", \"debian:6.12\"]",
                ));
            }
        }
    }
    for k in &lane.kernels {
        if let Err(e) = ukci_vhost::kernel::KernelSpec::parse(k.get_ref()) {
            diags.push(src.at(
                k.span(),
                e.to_string(),
                "a kernel is `debian:<major.minor>` (e.g. debian:6.12), `debian:<major.minor.patch>` \
                 (e.g. debian:6.12.117) or `dir:<path>`",
            ));
        }
    }
    if let Some(t) = &lane.topology
        && let Err(e) = t.get_ref().resolve().validate()
    {
        diags.push(src.at(
            t.span(),
            e,
            "QEMU refuses such an SR-IOV NVMe; adjust the field named",
        ));
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate_machine(s: &MachineSettings, src: &SourceFile, diags: &mut Diagnostics) {
    if let Some(smp) = &s.smp
        && !(1..=64).contains(smp.get_ref())
    {
        diags.push(src.at(
            smp.span(),
            format!("smp = {} is out of range", smp.get_ref()),
            "allowed: 1 to 64",
        ));
    }
    if let Some(mem) = &s.memory {
        let bytes = mem.get_ref().bytes();
        if bytes < ByteSize::mib(16).bytes() || bytes > ByteSize::gib(64).bytes() {
            diags.push(src.at(
                mem.span(),
                format!("memory = {} is out of range", mem.get_ref()),
                "allowed: 16M to 64G",
            ));
        }
    }
    if let Some(cpu) = &s.cpu {
        let ok = !cpu.get_ref().is_empty()
            && cpu
                .get_ref()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.,+=".contains(c));
        if !ok {
            diags.push(src.at(
                cpu.span(),
                format!("invalid cpu model `{}`", cpu.get_ref()),
                "a QEMU -cpu value such as `qemu64`, `max` or `host,-arch-capabilities`",
            ));
        }
    }
}

fn validate_test(t: &Test, src: &SourceFile, diags: &mut Diagnostics) {
    validate_machine(&t.machine_settings(), src, diags);
    if t.checks.get_ref().is_empty() {
        diags.push(src.at(
            t.checks.span(),
            "`checks` is empty".into(),
            "list at least one check; `cargo xtask list --checks` shows them all",
        ));
    }
    let mut known_args: Vec<&str> = Vec::new();
    let host = t
        .checks
        .get_ref()
        .iter()
        .filter(|c| hostcheck::find(c.get_ref()).is_some())
        .count();
    if host > 0 && host < t.checks.get_ref().len() {
        diags.push(src.at(
            t.checks.span(),
            "a test runs either guest checks (in a VM) or host checks, not both".into(),
            "split it into two [[test]] tables",
        ));
    }
    for c in t.checks.get_ref() {
        if hostcheck::find(c.get_ref()).is_some() {
            continue;
        }
        match catalogue::find(c.get_ref()) {
            Some(check) => known_args.extend(check.args.iter().copied()),
            None => diags.push(src.at(
                c.span(),
                format!("unknown check `{}`", c.get_ref()),
                &suggest_check(c.get_ref()),
            )),
        }
    }
    for (k, v) in &t.args {
        if !known_args.contains(&k.get_ref().as_str()) {
            let allowed = if known_args.is_empty() {
                "these checks take no arguments".to_string()
            } else {
                format!("allowed here: {}", known_args.join(", "))
            };
            diags.push(src.at(
                k.span(),
                format!(
                    "unknown argument `{}` for the checks of this test",
                    k.get_ref()
                ),
                &allowed,
            ));
        }
        let text = v.get_ref().to_string();
        if text.is_empty() || text.contains(char::is_whitespace) {
            diags.push(src.at(
                v.span(),
                format!(
                    "argument `{}` has an empty value or contains whitespace",
                    k.get_ref()
                ),
                "values go on the guest command line: one word each",
            ));
        }
    }
    for d in &t.devices {
        validate_device(t, d, src, diags);
    }
}

fn validate_device(t: &Test, d: &Device, src: &SourceFile, diags: &mut Diagnostics) {
    match d.kind.get_ref() {
        DeviceKind::NvmeVf => {
            if t.machine.is_some_and(|m| m != MachineType::Q35)
                || d.size.is_some()
                || d.serial.is_some()
                || d.sriov_max_vfs.is_some()
            {
                diags.push(src.at(
                    d.kind.span(),
                    "an nvme-vf device takes no size, serial or sriov_max_vfs, and needs machine = \"q35\"".into(),
                    "the VF is the host PF's; declare only kind = \"nvme-vf\"",
                ));
            }
        }
        DeviceKind::Nvme => {
            if t.machine == Some(MachineType::Microvm) {
                diags.push(src.at(
                    d.kind.span(),
                    "an nvme device needs a PCI bus, and microvm has none here".into(),
                    "use machine = \"q35\" for this test",
                ));
            }
            if let Some(size) = &d.size {
                let b = size.get_ref().bytes();
                if b < ByteSize::mib(1).bytes() || b > ByteSize::gib(4).bytes() || b % 4096 != 0 {
                    diags.push(src.at(
                        size.span(),
                        format!("nvme size = {} is not allowed", size.get_ref()),
                        "a multiple of 4K from 1M to 4G: the scratch image is created for the run",
                    ));
                }
            }
            if let Some(vfs) = &d.sriov_max_vfs {
                if *vfs.get_ref() > 127 {
                    diags.push(src.at(
                        vfs.span(),
                        format!("sriov_max_vfs = {} is out of range", vfs.get_ref()),
                        "allowed: 0 to 127 (QEMU's nvme limit)",
                    ));
                }
                if *vfs.get_ref() > 0 && t.machine != Some(MachineType::Q35) {
                    diags.push(src.at(
                        vfs.span(),
                        "an SR-IOV NVMe needs PCI Express".into(),
                        "set machine = \"q35\" on this test",
                    ));
                }
            }
        }
    }
}

fn suggest_check(name: &str) -> String {
    let close: Vec<&str> = catalogue::CHECKS
        .iter()
        .map(|c| c.name)
        .chain(hostcheck::HOST_CHECKS.iter().map(|c| c.name))
        .filter(|c| {
            let family = name.split('.').next().unwrap_or(name);
            c.starts_with(family) || strsim(c, name) <= 3
        })
        .collect();
    if close.is_empty() {
        "`cargo xtask list --checks` lists every check".into()
    } else {
        format!("did you mean one of: {}", close.join(", "))
    }
}

/// Edit distance, for suggestions.
fn strsim(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse(Path::new("m.toml"), text) {
            Ok(_) => vec![],
            Err(d) => d.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn a_minimal_manifest_parses() {
        let m = parse(
            Path::new("manifests/smoke.toml"),
            "[[test]]\nname = \"q35\"\nchecks = [\"boot.smoke\"]\n",
        )
        .unwrap();
        assert_eq!(m.suite_name(), "smoke");
        assert_eq!(m.tests[0].name.get_ref(), "q35");
    }

    #[test]
    fn unknown_field_names_file_line_col_and_field() {
        let e = errors("[[test]]\nname = \"a\"\nchecks = [\"boot.smoke\"]\ntimout = \"5s\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("m.toml:4:1: "), "{}", e[0]);
        assert!(e[0].contains("unknown field `timout`"), "{}", e[0]);
    }

    #[test]
    fn unknown_check_is_reported_with_its_position_and_a_suggestion() {
        let e = errors("[[test]]\nname = \"a\"\nchecks = [\"boot.smoke\", \"boot.smok\"]\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("m.toml:3:25: "), "{}", e[0]);
        assert!(e[0].contains("unknown check `boot.smok`"), "{}", e[0]);
        assert!(e[0].contains("boot.smoke"), "{}", e[0]);
    }

    #[test]
    fn wrong_type_and_bad_values_are_errors() {
        let e = errors("[[test]]\nname = \"a\"\nchecks = \"boot.smoke\"\n");
        assert!(e[0].starts_with("m.toml:3:10: "), "{}", e[0]);
        let e = errors(
            "[defaults]\nmachine = \"virt\"\n[[test]]\nname = \"a\"\nchecks = [\"boot.smoke\"]\n",
        );
        assert!(
            e[0].contains("q35") && e[0].starts_with("m.toml:2:11"),
            "{}",
            e[0]
        );
        let e =
            errors("[[test]]\nname = \"a\"\nchecks = [\"boot.smoke\"]\ntimeout = \"5 parsecs\"\n");
        assert!(
            e[0].starts_with("m.toml:4:11") && e[0].contains("timeout"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn every_semantic_problem_is_reported() {
        let e = errors(
            "[[test]]\nname = \"a\"\nchecks = [\"nope\"]\nsmp = 0\n\
             [[test]]\nname = \"a\"\nchecks = []\n",
        );
        assert_eq!(e.len(), 4, "{e:?}");
    }

    #[test]
    fn virtual_lanes_validate_kernels_and_topology() {
        let e = errors(
            "[lane]\nkind = \"virtual\"\nkernels = [\"debian:6.12\", \"fedora:40\"]\n\
             topology = { vfs = 4, vq_flexible = 2 }\n[[test]]\nname = \"a\"\nchecks = [\"vfio.env\"]\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("m.toml:3:27:") && e[0].contains("fedora"),
            "{}",
            e[0]
        );
        assert!(
            e[1].starts_with("m.toml:4:12:") && e[1].contains("vq_flexible"),
            "{}",
            e[1]
        );
        let e =
            errors("[lane]\nkind = \"virtual\"\n[[test]]\nname = \"a\"\nchecks = [\"vfio.env\"]\n");
        assert!(e[0].contains("at least one kernel"), "{e:?}");
    }

    #[test]
    fn guest_and_host_checks_do_not_mix() {
        let e = errors("[[test]]\nname = \"a\"\nchecks = [\"vfio.env\", \"boot.smoke\"]\n");
        assert!(e[0].contains("not both"), "{e:?}");
    }

    #[test]
    fn bad_toml_is_a_positioned_error() {
        let e = errors("[[test]\nname = 1\n");
        assert!(e[0].starts_with("m.toml:1:"), "{}", e[0]);
    }
}
