//! A userspace NVMe PF driver over VFIO: the PF's driver while vfio-pci owns
//! it. It sets the VF token, gives up the primary's flexible resources,
//! enables the VFs, and assigns queues and interrupts to each secondary
//! controller and sets it online (Virtualization Management, opcode 0x1C).
//! The controller is driven by `ukci-nvme` — the driver the guest runs —
//! over [`crate::nvme_hal`]: admin queue only, polling, every wait bounded.
//!
//! The PF device fd must stay open while any VF is in use: closing it makes
//! vfio-pci reset the PF, which takes every secondary controller offline.

use std::time::{Duration, Instant};

use ukci_nvme::cmd::{Resource, VF_QUEUES, VF_VECTORS, VirtAction};
use ukci_nvme::identify::{self, ControllerData, PrimaryCtrlCaps, SecondaryCtrl};
use ukci_nvme::{Command, Completion, Config, regs};

use crate::error::{Error, Result};
use crate::host::Host;
use crate::nvme_hal::{Bar0, DmaPages, Fault, Wall};
use crate::token::{NameToken, Token};
use crate::vfio::{Device, Vfio};

/// Where the PF's admin queues live in the container's IOVA space; each VF
/// controller gets its own window above.
pub const PF_IOVA: u64 = 0x1000_0000;
pub fn vf_iova(vfn: u16) -> u64 {
    PF_IOVA + u64::from(vfn) * 0x10_0000
}

/// The admin queue only: 16 entries, bounded at 10 s a command.
fn config() -> Config {
    Config {
        admin_entries: 16,
        command_timeout_ns: 10_000_000_000,
        ..Config::default()
    }
}

/// DMA pages for [`config`]: the admin submission and completion queues, a
/// PRP list and the identify page, one page each.
const ADMIN_PAGES: usize = 4;

/// An NVMe controller (PF or VF) driven by `ukci-nvme` through its VFIO
/// device, admin queue only.
pub struct Controller {
    nvme: ukci_nvme::Controller<Bar0, DmaPages, Wall>,
    fault: Fault,
    bdf: String,
}

impl Controller {
    /// Maps the queue memory at `iova`, then resets and enables the
    /// controller and reads Identify Controller.
    pub fn open(vfio: &Vfio, dev: Device, iova: u64) -> Result<Controller> {
        let bdf = dev.bdf().to_owned();
        let fault = Fault::default();
        dev.enable_bus_master()?;
        let bar0 = Bar0::new(dev, fault.clone())?;
        let dma = DmaPages::new(ADMIN_PAGES, iova)?;
        vfio.container.map_dma(dma.buffer(), iova)?;
        let len = dma.buffer().len() as u64;
        match ukci_nvme::Controller::init(bar0, dma, Wall::new(), config()) {
            Ok(nvme) => Ok(Controller { nvme, fault, bdf }),
            Err(e) => {
                let _ = vfio.container.unmap_dma(iova, len);
                Err(nvme_error(&bdf, &fault, "enable", e))
            }
        }
    }

    pub fn device(&mut self) -> &Device {
        self.nvme.mmio().device()
    }

    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// Identify Controller, as read when the controller was enabled.
    pub fn data(&self) -> &ControllerData {
        self.nvme.controller_data()
    }

    pub fn csts(&mut self) -> Result<u32> {
        let v = ukci_nvme::Mmio::read32(self.nvme.mmio(), regs::CSTS);
        self.checked(v)
    }

    /// Resets the controller and enables it again with a fresh admin queue.
    pub fn reset(&mut self) -> Result<()> {
        let r = self.nvme.reset();
        self.context("enable", r)
    }

    /// Submits one admin command and polls for its completion (bounded);
    /// a non-success status is [`Error::Nvme`] naming `what`.
    pub fn admin(&mut self, what: &str, cmd: Command) -> Result<Completion> {
        let r = self.nvme.admin_ok(cmd, None);
        self.context(what, r)
    }

    /// Identify CNS 0x14.
    pub fn primary_controller_caps(&mut self) -> Result<PrimaryCtrlCaps> {
        let r = self.nvme.primary_controller_caps();
        self.context("Identify CNS 0x14", r)
    }

    /// Identify CNS 0x15: the secondary controllers.
    pub fn secondaries(&mut self) -> Result<Vec<SecondaryCtrl>> {
        let mut all = [SecondaryCtrl::default(); identify::MAX_SECONDARIES_PER_PAGE];
        let r = self.nvme.secondary_controllers(0, &mut all);
        let n = self.context("Identify CNS 0x15", r)?;
        Ok(all[..n].to_vec())
    }

    /// Disables the controller and removes the DMA mapping.
    pub fn close(mut self, vfio: &Vfio) -> Result<()> {
        let disabled = self.nvme.disable();
        let disabled = self.context("disable", disabled);
        let dma = self.nvme.dma();
        let unmapped = vfio
            .container
            .unmap_dma(dma.iova(), dma.buffer().len() as u64);
        disabled?;
        unmapped
    }

