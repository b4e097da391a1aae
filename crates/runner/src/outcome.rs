//! What a run of a test means: the guest's lines and QEMU's end turned into
//! outcomes, and the manifest's expectations applied. Plain functions, no I/O.

use crate::supervise::{End, Finished};
use crate::units::glob;
use ukci_protocol::Verdict;
use ukci_protocol::line::{self, Line, Status};
use ukci_protocol::report::ABORTED;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
    Xfail(String),
    /// Passed where a failure was expected: counts as a failure.
    Xpass(String),
    /// Infrastructure: timeout, crash, QEMU refused to start.
    Error(String),
}

impl Outcome {
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail(_) => "fail",
            Outcome::Skip(_) => "skip",
            Outcome::Xfail(_) => "xfail",
            Outcome::Xpass(_) => "xpass",
            Outcome::Error(_) => "error",
        }
    }

    pub fn message(&self) -> Option<&str> {
        match self {
            Outcome::Pass => None,
            Outcome::Fail(m)
            | Outcome::Skip(m)
            | Outcome::Xfail(m)
            | Outcome::Xpass(m)
            | Outcome::Error(m) => Some(m),
        }
    }

    /// Whether this outcome is what the manifest asked for.
    pub fn as_expected(&self) -> bool {
        matches!(self, Outcome::Pass | Outcome::Skip(_) | Outcome::Xfail(_))
    }
}

/// One result line of the guest, or one host-side verdict about the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubResult {
    /// `check: sub-check`, stable across runs.
    pub name: String,
    pub outcome: Outcome,
    /// The `ukci-detail:` text: what was done and seen.
    pub detail: Option<String>,
}

/// A test's results after judging.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Judged {
    pub results: Vec<SubResult>,
    pub infos: Vec<String>,
}

/// Reads the serial output and QEMU's end into results. A VM-level problem
/// becomes one more result named after the test, with an error outcome.
pub fn judge(test: &str, checks: &[String], fin: &Finished) -> Judged {
    let mut j = Judged::default();
    let mut exit_line = None;
    let mut summary = false;
    let mut last_line = "";
    for raw in fin.stdout.lines() {
        let raw = raw.trim_end_matches('\r');
        if !raw.trim().is_empty() {
            last_line = raw;
        }
        match line::parse(raw) {
            Some(Line::Result {
                status,
                name,
                reason,
            }) => j.results.push(SubResult {
                name: name.to_string(),
                outcome: status_outcome(status, name, reason),
                detail: None,
            }),
            Some(Line::Detail(d)) => {
                if let Some(r) = j.results.last_mut()
                    && r.detail.is_none()
                {
                    if let Outcome::Fail(m) = &mut r.outcome {
                        *m = d.to_string();
                    }
                    r.detail = Some(d.to_string());
                }
            }
            Some(Line::Info(i)) => j.infos.push(i.to_string()),
            Some(Line::Summary(_)) => summary = true,
            Some(Line::Exit(s)) => exit_line = Some(s),
            None => {}
        }
    }
    let aborted = exit_line == Some(Verdict::Abort.status())
        && fin.end == End::Exited(Verdict::Abort.status() as i32);
    if aborted {
        mark_abort(&mut j.results);
    }
    if let Some(err) = vm_error(fin, exit_line, summary, last_line, &j.results) {
        j.results.push(SubResult {
            name: test.to_string(),
            outcome: Outcome::Error(err),
            detail: None,
        });
        return j;
    }
    for c in checks {
        let reported = j
            .results
            .iter()
            .any(|r| r.name == *c || r.name.starts_with(&format!("{c}: ")));
        if !reported {
            j.results.push(SubResult {
                name: c.clone(),
                outcome: Outcome::Error(if aborted {
                    format!("check {c} did not run: the guest aborted before it")
                } else {
                    format!("check {c} reported no result although the guest finished")
                }),
                detail: None,
            });
        }
    }
    j
}

/// A guest that aborted (a panic, an unexpected exception) did not finish
/// its check: the `aborted` failure line its reporter wrote last is an
/// error, like a triple fault, whatever the check was testing.
fn mark_abort(results: &mut [SubResult]) {
    let Some(r) = results.last_mut() else { return };
    let is_abort_line = r.name == ABORTED || r.name.ends_with(&format!(": {ABORTED}"));
    if let (true, Outcome::Fail(m)) = (is_abort_line, &r.outcome) {
        r.outcome = Outcome::Error(format!("the guest aborted: {m}"));
    }
}

