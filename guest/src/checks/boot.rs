//! `boot.smoke`: what the guest booted on (INFO lines a reader of the log
//! wants first) and that the basics the other checks stand on hold.

use super::Env;
use ukci_guest::arch::paging::{self, Mapping};
use ukci_guest::arch::{cpuid, extable, regs};
use ukci_guest::bootinfo::Protocol;
use ukci_guest::pci;
use ukci_guest::report::{self, info};

pub fn smoke(env: &Env) {
    platform(env);
    cpu();
    long_mode();
    identity_map();
    alias_mapping();
    pci_functions();
}

fn platform(env: &Env) {
    let b = env.boot;
    match (b.protocol, b.pvh_version) {
        (Protocol::Pvh, Some(v)) => info!(
            "boot protocol PVH (hvm_start_info v{v} at {:#x})",
            b.start_info
        ),
        (Protocol::Pvh, None) => info!(
            "boot protocol unknown (no PVH start info at {:#x})",
            b.start_info
        ),
        (Protocol::Rom { dma: true }, _) => info!("boot protocol ROM (fw_cfg)"),
        (Protocol::Rom { dma: false }, _) => {
            info!("boot protocol ROM (no fw_cfg DMA: no command line, no memory map)")
        }
    }
    info!("cmdline \"{}\"", b.cmdline);
    for r in b.regions() {
        info!("memory {:#012x}-{:#012x} {:?}", r.start, r.end(), r.kind);
    }
    info!("memory {} MiB of RAM", b.ram_bytes() >> 20);
    match b.protocol {
        Protocol::Pvh => report::check(
            b.pvh_version.is_some() && b.ram().count() > 0,
            "PVH start info with a memory map",
            format_args!(
                "start_info={:#x} regions={}",
                b.start_info,
                b.regions().len()
            ),
        ),
        Protocol::Rom { dma } => report::check(
            dma && b.ram().count() > 0,
            "fw_cfg boot info with a memory map",
            format_args!("dma={} regions={}", dma as u8, b.regions().len()),
        ),
    };
}

fn cpu() {
    match cpuid::hypervisor() {
        Some((sig, max)) => info!("hypervisor \"{sig}\" max leaf {max:#x}"),
        None => info!("hypervisor none (CPUID.1:ECX[31] clear)"),
    }
    match cpuid::kvm_features() {
        Some(eax) => info!("kvm features CPUID.40000001:EAX={eax:#010x}"),
        None => info!("kvm features none (no leaf 0x40000001)"),
    }
    let sig = cpuid::vendor_signature();
    let l1 = cpuid::cpuid(1, 0).eax;
    let family = (l1 >> 8 & 0xf)
        + if l1 >> 8 & 0xf == 0xf {
            l1 >> 20 & 0xff
        } else {
            0
        };
    let model = (l1 >> 4 & 0xf) | (l1 >> 12 & 0xf0);
    info!(
        "cpu vendor {sig} family {family:#x} model {model:#x} stepping {}",
        l1 & 0xf
    );
    let f = cpuid::features();
    info!(
        "cpu features smep={} smap={} umip={} fsgsbase={} pcid={} pku={} cet_ss={} nx={}",
        f.smep as u8,
        f.smap as u8,
        f.umip as u8,
        f.fsgsbase as u8,
        f.pcid as u8,
        f.pku as u8,
        f.cet_ss as u8,
        f.nx as u8
    );
    info!(
        "cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} rflags={:#x}",
        regs::cr0(),
        regs::cr3(),
        regs::cr4(),
        regs::efer(),
        regs::rflags()
    );
}

fn long_mode() {
    let (cr0, cr4, efer) = (regs::cr0(), regs::cr4(), regs::efer());
    report::check(
        efer & regs::EFER_LMA != 0 && cr0 & regs::CR0_PG != 0 && cr4 & regs::CR4_PAE != 0,
        "long mode active",
        format_args!("efer={efer:#x} cr0={cr0:#x} cr4={cr4:#x}"),
    );
    report::check(
        cr0 & regs::CR0_WP != 0,
        "CR0.WP set",
        format_args!("cr0={cr0:#x}"),
    );
}

fn identity_map() {
    let cr3 = regs::cr3();
    report::check(
        cr3 & !0xfff == paging::root(),
        "CR3 holds the guest's page tables",
        format_args!("cr3={cr3:#x} root={:#x}", paging::root()),
    );
    let (wb, uc) = paging::caching_summary();
    info!("identity map 0-4 GiB: {wb} x 2 MiB write-back, {uc} x 2 MiB uncached");
    let stack_var = 0u64;
    let probes = [
        0,
        smoke as *const () as u64,
        (&raw const stack_var) as u64,
        paging::test_page(0),
        0xfee0_0000,
        paging::MAPPED_LIMIT - 8,
    ];
    let bad = probes
        .iter()
        .find(|&&a| paging::translate(a).map(|m| m.phys) != Some(a));
    match bad {
        None => report::check(
            true,
            "identity map covers 0-4 GiB",
            format_args!("{} addresses walked", probes.len()),
        ),
        Some(&a) => report::check(
            false,
            "identity map covers 0-4 GiB",
            format_args!("addr={a:#x} maps to {:?}", paging::translate(a)),
        ),
    };
    info!("exception table: {} guarded sites", extable::len());
}

