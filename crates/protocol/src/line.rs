//! kvm-unit-tests' line protocol, spoken by the guest on its serial port.
//!
//! ```text
//! INFO: boot.smoke: hypervisor signature TCGTCGTCGTCG
//! PASS: fault.selftest: #GP on a non-canonical load
//! ukci-detail: vector=13 error=0x0 rip=0x10234f
//! SKIP: cr-pin.detect: pinning ABI (rdmsr 0x4b564d09 raised #GP(0))
//! SUMMARY: 5 tests, 0 unexpected failures, 1 skipped
//! EXIT: STATUS=1
//! ```
//!
//! A result line is `STATUS: prefix: ...: name`; for the statuses that carry a
//! reason (SKIP, XFAIL, KFAIL) a trailing balanced `(reason)` is the reason. The
//! extension line `ukci-detail:` belongs to the result line just before it: a
//! kvm-unit-tests parser ignores it, so the result names stay stable while the
//! values seen (vector, error code, registers) still reach the report.

use core::fmt::{self, Write};

/// The status word at the start of a result line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Pass,
    Fail,
    Skip,
    Xfail,
    Xpass,
    Kfail,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Pass,
        Status::Fail,
        Status::Skip,
        Status::Xfail,
        Status::Xpass,
        Status::Kfail,
    ];

    pub const fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
            Status::Xfail => "XFAIL",
            Status::Xpass => "XPASS",
            Status::Kfail => "KFAIL",
        }
    }

    fn from_word(w: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.word() == w)
    }

    /// Statuses whose line ends in a `(reason)`.
    pub const fn has_reason(self) -> bool {
        matches!(self, Status::Skip | Status::Xfail | Status::Kfail)
    }
}

/// The extension prefix for the values behind a result.
pub const DETAIL: &str = "ukci-detail";

/// One parsed line of guest output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Result {
        status: Status,
        /// `prefix: ...: name`, without the reason.
        name: &'a str,
        reason: Option<&'a str>,
    },
    Info(&'a str),
    /// `ukci-detail:` text for the preceding result.
    Detail(&'a str),
    Summary(&'a str),
    Exit(u32),
}

/// Parses one line; `None` for anything that is not protocol (boot noise,
/// firmware output, half a line). Never panics, whatever the input.
pub fn parse(line: &str) -> Option<Line<'_>> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (word, rest) = line.split_once(':')?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    match word {
        "INFO" => Some(Line::Info(rest)),
        "SUMMARY" => Some(Line::Summary(rest)),
        "EXIT" => {
            let n = rest.trim().strip_prefix("STATUS=")?;
            n.parse().ok().map(Line::Exit)
        }
        DETAIL => Some(Line::Detail(rest)),
        _ => {
            let status = Status::from_word(word)?;
            let (name, reason) = if status.has_reason() {
                split_reason(rest)
            } else {
                (rest, None)
            };
            Some(Line::Result {
                status,
                name,
                reason,
            })
        }
    }
}

/// Splits `name (reason)` at the opening parenthesis that balances the last
/// character. Nested parentheses inside the reason are kept.
fn split_reason(s: &str) -> (&str, Option<&str>) {
    if !s.ends_with(')') {
        return (s, None);
    }
    let mut depth = 0i32;
    for (i, c) in s.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth -= 1;
                if depth == 0 {
                    let name = s[..i].trim_end();
                    if name.is_empty() {
                        return (s, None);
                    }
                    return (name, Some(&s[i + 1..s.len() - 1]));
                }
            }
            _ => {}
        }
    }
    (s, None)
}

/// `key=value` pairs in a detail text, in order; other words are skipped.
pub fn detail_pairs(detail: &str) -> impl Iterator<Item = (&str, &str)> {
    detail.split_whitespace().filter_map(|w| {
        let (k, v) = w.split_once('=')?;
        (!k.is_empty()).then_some((k, v))
    })
}

/// Writes a result line (`\n`-terminated; the serial layer adds CR).
pub fn write_result(
    w: &mut impl Write,
    status: Status,
    name: &str,
    reason: Option<fmt::Arguments<'_>>,
) -> fmt::Result {
    write!(w, "{}: {}", status.word(), name)?;
    match reason {
        Some(r) if status.has_reason() => writeln!(w, " ({r})"),
        _ => writeln!(w),
    }
}

pub fn write_detail(w: &mut impl Write, detail: fmt::Arguments<'_>) -> fmt::Result {
    writeln!(w, "{DETAIL}: {detail}")
}

pub fn write_info(w: &mut impl Write, info: fmt::Arguments<'_>) -> fmt::Result {
    writeln!(w, "INFO: {info}")
}

pub fn write_exit(w: &mut impl Write, status: u32) -> fmt::Result {
    writeln!(w, "EXIT: STATUS={status}")
}
