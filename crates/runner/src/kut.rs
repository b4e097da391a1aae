//! Runs one kvm-unit-tests test of the plan: the command `x86/run` builds,
//! under supervision, decoded as the tree's scripts decode it (`ukci_kut`).

use crate::outcome::{Judged, Outcome, SubResult};
use crate::plan::KutRun;
use crate::supervise::{self, End, Finished};
use std::time::Duration;
use ukci_kut::command::{self, TestCommand};
use ukci_kut::decode::{self, Word};
use ukci_protocol::line::Status;
use ukci_vhost::accel::Accel;

/// Runs one kvm-unit-tests test as `x86/run` would: QEMU started once with
/// no kernel to see whether it starts at all (`premature_failure`), then
/// the test, under its timeout. Returns its results (one per result line,
/// and one named after the test where the verdict has no line of its own)
/// and how QEMU ended.
pub fn run(
    k: &KutRun,
    accel: Accel,
    smp: u32,
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> (Judged, Finished) {
    let accel = accel.word();
    let name = k.test.name.clone();
    let expand = |v: &Option<String>| match v {
        None => Ok(vec![]),
        Some(v) => command::expand(v, &k.dir),
    };
    let words = expand(&k.test.test_args).and_then(|a| Ok((a, expand(&k.test.extra_params)?)));
    let (append, extra) = match words {
        Ok(w) => w,
        Err(e) => {
            return (only(&name, Outcome::Error(e)), not_run());
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
        return (only(&name, Outcome::Skip(why)), not_run());
    }
    let env = command::environment(accel, &k.qemu_version, &k.host_kernel);
    if let Some(dir) = k.env_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&k.env_file, env) {
        let err = format!("cannot write {}: {e}", k.env_file.display());
        return (only(&name, Outcome::Error(err)), not_run());
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
        return (only(&name, Outcome::Skip(why)), probe);
    }
    cmd.kernel = k.test_dir.join(k.test.file.as_deref().unwrap_or_default());
    let fin = supervise::run(crate::qemu::QEMU.as_ref(), &cmd.args(), timeout, |l| {
        on_line(l)
    });
    let _ = std::fs::remove_file(&k.env_file);
    // As the cfg wrote it, or the scripts' default.
    let shown_timeout = k
        .test
        .timeout
        .clone()
        .unwrap_or_else(|| format!("{}s", ukci_kut::cfg::DEFAULT_TIMEOUT.as_secs()));
    let verdict = decode::verdict(&fin.end, &fin.stdout, &fin.stderr, &shown_timeout);
    (results(&name, &fin.stdout, &verdict), fin)
}

/// The results of a test that ran: one per result line, and the verdict's
/// own where no line carries it.
pub fn results(test: &str, stdout: &str, verdict: &decode::Verdict) -> Judged {
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

/// A test's one result, named after it: it ended before any line of its own.
fn only(test: &str, outcome: Outcome) -> Judged {
    Judged {
        results: vec![SubResult {
            name: test.to_string(),
            outcome,
            detail: None,
        }],
        infos: vec![],
    }
}

fn not_run() -> Finished {
    Finished {
        end: End::Exited(0),
        stdout: String::new(),
        stderr: String::new(),
        elapsed: Duration::ZERO,
        ready_at: None,
        command: String::new(),
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
        let j = results("t", out, &v);
        assert_eq!(outcomes(&j), [("a", "pass"), ("b", "skip"), ("c", "xfail")]);
        assert_eq!(word_of(&j.results), Word::Pass);

        let v = decode::verdict(
            &End::TimedOut(Duration::from_secs(90)),
            "PASS: a\n",
            "",
            "90s",
        );
        let j = results("t", "PASS: a\n", &v);
        assert_eq!(outcomes(&j), [("a", "pass"), ("t", "error")]);
        assert_eq!(
            j.results[1].outcome.message(),
            Some("timeout; duration=90s")
        );
        assert_eq!(word_of(&j.results), Word::Fail);

        let out = "FAIL: a\nSUMMARY: 1 tests, 1 unexpected failures\n";
        let j = results("t", out, &decode::verdict(&End::Exited(3), out, "", "90s"));
        assert_eq!(
            outcomes(&j),
            [("a", "fail")],
            "the failing line carries the verdict"
        );

        let j = results(
            "t",
            "",
            &decode::verdict(&End::Exited(77), "SUMMARY: 0 tests\n", "", "90s"),
        );
        assert_eq!(outcomes(&j), [("t", "skip")]);
        assert_eq!(word_of(&j.results), Word::Skip);

        let out = "SKIP: a\nSKIP: b\nSUMMARY: 2 tests, 2 skipped\n";
        let j = results("t", out, &decode::verdict(&End::Exited(77), out, "", "90s"));
        assert_eq!(outcomes(&j), [("a", "skip"), ("b", "skip")]);
        assert_eq!(word_of(&j.results), Word::Skip);

        let out = "PASS: a\nXPASS: b\nSUMMARY: 2 tests, 1 unexpected failures\n";
        let j = results("t", out, &decode::verdict(&End::Exited(3), out, "", "90s"));
        assert_eq!(outcomes(&j), [("a", "pass"), ("b", "xpass")]);
        assert_eq!(word_of(&j.results), Word::Fail);
    }
}
