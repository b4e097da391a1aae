//! The accelerator QEMU executes a guest with: ukci's test VMs, the virtual
//! hosts, and what a virtual host's own KVM runs on. One type for all of
//! them; manifests and `--accel` also say `auto`, which the runner resolves
//! to one of these before a VM starts.

use std::fmt;

/// How QEMU executes the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accel {
    /// Portable and the only choice where KVM cannot run the guest.
    Tcg,
    /// Only where KVM really works for this guest (detected by the caller).
    Kvm,
}

impl Accel {
    pub const ALL: [Accel; 2] = [Accel::Kvm, Accel::Tcg];

    /// As QEMU's `-accel`, manifests and reports spell it.
    pub fn word(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }

    pub fn from_word(w: &str) -> Option<Accel> {
        Accel::ALL.into_iter().find(|a| a.word() == w)
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for a in Accel::ALL {
            assert_eq!(Accel::from_word(a.word()), Some(a));
        }
        assert_eq!(Accel::from_word("auto"), None);
        assert_eq!(Accel::Kvm.to_string(), "kvm");
    }
}
