//! Booting the virtual host: the QEMU command line (q35, intel-iommu, the
//! SR-IOV NVMe behind a root port, 9p shares), the per-run agent settings
//! written into the results folder, and a supervisor that runs QEMU under a
//! hard timeout and turns its serial log into a verdict.
//!
//! One boot runs one agent; the agent is expected to run all of a kernel's
//! tests. A host that panics, hangs, or never starts the agent is a
//! [`BootError`] carrying the serial log, never a result.
//!
//! The agent contract:
//! - It is started after `UKCI-VHOST: agent-ready` with the environment
//!   variable `UKCI_RESULTS` naming the writable results folder (its host
//!   path when chrooted, `/results` otherwise) and the [`Agent::env`] pairs.
//! - Its stdout and stderr go to the serial console (the `on_line` callback
//!   of [`run`] and the serial log).
//! - Its exit status is written to `<results>/agent-exit`, printed as
//!   `UKCI-VHOST: agent-exit status=N`, and returned as
//!   [`BootReport::agent_status`]; then the host powers off.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use ukci_supervise::qemu_opts::Opts;
use ukci_supervise::{self as supervise, End};

use crate::marker;

/// The file in the results folder that `/init` reads the agent settings from.
pub const AGENT_CONF: &str = "ukci-agent.conf";
/// The file in the results folder where `/init` records the agent's exit status.
pub const AGENT_EXIT_FILE: &str = "agent-exit";

pub use crate::accel::Accel;

/// The emulated SR-IOV NVMe controller (QEMU's `nvme` with `sriov_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// `sriov_max_vfs`: TotalVFs of the PF.
    pub vfs: u16,
    /// `sriov_vq_flexible`: queue resources the PF can hand to its VFs.
    pub vq_flexible: u32,
    /// `sriov_vi_flexible`: interrupt resources the PF can hand to its VFs.
    pub vi_flexible: u32,
    /// `max_ioqpairs` (QEMU default 64).
    pub max_ioqpairs: u32,
    /// `msix_qsize` (QEMU default 65).
    pub msix_qsize: u32,
    /// Shared namespaces in the subsystem (attached to every controller).
    pub namespaces: u32,
    /// Size of each namespace's backing file (sparse, in the scratch folder).
    pub namespace_bytes: u64,
}

impl Topology {
    /// Enough flexible resources for `vfs` VFs with one I/O queue pair and one
    /// interrupt each (2 VQ, 1 VI per VF), one 64 MiB namespace.
    pub fn with_vfs(vfs: u16) -> Self {
        Topology {
            vfs,
            vq_flexible: 2 * u32::from(vfs),
            vi_flexible: u32::from(vfs),
            max_ioqpairs: 64,
            msix_qsize: 65,
            namespaces: 1,
            namespace_bytes: 64 << 20,
        }
    }

    /// Namespaces in the subsystem: each is a file and a `-drive`.
    pub const MAX_NAMESPACES: u32 = 16;
    /// A namespace's backing file is created for every boot.
    pub const MAX_NAMESPACE_BYTES: u64 = 4 << 30;

    /// QEMU's realize-time constraints and ukci's bounds, checked before
    /// QEMU is started so the message says which field to change.
    pub fn validate(&self) -> Result<(), String> {
        let vfs = u32::from(self.vfs);
        let checks = [
            (vfs >= 1, "vfs must be at least 1".to_owned()),
            (vfs <= 127, "vfs must be at most 127".to_owned()),
            (
                self.vq_flexible >= 2 * vfs,
                format!(
                    "vq_flexible ({}) must be at least 2 × vfs ({})",
                    self.vq_flexible,
                    2 * vfs
                ),
            ),
            (
                self.max_ioqpairs >= self.vq_flexible + 2,
                format!(
                    "max_ioqpairs ({}) must be at least vq_flexible + 2 ({})",
                    self.max_ioqpairs,
                    self.vq_flexible + 2
                ),
            ),
            (
                self.vi_flexible >= vfs,
                format!(
                    "vi_flexible ({}) must be at least vfs ({vfs})",
                    self.vi_flexible
                ),
            ),
            (
                self.msix_qsize > self.vi_flexible,
                format!(
                    "msix_qsize ({}) must be at least vi_flexible + 1 ({})",
                    self.msix_qsize,
                    self.vi_flexible + 1
                ),
            ),
            (
                (1..=Self::MAX_NAMESPACES).contains(&self.namespaces),
                format!("namespaces must be from 1 to {}", Self::MAX_NAMESPACES),
            ),
            (
                (1 << 20..=Self::MAX_NAMESPACE_BYTES).contains(&self.namespace_bytes)
                    && self.namespace_bytes.is_multiple_of(4096),
                "namespace_size must be a multiple of 4K from 1M to 4G".to_owned(),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(format!("NVMe topology: {why}")),
            None => Ok(()),
        }
    }
}

/// The program the virtual host runs once it is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Absolute path on the host (the host root is shared read-only).
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Extra environment, besides `UKCI_RESULTS` (set by `/init`).
    pub env: Vec<(String, String)>,
    /// Run inside `chroot` of the host root, so a dynamically linked host
    /// binary finds its libraries and host paths look as on the host. Without
    /// it the agent runs in the busybox initramfs (program under `/host`).
    pub chroot: bool,
}

