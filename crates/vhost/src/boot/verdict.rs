//! What a finished boot means, from its serial log and how QEMU ended.

use std::fmt;
use std::time::Duration;

use crate::marker;

/// How QEMU ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Exited(ExitKind),
    /// Killed by the supervisor at the deadline.
    TimedOut {
        after: Duration,
        agent_started: bool,
    },
}

/// QEMU's exit, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitKind {
    Code(i32),
    Signal(i32),
}

/// Why a boot did not give an agent result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    TimedOut {
        after: Duration,
        agent_started: bool,
    },
    Panic(String),
    /// The hung-task watchdog fired: a task (named here, as the kernel put
    /// it) slept uninterruptibly for [`HUNG_TASK_SECS`].
    Wedged {
        task: String,
        /// RCU also reported a timer that never fired: the emulated CPU lost
        /// a timer interrupt, so the wedge is the emulation's, not the kernel's.
        timer_lost: bool,
    },
    InitError(String),
    QemuFailed(ExitKind),
    NeverStartedAgent,
    AgentVanished,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::TimedOut {
                after,
                agent_started: false,
            } => {
                write!(
                    f,
                    "hung: no agent-ready marker after {:.1} s",
                    after.as_secs_f64()
                )
            }
            Failure::TimedOut {
                after,
                agent_started: true,
            } => {
                write!(
                    f,
                    "the agent did not finish within {:.1} s",
                    after.as_secs_f64()
                )
            }
            Failure::Panic(line) => write!(f, "kernel panic: {line}"),
            Failure::Wedged { task, timer_lost } => {
                write!(f, "the host kernel wedged: {task}")?;
                if *timer_lost {
                    write!(
                        f,
                        " (RCU: a timer wakeup never happened: the emulated CPU lost a timer interrupt)"
                    )?;
                }
                Ok(())
            }
            Failure::InitError(what) => write!(f, "/init failed: {what}"),
            Failure::QemuFailed(ExitKind::Code(c)) => write!(f, "QEMU exited with status {c}"),
            Failure::QemuFailed(ExitKind::Signal(s)) => write!(f, "QEMU died from signal {s}"),
            Failure::NeverStartedAgent => {
                write!(f, "the host powered off without starting the agent")
            }
            Failure::AgentVanished => {
                write!(
                    f,
                    "the agent started but the host went down without an agent-exit marker"
                )
            }
        }
    }
}

impl Failure {
    /// The emulated host broke down by itself: its kernel wedged, or QEMU
    /// crashed (a signal it raised, not one ukci sent). Such a failure says
    /// nothing about the tests it was running: running them again on a
    /// fresh host is sound.
    pub fn is_breakdown(&self) -> bool {
        const CRASHES: [i32; 5] = [
            libc::SIGABRT,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
        ];
        match self {
            Failure::Wedged { .. } => true,
            Failure::QemuFailed(ExitKind::Signal(s)) => CRASHES.contains(s),
            _ => false,
        }
    }
}

