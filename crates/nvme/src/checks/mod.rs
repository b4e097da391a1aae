//! The guest's NVMe checks. Each takes a controller the guest brought up
//! with [`Controller::init`] and reports through a `Reporter`, under its own
//! name as prefix:
//!
//! - `nvme.identify`: identity as INFO lines; controller, namespace list and
//!   namespace data consistent with each other.
//! - `nvme.rw`: distinct patterns written, flushed and read back byte for
//!   byte, from one block up to MDTS, through PRP1, PRP2 and PRP lists.
//! - `nvme.queues`: every granted I/O queue pair created, used and deleted.
//! - `nvme.errors`: invalid opcodes, reads past the end and queue misuse
//!   complete with the right status, and the controller still works after.
//! - `nvme.bench`: write and read throughput for 4 KiB and MDTS-sized
//!   transfers, the data read back checked.
//!
//! Data checks only ever compare against what the same run wrote, with a
//! pattern seeded per run: whatever the disk image held before cannot pass.

mod bench;
mod errors;
mod identify;
mod queues;
mod rw;

pub use bench::Rate;
pub use identify::describe;

use crate::ctrl::{Controller, DmaRange};
use crate::error::Error;
use crate::hal::{Clock, Dma, DmaBuf, Mmio};
use crate::identify::NamespaceData;
use crate::{PAGE_SIZE, queue::IoQueue};
use core::fmt::{self, Write};
use ukci_protocol::Reporter;
use ukci_protocol::catalogue::{self, Cmdline};

/// The check names, as in the catalogue.
pub const NAMES: [&str; 4] = ["nvme.identify", "nvme.rw", "nvme.queues", "nvme.errors"];

/// The throughput check (not among [`NAMES`]: it measures, it tests little).
pub const BENCH: &str = "nvme.bench";

/// Command-line keys these checks read.
pub const ARG_BDF: &str = catalogue::NVME_BDF.key;
pub const ARG_NSID: &str = catalogue::NVME_NSID.key;
pub const ARG_MAX_BYTES: &str = catalogue::NVME_MAX_BYTES.key;
pub const ARG_QUEUES: &str = catalogue::NVME_QUEUES.key;

/// A PCI address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl Bdf {
    /// `bb:dd.f` (hex), optionally with a `0000:` segment in front.
    pub fn parse(s: &str) -> Option<Bdf> {
        let (bus, dev, func) = catalogue::pci_address(s)?;
        Some(Bdf { bus, dev, func })
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.bus, self.dev, self.func)
    }
}

/// What the guest's PCI scan found about the function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// `Some(TotalVFs)` when the function has an SR-IOV capability (a PF).
    pub sriov_total_vfs: Option<u16>,
}

/// Check settings; the defaults keep a run short under TCG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The namespace to use; by default the first active one.
    pub nsid: Option<u32>,
    /// Bytes `nvme.rw` may write in one run (it reads as many back).
    pub max_bytes: usize,
    /// At most this many I/O queue pairs in `nvme.queues`.
    pub max_pairs: u16,
    /// Pattern seed; by default taken from the clock, so no two runs write
    /// the same data.
    pub seed: Option<u64>,
}

/// The most queue pairs `nvme.queues` holds at once (a fixed table, no heap).
pub const MAX_PAIRS: u16 = 64;

impl Default for Options {
    fn default() -> Options {
        Options {
            nsid: None,
            max_bytes: 4 << 20,
            max_pairs: MAX_PAIRS,
            seed: None,
        }
    }
}

impl Options {
    pub fn from_cmdline(c: &Cmdline<'_>) -> Options {
        let d = Options::default();
        Options {
            nsid: c.number(ARG_NSID).map(|n| n as u32),
            max_bytes: c.number(ARG_MAX_BYTES).map_or(d.max_bytes, |n| n as usize),
            max_pairs: c
                .number(ARG_QUEUES)
                .map_or(d.max_pairs, |n| n.clamp(1, MAX_PAIRS as u64) as u16),
            seed: None,
        }
    }
}

