//! Debian's archive, as ukci reaches it: its own apt configuration in the
//! user's cache (its own sources list, lists and apt cache, so no root is
//! needed and `/etc/apt` is never changed), the suites it searches
//! ([`AptSources`], set with [`SUITES_VAR`]), and Debian's version order.
//!
//! The lists are updated when older than [`MAX_AGE`] or made for other
//! sources; a run with current lists makes no network access.

use std::cmp::Ordering;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ukci_supervise::{self as supervise, End};

use crate::cache::{self, EntryLock};

/// How long the package lists (and what was found in them) count as current.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// The environment variable naming the Debian suites to search.
pub const SUITES_VAR: &str = "UKCI_DEBIAN_SUITES";

/// The suites searched when [`SUITES_VAR`] is not set: Debian 12 with its
/// updates, security fixes and backports (6.1, 6.12), and Debian 13 with its
/// backports (6.12, and the newest series: 6.16 and later).
pub const DEFAULT_SUITES: &[&str] = &[
    "bookworm",
    "bookworm-updates",
    "bookworm-security",
    "bookworm-backports",
    "trixie",
    "trixie-backports",
];

/// Debian's archive and security archive, used when the machine's apt
/// sources name no Debian mirror.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEFAULT_SECURITY_MIRROR: &str = "http://security.debian.org/debian-security";

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error(
        "bad {SUITES_VAR}: {0} (expected suite names separated by spaces or commas, such as `bookworm trixie-backports`)"
    )]
    Suites(String),
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AptError + '_ {
    move |source| AptError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How long an `apt-cache` query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);

/// The upstream part of a Debian version: no epoch, no Debian revision
/// (`1:6.12.117-1~deb12u1` → `6.12.117`).
pub fn upstream_version(version: &str) -> &str {
    let v = version.split_once(':').map_or(version, |(_, v)| v);
    v.rsplit_once('-').map_or(v, |(up, _)| up)
}

/// A package version apt can download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub package: String,
    pub version: String,
}

/// The candidates in `apt-cache madison` output
/// (` name | version | uri suite/component arch Packages`); source entries are skipped.
pub fn parse_madison(output: &str) -> Vec<Candidate> {
    output
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('|').map(str::trim);
            let (name, version, origin) = (cols.next()?, cols.next()?, cols.next()?);
            (origin.ends_with("Packages") && !name.is_empty() && !version.is_empty()).then(|| {
                Candidate {
                    package: name.to_owned(),
                    version: version.to_owned(),
                }
            })
        })
        .collect()
}

/// The suites (`trixie`, `bookworm-backports`) in `apt-cache madison`
/// output that have binary packages of `package`, in the order listed.
pub fn madison_suites(output: &str, package: &str) -> Vec<String> {
    let mut suites: Vec<String> = Vec::new();
    for line in output.lines() {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        let [name, _, origin] = cols[..] else {
            continue;
        };
        if name != package || !origin.ends_with("Packages") {
            continue;
        }
        // `http://deb.debian.org/debian trixie/main amd64 Packages`
        let Some(suite) = origin
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.split('/').next())
        else {
            continue;
        };
        if !suites.iter().any(|s| s == suite) {
            suites.push(suite.to_owned());
        }
    }
    suites
}

/// The plain dependencies in a `Depends:` field: each name with the exact
/// version it is pinned to (`(= v)`), if any. Alternatives (`a | b`) are
/// left out: they name no one package that must be there.
pub fn parse_depends(depends: &str) -> Vec<(&str, Option<&str>)> {
    depends
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.contains('|'))
        .map(|d| {
            let (name, rest) = d.split_once('(').unwrap_or((d, ""));
            let pinned = rest
                .trim_end_matches(')')
                .trim()
                .strip_prefix('=')
                .map(str::trim);
            (name.trim(), pinned)
        })
        .collect()
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

// ---------------------------------------------------------------------------
// Which suites, from which mirrors.

/// The Debian suites ukci's apt searches, and the mirrors they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSources {
    /// The archive (`http://deb.debian.org/debian`).
    pub mirror: String,
    /// The security archive, for `*-security` suites.
    pub security: String,
    pub suites: Vec<String>,
}

/// Debian's code and alias names: a suite whose first word is one of these
/// is Debian's.
const DEBIAN_NAMES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
    "experimental",
];

