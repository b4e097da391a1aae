//! The controller: bring-up within CAP.TO, the admin queue, identify, queue
//! management and I/O, every wait bounded by the clock.

use crate::PAGE_SIZE;
use crate::cmd::{self, Command, Completion, Resource, VirtAction, fid};
use crate::error::{Error, Wait};
use crate::hal::{Clock, Dma, DmaBuf, Mmio};
use crate::identify::{self, ControllerData, NamespaceData, PrimaryCtrlCaps, SecondaryCtrl};
use crate::prp;
use crate::queue::{IoQueue, QueuePair};
use crate::regs::{self, Cap, Version, cc, csts};

/// Driver settings. The defaults suit a guest under TCG: small queues and a
/// bounded transfer size.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub admin_entries: u16,
    pub io_entries: u16,
    /// I/O queue pairs asked for with Set Features (Number of Queues).
    pub io_pairs: u16,
    /// How long one command may take before it counts as lost.
    pub command_timeout_ns: u64,
    /// Upper bound on one command's data, below MDTS if MDTS is larger.
    pub max_transfer: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            admin_entries: 32,
            io_entries: 32,
            io_pairs: 64,
            command_timeout_ns: 10_000_000_000,
            max_transfer: 1 << 20,
        }
    }
}

/// A range inside a DMA buffer, for one command's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRange {
    pub addr: u64,
    pub len: usize,
}

impl DmaBuf {
    pub fn range(&self, offset: usize, len: usize) -> Result<DmaRange, Error> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::OutOfBounds);
        }
        Ok(DmaRange {
            addr: self.addr + offset as u64,
            len,
        })
    }
}

/// A clock that stops advancing for this many polls is taken as broken.
const STALL_POLLS: u32 = 1_000_000;

enum Expired {
    After(u64),
    Stalled,
}

/// A deadline that also notices a clock that has stopped.
struct Deadline {
    start: u64,
    limit: u64,
    last: u64,
    same: u32,
}

impl Deadline {
    fn new(clock: &mut impl Clock, timeout_ns: u64) -> Deadline {
        let now = clock.now_ns();
        Deadline {
            start: now,
            limit: timeout_ns,
            last: now,
            same: 0,
        }
    }

    fn expired(&mut self, clock: &mut impl Clock) -> Option<Expired> {
        let now = clock.now_ns();
        let waited = now.saturating_sub(self.start);
        if waited > self.limit {
            return Some(Expired::After(waited));
        }
        if now == self.last {
            self.same += 1;
            if self.same >= STALL_POLLS {
                return Some(Expired::Stalled);
            }
        } else {
            self.last = now;
            self.same = 0;
        }
        None
    }
}

/// The hardware parts, split from the admin queue so that both can be
/// borrowed at once.
struct Hw<M, D, C> {
    mmio: M,
    dma: D,
    clock: C,
    dstrd: u8,
    command_timeout_ns: u64,
    /// Set when a command timed out or a stray completion arrived: the
    /// rings no longer match the controller's view.
    broken: bool,
}

impl<M: Mmio, D: Dma, C: Clock> Hw<M, D, C> {
    fn exec(
        &mut self,
        q: &mut QueuePair,
        mut cmd: Command,
        data: Option<DmaRange>,
    ) -> Result<Completion, Error> {
        if self.broken {
            return Err(Error::NeedsReset);
        }
        if let Some(r) = data {
            let list = q.prp_list();
            let dma = &mut self.dma;
            let p = prp::build(
                r.addr,
                r.len,
                PAGE_SIZE,
                list.addr,
                list.pages(),
                |slot, v| dma.write(list.addr + 8 * slot as u64, &v.to_le_bytes()),
            )?;
            cmd.prp1 = p.prp1;
            cmd.prp2 = p.prp2;
        }
        let cid = q.submit(&mut self.dma, &mut self.mmio, self.dstrd, cmd)?;
        let what = Wait::Completion {
            qid: q.qid(),
            cid,
            opcode: cmd.opcode,
        };
        let mut deadline = Deadline::new(&mut self.clock, self.command_timeout_ns);
        loop {
            if let Some(c) = q.poll(&mut self.dma, &mut self.mmio, self.dstrd) {
                if c.cid != cid {
                    self.broken = true;
                    return Err(Error::StrayCompletion {
                        qid: q.qid(),
                        expected_cid: cid,
                        cid: c.cid,
                    });
                }
                return Ok(c);
            }
            match deadline.expired(&mut self.clock) {
                None => self.clock.relax(),
                Some(e) => {
                    self.broken = true;
                    return Err(self.wait_error(what, e));
                }
            }
        }
    }

