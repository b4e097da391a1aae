//! CPUID: vendor, hypervisor leaves and the feature bits the checks key on.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU and has no side effects.
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) };
    CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// Twelve ASCII bytes from three registers, as vendor and hypervisor
/// signatures are made.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 12]);

impl Signature {
    fn new(regs: [u32; 3]) -> Self {
        let mut b = [0; 12];
        for (chunk, r) in b.chunks_exact_mut(4).zip(regs) {
            chunk.copy_from_slice(&r.to_le_bytes());
        }
        Signature(b)
    }

    pub fn as_str(&self) -> &str {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(12);
        core::str::from_utf8(&self.0[..end]).unwrap_or("?")
    }
}

impl core::fmt::Display for Signature {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

pub fn vendor_signature() -> Signature {
    let r = cpuid(0, 0);
    Signature::new([r.ebx, r.edx, r.ecx])
}

pub fn vendor() -> Vendor {
    match vendor_signature().as_str() {
        "GenuineIntel" => Vendor::Intel,
        "AuthenticAMD" | "HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// CPUID.1:ECX[31], set by every hypervisor that wants to be found.
pub fn hypervisor_present() -> bool {
    cpuid(1, 0).ecx & (1 << 31) != 0
}

/// The hypervisor's signature (`KVMKVMKVM`, `TCGTCGTCGTCG`) and highest
/// hypervisor leaf, if CPUID.1 says there is one.
pub fn hypervisor() -> Option<(Signature, u32)> {
    if !hypervisor_present() {
        return None;
    }
    let r = cpuid(0x4000_0000, 0);
    Some((Signature::new([r.ebx, r.ecx, r.edx]), r.eax))
}

/// KVM_CPUID_FEATURES (0x40000001) EAX, when the hypervisor has that leaf.
pub fn kvm_features() -> Option<u32> {
    let (_, max) = hypervisor()?;
    (max >= 0x4000_0001).then(|| cpuid(0x4000_0001, 0).eax)
}

fn max_leaf() -> u32 {
    cpuid(0, 0).eax
}

fn max_extended_leaf() -> u32 {
    cpuid(0x8000_0000, 0).eax
}

fn leaf7() -> CpuidResult {
    if max_leaf() >= 7 {
        cpuid(7, 0)
    } else {
        CpuidResult {
            eax: 0,
            ebx: 0,
            ecx: 0,
            edx: 0,
        }
    }
}

/// The features that CR0/CR4 rules depend on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    pub pcid: bool,
    pub fsgsbase: bool,
    pub smep: bool,
    pub smap: bool,
    pub umip: bool,
    pub pku: bool,
    pub cet_ss: bool,
    pub nx: bool,
}

pub fn features() -> Features {
    let l1 = cpuid(1, 0);
    let l7 = leaf7();
    let nx = max_extended_leaf() >= 0x8000_0001 && cpuid(0x8000_0001, 0).edx & (1 << 20) != 0;
    Features {
        pcid: l1.ecx & (1 << 17) != 0,
        fsgsbase: l7.ebx & (1 << 0) != 0,
        smep: l7.ebx & (1 << 7) != 0,
        smap: l7.ebx & (1 << 20) != 0,
        umip: l7.ecx & (1 << 2) != 0,
        pku: l7.ecx & (1 << 3) != 0,
        cet_ss: l7.ecx & (1 << 7) != 0,
        nx,
    }
}