/// Suite names from [`SUITES_VAR`]'s value: words separated by spaces or commas.
pub fn parse_suites(value: &str) -> Result<Vec<String>, String> {
    let suites: Vec<String> = value
        .split([' ', ',', '\t', '\n'])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if suites.is_empty() {
        return Err("no suite named".into());
    }
    if let Some(bad) = suites.iter().find(|s| {
        !s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    }) {
        return Err(format!("`{bad}` is not a suite name"));
    }
    Ok(suites)
}

/// `(URI, suite)` pairs of the `deb` entries of apt source files: one-line
/// `.list` (`deb [options] URI suite components`) and deb822 `.sources`
/// (`Types:`, `URIs:`, `Suites:`, `Enabled:`).
pub fn source_entries(text: &str, deb822: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !deb822 {
        for line in text.lines().map(str::trim) {
            let Some(rest) = line
                .strip_prefix("deb ")
                .or_else(|| line.strip_prefix("deb\t"))
            else {
                continue;
            };
            let rest = rest.trim_start();
            let rest = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']').map_or("", |(_, r)| r),
                None => rest,
            };
            let mut words = rest.split_whitespace();
            if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
                out.push((uri.to_owned(), suite.to_owned()));
            }
        }
        return out;
    }
    for para in text.split("\n\n") {
        let field = |key: &str| {
            para.lines()
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(key)
                        .then(|| v.trim().to_owned())
                })
                .unwrap_or_default()
        };
        let enabled = !field("Enabled").eq_ignore_ascii_case("no");
        let deb = field("Types").split_whitespace().any(|t| t == "deb");
        if !(enabled && deb) {
            continue;
        }
        let suites = field("Suites");
        for uri in field("URIs").split_whitespace() {
            for suite in suites.split_whitespace() {
                out.push((uri.to_owned(), suite.to_owned()));
            }
        }
    }
    out
}

impl AptSources {
    /// The sources for `suites`, from the Debian mirrors among the machine's
    /// apt `entries` (see [`source_entries`]) when it names any, else from
    /// Debian's own.
    pub fn new(suites: Vec<String>, entries: &[(String, String)]) -> AptSources {
        let debian = |suite: &str| {
            let first = suite.split(['-', '/']).next().unwrap_or_default();
            DEBIAN_NAMES.contains(&first)
        };
        let is_security = |suite: &str| suite.ends_with("-security") || suite.ends_with("/updates");
        let find = |security: bool| {
            entries
                .iter()
                .find(|(_, s)| debian(s) && is_security(s) == security)
                .map(|(uri, _)| uri.trim_end_matches('/').to_owned())
        };
        AptSources {
            mirror: find(false).unwrap_or_else(|| DEFAULT_MIRROR.into()),
            security: find(true).unwrap_or_else(|| DEFAULT_SECURITY_MIRROR.into()),
            suites,
        }
    }

    /// The sources of this machine: [`SUITES_VAR`] or [`DEFAULT_SUITES`],
    /// from the mirrors `/etc/apt` uses.
    pub fn from_system() -> Result<AptSources, AptError> {
        let suites = match std::env::var(SUITES_VAR) {
            Ok(v) => parse_suites(&v).map_err(AptError::Suites)?,
            Err(_) => DEFAULT_SUITES.iter().map(|s| (*s).to_owned()).collect(),
        };
        let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
        let mut parts: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        parts.sort();
        files.extend(parts);
        let entries: Vec<(String, String)> = files
            .iter()
            .filter_map(|f| {
                let deb822 = match f.extension().and_then(OsStr::to_str) {
                    Some("sources") => true,
                    Some("list") => false,
                    _ => return None,
                };
                Some(source_entries(&fs::read_to_string(f).ok()?, deb822))
            })
            .flatten()
            .collect();
        Ok(AptSources::new(suites, &entries))
    }