/// Runs the check called `name`; `false` if it is not an NVMe check.
pub fn run<M: Mmio, D: Dma, C: Clock, W: Write>(
    name: &str,
    ctrl: &mut Controller<M, D, C>,
    func: &Function,
    opts: &Options,
    r: &mut Reporter<W>,
) -> bool {
    type Check<M, D, C, W> =
        fn(&mut Controller<M, D, C>, &Function, &Options, &mut Reporter<W>) -> Result<(), Stop>;
    let (name, check): (&'static str, Check<M, D, C, W>) = match name {
        "nvme.identify" => ("nvme.identify", |c, f, o, r| {
            identify::run(c, f, o, r);
            Ok(())
        }),
        "nvme.rw" => ("nvme.rw", |c, _, o, r| rw::run(c, o, r)),
        "nvme.queues" => ("nvme.queues", |c, _, o, r| queues::run(c, o, r)),
        "nvme.errors" => ("nvme.errors", |c, _, o, r| errors::run(c, o, r)),
        BENCH => (BENCH, |c, _, o, r| bench::run(c, o, r)),
        _ => return false,
    };
    r.push(name);
    // A check that stops has reported why.
    if ready(ctrl, r).is_ok() {
        let _ = check(ctrl, func, opts, r);
    }
    r.pop();
    true
}

/// A check cannot go on; the reason has been reported.
pub(crate) struct Stop;

/// Resets a controller an earlier check left with broken rings.
pub(crate) fn ready<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    r: &mut Reporter<W>,
) -> Result<(), Stop> {
    if !ctrl.needs_reset() {
        return Ok(());
    }
    match ctrl.reset() {
        Ok(()) => {
            r.info(format_args!(
                "controller reset after an earlier lost completion"
            ));
            Ok(())
        }
        Err(e) => {
            r.check(false, "controller reset", format_args!("{e}"));
            Err(Stop)
        }
    }
}

/// The namespace to do I/O on, or a skip saying why there is none.
pub(crate) fn pick_namespace<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    opts: &Options,
    r: &mut Reporter<W>,
) -> Result<(u32, NamespaceData), Stop> {
    let fail = |r: &mut Reporter<W>, e: Error| {
        r.check(false, "namespace", format_args!("{e}"));
        Stop
    };
    let usable = |ns: &NamespaceData| ns.nsze > 0 && ns.block_size() != 0 && !ns.metadata_inline();
    if let Some(nsid) = opts.nsid {
        let ns = ctrl.identify_namespace(nsid).map_err(|e| fail(r, e))?;
        if !usable(&ns) {
            r.skip(
                "namespace",
                format_args!(
                    "namespace {nsid} has no usable format (nsze={} block size={})",
                    ns.nsze,
                    ns.block_size()
                ),
            );
            return Err(Stop);
        }
        return Ok((nsid, ns));
    }
    let mut ids = [0u32; 16];
    let n = ctrl.active_namespaces(&mut ids).map_err(|e| fail(r, e))?;
    for &nsid in &ids[..n] {
        let ns = ctrl.identify_namespace(nsid).map_err(|e| fail(r, e))?;
        if usable(&ns) {
            return Ok((nsid, ns));
        }
    }
    r.skip(
        "namespace",
        format_args!("no active namespace with a usable LBA format ({n} active)"),
    );
    Err(Stop)
}

/// The run's pattern seed.
/// Creates I/O queue pair 1 for a check; a failure is the check's `queue`
/// failure and stops it.
pub(crate) fn acquire_pair<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    r: &mut Reporter<W>,
) -> Result<IoQueue, Stop> {
    ctrl.create_io_pair(1, 0).map_err(|e| {
        r.check(
            false,
            "queue",
            format_args!("creating I/O queue pair 1: {e}"),
        );
        Stop
    })
}

