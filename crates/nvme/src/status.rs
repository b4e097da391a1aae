//! Completion status: the 15-bit status field of a completion queue entry
//! (DW3 bits 31:17) and the names of its codes.

use core::fmt;

/// Status Code Type values.
pub mod sct {
    pub const GENERIC: u8 = 0;
    pub const COMMAND_SPECIFIC: u8 = 1;
    pub const MEDIA: u8 = 2;
    pub const PATH: u8 = 3;
    pub const VENDOR: u8 = 7;
}

/// What a status means: its type and code, without the retry/more/DNR bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Code {
    pub sct: u8,
    pub sc: u8,
}

impl Code {
    pub const fn new(sct: u8, sc: u8) -> Code {
        Code { sct, sc }
    }

    /// `SCT << 8 | SC`, the form QEMU and nvme-cli print (e.g. 0x11f).
    pub const fn value(self) -> u16 {
        ((self.sct as u16) << 8) | self.sc as u16
    }

    pub const fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The specification's name. Command-specific codes from 0x80 up are
    /// named as the NVM command set defines them (Read, Write, DSM).
    pub const fn name(self) -> &'static str {
        match self.sct {
            sct::GENERIC => generic_name(self.sc),
            sct::COMMAND_SPECIFIC => specific_name(self.sc),
            sct::MEDIA => media_name(self.sc),
            sct::PATH => path_name(self.sc),
            sct::VENDOR => "Vendor Specific",
            _ => "Reserved Status Code Type",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#05x})", self.name(), self.value())
    }
}

const fn generic_name(sc: u8) -> &'static str {
    match sc {
        0x00 => "Successful Completion",
        0x01 => "Invalid Command Opcode",
        0x02 => "Invalid Field in Command",
        0x03 => "Command ID Conflict",
        0x04 => "Data Transfer Error",
        0x05 => "Commands Aborted due to Power Loss Notification",
        0x06 => "Internal Error",
        0x07 => "Command Abort Requested",
        0x08 => "Command Aborted due to SQ Deletion",
        0x09 => "Command Aborted due to Failed Fused Command",
        0x0a => "Command Aborted due to Missing Fused Command",
        0x0b => "Invalid Namespace or Format",
        0x0c => "Command Sequence Error",
        0x0d => "Invalid SGL Segment Descriptor",
        0x0e => "Invalid Number of SGL Descriptors",
        0x0f => "Data SGL Length Invalid",
        0x10 => "Metadata SGL Length Invalid",
        0x11 => "SGL Descriptor Type Invalid",
        0x12 => "Invalid Use of Controller Memory Buffer",
        0x13 => "PRP Offset Invalid",
        0x14 => "Atomic Write Unit Exceeded",
        0x15 => "Operation Denied",
        0x16 => "SGL Offset Invalid",
        0x18 => "Host Identifier Inconsistent Format",
        0x19 => "Keep Alive Timer Expired",
        0x1a => "Keep Alive Timeout Invalid",
        0x1b => "Command Aborted due to Preempt and Abort",
        0x1c => "Sanitize Failed",
        0x1d => "Sanitize In Progress",
        0x1e => "SGL Data Block Granularity Invalid",
        0x1f => "Command Not Supported for Queue in CMB",
        0x20 => "Namespace is Write Protected",
        0x21 => "Command Interrupted",
        0x22 => "Transient Transport Error",
        0x23 => "Command Prohibited by Command and Feature Lockdown",
        0x24 => "Admin Command Media Not Ready",
        0x80 => "LBA Out of Range",
        0x81 => "Capacity Exceeded",
        0x82 => "Namespace Not Ready",
        0x83 => "Reservation Conflict",
        0x84 => "Format In Progress",
        _ => "Unknown Generic Status",
    }
}

