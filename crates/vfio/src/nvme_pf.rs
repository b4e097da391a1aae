//! A userspace NVMe driver over VFIO, just enough to be the PF's driver while
//! vfio-pci owns it: admin queue only, polling, every wait bounded. As PF
//! driver it sets the VF token, gives up the primary's flexible resources,
//! enables the VFs, and assigns queues and interrupts to each secondary
//! controller and sets it online (Virtualization Management, opcode 0x1C).
//! The encodings (registers, commands, completions, Identify pages) are
//! `ukci-nvme`'s, the same the guest's driver uses.
//!
//! The PF device fd must stay open while any VF is in use: closing it makes
//! vfio-pci reset the PF, which takes every secondary controller offline.

use std::sync::atomic::{Ordering, fence};
use std::thread::sleep;
use std::time::{Duration, Instant};

use ukci_nvme::cmd::{Resource, VirtAction};
use ukci_nvme::identify::{self, ControllerData, PrimaryCtrlCaps, SecondaryCtrl};
use ukci_nvme::regs::{self, Cap, cc};
use ukci_nvme::{Command, Completion};

use crate::error::{Error, Result};
use crate::host::Host;
use crate::token::{NameToken, Token};
use crate::vfio::{BAR0_REGION, Device, DmaBuffer, Region, Vfio};

/// Admin queue depth (entries).
const QUEUE: u16 = 16;
const PAGE: usize = 4096;
/// Where the PF's admin queues live in the container's IOVA space; each VF
/// controller gets its own window above.
pub const PF_IOVA: u64 = 0x1000_0000;
pub fn vf_iova(vfn: u16) -> u64 {
    PF_IOVA + u64::from(vfn) * 0x10_0000
}

/// An NVMe controller (PF or VF) driven through its VFIO device: the admin
/// queue pair and one data page in DMA memory.
pub struct Controller {
    dev: Device,
    bar0: Region,
    dma: DmaBuffer,
    iova: u64,
    cap: Cap,
    sq_tail: u16,
    cq_head: u16,
    phase: bool,
    cid: u16,
    /// The bound for one admin command.
    pub command_timeout: Duration,
}

const SQ_OFF: usize = 0;
const CQ_OFF: usize = PAGE;
const DATA_OFF: usize = 2 * PAGE;
/// The byte of a completion entry whose bit 0 is the phase tag (DW3 bit 16).
const CQE_PHASE_BYTE: usize = 14;

impl Controller {
    /// Maps BAR0 and the queue memory (at `iova`) for `dev`.
    pub fn new(vfio: &Vfio, dev: Device, iova: u64) -> Result<Controller> {
        let bar0 = dev.region(BAR0_REGION)?;
        dev.enable_bus_master()?;
        let dma = DmaBuffer::new(3 * PAGE)?;
        vfio.container.map_dma(&dma, iova)?;
        let lo = dev.read32(&bar0, reg(regs::CAP))?;
        let hi = dev.read32(&bar0, reg(regs::CAP + 4))?;
        let cap = Cap(u64::from(hi) << 32 | u64::from(lo));
        Ok(Controller {
            dev,
            bar0,
            dma,
            iova,
            cap,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            cid: 0,
            command_timeout: Duration::from_secs(10),
        })
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }

    pub fn cap(&self) -> u64 {
        self.cap.0
    }

    pub fn reg32(&self, off: u64) -> Result<u32> {
        self.dev.read32(&self.bar0, off)
    }

    fn set32(&self, off: u64, v: u32) -> Result<()> {
        self.dev.write32(&self.bar0, off, v)
    }

    fn set64(&self, off: u64, v: u64) -> Result<()> {
        self.set32(off, v as u32)?;
        self.set32(off + 4, (v >> 32) as u32)
    }

    pub fn csts(&self) -> Result<u32> {
        self.reg32(reg(regs::CSTS))
    }

    /// CAP.TO in milliseconds, as the controller reports it.
    fn cap_timeout_ms(&self) -> u64 {
        u64::from(self.cap.to()) * 500
    }

