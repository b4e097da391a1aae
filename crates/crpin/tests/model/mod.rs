//! CPU models for the checks: a register/MSR machine in 64-bit mode with the
//! architectural CR0/CR4 rules, a pluggable CR-pinning hypervisor (one of the
//! ABIs, optionally with a flaw), a Heki hypercall, and an accelerator whose
//! quirks (TCG, a kvm_pvm-like CR4 path) can be switched on.

#![allow(dead_code)]

use std::collections::BTreeSet;
use ukci_crpin::regs::{cr0, cr4, heki, mask, msr};
use ukci_crpin::{Cpu, Fault};

/// Which CR-pinning ABI the hypervisor implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinning {
    /// Upstream KVM: no pinning; 0x4b564d06/07 are the async-PF MSRs.
    None,
    /// RFC v1: PINNED is host-only to read; a pinned bit is frozen at the
    /// value it has when the CR is written.
    V1,
    /// RFC v2: PINNED readable; once non-zero, every allowed bit must equal it.
    V2,
    /// June 2020 v3.
    V3,
    /// v3 with FSGSBASE allowed.
    V3Fsgsbase,
}

/// Ways a CR-pinning hypervisor can be wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flaw {
    /// Advertises the MSRs and keeps the pins, but never checks a CR write.
    NoEnforce,
    /// Accepts pin writes and forgets them.
    LosesPins,
    /// Injects #GP for a violating MOV but applies it anyway.
    ViolationApplies,
    /// Lets the guest clear a pin (rule (c) of §1.4.1 missing).
    GuestCanUnpin,
    /// Lets a bit be pinned high and low at once (rule (b) missing).
    OverlapAccepted,
    /// Pins bits outside the allowed mask (rule (a) missing).
    AnyBitPinnable,
    /// Lets the guest rewrite the allowed masks.
    AllowedMsrWritable,
}

pub const ALL_FLAWS: [Flaw; 7] = [
    Flaw::NoEnforce,
    Flaw::LosesPins,
    Flaw::ViolationApplies,
    Flaw::GuestCanUnpin,
    Flaw::OverlapAccepted,
    Flaw::AnyBitPinnable,
    Flaw::AllowedMsrWritable,
];

/// The accelerator under the hypervisor: how unknown MSRs, hypercalls and
/// architectural CR rules behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// KVM: architectural #GP everywhere, unknown MSRs #GP.
    Kvm,
    /// QEMU TCG (code reading of QEMU target/i386): unknown MSRs read 0 and
    /// ignore writes, VMCALL raises #UD, CR0 is truncated to 32 bits with no
    /// combination checks, CR4 bits of absent features are dropped silently.
    Tcg,
    /// This machine's kvm_pvm: a reserved CR4 bit is dropped without #GP.
    PvmLike,
    /// A CR4 path that applies any defined bit without looking at CPUID.
    LaxCr4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heki {
    /// No such hypercall: -KVM_ENOSYS.
    None,
    /// Heki RFC v3.
    V3,
    /// Returns success for locks but never enforces them.
    NoEnforce,
}

/// CPUID feature sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    pub leaf1_ecx: u32,
    pub leaf7_ebx: u32,
    pub leaf7_ecx: u32,
    pub leaf7_edx: u32,
    pub leaf7_1_eax: u32,
}

