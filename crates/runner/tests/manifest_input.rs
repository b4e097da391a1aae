//! Manifests as untrusted input: a table of what must be rejected (each with
//! its position and reason), and mutations of the shipped manifests that
//! must never panic the runner and, when invalid, must be reported as
//! `file:line:col` lines.

use proptest::prelude::*;
use std::path::{Path, PathBuf};
use ukci_runner::diag::Diagnostics;
use ukci_runner::envmatch::Version;
use ukci_runner::host::{AccelChoice, HostFacts};
use ukci_runner::manifest::{self, Manifest};
use ukci_runner::plan::{self, PlanOptions};
use ukci_vhost::kernel::Kernel;

/// Words a message must never show: Rust's names for types.
const INTERNAL: &[&str] = &[
    "untagged",
    "variant of",
    "expected struct",
    "expected enum",
    "ArgValue",
    "EnvMatch",
    "Spanned",
    "expected u1",
    "expected u3",
    "expected u6",
    "expected i6",
    "expected f6",
];

/// Every diagnostic is one line, positioned in `path`, in user words.
fn assert_reported_well(path: &str, d: &Diagnostics) {
    let text = d.to_string();
    assert!(!d.is_empty());
    for line in text.lines() {
        let rest = line
            .strip_prefix(&format!("error: {path}:"))
            .unwrap_or_else(|| panic!("not positioned in {path}: {line}"));
        let mut parts = rest.splitn(3, ':');
        let (l, c) = (parts.next().unwrap(), parts.next().unwrap_or(""));
        assert!(
            l.parse::<usize>().is_ok() && c.parse::<usize>().is_ok(),
            "no line:col: {line}"
        );
        for word in INTERNAL {
            assert!(!line.contains(word), "`{word}` in: {line}");
        }
    }
    assert_eq!(text.lines().count(), d.iter().count(), "{text}");
}

const BASE: &str = "[[test]]\nname = \"a\"\nchecks = [\"boot.smoke\"]\n";
const NVME: &str = "[[test]]\nname = \"a\"\nchecks = [\"nvme.rw\", \"nvme.queues\"]\n";
const VIRTUAL: &str = "[lane]\nkind = \"virtual\"\nkernels = [\"debian:6.12\"]\n[[test]]\nname = \"a\"\nchecks = [\"vfio.env\"]\n";

fn with(base: &str, extra: &str) -> String {
    format!("{base}{extra}")
}

