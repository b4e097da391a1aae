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
//!
//! By job: `topology` (the emulated NVMe's resources), `cmdline` (the host
//! kernel's command line), `qemu` (QEMU's arguments), `agent` (the settings
//! `/init` sources), `verdict` (what a serial log and QEMU's ending mean) and
//! `run` (one boot, supervised).

mod agent;
mod cmdline;
mod qemu;
mod run;
mod topology;
mod verdict;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use agent::{AGENT_CONF, AGENT_EXIT_FILE, Agent, agent_conf, shell_quote};
pub use cmdline::{HUNG_TASK_SECS, kernel_cmdline};
pub use qemu::qemu_args;
pub use run::{BootError, BootFailure, BootReport, run};
pub use topology::Topology;
pub use verdict::{Ending, ExitKind, Failure, agent_status};

pub use crate::accel::Accel;

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

/// A configuration for tests of the command line.
#[cfg(test)]
fn test_config() -> BootConfig {
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
