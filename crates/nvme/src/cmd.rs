//! Submission queue entries (64 bytes) and completion queue entries (16
//! bytes), with builders for the commands ukci sends. Pure: usable from a
//! std userspace PF driver as well as the guest.

use crate::status::Status;

/// Admin command opcodes.
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0a;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    pub const NAMESPACE_ATTACHMENT: u8 = 0x15;
    pub const KEEP_ALIVE: u8 = 0x18;
    pub const VIRTUALIZATION_MANAGEMENT: u8 = 0x1c;
    /// Reserved in every revision of the admin command set: a controller
    /// must answer it with Invalid Command Opcode.
    pub const RESERVED: u8 = 0x03;
}

/// NVM command set I/O opcodes.
pub mod io {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Reserved in the NVM command set.
    pub const RESERVED: u8 = 0x03;
}

/// Identify CNS values.
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    pub const PRIMARY_CONTROLLER_CAPS: u8 = 0x14;
    pub const SECONDARY_CONTROLLERS: u8 = 0x15;
}

/// Feature identifiers.
pub mod fid {
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
}

/// The broadcast namespace ID.
pub const NSID_ALL: u32 = 0xffff_ffff;

/// Virtualization Management actions (CDW10.ACT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum VirtAction {
    PrimaryFlexibleAllocation = 0x1,
    SecondaryOffline = 0x7,
    SecondaryAssign = 0x8,
    SecondaryOnline = 0x9,
}

/// Virtualization Management resource types (CDW10.RT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Resource {
    /// VQ: queue resources.
    Queue = 0,
    /// VI: interrupt resources.
    Interrupt = 1,
}

/// What ukci's PF driver gives each secondary controller (VF) it brings
/// online: two queue resources (the admin queue and one I/O queue pair's
/// worth, as the guest's driver uses) and one interrupt resource. A PF
/// emulated for ukci offers at least `vfs` times these as flexible
/// resources (`sriov_vq_flexible`, `sriov_vi_flexible`).
pub const VF_QUEUES: u16 = 2;
pub const VF_VECTORS: u16 = 1;

/// A submission queue entry. Fields the builders do not name stay zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Command {
    pub opcode: u8,
    /// CDW0 bits 15:8 (FUSE, PSDT); zero means a plain PRP command.
    pub flags: u8,
    /// Command identifier; the queue assigns it at submission.
    pub cid: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    pub prp1: u64,
    pub prp2: u64,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn get16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub(crate) fn get32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

pub(crate) fn get64(b: &[u8], off: usize) -> u64 {
    get32(b, off) as u64 | (get32(b, off + 4) as u64) << 32
}

impl Command {
    pub const SIZE: usize = 64;

    pub fn new(opcode: u8) -> Command {
        Command {
            opcode,
            ..Command::default()
        }
    }

    pub fn encode(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        put32(
            &mut b,
            0,
            self.opcode as u32 | (self.flags as u32) << 8 | (self.cid as u32) << 16,
        );
        put32(&mut b, 4, self.nsid);
        put32(&mut b, 8, self.cdw2);
        put32(&mut b, 12, self.cdw3);
        put64(&mut b, 16, self.mptr);
        put64(&mut b, 24, self.prp1);
        put64(&mut b, 32, self.prp2);
        let dws = [
            self.cdw10, self.cdw11, self.cdw12, self.cdw13, self.cdw14, self.cdw15,
        ];
        for (i, dw) in dws.into_iter().enumerate() {
            put32(&mut b, 40 + 4 * i, dw);
        }
        b
    }

    pub fn decode(b: &[u8; 64]) -> Command {
        let dw0 = get32(b, 0);
        Command {
            opcode: dw0 as u8,
            flags: (dw0 >> 8) as u8,
            cid: (dw0 >> 16) as u16,
            nsid: get32(b, 4),
            cdw2: get32(b, 8),
            cdw3: get32(b, 12),
            mptr: get64(b, 16),
            prp1: get64(b, 24),
            prp2: get64(b, 32),
            cdw10: get32(b, 40),
            cdw11: get32(b, 44),
            cdw12: get32(b, 48),
            cdw13: get32(b, 52),
            cdw14: get32(b, 56),
            cdw15: get32(b, 60),
        }
    }

