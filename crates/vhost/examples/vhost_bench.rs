//! Times the virtual lane's steps for each kernel given:
//! `cargo run -p ukci-vhost --example vhost_bench -- [--refresh] [--boots N] [--images DIR] debian:6.12 debian:6.1`
//! Kernels and initramfs images are cached under `<repo>/images/` unless `--images` says otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ukci_vhost::boot::{self, Agent, BootConfig};
use ukci_vhost::initramfs::{self, InitramfsSpec};
use ukci_vhost::kernel::{KernelSpec, KernelStore, Refresh};

fn main() -> anyhow::Result<()> {
    let mut refresh = Refresh::IfMissing;
    let mut boots = 3;
    let mut specs = Vec::new();
    let repo = std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))?;
    let mut images = repo.join("images");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--refresh" => refresh = Refresh::Always,
            "--boots" => boots = args.next().unwrap_or_default().parse()?,
            "--images" => images = PathBuf::from(args.next().unwrap_or_default()),
            spec => specs.push(KernelSpec::parse(spec)?),
        }
    }
    let work = repo.join("target/vhost-bench");
    let store = KernelStore::new(&images);
    for spec in &specs {
        let lane = Instant::now();
        let t = Instant::now();
        let kernel = store.get(spec, refresh)?;
        let fetch = t.elapsed();
        let t = Instant::now();
        let initrd = initramfs::build(&images, &kernel, &InitramfsSpec::default())?;
        let build = t.elapsed();
        println!(
            "{spec}: {} {} kernel {:.2} s, initramfs {:.3} s (cached {}), modules {}",
            kernel.release,
            kernel.version.as_deref().unwrap_or("-"),
            fetch.as_secs_f64(),
            build.as_secs_f64(),
            initrd.cached,
            initrd.load_order.join(" ")
        );
        let mut ready = Vec::new();
        for i in 0..boots {
            let dir: PathBuf = work.join(format!("{}-{i}", kernel.release));
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
            let r = boot::run(&cfg, |_, _| {})?;
            println!(
                "  boot {i}: agent-ready {:.2} s, power-off {:.2} s, agent status {}",
                r.agent_ready.as_secs_f64(),
                r.total.as_secs_f64(),
                r.agent_status
            );
            ready.push(r.agent_ready);
        }
        let min = ready.iter().min().copied().unwrap_or(Duration::ZERO);
        println!(
            "{spec}: min agent-ready {:.2} s over {boots}; lane total {:.2} s",
            min.as_secs_f64(),
            lane.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
