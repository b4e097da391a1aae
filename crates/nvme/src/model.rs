//! A model NVMe controller for host tests: registers behind [`Mmio`], DMA
//! memory behind [`Dma`], a clock that advances on every read, namespaces
//! backed by memory, and faults to inject.
//!
//! Commands run when their doorbell is written, reading entries and PRP
//! lists from the shared memory as a device would. Status codes follow the
//! specification and, where it leaves a choice, QEMU's `hw/nvme/ctrl.c`.

use crate::PAGE_SIZE;
use crate::cmd::{Command, Completion, admin, cns, fid, io};
use crate::hal::{Clock, Dma, DmaBuf, Mmio};
use crate::identify::{
    self, ControllerData, LbaFormat, NamespaceData, PrimaryCtrlCaps, SecondaryCtrl,
};
use crate::prp;
use crate::regs;
use crate::status::{self, Code, Status};
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

/// DMA memory: one arena of bytes at a non-zero bus address.
pub struct Memory {
    base: u64,
    bytes: Vec<u8>,
    next: usize,
    free: Vec<DmaBuf>,
}

impl Memory {
    pub fn new(base: u64, size: usize) -> Memory {
        Memory {
            base,
            bytes: vec![0; size],
            next: 0,
            free: Vec::new(),
        }
    }

    fn index(&self, addr: u64, len: usize) -> Option<usize> {
        let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        (off.checked_add(len)? <= self.bytes.len()).then_some(off)
    }

    pub fn read(&self, addr: u64, out: &mut [u8]) -> bool {
        match self.index(addr, out.len()) {
            Some(i) => {
                out.copy_from_slice(&self.bytes[i..i + out.len()]);
                true
            }
            None => false,
        }
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.index(addr, data.len()) {
            Some(i) => {
                self.bytes[i..i + data.len()].copy_from_slice(data);
                true
            }
            None => false,
        }
    }

    fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }

    /// Pages currently handed out.
    pub fn pages_in_use(&self) -> usize {
        self.next / PAGE_SIZE - self.free.iter().map(|b| b.pages()).sum::<usize>()
    }
}

pub type Shared<T> = Rc<RefCell<T>>;

/// The [`Dma`] side of the model's memory.
#[derive(Clone)]
pub struct ModelDma(pub Shared<Memory>);

impl Dma for ModelDma {
    fn alloc(&mut self, pages: usize) -> Option<DmaBuf> {
        let mut m = self.0.borrow_mut();
        let len = pages * PAGE_SIZE;
        let buf = if let Some(i) = m.free.iter().position(|b| b.len == len) {
            m.free.swap_remove(i)
        } else {
            if m.next + len > m.bytes.len() {
                return None;
            }
            let b = DmaBuf {
                addr: m.base + m.next as u64,
                len,
            };
            m.next += len;
            b
        };
        let i = m.index(buf.addr, len)?;
        m.bytes[i..i + len].fill(0);
        Some(buf)
    }

    fn free(&mut self, buf: DmaBuf) {
        self.0.borrow_mut().free.push(buf);
    }

    fn read(&mut self, addr: u64, out: &mut [u8]) {
        assert!(
            self.0.borrow().read(addr, out),
            "driver read outside DMA memory at {addr:#x}"
        );
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        assert!(
            self.0.borrow_mut().write(addr, data),
            "driver wrote outside DMA memory at {addr:#x}"
        );
    }
}

/// Virtual time: every reading advances it by `step` ns, so bounded waits
/// end quickly and deterministically. A zero step is a stopped clock.
#[derive(Clone, Copy, Debug)]
pub struct ModelClock {
    pub now: u64,
    pub step: u64,
}

impl Default for ModelClock {
    fn default() -> ModelClock {
        ModelClock {
            now: 1_000_000_000,
            step: 100_000,
        }
    }
}

impl Clock for ModelClock {
    fn now_ns(&mut self) -> u64 {
        self.now += self.step;
        self.now
    }
}

