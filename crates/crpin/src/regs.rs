//! Register bits, MSR numbers and hypercall numbers the checks use, with the
//! source of each (see shared/spec/cr-pinning.md §1.3 and §1.9).

/// CR0 bits (SDM Vol. 3 §2.5).
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const AM: u64 = 1 << 18;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits (SDM Vol. 3 §2.5).
pub mod cr4 {
    pub const VME: u64 = 1 << 0;
    pub const PAE: u64 = 1 << 5;
    pub const UMIP: u64 = 1 << 11;
    pub const LA57: u64 = 1 << 12;
    pub const VMXE: u64 = 1 << 13;
    pub const SMXE: u64 = 1 << 14;
    pub const FSGSBASE: u64 = 1 << 16;
    pub const PCIDE: u64 = 1 << 17;
    pub const OSXSAVE: u64 = 1 << 18;
    pub const KL: u64 = 1 << 19;
    pub const SMEP: u64 = 1 << 20;
    pub const SMAP: u64 = 1 << 21;
    pub const PKE: u64 = 1 << 22;
    pub const CET: u64 = 1 << 23;
    pub const PKS: u64 = 1 << 24;
    pub const UINTR: u64 = 1 << 25;
    pub const LASS: u64 = 1 << 27;
    pub const LAM_SUP: u64 = 1 << 28;
    pub const FRED: u64 = 1 << 32;
}

/// KVM's paravirtual CR-pinning MSRs. Not upstream; the numbers of RFC v1/v2
/// were later given to other features (spec §1.3), so none of them proves
/// anything by existing.
pub mod msr {
    /// RFC v1/v2 (Dec 2019 / Feb 2020).
    pub const V1_CR0_PIN_ALLOWED: u32 = 0x4b56_4d06;
    pub const V1_CR4_PIN_ALLOWED: u32 = 0x4b56_4d07;
    pub const V1_CR0_PINNED: u32 = 0x4b56_4d08;
    pub const V1_CR4_PINNED: u32 = 0x4b56_4d09;

    /// v3 "[PATCH 0/4]" (June 2020) and the later FSGSBASE variant.
    pub const CR0_PIN_ALLOWED: u32 = 0x4b56_4d08;
    pub const CR4_PIN_ALLOWED: u32 = 0x4b56_4d09;
    pub const CR0_PINNED_LOW: u32 = 0x4b56_4d0a;
    pub const CR0_PINNED_HIGH: u32 = 0x4b56_4d0b;
    pub const CR4_PINNED_LOW: u32 = 0x4b56_4d0c;
    pub const CR4_PINNED_HIGH: u32 = 0x4b56_4d0d;
}

/// The allowed masks the hypervisor reports.
pub mod mask {
    use super::{cr0, cr4};

    pub const CR0_ALLOWED: u64 = cr0::WP;
    /// RFC v1/v2 and v3.
    pub const CR4_ALLOWED: u64 = cr4::UMIP | cr4::SMEP | cr4::SMAP;
    /// The late, unposted variant (kvm-unit-tests `cr_pin` branch).
    pub const CR4_ALLOWED_FSGSBASE: u64 = CR4_ALLOWED | cr4::FSGSBASE;
}

/// The hypervisor CPUID leaves and the bits CR pinning used (leaf
/// 0x40000001 EAX). Each bit means something else upstream today.
pub mod kvm_cpuid {
    pub const SIGNATURE_LEAF: u32 = 0x4000_0000;
    pub const FEATURES_LEAF: u32 = 0x4000_0001;
    /// (bit, CR-pinning meaning, upstream meaning)
    pub const CR_PIN_BITS: [(u32, &str, &str); 3] = [
        (14, "RFC v1/v2 KVM_FEATURE_CR_PIN", "ASYNC_PF_INT"),
        (15, "v3 KVM_FEATURE_CR_PIN", "MSI_EXT_DEST_ID"),
        (16, "late-variant CR_PIN", "HC_MAP_GPA_RANGE"),
    ];
}

/// Heki RFC v3 (May 2024): the CR-locking hypercall.
pub mod heki {
    pub const KVM_HC_LOCK_CR_UPDATE: u64 = 13;
    /// Flag that turns the call into a version query (cr=0, mask=0).
    pub const VERSION_FLAG: u64 = 1 << 0;
    pub const VERSION: u64 = 1;
    /// KVM's hypercall error values (`include/uapi/linux/kvm_para.h`).
    pub const KVM_ENOSYS: i64 = 1000;
    pub const KVM_EINVAL: i64 = 22;
}

/// The CPUID bits that say a CR4 feature exists (SDM Vol. 3 §2.5 and the
/// CPUID leaf 1 / leaf 7 tables).
pub mod feature {
    use crate::cpu::CpuidBit;

    // Reg index: 0 = EAX, 1 = EBX, 2 = ECX, 3 = EDX.
    pub const VMX: CpuidBit = CpuidBit::new(1, 0, 2, 5, "VMX");
    pub const SMX: CpuidBit = CpuidBit::new(1, 0, 2, 6, "SMX");
    pub const PCID: CpuidBit = CpuidBit::new(1, 0, 2, 17, "PCID");
    pub const XSAVE: CpuidBit = CpuidBit::new(1, 0, 2, 26, "XSAVE");
    pub const FSGSBASE: CpuidBit = CpuidBit::new(7, 0, 1, 0, "FSGSBASE");
    pub const SMEP: CpuidBit = CpuidBit::new(7, 0, 1, 7, "SMEP");
    pub const SMAP: CpuidBit = CpuidBit::new(7, 0, 1, 20, "SMAP");
    pub const UMIP: CpuidBit = CpuidBit::new(7, 0, 2, 2, "UMIP");
    pub const PKU: CpuidBit = CpuidBit::new(7, 0, 2, 3, "PKU");
    pub const CET_SS: CpuidBit = CpuidBit::new(7, 0, 2, 7, "CET_SS");
    pub const CET_IBT: CpuidBit = CpuidBit::new(7, 0, 3, 20, "CET_IBT");
    pub const LA57: CpuidBit = CpuidBit::new(7, 0, 2, 16, "LA57");
    pub const KL: CpuidBit = CpuidBit::new(7, 0, 2, 23, "KL");
    pub const PKS: CpuidBit = CpuidBit::new(7, 0, 2, 31, "PKS");
    pub const UINTR: CpuidBit = CpuidBit::new(7, 0, 3, 5, "UINTR");
    pub const LAM: CpuidBit = CpuidBit::new(7, 1, 0, 26, "LAM");
}
