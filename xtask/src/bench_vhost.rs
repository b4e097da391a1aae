//! The virtual lane's costs per kernel: fetching (first and cached), the
//! initramfs (first and cached), boot to agent-ready, and a whole lane run.

use anyhow::Result;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use ukci_runner::session::Layout;
use ukci_vhost::boot::{self, Agent, BootConfig};
use ukci_vhost::initramfs::{self, InitramfsSpec};
use ukci_vhost::kernel::{KernelSpec, KernelStore, Refresh};

pub const KERNELS: &[&str] = &["debian:6.1", "debian:6.12", "debian:6.18", "debian:7.3"];

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

pub fn run(layout: &Layout, boots: usize) -> Result<()> {
    println!("\nvirtual lane (TCG), seconds");
    println!(
        "{:<12} {:>9} {:>8} {:>10} {:>8} {:>14} {:>10}",
        "kernel", "fetch 1st", "cached", "initrd 1st", "cached", "agent-ready min", "lane total"
    );
    let fresh = layout.root.join("target/bench-images");
    let _ = std::fs::remove_dir_all(&fresh);
    for name in KERNELS {
        let spec = KernelSpec::parse(name)?;
        // A fresh cache for the first fetch and build; the real one after.
        let first = KernelStore::new(&fresh);
        let (k, fetch_first) = timed(|| first.get(&spec, Refresh::IfStale));
        let k = k?;
        let (_, initrd_first) = timed(|| initramfs::build(&fresh, &k, &InitramfsSpec::default()));
        let images = layout.cache();
        let store = KernelStore::new(&images);
        store.get(&spec, Refresh::IfStale)?;
        let (kernel, fetch_cached) = timed(|| store.get(&spec, Refresh::IfStale));
        let kernel = kernel?;
        initramfs::build(&images, &kernel, &InitramfsSpec::default())?;
        let (initrd, initrd_cached) =
            timed(|| initramfs::build(&images, &kernel, &InitramfsSpec::default()));
        let initrd = initrd?;
        let mut ready = Vec::new();
        for i in 0..boots {
            let dir = layout
                .root
                .join(format!("target/bench-vhost/{}-{i}", kernel.release));
            let agent = Agent {
                program: "/bin/true".into(),
                args: vec![],
                env: vec![],
                chroot: true,
            };
            let cfg = BootConfig::new(
                &kernel.name,
                &kernel.vmlinuz,
                &initrd.path,
                &dir.join("results"),
                &dir.join("scratch"),
                agent,
            );
            ready.push(boot::run(&cfg, |_, _| {})?.agent_ready);
        }
        let lane = lane_total(layout, name)?;
        println!(
            "{name:<12} {:>9.2} {:>8.3} {:>10.3} {:>8.3} {:>14.2} {:>10.2}",
            secs(fetch_first),
            secs(fetch_cached),
            secs(initrd_first),
            secs(initrd_cached),
            secs(ready.into_iter().min().unwrap_or_default()),
            secs(lane),
        );
    }
    let _ = std::fs::remove_dir_all(&fresh);
    println!("goals: cached 6.12 agent-ready <= 8 s, 6.1 <= 14 s, cached initramfs < 1 s");
    Ok(())
}

/// `cargo xtask test manifests/vhost-smoke.toml --kernel K`, end to end.
fn lane_total(layout: &Layout, kernel: &str) -> Result<Duration> {
    let reports = layout.root.join("target/bench-reports");
    let (st, d) = timed(|| {
        Command::new(std::env::current_exe()?)
            .current_dir(&layout.root)
            .args([
                "test",
                "manifests/vhost-smoke.toml",
                "--kernel",
                kernel,
                "--reports",
            ])
            .arg(Path::new(&reports))
            .env("CI", "1")
            .stderr(std::process::Stdio::null())
            .status()
    });
    let st = st?;
    anyhow::ensure!(
        st.success(),
        "the vhost-smoke lane on {kernel} did not pass ({st})"
    );
    Ok(d)
}

/// The whole `vf-token.toml` run on both kernels, and per kernel the time of
/// each test (summed over its results, as the JUnit records it).
pub fn vf_token(layout: &Layout) -> Result<()> {
    let reports = layout.root.join("target/bench-vf-token");
    let (st, total) = timed(|| {
        Command::new(std::env::current_exe()?)
            .current_dir(&layout.root)
            .args(["test", "manifests/vf-token.toml", "--reports"])
            .arg(&reports)
            .env("CI", "1")
            .stderr(std::process::Stdio::null())
            .status()
    });
    let st = st?;
    anyhow::ensure!(st.success(), "manifests/vf-token.toml did not pass ({st})");
    let xml = std::fs::read_to_string(reports.join("latest/junit.xml"))?;
    println!(
        "\nvf-token.toml on both kernels: {:.1} s (goal < 180 s)",
        secs(total)
    );
    for (suite, test, t) in test_times(&xml) {
        if ["rules", "vf-guest", "qemu", "crash-recovery"]
            .iter()
            .any(|n| test.ends_with(n))
        {
            println!("  {suite:<26} {test:<28} {t:>6.2} s");
        }
    }
    Ok(())
}

/// (suite, classname, seconds) from a JUnit report, in order.
fn test_times(xml: &str) -> Vec<(String, String, f64)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(tag[start..].split('"').next()?.to_string())
    };
    let mut out: Vec<(String, String, f64)> = Vec::new();
    let mut suite = String::new();
    for tag in xml.split('<') {
        if tag.starts_with("testsuite ") {
            suite = attr(tag, "name").unwrap_or_default();
        } else if tag.starts_with("testcase ") {
            let class = attr(tag, "classname").unwrap_or_default();
            let t: f64 = attr(tag, "time")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0.0);
            match out.iter_mut().find(|(s, c, _)| *s == suite && *c == class) {
                Some(e) => e.2 += t,
                None => out.push((suite.clone(), class, t)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_summed_per_suite_and_test() {
        let xml = r#"<testsuites><testsuite name="v [debian:6.1]"><testcase name="a" classname="v.rules" time="1.5"/>
            <testcase name="b" classname="v.rules" time="0.5"/></testsuite><testsuite name="v [debian:6.12]">
            <testcase name="a" classname="v.rules" time="2"/></testsuite></testsuites>"#;
        assert_eq!(
            super::test_times(xml),
            vec![
                ("v [debian:6.1]".into(), "v.rules".into(), 2.0),
                ("v [debian:6.12]".into(), "v.rules".into(), 2.0)
            ]
        );
    }
}
