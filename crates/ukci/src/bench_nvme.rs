//! `cargo xtask bench`, NVMe part: the guest driver's sequential throughput
//! (`nvme.bench`: queue depth 1, 4 KiB and MDTS-sized transfers) on QEMU's
//! emulated NVMe under TCG, next to `dd` moving the same bytes in the same
//! transfer sizes on the same kind of image file (a fresh sparse raw file)
//! on this host.
//!
//! The guest's write phase ends with a Flush, which QEMU turns into an
//! fdatasync of the image, so the host writes use `conv=fdatasync`
//! (buffered, like QEMU's default cache=writeback). `oflag=direct` /
//! `iflag=direct` rows show the device without the page cache. Ratios are
//! guest / host buffered.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::time::Duration;
use ukci_runner::manifest::MachineType;
use ukci_runner::plan;
use ukci_runner::qemu::{self, VmConfig, VmDevice};
use ukci_runner::session::Layout;
use ukci_runner::supervise::{self, End};
use ukci_runner::units::ByteSize;

/// Bytes each shape moves per direction.
const BYTES: u64 = 16 << 20;
/// The image: room for the bytes moved, like the manifests' scratch images.
const IMAGE: u64 = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(120);

/// One `bench op=.. transfer=.. ... mib_per_s=..` INFO line.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    op: String,
    transfer: u64,
    bytes: u64,
    mib_per_s: f64,
}

