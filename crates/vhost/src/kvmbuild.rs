//! KVM modules built from a Debian kernel's own sources with one of the
//! patch sets in `patches/kvm/<set>/` applied, out of tree against the
//! kernel's headers package.
//!
//! Everything lives in the per-user cache under `kvm/`:
//!
//! - `kernels/<image>_<version>/`: the inputs of one kernel, fetched once
//!   through ukci's private apt at exactly the image's Debian version:
//!   `root/` holds the unpacked `linux-headers-<release>` and the packages of
//!   the same kernel it depends on (`-common`, `linux-kbuild-*`), with the
//!   absolute paths of its Makefile pointed at `root/`; `source/` holds
//!   `arch/x86/kvm` and `virt/kvm` from `linux-source-<series>`.
//! - `chroots/gcc-<N>-<format>/`: a minimal Debian root with the compiler
//!   the kernel was built with, made with debootstrap when the machine lacks
//!   it (root only). Builds see the kernel's inputs and their tree there at
//!   the same paths, through bind mounts in a private mount namespace that
//!   ends with the build, `/proc` included.
//! - `builds/<image>_<version>/work/`: the one build tree of a kernel. Each
//!   build copies in only the source files that differ from the last one,
//!   so make recompiles what changed: the sets share the hook patch and
//!   differ mostly in `crpin.c`. (A copy of the tree elsewhere would not
//!   do: kbuild records absolute paths in its command files and would
//!   rebuild everything.)
//! - `builds/<image>_<version>/<set>-<key>/`: a finished build: the `.ko`
//!   files and `build.log`. The key hashes the kernel package and version,
//!   the compiler, where it ran, and every file the series names.
//!
//! Every entry is made under its own lock and put in place with a rename.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ukci_supervise as supervise;

use crate::apt::{self, Apt, AptError};
use crate::cache::{self, EntryLock, Fnv};
use crate::initramfs;
use crate::kernel::{Kernel, unpack_dir_name};

/// Changes whenever the layout or the way of building changes, so old
/// entries are not taken for new ones.
const FORMAT: &str = "ukci-kvmbuild-1";

/// The build chroot's name suffix; bump it when [`CHROOT_PACKAGES`] changes.
const CHROOT_FORMAT: &str = "v1";

/// What the build chroot holds besides the compiler: make, a libc to link
/// against, and objtool's libelf (pulled in by `libelf-dev` under its
/// name in each suite, `libelf1` or `libelf1t64`).
const CHROOT_PACKAGES: &[&str] = &["make", "binutils", "bc", "libc6-dev", "libelf-dev"];

/// The modules a build yields: module name → file in the tree. `kvm_intel`
/// is there when the kernel's configuration has it.
const MODULES: &[(&str, &str)] = &[
    ("kvm", "kvm.ko"),
    ("kvm_amd", "kvm-amd.ko"),
    ("kvm_intel", "kvm-intel.ko"),
];

const DPKG_TIMEOUT: Duration = Duration::from_secs(600);
const TAR_TIMEOUT: Duration = Duration::from_secs(600);
const PATCH_TIMEOUT: Duration = Duration::from_secs(120);
const MAKE_TIMEOUT: Duration = Duration::from_secs(45 * 60);
const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The log line that says how long a build took (sources staged, patched,
/// compiled and checked; fetching and the chroot excluded).
const BUILT_IN: &str = "built in ";

/// How long the build behind a build log took, as its last note says.
pub fn built_in(log: &str) -> Option<f64> {
    log.lines()
        .rev()
        .find_map(|l| l.split_once(BUILT_IN)?.1.strip_suffix(" s")?.parse().ok())
}

/// Modules built for one kernel from one patch set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmBuild {
    /// Module name (`kvm`, `kvm_amd`, `kvm_intel`) → `.ko` file, ready for
    /// `InitramfsSpec::replacements`.
    pub modules: BTreeMap<String, PathBuf>,
    /// The full log of the build that made them.
    pub log: PathBuf,
    /// True when they came from the cache.
    pub cached: bool,
    /// The cache key: 16 hex digits over the kernel package and version, the
    /// compiler, where it ran and the patch files.
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KvmBuildError {
    #[error(
        "kernel `{kernel}` is not a Debian package: patched KVM is built only for `debian:` kernels"
    )]
    NotDebian { kernel: String },
    #[error("patch set {path}: {what}")]
    Series { path: PathBuf, what: String },
    #[error(
        "{package} {version} (for {kernel}) is not in the suites searched ({suites}); versions there: {found}"
    )]
    NoPackage {
        kernel: String,
        package: String,
        version: String,
        suites: String,
        found: String,
    },
    #[error(
        "{kernel} was built with {compiler}, which this machine lacks; KVM for it is built in a Debian chroot, \
         and making or entering one needs root: run as root, or install {package}"
    )]
    NeedsRoot {
        kernel: String,
        compiler: String,
        package: String,
    },
    #[error("patch {patch} does not apply to {kernel}:\n{output}\n(full log: {log})")]
    Patch {
        patch: PathBuf,
        kernel: String,
        output: String,
        log: PathBuf,
    },
    #[error("building KVM with patch set `{set}` for {kernel} failed: {error}\n(full log: {log})")]
    Compile {
        set: String,
        kernel: String,
        error: String,
        log: PathBuf,
    },
    #[error(
        "{module}: vermagic `{built}` differs from the kernel's own kvm ({stock}: `{stock_magic}`); \
         the kernel would refuse to load it"
    )]
    Vermagic {
        module: PathBuf,
        built: String,
        stock: PathBuf,
        stock_magic: String,
    },
    #[error("`{command}` failed ({status}): {output}{}", log.as_ref().map(|l| format!("\n(full log: {})", l.display())).unwrap_or_default())]
    Command {
        command: String,
        status: String,
        output: String,
        log: Option<PathBuf>,
    },
    #[error("{path}: {what}")]
    Layout { path: PathBuf, what: String },
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KvmBuildError + '_ {
    move |source| KvmBuildError::Io {
        path: path.to_owned(),
        source,
    }
}

// ---------------------------------------------------------------------------
// Decisions: series, compiler, keys, what a tool's output means.

/// The patch names in a `series` file, in order. Blank lines and `#`
/// comments are skipped; a line is one name (patches apply with `-p1`).
/// Errors name the line.
fn parse_series(text: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        if line.split_whitespace().nth(1).is_some() {
            return Err(format!(
                "line {}: `{line}`: one patch name per line, without options (patches apply with -p1)",
                i + 1
            ));
        }
        names.push(line.to_owned());
    }
    if names.is_empty() {
        return Err("names no patch".into());
    }
    Ok(names)
}

