//! The JUnit report: one testsuite per suite and environment, one testcase
//! per guest sub-result (classname `suite.test`), the environment
//! fingerprint as properties.
//!
//! A VM's serial log (and QEMU's stderr) is the system-out of the first
//! testcase of that VM only. One VM prints many results, and a copy of the
//! log on each would grow the report with the square of the results (100
//! results: a third of a megabyte of the same text). The first testcase is
//! where CI viewers that show system-out per testcase show it, beside the
//! VM's results under the same classname; the suite's own system-out is
//! shown by few, and would mix several VMs. The whole log is also in
//! `logs/<suite>@<env>/<test>.log`.
//!
//! A result's detail (the `ukci-detail:` line) is no testcase property: the
//! Jenkins junit-10 XSD allows no `properties` in a testcase, and GitLab
//! reads none. It is the text of the failure, error or skipped element, and
//! a pass's system-out when that is not the VM's log (which has the line).
//! Properties stay where the XSD has them, on the testsuite.

use crate::events::TestRun;
use crate::outcome::Outcome;
use crate::plan::PlannedTest;
use crate::reproduce::{self, Rerun};
use quick_junit::{
    NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestRerun, TestSuite,
};
use std::collections::BTreeMap;

pub fn report(
    run_name: &str,
    plan: &[PlannedTest],
    runs: &[Option<TestRun>],
    rerun: &Rerun,
) -> Report {
    let mut suites: BTreeMap<(String, String), TestSuite> = BTreeMap::new();
    for (t, run) in plan.iter().zip(runs) {
        let Some(run) = run else { continue };
        let key = (t.suite.clone(), t.env.label());
        let env = run.env.as_ref().unwrap_or(&t.env);
        let suite = suites.entry(key).or_insert_with(|| {
            let mut s = TestSuite::new(format!("{} [{}]", t.suite, t.env.label()));
            for (k, v) in env.properties() {
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
        let mut vm_log = Some(run.vm_log()).filter(|l| !l.is_empty());
        let repro = reproduce::needs_reproducer(run).then(|| rerun.lines(t, run));
        for r in &run.judged.results {
            let mut status = match &r.outcome {
                Outcome::Pass => TestCaseStatus::success(),
                Outcome::Fail(m) => non_success(NonSuccessKind::Failure, "fail", m),
                Outcome::Xpass(m) => non_success(NonSuccessKind::Failure, "xpass", m),
                Outcome::Error(m) => non_success(NonSuccessKind::Error, "error", m),
                Outcome::Skip(m) => skipped("skip", m),
                Outcome::Xfail(m) => skipped("xfail", m),
            };
            let pass = matches!(status, TestCaseStatus::Success { .. });
            if let (Some(d), false) = (&r.detail, pass) {
                status.set_description(d.clone());
            }
            // An earlier run that gave no result: flakyError beside a pass,
            // rerunError beside a failure.
            for why in &run.reruns {
                let mut rerun = TestRerun::new(NonSuccessKind::Error);
                rerun.set_type("host").set_message(why.clone());
                status.add_rerun(rerun);
            }
            let mut case = TestCase::new(r.name.clone(), status);
            case.set_classname(t.id());
            case.set_time(per_case);
            match (vm_log.take(), &r.detail) {
                (Some(log), _) => {
                    case.set_system_out_lossy(log.as_bytes());
                }
                (None, Some(d)) if pass => {
                    case.set_system_out(d.clone());
                }
                _ => {}
            }
            // On each result that did not go as expected: a few lines that
            // rerun its test, where a CI viewer shows that result.
            if let (Some(repro), TestCaseStatus::NonSuccess { .. }) = (&repro, &case.status) {
                case.set_system_err(repro.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Judged, SubResult};
    use std::time::Duration;

    fn run(outcome: Outcome, reruns: &[&str]) -> TestRun {
        TestRun {
            judged: Judged {
                results: vec![SubResult {
                    name: "vfio.env: facts".into(),
                    outcome,
                    detail: None,
                }],
                infos: vec![],
            },
            log: "serial".into(),
            stderr: String::new(),
            elapsed: Duration::from_millis(5),
            end: None,
            reruns: reruns.iter().map(|s| s.to_string()).collect(),
            env: None,
            qemu: String::new(),
        }
    }

    fn xml(runs: Vec<Option<TestRun>>) -> String {
        let plan = crate::plan::tests::virtual_plan(crate::plan::tests::VIRTUAL);
        let runs: Vec<_> = runs
            .into_iter()
            .chain(std::iter::repeat(None))
            .take(plan.len())
            .collect();
        report("r", &plan, &runs, &Rerun::default())
            .to_string()
            .unwrap()
    }

    #[test]
    fn a_pass_after_a_wedged_host_is_flaky_and_says_why() {
        let x = xml(vec![Some(run(
            Outcome::Pass,
            &["the host kernel wedged (boot 1)"],
        ))]);
        assert!(x.contains("<flakyError"), "{x}");
        assert!(
            x.contains(r#"message="the host kernel wedged (boot 1)""#),
            "{x}"
        );
        assert!(x.contains(r#"type="host""#), "{x}");
        let x = xml(vec![Some(run(Outcome::Fail("no".into()), &["wedged"]))]);
        assert!(x.contains("<failure") && x.contains("<rerunError"), "{x}");
        let x = xml(vec![Some(run(Outcome::Pass, &[]))]);
        assert!(!x.contains("flaky") && !x.contains("rerun"), "{x}");
    }

    #[test]
    fn each_vm_log_is_in_the_report_once() {
        let many = |log: &str, stderr: &str| {
            let mut r = run(Outcome::Pass, &[]);
            r.judged.results = (0..100)
                .map(|i| SubResult {
                    name: format!("vfio.env: fact {i}"),
                    outcome: Outcome::Pass,
                    detail: None,
                })
                .collect();
            r.log = log.into();
            r.stderr = stderr.into();
            r
        };
        let x = xml(vec![
            Some(many("serial of the first VM", "")),
            Some(many("serial of the second VM", "qemu: warning")),
        ]);
        assert_eq!(x.matches("<testcase").count(), 200, "{x}");
        assert_eq!(x.matches("<system-out>").count(), 2, "{x}");
        assert_eq!(x.matches("serial of the first VM").count(), 1, "{x}");
        assert_eq!(x.matches("serial of the second VM").count(), 1, "{x}");
        assert_eq!(
            x.matches("--- QEMU stderr ---\nqemu: warning").count(),
            1,
            "{x}"
        );
        // On the VM's first result, where viewers of a testcase show it.
        let first = &x[x.find("fact 0\"").unwrap()..x.find("fact 1\"").unwrap()];
        assert!(first.contains("serial of the first VM"), "{first}");
    }

    /// What the Jenkins junit-10 XSD (jenkinsci/xunit-plugin) allows of
    /// each element: its attributes, those it requires, its child elements.
    /// One attribute is outside it: `testsuites/@skipped`, which quick-junit
    /// (as cargo-nextest) always writes and Jenkins' junit plugin and GitLab
    /// read or ignore.
    fn junit10(
        element: &str,
    ) -> Option<(
        &'static [&'static str],
        &'static [&'static str],
        &'static [&'static str],
    )> {
        const NON_SUCCESS: (&[&str], &[&str], &[&str]) = (&["type", "message"], &[], &[]);
        const RERUN: (&[&str], &[&str], &[&str]) = (
            &["type", "message"],
            &["type"],
            &["stackTrace", "system-out", "system-err"],
        );
        Some(match element {
            "testsuites" => (
                &["name", "time", "tests", "failures", "errors", "skipped"],
                &[],
                &["testsuite"],
            ),
            "testsuite" => (
                &[
                    "name",
                    "tests",
                    "failures",
                    "errors",
                    "group",
                    "time",
                    "skipped",
                    "timestamp",
                    "hostname",
                    "id",
                    "package",
                    "file",
                    "log",
                    "url",
                ],
                &["name", "tests", "failures", "errors"],
                &[
                    "testsuite",
                    "properties",
                    "testcase",
                    "system-out",
                    "system-err",
                ],
            ),
            "properties" => (&[], &[], &["property"]),
            "property" => (&["name", "value"], &["name", "value"], &[]),
            "testcase" => (
                &["name", "time", "classname", "group"],
                &["name"],
                &[
                    "skipped",
                    "error",
                    "failure",
                    "rerunFailure",
                    "rerunError",
                    "flakyFailure",
                    "flakyError",
                    "system-out",
                    "system-err",
                ],
            ),
            "failure" | "error" | "skipped" => NON_SUCCESS,
            "rerunFailure" | "rerunError" | "flakyFailure" | "flakyError" => RERUN,
            "system-out" | "system-err" | "stackTrace" => (&[], &[], &[]),
            _ => return None,
        })
    }

    #[test]
    fn the_report_keeps_to_the_jenkins_xsd_and_reads_in_gitlab_as_it_was() {
        let mut detailed = run(Outcome::Pass, &["the host kernel wedged (boot 1)"]);
        detailed.judged.results = [
            Outcome::Pass,
            Outcome::Fail("f".into()),
            Outcome::Skip("s".into()),
            Outcome::Xfail("x".into()),
            Outcome::Xpass("xp".into()),
            Outcome::Error("e".into()),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, outcome)| SubResult {
            name: format!("vfio.env: {i}"),
            outcome,
            detail: Some(format!("detail {i}")),
        })
        .collect();
        // The serial log has the first result's detail line, as a guest's has.
        detailed.log = "PASS: vfio.env: 0\nukci-detail: detail 0\n".into();
        let x = xml(vec![Some(detailed), Some(run(Outcome::Pass, &[]))]);
        let doc = roxmltree::Document::parse(&x).unwrap();
        for n in doc.descendants().filter(|n| n.is_element()) {
            let name = n.tag_name().name();
            let (attrs, required, children) =
                junit10(name).unwrap_or_else(|| panic!("<{name}> is not in the XSD: {x}"));
            for a in n.attributes() {
                assert!(attrs.contains(&a.name()), "<{name} {}>: {x}", a.name());
            }
            for r in required {
                assert!(n.has_attribute(*r), "<{name}> without {r}: {x}");
            }
            for c in n.children().filter(|c| c.is_element()) {
                assert!(
                    children.contains(&c.tag_name().name()),
                    "<{name}><{}>: {x}",
                    c.tag_name().name()
                );
            }
            if let Some(t) = n.attribute("time") {
                assert!(
                    t.split_once('.')
                        .map_or(t, |(a, _)| a)
                        .bytes()
                        .all(|b| b.is_ascii_digit()),
                    "{t}"
                );
            }
        }
        // GitLab's parser: a testcase with <failure> failed, with <error>
        // is an error, with <skipped> skipped, else it passed; its text is
        // the failure's text.
        let mut gitlab: BTreeMap<&str, usize> = BTreeMap::new();
        for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
            let status = ["failure", "error", "skipped"]
                .into_iter()
                .find(|s| case.children().any(|c| c.has_tag_name(*s)))
                .unwrap_or("success");
            *gitlab.entry(status).or_default() += 1;
        }
        assert_eq!(
            gitlab,
            BTreeMap::from([("error", 1), ("failure", 2), ("skipped", 2), ("success", 2)])
        );
        // Each detail is still in the report, where the XSD allows it.
        for i in 0..6 {
            assert!(x.contains(&format!("detail {i}")), "detail {i}: {x}");
        }
        assert!(!x.contains("<property name=\"detail\""), "{x}");
    }
}
