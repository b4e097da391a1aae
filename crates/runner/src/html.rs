//! The HTML report, `reports/<run>/index.html`: one self-contained page
//! (inline CSS, no script, nothing from the network) for people. The
//! summary on top; below it one matrix per suite, its columns the
//! environments the suite ran in (the local accelerator, each kernel, each
//! KVM variant), a row per test with its counts per environment and a
//! link to that environment's log, and inside it a row per result, each cell
//! colored by outcome with the reason on hover and on expanding. A test
//! whose every result went as expected is collapsed, so a run of thousands
//! of results shows its failures first.
//!
//! Written with maud, which escapes every value spliced into the page.
//! Every outcome cell carries `data-outcome`, and the summary's counts
//! `data-count`: what a browser test compares with the JUnit.

use crate::events::TestRun;
use crate::outcome::{Outcome, SubResult};
use crate::plan::PlannedTest;
use crate::reproduce::{self, Rerun};
use crate::rundir;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use std::collections::BTreeMap;

/// The outcomes, worst first: the order of the summary.
pub const OUTCOMES: [&str; 6] = ["error", "fail", "xpass", "skip", "xfail", "pass"];
/// The outcomes that did not go as expected, worst first.
const UNEXPECTED: [&str; 3] = ["error", "fail", "xpass"];

/// The page of a run.
pub fn report(
    run_name: &str,
    plan: &[PlannedTest],
    runs: &[Option<TestRun>],
    rerun: &Rerun,
) -> String {
    let suites = group(plan, runs);
    let mut total = Counts::default();
    for s in &suites {
        total.add(&s.counts);
    }
    let reruns = runs
        .iter()
        .flatten()
        .filter(|r| !r.reruns.is_empty())
        .count();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "ukci " (run_name) }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    h1 { "ukci run " span.run { (run_name) } }
                    p.verdict { (verdict(&total)) }
                    table.summary #summary {
                        thead { tr {
                            th { "suite [environment]" }
                            @for o in OUTCOMES { th.{ "o-" (o) } { (o) } }
                            th { "results" }
                        } }
                        tbody {
                            @for s in &suites {
                                @for (env, c) in s.envs.iter().zip(&s.env_counts) {
                                    tr {
                                        td { a href={ "#" (s.anchor) } { (s.name) " [" (env) "]" } }
                                        @for o in OUTCOMES { td.num { (c.get(o)) } }
                                        td.num { (c.sum()) }
                                    }
                                }
                            }
                        }
                        tfoot { tr.total {
                            td { "total" }
                            @for o in OUTCOMES {
                                td.num.{ "o-" (o) }[total.get(o) > 0] data-count=(o) { (total.get(o)) }
                            }
                            td.num data-count="total" { (total.sum()) }
                        } }
                    }
                    @if reruns > 0 {
                        p.note { (reruns) " test(s) ran again on a fresh virtual host after one broke down (see their rerun notes)." }
                    }
                    p.legend {
                        "Each cell is one result in one environment: hover for the reason, click to expand. "
                        "Tests whose every result went as expected are collapsed. "
                        "Links open the test's log; the JUnit is " a href=(rundir::JUNIT) { (rundir::JUNIT) } "."
                    }
                }
                main {
                    @for s in &suites { (suite(s, rerun)) }
                }
            }
        }
    }
    .into_string()
}

/// One suite's matrix.
fn suite(s: &Suite<'_>, rerun: &Rerun) -> Markup {
    let cols = format!("--envs:{}", s.envs.len());
    html! {
        section.suite id=(s.anchor) style=(cols) {
            h2 { (s.name) }
            p.manifest { (s.manifest) }
            div.row.head {
                div.name { "test / result" }
                @for env in &s.envs { div.env title=(env_title(s, env)) { (env) } }
            }
            @for t in &s.tests { (test(s, t, rerun)) }
        }
    }
}

