//! Controller registers in BAR0 (NVMe base specification, "Controller
//! Registers") and the fields the driver uses.

pub const CAP: usize = 0x00;
pub const VS: usize = 0x08;
pub const INTMS: usize = 0x0c;
pub const INTMC: usize = 0x10;
pub const CC: usize = 0x14;
pub const CSTS: usize = 0x1c;
pub const NSSR: usize = 0x20;
pub const AQA: usize = 0x24;
pub const ASQ: usize = 0x28;
pub const ACQ: usize = 0x30;
/// Start of the doorbells; their spacing is `4 << CAP.DSTRD`.
pub const DOORBELLS: usize = 0x1000;

/// Offset of submission queue `qid`'s tail doorbell.
pub const fn sq_tail_doorbell(qid: u16, dstrd: u8) -> usize {
    DOORBELLS + (2 * qid as usize) * (4 << dstrd)
}

/// Offset of completion queue `qid`'s head doorbell.
pub const fn cq_head_doorbell(qid: u16, dstrd: u8) -> usize {
    DOORBELLS + (2 * qid as usize + 1) * (4 << dstrd)
}

/// Controller Capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum queue entries supported, 1-based (the register is 0-based).
    pub const fn max_queue_entries(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }
    /// Contiguous Queues Required.
    pub const fn cqr(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Timeout (CAP.TO) for CSTS.RDY transitions, in 500 ms units.
    pub const fn to(self) -> u8 {
        (self.0 >> 24) as u8
    }
    /// The worst case for CSTS.RDY to follow CC.EN, in nanoseconds. A zero
    /// TO is read as one unit so that a broken value still gives a bound.
    pub const fn ready_timeout_ns(self) -> u64 {
        let units = if self.to() == 0 { 1 } else { self.to() as u64 };
        units * 500_000_000
    }
    /// Doorbell stride exponent: doorbells are `4 << DSTRD` bytes apart.
    pub const fn dstrd(self) -> u8 {
        ((self.0 >> 32) & 0xf) as u8
    }
    pub const fn nssrs(self) -> bool {
        self.0 & (1 << 36) != 0
    }
    /// Command sets supported (CAP.CSS); bit 0 is the NVM command set.
    pub const fn css(self) -> u8 {
        (self.0 >> 37) as u8
    }
    /// Smallest memory page size, in bytes.
    pub const fn mps_min(self) -> u64 {
        1 << (12 + ((self.0 >> 48) & 0xf))
    }
    /// Largest memory page size, in bytes.
    pub const fn mps_max(self) -> u64 {
        1 << (12 + ((self.0 >> 52) & 0xf))
    }
}

/// Controller Configuration fields.
pub mod cc {
    pub const EN: u32 = 1 << 0;
    /// CSS: 0 = NVM command set.
    pub const CSS_NVM: u32 = 0 << 4;
    /// MPS: memory page size 2^(12+MPS); 0 = 4 KiB.
    pub const MPS_4K: u32 = 0 << 7;
    /// AMS: 0 = round robin.
    pub const AMS_RR: u32 = 0 << 11;
    pub const SHN_MASK: u32 = 3 << 14;
    /// I/O submission queue entry size, log2 (64 bytes).
    pub const IOSQES_64: u32 = 6 << 16;
    /// I/O completion queue entry size, log2 (16 bytes).
    pub const IOCQES_16: u32 = 4 << 20;

    /// What the driver writes to enable the controller.
    pub const ENABLE: u32 = EN | CSS_NVM | MPS_4K | AMS_RR | IOSQES_64 | IOCQES_16;
}

/// Controller Status fields.
pub mod csts {
    pub const RDY: u32 = 1 << 0;
    /// Controller Fatal Status. An offline secondary controller reads with
    /// this set.
    pub const CFS: u32 = 1 << 1;
    pub const SHST_MASK: u32 = 3 << 2;
    pub const NSSRO: u32 = 1 << 4;
    pub const PP: u32 = 1 << 5;
}

/// Admin Queue Attributes: both sizes 1-based here, 0-based in the register.
pub const fn aqa(sq_entries: u16, cq_entries: u16) -> u32 {
    ((cq_entries as u32 - 1) << 16) | (sq_entries as u32 - 1)
}

/// The version register as `major.minor.tertiary`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version(pub u32);

impl core::fmt::Display for Version {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.0 >> 16,
            (self.0 >> 8) & 0xff,
            self.0 & 0xff
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbells_follow_the_stride() {
        assert_eq!(sq_tail_doorbell(0, 0), 0x1000);
        assert_eq!(cq_head_doorbell(0, 0), 0x1004);
        assert_eq!(sq_tail_doorbell(1, 0), 0x1008);
        assert_eq!(cq_head_doorbell(1, 0), 0x100c);
        // DSTRD 1: 8-byte spacing.
        assert_eq!(sq_tail_doorbell(1, 1), 0x1010);
        assert_eq!(cq_head_doorbell(3, 2), 0x1000 + 7 * 16);
    }

    #[test]
    fn cap_fields_decode() {
        // QEMU's usual CAP: MQES 0x7ff, CQR, TO 0xf, CSS NVM, MPSMAX 64 KiB.
        let cap = Cap(0x0040_0020_0f01_07ff);
        assert_eq!(cap.max_queue_entries(), 0x800);
        assert!(cap.cqr());
        assert_eq!(cap.to(), 0x0f);
        assert_eq!(cap.ready_timeout_ns(), 7_500_000_000);
        assert_eq!(cap.dstrd(), 0);
        assert_eq!(cap.css() & 1, 1);
        assert_eq!(cap.mps_min(), 4096);
        assert_eq!(cap.mps_max(), 65536);
        assert_eq!(Cap(0).ready_timeout_ns(), 500_000_000);
    }

    #[test]
    fn enable_value_matches_the_common_encoding() {
        // 64-byte SQEs, 16-byte CQEs, 4 KiB pages, NVM command set.
        assert_eq!(cc::ENABLE, 0x0046_0001);
        assert_eq!(aqa(32, 16), 0x000f_001f);
        assert_eq!(std::format!("{}", Version(0x0001_0400)), "1.4.0");
    }
}
