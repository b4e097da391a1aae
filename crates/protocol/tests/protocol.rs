//! Round trips between the guest's reporter and the runner's parser, and a
//! parser that survives any input.

use proptest::prelude::*;
use ukci_protocol::line::{self, Line, Status, detail_pairs};
use ukci_protocol::{Reporter, Verdict};

fn parse_all(text: &str) -> Vec<Line<'_>> {
    text.lines().filter_map(line::parse).collect()
}

#[test]
fn reporter_output_parses_back() {
    let mut r = Reporter::new(String::new());
    r.push("cr.arch");
    r.info(format_args!("cr4={:#x}", 0x6a0));
    r.check(
        true,
        "cr4-reserved: bit 40",
        format_args!("vector=13 error=0x0"),
    );
    r.skip(
        "umip",
        format_args!("CPUID.7.0:ECX.UMIP[bit 2] is clear (no (nested) support)"),
    );
    r.pop();
    let verdict = r.finish();
    assert_eq!(verdict, Verdict::Pass);
    let out = r.out().clone();
    let lines = parse_all(&out);
    assert_eq!(
        lines,
        vec![
            Line::Info("cr.arch: cr4=0x6a0"),
            Line::Result {
                status: Status::Pass,
                name: "cr.arch: cr4-reserved: bit 40",
                reason: None
            },
            Line::Detail("vector=13 error=0x0"),
            Line::Result {
                status: Status::Skip,
                name: "cr.arch: umip",
                reason: Some("CPUID.7.0:ECX.UMIP[bit 2] is clear (no (nested) support)"),
            },
            Line::Summary("2 tests, 1 skipped"),
            Line::Exit(1),
        ]
    );
}

#[test]
fn kvm_unit_tests_output_is_understood() {
    let kut = "PASS: cr_pin_high: cr0_wp pinned\r\nSKIP: pku: PKU not enabled\r\nFAIL: x: y\r\n\
               SUMMARY: 3 tests, 1 unexpected failures, 1 skipped\r\nEXIT: STATUS=3\r\n";
    let lines = parse_all(kut);
    assert_eq!(lines.len(), 5);
    assert_eq!(
        lines[0],
        Line::Result {
            status: Status::Pass,
            name: "cr_pin_high: cr0_wp pinned",
            reason: None
        }
    );
    // A KUT skip without parentheses keeps its whole text as the name.
    assert_eq!(
        lines[1],
        Line::Result {
            status: Status::Skip,
            name: "pku: PKU not enabled",
            reason: None
        }
    );
    assert_eq!(lines[4], Line::Exit(3));
}

#[test]
fn failures_and_skips_set_the_verdict() {
    let mut r = Reporter::new(String::new());
    r.skip("a", format_args!("why"));
    assert_eq!(r.finish(), Verdict::AllSkipped);
    let mut r = Reporter::new(String::new());
    r.check(true, "a", format_args!(""));
    r.check(false, "b", format_args!("cr4.after=0x1"));
    assert_eq!(r.finish(), Verdict::Fail);
    assert!(r.out().contains("EXIT: STATUS=3"));
    assert!(r.out().contains("SUMMARY: 2 tests, 1 unexpected failures"));
}

#[test]
fn abort_reports_a_failure_and_status_127() {
    let mut r = Reporter::new(String::new());
    r.push("fault.selftest");
    r.abort(format_args!("vector=14 error=0x2 rip=0x1000 cr2=0x0"));
    let out = r.out().clone();
    let lines = parse_all(&out);
    assert!(lines.contains(&Line::Result {
        status: Status::Fail,
        name: "fault.selftest: aborted",
        reason: None
    }));
    assert_eq!(lines.last(), Some(&Line::Exit(127)));
}

#[test]
fn detail_pairs_skip_plain_words() {
    let pairs: Vec<_> = detail_pairs("MOV to CR4 raised #GP vector=13 error=0x0 =x").collect();
    assert_eq!(pairs, vec![("vector", "13"), ("error", "0x0")]);
}

proptest! {
    #[test]
    fn parser_never_panics(s in "\\PC*") {
        let _ = line::parse(&s);
        for l in s.lines() { let _ = line::parse(l); }
    }

    #[test]
    fn truncated_and_interleaved_lines_never_panic(a in "(PASS|FAIL|SKIP|EXIT|SUMMARY|INFO|ukci-detail): [ -~]{0,40}", cut in 0usize..60, b in "[ -~()]{0,40}") {
        let cut = cut.min(a.len());
        let mixed = format!("{}{}\n{}", &a[..cut], b, &a[cut..]);
        for l in mixed.lines() { let _ = line::parse(l); }
    }

    #[test]
    fn results_round_trip(status_i in 0usize..6, name in "[a-z][a-z0-9.:-]{0,30}[a-z0-9]", reason in "[ -'*-~]{1,30}") {
        let status = Status::ALL[status_i];
        let mut out = String::new();
        line::write_result(&mut out, status, &name, Some(format_args!("{reason}"))).unwrap();
        let parsed = line::parse(&out).unwrap();
        let want_reason = status.has_reason().then_some(reason.as_str());
        prop_assert_eq!(parsed, Line::Result { status, name: &name, reason: want_reason });
    }
}