    pub fn with_nsid(mut self, nsid: u32) -> Command {
        self.nsid = nsid;
        self
    }

    pub fn with_prp(mut self, prp1: u64, prp2: u64) -> Command {
        self.prp1 = prp1;
        self.prp2 = prp2;
        self
    }

    /// Identify (4096 bytes of data). `cntid` matters for CNS 0x15 (lowest
    /// secondary controller ID to list); `nsid` for CNS 0 and 2.
    pub fn identify(cns: u8, nsid: u32, cntid: u16) -> Command {
        Command {
            opcode: admin::IDENTIFY,
            nsid,
            cdw10: cns as u32 | (cntid as u32) << 16,
            ..Command::default()
        }
    }

    pub fn identify_controller() -> Command {
        Command::identify(cns::CONTROLLER, 0, 0)
    }

    pub fn identify_namespace(nsid: u32) -> Command {
        Command::identify(cns::NAMESPACE, nsid, 0)
    }

    /// Active namespace IDs greater than `after`.
    pub fn active_namespaces(after: u32) -> Command {
        Command::identify(cns::ACTIVE_NAMESPACES, after, 0)
    }

    pub fn primary_controller_caps() -> Command {
        Command::identify(cns::PRIMARY_CONTROLLER_CAPS, 0, 0)
    }

    /// Secondary controllers with IDs of at least `first`.
    pub fn secondary_controllers(first: u16) -> Command {
        Command::identify(cns::SECONDARY_CONTROLLERS, 0, first)
    }

    /// Create I/O Completion Queue: physically contiguous, polled (no
    /// interrupt). `entries` is 1-based.
    pub fn create_io_cq(qid: u16, entries: u16, base: u64) -> Command {
        Command {
            opcode: admin::CREATE_IO_CQ,
            prp1: base,
            cdw10: qid as u32 | ((entries as u32).wrapping_sub(1) & 0xffff) << 16,
            // PC = 1, IEN = 0, IV = 0.
            cdw11: 1,
            ..Command::default()
        }
    }

    /// Create I/O Submission Queue bound to completion queue `cqid`,
    /// physically contiguous, medium priority. `entries` is 1-based.
    pub fn create_io_sq(qid: u16, entries: u16, cqid: u16, base: u64) -> Command {
        Command {
            opcode: admin::CREATE_IO_SQ,
            prp1: base,
            cdw10: qid as u32 | ((entries as u32).wrapping_sub(1) & 0xffff) << 16,
            cdw11: 1 | (cqid as u32) << 16,
            ..Command::default()
        }
    }

    pub fn delete_io_sq(qid: u16) -> Command {
        Command {
            opcode: admin::DELETE_IO_SQ,
            cdw10: qid as u32,
            ..Command::default()
        }
    }

    pub fn delete_io_cq(qid: u16) -> Command {
        Command {
            opcode: admin::DELETE_IO_CQ,
            cdw10: qid as u32,
            ..Command::default()
        }
    }

    pub fn set_features(fid: u8, cdw11: u32) -> Command {
        Command {
            opcode: admin::SET_FEATURES,
            cdw10: fid as u32,
            cdw11,
            ..Command::default()
        }
    }

    pub fn get_features(fid: u8) -> Command {
        Command {
            opcode: admin::GET_FEATURES,
            cdw10: fid as u32,
            ..Command::default()
        }
    }

    /// Set Features, Number of Queues: `sqs` and `cqs` are 1-based (at least
    /// 1, at most 65535); completion DW0 carries the grant, see
    /// [`queues_granted`].
    pub fn set_number_of_queues(sqs: u16, cqs: u16) -> Command {
        let sq = sqs.max(1) as u32 - 1;
        let cq = cqs.max(1) as u32 - 1;
        Command::set_features(fid::NUMBER_OF_QUEUES, sq | cq << 16)
    }

    /// Virtualization Management, for a primary controller's admin queue.
    pub fn virtualization_management(
        action: VirtAction,
        resource: Resource,
        cntlid: u16,
        count: u16,
    ) -> Command {
        Command {
            opcode: admin::VIRTUALIZATION_MANAGEMENT,
            cdw10: action as u32 | (resource as u32) << 8 | (cntlid as u32) << 16,
            cdw11: count as u32,
            ..Command::default()
        }
    }

