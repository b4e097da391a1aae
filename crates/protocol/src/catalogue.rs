//! Every check the guest knows, with the arguments it takes, and the command
//! line that selects them. The guest dispatches on these names; the runner
//! validates manifests against them.

use core::fmt::{self, Write};

/// A check compiled into the guest.
#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub summary: &'static str,
    /// Argument keys the check reads from the command line.
    pub args: &'static [&'static str],
}

const fn check(name: &'static str, summary: &'static str) -> Check {
    Check {
        name,
        summary,
        args: &[],
    }
}

pub const CHECKS: &[Check] = &[
    check(
        "boot.smoke",
        "boots, reports the hypervisor, CPU features, control registers and PCI functions",
    ),
    check(
        "fault.selftest",
        "raises #UD, #GP, #DE and #PF and recovers from each through the exception table",
    ),
    check(
        "selftest.hang",
        "never finishes (exercises the runner's timeout)",
    ),
    check(
        "selftest.triple-fault",
        "triple-faults (exercises the runner's reset detection)",
    ),
    check("selftest.panic", "panics (exercises the abort path)"),
    Check {
        name: "nvme.identify",
        summary: "reports the NVMe controller's identity (PF or VF) and checks its controller and namespace data agree",
        args: &["nvme.bdf", "nvme.nsid"],
    },
    Check {
        name: "nvme.rw",
        summary: "writes distinct patterns from one block up to MDTS (PRP1, PRP2, PRP lists), flushes, reads back and compares",
        args: &["nvme.bdf", "nvme.nsid", "nvme.max-bytes"],
    },
    Check {
        name: "nvme.queues",
        summary: "creates every I/O queue pair the controller grants, does I/O on each, deletes them",
        args: &["nvme.bdf", "nvme.nsid", "nvme.queues"],
    },
    Check {
        name: "nvme.errors",
        summary: "invalid opcodes, reads past the end and queue misuse fail with the right status; the controller keeps working",
        args: &["nvme.bdf", "nvme.nsid"],
    },
    Check {
        name: "nvme.bench",
        summary: "sequential write and read throughput (MiB/s, queue depth 1) for 4 KiB and MDTS-sized transfers; the data read back is checked",
        args: &["nvme.bdf", "nvme.nsid", "nvme.max-bytes"],
    },
    check(
        "cr-pin.detect",
        "reports which KVM CR-pinning ABI answers (RFC v1/v2, v3, v3 with FSGSBASE) by reading the allowed-mask MSRs, and what the CPUID bits say",
    ),
    check(
        "cr-pin.v3.high",
        "v3 ABI: pins CR0.WP and CR4.UMIP|SMEP high and CR4.SMAP low; violating MOVs must #GP and change nothing; the pin-MSR rules (fresh VM)",
    ),
    check(
        "cr-pin.v3.low",
        "v3 ABI: pins CR0.WP low; setting it must #GP and change nothing; the pin-MSR rules (fresh VM)",
    ),
    check(
        "cr-pin.v1",
        "RFC v1/v2 ABI: pins CR0.WP and CR4.UMIP|SMEP|SMAP; violating MOVs must #GP (fresh VM)",
    ),
    check(
        "cr-pin.heki",
        "Heki KVM_HC_LOCK_CR_UPDATE: version query, invalid arguments, lock CR0.WP and CR4.SMEP, violations must #GP (fresh VM)",
    ),
    check(
        "cr.arch.cr0-reserved",
        "setting CR0 bits 63:32 must #GP and leave CR0 unchanged",
    ),
    check(
        "cr.arch.cr4-reserved",
        "setting a reserved CR4 bit must #GP and leave CR4 unchanged",
    ),
    check(
        "cr.arch.cr4-features",
        "setting a CR4 bit whose CPUID feature is absent must #GP and leave CR4 unchanged",
    ),
    check(
        "cr.arch.cr0-combinations",
        "invalid CR0 combinations (NW without CD, PG without PE) must #GP and leave CR0 unchanged",
    ),
    check(
        "cr.arch.cr0-wp",
        "with CR0.WP set a supervisor write to a read-only page must #PF; with WP clear it succeeds",
    ),
    check(
        "cr.arch.smep",
        "with CR4.SMEP set a supervisor fetch from a user page must #PF",
    ),
    check(
        "cr.arch.smap",
        "with CR4.SMAP set a supervisor access to a user page must #PF unless EFLAGS.AC is set",
    ),
    check(
        "cr.arch.umip",
        "with CR4.UMIP set SGDT/SIDT/SLDT/SMSW/STR at CPL 3 must #GP",
    ),
    check(
        "selftest.no-exit",
        "stops without an EXIT line (exercises the runner's missing-verdict path)",
    ),
];

pub fn find(name: &str) -> Option<&'static Check> {
    CHECKS.iter().find(|c| c.name == name)
}

/// The command-line key that lists the checks to run.
pub const CHECKS_KEY: &str = "checks";

/// Writes `checks=a,b key=value ...`. Values must not contain spaces.
pub fn write_cmdline(w: &mut impl Write, checks: &[&str], args: &[(&str, &str)]) -> fmt::Result {
    write!(w, "{CHECKS_KEY}=")?;
    for (i, c) in checks.iter().enumerate() {
        if i > 0 {
            w.write_char(',')?;
        }
        w.write_str(c)?;
    }
    for (k, v) in args {
        write!(w, " {k}={v}")?;
    }
    Ok(())
}

/// The guest's view of its command line.
#[derive(Clone, Copy, Debug)]
pub struct Cmdline<'a>(pub &'a str);

impl<'a> Cmdline<'a> {
    /// The value of `key=value`, or `Some("")` for a bare `key`.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.0
            .split_ascii_whitespace()
            .find_map(|w| match w.split_once('=') {
                Some((k, v)) if k == key => Some(v),
                None if w == key => Some(""),
                _ => None,
            })
    }

    pub fn checks(&self) -> impl Iterator<Item = &'a str> {
        self.get(CHECKS_KEY)
            .unwrap_or("")
            .split(',')
            .filter(|c| !c.is_empty())
    }

    /// A numeric argument: decimal or 0x-prefixed hex.
    pub fn number(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_round_trips() {
        let mut text = std::string::String::new();
        write_cmdline(
            &mut text,
            &["boot.smoke", "nvme.rw"],
            &[("nvme.blocks", "0x10")],
        )
        .unwrap();
        assert_eq!(text, "checks=boot.smoke,nvme.rw nvme.blocks=0x10");
        let c = Cmdline(&text);
        assert!(c.checks().eq(["boot.smoke", "nvme.rw"]));
        assert_eq!(c.number("nvme.blocks"), Some(16));
        assert_eq!(c.get("missing"), None);
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in CHECKS.iter().enumerate() {
            assert!(
                CHECKS[i + 1..].iter().all(|b| b.name != a.name),
                "{}",
                a.name
            );
        }
    }
}
