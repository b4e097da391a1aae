//! The terminal reporter: progress bars on a TTY (an overall bar and one
//! line per running VM), plain lines otherwise, and a summary table.

use crate::events::{Event, TestRun};
use crate::outcome::Outcome;
use crate::plan::{Decision, PlannedTest, TestKind};
use crate::reproduce::{self, Rerun};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::time::Duration;

pub struct Terminal<'a> {
    plan: &'a [PlannedTest],
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    running: HashMap<usize, ProgressBar>,
}

impl<'a> Terminal<'a> {
    pub fn new(plan: &'a [PlannedTest]) -> Self {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let (multi, overall) = if tty {
            let m = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let bar = m.add(ProgressBar::new(plan.len() as u64));
            bar.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            (Some(m), Some(bar))
        } else {
            (None, None)
        };
        Terminal {
            plan,
            multi,
            overall,
            running: HashMap::new(),
        }
    }

    fn println(&self, line: String) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn event(&mut self, e: &Event) {
        match e {
            Event::Started { idx } => {
                if let Some(m) = &self.multi {
                    let bar = m.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("  {spinner} {prefix}: {wide_msg}")
                            .expect("valid template"),
                    );
                    bar.set_prefix(name(&self.plan[*idx]));
                    bar.enable_steady_tick(Duration::from_millis(120));
                    self.running.insert(*idx, bar);
                }
            }
            Event::Output { idx, line } => {
                if let Some(bar) = self.running.get(idx) {
                    bar.set_message(line.clone());
                }
            }
            Event::Finished { idx, run } => {
                if let Some(bar) = self.running.remove(idx) {
                    bar.finish_and_clear();
                    if let Some(m) = &self.multi {
                        m.remove(&bar);
                    }
                }
                self.println(finished_lines(&self.plan[*idx], run));
                if let Some(o) = &self.overall {
                    o.inc(1);
                }
            }
        }
    }

    pub fn finish(&mut self) {
        if let Some(o) = &self.overall {
            o.finish_and_clear();
        }
    }
}

/// The worst outcome of a test's results, for its one-line status.
fn test_word(run: &TestRun) -> &'static str {
    let rs = &run.judged.results;
    let has = |f: fn(&Outcome) -> bool| rs.iter().any(|r| f(&r.outcome));
    if has(|o| matches!(o, Outcome::Error(_))) {
        "ERROR"
    } else if has(|o| matches!(o, Outcome::Fail(_) | Outcome::Xpass(_))) {
        "FAIL"
    } else if !rs.is_empty() && rs.iter().all(|r| matches!(r.outcome, Outcome::Skip(_))) {
        "SKIP"
    } else {
        "ok"
    }
}

/// A test as the terminal names it: `suite.test [environment]`, the same
/// test in each kernel or KVM variant told apart.
pub fn name(t: &PlannedTest) -> String {
    format!("{} [{}]", t.id(), t.env.label())
}