    /// The one-line sources list (amd64 only; signed by Debian's archive
    /// keyring when `keyring` is given).
    pub fn render(&self, keyring: Option<&Path>) -> String {
        let opts = match keyring {
            Some(k) => format!("[arch=amd64 signed-by={}]", k.display()),
            None => "[arch=amd64]".into(),
        };
        self.suites
            .iter()
            .map(|s| {
                let uri = if s.ends_with("-security") {
                    &self.security
                } else {
                    &self.mirror
                };
                format!("deb {opts} {uri} {s} main\n")
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The private apt.

/// Whether something written at `written` is younger than [`MAX_AGE`] at `now`.
pub fn is_current(written: SystemTime, now: SystemTime) -> bool {
    now.duration_since(written).is_ok_and(|age| age < MAX_AGE)
}

/// ukci's private apt: its own sources list, lists and cache under `dir`.
pub struct Apt {
    dir: PathBuf,
    sources: AptSources,
}

impl Apt {
    pub fn new(dir: PathBuf) -> Result<Apt, AptError> {
        Ok(Apt {
            dir,
            sources: AptSources::from_system()?,
        })
    }

    /// The suites searched.
    pub fn suites(&self) -> &[String] {
        &self.sources.suites
    }

    /// The Debian mirror the suites come from.
    pub fn mirror(&self) -> &str {
        &self.sources.mirror
    }

    /// The suites that have binary packages of `package`.
    pub fn suites_with(&self, package: &str) -> Result<Vec<String>, AptError> {
        let out = self.run(
            "apt-cache",
            &["madison".into(), package.into()],
            QUERY_TIMEOUT,
        )?;
        Ok(madison_suites(&out, package))
    }

    fn sources_list(&self) -> String {
        let keyring = Path::new(KEYRING);
        self.sources.render(keyring.is_file().then_some(keyring))
    }

    /// The options that make apt use this configuration instead of the system's.
    fn options(&self) -> Vec<OsString> {
        let mut opts: Vec<String> = vec![
            format!(
                "Dir::Etc::sourcelist={}",
                self.dir.join("sources.list").display()
            ),
            "Dir::Etc::sourceparts=-".into(),
            format!("Dir::State::lists={}", self.dir.join("lists").display()),
            format!("Dir::Cache={}", self.dir.join("cache").display()),
            "Acquire::Languages=none".into(),
        ];
        // Only package indices: no AppStream metadata a desktop config asks for.
        for target in [
            "DEP-11",
            "DEP-11-icons",
            "DEP-11-icons-small",
            "DEP-11-icons-hidpi",
        ] {
            opts.push(format!(
                "Acquire::IndexTargets::deb::{target}::DefaultEnabled=false"
            ));
        }
        // As root apt downloads as `_apt`, which cannot write into a private
        // home; the files are root's anyway.
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            opts.push("APT::Sandbox::User=root".into());
        }
        opts.into_iter()
            .flat_map(|o| ["-o".into(), o.into()])
            .collect()
    }

    fn run(&self, program: &str, args: &[OsString], timeout: Duration) -> Result<String, AptError> {
        let mut all = self.options();
        all.extend(args.iter().cloned());
        run_shown(program, &all, timeout, &self.show(program, args))
    }

    /// How an apt command is named in errors: without the private options.
    fn show(&self, program: &str, args: &[OsString]) -> String {
        format!(
            "{} (with ukci's apt configuration in {})",
            shown(program, args),
            self.dir.display()
        )
    }

    /// Makes the lists current: updates them when they are older than
    /// [`MAX_AGE`], were made for other sources, or `force`. When an update
    /// fails and lists for these sources exist, they are used as they are.
    /// Returns whether it updated.
    pub fn refresh(&self, force: bool) -> Result<bool, AptError> {
        let sources = self.sources_list();
        let list_path = self.dir.join("sources.list");
        let stamp = self.dir.join("updated");
        let partial = self.dir.join("lists/partial");
        fs::create_dir_all(&partial).map_err(io_err(&partial))?;
        fs::create_dir_all(self.dir.join("cache")).map_err(io_err(&self.dir))?;
        let _lock = EntryLock::acquire(&self.dir.join("lists")).map_err(io_err(&self.dir))?;
        let same_sources = fs::read_to_string(&stamp).is_ok_and(|s| s == sources);
        let current = same_sources
            && fs::metadata(&stamp)
                .and_then(|m| m.modified())
                .is_ok_and(|t| is_current(t, SystemTime::now()));
        if current && !force {
            return Ok(false);
        }
        if fs::read_to_string(&list_path).ok().as_deref() != Some(&sources) {
            cache::write_atomic(&list_path, sources.as_bytes()).map_err(io_err(&list_path))?;
        }
        match self.run(
            "apt-get",
            &["-q".into(), "update".into()],
            Duration::from_secs(300),
        ) {
            Ok(_) => {}
            Err(e) if same_sources => {
                eprintln!("warning: {e}; using the Debian package lists of the last update");
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        cache::write_atomic(&stamp, sources.as_bytes()).map_err(io_err(&stamp))?;
        Ok(true)
    }

    /// The package names starting with `prefix` that apt knows of (some
    /// only as names other packages refer to).
    pub fn pkgnames(&self, prefix: &str) -> Result<Vec<String>, AptError> {
        let out = self.run(
            "apt-cache",
            &["pkgnames".into(), prefix.into()],
            QUERY_TIMEOUT,
        )?;
        Ok(out.lines().map(|l| l.trim().to_owned()).collect())
    }

    /// The downloadable versions of `names`, in every suite.
    pub fn madison(&self, names: &[String]) -> Result<Vec<Candidate>, AptError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![OsString::from("madison")];
        args.extend(names.iter().map(OsString::from));
        Ok(parse_madison(&self.run(
            "apt-cache",
            &args,
            QUERY_TIMEOUT,
        )?))
    }

    pub fn download(&self, packages: &[String], into: &Path) -> Result<(), AptError> {
        // `apt-get download` writes into its working directory.
        let mut args: Vec<OsString> = vec!["-C".into(), into.into(), "apt-get".into()];
        args.extend(self.options());
        args.extend(["-q".into(), "download".into()]);
        args.extend(packages.iter().map(OsString::from));
        let mut shown_args = vec![OsString::from("download")];
        shown_args.extend(packages.iter().map(OsString::from));
        let show = self.show("apt-get", &shown_args);
        run_shown("env", &args, Duration::from_secs(900), &show).map(|_| ())
    }
}

/// Runs `program args` under a hard timeout; its stdout, or what went wrong.
pub fn run(program: &str, args: &[OsString], timeout: Duration) -> Result<String, AptError> {
    run_shown(program, args, timeout, &shown(program, args))
}

fn shown(program: &str, args: &[OsString]) -> String {
    std::iter::once(program.to_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a process that did not succeed ended, in words; `None` for success.
pub fn failure(end: &End) -> Option<String> {
    match end {
        End::Exited(0) => None,
        End::Exited(c) => Some(format!("exit status {c}")),
        End::Signaled(s) => Some(format!("killed by signal {s}")),
        End::TimedOut(t) => Some(format!("no answer within {}s", t.as_secs())),
        End::SpawnFailed(e) => Some(format!("could not start: {e}")),
    }
}

/// [`run`], naming the command `show` in errors.
fn run_shown(
    program: &str,
    args: &[OsString],
    timeout: Duration,
    show: &str,
) -> Result<String, AptError> {
    let fin = supervise::run(OsStr::new(program), args, timeout, |_| {});
    let Some(status) = failure(&fin.end) else {
        return Ok(fin.stdout);
    };
    Err(AptError::Command {
        command: show.to_owned(),
        status,
        stderr: fin.stderr.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_version_drops_epoch_and_revision() {
        assert_eq!(upstream_version("6.12.117-1~deb12u1"), "6.12.117");
        assert_eq!(upstream_version("1:6.1.192-3"), "6.1.192");
        assert_eq!(upstream_version("7.3.4"), "7.3.4");
        assert_eq!(upstream_version("2.0-rc1-4"), "2.0-rc1");
    }

    #[test]
    fn madison_tells_the_suites_of_a_package() {
        let out = "    gcc-12 |   12.4.0-5 | http://deb.debian.org/debian trixie/main amd64 Packages\n\
                   \x20   gcc-12 | 12.2.0-14+deb12u1 | http://deb.debian.org/debian bookworm/main amd64 Packages\n\
                   \x20   gcc-12 | 12.2.0-14+deb12u1 | http://deb.debian.org/debian bookworm/main Sources\n\
                   \x20   gcc-12 | 12.2.0-14 | http://m/debian bookworm/main amd64 Packages\n\
                   \x20   gcc-14 |  14.2.0-19 | http://deb.debian.org/debian trixie/main amd64 Packages\n";
        assert_eq!(madison_suites(out, "gcc-12"), ["trixie", "bookworm"]);
        assert_eq!(madison_suites(out, "gcc-14"), ["trixie"]);
        assert!(madison_suites(out, "gcc-13").is_empty());
    }

    #[test]
    fn depends_give_plain_names_and_pins() {
        let deps = "linux-base (>= 4.12~), linux-headers-6.12.117+deb13-common (= 6.12.117-1), \
                    linux-image-6.12.117+deb13-amd64 (= 6.12.117-1) | linux-image-6.12.117+deb13-amd64-unsigned (= 6.12.117-1), \
                    linux-kbuild-6.12.117+deb13, gcc-14";
        assert_eq!(
            parse_depends(deps),
            [
                ("linux-base", None),
                ("linux-headers-6.12.117+deb13-common", Some("6.12.117-1")),
                ("linux-kbuild-6.12.117+deb13", None),
                ("gcc-14", None),
            ]
        );
        assert!(parse_depends("").is_empty());
    }

    #[test]
    fn debian_versions_compare_like_dpkg() {
        use Ordering::*;
        for (a, b, o) in [
            ("6.12.117-1~deb12u1", "6.12.95-1~bpo12+1", Greater),
            ("6.12.117-1", "6.12.117-1~deb12u1", Greater),
            ("6.18.15-1~bpo13+1", "6.18.9-1~bpo13+1", Greater),
            ("7.3.4-1~bpo13+1", "7.3.4-1~bpo13+2", Less),
            ("6.1.192-2", "6.1.192-1", Greater),
            ("6.1.192-2", "6.1.99-9", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~", Greater),
            ("1.0", "1.0+b1", Less),
            ("1.0", "1.0.0", Less),
            ("1:0.1", "2.0", Greater),
            ("1.0a", "1.0+", Less),
            ("1.0a", "1.0", Greater),
            ("1.01", "1.1", Equal),
            ("1.0-1", "1.0-1", Equal),
            ("6.12.90-1~bpo12+1", "6.12.90-1", Less),
        ] {
            assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    /// The comparator agrees with dpkg itself, where dpkg is installed.
    #[test]
    fn debian_versions_compare_like_dpkg_says() {
        let pairs = [
            ("6.12.117-1~deb12u1", "6.12.117-1"),
            ("1.0~~a", "1.0~"),
            ("1.0a+b", "1.0a.b"),
            ("2:1.0", "10:0.1"),
            ("0.9.9-1", "0.9.10-1"),
            ("1.0-1+b1", "1.0-1.1"),
        ];
        for (a, b) in pairs {
            let fin = ukci_supervise::run(
                "dpkg".as_ref(),
                &["--compare-versions".into(), a.into(), "lt".into(), b.into()],
                std::time::Duration::from_secs(30),
                |_| {},
            );
            let dpkg_less = match fin.end {
                ukci_supervise::End::Exited(c) => c == 0,
                _ => return eprintln!("skipping: no dpkg"),
            };
            assert_eq!(
                compare_versions(a, b) == Ordering::Less,
                dpkg_less,
                "{a} vs {b}"
            );
        }
    }

    #[test]
    fn suites_come_from_the_variable_and_mirrors_from_the_machine() {
        assert_eq!(
            parse_suites("bookworm, trixie-backports  sid").unwrap(),
            ["bookworm", "trixie-backports", "sid"]
        );
        assert!(parse_suites(" , ").unwrap_err().contains("no suite"));
        assert!(
            parse_suites("bookworm http://x/")
                .unwrap_err()
                .contains("`http://x/`")
        );

        let list = "# deb http://old/debian bookworm main\n\
                    deb http://ftp.nl.debian.org/debian bookworm main\n\
                    deb [signed-by=/k.gpg] https://deb.nodesource.com/node_20.x nodistro main\n";
        let sources = "Types: deb\nURIs: https://nodesource/x\nSuites: nodistro\n\n\
                       Types: deb deb-src\nURIs: http://mirror.example/debian-security\n\
                       Suites: bookworm-security\nComponents: main\n\n\
                       Types: deb\nURIs: http://off/debian\nSuites: trixie\nEnabled: no\n";
        let mut entries = source_entries(list, false);
        assert_eq!(entries.len(), 2);
        entries.extend(source_entries(sources, true));
        assert_eq!(entries.len(), 4, "{entries:?}");
        let suites = vec!["bookworm".to_owned(), "bookworm-security".to_owned()];
        let a = AptSources::new(suites.clone(), &entries);
        assert_eq!(a.mirror, "http://ftp.nl.debian.org/debian");
        assert_eq!(a.security, "http://mirror.example/debian-security");
        assert_eq!(
            a.render(Some(Path::new("/k.gpg"))),
            "deb [arch=amd64 signed-by=/k.gpg] http://ftp.nl.debian.org/debian bookworm main\n\
             deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian-security bookworm-security main\n"
        );
        let bare = AptSources::new(suites, &[]);
        assert_eq!(
            (bare.mirror.as_str(), bare.security.as_str()),
            (DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR)
        );
        assert!(
            bare.render(None)
                .starts_with("deb [arch=amd64] http://deb.debian.org/debian bookworm main\n")
        );
    }
}