/// (what, manifest, line:col of the problem, words of the message).
fn must_reject() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let long = "x".repeat(5000);
    let suite = |name: &str| format!("[suite]\nname = {name}\n{BASE}");
    let test = |name: &str| format!("[[test]]\nname = {name}\nchecks = [\"boot.smoke\"]\n");
    let arg = |kv: &str| with(NVME, &format!("args = {{ {kv} }}\n"));
    let nvme_on = |defaults: &str, device: &str| {
        format!("[defaults]\n{defaults}\n{NVME}[[test.device]]\n{device}\n")
    };
    vec![
        // Suite names end up in paths.
        (
            "suite name: absolute path",
            suite("\"/tmp/x/img\""),
            "2:8",
            "`/` is not allowed",
        ),
        ("suite name: empty", suite("\"\""), "2:8", "it is empty"),
        (
            "suite name: parent",
            suite("\"..\""),
            "2:8",
            "`.` is not allowed",
        ),
        (
            "suite name: space",
            suite("\"a b\""),
            "2:8",
            "` ` is not allowed",
        ),
        (
            "suite name: newline",
            suite("\"a\\nb\""),
            "2:8",
            "`\\n` is not allowed",
        ),
        (
            "suite name: 5000 characters",
            suite(&format!("\"{long}\"")),
            "2:8",
            "5000 characters",
        ),
        // Test names too.
        (
            "test name: dot",
            test("\".\""),
            "2:8",
            "must start with a letter or digit",
        ),
        (
            "test name: dot dot",
            test("\"..\""),
            "2:8",
            "must start with a letter or digit",
        ),
        (
            "test name: too long",
            test(&format!("\"{}\"", "t".repeat(300))),
            "2:8",
            "300 characters",
        ),
        // Argument values, typed by the catalogue.
        (
            "max-bytes: words",
            arg("\"nvme.max-bytes\" = \"lots\""),
            "4:29",
            "`nvme.max-bytes` = \"lots\"",
        ),
        (
            "nsid: zero",
            arg("\"nvme.nsid\" = 0"),
            "4:24",
            "`nvme.nsid` = 0",
        ),
        (
            "bdf: no function",
            arg("\"nvme.bdf\" = \"00:04\""),
            "4:23",
            "`nvme.bdf` = \"00:04\"",
        ),
        (
            "bdf: not hex",
            arg("\"nvme.bdf\" = \"zz:04.0\""),
            "4:23",
            "PCI address",
        ),
        (
            "queues: too many",
            arg("\"nvme.queues\" = 65"),
            "4:26",
            "from 1 to 64",
        ),
        (
            "argument: a float",
            arg("\"nvme.nsid\" = 1.5"),
            "4:24",
            "expected a number, a string or a boolean",
        ),
        // requires/when are closed sets.
        (
            "requires: accel",
            with(BASE, "requires = { accel = \"hvf\" }\n"),
            "4:22",
            "`accel` cannot be `hvf`",
        ),
        (
            "requires: kvm_module",
            with(BASE, "requires = { kvm_module = \"kvm_foo\" }\n"),
            "4:27",
            "cannot be `kvm_foo`",
        ),
        (
            "requires: unknown key",
            with(BASE, "requires = { acel = \"kvm\" }\n"),
            "4:14",
            "unknown key `acel`",
        ),
        (
            "when: accel",
            with(
                BASE,
                "[[expect]]\nwhen = { accel = \"hvf\" }\noutcome = \"xfail\"\nreason = \"r\"\n",
            ),
            "5:18",
            "`accel` cannot be `hvf`",
        ),
        // Device rules see the machine of [defaults].
        (
            "nvme on a microvm default",
            nvme_on("machine = \"microvm\"", "kind = \"nvme\""),
            "7:8",
            "microvm",
        ),
        (
            "sriov on a pc default",
            nvme_on("machine = \"pc\"", "kind = \"nvme\"\nsriov_max_vfs = 2"),
            "8:17",
            "PCI Express",
        ),
        (
            "nvme-vf on a pc default",
            nvme_on("machine = \"pc\"", "kind = \"nvme-vf\""),
            "7:8",
            "q35",
        ),
        (
            "serial with QEMU options",
            nvme_on(
                "",
                "kind = \"nvme\"\nserial = \"inj,logical_block_size=4096,physical_block_size=4096\"",
            ),
            "8:10",
            "not an NVMe serial number",
        ),
        // Topology bounds.
        (
            "topology: namespaces",
            VIRTUAL.replace("kernels", "topology = { namespaces = 100000 }\nkernels"),
            "3:12",
            "namespaces must be from 1 to 16",
        ),
        (
            "topology: namespace size",
            VIRTUAL.replace(
                "kernels",
                "topology = { namespace_size = \"4096G\" }\nkernels",
            ),
            "3:12",
            "namespace_size",
        ),
        // An expectation that can apply to nothing.
        (
            "expect: no such test",
            with(
                BASE,
                "[[expect]]\ntest = \"b\"\noutcome = \"xfail\"\nreason = \"r\"\n",
            ),
            "5:8",
            "matches no test",
        ),
        (
            "expect: no such result",
            with(
                BASE,
                "[[expect]]\nresult = \"boot.smok: *\"\noutcome = \"xfail\"\nreason = \"r\"\n",
            ),
            "5:10",
            "can match no result",
        ),
    ]
}

