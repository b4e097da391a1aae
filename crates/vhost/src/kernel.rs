//! Host kernels for the virtual lane: `debian:<series>` or
//! `debian:<version>` from Debian's archive, or `dir:PATH` for a kernel the
//! user built.
//!
//! Debian kernels are found through ukci's own apt configuration in the
//! user's cache ([`crate::apt`]), in the suites `UKCI_DEBIAN_SUITES` names
//! (default: bookworm and trixie with their updates, security fixes and
//! backports). The lists are refreshed when older than a day, or once more
//! when a kernel is not in them.
//!
//! A kernel is resolved (the highest Debian version of the series across the
//! suites), downloaded with `apt-get download`, unpacked with `dpkg-deb -x`
//! into `<cache>/kernels/<package>_<version>/`, and the resolution is written
//! next to it as `<cache>/kernels/debian-<series>.resolved`. For a day that
//! record answers without apt; an exact version's record answers for good.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::apt::{self, Apt, AptError, Candidate, SUITES_VAR, compare_versions, upstream_version};
use crate::cache::{self, EntryLock};

/// What the user asked for, e.g. on `--kernel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSpec {
    /// `debian:6.12` (the newest of the series) or `debian:6.12.117` (that
    /// upstream version).
    Debian(DebianVersion),
    /// `dir:PATH`: a bzImage plus a `lib/modules/<release>` tree under PATH.
    Dir(PathBuf),
}

/// A kernel series, `major.minor` (`6.1`, `6.12`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Series {
    pub major: u32,
    pub minor: u32,
}

/// A Debian kernel as asked for: a series, or one upstream version of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DebianVersion {
    pub series: Series,
    /// The third number of `6.12.117`; `None` for the newest of the series.
    pub patch: Option<u32>,
}

/// A kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The spec it came from, as the user wrote it (`debian:6.12`): the name
    /// reports and suite names use.
    pub name: String,
    /// The Debian package (`linux-image-6.12.95+deb12-amd64`); `None` for `dir:`.
    pub package: Option<String>,
    /// The Debian package version (`6.12.95-1~bpo12+1`); `None` for `dir:`.
    pub version: Option<String>,
    /// What `uname -r` prints in the booted kernel.
    pub release: String,
    /// The bzImage to pass to `-kernel`.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` (or `usr/lib/modules/<release>`).
    pub modules_dir: PathBuf,
}

/// Whether to ask apt again for a kernel that is already cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Refresh {
    /// Use the recorded resolution while it is fresh (a day for a series,
    /// for good for an exact version) and its tree is there: no apt at all.
    #[default]
    IfStale,
    /// Resolve again through apt; download only when a newer package appeared.
    Always,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "bad kernel name `{spec}`: {reason} (expected `debian:<major>.<minor>` such as `debian:6.12`, \
         `debian:<major>.<minor>.<patch>` such as `debian:6.12.117`, or `dir:PATH`)"
    )]
    BadSpec { spec: String, reason: String },
    #[error(
        "no Debian kernel for `{spec}` in the suites searched ({suites}); {found} (set {SUITES_VAR} to search other suites)"
    )]
    NoPackage {
        spec: String,
        suites: String,
        found: String,
    },
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error("kernel `{spec}`: {path}: {what}")]
    Layout {
        spec: String,
        path: PathBuf,
        what: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_owned(),
        source,
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for DebianVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.patch {
            Some(p) => write!(f, "{}.{p}", self.series),
            None => write!(f, "{}", self.series),
        }
    }
}

impl FromStr for DebianVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not `major.minor` or `major.minor.patch`");
        let nums = s
            .split('.')
            .map(|p| {
                (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| p.parse::<u32>().ok())
                    .flatten()
            })
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(bad)?;
        match nums[..] {
            [major, minor] => Ok(DebianVersion {
                series: Series { major, minor },
                patch: None,
            }),
            [major, minor, patch] => Ok(DebianVersion {
                series: Series { major, minor },
                patch: Some(patch),
            }),
            _ => Err(bad()),
        }
    }
}

impl KernelSpec {
    pub fn parse(spec: &str) -> Result<Self, KernelError> {
        let bad = |reason: String| KernelError::BadSpec {
            spec: spec.to_owned(),
            reason,
        };
        match spec.split_once(':') {
            Some(("debian", v)) => v.parse().map(KernelSpec::Debian).map_err(bad),
            Some(("dir", "")) => Err(bad("`dir:` needs a path".into())),
            Some(("dir", path)) => Ok(KernelSpec::Dir(PathBuf::from(path))),
            Some((kind, _)) => Err(bad(format!("unknown provider `{kind}`"))),
            None => Err(bad("no provider prefix".into())),
        }
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSpec::Debian(v) => write!(f, "debian:{v}"),
            KernelSpec::Dir(p) => write!(f, "dir:{}", p.display()),
        }
    }
}

