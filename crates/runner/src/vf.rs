//! VFs for guests, the way a userspace PF/VF deployment uses them: vfio-pci
//! owns the PF, ukci's userspace PF driver holds it with a fresh secret
//! token and brings a VF online, and QEMU gets the VF with that token
//! through a `-readconfig` file it inherits as an anonymous sealed memfd —
//! never through its argv, never through a file with a name.

use crate::hostconfig::HostCheckContext;
use crate::manifest::MachineType;
use crate::plan;
use crate::qemu::{self, VmConfig, VmDevice};
use crate::supervise::{End, Finished};
use std::path::Path;
use std::time::Duration;
use ukci_vfio::checks::{PfUnderTest, pf_on_vfio};
use ukci_vfio::nvme_pf::PfDriver;
use ukci_vfio::token::SecretFile;
use ukci_vfio::vfio::Vfio;
use ukci_vfio::{Host, Sysfs, Token};
use ukci_vhost::accel::Accel;

/// How long a guest with a VF may take: nested TCG boots are slow.
pub const VF_GUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The `-readconfig` text that gives QEMU a VF, with or without a token.
pub fn vf_config(vf: &str, token: Option<&str>) -> String {
    let mut s = format!("[device \"vf0\"]\n  driver = \"vfio-pci\"\n  host = \"{vf}\"\n");
    if let Some(t) = token {
        s.push_str(&format!("  vf-token = \"{t}\"\n"));
    }
    s
}

/// Brings one VF online with the PF held under a fresh token, runs `f` with
/// the VF's address and the token, and tears everything down again.
pub fn with_vf<T>(
    target: &mut PfUnderTest<'_>,
    f: impl FnOnce(&str, &Token) -> T,
) -> Result<T, String> {
    pf_on_vfio(target, 0).map_err(|e| format!("PF {} onto vfio-pci: {e}", target.pf))?;
    let mut vfio = Vfio::new(target.host.sys()).map_err(|e| format!("vfio: {e}"))?;
    let mut drv = PfDriver::open(&mut vfio, &target.pf, Token::random())
        .map_err(|e| format!("PF driver: {e}"))?;
    let up = drv.bring_up_vfs(target.host, 1);
    let out = match &up {
        Ok(vfs) => Ok(f(&vfs[0].0, drv.token())),
        Err(e) => Err(format!("VF bring-up: {e}")),
    };
    let down = drv.teardown(&mut vfio, target.host);
    let out = out?;
    down.map_err(|e| format!("teardown: {e}"))?;
    Ok(out)
}

/// A guest VM on q35 with one VF, its token in a sealed config file.
pub fn vf_vm(guest: &Path, config: &SecretFile, append: &str) -> VmConfig {
    VmConfig {
        machine: MachineType::Q35,
        accel: Accel::Tcg,
        cpu: "max".into(),
        memory: plan::DEFAULT_MEMORY,
        smp: 1,
        pit: true,
        boot: plan::guest_boot(MachineType::Q35, guest, true),
        append: append.into(),
        devices: vec![VmDevice::ReadConfig {
            fd: config.raw_fd(),
        }],
    }
}

/// Runs a guest test with a VF: the PF driver holds the PF and the VF is
/// online for exactly as long as the guest runs.
pub fn run_guest_with_vf(
    ctx: &HostCheckContext,
    vm: &VmConfig,
    timeout: Duration,
    on_line: &mut dyn FnMut(&str),
) -> Finished {
    let failed = |m: String| Finished {
        end: End::SpawnFailed(m),
        stdout: String::new(),
        stderr: String::new(),
        elapsed: Duration::ZERO,
        ready_at: None,
        command: String::new(),
    };
    let Some(pf) = ctx.pf.clone() else {
        return failed(format!("no SR-IOV PF to take a VF from: {}", ctx.pf_source));
    };
    let _ = std::fs::create_dir_all(&ctx.scratch);
    let (mut host, _) = match Host::open(Sysfs::system(), &ctx.journal, &[pf.as_str()]) {
        Ok(h) => h,
        Err(e) => return failed(format!("cannot take the PF {pf}: {e}")),
    };
    let mut target = PfUnderTest {
        host: &mut host,
        pf: pf.clone(),
    };
    let res = with_vf(&mut target, |vf, token| {
        let file = token.sealed_config(|t| vf_config(vf, Some(t)))?;
        let mut vm = vm.clone();
        vm.devices.push(VmDevice::ReadConfig { fd: file.raw_fd() });
        Ok::<_, std::io::Error>(qemu::run(&vm, timeout, on_line))
    });
    // A PF not put back is the run's error, whatever the guest said: the
    // journal keeps what is left for `ukci restore` and the next run.
    if let Err(e) = host.put_back() {
        return failed(format!(
            "putting the PF {pf} back failed after the VM: {e}; run `cargo xtask restore` (journal {})",
            ctx.journal.display()
        ));
    }
    match res {
        Ok(Ok(fin)) => fin,
        Ok(Err(e)) => failed(format!("token config file: {e}")),
        Err(e) => failed(e),
    }
}
