//! kvm-unit-tests from a manifest's `[kvm-unit-tests]` table: the tree and
//! its cfg read and checked with the manifest, each selected cfg test made
//! one of the manifest's tests (so `[defaults]`, `[[expect]]`, `[lane]`,
//! `--filter` and the reports treat it as any other), and its run: the
//! command `x86/run` builds, under supervision, decoded as the tree's
//! scripts decode it (`ukci_kut`).

use crate::diag::{Diagnostic, Diagnostics, SourceFile, shown};
use crate::outcome::{Judged, Outcome, SubResult, glob};
use crate::supervise::{self, End, Finished};
use crate::units::Timeout;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;
use ukci_kut::cfg::{self, CfgTest};
use ukci_kut::command::{self, TestCommand};
use ukci_kut::decode::{self, Word};
use ukci_kut::select;
use ukci_protocol::line::Status;

/// Overrides `dir` of every `[kvm-unit-tests]` table.
pub const DIR_ENV: &str = "UKCI_KVM_UNIT_TESTS";

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

/// One test's run, as planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KutRun {
    pub dir: PathBuf,
    pub test_dir: PathBuf,
    pub test: CfgTest,
    /// The environment file's path (created for the run, then removed).
    pub env_file: PathBuf,
    /// `QEMU emulator version X.Y.Z`, `uname -r`: for the environment file.
    pub qemu_version: String,
    pub host_kernel: String,
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
        declared: &[crate::manifest::Test],
        diags: &mut Diagnostics,
    ) -> Vec<crate::manifest::Test> {
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
            if let Err(why) = crate::manifest::check_name(&t.name, true) {
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
            out.push(crate::manifest::Test {
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

/// The run of `test` if the manifest takes it from a cfg, and why `run`
/// would skip it before starting QEMU. Inside a virtual lane's boot that
/// is decided by the agent, which knows the accelerator and the host.
pub fn plan_test(
    m: &crate::manifest::Manifest,
    test: &str,
    accel: &str,
    in_boot: bool,
    host: &crate::host::HostFacts,
    env_file: &Path,
) -> (Option<KutRun>, Option<String>) {
    let Some((suite, t)) = m.kut.as_ref().and_then(|k| Some((k, k.find(test)?))) else {
        return (None, None);
    };
    let skip = (!in_boot)
        .then(|| suite.skip_before_start(t, accel))
        .flatten();
    let run = KutRun {
        dir: suite.dir.clone(),
        test_dir: suite.test_dir.clone(),
        test: t.clone(),
        env_file: env_file.to_path_buf(),
        qemu_version: host
            .qemu_version
            .as_ref()
            .map(|v| format!("QEMU emulator version {v}"))
            .unwrap_or_default(),
        host_kernel: host.host_kernel.clone(),
    };
    (Some(run), skip)
}

/// Runs one kvm-unit-tests test as `x86/run` would: QEMU started once with
/// no kernel to see whether it starts at all (`premature_failure`), then
/// the test, under its timeout. Returns its results (one per result line,
/// and one named after the test where the verdict has no line of its own)
/// and how QEMU ended.
pub fn run(
    k: &KutRun,
    accel: &str,
    smp: u32,
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> (Judged, Finished) {
    let name = k.test.name.clone();
    let expand = |v: &Option<String>| match v {
        None => Ok(vec![]),
        Some(v) => command::expand(v, &k.dir),
    };
    let words = expand(&k.test.test_args).and_then(|a| Ok((a, expand(&k.test.extra_params)?)));
    let (append, extra) = match words {
        Ok(w) => w,
        Err(e) => {
            return (
                verdict_only(&name, &decode::Verdict::skipped(e), true),
                not_run(),
            );
        }
    };
    if let Some(cond) = k
        .test
        .disabled_if
        .as_deref()
        .filter(|c| !c.trim().is_empty())
        && command::disabled(cond, accel, &k.dir)
    {
        let why = format!("disabled because: {cond}");
        return (
            verdict_only(&name, &decode::Verdict::skipped(why), false),
            not_run(),
        );
    }
    let env = command::environment(accel, &k.qemu_version, &k.host_kernel);
    if let Some(dir) = k.env_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&k.env_file, env) {
        let err = format!("cannot write {}: {e}", k.env_file.display());
        return (error_only(&name, err), not_run());
    }
    let mut cmd = TestCommand {
        kernel: decode::NO_FILE.into(),
        accel: accel.to_string(),
        smp,
        append,
        extra,
        initrd: Some(k.env_file.clone()),
    };
    let probe = supervise::run(crate::qemu::QEMU.as_ref(), &cmd.args(), timeout, |_| {});
    let mut log = format!("{}{}", probe.stdout, probe.stderr);
    // bash's status 134 (SIGABRT): `qemu_fixup_return_code` says so.
    if matches!(probe.end, End::Exited(134) | End::Signaled(6)) {
        log.push_str("QEMU Aborted\n");
    }
    if let Some(why) = decode::premature_failure(&log) {
        let _ = std::fs::remove_file(&k.env_file);
        return (
            verdict_only(&name, &decode::Verdict::skipped(why), false),
            probe,
        );
    }
    cmd.kernel = k.test_dir.join(k.test.file.as_deref().unwrap_or_default());
    let fin = supervise::run(crate::qemu::QEMU.as_ref(), &cmd.args(), timeout, |l| {
        on_line(l)
    });
    let _ = std::fs::remove_file(&k.env_file);
    let shown_timeout = k.test.timeout.clone().unwrap_or_else(|| "90s".into());
    let verdict = decode::verdict(&fin.end, &fin.stdout, &fin.stderr, &shown_timeout);
    (judge(&name, &fin.stdout, &verdict), fin)
}

/// The results of a test that ran: one per result line, and the verdict's
/// own where no line carries it.
pub fn judge(test: &str, stdout: &str, verdict: &decode::Verdict) -> Judged {
    let mut results: Vec<SubResult> = decode::result_lines(stdout)
        .into_iter()
        .map(|r| SubResult {
            outcome: match r.status {
                Status::Pass => Outcome::Pass,
                Status::Fail => Outcome::Fail(r.name.clone()),
                Status::Skip => Outcome::Skip(r.reason.clone().unwrap_or_else(|| r.name.clone())),
                Status::Xfail => Outcome::Xfail(
                    r.reason
                        .clone()
                        .unwrap_or_else(|| "expected failure".into()),
                ),
                Status::Kfail => Outcome::Xfail(format!(
                    "known failure: {}",
                    r.reason.as_deref().unwrap_or(&r.name)
                )),
                Status::Xpass => {
                    Outcome::Xpass(format!("passed where a failure was expected: {}", r.name))
                }
            },
            name: r.name,
            detail: None,
        })
        .collect();
    let failed = results
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Fail(_) | Outcome::Xpass(_)));
    let own = match verdict.word {
        Word::Fail if verdict.no_verdict => Some(Outcome::Error(verdict.why.clone())),
        Word::Fail if !failed => Some(Outcome::Fail(verdict.why.clone())),
        Word::Skip if results.is_empty() => Some(Outcome::Skip(verdict.why.clone())),
        Word::Pass if results.is_empty() => Some(Outcome::Pass),
        _ => None,
    };
    if let Some(outcome) = own {
        results.push(SubResult {
            name: test.to_string(),
            outcome,
            detail: Some(format!("run_tests.sh: {}", verdict.line(test))),
        });
    }
    Judged {
        results,
        infos: vec![],
    }
}

/// The verdict `run_tests.sh` would print for a test's results: FAIL when
/// one failed or erred, SKIP when all were skipped, else PASS.
pub fn word_of(results: &[SubResult]) -> Word {
    if results
        .iter()
        .any(|r| !r.outcome.as_expected() && !matches!(r.outcome, Outcome::Skip(_)))
    {
        Word::Fail
    } else if !results.is_empty()
        && results
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Skip(_)))
    {
        Word::Skip
    } else {
        Word::Pass
    }
}