const fn specific_name(sc: u8) -> &'static str {
    match sc {
        0x00 => "Completion Queue Invalid",
        0x01 => "Invalid Queue Identifier",
        0x02 => "Invalid Queue Size",
        0x03 => "Abort Command Limit Exceeded",
        0x05 => "Asynchronous Event Request Limit Exceeded",
        0x06 => "Invalid Firmware Slot",
        0x07 => "Invalid Firmware Image",
        0x08 => "Invalid Interrupt Vector",
        0x09 => "Invalid Log Page",
        0x0a => "Invalid Format",
        0x0b => "Firmware Activation Requires Conventional Reset",
        0x0c => "Invalid Queue Deletion",
        0x0d => "Feature Identifier Not Saveable",
        0x0e => "Feature Not Changeable",
        0x0f => "Feature Not Namespace Specific",
        0x10 => "Firmware Activation Requires NVM Subsystem Reset",
        0x11 => "Firmware Activation Requires Controller Level Reset",
        0x12 => "Firmware Activation Requires Maximum Time Violation",
        0x13 => "Firmware Activation Prohibited",
        0x14 => "Overlapping Range",
        0x15 => "Namespace Insufficient Capacity",
        0x16 => "Namespace Identifier Unavailable",
        0x18 => "Namespace Already Attached",
        0x19 => "Namespace Is Private",
        0x1a => "Namespace Not Attached",
        0x1b => "Thin Provisioning Not Supported",
        0x1c => "Controller List Invalid",
        0x1d => "Device Self-test In Progress",
        0x1e => "Boot Partition Write Prohibited",
        0x1f => "Invalid Controller Identifier",
        0x20 => "Invalid Secondary Controller State",
        0x21 => "Invalid Number of Controller Resources",
        0x22 => "Invalid Resource Identifier",
        0x23 => "Sanitize Prohibited While Persistent Memory Region is Enabled",
        0x24 => "ANA Group Identifier Invalid",
        0x25 => "ANA Attach Failed",
        0x80 => "Conflicting Attributes",
        0x81 => "Invalid Protection Information",
        0x82 => "Attempted Write to Read Only Range",
        0x83 => "Command Size Limit Exceeded",
        _ => "Unknown Command Specific Status",
    }
}

const fn media_name(sc: u8) -> &'static str {
    match sc {
        0x80 => "Write Fault",
        0x81 => "Unrecovered Read Error",
        0x82 => "End-to-end Guard Check Error",
        0x83 => "End-to-end Application Tag Check Error",
        0x84 => "End-to-end Reference Tag Check Error",
        0x85 => "Compare Failure",
        0x86 => "Access Denied",
        0x87 => "Deallocated or Unwritten Logical Block",
        _ => "Unknown Media and Data Integrity Error",
    }
}

const fn path_name(sc: u8) -> &'static str {
    match sc {
        0x00 => "Internal Path Error",
        0x01 => "Asymmetric Access Persistent Loss",
        0x02 => "Asymmetric Access Inaccessible",
        0x03 => "Asymmetric Access Transition",
        0x60 => "Controller Pathing Error",
        0x70 => "Host Pathing Error",
        0x71 => "Command Aborted By Host",
        _ => "Unknown Path Related Status",
    }
}

// Codes the driver and the checks compare against.
pub const SUCCESS: Code = Code::new(sct::GENERIC, 0x00);
pub const INVALID_OPCODE: Code = Code::new(sct::GENERIC, 0x01);
pub const INVALID_FIELD: Code = Code::new(sct::GENERIC, 0x02);
pub const DATA_TRANSFER_ERROR: Code = Code::new(sct::GENERIC, 0x04);
pub const INVALID_NAMESPACE: Code = Code::new(sct::GENERIC, 0x0b);
pub const COMMAND_SEQUENCE_ERROR: Code = Code::new(sct::GENERIC, 0x0c);
pub const LBA_OUT_OF_RANGE: Code = Code::new(sct::GENERIC, 0x80);
pub const CAPACITY_EXCEEDED: Code = Code::new(sct::GENERIC, 0x81);
pub const NAMESPACE_NOT_READY: Code = Code::new(sct::GENERIC, 0x82);
pub const COMPLETION_QUEUE_INVALID: Code = Code::new(sct::COMMAND_SPECIFIC, 0x00);
pub const INVALID_QUEUE_IDENTIFIER: Code = Code::new(sct::COMMAND_SPECIFIC, 0x01);
pub const INVALID_QUEUE_SIZE: Code = Code::new(sct::COMMAND_SPECIFIC, 0x02);
pub const INVALID_QUEUE_DELETION: Code = Code::new(sct::COMMAND_SPECIFIC, 0x0c);
pub const CONTROLLER_LIST_INVALID: Code = Code::new(sct::COMMAND_SPECIFIC, 0x1c);
pub const INVALID_CONTROLLER_IDENTIFIER: Code = Code::new(sct::COMMAND_SPECIFIC, 0x1f);
pub const INVALID_SECONDARY_CONTROLLER_STATE: Code = Code::new(sct::COMMAND_SPECIFIC, 0x20);
pub const INVALID_CONTROLLER_RESOURCES: Code = Code::new(sct::COMMAND_SPECIFIC, 0x21);
pub const INVALID_RESOURCE_IDENTIFIER: Code = Code::new(sct::COMMAND_SPECIFIC, 0x22);
pub const UNRECOVERED_READ_ERROR: Code = Code::new(sct::MEDIA, 0x81);

