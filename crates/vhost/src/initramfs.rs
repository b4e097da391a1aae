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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::cache::{self, EntryLock};
use crate::kernel::Kernel;

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
const FORMAT: &str = "ukci-vhost-initramfs-1";

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

// ---------------------------------------------------------------------------
// newc cpio writer

/// File type bits of a cpio entry's mode.
pub mod mode {
    pub const DIR: u32 = 0o040000;
    pub const FILE: u32 = 0o100000;
    pub const SYMLINK: u32 = 0o120000;
    pub const CHAR: u32 = 0o020000;
}

/// Writes a newc (`070701`) cpio archive, the format the kernel unpacks as an
/// initramfs. Owner root, mtime 0, so the same input gives the same bytes.
pub struct CpioWriter<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            offset: 0,
            next_ino: 1,
        }
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, mode::DIR | perm, 2, (0, 0), b"")
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, mode::FILE | perm, 1, (0, 0), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, mode::SYMLINK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, mode::CHAR | perm, 1, (major, minor), b"")
    }

    /// Writes the `TRAILER!!!` entry and hands back the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), b"")?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: too big for cpio"),
            )
        })?;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08X}"));
        }
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.offset % 4) as usize) % 4;
        self.write(&[0; 3][..n])
    }
}

// ---------------------------------------------------------------------------
// Modules: index, .modinfo, closure

/// A module file in the kernel's tree.
#[derive(Debug, Clone)]
struct ModuleFile {
    path: PathBuf,
    size: u64,
    mtime: u64,
}

/// Module name → file, for every `.ko` / `.ko.xz` / `.ko.zst` / `.ko.gz` under `dir`.
fn index_modules(dir: &Path) -> Result<HashMap<String, ModuleFile>, InitramfsError> {
    let mut index = HashMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let ty = entry.file_type().map_err(io_err(&entry.path()))?;
            if ty.is_dir() {
                stack.push(entry.path());
                continue;
            }
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(module_name) else {
                continue;
            };
            let meta = entry.metadata().map_err(io_err(&entry.path()))?;
            index.insert(
                name,
                ModuleFile {
                    path: entry.path(),
                    size: meta.len(),
                    mtime: mtime(&meta),
                },
            );
        }
    }
    Ok(index)
}

/// `vfio-pci.ko.xz` → `vfio_pci`.
fn module_name(file: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    Some(normalise(stem))
}

pub(crate) fn mtime(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Names of the modules built into the kernel, from `modules.builtin`.
fn builtin_modules(dir: &Path) -> BTreeSet<String> {
    fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next().and_then(module_name))
        .collect()
}

/// The module's contents, decompressed.
fn load_module(file: &ModuleFile) -> Result<Vec<u8>, InitramfsError> {
    read_module(&file.path)
}

/// A module file's contents (`.ko` or `.ko.xz`), decompressed.
pub fn read_module(path: &Path) -> Result<Vec<u8>, InitramfsError> {
    let raw = fs::read(path).map_err(io_err(path))?;
    let name = path.to_string_lossy();
    if name.ends_with(".xz") {
        let mut out = Vec::with_capacity(raw.len() * 4);
        lzma_rs::xz_decompress(&mut io::BufReader::new(&raw[..]), &mut out).map_err(|e| {
            InitramfsError::Bad {
                path: path.to_owned(),
                what: format!("xz decompression failed: {e}"),
            }
        })?;
        Ok(out)
    } else if name.ends_with(".ko") {
        Ok(raw)
    } else {
        Err(InitramfsError::Bad {
            path: path.to_owned(),
            what: "only .ko and .ko.xz modules are supported".into(),
        })
    }
}

/// The value of `key` in a module's `.modinfo` (`vermagic`, `depends`),
/// as `modinfo -F key` prints it.
pub fn modinfo_field(module: &[u8], key: &str) -> Option<String> {
    let needle = [&b"\0"[..], key.as_bytes(), b"="].concat();
    let start = module.windows(needle.len()).position(|w| w == needle)?;
    let value = &module[start + needle.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    Some(String::from_utf8_lossy(&value[..end]).into_owned())
}

/// The `depends=` list of a module's `.modinfo` (names normalised).
pub fn modinfo_depends(module: &[u8]) -> Vec<String> {
    modinfo_field(module, "depends")
        .unwrap_or_default()
        .split(',')
        .filter(|d| !d.is_empty())
        .map(normalise)
        .collect()
}

/// What a module name resolves to while closing over dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A loadable module with these dependencies.
    Module(Vec<String>),
    /// Built into the kernel: nothing to load.
    Builtin,
    /// Neither.
    Missing,
}