/// Maps test page 0 onto test page 1's memory: a value written through one
/// address must read back through the other. Proves 4 KiB remapping and the
/// TLB flush work, which the CR0.WP/SMEP/SMAP checks rely on.
fn alias_mapping() {
    const MAGIC: u64 = 0x756b_6369_5f61_6c69;
    let (a, b) = (paging::test_page(0), paging::test_page(1));
    // SAFETY: test pages belong to the running check.
    unsafe {
        (a as *mut u64).write_volatile(!MAGIC);
        (b as *mut u64).write_volatile(MAGIC);
    }
    let to_b = Mapping {
        phys: b,
        flags: paging::KERNEL_RW,
    };
    // SAFETY: test page 0 is ours; nothing else uses its address.
    let old = unsafe { paging::map_4k(a, to_b) };
    // SAFETY: `a` is mapped (to b's frame) if map_4k succeeded, else to itself.
    let seen = unsafe { (a as *const u64).read_volatile() };
    if let Ok(old) = old {
        // SAFETY: as above; restores the identity mapping.
        let _ = unsafe { paging::map_4k(a, old) };
    }
    // SAFETY: `a` is identity-mapped again.
    let own = unsafe { (a as *const u64).read_volatile() };
    report::check(
        old.is_ok() && seen == MAGIC && own == !MAGIC,
        "4 KiB alias mapping reads back",
        format_args!(
            "map={:?} via_alias={seen:#x} after_restore={own:#x}",
            old.map(|_| ())
        ),
    );
}

fn pci_functions() {
    let count = pci::functions().count();
    if !pci::cf8_present() && pci::ecam_base().is_none() {
        report::skip(
            "PCI host bridge at 00:00.0",
            format_args!("no PCI configuration mechanism: port CF8 absent, no ECAM"),
        );
        return;
    }
    match pci::ecam_base() {
        Some(base) => info!("pci config via ECAM at {base:#x} (and port CF8)"),
        None => info!("pci config via port CF8 only (no ECAM: no extended capabilities)"),
    }
    for f in pci::functions() {
        info!(
            "pci {} {:04x}:{:04x} class {:06x} {} rev {:#x} header {}",
            f.bdf,
            f.vendor_id,
            f.device_id,
            f.class_code,
            f.class_name(),
            f.revision,
            f.header_type
        );
        for (i, bar) in f.present_bars() {
            info!("pci {} BAR{i} {bar}", f.bdf);
        }
        let config = f.config();
        if config.capabilities().next().is_some() || config.ext_capabilities().next().is_some() {
            info!("pci {} capabilities {}", f.bdf, CapList(config));
        }
    }
    info!(
        "pci {count} functions{}",
        if pci::truncated() {
            " (list truncated)"
        } else {
            ""
        }
    );
    let host = pci::functions().next();
    report::check(
        host.is_some_and(|h| h.bdf == pci::Bdf::new(0, 0, 0) && h.class_code >> 8 == 0x0600),
        "PCI host bridge at 00:00.0",
        format_args!(
            "first={:?}",
            host.map(|h| (h.bdf.bus, h.bdf.device, h.bdf.function, h.class_code))
        ),
    );
    if pci::ecam_base().is_some() && pci::cf8_present() {
        ecam_agrees_with_cf8();
    }
}

/// Reads every function's ID dword both ways: catches a wrong ECAM base or
/// a stale mapping of the ECAM window.
fn ecam_agrees_with_cf8() {
    let mut mismatch = None;
    for f in pci::functions() {
        let ecam = f.config().read32(0);
        let cf8 = f.config().read32_with(pci::Mechanism::Cf8, 0);
        if ecam != cf8 {
            mismatch = Some((f.bdf, ecam, cf8));
            break;
        }
    }
    match mismatch {
        None => report::check(
            true,
            "ECAM and port CF8 agree",
            format_args!("{} functions compared", pci::functions().count()),
        ),
        Some((bdf, e, c)) => report::check(
            false,
            "ECAM and port CF8 agree",
            format_args!("bdf={bdf} ecam={e:#010x} cf8={c:#010x}"),
        ),
    };
}

/// `0x11@0x40 0x10@0x70 ext 0x10@0x100` (id@offset).
struct CapList(pci::ConfigSpace);

impl core::fmt::Display for CapList {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut sep = "";
        for (id, at) in self.0.capabilities() {
            write!(f, "{sep}{id:#04x}@{at:#x}")?;
            sep = " ";
        }
        for (i, (id, _, at)) in self.0.ext_capabilities().enumerate() {
            let ext = if i == 0 { "ext " } else { "" };
            write!(f, "{sep}{ext}{id:#06x}@{at:#x}")?;
            sep = " ";
        }
        Ok(())
    }
}