/// The kernel series (`6.12`) of a Debian package version (`6.12.117-1`).
fn series_of(version: &str) -> Option<String> {
    let up = apt::upstream_version(version);
    let mut parts = up.split(['.', '~', '+', '-']);
    let (major, minor) = (parts.next()?, parts.next()?);
    [major, minor]
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("{major}.{minor}"))
}

/// The compiler a kernel was built with, from its `.config`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Compiler {
    /// `CONFIG_CC_VERSION_TEXT`: `x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0`.
    pub text: String,
    /// The program kbuild runs: `x86_64-linux-gnu-gcc-14`.
    pub program: String,
    /// The Debian package that has it: `gcc-14`.
    pub package: String,
}

/// The compiler named in a kernel `.config`; only GCC is supported.
fn compiler_from_config(config: &str) -> Result<Compiler, String> {
    let text = config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_CC_VERSION_TEXT="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .ok_or("no CONFIG_CC_VERSION_TEXT")?;
    let program = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    if !config.lines().any(|l| l.trim() == "CONFIG_CC_IS_GCC=y") {
        return Err(format!("built with `{text}`, not GCC"));
    }
    // `x86_64-linux-gnu-gcc-14` or `gcc-12`: the package is `gcc-<major>`.
    let major = program
        .rsplit_once("gcc-")
        .map(|(_, m)| m)
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("`{program}` (from `{text}`) names no GCC major version"))?;
    Ok(Compiler {
        package: format!("gcc-{major}"),
        program,
        text,
    })
}

/// Where the compiler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The machine has the kernel's compiler.
    Host,
    /// A Debian chroot with it.
    Chroot,
}

/// The cache key of a build: what decides the modules' bytes.
fn build_key(
    package: &str,
    version: &str,
    compiler: &Compiler,
    place: Place,
    patches: &[(String, Vec<u8>)],
) -> String {
    let mut h = Fnv::new();
    h.bytes(FORMAT.as_bytes())
        .bytes(package.as_bytes())
        .bytes(version.as_bytes())
        .bytes(compiler.text.as_bytes())
        .bytes(format!("{place:?}").as_bytes());
    for (name, bytes) in patches {
        h.bytes(name.as_bytes()).bytes(bytes);
    }
    h.hex()
}

/// What `patch` said about the hunks that failed: the `patching file` line
/// of each file with a problem and the problem lines themselves; the whole
/// output when it has none of those.
fn patch_failure(output: &str) -> String {
    const BAD: &[&str] = &[
        "FAILED",
        "Reversed (or previously applied)",
        "can't find file",
        "malformed patch",
        "Only garbage",
        "ignored",
        "No such file",
        "unexpected end",
    ];
    let mut lines: Vec<&str> = Vec::new();
    let mut file: Option<&str> = None;
    for line in output.lines() {
        if line.starts_with("patching file ") || line.starts_with("checking file ") {
            file = Some(line);
        } else if BAD.iter().any(|b| line.contains(b)) {
            if let Some(f) = file.take() {
                lines.push(f);
            }
            lines.push(line);
        }
    }
    let chosen = if lines.is_empty() {
        output.trim().lines().collect()
    } else {
        lines
    };
    chosen
        .iter()
        .map(|l| format!("  {}", l.trim_end()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first error a build printed: the compiler's `error:` line, else a
/// modpost or kbuild `ERROR:` line, else make's `***` line.
fn first_error(output: &str) -> Option<&str> {
    let find = |needle: &str| output.lines().find(|l| l.contains(needle)).map(str::trim);
    find("error:")
        .or_else(|| find("ERROR:"))
        .or_else(|| find("***"))
}

/// The flavour Makefile of a headers package (`KBUILD_OUTPUT=/usr/src/…`,
/// `include /usr/src/…-common/Makefile`) pointed at a copy unpacked under
/// `root`; `None` when it has no `include /usr/src/` line.
fn relocate_headers_makefile(text: &str, root: &Path) -> Option<String> {
    let root = root.display().to_string();
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            for prefix in ["include ", "KBUILD_OUTPUT="] {
                if let Some(rest) = l.strip_prefix(prefix)
                    && rest.starts_with("/usr/src/")
                {
                    found |= prefix == "include ";
                    return format!("{prefix}{root}{rest}");
                }
            }
            l.to_owned()
        })
        .collect();
    found.then(|| out.join("\n") + "\n")
}

/// `arch/x86/kvm/Makefile` made to build out of `tree` against a headers
/// package: its own directory and `include/trace` on the include path
/// (`trace.h` names itself `../../arch/x86/kvm/trace.h` through the
/// headers' `define_trace.h`), and `virt/kvm/Makefile.kvm` from `tree`.
/// `None` when either line is not there.
fn fix_kvm_makefile(text: &str, tree: &Path) -> Option<String> {
    let t = tree.display();
    let ccflags = "ccflags-y += -I $(srctree)/arch/x86/kvm";
    let include = "include $(srctree)/virt/kvm/Makefile.kvm";
    let mut seen = (false, false);
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_end() == ccflags {
                seen.0 = true;
                format!("ccflags-y += -I {t}/arch/x86/kvm -I {t}/include/trace")
            } else if l.trim_end() == include {
                seen.1 = true;
                format!("include {t}/virt/kvm/Makefile.kvm")
            } else {
                l.to_owned()
            }
        })
        .collect();
    (seen == (true, true)).then(|| out.join("\n") + "\n")
}

// ---------------------------------------------------------------------------
// The build.