    fn wait_error(&mut self, what: Wait, e: Expired) -> Error {
        match e {
            Expired::After(waited_ns) => Error::Timeout {
                what,
                waited_ns,
                csts: self.mmio.read32(regs::CSTS),
            },
            Expired::Stalled => Error::ClockStalled { what },
        }
    }

    fn wait_ready(&mut self, want: bool, timeout_ns: u64) -> Result<(), Error> {
        let mut deadline = Deadline::new(&mut self.clock, timeout_ns);
        loop {
            let s = self.mmio.read32(regs::CSTS);
            if s == u32::MAX {
                return Err(Error::NoDevice);
            }
            if want && s & csts::CFS != 0 {
                return Err(Error::Fatal { csts: s });
            }
            if (s & csts::RDY != 0) == want {
                return Ok(());
            }
            match deadline.expired(&mut self.clock) {
                None => self.clock.relax(),
                Some(e) => return Err(self.wait_error(Wait::Ready(want), e)),
            }
        }
    }
}

fn ok(c: Completion, opcode: u8, qid: u16) -> Result<Completion, Error> {
    if c.status.is_success() {
        Ok(c)
    } else {
        Err(Error::Command {
            opcode,
            qid,
            status: c.status,
        })
    }
}

fn pages_for(bytes: usize) -> usize {
    bytes.div_ceil(PAGE_SIZE).max(1)
}

/// A controller brought up by this driver.
pub struct Controller<M, D, C> {
    hw: Hw<M, D, C>,
    cfg: Config,
    cap: Cap,
    vs: u32,
    admin: QueuePair,
    /// One page for identify data.
    scratch: DmaBuf,
    data: ControllerData,
    io_pairs: u16,
    /// What the controller granted, before the driver's own limit.
    io_pairs_offered: u32,
    max_transfer: usize,
}

impl<M: Mmio, D: Dma, C: Clock> Controller<M, D, C> {
    /// Resets and enables the controller, sets up the admin queue, reads
    /// Identify Controller and asks for `cfg.io_pairs` I/O queue pairs.
    pub fn init(mmio: M, dma: D, clock: C, cfg: Config) -> Result<Self, Error> {
        let mut hw = Hw {
            mmio,
            dma,
            clock,
            dstrd: 0,
            command_timeout_ns: cfg.command_timeout_ns,
            broken: false,
        };
        let cap = Cap(hw.mmio.read64(regs::CAP));
        if cap.0 == u64::MAX {
            return Err(Error::NoDevice);
        }
        if cap.0 == 0 {
            let s = hw.mmio.read32(regs::CSTS);
            return Err(if s & csts::CFS != 0 {
                Error::Offline { csts: s }
            } else {
                Error::Unsupported("CAP reads zero")
            });
        }
        if cap.css() & 1 == 0 {
            return Err(Error::Unsupported("no NVM command set in CAP.CSS"));
        }
        if cap.mps_min() > PAGE_SIZE as u64 {
            return Err(Error::Unsupported("CAP.MPSMIN above 4 KiB"));
        }
        hw.dstrd = cap.dstrd();
        let mqes = cap.max_queue_entries().min(u16::MAX as u32) as u16;
        let entries = cfg.admin_entries.clamp(2, mqes.min(4096));
        let sq = hw
            .dma
            .alloc(pages_for(entries as usize * Command::SIZE))
            .ok_or(Error::NoMemory { pages: 1 })?;
        let cq = hw
            .dma
            .alloc(pages_for(entries as usize * Completion::SIZE))
            .ok_or(Error::NoMemory { pages: 1 })?;
        let list = hw.dma.alloc(1).ok_or(Error::NoMemory { pages: 1 })?;
        let scratch = hw.dma.alloc(1).ok_or(Error::NoMemory { pages: 1 })?;
        let vs = hw.mmio.read32(regs::VS);
        let mut c = Controller {
            hw,
            cfg,
            cap,
            vs,
            admin: QueuePair::new(0, entries, sq, cq, list),
            scratch,
            data: ControllerData::parse(&[0; 1024]),
            io_pairs: 0,
            io_pairs_offered: 0,
            max_transfer: PAGE_SIZE,
        };
        c.bring_up()?;
        Ok(c)
    }