    /// CAP.TO, at least one second (TCG hosts are slow).
    fn ready_timeout(&self) -> Duration {
        Duration::from_millis(self.cap_timeout_ms().max(1000))
    }

    fn wait_ready(&self, want: bool, what: &str) -> Result<Duration> {
        let start = Instant::now();
        let limit = self.ready_timeout();
        loop {
            let csts = self.csts()?;
            if (csts & regs::csts::RDY != 0) == want {
                return Ok(start.elapsed());
            }
            if want && csts & regs::csts::CFS != 0 && csts != u32::MAX {
                return Err(Error::Other(format!(
                    "{}: {what}: controller fatal status (CSTS={csts:#x})",
                    self.dev.bdf()
                )));
            }
            if start.elapsed() > limit {
                return Err(Error::Timeout {
                    what: format!("{}: {what}", self.dev.bdf()),
                    waited: limit,
                    state: format!("CSTS={csts:#x}, CAP.TO={} ms", self.cap_timeout_ms()),
                });
            }
            sleep(Duration::from_millis(1));
        }
    }

    /// CC.EN = 0 and wait for CSTS.RDY = 0.
    pub fn disable(&mut self) -> Result<Duration> {
        let cc = self.reg32(reg(regs::CC))?;
        self.set32(reg(regs::CC), cc & !cc::EN)?;
        self.wait_ready(false, "disable (CSTS.RDY -> 0)")
    }

    /// Resets the controller and starts it with a fresh admin queue pair.
    /// Returns how long CSTS.RDY took.
    pub fn enable(&mut self) -> Result<Duration> {
        self.disable()?;
        self.dma.fill(0, 2 * PAGE, 0);
        self.sq_tail = 0;
        self.cq_head = 0;
        self.phase = true;
        let n = u32::from(QUEUE).min(self.cap.max_queue_entries()) as u16;
        self.set32(reg(regs::AQA), regs::aqa(n, n))?;
        self.set64(reg(regs::ASQ), self.iova + SQ_OFF as u64)?;
        self.set64(reg(regs::ACQ), self.iova + CQ_OFF as u64)?;
        fence(Ordering::SeqCst);
        self.set32(reg(regs::CC), cc::ENABLE)?;
        self.wait_ready(true, "enable (CSTS.RDY -> 1)")
    }

    /// Submits one admin command and polls for its completion (bounded).
    /// Returns the completion whatever its status.
    pub fn submit(&mut self, mut sqe: Command) -> Result<Completion> {
        self.cid = self.cid.wrapping_add(1);
        sqe.cid = self.cid;
        self.dma
            .write(SQ_OFF + usize::from(self.sq_tail) * 64, &sqe.encode());
        self.sq_tail = (self.sq_tail + 1) % QUEUE;
        fence(Ordering::SeqCst);
        self.set32(
            reg(regs::sq_tail_doorbell(0, self.cap.dstrd())),
            self.sq_tail.into(),
        )?;
        let start = Instant::now();
        loop {
            // The phase tag first, then the entry (as Linux reads the status
            // word before the rest): the buffer is read byte by byte, so one
            // pass could pair the new phase tag with the old command ID.
            let slot = CQ_OFF + usize::from(self.cq_head) * Completion::SIZE;
            let mut tag = [0u8; 1];
            self.dma.read(slot + CQE_PHASE_BYTE, &mut tag);
            if (tag[0] & 1 != 0) == self.phase {
                fence(Ordering::SeqCst);
                let mut raw = [0u8; Completion::SIZE];
                self.dma.read(slot, &mut raw);
                let cqe = Completion::decode(&raw);
                self.cq_head = (self.cq_head + 1) % QUEUE;
                if self.cq_head == 0 {
                    self.phase = !self.phase;
                }
                self.set32(
                    reg(regs::cq_head_doorbell(0, self.cap.dstrd())),
                    self.cq_head.into(),
                )?;
                if cqe.cid != sqe.cid {
                    return Err(Error::Other(format!(
                        "{}: completion for command {} while waiting for {}",
                        self.dev.bdf(),
                        cqe.cid,
                        sqe.cid
                    )));
                }
                return Ok(cqe);
            }
            if start.elapsed() > self.command_timeout {
                return Err(Error::Timeout {
                    what: format!("{}: admin opcode {:#04x}", self.dev.bdf(), sqe.opcode),
                    waited: self.command_timeout,
                    state: format!("CSTS={:#x}", self.csts().unwrap_or(u32::MAX)),
                });
            }
            sleep(Duration::from_micros(200));
        }
    }

