//! The exit-status convention: the guest writes `code` to isa-debug-exit and
//! QEMU exits with `(code << 1) | 1`, as kvm-unit-tests does. The `EXIT:` line
//! carries the status QEMU will exit with, so the runner can tell a guest's
//! own verdict from QEMU failing for another reason.

/// The isa-debug-exit device every ukci guest gets.
pub const ISA_DEBUG_EXIT_PORT: u16 = 0xf4;
pub const ISA_DEBUG_EXIT_SIZE: u16 = 4;

/// What a guest run concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every result was a pass or an expected outcome.
    Pass,
    /// At least one unexpected failure.
    Fail,
    /// Every result was a skip.
    AllSkipped,
    /// An unexpected exception or a panic stopped the guest.
    Abort,
}

impl Verdict {
    /// The value the guest writes to the port.
    pub const fn code(self) -> u32 {
        match self {
            Verdict::Pass => 0,
            Verdict::Fail => 1,
            Verdict::AllSkipped => 38,
            Verdict::Abort => 63,
        }
    }

    /// The status QEMU exits with.
    pub const fn status(self) -> u32 {
        qemu_status(self.code())
    }

    /// The verdict behind a QEMU exit status, if it is one a guest can produce.
    pub fn from_status(status: u32) -> Option<Verdict> {
        [
            Verdict::Pass,
            Verdict::Fail,
            Verdict::AllSkipped,
            Verdict::Abort,
        ]
        .into_iter()
        .find(|v| v.status() == status)
    }
}

/// QEMU's exit status after a guest wrote `code` to isa-debug-exit.
pub const fn qemu_status(code: u32) -> u32 {
    (code << 1) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_kvm_unit_tests() {
        assert_eq!(Verdict::Pass.status(), 1);
        assert_eq!(Verdict::Fail.status(), 3);
        assert_eq!(Verdict::AllSkipped.status(), 77);
        assert_eq!(Verdict::Abort.status(), 127);
        for v in [
            Verdict::Pass,
            Verdict::Fail,
            Verdict::AllSkipped,
            Verdict::Abort,
        ] {
            assert_eq!(Verdict::from_status(v.status()), Some(v));
        }
        assert_eq!(Verdict::from_status(0), None);
        assert_eq!(Verdict::from_status(124), None);
    }
}
