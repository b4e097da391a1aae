//! The few step shapes every check is built from. Each step is one prefix
//! (the action, e.g. `clear-wp`) with one result per thing observed
//! (`accepted`, `applied`, `read-back`, `fault`, `unchanged`), and every
//! result's detail names what was written and what was seen.

use crate::cpu::{Cpu, Fault, Probe};
use core::fmt::{self, Write};
use ukci_protocol::Reporter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cr {
    Cr0,
    Cr4,
}

impl Cr {
    pub(crate) fn read<C: Cpu + ?Sized>(self, cpu: &mut C) -> u64 {
        match self {
            Cr::Cr0 => cpu.read_cr0(),
            Cr::Cr4 => cpu.read_cr4(),
        }
    }

    fn write<C: Cpu + ?Sized>(self, cpu: &mut C, value: u64) -> Result<(), Fault> {
        match self {
            Cr::Cr0 => cpu.write_cr0(value),
            Cr::Cr4 => cpu.write_cr4(value),
        }
    }

    fn probe<C: Cpu + ?Sized>(self, cpu: &mut C, value: u64) -> Probe {
        match self {
            Cr::Cr0 => cpu.probe_cr0(value),
            Cr::Cr4 => cpu.probe_cr4(value),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Cr::Cr0 => "cr0",
            Cr::Cr4 => "cr4",
        }
    }
}

/// `vector=13 error=0x0`, or `vector=none`.
pub(crate) struct Seen(pub Option<Fault>);

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(x) => write!(f, "vector={} error={:#x}", x.vector, x.error_code),
            None => f.write_str("vector=none"),
        }
    }
}

/// An MSR value or the fault reading it raised: `0x10000` or `#GP(0)`.
pub(crate) struct Val(pub Result<u64, Fault>);

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(v) => write!(f, "{v:#x}"),
            Err(x) => write!(f, "{x}"),
        }
    }
}

struct ProbeDetail<'a>(Cr, &'a Probe);

impl fmt::Display for ProbeDetail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (cr, p) = (self.0.name(), self.1);
        write!(
            f,
            "{cr}.before={:#x} {cr}.written={:#x} {} {cr}.after={:#x}",
            p.before,
            p.written,
            Seen(p.fault),
            p.after
        )?;
        match p.restore {
            None => Ok(()),
            Some(Ok(())) => write!(f, " restored={:#x}", p.before),
            Some(Err(x)) => write!(f, " restore-fault={x}"),
        }
    }
}

struct MsrDetail {
    msr: u32,
    value: u64,
    fault: Option<Fault>,
    before: Result<u64, Fault>,
    after: Result<u64, Fault>,
}

impl fmt::Display for MsrDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrmsr={:#x} written={:#x} {} before={} after={}",
            self.msr,
            self.value,
            Seen(self.fault),
            Val(self.before),
            Val(self.after)
        )
    }
}

/// A check in progress: the CPU and where its results go.
pub(crate) struct Run<'a, C: Cpu + ?Sized, W: Write> {
    pub cpu: &'a mut C,
    pub r: &'a mut Reporter<W>,
}

impl<C: Cpu + ?Sized, W: Write> Run<'_, C, W> {
    pub(crate) fn read(&mut self, cr: Cr) -> u64 {
        cr.read(self.cpu)
    }

    /// A MOV to CR that must succeed: `accepted` (no fault) and, when `set`
    /// or `clear` name bits, `applied` (they read back set / clear).
    pub(crate) fn cr_accepts(
        &mut self,
        cr: Cr,
        action: &'static str,
        value: u64,
        set: u64,
        clear: u64,
    ) -> bool {
        let before = cr.read(self.cpu);
        let fault = cr.write(self.cpu, value).err();
        let after = cr.read(self.cpu);
        let name = cr.name();
        self.r.push(action);
        let mut ok = self.r.check(
            fault.is_none(),
            "accepted",
            format_args!(
                "{name}.before={before:#x} {name}.written={value:#x} {} {name}.after={after:#x}",
                Seen(fault)
            ),
        );
        if set | clear != 0 {
            ok &= self.r.check(
                after & set == set && after & clear == 0,
                "applied",
                format_args!("{name}.after={after:#x} must-set={set:#x} must-clear={clear:#x}"),
            );
        }
        self.r.pop();
        ok
    }

    /// A MOV to CR that must be refused: `fault` (#GP(0)) and `unchanged`
    /// (the whole write discarded). A write that got through is undone at
    /// once by the probe, so a broken hypervisor does not leave the guest in
    /// the state the write asked for.
    pub(crate) fn cr_rejects(&mut self, cr: Cr, action: &'static str, value: u64) -> bool {
        let p = cr.probe(self.cpu, value);
        let d = ProbeDetail(cr, &p);
        self.r.push(action);
        let faulted = self.r.check(
            p.fault.is_some_and(|f| f.is_gp0()),
            "fault",
            format_args!("{d}"),
        );
        let unchanged = self
            .r
            .check(p.after == p.before, "unchanged", format_args!("{d}"));
        self.r.pop();
        faulted && unchanged
    }

    /// An RDMSR whose value must be `want`.
    pub(crate) fn msr_equals(&mut self, name: &'static str, msr: u32, want: u64) -> bool {
        let got = self.cpu.rdmsr(msr);
        self.r.check(
            got == Ok(want),
            name,
            format_args!("rdmsr={msr:#x} value={} expected={want:#x}", Val(got)),
        )
    }

    /// A WRMSR that must succeed: `accepted`, and with `read_back`, a
    /// `read-back` of the value the MSR must then hold.
    pub(crate) fn msr_accepts(
        &mut self,
        action: &'static str,
        msr: u32,
        value: u64,
        read_back: Option<u64>,
    ) -> bool {
        let res = self.cpu.wrmsr(msr, value);
        self.r.push(action);
        let mut ok = self.r.check(
            res.is_ok(),
            "accepted",
            format_args!("wrmsr={msr:#x} written={value:#x} {}", Seen(res.err())),
        );
        if let Some(want) = read_back {
            ok &= self.read_back(msr, want);
        }
        self.r.pop();
        ok
    }

    pub(crate) fn read_back(&mut self, msr: u32, want: u64) -> bool {
        let got = self.cpu.rdmsr(msr);
        self.r.check(
            got == Ok(want),
            "read-back",
            format_args!("rdmsr={msr:#x} value={} expected={want:#x}", Val(got)),
        )
    }

    /// A WRMSR that must be refused: `fault` (#GP(0)) and `unchanged` (the
    /// MSR reads the same before and after).
    pub(crate) fn msr_rejects(&mut self, action: &'static str, msr: u32, value: u64) -> bool {
        let before = self.cpu.rdmsr(msr);
        let fault = self.cpu.wrmsr(msr, value).err();
        let after = self.cpu.rdmsr(msr);
        let d = MsrDetail {
            msr,
            value,
            fault,
            before,
            after,
        };
        self.r.push(action);
        let faulted = self.r.check(
            fault.is_some_and(|f| f.is_gp0()),
            "fault",
            format_args!("{d}"),
        );
        let unchanged = self.r.check(
            before.is_ok() && before == after,
            "unchanged",
            format_args!("{d}"),
        );
        self.r.pop();
        faulted && unchanged
    }
}
