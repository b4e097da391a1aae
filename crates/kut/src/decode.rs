//! What a test's run means, decided as `scripts/arch-run.bash`
//! (`run_test`, `qemu_fixup_return_code` in `scripts/vmm.bash`) and
//! `scripts/runtime.bash` (`run`) decide it, and its result lines.
//!
//! A test ends with `exit(code)`, which writes `code` to isa-debug-exit at
//! 0xf4: QEMU exits with `(code << 1) | 1`. So 1 is success, 3 a failed
//! test, 77 (`exit(38)`) every result skipped, 127 nothing the test chose.
//! `timeout(1)` adds 124; a signal is `128 + signal`.

use ukci_protocol::line::{self, Line, Status};
use ukci_supervise::End;

/// The status `run` judges, after `qemu_fixup_return_code`.
pub fn status(end: &End, stderr: &str) -> i32 {
    // `$(...)` drops trailing newlines: only newlines count as nothing.
    let errors = stderr.trim_end_matches('\n');
    match end {
        End::TimedOut(_) => 124,
        End::Signaled(s) => 128 + s,
        // bash's status for a command it could not run.
        End::SpawnFailed(_) => 127,
        End::Exited(0) => match signal_in(errors) {
            Some(sig) => 128 + sig,
            // Exiting with zero (no isa-debug-exit) is an error.
            None => 1,
        },
        // Success, unless QEMU said something other than a warning.
        End::Exited(1) => {
            let only_warnings = errors
                .lines()
                .all(|l| l.to_ascii_lowercase().contains("warning"));
            if errors.is_empty() || only_warnings {
                0
            } else {
                1
            }
        }
        End::Exited(code) => *code,
    }
}

/// QEMU's `terminating on signal N` line.
fn signal_in(errors: &str) -> Option<i32> {
    let at = errors.find("terminating on signal ")?;
    let rest = &errors[at + "terminating on signal ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `run_tests.sh`'s word for a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Word {
    Pass,
    Fail,
    Skip,
}

impl Word {
    pub fn as_str(self) -> &'static str {
        match self {
            Word::Pass => "PASS",
            Word::Fail => "FAIL",
            Word::Skip => "SKIP",
        }
    }

    fn from_str(s: &str) -> Option<Word> {
        [Word::Pass, Word::Fail, Word::Skip]
            .into_iter()
            .find(|w| w.as_str() == s)
    }
}

/// One verdict line of `run_tests.sh` itself — `FAIL name (why)`, coloured
/// on a terminal — as its word, the test's name and what the parentheses
/// say; `None` for any other line.
pub fn run_tests_line(line: &str) -> Option<(Word, String, String)> {
    let plain = strip_ansi(line);
    let (word, rest) = plain.split_once(' ')?;
    let word = Word::from_str(word)?;
    let (name, why) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
    let why = why.trim().trim_start_matches('(').trim_end_matches(')');
    Some((word, name.to_string(), why.to_string()))
}

/// `s` without its terminal escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A test's verdict as `run` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub word: Word,
    /// The status it was decided on; `None` when the test did not run.
    pub status: Option<i32>,
    /// What `run` prints in parentheses: the `SUMMARY:` line, or why.
    pub why: String,
    /// The test gave no verdict of its own: a timeout, a signal, QEMU or
    /// the test's start failing, an abort. ukci reports those as errors.
    pub no_verdict: bool,
}

impl Verdict {
    /// A test `run` skips before starting QEMU.
    pub fn skipped(why: impl Into<String>) -> Verdict {
        Verdict {
            word: Word::Skip,
            status: None,
            why: why.into(),
            no_verdict: false,
        }
    }

    /// `PASS name (summary)` / `FAIL name (why)` as `run_tests.sh` prints it.
    pub fn line(&self, test: &str) -> String {
        format!("{} {test} ({})", self.word.as_str(), self.why)
    }
}

