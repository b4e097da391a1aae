//! `[kvm-unit-tests]` of a manifest: the tree and its cfg read and checked
//! with the manifest, each selected cfg test made one of the manifest's
//! tests (so `[defaults]`, `[[expect]]`, `[lane]`, `--filter` and the
//! reports treat it as any other).

use crate::diag::{Diagnostic, Diagnostics, SourceFile, shown};
use crate::units::{Timeout, glob};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;
use ukci_kut::cfg::{self, CfgTest};
use ukci_kut::select;

/// Overrides `dir` of every `[kvm-unit-tests]` table.
pub const DIR_ENV: &str = "UKCI_KVM_UNIT_TESTS";

/// A manifest of suite `kut` that runs `tests` of the tree at `dir`, its
/// strings quoted as TOML quotes them.
pub fn manifest_text(dir: &Path, tests: &[impl AsRef<str>]) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let tests: Vec<String> = tests.iter().map(|t| quote(t.as_ref())).collect();
    format!(
        "[suite]\nname = \"kut\"\n[kvm-unit-tests]\ndir = {}\ntests = [{}]\n",
        quote(&dir.to_string_lossy()),
        tests.join(", ")
    )
}

/// `[kvm-unit-tests]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// A configured and built tree, relative to the manifest.
    pub dir: Option<Spanned<PathBuf>>,
    /// The cfg, relative to the tree (default: `<TEST_DIR>/unittests.cfg`).
    pub cfg: Option<Spanned<PathBuf>>,
    /// Globs over the cfg's test names (default: every test).
    #[serde(default)]
    pub tests: Vec<Spanned<String>>,
    /// Only tests in one of these groups; `nodefault` tests then run too.
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
}

/// The tree and the tests a manifest takes from it.
#[derive(Clone, Debug)]
pub struct Suite {
    pub dir: PathBuf,
    /// `ARCH` and `TEST_DIR` from the tree's `config.mak`.
    pub arch: String,
    pub test_dir: PathBuf,
    pub cfg: PathBuf,
    pub tests: Vec<CfgTest>,
    pub groups_asked: bool,
}

/// Reads `[kvm-unit-tests]`: the tree (which `UKCI_KVM_UNIT_TESTS`
/// overrides), its cfg and the selection. Problems go to `diags`; the cfg's
/// ignored lines to `warnings`.
pub fn load(
    manifest: &Path,
    section: &Spanned<Section>,
    src: &SourceFile,
    diags: &mut Diagnostics,
    warnings: &mut Vec<Diagnostic>,
) -> Option<Suite> {
    let s = section.get_ref();
    let base = manifest.parent().unwrap_or(Path::new("."));
    let (dir, span) = match (std::env::var_os(DIR_ENV), &s.dir) {
        (Some(env), d) => (
            PathBuf::from(env),
            d.as_ref().map_or(section.span(), |d| d.span()),
        ),
        (None, Some(d)) => (base.join(d.get_ref()), d.span()),
        (None, None) => {
            diags.push(src.at(
                section.span(),
                "[kvm-unit-tests] names no tree: `dir` is missing".into(),
                &format!(
                    "set dir = \"PATH\" to a kvm-unit-tests tree (relative to this manifest) or {DIR_ENV}=DIR, \
                     and run ./configure && make in it"
                ),
            ));
            return None;
        }
    };
    let config = std::fs::read_to_string(dir.join("config.mak")).unwrap_or_default();
    let var = |k: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_string)
    };
    let test_dir_name = var("TEST_DIR").unwrap_or_else(|| "x86".into());
    if !ukci_kut::tree::is_built(&dir, &test_dir_name) {
        diags.push(src.at(
            span,
            format!(
                "{} is not a configured and built kvm-unit-tests tree (no config.mak or no {test_dir_name}/*.flat)",
                dir.display()
            ),
            &format!("run ./configure && make in {}", dir.display()),
        ));
        return None;
    }
    let cfg_rel = s.cfg.as_ref().map_or_else(
        || Path::new(&test_dir_name).join("unittests.cfg"),
        |c| c.get_ref().clone(),
    );
    let cfg_path = dir.join(&cfg_rel);
    let text = match std::fs::read_to_string(&cfg_path) {
        Ok(t) => t,
        Err(e) => {
            diags.push(src.at(
                s.cfg.as_ref().map_or(span, |c| c.span()),
                format!("cannot read {}: {e}", cfg_path.display()),
                "cfg is relative to the tree, e.g. x86/unittests.cfg",
            ));
            return None;
        }
    };
    let (all, warns) = cfg::parse(&text);
    warnings.extend(warns.into_iter().map(|w| Diagnostic {
        file: cfg_path.clone(),
        pos: Some((w.line, 1)),
        message: w.message,
        help: "kvm-unit-tests' scripts ignore this line".into(),
    }));
    for g in &s.tests {
        if !all.iter().any(|t| glob(g.get_ref(), &t.name)) {
            diags.push(src.at(
                g.span(),
                format!(
                    "tests glob \"{}\" matches no test of {}",
                    shown(g.get_ref()),
                    cfg_path.display()
                ),
                "`./run_tests.sh -l` in the tree lists its tests",
            ));
        }
    }
    for g in &s.groups {
        if !all.iter().any(|t| t.in_group(g.get_ref())) {
            diags.push(src.at(
                g.span(),
                format!(
                    "group \"{}\" has no test in {}",
                    shown(g.get_ref()),
                    cfg_path.display()
                ),
                "groups are the words of the cfg's `groups =` lines",
            ));
        }
    }
    let globs: Vec<String> = s.tests.iter().map(|g| g.get_ref().clone()).collect();
    let groups: Vec<String> = s.groups.iter().map(|g| g.get_ref().clone()).collect();
    let tests: Vec<CfgTest> = select::select(&all, &globs, &groups, glob)
        .into_iter()
        .cloned()
        .collect();
    Some(Suite {
        test_dir: dir.join(&test_dir_name),
        arch: var("ARCH").unwrap_or_else(|| "x86_64".into()),
        dir,
        cfg: cfg_path,
        tests,
        groups_asked: !groups.is_empty(),
    })
}