fn finished_lines(t: &PlannedTest, run: &TestRun) -> String {
    let mut s = format!(
        "{:>5}  {} ({} results, {:.2} s)",
        test_word(run),
        name(t),
        run.judged.results.len(),
        run.elapsed.as_secs_f64()
    );
    for r in &run.judged.results {
        if let Outcome::Pass = r.outcome {
            continue;
        }
        let msg = r.outcome.message().unwrap_or("");
        s.push_str(&format!(
            "\n         {:<5} {}: {msg}",
            r.outcome.word(),
            r.name
        ));
    }
    for why in &run.reruns {
        s.push_str(&format!("\n         rerun after {}", first_line(why)));
    }
    s
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[derive(Default)]
struct Counts([usize; 6]);

impl Counts {
    fn add(&mut self, o: &Outcome) {
        let i = match o {
            Outcome::Pass => 0,
            Outcome::Fail(_) => 1,
            Outcome::Skip(_) => 2,
            Outcome::Xfail(_) => 3,
            Outcome::Xpass(_) => 4,
            Outcome::Error(_) => 5,
        };
        self.0[i] += 1;
    }
}

/// `ukci list`: per test, where it runs and how (or why it is skipped), its
/// checks and its expectations; then what `accel = "auto"` chose.
pub fn plan_listing(plan: &[PlannedTest]) -> String {
    let mut s = String::new();
    for t in plan {
        let what = match (&t.decision, &t.kind) {
            (Decision::Run, TestKind::KvmUnitTest(k)) => format!(
                "run   kvm-unit-tests {} {} smp={} timeout={}s",
                k.test.file.as_deref().unwrap_or(""),
                t.env.accel_word(),
                t.vm.smp,
                t.timeout.as_secs_f64()
            ),
            (Decision::Run, _) => format!(
                "run   {} {} cpu={} timeout={}s",
                t.vm.machine.qemu_name(),
                t.env.accel_word(),
                t.vm.cpu,
                t.timeout.as_secs_f64()
            ),
            (Decision::Skip(why), _) => format!("skip  {why}"),
        };
        let lane = t
            .boot
            .as_ref()
            .map_or(String::new(), |b| format!(" @ {}", b.label()));
        s.push_str(&format!("{:<36} {what}\n", format!("{}{lane}", t.id())));
        s.push_str(&format!("{:<36}   checks: {}\n", "", t.checks.join(", ")));
        for e in &t.expects {
            let kind = if e.known_bug { "kfail" } else { "xfail" };
            s.push_str(&format!("{:<36}   {kind} {}: {}\n", "", e.result, e.reason));
        }
    }
    if let Some(t) = plan.first() {
        s.push_str(&format!(
            "\naccel auto: {} ({})\n",
            t.env.accel_word(),
            t.env.accel_reason
        ));
    }
    s
}

/// The table at the end of a run.
pub fn summary(plan: &[PlannedTest], runs: &[Option<TestRun>]) -> String {
    let mut by_suite: BTreeMap<String, Counts> = BTreeMap::new();
    let mut total = Counts::default();
    for (t, run) in plan.iter().zip(runs) {
        let Some(run) = run else { continue };
        let c = by_suite
            .entry(format!("{} [{}]", t.suite, t.env.label()))
            .or_default();
        for r in &run.judged.results {
            c.add(&r.outcome);
            total.add(&r.outcome);
        }
    }
    let width = by_suite.keys().map(|k| k.len()).max().unwrap_or(5).max(5);
    let mut s = format!(
        "{:<width$} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5}\n",
        "suite", "pass", "fail", "skip", "xfail", "xpass", "error"
    );
    for (name, c) in by_suite.iter().chain([(&"total".to_string(), &total)]) {
        let [p, f, sk, xf, xp, e] = c.0;
        s.push_str(&format!(
            "{name:<width$} {p:>5} {f:>5} {sk:>5} {xf:>5} {xp:>5} {e:>5}\n"
        ));
    }
    let rerun = runs
        .iter()
        .flatten()
        .filter(|r| !r.reruns.is_empty())
        .count();
    if rerun > 0 {
        s.push_str(&format!(
            "{rerun} test(s) ran again on a fresh virtual host after one broke down (see their rerun lines)\n"
        ));
    }
    s
}

/// After the summary, as cargo-nextest prints its rerun lines: for each
/// test with a result that did not go as expected, how to run it again and
/// the QEMU command line it had.
pub fn reproducers(plan: &[PlannedTest], runs: &[Option<TestRun>], rerun: &Rerun) -> String {
    let mut s = String::new();
    for (t, run) in plan.iter().zip(runs) {
        let Some(run) = run.as_ref().filter(|r| reproduce::needs_reproducer(r)) else {
            continue;
        };
        if s.is_empty() {
            s.push_str("\nto run again what did not pass:\n");
        }
        s.push_str(&format!("{:>5}  {}\n", test_word(run), name(t)));
        for line in rerun.lines(t, run).lines() {
            s.push_str(&format!("       {line}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::plan_of;

    #[test]
    fn the_plan_listing_says_how_each_test_runs_or_why_not() {
        let plan = plan_of(
            r#"
[defaults]
machine = "microvm"
timeout = "5s"

[[test]]
name = "runs"
checks = ["boot.smoke", "fault.selftest"]

[[test]]
name = "old"
checks = ["boot.smoke"]
requires = { qemu = ">=99.0" }

[[expect]]
test = "runs"
result = "fault.selftest: *"
outcome = "xfail"
reason = "why it fails"
"#,
            Default::default(),
        );
        let text = plan_listing(&plan);
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert!(
            lines[0].starts_with("s.runs ")
                && lines[0].ends_with("run   microvm tcg cpu=max timeout=5s"),
            "{text}"
        );
        assert_eq!(lines[1].trim(), "checks: boot.smoke, fault.selftest");
        assert_eq!(lines[2].trim(), "xfail fault.selftest: *: why it fails");
        assert!(
            lines[3].starts_with("s.old ")
                && lines[3].contains("skip  needs QEMU >=99.0, this run has 10.0.2"),
            "{text}"
        );
        assert_eq!(
            lines.last(),
            Some(&"accel auto: tcg (auto: probe timed out)")
        );
    }
}