/// The verdict of a test that ran: how QEMU ended, what it printed (the
/// `SUMMARY:` line among the last five of stdout counts) and its timeout
/// as the cfg wrote it.
pub fn verdict(end: &End, stdout: &str, stderr: &str, timeout: &str) -> Verdict {
    let status = status(end, stderr);
    let summary = summary(stdout).unwrap_or_default();
    let (word, why, no_verdict) = match status {
        0 => (Word::Pass, summary, false),
        77 => (Word::Skip, summary, false),
        124 => (Word::Fail, format!("timeout; duration={timeout}"), true),
        s if s > 127 => (
            Word::Fail,
            format!("terminated on SIG{}", signal_name(s - 128)),
            true,
        ),
        3 => (Word::Fail, summary, false),
        1 if *end == End::Exited(0) => (
            Word::Fail,
            "QEMU exited with 0, not through the test's exit: a reset or triple fault under --no-reboot (status 1)".into(),
            true,
        ),
        s => {
            let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let why = match s {
                1 => format!("most likely QEMU failed (status 1): {first}"),
                2 => "most likely a run script failed (status 2)".into(),
                127 => "most likely the test called abort() (status 127)".into(),
                s => format!("the test exited with status {s}, which is not a verdict"),
            };
            (Word::Fail, why, true)
        }
    };
    Verdict {
        word,
        status: Some(status),
        why,
        no_verdict,
    }
}

/// `extract_summary`: `SUMMARY: ...` in the last five lines, without the word.
pub fn summary(stdout: &str) -> Option<String> {
    let lines: Vec<&str> = stdout.lines().collect();
    lines[lines.len().saturating_sub(5)..]
        .iter()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("SUMMARY: "))
        .map(String::from)
}

fn signal_name(sig: i32) -> String {
    const NAMES: [&str; 32] = [
        "0", "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV",
        "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
        "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    usize::try_from(sig)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| sig.to_string(), |n| n.to_string())
}

/// One `PASS:`/`FAIL:`/`SKIP:`/`XFAIL:`/`XPASS:`/`KFAIL:` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultLine {
    pub status: Status,
    /// The text after the status word, prefixes included, without a
    /// trailing `(reason)` where the status carries one.
    pub name: String,
    pub reason: Option<String>,
}

/// Every result line of a test's output, in order.
pub fn result_lines(stdout: &str) -> Vec<ResultLine> {
    stdout
        .lines()
        .filter_map(|l| match line::parse(l) {
            Some(Line::Result {
                status,
                name,
                reason,
            }) => Some(ResultLine {
                status,
                name: name.to_string(),
                reason: reason.map(String::from),
            }),
            _ => None,
        })
        .collect()
}

/// The kernel name `premature_failure` starts QEMU with to see whether it
/// starts at all.
pub const NO_FILE: &str = "_NO_FILE_4Uhere_";

