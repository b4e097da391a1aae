//! A submission/completion queue pair in DMA memory, with the phase tag that
//! tells a new completion from an old one.

use crate::cmd::{Command, Completion};
use crate::error::Error;
use crate::hal::{Dma, DmaBuf, Mmio};
use crate::regs;

/// A queue pair: submission queue `qid` completing into completion queue
/// `qid`, plus a PRP list area for the transfers it carries. The admin queue
/// is pair 0.
#[derive(Debug)]
pub struct QueuePair {
    qid: u16,
    entries: u16,
    sq: DmaBuf,
    cq: DmaBuf,
    prp_list: DmaBuf,
    sq_tail: u16,
    /// The controller's submission queue head, as the last completion said.
    sq_head: u16,
    cq_head: u16,
    /// The phase a new completion carries; it flips at each wrap.
    phase: bool,
    next_cid: u16,
}

/// An I/O queue pair (qid 1 and up), owned by whoever created it.
pub type IoQueue = QueuePair;

impl QueuePair {
    pub(crate) fn new(qid: u16, entries: u16, sq: DmaBuf, cq: DmaBuf, prp_list: DmaBuf) -> Self {
        QueuePair {
            qid,
            entries,
            sq,
            cq,
            prp_list,
            sq_tail: 0,
            sq_head: 0,
            cq_head: 0,
            phase: true,
            next_cid: 0,
        }
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }

    pub fn entries(&self) -> u16 {
        self.entries
    }

    pub(crate) fn sq_buf(&self) -> DmaBuf {
        self.sq
    }

    pub(crate) fn cq_buf(&self) -> DmaBuf {
        self.cq
    }

    pub(crate) fn prp_list(&self) -> DmaBuf {
        self.prp_list
    }

    /// Back to the state after creation (after a controller reset, with the
    /// memory cleared by the caller).
    pub(crate) fn rewind(&mut self) {
        self.sq_tail = 0;
        self.sq_head = 0;
        self.cq_head = 0;
        self.phase = true;
    }

    /// CIDs cycle through 0..0xfffe; 0xffff is left out because some logs
    /// use it for "no command".
    fn take_cid(&mut self) -> u16 {
        let cid = self.next_cid;
        self.next_cid = if cid >= 0xfffe { 0 } else { cid + 1 };
        cid
    }

    /// Writes `cmd` at the tail with a fresh CID and rings the doorbell.
    pub(crate) fn submit(
        &mut self,
        dma: &mut impl Dma,
        mmio: &mut impl Mmio,
        dstrd: u8,
        mut cmd: Command,
    ) -> Result<u16, Error> {
        let next = (self.sq_tail + 1) % self.entries;
        if next == self.sq_head {
            return Err(Error::QueueFull { qid: self.qid });
        }
        cmd.cid = self.take_cid();
        let slot = self.sq.addr + self.sq_tail as u64 * Command::SIZE as u64;
        dma.write(slot, &cmd.encode());
        self.sq_tail = next;
        mmio.write32(regs::sq_tail_doorbell(self.qid, dstrd), self.sq_tail as u32);
        Ok(cmd.cid)
    }

    /// Takes the next completion if the controller has posted one, and
    /// tells the controller the slot is free.
    pub(crate) fn poll(
        &mut self,
        dma: &mut impl Dma,
        mmio: &mut impl Mmio,
        dstrd: u8,
    ) -> Option<Completion> {
        let slot = self.cq.addr + self.cq_head as u64 * Completion::SIZE as u64;
        // The phase tag sits in the last dword, which the controller writes
        // last: once it has flipped, the rest of the entry is there.
        let dw3 = dma.read32(slot + 12);
        if (dw3 & (1 << 16) != 0) != self.phase {
            return None;
        }
        let mut raw = [0u8; 16];
        dma.read(slot, &mut raw);
        let c = Completion::decode(&raw);
        self.cq_head += 1;
        if self.cq_head == self.entries {
            self.cq_head = 0;
            self.phase = !self.phase;
        }
        self.sq_head = c.sq_head % self.entries;
        mmio.write32(regs::cq_head_doorbell(self.qid, dstrd), self.cq_head as u32);
        Some(c)
    }
}