/// Deletes the I/O queue pair a check used, or only forgets it when the
/// controller needs a reset anyway (deleting would time out again).
pub(crate) fn release_pair<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    q: IoQueue,
    r: &mut Reporter<W>,
) {
    let qid = q.qid();
    if ctrl.needs_reset() {
        ctrl.forget_io_pair(q);
    } else if let Err(e) = ctrl.delete_io_pair(q) {
        r.check(
            false,
            "queue",
            format_args!("deleting I/O queue pair {qid}: {e}"),
        );
    }
}

pub(crate) fn seed<M: Mmio, D: Dma, C: Clock>(
    ctrl: &mut Controller<M, D, C>,
    opts: &Options,
) -> u64 {
    opts.seed.unwrap_or_else(|| ctrl.clock().now_ns())
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The byte the pattern puts at `offset` in block `lba`: it depends on the
/// seed, the LBA and the offset only, so a read over several writes can be
/// checked, and blocks (and runs) all differ.
pub(crate) fn pattern_byte(seed: u64, lba: u64, offset: usize) -> u8 {
    let word =
        splitmix(seed ^ lba.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ ((offset / 8) as u64) << 48);
    (word >> (8 * (offset % 8))) as u8
}

const CHUNK: usize = 512;

/// Fills `range` with the pattern for blocks from `slba`.
pub(crate) fn fill_pattern(
    dma: &mut impl Dma,
    range: DmaRange,
    slba: u64,
    block: usize,
    seed: u64,
) {
    let mut chunk = [0u8; CHUNK];
    let mut pos = 0;
    while pos < range.len {
        let n = (range.len - pos).min(CHUNK);
        for (i, b) in chunk[..n].iter_mut().enumerate() {
            let p = pos + i;
            *b = pattern_byte(seed, slba + (p / block) as u64, p % block);
        }
        dma.write(range.addr + pos as u64, &chunk[..n]);
        pos += n;
    }
}

/// The first byte that differs from the pattern, and how many differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mismatch {
    pub lba: u64,
    pub offset: usize,
    pub expected: u8,
    pub got: u8,
    pub differing: usize,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mismatch lba={} offset={} expected={:#04x} got={:#04x} bytes_differing={}",
            self.lba, self.offset, self.expected, self.got, self.differing
        )
    }
}

pub(crate) fn compare(
    dma: &mut impl Dma,
    range: DmaRange,
    slba: u64,
    block: usize,
    seed: u64,
) -> Option<Mismatch> {
    let mut chunk = [0u8; CHUNK];
    let mut first: Option<Mismatch> = None;
    let mut pos = 0;
    while pos < range.len {
        let n = (range.len - pos).min(CHUNK);
        dma.read(range.addr + pos as u64, &mut chunk[..n]);
        for (i, &got) in chunk[..n].iter().enumerate() {
            let p = pos + i;
            let (lba, offset) = (slba + (p / block) as u64, p % block);
            let expected = pattern_byte(seed, lba, offset);
            if got != expected {
                match first.as_mut() {
                    Some(m) => m.differing += 1,
                    None => {
                        first = Some(Mismatch {
                            lba,
                            offset,
                            expected,
                            got,
                            differing: 1,
                        })
                    }
                }
            }
        }
        pos += n;
    }
    first
}

/// Two data buffers of `bytes` each plus a page of slack for offsets.
pub(crate) fn buffers<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    bytes: usize,
    r: &mut Reporter<W>,
) -> Result<(DmaBuf, DmaBuf), Stop> {
    let pages = bytes.div_ceil(PAGE_SIZE) + 1;
    let a = ctrl.dma().alloc(pages);
    let b = ctrl.dma().alloc(pages);
    match (a, b) {
        (Some(a), Some(b)) => Ok((a, b)),
        (a, b) => {
            for buf in [a, b].into_iter().flatten() {
                ctrl.dma().free(buf);
            }
            r.check(
                false,
                "buffers",
                format_args!("out of DMA memory: 2 x {pages} pages"),
            );
            Err(Stop)
        }
    }
}

/// The data a check writes and reads back: namespace `nsid` with blocks of
/// `block` bytes, filled from `seed` (see [`pattern_byte`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pattern {
    pub nsid: u32,
    pub block: usize,
    pub seed: u64,
}

