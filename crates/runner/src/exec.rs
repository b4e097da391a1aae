//! Execution: runs the plan's VMs, `jobs` at a time, and emits events.
//! Executors never format output; reporters consume the events.

use crate::durations::History;
use crate::events::{Event, TestRun};
use crate::hostcheck;
use crate::hostconfig::HostCheckContext;
use crate::lane::{self, LaneContext};
use crate::outcome::{self, Expect, Outcome, SubResult};
use crate::plan::{Decision, PlannedTest, TestKind};
use crate::qemu;
use crate::supervise::{End, Finished};
use crate::vf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use ukci_protocol::line::{self, Line};

/// A unit of work for one worker: a test on this host, or one boot of a
/// virtual host with every test that runs inside it.
#[derive(Debug, PartialEq, Eq)]
pub enum Work {
    Local(usize),
    /// Tests that use the host's PF: one after the other, never two at once.
    Serial(Vec<usize>),
    Boot(Vec<usize>),
}

/// Groups the plan into work. Virtual boots come first: they take longest.
/// Local tests follow longest first: by how long they took last time on
/// this machine, else by their timeout (a test declared to need long, as
/// kvm-unit-tests' `sieve` with `timeout = 180`, starts at once instead of
/// last, where it would end the run alone on one worker).
pub fn work_items(plan: &[PlannedTest], history: &History) -> Vec<Work> {
    let mut boots: Vec<Vec<usize>> = Vec::new();
    let mut serial = Vec::new();
    let mut local = Vec::new();
    for (i, t) in plan.iter().enumerate() {
        match (&t.boot, &t.decision) {
            (Some(b), Decision::Run) => {
                match boots
                    .iter_mut()
                    .find(|g| plan[g[0]].boot.as_ref() == Some(b))
                {
                    Some(g) => g.push(i),
                    None => boots.push(vec![i]),
                }
            }
            (None, Decision::Run) if t.kind.uses_pf() => serial.push(i),
            _ => local.push(i),
        }
    }
    let expected = |t: &PlannedTest| history.get(&t.history_key()).unwrap_or(t.timeout);
    local.sort_by_key(|&i| std::cmp::Reverse(expected(&plan[i])));
    let serial = (!serial.is_empty()).then_some(Work::Serial(serial));
    boots
        .into_iter()
        .map(Work::Boot)
        .chain(serial)
        .chain(local.into_iter().map(Work::Local))
        .collect()
}

/// Runs every planned test and sends its events; returns when all are done.
pub fn execute(
    plan: &[PlannedTest],
    jobs: usize,
    lane: &LaneContext,
    history: &History,
    events: Sender<Event>,
) {
    let work = work_items(plan, history);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            let events = events.clone();
            let (next, work) = (&next, &work);
            s.spawn(move || {
                loop {
                    let w = next.fetch_add(1, Ordering::Relaxed);
                    match work.get(w) {
                        None => break,
                        Some(Work::Boot(idxs)) => lane::run_boot(plan, idxs, lane, &events),
                        Some(Work::Local(idx)) => run_local(plan, *idx, lane, &events),
                        Some(Work::Serial(idxs)) => {
                            for &idx in idxs {
                                run_local(plan, idx, lane, &events);
                            }
                        }
                    }
                }
            });
        }
    });
}

fn run_local(plan: &[PlannedTest], idx: usize, lane: &LaneContext, events: &Sender<Event>) {
    let _ = events.send(Event::Started { idx });
    let run = run_one(&plan[idx], &lane.host_checks, |line| {
        let _ = events.send(Event::Output {
            idx,
            line: line.to_string(),
        });
    });
    let _ = events.send(Event::Finished {
        idx,
        run: Box::new(run),
    });
}

