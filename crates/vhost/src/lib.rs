//! The virtual test host of the virtual lane: a real Linux host kernel booted
//! under QEMU with an IOMMU and an SR-IOV device, running ukci as its agent.
//!
//! The steps, one module each, each with its own cache or guard:
//! - [`kernel`]: which host kernel (`debian:6.12`, `debian:7.3`,
//!   `debian:6.12.117`, `dir:PATH`), found through ukci's private apt
//!   ([`apt`]) and unpacked once into the per-user cache ([`cache`]).
//! - [`initramfs`]: busybox, the modules the lane needs with their
//!   dependencies, and an `/init` that mounts the shares and starts the agent;
//!   cached in the per-user cache, keyed by its contents.
//! - [`kvmbuild`]: KVM modules built from the kernel's own sources with a
//!   patch set of `patches/kvm/` applied, cached per kernel, compiler and
//!   patches; the initramfs loads them instead of the kernel's.
//! - [`boot`]: the QEMU command line for the virtual host and the supervisor
//!   that runs it under a hard timeout and keeps the serial log; the kernel
//!   goes in as its PVH ELF ([`vmlinux`], unpacked once and cached).
//!
//! Decisions (version matching, dependency closure, QEMU arguments, what a
//! serial log means) are plain functions; the edges (apt, dpkg-deb, QEMU) are
//! thin wrappers around them.

pub mod accel;
pub mod apt;
pub mod boot;
pub mod cache;
pub mod initramfs;
pub mod kernel;
pub mod kvmbuild;
pub mod vmlinux;

/// Marker lines the virtual host's `/init` prints on the serial console. The
/// supervisor keys its verdict on them; nothing else in the log is protocol.
pub mod marker {
    /// Every marker line starts with this.
    pub const PREFIX: &str = "UKCI-VHOST: ";
    /// Printed right before the agent is started (modules loaded, shares mounted).
    pub const AGENT_READY: &str = "UKCI-VHOST: agent-ready";
    /// `UKCI-VHOST: agent-exit status=N`, printed when the agent has ended.
    pub const AGENT_EXIT: &str = "UKCI-VHOST: agent-exit status=";
    /// `UKCI-VHOST: init-error <what>`: /init could not prepare the host.
    pub const INIT_ERROR: &str = "UKCI-VHOST: init-error ";
}
