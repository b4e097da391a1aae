//! Events: the one interface between executors (exec.rs, kut.rs, lane.rs,
//! vf.rs, hostcheck) and reporters (terminal.rs, junit.rs, html.rs,
//! reproduce.rs). Executors send
//! [`Event`]s; a finished test is a [`TestRun`]. Inside a virtual host the
//! agent sends its finished tests to the runner outside as [`WireRun`] lines.

use crate::envmatch::Environment;
use crate::outcome::{Judged, Outcome, SubResult};
use crate::supervise::End;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use ukci_vfio::token;
use ukci_vhost::accel::Accel;

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
    /// The QEMU command line of the test's VM as a shell takes it (a VF's
    /// token travels in an inherited sealed memfd, `-readconfig
    /// /proc/self/fd/N`, never here); empty when no VM of its own ran.
    pub qemu: String,
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
            qemu: String::new(),
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

/// Prefix of an event line on the agent's stdout.
pub const EVENT: &str = "ukci-event: ";
/// Prefix of the line the agent prints when a test starts (its id follows).
pub const STARTED: &str = "ukci-started: ";
/// The file in the results folder that holds every event line.
pub const EVENTS_FILE: &str = "events.jsonl";

/// One finished test, as the agent reports it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireRun {
    pub test: String,
    pub results: Vec<WireResult>,
    pub infos: Vec<String>,
    pub log: String,
    pub stderr: String,
    pub elapsed_ms: u64,
    /// `uname -r` of the host the agent ran on.
    #[serde(default)]
    pub host_kernel: String,
    /// Digests of every VF token the agent has used so far, for the
    /// runner's end-of-run scan (never the tokens themselves).
    #[serde(default)]
    pub tokens: Vec<String>,
    /// What the agent decided and found for this test: the accelerator
    /// and the KVM it ran on.
    #[serde(default)]
    pub env: Option<WireEnv>,
    /// The QEMU command line the agent started the test's guest with.
    #[serde(default)]
    pub qemu: String,
}

/// The part of a test's environment only the agent knows; the accelerators
/// as their words (`kvm`, `tcg`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireEnv {
    pub accel: String,
    pub accel_reason: String,
    pub kvm_module: Option<String>,
    pub kvm_host: Option<String>,
    pub kvm_log: String,
    pub cpu_model: String,
    /// What the loaded KVM says of its build (`lane::KVM_BUILD_MARKER`):
    /// the patch set of a KVM built by ukci.
    #[serde(default)]
    pub kvm_build: Option<String>,
}

impl WireEnv {
    pub fn of(env: &Environment) -> WireEnv {
        WireEnv {
            accel: env.accel_word().to_string(),
            accel_reason: env.accel_reason.clone(),
            kvm_module: env.kvm_module.clone(),
            kvm_host: env.kvm_host.map(|a| a.word().to_string()),
            kvm_log: env.kvm_log.clone(),
            cpu_model: env.cpu_model.clone(),
            kvm_build: env.kvm_build.clone(),
        }
    }