    /// `v`, unless a VFIO access failed on the way to it.
    fn checked<T>(&mut self, v: T) -> Result<T> {
        match self.fault.take() {
            Some(e) => Err(e),
            None => Ok(v),
        }
    }

    fn context<T>(&mut self, what: &str, r: Result<T, ukci_nvme::Error>) -> Result<T> {
        let r = r.map_err(|e| nvme_error(&self.bdf, &self.fault, what, e));
        self.checked(r?)
    }
}

/// A driver error with the device and the step it happened in; a failed
/// VFIO access behind it is the error itself.
fn nvme_error(bdf: &str, fault: &Fault, what: &str, e: ukci_nvme::Error) -> Error {
    if let Some(os) = fault.take() {
        return os;
    }
    let what = format!("{bdf}: {what}");
    match e {
        ukci_nvme::Error::Command { status, .. } => Error::Nvme { what, status },
        ukci_nvme::Error::Timeout {
            what: wait,
            waited_ns,
            csts,
        } => Error::Timeout {
            what: format!("{what}: {wait}"),
            waited: Duration::from_nanos(waited_ns),
            state: format!("CSTS={csts:#x}"),
        },
        e => Error::Other(format!("{what}: {e}")),
    }
}

/// Time taken by each step of a bring-up, for the report.
#[derive(Debug, Default, Clone)]
pub struct Timings(pub Vec<(&'static str, Duration)>);

impl Timings {
    fn add(&mut self, what: &'static str, since: Instant) {
        self.0.push((what, since.elapsed()));
    }
}

impl std::fmt::Display for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (w, d)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{w}={}ms", d.as_millis())?;
        }
        Ok(())
    }
}

/// The userspace PF driver: owns the PF's VFIO device (and thereby its VF
/// token) for as long as it lives.
pub struct PfDriver {
    ctrl: Controller,
    token: Token,
    pub id: ControllerData,
    pub caps: PrimaryCtrlCaps,
    pub timings: Timings,
}

impl PfDriver {
    /// Opens the PF with `vf_token=<token>` (which sets the token while no VF
    /// is open), sets it again through `VFIO_DEVICE_FEATURE`, starts the
    /// controller and reads Identify Controller and CNS 0x14.
    pub fn open(vfio: &mut Vfio, bdf: &str, token: Token) -> Result<PfDriver> {
        let mut timings = Timings::default();
        let t = Instant::now();
        let dev = vfio.open_device(bdf, NameToken::Token(&token))?;
        dev.probe_vf_token()?;
        dev.set_vf_token(&token)?;
        timings.add("open", t);
        let t = Instant::now();
        let mut ctrl = Controller::open(vfio, dev, PF_IOVA)?;
        timings.add("enable", t);
        let t = Instant::now();
        let id = ctrl.data().clone();
        if !id.has_virtualization_management() {
            return Err(Error::Other(format!(
                "{bdf}: the controller does not support Virtualization Management (OACS={:#x})",
                id.oacs
            )));
        }
        let caps = ctrl.primary_controller_caps()?;
        timings.add("identify", t);
        Ok(PfDriver {
            ctrl,
            token,
            id,
            caps,
            timings,
        })
    }

    pub fn token(&self) -> &Token {
        &self.token
    }

    pub fn bdf(&self) -> &str {
        self.ctrl.bdf()
    }

    fn virt(&mut self, act: VirtAction, rt: Resource, cntlid: u16, nr: u16) -> Result<Completion> {
        // VQ and VI, spelled as these errors always have.
        let rt_name = match rt {
            Resource::Queue => "Vq",
            Resource::Interrupt => "Vi",
        };
        self.ctrl.admin(
            &format!("Virtualization Management {act:?} {rt_name} cntlid={cntlid} nr={nr}"),
            Command::virtualization_management(act, rt, cntlid, nr),
        )
    }

    /// Gives up the primary's flexible queues and vectors if it holds any.
    /// The allocation only takes effect at a function reset, which also
    /// disables VFs, so this must run before [`Self::enable_vfs`]. Returns
    /// whether anything had to be released.
    pub fn release_primary_flexible(&mut self) -> Result<bool> {
        if !self.caps.primary_holds_flexible() {
            return Ok(false);
        }
        let t = Instant::now();
        let me = self.caps.cntlid;
        self.virt(
            VirtAction::PrimaryFlexibleAllocation,
            Resource::Queue,
            me,
            0,
        )?;
        self.virt(
            VirtAction::PrimaryFlexibleAllocation,
            Resource::Interrupt,
            me,
            0,
        )?;
        self.ctrl.device().reset()?;
        self.ctrl.device().enable_bus_master()?;
        self.ctrl.reset()?;
        self.caps = self.ctrl.primary_controller_caps()?;
        if self.caps.primary_holds_flexible() {
            return Err(Error::Other(format!(
                "{}: primary still holds flexible resources after the reset (VQRFAP={} VIRFAP={})",
                self.bdf(),
                self.caps.vqrfap,
                self.caps.virfap
            )));
        }
        self.timings.add("release-flexible", t);
        Ok(true)
    }

