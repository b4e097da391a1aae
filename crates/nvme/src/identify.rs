//! Parsers for Identify data (4096-byte pages): controller (CNS 1),
//! namespace (CNS 0), active namespace list (CNS 2), primary controller
//! capabilities (CNS 0x14) and the secondary controller list (CNS 0x15).
//! Builders for the same layouts serve the model controller.

use core::fmt;

use crate::cmd::{get16, get32, get64};

pub const SIZE: usize = 4096;

/// An ASCII field as text, without the trailing spaces the format pads with.
/// Bytes that are not printable ASCII make it `None`.
pub fn ascii(field: &[u8]) -> Option<&str> {
    let end = field
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    let s = &field[..end];
    s.iter()
        .all(|b| (0x20..0x7f).contains(b))
        .then(|| core::str::from_utf8(s).ok())
        .flatten()
}

/// Identify Controller (CNS 1): the fields ukci uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerData {
    pub vid: u16,
    pub ssvid: u16,
    pub sn: [u8; 20],
    pub mn: [u8; 40],
    pub fr: [u8; 8],
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities; bit 2
    /// says the controller is associated with an SR-IOV virtual function.
    pub cmic: u8,
    /// Maximum Data Transfer Size: 2^MDTS minimum-size pages; 0 = no limit.
    pub mdts: u8,
    pub cntlid: u16,
    pub ver: u32,
    /// 0 = not reported, 1 = I/O, 2 = discovery, 3 = administrative.
    pub cntrltype: u8,
    /// Optional Admin Command Support; bit 7 = Virtualization Management.
    pub oacs: u16,
    /// Submission queue entry size: bits 3:0 required (log2), 7:4 maximum.
    pub sqes: u8,
    pub cqes: u8,
    pub maxcmd: u16,
    /// Number of Namespaces: the largest valid NSID.
    pub nn: u32,
    pub oncs: u16,
    /// Volatile Write Cache present (bit 0).
    pub vwc: u8,
}

pub const OACS_NS_MANAGEMENT: u16 = 1 << 3;
pub const OACS_VIRTUALIZATION_MANAGEMENT: u16 = 1 << 7;
pub const CMIC_SRIOV_VF: u8 = 1 << 2;

impl ControllerData {
    pub fn parse(d: &[u8]) -> ControllerData {
        let mut sn = [0; 20];
        sn.copy_from_slice(&d[4..24]);
        let mut mn = [0; 40];
        mn.copy_from_slice(&d[24..64]);
        let mut fr = [0; 8];
        fr.copy_from_slice(&d[64..72]);
        ControllerData {
            vid: get16(d, 0),
            ssvid: get16(d, 2),
            sn,
            mn,
            fr,
            cmic: d[76],
            mdts: d[77],
            cntlid: get16(d, 78),
            ver: get32(d, 80),
            cntrltype: d[111],
            oacs: get16(d, 256),
            sqes: d[512],
            cqes: d[513],
            maxcmd: get16(d, 514),
            nn: get32(d, 516),
            oncs: get16(d, 520),
            vwc: d[525],
        }
    }

    /// Writes the fields into a zeroed identify page (for the model).
    pub fn write(&self, d: &mut [u8]) {
        d[0..2].copy_from_slice(&self.vid.to_le_bytes());
        d[2..4].copy_from_slice(&self.ssvid.to_le_bytes());
        d[4..24].copy_from_slice(&self.sn);
        d[24..64].copy_from_slice(&self.mn);
        d[64..72].copy_from_slice(&self.fr);
        d[76] = self.cmic;
        d[77] = self.mdts;
        d[78..80].copy_from_slice(&self.cntlid.to_le_bytes());
        d[80..84].copy_from_slice(&self.ver.to_le_bytes());
        d[111] = self.cntrltype;
        d[256..258].copy_from_slice(&self.oacs.to_le_bytes());
        d[512] = self.sqes;
        d[513] = self.cqes;
        d[514..516].copy_from_slice(&self.maxcmd.to_le_bytes());
        d[516..520].copy_from_slice(&self.nn.to_le_bytes());
        d[520..522].copy_from_slice(&self.oncs.to_le_bytes());
        d[525] = self.vwc;
    }

