//! The virtual host's initramfs: busybox-static with its applet links, the
//! kernel modules the lane needs (dependencies from each module's `.modinfo`
//! `depends=`, so no depmod), and an `/init` that loads them, mounts the 9p
//! shares and runs the agent.
//!
//! The image is an uncompressed newc cpio: the kernel unpacks it without a
//! decompressor, which is what costs time under TCG. It is cached in the
//! per-user cache ([`crate::cache`]) under `initramfs/`, keyed by what goes
//! into it: the kernel's module tree, the module set, the init script and
//! busybox, so checkouts with different init scripts or module lists never
//! share an image. Per-run settings (which agent, where the results go) are
//! not in the image but in the results share (see [`crate::boot`]).
//!
//! By job: `cpio` (the newc format, written and read back), `modules` (the
//! module index, `.modinfo` and the dependency closure), `build` (busybox,
//! the cache key and the image).

mod build;
mod cpio;
mod modules;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

pub use build::{build, elf_is_dynamic};
pub use cpio::{CpioEntry, CpioWriter, mode, read_cpio, read_cpio_file};
pub(crate) use modules::mtime;
pub use modules::{
    Lookup, dependency_closure, kvm_list, modinfo_depends, modinfo_field, module_list, read_module,
};

/// The `/init` of the virtual host (busybox sh). It reads the module list from
/// `/etc/ukci/modules` and the agent settings from `ukci-agent.conf` in the
/// results share, and speaks the [`crate::marker`] lines.
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// Where `/init` finds the module load list inside the image.
pub const MODULE_LIST_PATH: &str = "etc/ukci/modules";

/// Where `/init` finds the KVM modules: `flag name [params...]` per line, in
/// load order; a module whose CPU flag `/proc/cpuinfo` lacks is not loaded
/// (`-`: no flag needed). A KVM module that does not load leaves the host
/// without KVM, never without its agent.
pub const KVM_LIST_PATH: &str = "etc/ukci/modules.kvm";

/// Where `/init` writes what became of each KVM module, in the results
/// folder: `name: loaded`, `name: skipped: ...`, or insmod's own error.
pub const KVM_LOG: &str = "kvm-modules.log";

/// Bumped whenever the image layout changes, so old cache entries are not reused.
const FORMAT: &str = "ukci-vhost-initramfs-2";

/// A module to load at boot, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLoad {
    /// Module name; `-` and `_` are the same (`9pnet-virtio` = `9pnet_virtio`).
    pub name: String,
    /// `key=value` parameters, passed to insmod as they are.
    pub params: Vec<String>,
}

impl ModuleLoad {
    pub fn new(name: &str) -> Self {
        ModuleLoad {
            name: normalise(name),
            params: Vec::new(),
        }
    }

    pub fn with_params(name: &str, params: &[&str]) -> Self {
        ModuleLoad {
            name: normalise(name),
            params: params.iter().map(|p| (*p).to_owned()).collect(),
        }
    }
}

/// The modules every virtual lane needs: VFIO with SR-IOV enabled on vfio-pci
/// (it binds nothing by itself; the VF-token tests bind the PF), the type1
/// IOMMU backend, and 9p over virtio for the shares. `nvme` is left out on
/// purpose so the NVMe PF stays free for vfio-pci.
pub fn lane_modules() -> Vec<ModuleLoad> {
    vec![
        ModuleLoad::new("virtio_pci"),
        ModuleLoad::new("9pnet_virtio"),
        ModuleLoad::new("9p"),
        ModuleLoad::with_params("vfio_pci", &["enable_sriov=1"]),
        ModuleLoad::new("vfio_iommu_type1"),
        // The PF starts on the kernel's driver, as on a real host; the
        // VF-token checks move it to vfio-pci themselves (journaled).
        ModuleLoad::new("nvme"),
    ]
}

/// A KVM vendor module, loaded where the CPU model has its feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmLoad {
    pub module: ModuleLoad,
    /// The `/proc/cpuinfo` flag the module needs (`svm`, `vmx`).
    pub cpu_flag: &'static str,
}

/// KVM for both vendors: QEMU's TCG `-cpu max` emulates SVM, so there
/// `kvm_amd` loads; `kvm_intel` loads where a CPU model has VMX.
pub fn kvm_modules() -> Vec<KvmLoad> {
    vec![
        KvmLoad {
            module: ModuleLoad::new("kvm_amd"),
            cpu_flag: "svm",
        },
        KvmLoad {
            module: ModuleLoad::new("kvm_intel"),
            cpu_flag: "vmx",
        },
    ]
}

/// What goes into the image besides the modules.
#[derive(Debug, Clone)]
pub struct InitramfsSpec {
    /// A statically linked busybox (Debian's `busybox-static`: `/bin/busybox`).
    pub busybox: PathBuf,
    pub modules: Vec<ModuleLoad>,
    /// Loaded after the shares are mounted; a failure is logged, not fatal.
    pub kvm: Vec<KvmLoad>,
    /// Modules taken from these `.ko` files instead of the kernel's tree
    /// (a KVM built from patched sources), by module name.
    pub replacements: BTreeMap<String, PathBuf>,
    /// `key=value` parameters of the `kvm` module itself.
    pub kvm_params: Vec<String>,
}

impl Default for InitramfsSpec {
    fn default() -> Self {
        InitramfsSpec {
            busybox: PathBuf::from("/bin/busybox"),
            modules: lane_modules(),
            kvm: kvm_modules(),
            replacements: BTreeMap::new(),
            kvm_params: Vec::new(),
        }
    }
}

/// A built (or cached) image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initramfs {
    pub path: PathBuf,
    /// Modules in the order `/init` loads them (dependencies first).
    pub load_order: Vec<String>,
    /// True when the image came from the cache.
    pub cached: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error(
        "module `{module}` is neither in {dir} nor built in (modules.builtin); needed by {needed_by}"
    )]
    MissingModule {
        module: String,
        dir: PathBuf,
        needed_by: String,
    },
    #[error("module dependency cycle: {0}")]
    Cycle(String),
    #[error("{path}: {what}")]
    Bad { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InitramfsError + '_ {
    move |source| InitramfsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn normalise(name: &str) -> String {
    name.replace('-', "_")
}
