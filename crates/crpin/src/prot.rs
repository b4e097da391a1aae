//! `cr.arch.cr0-wp`, `cr.arch.smep`, `cr.arch.smap`, `cr.arch.umip`: the
//! protections CR0.WP and CR4.SMEP/SMAP/UMIP switch on, seen through the
//! accesses they must stop (SDM Vol. 3 §4.6 "Access Rights", §2.5 UMIP).
//!
//! These need more than register access: a page whose mapping the check
//! chooses, supervisor accesses to it, and instructions run at CPL 3. That
//! is the [`Mmu`] extension of [`Cpu`]. What a fault means (which #PF
//! error-code bits, which CR2) is decided here, so it is tested on the host.
//!
//! Each check turns its bit on, looks, turns it off, looks, and puts the
//! register back as it found it (`restored`). Toggling these bits is safe
//! under the [`Cpu`] contract: the guest's own code, data and stack are
//! supervisor pages, and nothing but the check touches the test page.

use crate::cpu::{Cpu, CpuidBit, Fault};
use crate::regs::{cr0, cr4, feature};
use core::fmt::{self, Write};
use ukci_protocol::Reporter;

/// Page-fault error-code bits (SDM Vol. 3 §4.7).
pub mod pf {
    pub const P: u64 = 1 << 0;
    pub const W: u64 = 1 << 1;
    pub const U: u64 = 1 << 2;
    pub const RSVD: u64 = 1 << 3;
    pub const ID: u64 = 1 << 4;
    pub const PK: u64 = 1 << 5;
}

/// The #PF vector.
pub const PF_VECTOR: u8 = 14;

/// How the check's test page is mapped (always present, at its own address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prot {
    /// U/S = 1.
    pub user: bool,
    /// R/W = 1.
    pub writable: bool,
    /// Executable (XD = 0).
    pub exec: bool,
}

impl Prot {
    pub const KERNEL_RW: Prot = Prot {
        user: false,
        writable: true,
        exec: false,
    };
    pub const KERNEL_RO: Prot = Prot {
        user: false,
        writable: false,
        exec: false,
    };
    pub const USER_RX: Prot = Prot {
        user: true,
        writable: false,
        exec: true,
    };
    pub const USER_RW: Prot = Prot {
        user: true,
        writable: true,
        exec: false,
    };
}

/// The instructions CR4.UMIP forbids at CPL > 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UmipInsn {
    Sgdt,
    Sidt,
    Sldt,
    Smsw,
    Str,
}

impl UmipInsn {
    pub const ALL: [UmipInsn; 5] = [
        UmipInsn::Sgdt,
        UmipInsn::Sidt,
        UmipInsn::Sldt,
        UmipInsn::Smsw,
        UmipInsn::Str,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            UmipInsn::Sgdt => "sgdt",
            UmipInsn::Sidt => "sidt",
            UmipInsn::Sldt => "sldt",
            UmipInsn::Smsw => "smsw",
            UmipInsn::Str => "str",
        }
    }
}

/// Page-level access for the protection checks. The guest implements it
/// with its page tables, the exception table and its ring-3 runner.
pub trait Mmu: Cpu {
    /// Maps the check's test page with `prot` and returns its address. The
    /// contents stay what they were.
    fn map_test_page(&mut self, prot: Prot) -> u64;
    /// A one-byte read at CPL 0; with `ac`, EFLAGS.AC is set around it
    /// (STAC ... CLAC) and clear again afterwards, fault or not.
    fn read_u8(&mut self, addr: u64, ac: bool) -> Result<u8, Fault>;
    /// A one-byte write at CPL 0; `ac` as for [`Mmu::read_u8`].
    fn write_u8(&mut self, addr: u64, value: u8, ac: bool) -> Result<(), Fault>;
    /// A near call at CPL 0 to `addr`, which holds a RET. A fault on the
    /// fetch there comes back as `Err`.
    fn call(&mut self, addr: u64) -> Result<(), Fault>;
    /// Runs `insn` at CPL 3 and returns what it stored (the descriptor-table
    /// base for SGDT/SIDT, the selector or MSW otherwise).
    fn user_insn(&mut self, insn: UmipInsn) -> Result<u64, Fault>;
}

/// A page fault the architecture requires: #PF at `addr` with the
/// error-code bits `set` present and `clear` absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfRule {
    pub set: u64,
    pub clear: u64,
}