/// `premature_failure`: given what QEMU printed (stdout and stderr) when
/// started with [`NO_FILE`] as its kernel, `Some(why)` when it would not
/// have started the test either (a CPU model this accelerator lacks, a
/// device it does not have): `run` then skips the test with QEMU's last
/// line. `None` when QEMU got as far as loading the kernel.
pub fn premature_failure(log: &str) -> Option<String> {
    let got_to_kernel = log.lines().filter(|l| l.contains(NO_FILE)).any(|l| {
        [
            "ould not load kernel",
            "ould not open kernel",
            "error loading",
            "failed to load",
        ]
        .iter()
        .any(|p| l.contains(p))
    });
    (!got_to_kernel).then(|| {
        log.lines()
            .rev()
            .find(|l| !l.is_empty())
            .unwrap_or("QEMU printed nothing")
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn exit_statuses_are_fixed_up_as_qemu_fixup_return_code_does() {
        let ex = End::Exited;
        assert_eq!(status(&ex(1), ""), 0, "exit(0) is success");
        assert_eq!(status(&ex(1), "\n"), 0);
        assert_eq!(
            status(
                &ex(1),
                "qemu-system-x86_64: warning: host doesn't support requested feature\n"
            ),
            0
        );
        assert_eq!(
            status(
                &ex(1),
                "qemu-system-x86_64: -cpu host: CPU model 'host' requires KVM\n"
            ),
            1,
            "status 1 with an error on stderr is QEMU failing"
        );
        assert_eq!(status(&ex(3), ""), 3, "exit(1): the test failed");
        assert_eq!(status(&ex(77), ""), 77, "exit(38): everything skipped");
        assert_eq!(status(&ex(0), ""), 1, "no isa-debug-exit");
        assert_eq!(
            status(
                &ex(0),
                "qemu-system-x86_64: terminating on signal 15 from pid 7\n"
            ),
            143
        );
        assert_eq!(status(&End::TimedOut(Duration::from_secs(90)), ""), 124);
        assert_eq!(status(&End::Signaled(9), ""), 137);
        assert_eq!(status(&End::SpawnFailed("x".into()), ""), 127);
    }

    const OUT: &str = "enabling apic\r\nPASS: apic: x2apic\r\nSKIP: apic: tsc-deadline (not supported)\r\n\
                       KFAIL: apic: known\r\nSUMMARY: 3 tests, 1 known failures, 1 skipped\r\nEXIT: STATUS=1\r\n";

    #[test]
    fn verdicts_are_the_words_run_prints() {
        let ex = End::Exited;
        let v = verdict(&ex(1), OUT, "", "90s");
        assert_eq!(v.word, Word::Pass);
        assert_eq!(
            v.line("x2apic"),
            "PASS x2apic (3 tests, 1 known failures, 1 skipped)"
        );
        assert!(!v.no_verdict);
        assert_eq!(
            verdict(&ex(77), "SUMMARY: 1 tests, 1 skipped\n", "", "90s").word,
            Word::Skip
        );
        let v = verdict(
            &End::TimedOut(Duration::from_secs(90)),
            "PASS: a\n",
            "",
            "90s",
        );
        assert_eq!(
            (v.word, v.why.as_str(), v.no_verdict),
            (Word::Fail, "timeout; duration=90s", true)
        );
        let v = verdict(&End::Signaled(9), "", "", "90s");
        assert_eq!(
            (v.word, v.why.as_str()),
            (Word::Fail, "terminated on SIGKILL")
        );
        let v = verdict(
            &ex(3),
            "FAIL: x\nSUMMARY: 1 tests, 1 unexpected failures\n",
            "",
            "90s",
        );
        assert_eq!((v.word, v.no_verdict), (Word::Fail, false));
        assert_eq!(v.why, "1 tests, 1 unexpected failures");
        let v = verdict(&ex(1), "", "qemu: -cpu foo: unknown\n", "90s");
        assert_eq!((v.word, v.no_verdict), (Word::Fail, true));
        assert!(
            v.why.contains("QEMU failed (status 1): qemu: -cpu foo"),
            "{}",
            v.why
        );
        let v = verdict(&ex(0), "PASS: a\n", "", "90s");
        assert_eq!((v.word, v.status), (Word::Fail, Some(1)));
        assert!(v.why.contains("triple fault"), "{}", v.why);
        // Only the last five lines count, as with `tail -5`.
        let far = format!("SUMMARY: 9 tests\n{}", "x\n".repeat(5));
        assert_eq!(summary(&far), None);
    }

    #[test]
    fn every_result_line_is_a_result() {
        let r = result_lines(
            "PASS: a: one\nFAIL: a: two\nSKIP: b (why)\nXFAIL: c\nXPASS: d\nKFAIL: e (bug)\nINFO: f\nnoise\n",
        );
        let got: Vec<(Status, &str, Option<&str>)> = r
            .iter()
            .map(|r| (r.status, r.name.as_str(), r.reason.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (Status::Pass, "a: one", None),
                (Status::Fail, "a: two", None),
                (Status::Skip, "b", Some("why")),
                (Status::Xfail, "c", None),
                (Status::Xpass, "d", None),
                (Status::Kfail, "e", Some("bug")),
            ]
        );
    }

    #[test]
    fn a_qemu_that_cannot_start_the_test_is_a_skip_with_its_last_line() {
        let ok = "qemu-system-x86_64: could not load kernel '_NO_FILE_4Uhere_': No such file or directory\n";
        assert_eq!(premature_failure(ok), None);
        let bad = "qemu-system-x86_64: -cpu host: CPU model 'host' requires KVM or HVF\n";
        assert_eq!(
            premature_failure(bad).as_deref(),
            Some("qemu-system-x86_64: -cpu host: CPU model 'host' requires KVM or HVF")
        );
    }

    #[test]
    fn run_tests_sh_lines_are_read_with_or_without_colour() {
        assert_eq!(
            run_tests_line("\u{1b}[31mFAIL\u{1b}[0m access (timeout; duration=90s)"),
            Some((Word::Fail, "access".into(), "timeout; duration=90s".into()))
        );
        assert_eq!(
            run_tests_line("PASS smptest (1 tests)"),
            Some((Word::Pass, "smptest".into(), "1 tests".into()))
        );
        assert_eq!(run_tests_line("make: Nothing to be done"), None);
        assert_eq!(run_tests_line("BUILD_HEAD=1da1819e"), None);
    }
}