fn env_title(s: &Suite<'_>, env: &str) -> String {
    s.tests
        .iter()
        .flat_map(|t| t.cells.get(env))
        .next()
        .map(|c| {
            let e = c.run.env.as_ref().unwrap_or(&c.planned.env);
            e.properties()
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// A test: its row of counts per environment (the `<summary>`), then its
/// results.
fn test(s: &Suite<'_>, t: &Test<'_>, rerun: &Rerun) -> Markup {
    let troubled = t.cells.values().any(|c| reproduce::needs_reproducer(c.run));
    html! {
        details.test open[troubled] {
            summary.row {
                div.name { (t.name) }
                @for env in &s.envs {
                    @match t.cells.get(env.as_str()) {
                        Some(c) => {
                            a.cell.status.{ "o-" (c.counts.status()) }
                                href=(href(&format!("{}/{}", rundir::LOGS, c.planned.log_path().display())))
                                title="open the log" {
                                (c.counts.describe())
                            }
                        }
                        None => div.cell.none { "—" }
                    }
                }
            }
            @for (name, nth) in &t.results {
                div.row.result {
                    div.name { (name) }
                    @for env in &s.envs {
                        @match t.cells.get(env.as_str()).and_then(|c| c.result(name, *nth)) {
                            Some(r) => (result_cell(r)),
                            None => div.cell.none { "—" }
                        }
                    }
                }
            }
            @for env in &s.envs {
                @if let Some(c) = t.cells.get(env.as_str()) {
                    @for why in &c.run.reruns {
                        p.note { "[" (env) "] rerun after " (why) }
                    }
                    @if reproduce::needs_reproducer(c.run) {
                        div.repro {
                            p { "[" (env) "] to run it again:" }
                            pre { (rerun.lines(c.planned, c.run)) }
                        }
                    }
                }
            }
        }
    }
}

fn result_cell(r: &SubResult) -> Markup {
    let word = r.outcome.word();
    let message = r.outcome.message().unwrap_or("");
    let mut hover = message.to_string();
    if let Some(d) = &r.detail {
        if !hover.is_empty() {
            hover.push('\n');
        }
        hover.push_str(d);
    }
    html! {
        @if hover.is_empty() {
            div.cell.{ "o-" (word) } data-outcome=(word) { (word) }
        } @else {
            details.cell.{ "o-" (word) } data-outcome=(word) title=(hover) {
                summary { (word) }
                @if !message.is_empty() { p { (message) } }
                @if let Some(d) = &r.detail { pre { (d) } }
            }
        }
    }
}

/// "All 120 results as expected", or what did not go so.
fn verdict(total: &Counts) -> String {
    let bad: usize = UNEXPECTED.iter().map(|o| total.get(o)).sum();
    if bad == 0 {
        format!("All {} results as expected.", total.sum())
    } else {
        format!(
            "{bad} of {} results did not go as expected: {}.",
            total.sum(),
            total.describe()
        )
    }
}

/// A path as a link: every byte but unreserved ones and `/` percent-encoded.
fn href(path: &str) -> String {
    path.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[derive(Clone, Debug, Default)]
struct Counts([usize; OUTCOMES.len()]);

impl Counts {
    fn index(word: &str) -> usize {
        OUTCOMES.iter().position(|o| *o == word).unwrap_or(0)
    }
    fn count(&mut self, o: &Outcome) {
        self.0[Self::index(o.word())] += 1;
    }
    fn add(&mut self, other: &Counts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
    fn get(&self, word: &str) -> usize {
        self.0[Self::index(word)]
    }
    fn sum(&self) -> usize {
        self.0.iter().sum()
    }
    /// A test's color, as the terminal words it: the worst failure if
    /// there is one, `skip` when nothing else ran, else `pass`.
    fn status(&self) -> &'static str {
        let failed = UNEXPECTED.into_iter().find(|o| self.get(o) > 0);
        match failed {
            Some(o) => o,
            None if self.sum() > 0 && self.get("skip") == self.sum() => "skip",
            None => "pass",
        }
    }
    /// `6 pass, 1 skip`.
    fn describe(&self) -> String {
        OUTCOMES
            .iter()
            .zip(self.0)
            .filter(|(_, n)| *n > 0)
            .map(|(o, n)| format!("{n} {o}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A test in one environment.
struct Cell<'a> {
    planned: &'a PlannedTest,
    run: &'a TestRun,
    counts: Counts,
}

impl<'a> Cell<'a> {
    /// The `nth` result of that name (names may repeat within a run).
    fn result(&self, name: &str, nth: usize) -> Option<&'a SubResult> {
        self.run
            .judged
            .results
            .iter()
            .filter(|r| r.name == name)
            .nth(nth)
    }
}

struct Test<'a> {
    name: &'a str,
    /// Environment label → the test there.
    cells: BTreeMap<String, Cell<'a>>,
    /// Every result name seen in any environment, with its occurrence,
    /// in the order first seen.
    results: Vec<(&'a str, usize)>,
}

struct Suite<'a> {
    name: &'a str,
    anchor: String,
    manifest: String,
    /// Environment labels in plan order: the columns.
    envs: Vec<String>,
    env_counts: Vec<Counts>,
    tests: Vec<Test<'a>>,
    counts: Counts,
}

/// The plan's tests that ran, by suite (in plan order), test and
/// environment.
fn group<'a>(plan: &'a [PlannedTest], runs: &'a [Option<TestRun>]) -> Vec<Suite<'a>> {
    let mut suites: Vec<Suite<'a>> = Vec::new();
    for (t, run) in plan.iter().zip(runs) {
        let Some(run) = run else { continue };
        let env = t.env.label();
        let i = match suites.iter().position(|s| s.name == t.suite) {
            Some(i) => i,
            None => {
                suites.push(Suite {
                    name: &t.suite,
                    anchor: format!("suite-{}", suites.len()),
                    manifest: t.manifest.display().to_string(),
                    envs: vec![],
                    env_counts: vec![],
                    tests: vec![],
                    counts: Counts::default(),
                });
                suites.len() - 1
            }
        };
        let s = &mut suites[i];
        let e = match s.envs.iter().position(|e| *e == env) {
            Some(e) => e,
            None => {
                s.envs.push(env.clone());
                s.env_counts.push(Counts::default());
                s.envs.len() - 1
            }
        };
        let mut counts = Counts::default();
        for r in &run.judged.results {
            counts.count(&r.outcome);
        }
        s.env_counts[e].add(&counts);
        s.counts.add(&counts);
        let k = match s.tests.iter().position(|x| x.name == t.test) {
            Some(k) => k,
            None => {
                s.tests.push(Test {
                    name: &t.test,
                    cells: BTreeMap::new(),
                    results: vec![],
                });
                s.tests.len() - 1
            }
        };
        let test = &mut s.tests[k];
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &run.judged.results {
            let nth = seen.entry(&r.name).or_default();
            if !test.results.contains(&(r.name.as_str(), *nth)) {
                test.results.push((&r.name, *nth));
            }
            *nth += 1;
        }
        test.cells.insert(
            env,
            Cell {
                planned: t,
                run,
                counts,
            },
        );
    }
    suites
}

const CSS: &str = r#"
:root { --name: minmax(16rem, 2fr); --cell: minmax(7rem, 1fr); font-family: system-ui, sans-serif; font-size: 14px; }
body { margin: 1rem 2rem; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem; } h1 .run { font-family: ui-monospace, monospace; font-weight: normal; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .2rem; }
.verdict { font-size: 1.1rem; font-weight: 600; }
.manifest, .legend, .note { color: #555; margin: .2rem 0; }
table.summary { border-collapse: collapse; margin: .5rem 0; }
table.summary th, table.summary td { border: 1px solid #ddd; padding: .2rem .6rem; }
table.summary .num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary tfoot td { font-weight: 600; }
.row { display: grid; grid-template-columns: var(--name) repeat(var(--envs), var(--cell)); gap: 2px; align-items: start; }
.row.head { position: sticky; top: 0; background: #fafafa; font-weight: 600; z-index: 1; padding: .2rem 0; }
.row .name { overflow-wrap: anywhere; padding: .15rem .3rem; }
.row.result .name { padding-left: 1.4rem; color: #333; }
details.test { border-top: 1px solid #e3e3e3; }
details.test > summary { cursor: pointer; list-style: none; }
details.test > summary .name { font-weight: 600; }
details.test > summary .name::before { content: "▸ "; color: #888; }
details.test[open] > summary .name::before { content: "▾ "; }
.cell { display: block; padding: .15rem .3rem; border-radius: 3px; text-decoration: none; color: inherit; font-family: ui-monospace, monospace; font-size: .85rem; }
.cell summary { cursor: pointer; }
.cell p, .cell pre { margin: .2rem 0; font-family: system-ui, sans-serif; white-space: pre-wrap; overflow-wrap: anywhere; }
.cell.none { color: #aaa; }
.o-pass { background: #d7f5dd; } .o-xfail { background: #dce8fb; } .o-skip { background: #ececec; }
.o-fail { background: #f9c9c5; } .o-xpass { background: #fbd7a8; } .o-error { background: #e0c0f0; }
table.summary th.o-pass, table.summary th.o-fail, table.summary th.o-skip, table.summary th.o-xfail, table.summary th.o-xpass, table.summary th.o-error { color: #1d1d1f; }
.repro { margin: .3rem 0 .6rem 1.4rem; }
.repro p { margin: .2rem 0; color: #555; }
.repro pre { margin: 0; padding: .4rem; background: #f0f0f0; white-space: pre-wrap; overflow-wrap: anywhere; font-size: .8rem; }
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{VIRTUAL, virtual_plan};
    use std::time::Duration;

    fn run<N: Into<String>>(results: Vec<(N, Outcome, Option<&str>)>) -> TestRun {
        let mut r = TestRun::without_vm(
            results
                .into_iter()
                .map(|(name, outcome, detail)| SubResult {
                    name: name.into(),
                    outcome,
                    detail: detail.map(str::to_string),
                })
                .collect(),
        );
        r.elapsed = Duration::from_millis(3);
        r.qemu = "qemu-system-x86_64 -readconfig /proc/self/fd/7".into();
        r
    }

    /// The page of the VIRTUAL plan: env and nested on debian:6.1 (nested
    /// skipped there by its requirement), then on debian:6.12.
    fn page(runs: Vec<TestRun>) -> String {
        let plan = virtual_plan(VIRTUAL);
        let runs: Vec<Option<TestRun>> = runs.into_iter().map(Some).collect();
        assert_eq!(runs.len(), plan.len());
        report("r<1>", &plan, &runs, &Rerun::default())
    }

    fn count(page: &str, what: &str) -> usize {
        page.matches(what).count()
    }

    fn skipped() -> TestRun {
        run(vec![(
            "boot.smoke",
            Outcome::Skip("host_kernel".into()),
            None,
        )])
    }

    #[test]
    fn every_result_is_a_cell_of_its_environment_counted_in_the_summary() {
        let p = page(vec![
            run(vec![
                ("vfio.env: a", Outcome::Pass, Some("iommu=on")),
                ("vfio.env: b", Outcome::Skip("no PF".into()), None),
            ]),
            skipped(),
            run(vec![
                (
                    "vfio.env: a",
                    Outcome::Fail("<script>alert(1)</script>".into()),
                    None,
                ),
                ("vfio.env: b", Outcome::Xfail("by design".into()), None),
            ]),
            run(vec![("boot.smoke", Outcome::Pass, None)]),
        ]);
        for (o, want) in [
            ("pass", 2),
            ("fail", 1),
            ("skip", 2),
            ("xfail", 1),
            ("error", 0),
        ] {
            let cells = count(&p, &format!("data-outcome=\"{o}\""));
            assert_eq!(cells, want, "{o}: {p}");
            assert!(
                p.contains(&format!("data-count=\"{o}\">{want}<")),
                "{o}: {p}"
            );
        }
        assert!(p.contains(r#"data-count="total">6<"#), "{p}");
        // Values are escaped, never markup.
        assert!(!p.contains("<script>"), "{p}");
        assert!(p.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{p}");
        assert!(p.contains("ukci run <span class=\"run\">r&lt;1&gt;</span>"));
        // Self-contained: nothing loaded from anywhere.
        assert!(!p.contains("http://") && !p.contains("https://") && !p.contains("<script"));
        // One column per environment, a summary row per suite and
        // environment, a link per test and environment to its own log.
        assert_eq!(count(&p, "<div class=\"env\""), 2, "{p}");
        assert!(
            p.contains(" [debian:6.1]</a>") && p.contains(" [debian:6.12]</a>"),
            "{p}"
        );
        for log in [
            "v@debian-6.1/env.log",
            "v@debian-6.1/nested.log",
            "v@debian-6.12/env.log",
            "v@debian-6.12/nested.log",
        ] {
            assert_eq!(count(&p, &format!("href=\"logs/{log}\"")), 1, "{log}: {p}");
        }
    }

    #[test]
    fn a_test_that_went_as_expected_is_collapsed_and_a_failure_is_open_with_its_reproducer() {
        let p = page(vec![
            run(vec![("vfio.env: a", Outcome::Pass, None)]),
            skipped(),
            run(vec![(
                "vfio.env: a",
                Outcome::Error("timed out".into()),
                None,
            )]),
            run(vec![(
                "boot.smoke",
                Outcome::Xfail("by design".into()),
                None,
            )]),
        ]);
        // env fails on one kernel: open; nested only went as expected: closed.
        let env = &p[p.find("<details class=\"test\"").unwrap()..];
        assert!(env.starts_with("<details class=\"test\" open>"), "{env}");
        let nested = &env[1..][env[1..].find("<details class=\"test\"").unwrap()..];
        assert!(
            nested.starts_with("<details class=\"test\"><summary"),
            "{nested}"
        );
        assert_eq!(count(&p, "rerun: cargo xtask test"), 1, "{p}");
        assert!(p.contains("--filter v.env --kernel debian:6.12"), "{p}");
        assert!(p.contains("-readconfig /proc/self/fd/7"), "{p}");
        assert!(
            p.contains("1 of 4 results did not go as expected: 1 error, 1 skip, 1 xfail, 1 pass."),
            "{p}"
        );
    }

    #[test]
    fn thousands_of_passing_results_stay_collapsed_and_small() {
        let mut plan = Vec::new();
        let mut runs = Vec::new();
        for t in virtual_plan(VIRTUAL)
            .into_iter()
            .filter(|t| t.test == "env")
        {
            for i in 0..250 {
                let mut t = t.clone();
                t.test = format!("env-{i}");
                plan.push(t);
                runs.push(Some(run((0..10)
                    .map(|k| (format!("vfio.env: fact {k}"), Outcome::Pass, Some("seen=1")))
                    .collect())));
            }
        }
        let p = report("big", &plan, &runs, &Rerun::default());
        assert_eq!(count(&p, "data-outcome=\"pass\""), 5000);
        assert_eq!(count(&p, "<details class=\"test\">"), 250);
        assert_eq!(count(&p, "<details class=\"test\" open>"), 0);
        assert!(
            p.len() < 250 * 1024 * 10,
            "{} bytes for 5000 results",
            p.len()
        );
    }

    #[test]
    fn links_are_percent_encoded() {
        assert_eq!(href("logs/a@b/c d<.log"), "logs/a@b/c%20d%3C.log");
    }
}