    /// Namespace Attachment (attach or detach `nsid` to the controllers in
    /// a 4096-byte list made by [`controller_list`]).
    pub fn namespace_attachment(nsid: u32, attach: bool) -> Command {
        Command {
            opcode: admin::NAMESPACE_ATTACHMENT,
            nsid,
            cdw10: if attach { 0 } else { 1 },
            ..Command::default()
        }
    }

    fn rw(opcode: u8, nsid: u32, slba: u64, blocks: u32) -> Command {
        Command {
            opcode,
            nsid,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: blocks.wrapping_sub(1) & 0xffff,
            ..Command::default()
        }
    }

    /// Read `blocks` (1..=65536) logical blocks from `slba`.
    pub fn read(nsid: u32, slba: u64, blocks: u32) -> Command {
        Command::rw(io::READ, nsid, slba, blocks)
    }

    /// Write `blocks` (1..=65536) logical blocks at `slba`.
    pub fn write(nsid: u32, slba: u64, blocks: u32) -> Command {
        Command::rw(io::WRITE, nsid, slba, blocks)
    }

    pub fn flush(nsid: u32) -> Command {
        Command {
            opcode: io::FLUSH,
            nsid,
            ..Command::default()
        }
    }

    /// Starting LBA of a Read or Write.
    pub fn slba(&self) -> u64 {
        self.cdw10 as u64 | (self.cdw11 as u64) << 32
    }

    /// Block count (1-based) of a Read or Write.
    pub fn blocks(&self) -> u32 {
        (self.cdw12 & 0xffff) + 1
    }
}

/// The grant in a Set Features Number of Queues completion, 1-based:
/// (submission queues, completion queues).
pub fn queues_granted(dw0: u32) -> (u32, u32) {
    ((dw0 & 0xffff) + 1, (dw0 >> 16) + 1)
}

/// A controller list for Namespace Attachment: a count, then the IDs.
/// Returns the bytes used; IDs beyond what fits in `out` are dropped.
pub fn controller_list(ids: &[u16], out: &mut [u8]) -> usize {
    let n = ids.len().min(out.len().saturating_sub(2) / 2).min(2047);
    out[..2].copy_from_slice(&(n as u16).to_le_bytes());
    for (i, id) in ids[..n].iter().enumerate() {
        out[2 + 2 * i..4 + 2 * i].copy_from_slice(&id.to_le_bytes());
    }
    2 + 2 * n
}

/// A completion queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Command specific result (e.g. the queue grant of Set Features).
    pub dw0: u32,
    pub dw1: u32,
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    pub phase: bool,
    pub status: Status,
}

impl Completion {
    pub const SIZE: usize = 16;

    pub fn decode(b: &[u8; 16]) -> Completion {
        let dw2 = get32(b, 8);
        let dw3 = get32(b, 12);
        Completion {
            dw0: get32(b, 0),
            dw1: get32(b, 4),
            sq_head: dw2 as u16,
            sq_id: (dw2 >> 16) as u16,
            cid: dw3 as u16,
            phase: dw3 & (1 << 16) != 0,
            status: Status::from_dw3(dw3),
        }
    }

    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        put32(&mut b, 0, self.dw0);
        put32(&mut b, 4, self.dw1);
        put32(&mut b, 8, self.sq_head as u32 | (self.sq_id as u32) << 16);
        put32(
            &mut b,
            12,
            self.cid as u32 | (self.phase as u32) << 16 | self.status.to_dw3_bits(),
        );
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status;

    fn dw(b: &[u8; 64], i: usize) -> u32 {
        get32(b, 4 * i)
    }

