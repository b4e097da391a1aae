//! The ukci guest: a tiny unikernel that QEMU boots with `-kernel` (PVH). It
//! runs the checks named on its command line (`checks=a,b key=value`), prints
//! kvm-unit-tests style result lines on COM1 and leaves through isa-debug-exit
//! with the verdict.
//!
//! The machinery is in the library (`lib.rs`); this binary is the entry
//! point and `checks/`, one file per check family.
#![no_std]
#![warn(clippy::undocumented_unsafe_blocks)]
#![no_main]

mod checks;

use ukci_guest::bootinfo::{BootInfo, ENTRY_ROM};
use ukci_guest::{arch, exit, serial};
use ukci_protocol::catalogue::Cmdline;

/// Entered from `arch/boot.s` in long mode, on the boot stack, with how it
/// was entered (`ENTRY_PVH`, `ENTRY_ROM`) and for PVH the physical address of
/// the `hvm_start_info`.
#[unsafe(no_mangle)]
extern "C" fn rust_main(start_info: u64, entry: u64) -> ! {
    serial::init();
    let boot = if entry == ENTRY_ROM {
        // SAFETY: the first and only read of the boot info.
        unsafe { BootInfo::from_fw_cfg() }
    } else {
        // SAFETY: boot.s passes the address QEMU's PVH loader gave in %ebx,
        // and the loader's structures below 1 MiB are never overwritten by
        // the guest.
        unsafe { BootInfo::from_pvh(start_info) }
    };
    arch::init(boot);
    let env = checks::Env {
        boot,
        cmdline: Cmdline(boot.cmdline),
    };
    exit::exit(checks::run(&env))
}
