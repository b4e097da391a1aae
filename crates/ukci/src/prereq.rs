//! What a host needs for ukci, how `doctor` explains it and how `setup`
//! installs it. Each action is printed before it runs.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use ukci_runner::envmatch::Version;
use ukci_runner::exitcode;
use ukci_runner::session::Layout;
use ukci_runner::supervise::{is_root, on_path};
use ukci_runner::{host, qemu};
use xshell::{Shell, cmd};

/// QEMU 10 is the first Debian-packaged QEMU with `vf-token` on vfio-pci.
const MIN_QEMU: [u32; 2] = [10, 0];
const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/ukci-bookworm-backports.sources";
const BACKPORTS: &str = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n\
                         Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";

/// One missing prerequisite.
struct Lack {
    what: String,
    fix: Fix,
}

/// What `setup` does about a [`Lack`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fix {
    /// Installs QEMU from bookworm-backports.
    Qemu,
    /// Adds the guest's Rust target.
    RustTarget,
    /// Installs one of [`PACKAGES`].
    Package,
}

impl Fix {
    fn text(self) -> &'static str {
        match self {
            Fix::Qemu => "cargo xtask setup (installs qemu-system-x86 from bookworm-backports)",
            Fix::RustTarget => "cargo xtask setup (runs rustup target add x86_64-unknown-none)",
            Fix::Package => "cargo xtask setup (installs it with apt-get)",
        }
    }
}

/// Debian packages a host needs beside QEMU: the program that tells one is
/// installed, the package, and what ukci uses it for.
const PACKAGES: &[(&str, &str, &str)] = &[
    (
        "/bin/busybox",
        "busybox-static",
        "the virtual test host's initramfs is built from it",
    ),
    (
        "/usr/sbin/debootstrap",
        "debootstrap",
        "KVM variants are built in a chroot of the Debian release whose compiler built the kernel",
    ),
];

fn lacks(layout: &Layout) -> Vec<Lack> {
    let mut v = Vec::new();
    let qemu = host::qemu_facts(&layout.qemu_facts());
    match qemu.version {
        None => v.push(Lack {
            what: format!("{} is not installed", qemu::QEMU),
            fix: Fix::Qemu,
        }),
        Some(ver) if ver < Version(MIN_QEMU.to_vec()) => v.push(Lack {
            what: format!("QEMU {ver} is too old: vfio-pci has no vf-token before the QEMU 10 of bookworm-backports"),
            fix: Fix::Qemu,
        }),
        Some(ver) if !qemu.vf_token => v.push(Lack {
            what: format!("QEMU {ver} has no vf-token property on vfio-pci (checked with -device vfio-pci,help)"),
            fix: Fix::Qemu,
        }),
        Some(_) => {}
    }
    if !rust_target_installed(&layout.root.join("guest")) {
        v.push(Lack {
            what:
                "the Rust target x86_64-unknown-none is not installed (the guest is built for it)"
                    .into(),
            fix: Fix::RustTarget,
        });
    }
    for (program, package, why) in missing_packages() {
        v.push(Lack {
            what: format!("{package} is not installed ({program}: {why})"),
            fix: Fix::Package,
        });
    }
    v
}

/// The entries of [`PACKAGES`] whose program is absent.
fn missing_packages() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    PACKAGES
        .iter()
        .copied()
        .filter(|(program, _, _)| !Path::new(program).exists())
}

/// Whether the guest's target is installed for the toolchain that builds it
/// (in `guest_dir`): seen in rustup's toolchain folder when that toolchain
/// can be told without asking rustup, else asked of rustup.
fn rust_target_installed(guest_dir: &Path) -> bool {
    guest_target_dir(guest_dir).is_some_and(|d| d.is_dir()) || rustup_lists_target()
}

/// [`rustup_target_dir`] for this user's rustup and environment.
pub fn guest_target_dir(guest_dir: &Path) -> Option<PathBuf> {
    let home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".rustup")))?;
    let env = std::env::var("RUSTUP_TOOLCHAIN").ok();
    rustup_target_dir(&home, env.as_deref(), guest_dir)
}