/// Faults to inject.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Flips every bit of byte `offset` of block `lba` in each read that
    /// covers it.
    pub corrupt_read: Option<(u64, usize)>,
    /// Posts no completion for the next command with this opcode on this
    /// queue: (qid, opcode).
    pub drop_completion: Option<(u16, u8)>,
    /// Posts the next completion for (qid, opcode) with the stale phase tag,
    /// so the host cannot see it.
    pub wrong_phase: Option<(u16, u8)>,
    /// Writes complete successfully but store nothing.
    pub lose_writes: bool,
    /// Answers every command with this (qid, opcode) with this status.
    pub fail_with: Option<(u16, u8, Code)>,
    /// Create I/O Completion Queue reports success for qids beyond the
    /// grant (without creating anything).
    pub accept_any_qid: bool,
    /// CSTS.RDY never follows CC.EN = 1.
    pub never_ready: bool,
    /// CSTS.CFS sets when the controller is enabled.
    pub fatal_on_enable: bool,
}

/// SR-IOV resources of a model primary controller.
#[derive(Clone, Copy, Debug)]
pub struct Sriov {
    pub vfs: u16,
    pub vq_flexible: u32,
    pub vi_flexible: u32,
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// CAP.MQES, 0-based.
    pub mqes: u16,
    pub dstrd: u8,
    /// CAP.TO in 500 ms units.
    pub to: u8,
    /// CSTS reads before RDY follows a CC.EN change.
    pub ready_delay: u32,
    pub max_io_pairs: u16,
    pub mdts: u8,
    pub cntlid: u16,
    /// Identify CMIC bit 2: a controller behind an SR-IOV VF.
    pub is_vf: bool,
    /// (nsid, blocks, log2 block size).
    pub namespaces: Vec<(u32, u64, u8)>,
    pub sriov: Option<Sriov>,
    /// Registers read zero and CSTS reads CFS: an offline secondary.
    pub offline: bool,
}

impl Default for ModelConfig {
    fn default() -> ModelConfig {
        ModelConfig {
            mqes: 0x7ff,
            dstrd: 0,
            to: 0x0f,
            ready_delay: 3,
            max_io_pairs: 16,
            mdts: 7,
            cntlid: 0,
            is_vf: false,
            namespaces: vec![(1, 4096, 9)],
            sriov: None,
            offline: false,
        }
    }
}

struct Sq {
    base: u64,
    entries: u16,
    head: u16,
    tail: u16,
    cqid: u16,
}

struct Cq {
    base: u64,
    entries: u16,
    tail: u16,
    phase: bool,
}

struct Namespace {
    nsid: u32,
    lbads: u8,
    blocks: u64,
    data: Vec<u8>,
}

/// One command the model ran, for tests to inspect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub qid: u16,
    pub opcode: u8,
    pub code: Code,
    /// Bytes moved for Read/Write.
    pub bytes: usize,
    /// PRP2 was a list pointer.
    pub prp_list: bool,
}

pub struct Model {
    pub cfg: ModelConfig,
    pub faults: Faults,
    /// Every command run, in order.
    pub log: Vec<Record>,
    /// The most I/O submission queues alive at once.
    pub max_live_io_sqs: usize,
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    rdy_target: bool,
    countdown: u32,
    mem: Shared<Memory>,
    namespaces: Vec<Namespace>,
    sqs: Vec<Option<Sq>>,
    cqs: Vec<Option<Cq>>,
    queues_created: bool,
    secondaries: Vec<SecondaryCtrl>,
    primary_vq: u32,
    primary_vi: u32,
}

/// The [`Mmio`] side of a model.
#[derive(Clone)]
pub struct ModelMmio(pub Shared<Model>);