impl FromStr for KernelSpec {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self, KernelError> {
        KernelSpec::parse(s)
    }
}

// ---------------------------------------------------------------------------
// Decisions: package names, versions, the newest candidate.

/// The series of a generic-flavour Debian kernel image package, or `None` for
/// anything else (meta packages such as `linux-image-6.12-amd64`, the `cloud`
/// and `rt` flavours, `-unsigned`, `-dbg`).
///
/// Debian names the ABI differently per branch: `linux-image-6.1.0-56-amd64`
/// (bookworm's own 6.1) and `linux-image-6.12.95+deb12-amd64` (6.12 and
/// later, in backports, security and trixie).
pub fn image_package_series(package: &str) -> Option<Series> {
    let abi = package
        .strip_prefix("linux-image-")?
        .strip_suffix("-amd64")?;
    let (numbers, suffix) = match abi.find(['-', '+']) {
        Some(i) => abi.split_at(i),
        None => return None, // meta package: no ABI
    };
    let mut parts = numbers.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let _patch: u32 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    let ok_suffix = if let Some(n) = suffix.strip_prefix('-') {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    } else if let Some(d) = suffix.strip_prefix("+deb") {
        !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    } else {
        false
    };
    ok_suffix.then_some(Series { major, minor })
}

/// The `uname -r` of a kernel image package: the name without `linux-image-`.
pub fn release_of(package: &str) -> Option<&str> {
    package.strip_prefix("linux-image-")
}

/// Why no candidate fits: what there is instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No image of the series at all; the series there are.
    Series(Vec<Series>),
    /// The series is there, not that version; the upstream versions there are.
    Version(Vec<String>),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "none".to_owned()
            } else {
                items.join(", ")
            }
        };
        match self {
            Unavailable::Series(s) => write!(
                f,
                "series there: {}",
                list(s.iter().map(Series::to_string).collect())
            ),
            Unavailable::Version(v) => {
                write!(f, "versions of the series there: {}", list(v.clone()))
            }
        }
    }
}

/// The candidate `want` means: among generic images of its series (and of
/// its exact upstream version, if given), the highest Debian version across
/// all suites. Versions, not names, decide: a 6.1 ABI number says nothing
/// about the upstream version.
pub fn choose(want: &DebianVersion, candidates: &[Candidate]) -> Result<Candidate, Unavailable> {
    let images: Vec<(Series, &Candidate)> = candidates
        .iter()
        .filter_map(|c| Some((image_package_series(&c.package)?, c)))
        .collect();
    let exact = want.patch.map(|p| format!("{}.{p}", want.series));
    let in_series = || {
        images
            .iter()
            .filter(|(s, _)| *s == want.series)
            .map(|(_, c)| *c)
    };
    if let Some(best) = in_series()
        .filter(|c| {
            exact
                .as_deref()
                .is_none_or(|e| upstream_version(&c.version) == e)
        })
        .max_by(|a, b| {
            compare_versions(&a.version, &b.version).then_with(|| a.package.cmp(&b.package))
        })
    {
        return Ok(best.clone());
    }
    if in_series().next().is_none() {
        let series: BTreeSet<Series> = images.iter().map(|(s, _)| *s).collect();
        return Err(Unavailable::Series(series.into_iter().collect()));
    }
    let mut versions: Vec<&str> = in_series().map(|c| upstream_version(&c.version)).collect();
    versions.sort_by(|a, b| compare_versions(a, b));
    versions.dedup();
    Err(Unavailable::Version(
        versions.into_iter().map(str::to_owned).collect(),
    ))
}

