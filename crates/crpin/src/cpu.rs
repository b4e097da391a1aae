//! The edge: how the checks talk to the processor. The guest implements
//! [`Cpu`] with real instructions behind its exception table; host tests
//! implement it with CPU models.

use core::fmt;

/// An exception raised by an instruction the check expected might fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fault {
    pub vector: u8,
    /// 0 for vectors that push no error code.
    pub error_code: u64,
    /// The faulting linear address (CR2) for #PF; 0 otherwise.
    pub cr2: u64,
}

impl Fault {
    pub const GP_VECTOR: u8 = 13;
    pub const UD_VECTOR: u8 = 6;

    /// `#GP(error_code)`.
    pub const fn gp(error_code: u64) -> Fault {
        Fault {
            vector: Self::GP_VECTOR,
            error_code,
            cr2: 0,
        }
    }

    /// `#PF(error_code)` at `cr2`.
    pub const fn pf(error_code: u64, cr2: u64) -> Fault {
        Fault {
            vector: 14,
            error_code,
            cr2,
        }
    }

    /// `#UD`.
    pub const fn ud() -> Fault {
        Fault {
            vector: Self::UD_VECTOR,
            error_code: 0,
            cr2: 0,
        }
    }

    /// The fault KVM injects for a refused MOV to CR or WRMSR.
    pub const fn is_gp0(&self) -> bool {
        self.vector == Self::GP_VECTOR && self.error_code == 0
    }

    /// The architectural mnemonic, without the `#`.
    pub const fn mnemonic(&self) -> Option<&'static str> {
        Some(match self.vector {
            0 => "DE",
            1 => "DB",
            2 => "NMI",
            3 => "BP",
            4 => "OF",
            5 => "BR",
            6 => "UD",
            7 => "NM",
            8 => "DF",
            10 => "TS",
            11 => "NP",
            12 => "SS",
            13 => "GP",
            14 => "PF",
            16 => "MF",
            17 => "AC",
            18 => "MC",
            19 => "XM",
            20 => "VE",
            21 => "CP",
            _ => return None,
        })
    }

    /// Vectors that push an error code; the others print without one.
    const fn has_error_code(&self) -> bool {
        matches!(self.vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21)
    }
}

impl fmt::Display for Fault {
    /// `#GP(0)`, `#PF(0x2)`, `#UD`, or `vector 32` for anything else.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mnemonic() {
            Some(m) => write!(f, "#{m}")?,
            None => return write!(f, "vector {}", self.vector),
        }
        match (self.has_error_code(), self.error_code) {
            (false, _) => Ok(()),
            (true, 0) => f.write_str("(0)"),
            (true, e) => write!(f, "({e:#x})"),
        }
    }
}

/// What a MOV to CR that may be refused did: the write, then the register
/// read back, then (only if it changed) the old value written back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub before: u64,
    pub written: u64,
    pub fault: Option<Fault>,
    /// The register right after the write, before any restore.
    pub after: u64,
    /// `None` when the register kept its value; otherwise the result of
    /// writing `before` back.
    pub restore: Option<Result<(), Fault>>,
}

/// The processor as the checks see it.
///
/// Contract for implementations on real hardware:
/// * Every method returns the fault an instruction raised instead of taking
///   the guest down (the guest's exception table, like kvm-unit-tests'
///   `ASM_TRY`).
/// * The guest's code, data and stack are mapped as supervisor pages
///   (U/S=0), interrupts are off, PKRU and IA32_PKRS are 0. Then setting
///   CR4.SMEP, SMAP, PKE, PKS, UMIP or FSGSBASE, which the checks do (and
///   also probe when the feature is absent), cannot fault on the guest itself.
/// * The object stays usable through `&mut dyn Cpu`; the checks are generic
///   over `?Sized` so either works.
pub trait Cpu {
    /// `CPUID` with EAX=`leaf`, ECX=`subleaf`: `[eax, ebx, ecx, edx]`.
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4];
    fn read_cr0(&mut self) -> u64;
    fn read_cr3(&mut self) -> u64;
    fn read_cr4(&mut self) -> u64;
    fn write_cr0(&mut self, value: u64) -> Result<(), Fault>;
    fn write_cr4(&mut self, value: u64) -> Result<(), Fault>;
    fn rdmsr(&mut self, msr: u32) -> Result<u64, Fault>;
    fn wrmsr(&mut self, msr: u32, value: u64) -> Result<(), Fault>;
    /// A KVM hypercall: `nr` in RAX, `args` in RBX, RCX, RDX, RSI; returns
    /// RAX. VMCALL on Intel, VMMCALL on AMD: the implementation picks the
    /// one this CPU has.
    fn hypercall(&mut self, nr: u64, args: [u64; 4]) -> Result<u64, Fault>;

    /// A MOV to CR0 that the check expects to be refused. A guest should
    /// override this with one instruction sequence (write, read, write back)
    /// so that a hypervisor that wrongly accepts a dangerous value (CR0.PE
    /// cleared in long mode) has it undone before any other code runs.
    fn probe_cr0(&mut self, value: u64) -> Probe {
        let before = self.read_cr0();
        let fault = self.write_cr0(value).err();
        let after = self.read_cr0();
        let restore = (after != before).then(|| self.write_cr0(before));
        Probe {
            before,
            written: value,
            fault,
            after,
            restore,
        }
    }

    /// As [`Cpu::probe_cr0`], for CR4.
    fn probe_cr4(&mut self, value: u64) -> Probe {
        let before = self.read_cr4();
        let fault = self.write_cr4(value).err();
        let after = self.read_cr4();
        let restore = (after != before).then(|| self.write_cr4(before));
        Probe {
            before,
            written: value,
            fault,
            after,
            restore,
        }
    }
}

/// One CPUID feature bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidBit {
    pub leaf: u32,
    pub subleaf: u32,
    /// 0 = EAX, 1 = EBX, 2 = ECX, 3 = EDX.
    pub reg: u8,
    pub bit: u8,
    /// The SDM's name, for messages.
    pub name: &'static str,
}

impl CpuidBit {
    pub const fn new(leaf: u32, subleaf: u32, reg: u8, bit: u8, name: &'static str) -> Self {
        CpuidBit {
            leaf,
            subleaf,
            reg,
            bit,
            name,
        }
    }

    /// Whether the CPU reports the bit. A leaf above the maximum the CPU
    /// reports reads as absent (on Intel it would return the highest leaf's
    /// data instead, which must not count).
    pub fn present<C: Cpu + ?Sized>(&self, cpu: &mut C) -> bool {
        let max = if self.leaf >= 0x8000_0000 {
            cpu.cpuid(0x8000_0000, 0)[0]
        } else {
            cpu.cpuid(0, 0)[0]
        };
        if self.leaf > max {
            return false;
        }
        if self.leaf == 7 && self.subleaf > cpu.cpuid(7, 0)[0] {
            return false;
        }
        cpu.cpuid(self.leaf, self.subleaf)[self.reg as usize] & (1 << self.bit) != 0
    }
}

impl fmt::Display for CpuidBit {
    /// `CPUID.7.0:EBX.SMEP[bit 7]`, the SDM's notation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reg = ["EAX", "EBX", "ECX", "EDX"][self.reg as usize & 3];
        if self.leaf < 0x10 {
            write!(f, "CPUID.{}", self.leaf)?;
        } else {
            write!(f, "CPUID.{:#x}", self.leaf)?;
        }
        if self.leaf == 7 {
            write!(f, ".{}", self.subleaf)?;
        }
        write!(f, ":{reg}.{}[bit {}]", self.name, self.bit)
    }
}