    /// Disable, admin queue, enable, identify, number of queues.
    fn bring_up(&mut self) -> Result<(), Error> {
        self.disable()?;
        let (sq, cq) = (self.admin.sq_buf(), self.admin.cq_buf());
        self.hw.dma.fill(sq.addr, sq.len, 0);
        self.hw.dma.fill(cq.addr, cq.len, 0);
        self.admin.rewind();
        self.hw.broken = false;
        let n = self.admin.entries();
        self.hw.mmio.write32(regs::AQA, regs::aqa(n, n));
        self.hw.mmio.write64(regs::ASQ, sq.addr);
        self.hw.mmio.write64(regs::ACQ, cq.addr);
        self.hw.mmio.write32(regs::CC, cc::ENABLE);
        self.hw.wait_ready(true, self.cap.ready_timeout_ns())?;

        self.data = self.identify_controller()?;
        let mdts = self
            .data
            .max_transfer(self.cap.mps_min())
            .unwrap_or(u64::MAX);
        let limit = (self.cfg.max_transfer as u64)
            .min(mdts)
            .max(PAGE_SIZE as u64);
        self.max_transfer = (limit as usize) / PAGE_SIZE * PAGE_SIZE;

        let want = self.cfg.io_pairs.clamp(1, 0xfffe);
        let grant = match self.admin_ok(Command::set_number_of_queues(want, want), None) {
            Ok(c) => c.dw0,
            // Some controllers take the value only once per reset; the
            // current grant is still readable.
            Err(Error::Command { .. }) => {
                self.admin_ok(Command::get_features(fid::NUMBER_OF_QUEUES), None)?
                    .dw0
            }
            Err(e) => return Err(e),
        };
        let (sqs, cqs) = cmd::queues_granted(grant);
        self.io_pairs_offered = sqs.min(cqs);
        self.io_pairs = self.io_pairs_offered.min(want as u32) as u16;
        Ok(())
    }

    /// Clears CC.EN and waits (within CAP.TO) for CSTS.RDY to follow.
    pub fn disable(&mut self) -> Result<(), Error> {
        let c = self.hw.mmio.read32(regs::CC);
        if c & cc::EN != 0 {
            self.hw.mmio.write32(regs::CC, c & !cc::EN);
        }
        self.hw.wait_ready(false, self.cap.ready_timeout_ns())
    }

    /// A controller reset and bring-up again. I/O queues are gone afterwards;
    /// give their memory back with [`Controller::forget_io_pair`].
    pub fn reset(&mut self) -> Result<(), Error> {
        self.bring_up()
    }

    /// An earlier timeout or stray completion means the rings must be
    /// rebuilt before more commands.
    pub fn needs_reset(&self) -> bool {
        self.hw.broken
    }

    pub fn cap(&self) -> Cap {
        self.cap
    }

    pub fn version(&self) -> Version {
        Version(self.vs)
    }

    /// Identify Controller, as read at bring-up.
    pub fn controller_data(&self) -> &ControllerData {
        &self.data
    }

    /// I/O queue pairs granted (and asked for): qids 1..=this are usable.
    pub fn io_pairs_granted(&self) -> u16 {
        self.io_pairs
    }

    /// I/O queue pairs the controller granted, which may exceed what was
    /// asked for.
    pub fn io_pairs_offered(&self) -> u32 {
        self.io_pairs_offered
    }

    /// The largest transfer one command may carry: MDTS, the driver's
    /// limit, whichever is smaller.
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn mmio(&mut self) -> &mut M {
        &mut self.hw.mmio
    }

    pub fn dma(&mut self) -> &mut D {
        &mut self.hw.dma
    }