impl Mmio for ModelMmio {
    fn read32(&mut self, offset: usize) -> u32 {
        self.0.borrow_mut().read32(offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.0.borrow_mut().write32(offset, value)
    }
}

/// A model with `mem_size` bytes of DMA memory, and its three edges.
pub fn new(cfg: ModelConfig, mem_size: usize) -> (Shared<Model>, ModelMmio, ModelDma, ModelClock) {
    let mem = Rc::new(RefCell::new(Memory::new(0x1000_0000, mem_size)));
    let model = Rc::new(RefCell::new(Model::new(cfg, mem.clone())));
    (
        model.clone(),
        ModelMmio(model),
        ModelDma(mem),
        ModelClock::default(),
    )
}

impl Model {
    pub fn new(cfg: ModelConfig, mem: Shared<Memory>) -> Model {
        let namespaces = cfg
            .namespaces
            .iter()
            .map(|&(nsid, blocks, lbads)| Namespace {
                nsid,
                lbads,
                blocks,
                data: vec![0; (blocks << lbads) as usize],
            })
            .collect();
        let pairs = cfg.max_io_pairs as usize + 1;
        let secondaries = match cfg.sriov {
            Some(s) => (1..=s.vfs)
                .map(|vfn| SecondaryCtrl {
                    scid: cfg.cntlid + vfn,
                    pcid: cfg.cntlid,
                    scs: 0,
                    vfn,
                    nvq: 0,
                    nvi: 0,
                })
                .collect(),
            None => Vec::new(),
        };
        let (primary_vq, primary_vi) = cfg.sriov.map_or((0, 0), |s| (s.vq_flexible, s.vi_flexible));
        Model {
            cfg,
            faults: Faults::default(),
            log: Vec::new(),
            max_live_io_sqs: 0,
            cc: 0,
            csts: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            rdy_target: false,
            countdown: 0,
            mem,
            namespaces,
            sqs: (0..pairs).map(|_| None).collect(),
            cqs: (0..pairs).map(|_| None).collect(),
            queues_created: false,
            secondaries,
            primary_vq,
            primary_vi,
        }
    }

    pub fn cap(&self) -> u64 {
        self.cfg.mqes as u64
            | 1 << 16
            | (self.cfg.to as u64) << 24
            | (self.cfg.dstrd as u64) << 32
            | 1 << 37
            | 4 << 52
    }

    /// The namespace's bytes, to inspect or to seed with old contents.
    pub fn namespace_data(&mut self, nsid: u32) -> Option<&mut Vec<u8>> {
        self.namespaces
            .iter_mut()
            .find(|n| n.nsid == nsid)
            .map(|n| &mut n.data)
    }

    /// I/O queues alive now: (submission, completion).
    pub fn live_io_queues(&self) -> (usize, usize) {
        (
            self.sqs[1..].iter().flatten().count(),
            self.cqs[1..].iter().flatten().count(),
        )
    }

    pub fn secondaries(&self) -> &[SecondaryCtrl] {
        &self.secondaries
    }

    fn read32(&mut self, off: usize) -> u32 {
        if self.cfg.offline {
            return if off == regs::CSTS {
                regs::csts::CFS
            } else {
                0
            };
        }
        match off {
            regs::CAP => self.cap() as u32,
            0x04 => (self.cap() >> 32) as u32,
            regs::VS => 0x0001_0400,
            regs::CC => self.cc,
            regs::CSTS => {
                if self.countdown > 0 {
                    self.countdown -= 1;
                } else if self.rdy_target && !self.faults.never_ready {
                    self.csts |= regs::csts::RDY;
                } else if !self.rdy_target {
                    self.csts &= !regs::csts::RDY;
                }
                self.csts
            }
            regs::AQA => self.aqa,
            regs::ASQ => self.asq as u32,
            0x2c => (self.asq >> 32) as u32,
            regs::ACQ => self.acq as u32,
            0x34 => (self.acq >> 32) as u32,
            _ => 0,
        }
    }