    pub fn serial(&self) -> &str {
        ascii(&self.sn).unwrap_or("<not ASCII>")
    }
    pub fn model(&self) -> &str {
        ascii(&self.mn).unwrap_or("<not ASCII>")
    }
    pub fn firmware(&self) -> &str {
        ascii(&self.fr).unwrap_or("<not ASCII>")
    }

    /// MDTS in bytes for a minimum page size of `mps_min`; `None` = no limit.
    pub fn max_transfer(&self, mps_min: u64) -> Option<u64> {
        (self.mdts != 0).then(|| mps_min << self.mdts.min(40))
    }

    pub fn has_virtualization_management(&self) -> bool {
        self.oacs & OACS_VIRTUALIZATION_MANAGEMENT != 0
    }
}

/// One LBA format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbaFormat {
    /// Metadata bytes per block.
    pub ms: u16,
    /// log2 of the block size.
    pub lbads: u8,
    /// Relative performance.
    pub rp: u8,
}

impl LbaFormat {
    pub fn block_size(&self) -> u64 {
        if self.lbads >= 9 && self.lbads < 32 {
            1 << self.lbads
        } else {
            0
        }
    }
}

/// Identify Namespace (CNS 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceData {
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    pub nsfeat: u8,
    /// Number of LBA formats, 0-based.
    pub nlbaf: u8,
    pub flbas: u8,
    pub nmic: u8,
    pub lbaf: [LbaFormat; 64],
}

impl NamespaceData {
    pub fn parse(d: &[u8]) -> NamespaceData {
        let mut lbaf = [LbaFormat::default(); 64];
        for (i, f) in lbaf.iter_mut().enumerate() {
            let v = get32(d, 128 + 4 * i);
            *f = LbaFormat {
                ms: v as u16,
                lbads: (v >> 16) as u8,
                rp: ((v >> 24) & 3) as u8,
            };
        }
        NamespaceData {
            nsze: get64(d, 0),
            ncap: get64(d, 8),
            nuse: get64(d, 16),
            nsfeat: d[24],
            nlbaf: d[25],
            flbas: d[26],
            nmic: d[30],
            lbaf,
        }
    }

    pub fn write(&self, d: &mut [u8]) {
        d[0..8].copy_from_slice(&self.nsze.to_le_bytes());
        d[8..16].copy_from_slice(&self.ncap.to_le_bytes());
        d[16..24].copy_from_slice(&self.nuse.to_le_bytes());
        d[24] = self.nsfeat;
        d[25] = self.nlbaf;
        d[26] = self.flbas;
        d[30] = self.nmic;
        for (i, f) in self.lbaf.iter().enumerate() {
            let v = f.ms as u32 | (f.lbads as u32) << 16 | (f.rp as u32 & 3) << 24;
            d[128 + 4 * i..132 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
    }

    /// The index of the format in use: FLBAS bits 3:0, with bits 6:5 as the
    /// upper bits when more than 16 formats exist.
    pub fn format_index(&self) -> usize {
        let lo = (self.flbas & 0xf) as usize;
        if self.nlbaf >= 16 {
            lo | (((self.flbas >> 5) & 3) as usize) << 4
        } else {
            lo
        }
    }

    pub fn format(&self) -> LbaFormat {
        self.lbaf[self.format_index().min(63)]
    }

    pub fn block_size(&self) -> u64 {
        self.format().block_size()
    }

    /// Metadata bytes travel inside the data buffer (extended LBA), which
    /// a plain PRP transfer does not account for.
    pub fn metadata_inline(&self) -> bool {
        self.format().ms != 0 && self.flbas & (1 << 4) != 0
    }
}

/// Active namespace IDs from a CNS 2 page: ascending, ended by a zero.
pub fn namespace_ids(d: &[u8]) -> impl Iterator<Item = u32> + '_ {
    d.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&id| id != 0)
}