    #[test]
    fn read_encodes_lba_count_and_prps() {
        let mut c = Command::read(1, 0x1_2345_6789, 8).with_prp(0x1000, 0x2000);
        c.cid = 0x42;
        let b = c.encode();
        assert_eq!(dw(&b, 0), 0x0042_0002);
        assert_eq!(dw(&b, 1), 1);
        assert_eq!(get64(&b, 24), 0x1000);
        assert_eq!(get64(&b, 32), 0x2000);
        assert_eq!(dw(&b, 10), 0x2345_6789);
        assert_eq!(dw(&b, 11), 0x1);
        assert_eq!(dw(&b, 12), 7, "NLB is 0-based");
        assert_eq!(Command::decode(&b), c);
        assert_eq!(c.slba(), 0x1_2345_6789);
        assert_eq!(c.blocks(), 8);
    }

    #[test]
    fn queue_commands_encode_like_linux() {
        // Linux nvme_alloc_sq_cq: cdw10 = qid | (qsize-1) << 16,
        // CQ flags PHYS_CONTIG (IRQ disabled here), SQ flags PHYS_CONTIG | cqid << 16.
        let cq = Command::create_io_cq(3, 64, 0xa000).encode();
        assert_eq!(cq[0], admin::CREATE_IO_CQ);
        assert_eq!(dw(&cq, 10), 3 | 63 << 16);
        assert_eq!(dw(&cq, 11), 1);
        assert_eq!(get64(&cq, 24), 0xa000);
        let sq = Command::create_io_sq(3, 32, 3, 0xb000).encode();
        assert_eq!(sq[0], admin::CREATE_IO_SQ);
        assert_eq!(dw(&sq, 10), 3 | 31 << 16);
        assert_eq!(dw(&sq, 11), 1 | 3 << 16);
        assert_eq!(dw(&Command::delete_io_sq(7).encode(), 10), 7);
        assert_eq!(Command::delete_io_cq(7).opcode, admin::DELETE_IO_CQ);
        // 65536 entries is the field's maximum (0xffff).
        assert_eq!(Command::create_io_cq(1, 0, 0).cdw10 >> 16, 0xffff);
    }

    #[test]
    fn identify_and_features_encode() {
        let c = Command::secondary_controllers(5).encode();
        assert_eq!(c[0], admin::IDENTIFY);
        assert_eq!(dw(&c, 10), 0x15 | 5 << 16);
        assert_eq!(Command::identify_namespace(2).nsid, 2);
        assert_eq!(Command::active_namespaces(0).cdw10, 2);
        assert_eq!(Command::primary_controller_caps().cdw10, 0x14);
        let q = Command::set_number_of_queues(64, 64);
        assert_eq!((q.cdw10, q.cdw11), (7, 63 | 63 << 16));
        assert_eq!(queues_granted(63 | 31 << 16), (64, 32));
    }

    #[test]
    fn virtualization_management_matches_the_reference_encoding() {
        // The reference C driver: cdw10 = act | rt << 8 | cntlid << 16, cdw11 = nr.
        let c = Command::virtualization_management(
            VirtAction::SecondaryAssign,
            Resource::Interrupt,
            1,
            1,
        );
        assert_eq!(
            (c.opcode, c.cdw10, c.cdw11),
            (0x1c, 8 | 1 << 8 | 1 << 16, 1)
        );
        let c = Command::virtualization_management(
            VirtAction::PrimaryFlexibleAllocation,
            Resource::Queue,
            0,
            0,
        );
        assert_eq!(c.cdw10, 1);
        let c =
            Command::virtualization_management(VirtAction::SecondaryOnline, Resource::Queue, 2, 0);
        assert_eq!(c.cdw10, 9 | 2 << 16);
    }

    #[test]
    fn namespace_attachment_and_controller_list() {
        assert_eq!(Command::namespace_attachment(1, false).cdw10, 1);
        let mut buf = [0xffu8; 16];
        assert_eq!(controller_list(&[1, 2], &mut buf), 6);
        assert_eq!(&buf[..6], &[2, 0, 1, 0, 2, 0]);
    }

    #[test]
    fn completion_round_trips() {
        let c = Completion {
            dw0: 0x003f_003f,
            dw1: 0,
            sq_head: 5,
            sq_id: 1,
            cid: 0x1234,
            phase: true,
            status: Status::new(status::LBA_OUT_OF_RANGE, true),
        };
        let b = c.encode();
        assert_eq!(get32(&b, 12), 0x1234 | 1 << 16 | (0x4080 << 17));
        assert_eq!(Completion::decode(&b), c);
    }
}