fn status_outcome(status: Status, name: &str, reason: Option<&str>) -> Outcome {
    let reason = || reason.unwrap_or("no reason given").to_string();
    match status {
        Status::Pass => Outcome::Pass,
        Status::Fail => Outcome::Fail(name.to_string()),
        Status::Skip => Outcome::Skip(reason()),
        Status::Xfail => Outcome::Xfail(reason()),
        Status::Kfail => Outcome::Xfail(format!("known failure: {}", reason())),
        Status::Xpass => {
            Outcome::Xpass(format!("passed where the guest expected a failure: {name}"))
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// The VM-level error, if the run did not end with a guest verdict.
fn vm_error(
    fin: &Finished,
    exit_line: Option<u32>,
    summary: bool,
    last_line: &str,
    results: &[SubResult],
) -> Option<String> {
    let last = if last_line.is_empty() {
        "the guest printed nothing".to_string()
    } else {
        format!("last line: {last_line:?}")
    };
    match &fin.end {
        End::SpawnFailed(m) => Some(format!("QEMU did not start: {m}")),
        End::TimedOut(t) => Some(if summary && exit_line.is_none() {
            format!(
                "timed out after {:.1} s: the guest printed SUMMARY but no EXIT line, so it never gave a verdict",
                t.as_secs_f64()
            )
        } else {
            format!(
                "timed out after {:.1} s with no verdict; {last}",
                t.as_secs_f64()
            )
        }),
        End::Signaled(s) => Some(format!("QEMU was killed by signal {s}; {last}")),
        End::Exited(code) => {
            let code = *code;
            match exit_line {
                Some(s) if s as i32 == code => match Verdict::from_status(s) {
                    Some(_) if results.is_empty() => Some(format!(
                        "the guest exited with status {s} but reported no results"
                    )),
                    Some(_) => None,
                    None => Some(format!(
                        "the guest exited with status {s}, which is not a ukci verdict"
                    )),
                },
                Some(s) => Some(format!(
                    "the guest announced EXIT: STATUS={s} but QEMU exited with {code}; stderr: {}",
                    first_line(&fin.stderr)
                )),
                None if code == 0 => Some(format!(
                    "the guest reset or shut down without an EXIT line (a triple fault ends this way under -no-reboot); {last}"
                )),
                None if fin.stdout.trim().is_empty() && !fin.stderr.trim().is_empty() => {
                    Some(format!(
                        "QEMU refused to start (status {code}): {}",
                        first_line(&fin.stderr)
                    ))
                }
                None => Some(format!(
                    "QEMU exited with status {code} without an EXIT line; {last}; stderr: {}",
                    first_line(&fin.stderr)
                )),
            }
        }
    }
}

/// An expectation that applies to this test in this environment.
pub struct Expect<'a> {
    pub result: &'a str,
    pub known_bug: bool,
    pub reason: &'a str,
}

/// Turns failures the manifest expects into xfail and the passes it did not
/// expect into xpass. A VM-level error (the result named after the test:
/// a timeout, a reset) that an expectation names is an xfail too: some
/// environments wedge a VM by design or by a known bug. The first matching
/// expectation wins.
pub fn apply_expectations(results: &mut [SubResult], expects: &[Expect<'_>]) {
    for r in results {
        let Some(e) = expects.iter().find(|e| glob(e.result, &r.name)) else {
            continue;
        };
        let reason = if e.known_bug {
            format!("known failure: {}", e.reason)
        } else {
            e.reason.to_string()
        };
        r.outcome = match &r.outcome {
            Outcome::Fail(m) | Outcome::Error(m) => Outcome::Xfail(format!("{reason} (saw: {m})")),
            Outcome::Pass => Outcome::Xpass(format!("expected to fail here: {reason}")),
            other => other.clone(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fin(end: End, stdout: &str, stderr: &str) -> Finished {
        Finished {
            end,
            stdout: stdout.into(),
            stderr: stderr.into(),
            elapsed: Duration::from_millis(50),
            ready_at: None,
            command: String::new(),
        }
    }

    fn checks(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    const OK: &str = "INFO: boot.smoke: hi\r\nPASS: boot.smoke: long mode\r\nukci-detail: efer=0xd01\r\n\
                      SKIP: boot.smoke: pci (microvm has no PCI)\r\nSUMMARY: 2 tests, 1 skipped\r\nEXIT: STATUS=1\r\n";

    #[test]
    fn a_clean_run_gives_one_result_per_line() {
        let j = judge(
            "q35",
            &checks(&["boot.smoke"]),
            &fin(End::Exited(1), OK, ""),
        );
        assert_eq!(j.results.len(), 2);
        assert_eq!(j.results[0].outcome, Outcome::Pass);
        assert_eq!(j.results[0].detail.as_deref(), Some("efer=0xd01"));
        assert_eq!(
            j.results[1].outcome,
            Outcome::Skip("microvm has no PCI".into())
        );
        assert_eq!(j.infos, vec!["boot.smoke: hi"]);
    }

    fn vm_err(end: End, out: &str, err: &str) -> String {
        let j = judge("t", &checks(&["boot.smoke"]), &fin(end, out, err));
        match &j.results.last().unwrap().outcome {
            Outcome::Error(m) => m.clone(),
            o => panic!("expected an error, got {o:?}"),
        }
    }

    #[test]
    fn every_way_a_vm_can_go_wrong_is_an_error_never_a_pass() {
        let t = Duration::from_secs(5);
        assert!(vm_err(End::TimedOut(t), "PASS: a\n", "").contains("timed out after 5.0 s"));
        assert!(
            vm_err(End::TimedOut(t), "PASS: a\nSUMMARY: 1 tests\n", "")
                .contains("SUMMARY but no EXIT")
        );
        assert!(vm_err(End::Exited(0), "PASS: boot.smoke: x\n", "").contains("triple fault"));
        assert!(vm_err(End::Signaled(9), "", "").contains("signal 9"));
        assert!(
            vm_err(
                End::Exited(1),
                "",
                "qemu-system-x86_64: -device foo: 'foo' is not a valid device model name\n"
            )
            .contains("refused to start (status 1): qemu-system-x86_64: -device foo")
        );
        assert!(
            vm_err(End::Exited(3), "EXIT: STATUS=1\n", "")
                .contains("announced EXIT: STATUS=1 but QEMU exited with 3")
        );
        assert!(vm_err(End::Exited(1), "EXIT: STATUS=1\n", "").contains("reported no results"));
        assert!(vm_err(End::SpawnFailed("no such file".into()), "", "").contains("did not start"));
    }

    #[test]
    fn a_guest_that_aborted_is_an_error_not_a_failure() {
        let out = "PASS: boot.smoke: long mode\r\nFAIL: selftest.panic: aborted\r\n\
                   ukci-detail: panic at guest/src/checks/selftest.rs:26: deliberate panic\r\n\
                   SUMMARY: 2 tests, 1 unexpected failures\r\nEXIT: STATUS=127\r\n";
        let j = judge(
            "panic",
            &checks(&["boot.smoke", "selftest.panic", "fault.selftest"]),
            &fin(End::Exited(127), out, ""),
        );
        let outcomes: Vec<(&str, &Outcome)> = j
            .results
            .iter()
            .map(|r| (r.name.as_str(), &r.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("boot.smoke: long mode", &Outcome::Pass),
                (
                    "selftest.panic: aborted",
                    &Outcome::Error(
                        "the guest aborted: panic at guest/src/checks/selftest.rs:26: deliberate panic"
                            .into()
                    )
                ),
                (
                    "fault.selftest",
                    &Outcome::Error(
                        "check fault.selftest did not run: the guest aborted before it".into()
                    )
                ),
            ]
        );
        // A plain failure stays a failure, even one named like a step.
        let out = "FAIL: cr.arch: aborted\r\nSUMMARY: 1 tests, 1 unexpected failures\r\nEXIT: STATUS=3\r\n";
        let j = judge("t", &checks(&["cr.arch"]), &fin(End::Exited(3), out, ""));
        assert_eq!(
            j.results[0].outcome,
            Outcome::Fail("cr.arch: aborted".into())
        );
    }

    #[test]
    fn a_check_that_reports_nothing_is_an_error() {
        let j = judge(
            "t",
            &checks(&["boot.smoke", "fault.selftest"]),
            &fin(End::Exited(1), OK, ""),
        );
        let last = j.results.last().unwrap();
        assert_eq!(last.name, "fault.selftest");
        assert!(matches!(last.outcome, Outcome::Error(_)));
    }

    #[test]
    fn a_failure_carries_its_detail_as_message() {
        let out = "FAIL: cr.arch: cr4-reserved: bit 40\nukci-detail: no fault; cr4.after=0x1006a0\nEXIT: STATUS=3\n";
        let j = judge("t", &checks(&["cr.arch"]), &fin(End::Exited(3), out, ""));
        assert_eq!(
            j.results[0].outcome,
            Outcome::Fail("no fault; cr4.after=0x1006a0".into())
        );
    }

    #[test]
    fn expectations_turn_failures_into_xfail_and_passes_into_xpass() {
        let mut r = vec![
            SubResult {
                name: "cr.arch: cr4-reserved: bit 40".into(),
                outcome: Outcome::Fail("no fault".into()),
                detail: None,
            },
            SubResult {
                name: "cr.arch: cr4-reserved: bit 41".into(),
                outcome: Outcome::Pass,
                detail: None,
            },
            SubResult {
                name: "cr.arch: other".into(),
                outcome: Outcome::Pass,
                detail: None,
            },
        ];
        apply_expectations(
            &mut r,
            &[Expect {
                result: "cr.arch: cr4-reserved*",
                known_bug: true,
                reason: "kvm_pvm ignores it",
            }],
        );
        assert_eq!(
            r[0].outcome,
            Outcome::Xfail("known failure: kvm_pvm ignores it (saw: no fault)".into())
        );
        assert!(matches!(r[1].outcome, Outcome::Xpass(_)));
        assert_eq!(r[2].outcome, Outcome::Pass);
    }

    #[test]
    fn an_expected_vm_error_is_an_xfail_and_others_stay_errors() {
        let err = |name: &str| SubResult {
            name: name.into(),
            outcome: Outcome::Error("timed out after 1s".into()),
            detail: None,
        };
        let mut r = vec![err("cr4-reserved"), err("cr4-features")];
        apply_expectations(
            &mut r,
            &[Expect {
                result: "cr4-reserved",
                known_bug: true,
                reason: "TCG wedges",
            }],
        );
        assert_eq!(
            r[0].outcome,
            Outcome::Xfail("known failure: TCG wedges (saw: timed out after 1s)".into())
        );
        assert_eq!(r[1].outcome, Outcome::Error("timed out after 1s".into()));
    }
}