/// Primary Controller Capabilities (CNS 0x14).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrimaryCtrlCaps {
    pub cntlid: u16,
    pub portid: u16,
    /// Controller resource types: bit 0 VQ, bit 1 VI.
    pub crt: u8,
    /// Flexible queue resources: total, assigned to secondaries, allocated to
    /// the primary, the primary's private ones, per-secondary maximum,
    /// granularity.
    pub vqfrt: u32,
    pub vqrfa: u32,
    pub vqrfap: u16,
    pub vqprt: u16,
    pub vqfrsm: u16,
    pub vqgran: u16,
    /// The same for interrupt resources.
    pub vifrt: u32,
    pub virfa: u32,
    pub virfap: u16,
    pub viprt: u16,
    pub vifrsm: u16,
    pub vigran: u16,
}

impl PrimaryCtrlCaps {
    pub fn parse(d: &[u8]) -> PrimaryCtrlCaps {
        PrimaryCtrlCaps {
            cntlid: get16(d, 0),
            portid: get16(d, 2),
            crt: d[4],
            vqfrt: get32(d, 32),
            vqrfa: get32(d, 36),
            vqrfap: get16(d, 40),
            vqprt: get16(d, 42),
            vqfrsm: get16(d, 44),
            vqgran: get16(d, 46),
            vifrt: get32(d, 64),
            virfa: get32(d, 68),
            virfap: get16(d, 72),
            viprt: get16(d, 74),
            vifrsm: get16(d, 76),
            vigran: get16(d, 78),
        }
    }

    pub fn write(&self, d: &mut [u8]) {
        d[0..2].copy_from_slice(&self.cntlid.to_le_bytes());
        d[2..4].copy_from_slice(&self.portid.to_le_bytes());
        d[4] = self.crt;
        d[32..36].copy_from_slice(&self.vqfrt.to_le_bytes());
        d[36..40].copy_from_slice(&self.vqrfa.to_le_bytes());
        d[40..42].copy_from_slice(&self.vqrfap.to_le_bytes());
        d[42..44].copy_from_slice(&self.vqprt.to_le_bytes());
        d[44..46].copy_from_slice(&self.vqfrsm.to_le_bytes());
        d[46..48].copy_from_slice(&self.vqgran.to_le_bytes());
        d[64..68].copy_from_slice(&self.vifrt.to_le_bytes());
        d[68..72].copy_from_slice(&self.virfa.to_le_bytes());
        d[72..74].copy_from_slice(&self.virfap.to_le_bytes());
        d[74..76].copy_from_slice(&self.viprt.to_le_bytes());
        d[76..78].copy_from_slice(&self.vifrsm.to_le_bytes());
        d[78..80].copy_from_slice(&self.vigran.to_le_bytes());
    }

    /// The primary holds flexible queues or interrupts (VQRFAP or VIRFAP is
    /// not zero), which it must give up before secondaries can get any.
    pub fn primary_holds_flexible(&self) -> bool {
        self.vqrfap != 0 || self.virfap != 0
    }
}

/// One entry of the Secondary Controller List (CNS 0x15).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecondaryCtrl {
    pub scid: u16,
    pub pcid: u16,
    /// Secondary Controller State: bit 0 = online.
    pub scs: u8,
    /// Virtual function number, from 1.
    pub vfn: u16,
    pub nvq: u16,
    pub nvi: u16,
}

impl SecondaryCtrl {
    pub const SIZE: usize = 32;

    pub fn online(&self) -> bool {
        self.scs & 1 != 0
    }

    /// One 32-byte entry.
    pub fn parse(e: &[u8]) -> SecondaryCtrl {
        SecondaryCtrl {
            scid: get16(e, 0),
            pcid: get16(e, 2),
            scs: e[4],
            vfn: get16(e, 8),
            nvq: get16(e, 10),
            nvi: get16(e, 12),
        }
    }