/// Runs one test: creates its scratch images, boots the VM, judges the
/// result, applies the expectations, removes the images.
pub fn run_one(t: &PlannedTest, host: &HostCheckContext, mut on_line: impl FnMut(&str)) -> TestRun {
    let no_pf = (host.pf.is_none() && t.kind == TestKind::GuestWithVf)
        .then(|| format!("no SR-IOV PF to take a VF from: {}", host.pf_source));
    if let Some(why) = no_pf.as_ref().or(match &t.decision {
        Decision::Skip(why) => Some(why),
        Decision::Run => None,
    }) {
        return TestRun::without_vm(
            t.checks
                .iter()
                .map(|c| SubResult {
                    name: c.clone(),
                    outcome: Outcome::Skip(why.clone()),
                    detail: None,
                })
                .collect(),
        );
    }
    if let Err(e) = create_scratch(t) {
        return TestRun::without_vm(vec![SubResult {
            name: t.test.clone(),
            outcome: Outcome::Error(e),
            detail: None,
        }]);
    }
    // A kvm-unit-tests test is judged as the tree's scripts judge it.
    let (fin, kut_results) = match &t.kind {
        TestKind::KvmUnitTest(k) => {
            let (judged, fin) = crate::kut::run(k, t.vm.accel, t.vm.smp, t.timeout, &mut on_line);
            (fin, Some(judged))
        }
        TestKind::HostChecks => (host_checks(t, host), None),
        TestKind::GuestWithVf => (
            vf::run_guest_with_vf(host, &t.vm, t.timeout, &mut on_line),
            None,
        ),
        TestKind::Guest => (qemu::run(&t.vm, t.timeout, on_line), None),
    };
    for s in &t.scratch {
        let _ = std::fs::remove_file(&s.path);
    }
    let mut judged = kut_results.unwrap_or_else(|| outcome::judge(&t.test, &t.checks, &fin));
    let expects: Vec<Expect<'_>> = t
        .expects
        .iter()
        .map(|e| Expect {
            result: &e.result,
            known_bug: e.known_bug,
            reason: &e.reason,
        })
        .collect();
    outcome::apply_expectations(&mut judged.results, &expects);
    TestRun {
        judged,
        log: fin.stdout,
        stderr: fin.stderr,
        elapsed: fin.elapsed,
        end: Some(fin.end),
        reruns: vec![],
        env: None,
        qemu: fin.command,
    }
}

/// Host checks run here, in the runner; their output reads like a guest's.
fn host_checks(t: &PlannedTest, host: &HostCheckContext) -> Finished {
    let start = std::time::Instant::now();
    let out = hostcheck::run(&t.checks, host);
    let status = out
        .lines()
        .find_map(|l| match line::parse(l) {
            Some(Line::Exit(s)) => Some(s as i32),
            _ => None,
        })
        .unwrap_or(-1);
    Finished {
        end: End::Exited(status),
        stdout: out,
        stderr: String::new(),
        elapsed: start.elapsed(),
        ready_at: None,
        command: String::new(),
    }
}

fn create_scratch(t: &PlannedTest) -> Result<(), String> {
    for s in &t.scratch {
        let fail =
            |e: std::io::Error| format!("cannot create scratch image {}: {e}", s.path.display());
        if let Some(dir) = s.path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        // A fresh sparse file each run: old contents can never be mistaken
        // for data the guest wrote.
        let f = std::fs::File::create(&s.path).map_err(fail)?;
        f.set_len(s.size.bytes()).map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::plan_of;
    use std::time::Duration;

    #[test]
    fn local_tests_start_longest_first_in_manifest_order_otherwise() {
        let text = r#"
[defaults]
machine = "microvm"
timeout = "10s"

[[test]]
name = "short"
checks = ["boot.smoke"]
timeout = "5s"

[[test]]
name = "a"
checks = ["boot.smoke"]

[[test]]
name = "long"
checks = ["boot.smoke"]
timeout = "3m"

[[test]]
name = "b"
checks = ["boot.smoke"]
"#;
        let plan = plan_of(text, Default::default());
        let order = |history: &History| -> Vec<String> {
            work_items(&plan, history)
                .iter()
                .map(|w| match w {
                    Work::Local(i) => plan[*i].test.clone(),
                    other => panic!("{other:?} in a local plan"),
                })
                .collect()
        };
        assert_eq!(order(&History::default()), ["long", "a", "b", "short"]);
        // What they took last time wins over what they declare.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("durations.tsv");
        let took = |name: &str, secs| {
            let t = plan.iter().find(|t| t.test == name).unwrap();
            (t.history_key(), Duration::from_secs(secs))
        };
        History::record(&path, [took("long", 1), took("short", 4), took("b", 2)]);
        // a: no history, so its 10 s timeout.
        assert_eq!(order(&History::load(&path)), ["a", "short", "b", "long"]);
    }
}