    /// The planned environment of a virtual-lane test, completed with what
    /// the agent found.
    pub fn apply(self, planned: &Environment) -> Environment {
        Environment {
            accel: Accel::from_word(&self.accel),
            accel_reason: self.accel_reason,
            kvm_module: self.kvm_module,
            kvm_host: self
                .kvm_host
                .as_deref()
                .and_then(Accel::from_word)
                .or(planned.kvm_host),
            kvm_log: self.kvm_log,
            cpu_model: self.cpu_model,
            kvm_build: self.kvm_build,
            ..planned.clone()
        }
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireResult {
    pub name: String,
    pub outcome: String,
    pub message: Option<String>,
    pub detail: Option<String>,
}

impl WireRun {
    pub fn new(test: &str, run: &TestRun) -> Self {
        WireRun {
            test: test.to_string(),
            results: run
                .judged
                .results
                .iter()
                .map(|r| WireResult {
                    name: r.name.clone(),
                    outcome: r.outcome.word().to_string(),
                    message: r.outcome.message().map(str::to_string),
                    detail: r.detail.clone(),
                })
                .collect(),
            infos: run.judged.infos.clone(),
            log: run.log.clone(),
            stderr: run.stderr.clone(),
            elapsed_ms: run.elapsed.as_millis() as u64,
            host_kernel: String::new(),
            tokens: token::remembered().iter().map(|d| d.to_string()).collect(),
            env: run.env.as_ref().map(WireEnv::of),
            qemu: run.qemu.clone(),
        }
    }

    /// The same, naming the kernel it ran on.
    pub fn on_kernel(mut self, release: &str) -> Self {
        self.host_kernel = release.to_string();
        self
    }

    /// The run, after remembering the agent's token digests for the scan.
    pub fn into_run(self) -> TestRun {
        for d in self.tokens.iter().filter_map(|t| token::Digest::parse(t)) {
            token::remember(d);
        }
        let results = self
            .results
            .into_iter()
            .map(|r| {
                let m = r.message.unwrap_or_default();
                let outcome = match r.outcome.as_str() {
                    "pass" => Outcome::Pass,
                    "fail" => Outcome::Fail(m),
                    "skip" => Outcome::Skip(m),
                    "xfail" => Outcome::Xfail(m),
                    "xpass" => Outcome::Xpass(m),
                    "error" => Outcome::Error(m),
                    other => {
                        Outcome::Error(format!("the agent sent an unknown outcome `{other}`: {m}"))
                    }
                };
                SubResult {
                    name: r.name,
                    outcome,
                    detail: r.detail,
                }
            })
            .collect();
        TestRun {
            judged: Judged {
                results,
                infos: self.infos,
            },
            log: self.log,
            stderr: self.stderr,
            elapsed: Duration::from_millis(self.elapsed_ms),
            end: None,
            reruns: vec![],
            env: None,
            qemu: self.qemu,
        }
    }

    /// The console line: [`EVENT`], then the JSON.
    pub fn to_line(&self) -> String {
        format!("{EVENT}{}", self.to_json().unwrap_or_default())
    }

    /// The run in a console line, wherever in the line [`EVENT`] starts.
    pub fn from_line(line: &str) -> Option<WireRun> {
        let json = line.trim_end_matches('\r').split_once(EVENT)?.1;
        WireRun::from_json(json)
    }

    /// One line of [`EVENTS_FILE`].
    pub fn to_json(&self) -> Option<String> {
        serde_json::to_string(self).ok()
    }

    pub fn from_json(line: &str) -> Option<WireRun> {
        serde_json::from_str(line).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_a_console_line() {
        let run = TestRun {
            judged: Judged {
                results: vec![
                    SubResult {
                        name: "vfio.env: IOMMU groups present".into(),
                        outcome: Outcome::Pass,
                        detail: Some("iommu_groups=7".into()),
                    },
                    SubResult {
                        name: "x".into(),
                        outcome: Outcome::Skip("why (nested)".into()),
                        detail: None,
                    },
                ],
                infos: vec!["i".into()],
            },
            log: "PASS: a\r\n".into(),
            stderr: String::new(),
            elapsed: Duration::from_millis(12),
            end: None,
            reruns: vec![],
            env: None,
            qemu: "qemu-system-x86_64 -readconfig /proc/self/fd/5".into(),
        };
        let line = WireRun::new("vhost-smoke.env", &run).to_line();
        assert!(!line.contains('\n'));
        let noisy = format!("[   3.1] random: crng init done\r{line}\r");
        let back = WireRun::from_line(&noisy).unwrap().into_run();
        assert_eq!(back.judged, run.judged);
        assert_eq!(back.log, run.log);
        assert_eq!(back.qemu, run.qemu);
        assert!(WireRun::from_line("ukci-event: {\"test\": trunc").is_none());
    }
}