    pub fn clock(&mut self) -> &mut C {
        &mut self.hw.clock
    }

    /// Runs an admin command and returns its completion, error status
    /// included. A lost completion is [`Error::Timeout`].
    pub fn admin(&mut self, cmd: Command, data: Option<DmaRange>) -> Result<Completion, Error> {
        self.hw.exec(&mut self.admin, cmd, data)
    }

    /// [`Controller::admin`], with an error status as [`Error::Command`].
    pub fn admin_ok(&mut self, cmd: Command, data: Option<DmaRange>) -> Result<Completion, Error> {
        let c = self.admin(cmd, data)?;
        ok(c, cmd.opcode, 0)
    }

    /// An Identify command into the scratch page; read it with
    /// [`Controller::scratch`].
    pub fn identify(&mut self, cmd: Command) -> Result<(), Error> {
        let s = self.scratch;
        self.hw.dma.fill(s.addr, s.len, 0);
        self.admin_ok(cmd, Some(s.range(0, identify::SIZE)?))?;
        Ok(())
    }

    /// Bytes of the last identify data.
    pub fn scratch(&mut self, offset: usize, out: &mut [u8]) {
        let n = out.len().min(identify::SIZE.saturating_sub(offset));
        self.hw
            .dma
            .read(self.scratch.addr + offset as u64, &mut out[..n]);
    }

    pub fn identify_controller(&mut self) -> Result<ControllerData, Error> {
        self.identify(Command::identify_controller())?;
        let mut d = [0u8; 1024];
        self.scratch(0, &mut d);
        Ok(ControllerData::parse(&d))
    }

    pub fn identify_namespace(&mut self, nsid: u32) -> Result<NamespaceData, Error> {
        self.identify(Command::identify_namespace(nsid))?;
        let mut d = [0u8; 384];
        self.scratch(0, &mut d);
        Ok(NamespaceData::parse(&d))
    }