/// The patched KVM modules for `kernel` from `patch_set`
/// (`patches/kvm/<set>`, whose `<series>/series` names the patches for the
/// kernel's series), from the cache under `cache_root` or built now.
/// `progress` gets a line for each step and each line make prints.
pub fn build(
    cache_root: &Path,
    kernel: &Kernel,
    patch_set: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<KvmBuild, KvmBuildError> {
    let (Some(package), Some(version)) = (&kernel.package, &kernel.version) else {
        return Err(KvmBuildError::NotDebian {
            kernel: kernel.name.clone(),
        });
    };
    let series = series_of(version).ok_or_else(|| KvmBuildError::Layout {
        path: kernel.modules_dir.clone(),
        what: format!("Debian version `{version}` names no kernel series"),
    })?;
    let set = patch_set
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| patch_set.display().to_string());
    let patches = load_series(patch_set, &series)?;
    let described = format!("{} ({package} {version})", kernel.name);

    fs::create_dir_all(cache_root.join("kvm")).map_err(io_err(cache_root))?;
    let kvm = fs::canonicalize(cache_root.join("kvm")).map_err(io_err(cache_root))?;
    let inputs = prepare_kernel(
        cache_root, &kvm, kernel, package, version, &series, progress,
    )?;
    let place = if supervise::on_path(&inputs.compiler.program) {
        Place::Host
    } else {
        Place::Chroot
    };
    let named: Vec<(String, Vec<u8>)> = patches
        .iter()
        .map(|p| (p.name.clone(), p.bytes.clone()))
        .collect();
    let key = build_key(package, version, &inputs.compiler, place, &named);
    let builds = kvm.join("builds").join(unpack_dir_name(package, version));
    let entry = builds.join(format!("{set}-{key}"));
    if let Some(done) = finished(&entry, &key) {
        return Ok(done);
    }
    fs::create_dir_all(&builds).map_err(io_err(&builds))?;
    let work = builds.join("work");
    let _lock = EntryLock::acquire(&work).map_err(io_err(&work))?;
    if let Some(done) = finished(&entry, &key) {
        return Ok(done); // another run built it while this one waited
    }
    let root_fs = match place {
        Place::Host => None,
        Place::Chroot if !supervise::is_root() => {
            return Err(KvmBuildError::NeedsRoot {
                kernel: described,
                compiler: inputs.compiler.text.clone(),
                package: inputs.compiler.package.clone(),
            });
        }
        Place::Chroot => Some(chroot(cache_root, &kvm, &inputs.compiler, progress)?),
    };

    let log_path = builds.join(format!("{set}-{key}.log"));
    let mut log = Log::create(&log_path, progress)?;
    log.note(&format!(
        "building KVM with patch set `{set}` ({}) for {described}, compiler {} ({})",
        patch_set.display(),
        inputs.compiler.text,
        match &root_fs {
            Some(c) => format!("in chroot {}", c.display()),
            None => "on this machine".into(),
        }
    ));
    let stage = cache::temp_path(&builds.join("stage"));
    let started = std::time::Instant::now();
    let result = (|| {
        let source = format!("linux-source-{series} {version} (for {})", kernel.name);
        stage_sources(&inputs, &patches, &stage, &work, &source, &mut log)?;
        prepare_work(&work, &inputs.compiler, place, &mut log)?;
        let changed = sync_tree(&stage, &work).map_err(io_err(&work))?;
        log.note(&format!(
            "{} source files changed since the last build",
            changed.len()
        ));
        fs::write(work.join(DIRTY), b"").map_err(io_err(&work))?;
        make(
            &inputs,
            &work,
            root_fs.as_deref(),
            &set,
            &described,
            &mut log,
        )?;
        let built = verify(&work, kernel)?;
        log.note("the modules' vermagic matches the kernel's own kvm");
        log.note(&format!(
            "{BUILT_IN}{:.1} s",
            started.elapsed().as_secs_f64()
        ));
        store(&entry, &built, &log_path)
    })();
    let _ = fs::remove_dir_all(&stage);
    let modules = result?;
    let _ = fs::remove_file(&log_path);
    Ok(KvmBuild {
        modules,
        log: entry.join("build.log"),
        cached: false,
        key,
    })
}

/// One patch of a series.
#[derive(Debug, Clone)]
struct Patch {
    /// As the series names it (relative to the series folder).
    name: String,
    path: PathBuf,
    bytes: Vec<u8>,
}

/// The patches `<patch_set>/<series>/series` names, read.
fn load_series(patch_set: &Path, series: &str) -> Result<Vec<Patch>, KvmBuildError> {
    let dir = patch_set.join(series);
    let file = dir.join("series");
    let bad = |path: &Path, what: String| KvmBuildError::Series {
        path: path.to_owned(),
        what,
    };
    if !file.is_file() {
        let mut there: Vec<String> = fs::read_dir(patch_set)
            .map_err(|e| bad(patch_set, e.to_string()))?
            .flatten()
            .filter(|e| e.path().join("series").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        there.sort();
        return Err(bad(
            patch_set,
            format!(
                "no {series}/series for kernel series {series} (series there: {})",
                if there.is_empty() {
                    "none".into()
                } else {
                    there.join(", ")
                }
            ),
        ));
    }
    let text = fs::read_to_string(&file).map_err(|e| bad(&file, e.to_string()))?;
    let names = parse_series(&text).map_err(|e| bad(&file, e))?;
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let missing = |e: io::Error| bad(&file, format!("`{name}`: {}: {e}", path.display()));
            // Absolute: patch runs in the build's own directory.
            let path = fs::canonicalize(&path).map_err(missing)?;
            let bytes = fs::read(&path).map_err(missing)?;
            Ok(Patch { name, path, bytes })
        })
        .collect()
}

/// The entry of a finished build, if there is one.
fn finished(entry: &Path, key: &str) -> Option<KvmBuild> {
    let modules: BTreeMap<String, PathBuf> = MODULES
        .iter()
        .map(|(name, file)| (name.to_string(), entry.join(file)))
        .filter(|(_, p)| p.is_file())
        .collect();
    let log = entry.join("build.log");
    (modules.contains_key("kvm") && log.is_file()).then(|| KvmBuild {
        modules,
        log,
        cached: true,
        key: key.to_owned(),
    })
}

/// The build log: every step and every command's output, in order.
struct Log<'a> {
    path: PathBuf,
    file: fs::File,
    progress: &'a mut dyn FnMut(&str),
}

/// What a command run through [`Log::run`] printed and how it ended.
struct Ran {
    /// `None` for success, else how it ended.
    failure: Option<String>,
    /// stdout and stderr together.
    output: String,
    /// It ended by itself (with any status), not killed.
    exited: bool,
}