impl Features {
    /// A recent Intel-like CPU: VMX, PCID, XSAVE, FSGSBASE, SMEP, SMAP, UMIP,
    /// PKU; no SMX, KL, CET, PKS, UINTR, LAM, LA57.
    pub const MODERN: Features = Features {
        leaf1_ecx: (1 << 5) | (1 << 17) | (1 << 26) | (1 << 31),
        leaf7_ebx: (1 << 0) | (1 << 7) | (1 << 20),
        leaf7_ecx: (1 << 2) | (1 << 3),
        leaf7_edx: 0,
        leaf7_1_eax: 0,
    };
    /// QEMU's qemu64: none of the leaf-7 features.
    pub const QEMU64: Features = Features {
        leaf1_ecx: 1 << 31,
        leaf7_ebx: 0,
        leaf7_ecx: 0,
        leaf7_edx: 0,
        leaf7_1_eax: 0,
    };
    /// Everything the checks look at.
    pub const EVERYTHING: Features = Features {
        leaf1_ecx: (1 << 5) | (1 << 6) | (1 << 17) | (1 << 26) | (1 << 31),
        leaf7_ebx: (1 << 0) | (1 << 7) | (1 << 20),
        leaf7_ecx: (1 << 2) | (1 << 3) | (1 << 7) | (1 << 16) | (1 << 23) | (1 << 31),
        leaf7_edx: (1 << 5) | (1 << 20),
        leaf7_1_eax: 1 << 26,
    };

    fn supported_cr4(&self) -> u64 {
        let has = |reg: u32, bit: u32| reg & (1 << bit) != 0;
        let mut m = cr4::VME
            | (1 << 1)
            | (1 << 2)
            | (1 << 3)
            | (1 << 4)
            | cr4::PAE
            | (1 << 6)
            | (1 << 7)
            | (1 << 8)
            | (1 << 9)
            | (1 << 10);
        for (present, bit) in [
            (has(self.leaf7_ecx, 2), cr4::UMIP),
            (has(self.leaf7_ecx, 16), cr4::LA57),
            (has(self.leaf1_ecx, 5), cr4::VMXE),
            (has(self.leaf1_ecx, 6), cr4::SMXE),
            (has(self.leaf7_ebx, 0), cr4::FSGSBASE),
            (has(self.leaf1_ecx, 17), cr4::PCIDE),
            (has(self.leaf1_ecx, 26), cr4::OSXSAVE),
            (has(self.leaf7_ecx, 23), cr4::KL),
            (has(self.leaf7_ebx, 7), cr4::SMEP),
            (has(self.leaf7_ebx, 20), cr4::SMAP),
            (has(self.leaf7_ecx, 3), cr4::PKE),
            (has(self.leaf7_ecx, 7) || has(self.leaf7_edx, 20), cr4::CET),
            (has(self.leaf7_ecx, 31), cr4::PKS),
            (has(self.leaf7_edx, 5), cr4::UINTR),
            (has(self.leaf7_1_eax, 26), cr4::LAM_SUP),
        ] {
            if present {
                m |= bit;
            }
        }
        m
    }
}

/// Bits of CR4 any processor defines; the rest are reserved.
const CR4_DEFINED: u64 = 0x7fff // bits 0..=14
    | cr4::FSGSBASE
    | cr4::PCIDE
    | cr4::OSXSAVE
    | cr4::KL
    | cr4::SMEP
    | cr4::SMAP
    | cr4::PKE
    | cr4::CET
    | cr4::PKS
    | cr4::UINTR
    | cr4::LASS
    | cr4::LAM_SUP
    | cr4::FRED;

/// Something that would have killed a real guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hazard(pub &'static str);

pub struct Machine {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub features: Features,
    pub pinning: Pinning,
    pub flaws: BTreeSet<Flaw>,
    pub accel: Accel,
    pub heki: Heki,
    /// v3 pins.
    pub cr0_high: u64,
    pub cr0_low: u64,
    pub cr4_high: u64,
    pub cr4_low: u64,
    /// RFC v1/v2 pins.
    pub cr0_pinned: u64,
    pub cr4_pinned: u64,
    pub allowed_cr0: u64,
    pub allowed_cr4: u64,
    /// Heki locks (per VM).
    pub heki_cr0: u64,
    pub heki_cr4: u64,
    /// States a real guest would not have survived, in order.
    pub hazards: Vec<Hazard>,
    /// Every CR value that took effect, in order: (cr number, value).
    pub history: Vec<(u8, u64)>,
}

