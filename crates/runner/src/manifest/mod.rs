//! Manifests: the TOML schema, its parsing and its validation.
//!
//! Every problem is reported with `file:line:col`, the field and what is
//! allowed, and every problem of a file at once: a value of the wrong type
//! is reported and left out, and the rest is read on (see [`deserialize`]);
//! the checks after parsing collect every problem they find. Unknown fields
//! are errors.

pub mod kut;

use crate::diag::{Diagnostic, Diagnostics, SourceFile, shown};
use crate::envmatch::EnvMatch;
use crate::units::{ByteSize, Timeout};
use crate::units::{glob, glob_prefix};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};
use ukci_protocol::catalogue;
use ukci_vhost::accel::Accel;

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
    /// kvm-unit-tests whose cfg tests become this manifest's tests.
    #[serde(rename = "kvm-unit-tests")]
    pub kvm_unit_tests: Option<Spanned<kut::Section>>,
    /// The tree and tests `[kvm-unit-tests]` names, read with the manifest.
    #[serde(skip)]
    pub kut: Option<kut::Suite>,
    /// What is worth saying but stops nothing (lines a cfg ignores).
    #[serde(skip)]
    pub warnings: Vec<Diagnostic>,
    #[serde(skip)]
    pub path: PathBuf,
    /// The file's text, for positions found after parsing.
    #[serde(skip)]
    pub text: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteInfo {
    /// Defaults to the file stem.
    pub name: Option<Spanned<String>>,
    pub description: Option<String>,
}

/// How one VM is set up; each field falls back to `[defaults]`, then to the
/// built-in default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSettings {
    pub machine: Option<MachineType>,
    pub accel: Option<AccelRequest>,
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
    /// The KVMs each kernel boots with, each reported as its own suite:
    /// the kernel's own (no `patches`) or one built from a patch set.
    #[serde(default)]
    pub kvm: Vec<Spanned<KvmVariantSpec>>,
}

/// One KVM of a virtual lane.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvmVariantSpec {
    /// Names the variant in suite names and `when = { kvm_variant = ... }`.
    pub name: Spanned<String>,
    /// A patch-set folder (`<set>/<kernel series>/series`), relative to the
    /// manifest: kvm.ko and kvm-amd.ko are built from the kernel's own
    /// Debian source with it. Without it the kernel's own modules load.
    pub patches: Option<Spanned<PathBuf>>,
    /// Parameters of the `kvm` module (`crpin_flaw = "cr0-not-enforced"`).
    #[serde(default)]
    pub params: BTreeMap<Spanned<String>, Spanned<String>>,
}

impl KvmVariantSpec {
    /// The patch folder as a path from the working directory.
    pub fn patches_from(&self, manifest: &Path) -> Option<PathBuf> {
        let p = self.patches.as_ref()?.get_ref();
        Some(manifest.parent().unwrap_or(Path::new(".")).join(p))
    }
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

/// The accelerator a manifest or `--accel` asks for: one
/// ([`Accel`]), or `auto`, which the plan resolves by a probe boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelRequest {
    /// KVM when it is usable for the guest, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl AccelRequest {
    /// Every request, as manifests and `--accel` spell them.
    pub const WORDS: [&'static str; 3] = ["auto", "kvm", "tcg"];

    /// As manifests and `--accel` spell it.
    pub fn word(self) -> &'static str {
        match self {
            AccelRequest::Auto => "auto",
            AccelRequest::Kvm => "kvm",
            AccelRequest::Tcg => "tcg",
        }
    }

    pub fn from_word(w: &str) -> Option<AccelRequest> {
        [AccelRequest::Auto, AccelRequest::Kvm, AccelRequest::Tcg]
            .into_iter()
            .find(|a| a.word() == w)
    }

    /// The accelerator asked for, unless that is left to `auto`.
    pub fn fixed(self) -> Option<Accel> {
        match self {
            AccelRequest::Auto => None,
            AccelRequest::Kvm => Some(Accel::Kvm),
            AccelRequest::Tcg => Some(Accel::Tcg),
        }
    }
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
    pub accel: Option<AccelRequest>,
    pub cpu: Option<Spanned<String>>,
    pub memory: Option<Spanned<ByteSize>>,
    pub smp: Option<Spanned<u32>>,
    pub timeout: Option<Timeout>,
    #[serde(default)]
    pub requires: EnvMatch,
    #[serde(default, rename = "device")]
    pub devices: Vec<Device>,
}

