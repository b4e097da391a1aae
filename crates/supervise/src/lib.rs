//! Running a child process (QEMU) under supervision: its own process group,
//! a hard timeout, killed and reaped on every path — normal exit, timeout,
//! a panic in the caller (drop guard), Ctrl-C (the interrupt handler kills
//! every live group) and the runner's own death (the kernel's parent-death
//! signal).

pub mod qemu_opts;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How a supervised process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    Exited(i32),
    /// Killed by a signal ukci did not send.
    Signaled(i32),
    /// ukci killed it at the deadline.
    TimedOut(Duration),
    /// It never started.
    SpawnFailed(String),
}

#[derive(Clone, Debug)]
pub struct Finished {
    pub end: End,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// When the [`Ready`] line appeared, if one was asked for and seen.
    pub ready_at: Option<Duration>,
    /// The program and its arguments, quoted as a shell takes them: how to
    /// start the same process again by hand. Empty for a process not started
    /// here.
    pub command: String,
}

/// A line the process must print within `within` of its start (a boot
/// marker); until it has, that is the deadline.
pub struct Ready<'a> {
    pub within: Duration,
    pub line: &'a dyn Fn(&str) -> bool,
}

/// Process groups alive right now, for the interrupt handler.
static LIVE: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Set by Ctrl-C or SIGTERM: no new process is started, running ones are
/// killed, and the run ends with the interrupted status.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// SIGKILL to a group this process spawned; a group that is gone already
/// (ESRCH) is nothing to kill.
fn kill_group(pgid: i32) {
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

/// Kills every supervised process group. Safe to call from a signal-handling
/// thread.
pub fn kill_all() {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    for &pgid in live.iter() {
        kill_group(pgid);
    }
}

/// Installs the Ctrl-C / SIGTERM handler: every VM is killed at once and
/// no new one starts; the run then ends and reports itself interrupted.
pub fn install_interrupt_handler() -> Result<(), String> {
    ctrlc::set_handler(|| {
        let again = INTERRUPTED.swap(true, Ordering::SeqCst);
        kill_all();
        eprintln!("\ninterrupted: every VM was killed");
        if again {
            std::process::exit(130);
        }
    })
    .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))
}

/// Owns a running child: dropping it kills the group and reaps the child.
struct Guard {
    child: Child,
    pgid: i32,
    reaped: bool,
}

impl Guard {
    fn reap(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let st = self.child.wait();
        self.reaped = true;
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pgid);
        st
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.reaped {
            kill_group(self.pgid);
            let _ = self.reap();
        }
    }
}

/// Runs `program args`, calls `on_line` for every stdout line as it arrives,
/// and returns when the process has exited and been reaped, or has been
/// killed at `timeout`.
pub fn run(
    program: &OsStr,
    args: &[OsString],
    timeout: Duration,
    on_line: impl FnMut(&str),
) -> Finished {
    spawn_and_wait(program, args, None, timeout, None, &[], on_line)
}

/// [`run`] in the working directory `dir`.
pub fn run_in(
    dir: &Path,
    program: &OsStr,
    args: &[OsString],
    timeout: Duration,
    on_line: impl FnMut(&str),
) -> Finished {
    spawn_and_wait(program, args, Some(dir), timeout, None, &[], on_line)
}

/// [`run`], with an earlier deadline until the `ready` line has appeared.
pub fn run_with(
    program: &OsStr,
    args: &[OsString],
    timeout: Duration,
    ready: Option<Ready<'_>>,
    on_line: impl FnMut(&str),
) -> Finished {
    spawn_and_wait(program, args, None, timeout, ready, &[], on_line)
}

/// [`run`], with the descriptors `inherit` (close-on-exec here) open in
/// the child under the same numbers — how a secret reaches QEMU without an
/// argv or a file.
pub fn run_inheriting(
    program: &OsStr,
    args: &[OsString],
    inherit: &[RawFd],
    timeout: Duration,
    on_line: impl FnMut(&str),
) -> Finished {
    spawn_and_wait(program, args, None, timeout, None, inherit, on_line)
}