/// Where rustup keeps the guest target's standard library for the toolchain
/// a build in `dir` uses: the one `RUSTUP_TOOLCHAIN` names, else rustup's
/// default. `None` when that is not sure without rustup: a toolchain file or
/// a directory override may choose another, or the toolchain is not there.
fn rustup_target_dir(rustup_home: &Path, env: Option<&str>, dir: &Path) -> Option<PathBuf> {
    let toolchain = match env {
        Some(t) => t.to_string(),
        None => {
            let files = ["rust-toolchain", "rust-toolchain.toml"];
            if dir
                .ancestors()
                .any(|a| files.iter().any(|f| a.join(f).exists()))
            {
                return None;
            }
            let text = std::fs::read_to_string(rustup_home.join("settings.toml")).ok()?;
            let settings: toml::Table = text.parse().ok()?;
            let overridden = settings
                .get("overrides")
                .and_then(|o| o.as_table())
                .is_some_and(|o| o.keys().any(|p| dir.starts_with(p)));
            if overridden {
                return None;
            }
            settings.get("default_toolchain")?.as_str()?.to_string()
        }
    };
    // A channel name without the host (`stable`) is installed with it.
    let host = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    [toolchain.clone(), format!("{toolchain}-{host}")]
        .into_iter()
        .map(|t| rustup_home.join("toolchains").join(t))
        .find(|t| t.is_dir())
        .map(|t| t.join("lib/rustlib").join(crate::guest::TARGET))
}

fn rustup_lists_target() -> bool {
    let fin = ukci_runner::supervise::run(
        "rustup".as_ref(),
        &["target".into(), "list".into(), "--installed".into()],
        std::time::Duration::from_secs(60),
        |_| {},
    );
    fin.end == ukci_runner::supervise::End::Exited(0)
        && fin.stdout.lines().any(|l| l.trim() == crate::guest::TARGET)
}

/// Before a test run: set up what is missing when allowed to (root or CI),
/// else stop with the exact command to run.
pub fn ensure(layout: &Layout) -> Result<(), i32> {
    let missing = lacks(layout);
    if missing.is_empty() {
        return Ok(());
    }
    for l in &missing {
        eprintln!("missing: {}", l.what);
    }
    if is_root() || std::env::var_os("CI").is_some() {
        eprintln!("setting up what is missing:");
        if let Err(e) = Shell::new()
            .map_err(Into::into)
            .and_then(|sh| install_missing(layout, &sh))
        {
            eprintln!("error: set-up failed: {e:#}");
            return Err(exitcode::HOST);
        }
        let still = lacks(layout);
        if still.is_empty() {
            return Ok(());
        }
        for l in &still {
            eprintln!("error: still missing after set-up: {}", l.what);
        }
        return Err(exitcode::HOST);
    }
    eprintln!("error: this host is not ready; run:\n    sudo cargo xtask setup");
    Err(exitcode::HOST)
}

pub fn doctor(layout: &Layout) -> i32 {
    let facts = host::detect(&layout.qemu_facts());
    let missing = lacks(layout);
    out!("host kernel   {}", facts.host_kernel);
    out!("cpu           {}", facts.cpu_model);
    out!(
        "qemu          {}",
        facts
            .qemu_version
            .as_ref()
            .map_or("not installed".into(), |v| v.to_string())
    );
    out!(
        "kvm module    {}",
        facts.kvm_module.as_deref().unwrap_or("none")
    );
    match &facts.dev_kvm {
        Ok(()) if facts.qemu_version.is_none() => {
            out!("accel auto    not probed (QEMU is missing)")
        }
        Ok(()) if layout.guest_image().exists() => {
            let c = host::resolve_auto(
                &facts,
                &layout.guest_image(),
                &layout.images().join("accel-probe.txt"),
                host::KVM_PROBE_LIMIT,
            );
            out!("accel auto    {} ({})", c.accel, c.reason);
            if c.accel == ukci_vhost::accel::Accel::Tcg {
                out!(
                    "              KVM is present but not usable for the guest: tests run under TCG."
                );
                out!(
                    "              `--accel kvm` forces it; expect slow firmware boots under kvm_pvm."
                );
            }
        }
        Ok(()) => out!("accel auto    not probed yet (run `cargo xtask build` first)"),
        Err(e) => out!(
            "accel auto    tcg ({e}; load kvm_intel or kvm_amd, or add yourself to the kvm group)"
        ),
    }
    if !on_path("just") {
        out!(
            "just          not installed (optional: the justfile's recipes are each one \
             `cargo xtask` command; `cargo xtask setup` installs it)"
        );
    }
    if !on_path(CHROMIUM) {
        out!(
            "chromium      not installed (`cargo xtask ci` loads the HTML report in it; \
             `sudo cargo xtask setup --ci` installs it)"
        );
    }
    if missing.is_empty() {
        out!("\nready: nothing is missing");
        exitcode::OK
    } else {
        out!();
        for l in &missing {
            out!("missing: {}\n    fix: {}", l.what, l.fix.text());
        }
        exitcode::HOST
    }
}