impl Machine {
    /// A 64-bit guest after boot: PE, MP, ET, NE, WP, AM, PG; PAE, PGE,
    /// OSFXSR, OSXMMEXCPT; CR3 page-aligned.
    pub fn new(pinning: Pinning) -> Machine {
        Machine {
            cr0: cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::AM | cr0::PG,
            cr3: 0x10_0000,
            cr4: cr4::PAE | (1 << 7) | (1 << 9) | (1 << 10),
            features: Features::MODERN,
            pinning,
            flaws: BTreeSet::new(),
            accel: Accel::Kvm,
            heki: Heki::None,
            cr0_high: 0,
            cr0_low: 0,
            cr4_high: 0,
            cr4_low: 0,
            cr0_pinned: 0,
            cr4_pinned: 0,
            allowed_cr0: mask::CR0_ALLOWED,
            allowed_cr4: match pinning {
                Pinning::V3Fsgsbase => mask::CR4_ALLOWED_FSGSBASE,
                _ => mask::CR4_ALLOWED,
            },
            heki_cr0: 0,
            heki_cr4: 0,
            hazards: Vec::new(),
            history: Vec::new(),
        }
    }

    pub fn with(mut self, flaw: Flaw) -> Machine {
        self.flaws.insert(flaw);
        self
    }

    pub fn accel(mut self, accel: Accel) -> Machine {
        self.accel = accel;
        self
    }

    pub fn features(mut self, f: Features) -> Machine {
        self.features = f;
        self
    }

    pub fn heki(mut self, h: Heki) -> Machine {
        self.heki = h;
        self
    }

    fn has(&self, f: Flaw) -> bool {
        self.flaws.contains(&f)
    }

    /// vCPU RESET or INIT: v3 clears every pin (§1.4.5). Heki locks are per
    /// VM and stay.
    pub fn reset(&mut self) {
        self.cr0_high = 0;
        self.cr0_low = 0;
        self.cr4_high = 0;
        self.cr4_low = 0;
        if self.pinning == Pinning::V2 {
            self.cr0_pinned = 0;
            self.cr4_pinned = 0;
        }
    }

    /// The hypervisor's pin verdict on a new value of CR`cr`: true if it
    /// violates a pin or a Heki lock.
    fn violates(&self, cr: u8, new: u64) -> bool {
        let (old, high, low, pinned, allowed, locked) = if cr == 0 {
            (
                self.cr0,
                self.cr0_high,
                self.cr0_low,
                self.cr0_pinned,
                self.allowed_cr0,
                self.heki_cr0,
            )
        } else {
            (
                self.cr4,
                self.cr4_high,
                self.cr4_low,
                self.cr4_pinned,
                self.allowed_cr4,
                self.heki_cr4,
            )
        };
        let pins = match self.pinning {
            Pinning::V3 | Pinning::V3Fsgsbase => new & high != high || new & low != 0,
            Pinning::V1 => (new ^ old) & pinned != 0,
            Pinning::V2 => pinned != 0 && (new ^ pinned) & allowed != 0,
            Pinning::None => false,
        };
        let locks = self.heki != Heki::NoEnforce && new & locked != locked;
        (pins && !self.has(Flaw::NoEnforce)) || locks
    }

    /// Applies a pin violation: #GP, and with the flaw the value anyway.
    fn refuse(&mut self, cr: u8, value: u64) -> Result<(), Fault> {
        if self.has(Flaw::ViolationApplies) {
            self.set(cr, value);
        }
        Err(Fault::gp(0))
    }

