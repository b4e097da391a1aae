//! The JUnit report: one testsuite per suite and environment, one testcase
//! per guest sub-result (classname `suite.test`), the serial log in
//! system-out, the environment fingerprint as properties.

use crate::exec::TestRun;
use crate::outcome::Outcome;
use crate::plan::PlannedTest;
use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};
use std::collections::BTreeMap;

pub fn report(run_name: &str, plan: &[PlannedTest], runs: &[Option<TestRun>]) -> Report {
    let mut suites: BTreeMap<(String, String), TestSuite> = BTreeMap::new();
    for (t, run) in plan.iter().zip(runs) {
        let Some(run) = run else { continue };
        let key = (t.suite.clone(), t.env.label());
        let suite = suites.entry(key).or_insert_with(|| {
            let mut s = TestSuite::new(format!("{} [{}]", t.suite, t.env.label()));
            for (k, v) in t.env.properties() {
                s.add_property(Property::new(k, v));
            }
            s.add_property(Property::new("manifest", t.manifest.display().to_string()));
            s
        });
        let per_case = if run.judged.results.is_empty() {
            std::time::Duration::ZERO
        } else {
            run.elapsed / run.judged.results.len() as u32
        };
        for r in &run.judged.results {
            let mut status = match &r.outcome {
                Outcome::Pass => TestCaseStatus::success(),
                Outcome::Fail(m) => non_success(NonSuccessKind::Failure, "fail", m),
                Outcome::Xpass(m) => non_success(NonSuccessKind::Failure, "xpass", m),
                Outcome::Error(m) => non_success(NonSuccessKind::Error, "error", m),
                Outcome::Skip(m) => skipped("skip", m),
                Outcome::Xfail(m) => skipped("xfail", m),
            };
            if let (Some(d), TestCaseStatus::NonSuccess { .. }) = (&r.detail, &status) {
                status.set_description(d.clone());
            }
            let mut case = TestCase::new(r.name.clone(), status);
            case.set_classname(t.id());
            case.set_time(per_case);
            if let Some(d) = &r.detail {
                case.add_property(Property::new("detail", d.clone()));
            }
            let mut out = run.log.clone();
            if !run.stderr.trim().is_empty() {
                out.push_str("\n--- QEMU stderr ---\n");
                out.push_str(&run.stderr);
            }
            if !out.is_empty() {
                case.set_system_out_lossy(out.as_bytes());
            }
            suite.add_test_case(case);
        }
    }
    let mut report = Report::new(run_name.to_string());
    report.add_test_suites(suites.into_values());
    report
}

fn non_success(kind: NonSuccessKind, ty: &str, message: &str) -> TestCaseStatus {
    let mut s = TestCaseStatus::non_success(kind);
    s.set_type(ty).set_message(message.to_string());
    s
}

fn skipped(ty: &str, message: &str) -> TestCaseStatus {
    let mut s = TestCaseStatus::skipped();
    s.set_type(ty).set_message(message.to_string());
    s
}