fn parse(line: &str) -> Option<Sample> {
    let rest = &line[line.find("bench op=")? + "bench ".len()..];
    let get = |key: &str| {
        rest.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    Some(Sample {
        op: get("op")?.to_string(),
        transfer: get("transfer")?.parse().ok()?,
        bytes: get("bytes")?.parse().ok()?,
        mib_per_s: get("mib_per_s")?.parse().ok()?,
    })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// Seconds from dd's last stderr line: `N bytes (..) copied, 0.0123 s, ..`.
fn dd_seconds(stderr: &str) -> Option<f64> {
    let line = stderr.lines().rev().find(|l| l.contains(" copied, "))?;
    let after = line.split(" copied, ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

fn fresh_image(path: &Path) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(IMAGE)?;
    Ok(())
}

/// One guest run: the samples it printed.
fn guest_once(v: &VmConfig, image: &Path) -> Result<Vec<Sample>> {
    fresh_image(image)?;
    let mut samples = Vec::new();
    let fin = supervise::run(qemu::QEMU.as_ref(), &v.args(), TIMEOUT, |l| {
        samples.extend(parse(l))
    });
    if !matches!(fin.end, End::Exited(1)) {
        let tail: Vec<&str> = fin.stdout.lines().rev().take(8).collect();
        bail!(
            "nvme.bench VM ended {:?}: {}",
            fin.end,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(samples)
}

/// dd moving `BYTES` in `bs` blocks: MiB/s.
fn dd_once(image: &Path, write: bool, bs: u64, direct: bool) -> Result<f64> {
    let count = BYTES / bs;
    let img = image.display().to_string();
    let mut args = vec![format!("bs={bs}"), format!("count={count}")];
    if write {
        fresh_image(image)?;
        args.extend(["if=/dev/zero".into(), format!("of={img}")]);
        args.push(if direct {
            "oflag=direct".into()
        } else {
            "conv=notrunc,fdatasync".into()
        });
        if direct {
            args.push("conv=notrunc".into());
        }
    } else {
        args.extend([format!("if={img}"), "of=/dev/null".into()]);
        if direct {
            args.push("iflag=direct".into());
        }
    }
    // Through env(1): dd's summary in the C locale, whatever the caller's.
    let argv: Vec<std::ffi::OsString> = ["LC_ALL=C", "dd"]
        .into_iter()
        .map(String::from)
        .chain(args.iter().cloned())
        .map(Into::into)
        .collect();
    let fin = supervise::run("env".as_ref(), &argv, Duration::from_secs(120), |_| {});
    let stderr = fin.stderr;
    if fin.end != End::Exited(0) {
        bail!("dd {}: {:?} {}", args.join(" "), fin.end, stderr.trim());
    }
    let s = dd_seconds(&stderr).with_context(|| format!("dd printed no time: {stderr}"))?;
    Ok(BYTES as f64 / s.max(1e-9) / f64::from(1 << 20))
}

pub fn run(layout: &Layout, runs: usize) -> Result<()> {
    let runs = runs.clamp(1, 5);
    let dir = layout.images().join("scratch").join("bench-nvme");
    std::fs::create_dir_all(&dir)?;
    let result = measure(layout, &dir, runs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(layout: &Layout, dir: &Path, runs: usize) -> Result<()> {
    let guest_img = dir.join("guest.img");
    let host_img = dir.join("host.img");
    let v = VmConfig {
        machine: MachineType::Q35,
        accel: ukci_vhost::accel::Accel::Tcg,
        cpu: qemu::default_cpu(ukci_vhost::accel::Accel::Tcg, None),
        memory: ByteSize::mib(128),
        smp: 1,
        pit: true,
        boot: plan::guest_boot(MachineType::Q35, &layout.guest_image(), true),
        append: format!("checks=nvme.bench nvme.max-bytes={BYTES}"),
        devices: vec![VmDevice::Nvme {
            serial: "ukci-bench".into(),
            image: guest_img.clone(),
            sriov_max_vfs: 0,
        }],
    };
    let mut samples = Vec::new();
    for _ in 0..runs {
        samples.extend(guest_once(&v, &guest_img)?);
    }
    let mut shapes: Vec<u64> = samples.iter().map(|s| s.transfer).collect();
    shapes.sort_unstable();
    shapes.dedup();
    if shapes.is_empty() {
        bail!("nvme.bench printed no throughput lines");
    }
    out!(
        "\nNVMe sequential throughput, queue depth 1, {} MiB per shape, median of {runs} \
         [guest: ukci nvme.bench on QEMU nvme, q35, tcg | host: dd on a sparse raw file]",
        BYTES >> 20
    );
    out!(
        "{:<26} {:>14} {:>16} {:>8} {:>16}",
        "",
        "guest",
        "host dd",
        "ratio",
        "host dd direct"
    );
    for bs in shapes {
        for (op, write) in [("write", true), ("read", false)] {
            let guest = median(
                samples
                    .iter()
                    .filter(|s| s.op == op && s.transfer == bs && s.bytes > 0)
                    .map(|s| s.mib_per_s)
                    .collect(),
            );
            let mut buffered = Vec::new();
            let mut direct = Vec::new();
            for _ in 0..runs {
                if !write && buffered.is_empty() {
                    // Reads of a written file, as the guest reads what it wrote.
                    dd_once(&host_img, true, bs, false)?;
                }
                buffered.push(dd_once(&host_img, write, bs, false)?);
                direct.push(dd_once(&host_img, write, bs, true)?);
            }
            let (host, host_direct) = (median(buffered), median(direct));
            let ratio = match (guest, host) {
                (Some(g), Some(h)) if h > 0.0 => format!("{:.3}x", g / h),
                _ => "-".into(),
            };
            let mib = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} MiB/s"));
            out!(
                "{:<26} {:>14} {:>16} {:>8} {:>16}",
                format!("{op} {} KiB transfers", bs >> 10),
                mib(guest),
                mib(host),
                ratio,
                mib(host_direct)
            );
        }
    }
    out!(
        "(host writes: buffered = conv=fdatasync, the guest's Flush; direct = oflag=direct. \
         host reads of the file just written: buffered, and iflag=direct)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_and_dd_times_parse() {
        let s = parse(
            "INFO: nvme.bench: bench op=read transfer=4096 count=4096 bytes=16777216 \
             ns=516038277 mib_per_s=31.00",
        )
        .unwrap();
        assert_eq!(
            s,
            Sample {
                op: "read".into(),
                transfer: 4096,
                bytes: 16777216,
                mib_per_s: 31.0
            }
        );
        assert_eq!(parse("INFO: nvme.bench: nsid=1 block=512"), None);
        let dd = "4096+0 records in\n4096+0 records out\n\
                  16777216 bytes (17 MB, 16 MiB) copied, 0.0312 s, 538 MB/s\n";
        assert_eq!(dd_seconds(dd), Some(0.0312));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
    }
}
