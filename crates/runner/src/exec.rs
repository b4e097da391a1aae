//! Execution: runs the plan's VMs, `jobs` at a time, and emits events.
//! Executors never format output; reporters consume the events.

use crate::envmatch::Environment;
use crate::hostcheck::{self, HostContext};
use crate::lane::{self, LaneContext};
use crate::outcome::{self, Expect, Judged, Outcome, SubResult};
use crate::plan::{Decision, PlannedTest};
use crate::qemu;
use crate::qemu::VmDevice;
use crate::supervise::{End, Finished};
use crate::vf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;
use ukci_protocol::line::{self, Line};

#[derive(Clone, Debug)]
pub struct TestRun {
    pub judged: Judged,
    /// The serial log.
    pub log: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// How QEMU ended; `None` for a test that did not run.
    pub end: Option<End>,
    /// Earlier runs of this test that gave no result, each as why (a wedged
    /// virtual host); this run is the one that counts.
    pub reruns: Vec<String>,
    /// The environment the test ran in where it was decided while running
    /// (inside a virtual host: its accelerator, KVM module, what KVM runs
    /// on); otherwise the plan's.
    pub env: Option<Environment>,
}

impl TestRun {
    /// The serial log, followed by what QEMU wrote to stderr, if anything:
    /// what a report keeps of the VM.
    pub fn vm_log(&self) -> String {
        let mut log = self.log.clone();
        if !self.stderr.trim().is_empty() {
            log.push_str("\n--- QEMU stderr ---\n");
            log.push_str(&self.stderr);
        }
        log
    }

    /// A run that booted nothing: only these results.
    pub fn without_vm(results: Vec<SubResult>) -> Self {
        TestRun {
            judged: Judged {
                results,
                infos: vec![],
            },
            log: String::new(),
            stderr: String::new(),
            elapsed: Duration::ZERO,
            end: None,
            reruns: vec![],
            env: None,
        }
    }
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

/// A unit of work for one worker: a test on this host, or one boot of a
/// virtual host with every test that runs inside it.
#[derive(Debug, PartialEq, Eq)]
pub enum Work {
    Local(usize),
    /// Tests that use the host's PF: one after the other, never two at once.
    Serial(Vec<usize>),
    Boot(Vec<usize>),
}

/// Whether a test uses the host's PF (host checks, a VF for its guest).
fn uses_pf(t: &PlannedTest) -> bool {
    t.host_checks || t.vm.devices.contains(&VmDevice::NvmeVf)
}

/// Groups the plan into work. Virtual boots come first: they take longest.
pub fn work_items(plan: &[PlannedTest]) -> Vec<Work> {
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
            (None, Decision::Run) if uses_pf(t) => serial.push(i),
            _ => local.push(Work::Local(i)),
        }
    }
    let serial = (!serial.is_empty()).then_some(Work::Serial(serial));
    boots
        .into_iter()
        .map(Work::Boot)
        .chain(serial)
        .chain(local)
        .collect()
}

/// Runs every planned test and sends its events; returns when all are done.
pub fn execute(plan: &[PlannedTest], jobs: usize, lane: &LaneContext, events: Sender<Event>) {
    let work = work_items(plan);
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
    let run = run_one(&plan[idx], &lane.host, |line| {
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
pub fn run_one(t: &PlannedTest, host: &HostContext, mut on_line: impl FnMut(&str)) -> TestRun {
    let no_pf = (host.pf.is_none() && t.vm.devices.contains(&VmDevice::NvmeVf))
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
    let kut = t
        .kut
        .as_ref()
        .map(|k| crate::kut::run(k, &t.vm.accel, t.vm.smp, t.timeout, &mut on_line));
    let fin = if let Some((_, fin)) = &kut {
        fin.clone()
    } else if t.host_checks {
        host_checks(t, host)
    } else if t.vm.devices.contains(&VmDevice::NvmeVf) {
        vf::run_guest_with_vf(host, &t.vm, t.timeout, &mut on_line)
    } else {
        qemu::run(&t.vm, t.timeout, on_line)
    };
    for s in &t.scratch {
        let _ = std::fs::remove_file(&s.path);
    }
    let mut judged = match kut {
        Some((judged, _)) => judged,
        None => outcome::judge(&t.test, &t.checks, &fin),
    };
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
    }
}

/// Host checks run here, in the runner; their output reads like a guest's.
fn host_checks(t: &PlannedTest, host: &HostContext) -> Finished {
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