    fn write(&self, e: &mut [u8]) {
        e[0..2].copy_from_slice(&self.scid.to_le_bytes());
        e[2..4].copy_from_slice(&self.pcid.to_le_bytes());
        e[4] = self.scs;
        e[8..10].copy_from_slice(&self.vfn.to_le_bytes());
        e[10..12].copy_from_slice(&self.nvq.to_le_bytes());
        e[12..14].copy_from_slice(&self.nvi.to_le_bytes());
    }
}

impl fmt::Display for SecondaryCtrl {
    /// `scid=1 vfn=1 online nvq=2 nvi=1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scid={} vfn={} {} nvq={} nvi={}",
            self.scid,
            self.vfn,
            if self.online() { "online" } else { "offline" },
            self.nvq,
            self.nvi
        )
    }
}

/// Maximum entries in one Secondary Controller List page.
pub const MAX_SECONDARIES_PER_PAGE: usize = 127;

/// The entries of a CNS 0x15 page (NUMID in byte 0, entries from byte 32).
pub fn secondary_controllers(d: &[u8]) -> impl Iterator<Item = SecondaryCtrl> + '_ {
    let n = (d[0] as usize).min(MAX_SECONDARIES_PER_PAGE);
    (0..n).map(move |i| SecondaryCtrl::parse(&d[32 + 32 * i..64 + 32 * i]))
}