    /// Identify CNS 0x15: the secondary controllers.
    pub fn secondaries(&mut self) -> Result<Vec<SecondaryCtrl>> {
        self.ctrl.secondaries()
    }

    /// Enables `n` VFs through sysfs (journaled). vfio-pci captures them
    /// (driver_override) and binds them; they start offline.
    pub fn enable_vfs(&mut self, host: &mut Host, n: u32) -> Result<Vec<String>> {
        let t = Instant::now();
        let bdf = self.bdf().to_owned();
        host.set_numvfs(&bdf, n)?;
        let vfs = host.sys().virtfns(&bdf);
        if vfs.len() != n as usize {
            return Err(Error::Other(format!(
                "{bdf}: wrote sriov_numvfs={n} but {} VFs appeared",
                vfs.len()
            )));
        }
        self.timings.add("enable-vfs", t);
        Ok(vfs)
    }

    /// Assigns `nvq` queues and `nvi` vectors to secondary `scid` and sets
    /// it online. An online secondary is taken offline first (assignment
    /// requires offline), so the call is repeatable.
    pub fn online(&mut self, scid: u16, nvq: u16, nvi: u16) -> Result<()> {
        let now = self.secondaries()?;
        let Some(s) = now.iter().find(|s| s.scid == scid) else {
            return Err(Error::Other(format!(
                "{}: no secondary controller {scid} (have {:?})",
                self.bdf(),
                now.iter().map(|s| s.scid).collect::<Vec<_>>()
            )));
        };
        if s.online() {
            self.virt(VirtAction::SecondaryOffline, Resource::Queue, scid, 0)?;
        }
        self.virt(VirtAction::SecondaryAssign, Resource::Interrupt, scid, nvi)?;
        self.virt(VirtAction::SecondaryAssign, Resource::Queue, scid, nvq)?;
        self.virt(VirtAction::SecondaryOnline, Resource::Queue, scid, 0)?;
        Ok(())
    }

    pub fn offline(&mut self, scid: u16) -> Result<()> {
        self.virt(VirtAction::SecondaryOffline, Resource::Queue, scid, 0)
            .map(|_| ())
    }

    /// The whole VF bring-up: release the primary's flexible resources,
    /// enable `n` VFs, online the secondary of each (VF n ↔ VFN n), and
    /// confirm with CNS 0x15. Returns each VF's BDF with its secondary.
    pub fn bring_up_vfs(
        &mut self,
        host: &mut Host,
        n: u32,
    ) -> Result<Vec<(String, SecondaryCtrl)>> {
        self.release_primary_flexible()?;
        let vfs = self.enable_vfs(host, n)?;
        let t = Instant::now();
        let list = self.secondaries()?;
        for vfn in 1..=n as u16 {
            let s = list.iter().find(|s| s.vfn == vfn).ok_or_else(|| {
                Error::Other(format!(
                    "{}: no secondary controller for VF {vfn} in CNS 0x15",
                    self.bdf()
                ))
            })?;
            self.online(s.scid, VF_QUEUES, VF_VECTORS)?;
        }
        self.timings.add("online", t);
        let list = self.secondaries()?;
        let mut out = Vec::new();
        for (i, vf) in vfs.into_iter().enumerate() {
            let vfn = i as u16 + 1;
            let s = *list.iter().find(|s| s.vfn == vfn).ok_or_else(|| {
                Error::Other(format!("{}: VF {vfn} vanished from CNS 0x15", self.bdf()))
            })?;
            if !s.online() || s.nvq != VF_QUEUES || s.nvi != VF_VECTORS {
                return Err(Error::Other(format!(
                    "{}: after Secondary Online, CNS 0x15 says {s}",
                    self.bdf()
                )));
            }
            out.push((vf, s));
        }
        Ok(out)
    }

    /// Takes every secondary offline, disables SR-IOV and closes the PF. The
    /// VFs' devices and groups must be closed by then.
    pub fn teardown(mut self, vfio: &mut Vfio, host: &mut Host) -> Result<()> {
        let bdf = self.bdf().to_owned();
        for vf in host.sys().virtfns(&bdf) {
            vfio.close_group_of(&vf);
        }
        let mut first_err = None;
        for s in self.secondaries()? {
            if (s.online() || s.nvq != 0 || s.nvi != 0)
                && let Err(e) = self.offline(s.scid)
            {
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = host.set_numvfs(&bdf, 0) {
            first_err.get_or_insert(e);
        }
        if let Err(e) = self.ctrl.close(vfio) {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }
}