    fn write32(&mut self, off: usize, v: u32) {
        if self.cfg.offline {
            return;
        }
        match off {
            regs::CC => {
                let was = self.cc & regs::cc::EN != 0;
                self.cc = v;
                let now = v & regs::cc::EN != 0;
                if now && !was {
                    self.enable();
                } else if was && !now {
                    self.controller_reset();
                }
            }
            regs::AQA => self.aqa = v,
            regs::ASQ => self.asq = (self.asq & !0xffff_ffff) | v as u64,
            0x2c => self.asq = (self.asq & 0xffff_ffff) | (v as u64) << 32,
            regs::ACQ => self.acq = (self.acq & !0xffff_ffff) | v as u64,
            0x34 => self.acq = (self.acq & 0xffff_ffff) | (v as u64) << 32,
            o if o >= regs::DOORBELLS => {
                if self.cc & regs::cc::EN == 0 {
                    return;
                }
                let idx = (o - regs::DOORBELLS) / (4 << self.cfg.dstrd);
                let qid = idx / 2;
                if qid >= self.sqs.len() {
                    return;
                }
                if idx.is_multiple_of(2) {
                    if let Some(sq) = self.sqs[qid].as_mut() {
                        sq.tail = v as u16 % sq.entries;
                    }
                    self.process(qid as u16);
                }
            }
            _ => {}
        }
    }

    fn enable(&mut self) {
        self.rdy_target = true;
        self.countdown = self.cfg.ready_delay;
        if self.faults.fatal_on_enable {
            self.csts |= regs::csts::CFS;
            return;
        }
        let sq_entries = (self.aqa & 0xfff) as u16 + 1;
        let cq_entries = ((self.aqa >> 16) & 0xfff) as u16 + 1;
        self.sqs[0] = Some(Sq {
            base: self.asq,
            entries: sq_entries,
            head: 0,
            tail: 0,
            cqid: 0,
        });
        self.cqs[0] = Some(Cq {
            base: self.acq,
            entries: cq_entries,
            tail: 0,
            phase: true,
        });
    }

    fn controller_reset(&mut self) {
        self.rdy_target = false;
        self.countdown = self.cfg.ready_delay;
        self.csts &= !regs::csts::CFS;
        self.sqs.iter_mut().for_each(|q| *q = None);
        self.cqs.iter_mut().for_each(|q| *q = None);
        self.queues_created = false;
        // A primary's reset takes every secondary offline.
        for s in &mut self.secondaries {
            *s = SecondaryCtrl {
                scs: 0,
                nvq: 0,
                nvi: 0,
                ..*s
            };
        }
    }

    fn process(&mut self, qid: u16) {
        loop {
            let Some(sq) = self.sqs[qid as usize].as_mut() else {
                return;
            };
            if sq.head == sq.tail {
                return;
            }
            let slot = sq.base + sq.head as u64 * Command::SIZE as u64;
            sq.head = (sq.head + 1) % sq.entries;
            let (head, cqid) = (sq.head, sq.cqid);
            let mut raw = [0u8; 64];
            if !self.mem.borrow().read(slot, &mut raw) {
                return;
            }
            let cmd = Command::decode(&raw);
            let mut rec = Record {
                qid,
                opcode: cmd.opcode,
                code: status::SUCCESS,
                bytes: 0,
                prp_list: false,
            };
            let (dw0, code) = match self.faults.fail_with {
                Some((q, op, code)) if q == qid && op == cmd.opcode => (0, code),
                _ if qid == 0 => self.admin(&cmd),
                _ => self.io(&cmd, &mut rec),
            };
            rec.code = code;
            self.log.push(rec);
            if self.faults.drop_completion == Some((qid, cmd.opcode)) {
                self.faults.drop_completion = None;
                continue;
            }
            let stale = self.faults.wrong_phase == Some((qid, cmd.opcode));
            if stale {
                self.faults.wrong_phase = None;
            }
            let c = Completion {
                dw0,
                dw1: 0,
                sq_head: head,
                sq_id: qid,
                cid: cmd.cid,
                phase: false,
                status: Status::new(code, !code.is_success()),
            };
            self.post(cqid, c, stale);
        }
    }

    fn post(&mut self, cqid: u16, mut c: Completion, stale: bool) {
        let Some(cq) = self.cqs[cqid as usize].as_mut() else {
            return;
        };
        c.phase = cq.phase != stale;
        let slot = cq.base + cq.tail as u64 * Completion::SIZE as u64;
        self.mem.borrow_mut().write(slot, &c.encode());
        cq.tail += 1;
        if cq.tail == cq.entries {
            cq.tail = 0;
            cq.phase = !cq.phase;
        }
    }

