//! Links the guest with its own script: linker.ld gives the PVH ELF that
//! QEMU's `-kernel` loader boots (one load segment at 1 MiB plus the PVH
//! note); with the `rom` feature, linker-rom.ld gives the firmware-less
//! image's ELF (the same kernel stored in a 128 KiB ROM at the top of 4 GiB),
//! which xtask flattens for `-bios`.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = if std::env::var_os("CARGO_FEATURE_ROM").is_some() {
        "linker-rom.ld"
    } else {
        "linker.ld"
    };
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=linker-rom.ld");
    println!("cargo:rerun-if-changed=src/arch/boot.s");
    println!("cargo:rerun-if-changed=src/arch/traps.s");
    println!("cargo:rustc-link-arg-bins=-T{dir}/{script}");
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
}
