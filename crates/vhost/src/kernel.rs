//! Host kernels for the virtual lane: `debian:<series>` from the configured apt
//! sources, or `dir:PATH` for a kernel the user built.
//!
//! A Debian kernel is resolved once (newest `linux-image-<abi>-amd64` of the
//! series), downloaded with `apt-get download`, unpacked with `dpkg-deb -x`
//! into `<images>/kernels/<package>_<version>/`, and the resolution is written
//! next to it as `<images>/kernels/debian-<series>.resolved`. Later calls read
//! that record and never run apt, until the caller asks for [`Refresh::Always`].

use std::cmp::Ordering;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

/// What the user asked for, e.g. on `--kernel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSpec {
    /// `debian:6.12`: the newest Debian `linux-image-*-amd64` of that series.
    Debian(Series),
    /// `dir:PATH`: a bzImage plus a `lib/modules/<release>` tree under PATH.
    Dir(PathBuf),
}

/// A kernel series, `major.minor` (`6.1`, `6.12`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Series {
    pub major: u32,
    pub minor: u32,
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
    /// `lib/modules/<release>`.
    pub modules_dir: PathBuf,
}

/// Whether to ask apt again for a kernel that is already cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Refresh {
    /// Use the recorded resolution when its tree is still there (no apt at all).
    #[default]
    IfMissing,
    /// Resolve again through apt; download only when a newer package appeared.
    Always,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "bad kernel name `{spec}`: {reason} (expected `debian:<major>.<minor>` such as `debian:6.12`, or `dir:PATH`)"
    )]
    BadSpec { spec: String, reason: String },
    #[error(
        "no Debian kernel package for `{spec}` in the configured apt sources (looked for linux-image-{series}.*-amd64{found}); \
         check the series, or run `apt-get update` and add the suite that carries it (6.12 is in bookworm-backports)"
    )]
    NoPackage {
        spec: String,
        series: Series,
        found: String,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
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

impl FromStr for Series {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (major, minor) = s
            .split_once('.')
            .ok_or_else(|| format!("series `{s}` is not `major.minor`"))?;
        let num = |p: &str| {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u32>().ok())
                .flatten()
                .ok_or_else(|| format!("series `{s}` is not `major.minor`"))
        };
        Ok(Series {
            major: num(major)?,
            minor: num(minor)?,
        })
    }
}

impl KernelSpec {
    pub fn parse(spec: &str) -> Result<Self, KernelError> {
        let bad = |reason: String| KernelError::BadSpec {
            spec: spec.to_owned(),
            reason,
        };
        match spec.split_once(':') {
            Some(("debian", series)) => series.parse().map(KernelSpec::Debian).map_err(bad),
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
            KernelSpec::Debian(s) => write!(f, "debian:{s}"),
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
/// (bookworm's own 6.1) and `linux-image-6.12.95+deb12-amd64` (6.12 backports
/// and bookworm-security).
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

/// Package names from `apt-cache search --names-only` output (`name - description`).
pub fn parse_search(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.split(" - ").next())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `(package, version)` pairs from `apt-cache madison` output
/// (` name | version | uri suite/component arch Packages`); source entries are skipped.
pub fn parse_madison(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('|').map(str::trim);
            let (name, version, origin) = (cols.next()?, cols.next()?, cols.next()?);
            (origin.ends_with("Packages") && !name.is_empty() && !version.is_empty())
                .then(|| (name.to_owned(), version.to_owned()))
        })
        .collect()
}

/// The newest package of `series` among `(package, version)` candidates,
/// comparing Debian versions (not names: 6.1 ABI numbers say nothing about
/// the upstream version).
pub fn pick_newest(series: Series, candidates: &[(String, String)]) -> Option<(String, String)> {
    candidates
        .iter()
        .filter(|(p, _)| image_package_series(p) == Some(series))
        .max_by(|a, b| compare_versions(&a.1, &b.1).then_with(|| a.0.cmp(&b.0)))
        .cloned()
}

/// Debian version ordering (`[epoch:]upstream[-revision]`), as dpkg does it.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.bytes().all(|b| b.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((up, rev)) => (epoch, up, rev),
            None => (epoch, rest, ""),
        }
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