    /// Copies `data` to the host through the command's PRPs.
    fn copy_to_host(&mut self, cmd: &Command, data: &[u8]) -> Result<bool, Code> {
        let mut mem = self.mem.borrow_mut();
        let mut pieces = Vec::new();
        walk(&mem, cmd, data.len(), &mut pieces)?;
        let mut at = 0;
        for (addr, n) in &pieces {
            if !mem.write(*addr, &data[at..at + n]) {
                return Err(status::DATA_TRANSFER_ERROR);
            }
            at += n;
        }
        Ok(pieces.len() > 2)
    }

    fn copy_from_host(&mut self, cmd: &Command, out: &mut [u8]) -> Result<bool, Code> {
        let mem = self.mem.borrow();
        let mut pieces = Vec::new();
        walk(&mem, cmd, out.len(), &mut pieces)?;
        let mut at = 0;
        for (addr, n) in &pieces {
            if !mem.read(*addr, &mut out[at..at + n]) {
                return Err(status::DATA_TRANSFER_ERROR);
            }
            at += n;
        }
        Ok(pieces.len() > 2)
    }

    fn admin(&mut self, cmd: &Command) -> (u32, Code) {
        match self.admin_inner(cmd) {
            Ok(dw0) => (dw0, status::SUCCESS),
            Err(code) => (0, code),
        }
    }

    /// The ring size of a Create I/O CQ/SQ command, after the checks both
    /// share: a size within MQES, a page-aligned ring, physically contiguous.
    fn ring_entries(&self, cmd: &Command) -> Result<u16, Code> {
        let entries = (cmd.cdw10 >> 16) + 1;
        if entries < 2 || entries > self.cfg.mqes as u32 + 1 {
            return Err(status::INVALID_QUEUE_SIZE);
        }
        if cmd.prp1 == 0 || !cmd.prp1.is_multiple_of(PAGE_SIZE as u64) || cmd.cdw11 & 1 == 0 {
            return Err(status::INVALID_FIELD);
        }
        Ok(entries as u16)
    }

    fn admin_inner(&mut self, cmd: &Command) -> Result<u32, Code> {
        let qid = cmd.cdw10 as u16;
        let max = self.cfg.max_io_pairs;
        match cmd.opcode {
            admin::IDENTIFY => {
                let page = self.identify(cmd)?;
                self.copy_to_host(cmd, &page)?;
                Ok(0)
            }
            admin::SET_FEATURES if cmd.cdw10 & 0xff == fid::NUMBER_OF_QUEUES as u32 => {
                if self.queues_created {
                    return Err(status::COMMAND_SEQUENCE_ERROR);
                }
                if cmd.cdw11 & 0xffff == 0xffff || cmd.cdw11 >> 16 == 0xffff {
                    return Err(status::INVALID_FIELD);
                }
                // Like QEMU: the grant is everything the controller has.
                Ok((max as u32 - 1) | (max as u32 - 1) << 16)
            }
            admin::GET_FEATURES if cmd.cdw10 & 0xff == fid::NUMBER_OF_QUEUES as u32 => {
                Ok((max as u32 - 1) | (max as u32 - 1) << 16)
            }
            admin::CREATE_IO_CQ if self.faults.accept_any_qid && qid > max => Ok(0),
            admin::CREATE_IO_CQ => {
                if qid == 0 || qid > max || self.cqs[qid as usize].is_some() {
                    return Err(status::INVALID_QUEUE_IDENTIFIER);
                }
                let entries = self.ring_entries(cmd)?;
                self.cqs[qid as usize] = Some(Cq {
                    base: cmd.prp1,
                    entries,
                    tail: 0,
                    phase: true,
                });
                self.queues_created = true;
                Ok(0)
            }
            admin::CREATE_IO_SQ => {
                let cqid = (cmd.cdw11 >> 16) as u16;
                if cqid == 0 || cqid > max || self.cqs[cqid as usize].is_none() {
                    return Err(status::COMPLETION_QUEUE_INVALID);
                }
                if qid == 0 || qid > max || self.sqs[qid as usize].is_some() {
                    return Err(status::INVALID_QUEUE_IDENTIFIER);
                }
                let entries = self.ring_entries(cmd)?;
                self.sqs[qid as usize] = Some(Sq {
                    base: cmd.prp1,
                    entries,
                    head: 0,
                    tail: 0,
                    cqid,
                });
                self.queues_created = true;
                let live = self.live_io_queues().0;
                self.max_live_io_sqs = self.max_live_io_sqs.max(live);
                Ok(0)
            }
            admin::DELETE_IO_SQ => {
                if qid == 0 || qid > max || self.sqs[qid as usize].is_none() {
                    return Err(status::INVALID_QUEUE_IDENTIFIER);
                }
                self.sqs[qid as usize] = None;
                Ok(0)
            }
            admin::DELETE_IO_CQ => {
                if qid == 0 || qid > max || self.cqs[qid as usize].is_none() {
                    return Err(status::INVALID_QUEUE_IDENTIFIER);
                }
                if self.sqs[1..].iter().flatten().any(|s| s.cqid == qid) {
                    return Err(status::INVALID_QUEUE_DELETION);
                }
                self.cqs[qid as usize] = None;
                Ok(0)
            }
            admin::VIRTUALIZATION_MANAGEMENT if self.cfg.sriov.is_some() => self.virt_mgmt(cmd),
            _ => Err(status::INVALID_OPCODE),
        }
    }

