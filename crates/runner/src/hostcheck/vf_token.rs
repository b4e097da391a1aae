//! The VF-token host checks that need more than the VFIO layer: QEMU with
//! the token (`vf-token.qemu`), a runner killed in the middle of a VF run
//! (`vf-token.crash-recovery`), and the end-of-run search for tokens in
//! files (`vf-token.secrets`).

use crate::hostconfig::HostCheckContext;
use crate::lane;
use crate::outcome;
use crate::qemu;
use crate::supervise::{self, End, Finished};
use crate::vf::{VF_GUEST_TIMEOUT, vf_config, vf_vm, with_vf};
use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use ukci_protocol::Reporter;
use ukci_vfio::checks::{FunctionState, PfUnderTest, pf_on_vfio};
use ukci_vfio::nvme_pf::PfDriver;
use ukci_vfio::token::{self, SecretFile};
use ukci_vfio::vfio::Vfio;
use ukci_vfio::{Host, Sysfs, Token};

/// Whether the token is in any process's argv right now.
fn token_in_any_argv(token: &Token) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let argv = std::fs::read(e.path().join("cmdline")).ok()?;
        token.appears_in(&argv).then_some(pid)
    })
}

/// Runs a VF guest and, while it runs, looks for the token in every argv.
fn run_vf_guest(
    ctx: &HostCheckContext,
    config: &SecretFile,
    append: &str,
    token: &Token,
    on_line: &mut dyn FnMut(&str),
) -> (Finished, Option<u32>) {
    let vm = vf_vm(&ctx.guest, config, append);
    let mut leak = None;
    let mut scanned = false;
    let fin = qemu::run(&vm, VF_GUEST_TIMEOUT, |l| {
        if !scanned {
            scanned = true;
            leak = token_in_any_argv(token);
        }
        on_line(l);
    });
    (fin, leak)
}

/// `vf-token.qemu`: QEMU honours the token.
pub fn qemu_honours_token(
    target: &mut PfUnderTest<'_>,
    ctx: &HostCheckContext,
    r: &mut Reporter<&mut String>,
) {
    r.push("vf-token.qemu");
    let _ = std::fs::create_dir_all(&ctx.scratch);
    let res = with_vf(target, |vf, token| {
        for (case, cfg) in [
            ("none", token_config(vf, None)),
            ("wrong", token_config(vf, Some(&Token::random()))),
        ] {
            match cfg {
                Err(e) => {
                    r.check(false, case, format_args!("config file: {e}"));
                }
                Ok(file) => {
                    let vm = vf_vm(&ctx.guest, &file, "checks=boot.smoke");
                    let fin = qemu::run(&vm, VF_GUEST_TIMEOUT, |_| {});
                    let msg = fin
                        .stderr
                        .lines()
                        .find(|l| l.contains("vfio"))
                        .unwrap_or("")
                        .trim();
                    let refused = fin.end == End::Exited(1)
                        && fin.stdout.trim().is_empty()
                        && msg.contains("Permission denied");
                    r.check(
                        refused,
                        &format!("{case}: refused"),
                        format_args!("end={:?} qemu=\"{msg}\"", fin.end),
                    );
                }
            }
        }
        match token_config(vf, Some(token)) {
            Err(e) => {
                r.check(false, "right: started", format_args!("config file: {e}"));
            }
            Ok(file) => {
                let (fin, leak) =
                    run_vf_guest(ctx, &file, "checks=nvme.identify", token, &mut |_| {});
                let j = outcome::judge("right", &["nvme.identify".to_string()], &fin);
                let ok = j.results.iter().all(|x| x.outcome.as_expected());
                let cntlid = j
                    .infos
                    .iter()
                    .find(|i| i.contains("cntlid") || i.contains("CNTLID"))
                    .cloned()
                    .unwrap_or_default();
                r.check(
                    ok,
                    "right: started",
                    format_args!(
                        "end={:?} vf={vf} results={} identify=\"{cntlid}\"",
                        fin.end,
                        j.results.len()
                    ),
                );
                r.check(
                    leak.is_none(),
                    "token absent from every argv",
                    format_args!(
                        "{}",
                        leak.map_or("no process had it".into(), |p| format!("pid {p} had it"))
                    ),
                );
            }
        }
        let root = run_folder(ctx);
        let files = token::files_holding_tokens(root, &[token.digest()]);
        r.check(
            files.is_empty(),
            "token absent from every file written",
            format_args!("searched={} found={files:?}", root.display()),
        );
    });
    if let Err(e) = res {
        r.check(false, "setup", format_args!("{e}"));
    }
    r.pop();
}

fn token_config(vf: &str, token: Option<&Token>) -> std::io::Result<SecretFile> {
    match token {
        Some(t) => t.sealed_config(|text| vf_config(vf, Some(text))),
        None => SecretFile::new(vf_config(vf, None).as_bytes()),
    }
}

/// Everything this run wrote on this host: the folder holding its scratch
/// folder (in a virtual host, the agent's whole results folder).
fn run_folder(ctx: &HostCheckContext) -> &Path {
    ctx.scratch.parent().unwrap_or(&ctx.scratch)
}

/// `vf-token.secrets`: no file the run has written so far holds any token
/// the run used — its own, the crash-recovery children's, every VF guest's.
pub fn no_secret_files(
    _: &mut PfUnderTest<'_>,
    ctx: &HostCheckContext,
    r: &mut Reporter<&mut String>,
) {
    let tokens = token::remembered();
    let root = run_folder(ctx);
    let files = token::files_holding_tokens(root, &tokens);
    r.check(
        files.is_empty(),
        "vf-token.secrets: no file holds a token",
        format_args!(
            "tokens={} searched={} found={files:?}",
            tokens.len(),
            root.display()
        ),
    );
}