/// The load order for `wanted`: every needed module once, each after all it
/// depends on. `lookup` tells what a name is.
pub fn dependency_closure(
    wanted: &[String],
    mut lookup: impl FnMut(&str) -> Result<Lookup, InitramfsError>,
    modules_dir: &Path,
) -> Result<Vec<String>, InitramfsError> {
    fn visit(
        name: &str,
        needed_by: &str,
        lookup: &mut dyn FnMut(&str) -> Result<Lookup, InitramfsError>,
        modules_dir: &Path,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), InitramfsError> {
        if order.iter().any(|o| o == name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(InitramfsError::Cycle(format!(
                "{} -> {name}",
                path.join(" -> ")
            )));
        }
        match lookup(name)? {
            Lookup::Builtin => Ok(()),
            Lookup::Missing => Err(InitramfsError::MissingModule {
                module: name.to_owned(),
                dir: modules_dir.to_owned(),
                needed_by: needed_by.to_owned(),
            }),
            Lookup::Module(deps) => {
                path.push(name.to_owned());
                for dep in &deps {
                    visit(dep, name, lookup, modules_dir, path, order)?;
                }
                path.pop();
                order.push(name.to_owned());
                Ok(())
            }
        }
    }
    let mut order = Vec::new();
    for w in wanted {
        visit(
            &normalise(w),
            "the module list",
            &mut lookup,
            modules_dir,
            &mut Vec::new(),
            &mut order,
        )?;
    }
    Ok(order)
}

/// The lines of [`KVM_LIST_PATH`]: `flag name [params...]` in load order,
/// the flag of a vendor module its CPU feature and `-` for what it needs;
/// a vendor module the kernel does not have as `absent name`.
pub fn kvm_list(
    load_order: &[String],
    present: &[&KvmLoad],
    absent: &[&KvmLoad],
    kvm_params: &[String],
) -> String {
    let mut out = String::new();
    for name in load_order {
        let vendor = present.iter().find(|k| &k.module.name == name);
        let load = match vendor {
            Some(k) => k.module.clone(),
            None if name == "kvm" => ModuleLoad {
                name: name.clone(),
                params: kvm_params.to_vec(),
            },
            None => ModuleLoad::new(name),
        };
        out.push_str(vendor.map_or("-", |k| k.cpu_flag));
        out.push(' ');
        out.push_str(&module_list(std::slice::from_ref(name), &[load]));
    }
    for k in absent {
        out.push_str(&format!("absent {}\n", k.module.name));
    }
    out
}