    fn set(&mut self, cr: u8, value: u64) {
        match cr {
            0 => {
                if value & cr0::PE == 0 {
                    self.hazards.push(Hazard("CR0.PE cleared in long mode"));
                }
                if value & cr0::PG == 0 {
                    self.hazards.push(Hazard("CR0.PG cleared in 64-bit code"));
                }
                self.cr0 = value;
            }
            _ => {
                if value & cr4::PAE == 0 {
                    self.hazards.push(Hazard("CR4.PAE cleared in long mode"));
                }
                if (value ^ self.cr4) & cr4::LA57 != 0 {
                    self.hazards.push(Hazard("CR4.LA57 toggled in long mode"));
                }
                for (bit, what) in [(cr4::LASS, "CR4.LASS set"), (cr4::FRED, "CR4.FRED set")] {
                    if value & bit != 0 {
                        self.hazards.push(Hazard(what));
                    }
                }
                self.cr4 = value;
            }
        }
        self.history.push((cr, value));
    }

    fn pin_msr_write(&mut self, index: u32, value: u64) -> Result<(), Fault> {
        let (allowed, opposite) = match index {
            msr::CR0_PINNED_LOW => (self.allowed_cr0, self.cr0_high),
            msr::CR0_PINNED_HIGH => (self.allowed_cr0, self.cr0_low),
            msr::CR4_PINNED_LOW => (self.allowed_cr4, self.cr4_high),
            _ => (self.allowed_cr4, self.cr4_low),
        };
        let current = self.pin_msr_read(index);
        if value & !allowed != 0 && !self.has(Flaw::AnyBitPinnable) {
            return Err(Fault::gp(0));
        }
        if value & opposite != 0 && !self.has(Flaw::OverlapAccepted) {
            return Err(Fault::gp(0));
        }
        if value & current != current && !self.has(Flaw::GuestCanUnpin) {
            return Err(Fault::gp(0));
        }
        if self.has(Flaw::LosesPins) {
            return Ok(());
        }
        *match index {
            msr::CR0_PINNED_LOW => &mut self.cr0_low,
            msr::CR0_PINNED_HIGH => &mut self.cr0_high,
            msr::CR4_PINNED_LOW => &mut self.cr4_low,
            _ => &mut self.cr4_high,
        } = value;
        Ok(())
    }

    fn pin_msr_read(&self, index: u32) -> u64 {
        match index {
            msr::CR0_PINNED_LOW => self.cr0_low,
            msr::CR0_PINNED_HIGH => self.cr0_high,
            msr::CR4_PINNED_LOW => self.cr4_low,
            _ => self.cr4_high,
        }
    }

    fn unknown_msr_read(&self) -> Result<u64, Fault> {
        match self.accel {
            Accel::Tcg => Ok(0),
            _ => Err(Fault::gp(0)),
        }
    }

    fn unknown_msr_write(&self) -> Result<(), Fault> {
        match self.accel {
            Accel::Tcg => Ok(()),
            _ => Err(Fault::gp(0)),
        }
    }

    fn heki_call(&mut self, cr: u64, mask: u64, flags: u64) -> u64 {
        let einval = (-heki::KVM_EINVAL) as u64;
        if flags & heki::VERSION_FLAG != 0 {
            return if cr == 0 && mask == 0 {
                heki::VERSION
            } else {
                einval
            };
        }
        // The host kernel's own CR0/CR4 and its pinnable CR4 bits (§1.9).
        let host_cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::AM | cr0::PG;
        let pinnable_cr4 = cr4::SMEP | cr4::SMAP | cr4::UMIP | cr4::FSGSBASE | cr4::CET | cr4::FRED;
        let host_cr4 = cr4::PAE | cr4::SMEP | cr4::SMAP | cr4::UMIP | cr4::FSGSBASE;
        match cr {
            0 if mask & cr0::WP != 0 && mask & !host_cr0 == 0 => self.heki_cr0 |= mask,
            4 if mask & !pinnable_cr4 == 0 => self.heki_cr4 |= mask & host_cr4,
            _ => return einval,
        }
        0
    }
}