impl Suite {
    /// The cfg's tests as the manifest's tests: each named as in the cfg,
    /// its one check named after it, its timeout and vCPUs the cfg's. A
    /// name that cannot be a ukci test name, or that a `[[test]]` has, is
    /// an error at the cfg's line.
    pub fn manifest_tests(
        &self,
        declared: &[super::Test],
        diags: &mut Diagnostics,
    ) -> Vec<super::Test> {
        let max_smp = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let mut out = Vec::new();
        for t in &self.tests {
            let at = |message: String, help: &str| Diagnostic {
                file: self.cfg.clone(),
                pos: Some((t.line, 1)),
                message,
                help: help.into(),
            };
            let mut problems = Vec::new();
            if let Err(why) = super::check_name(&t.name, true) {
                problems.push(at(
                    format!(
                        "test name `{}` cannot name a ukci test: {why}",
                        shown(&t.name)
                    ),
                    "leave it out with `tests` in [kvm-unit-tests]",
                ));
            }
            if declared.iter().any(|d| d.name.get_ref() == &t.name) {
                problems.push(at(
                    format!("test `{}` is also a [[test]] of the manifest", t.name),
                    "rename the [[test]]",
                ));
            }
            let timeout = t
                .timeout()
                .map_err(|e| problems.push(at(e, "a timeout(1) duration: 90s, 2m, 30")));
            let smp = t
                .smp(max_smp)
                .map_err(|e| problems.push(at(e, "a number of vCPUs or $MAX_SMP")));
            let (Ok(timeout), Ok(smp), true) = (timeout, smp, problems.is_empty()) else {
                for p in problems {
                    diags.push(p);
                }
                continue;
            };
            let name = Spanned::new(0..0, t.name.clone());
            out.push(super::Test {
                name: name.clone(),
                description: None,
                checks: Spanned::new(0..0, vec![name]),
                args: Default::default(),
                machine: None,
                accel: None,
                cpu: None,
                memory: None,
                smp: Some(Spanned::new(0..0, smp)),
                timeout: Some(Timeout(timeout)),
                requires: Default::default(),
                devices: vec![],
            });
        }
        out
    }

    pub fn find(&self, name: &str) -> Option<&CfgTest> {
        self.tests.iter().find(|t| t.name == name)
    }