/// The lines of `/etc/ukci/modules`: `name [params...]` in load order.
pub fn module_list(load_order: &[String], requested: &[ModuleLoad]) -> String {
    let mut out = String::new();
    for name in load_order {
        out.push_str(name);
        if let Some(req) = requested.iter().find(|r| &r.name == name) {
            for p in &req.params {
                out.push(' ');
                out.push_str(p);
            }
        }
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------
// busybox

/// Whether an ELF64 executable asks for a dynamic loader (has a PT_INTERP).
/// Returns `None` when the bytes are not a 64-bit little-endian ELF.
pub fn elf_is_dynamic(elf: &[u8]) -> Option<bool> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    const PT_INTERP: u32 = 3;
    let mut dynamic = false;
    for i in 0..phnum {
        dynamic |= u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP;
    }
    Some(dynamic)
}

/// The symlink target that reaches `bin/busybox` from an applet path.
fn applet_link_target(applet: &str) -> String {
    match applet.rsplit_once('/') {
        Some(("bin", _)) => "busybox".to_owned(),
        Some((dir, _)) => format!("{}bin/busybox", "../".repeat(dir.split('/').count())),
        None => "bin/busybox".to_owned(),
    }
}

/// The applet paths of a busybox (`bin/sh`, `sbin/insmod`, ...), from
/// `busybox --list-full`.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, InitramfsError> {
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(io_err(busybox))?;
    if !out.status.success() {
        return Err(InitramfsError::Bad {
            path: busybox.to_owned(),
            what: format!("`--list-full` failed: {}", out.status),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_owned())
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect())
}

// ---------------------------------------------------------------------------
// Cache key and build

/// Builds the image for `kernel` into `<cache_root>/initramfs/`, or returns
/// the cached one. Runs building the same image at once wait for the first
/// (a lock per image); each writes under its own temporary name and renames
/// it into place, so a reader sees a whole image or none.
pub fn build(
    cache_root: &Path,
    kernel: &Kernel,
    spec: &InitramfsSpec,
) -> Result<Initramfs, InitramfsError> {
    let index = index_modules(&kernel.modules_dir)?;
    let bb_meta = fs::metadata(&spec.busybox).map_err(io_err(&spec.busybox))?;

    // The same tree under another spelling of its path is the same tree.
    let modules_dir = fs::canonicalize(&kernel.modules_dir).map_err(io_err(&kernel.modules_dir))?;
    let mut h = cache::Fnv::new();
    h.bytes(FORMAT.as_bytes())
        .bytes(kernel.release.as_bytes())
        .bytes(modules_dir.as_os_str().as_encoded_bytes())
        .bytes(INIT_SCRIPT.as_bytes())
        .bytes(spec.busybox.as_os_str().as_encoded_bytes())
        .bytes(&bb_meta.len().to_le_bytes())
        .bytes(&mtime(&bb_meta).to_le_bytes());
    for m in spec
        .modules
        .iter()
        .chain(spec.kvm.iter().map(|k| &k.module))
    {
        h.bytes(m.name.as_bytes())
            .bytes(m.params.join(" ").as_bytes());
    }
    for k in &spec.kvm {
        h.bytes(k.cpu_flag.as_bytes());
    }
    h.bytes(spec.kvm_params.join(" ").as_bytes());
    for (name, path) in &spec.replacements {
        let meta = fs::metadata(path).map_err(io_err(path))?;
        h.bytes(name.as_bytes())
            .bytes(path.as_os_str().as_encoded_bytes())
            .bytes(&meta.len().to_le_bytes())
            .bytes(&mtime(&meta).to_le_bytes());
    }
    let mut files: Vec<_> = index.iter().collect();
    files.sort_by(|a, b| a.0.cmp(b.0));
    for (name, f) in files {
        h.bytes(name.as_bytes())
            .bytes(&f.size.to_le_bytes())
            .bytes(&f.mtime.to_le_bytes());
    }
    if let Ok(meta) = fs::metadata(kernel.modules_dir.join("modules.builtin")) {
        h.bytes(&meta.len().to_le_bytes())
            .bytes(&mtime(&meta).to_le_bytes());
    }

    let dir = cache_root.join("initramfs");
    let stem = format!("{}-{}", kernel.release, h.hex());
    let image = dir.join(format!("{stem}.cpio"));
    let order_file = dir.join(format!("{stem}.modules"));
    if let Some(cached) = cached(&image, &order_file) {
        return Ok(cached);
    }
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let _lock = EntryLock::acquire(&image).map_err(io_err(&image))?;
    if let Some(cached) = cached(&image, &order_file) {
        return Ok(cached); // another run built it while this one waited
    }

    let busybox = fs::read(&spec.busybox).map_err(io_err(&spec.busybox))?;
    if elf_is_dynamic(&busybox) != Some(false) {
        return Err(InitramfsError::Bad {
            path: spec.busybox.clone(),
            what: "not a statically linked x86-64 busybox (install the `busybox-static` package)"
                .into(),
        });
    }
    let applets = busybox_applets(&spec.busybox)?;

    let builtin = builtin_modules(&kernel.modules_dir);
    let mut blobs: HashMap<String, Vec<u8>> = HashMap::new();
    let mut lookup = |name: &str| {
        let file = match spec.replacements.get(name) {
            Some(path) => Some(ModuleFile {
                path: path.clone(),
                size: 0,
                mtime: 0,
            }),
            None => index.get(name).cloned(),
        };
        if let Some(file) = file {
            let data = load_module(&file)?;
            let deps = modinfo_depends(&data);
            blobs.insert(name.to_owned(), data);
            Ok(Lookup::Module(deps))
        } else if builtin.contains(name) {
            Ok(Lookup::Builtin)
        } else {
            Ok(Lookup::Missing)
        }
    };
    let wanted: Vec<String> = spec.modules.iter().map(|m| m.name.clone()).collect();
    let order = dependency_closure(&wanted, &mut lookup, &kernel.modules_dir)?;
    let list = module_list(&order, &spec.modules);
    // KVM a kernel lacks altogether is left out here and said in the log.
    let (kvm_present, kvm_absent): (Vec<&KvmLoad>, Vec<&KvmLoad>) =
        spec.kvm.iter().partition(|k| {
            spec.replacements.contains_key(&k.module.name) || index.contains_key(&k.module.name)
        });
    let kvm_wanted: Vec<String> = kvm_present.iter().map(|k| k.module.name.clone()).collect();
    let kvm_order: Vec<String> = dependency_closure(&kvm_wanted, &mut lookup, &kernel.modules_dir)?
        .into_iter()
        .filter(|m| !order.contains(m))
        .collect();
    let kvm_list = kvm_list(&kvm_order, &kvm_present, &kvm_absent, &spec.kvm_params);

    let tmp = cache::temp_path(&image);
    let write = || -> io::Result<()> {
        let out = io::BufWriter::new(fs::File::create(&tmp)?);
        let mut cpio = CpioWriter::new(out);
        for d in [
            "bin",
            "sbin",
            "usr",
            "usr/bin",
            "usr/sbin",
            "etc",
            "etc/ukci",
            "proc",
            "sys",
            "dev",
            "tmp",
            "run",
            "host",
            "results",
            "lib",
            "lib/modules",
        ] {
            cpio.dir(d, 0o755)?;
        }
        cpio.char_dev("dev/console", 0o600, 5, 1)?;
        cpio.char_dev("dev/null", 0o666, 1, 3)?;
        cpio.file("bin/busybox", 0o755, &busybox)?;
        for applet in &applets {
            cpio.symlink(applet, &applet_link_target(applet))?;
        }
        cpio.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
        for name in order.iter().chain(&kvm_order) {
            cpio.file(&format!("lib/modules/{name}.ko"), 0o644, &blobs[name])?;
        }
        cpio.file(MODULE_LIST_PATH, 0o644, list.as_bytes())?;
        cpio.file(KVM_LIST_PATH, 0o644, kvm_list.as_bytes())?;
        cpio.file(
            "etc/ukci/release",
            0o644,
            format!("{}\n", kernel.release).as_bytes(),
        )?;
        cpio.finish()?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    // The load order first: an image on disk always has its order beside it.
    let placed = cache::write_atomic(&order_file, list.as_bytes())
        .map_err(io_err(&order_file))
        .and_then(|()| fs::rename(&tmp, &image).map_err(io_err(&image)));
    if placed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    placed?;
    Ok(Initramfs {
        path: image,
        load_order: order,
        cached: false,
    })
}

/// The image at `image` with its load order from `order_file`, when both
/// are there.
fn cached(image: &Path, order_file: &Path) -> Option<Initramfs> {
    let list = fs::read_to_string(order_file).ok()?;
    image.is_file().then(|| Initramfs {
        path: image.to_owned(),
        load_order: list
            .lines()
            .filter_map(|l| l.split(' ').next())
            .map(str::to_owned)
            .collect(),
        cached: true,
    })
}

/// One entry read back from a newc archive (for tests and diagnostics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub name: String,
    pub mode: u32,
    pub nlink: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
    /// Offset of the header in the archive.
    pub offset: usize,
}

/// Reads a newc archive up to and including its trailer, checking magic and
/// 4-byte alignment of every header and data start.
pub fn read_cpio(mut archive: &[u8]) -> Result<Vec<CpioEntry>, String> {
    let total = archive.len();
    let mut entries = Vec::new();
    loop {
        let offset = total - archive.len();
        if !offset.is_multiple_of(4) {
            return Err(format!("header at {offset} not 4-byte aligned"));
        }
        if archive.len() < 110 {
            return Err(format!("truncated header at {offset}"));
        }
        let header = &archive[..110];
        if &header[..6] != b"070701" {
            return Err(format!("bad magic at {offset}"));
        }
        let field = |i: usize| {
            let s =
                std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).map_err(|e| e.to_string())?;
            u32::from_str_radix(s, 16).map_err(|e| format!("field {i} at {offset}: {e}"))
        };
        let (mode, nlink, size, rmaj, rmin, namesize) = (
            field(1)?,
            field(4)?,
            field(6)? as usize,
            field(9)?,
            field(10)?,
            field(11)? as usize,
        );
        let name_end = 110 + namesize;
        let data_start = name_end.next_multiple_of(4);
        let data_end = data_start + size;
        if archive.len() < data_end {
            return Err(format!("truncated entry at {offset}"));
        }
        if archive[name_end - 1] != 0 {
            return Err(format!("name at {offset} not NUL-terminated"));
        }
        if archive[name_end..data_start].iter().any(|&b| b != 0) {
            return Err(format!("non-zero name padding at {offset}"));
        }
        let name = String::from_utf8_lossy(&archive[110..name_end - 1]).into_owned();
        let data = archive[data_start..data_end].to_vec();
        let next = data_end.next_multiple_of(4).min(archive.len());
        archive = &archive[next..];
        let done = name == "TRAILER!!!";
        entries.push(CpioEntry {
            name,
            mode,
            nlink,
            rdev: (rmaj, rmin),
            data,
            offset,
        });
        if done {
            return Ok(entries);
        }
    }
}