impl Cpu for Machine {
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let f = self.features;
        match (leaf, subleaf) {
            (0, _) => [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            (1, _) => [0x806f8, 0, f.leaf1_ecx, 0],
            (7, 0) => [1, f.leaf7_ebx, f.leaf7_ecx, f.leaf7_edx],
            (7, 1) => [f.leaf7_1_eax, 0, 0, 0],
            (0x4000_0000, _) => match self.accel {
                Accel::Tcg => [0x4000_0001, 0x5447_4354, 0x4354_4743, 0x4743_5447],
                _ => [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            },
            (0x4000_0001, _) => [
                match self.pinning {
                    // What the CR_PIN CPUID bit was in each version (§1.3),
                    // plus the async-PF bits today's KVM sets: bit 14 means
                    // ASYNC_PF_INT and 15 MSI_EXT_DEST_ID upstream.
                    Pinning::V1 | Pinning::V2 => 1 << 14,
                    Pinning::V3 => (1 << 14) | (1 << 15),
                    Pinning::V3Fsgsbase => (1 << 14) | (1 << 16),
                    Pinning::None => (1 << 14) | (1 << 15),
                },
                0,
                0,
                0,
            ],
            _ => [0; 4],
        }
    }

    fn read_cr0(&mut self) -> u64 {
        self.cr0
    }

    fn read_cr3(&mut self) -> u64 {
        self.cr3
    }

    fn read_cr4(&mut self) -> u64 {
        self.cr4
    }

    fn write_cr0(&mut self, mut value: u64) -> Result<(), Fault> {
        if self.accel == Accel::Tcg {
            // cpu_x86_update_cr0 takes 32 bits and checks no combination.
            value = (value & 0xffff_ffff) | cr0::ET;
        } else {
            let rules = [
                value >> 32 != 0,                             // reserved 63:32
                value & cr0::PG != 0 && value & cr0::PE == 0, // PG without PE
                value & cr0::NW != 0 && value & cr0::CD == 0, // NW without CD
                value & cr0::PG == 0,                         // leaving 64-bit mode
                value & cr0::WP == 0 && self.cr4 & cr4::CET != 0,
            ];
            if rules.contains(&true) {
                return Err(Fault::gp(0));
            }
        }
        if self.violates(0, value) {
            return self.refuse(0, value);
        }
        self.set(0, value);
        Ok(())
    }

    fn write_cr4(&mut self, mut value: u64) -> Result<(), Fault> {
        // QEMU's helper_write_crN refuses an LA57 toggle in 64-bit code
        // before it drops unsupported bits; KVM refuses it too.
        if (value ^ self.cr4) & cr4::LA57 != 0 {
            return Err(Fault::gp(0));
        }
        let mut supported = self.features.supported_cr4();
        match self.accel {
            Accel::Tcg => value &= supported | !CR4_DEFINED,
            Accel::PvmLike => value &= CR4_DEFINED,
            Accel::LaxCr4 => supported = CR4_DEFINED,
            Accel::Kvm => {}
        }
        if value & !supported != 0 {
            return Err(Fault::gp(0));
        }
        if value & cr4::PAE == 0 {
            return Err(Fault::gp(0));
        }
        if value & cr4::PCIDE != 0 && self.cr4 & cr4::PCIDE == 0 && self.cr3 & 0xfff != 0 {
            return Err(Fault::gp(0));
        }
        if value & cr4::CET != 0 && self.cr0 & cr0::WP == 0 {
            return Err(Fault::gp(0));
        }
        if self.violates(4, value) {
            return self.refuse(4, value);
        }
        self.set(4, value);
        Ok(())
    }

    fn rdmsr(&mut self, index: u32) -> Result<u64, Fault> {
        match (self.pinning, index) {
            (Pinning::V3 | Pinning::V3Fsgsbase, msr::CR0_PIN_ALLOWED) => Ok(self.allowed_cr0),
            (Pinning::V3 | Pinning::V3Fsgsbase, msr::CR4_PIN_ALLOWED) => Ok(self.allowed_cr4),
            (Pinning::V3 | Pinning::V3Fsgsbase, msr::CR0_PINNED_LOW..=msr::CR4_PINNED_HIGH) => {
                Ok(self.pin_msr_read(index))
            }
            (Pinning::V1 | Pinning::V2, msr::V1_CR0_PIN_ALLOWED) => Ok(self.allowed_cr0),
            (Pinning::V1 | Pinning::V2, msr::V1_CR4_PIN_ALLOWED) => Ok(self.allowed_cr4),
            (Pinning::V1, msr::V1_CR0_PINNED | msr::V1_CR4_PINNED) => Err(Fault::gp(0)),
            (Pinning::V2, msr::V1_CR0_PINNED) => Ok(self.cr0_pinned),
            (Pinning::V2, msr::V1_CR4_PINNED) => Ok(self.cr4_pinned),
            // Today's KVM: MSR_KVM_ASYNC_PF_INT and _ACK exist and read 0
            // until the guest sets up async page faults.
            (Pinning::None | Pinning::V3 | Pinning::V3Fsgsbase, 0x4b56_4d06 | 0x4b56_4d07)
                if self.accel != Accel::Tcg =>
            {
                Ok(0)
            }
            _ => self.unknown_msr_read(),
        }
    }

    fn wrmsr(&mut self, index: u32, value: u64) -> Result<(), Fault> {
        match (self.pinning, index) {
            (Pinning::V3 | Pinning::V3Fsgsbase, msr::CR0_PIN_ALLOWED | msr::CR4_PIN_ALLOWED) => {
                let slot = if index == msr::CR0_PIN_ALLOWED {
                    &mut self.allowed_cr0
                } else {
                    &mut self.allowed_cr4
                };
                if self.flaws.contains(&Flaw::AllowedMsrWritable) {
                    *slot = value;
                    Ok(())
                } else if value == *slot {
                    Ok(())
                } else {
                    Err(Fault::gp(0))
                }
            }
            (Pinning::V3 | Pinning::V3Fsgsbase, msr::CR0_PINNED_LOW..=msr::CR4_PINNED_HIGH) => {
                self.pin_msr_write(index, value)
            }
            (Pinning::V1, msr::V1_CR0_PIN_ALLOWED | msr::V1_CR4_PIN_ALLOWED) => Err(Fault::gp(0)),
            // RFC v2 ignores writes to the allowed MSRs.
            (Pinning::V2, msr::V1_CR0_PIN_ALLOWED | msr::V1_CR4_PIN_ALLOWED) => Ok(()),
            (Pinning::V1 | Pinning::V2, msr::V1_CR0_PINNED | msr::V1_CR4_PINNED) => {
                let cr0 = index == msr::V1_CR0_PINNED;
                let allowed = if cr0 {
                    self.allowed_cr0
                } else {
                    self.allowed_cr4
                };
                if value & !allowed != 0 && !self.has(Flaw::AnyBitPinnable) {
                    return Err(Fault::gp(0));
                }
                if self.has(Flaw::LosesPins) {
                    return Ok(());
                }
                // The guest's value is ORed in: it cannot clear a pin.
                if cr0 {
                    self.cr0_pinned |= value;
                } else {
                    self.cr4_pinned |= value;
                }
                Ok(())
            }
            (Pinning::None | Pinning::V3 | Pinning::V3Fsgsbase, 0x4b56_4d06 | 0x4b56_4d07)
                if self.accel != Accel::Tcg =>
            {
                Ok(())
            }
            _ => self.unknown_msr_write(),
        }
    }

    fn hypercall(&mut self, nr: u64, args: [u64; 4]) -> Result<u64, Fault> {
        if self.accel == Accel::Tcg {
            // No hypervisor handles VMCALL under TCG.
            return Err(Fault::ud());
        }
        let enosys = (-heki::KVM_ENOSYS) as u64;
        if self.heki == Heki::None || nr != heki::KVM_HC_LOCK_CR_UPDATE {
            return Ok(enosys);
        }
        Ok(self.heki_call(args[0], args[1], args[2]))
    }
}