fn spawn_and_wait(
    program: &OsStr,
    args: &[OsString],
    dir: Option<&Path>,
    timeout: Duration,
    ready: Option<Ready<'_>>,
    inherit: &[RawFd],
    on_line: impl FnMut(&str),
) -> Finished {
    let start = Instant::now();
    let mut command_line = shell_words::join(
        std::iter::once(program)
            .chain(args.iter().map(OsString::as_os_str))
            .map(OsStr::to_string_lossy),
    );
    if let Some(d) = dir {
        command_line = format!(
            "cd {} && {command_line}",
            shell_words::quote(&d.to_string_lossy())
        );
    }
    let mut guard = match spawn(command(program, args, inherit, dir), program) {
        Ok(g) => g,
        Err(why) => {
            return Finished {
                end: End::SpawnFailed(why),
                stdout: String::new(),
                stderr: String::new(),
                elapsed: start.elapsed(),
                ready_at: None,
                command: command_line,
            };
        }
    };
    let pipes = Pipes::start(&mut guard.child);
    let mut watch = Watch {
        start,
        timeout,
        ready,
        ready_at: None,
        on_line,
        out: String::new(),
    };
    let mut timed_out = watch.read_until_closed(&pipes.lines);
    // stdout closed: the process is exiting. Wait for it, still bounded.
    let status = wait_bounded(&mut guard, &watch, &mut timed_out);
    let _ = pipes.out_thread.join();
    if timed_out {
        // SIGKILL is delivered at once but a process takes a moment to
        // die: return only when none of the group runs any more (bounded).
        let until = Instant::now() + Duration::from_secs(2);
        while group_alive(guard.pgid) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Anything still queued arrived before the end.
    for line in pipes.lines.try_iter() {
        watch.take(&line);
    }
    let stderr = pipes.err_thread.join().unwrap_or_default();
    let end = match status {
        _ if timed_out => End::TimedOut(watch.limit()),
        Ok(st) => match (st.code(), st.signal()) {
            (Some(c), _) => End::Exited(c),
            (None, Some(s)) => End::Signaled(s),
            _ => End::Exited(-1),
        },
        Err(e) => End::SpawnFailed(format!("waiting for the process failed: {e}")),
    };
    Finished {
        end,
        stdout: watch.out,
        stderr,
        elapsed: start.elapsed(),
        ready_at: watch.ready_at,
        command: command_line,
    }
}

/// `program args` in its own process group, with no stdin, its output
/// piped, killed when this thread dies, and `inherit` open across exec.
fn command(program: &OsStr, args: &[OsString], inherit: &[RawFd], dir: Option<&Path>) -> Command {
    let inherit = inherit.to_vec();
    let mut cmd = Command::new(program);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls prctl
    // and fcntl, which are async-signal-safe, and allocates nothing.
    // PR_SET_PDEATHSIG makes the kernel kill the child if the spawning
    // thread dies (even by SIGKILL), so no VM outlives the runner. Clearing
    // FD_CLOEXEC in the child alone hands it exactly the descriptors asked
    // for; the parent's copies stay close-on-exec for every other child.
    // Each `inherit` descriptor is open in the parent, so in the child too.
    unsafe {
        cmd.pre_exec(move || {
            set_pdeathsig(Signal::SIGKILL)?;
            for &fd in &inherit {
                fcntl(
                    BorrowedFd::borrow_raw(fd),
                    FcntlArg::F_SETFD(FdFlag::empty()),
                )?;
            }
            Ok(())
        });
    }
    cmd
}

/// Starts `cmd` and registers its group for the interrupt handler, unless
/// the run has been interrupted; the error says why nothing runs.
fn spawn(mut cmd: Command, program: &OsStr) -> Result<Guard, String> {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if interrupted() {
        return Err("not started: the run was interrupted".into());
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
    // The child leads its own group: its pid is the group id.
    let pgid = child.id() as i32;
    live.insert(pgid);
    Ok(Guard {
        child,
        pgid,
        reaped: false,
    })
}

/// The child's output, read by two threads: stdout line by line into a
/// channel, stderr whole.
struct Pipes {
    lines: mpsc::Receiver<String>,
    out_thread: std::thread::JoinHandle<()>,
    err_thread: std::thread::JoinHandle<String>,
}

impl Pipes {
    fn start(child: &mut Child) -> Pipes {
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let err_thread = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        });
        let (tx, lines) = mpsc::channel::<String>();
        let out_thread = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            while let Ok(n) = r.read_until(b'\n', &mut buf) {
                if n == 0 {
                    break;
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                buf.clear();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Pipes {
            lines,
            out_thread,
            err_thread,
        }
    }
}

/// The deadline (the ready line's until it appears, then the whole
/// timeout) and the stdout seen so far.
struct Watch<'a, F> {
    start: Instant,
    timeout: Duration,
    ready: Option<Ready<'a>>,
    ready_at: Option<Duration>,
    on_line: F,
    out: String,
}

impl<F: FnMut(&str)> Watch<'_, F> {
    fn limit(&self) -> Duration {
        match &self.ready {
            Some(r) if self.ready_at.is_none() => r.within.min(self.timeout),
            _ => self.timeout,
        }
    }

    fn left(&self) -> Duration {
        (self.start + self.limit()).saturating_duration_since(Instant::now())
    }

    fn take(&mut self, line: &str) {
        let text = line.trim_end_matches(['\r', '\n']);
        if self.ready_at.is_none() && self.ready.as_ref().is_some_and(|r| (r.line)(text)) {
            self.ready_at = Some(self.start.elapsed());
        }
        (self.on_line)(text);
        self.out.push_str(line);
    }

    /// Takes stdout lines until stdout closes (false) or the deadline
    /// passes (true).
    fn read_until_closed(&mut self, lines: &mpsc::Receiver<String>) -> bool {
        loop {
            match lines.recv_timeout(self.left()) {
                Ok(line) => self.take(&line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
                Err(mpsc::RecvTimeoutError::Timeout) => return true,
            }
        }
    }
}

/// Reaps the child, killing its group first once the deadline has passed
/// (and setting `timed_out` when it passes while waiting).
fn wait_bounded<F: FnMut(&str)>(
    guard: &mut Guard,
    watch: &Watch<'_, F>,
    timed_out: &mut bool,
) -> std::io::Result<std::process::ExitStatus> {
    loop {
        if *timed_out {
            kill_group(guard.pgid);
        }
        match guard.child.try_wait() {
            Ok(Some(_)) => return guard.reap(),
            Ok(None) if watch.left().is_zero() => *timed_out = true,
            Ok(None) => wait_for_exit(guard.pgid, watch.left()),
            Err(e) => return Err(e),
        }
    }
}

/// Sleeps until process `pid` (a child not yet reaped) exits or `left`
/// has passed, whichever comes first.
fn wait_for_exit(pid: i32, left: Duration) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // (or -1); nothing else is touched. nix has no wrapper for it.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if fd < 0 {
        // Kernels before 5.3: a short sleep keeps the wait bounded.
        std::thread::sleep(left.min(Duration::from_millis(1)));
        return;
    }
    // SAFETY: `fd` was just returned by pidfd_open and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
    let _ = poll(
        &mut [PollFd::new(fd.as_fd(), PollFlags::POLLIN)],
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
    );
}