    fn identify(&self, cmd: &Command) -> Result<Vec<u8>, Code> {
        let mut page = vec![0u8; identify::SIZE];
        let nn = self.namespaces.iter().map(|n| n.nsid).max().unwrap_or(0);
        match cmd.cdw10 as u8 {
            cns::CONTROLLER => {
                let mut c = ControllerData::parse(&page);
                c.vid = 0x1b36;
                c.ssvid = 0x1af4;
                c.sn = *b"ukci-model          ";
                c.mn = *b"ukci NVMe model                         ";
                c.fr = *b"1.0     ";
                c.mdts = self.cfg.mdts;
                c.cntlid = self.cfg.cntlid;
                c.ver = 0x0001_0400;
                c.cntrltype = 1;
                c.cmic = if self.cfg.is_vf {
                    identify::CMIC_SRIOV_VF
                } else {
                    0
                };
                c.oacs = if self.cfg.sriov.is_some() {
                    identify::OACS_VIRTUALIZATION_MANAGEMENT
                } else {
                    0
                };
                c.sqes = 0x66;
                c.cqes = 0x44;
                c.nn = nn;
                c.vwc = 1;
                c.write(&mut page);
            }
            cns::NAMESPACE => {
                if cmd.nsid == 0 || cmd.nsid > nn {
                    return Err(status::INVALID_NAMESPACE);
                }
                // An inactive NSID in range reads as zeros.
                if let Some(ns) = self.namespaces.iter().find(|n| n.nsid == cmd.nsid) {
                    let mut lbaf = [LbaFormat::default(); 64];
                    lbaf[0] = LbaFormat {
                        ms: 0,
                        lbads: ns.lbads,
                        rp: 0,
                    };
                    NamespaceData {
                        nsze: ns.blocks,
                        ncap: ns.blocks,
                        nuse: ns.blocks,
                        nsfeat: 0,
                        nlbaf: 0,
                        flbas: 0,
                        nmic: 0,
                        lbaf,
                    }
                    .write(&mut page);
                }
            }
            cns::ACTIVE_NAMESPACES => {
                let mut ids: Vec<u32> = self
                    .namespaces
                    .iter()
                    .map(|n| n.nsid)
                    .filter(|&id| id > cmd.nsid)
                    .collect();
                ids.sort_unstable();
                for (i, id) in ids.iter().take(1024).enumerate() {
                    page[4 * i..4 * i + 4].copy_from_slice(&id.to_le_bytes());
                }
            }
            cns::PRIMARY_CONTROLLER_CAPS => {
                let s = self.cfg.sriov.ok_or(status::INVALID_FIELD)?;
                let vfs = s.vfs.max(1) as u32;
                PrimaryCtrlCaps {
                    cntlid: self.cfg.cntlid,
                    crt: 3,
                    vqfrt: s.vq_flexible,
                    vqrfa: self.secondaries.iter().map(|c| c.nvq as u32).sum(),
                    vqrfap: self.primary_vq as u16,
                    vqprt: (1 + self.cfg.max_io_pairs as u32 - s.vq_flexible) as u16,
                    vqfrsm: (s.vq_flexible / vfs) as u16,
                    vqgran: 1,
                    vifrt: s.vi_flexible,
                    virfa: self.secondaries.iter().map(|c| c.nvi as u32).sum(),
                    virfap: self.primary_vi as u16,
                    viprt: 1,
                    vifrsm: (s.vi_flexible / vfs) as u16,
                    vigran: 1,
                    ..PrimaryCtrlCaps::default()
                }
                .write(&mut page);
            }
            cns::SECONDARY_CONTROLLERS => {
                self.cfg.sriov.ok_or(status::INVALID_FIELD)?;
                let first = (cmd.cdw10 >> 16) as u16;
                let list: Vec<SecondaryCtrl> = self
                    .secondaries
                    .iter()
                    .copied()
                    .filter(|s| s.scid >= first)
                    .collect();
                identify::write_secondary_controllers(&list, &mut page);
            }
            _ => return Err(status::INVALID_FIELD),
        }
        Ok(page)
    }

