//! The protection checks (`cr.arch.cr0-wp`, `smep`, `smap`, `umip`) against
//! a page-level model: they pass on the architecture, fail by name when a
//! protection is not enforced or faults the wrong way, skip with the CPUID
//! bit when the feature is absent, and leave CR0/CR4 as they found them.

mod common;

use common::run;
use ukci_crpin::regs::{cr0, cr4};
use ukci_crpin::{Cpu, Fault, Mmu, PfRule, Prot, UmipInsn, prot::pf};
use ukci_protocol::Reporter;
use ukci_protocol::line::Status;

const PAGE: u64 = 0x20_0000;

/// Ways the model departs from the architecture.
#[derive(Clone, Copy, Debug, Default)]
struct Quirks {
    wp_ignored: bool,
    smep_ignored: bool,
    /// SMEP faults but without the I/D bit in the error code.
    smep_no_id_bit: bool,
    /// STAC does not lift SMAP.
    ac_ignored: bool,
    umip_ignored: bool,
    /// MOV to CR4 refuses every change.
    cr4_frozen: bool,
}

struct Model {
    cr0: u64,
    cr4: u64,
    leaf7_ebx: u32,
    leaf7_ecx: u32,
    prot: Prot,
    byte: u8,
    q: Quirks,
}

const SMEP_BIT: u32 = 1 << 7;
const SMAP_BIT: u32 = 1 << 20;
const UMIP_BIT: u32 = 1 << 2;

impl Model {
    fn new() -> Model {
        Model {
            cr0: cr0::PE | cr0::ET | cr0::NE | cr0::WP | cr0::PG,
            cr4: cr4::PAE,
            leaf7_ebx: SMEP_BIT | SMAP_BIT,
            leaf7_ecx: UMIP_BIT,
            prot: Prot::KERNEL_RW,
            byte: 0,
            q: Quirks::default(),
        }
    }

    fn quirks(mut self, q: Quirks) -> Model {
        self.q = q;
        self
    }

    /// A supervisor data access: the #PF it takes, if any.
    fn data_access(&self, addr: u64, write: bool, ac: bool) -> Result<(), Fault> {
        let w = if write { pf::W } else { 0 };
        let ac_lifts = ac && !self.q.ac_ignored;
        if self.prot.user && self.cr4 & cr4::SMAP != 0 && !ac_lifts {
            return Err(Fault::pf(pf::P | w, addr));
        }
        if write && !self.prot.writable && self.cr0 & cr0::WP != 0 && !self.q.wp_ignored {
            return Err(Fault::pf(pf::P | pf::W, addr));
        }
        Ok(())
    }
}

impl Cpu for Model {
    fn cpuid(&mut self, leaf: u32, _subleaf: u32) -> [u32; 4] {
        match leaf {
            0 => [7, 0, 0, 0],
            7 => [0, self.leaf7_ebx, self.leaf7_ecx, 0],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            _ => [0; 4],
        }
    }
    fn read_cr0(&mut self) -> u64 {
        self.cr0
    }
    fn read_cr3(&mut self) -> u64 {
        0x10_0000
    }
    fn read_cr4(&mut self) -> u64 {
        self.cr4
    }
    fn write_cr0(&mut self, value: u64) -> Result<(), Fault> {
        self.cr0 = value;
        Ok(())
    }
    fn write_cr4(&mut self, value: u64) -> Result<(), Fault> {
        if self.q.cr4_frozen && value != self.cr4 {
            return Err(Fault::gp(0));
        }
        self.cr4 = value;
        Ok(())
    }
    fn rdmsr(&mut self, _: u32) -> Result<u64, Fault> {
        Err(Fault::gp(0))
    }
    fn wrmsr(&mut self, _: u32, _: u64) -> Result<(), Fault> {
        Err(Fault::gp(0))
    }
    fn hypercall(&mut self, _: u64, _: [u64; 4]) -> Result<u64, Fault> {
        Err(Fault::ud())
    }
}

impl Mmu for Model {
    fn map_test_page(&mut self, prot: Prot) -> u64 {
        self.prot = prot;
        PAGE
    }
    fn read_u8(&mut self, addr: u64, ac: bool) -> Result<u8, Fault> {
        self.data_access(addr, false, ac)?;
        Ok(self.byte)
    }
    fn write_u8(&mut self, addr: u64, value: u8, ac: bool) -> Result<(), Fault> {
        self.data_access(addr, true, ac)?;
        self.byte = value;
        Ok(())
    }
    fn call(&mut self, addr: u64) -> Result<(), Fault> {
        if self.prot.user && self.cr4 & cr4::SMEP != 0 && !self.q.smep_ignored {
            let id = if self.q.smep_no_id_bit { 0 } else { pf::ID };
            return Err(Fault::pf(pf::P | id, addr));
        }
        assert_eq!(self.byte, 0xc3, "the check calls only a RET");
        Ok(())
    }
    fn user_insn(&mut self, insn: UmipInsn) -> Result<u64, Fault> {
        if self.cr4 & cr4::UMIP != 0 && !self.q.umip_ignored {
            return Err(Fault::gp(0));
        }
        Ok(match insn {
            UmipInsn::Smsw => self.cr0 & 0xffff,
            _ => 0x1000,
        })
    }
}

type Check = fn(&mut Model, &mut Reporter<String>);
const CR0_WP: Check = ukci_crpin::check_cr0_wp::<Model, String>;
const SMEP: Check = ukci_crpin::check_smep::<Model, String>;
const SMAP: Check = ukci_crpin::check_smap::<Model, String>;
const UMIP: Check = ukci_crpin::check_umip::<Model, String>;
const ALL: [Check; 4] = [CR0_WP, SMEP, SMAP, UMIP];

