//! One boot: the folders prepared, QEMU supervised, the verdict taken.

use std::borrow::Cow;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ukci_supervise::{self as supervise, End, Finished};

use super::{
    AGENT_CONF, AGENT_EXIT_FILE, BootConfig, Ending, ExitKind, Failure, agent_conf, agent_status,
    qemu_args,
};
use crate::marker;

/// A successful boot.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// QEMU start to the agent-ready marker.
    pub agent_ready: Duration,
    /// QEMU start to QEMU exit.
    pub total: Duration,
    /// The agent's exit status (0 = it succeeded).
    pub agent_status: i32,
    pub serial_log: PathBuf,
    /// Whatever QEMU wrote to stderr (warnings), for the artifacts.
    pub qemu_stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("virtual host `{name}`: {what}")]
    Config { name: String, what: String },
    #[error("virtual host `{name}`: {path}: {source}")]
    Io {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{0}")]
    Failed(Box<BootFailure>),
}

/// A boot that ended without an agent result, with what to look at.
#[derive(Debug)]
pub struct BootFailure {
    pub name: String,
    pub failure: Failure,
    /// The whole serial console, kept as an artifact.
    pub serial_log: PathBuf,
    /// The last serial lines, indented, for the message.
    pub tail: String,
    /// QEMU's own stderr lines, if any, indented.
    pub stderr: String,
}

impl fmt::Display for BootFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "virtual host `{}`: {}\n  serial log: {}\n  last serial lines:\n{}",
            self.name,
            self.failure,
            self.serial_log.display(),
            self.tail
        )?;
        if !self.stderr.is_empty() {
            write!(f, "  QEMU stderr:\n{}", self.stderr)?;
        }
        Ok(())
    }
}

/// The last `n` lines of a log, indented for an error message.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..]
        .iter()
        .map(|l| format!("    | {}\n", l.trim_end_matches('\r')))
        .collect()
}

/// Prepares the scratch and results folders, boots the virtual host, waits
/// for it to power off (or kills it at a deadline), and judges the serial log.
/// `on_line` sees each serial line as it arrives, with the time since start.
pub fn run(
    cfg: &BootConfig,
    on_line: impl FnMut(Duration, &str) + Send,
) -> Result<BootReport, BootError> {
    check(cfg)?;
    let cfg = unpacked_kernel(cfg)?;
    let log = prepare_folders(&cfg)?;
    let fin = supervise_qemu(&cfg, log, on_line);
    report(&cfg, fin)
}

fn config_err(cfg: &BootConfig, what: String) -> BootError {
    BootError::Config {
        name: cfg.name.clone(),
        what,
    }
}

fn io_err(cfg: &BootConfig, path: &Path) -> impl FnOnce(io::Error) -> BootError {
    let name = cfg.name.clone();
    let path = path.to_owned();
    move |source| BootError::Io { name, path, source }
}

/// The topology within QEMU's limits, the kernel and initramfs present.
fn check(cfg: &BootConfig) -> Result<(), BootError> {
    cfg.topology.validate().map_err(|w| config_err(cfg, w))?;
    for (what, p) in [
        ("kernel image", &cfg.vmlinuz),
        ("initramfs", &cfg.initramfs),
    ] {
        if !p.is_file() {
            return Err(config_err(
                cfg,
                format!("{what} {} does not exist", p.display()),
            ));
        }
    }
    Ok(())
}

/// `cfg` with the kernel's cached PVH ELF in place of the bzImage, when a
/// kernel cache is set.
fn unpacked_kernel(cfg: &BootConfig) -> Result<Cow<'_, BootConfig>, BootError> {
    let Some(dir) = &cfg.kernel_cache else {
        return Ok(Cow::Borrowed(cfg));
    };
    let vmlinuz = crate::vmlinux::for_boot(dir, &cfg.vmlinuz).map_err(io_err(cfg, &cfg.vmlinuz))?;
    Ok(Cow::Owned(BootConfig {
        vmlinuz,
        ..cfg.clone()
    }))
}

/// The results folder with the agent settings and no exit status of an
/// earlier boot, fresh namespace images, and the serial log opened.
fn prepare_folders(cfg: &BootConfig) -> Result<fs::File, BootError> {
    fs::create_dir_all(&cfg.results_dir).map_err(io_err(cfg, &cfg.results_dir))?;
    fs::create_dir_all(&cfg.scratch_dir).map_err(io_err(cfg, &cfg.scratch_dir))?;
    let results_host = fs::canonicalize(&cfg.results_dir).map_err(io_err(cfg, &cfg.results_dir))?;
    let conf = agent_conf(&cfg.agent, &results_host).map_err(|w| config_err(cfg, w))?;
    let conf_path = results_host.join(AGENT_CONF);
    fs::write(&conf_path, conf).map_err(io_err(cfg, &conf_path))?;
    let exit_path = results_host.join(AGENT_EXIT_FILE);
    match fs::remove_file(&exit_path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(cfg, &exit_path)(e)),
        _ => {}
    }
    for n in 1..=cfg.topology.namespaces {
        let img = cfg.namespace_image(n);
        let f = fs::File::create(&img).map_err(io_err(cfg, &img))?;
        f.set_len(cfg.topology.namespace_bytes)
            .map_err(io_err(cfg, &img))?;
    }
    if let Some(dir) = cfg.serial_log.parent() {
        fs::create_dir_all(dir).map_err(io_err(cfg, dir))?;
    }
    // Unbuffered, one write per line: the log is complete up to the last
    // line even when the runner is killed.
    fs::File::create(&cfg.serial_log).map_err(io_err(cfg, &cfg.serial_log))
}