    /// Submits and turns a non-success status into [`Error::Nvme`].
    pub fn admin(&mut self, what: &str, sqe: Command) -> Result<Completion> {
        let c = self.submit(sqe)?;
        if c.status.is_success() {
            Ok(c)
        } else {
            Err(Error::Nvme {
                what: format!("{}: {what}", self.dev.bdf()),
                status: c.status,
            })
        }
    }

    /// An Identify command (a `ukci_nvme::Command::identify` builder) into
    /// the data page.
    pub fn identify(&mut self, cmd: Command) -> Result<Box<[u8; identify::SIZE]>> {
        self.dma.fill(DATA_OFF, PAGE, 0);
        let prp = self.iova + DATA_OFF as u64;
        let cns = cmd.cdw10 as u8;
        self.admin(&format!("Identify CNS {cns:#04x}"), cmd.with_prp(prp, 0))?;
        let mut d = Box::new([0u8; identify::SIZE]);
        self.dma.read(DATA_OFF, &mut d[..]);
        Ok(d)
    }

    pub fn identify_controller(&mut self) -> Result<ControllerData> {
        Ok(ControllerData::parse(
            &*self.identify(Command::identify_controller())?,
        ))
    }

    /// Identify CNS 0x14.
    pub fn primary_controller_caps(&mut self) -> Result<PrimaryCtrlCaps> {
        Ok(PrimaryCtrlCaps::parse(
            &*self.identify(Command::primary_controller_caps())?,
        ))
    }

    /// Disables the controller, removes the DMA mapping and hands the device back.
    pub fn close(mut self, vfio: &Vfio) -> Result<Device> {
        let disabled = self.disable();
        let unmapped = vfio.container.unmap_dma(self.iova, self.dma.len() as u64);
        disabled?;
        unmapped?;
        Ok(self.dev)
    }
}

/// A register offset in BAR0 as the VFIO region access takes it.
fn reg(off: usize) -> u64 {
    off as u64
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

/// Resources given to each secondary controller: admin + one I/O queue, one vector.
pub const VF_QUEUES: u16 = 2;
pub const VF_VECTORS: u16 = 1;

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
        let mut ctrl = Controller::new(vfio, dev, PF_IOVA)?;
        ctrl.enable()?;
        timings.add("enable", t);
        let t = Instant::now();
        let id = ctrl.identify_controller()?;
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
        self.ctrl.device().bdf()
    }

    pub fn controller(&mut self) -> &mut Controller {
        &mut self.ctrl
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
        self.ctrl.enable()?;
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
        let page = self.ctrl.identify(Command::secondary_controllers(0))?;
        Ok(identify::secondary_controllers(&*page).collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use ukci_nvme::Status;

    #[test]
    fn the_phase_byte_holds_the_phase_tag_alone() {
        let done = Completion {
            dw0: u32::MAX,
            dw1: u32::MAX,
            sq_head: u16::MAX,
            sq_id: u16::MAX,
            cid: u16::MAX,
            phase: false,
            status: Status(0x7fff),
        };
        let off = done.encode()[CQE_PHASE_BYTE];
        let on = Completion {
            phase: true,
            ..done
        }
        .encode()[CQE_PHASE_BYTE];
        assert_eq!((off & 1, on & 1, off ^ on), (0, 1, 1));
    }
}