    /// Virtualization Management, with QEMU's rules (see the SR-IOV spec
    /// page): the primary allocation only records, assign needs an offline
    /// secondary, online needs at least 2 VQ and 1 VI.
    fn virt_mgmt(&mut self, cmd: &Command) -> Result<u32, Code> {
        let s = self.cfg.sriov.expect("checked by the caller");
        let act = cmd.cdw10 & 0xf;
        let rt = (cmd.cdw10 >> 8) & 7;
        let cntlid = (cmd.cdw10 >> 16) as u16;
        let nr = cmd.cdw11 & 0xffff;
        if rt > 1 {
            return Err(status::INVALID_RESOURCE_IDENTIFIER);
        }
        let (total, per_vf) = if rt == 0 {
            (s.vq_flexible, s.vq_flexible / s.vfs.max(1) as u32)
        } else {
            (s.vi_flexible, s.vi_flexible / s.vfs.max(1) as u32)
        };
        let assigned = |v: &[SecondaryCtrl], skip: u16| -> u32 {
            v.iter()
                .filter(|c| c.scid != skip)
                .map(|c| if rt == 0 { c.nvq as u32 } else { c.nvi as u32 })
                .sum()
        };
        let sec = self.secondaries.iter().position(|c| c.scid == cntlid);
        match act {
            0x1 => {
                if cntlid != self.cfg.cntlid {
                    return Err(status::INVALID_CONTROLLER_IDENTIFIER);
                }
                if nr > total {
                    return Err(status::INVALID_CONTROLLER_RESOURCES);
                }
                if nr > total - assigned(&self.secondaries, u16::MAX) {
                    return Err(status::INVALID_RESOURCE_IDENTIFIER);
                }
                // Recorded; a real controller applies it at the next FLR. The
                // model applies it at once.
                if rt == 0 {
                    self.primary_vq = nr;
                } else {
                    self.primary_vi = nr;
                }
                Ok(nr)
            }
            0x7 => {
                let i = sec.ok_or(status::INVALID_CONTROLLER_IDENTIFIER)?;
                let c = &mut self.secondaries[i];
                *c = SecondaryCtrl {
                    scs: 0,
                    nvq: 0,
                    nvi: 0,
                    ..*c
                };
                Ok(0)
            }
            0x8 => {
                let i = sec.ok_or(status::INVALID_CONTROLLER_IDENTIFIER)?;
                if self.secondaries[i].online() {
                    return Err(status::INVALID_SECONDARY_CONTROLLER_STATE);
                }
                if nr > per_vf {
                    return Err(status::INVALID_CONTROLLER_RESOURCES);
                }
                let primary = if rt == 0 {
                    self.primary_vq
                } else {
                    self.primary_vi
                };
                if nr + assigned(&self.secondaries, cntlid) + primary > total {
                    return Err(status::INVALID_RESOURCE_IDENTIFIER);
                }
                let c = &mut self.secondaries[i];
                if rt == 0 {
                    c.nvq = nr as u16;
                } else {
                    c.nvi = nr as u16;
                }
                Ok(nr)
            }
            0x9 => {
                let i = sec.ok_or(status::INVALID_CONTROLLER_IDENTIFIER)?;
                let c = &mut self.secondaries[i];
                if c.nvq < 2 || c.nvi < 1 {
                    return Err(status::INVALID_SECONDARY_CONTROLLER_STATE);
                }
                c.scs = 1;
                Ok(0)
            }
            _ => Err(status::INVALID_FIELD),
        }
    }

