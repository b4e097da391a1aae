//! The emulated SR-IOV NVMe controller's resources, and the limits QEMU puts on them.

use ukci_nvme::cmd::{VF_QUEUES, VF_VECTORS};

/// The emulated SR-IOV NVMe controller (QEMU's `nvme` with `sriov_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// `sriov_max_vfs`: TotalVFs of the PF.
    pub vfs: u16,
    /// `sriov_vq_flexible`: queue resources the PF can hand to its VFs.
    pub vq_flexible: u32,
    /// `sriov_vi_flexible`: interrupt resources the PF can hand to its VFs.
    pub vi_flexible: u32,
    /// `max_ioqpairs` (QEMU default 64).
    pub max_ioqpairs: u32,
    /// `msix_qsize` (QEMU default 65).
    pub msix_qsize: u32,
    /// Shared namespaces in the subsystem (attached to every controller).
    pub namespaces: u32,
    /// Size of each namespace's backing file (sparse, in the scratch folder).
    pub namespace_bytes: u64,
}

impl Topology {
    /// Enough flexible resources for `vfs` VFs as ukci's PF driver brings
    /// them online ([`VF_QUEUES`], [`VF_VECTORS`] each), one 64 MiB namespace.
    pub fn with_vfs(vfs: u16) -> Self {
        Topology {
            vfs,
            vq_flexible: u32::from(VF_QUEUES) * u32::from(vfs),
            vi_flexible: u32::from(VF_VECTORS) * u32::from(vfs),
            max_ioqpairs: 64,
            msix_qsize: 65,
            namespaces: 1,
            namespace_bytes: 64 << 20,
        }
    }

    /// Namespaces in the subsystem: each is a file and a `-drive`.
    pub const MAX_NAMESPACES: u32 = 16;
    /// A namespace's backing file is created for every boot.
    pub const MAX_NAMESPACE_BYTES: u64 = 4 << 30;

    /// QEMU's realize-time constraints and ukci's bounds, checked before
    /// QEMU is started so the message says which field to change.
    pub fn validate(&self) -> Result<(), String> {
        let vfs = u32::from(self.vfs);
        let checks = [
            (vfs >= 1, "vfs must be at least 1".to_owned()),
            (vfs <= 127, "vfs must be at most 127".to_owned()),
            (
                self.vq_flexible >= 2 * vfs,
                format!(
                    "vq_flexible ({}) must be at least 2 × vfs ({})",
                    self.vq_flexible,
                    2 * vfs
                ),
            ),
            (
                self.max_ioqpairs >= self.vq_flexible + 2,
                format!(
                    "max_ioqpairs ({}) must be at least vq_flexible + 2 ({})",
                    self.max_ioqpairs,
                    self.vq_flexible + 2
                ),
            ),
            (
                self.vi_flexible >= vfs,
                format!(
                    "vi_flexible ({}) must be at least vfs ({vfs})",
                    self.vi_flexible
                ),
            ),
            (
                self.msix_qsize > self.vi_flexible,
                format!(
                    "msix_qsize ({}) must be at least vi_flexible + 1 ({})",
                    self.msix_qsize,
                    self.vi_flexible + 1
                ),
            ),
            (
                (1..=Self::MAX_NAMESPACES).contains(&self.namespaces),
                format!("namespaces must be from 1 to {}", Self::MAX_NAMESPACES),
            ),
            (
                (1 << 20..=Self::MAX_NAMESPACE_BYTES).contains(&self.namespace_bytes)
                    && self.namespace_bytes.is_multiple_of(4096),
                "namespace_size must be a multiple of 4K from 1M to 4G".to_owned(),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(format!("NVMe topology: {why}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_constraints_match_qemu() {
        assert!(Topology::with_vfs(2).validate().is_ok());
        assert!(Topology::with_vfs(30).validate().is_ok());
        let mut t = Topology::with_vfs(2);
        t.vq_flexible = 3;
        assert!(
            t.validate()
                .unwrap_err()
                .contains("vq_flexible (3) must be at least 2 × vfs (4)")
        );
        let mut t = Topology::with_vfs(2);
        t.max_ioqpairs = 5;
        assert!(t.validate().unwrap_err().contains("max_ioqpairs"));
        let mut t = Topology::with_vfs(2);
        t.vi_flexible = 1;
        assert!(t.validate().unwrap_err().contains("vi_flexible"));
        let mut t = Topology::with_vfs(2);
        t.msix_qsize = 2;
        assert!(t.validate().unwrap_err().contains("msix_qsize"));
        assert!(Topology::with_vfs(0).validate().is_err());
    }
}