fn os_codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
}

/// The browser `cargo xtask ci` checks the HTML report in (Debian's package).
pub const CHROMIUM: &str = "chromium";

/// Whether apt has a candidate to install for `package` here.
fn apt_has(package: &str) -> bool {
    std::process::Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .is_ok_and(|o| has_candidate(&String::from_utf8_lossy(&o.stdout)))
}

/// Whether `apt-cache policy` output names a version to install: nothing
/// for a package apt does not know, `Candidate: (none)` for one no source has.
fn has_candidate(policy: &str) -> bool {
    policy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate:"))
        .any(|c| c.trim() != "(none)")
}

/// `just`, for the justfile's recipes: Debian's package where the suite has
/// one (trixie and later), else built with cargo.
fn install_just(sh: &Shell) -> Result<()> {
    if on_path("just") {
        return Ok(());
    }
    if is_root() && apt_has("just") {
        out!("setup: apt-get install just");
        cmd!(sh, "apt-get install -y -q just")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()?;
    } else {
        out!("setup: cargo install just --locked (no Debian package of it here)");
        cmd!(sh, "cargo install just --locked")
            .run()
            .context("cargo install just failed")?;
    }
    Ok(())
}

/// What only `cargo xtask ci` needs: Chromium, for the HTML report's test.
fn install_ci_tools(sh: &Shell) -> Result<()> {
    if on_path(CHROMIUM) {
        return Ok(());
    }
    if !is_root() {
        bail!("installing chromium needs root: run `sudo cargo xtask setup --ci`");
    }
    if !apt_has(CHROMIUM) {
        bail!("apt has no chromium package here: install Chromium as `chromium` on the PATH");
    }
    out!("setup: apt-get install chromium");
    cmd!(sh, "apt-get install -y -q --no-install-recommends chromium")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    Ok(())
}

/// Installs what `lacks` reports, printing each action; then for people
/// `just`, for the justfile's recipes, or with `ci` what only `cargo xtask
/// ci` needs instead (CI runs `cargo xtask` itself, not `just`).
pub fn setup(layout: &Layout, ci: bool) -> Result<()> {
    let sh = Shell::new()?;
    install_missing(layout, &sh)?;
    if ci {
        install_ci_tools(&sh)
    } else {
        install_just(&sh)
    }
}