fn verdict_only(test: &str, v: &decode::Verdict, error: bool) -> Judged {
    let outcome = match (v.word, error) {
        (_, true) => Outcome::Error(v.why.clone()),
        (Word::Skip, _) => Outcome::Skip(v.why.clone()),
        (Word::Pass, _) => Outcome::Pass,
        (Word::Fail, _) => Outcome::Fail(v.why.clone()),
    };
    Judged {
        results: vec![SubResult {
            name: test.to_string(),
            outcome,
            detail: None,
        }],
        infos: vec![],
    }
}

fn error_only(test: &str, why: String) -> Judged {
    verdict_only(test, &decode::Verdict::skipped(why), true)
}

fn not_run() -> Finished {
    Finished {
        end: End::Exited(0),
        stdout: String::new(),
        stderr: String::new(),
        elapsed: Duration::ZERO,
        ready_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(j: &Judged) -> Vec<(&str, &str)> {
        j.results
            .iter()
            .map(|r| (r.name.as_str(), r.outcome.word()))
            .collect()
    }

    #[test]
    fn each_result_line_is_a_result_and_a_verdict_without_one_is_added() {
        let out =
            "PASS: a\nSKIP: b (no)\nKFAIL: c\nSUMMARY: 3 tests, 1 known failures, 1 skipped\n";
        let v = decode::verdict(&End::Exited(1), out, "", "90s");
        let j = judge("t", out, &v);
        assert_eq!(outcomes(&j), [("a", "pass"), ("b", "skip"), ("c", "xfail")]);
        assert_eq!(word_of(&j.results), Word::Pass);

        let v = decode::verdict(
            &End::TimedOut(Duration::from_secs(90)),
            "PASS: a\n",
            "",
            "90s",
        );
        let j = judge("t", "PASS: a\n", &v);
        assert_eq!(outcomes(&j), [("a", "pass"), ("t", "error")]);
        assert_eq!(
            j.results[1].outcome.message(),
            Some("timeout; duration=90s")
        );
        assert_eq!(word_of(&j.results), Word::Fail);

        let out = "FAIL: a\nSUMMARY: 1 tests, 1 unexpected failures\n";
        let j = judge("t", out, &decode::verdict(&End::Exited(3), out, "", "90s"));
        assert_eq!(
            outcomes(&j),
            [("a", "fail")],
            "the failing line carries the verdict"
        );

        let j = judge(
            "t",
            "",
            &decode::verdict(&End::Exited(77), "SUMMARY: 0 tests\n", "", "90s"),
        );
        assert_eq!(outcomes(&j), [("t", "skip")]);
        assert_eq!(word_of(&j.results), Word::Skip);

        let out = "SKIP: a\nSKIP: b\nSUMMARY: 2 tests, 2 skipped\n";
        let j = judge("t", out, &decode::verdict(&End::Exited(77), out, "", "90s"));
        assert_eq!(outcomes(&j), [("a", "skip"), ("b", "skip")]);
        assert_eq!(word_of(&j.results), Word::Skip);

        let out = "PASS: a\nXPASS: b\nSUMMARY: 2 tests, 1 unexpected failures\n";
        let j = judge("t", out, &decode::verdict(&End::Exited(3), out, "", "90s"));
        assert_eq!(outcomes(&j), [("a", "pass"), ("b", "xpass")]);
        assert_eq!(word_of(&j.results), Word::Fail);
    }

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

    fn parse(d: &tempfile::TempDir, text: &str) -> Result<crate::manifest::Manifest, Vec<String>> {
        crate::manifest::parse(&d.path().join("m.toml"), text)
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
}