/// The packages an image package needs unpacked beside it to be a whole
/// kernel: its dependencies built from the same kernel, at the same version.
/// From 6.19 `linux-image-<release>` is a meta package; the kernel is in
/// `linux-binary-<release>`, the modules in `linux-modules-<release>` and
/// `modules.builtin` in `linux-base-<release>`. `depends` is the image's
/// `Depends:` field. (Not every name is a package in the archive: 6.18's
/// image names a `linux-base-<release>` no suite has.)
pub fn same_kernel_depends(depends: &str, release: &str, version: &str) -> Vec<String> {
    let suffix = format!("-{release}");
    apt::parse_depends(depends)
        .into_iter()
        .filter(|(name, pinned)| *pinned == Some(version) && name.ends_with(&suffix))
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// Where an unpacked Debian kernel keeps its image and modules, relative to
/// the tree, in lookup order: `boot/` and `lib/modules/` up to 6.12,
/// `usr/lib/modules/` from 6.16, and the image inside it from 6.19.
fn debian_layouts(release: &str) -> ([String; 2], [String; 2]) {
    (
        [
            format!("boot/vmlinuz-{release}"),
            format!("usr/lib/modules/{release}/vmlinuz"),
        ],
        [
            format!("lib/modules/{release}"),
            format!("usr/lib/modules/{release}"),
        ],
    )
}

/// The kernel image and module tree of an unpacked Debian kernel, or what is
/// missing (the path looked at first, and what it should be).
pub fn locate(tree: &Path, release: &str) -> Result<(PathBuf, PathBuf), (PathBuf, &'static str)> {
    let (images, modules) = debian_layouts(release);
    // A module tree has modules or the list of built-in ones, not just the
    // image that 6.19+ keeps beside them.
    let is_modules = |p: &Path| p.join("kernel").is_dir() || p.join("modules.builtin").is_file();
    let vmlinuz = images
        .iter()
        .map(|p| tree.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            (
                tree.join(&images[0]),
                "no kernel image in the unpacked packages",
            )
        })?;
    let modules_dir = modules
        .iter()
        .map(|p| tree.join(p))
        .find(|p| is_modules(p))
        .ok_or_else(|| {
            (
                tree.join(&modules[0]),
                "no modules tree in the unpacked packages",
            )
        })?;
    Ok((vmlinuz, modules_dir))
}

// ---------------------------------------------------------------------------
// The record of a resolution.

/// The record of a resolution, as stored next to the unpacked tree.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    package: String,
    version: String,
    release: String,
    dir: String,
}

impl Record {
    fn render(&self) -> String {
        format!(
            "package={}\nversion={}\nrelease={}\ndir={}\n",
            self.package, self.version, self.release, self.dir
        )
    }

    fn parse(text: &str) -> Option<Record> {
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Some(Record {
            package: get("package")?,
            version: get("version")?,
            release: get("release")?,
            dir: get("dir")?,
        })
    }
}

/// The cache directory name of an unpacked package (no `:` or `/`).
pub(crate) fn unpack_dir_name(package: &str, version: &str) -> String {
    format!("{package}_{version}").replace([':', '/'], "_")
}

/// Whether a record written at `written` still answers for `want` at `now`:
/// an exact version's for good, a series' while newer packages are unlikely.
fn record_is_fresh(want: &DebianVersion, written: SystemTime, now: SystemTime) -> bool {
    want.patch.is_some() || apt::is_current(written, now)
}

// ---------------------------------------------------------------------------
// The store: cache on disk, apt and dpkg-deb at the edge.

/// Kernels cached under `<cache>/kernels/`, found through the apt lists in
/// `<cache>/apt/`.
#[derive(Debug, Clone)]
pub struct KernelStore {
    root: PathBuf,
}

impl KernelStore {
    /// A store under `cache_root` (the runner passes [`cache::user_dir`]).
    pub fn new(cache_root: &Path) -> Self {
        KernelStore {
            root: cache_root.to_owned(),
        }
    }

    fn kernels(&self) -> PathBuf {
        self.root.join("kernels")
    }

    /// The kernel for `spec`, fetching and unpacking it when needed. Fails
    /// before anything slow for a spec that cannot resolve.
    pub fn get(&self, spec: &KernelSpec, refresh: Refresh) -> Result<Kernel, KernelError> {
        match spec {
            KernelSpec::Dir(path) => from_dir(&spec.to_string(), path),
            KernelSpec::Debian(want) => self.debian(&spec.to_string(), want, refresh),
        }
    }

    /// Whether `spec` can be had without downloading: a `dir:` kernel, or a
    /// Debian kernel resolved and unpacked here before.
    pub fn is_cached(&self, spec: &KernelSpec) -> bool {
        match spec {
            KernelSpec::Dir(_) => true,
            KernelSpec::Debian(want) => self.recorded(&spec.to_string(), want).is_some(),
        }
    }

    fn record_path(&self, want: &DebianVersion) -> PathBuf {
        self.kernels().join(format!("debian-{want}.resolved"))
    }

    /// The recorded resolution of `want` with its tree still there, and
    /// whether it is fresh.
    fn recorded(&self, name: &str, want: &DebianVersion) -> Option<(Kernel, bool)> {
        let path = self.record_path(want);
        let written = fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        let record = Record::parse(&fs::read_to_string(&path).ok()?)?;
        let kernel = self.kernel_from_record(name, &record).ok()?;
        Some((kernel, record_is_fresh(want, written, SystemTime::now())))
    }