fn install_missing(layout: &Layout, sh: &Shell) -> Result<()> {
    let missing = lacks(layout);
    let needs = |fix: Fix| missing.iter().any(|l| l.fix == fix);
    if needs(Fix::RustTarget) {
        out!("setup: rustup target add {}", crate::guest::TARGET);
        let t = crate::guest::TARGET;
        cmd!(sh, "rustup target add {t}")
            .run()
            .context("rustup target add failed")?;
    }
    if !needs(Fix::Qemu) && !needs(Fix::Package) {
        out!("setup: nothing else to install");
        return Ok(());
    }
    if os_codename().as_deref() != Some("bookworm") {
        bail!(
            "automatic set-up knows Debian 12 (bookworm); on this system install QEMU >= {}.{} \
             (qemu-system-x86_64), a static busybox and debootstrap with your package manager",
            MIN_QEMU[0],
            MIN_QEMU[1]
        );
    }
    if !is_root() {
        bail!("installing packages needs root: run `sudo cargo xtask setup`");
    }
    if !has_backports()? {
        out!("setup: adding bookworm-backports as {BACKPORTS_FILE}");
        std::fs::write(BACKPORTS_FILE, BACKPORTS)
            .with_context(|| format!("writing {BACKPORTS_FILE}"))?;
    }
    out!("setup: apt-get update");
    cmd!(sh, "apt-get update -q").run()?;
    out!("setup: apt-get install -t bookworm-backports qemu-system-x86");
    cmd!(
        sh,
        "apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86"
    )
    .env("DEBIAN_FRONTEND", "noninteractive")
    .run()?;
    let packages: Vec<&str> = missing_packages().map(|(_, package, _)| package).collect();
    if !packages.is_empty() {
        out!("setup: apt-get install {}", packages.join(" "));
        cmd!(sh, "apt-get install -y -q {packages...}")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()?;
    }
    Ok(())
}

fn has_backports() -> Result<bool> {
    let mut files = vec![Path::new("/etc/apt/sources.list").to_path_buf()];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.flatten().map(|e| e.path()));
    }
    Ok(files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .any(|t| {
            t.lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains("bookworm-backports"))
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_has_a_package_only_with_a_candidate_version() {
        let policy = "chromium:\n  Installed: (none)\n  Candidate: 156.0.8078.129-1~deb12u1\n  Version table:\n";
        assert!(has_candidate(policy));
        assert!(!has_candidate(
            "just:\n  Installed: (none)\n  Candidate: (none)\n"
        ));
        assert!(!has_candidate(""));
    }

    #[test]
    fn the_guest_toolchain_is_read_from_the_environment_or_rustup_settings() {
        let d = std::env::temp_dir().join(format!("ukci-rustup-{}", std::process::id()));
        let home = d.join("rustup");
        let guest = d.join("checkout/guest");
        let lib = |t: &str| home.join("toolchains").join(t).join("lib/rustlib");
        std::fs::create_dir_all(lib("stable-x86_64-unknown-linux-gnu")).unwrap();
        std::fs::create_dir_all(lib("nightly-x86_64-unknown-linux-gnu")).unwrap();
        std::fs::create_dir_all(&guest).unwrap();
        let target = |t: &str| Some(lib(t).join(crate::guest::TARGET));
        // No settings: rustup decides.
        assert_eq!(rustup_target_dir(&home, None, &guest), None);
        std::fs::write(
            home.join("settings.toml"),
            "version = \"12\"\ndefault_toolchain = \"stable-x86_64-unknown-linux-gnu\"\n[overrides]\n",
        )
        .unwrap();
        assert_eq!(
            rustup_target_dir(&home, None, &guest),
            target("stable-x86_64-unknown-linux-gnu")
        );
        assert_eq!(
            rustup_target_dir(&home, Some("nightly"), &guest),
            target("nightly-x86_64-unknown-linux-gnu"),
            "the environment wins, a channel name is completed with the host"
        );
        assert_eq!(
            rustup_target_dir(&home, Some("1.80.0"), &guest),
            None,
            "not installed"
        );
        // A directory override or a toolchain file may choose another one.
        std::fs::write(
            home.join("settings.toml"),
            format!(
                "default_toolchain = \"stable\"\n[overrides]\n\"{}\" = \"nightly\"\n",
                d.join("checkout").display()
            ),
        )
        .unwrap();
        assert_eq!(rustup_target_dir(&home, None, &guest), None);
        std::fs::write(
            home.join("settings.toml"),
            "default_toolchain = \"stable\"\n",
        )
        .unwrap();
        assert_eq!(
            rustup_target_dir(&home, None, &guest),
            target("stable-x86_64-unknown-linux-gnu")
        );
        std::fs::write(d.join("checkout/rust-toolchain.toml"), "").unwrap();
        assert_eq!(rustup_target_dir(&home, None, &guest), None);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
