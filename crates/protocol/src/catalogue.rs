//! Every check the guest knows, with the arguments it takes, and the command
//! line that selects them. The guest dispatches on these names; the runner
//! validates manifests against them.

use core::fmt::{self, Write};

/// A check compiled into the guest.
#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub summary: &'static str,
    /// Arguments the check reads from the command line.
    pub args: &'static [Arg],
}

/// A `key=value` argument of a check, with what its value may be.
#[derive(Debug, PartialEq, Eq)]
pub struct Arg {
    pub key: &'static str,
    pub kind: ArgKind,
}

/// What an argument's value may be; the runner rejects anything else in a
/// manifest, the guest parses the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// A PCI address `bb:dd.f` (hex), optionally `ssss:bb:dd.f`.
    PciAddress,
    /// A number (decimal or 0x-prefixed hex) from `min` to `max`.
    Number {
        min: u64,
        max: u64,
        what: &'static str,
    },
}

impl ArgKind {
    /// `Ok` when `value` is one of this kind, else what is allowed.
    pub fn check(self, value: &str) -> Result<(), &'static str> {
        match self {
            ArgKind::PciAddress => pci_address(value).map(|_| ()).ok_or(
                "a PCI address bb:dd.f in hex (device 00 to 1f, function 0 to 7), e.g. 00:04.0",
            ),
            ArgKind::Number { min, max, what } => match parse_number(value) {
                Some(n) if (min..=max).contains(&n) => Ok(()),
                _ => Err(what),
            },
        }
    }
}

/// `nvme.bdf`: the NVMe function to use (default: the first one found).
pub const NVME_BDF: Arg = Arg {
    key: "nvme.bdf",
    kind: ArgKind::PciAddress,
};
/// `nvme.nsid`: the namespace to use (default: the first active one).
pub const NVME_NSID: Arg = Arg {
    key: "nvme.nsid",
    kind: ArgKind::Number {
        min: 1,
        max: 0xffff_fffe,
        what: "a namespace ID from 1 to 0xfffffffe",
    },
};
/// `nvme.max-bytes`: bytes a data check may write (and read back) in a run.
pub const NVME_MAX_BYTES: Arg = Arg {
    key: "nvme.max-bytes",
    kind: ArgKind::Number {
        min: 4096,
        max: 1 << 40,
        what: "a number of bytes from 4096 to 2^40 (decimal or 0x hex)",
    },
};
/// `nvme.queues`: the most I/O queue pairs `nvme.queues` creates.
pub const NVME_QUEUES: Arg = Arg {
    key: "nvme.queues",
    kind: ArgKind::Number {
        min: 1,
        max: 64,
        what: "a number of queue pairs from 1 to 64",
    },
};

/// A PCI address `bb:dd.f` (hex), optionally with a 4-digit segment in
/// front: (bus, device, function).
pub fn pci_address(s: &str) -> Option<(u8, u8, u8)> {
    let s = match s.split_once(':') {
        Some((seg, rest)) if rest.contains(':') && seg.len() == 4 => rest,
        _ => s,
    };
    let (bus, rest) = s.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let hex = |t: &str, len: usize| {
        (t.len() <= len && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u8::from_str_radix(t, 16).ok())
            .flatten()
    };
    let (bus, dev, func) = (hex(bus, 2)?, hex(dev, 2)?, hex(func, 1)?);
    (dev < 32 && func < 8).then_some((bus, dev, func))
}

/// A number as the command line carries it: decimal or 0x-prefixed hex.
pub fn parse_number(v: &str) -> Option<u64> {
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
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
        args: &[NVME_BDF, NVME_NSID],
    },
    Check {
        name: "nvme.rw",
        summary: "writes distinct patterns from one block up to MDTS (PRP1, PRP2, PRP lists), flushes, reads back and compares",
        args: &[NVME_BDF, NVME_NSID, NVME_MAX_BYTES],
    },
    Check {
        name: "nvme.queues",
        summary: "creates every I/O queue pair the controller grants, does I/O on each, deletes them",
        args: &[NVME_BDF, NVME_NSID, NVME_QUEUES],
    },
    Check {
        name: "nvme.errors",
        summary: "invalid opcodes, reads past the end and queue misuse fail with the right status; the controller keeps working",
        args: &[NVME_BDF, NVME_NSID],
    },
    Check {
        name: "nvme.bench",
        summary: "sequential write and read throughput (MiB/s, queue depth 1) for 4 KiB and MDTS-sized transfers; the data read back is checked",
        args: &[NVME_BDF, NVME_NSID, NVME_MAX_BYTES],
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

/// Every host check: checks the runner runs on the host itself (in a
/// virtual lane, inside the virtual host), reporting through the same
/// protocol as guest checks. They take no arguments; a test lists either
/// guest checks or host checks.
pub const HOST_CHECKS: &[Check] = &[
    check(
        "vfio.env",
        "records the VFIO environment: vfio-pci with enable_sriov, IOMMU groups, the PF, /dev/vfio/devices",
    ),
    check(
        "vf-token.rules",
        "the VF-token rules with the PF on vfio-pci: the kernel selftest's cases and the uAPI's errnos",
    ),
    check(
        "vf-token.kernel-pf",
        "a token while the PF is on the kernel driver (EINVAL), vfio-pci refusing a PF whose VFs exist (EBUSY)",
    ),
    check(
        "vf-token.cdev",
        "the token through the vfio cdev / iommufd path, where the kernel has it",
    ),
    check(
        "vf-token.pf-driver",
        "the userspace NVMe PF driver brings two VFs online, each VF ready through its own token-opened device",
    ),
    check(
        "vf-token.qemu",
        "QEMU refuses a VF without the token or with a wrong one, and starts the guest with the right one",
    ),
    check(
        "vf-token.crash-recovery",
        "the runner is SIGKILLed at points of a VF run; the next run restores every device exactly",
    ),
    check(
        "vf-token.secrets",
        "no file the run has written holds any VF token the run used (run it last)",
    ),
];

/// The host check named `name`.
pub fn find_host(name: &str) -> Option<&'static Check> {
    HOST_CHECKS.iter().find(|c| c.name == name)
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
        parse_number(self.get(key)?)
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
    fn argument_values_are_typed() {
        let bdf = NVME_BDF.kind;
        assert_eq!(pci_address("00:04.0"), Some((0, 4, 0)));
        assert_eq!(pci_address("0000:3b:1f.7"), Some((0x3b, 0x1f, 7)));
        for bad in [
            "", "4", "00:04", "00:20.0", "00:04.8", "0:0:04.0", "zz:04.0", "+1:04.0",
        ] {
            assert!(bdf.check(bad).is_err(), "{bad}");
        }
        assert!(NVME_NSID.kind.check("0").is_err());
        assert!(NVME_NSID.kind.check("1").is_ok());
        assert!(NVME_MAX_BYTES.kind.check("lots").is_err());
        assert!(NVME_MAX_BYTES.kind.check("0x100000").is_ok());
        assert!(NVME_QUEUES.kind.check("65").is_err());
    }

    #[test]
    fn names_are_unique_across_guest_and_host_checks() {
        let all: std::vec::Vec<&Check> = CHECKS.iter().chain(HOST_CHECKS).collect();
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| b.name != a.name), "{}", a.name);
        }
    }
}
