//! The ukci guest's library: boot, CPU and device access, fault recovery,
//! ring 3, and the result reporter. The binary (`main.rs`) adds the checks.
//!
//! Everything here that touches hardware sits in a thin module: `arch/`
//! (boot, descriptor tables, paging, the exception table, ring 3),
//! `serial`, `exit`, `pci`. `report` is the one path for output.
#![no_std]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod arch;
pub mod bootinfo;
pub mod dma;
pub mod exit;
pub mod fwcfg;
pub mod nvme;
pub mod pci;
pub mod report;
pub mod serial;
mod sync;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    report::abort_on_panic(info)
}