    fn io(&mut self, cmd: &Command, rec: &mut Record) -> (u32, Code) {
        match self.io_inner(cmd, rec) {
            Ok(()) => (0, status::SUCCESS),
            Err(code) => (0, code),
        }
    }

    fn io_inner(&mut self, cmd: &Command, rec: &mut Record) -> Result<(), Code> {
        if !matches!(cmd.opcode, io::READ | io::WRITE | io::FLUSH) {
            return Err(status::INVALID_OPCODE);
        }
        if cmd.opcode == io::FLUSH && cmd.nsid == crate::cmd::NSID_ALL {
            return Ok(());
        }
        let ns = self
            .namespaces
            .iter()
            .position(|n| n.nsid == cmd.nsid)
            .ok_or(status::INVALID_NAMESPACE)?;
        if cmd.opcode == io::FLUSH {
            return Ok(());
        }
        let (blocks, lbads) = (self.namespaces[ns].blocks, self.namespaces[ns].lbads);
        let (slba, nlb) = (cmd.slba(), cmd.blocks() as u64);
        if slba.checked_add(nlb).is_none_or(|end| end > blocks) {
            return Err(status::LBA_OUT_OF_RANGE);
        }
        let len = (nlb << lbads) as usize;
        if self.cfg.mdts != 0 && len > PAGE_SIZE << self.cfg.mdts {
            return Err(status::INVALID_FIELD);
        }
        let start = (slba << lbads) as usize;
        rec.bytes = len;
        if cmd.opcode == io::WRITE {
            let mut buf = vec![0u8; len];
            rec.prp_list = self.copy_from_host(cmd, &mut buf)?;
            if !self.faults.lose_writes {
                self.namespaces[ns].data[start..start + len].copy_from_slice(&buf);
            }
        } else {
            let mut buf = self.namespaces[ns].data[start..start + len].to_vec();
            if let Some((lba, off)) = self.faults.corrupt_read
                && lba >= slba
                && lba < slba + nlb
                && off < 1 << lbads
            {
                buf[(((lba - slba) << lbads) as usize) + off] ^= 0xff;
            }
            rec.prp_list = self.copy_to_host(cmd, &buf)?;
        }
        Ok(())
    }
}

fn walk(
    mem: &Memory,
    cmd: &Command,
    len: usize,
    pieces: &mut Vec<(u64, usize)>,
) -> Result<(), Code> {
    let mut bad = false;
    let r = prp::walk(
        cmd.prp1,
        cmd.prp2,
        len,
        PAGE_SIZE,
        |a| {
            mem.read_u64(a).unwrap_or_else(|| {
                bad = true;
                0
            })
        },
        |a, n| pieces.push((a, n)),
    );
    match r {
        Err(prp::PrpError::Misaligned { .. }) => Err(Code::new(0, 0x13)),
        Err(_) => Err(status::INVALID_FIELD),
        Ok(()) if bad => Err(status::DATA_TRANSFER_ERROR),
        Ok(()) => Ok(()),
    }
}