/// Reads a whole file (small helper for callers checking an image).
pub fn read_cpio_file(path: &Path) -> Result<Vec<CpioEntry>, String> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    read_cpio(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kvm_list_gates_vendor_modules_on_their_cpu_flag() {
        let kvm = kvm_modules();
        let order: Vec<String> = ["kvm", "ccp", "kvm_amd"].map(String::from).to_vec();
        let list = kvm_list(&order, &[&kvm[0]], &[&kvm[1]], &["crpin_flaw=none".into()]);
        assert_eq!(
            list,
            "- kvm crpin_flaw=none\n- ccp\nsvm kvm_amd\nabsent kvm_intel\n"
        );
    }

    #[test]
    fn cpio_round_trips_names_modes_sizes_and_trailer() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("bin/busybox", 0o755, b"hello").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("empty", 0o644, b"").unwrap();
        w.file("abcd", 0o644, b"1234").unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);

        let e = read_cpio(&bytes).unwrap();
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev/console",
                "empty",
                "abcd",
                "TRAILER!!!"
            ]
        );
        assert_eq!(e[0].mode, mode::DIR | 0o755);
        assert_eq!(e[0].nlink, 2);
        assert_eq!(
            (e[1].mode, e[1].data.as_slice()),
            (mode::FILE | 0o755, &b"hello"[..])
        );
        assert_eq!(
            (e[2].mode, e[2].data.as_slice()),
            (mode::SYMLINK | 0o777, &b"busybox"[..])
        );
        assert_eq!((e[3].mode, e[3].rdev), (mode::CHAR | 0o600, (5, 1)));
        assert!(e[4].data.is_empty());
        assert_eq!(e[5].data, b"1234");
        assert_eq!(e[6].mode, 0);
        assert!(e.iter().all(|e| e.offset % 4 == 0));
        // The header is plain ASCII: magic then the inode number.
        assert_eq!(&bytes[..14], b"07070100000001");
    }

    #[test]
    fn cpio_reader_rejects_a_missing_trailer() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("a", 0o644, b"x").unwrap();
        let mut bytes = w.finish().unwrap();
        let cut = read_cpio(&bytes).unwrap().last().unwrap().offset;
        bytes.truncate(cut);
        assert!(read_cpio(&bytes).unwrap_err().contains("truncated"));
    }

    #[test]
    fn depends_come_from_modinfo() {
        let module =
            b"\x7fELF...\0license=GPL\0depends=vfio,irqbypass,vfio-pci-core\0retpoline=Y\0";
        assert_eq!(
            modinfo_depends(module),
            ["vfio", "irqbypass", "vfio_pci_core"]
        );
        assert!(modinfo_depends(b"\0license=GPL\0depends=\0name=x\0").is_empty());
        assert!(modinfo_depends(b"no modinfo").is_empty());
        let info = b"\0license=GPL\0vermagic=7.3.4+deb13-amd64 SMP preempt mod_unload \0name=kvm\0";
        assert_eq!(
            modinfo_field(info, "vermagic").as_deref(),
            Some("7.3.4+deb13-amd64 SMP preempt mod_unload ")
        );
        assert_eq!(modinfo_field(info, "magic"), None, "whole keys only");
    }

    fn fake(deps: &[(&str, &[&str])]) -> impl FnMut(&str) -> Result<Lookup, InitramfsError> {
        let map: HashMap<String, Vec<String>> = deps
            .iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect();
        move |name| {
            Ok(match map.get(name) {
                Some(d) => Lookup::Module(d.clone()),
                None if name == "virtio_pci" => Lookup::Builtin,
                None => Lookup::Missing,
            })
        }
    }

    #[test]
    fn closure_orders_dependencies_first_once_and_skips_builtins() {
        let lookup = fake(&[
            ("vfio_pci", &["vfio", "vfio_pci_core"]),
            ("vfio_pci_core", &["vfio", "irqbypass"]),
            ("vfio", &["iommufd"]),
            ("iommufd", &[]),
            ("irqbypass", &[]),
            ("vfio_iommu_type1", &["vfio"]),
            ("9p", &["9pnet", "netfs"]),
            ("9pnet", &[]),
            ("netfs", &[]),
        ]);
        let wanted: Vec<String> = ["virtio_pci", "9p", "vfio-pci", "vfio_iommu_type1"]
            .map(String::from)
            .to_vec();
        let order = dependency_closure(&wanted, lookup, Path::new("/m")).unwrap();
        assert_eq!(
            order,
            [
                "9pnet",
                "netfs",
                "9p",
                "iommufd",
                "vfio",
                "irqbypass",
                "vfio_pci_core",
                "vfio_pci",
                "vfio_iommu_type1"
            ]
        );
    }

    #[test]
    fn closure_names_a_missing_module_and_who_needs_it() {
        let lookup = fake(&[("9p", &["9pnet", "fscache"]), ("9pnet", &[])]);
        let err =
            dependency_closure(&["9p".into()], lookup, Path::new("/lib/modules/x")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`fscache`")
                && msg.contains("needed by 9p")
                && msg.contains("/lib/modules/x"),
            "{msg}"
        );
    }

    #[test]
    fn closure_reports_cycles() {
        let lookup = fake(&[("a", &["b"]), ("b", &["a"])]);
        let err = dependency_closure(&["a".into()], lookup, Path::new("/m")).unwrap_err();
        assert_eq!(err.to_string(), "module dependency cycle: a -> b -> a");
    }

    #[test]
    fn module_list_carries_params_of_requested_modules_only() {
        let req = [ModuleLoad::with_params(
            "vfio-pci",
            &["enable_sriov=1", "disable_idle_d3=1"],
        )];
        let list = module_list(&["vfio".into(), "vfio_pci".into()], &req);
        assert_eq!(list, "vfio\nvfio_pci enable_sriov=1 disable_idle_d3=1\n");
    }

    #[test]
    fn static_busybox_is_told_from_dynamic_binaries() {
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert_eq!(elf_is_dynamic(&elf), Some(false));
        elf[64 + 56..64 + 60].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        assert_eq!(elf_is_dynamic(&elf), Some(true));
        assert_eq!(elf_is_dynamic(b"#!/bin/sh\n"), None);
    }

    /// A fake kernel: modules tree with plain and xz modules, builtins.
    #[test]
    fn build_writes_a_bootable_layout_and_caches_it() {
        let root = std::env::temp_dir().join(format!("ukci-vhost-initrd-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mods = root.join("lib/modules/6.9.0-fake");
        fs::create_dir_all(mods.join("kernel/fs/9p")).unwrap();
        fs::create_dir_all(mods.join("kernel/net/9p")).unwrap();
        fs::write(mods.join("kernel/fs/9p/9p.ko"), b"\0depends=9pnet,netfs\0").unwrap();
        fs::write(mods.join("kernel/net/9p/9pnet.ko"), b"\0depends=\0").unwrap();
        // netfs as .ko.xz: produced by the system xz, as Debian does.
        let raw = mods.join("kernel/fs/netfs.ko");
        fs::write(&raw, b"\0depends=\0name=netfs\0").unwrap();
        let status = std::process::Command::new("xz")
            .args(["--check=crc32", "--lzma2=dict=1MiB"])
            .arg(&raw)
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("skipping the .ko.xz part: no xz on PATH");
            fs::write(&raw, b"\0depends=\0name=netfs\0").unwrap();
        }
        fs::write(
            mods.join("modules.builtin"),
            "kernel/drivers/virtio/virtio_pci.ko\n",
        )
        .unwrap();
        let kernel = Kernel {
            name: "dir:fake".into(),
            package: None,
            version: None,
            release: "6.9.0-fake".into(),
            vmlinuz: root.join("bzImage"),
            modules_dir: mods.clone(),
        };
        let busybox = PathBuf::from("/bin/busybox");
        if elf_is_dynamic(&fs::read(&busybox).unwrap_or_default()) != Some(false) {
            eprintln!("skipping: no static /bin/busybox (install busybox-static)");
            return;
        }
        let spec = InitramfsSpec {
            busybox,
            modules: vec![
                ModuleLoad::new("virtio_pci"),
                ModuleLoad::with_params("9p", &["debug=0"]),
            ],
            kvm: vec![],
            replacements: BTreeMap::new(),
            kvm_params: Vec::new(),
        };
        let images = root.join("images");
        let first = build(&images, &kernel, &spec).unwrap();
        assert!(!first.cached);
        assert_eq!(first.load_order, ["9pnet", "netfs", "9p"]);
        let entries = read_cpio_file(&first.path).unwrap();
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("no {n}"))
        };
        assert_eq!(get("init").mode, mode::FILE | 0o755);
        assert_eq!(get("init").data, INIT_SCRIPT.as_bytes());
        assert_eq!(get("bin/sh").data, b"busybox");
        assert_eq!(get("sbin/insmod").data, b"../bin/busybox");
        assert_eq!(get("usr/bin/[").data, b"../../bin/busybox");
        assert_eq!(
            get("lib/modules/netfs.ko").data,
            b"\0depends=\0name=netfs\0",
            "decompressed"
        );
        assert_eq!(get(MODULE_LIST_PATH).data, b"9pnet\nnetfs\n9p debug=0\n");
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(entries.last().unwrap().name, "TRAILER!!!");

        let again = build(&images, &kernel, &spec).unwrap();
        assert!(again.cached);
        assert_eq!(again.path, first.path);
        assert_eq!(again.load_order, first.load_order);

        // A changed module set is a different image.
        let other = InitramfsSpec {
            modules: vec![ModuleLoad::new("9p")],
            ..spec.clone()
        };
        let third = build(&images, &kernel, &other).unwrap();
        assert!(!third.cached);
        assert_ne!(third.path, first.path);

        let missing = InitramfsSpec {
            modules: vec![ModuleLoad::new("vfio_pci")],
            ..spec
        };
        let msg = build(&images, &kernel, &missing).unwrap_err().to_string();
        assert!(
            msg.contains("`vfio_pci`") && msg.contains("6.9.0-fake"),
            "{msg}"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    /// Suites of one run (threads) and runs on one machine (processes) that
    /// need the same image at once: one builds it, the others wait and take it.
    #[test]
    fn concurrent_builds_of_one_image_share_it() {
        let busybox = PathBuf::from("/bin/busybox");
        if elf_is_dynamic(&fs::read(&busybox).unwrap_or_default()) != Some(false) {
            return eprintln!("skipping: no static /bin/busybox (install busybox-static)");
        }
        let root =
            std::env::temp_dir().join(format!("ukci-vhost-initrd-race-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mods = root.join("lib/modules/6.9.0-race");
        fs::create_dir_all(mods.join("kernel/fs")).unwrap();
        fs::write(mods.join("kernel/fs/9p.ko"), b"\0depends=\0").unwrap();
        let kernel = Kernel {
            name: "dir:race".into(),
            package: None,
            version: None,
            release: "6.9.0-race".into(),
            vmlinuz: root.join("bzImage"),
            modules_dir: mods,
        };
        let spec = InitramfsSpec {
            busybox,
            modules: vec![ModuleLoad::new("9p")],
            kvm: vec![],
            replacements: BTreeMap::new(),
            kvm_params: Vec::new(),
        };
        let cache = root.join("cache");
        let built: Vec<Initramfs> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| build(&cache, &kernel, &spec).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(built.iter().filter(|b| !b.cached).count(), 1, "{built:?}");
        assert!(
            built
                .iter()
                .all(|b| b.path == built[0].path && b.load_order == ["9p"])
        );
        read_cpio_file(&built[0].path).unwrap();
        let mut left: Vec<String> = fs::read_dir(cache.join("initramfs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .map(|n| n.rsplit('.').next().unwrap().to_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["cpio", "lock", "modules"],
            "no temporary file is left"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