/// What a finished boot means, from its serial log and QEMU's ending. The
/// agent's own exit status is a result (`Ok`), not a failure of the host.
pub fn agent_status(serial: &str, ending: &Ending) -> Result<i32, Failure> {
    let lines = || serial.lines().map(|l| l.trim_end_matches('\r'));
    let hung_task = lines().find_map(|l| {
        let at = l.find("INFO: task ")?;
        l[at..]
            .contains(" blocked for more than ")
            .then(|| l[at + "INFO: ".len()..].trim_end_matches('.').to_owned())
    });
    let watchdog_fired = lines().any(|l| l.contains("Kernel panic - not syncing: hung_task"));
    let agent_timed_out = matches!(
        ending,
        Ending::TimedOut {
            agent_started: true,
            ..
        }
    );
    if let Some(task) = hung_task.filter(|_| watchdog_fired || agent_timed_out) {
        let timer_lost = lines().any(|l| l.contains("timer wakeup didn't happen"));
        return Err(Failure::Wedged { task, timer_lost });
    }
    if let Some(panic) = lines().find(|l| l.contains("Kernel panic - not syncing")) {
        let at = panic.find("Kernel panic").unwrap_or(0);
        return Err(Failure::Panic(panic[at..].to_owned()));
    }
    if let Ending::TimedOut {
        after,
        agent_started,
    } = ending
    {
        return Err(Failure::TimedOut {
            after: *after,
            agent_started: *agent_started,
        });
    }
    if let Some(what) = lines().find_map(|l| l.strip_prefix(marker::INIT_ERROR)) {
        return Err(Failure::InitError(what.to_owned()));
    }
    let exit_status = lines().find_map(|l| {
        let rest = l.strip_prefix(marker::AGENT_EXIT)?;
        rest.split_whitespace().next()?.parse::<i32>().ok()
    });
    match ending {
        Ending::Exited(ExitKind::Code(0)) => {}
        Ending::Exited(other) => return Err(Failure::QemuFailed(other.clone())),
        Ending::TimedOut { .. } => unreachable!("handled above"),
    }
    let started = lines().any(|l| l.starts_with(marker::AGENT_READY));
    match (started, exit_status) {
        (_, Some(status)) => Ok(status),
        (true, None) => Err(Failure::AgentVanished),
        (false, None) => Err(Failure::NeverStartedAgent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "SeaBIOS\r\nUKCI-VHOST: init kernel=6.12\r\nUKCI-VHOST: agent-ready uptime=3.1\r\nhello\r\nUKCI-VHOST: agent-exit status=3 uptime=4.0\r\n";

    #[test]
    fn the_agent_status_is_read_from_the_serial_log() {
        assert_eq!(
            agent_status(GOOD, &Ending::Exited(ExitKind::Code(0))),
            Ok(3)
        );
    }

    /// Lines a real wedged debian:6.1 host printed (abridged), and the panic
    /// its watchdog adds.
    const WEDGED: &str = "UKCI-VHOST: agent-ready uptime=3.12\n\
        ukci-event: {}\n\
        [  442.673215] rcu: \tPossible timer handling issue on cpu=0 timer-softirq=408\n\
        [  484.535724] INFO: task xtask:148 blocked for more than 362 seconds.\n\
        [  484.536265]       Not tainted 6.1.0-56-amd64 #1 Debian 6.1.192-2\n\
        [  505.692684] rcu: rcu_preempt kthread timer wakeup didn't happen for 15754 jiffies! g1109\n";

    #[test]
    fn a_hung_task_or_a_crashed_qemu_is_a_breakdown() {
        let panicked =
            format!("{WEDGED}[  485.1] Kernel panic - not syncing: hung_task: blocked tasks\n");
        let exited = Ending::Exited(ExitKind::Code(0));
        let f = agent_status(&panicked, &exited).unwrap_err();
        assert_eq!(
            f,
            Failure::Wedged {
                task: "task xtask:148 blocked for more than 362 seconds".into(),
                timer_lost: true,
            }
        );
        assert!(f.is_breakdown());
        assert!(f.to_string().contains("lost a timer interrupt"), "{f}");
        // The watchdog's report alone, then the boot timeout: the same wedge.
        let timed_out = Ending::TimedOut {
            after: Duration::from_secs(900),
            agent_started: true,
        };
        assert!(agent_status(WEDGED, &timed_out).unwrap_err().is_breakdown());
        // Nor is QEMU crashing by itself.
        let crashed = Ending::Exited(ExitKind::Signal(libc::SIGABRT));
        assert!(agent_status(GOOD, &crashed).unwrap_err().is_breakdown());
        // A plain panic or timeout, or QEMU killed from outside, is not.
        let killed = Ending::Exited(ExitKind::Signal(libc::SIGKILL));
        assert!(!agent_status(GOOD, &killed).unwrap_err().is_breakdown());
        let panic =
            "UKCI-VHOST: agent-ready\nKernel panic - not syncing: Attempted to kill init!\n";
        assert!(!agent_status(panic, &exited).unwrap_err().is_breakdown());
        assert!(
            !agent_status("UKCI-VHOST: agent-ready\n", &timed_out)
                .unwrap_err()
                .is_breakdown()
        );
    }

    #[test]
    fn a_broken_host_never_gives_an_agent_status() {
        let exited = Ending::Exited(ExitKind::Code(0));
        let panic = "UKCI-VHOST: agent-ready\n[    3.2] Kernel panic - not syncing: Attempted to kill init!\n";
        assert_eq!(
            agent_status(panic, &exited),
            Err(Failure::Panic(
                "Kernel panic - not syncing: Attempted to kill init!".into()
            ))
        );
        assert_eq!(
            agent_status("UKCI-VHOST: init-error insmod 9p failed\n", &exited),
            Err(Failure::InitError("insmod 9p failed".into()))
        );
        assert_eq!(
            agent_status("booting\n", &exited),
            Err(Failure::NeverStartedAgent)
        );
        assert_eq!(
            agent_status("UKCI-VHOST: agent-ready\n", &exited),
            Err(Failure::AgentVanished)
        );
        let hung = Ending::TimedOut {
            after: Duration::from_secs(90),
            agent_started: false,
        };
        assert!(matches!(
            agent_status(GOOD, &hung),
            Err(Failure::TimedOut {
                agent_started: false,
                ..
            })
        ));
        assert_eq!(
            agent_status("", &Ending::Exited(ExitKind::Code(1))),
            Err(Failure::QemuFailed(ExitKind::Code(1)))
        );
        assert_eq!(
            agent_status(GOOD, &Ending::Exited(ExitKind::Signal(9))),
            Err(Failure::QemuFailed(ExitKind::Signal(9)))
        );
    }
}