impl<'a> Log<'a> {
    fn create(path: &Path, progress: &'a mut dyn FnMut(&str)) -> Result<Log<'a>, KvmBuildError> {
        let file = fs::File::create(path).map_err(io_err(path))?;
        Ok(Log {
            path: path.to_owned(),
            file,
            progress,
        })
    }

    /// A step: into the log and to the progress callback.
    fn note(&mut self, msg: &str) {
        let _ = writeln!(self.file, "== {msg}");
        (self.progress)(msg);
    }

    /// Runs `program args` under `timeout` with stderr merged into stdout,
    /// both into the log; `stream` passes each line to the progress callback.
    fn run(&mut self, program: &str, args: &[OsString], timeout: Duration, stream: bool) -> Ran {
        let shown = std::iter::once(program.to_owned())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(self.file, "$ {shown}");
        let mut all: Vec<OsString> = vec![
            "-c".into(),
            "exec \"$@\" 2>&1".into(),
            "sh".into(),
            program.into(),
        ];
        all.extend(args.iter().cloned());
        let (file, progress) = (&mut self.file, &mut self.progress);
        let fin = supervise::run(OsStr::new("sh"), &all, timeout, |line| {
            let _ = writeln!(file, "{line}");
            if stream {
                progress(line);
            }
        });
        let mut output = fin.stdout;
        output.push_str(&fin.stderr);
        let failure = apt::failure(&fin.end);
        if let Some(f) = &failure {
            let _ = writeln!(self.file, "{}== {shown}: {f}", fin.stderr);
        }
        Ran {
            failure,
            output,
            exited: matches!(fin.end, supervise::End::Exited(_)),
        }
    }
}

/// Marks a build tree a build may have left half-made (killed mid-write).
const DIRTY: &str = ".ukci-building";
/// Names the compiler the build tree's objects came from.
const TOOLCHAIN: &str = ".ukci-toolchain";
/// Lists the source files last copied into the build tree.
const SOURCES: &str = ".ukci-sources";

/// Copies the kernel's pristine KVM sources to `stage`, applies the
/// patches in order and points the Makefile at `work`.
fn stage_sources(
    inputs: &Inputs,
    patches: &[Patch],
    stage: &Path,
    work: &Path,
    kernel: &str,
    log: &mut Log,
) -> Result<(), KvmBuildError> {
    copy_tree(&inputs.source, stage).map_err(io_err(stage))?;
    fs::create_dir_all(stage.join("include/trace")).map_err(io_err(stage))?;
    for p in patches {
        log.note(&format!("applying {}", p.name));
        let ran = log.run(
            "patch",
            &[
                "-p1".into(),
                "--forward".into(),
                "--batch".into(),
                "--no-backup-if-mismatch".into(),
                "--reject-file=-".into(),
                "-d".into(),
                stage.into(),
                "-i".into(),
                p.path.clone().into(),
            ],
            PATCH_TIMEOUT,
            false,
        );
        if ran.failure.is_some() {
            return Err(KvmBuildError::Patch {
                patch: p.path.clone(),
                kernel: kernel.to_owned(),
                output: patch_failure(&ran.output),
                log: log.path.clone(),
            });
        }
    }
    let makefile = stage.join("arch/x86/kvm/Makefile");
    let text = fs::read_to_string(&makefile).map_err(io_err(&makefile))?;
    let fixed = fix_kvm_makefile(&text, work).ok_or_else(|| KvmBuildError::Layout {
        path: makefile.clone(),
        what: "no `ccflags-y += -I $(srctree)/arch/x86/kvm` or `include $(srctree)/virt/kvm/Makefile.kvm` line to point at the build tree".into(),
    })?;
    fs::write(&makefile, fixed).map_err(io_err(&makefile))
}

/// Empties the build tree when a build was cut short in it or its objects
/// came from another compiler; then records this one.
fn prepare_work(
    work: &Path,
    compiler: &Compiler,
    place: Place,
    log: &mut Log,
) -> Result<(), KvmBuildError> {
    let toolchain = format!("{}\n{place:?}\n", compiler.text);
    let same = fs::read_to_string(work.join(TOOLCHAIN)).is_ok_and(|t| t == toolchain);
    if work.exists() && (work.join(DIRTY).exists() || !same) {
        log.note("starting from a clean build tree");
        fs::remove_dir_all(work).map_err(io_err(work))?;
    } else if work.exists() {
        log.note(&format!("reusing the build tree {}", work.display()));
    }
    fs::create_dir_all(work).map_err(io_err(work))?;
    fs::write(work.join(TOOLCHAIN), toolchain).map_err(io_err(work))
}

/// Every regular file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(dir.join(&rel))? {
            let e = e?;
            let ty = e.file_type()?;
            let path = rel.join(e.file_name());
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Copies the regular files and directories under `from` to `to`.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for rel in files_under(from)? {
        if let Some(parent) = rel.parent() {
            fs::create_dir_all(to.join(parent))?;
        }
        fs::copy(from.join(&rel), to.join(&rel))?;
    }
    Ok(())
}

/// Makes the source files in `work` those of `stage`: a file whose bytes
/// differ is copied (and so gets a new mtime, which makes make rebuild what
/// depends on it), the rest keep theirs; a source file of the last build
/// that `stage` lacks is removed. Build products are left alone. Returns
/// the files copied.
fn sync_tree(stage: &Path, work: &Path) -> io::Result<Vec<PathBuf>> {
    let files = files_under(stage)?;
    let mut changed = Vec::new();
    for rel in &files {
        let (src, dst) = (stage.join(rel), work.join(rel));
        let new = fs::read(&src)?;
        if fs::read(&dst).is_ok_and(|old| old == new) {
            continue;
        }
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        let _ = fs::remove_file(&dst);
        fs::copy(&src, &dst)?;
        changed.push(rel.clone());
    }
    let listed: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    for old in fs::read_to_string(work.join(SOURCES))
        .unwrap_or_default()
        .lines()
    {
        if !listed.iter().any(|l| l == old) {
            let _ = fs::remove_file(work.join(old));
        }
    }
    fs::create_dir_all(work.join("include/trace"))?;
    cache::write_atomic(&work.join(SOURCES), (listed.join("\n") + "\n").as_bytes())?;
    Ok(changed)
}

/// Runs kbuild on the tree, on this machine or in `chroot`.
fn make(
    inputs: &Inputs,
    work: &Path,
    chroot: Option<&Path>,
    set: &str,
    kernel: &str,
    log: &mut Log,
) -> Result<(), KvmBuildError> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let make: Vec<OsString> = vec![
        "env".into(),
        "LC_ALL=C".into(),
        "make".into(),
        "-C".into(),
        inputs.headers.clone().into(),
        format!("M={}", work.join("arch/x86/kvm").display()).into(),
        format!("-j{jobs}").into(),
        "CONFIG_DEBUG_INFO_BTF_MODULES=".into(),
        "modules".into(),
    ];
    log.note(&format!("make ({jobs} jobs)"));
    let ran = match chroot {
        None => log.run("env", &make[1..], MAKE_TIMEOUT, true),
        Some(root) => {
            let mut args: Vec<OsString> = vec![
                "-m".into(),
                "--propagation".into(),
                "private".into(),
                "sh".into(),
                "-c".into(),
                CHROOT_SCRIPT.into(),
                "sh".into(),
                root.into(),
                inputs.root.clone().into(),
                work.into(),
            ];
            args.extend(make);
            log.run("unshare", &args, MAKE_TIMEOUT, true)
        }
    };
    // make cleans up after a failed recipe itself; a killed one may leave
    // an object half-written, newer than its source.
    if ran.exited {
        let _ = fs::remove_file(work.join(DIRTY));
    }
    match &ran.failure {
        None => Ok(()),
        Some(status) => Err(KvmBuildError::Compile {
            set: set.to_owned(),
            kernel: kernel.to_owned(),
            error: first_error(&ran.output)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("make ended with {status}")),
            log: log.path.clone(),
        }),
    }
}

