//! The few NVMe encodings the userspace PF driver needs: registers, the
//! admin commands it sends (Identify, Virtualization Management), completion
//! status names, and the Identify structures it reads (controller, CNS 0x14
//! primary controller capabilities, CNS 0x15 secondary controller list).
//!
//! Kept apart on purpose: the guest's `ukci-nvme` crate carries the full
//! encodings; once it is published in the workspace these should be taken
//! from there and this module reduced to nothing.

use std::fmt;

/// Controller registers (BAR0 offsets) and fields.
pub mod reg {
    pub const CAP: u64 = 0x00;
    pub const VS: u64 = 0x08;
    pub const CC: u64 = 0x14;
    pub const CSTS: u64 = 0x1c;
    pub const AQA: u64 = 0x24;
    pub const ASQ: u64 = 0x28;
    pub const ACQ: u64 = 0x30;
    pub const DOORBELLS: u64 = 0x1000;

    pub const CC_EN: u32 = 1;
    /// IOSQES = 6 (64-byte entries), IOCQES = 4 (16-byte), MPS = 0 (4 KiB), NVM command set.
    pub const CC_QUEUE_SIZES: u32 = (6 << 16) | (4 << 20);
    pub const CSTS_RDY: u32 = 1;
    pub const CSTS_CFS: u32 = 1 << 1;

    /// CAP.TO: worst-case ready time in 500 ms units.
    pub fn cap_timeout_ms(cap: u64) -> u64 {
        ((cap >> 24) & 0xff) * 500
    }

    /// CAP.DSTRD: doorbell stride is `4 << DSTRD` bytes.
    pub fn cap_dstrd(cap: u64) -> u32 {
        ((cap >> 32) & 0xf) as u32
    }

    /// CAP.MQES + 1: the largest queue the controller takes.
    pub fn cap_max_entries(cap: u64) -> u32 {
        (cap & 0xffff) as u32 + 1
    }

    pub fn sq_doorbell(qid: u16, dstrd: u32) -> u64 {
        DOORBELLS + (2 * u64::from(qid)) * (4 << dstrd)
    }

    pub fn cq_doorbell(qid: u16, dstrd: u32) -> u64 {
        DOORBELLS + (2 * u64::from(qid) + 1) * (4 << dstrd)
    }
}

pub const OPC_IDENTIFY: u8 = 0x06;
pub const OPC_VIRT_MGMT: u8 = 0x1c;
pub const CNS_CONTROLLER: u8 = 0x01;
pub const CNS_PRIMARY_CAPS: u8 = 0x14;
pub const CNS_SECONDARY_LIST: u8 = 0x15;

/// Virtualization Management actions (CDW10.ACT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtAction {
    PrimaryFlexibleAllocation = 0x1,
    SecondaryOffline = 0x7,
    SecondaryAssign = 0x8,
    SecondaryOnline = 0x9,
}

/// Virtualization Management resource types (CDW10.RT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Queues.
    Vq = 0,
    /// Interrupts (MSI-X vectors).
    Vi = 1,
}

/// A 64-byte submission queue entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sqe {
    pub opcode: u8,
    pub cid: u16,
    pub nsid: u32,
    pub prp1: u64,
    pub prp2: u64,
    pub cdw10: u32,
    pub cdw11: u32,
}

impl Sqe {
    pub fn identify(cns: u8, cntid: u16, prp1: u64) -> Sqe {
        Sqe {
            opcode: OPC_IDENTIFY,
            prp1,
            cdw10: u32::from(cns) | u32::from(cntid) << 16,
            ..Sqe::default()
        }
    }

    pub fn virt_mgmt(act: VirtAction, rt: Resource, cntlid: u16, nr: u16) -> Sqe {
        Sqe {
            opcode: OPC_VIRT_MGMT,
            cdw10: act as u32 | (rt as u32) << 8 | u32::from(cntlid) << 16,
            cdw11: u32::from(nr),
            ..Sqe::default()
        }
    }

    pub fn encode(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0] = self.opcode;
        b[2..4].copy_from_slice(&self.cid.to_le_bytes());
        b[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        b[24..32].copy_from_slice(&self.prp1.to_le_bytes());
        b[32..40].copy_from_slice(&self.prp2.to_le_bytes());
        b[40..44].copy_from_slice(&self.cdw10.to_le_bytes());
        b[44..48].copy_from_slice(&self.cdw11.to_le_bytes());
        b
    }
}

/// A 16-byte completion queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cqe {
    pub dw0: u32,
    pub sq_head: u16,
    pub cid: u16,
    pub phase: bool,
    pub status: NvmeStatus,
}