/// Everything one boot of the virtual host needs.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// Shown in `-name` and error messages (the kernel name, e.g. `debian:6.12`).
    pub name: String,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub topology: Topology,
    /// Shared read-only as 9p tag `hostroot` (normally `/`).
    pub host_root: PathBuf,
    /// Shared read-write as 9p tag `results`; holds the agent settings and exit status.
    pub results_dir: PathBuf,
    /// Namespace backing files go here.
    pub scratch_dir: PathBuf,
    /// The serial console, kept as an artifact.
    pub serial_log: PathBuf,
    /// Extra kernel command-line words.
    pub extra_append: Vec<String>,
    pub agent: Agent,
    /// The host must print the agent-ready marker within this time.
    pub ready_timeout: Duration,
    /// Hard limit for the whole boot, agent included.
    pub timeout: Duration,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Where the kernel's uncompressed PVH ELF is cached ([`crate::vmlinux`]),
    /// so the host does not decompress itself under TCG; `None` boots
    /// `vmlinuz` as it is.
    pub kernel_cache: Option<PathBuf>,
}

impl BootConfig {
    /// Defaults for this project's virtual lane: TCG, 2 GiB, 2 CPUs, 2 VFs,
    /// the host's `/` as host root.
    pub fn new(
        name: &str,
        vmlinuz: &Path,
        initramfs: &Path,
        results_dir: &Path,
        scratch_dir: &Path,
        agent: Agent,
    ) -> Self {
        BootConfig {
            name: name.to_owned(),
            vmlinuz: vmlinuz.to_owned(),
            initramfs: initramfs.to_owned(),
            accel: Accel::Tcg,
            memory_mib: 2048,
            cpus: 2,
            topology: Topology::with_vfs(2),
            host_root: PathBuf::from("/"),
            results_dir: results_dir.to_owned(),
            scratch_dir: scratch_dir.to_owned(),
            serial_log: results_dir.join("serial.log"),
            extra_append: Vec::new(),
            agent,
            ready_timeout: Duration::from_secs(90),
            timeout: Duration::from_secs(600),
            qemu: PathBuf::from("qemu-system-x86_64"),
            kernel_cache: Some(crate::cache::user_dir()),
        }
    }

    /// Path of namespace `n` (1-based) in the scratch folder.
    pub fn namespace_image(&self, n: u32) -> PathBuf {
        self.scratch_dir.join(format!("nvme-ns{n}.img"))
    }
}

/// Seconds a task may sit in uninterruptible sleep before the host kernel's
/// hung-task watchdog panics it. Nothing the agent does sleeps that long; a
/// host that does has wedged, and ends within a minute or two instead of at
/// the boot timeout.
pub const HUNG_TASK_SECS: u32 = 60;