    fn debian(
        &self,
        name: &str,
        want: &DebianVersion,
        refresh: Refresh,
    ) -> Result<Kernel, KernelError> {
        let fresh = |store: &Self| match store.recorded(name, want) {
            Some((kernel, true)) if refresh == Refresh::IfStale => Some(kernel),
            _ => None,
        };
        if let Some(kernel) = fresh(self) {
            return Ok(kernel);
        }
        let record_path = self.record_path(want);
        let _lock = EntryLock::acquire(&record_path).map_err(io_err(&record_path))?;
        // Another run may have resolved it while this one waited.
        if let Some(kernel) = fresh(self) {
            return Ok(kernel);
        }

        let apt = Apt::new(self.root.join("apt"))?;
        let chosen = resolve(&apt, name, want)?;
        let release = release_of(&chosen.package).unwrap_or_default().to_owned();
        let record = Record {
            dir: unpack_dir_name(&chosen.package, &chosen.version),
            package: chosen.package,
            version: chosen.version,
            release,
        };
        let kernel = match self.kernel_from_record(name, &record) {
            Ok(kernel) => kernel,
            Err(_) => {
                self.download_and_unpack(&apt, name, &record)?;
                self.kernel_from_record(name, &record)?
            }
        };
        cache::write_atomic(&record_path, record.render().as_bytes())
            .map_err(io_err(&record_path))?;
        Ok(kernel)
    }

    fn kernel_from_record(&self, name: &str, r: &Record) -> Result<Kernel, KernelError> {
        let (vmlinuz, modules_dir) =
            locate(&self.kernels().join(&r.dir), &r.release).map_err(|(path, what)| {
                KernelError::Layout {
                    spec: name.to_owned(),
                    path,
                    what: what.to_owned(),
                }
            })?;
        Ok(Kernel {
            name: name.to_owned(),
            package: Some(r.package.clone()),
            version: Some(r.version.clone()),
            release: r.release.clone(),
            vmlinuz,
            modules_dir,
        })
    }

    /// Downloads the image package (and the packages of the same kernel it
    /// depends on), unpacks them into a private work directory, checks that
    /// they make a kernel, and only then renames the tree into place. On any
    /// failure everything unpacked is removed again.
    fn download_and_unpack(&self, apt: &Apt, name: &str, r: &Record) -> Result<(), KernelError> {
        let dest = self.kernels().join(&r.dir);
        let _lock = EntryLock::acquire(&dest).map_err(io_err(&dest))?;
        if self.kernel_from_record(name, r).is_ok() {
            return Ok(()); // another run unpacked it while this one waited
        }
        // Holding the lock: whatever is there is an earlier run's leftover
        // (a tree from an older layout, or work an interrupted run left).
        let _ = fs::remove_dir_all(&dest);
        for entry in fs::read_dir(self.kernels()).into_iter().flatten().flatten() {
            if cache::is_temp_of(&entry.file_name().to_string_lossy(), &r.dir) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let work = cache::temp_path(&dest);
        let debs = work.join("debs");
        let tree = work.join("tree");
        fs::create_dir_all(&debs).map_err(io_err(&debs))?;
        let result = (|| {
            apt.download(&[format!("{}={}", r.package, r.version)], &debs)?;
            let image = find_deb(&debs, &r.package).ok_or_else(|| KernelError::Layout {
                spec: name.to_owned(),
                path: debs.clone(),
                what: format!("apt-get download left no .deb for {}", r.package),
            })?;
            let depends = apt::run(
                "dpkg-deb",
                &["-f".into(), image.into_os_string(), "Depends".into()],
                Duration::from_secs(60),
            )?;
            let names = same_kernel_depends(&depends, &r.release, &r.version);
            let parts: Vec<String> = apt
                .madison(&names)?
                .into_iter()
                .filter(|c| c.version == r.version)
                .map(|c| format!("{}={}", c.package, c.version))
                .collect();
            if !parts.is_empty() {
                apt.download(&parts, &debs)?;
            }
            for deb in fs::read_dir(&debs).map_err(io_err(&debs))?.flatten() {
                apt::run(
                    "dpkg-deb",
                    &[
                        "-x".into(),
                        deb.path().into_os_string(),
                        tree.clone().into_os_string(),
                    ],
                    Duration::from_secs(600),
                )?;
            }
            locate(&tree, &r.release).map_err(|(path, what)| KernelError::Layout {
                spec: name.to_owned(),
                path: dest.join(path.strip_prefix(&tree).unwrap_or(&path)),
                what: format!("{what} {}", r.package),
            })?;
            fs::rename(&tree, &dest).map_err(io_err(&dest))
        })();
        let _ = fs::remove_dir_all(&work);
        result
    }
}

/// The candidate for `want` in the lists `apt` keeps; they are updated
/// first when stale, and once more when it is not in them.
fn resolve(apt: &Apt, name: &str, want: &DebianVersion) -> Result<Candidate, KernelError> {
    let candidates = || -> Result<Vec<Candidate>, AptError> {
        let mut images = apt.pkgnames("linux-image-")?;
        images.retain(|n| image_package_series(n).is_some());
        apt.madison(&images)
    };
    let updated = apt.refresh(false)?;
    let missing = match choose(want, &candidates()?) {
        Ok(c) => return Ok(c),
        Err(_) if !updated && apt.refresh(true)? => choose(want, &candidates()?),
        Err(e) => Err(e),
    };
    missing.map_err(|found| KernelError::NoPackage {
        spec: name.to_owned(),
        suites: apt.suites().join(", "),
        found: found.to_string(),
    })
}

/// The `.deb` of `package` in `dir`.
fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name()
                    .and_then(OsStr::to_str)
                    .and_then(|n| n.split_once('_'))
                    .is_some_and(|(n, _)| n == package)
        })
}