#[derive(Clone, Debug)]
pub enum ArgValue {
    Int(u64),
    Str(String),
    Bool(bool),
}

impl<'de> Deserialize<'de> for ArgValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ArgValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number, a string or a boolean")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ArgValue, E> {
                Ok(ArgValue::Int(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ArgValue, E> {
                u64::try_from(v)
                    .map(ArgValue::Int)
                    .map_err(|_| E::custom(format!("{v} is negative; no argument takes that")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ArgValue, E> {
                Ok(ArgValue::Str(v.into()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ArgValue, E> {
                Ok(ArgValue::Bool(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl ArgValue {
    /// As TOML writes it.
    pub fn quoted(&self) -> String {
        match self {
            ArgValue::Str(s) => format!("\"{s}\""),
            ArgValue::Int(n) => n.to_string(),
            ArgValue::Bool(b) => b.to_string(),
        }
    }
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
    pub serial: Option<Spanned<String>>,
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
    pub test: Spanned<String>,
    /// Glob over sub-result names (default: every result).
    #[serde(default = "star")]
    pub result: Spanned<String>,
    /// The environment this applies in (default: every environment).
    #[serde(default)]
    pub when: EnvMatch,
    pub outcome: Spanned<ExpectedOutcome>,
    pub reason: Spanned<String>,
}

fn star() -> Spanned<String> {
    Spanned::new(0..0, "*".into())
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

    /// A diagnostic at a span of this manifest.
    pub fn at(&self, span: std::ops::Range<usize>, message: String, help: &str) -> Diagnostic {
        SourceFile::new(&self.path, &self.text).at(span, message, help)
    }

    /// The machine a test runs on: its own, else `[defaults]`, else q35.
    pub fn machine_of(&self, t: &Test) -> MachineType {
        t.machine
            .or(self.defaults.machine)
            .unwrap_or(MachineType::Q35)
    }

    pub fn suite_name(&self) -> String {
        self.suite
            .name
            .as_ref()
            .map(|n| n.get_ref().clone())
            .unwrap_or_else(|| {
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
    let mut diags = Diagnostics::default();
    let Some((mut manifest, complete)) = deserialize(&src, text, &mut diags) else {
        return diags
            .into_result(())
            .map(|()| unreachable!("a manifest that did not deserialize has an error"));
    };
    manifest.path = path.to_path_buf();
    manifest.text = text.to_string();
    if let Some(section) = &manifest.kvm_unit_tests {
        manifest.kut = kut::load(path, section, &src, &mut diags, &mut manifest.warnings);
    }
    validate(&manifest, &src, complete, &mut diags);
    if let Some(k) = &manifest.kut {
        let tests = k.manifest_tests(&manifest.tests, &mut diags);
        manifest.tests.extend(tests);
    }
    diags.into_result(manifest)
}

const HELP: &str = "see the manifest reference in README.md";

/// Deserializes what can be. A syntax error ends it (the rest of the file
/// is not reliable); a type error is reported, the entry holding it left
/// out, and the rest read on, so every such error of a file is reported.
/// `complete` is false when a whole table had to be left out (so checks
/// across tables would see it missing).
fn deserialize(src: &SourceFile, text: &str, diags: &mut Diagnostics) -> Option<(Manifest, bool)> {
    let (mut root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for e in errors {
            diags.push(src.at(e.span().unwrap_or(0..0), humane(e.message()), HELP));
        }
        return None;
    }
    // Tables an entry was left out of: a field they then miss is no news.
    let mut pruned: Vec<Range<usize>> = Vec::new();
    let mut complete = true;
    loop {
        let e = match Manifest::deserialize(toml::de::Deserializer::from(root.clone())) {
            Ok(m) => return Some((m, complete)),
            Err(e) => e,
        };
        let span = e.span().unwrap_or(0..0);
        let report = src.at(span.clone(), humane(e.message()), HELP);
        let root_span = root.span();
        match prune(root.get_mut(), root_span, &span) {
            Some(Pruned::Entry(table)) => {
                diags.push(report);
                pruned.push(table);
            }
            Some(Pruned::Table(table)) => {
                if !pruned.contains(&table) {
                    diags.push(report);
                }
                complete = false;
            }
            None => {
                diags.push(report);
                return None;
            }
        }
    }
}

/// What [`prune`] left out.
enum Pruned {
    /// An entry of the table at this span.
    Entry(Range<usize>),
    /// The whole table at this span: the problem was the table itself.
    Table(Range<usize>),
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// Leaves out the innermost entry of `table` (at `tspan`) whose key or value
/// covers `span`, or the innermost table (in an array) at exactly `span`.
fn prune<'i>(table: &mut DeTable<'i>, tspan: Range<usize>, span: &Range<usize>) -> Option<Pruned> {
    let keys: Vec<_> = table.keys().cloned().collect();
    for key in keys {
        let value = table.get_mut(&key)?;
        let vspan = value.span();
        let on_key = covers(&key.span(), span);
        match value.get_mut() {
            DeValue::Table(inner) if !on_key => {
                if let Some(p) = prune(inner, vspan.clone(), span) {
                    return Some(p);
                }
            }
            DeValue::Array(items) if !on_key => {
                for n in 0..items.len() {
                    let ispan = items[n].span();
                    let DeValue::Table(inner) = items.as_mut()[n].get_mut() else {
                        continue;
                    };
                    if let Some(p) = prune(inner, ispan.clone(), span) {
                        return Some(p);
                    }
                    if ispan == *span {
                        let mut rest = DeArray::new();
                        for (i, item) in std::mem::replace(items, DeArray::new())
                            .into_iter()
                            .enumerate()
                        {
                            if i != n {
                                rest.push(item);
                            }
                        }
                        *items = rest;
                        return Some(Pruned::Table(ispan));
                    }
                }
            }
            _ => {}
        }
        if on_key || covers(&vspan, span) {
            table.remove(&key);
            return Some(Pruned::Entry(tspan));
        }
    }
    None
}

/// serde's words for Rust types, in TOML's.
fn humane(message: &str) -> String {
    let mut m = message.trim().replace('\n', " ");
    for (from, to) in [
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number from 0"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: map", "invalid type: table"),
        ("expected a string", "expected a string"),
    ] {
        m = m.replace(from, to);
    }
    if let Some(i) = m.find("expected struct ") {
        m.truncate(i);
        m.push_str("expected a table");
    }
    if let Some(i) = m.find("expected enum ") {
        m.truncate(i);
        m.push_str("expected a name");
    }
    m
}

fn validate(m: &Manifest, src: &SourceFile, complete: bool, diags: &mut Diagnostics) {
    if m.tests.is_empty() && m.kvm_unit_tests.is_none() && complete {
        diags.push(src.at(
            0..0,
            "the manifest declares no tests".into(),
            "add at least one [[test]] table with a name and checks",
        ));
    }
    validate_suite_name(m, src, diags);
    validate_machine(&m.defaults, src, diags);
    if let Some(lane) = &m.lane {
        validate_lane(lane, &m.path, src, diags);
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
                    shown(t.name.get_ref()),
                    src.line_col(prev.name.span().start).0
                ),
                "give every [[test]] a unique name",
            ));
        }
        if let Err(why) = check_name(t.name.get_ref(), true) {
            diags.push(src.at(
                t.name.span(),
                format!("invalid test name `{}`: {why}", shown(t.name.get_ref())),
                "test names are part of file names: letters, digits, `-`, `_` and `.`, starting with a letter or digit, at most 64",
            ));
        }
        validate_test(m, t, src, diags);
    }
    for e in &m.expectations {
        if e.reason.get_ref().trim().is_empty() {
            diags.push(src.at(
                e.reason.span(),
                "an expectation needs a reason".into(),
                "say why this environment departs from the expected result",
            ));
        }
        if complete {
            validate_expectation(m, e, src, diags);
        }
    }
}

/// Longest suite and test name: both end up in file names (`suite.test.log`).
pub const MAX_NAME: usize = 64;

/// Suite and test names become parts of file names and JUnit ids: one safe
/// character set, a first character that makes no hidden or relative name,
/// a length limit. Test names may also hold `.`.
pub(crate) fn check_name(s: &str, dots: bool) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (dots && c == '.');
    if s.is_empty() {
        Err("it is empty".into())
    } else if s.chars().count() > MAX_NAME {
        Err(format!("it is {} characters long", s.chars().count()))
    } else if let Some(c) = s.chars().find(|c| !allowed(*c)) {
        Err(format!("`{}` is not allowed", c.escape_default()))
    } else if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Err("it must start with a letter or digit".into())
    } else {
        Ok(())
    }
}

fn validate_suite_name(m: &Manifest, src: &SourceFile, diags: &mut Diagnostics) {
    let name = m.suite_name();
    if let Err(why) = check_name(&name, false) {
        let (span, from) = match &m.suite.name {
            Some(n) => (n.span(), "suite name"),
            None => (0..0, "suite name (the file name, as [suite] sets none)"),
        };
        diags.push(src.at(
            span,
            format!("invalid {from} `{}`: {why}", shown(&name)),
            "suite names are part of file names: letters, digits, `-` and `_`, starting with a letter or digit, at most 64",
        ));
    }
}

/// An expectation must be able to apply: its test glob names a test, and
/// its result glob can match a result of such a test (a check's, or the
/// test's own error). A typo would otherwise turn it into a plain failure.
fn validate_expectation(m: &Manifest, e: &Expectation, src: &SourceFile, diags: &mut Diagnostics) {
    let tests: Vec<&Test> = m
        .tests
        .iter()
        .filter(|t| glob(e.test.get_ref(), t.name.get_ref()))
        .collect();
    // A cfg test's results are its own lines: any result glob may match.
    let kut = m.kut.iter().flat_map(|k| &k.tests);
    if kut.clone().any(|t| glob(e.test.get_ref(), &t.name)) {
        return;
    }
    if tests.is_empty() {
        let names: Vec<&str> = m
            .tests
            .iter()
            .map(|t| t.name.get_ref().as_str())
            .chain(kut.map(|t| t.name.as_str()))
            .collect();
        diags.push(src.at(
            e.test.span(),
            format!(
                "test = \"{}\" matches no test of this manifest",
                shown(e.test.get_ref())
            ),
            &format!("the tests are: {}", names.join(", ")),
        ));
        return;
    }
    let r = e.result.get_ref();
    let can_match = tests.iter().any(|t| {
        glob(r, t.name.get_ref())
            || t.checks
                .get_ref()
                .iter()
                .any(|c| glob(r, c.get_ref()) || glob_prefix(r, &format!("{}: ", c.get_ref())))
    });
    if !can_match {
        diags.push(src.at(
            e.result.span(),
            format!("result = \"{}\" can match no result of the tests it applies to", shown(r)),
            "results are named after the check (`check: sub-result`), or after the test for an error of its VM",
        ));
    }
}

fn validate_kvm_variants(lane: &Lane, m_path: &Path, src: &SourceFile, diags: &mut Diagnostics) {
    if !lane.kvm.is_empty() && *lane.kind.get_ref() == LaneKind::Local {
        diags.push(src.at(
            lane.kvm[0].span(),
            "KVM variants belong to a virtual lane: a local lane runs this host's KVM".into(),
            "use kind = \"virtual\"",
        ));
    }
    let safe = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_NAME
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    for (i, v) in lane.kvm.iter().enumerate() {
        let v = v.get_ref();
        let name = v.name.get_ref();
        if let Err(why) = check_name(name, false) {
            diags.push(src.at(
                v.name.span(),
                format!("invalid KVM variant name `{}`: {why}", shown(name)),
                "variant names are part of suite and file names: letters, digits, `-` and `_`",
            ));
        }
        if lane.kvm[..i]
            .iter()
            .any(|p| p.get_ref().name.get_ref() == name)
        {
            diags.push(src.at(
                v.name.span(),
                format!("KVM variant `{}` is declared twice", shown(name)),
                "give every variant a unique name",
            ));
        }
        if let (Some(p), Some(dir)) = (&v.patches, v.patches_from(m_path))
            && !dir.is_dir()
        {
            diags.push(src.at(
                p.span(),
                format!(
                    "patch set `{}` is not a folder ({})",
                    p.get_ref().display(),
                    dir.display()
                ),
                "name a folder such as ../patches/kvm/cr-pin-v3, relative to this manifest",
            ));
        }
        for (k, val) in &v.params {
            if !safe(k.get_ref()) || !safe(val.get_ref()) {
                diags.push(src.at(
                    k.span(),
                    format!(
                        "module parameter `{}` = `{}` is not a plain name",
                        shown(k.get_ref()),
                        shown(val.get_ref())
                    ),
                    "parameters are passed to insmod: letters, digits, `-` and `_` only",
                ));
            }
        }
    }
}

fn validate_lane(lane: &Lane, m_path: &Path, src: &SourceFile, diags: &mut Diagnostics) {
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
    validate_kvm_variants(lane, m_path, src, diags);
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
                format!("invalid cpu model `{}`", shown(cpu.get_ref())),
                "a QEMU -cpu value such as `qemu64`, `max` or `host,-arch-capabilities`",
            ));
        }
    }
}

fn validate_test(m: &Manifest, t: &Test, src: &SourceFile, diags: &mut Diagnostics) {
    validate_machine(&t.machine_settings(), src, diags);
    if t.checks.get_ref().is_empty() {
        diags.push(src.at(
            t.checks.span(),
            "`checks` is empty".into(),
            "list at least one check; `cargo xtask list --checks` shows them all",
        ));
    }
    let mut known_args: Vec<&catalogue::Arg> = Vec::new();
    let host = t
        .checks
        .get_ref()
        .iter()
        .filter(|c| catalogue::find_host(c.get_ref()).is_some())
        .count();
    if host > 0 && host < t.checks.get_ref().len() {
        diags.push(src.at(
            t.checks.span(),
            "a test runs either guest checks (in a VM) or host checks, not both".into(),
            "split it into two [[test]] tables",
        ));
    }
    for c in t.checks.get_ref() {
        if catalogue::find_host(c.get_ref()).is_some() {
            continue;
        }
        match catalogue::find(c.get_ref()) {
            Some(check) => known_args.extend(check.args.iter()),
            None => diags.push(src.at(
                c.span(),
                format!("unknown check `{}`", shown(c.get_ref())),
                &suggest_check(c.get_ref()),
            )),
        }
    }
    for (k, v) in &t.args {
        let Some(arg) = known_args.iter().find(|a| a.key == k.get_ref()) else {
            let mut keys: Vec<&str> = known_args.iter().map(|a| a.key).collect();
            keys.dedup();
            let allowed = if keys.is_empty() {
                "these checks take no arguments".to_string()
            } else {
                format!("allowed here: {}", keys.join(", "))
            };
            diags.push(src.at(
                k.span(),
                format!(
                    "unknown argument `{}` for the checks of this test",
                    shown(k.get_ref())
                ),
                &allowed,
            ));
            continue;
        };
        let checked = match v.get_ref() {
            ArgValue::Bool(_) => Err(()),
            other => arg.kind.check(&other.to_string()).map_err(|_| ()),
        };
        if checked.is_err() {
            let want = match arg.kind.check("") {
                Err(what) => what,
                Ok(()) => "another value",
            };
            diags.push(src.at(
                v.span(),
                format!(
                    "`{}` = {} is not allowed",
                    arg.key,
                    shown(&v.get_ref().quoted())
                ),
                &format!("`{}` takes {want}", arg.key),
            ));
        }
    }
    for d in &t.devices {
        validate_device(m.machine_of(t), d, src, diags);
    }
}

/// The longest NVMe serial number (the Identify Controller SN field, ASCII).
pub const MAX_SERIAL: usize = 20;

fn validate_device(machine: MachineType, d: &Device, src: &SourceFile, diags: &mut Diagnostics) {
    match d.kind.get_ref() {
        DeviceKind::NvmeVf => {
            if machine != MachineType::Q35
                || d.size.is_some()
                || d.serial.is_some()
                || d.sriov_max_vfs.is_some()
            {
                diags.push(src.at(
                    d.kind.span(),
                    "an nvme-vf device takes no size, serial or sriov_max_vfs, and needs machine = \"q35\"".into(),
                    "the VF is the host PF's; declare only kind = \"nvme-vf\" in a test on q35",
                ));
            }
        }
        DeviceKind::Nvme => {
            if machine == MachineType::Microvm {
                diags.push(src.at(
                    d.kind.span(),
                    "an nvme device needs a PCI bus, and microvm (this test's machine) has none here".into(),
                    "set machine = \"q35\" on this test",
                ));
            }
            if let Some(serial) = &d.serial {
                let s = serial.get_ref();
                if s.is_empty() || s.len() > MAX_SERIAL || !s.chars().all(|c| c.is_ascii_graphic())
                {
                    diags.push(src.at(
                        serial.span(),
                        format!("serial = \"{}\" is not an NVMe serial number", shown(s)),
                        "1 to 20 printable ASCII characters, no spaces (the controller's SN field)",
                    ));
                }
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
                if *vfs.get_ref() > 0 && machine != MachineType::Q35 {
                    diags.push(src.at(
                        vfs.span(),
                        "an SR-IOV NVMe needs PCI Express".into(),
                        "set machine = \"q35\" on this test or in [defaults]",
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
        .chain(catalogue::HOST_CHECKS.iter().map(|c| c.name))
        .filter(|c| {
            let family = name.split('.').next().unwrap_or(name);
            c.starts_with(family) || strsim::levenshtein(c, name) <= 3
        })
        .collect();
    if close.is_empty() {
        "`cargo xtask list --checks` lists every check".into()
    } else {
        format!("did you mean one of: {}", close.join(", "))
    }
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
    fn kvm_variants_are_validated_where_they_are_written() {
        let e = errors(
            "[lane]\nkind = \"virtual\"\nkernels = [\"debian:7.3\"]\nkvm = [\n  { name = \"stock\" },\n  \
             { name = \"stock\" },\n  { name = \"v3\", patches = \"nope/kvm/cr-pin-v3\" },\n  \
             { name = \"bad name\", params = { crpin_flaw = \"a b\" } },\n]\n\
             [[test]]\nname = \"a\"\nchecks = [\"cr-pin.detect\"]\n\
             [[expect]]\ntest = \"a\"\nwhen = { kvm_variant = \"v3\" }\noutcome = \"xfail\"\nreason = \"r\"\n",
        );
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e[0].starts_with("m.toml:6:12:") && e[0].contains("declared twice"),
            "{}",
            e[0]
        );
        assert!(
            e[1].starts_with("m.toml:7:28:") && e[1].contains("not a folder"),
            "{}",
            e[1]
        );
        assert!(
            e[2].starts_with("m.toml:8:12:") && e[2].contains("variant name"),
            "{}",
            e[2]
        );
        assert!(
            e[3].starts_with("m.toml:8:35:") && e[3].contains("crpin_flaw"),
            "{}",
            e[3]
        );
    }

    #[test]
    fn guest_and_host_checks_do_not_mix() {
        let e = errors("[[test]]\nname = \"a\"\nchecks = [\"vfio.env\", \"boot.smoke\"]\n");
        assert!(e[0].contains("not both"), "{e:?}");
    }

    #[test]
    fn every_type_error_is_reported_and_the_rest_still_checked() {
        let e = errors(
            "[[test]]\nname = \"a\"\nchecks = \"boot.smoke\"\nsmp = \"two\"\ntimout = 1\n\
             [[test]]\nname = 5\nchecks = [\"boot.smoke\"]\n\
             [[test]]\nchecks = [\"boot.smoke\"]\n\
             [[test]]\nname = \"d\"\nchecks = [\"boot.smok\"]\n",
        );
        let at: Vec<&str> = e.iter().map(|e| e.split(' ').next().unwrap()).collect();
        // A test left out for its bad name is not also missing a name, and
        // the fourth test is still checked.
        assert_eq!(
            at,
            [
                "m.toml:3:10:",
                "m.toml:4:7:",
                "m.toml:5:1:",
                "m.toml:7:8:",
                "m.toml:9:1:",
                "m.toml:13:11:"
            ],
            "{e:#?}"
        );
        assert!(e[4].contains("missing field `name`"), "{}", e[4]);
    }

    #[test]
    fn bad_toml_is_a_positioned_error() {
        let e = errors("[[test]\nname = 1\n");
        assert!(e[0].starts_with("m.toml:1:"), "{}", e[0]);
    }
}