fn compare_part(a: &str, b: &str) -> Ordering {
    // '~' sorts before everything, even the end of the string; letters sort
    // before non-letters.
    fn order(c: Option<u8>) -> i32 {
        match c {
            Some(b'~') => -1,
            None => 0,
            Some(c) if c.is_ascii_alphabetic() => c as i32,
            Some(c) => c as i32 + 256,
        }
    }
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        // Non-digit prefix, character by character.
        loop {
            let ca = a.first().copied().filter(|c| !c.is_ascii_digit());
            let cb = b.first().copied().filter(|c| !c.is_ascii_digit());
            if ca.is_none() && cb.is_none() {
                break;
            }
            match order(ca).cmp(&order(cb)) {
                Ordering::Equal => {}
                o => return o,
            }
            a = &a[1..];
            b = &b[1..];
        }
        // Digit run, numerically.
        let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
        let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let num = |s: &[u8]| {
            let s = std::str::from_utf8(s)
                .unwrap_or("0")
                .trim_start_matches('0');
            (s.len(), s.to_owned())
        };
        match num(&a[..da]).cmp(&num(&b[..db])) {
            Ordering::Equal => {}
            o => return o,
        }
        a = &a[da..];
        b = &b[db..];
    }
    Ordering::Equal
}

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
fn unpack_dir_name(package: &str, version: &str) -> String {
    format!("{package}_{version}").replace([':', '/'], "_")
}

// ---------------------------------------------------------------------------
// The store: cache on disk, apt and dpkg-deb at the edge.

/// Kernels cached under `<images>/kernels/`.
#[derive(Debug, Clone)]
pub struct KernelStore {
    root: PathBuf,
}

impl KernelStore {
    /// A store under `images_root` (the runner passes `<repo>/images`).
    pub fn new(images_root: &Path) -> Self {
        KernelStore {
            root: images_root.join("kernels"),
        }
    }

    /// The kernel for `spec`, fetching and unpacking it when needed. Fails
    /// before anything slow for a spec that cannot resolve.
    pub fn get(&self, spec: &KernelSpec, refresh: Refresh) -> Result<Kernel, KernelError> {
        match spec {
            KernelSpec::Dir(path) => from_dir(&spec.to_string(), path),
            KernelSpec::Debian(series) => self.debian(&spec.to_string(), *series, refresh),
        }
    }

    /// Whether `spec` can be had without apt: a `dir:` kernel, or a Debian
    /// kernel resolved and unpacked here before.
    pub fn is_cached(&self, spec: &KernelSpec) -> bool {
        match spec {
            KernelSpec::Dir(_) => true,
            KernelSpec::Debian(series) => self.cached(&spec.to_string(), *series).is_some(),
        }
    }

    fn record_path(&self, series: Series) -> PathBuf {
        self.root.join(format!("debian-{series}.resolved"))
    }

    /// The recorded resolution of `series`, when its tree is still there.
    fn cached(&self, name: &str, series: Series) -> Option<Kernel> {
        fs::read_to_string(self.record_path(series))
            .ok()
            .and_then(|t| Record::parse(&t))
            .and_then(|r| self.kernel_from_record(name, &r).ok())
    }

    fn debian(&self, name: &str, series: Series, refresh: Refresh) -> Result<Kernel, KernelError> {
        let record_path = self.record_path(series);
        if refresh == Refresh::IfMissing
            && let Some(kernel) = self.cached(name, series)
        {
            return Ok(kernel);
        }

        let (package, version) = resolve_with_apt(name, series)?;
        let release = release_of(&package).unwrap_or_default().to_owned();
        let record = Record {
            dir: unpack_dir_name(&package, &version),
            package,
            version,
            release,
        };
        if self.kernel_from_record(name, &record).is_err() {
            self.download_and_unpack(name, &record)?;
        }
        let kernel = self.kernel_from_record(name, &record)?;
        fs::write(&record_path, record.render()).map_err(io_err(&record_path))?;
        Ok(kernel)
    }

    fn kernel_from_record(&self, name: &str, r: &Record) -> Result<Kernel, KernelError> {
        let tree = self.root.join(&r.dir);
        let vmlinuz = tree.join("boot").join(format!("vmlinuz-{}", r.release));
        let modules_dir = tree.join("lib/modules").join(&r.release);
        let missing = |path: &Path, what: &str| KernelError::Layout {
            spec: name.to_owned(),
            path: path.to_owned(),
            what: what.to_owned(),
        };
        if !vmlinuz.is_file() {
            return Err(missing(&vmlinuz, "no kernel image in the unpacked package"));
        }
        if !modules_dir.is_dir() {
            return Err(missing(
                &modules_dir,
                "no modules tree in the unpacked package",
            ));
        }
        Ok(Kernel {
            name: name.to_owned(),
            package: Some(r.package.clone()),
            version: Some(r.version.clone()),
            release: r.release.clone(),
            vmlinuz,
            modules_dir,
        })
    }

