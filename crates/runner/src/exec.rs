//! Execution: runs the plan's VMs, `jobs` at a time, and emits events.
//! Executors never format output; reporters consume the events.

use crate::outcome::{self, Expect, Judged, Outcome, SubResult};
use crate::plan::{Decision, PlannedTest};
use crate::qemu;
use crate::supervise::{self, End};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct TestRun {
    pub judged: Judged,
    /// The serial log.
    pub log: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// How QEMU ended; `None` for a test that did not run.
    pub end: Option<End>,
}

#[derive(Debug)]
pub enum Event {
    Started {
        idx: usize,
    },
    /// One line of a running VM's serial output.
    Output {
        idx: usize,
        line: String,
    },
    Finished {
        idx: usize,
        run: Box<TestRun>,
    },
}

/// Runs every planned test and sends its events; returns when all are done.
pub fn execute(plan: &[PlannedTest], jobs: usize, events: Sender<Event>) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            let events = events.clone();
            let next = &next;
            s.spawn(move || {
                loop {
                    let idx = next.fetch_add(1, Ordering::Relaxed);
                    let Some(t) = plan.get(idx) else { break };
                    let _ = events.send(Event::Started { idx });
                    let run = run_one(t, |line| {
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
            });
        }
    });
}

/// Runs one test: creates its scratch images, boots the VM, judges the
/// result, applies the expectations, removes the images.
pub fn run_one(t: &PlannedTest, on_line: impl FnMut(&str)) -> TestRun {
    if let Decision::Skip(why) = &t.decision {
        return TestRun {
            judged: Judged {
                results: t
                    .checks
                    .iter()
                    .map(|c| SubResult {
                        name: c.clone(),
                        outcome: Outcome::Skip(why.clone()),
                        detail: None,
                    })
                    .collect(),
                infos: vec![],
            },
            log: String::new(),
            stderr: String::new(),
            elapsed: Duration::ZERO,
            end: None,
        };
    }
    if let Err(e) = create_scratch(t) {
        return TestRun {
            judged: Judged {
                results: vec![SubResult {
                    name: t.test.clone(),
                    outcome: Outcome::Error(e),
                    detail: None,
                }],
                infos: vec![],
            },
            log: String::new(),
            stderr: String::new(),
            elapsed: Duration::ZERO,
            end: None,
        };
    }
    let fin = supervise::run(qemu::QEMU.as_ref(), &t.vm.args(), t.timeout, on_line);
    for s in &t.scratch {
        let _ = std::fs::remove_file(&s.path);
    }
    let mut judged = outcome::judge(&t.test, &t.checks, &fin);
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