    /// Active namespace IDs into `out`; returns how many were stored.
    pub fn active_namespaces(&mut self, out: &mut [u32]) -> Result<usize, Error> {
        self.identify(Command::active_namespaces(0))?;
        let mut n = 0;
        let mut chunk = [0u8; 256];
        'pages: for off in (0..identify::SIZE).step_by(chunk.len()) {
            self.scratch(off, &mut chunk);
            for c in chunk.chunks_exact(4) {
                let id = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if id == 0 || n == out.len() {
                    break 'pages;
                }
                out[n] = id;
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn primary_controller_caps(&mut self) -> Result<PrimaryCtrlCaps, Error> {
        self.identify(Command::primary_controller_caps())?;
        let mut d = [0u8; 128];
        self.scratch(0, &mut d);
        Ok(PrimaryCtrlCaps::parse(&d))
    }

    /// Secondary controllers with IDs from `first`, into `out`; returns
    /// how many were stored.
    pub fn secondary_controllers(
        &mut self,
        first: u16,
        out: &mut [SecondaryCtrl],
    ) -> Result<usize, Error> {
        self.identify(Command::secondary_controllers(first))?;
        let mut head = [0u8; 1];
        self.scratch(0, &mut head);
        let n = (head[0] as usize)
            .min(identify::MAX_SECONDARIES_PER_PAGE)
            .min(out.len());
        let mut entry = [0u8; SecondaryCtrl::SIZE];
        for (i, slot) in out[..n].iter_mut().enumerate() {
            self.scratch(32 + SecondaryCtrl::SIZE * i, &mut entry);
            *slot = SecondaryCtrl::parse(&entry);
        }
        Ok(n)
    }

    /// Virtualization Management; returns completion DW0 (resources
    /// allocated, for the allocate and assign actions).
    pub fn virtualization_management(
        &mut self,
        action: VirtAction,
        resource: Resource,
        cntlid: u16,
        count: u16,
    ) -> Result<u32, Error> {
        let cmd = Command::virtualization_management(action, resource, cntlid, count);
        Ok(self.admin_ok(cmd, None)?.dw0)
    }

    /// Creates I/O completion queue `qid` and submission queue `qid` on it.
    /// `entries` is clamped to CAP.MQES; 0 takes the configured size.
    pub fn create_io_pair(&mut self, qid: u16, entries: u16) -> Result<IoQueue, Error> {
        let mqes = self.cap.max_queue_entries().min(u16::MAX as u32) as u16;
        let want = if entries == 0 {
            self.cfg.io_entries
        } else {
            entries
        };
        let entries = want.clamp(2, mqes.min(4096));
        let list_pages = prp::list_pages(4, self.max_transfer, PAGE_SIZE).max(1);
        let sq_pages = pages_for(entries as usize * Command::SIZE);
        let cq_pages = pages_for(entries as usize * Completion::SIZE);
        let dma = &mut self.hw.dma;
        let sq = dma
            .alloc(sq_pages)
            .ok_or(Error::NoMemory { pages: sq_pages })?;
        let Some(cq) = dma.alloc(cq_pages) else {
            dma.free(sq);
            return Err(Error::NoMemory { pages: cq_pages });
        };
        let Some(list) = dma.alloc(list_pages) else {
            dma.free(sq);
            dma.free(cq);
            return Err(Error::NoMemory { pages: list_pages });
        };
        let q = QueuePair::new(qid, entries, sq, cq, list);
        let r = self
            .admin_ok(Command::create_io_cq(qid, entries, cq.addr), None)
            .and_then(|_| {
                let r = self.admin_ok(Command::create_io_sq(qid, entries, qid, sq.addr), None);
                if r.is_err() && !self.hw.broken {
                    let _ = self.admin_ok(Command::delete_io_cq(qid), None);
                }
                r
            });
        match r {
            Ok(_) => Ok(q),
            Err(e) => {
                if !self.hw.broken {
                    self.forget_io_pair(q);
                }
                Err(e)
            }
        }
    }

    /// Deletes the submission queue, then the completion queue, and frees
    /// their memory once the controller has let go of it.
    pub fn delete_io_pair(&mut self, q: IoQueue) -> Result<(), Error> {
        let qid = q.qid();
        self.admin_ok(Command::delete_io_sq(qid), None)?;
        self.admin_ok(Command::delete_io_cq(qid), None)?;
        self.forget_io_pair(q);
        Ok(())
    }

    /// Frees a pair's memory without telling the controller: for pairs a
    /// reset already removed.
    pub fn forget_io_pair(&mut self, q: IoQueue) {
        self.hw.dma.free(q.sq_buf());
        self.hw.dma.free(q.cq_buf());
        self.hw.dma.free(q.prp_list());
    }

    /// Runs an I/O command on `q` and returns its completion, error status
    /// included.
    pub fn io(
        &mut self,
        q: &mut IoQueue,
        cmd: Command,
        data: Option<DmaRange>,
    ) -> Result<Completion, Error> {
        if let Some(r) = data
            && r.len > self.max_transfer
        {
            return Err(Error::TooLarge {
                bytes: r.len,
                max: self.max_transfer,
            });
        }
        self.hw.exec(q, cmd, data)
    }

    fn io_ok(
        &mut self,
        q: &mut IoQueue,
        cmd: Command,
        data: Option<DmaRange>,
    ) -> Result<(), Error> {
        let c = self.io(q, cmd, data)?;
        ok(c, cmd.opcode, q.qid()).map(|_| ())
    }

    /// Reads `blocks` blocks from `slba` into `data` (exactly their size).
    pub fn read(
        &mut self,
        q: &mut IoQueue,
        nsid: u32,
        slba: u64,
        blocks: u32,
        data: DmaRange,
    ) -> Result<(), Error> {
        self.io_ok(q, Command::read(nsid, slba, blocks), Some(data))
    }

    /// Writes `blocks` blocks at `slba` from `data` (exactly their size).
    pub fn write(
        &mut self,
        q: &mut IoQueue,
        nsid: u32,
        slba: u64,
        blocks: u32,
        data: DmaRange,
    ) -> Result<(), Error> {
        self.io_ok(q, Command::write(nsid, slba, blocks), Some(data))
    }

    pub fn flush(&mut self, q: &mut IoQueue, nsid: u32) -> Result<(), Error> {
        self.io_ok(q, Command::flush(nsid), None)
    }
}