/// The kernel command line.
pub fn kernel_cmdline(cfg: &BootConfig) -> String {
    let hung = format!("sysctl.kernel.hung_task_timeout_secs={HUNG_TASK_SECS}");
    let mut words: Vec<&str> = vec![
        "console=ttyS0",
        "intel_iommu=on",
        "iommu=pt",
        // Any panic reboots at once, and -no-reboot turns that into a QEMU exit.
        "panic=-1",
        "hung_task_panic=1",
        &hung,
        "loglevel=4",
        // Boot-time self-tests of crypto nothing here uses: the crypto
        // manager's, the SP800-108 KDF's and the jitter-entropy RNG's (its
        // timing loop alone takes ~0.5 s under TCG). Together ~0.9 s of a
        // 3 s boot to /init. The DRBG needs jitter entropy only in FIPS mode.
        "cryptomgr.notests",
        "initcall_blacklist=jent_mod_init,crypto_kdf108_init",
    ];
    if cfg.accel == Accel::Tcg {
        // A periodic local-APIC tick on every CPU, busy or idle. With
        // one-shot timers a single timer interrupt or wake-up IPI that TCG
        // fails to deliver leaves a CPU halted for good (RCU: "timer wakeup
        // didn't happen"), and every sleep queued on it never returns; with a
        // periodic tick the next tick, at most 1/HZ later, repairs it.
        words.extend(["nohz=off", "highres=off", "lapic=notscdeadline"]);
        // check_timer() (arch/x86/kernel/apic/io_apic.c) counts timer ticks
        // in a busy-wait window at boot; on a loaded machine TCG delivers too
        // few and the kernel panics ("timer doesn't work through
        // Interrupt-remapped IO-APIC", seen with 7.3). The tick works; skip
        // the count.
        words.push("no_timer_check");
    }
    words.extend(cfg.extra_append.iter().map(String::as_str));
    words.join(" ")
}

/// The QEMU arguments (without the program).
pub fn qemu_args(cfg: &BootConfig) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&[
        "-name",
        Opts::new(format_args!("ukci-vhost {}", cfg.name)).as_str(),
    ]);
    match cfg.accel {
        // One TCG thread runs both vCPUs in turn. Multi-threaded TCG raced
        // here: QEMU 10.0.2 aborted in iotlb_to_section while the host
        // enabled VFs, and a host lost a timer interrupt for good. With two
        // virtual hosts on two cores the single thread is also faster.
        Accel::Tcg => push(&[
            "-machine",
            "q35",
            "-accel",
            "tcg,thread=single,tb-size=512",
            "-cpu",
            "max",
        ]),
        // With KVM the interrupt remapping of intel-iommu needs a split irqchip.
        Accel::Kvm => push(&[
            "-machine",
            "q35,kernel-irqchip=split",
            "-accel",
            "kvm",
            "-cpu",
            "host,-arch-capabilities",
        ]),
    }
    push(&[
        "-smp",
        &cfg.cpus.to_string(),
        "-m",
        &format!("{}M", cfg.memory_mib),
    ]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&[
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
    ]);
    push(&["-device", "intel-iommu,intremap=on,caching-mode=on"]);
    push(&["-kernel"]);
    a.push(cfg.vmlinuz.clone().into());
    a.push("-initrd".into());
    a.push(cfg.initramfs.clone().into());
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["-append", &kernel_cmdline(cfg)]);

    // The PF sits behind a root port: on pcie.0 QEMU 10.0 maps the 64-bit VF
    // BAR as 32-bit and the VFs' registers read 0.
    let t = &cfg.topology;
    let mut push = |flag: &str, o: Opts| a.extend([flag.into(), o.into()]);
    push(
        "-device",
        Opts::new("pcie-root-port")
            .set("id", "rp1")
            .set("bus", "pcie.0")
            .set("chassis", 1)
            .set("slot", 1),
    );
    push(
        "-device",
        Opts::new("nvme-subsys")
            .set("id", "subsys0")
            .set("nqn", "ukci-vhost"),
    );
    push(
        "-device",
        Opts::new("nvme")
            .set("id", "nvme0")
            .set("bus", "rp1")
            .set("serial", "ukci0001")
            .set("subsys", "subsys0")
            .set("max_ioqpairs", t.max_ioqpairs)
            .set("msix_qsize", t.msix_qsize)
            .set("sriov_max_vfs", t.vfs)
            .set("sriov_vq_flexible", t.vq_flexible)
            .set("sriov_vi_flexible", t.vi_flexible),
    );
    for n in 1..=t.namespaces {
        let drive = format!("ns{n}");
        push(
            "-drive",
            Opts::pair("file", cfg.namespace_image(n).display())
                .set("if", "none")
                .set("id", &drive)
                .set("format", "raw"),
        );
        push(
            "-device",
            Opts::new("nvme-ns")
                .set("drive", &drive)
                .set("bus", "nvme0")
                .set("nsid", n),
        );
    }
    push(
        "-virtfs",
        Opts::new("local")
            .set("path", cfg.host_root.display())
            .set("mount_tag", "hostroot")
            .set("security_model", "none")
            .set("readonly", "on"),
    );
    push(
        "-virtfs",
        Opts::new("local")
            .set("path", cfg.results_dir.display())
            .set("mount_tag", "results")
            .set("security_model", "none"),
    );
    a
}