/// Writes a CNS 0x15 page; entries past 127 are dropped.
pub fn write_secondary_controllers(entries: &[SecondaryCtrl], d: &mut [u8]) {
    let n = entries.len().min(MAX_SECONDARIES_PER_PAGE);
    d[0] = n as u8;
    for (i, e) in entries[..n].iter().enumerate() {
        e.write(&mut d[32 + 32 * i..64 + 32 * i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_like_controller() -> ControllerData {
        let mut sn = [b' '; 20];
        sn[..8].copy_from_slice(b"deadbeef");
        let mut mn = [b' '; 40];
        mn[..14].copy_from_slice(b"QEMU NVMe Ctrl");
        let mut fr = [b' '; 8];
        fr[..5].copy_from_slice(b"9.2.0");
        ControllerData {
            vid: 0x1b36,
            ssvid: 0x1af4,
            sn,
            mn,
            fr,
            cmic: 0,
            mdts: 7,
            cntlid: 1,
            ver: 0x0001_0400,
            cntrltype: 1,
            oacs: OACS_VIRTUALIZATION_MANAGEMENT,
            sqes: 0x66,
            cqes: 0x44,
            maxcmd: 0,
            nn: 256,
            oncs: 0,
            vwc: 1,
        }
    }

    #[test]
    fn controller_fields_sit_at_their_offsets() {
        let c = qemu_like_controller();
        let mut page = [0u8; SIZE];
        c.write(&mut page);
        assert_eq!(&page[0..2], &[0x36, 0x1b]);
        assert_eq!(&page[4..12], b"deadbeef");
        assert_eq!(page[77], 7);
        assert_eq!(&page[78..80], &[1, 0]);
        assert_eq!(page[256], 0x80);
        assert_eq!(&page[516..520], &[0, 1, 0, 0]);
        let back = ControllerData::parse(&page);
        assert_eq!(back, c);
        assert_eq!(back.serial(), "deadbeef");
        assert_eq!(back.model(), "QEMU NVMe Ctrl");
        assert_eq!(back.firmware(), "9.2.0");
        assert_eq!(back.max_transfer(4096), Some(512 * 1024));
        assert!(back.has_virtualization_management());
    }

    #[test]
    fn ascii_fields_trim_and_reject_binary() {
        assert_eq!(ascii(b"abc   "), Some("abc"));
        assert_eq!(ascii(b"ab c\0\0"), Some("ab c"));
        assert_eq!(ascii(b"      "), Some(""));
        assert_eq!(ascii(b"a\x01b "), None);
    }

    #[test]
    fn namespace_format_gives_the_block_size() {
        let mut page = [0u8; SIZE];
        page[0..8].copy_from_slice(&1000u64.to_le_bytes());
        page[8..16].copy_from_slice(&1000u64.to_le_bytes());
        page[25] = 1; // two formats
        page[26] = 1; // using format 1
        page[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
        page[132..136].copy_from_slice(&(12u32 << 16 | 8).to_le_bytes());
        let ns = NamespaceData::parse(&page);
        assert_eq!(ns.nsze, 1000);
        assert_eq!(ns.format_index(), 1);
        assert_eq!(ns.block_size(), 4096);
        assert_eq!(ns.format().ms, 8);
        assert!(!ns.metadata_inline());
        let mut again = [0u8; SIZE];
        ns.write(&mut again);
        assert_eq!(NamespaceData::parse(&again), ns);
        // More than 16 formats: FLBAS bits 6:5 extend the index.
        let mut wide = ns.clone();
        wide.nlbaf = 20;
        wide.flbas = 0x22;
        assert_eq!(wide.format_index(), 0x12);
        // A bogus LBADS gives no block size rather than a huge one.
        assert_eq!(
            LbaFormat {
                ms: 0,
                lbads: 3,
                rp: 0
            }
            .block_size(),
            0
        );
    }

    #[test]
    fn namespace_list_stops_at_zero() {
        let mut page = [0u8; SIZE];
        for (i, id) in [1u32, 2, 7].iter().enumerate() {
            page[4 * i..4 * i + 4].copy_from_slice(&id.to_le_bytes());
        }
        assert!(namespace_ids(&page).eq([1, 2, 7]));
        assert_eq!(namespace_ids(&[0u8; SIZE]).count(), 0);
    }

    #[test]
    fn primary_caps_parse_the_spec_offsets() {
        let mut page = [0u8; SIZE];
        page[4] = 3;
        page[32] = 4; // VQFRT
        page[40] = 4; // VQRFAP
        page[42] = 61; // VQPRT
        page[44] = 2; // VQFRSM
        page[64] = 2; // VIFRT
        page[76] = 1; // VIFRSM
        let c = PrimaryCtrlCaps::parse(&page);
        assert_eq!(
            (c.crt, c.vqfrt, c.vqrfap, c.vqprt, c.vqfrsm),
            (3, 4, 4, 61, 2)
        );
        assert_eq!((c.vifrt, c.vifrsm), (2, 1));
        assert!(c.primary_holds_flexible());
        let mut again = [0u8; SIZE];
        c.write(&mut again);
        assert_eq!(&again[..], &page[..]);
    }

    #[test]
    fn secondary_list_round_trips() {
        let entries = [
            SecondaryCtrl {
                scid: 1,
                pcid: 0,
                scs: 1,
                vfn: 1,
                nvq: 2,
                nvi: 1,
            },
            SecondaryCtrl {
                scid: 2,
                pcid: 0,
                scs: 0,
                vfn: 2,
                nvq: 0,
                nvi: 0,
            },
        ];
        let mut page = [0u8; SIZE];
        write_secondary_controllers(&entries, &mut page);
        assert_eq!(page[0], 2);
        // The reference driver reads SCID at 32, SCS at 36, NVQ at 42.
        assert_eq!((page[32], page[36], page[42]), (1, 1, 2));
        let back: std::vec::Vec<_> = secondary_controllers(&page).collect();
        assert_eq!(back, entries);
        assert!(back[0].online() && !back[1].online());
        assert_eq!(
            std::format!("{}", back[0]),
            "scid=1 vfn=1 online nvq=2 nvi=1"
        );
        assert_eq!(
            std::format!("{}", back[1]),
            "scid=2 vfn=2 offline nvq=0 nvi=0"
        );
    }

    #[test]
    fn flexible_resources_held_by_the_primary() {
        let none = PrimaryCtrlCaps {
            vqfrt: 4,
            vifrt: 2,
            ..PrimaryCtrlCaps::default()
        };
        assert!(!none.primary_holds_flexible());
        let vq = PrimaryCtrlCaps { vqrfap: 1, ..none };
        let vi = PrimaryCtrlCaps { virfap: 1, ..none };
        assert!(vq.primary_holds_flexible() && vi.primary_holds_flexible());
    }
}