impl Cqe {
    pub fn decode(b: &[u8; 16]) -> Cqe {
        let le32 = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let dw3 = le32(12);
        Cqe {
            dw0: le32(0),
            sq_head: (le32(8) & 0xffff) as u16,
            cid: (dw3 & 0xffff) as u16,
            phase: dw3 & (1 << 16) != 0,
            status: NvmeStatus((dw3 >> 17) as u16),
        }
    }
}

/// A completion status field (bits 15:1 of DW3 after the phase tag):
/// SC 7:0, SCT 10:8, CRD 12:11, M 13, DNR 14.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct NvmeStatus(pub u16);

impl NvmeStatus {
    pub fn is_success(self) -> bool {
        self.sct() == 0 && self.sc() == 0
    }
    pub fn sc(self) -> u8 {
        (self.0 & 0xff) as u8
    }
    pub fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }
    pub fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// SCT and SC as one number (`0x120`), the form QEMU and the spec tables use.
    pub fn code(self) -> u16 {
        u16::from(self.sct()) << 8 | u16::from(self.sc())
    }

    pub fn name(self) -> &'static str {
        match self.code() {
            0x000 => "Successful Completion",
            0x001 => "Invalid Command Opcode",
            0x002 => "Invalid Field in Command",
            0x003 => "Command ID Conflict",
            0x004 => "Data Transfer Error",
            0x006 => "Internal Error",
            0x007 => "Command Abort Requested",
            0x00b => "Invalid Namespace or Format",
            0x00c => "Command Sequence Error",
            0x100 => "Completion Queue Invalid",
            0x101 => "Invalid Queue Identifier",
            0x102 => "Invalid Queue Size",
            0x118 => "Namespace Already Attached",
            0x119 => "Namespace Is Private",
            0x11a => "Namespace Not Attached",
            0x11c => "Controller List Invalid",
            0x11f => "Invalid Controller Identifier",
            0x120 => "Invalid Secondary Controller State",
            0x121 => "Invalid Number of Controller Resources",
            0x122 => "Invalid Resource Identifier",
            _ => "unknown status",
        }
    }
}

impl fmt::Display for NvmeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#05x} {}", self.code(), self.name())?;
        if self.dnr() {
            f.write_str(" (DNR)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NvmeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn le16(d: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([d[o], d[o + 1]])
}

fn le32(d: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(d[o..o + 4].try_into().unwrap())
}

fn ascii(d: &[u8]) -> String {
    String::from_utf8_lossy(d).trim().to_owned()
}

/// The Identify Controller fields the PF driver looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerId {
    pub vid: u16,
    pub serial: String,
    pub model: String,
    pub cntlid: u16,
    pub oacs: u16,
}

pub const OACS_VIRT_MGMT: u16 = 1 << 7;

impl ControllerId {
    pub fn parse(d: &[u8; 4096]) -> ControllerId {
        ControllerId {
            vid: le16(d, 0),
            serial: ascii(&d[4..24]),
            model: ascii(&d[24..64]),
            cntlid: le16(d, 78),
            oacs: le16(d, 256),
        }
    }

    pub fn has_virt_mgmt(&self) -> bool {
        self.oacs & OACS_VIRT_MGMT != 0
    }
}

/// Identify CNS 0x14.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryCaps {
    pub cntlid: u16,
    pub crt: u8,
    pub vqfrt: u32,
    pub vqrfa: u32,
    pub vqrfap: u16,
    pub vqprt: u16,
    pub vqfrsm: u16,
    pub vifrt: u32,
    pub virfa: u32,
    pub virfap: u16,
    pub viprt: u16,
    pub vifrsm: u16,
}

impl PrimaryCaps {
    pub fn parse(d: &[u8; 4096]) -> PrimaryCaps {
        PrimaryCaps {
            cntlid: le16(d, 0),
            crt: d[4],
            vqfrt: le32(d, 32),
            vqrfa: le32(d, 36),
            vqrfap: le16(d, 40),
            vqprt: le16(d, 42),
            vqfrsm: le16(d, 44),
            vifrt: le32(d, 64),
            virfa: le32(d, 68),
            virfap: le16(d, 72),
            viprt: le16(d, 74),
            vifrsm: le16(d, 76),
        }
    }

    /// The primary holds flexible resources it must give up before VFs can get any.
    pub fn primary_holds_flexible(&self) -> bool {
        self.vqrfap != 0 || self.virfap != 0
    }
}

/// One entry of Identify CNS 0x15.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secondary {
    pub scid: u16,
    pub pcid: u16,
    pub online: bool,
    pub vfn: u16,
    pub nvq: u16,
    pub nvi: u16,
}