impl PfRule {
    /// A supervisor write to a read-only page with CR0.WP = 1.
    pub const WP_WRITE: PfRule = PfRule {
        set: pf::P | pf::W,
        clear: pf::U | pf::ID | pf::RSVD | pf::PK,
    };
    /// A supervisor fetch from a user page with CR4.SMEP = 1.
    pub const SMEP_FETCH: PfRule = PfRule {
        set: pf::P | pf::ID,
        clear: pf::U | pf::W | pf::RSVD | pf::PK,
    };
    /// A supervisor read of a user page with CR4.SMAP = 1, EFLAGS.AC = 0.
    pub const SMAP_READ: PfRule = PfRule {
        set: pf::P,
        clear: pf::U | pf::W | pf::ID | pf::RSVD | pf::PK,
    };
    /// A supervisor write to a user page with CR4.SMAP = 1, EFLAGS.AC = 0.
    pub const SMAP_WRITE: PfRule = PfRule {
        set: pf::P | pf::W,
        clear: pf::U | pf::ID | pf::RSVD | pf::PK,
    };

    /// Whether `fault` is exactly this #PF, at `addr`.
    pub fn holds(&self, fault: Option<Fault>, addr: u64) -> bool {
        fault.is_some_and(|f| {
            f.vector == PF_VECTOR
                && f.error_code & self.set == self.set
                && f.error_code & self.clear == 0
                && f.cr2 == addr
        })
    }
}

/// `vector=14 error=0x3 cr2=0x...`, `vector=13 error=0x0`, or `vector=none`.
struct Seen(Option<Fault>);

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("vector=none"),
            Some(x) if x.vector == PF_VECTOR => write!(
                f,
                "vector={} error={:#x} cr2={:#x}",
                x.vector, x.error_code, x.cr2
            ),
            Some(x) => write!(f, "vector={} error={:#x}", x.vector, x.error_code),
        }
    }
}

#[derive(Clone, Copy)]
enum Reg {
    Cr0,
    Cr4,
}

impl Reg {
    fn read<C: Cpu + ?Sized>(self, cpu: &mut C) -> u64 {
        match self {
            Reg::Cr0 => cpu.read_cr0(),
            Reg::Cr4 => cpu.read_cr4(),
        }
    }

    fn write<C: Cpu + ?Sized>(self, cpu: &mut C, v: u64) -> Result<(), Fault> {
        match self {
            Reg::Cr0 => cpu.write_cr0(v),
            Reg::Cr4 => cpu.write_cr4(v),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Reg::Cr0 => "cr0",
            Reg::Cr4 => "cr4",
        }
    }
}

/// Sets or clears `bit`; the register's new value, or a FAIL `toggle`
/// (under the current prefix) saying why not.
fn toggle<C: Cpu + ?Sized, W: Write>(
    cpu: &mut C,
    r: &mut Reporter<W>,
    reg: Reg,
    bit: u64,
    on: bool,
) -> Option<u64> {
    let before = reg.read(cpu);
    let want = if on { before | bit } else { before & !bit };
    let fault = if want == before {
        None
    } else {
        reg.write(cpu, want).err()
    };
    let after = reg.read(cpu);
    if fault.is_none() && after & bit == want & bit {
        return Some(after);
    }
    let n = reg.name();
    r.check(
        false,
        "toggle",
        format_args!(
            "{n}.before={before:#x} {n}.written={want:#x} {} {n}.after={after:#x}",
            Seen(fault)
        ),
    );
    None
}

/// Writes the register back to `value`: the `restored` result.
fn restore<C: Cpu + ?Sized, W: Write>(cpu: &mut C, r: &mut Reporter<W>, reg: Reg, value: u64) {
    let fault = if reg.read(cpu) == value {
        None
    } else {
        reg.write(cpu, value).err()
    };
    let now = reg.read(cpu);
    let n = reg.name();
    r.check(
        fault.is_none() && now == value,
        "restored",
        format_args!("{n}.wanted={value:#x} {} {n}.now={now:#x}", Seen(fault)),
    );
}

/// Prepares the test page: `fill` written through a supervisor mapping, then
/// the page mapped with `prot`. A FAIL `setup` if the guest cannot even do that.
fn setup<C: Mmu + ?Sized, W: Write>(
    cpu: &mut C,
    r: &mut Reporter<W>,
    fill: u8,
    prot: Prot,
) -> Option<u64> {
    let addr = cpu.map_test_page(Prot::KERNEL_RW);
    if let Err(f) = cpu.write_u8(addr, fill, false) {
        r.check(
            false,
            "setup",
            format_args!("addr={addr:#x} supervisor write {}", Seen(Some(f))),
        );
        return None;
    }
    Some(cpu.map_test_page(prot))
}

fn skip_absent<C: Cpu + ?Sized, W: Write>(
    cpu: &mut C,
    r: &mut Reporter<W>,
    name: &str,
    bit: CpuidBit,
) -> bool {
    if bit.present(cpu) {
        return false;
    }
    r.skip(name, format_args!("{bit} is clear"));
    true
}

