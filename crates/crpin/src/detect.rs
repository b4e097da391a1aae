//! Which CR-pinning ABI, if any, the hypervisor speaks, decided by behaviour.
//!
//! The CPUID bits the series used (leaf 0x40000001 EAX bits 14, 15, 16) mean
//! other things on today's kernels, and the RFC v1/v2 MSR numbers were reused
//! as well (spec §1.3, §1.7). So the answer comes from fault-tolerant reads
//! of the allowed-mask MSRs, and a read only counts when it returns a mask
//! the ABI defines: QEMU's TCG returns 0 for any MSR it does not know
//! instead of raising #GP.

use crate::cpu::{Cpu, Fault};
use crate::regs::{kvm_cpuid, mask, msr};
use crate::steps::Val;
use core::fmt::{self, Write};
use ukci_protocol::Reporter;

/// A CR-pinning ABI a hypervisor was seen to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// RFC v1 (Dec 2019): guest RDMSR of the PINNED MSRs raises #GP.
    V1,
    /// RFC v2 (Feb 2020): same numbers, PINNED readable by the guest.
    V2,
    /// "[PATCH 0/4]" (June 2020): HIGH/LOW pins, CR4 allowed mask 0x300800.
    V3,
    /// The later unposted variant: v3 with FSGSBASE allowed (0x310800).
    V3Fsgsbase,
}

impl Abi {
    pub const fn name(self) -> &'static str {
        match self {
            Abi::V1 => "v1",
            Abi::V2 => "v2",
            Abi::V3 => "v3",
            Abi::V3Fsgsbase => "v3-fsgsbase",
        }
    }

    /// The CR4 allowed mask this ABI reports.
    pub const fn cr4_allowed(self) -> u64 {
        match self {
            Abi::V3Fsgsbase => mask::CR4_ALLOWED_FSGSBASE,
            _ => mask::CR4_ALLOWED,
        }
    }
}

impl fmt::Display for Abi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an ABI family counts as absent: the read that decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Absent {
    pub msr: u32,
    pub read: Result<u64, Fault>,
    /// Which family was looked for: "v3" or "RFC v1/v2".
    pub family: &'static str,
}

impl fmt::Display for Absent {
    /// `rdmsr 0x4b564d09 raised #GP(0)` or `rdmsr 0x4b564d09 returned 0x0,
    /// not the v3 allowed mask 0x300800 (or 0x310800 with FSGSBASE)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.read {
            Err(x) => write!(f, "rdmsr {:#x} raised {x}", self.msr),
            Ok(v) => {
                write!(
                    f,
                    "rdmsr {:#x} returned {v:#x}, not the {} allowed mask {:#x}",
                    self.msr,
                    self.family,
                    mask::CR4_ALLOWED
                )?;
                if self.family == "v3" {
                    write!(f, " (or {:#x} with FSGSBASE)", mask::CR4_ALLOWED_FSGSBASE)?;
                }
                if v == 0 {
                    // Say why 0 is not taken as "present with nothing allowed".
                    f.write_str("; a read of 0 is not the ABI (TCG returns 0 for unknown MSRs; KVM reads 0x4b564d07 as MSR_KVM_ASYNC_PF_ACK, always 0)")?;
                }
                Ok(())
            }
        }
    }
}

/// Everything detection read. Reading has no side effects, so this is safe
/// to run before any check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detection {
    /// `CPUID.1:ECX[31]`, the hypervisor-present bit.
    pub hypervisor: bool,
    /// CPUID 0x40000000 EBX, ECX, EDX, when a hypervisor is present.
    pub signature: [u8; 12],
    pub max_hv_leaf: u32,
    /// CPUID 0x40000001 EAX (0 when the leaf is absent).
    pub hv_features: u32,
    /// RDMSR 0x4b564d09: the v3 CR4 allowed mask (RFC v1/v2: CR4 PINNED).
    pub v3_cr4_allowed: Result<u64, Fault>,
    /// RDMSR 0x4b564d08: the v3 CR0 allowed mask (RFC v1/v2: CR0 PINNED).
    pub v3_cr0_allowed: Result<u64, Fault>,
    /// RDMSR 0x4b564d07: the RFC v1/v2 CR4 allowed mask (upstream today:
    /// MSR_KVM_ASYNC_PF_ACK).
    pub v1_cr4_allowed: Result<u64, Fault>,
}