#[test]
fn every_protection_holds_on_the_architecture_and_the_registers_come_back() {
    for check in ALL {
        let mut m = Model::new();
        let (c0, c4) = (m.cr0, m.cr4);
        let o = run(check, &mut m);
        o.assert_all_pass();
        o.assert_unique_names();
        assert_eq!((m.cr0, m.cr4), (c0, c4), "{}", o.text);
    }
}

#[test]
fn cr0_wp_names_and_details() {
    let o = run(CR0_WP, &mut Model::new());
    assert_eq!(
        o.names(),
        [
            "cr.arch.cr0-wp: wp-on: write: fault",
            "cr.arch.cr0-wp: wp-on: write: unchanged",
            "cr.arch.cr0-wp: wp-off: write: accepted",
            "cr.arch.cr0-wp: wp-off: write: applied",
            "cr.arch.cr0-wp: restored",
        ]
    );
    assert_eq!(
        o.get("cr.arch.cr0-wp: wp-on: write: fault")
            .detail
            .as_deref(),
        Some("cr0=0x80010031 addr=0x200000 vector=14 error=0x3 cr2=0x200000")
    );
}

#[test]
fn a_protection_that_is_not_enforced_fails_by_name() {
    let cases: [(Check, Quirks, &[&str]); 4] = [
        (
            CR0_WP,
            Quirks {
                wp_ignored: true,
                ..Quirks::default()
            },
            &[
                "cr.arch.cr0-wp: wp-on: write: fault",
                "cr.arch.cr0-wp: wp-on: write: unchanged",
            ],
        ),
        (
            SMEP,
            Quirks {
                smep_ignored: true,
                ..Quirks::default()
            },
            &["cr.arch.smep: smep-on: call: fault"],
        ),
        (
            SMAP,
            Quirks {
                ac_ignored: true,
                ..Quirks::default()
            },
            &[
                "cr.arch.smap: smap-on: stac-read: accepted",
                "cr.arch.smap: smap-on: stac-write: accepted",
                "cr.arch.smap: smap-on: stac-write: applied",
            ],
        ),
        (
            UMIP,
            Quirks {
                umip_ignored: true,
                ..Quirks::default()
            },
            &[
                "cr.arch.umip: umip-on: sgdt: fault",
                "cr.arch.umip: umip-on: sidt: fault",
                "cr.arch.umip: umip-on: sldt: fault",
                "cr.arch.umip: umip-on: smsw: fault",
                "cr.arch.umip: umip-on: str: fault",
            ],
        ),
    ];
    for (check, q, want) in cases {
        let o = run(check, &mut Model::new().quirks(q));
        assert_eq!(o.failures(), want, "{}", o.text);
    }
}

#[test]
fn a_fault_with_the_wrong_error_code_is_a_failure() {
    let q = Quirks {
        smep_no_id_bit: true,
        ..Quirks::default()
    };
    let o = run(SMEP, &mut Model::new().quirks(q));
    assert_eq!(o.failures(), ["cr.arch.smep: smep-on: call: fault"]);
    assert_eq!(
        o.get("cr.arch.smep: smep-on: call: fault")
            .detail
            .as_deref(),
        Some("cr4=0x100020 addr=0x200000 vector=14 error=0x1 cr2=0x200000")
    );
}

#[test]
fn absent_features_skip_with_the_cpuid_bit() {
    let mut m = Model::new();
    m.leaf7_ebx = 0;
    m.leaf7_ecx = 0;
    for (check, name, bit) in [
        (SMEP, "cr.arch.smep", "CPUID.7.0:EBX.SMEP[bit 7] is clear"),
        (SMAP, "cr.arch.smap", "CPUID.7.0:EBX.SMAP[bit 20] is clear"),
        (UMIP, "cr.arch.umip", "CPUID.7.0:ECX.UMIP[bit 2] is clear"),
    ] {
        let o = run(check, &mut m);
        assert_eq!(o.assert_skipped(name), bit);
    }
}

#[test]
fn a_refused_toggle_is_reported_and_the_rest_of_that_phase_skipped() {
    let q = Quirks {
        cr4_frozen: true,
        ..Quirks::default()
    };
    let o = run(UMIP, &mut Model::new().quirks(q));
    assert_eq!(
        o.names(),
        [
            "cr.arch.umip: umip-on: toggle",
            "cr.arch.umip: umip-off: sgdt: runs",
            "cr.arch.umip: umip-off: sidt: runs",
            "cr.arch.umip: umip-off: sldt: runs",
            "cr.arch.umip: umip-off: smsw: runs",
            "cr.arch.umip: umip-off: str: runs",
            "cr.arch.umip: restored",
        ]
    );
    assert_eq!(o.status("cr.arch.umip: umip-on: toggle"), Status::Fail);
}

#[test]
fn pf_rules_need_the_vector_the_bits_and_the_address() {
    let r = PfRule::WP_WRITE;
    assert!(r.holds(Some(Fault::pf(pf::P | pf::W, PAGE)), PAGE));
    assert!(!r.holds(Some(Fault::pf(pf::P | pf::W, PAGE + 1)), PAGE));
    assert!(!r.holds(Some(Fault::pf(pf::P | pf::W | pf::U, PAGE)), PAGE));
    assert!(!r.holds(Some(Fault::pf(pf::P, PAGE)), PAGE));
    assert!(!r.holds(Some(Fault::gp(0)), PAGE));
    assert!(!r.holds(None, PAGE));
    assert!(PfRule::SMEP_FETCH.holds(Some(Fault::pf(pf::P | pf::ID, PAGE)), PAGE));
    assert!(!PfRule::SMAP_READ.holds(Some(Fault::pf(pf::P | pf::W, PAGE)), PAGE));
}