#[test]
fn the_must_reject_table() {
    let cases = must_reject();
    assert!(cases.len() >= 25);
    let mut wrong = Vec::new();
    for (what, text, pos, words) in cases {
        let d = manifest::parse(Path::new("m.toml"), &text)
            .map(|_| ())
            .expect_err(what);
        assert_reported_well("m.toml", &d);
        let text = d.to_string();
        if !(text.contains(&format!("m.toml:{pos}: ")) && text.contains(words)) {
            wrong.push(format!("{what}: want {pos} and `{words}` in:\n{text}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_host_config_rejects_what_it_does_not_know() {
    let dir = std::env::temp_dir().join(format!("ukci-hostcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("host.toml");
    for (text, pos, words) in [
        ("pff = \"0000:3b:00.0\"\n", "1:1", "unknown field `pff`"),
        ("pf = \"3b:00.0\"\n", "1:6", "not a PCI address"),
    ] {
        std::fs::write(&file, text).unwrap();
        let d = ukci_runner::hostconfig::local_pf(&file).unwrap_err();
        let shown = d.to_string();
        assert!(
            shown.contains(&format!("{}:{pos}: ", file.display())) && shown.contains(words),
            "{shown}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn what_defaults_make_valid_is_accepted() {
    // sriov_max_vfs needs q35, which [defaults] may set alone.
    let text = format!(
        "[defaults]\nmachine = \"q35\"\n{NVME}[[test.device]]\nkind = \"nvme\"\nsriov_max_vfs = 2\nserial = \"a,b=1\"\n"
    );
    manifest::parse(Path::new("m.toml"), &text).unwrap();
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every shipped manifest, as (path, text).
fn shipped() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in ["manifests", "tests/manifests"] {
        for p in ukci_runner::session::all_manifests(&root().join(dir)) {
            let name = format!("{dir}/{}", p.file_name().unwrap().to_string_lossy());
            out.push((name, std::fs::read_to_string(&p).unwrap()));
        }
    }
    assert!(out.len() >= 8, "{out:?}");
    out
}

fn shipped_cached() -> &'static [(String, String)] {
    static FILES: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    FILES.get_or_init(shipped)
}

/// A shipped manifest's text as this machine can check it: a
/// `[kvm-unit-tests]` one pointed at the shared tree (built once into the
/// cache), as `cargo xtask test` points it; `None` without that tree.
fn checkable(text: &str) -> Option<String> {
    if !text.lines().any(|l| l.trim() == "[kvm-unit-tests]") {
        return Some(text.to_string());
    }
    let tarball = root().join(ukci_kut::tree::SHARED_TARBALL);
    if !tarball.is_file() {
        eprintln!(
            "skipped a [kvm-unit-tests] manifest: {} is absent",
            tarball.display()
        );
        return None;
    }
    let tree = ukci_kut::tree::prepare(&tarball, &ukci_vhost::cache::user_dir(), |_| {}).unwrap();
    let dir = format!("dir = \"{}\"", tree.display());
    Some(
        text.lines()
            .map(|l| {
                if l.starts_with("dir = ") {
                    dir.as_str()
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[test]
fn every_shipped_manifest_is_valid() {
    // The real path: a lane's patch folders are found relative to it.
    for (path, text) in shipped_cached() {
        let Some(text) = checkable(text) else {
            continue;
        };
        if let Err(d) = manifest::parse(&root().join(path), &text) {
            panic!("{d}");
        }
    }
}

/// What a mutation does to a manifest's text; positions are fractions of
/// its length.
#[derive(Clone, Debug)]
enum Mutation {
    Delete(f64, usize),
    Insert(f64, &'static str),
    /// Repeat the line there.
    Duplicate(f64),
    /// Replace the next value (after an `= `).
    Value(f64, &'static str),
}

/// Pieces of TOML and of nonsense a mutation inserts.
const PIECES: &[&str] = &[
    "\"",
    "[",
    "]",
    "{",
    "}",
    "=",
    ",",
    "\n",
    "#",
    ".",
    "..",
    "/",
    " ",
    "\\n",
    "[[test]]\n",
    "[[expect]]\n",
    "[[test.device]]\nkind = \"nvme\"\n",
    "[defaults]\n",
    "[lane]\n",
    "name = \"\"\n",
    "machine = \"microvm\"\n",
    "accel = \"hvf\"\n",
    "requires = { kvm_module = \"kvm_foo\" }\n",
    "args = { \"nvme.nsid\" = 0 }\n",
    "timeout = \"0s\"\n",
    "smp = 100\n",
    "memory = \"4096G\"\n",
    "checks = []\n",
    "é",
    "\u{0}",
    "-1",
    "1e400",
    "99999999999999999999",
];
const VALUES: &[&str] = &[
    "\"\"",
    "0",
    "-1",
    "1.5",
    "true",
    "[]",
    "{}",
    "[1, \"a\"]",
    "\"../../x\"",
    "\"a,b=c\"",
    "\"4096G\"",
    "\"q35\"",
    "\"debian:5.99\"",
    "\"*\"",
    "{ vfs = 200 }",
    "\"0000:00:04.0\"",
];

fn at(text: &str, f: f64) -> usize {
    text.floor_char_boundary((text.len() as f64 * f) as usize)
}

fn mutate(text: &str, m: &Mutation) -> String {
    let mut t = text.to_string();
    match *m {
        Mutation::Delete(f, len) => {
            let a = at(&t, f);
            let b = t.floor_char_boundary((a + len).min(t.len()));
            t.replace_range(a..b, "");
        }
        Mutation::Insert(f, piece) => {
            let a = at(&t, f);
            t.insert_str(a, piece);
        }
        Mutation::Duplicate(f) => {
            let a = at(&t, f);
            let start = t[..a].rfind('\n').map_or(0, |i| i + 1);
            let end = t[a..].find('\n').map_or(t.len(), |i| a + i + 1);
            let line = t[start..end].to_string();
            t.insert_str(start, &line);
        }
        Mutation::Value(f, value) => {
            let a = at(&t, f);
            if let Some(eq) = t[a..].find("= ").map(|i| a + i + 2) {
                let end = t[eq..].find('\n').map_or(t.len(), |i| eq + i);
                t.replace_range(eq..end, value);
            }
        }
    }
    t
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0.0..1.0, 1usize..40).prop_map(|(f, n)| Mutation::Delete(f, n)),
        (0.0..1.0, proptest::sample::select(PIECES)).prop_map(|(f, p)| Mutation::Insert(f, p)),
        (0.0..1.0).prop_map(Mutation::Duplicate),
        (0.0..1.0, proptest::sample::select(VALUES)).prop_map(|(f, v)| Mutation::Value(f, v)),
    ]
}

/// Plans a valid manifest (every kernel it names resolved to a stand-in)
/// and builds every QEMU command line: none of it may panic.
fn plan_all(m: Manifest) {
    let mut opts = PlanOptions::default();
    for k in m.kernels() {
        let kernel = Kernel {
            name: k.clone(),
            package: None,
            version: None,
            release: "6.12.0".into(),
            vmlinuz: "/k/vmlinuz".into(),
            modules_dir: "/k/modules".into(),
        };
        opts.resolved.insert(k, kernel);
    }
    let facts = HostFacts {
        qemu_version: Some(Version(vec![10, 0, 2])),
        host_kernel: "6.1.0-28-amd64".into(),
        kvm_module: Some("kvm_pvm".into()),
        kvm_host: None,
        kvm_log: String::new(),
        kvm_variant: None,
        kvm_build: None,
        cpu_model: "EPYC".into(),
        dev_kvm: Ok(()),
    };
    let auto = AccelChoice {
        accel: ukci_vhost::accel::Accel::Tcg,
        reason: "fuzz".into(),
    };
    let plan = plan::plan(&[m], &facts, &auto, Path::new("/g"), Path::new("/s"), &opts);
    for t in plan {
        let _ = t.vm.args();
        if let Some(b) = &t.boot {
            assert!(b.topology.validate().is_ok(), "{:?}", b.topology);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    /// A mutated shipped manifest either loads and plans, or is rejected with
    /// positioned one-line diagnostics (which `list` and `test` print before
    /// exiting 3); nothing panics.
    #[test]
    fn mutated_manifests_never_panic_and_are_reported_with_positions(
        which in any::<proptest::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let files = shipped_cached();
        let (path, text) = &files[which.index(files.len())];
        let mut t = text.clone();
        for m in &mutations {
            t = mutate(&t, m);
        }
        match manifest::parse(Path::new(path), &t) {
            Ok(m) => plan_all(m),
            Err(d) => assert_reported_well(path, &d),
        }
    }
}