/// The status field of a completion: the code plus its retry hints.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    pub const SUCCESS: Status = Status(0);

    /// From completion DW3 (the phase tag in bit 16 is not part of it).
    pub const fn from_dw3(dw3: u32) -> Status {
        Status(((dw3 >> 17) & 0x7fff) as u16)
    }

    /// The field as it sits in DW3 bits 31:17.
    pub const fn to_dw3_bits(self) -> u32 {
        (self.0 as u32 & 0x7fff) << 17
    }

    pub const fn new(code: Code, dnr: bool) -> Status {
        Status((code.sc as u16) | ((code.sct as u16 & 7) << 8) | if dnr { 1 << 14 } else { 0 })
    }

    pub const fn sc(self) -> u8 {
        self.0 as u8
    }
    pub const fn sct(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }
    /// Command Retry Delay index.
    pub const fn crd(self) -> u8 {
        ((self.0 >> 11) & 3) as u8
    }
    /// More information in the Error Information log.
    pub const fn more(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    /// Do Not Retry.
    pub const fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    pub const fn code(self) -> Code {
        Code::new(self.sct(), self.sc())
    }
    pub const fn is_success(self) -> bool {
        self.code().is_success()
    }
    pub const fn name(self) -> &'static str {
        self.code().name()
    }
}

impl fmt::Display for Status {
    /// `Invalid Command Opcode (0x001, dnr)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#05x}", self.name(), self.code().value())?;
        if self.dnr() {
            f.write_str(", dnr")?;
        }
        if self.more() {
            f.write_str(", more")?;
        }
        if self.crd() != 0 {
            write!(f, ", crd={}", self.crd())?;
        }
        f.write_str(")")
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn fields_decode_from_dw3() {
        // QEMU's Invalid Opcode with DNR, phase tag set: status 0x4001.
        let dw3 = (0x4001u32 << 17) | (1 << 16) | 0x1234;
        let s = Status::from_dw3(dw3);
        assert_eq!(s.code(), INVALID_OPCODE);
        assert!(s.dnr());
        assert!(!s.more());
        assert_eq!(s.to_dw3_bits() | (1 << 16) | 0x1234, dw3);
        assert_eq!(format!("{s}"), "Invalid Command Opcode (0x001, dnr)");
    }

    #[test]
    fn names_cover_the_codes_the_checks_expect() {
        let cases = [
            (SUCCESS, "Successful Completion", 0x000),
            (INVALID_OPCODE, "Invalid Command Opcode", 0x001),
            (INVALID_FIELD, "Invalid Field in Command", 0x002),
            (LBA_OUT_OF_RANGE, "LBA Out of Range", 0x080),
            (CAPACITY_EXCEEDED, "Capacity Exceeded", 0x081),
            (NAMESPACE_NOT_READY, "Namespace Not Ready", 0x082),
            (COMPLETION_QUEUE_INVALID, "Completion Queue Invalid", 0x100),
            (INVALID_QUEUE_IDENTIFIER, "Invalid Queue Identifier", 0x101),
            (INVALID_QUEUE_SIZE, "Invalid Queue Size", 0x102),
            (INVALID_QUEUE_DELETION, "Invalid Queue Deletion", 0x10c),
            (
                INVALID_CONTROLLER_IDENTIFIER,
                "Invalid Controller Identifier",
                0x11f,
            ),
            (
                INVALID_SECONDARY_CONTROLLER_STATE,
                "Invalid Secondary Controller State",
                0x120,
            ),
            (
                INVALID_CONTROLLER_RESOURCES,
                "Invalid Number of Controller Resources",
                0x121,
            ),
            (
                INVALID_RESOURCE_IDENTIFIER,
                "Invalid Resource Identifier",
                0x122,
            ),
            (UNRECOVERED_READ_ERROR, "Unrecovered Read Error", 0x281),
        ];
        for (code, name, value) in cases {
            assert_eq!(code.name(), name);
            assert_eq!(code.value(), value, "{name}");
            // The same code through the wire encoding.
            assert_eq!(
                Status::from_dw3(Status::new(code, true).to_dw3_bits()).code(),
                code
            );
        }
    }

    #[test]
    fn qemu_style_values_round_trip() {
        // QEMU writes command-specific errors as 0x100 | sc with DNR 0x4000.
        let s = Status(0x4000 | 0x120);
        assert_eq!(s.code(), INVALID_SECONDARY_CONTROLLER_STATE);
        assert_eq!(
            format!("{}", s.code()),
            "Invalid Secondary Controller State (0x120)"
        );
    }

    #[test]
    fn unknown_codes_still_have_a_name() {
        assert_eq!(Code::new(0, 0x7f).name(), "Unknown Generic Status");
        assert_eq!(Code::new(1, 0x7f).name(), "Unknown Command Specific Status");
        assert_eq!(Code::new(5, 0).name(), "Reserved Status Code Type");
        assert_eq!(Code::new(7, 0x12).name(), "Vendor Specific");
        let s = Status(0x2000 | 0x0800 | 0x06);
        assert!(s.more() && s.crd() == 1);
        assert_eq!(format!("{s}"), "Internal Error (0x006, more, crd=1)");
    }
}