const OLD: u8 = 0x5a;
const NEW: u8 = 0xa5;

/// `cr.arch.cr0-wp`: a supervisor write to a read-only page.
///
/// Sub-results: `wp-on: write: fault` (#PF with P|W, not U, CR2 = the page),
/// `wp-on: write: unchanged` (the byte kept its value), `wp-off: write:
/// accepted`, `wp-off: write: applied`, `restored` (CR0 as before).
pub fn check_cr0_wp<C: Mmu + ?Sized, W: Write>(cpu: &mut C, r: &mut Reporter<W>) {
    r.push(crate::CR0_WP);
    let saved = cpu.read_cr0();
    if let Some(addr) = setup(cpu, r, OLD, Prot::KERNEL_RO) {
        r.push("wp-on");
        if let Some(cr0) = toggle(cpu, r, Reg::Cr0, cr0::WP, true) {
            let fault = cpu.write_u8(addr, NEW, false).err();
            r.check(
                PfRule::WP_WRITE.holds(fault, addr),
                "write: fault",
                format_args!("cr0={cr0:#x} addr={addr:#x} {}", Seen(fault)),
            );
            let now = cpu.read_u8(addr, false);
            r.check(
                now == Ok(OLD),
                "write: unchanged",
                format_args!(
                    "addr={addr:#x} byte.before={OLD:#x} byte.after={}",
                    Byte(now)
                ),
            );
        }
        r.pop();
        r.push("wp-off");
        if let Some(cr0) = toggle(cpu, r, Reg::Cr0, cr0::WP, false) {
            let fault = cpu.write_u8(addr, NEW, false).err();
            r.check(
                fault.is_none(),
                "write: accepted",
                format_args!("cr0={cr0:#x} addr={addr:#x} {}", Seen(fault)),
            );
            let now = cpu.read_u8(addr, false);
            r.check(
                now == Ok(NEW),
                "write: applied",
                format_args!(
                    "addr={addr:#x} byte.written={NEW:#x} byte.after={}",
                    Byte(now)
                ),
            );
        }
        r.pop();
    }
    restore(cpu, r, Reg::Cr0, saved);
    r.pop();
}

/// A byte read back, or the fault reading it raised.
struct Byte(Result<u8, Fault>);

impl fmt::Display for Byte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(b) => write!(f, "{b:#x}"),
            Err(x) => write!(f, "{x}"),
        }
    }
}

/// RET: what the user page holds for the SMEP fetch.
const RET: u8 = 0xc3;

/// `cr.arch.smep`: a supervisor call into a user page. SKIP when CPUID
/// lacks SMEP.
///
/// Sub-results: `smep-on: call: fault` (#PF with P|I/D, not U or W, CR2 =
/// the page), `smep-off: call: runs`, `restored` (CR4 as before).
pub fn check_smep<C: Mmu + ?Sized, W: Write>(cpu: &mut C, r: &mut Reporter<W>) {
    if skip_absent(cpu, r, crate::SMEP, feature::SMEP) {
        return;
    }
    r.push(crate::SMEP);
    let saved = cpu.read_cr4();
    if let Some(addr) = setup(cpu, r, RET, Prot::USER_RX) {
        r.push("smep-on");
        if let Some(cr4) = toggle(cpu, r, Reg::Cr4, cr4::SMEP, true) {
            let fault = cpu.call(addr).err();
            r.check(
                PfRule::SMEP_FETCH.holds(fault, addr),
                "call: fault",
                format_args!("cr4={cr4:#x} addr={addr:#x} {}", Seen(fault)),
            );
        }
        r.pop();
        r.push("smep-off");
        if let Some(cr4) = toggle(cpu, r, Reg::Cr4, cr4::SMEP, false) {
            let fault = cpu.call(addr).err();
            r.check(
                fault.is_none(),
                "call: runs",
                format_args!("cr4={cr4:#x} addr={addr:#x} {}", Seen(fault)),
            );
        }
        r.pop();
    }
    restore(cpu, r, Reg::Cr4, saved);
    r.pop();
}