/// Where a `dir:` kernel keeps its image, relative to PATH, in lookup order.
const DIR_IMAGES: [&str; 2] = ["bzImage", "arch/x86/boot/bzImage"];

/// A user's kernel: PATH holds a bzImage (`bzImage`, `arch/x86/boot/bzImage`
/// or `boot/vmlinuz-<release>`) and `lib/modules/<release>` (what
/// `make modules_install INSTALL_MOD_PATH=PATH` writes).
pub fn from_dir(name: &str, path: &Path) -> Result<Kernel, KernelError> {
    let layout = |p: &Path, what: String| KernelError::Layout {
        spec: name.to_owned(),
        path: p.to_owned(),
        what,
    };
    if !path.is_dir() {
        return Err(layout(path, "no such directory".into()));
    }
    let modules_root = path.join("lib/modules");
    let releases: Vec<String> = fs::read_dir(&modules_root)
        .map_err(|_| {
            layout(
                &modules_root,
                "no modules tree (install one with `make modules_install INSTALL_MOD_PATH=<dir>`)"
                    .into(),
            )
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let release = match releases.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(layout(
                &modules_root,
                "no lib/modules/<release> directory".into(),
            ));
        }
        many => {
            // Several trees: the one a boot/vmlinuz-<release> names wins.
            let named: Vec<&String> = many
                .iter()
                .filter(|r| path.join("boot").join(format!("vmlinuz-{r}")).is_file())
                .collect();
            match named.as_slice() {
                [one] => (*one).clone(),
                _ => {
                    return Err(layout(
                        &modules_root,
                        format!(
                            "several module trees ({}) and no single boot/vmlinuz-<release> to choose one",
                            many.join(", ")
                        ),
                    ));
                }
            }
        }
    };
    let boot_image = PathBuf::from(format!("boot/vmlinuz-{release}"));
    let vmlinuz = DIR_IMAGES
        .iter()
        .map(PathBuf::from)
        .chain([boot_image])
        .map(|rel| path.join(rel))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            layout(
                path,
                format!("no kernel image (looked for bzImage, arch/x86/boot/bzImage, boot/vmlinuz-{release})"),
            )
        })?;
    Ok(Kernel {
        name: name.to_owned(),
        package: None,
        version: None,
        release: release.clone(),
        vmlinuz,
        modules_dir: modules_root.join(release),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apt::{MAX_AGE, parse_madison};

    /// What `apt-cache madison` printed for the generic images on
    /// 2026-11-29 (abridged), across bookworm, its security and backports
    /// suites, trixie and trixie-backports.
    const MADISON: &str = "\
linux-image-6.12.95+deb12-amd64 | 6.12.95-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
linux-image-6.12.117+deb12-amd64 | 6.12.117-1~deb12u1 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-image-6.12.117+deb13-amd64 | 6.12.117-1 | http://deb.debian.org/debian trixie/main amd64 Packages
linux-image-6.12.90+deb12.1-amd64 | 6.12.90-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
   linux-image-6.1.0-47-amd64 |  6.1.170-3 | http://deb.debian.org/debian bookworm/main amd64 Packages
   linux-image-6.1.0-57-amd64 |  6.1.192-3 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
   linux-image-6.1.0-56-amd64 |  6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
   linux-image-6.1.0-56-amd64 |  6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main Sources
linux-image-6.18.9+deb13-amd64 | 6.18.9-1~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages
linux-image-6.18.15+deb13-amd64 | 6.18.15-1~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages
linux-image-6.18.12+deb13-amd64 | 6.18.12-1~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages
linux-image-7.2.12+deb13-amd64 | 7.2.12-1~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages
linux-image-7.3.4+deb13-amd64 | 7.3.4-1~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages
linux-image-6.18.15+deb13-cloud-amd64 | 6.18.16-1~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages
";

    fn s(major: u32, minor: u32) -> Series {
        Series { major, minor }
    }

    fn want(spec: &str) -> DebianVersion {
        match KernelSpec::parse(spec).unwrap() {
            KernelSpec::Debian(v) => v,
            other => panic!("{other}"),
        }
    }

    fn picked(spec: &str) -> Result<(String, String), Unavailable> {
        choose(&want(spec), &parse_madison(MADISON)).map(|c| (c.package, c.version))
    }

    #[test]
    fn spec_parses_providers_series_and_exact_versions() {
        assert_eq!(
            KernelSpec::parse("debian:6.12").unwrap(),
            KernelSpec::Debian(DebianVersion {
                series: s(6, 12),
                patch: None
            })
        );
        assert_eq!(
            KernelSpec::parse("debian:6.12.117").unwrap(),
            KernelSpec::Debian(DebianVersion {
                series: s(6, 12),
                patch: Some(117)
            })
        );
        assert_eq!(
            KernelSpec::parse("dir:/k/build").unwrap(),
            KernelSpec::Dir("/k/build".into())
        );
        for spec in ["debian:6.12", "debian:7.3", "debian:6.12.117", "dir:/k"] {
            assert_eq!(KernelSpec::parse(spec).unwrap().to_string(), spec);
        }
    }

    #[test]
    fn spec_errors_say_what_is_wrong_and_what_is_expected() {
        for (spec, needle) in [
            ("debian:6", "not `major.minor`"),
            ("debian:6.x", "not `major.minor`"),
            ("debian:6.12.1.2", "not `major.minor`"),
            ("debian:6.12.", "not `major.minor`"),
            ("debian:", "not `major.minor`"),
            ("fedora:40", "unknown provider `fedora`"),
            ("6.12", "no provider prefix"),
            ("dir:", "needs a path"),
        ] {
            let msg = KernelSpec::parse(spec).unwrap_err().to_string();
            assert!(msg.contains(needle), "{spec}: {msg}");
            assert!(msg.contains(&format!("`{spec}`")), "{spec}: {msg}");
            assert!(
                msg.contains("debian:6.12") && msg.contains("debian:6.12.117"),
                "{spec}: {msg}"
            );
        }
    }

    #[test]
    fn image_package_series_takes_only_generic_flavour_images() {
        for (name, series) in [
            ("linux-image-6.1.0-56-amd64", s(6, 1)),
            ("linux-image-6.12.95+deb12-amd64", s(6, 12)),
            ("linux-image-6.12.90+deb12.1-amd64", s(6, 12)),
            ("linux-image-6.18.15+deb13-amd64", s(6, 18)),
            ("linux-image-7.3.4+deb13-amd64", s(7, 3)),
        ] {
            assert_eq!(image_package_series(name), Some(series), "{name}");
        }
        for other in [
            "linux-image-6.12-amd64",
            "linux-image-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.12.95+deb12-rt-amd64",
            "linux-image-6.12.95+deb12-amd64-unsigned",
            "linux-image-6.12.95+deb12-amd64-dbg",
            "linux-image-6.12-amd64-signed-template",
            "linux-headers-6.1.0-56-amd64",
            "linux-binary-7.3.4+deb13-amd64",
        ] {
            assert_eq!(image_package_series(other), None, "{other}");
        }
    }

    #[test]
    fn madison_gives_binary_candidates() {
        let c = parse_madison(MADISON);
        assert_eq!(c.len(), 13, "the Sources line is skipped");
        assert_eq!(
            c[4],
            Candidate {
                package: "linux-image-6.1.0-47-amd64".into(),
                version: "6.1.170-3".into(),
            }
        );
    }

    #[test]
    fn the_packages_of_one_kernel_come_from_the_image_dependencies() {
        // 7.3: the image is a meta package.
        let deps = "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
                    linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), \
                    linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), \
                    linux-modules-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)";
        assert_eq!(
            same_kernel_depends(deps, "7.3.4+deb13-amd64", "7.3.4-1~bpo13+1"),
            [
                "linux-base-7.3.4+deb13-amd64",
                "linux-binary-7.3.4+deb13-amd64",
                "linux-modules-7.3.4+deb13-amd64"
            ]
        );
        // 6.12: one package with everything; generic dependencies are not fetched.
        let deps =
            "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool";
        assert!(same_kernel_depends(deps, "6.12.117+deb12-amd64", "6.12.117-1~deb12u1").is_empty());
        // Another version of the same kernel's package is not this kernel's.
        let deps = "linux-binary-7.3.4+deb13-amd64 (= 7.3.4-2)";
        assert!(same_kernel_depends(deps, "7.3.4+deb13-amd64", "7.3.4-1~bpo13+1").is_empty());
    }

    #[test]
    fn the_newest_of_a_series_is_the_highest_debian_version_across_suites() {
        let p = |a: &str, b: &str| Ok((a.to_owned(), b.to_owned()));
        // trixie's 6.12.117-1 beats bookworm-security's 6.12.117-1~deb12u1.
        assert_eq!(
            picked("debian:6.12"),
            p("linux-image-6.12.117+deb13-amd64", "6.12.117-1")
        );
        // Same upstream, higher revision, higher ABI: not name order.
        assert_eq!(
            picked("debian:6.1"),
            p("linux-image-6.1.0-57-amd64", "6.1.192-3")
        );
        // 18.15 > 18.12 > 18.9 numerically; the cloud flavour's higher
        // version does not count.
        assert_eq!(
            picked("debian:6.18"),
            p("linux-image-6.18.15+deb13-amd64", "6.18.15-1~bpo13+1")
        );
        assert_eq!(
            picked("debian:7.3"),
            p("linux-image-7.3.4+deb13-amd64", "7.3.4-1~bpo13+1")
        );
    }

    #[test]
    fn an_exact_version_picks_that_upstream_version() {
        assert_eq!(
            picked("debian:6.12.95"),
            Ok((
                "linux-image-6.12.95+deb12-amd64".into(),
                "6.12.95-1~bpo12+1".into()
            ))
        );
        assert_eq!(
            picked("debian:6.1.170"),
            Ok(("linux-image-6.1.0-47-amd64".into(), "6.1.170-3".into()))
        );
        // 6.12.9 is not a prefix match for 6.12.90 or 6.12.95.
        assert_eq!(
            picked("debian:6.12.9"),
            Err(Unavailable::Version(vec![
                "6.12.90".into(),
                "6.12.95".into(),
                "6.12.117".into()
            ]))
        );
    }

    #[test]
    fn a_series_nowhere_lists_the_series_there_are() {
        let err = picked("debian:9.99").unwrap_err();
        assert_eq!(
            err,
            Unavailable::Series(vec![s(6, 1), s(6, 12), s(6, 18), s(7, 2), s(7, 3)])
        );
        assert_eq!(err.to_string(), "series there: 6.1, 6.12, 6.18, 7.2, 7.3");
        assert_eq!(
            choose(&want("debian:6.1"), &[]).unwrap_err().to_string(),
            "series there: none"
        );
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ukci-vhost-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn every_debian_layout_is_found() {
        let d = tempdir("layouts");
        let touch = |p: &str| {
            let p = d.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        };
        // Up to 6.12: boot/ and lib/modules/.
        touch("a/boot/vmlinuz-6.12.1+deb12-amd64");
        touch("a/lib/modules/6.12.1+deb12-amd64/kernel/fs/9p/9p.ko.xz");
        assert_eq!(
            locate(&d.join("a"), "6.12.1+deb12-amd64").unwrap(),
            (
                d.join("a/boot/vmlinuz-6.12.1+deb12-amd64"),
                d.join("a/lib/modules/6.12.1+deb12-amd64")
            )
        );
        // 6.16–6.18: modules under usr/lib/modules/.
        touch("b/boot/vmlinuz-6.18.15+deb13-amd64");
        touch("b/usr/lib/modules/6.18.15+deb13-amd64/modules.builtin");
        assert_eq!(
            locate(&d.join("b"), "6.18.15+deb13-amd64").unwrap(),
            (
                d.join("b/boot/vmlinuz-6.18.15+deb13-amd64"),
                d.join("b/usr/lib/modules/6.18.15+deb13-amd64")
            )
        );
        // 6.19+: the image beside the modules; a lone image is no module tree.
        touch("c/usr/lib/modules/7.3.4+deb13-amd64/vmlinuz");
        let (path, what) = locate(&d.join("c"), "7.3.4+deb13-amd64").unwrap_err();
        assert_eq!(path, d.join("c/lib/modules/7.3.4+deb13-amd64"));
        assert!(what.contains("no modules tree"), "{what}");
        touch("c/usr/lib/modules/7.3.4+deb13-amd64/kernel/virt/lib/irqbypass.ko.xz");
        assert_eq!(
            locate(&d.join("c"), "7.3.4+deb13-amd64").unwrap(),
            (
                d.join("c/usr/lib/modules/7.3.4+deb13-amd64/vmlinuz"),
                d.join("c/usr/lib/modules/7.3.4+deb13-amd64")
            )
        );
        // The meta package alone: no image.
        fs::create_dir_all(d.join("e/usr/share/doc")).unwrap();
        let (path, what) = locate(&d.join("e"), "7.3.4+deb13-amd64").unwrap_err();
        assert_eq!(path, d.join("e/boot/vmlinuz-7.3.4+deb13-amd64"));
        assert!(what.contains("no kernel image"), "{what}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_series_resolution_ages_an_exact_one_does_not() {
        let now = SystemTime::now();
        let old = now - MAX_AGE - Duration::from_secs(1);
        assert!(record_is_fresh(&want("debian:6.12"), now, now));
        assert!(!record_is_fresh(&want("debian:6.12"), old, now));
        assert!(record_is_fresh(&want("debian:6.12.117"), old, now));
    }

    #[test]
    fn record_round_trips() {
        let r = Record {
            package: "linux-image-6.1.0-56-amd64".into(),
            version: "6.1.192-2".into(),
            release: "6.1.0-56-amd64".into(),
            dir: unpack_dir_name("linux-image-6.1.0-56-amd64", "1:6.1.192-2"),
        };
        assert_eq!(Record::parse(&r.render()), Some(r.clone()));
        assert!(!r.dir.contains(':'));
        assert_eq!(Record::parse("package=x\nversion=\n"), None);
    }

    #[test]
    fn dir_kernel_needs_an_image_and_one_module_tree() {
        let d = tempdir("dirk");
        let err = |p: &Path| from_dir("dir:x", p).unwrap_err().to_string();

        let missing = d.join("nope");
        assert!(err(&missing).contains("no such directory"));
        assert!(err(&missing).contains(&missing.display().to_string()));

        assert!(err(&d).contains("no modules tree"), "{}", err(&d));
        fs::create_dir_all(d.join("lib/modules/6.9.0-test")).unwrap();
        assert!(err(&d).contains("no kernel image"), "{}", err(&d));

        fs::create_dir_all(d.join("arch/x86/boot")).unwrap();
        fs::write(d.join("arch/x86/boot/bzImage"), b"MZ").unwrap();
        let k = from_dir("dir:x", &d).unwrap();
        assert_eq!(k.release, "6.9.0-test");
        assert_eq!(k.vmlinuz, d.join("arch/x86/boot/bzImage"));
        assert_eq!(k.modules_dir, d.join("lib/modules/6.9.0-test"));
        assert_eq!(k.package, None);

        fs::create_dir_all(d.join("lib/modules/6.9.1-other")).unwrap();
        assert!(err(&d).contains("several module trees"), "{}", err(&d));
        fs::create_dir_all(d.join("boot")).unwrap();
        fs::write(d.join("boot/vmlinuz-6.9.1-other"), b"MZ").unwrap();
        let k = from_dir("dir:x", &d).unwrap();
        assert_eq!(k.release, "6.9.1-other");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_fresh_resolution_is_used_without_apt() {
        let d = tempdir("cache");
        let store = KernelStore::new(&d);
        let r = Record {
            package: "linux-image-6.12.95+deb12-amd64".into(),
            version: "6.12.95-1~bpo12+1".into(),
            release: "6.12.95+deb12-amd64".into(),
            dir: "linux-image-6.12.95+deb12-amd64_6.12.95-1~bpo12+1".into(),
        };
        let tree = d.join("kernels").join(&r.dir);
        let modules = tree.join("lib/modules").join(&r.release);
        fs::create_dir_all(tree.join("boot")).unwrap();
        fs::create_dir_all(&modules).unwrap();
        fs::write(modules.join("modules.builtin"), b"").unwrap();
        fs::write(tree.join("boot/vmlinuz-6.12.95+deb12-amd64"), b"MZ").unwrap();
        let series = KernelSpec::parse("debian:6.12").unwrap();
        let exact = KernelSpec::parse("debian:6.12.95").unwrap();
        assert!(!store.is_cached(&series), "no record yet");
        fs::write(d.join("kernels/debian-6.12.resolved"), r.render()).unwrap();
        fs::write(d.join("kernels/debian-6.12.95.resolved"), r.render()).unwrap();
        assert!(store.is_cached(&series));
        assert!(!store.is_cached(&KernelSpec::parse("debian:6.1").unwrap()));
        let k = store.get(&series, Refresh::IfStale).unwrap();
        assert_eq!(k.name, "debian:6.12");
        assert_eq!(k.version.as_deref(), Some("6.12.95-1~bpo12+1"));
        assert_eq!(k.release, "6.12.95+deb12-amd64");
        assert_eq!(k.modules_dir, modules);
        // A day later the exact version still answers from its record.
        let old = SystemTime::now() - MAX_AGE - Duration::from_secs(60);
        let f = fs::File::options()
            .write(true)
            .open(d.join("kernels/debian-6.12.95.resolved"))
            .unwrap();
        f.set_modified(old).unwrap();
        let k = store.get(&exact, Refresh::IfStale).unwrap();
        assert_eq!(k.name, "debian:6.12.95");
        assert_eq!(k.vmlinuz, tree.join("boot/vmlinuz-6.12.95+deb12-amd64"));
        fs::remove_dir_all(&d).unwrap();
    }
}
