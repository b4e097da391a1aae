//! The exit statuses of `cargo xtask test` and `cargo xtask restore`,
//! documented in README.md.

/// Everything ran and every result was as expected (pass, skip, xfail).
pub const OK: i32 = 0;
/// At least one result failed or passed unexpectedly (xpass).
pub const FAILED: i32 = 1;
/// The command line was wrong.
pub const USAGE: i32 = 2;
/// A manifest (or the host config) could not be read, parsed or validated.
pub const MANIFEST: i32 = 3;
/// At least one test had an infrastructure error (timeout, crash, QEMU
/// refused to start). Takes precedence over `FAILED`.
pub const ERROR: i32 = 4;
/// The host lacks something ukci needs and could not set it up.
pub const HOST: i32 = 5;
/// Not everything an earlier run changed on a device could be put back
/// (an unreadable journal line, a refused or failed entry): the journal is
/// kept and the message names each line and what to do.
pub const RESTORE: i32 = 6;
/// Another ukci run (the message names its pid) holds the restore journal:
/// it may be changing devices now.
pub const BUSY: i32 = 7;
/// Interrupted (Ctrl-C or SIGTERM); every VM was killed.
pub const INTERRUPTED: i32 = 130;

/// The table printed by `--help` and in README.md.
pub const TABLE: &[(i32, &str)] = &[
    (
        OK,
        "every result as expected (pass, skip with reason, xfail)",
    ),
    (
        FAILED,
        "a result failed, or passed where a failure was expected (xpass)",
    ),
    (USAGE, "bad command line"),
    (
        MANIFEST,
        "a manifest or the host config could not be read, parsed or validated",
    ),
    (
        ERROR,
        "infrastructure error: timeout, guest crash or reset, QEMU refused to start",
    ),
    (
        HOST,
        "the host lacks QEMU, the guest target or another prerequisite",
    ),
    (
        RESTORE,
        "devices an earlier run changed could not all be put back; the restore journal is kept and the message names its lines and what to do",
    ),
    (
        BUSY,
        "`restore`: another ukci run (the message names its pid) holds the restore journal",
    ),
    (INTERRUPTED, "interrupted; every VM was killed"),
];