/// Runs a command in chroot `$1` with `$2` (the kernel's inputs) and `$3`
/// (the build tree) mounted at their own paths, and `/proc` (objtool
/// reads it). Meant for a private mount namespace (`unshare -m`): the
/// mounts end with it.
const CHROOT_SCRIPT: &str = r#"set -e
C=$1 H=$2 W=$3
shift 3
mkdir -p "$C$H" "$C$W"
mount --bind "$H" "$C$H"
mount --bind "$W" "$C$W"
mount -t proc proc "$C/proc"
exec chroot "$C" "$@""#;

/// The built modules, each checked against the kernel's own kvm: the
/// kernel loads only modules with its vermagic.
fn verify(work: &Path, kernel: &Kernel) -> Result<BTreeMap<String, PathBuf>, KvmBuildError> {
    let dir = kernel.modules_dir.join("kernel/arch/x86/kvm");
    let stock = ["kvm.ko", "kvm.ko.xz"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| KvmBuildError::Layout {
            path: dir.join("kvm.ko.xz"),
            what: format!(
                "{} has no kvm module to compare the build with",
                kernel.name
            ),
        })?;
    let magic = |path: &Path| -> Result<String, KvmBuildError> {
        let bytes = initramfs::read_module(path).map_err(|e| KvmBuildError::Layout {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
        initramfs::modinfo_field(&bytes, "vermagic").ok_or_else(|| KvmBuildError::Layout {
            path: path.to_owned(),
            what: "no vermagic in .modinfo".into(),
        })
    };
    let stock_magic = magic(&stock)?;
    let mut out = BTreeMap::new();
    for (name, file) in MODULES {
        let path = work.join("arch/x86/kvm").join(file);
        if !path.is_file() {
            continue;
        }
        let built = magic(&path)?;
        if built != stock_magic {
            return Err(KvmBuildError::Vermagic {
                module: path,
                built,
                stock,
                stock_magic,
            });
        }
        out.insert(name.to_string(), path);
    }
    for required in ["kvm", "kvm_amd"] {
        if !out.contains_key(required) {
            return Err(KvmBuildError::Layout {
                path: work.join("arch/x86/kvm"),
                what: format!("make left no {required} module"),
            });
        }
    }
    Ok(out)
}

/// Puts the modules and the log into the cache entry, all at once.
fn store(
    entry: &Path,
    built: &BTreeMap<String, PathBuf>,
    log: &Path,
) -> Result<BTreeMap<String, PathBuf>, KvmBuildError> {
    let tmp = cache::temp_path(entry);
    let result = (|| {
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let mut out = BTreeMap::new();
        for (name, path) in built {
            let file = path.file_name().unwrap_or_default();
            fs::copy(path, tmp.join(file)).map_err(io_err(path))?;
            out.insert(name.clone(), entry.join(file));
        }
        fs::copy(log, tmp.join("build.log")).map_err(io_err(log))?;
        let _ = fs::remove_dir_all(entry);
        fs::rename(&tmp, entry).map_err(io_err(entry))?;
        Ok(out)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

// ---------------------------------------------------------------------------
// The kernel's inputs: headers and KVM sources.

/// A kernel's prepared inputs.
#[derive(Debug, Clone)]
struct Inputs {
    /// Where the headers packages are unpacked.
    root: PathBuf,
    /// `root/usr/src/linux-headers-<release>`: what `make -C` gets.
    headers: PathBuf,
    /// `arch/x86/kvm` and `virt/kvm` as the kernel's source package has them.
    source: PathBuf,
    compiler: Compiler,
}

/// The inputs under `dest`, if they are all there.
fn inputs_at(dest: &Path, release: &str) -> Result<Inputs, KvmBuildError> {
    let root = dest.join("root");
    let headers = root.join(format!("usr/src/linux-headers-{release}"));
    let config = headers.join(".config");
    let text = fs::read_to_string(&config).map_err(io_err(&config))?;
    let compiler = compiler_from_config(&text).map_err(|what| KvmBuildError::Layout {
        path: config.clone(),
        what,
    })?;
    let source = dest.join("source");
    let makefile = source.join("arch/x86/kvm/Makefile");
    if !makefile.is_file() || !source.join("virt/kvm/Makefile.kvm").is_file() {
        return Err(KvmBuildError::Layout {
            path: makefile,
            what: "no KVM sources".into(),
        });
    }
    Ok(Inputs {
        root,
        headers,
        source,
        compiler,
    })
}

/// The inputs of `kernel`, fetched and unpacked into
/// `<kvm>/kernels/<image>_<version>/` unless they are there.
fn prepare_kernel(
    cache_root: &Path,
    kvm: &Path,
    kernel: &Kernel,
    package: &str,
    version: &str,
    series: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Inputs, KvmBuildError> {
    let kernels = kvm.join("kernels");
    let name = unpack_dir_name(package, version);
    let dest = kernels.join(&name);
    if let Ok(inputs) = inputs_at(&dest, &kernel.release) {
        return Ok(inputs);
    }
    fs::create_dir_all(&kernels).map_err(io_err(&kernels))?;
    let _lock = EntryLock::acquire(&dest).map_err(io_err(&dest))?;
    if let Ok(inputs) = inputs_at(&dest, &kernel.release) {
        return Ok(inputs);
    }
    // Holding the lock: whatever is there is an interrupted run's leftover.
    let _ = fs::remove_dir_all(&dest);
    for entry in fs::read_dir(&kernels).into_iter().flatten().flatten() {
        if cache::is_temp_of(&entry.file_name().to_string_lossy(), &name) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let work = cache::temp_path(&dest);
    let result = (|| {
        let apt = Apt::new(cache_root.join("apt"))?;
        apt.refresh(false)?;
        let headers = format!("linux-headers-{}", kernel.release);
        let source = format!("linux-source-{series}");
        let debs = work.join("debs");
        fs::create_dir_all(&debs).map_err(io_err(&debs))?;
        progress(&format!(
            "fetching {source} and {headers} {version} (once per kernel)"
        ));
        fetch_with_dependencies(
            &apt,
            &kernel.name,
            &[headers, source.clone()],
            version,
            &debs,
        )?;
        let tree = work.join("tree");
        let root = tree.join("root");
        let unpacked = work.join("source-deb");
        for d in [&root, &unpacked] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        for deb in fs::read_dir(&debs).map_err(io_err(&debs))?.flatten() {
            let is_source = deb
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{source}_"));
            let into = if is_source { &unpacked } else { &root };
            apt::run(
                "dpkg-deb",
                &["-x".into(), deb.path().into(), into.into()],
                DPKG_TIMEOUT,
            )?;
        }
        progress(&format!(
            "extracting arch/x86/kvm and virt/kvm from {source}"
        ));
        let tarball = unpacked.join(format!("usr/src/{source}.tar.xz"));
        let src = tree.join("source");
        fs::create_dir_all(&src).map_err(io_err(&src))?;
        apt::run(
            "tar",
            &[
                "-xf".into(),
                tarball.into(),
                "-C".into(),
                src.clone().into(),
                "--strip-components=1".into(),
                format!("{source}/arch/x86/kvm").into(),
                format!("{source}/virt/kvm").into(),
            ],
            TAR_TIMEOUT,
        )?;
        let makefile = root.join(format!("usr/src/linux-headers-{}/Makefile", kernel.release));
        let text = fs::read_to_string(&makefile).map_err(io_err(&makefile))?;
        let fixed = relocate_headers_makefile(&text, &dest.join("root")).ok_or_else(|| {
            KvmBuildError::Layout {
                path: makefile.clone(),
                what: "no `include /usr/src/...` line to point at the unpacked headers".into(),
            }
        })?;
        fs::write(&makefile, fixed).map_err(io_err(&makefile))?;
        fs::rename(&tree, &dest).map_err(io_err(&dest))?;
        inputs_at(&dest, &kernel.release)
    })();
    let _ = fs::remove_dir_all(&work);
    if result.is_err() {
        let _ = fs::remove_dir_all(&dest);
    }
    result
}

/// Downloads `names` at `version` into `debs`, then every package at that
/// same version that a downloaded one depends on (the headers' `-common`
/// and `linux-kbuild-*`), until there are no more.
fn fetch_with_dependencies(
    apt: &Apt,
    kernel: &str,
    names: &[String],
    version: &str,
    debs: &Path,
) -> Result<(), KvmBuildError> {
    let mut wanted: Vec<String> = names.to_vec();
    let mut seen: Vec<String> = Vec::new();
    let mut first = true;
    while !wanted.is_empty() {
        seen.extend(wanted.iter().cloned());
        let candidates = apt.madison(&wanted)?;
        let at_version: Vec<String> = wanted
            .iter()
            .filter(|n| {
                candidates
                    .iter()
                    .any(|c| &c.package == *n && c.version == version)
            })
            .cloned()
            .collect();
        if first && let Some(missing) = wanted.iter().find(|n| !at_version.contains(n)) {
            let mut found: Vec<&str> = candidates
                .iter()
                .filter(|c| &c.package == missing)
                .map(|c| c.version.as_str())
                .collect();
            found.sort_by(|a, b| apt::compare_versions(a, b));
            found.dedup();
            return Err(KvmBuildError::NoPackage {
                kernel: kernel.to_owned(),
                package: missing.clone(),
                version: version.to_owned(),
                suites: apt.suites().join(", "),
                found: if found.is_empty() {
                    "none".into()
                } else {
                    found.join(", ")
                },
            });
        }
        first = false;
        if at_version.is_empty() {
            break;
        }
        let pinned: Vec<String> = at_version
            .iter()
            .map(|n| format!("{n}={version}"))
            .collect();
        apt.download(&pinned, debs)?;
        let mut next = Vec::new();
        for name in &at_version {
            let deb = fs::read_dir(debs)
                .map_err(io_err(debs))?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}_")))
                })
                .ok_or_else(|| KvmBuildError::Layout {
                    path: debs.to_owned(),
                    what: format!("apt-get download left no .deb for {name}"),
                })?;
            let depends = apt::run(
                "dpkg-deb",
                &["-f".into(), deb.into(), "Depends".into()],
                DPKG_TIMEOUT,
            )?;
            for (dep, _) in apt::parse_depends(&depends) {
                if !seen.iter().any(|s| s == dep) && !next.iter().any(|s: &String| s == dep) {
                    next.push(dep.to_owned());
                }
            }
        }
        wanted = next;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The build chroot.

/// A Debian root with `compiler`, made once under `<kvm>/chroots/`.
fn chroot(
    cache_root: &Path,
    kvm: &Path,
    compiler: &Compiler,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, KvmBuildError> {
    let chroots = kvm.join("chroots");
    let name = format!("{}-{CHROOT_FORMAT}", compiler.package);
    let dest = chroots.join(&name);
    let ready = |d: &Path| d.join("usr/bin").join(&compiler.program).is_file();
    if ready(&dest) {
        return Ok(dest);
    }
    fs::create_dir_all(&chroots).map_err(io_err(&chroots))?;
    let _lock = EntryLock::acquire(&dest).map_err(io_err(&dest))?;
    if ready(&dest) {
        return Ok(dest);
    }
    let _ = fs::remove_dir_all(&dest);
    for entry in fs::read_dir(&chroots).into_iter().flatten().flatten() {
        if cache::is_temp_of(&entry.file_name().to_string_lossy(), &name) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let apt = Apt::new(cache_root.join("apt"))?;
    apt.refresh(false)?;
    let has = apt.suites_with(&compiler.package)?;
    // debootstrap makes a release, not an overlay such as -backports.
    let suite = apt
        .suites()
        .iter()
        .find(|s| !s.contains('-') && has.contains(s))
        .ok_or_else(|| KvmBuildError::NoPackage {
            kernel: compiler.text.clone(),
            package: compiler.package.clone(),
            version: "any version".into(),
            suites: apt.suites().join(", "),
            found: if has.is_empty() {
                "none".into()
            } else {
                format!("only in {}", has.join(", "))
            },
        })?
        .clone();
    progress(&format!(
        "making a Debian {suite} chroot with {} for the build (once; about a minute)",
        compiler.package
    ));
    let tmp = cache::temp_path(&dest);
    let include = std::iter::once(compiler.package.as_str())
        .chain(CHROOT_PACKAGES.iter().copied())
        .collect::<Vec<_>>()
        .join(",");
    let args: Vec<OsString> = vec![
        "-m".into(),
        "--propagation".into(),
        "private".into(),
        "debootstrap".into(),
        "--variant=minbase".into(),
        format!("--include={include}").into(),
        suite.clone().into(),
        tmp.clone().into(),
        apt.mirror().into(),
    ];
    let fin = supervise::run(OsStr::new("unshare"), &args, DEBOOTSTRAP_TIMEOUT, |_| {});
    let result = match apt::failure(&fin.end) {
        Some(status) => {
            let log =
                fs::read_to_string(tmp.join("debootstrap/debootstrap.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            Err(KvmBuildError::Command {
                command: format!(
                    "unshare -m debootstrap --variant=minbase --include={include} {suite} {} {}",
                    tmp.display(),
                    apt.mirror()
                ),
                status,
                output: format!(
                    "{}{}",
                    fin.stderr.trim(),
                    tail.into_iter()
                        .rev()
                        .map(|l| format!("\n{l}"))
                        .collect::<String>()
                ),
                log: None,
            })
        }
        None if !ready(&tmp) => Err(KvmBuildError::Layout {
            path: tmp.join("usr/bin").join(&compiler.program),
            what: format!(
                "debootstrap of {suite} with {} left no compiler",
                compiler.package
            ),
        }),
        None => fs::rename(&tmp, &dest).map_err(io_err(&dest)),
    };
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.map(|()| dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_time_is_read_back_from_its_log() {
        let log = "== building KVM ...\nmake: ok\n== built in 47.3 s\n";
        assert_eq!(built_in(log), Some(47.3));
        assert_eq!(built_in("== building KVM ...\n"), None);
    }

    #[test]
    fn series_names_patches_in_order() {
        let text =
            "# hooks first\n../../common/6.12/0001-hooks.patch\n\n0002-abi.patch  # the ABI\n";
        assert_eq!(
            parse_series(text).unwrap(),
            ["../../common/6.12/0001-hooks.patch", "0002-abi.patch"]
        );
        let err = parse_series("0001-a.patch\n0002-b.patch -p0\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("`0002-b.patch -p0`"),
            "{err}"
        );
        assert!(
            parse_series("# nothing\n\n")
                .unwrap_err()
                .contains("no patch")
        );
    }

    #[test]
    fn the_repository_series_files_parse_and_name_existing_patches() {
        let kvm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../patches/kvm");
        for set in ["cr-pin-v3", "cr-pin-rfc-v2", "heki"] {
            for series in ["6.12", "7.3"] {
                let patches = load_series(&kvm.join(set), series).unwrap();
                assert_eq!(patches.len(), 2, "{set}/{series}");
                assert!(
                    patches[0]
                        .name
                        .starts_with(&format!("../../common/{series}/0001-"))
                );
            }
        }
        let err = load_series(&kvm.join("heki"), "6.1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no 6.1/series") && err.contains("series there: 6.12, 7.3"),
            "{err}"
        );
    }

    #[test]
    fn a_series_naming_a_missing_patch_says_which() {
        let d = std::env::temp_dir().join(format!("ukci-kvmbuild-series-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("set/7.3")).unwrap();
        fs::write(
            d.join("set/7.3/series"),
            "0001-there.patch\n0002-gone.patch\n",
        )
        .unwrap();
        fs::write(d.join("set/7.3/0001-there.patch"), "x").unwrap();
        let err = load_series(&d.join("set"), "7.3").unwrap_err().to_string();
        assert!(
            err.contains("series") && err.contains("`0002-gone.patch`"),
            "{err}"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_series_comes_from_the_debian_version() {
        assert_eq!(series_of("6.12.117-1").as_deref(), Some("6.12"));
        assert_eq!(series_of("7.3.4-1~bpo13+1").as_deref(), Some("7.3"));
        assert_eq!(series_of("1:6.1.192-3").as_deref(), Some("6.1"));
        assert_eq!(series_of("7.0~rc3-1~exp1").as_deref(), Some("7.0"));
        assert_eq!(series_of("seven"), None);
    }

    #[test]
    fn the_compiler_comes_from_the_kernel_config() {
        let config = "#\n# Automatically generated file; DO NOT EDIT.\n\
                      CONFIG_CC_VERSION_TEXT=\"x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0\"\n\
                      CONFIG_CC_IS_GCC=y\nCONFIG_GCC_VERSION=140200\n";
        assert_eq!(
            compiler_from_config(config).unwrap(),
            Compiler {
                text: "x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0".into(),
                program: "x86_64-linux-gnu-gcc-14".into(),
                package: "gcc-14".into(),
            }
        );
        let bookworm = "CONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\"\nCONFIG_CC_IS_GCC=y\n";
        assert_eq!(compiler_from_config(bookworm).unwrap().package, "gcc-12");
        let clang =
            "CONFIG_CC_VERSION_TEXT=\"Debian clang version 19.1.7\"\nCONFIG_CC_IS_CLANG=y\n";
        assert!(compiler_from_config(clang).unwrap_err().contains("not GCC"));
        let plain = "CONFIG_CC_VERSION_TEXT=\"gcc (GCC) 14.1.1\"\nCONFIG_CC_IS_GCC=y\n";
        assert!(
            compiler_from_config(plain)
                .unwrap_err()
                .contains("no GCC major")
        );
        assert!(
            compiler_from_config("CONFIG_X=y\n")
                .unwrap_err()
                .contains("no CONFIG_CC_VERSION_TEXT")
        );
    }

    #[test]
    fn the_key_changes_with_every_input() {
        let cc = |text: &str| Compiler {
            text: text.into(),
            program: "x86_64-linux-gnu-gcc-14".into(),
            package: "gcc-14".into(),
        };
        let patches = |abi: &str| {
            vec![
                ("../../common/0001.patch".to_owned(), b"hooks".to_vec()),
                ("0002.patch".to_owned(), abi.as_bytes().to_vec()),
            ]
        };
        let base = build_key(
            "linux-image-6.12.117+deb13-amd64",
            "6.12.117-1",
            &cc("gcc-14 a"),
            Place::Chroot,
            &patches("v3"),
        );
        assert_eq!(base.len(), 16);
        assert_eq!(
            base,
            build_key(
                "linux-image-6.12.117+deb13-amd64",
                "6.12.117-1",
                &cc("gcc-14 a"),
                Place::Chroot,
                &patches("v3")
            )
        );
        for other in [
            build_key(
                "linux-image-6.12.117+deb13-amd64",
                "6.12.117-2",
                &cc("gcc-14 a"),
                Place::Chroot,
                &patches("v3"),
            ),
            build_key(
                "linux-image-6.12.117+deb13-amd64",
                "6.12.117-1",
                &cc("gcc-14 b"),
                Place::Chroot,
                &patches("v3"),
            ),
            build_key(
                "linux-image-6.12.117+deb13-amd64",
                "6.12.117-1",
                &cc("gcc-14 a"),
                Place::Host,
                &patches("v3"),
            ),
            build_key(
                "linux-image-6.12.117+deb13-amd64",
                "6.12.117-1",
                &cc("gcc-14 a"),
                Place::Chroot,
                &patches("heki"),
            ),
            build_key(
                "linux-image-7.3.4+deb13-amd64",
                "6.12.117-1",
                &cc("gcc-14 a"),
                Place::Chroot,
                &patches("v3"),
            ),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn a_failed_patch_is_told_by_its_hunks() {
        let out = "patching file arch/x86/kvm/Makefile\n\
                   patching file arch/x86/kvm/x86.c\n\
                   Hunk #1 succeeded at 1045 (offset 3 lines).\n\
                   Hunk #4 FAILED at 2210.\n\
                   1 out of 9 hunks FAILED\n\
                   patching file arch/x86/kvm/svm/svm.c\n";
        assert_eq!(
            patch_failure(out),
            "  patching file arch/x86/kvm/x86.c\n  Hunk #4 FAILED at 2210.\n  1 out of 9 hunks FAILED"
        );
        let applied = "patching file arch/x86/kvm/crpin.c\n\
                       Reversed (or previously applied) patch detected!  Skipping patch.\n\
                       1 out of 1 hunk ignored\n";
        assert!(
            patch_failure(applied).contains("crpin.c\n  Reversed"),
            "{}",
            patch_failure(applied)
        );
        let garbage = "patch: **** Only garbage was found in the patch input.\n";
        assert_eq!(
            patch_failure(garbage),
            "  patch: **** Only garbage was found in the patch input."
        );
        assert_eq!(patch_failure("something else\n"), "  something else");
    }

    #[test]
    fn the_first_compiler_error_is_the_one_told() {
        let out = "  CC [M]  crpin.o\n\
                   crpin.c: In function 'crpin_set':\n\
                   crpin.c:41:9: error: 'pins' undeclared (first use in this function)\n\
                   crpin.c:52:1: error: expected ';' before '}' token\n\
                   make[3]: *** [scripts/Makefile.build:229: crpin.o] Error 1\n";
        assert_eq!(
            first_error(out),
            Some("crpin.c:41:9: error: 'pins' undeclared (first use in this function)")
        );
        let modpost = "  MODPOST Module.symvers\nERROR: modpost: \"crpin_x\" [kvm-amd.ko] undefined!\nmake[2]: *** [Module.symvers] Error 1\n";
        assert_eq!(
            first_error(modpost),
            Some("ERROR: modpost: \"crpin_x\" [kvm-amd.ko] undefined!")
        );
        assert_eq!(
            first_error("make: *** No rule to make target 'modules'.  Stop.\n"),
            Some("make: *** No rule to make target 'modules'.  Stop.")
        );
        assert_eq!(first_error("  CC [M]  x.o\n"), None);
    }

    #[test]
    fn the_headers_makefile_is_pointed_at_the_unpacked_copy() {
        let text = "KBUILD_OUTPUT=/usr/src/linux-headers-7.3.4+deb13-amd64\n\
                    include /usr/src/linux-headers-7.3.4+deb13-common/Makefile\n";
        assert_eq!(
            relocate_headers_makefile(text, Path::new("/c/kvm/kernels/k/root")).unwrap(),
            "KBUILD_OUTPUT=/c/kvm/kernels/k/root/usr/src/linux-headers-7.3.4+deb13-amd64\n\
             include /c/kvm/kernels/k/root/usr/src/linux-headers-7.3.4+deb13-common/Makefile\n"
        );
        assert_eq!(
            relocate_headers_makefile("obj-m += x.o\n", Path::new("/r")),
            None
        );
    }

    #[test]
    fn the_kvm_makefile_builds_out_of_the_tree() {
        let text = "# SPDX\n\nccflags-y += -I $(srctree)/arch/x86/kvm\nccflags-$(CONFIG_KVM_WERROR) += -Werror\n\n\
                    include $(srctree)/virt/kvm/Makefile.kvm\n\nkvm-y += x86.o\n";
        let fixed = fix_kvm_makefile(text, Path::new("/b/work")).unwrap();
        assert!(
            fixed.contains("ccflags-y += -I /b/work/arch/x86/kvm -I /b/work/include/trace\n"),
            "{fixed}"
        );
        assert!(
            fixed.contains("include /b/work/virt/kvm/Makefile.kvm\n"),
            "{fixed}"
        );
        assert!(
            fixed.contains("kvm-y += x86.o\n") && !fixed.contains("$(srctree)"),
            "{fixed}"
        );
        assert_eq!(fix_kvm_makefile("kvm-y += x86.o\n", Path::new("/b")), None);
    }

    #[test]
    fn sync_copies_only_what_changed_and_drops_what_went() {
        let d = std::env::temp_dir().join(format!("ukci-kvmbuild-sync-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let (stage, work) = (d.join("stage"), d.join("work"));
        let put = |root: &Path, rel: &str, text: &str| {
            let p = root.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        put(&stage, "arch/x86/kvm/x86.c", "x86");
        put(&stage, "arch/x86/kvm/crpin.c", "v3");
        put(&stage, "arch/x86/kvm/extra.c", "only in v3");
        let first = sync_tree(&stage, &work).unwrap();
        assert_eq!(first.len(), 3);
        put(&work, "arch/x86/kvm/x86.o", "object");
        let mtime = |rel: &str| fs::metadata(work.join(rel)).unwrap().modified().unwrap();
        let x86_before = mtime("arch/x86/kvm/x86.c");

        fs::remove_dir_all(&stage).unwrap();
        put(&stage, "arch/x86/kvm/x86.c", "x86");
        put(&stage, "arch/x86/kvm/crpin.c", "heki");
        let second = sync_tree(&stage, &work).unwrap();
        assert_eq!(second, [PathBuf::from("arch/x86/kvm/crpin.c")]);
        assert_eq!(
            mtime("arch/x86/kvm/x86.c"),
            x86_before,
            "unchanged file keeps its mtime"
        );
        assert_eq!(
            fs::read_to_string(work.join("arch/x86/kvm/crpin.c")).unwrap(),
            "heki"
        );
        assert!(
            !work.join("arch/x86/kvm/extra.c").exists(),
            "a source the set lacks is gone"
        );
        assert!(
            work.join("arch/x86/kvm/x86.o").exists(),
            "build products stay"
        );
        assert!(work.join("include/trace").is_dir());
        fs::remove_dir_all(&d).unwrap();
    }
}