/// The points of a VF run at which `vf-token.crash-recovery` kills the runner.
pub const CRASH_POINTS: &[&str] = &["after-bind", "after-vfs", "during-guest"];
/// What the crashing child prints when it has reached its point.
pub const CRASH_REACHED: &str = "ukci-crash-point: reached";
/// How long a crashing child may take to reach its point.
const CRASH_POINT_LIMIT: Duration = Duration::from_secs(150);

/// Where a crashing child stops: it says so, then dies by SIGKILL, so that
/// nothing of its own cleanup runs (as when the OOM killer or a power cut
/// ends a run).
fn die_here() -> ! {
    println!("{CRASH_REACHED}");
    let _ = std::io::stdout().flush();
    // SAFETY: kill only sends a signal; it names this process itself, which
    // SIGKILL ends before the call returns.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    unreachable!("SIGKILL ends the process")
}

/// The child side (`ukci crash-point`): a VF run that stops at
/// `point`, says so, and dies there by SIGKILL. Its token comes from the
/// parent in `token_file` (an inherited sealed memfd), so the parent's
/// end-of-run scan knows it.
pub fn crash_child(point: &str, pf: &str, journal: &Path, guest: &Path, token_file: &Path) -> i32 {
    let Ok((mut host, _)) = Host::open(Sysfs::system(), journal, &[pf]) else {
        return 2;
    };
    let mut target = PfUnderTest {
        host: &mut host,
        pf: pf.to_string(),
    };
    if pf_on_vfio(&mut target, 0).is_err() {
        return 3;
    }
    if point == "after-bind" {
        die_here();
    }
    let Ok(mut vfio) = Vfio::new(target.host.sys()) else {
        return 4;
    };
    let Some(token) = std::fs::read_to_string(token_file)
        .ok()
        .and_then(|line| Token::parse(&line))
    else {
        return 9;
    };
    let Ok(mut drv) = PfDriver::open(&mut vfio, pf, token) else {
        return 5;
    };
    let Ok(vfs) = drv.bring_up_vfs(target.host, 1) else {
        return 6;
    };
    if point == "after-vfs" {
        die_here();
    }
    let Ok(file) = drv.token().sealed_config(|t| vf_config(&vfs[0].0, Some(t))) else {
        return 7;
    };
    // A guest that reports, then stays up without a verdict: the child
    // dies at its first line, and QEMU with it (the parent-death signal).
    let vm = vf_vm(guest, &file, "checks=selftest.no-exit");
    qemu::run(&vm, VF_GUEST_TIMEOUT, |_| die_here());
    8
}

/// `vf-token.crash-recovery`: for each point, a runner process does a VF run
/// and is SIGKILLed there; then the next run's journal replay must leave the
/// PF exactly as it was (driver, driver_override, sriov_numvfs). The child
/// runs under supervision like every process ukci starts.
pub fn crash_recovery(
    target: &mut PfUnderTest<'_>,
    ctx: &HostCheckContext,
    r: &mut Reporter<&mut String>,
) {
    r.push("vf-token.crash-recovery");
    let _ = std::fs::create_dir_all(&ctx.scratch);
    let exe = lane::runner_binary();
    for point in CRASH_POINTS {
        let before = FunctionState::read(target.host.sys(), &target.pf);
        let journal = ctx.scratch.join(format!("crash-{point}.journal"));
        let t = Instant::now();
        // The child's token, made (and remembered) here, handed over in a
        // sealed memfd the child inherits.
        let token_file = match Token::random().sealed_config(|t| format!("{t}\n")) {
            Ok(f) => f,
            Err(e) => {
                r.check(false, point, format_args!("token file: {e}"));
                continue;
            }
        };
        let args: Vec<OsString> = [
            OsString::from("crash-point"),
            (*point).into(),
            "--pf".into(),
            target.pf.clone().into(),
            "--journal".into(),
            journal.clone().into(),
            "--guest".into(),
            ctx.guest.clone().into(),
            "--token-file".into(),
            token::proc_fd_path(token_file.raw_fd()).into(),
        ]
        .into();
        let fin = supervise::run_inheriting(
            exe.as_os_str(),
            &args,
            &[token_file.raw_fd()],
            CRASH_POINT_LIMIT,
            |_| {},
        );
        let reached = fin.stdout.lines().any(|l| l.contains(CRASH_REACHED));
        // The child kills itself at its point; one that never gets there is
        // killed at the limit. Either way nothing of its cleanup runs.
        let killed = match fin.end {
            End::Signaled(s) => Some(s),
            End::TimedOut(_) => Some(libc::SIGKILL),
            _ => None,
        };
        let mid = FunctionState::read(target.host.sys(), &target.pf);
        let replay = Host::open(Sysfs::system(), &journal, &[target.pf.as_str()]);
        let after = FunctionState::read(target.host.sys(), &target.pf);
        let (restored, left) = match &replay {
            Ok((_, rep)) => (rep.restored.len(), rep.left.len()),
            Err(_) => (0, 0),
        };
        r.check(
            reached && replay.is_ok() && after == before && left == 0,
            &format!("{point}: restored"),
            format_args!(
                "reached={reached} killed={killed:?} before=[{before}] at-kill=[{mid}] after=[{after}] \
                 restored_entries={restored} left={left} took_ms={}{}",
                t.elapsed().as_millis(),
                replay
                    .err()
                    .map(|e| format!(" replay_error=\"{e}\""))
                    .unwrap_or_default()
            ),
        );
    }
    r.pop();
}
