//! The guest's side of the protocol: a reporter that writes result lines with
//! the current prefixes, keeps the tally and ends with `SUMMARY:` and `EXIT:`.

use crate::exit::Verdict;
use crate::line::{self, Status};
use core::fmt::{self, Write};

const MAX_PREFIXES: usize = 8;

/// The last name part of the result line an abort writes (`check: aborted`).
pub const ABORTED: &str = "aborted";

/// Counts of results, as kvm-unit-tests keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub tests: u32,
    pub failures: u32,
    pub xfailures: u32,
    pub kfailures: u32,
    pub skipped: u32,
}

impl Tally {
    pub fn add(&mut self, status: Status) {
        self.tests += 1;
        match status {
            Status::Pass => {}
            Status::Fail | Status::Xpass => self.failures += 1,
            Status::Xfail => self.xfailures += 1,
            Status::Kfail => self.kfailures += 1,
            Status::Skip => self.skipped += 1,
        }
    }

    pub fn verdict(&self) -> Verdict {
        if self.failures > 0 {
            Verdict::Fail
        } else if self.tests > 0 && self.tests == self.skipped {
            Verdict::AllSkipped
        } else {
            Verdict::Pass
        }
    }
}

impl fmt::Display for Tally {
    /// kvm-unit-tests' summary wording.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} tests", self.tests)?;
        if self.failures > 0 {
            write!(f, ", {} unexpected failures", self.failures)?;
        }
        if self.kfailures > 0 {
            write!(f, ", {} known failures", self.kfailures)?;
        }
        if self.xfailures > 0 {
            write!(f, ", {} expected failures", self.xfailures)?;
        }
        if self.skipped > 0 {
            write!(f, ", {} skipped", self.skipped)?;
        }
        Ok(())
    }
}

/// Writes results to `W` (the serial port in the guest, a `String` in tests).
pub struct Reporter<W: Write> {
    out: W,
    prefixes: [&'static str; MAX_PREFIXES],
    depth: usize,
    tally: Tally,
}

/// `prefix: prefix: name` without allocating.
struct Name<'a> {
    prefixes: &'a [&'static str],
    name: &'a str,
}

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.prefixes {
            write!(f, "{p}: ")?;
        }
        f.write_str(self.name)
    }
}

impl<W: Write> Reporter<W> {
    pub const fn new(out: W) -> Self {
        Reporter {
            out,
            prefixes: [""; MAX_PREFIXES],
            depth: 0,
            tally: Tally {
                tests: 0,
                failures: 0,
                xfailures: 0,
                kfailures: 0,
                skipped: 0,
            },
        }
    }

    pub fn out(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// Pushes a prefix (a check name, a sub-group). Deeper than eight levels
    /// is a programming error and the extra prefixes are dropped.
    pub fn push(&mut self, prefix: &'static str) {
        if self.depth < MAX_PREFIXES {
            self.prefixes[self.depth] = prefix;
        }
        self.depth += 1;
    }

    pub fn pop(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn name<'a>(&'a self, name: &'a str) -> Name<'a> {
        Name {
            prefixes: &self.prefixes[..self.depth.min(MAX_PREFIXES)],
            name,
        }
    }

    fn emit(&mut self, status: Status, name: &str, reason: Option<fmt::Arguments<'_>>) {
        self.tally.add(status);
        let mut buf = LineBuf::new();
        let _ = write!(buf, "{}", self.name(name));
        let _ = line::write_result(&mut self.out, status, buf.as_str(), reason);
    }

    /// A pass or a fail with the values seen.
    pub fn check(&mut self, ok: bool, name: &str, detail: fmt::Arguments<'_>) -> bool {
        self.result(if ok { Status::Pass } else { Status::Fail }, name, detail);
        ok
    }

    /// Any status with the values seen. Skip, xfail and kfail take the detail
    /// as their reason.
    pub fn result(&mut self, status: Status, name: &str, detail: fmt::Arguments<'_>) {
        if status.has_reason() {
            self.emit(status, name, Some(detail));
        } else {
            self.emit(status, name, None);
            let _ = line::write_detail(&mut self.out, detail);
        }
    }

    pub fn skip(&mut self, name: &str, reason: fmt::Arguments<'_>) {
        self.emit(Status::Skip, name, Some(reason));
    }

    pub fn info(&mut self, info: fmt::Arguments<'_>) {
        let mut buf = LineBuf::new();
        let _ = write!(buf, "{}", self.name(""));
        let _ = line::write_info(&mut self.out, format_args!("{}{}", buf.as_str(), info));
    }

    /// Writes `SUMMARY:` and `EXIT:` and returns the verdict to exit with.
    pub fn finish(&mut self) -> Verdict {
        let verdict = self.tally.verdict();
        let _ = writeln!(self.out, "SUMMARY: {}", self.tally);
        let _ = line::write_exit(&mut self.out, verdict.status());
        verdict
    }

    /// For an unexpected exception or panic: a failure line, then the abort
    /// status. The caller stops the machine.
    pub fn abort(&mut self, what: fmt::Arguments<'_>) -> Verdict {
        self.emit(Status::Fail, ABORTED, None);
        let _ = line::write_detail(&mut self.out, what);
        let _ = writeln!(self.out, "SUMMARY: {}", self.tally);
        let _ = line::write_exit(&mut self.out, Verdict::Abort.status());
        Verdict::Abort
    }
}

/// A fixed buffer for one name; longer text is cut.
struct LineBuf {
    buf: [u8; 256],
    len: usize,
}

impl LineBuf {
    const fn new() -> Self {
        LineBuf {
            buf: [0; 256],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are copied in, so this cannot split a character
        // except where a write was cut; then the valid prefix is used.
        match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}