/// Reads the CPUID leaves and the allowed-mask MSRs.
pub fn detect<C: Cpu + ?Sized>(cpu: &mut C) -> Detection {
    let hypervisor = cpu.cpuid(1, 0)[2] & (1 << 31) != 0;
    let (mut signature, mut max_hv_leaf, mut hv_features) = ([0u8; 12], 0, 0);
    if hypervisor {
        let [max, b, c, d] = cpu.cpuid(kvm_cpuid::SIGNATURE_LEAF, 0);
        for (i, w) in [b, c, d].into_iter().enumerate() {
            signature[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        max_hv_leaf = max;
        if max >= kvm_cpuid::FEATURES_LEAF {
            hv_features = cpu.cpuid(kvm_cpuid::FEATURES_LEAF, 0)[0];
        }
    }
    Detection {
        hypervisor,
        signature,
        max_hv_leaf,
        hv_features,
        v3_cr4_allowed: cpu.rdmsr(msr::CR4_PIN_ALLOWED),
        v3_cr0_allowed: cpu.rdmsr(msr::CR0_PIN_ALLOWED),
        v1_cr4_allowed: cpu.rdmsr(msr::V1_CR4_PIN_ALLOWED),
    }
}

impl Detection {
    /// The v3 family (June 2020 or the FSGSBASE variant), decided by the CR4
    /// allowed mask alone (spec §1.7); the CR0 mask is left for the checks
    /// to judge, so that a wrong one is a failure rather than a skip.
    pub fn v3(&self) -> Result<Abi, Absent> {
        match self.v3_cr4_allowed {
            Ok(mask::CR4_ALLOWED) => Ok(Abi::V3),
            Ok(mask::CR4_ALLOWED_FSGSBASE) => Ok(Abi::V3Fsgsbase),
            read => Err(Absent {
                msr: msr::CR4_PIN_ALLOWED,
                read,
                family: "v3",
            }),
        }
    }

    /// The RFC v1/v2 family, by its CR4 allowed mask; v1 and v2 differ in
    /// whether the guest may read the PINNED MSR (0x4b564d09 in their
    /// numbering).
    pub fn v1(&self) -> Result<Abi, Absent> {
        match self.v1_cr4_allowed {
            Ok(mask::CR4_ALLOWED) => Ok(if self.v3_cr4_allowed.is_err() {
                Abi::V1
            } else {
                Abi::V2
            }),
            read => Err(Absent {
                msr: msr::V1_CR4_PIN_ALLOWED,
                read,
                family: "RFC v1/v2",
            }),
        }
    }

    /// The ABI present, v3 first, or both reasons.
    pub fn abi(&self) -> Result<Abi, (Absent, Absent)> {
        match (self.v3(), self.v1()) {
            (Ok(a), _) | (_, Ok(a)) => Ok(a),
            (Err(a), Err(b)) => Err((a, b)),
        }
    }

    /// The signature as text, with NULs and non-printables dropped.
    pub fn signature_str(&self) -> &str {
        let end = self.signature.iter().position(|&b| b == 0).unwrap_or(12);
        let s = &self.signature[..end];
        if s.iter().all(|b| b.is_ascii_graphic()) {
            // All ASCII, so this cannot fail.
            core::str::from_utf8(s).unwrap_or("")
        } else {
            "?"
        }
    }
}

/// The `cr-pin.detect` check: INFO lines with everything read, then one
/// result `abi`: PASS naming the ABI, or SKIP with the reads that ruled each
/// family out.
pub fn check_detect<C: Cpu + ?Sized, W: Write>(cpu: &mut C, r: &mut Reporter<W>) {
    let d = detect(cpu);
    r.push(crate::DETECT);
    if d.hypervisor {
        r.info(format_args!(
            "cpuid 0x40000000 signature=\"{}\" max-leaf={:#x}",
            d.signature_str(),
            d.max_hv_leaf
        ));
        r.info(format_args!("cpuid 0x40000001 eax={:#x}", d.hv_features));
        for (bit, then, now) in kvm_cpuid::CR_PIN_BITS {
            r.info(format_args!(
                "cpuid 0x40000001 eax bit {bit}={}: {then} then, {now} upstream; not evidence either way",
                (d.hv_features >> bit) & 1
            ));
        }
    } else {
        r.info(format_args!("CPUID.1:ECX.HYPERVISOR[bit 31] is clear"));
    }
    r.info(format_args!(
        "rdmsr {:#x} (v3 CR4 allowed) = {}",
        msr::CR4_PIN_ALLOWED,
        Val(d.v3_cr4_allowed)
    ));
    r.info(format_args!(
        "rdmsr {:#x} (v3 CR0 allowed) = {}",
        msr::CR0_PIN_ALLOWED,
        Val(d.v3_cr0_allowed)
    ));
    r.info(format_args!(
        "rdmsr {:#x} (RFC v1/v2 CR4 allowed) = {}",
        msr::V1_CR4_PIN_ALLOWED,
        Val(d.v1_cr4_allowed)
    ));
    match d.abi() {
        Ok(abi) => {
            let allowed = match abi {
                Abi::V3 | Abi::V3Fsgsbase => d.v3_cr4_allowed,
                Abi::V1 | Abi::V2 => d.v1_cr4_allowed,
            };
            r.check(
                true,
                "abi",
                format_args!(
                    "abi={abi} cr4.allowed={} cpuid.40000001.eax={:#x}",
                    Val(allowed),
                    d.hv_features
                ),
            );
        }
        Err((v3, v1)) => r.skip("abi", format_args!("no CR pinning ABI: {v3}; {v1}")),
    }
    r.pop();
}