/// `cr.arch.smap`: supervisor reads and writes of a user page. SKIP when
/// CPUID lacks SMAP (STAC/CLAC would #UD).
///
/// Sub-results: `smap-on: read: fault`, `smap-on: write: fault` (#PF with P
/// (|W), not U, CR2 = the page), `smap-on: stac-read: accepted`,
/// `smap-on: stac-write: accepted`, `smap-on: stac-write: applied`,
/// `smap-on: after-clac: read: fault` (AC is clear again),
/// `smap-off: read: accepted`, `smap-off: write: accepted`, `restored`.
pub fn check_smap<C: Mmu + ?Sized, W: Write>(cpu: &mut C, r: &mut Reporter<W>) {
    if skip_absent(cpu, r, crate::SMAP, feature::SMAP) {
        return;
    }
    r.push(crate::SMAP);
    let saved = cpu.read_cr4();
    if let Some(addr) = setup(cpu, r, OLD, Prot::USER_RW) {
        r.push("smap-on");
        if let Some(cr4) = toggle(cpu, r, Reg::Cr4, cr4::SMAP, true) {
            let fault = cpu.read_u8(addr, false).err();
            r.check(
                PfRule::SMAP_READ.holds(fault, addr),
                "read: fault",
                format_args!("cr4={cr4:#x} addr={addr:#x} {}", Seen(fault)),
            );
            let fault = cpu.write_u8(addr, NEW, false).err();
            r.check(
                PfRule::SMAP_WRITE.holds(fault, addr),
                "write: fault",
                format_args!("cr4={cr4:#x} addr={addr:#x} {}", Seen(fault)),
            );
            let got = cpu.read_u8(addr, true);
            r.check(
                got == Ok(OLD),
                "stac-read: accepted",
                format_args!(
                    "cr4={cr4:#x} addr={addr:#x} byte.expected={OLD:#x} byte={}",
                    Byte(got)
                ),
            );
            let fault = cpu.write_u8(addr, NEW, true).err();
            r.check(
                fault.is_none(),
                "stac-write: accepted",
                format_args!("cr4={cr4:#x} addr={addr:#x} {}", Seen(fault)),
            );
            let got = cpu.read_u8(addr, true);
            r.check(
                got == Ok(NEW),
                "stac-write: applied",
                format_args!(
                    "cr4={cr4:#x} addr={addr:#x} byte.written={NEW:#x} byte.after={}",
                    Byte(got)
                ),
            );
            let fault = cpu.read_u8(addr, false).err();
            r.check(
                PfRule::SMAP_READ.holds(fault, addr),
                "after-clac: read: fault",
                format_args!("cr4={cr4:#x} addr={addr:#x} {}", Seen(fault)),
            );
        }
        r.pop();
        r.push("smap-off");
        if let Some(cr4) = toggle(cpu, r, Reg::Cr4, cr4::SMAP, false) {
            let got = cpu.read_u8(addr, false);
            r.check(
                got.is_ok(),
                "read: accepted",
                format_args!("cr4={cr4:#x} addr={addr:#x} byte={}", Byte(got)),
            );
            let fault = cpu.write_u8(addr, OLD, false).err();
            r.check(
                fault.is_none(),
                "write: accepted",
                format_args!("cr4={cr4:#x} addr={addr:#x} {}", Seen(fault)),
            );
        }
        r.pop();
    }
    restore(cpu, r, Reg::Cr4, saved);
    r.pop();
}

/// `cr.arch.umip`: SGDT, SIDT, SLDT, SMSW and STR at CPL 3. SKIP when CPUID
/// lacks UMIP.
///
/// Sub-results: `umip-on: <insn>: fault` (#GP(0)) and `umip-off: <insn>:
/// runs` for each of `sgdt`, `sidt`, `sldt`, `smsw`, `str`, then `restored`.
pub fn check_umip<C: Mmu + ?Sized, W: Write>(cpu: &mut C, r: &mut Reporter<W>) {
    if skip_absent(cpu, r, crate::UMIP, feature::UMIP) {
        return;
    }
    r.push(crate::UMIP);
    let saved = cpu.read_cr4();
    for (phase, on) in [("umip-on", true), ("umip-off", false)] {
        r.push(phase);
        if let Some(cr4) = toggle(cpu, r, Reg::Cr4, cr4::UMIP, on) {
            for insn in UmipInsn::ALL {
                let got = cpu.user_insn(insn);
                r.push(insn.name());
                match (on, got) {
                    (true, got) => r.check(
                        got.is_err_and(|f| f.is_gp0()),
                        "fault",
                        format_args!("cr4={cr4:#x} cpl=3 {}", Seen(got.err())),
                    ),
                    (false, Ok(v)) => r.check(
                        true,
                        "runs",
                        format_args!("cr4={cr4:#x} cpl=3 vector=none value={v:#x}"),
                    ),
                    (false, Err(f)) => r.check(
                        false,
                        "runs",
                        format_args!("cr4={cr4:#x} cpl=3 {}", Seen(Some(f))),
                    ),
                };
                r.pop();
            }
        }
        r.pop();
    }
    restore(cpu, r, Reg::Cr4, saved);
    r.pop();
}
