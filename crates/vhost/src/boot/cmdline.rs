//! The host kernel's command line.

use super::{Accel, BootConfig};

/// Seconds a task may sit in uninterruptible sleep before the host kernel's
/// hung-task watchdog panics it. Nothing the agent does sleeps that long; a
/// host that does has wedged, and ends within a minute or two instead of at
/// the boot timeout.
pub const HUNG_TASK_SECS: u32 = 60;

/// The kernel command line.
pub fn kernel_cmdline(cfg: &BootConfig) -> String {
    let hung = format!("sysctl.kernel.hung_task_timeout_secs={HUNG_TASK_SECS}");
    let mut words: Vec<&str> = vec![
        "console=ttyS0",
        "intel_iommu=on",
        "iommu=pt",
        // Any panic reboots at once, and -no-reboot turns that into a QEMU exit.
        "panic=-1",
        "hung_task_panic=1",
        &hung,
        "loglevel=4",
        // Boot-time self-tests of crypto nothing here uses: the crypto
        // manager's, the SP800-108 KDF's and the jitter-entropy RNG's (its
        // timing loop alone takes ~0.5 s under TCG). Together ~0.9 s of a
        // 3 s boot to /init. The DRBG needs jitter entropy only in FIPS mode.
        // And the "encrypted" key type (security/keys/encrypted-keys), which
        // nothing here uses: its init looks up cbc(aes), ten module requests
        // and ~0.1 s under TCG.
        "cryptomgr.notests",
        "initcall_blacklist=jent_mod_init,crypto_kdf108_init,init_encrypted",
        // The host has no network device; inet6_init() (net/ipv6/af_inet6.c)
        // returns at once when IPv6 is disabled, instead of registering its
        // protocols, sysctls and /proc files: ~0.15 s under TCG.
        "ipv6.disable=1",
    ];
    if cfg.accel == Accel::Tcg {
        // A periodic local-APIC tick on every CPU, busy or idle. With
        // one-shot timers a single timer interrupt or wake-up IPI that TCG
        // fails to deliver leaves a CPU halted for good (RCU: "timer wakeup
        // didn't happen"), and every sleep queued on it never returns; with a
        // periodic tick the next tick, at most 1/HZ later, repairs it.
        words.extend(["nohz=off", "highres=off", "lapic=notscdeadline"]);
        // check_timer() (arch/x86/kernel/apic/io_apic.c) counts timer ticks
        // in a busy-wait window at boot; on a loaded machine TCG delivers too
        // few and the kernel panics ("timer doesn't work through
        // Interrupt-remapped IO-APIC", seen with 7.3). The tick works; skip
        // the count.
        words.push("no_timer_check");
    }
    words.extend(cfg.extra_append.iter().map(String::as_str));
    words.join(" ")
}