    /// Why `run` would skip `t` before starting QEMU under `accel`.
    pub fn skip_before_start(&self, t: &CfgTest, accel: &str) -> Option<String> {
        let read = |p: &Path| std::fs::read_to_string(p).ok();
        select::skip_before_start(
            t,
            &select::Context {
                arch: &self.arch,
                accel,
                groups_asked: self.groups_asked,
                test_dir: &self.test_dir,
                read: &read,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    /// A built tree in a temporary folder, and a manifest beside it.
    fn tree(cfg: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("kut");
        std::fs::create_dir_all(t.join("x86")).unwrap();
        std::fs::write(t.join("config.mak"), "ARCH=x86_64\nTEST_DIR=x86\n").unwrap();
        std::fs::write(t.join("x86/a.flat"), b"").unwrap();
        std::fs::write(t.join("x86/unittests.cfg"), cfg).unwrap();
        d
    }

    fn parse(d: &tempfile::TempDir, text: &str) -> Result<super::super::Manifest, Vec<String>> {
        super::super::parse(&d.path().join("m.toml"), text)
            .map_err(|e| e.iter().map(|d| d.to_string()).collect())
    }

    const CFG: &str = "[a]\nfile = a.flat\n[b]\nfile = b.flat\ngroups = g nodefault\nflavour = x\n";

    #[test]
    fn the_cfg_tests_become_the_manifest_s_tests() {
        let d = tree(CFG);
        let m = parse(
            &d,
            "[kvm-unit-tests]\ndir = \"kut\"\n[[expect]]\ntest = \"a\"\nresult = \"whatever*\"\noutcome = \"xfail\"\nreason = \"r\"\n",
        )
        .unwrap();
        let names: Vec<&str> = m.tests.iter().map(|t| t.name.get_ref().as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(m.tests[0].timeout.unwrap().0, Duration::from_secs(90));
        let w: Vec<String> = m.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("x86/unittests.cfg:6:1: unknown key `flavour` in [b]"),
            "{}",
            w[0]
        );
        let k = m.kut.as_ref().unwrap();
        assert_eq!(k.skip_before_start(&k.tests[0], "tcg"), None);
        assert_eq!(
            k.skip_before_start(&k.tests[1], "tcg").as_deref(),
            Some("test marked as manual run only")
        );
        let m = parse(&d, "[kvm-unit-tests]\ndir = \"kut\"\ngroups = [\"g\"]\n").unwrap();
        let k = m.kut.as_ref().unwrap();
        assert_eq!(k.tests.len(), 1);
        assert_eq!(
            k.skip_before_start(&k.tests[0], "tcg").as_deref(),
            Some("Test file 'x86/b.flat' not found"),
            "a group asked for runs its nodefault tests"
        );
    }

    #[test]
    fn bad_input_is_reported_where_it_is_with_what_to_do() {
        let d = tree(CFG);
        let e = parse(&d, "[kvm-unit-tests]\ncfg = \"x86/unittests.cfg\"\n").unwrap_err();
        assert!(
            e[0].contains("m.toml:1:1: [kvm-unit-tests] names no tree"),
            "{e:?}"
        );
        assert!(e[0].contains("run ./configure && make"), "{e:?}");
        std::fs::create_dir_all(d.path().join("raw")).unwrap();
        let e = parse(&d, "[kvm-unit-tests]\ndir = \"raw\"\n").unwrap_err();
        assert!(
            e[0].contains("m.toml:2:7:") && e[0].contains("not a configured and built"),
            "{e:?}"
        );
        assert!(e[0].contains("(help: run ./configure && make in "), "{e:?}");
        let e = parse(
            &d,
            "[kvm-unit-tests]\ndir = \"kut\"\ntests = [\"a\", \"zz*\"]\ngroups = [\"nope\"]\n[[expect]]\ntest = \"q\"\noutcome = \"xfail\"\nreason = \"r\"\n",
        )
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].contains("m.toml:3:15:") && e[0].contains("\"zz*\" matches no test"),
            "{e:?}"
        );
        assert!(
            e[1].contains("m.toml:4:11:") && e[1].contains("group \"nope\""),
            "{e:?}"
        );
        assert!(
            e[2].contains("m.toml:6:8: test = \"q\" matches no test"),
            "{e:?}"
        );
    }

    #[test]
    fn a_written_manifest_keeps_its_strings_whatever_they_hold() {
        let text = super::manifest_text(Path::new("/t/a \"b\"\\c"), &["x*", "y"]);
        let t: toml::Table = toml::from_str(&text).unwrap();
        let k = t["kvm-unit-tests"].as_table().unwrap();
        assert_eq!(k["dir"].as_str(), Some("/t/a \"b\"\\c"));
        assert_eq!(k["tests"].as_array().unwrap().len(), 2);
    }
}
