//! Building the guest: its own cargo workspace under guest/, target
//! x86_64-unknown-none, installed into images/ for runs to boot.

use anyhow::{Context, Result};
use std::path::PathBuf;
use ukci_runner::session::Layout;
use xshell::{Shell, cmd};

pub const TARGET: &str = "x86_64-unknown-none";

/// Builds the release guest and installs it atomically as images/ukci-guest
/// (a run that is booting the previous image is not disturbed).
pub fn build(layout: &Layout) -> Result<PathBuf> {
    let sh = Shell::new()?;
    let guest_dir = layout.root.join("guest");
    sh.change_dir(&guest_dir);
    let target_dir = guest_dir.join("target");
    // The guest's .cargo/config.toml is found from the working directory;
    // RUSTFLAGS from the caller would replace its flags, so drop them.
    cmd!(
        sh,
        "cargo build --release --quiet --target-dir {target_dir}"
    )
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .quiet()
    .run()
    .context("building the guest failed")?;
    let built = target_dir.join(TARGET).join("release").join("ukci-guest");
    let images = layout.images();
    std::fs::create_dir_all(&images)?;
    let dest = layout.guest_image();
    // Unchanged images keep their timestamp, which keys the KVM probe cache.
    if std::fs::read(&dest).ok() == Some(std::fs::read(&built)?) {
        return Ok(dest);
    }
    let tmp = images.join(format!(".ukci-guest.{}", std::process::id()));
    std::fs::copy(&built, &tmp).with_context(|| format!("copying {}", built.display()))?;
    std::fs::rename(&tmp, &dest)?;
    Ok(dest)
}