    fn download_and_unpack(&self, name: &str, r: &Record) -> Result<(), KernelError> {
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let work = self
            .root
            .join(format!(".fetch-{}-{}", r.dir, std::process::id()));
        let _ = fs::remove_dir_all(&work);
        let debs = work.join("debs");
        let tree = work.join("tree");
        fs::create_dir_all(&debs).map_err(io_err(&debs))?;
        let result = (|| {
            run(Command::new("apt-get")
                .arg("download")
                .arg(format!("{}={}", r.package, r.version))
                .current_dir(&debs))?;
            let deb = fs::read_dir(&debs)
                .map_err(io_err(&debs))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .ok_or_else(|| KernelError::Layout {
                    spec: name.to_owned(),
                    path: debs.clone(),
                    what: format!("apt-get download left no .deb for {}", r.package),
                })?;
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
            let dest = self.root.join(&r.dir);
            match fs::rename(&tree, &dest) {
                Ok(()) => Ok(()),
                // Another run unpacked the same package meanwhile: keep theirs.
                Err(_) if dest.is_dir() => Ok(()),
                Err(e) => Err(io_err(&dest)(e)),
            }
        })();
        let _ = fs::remove_dir_all(&work);
        result
    }
}

/// Asks apt for the newest generic amd64 image package of `series`.
fn resolve_with_apt(name: &str, series: Series) -> Result<(String, String), KernelError> {
    let pattern = format!(
        "^linux-image-{}\\.{}[^ ]*-amd64$",
        series.major, series.minor
    );
    let search = run(Command::new("apt-cache")
        .args(["search", "--names-only"])
        .arg(&pattern))?;
    let names: Vec<String> = parse_search(&search)
        .into_iter()
        .filter(|n| image_package_series(n) == Some(series))
        .collect();
    let no_package = |found: String| KernelError::NoPackage {
        spec: name.to_owned(),
        series,
        found,
    };
    if names.is_empty() {
        return Err(no_package(String::new()));
    }
    let madison = run(Command::new("apt-cache").arg("madison").args(&names))?;
    pick_newest(series, &parse_madison(&madison)).ok_or_else(|| {
        no_package(format!(
            "; names found but none downloadable: {}",
            names.join(" ")
        ))
    })
}