/// Whether an executable file `program` is in a folder of `$PATH`: whether
/// starting it by name can work.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Whether this process runs as root (what installing packages and making
/// chroots need).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether any process of group `pgid` is still running (zombies, which
/// only wait to be reaped by their new parent, do not count).
pub fn group_alive(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp ...; comm may contain spaces.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            return false;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.len() > 2 && f[0] != "Z" && f[2] == pgid.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_ms: u64) -> Finished {
        run(
            OsStr::new("sh"),
            &["-c".into(), script.into()],
            Duration::from_millis(timeout_ms),
            |_| {},
        )
    }

    #[test]
    fn exit_codes_and_output_are_kept() {
        let f = sh("echo one; echo two >&2; exit 3", 5000);
        assert_eq!(f.end, End::Exited(3));
        assert_eq!(f.stdout, "one\n");
        assert_eq!(f.stderr, "two\n");
    }

    #[test]
    fn a_hung_process_group_is_killed_at_the_deadline() {
        // The grandchild keeps stdout open: the whole group must die.
        let mut pid = 0i32;
        let f = run(
            OsStr::new("sh"),
            &["-c".into(), "echo $$; sleep 30 & sleep 30".into()],
            Duration::from_millis(300),
            |l| pid = l.parse().unwrap_or(0),
        );
        assert!(matches!(f.end, End::TimedOut(_)), "{:?}", f.end);
        assert!(f.elapsed < Duration::from_secs(5));
        assert!(pid > 0 && !group_alive(pid), "group {pid} survived");
    }

    #[test]
    fn the_ready_line_is_the_deadline_until_it_appears() {
        let marker = |l: &str| l == "ready";
        let ready = || Ready {
            within: Duration::from_millis(300),
            line: &marker,
        };
        let f = run_with(
            OsStr::new("sh"),
            &["-c".into(), "sleep 5".into()],
            Duration::from_secs(10),
            Some(ready()),
            |_| {},
        );
        assert_eq!(f.end, End::TimedOut(Duration::from_millis(300)));
        assert_eq!(f.ready_at, None);
        let f = run_with(
            OsStr::new("sh"),
            &["-c".into(), "echo ready; sleep 0.5; echo done".into()],
            Duration::from_secs(10),
            Some(ready()),
            |_| {},
        );
        assert_eq!(f.end, End::Exited(0));
        assert!(f.ready_at.is_some_and(|t| t < Duration::from_millis(300)));
        assert_eq!(f.stdout, "ready\ndone\n");
    }

    #[test]
    fn death_by_signal_is_reported() {
        let f = sh("kill -SEGV $$", 5000);
        assert_eq!(f.end, End::Signaled(Signal::SIGSEGV as i32));
    }

    #[test]
    fn a_missing_program_is_a_spawn_failure() {
        let f = run(
            OsStr::new("/nonexistent/qemu"),
            &[],
            Duration::from_secs(1),
            |_| {},
        );
        assert!(matches!(f.end, End::SpawnFailed(ref m) if m.contains("/nonexistent/qemu")));
    }

    #[test]
    fn only_the_named_descriptors_reach_the_child() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let mut pass = tempfile_cloexec("passed");
        let keep = tempfile_cloexec("kept back");
        pass.flush().unwrap();
        let (p, k) = (pass.as_raw_fd(), keep.as_raw_fd());
        let script = format!(
            "cat /proc/self/fd/{p}; echo; cat /proc/self/fd/{k} 2>/dev/null || echo closed"
        );
        let f = run_inheriting(
            OsStr::new("sh"),
            &["-c".into(), script.into()],
            &[p],
            Duration::from_secs(5),
            |_| {},
        );
        assert_eq!(f.end, End::Exited(0));
        assert_eq!(f.stdout, "passed\nclosed\n");
    }

    /// A close-on-exec descriptor (as Rust opens every file) of an
    /// unlinked file holding `text`.
    fn tempfile_cloexec(text: &str) -> std::fs::File {
        use std::io::{Seek, Write};
        let path = std::env::temp_dir().join(format!(
            "ukci-supervise-{}-{}",
            std::process::id(),
            text.len()
        ));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.rewind().unwrap();
        f
    }

    #[test]
    fn a_process_can_start_in_a_folder_of_its_own() {
        let dir = std::env::temp_dir().canonicalize().unwrap();
        let f = run_in(&dir, OsStr::new("pwd"), &[], Duration::from_secs(5), |_| {});
        assert_eq!(f.end, End::Exited(0));
        assert_eq!(f.stdout.trim(), dir.to_string_lossy());
        assert!(f.command.starts_with("cd "), "{}", f.command);
    }
}