/// QEMU under the shared supervisor: own process group, killed and reaped
/// on every path, dies with the runner, and Ctrl-C reaches it. Each serial
/// line goes to `log`, then to `on_line`.
fn supervise_qemu(
    cfg: &BootConfig,
    mut log: fs::File,
    mut on_line: impl FnMut(Duration, &str) + Send,
) -> Finished {
    let start = Instant::now();
    let is_ready = |l: &str| l.starts_with(marker::AGENT_READY);
    supervise::run_with(
        cfg.qemu.as_os_str(),
        &qemu_args(cfg),
        cfg.timeout,
        Some(supervise::Ready {
            within: cfg.ready_timeout,
            line: &is_ready,
        }),
        |line| {
            let _ = log.write_all(format!("{line}\n").as_bytes());
            on_line(start.elapsed(), line);
        },
    )
}

/// How QEMU ended and what its serial log says, as the boot's result.
fn report(cfg: &BootConfig, fin: Finished) -> Result<BootReport, BootError> {
    let total = fin.elapsed;
    let ready = fin.ready_at;
    let ending = match fin.end {
        End::Exited(c) => Ending::Exited(ExitKind::Code(c)),
        End::Signaled(s) => Ending::Exited(ExitKind::Signal(s)),
        End::TimedOut(_) => Ending::TimedOut {
            after: total,
            agent_started: ready.is_some(),
        },
        End::SpawnFailed(e) => {
            return Err(config_err(
                cfg,
                format!("{e} (install qemu-system-x86 10.0 from bookworm-backports)"),
            ));
        }
    };
    let serial: String = fin
        .stdout
        .lines()
        .flat_map(|l| [l.trim_end_matches('\r'), "\n"])
        .collect();
    let stderr = fin.stderr;
    match agent_status(&serial, &ending) {
        Ok(agent_status) => Ok(BootReport {
            agent_ready: ready.unwrap_or(total),
            total,
            agent_status,
            serial_log: cfg.serial_log.clone(),
            qemu_stderr: stderr,
        }),
        Err(failure) => Err(BootError::Failed(Box::new(BootFailure {
            name: cfg.name.clone(),
            failure,
            serial_log: cfg.serial_log.clone(),
            tail: tail(&serial, 25),
            stderr: if stderr.trim().is_empty() {
                String::new()
            } else {
                tail(&stderr, 10)
            },
        }))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Agent;
    use super::*;

    #[test]
    fn failure_messages_carry_the_log_tail() {
        let e = BootError::Failed(Box::new(BootFailure {
            name: "debian:6.1".into(),
            failure: Failure::NeverStartedAgent,
            serial_log: "/r/serial.log".into(),
            tail: tail("a\nb\nc\n", 2),
            stderr: tail("qemu-system-x86_64: -device nvme: bad\n", 10),
        }));
        let msg = e.to_string();
        assert!(
            msg.contains("debian:6.1") && msg.contains("/r/serial.log"),
            "{msg}"
        );
        assert!(
            msg.contains("    | b\n    | c\n") && !msg.contains("| a"),
            "{msg}"
        );
    }

    #[test]
    fn supervisor_kills_a_hung_qemu_at_the_deadline() {
        // A stand-in for QEMU that never exits and prints nothing: the
        // supervisor must stop it at ready_timeout and call it hung.
        let dir = std::env::temp_dir().join(format!("ukci-vhost-hang-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("fake-qemu");
        fs::write(&fake, "#!/bin/sh\necho 'SeaBIOS (fake)'\nexec sleep 600\n").unwrap();
        fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd"));
        fs::write(&kernel, b"").unwrap();
        fs::write(&initrd, b"").unwrap();
        let mut c = BootConfig::new(
            "fake",
            &kernel,
            &initrd,
            &dir.join("results"),
            &dir.join("scratch"),
            Agent {
                program: "/bin/true".into(),
                args: vec![],
                env: vec![],
                chroot: false,
            },
        );
        c.qemu = fake;
        c.kernel_cache = None;
        c.ready_timeout = Duration::from_millis(500);
        let t = Instant::now();
        let serial = dir.join("results/serial.log");
        let mut logged_when_seen = String::new();
        let err = run(&c, |_, _| {
            logged_when_seen = fs::read_to_string(&serial).unwrap();
        })
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        match &err {
            BootError::Failed(f) => assert!(
                matches!(
                    f.failure,
                    Failure::TimedOut {
                        agent_started: false,
                        ..
                    }
                ),
                "{err}"
            ),
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("SeaBIOS (fake)"), "{err}");
        assert_eq!(fs::read_to_string(&serial).unwrap(), "SeaBIOS (fake)\n");
        // Written before the next line arrives, not when QEMU ends: a runner
        // killed mid-boot leaves it.
        assert_eq!(logged_when_seen, "SeaBIOS (fake)\n");
        assert!(
            fs::read_to_string(dir.join("results").join(AGENT_CONF))
                .unwrap()
                .contains("set -- '/bin/true'")
        );
        assert_eq!(
            fs::metadata(dir.join("scratch/nvme-ns1.img"))
                .unwrap()
                .len(),
            64 << 20
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