impl Secondary {
    pub fn parse_list(d: &[u8; 4096]) -> Vec<Secondary> {
        let n = usize::from(d[0]).min(127);
        (0..n)
            .map(|i| {
                let e = &d[32 + 32 * i..64 + 32 * i];
                Secondary {
                    scid: le16(e, 0),
                    pcid: le16(e, 2),
                    online: e[4] & 1 != 0,
                    vfn: le16(e, 8),
                    nvq: le16(e, 10),
                    nvi: le16(e, 12),
                }
            })
            .collect()
    }
}

impl fmt::Display for Secondary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scid={} vfn={} {} nvq={} nvi={}",
            self.scid,
            self.vfn,
            if self.online { "online" } else { "offline" },
            self.nvq,
            self.nvi
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virt_mgmt_packs_action_resource_and_controller() {
        let s = Sqe::virt_mgmt(VirtAction::SecondaryAssign, Resource::Vi, 2, 1);
        let b = s.encode();
        assert_eq!(b[0], 0x1c);
        assert_eq!(
            u32::from_le_bytes(b[40..44].try_into().unwrap()),
            0x0002_0108
        );
        assert_eq!(u32::from_le_bytes(b[44..48].try_into().unwrap()), 1);
        let on = Sqe::virt_mgmt(VirtAction::SecondaryOnline, Resource::Vq, 1, 0);
        assert_eq!(on.cdw10, 0x0001_0009);
        let prm = Sqe::virt_mgmt(VirtAction::PrimaryFlexibleAllocation, Resource::Vq, 0, 0);
        assert_eq!(prm.cdw10, 1);
    }

    #[test]
    fn identify_selects_cns_and_controller() {
        let s = Sqe::identify(CNS_SECONDARY_LIST, 1, 0x1000_2000);
        assert_eq!(s.cdw10, 0x0001_0015);
        assert_eq!(&s.encode()[24..32], &0x1000_2000u64.to_le_bytes());
    }

    #[test]
    fn statuses_decode_as_qemu_sends_them() {
        // QEMU: NVME_INVALID_SEC_CTRL_STATE | NVME_DNR = 0x4120, shifted past the phase tag.
        let mut b = [0u8; 16];
        b[12..16].copy_from_slice(&((0x4120u32 << 17) | (1 << 16) | 7).to_le_bytes());
        let c = Cqe::decode(&b);
        assert_eq!(c.cid, 7);
        assert!(c.phase);
        assert_eq!(c.status.code(), 0x120);
        assert!(c.status.dnr());
        assert!(!c.status.is_success());
        assert_eq!(
            c.status.to_string(),
            "0x120 Invalid Secondary Controller State (DNR)"
        );
        assert!(NvmeStatus(0).is_success());
        assert_eq!(NvmeStatus(0x4002).name(), "Invalid Field in Command");
    }

    #[test]
    fn the_secondary_list_parses_entries() {
        let mut d = [0u8; 4096];
        d[0] = 2;
        for (i, (scid, online)) in [(1u16, true), (2, false)].into_iter().enumerate() {
            let e = &mut d[32 + 32 * i..64 + 32 * i];
            e[0..2].copy_from_slice(&scid.to_le_bytes());
            e[4] = u8::from(online);
            e[8..10].copy_from_slice(&scid.to_le_bytes());
            e[10..12].copy_from_slice(&2u16.to_le_bytes());
            e[12..14].copy_from_slice(&1u16.to_le_bytes());
        }
        let l = Secondary::parse_list(&d);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].to_string(), "scid=1 vfn=1 online nvq=2 nvi=1");
        assert!(!l[1].online);
    }

    #[test]
    fn primary_caps_read_the_flexible_pools() {
        let mut d = [0u8; 4096];
        d[32..36].copy_from_slice(&4u32.to_le_bytes());
        d[40..42].copy_from_slice(&4u16.to_le_bytes());
        d[64..68].copy_from_slice(&2u32.to_le_bytes());
        let p = PrimaryCaps::parse(&d);
        assert_eq!((p.vqfrt, p.vqrfap, p.vifrt, p.virfap), (4, 4, 2, 0));
        assert!(p.primary_holds_flexible());
    }

    #[test]
    fn cap_fields() {
        let cap = 0x0040_0820_0f01_07ffu64;
        assert_eq!(reg::cap_timeout_ms(cap), 15 * 500);
        assert_eq!(reg::cap_dstrd(cap), 0);
        assert_eq!(reg::cap_max_entries(cap), 0x800);
        assert_eq!(reg::sq_doorbell(0, 0), 0x1000);
        assert_eq!(reg::cq_doorbell(0, 0), 0x1004);
        assert_eq!(reg::cq_doorbell(1, 1), 0x1000 + 3 * 8);
    }
}