fn run(cmd: &mut Command) -> Result<String, KernelError> {
    let command = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.output().map_err(|e| KernelError::Command {
        command: command.clone(),
        status: "could not start".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(KernelError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

    const SEARCH: &str = "\
linux-image-6.12.43+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.43+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.95+deb12-rt-amd64 - Linux 6.12 for 64-bit PCs (signed), PREEMPT_RT
linux-image-6.12.95+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.90+deb12.1-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.1.0-47-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-56-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.12-amd64 - Linux for 64-bit PCs (meta-package)
linux-image-6.12.117+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
";

    const MADISON: &str = "\
linux-image-6.12.95+deb12-amd64 | 6.12.95-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
linux-image-6.12.117+deb12-amd64 | 6.12.117-1~deb12u1 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-image-6.12.90+deb12.1-amd64 | 6.12.90-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
   linux-image-6.1.0-47-amd64 |  6.1.170-3 | http://deb.debian.org/debian bookworm/main amd64 Packages
   linux-image-6.1.0-56-amd64 |  6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
   linux-image-6.1.0-56-amd64 |  6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main Sources
";

    fn s(major: u32, minor: u32) -> Series {
        Series { major, minor }
    }

    #[test]
    fn spec_parses_providers_and_series() {
        assert_eq!(
            KernelSpec::parse("debian:6.12").unwrap(),
            KernelSpec::Debian(s(6, 12))
        );
        assert_eq!(
            KernelSpec::parse("debian:6.1").unwrap(),
            KernelSpec::Debian(s(6, 1))
        );
        assert_eq!(
            KernelSpec::parse("dir:/k/build").unwrap(),
            KernelSpec::Dir("/k/build".into())
        );
        assert_eq!(
            KernelSpec::parse("debian:6.12").unwrap().to_string(),
            "debian:6.12"
        );
    }

    #[test]
    fn spec_errors_say_what_is_wrong_and_what_is_expected() {
        for (spec, needle) in [
            ("debian:6", "not `major.minor`"),
            ("debian:6.x", "not `major.minor`"),
            ("debian:", "not `major.minor`"),
            ("fedora:40", "unknown provider `fedora`"),
            ("6.12", "no provider prefix"),
            ("dir:", "needs a path"),
        ] {
            let msg = KernelSpec::parse(spec).unwrap_err().to_string();
            assert!(msg.contains(needle), "{spec}: {msg}");
            assert!(msg.contains(&format!("`{spec}`")), "{spec}: {msg}");
            assert!(msg.contains("debian:6.12"), "{spec}: {msg}");
        }
    }

    #[test]
    fn image_package_series_takes_only_generic_flavour_images() {
        assert_eq!(
            image_package_series("linux-image-6.1.0-56-amd64"),
            Some(s(6, 1))
        );
        assert_eq!(
            image_package_series("linux-image-6.12.95+deb12-amd64"),
            Some(s(6, 12))
        );
        assert_eq!(
            image_package_series("linux-image-6.12.90+deb12.1-amd64"),
            Some(s(6, 12))
        );
        for other in [
            "linux-image-6.12-amd64",
            "linux-image-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.12.95+deb12-rt-amd64",
            "linux-image-6.12.95+deb12-amd64-unsigned",
            "linux-image-6.12.95+deb12-amd64-dbg",
            "linux-headers-6.1.0-56-amd64",
        ] {
            assert_eq!(image_package_series(other), None, "{other}");
        }
    }

    #[test]
    fn newest_is_by_debian_version_within_the_series() {
        let cands = parse_madison(MADISON);
        assert_eq!(cands.len(), 5, "the Sources line is skipped");
        assert_eq!(
            pick_newest(s(6, 12), &cands),
            Some((
                "linux-image-6.12.117+deb12-amd64".into(),
                "6.12.117-1~deb12u1".into()
            ))
        );
        assert_eq!(
            pick_newest(s(6, 1), &cands),
            Some(("linux-image-6.1.0-56-amd64".into(), "6.1.192-2".into()))
        );
        assert_eq!(pick_newest(s(5, 10), &cands), None);
    }

    #[test]
    fn search_output_gives_names() {
        let names = parse_search(SEARCH);
        assert_eq!(names.len(), 10);
        let six_one: Vec<_> = names
            .iter()
            .filter(|n| image_package_series(n) == Some(s(6, 1)))
            .collect();
        assert_eq!(
            six_one,
            ["linux-image-6.1.0-47-amd64", "linux-image-6.1.0-56-amd64"]
        );
    }

    #[test]
    fn debian_versions_compare_like_dpkg() {
        use Ordering::*;
        for (a, b, o) in [
            ("6.12.117-1~deb12u1", "6.12.95-1~bpo12+1", Greater),
            ("6.1.192-2", "6.1.192-1", Greater),
            ("6.1.192-2", "6.1.99-9", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0+b1", Less),
            ("1:0.1", "2.0", Greater),
            ("1.0a", "1.0+", Less),
            ("1.01", "1.1", Equal),
            ("6.12.90-1~bpo12+1", "6.12.90-1", Less),
        ] {
            assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), o.reverse(), "{b} vs {a}");
        }
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

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ukci-vhost-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
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
    fn cached_resolution_is_used_without_apt() {
        let d = tempdir("cache");
        let store = KernelStore::new(&d);
        let r = Record {
            package: "linux-image-6.12.95+deb12-amd64".into(),
            version: "6.12.95-1~bpo12+1".into(),
            release: "6.12.95+deb12-amd64".into(),
            dir: "linux-image-6.12.95+deb12-amd64_6.12.95-1~bpo12+1".into(),
        };
        let tree = d.join("kernels").join(&r.dir);
        fs::create_dir_all(tree.join("boot")).unwrap();
        fs::create_dir_all(tree.join("lib/modules").join(&r.release)).unwrap();
        fs::write(tree.join("boot/vmlinuz-6.12.95+deb12-amd64"), b"MZ").unwrap();
        let spec = KernelSpec::parse("debian:6.12").unwrap();
        assert!(!store.is_cached(&spec), "no record yet");
        fs::write(d.join("kernels/debian-6.12.resolved"), r.render()).unwrap();
        assert!(store.is_cached(&spec));
        assert!(!store.is_cached(&KernelSpec::parse("debian:6.1").unwrap()));
        let k = store
            .get(
                &KernelSpec::parse("debian:6.12").unwrap(),
                Refresh::IfMissing,
            )
            .unwrap();
        assert_eq!(k.name, "debian:6.12");
        assert_eq!(k.version.as_deref(), Some("6.12.95-1~bpo12+1"));
        assert_eq!(k.release, "6.12.95+deb12-amd64");
        fs::remove_dir_all(&d).unwrap();
    }
}