impl Pattern {
    /// Writes the pattern for `blocks` at `slba` through `q`.
    pub fn write<M: Mmio, D: Dma, C: Clock>(
        &self,
        ctrl: &mut Controller<M, D, C>,
        q: &mut IoQueue,
        slba: u64,
        blocks: u32,
        data: DmaRange,
    ) -> Result<(), Error> {
        fill_pattern(ctrl.dma(), data, slba, self.block, self.seed);
        ctrl.write(q, self.nsid, slba, blocks, data)
    }

    /// Reads `blocks` at `slba` through `q` into a poisoned buffer and compares.
    pub fn read_compare<M: Mmio, D: Dma, C: Clock>(
        &self,
        ctrl: &mut Controller<M, D, C>,
        q: &mut IoQueue,
        slba: u64,
        blocks: u32,
        data: DmaRange,
    ) -> Result<Option<Mismatch>, Error> {
        // Whatever the buffer held must not survive a read that moved nothing.
        ctrl.dma().fill(data.addr, data.len, 0xa5);
        ctrl.read(q, self.nsid, slba, blocks, data)?;
        Ok(compare(ctrl.dma(), data, slba, self.block, self.seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_parses_with_and_without_segment() {
        assert_eq!(
            Bdf::parse("01:00.1"),
            Some(Bdf {
                bus: 1,
                dev: 0,
                func: 1
            })
        );
        assert_eq!(
            Bdf::parse("0000:1a:1f.7"),
            Some(Bdf {
                bus: 0x1a,
                dev: 0x1f,
                func: 7
            })
        );
        assert_eq!(Bdf::parse("01:20.0"), None);
        assert_eq!(Bdf::parse("01:00"), None);
        assert_eq!(
            std::format!(
                "{}",
                Bdf {
                    bus: 1,
                    dev: 2,
                    func: 3
                }
            ),
            "01:02.3"
        );
    }

    #[test]
    fn options_come_from_the_command_line() {
        let c = Cmdline("checks=nvme.rw nvme.nsid=2 nvme.max-bytes=0x100000 nvme.queues=100");
        let o = Options::from_cmdline(&c);
        assert_eq!(o.nsid, Some(2));
        assert_eq!(o.max_bytes, 1 << 20);
        assert_eq!(o.max_pairs, MAX_PAIRS, "clamped to the table size");
        assert_eq!(Options::from_cmdline(&Cmdline("")), Options::default());
    }

    #[test]
    fn every_key_and_name_is_in_the_catalogue() {
        for name in NAMES.into_iter().chain([BENCH]) {
            let check =
                ukci_protocol::catalogue::find(name).unwrap_or_else(|| panic!("{name} missing"));
            for key in [ARG_BDF, ARG_NSID] {
                assert!(
                    check.args.iter().any(|a| a.key == key),
                    "{name} lacks {key}"
                );
            }
        }
        let args = |name| ukci_protocol::catalogue::find(name).unwrap().args;
        assert!(args("nvme.rw").contains(&catalogue::NVME_MAX_BYTES));
        assert!(args(BENCH).contains(&catalogue::NVME_MAX_BYTES));
        assert!(args("nvme.queues").contains(&catalogue::NVME_QUEUES));
    }

    #[test]
    fn patterns_differ_by_seed_lba_and_offset() {
        let block: std::vec::Vec<u8> = (0..512).map(|o| pattern_byte(1, 5, o)).collect();
        let other_lba: std::vec::Vec<u8> = (0..512).map(|o| pattern_byte(1, 6, o)).collect();
        let other_seed: std::vec::Vec<u8> = (0..512).map(|o| pattern_byte(2, 5, o)).collect();
        assert_ne!(block, other_lba);
        assert_ne!(block, other_seed);
        // Not a constant fill: many distinct byte values within a block.
        let mut seen = [false; 256];
        block.iter().for_each(|&b| seen[b as usize] = true);
        assert!(seen.iter().filter(|&&s| s).count() > 100);
    }
}