/// Quotes a word for POSIX sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `ukci-agent.conf` that `/init` sources. `results_host` is the results
/// folder's host path (where a chrooted agent finds it).
pub fn agent_conf(agent: &Agent, results_host: &Path) -> Result<String, String> {
    let program = agent.program.to_str().ok_or("agent path is not UTF-8")?;
    if !agent.program.is_absolute() {
        return Err(format!(
            "agent program `{program}` must be an absolute host path"
        ));
    }
    let results = results_host.to_str().ok_or("results path is not UTF-8")?;
    let mut out = String::from("# Written by ukci-vhost for /init; sourced by busybox sh.\n");
    out.push_str(&format!("UKCI_CHROOT={}\n", u8::from(agent.chroot)));
    out.push_str(&format!("UKCI_RESULTS_HOST={}\n", shell_quote(results)));
    for (k, v) in &agent.env {
        let valid = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "agent environment name `{k}` is not a shell variable name"
            ));
        }
        out.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    out.push_str("set --");
    for word in std::iter::once(program).chain(agent.args.iter().map(String::as_str)) {
        out.push(' ');
        out.push_str(&shell_quote(word));
    }
    out.push('\n');
    Ok(out)
}

// ---------------------------------------------------------------------------
// Verdict

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
pub fn judge(serial: &str, ending: &Ending) -> Result<i32, Failure> {
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

// ---------------------------------------------------------------------------
// Supervisor

/// Prepares the scratch and results folders, boots the virtual host, waits
/// for it to power off (or kills it at a deadline), and judges the serial log.
/// `on_line` sees each serial line as it arrives, with the time since start.
pub fn run(
    cfg: &BootConfig,
    mut on_line: impl FnMut(Duration, &str) + Send,
) -> Result<BootReport, BootError> {
    let config_err = |what: String| BootError::Config {
        name: cfg.name.clone(),
        what,
    };
    let io_err = |path: &Path| {
        let name = cfg.name.clone();
        let path = path.to_owned();
        move |source| BootError::Io { name, path, source }
    };
    cfg.topology.validate().map_err(config_err)?;
    for (what, p) in [
        ("kernel image", &cfg.vmlinuz),
        ("initramfs", &cfg.initramfs),
    ] {
        if !p.is_file() {
            return Err(config_err(format!("{what} {} does not exist", p.display())));
        }
    }

    let unpacked;
    let cfg = match &cfg.kernel_cache {
        Some(dir) => {
            let vmlinuz =
                crate::vmlinux::for_boot(dir, &cfg.vmlinuz).map_err(io_err(&cfg.vmlinuz))?;
            unpacked = BootConfig {
                vmlinuz,
                ..cfg.clone()
            };
            &unpacked
        }
        None => cfg,
    };

    fs::create_dir_all(&cfg.results_dir).map_err(io_err(&cfg.results_dir))?;
    fs::create_dir_all(&cfg.scratch_dir).map_err(io_err(&cfg.scratch_dir))?;
    let results_host = fs::canonicalize(&cfg.results_dir).map_err(io_err(&cfg.results_dir))?;
    let conf = agent_conf(&cfg.agent, &results_host).map_err(config_err)?;
    let conf_path = results_host.join(AGENT_CONF);
    fs::write(&conf_path, conf).map_err(io_err(&conf_path))?;
    let exit_path = results_host.join(AGENT_EXIT_FILE);
    match fs::remove_file(&exit_path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&exit_path)(e)),
        _ => {}
    }
    for n in 1..=cfg.topology.namespaces {
        let img = cfg.namespace_image(n);
        let f = fs::File::create(&img).map_err(io_err(&img))?;
        f.set_len(cfg.topology.namespace_bytes)
            .map_err(io_err(&img))?;
    }
    if let Some(dir) = cfg.serial_log.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    // Unbuffered, one write per line: the log is complete up to the last
    // line even when the runner is killed.
    let mut log = fs::File::create(&cfg.serial_log).map_err(io_err(&cfg.serial_log))?;

    // The shared supervisor: own process group, killed and reaped on every
    // path, dies with the runner, and Ctrl-C reaches it.
    let start = Instant::now();
    let is_ready = |l: &str| l.starts_with(marker::AGENT_READY);
    let fin = supervise::run_with(
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
    );
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
            return Err(config_err(format!(
                "{e} (install qemu-system-x86 10.0 from bookworm-backports)"
            )));
        }
    };
    let serial: String = fin
        .stdout
        .lines()
        .flat_map(|l| [l.trim_end_matches('\r'), "\n"])
        .collect();
    let stderr = fin.stderr;

    match judge(&serial, &ending) {
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
    use super::*;

    fn cfg() -> BootConfig {
        BootConfig::new(
            "debian:6.12",
            Path::new("/k/vmlinuz"),
            Path::new("/k/initrd.cpio"),
            Path::new("/r,1"),
            Path::new("/s"),
            Agent {
                program: "/work/a.sh".into(),
                args: vec![],
                env: vec![],
                chroot: true,
            },
        )
    }

    fn args_of(c: &BootConfig) -> Vec<String> {
        qemu_args(c)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn value_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn qemu_command_has_the_lane_devices() {
        let a = args_of(&cfg());
        assert!(a.contains(&"-no-reboot".to_string()));
        assert!(a.contains(&"-nodefaults".to_string()));
        assert_eq!(value_after(&a, "-machine"), ["q35"]);
        assert_eq!(value_after(&a, "-accel"), ["tcg,thread=single,tb-size=512"]);
        let devices = value_after(&a, "-device");
        assert_eq!(devices[0], "intel-iommu,intremap=on,caching-mode=on");
        let rp = devices
            .iter()
            .position(|d| d.starts_with("pcie-root-port,id=rp1"))
            .unwrap();
        let nvme = devices.iter().position(|d| d.starts_with("nvme,")).unwrap();
        assert!(
            rp < nvme,
            "the root port exists before the NVMe is plugged into it"
        );
        assert!(devices[nvme].contains("bus=rp1"));
        assert!(devices[nvme].contains("subsys=subsys0"));
        assert!(devices[nvme].contains("sriov_max_vfs=2,sriov_vq_flexible=4,sriov_vi_flexible=2"));
        assert_eq!(
            value_after(&a, "-drive"),
            ["file=/s/nvme-ns1.img,if=none,id=ns1,format=raw"]
        );
        let fs = value_after(&a, "-virtfs");
        assert_eq!(
            fs[0],
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on"
        );
        assert_eq!(
            fs[1], "local,path=/r,,1,mount_tag=results,security_model=none",
            "comma escaped"
        );
        let append = value_after(&a, "-append")[0];
        for w in [
            "console=ttyS0",
            "intel_iommu=on",
            "panic=-1",
            "hung_task_panic=1",
            "sysctl.kernel.hung_task_timeout_secs=60",
            "cryptomgr.notests",
            "initcall_blacklist=jent_mod_init,crypto_kdf108_init",
        ] {
            assert!(append.split(' ').any(|x| x == w), "{append}");
        }
        assert_eq!(value_after(&a, "-serial"), ["chardev:console"]);
    }

    #[test]
    fn kvm_uses_a_split_irqchip_for_interrupt_remapping() {
        let mut c = cfg();
        let tcg = kernel_cmdline(&c);
        c.accel = Accel::Kvm;
        let a = args_of(&c);
        assert_eq!(value_after(&a, "-machine"), ["q35,kernel-irqchip=split"]);
        assert_eq!(value_after(&a, "-accel"), ["kvm"]);
        // The periodic tick is TCG's only.
        let kvm = kernel_cmdline(&c);
        for w in ["nohz=off", "highres=off", "no_timer_check"] {
            assert!(tcg.split(' ').any(|x| x == w), "{tcg}");
            assert!(!kvm.split(' ').any(|x| x == w), "{kvm}");
        }
    }

    #[test]
    fn namespaces_each_get_a_drive_and_an_nsid() {
        let mut c = cfg();
        c.topology.namespaces = 2;
        let a = args_of(&c);
        let ns: Vec<_> = value_after(&a, "-device")
            .into_iter()
            .filter(|d| d.starts_with("nvme-ns"))
            .collect();
        assert_eq!(
            ns,
            [
                "nvme-ns,drive=ns1,bus=nvme0,nsid=1",
                "nvme-ns,drive=ns2,bus=nvme0,nsid=2"
            ]
        );
    }

    #[test]
    fn topology_constraints_match_qemu() {
        assert!(Topology::with_vfs(2).validate().is_ok());
        assert!(Topology::with_vfs(30).validate().is_ok());
        let mut t = Topology::with_vfs(2);
        t.vq_flexible = 3;
        assert!(
            t.validate()
                .unwrap_err()
                .contains("vq_flexible (3) must be at least 2 × vfs (4)")
        );
        let mut t = Topology::with_vfs(2);
        t.max_ioqpairs = 5;
        assert!(t.validate().unwrap_err().contains("max_ioqpairs"));
        let mut t = Topology::with_vfs(2);
        t.vi_flexible = 1;
        assert!(t.validate().unwrap_err().contains("vi_flexible"));
        let mut t = Topology::with_vfs(2);
        t.msix_qsize = 2;
        assert!(t.validate().unwrap_err().contains("msix_qsize"));
        assert!(Topology::with_vfs(0).validate().is_err());
    }

    #[test]
    fn agent_conf_quotes_every_word() {
        let agent = Agent {
            program: "/opt/ukci/bin/ukci".into(),
            args: vec!["agent".into(), "it's a $test".into()],
            env: vec![("UKCI_KERNEL".into(), "debian:6.12".into())],
            chroot: false,
        };
        let conf = agent_conf(&agent, Path::new("/work/r")).unwrap();
        assert_eq!(
            conf.lines().skip(1).collect::<Vec<_>>(),
            [
                "UKCI_CHROOT=0",
                "UKCI_RESULTS_HOST='/work/r'",
                "export UKCI_KERNEL='debian:6.12'",
                r"set -- '/opt/ukci/bin/ukci' 'agent' 'it'\''s a $test'",
            ]
        );
        let bad_env = Agent {
            env: vec![("A-B".into(), "x".into())],
            ..agent.clone()
        };
        assert!(
            agent_conf(&bad_env, Path::new("/r"))
                .unwrap_err()
                .contains("`A-B`")
        );
        let relative = Agent {
            program: "ukci".into(),
            ..agent
        };
        assert!(
            agent_conf(&relative, Path::new("/r"))
                .unwrap_err()
                .contains("absolute")
        );
    }

    const GOOD: &str = "SeaBIOS\r\nUKCI-VHOST: init kernel=6.12\r\nUKCI-VHOST: agent-ready uptime=3.1\r\nhello\r\nUKCI-VHOST: agent-exit status=3 uptime=4.0\r\n";

    #[test]
    fn judge_returns_the_agent_status() {
        assert_eq!(judge(GOOD, &Ending::Exited(ExitKind::Code(0))), Ok(3));
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
        let f = judge(&panicked, &exited).unwrap_err();
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
        assert!(judge(WEDGED, &timed_out).unwrap_err().is_breakdown());
        // Nor is QEMU crashing by itself.
        let crashed = Ending::Exited(ExitKind::Signal(libc::SIGABRT));
        assert!(judge(GOOD, &crashed).unwrap_err().is_breakdown());
        // A plain panic or timeout, or QEMU killed from outside, is not.
        let killed = Ending::Exited(ExitKind::Signal(libc::SIGKILL));
        assert!(!judge(GOOD, &killed).unwrap_err().is_breakdown());
        let panic =
            "UKCI-VHOST: agent-ready\nKernel panic - not syncing: Attempted to kill init!\n";
        assert!(!judge(panic, &exited).unwrap_err().is_breakdown());
        assert!(
            !judge("UKCI-VHOST: agent-ready\n", &timed_out)
                .unwrap_err()
                .is_breakdown()
        );
    }

    #[test]
    fn judge_never_passes_a_broken_host() {
        let exited = Ending::Exited(ExitKind::Code(0));
        let panic = "UKCI-VHOST: agent-ready\n[    3.2] Kernel panic - not syncing: Attempted to kill init!\n";
        assert_eq!(
            judge(panic, &exited),
            Err(Failure::Panic(
                "Kernel panic - not syncing: Attempted to kill init!".into()
            ))
        );
        assert_eq!(
            judge("UKCI-VHOST: init-error insmod 9p failed\n", &exited),
            Err(Failure::InitError("insmod 9p failed".into()))
        );
        assert_eq!(judge("booting\n", &exited), Err(Failure::NeverStartedAgent));
        assert_eq!(
            judge("UKCI-VHOST: agent-ready\n", &exited),
            Err(Failure::AgentVanished)
        );
        let hung = Ending::TimedOut {
            after: Duration::from_secs(90),
            agent_started: false,
        };
        assert!(matches!(
            judge(GOOD, &hung),
            Err(Failure::TimedOut {
                agent_started: false,
                ..
            })
        ));
        assert_eq!(
            judge("", &Ending::Exited(ExitKind::Code(1))),
            Err(Failure::QemuFailed(ExitKind::Code(1)))
        );
        assert_eq!(
            judge(GOOD, &Ending::Exited(ExitKind::Signal(9))),
            Err(Failure::QemuFailed(ExitKind::Signal(9)))
        );
    }

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
