//! The VF-token host checks that need more than the VFIO layer: QEMU with
//! the token (`vf-token.qemu`), a runner killed in the middle of a VF run
//! (`vf-token.crash-recovery`), and the end-of-run search for tokens in
//! files (`vf-token.secrets`).

use crate::hostconfig::HostCheckContext;
use crate::lane;
use crate::outcome;
use crate::qemu;
use crate::supervise::{End, Finished};
use crate::vf::{VF_GUEST_TIMEOUT, vf_config, vf_vm, with_vf};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use ukci_protocol::Reporter;
use ukci_vfio::checks::{FunctionState, Lane, pf_on_vfio};
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
    let vm = vf_vm(ctx, config, append);
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
    lane: &mut Lane<'_>,
    ctx: &HostCheckContext,
    r: &mut Reporter<&mut String>,
) {
    r.push("vf-token.qemu");
    let _ = std::fs::create_dir_all(&ctx.scratch);
    let res = with_vf(lane, |vf, token| {
        for (case, cfg) in [
            ("none", token_config(vf, None)),
            ("wrong", token_config(vf, Some(&Token::random()))),
        ] {
            match cfg {
                Err(e) => {
                    r.check(false, case, format_args!("config file: {e}"));
                }
                Ok(file) => {
                    let vm = vf_vm(ctx, &file, "checks=boot.smoke");
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
pub fn no_secret_files(_: &mut Lane<'_>, ctx: &HostCheckContext, r: &mut Reporter<&mut String>) {
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

/// The child side (`cargo xtask crash-point`): a VF run that stops at
/// `point`, says so, and waits to be killed. Its token comes from the parent
/// on stdin, so the parent's end-of-run scan knows it.
pub fn crash_child(point: &str, pf: &str, journal: &Path, guest: &Path, scratch: &Path) -> i32 {
    let reached = || {
        println!("{CRASH_REACHED}");
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    };
    let Ok((mut host, _)) = Host::open(Sysfs::system(), journal, &[pf]) else {
        return 2;
    };
    let mut lane = Lane {
        host: &mut host,
        pf: pf.to_string(),
    };
    if pf_on_vfio(&mut lane, 0).is_err() {
        return 3;
    }
    if point == "after-bind" {
        reached();
    }
    let Ok(mut vfio) = Vfio::new(lane.host.sys()) else {
        return 4;
    };
    let mut line = String::new();
    let Some(token) = std::io::stdin()
        .read_line(&mut line)
        .ok()
        .and_then(|_| Token::parse(&line))
    else {
        return 9;
    };
    let Ok(mut drv) = PfDriver::open(&mut vfio, pf, token) else {
        return 5;
    };
    let Ok(vfs) = drv.bring_up_vfs(lane.host, 1) else {
        return 6;
    };
    if point == "after-vfs" {
        reached();
    }
    let ctx = HostCheckContext {
        pf: Some(pf.into()),
        pf_source: String::new(),
        journal: journal.into(),
        scratch: scratch.into(),
        guest: guest.into(),
    };
    let Ok(file) = drv.token().sealed_config(|t| vf_config(&vfs[0].0, Some(t))) else {
        return 7;
    };
    // A guest that reports, then stays up without a verdict until killed.
    let vm = vf_vm(&ctx, &file, "checks=selftest.no-exit");
    let mut said = false;
    qemu::run(&vm, VF_GUEST_TIMEOUT, |_| {
        if !said {
            said = true;
            println!("{CRASH_REACHED}");
        }
    });
    8
}

/// `vf-token.crash-recovery`: for each point, a runner process does a VF run
/// and is SIGKILLed there; then the next run's journal replay must leave the
/// PF exactly as it was (driver, driver_override, sriov_numvfs).
pub fn crash_recovery(lane: &mut Lane<'_>, ctx: &HostCheckContext, r: &mut Reporter<&mut String>) {
    r.push("vf-token.crash-recovery");
    let _ = std::fs::create_dir_all(&ctx.scratch);
    let exe = lane::runner_binary();
    for point in CRASH_POINTS {
        let before = FunctionState::read(lane.host.sys(), &lane.pf);
        let journal = ctx.scratch.join(format!("crash-{point}.journal"));
        let t = Instant::now();
        let mut child = match Command::new(&exe)
            .args(["crash-point", point, "--pf", &lane.pf, "--journal"])
            .arg(&journal)
            .arg("--guest")
            .arg(&ctx.guest)
            .arg("--scratch")
            .arg(&ctx.scratch)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                r.check(false, point, format_args!("cannot start the runner: {e}"));
                continue;
            }
        };
        // The child's token, made (and remembered) here, handed over a pipe.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = Token::random()
                .send(&mut stdin)
                .and_then(|()| stdin.flush());
        }
        let reached = wait_for_point(&mut child, Duration::from_secs(150));
        // SIGKILL: nothing of the child's own cleanup runs.
        let _ = child.kill();
        let status = child.wait();
        let mid = FunctionState::read(lane.host.sys(), &lane.pf);
        let replay = Host::open(Sysfs::system(), &journal, &[lane.pf.as_str()]);
        let after = FunctionState::read(lane.host.sys(), &lane.pf);
        let (restored, left) = match &replay {
            Ok((_, rep)) => (rep.restored.len(), rep.left.len()),
            Err(_) => (0, 0),
        };
        r.check(
            reached && replay.is_ok() && after == before && left == 0,
            &format!("{point}: restored"),
            format_args!(
                "reached={reached} killed={:?} before=[{before}] at-kill=[{mid}] after=[{after}] \
                 restored_entries={restored} left={left} took_ms={}{}",
                status
                    .ok()
                    .and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
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

fn wait_for_point(child: &mut std::process::Child, limit: Duration) -> bool {
    let Some(out) = child.stdout.take() else {
        return false;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains(CRASH_REACHED) {
                let _ = tx.send(());
                return;
            }
        }
    });
    rx.recv_timeout(limit).is_ok()
}
