//! `nvme.rw`: write, flush, read back, compare byte for byte.

use super::{Options, Pattern, Stop, acquire_pair, buffers, pick_namespace, release_pair, seed};
use crate::PAGE_SIZE;
use crate::ctrl::Controller;
use crate::hal::{Clock, Dma, DmaBuf, Mmio};
use crate::queue::IoQueue;
use core::fmt::Write;
use ukci_protocol::Reporter;

/// One transfer shape.
struct Case {
    name: &'static str,
    /// Bytes (a whole number of blocks).
    bytes: usize,
    /// Offset of the data in its buffer: non-zero puts PRP1 mid-page.
    offset: usize,
}

pub(crate) fn run<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    opts: &Options,
    r: &mut Reporter<W>,
) -> Result<(), Stop> {
    let (nsid, ns) = pick_namespace(ctrl, opts, r)?;
    let block = ns.block_size() as usize;
    let max = ctrl.max_transfer() / block * block;
    if max == 0 {
        r.skip(
            "transfers",
            format_args!(
                "block size {block} exceeds the transfer limit {}",
                ctrl.max_transfer()
            ),
        );
        return Err(Stop);
    }
    let seed = seed(ctrl, opts);
    r.info(format_args!(
        "nsid={nsid} block={block} blocks={} max_transfer={max} seed={seed:#x}",
        ns.nsze
    ));
    let page = PAGE_SIZE.max(block);
    let cases = [
        Case {
            name: "one block",
            bytes: block,
            offset: 0,
        },
        Case {
            name: "one page",
            bytes: page,
            offset: 0,
        },
        Case {
            name: "two pages through prp2",
            bytes: 2 * page,
            offset: 0,
        },
        Case {
            name: "prp list",
            bytes: 5 * page,
            offset: 0,
        },
        Case {
            name: "prp list from mid-page",
            bytes: 3 * page,
            offset: 512,
        },
        Case {
            name: "mdts",
            bytes: max,
            offset: 0,
        },
    ];

    let mut q = acquire_pair(ctrl, r)?;
    let (wbuf, rbuf) = match buffers(ctrl, max, r) {
        Ok(b) => b,
        Err(stop) => {
            let _ = ctrl.delete_io_pair(q);
            return Err(stop);
        }
    };
    let mut budget = opts.max_bytes;
    let mut lba = 0u64;
    for case in &cases {
        let blocks = (case.bytes / block) as u64;
        if case.bytes > max || blocks > 65536 {
            r.skip(
                case.name,
                format_args!("{} bytes exceed the transfer limit {max}", case.bytes),
            );
            continue;
        }
        if case.bytes > budget {
            r.skip(
                case.name,
                format_args!(
                    "{} bytes exceed what is left of nvme.max-bytes ({budget})",
                    case.bytes
                ),
            );
            continue;
        }
        if lba + blocks > ns.nsze {
            r.skip(
                case.name,
                format_args!("namespace too small ({} blocks)", ns.nsze),
            );
            continue;
        }
        budget -= case.bytes;
        if one(
            ctrl,
            &mut q,
            nsid,
            lba,
            blocks as u32,
            case.offset,
            (wbuf, rbuf),
            block,
            seed,
            case.name,
            r,
        )
        .is_err()
        {
            break;
        }
        lba += blocks;
    }

    // The last blocks of the namespace: the end is addressable.
    let tail = (page / block).max(1) as u64;
    if ns.nsze > lba + tail && !ctrl.needs_reset() {
        let _ = one(
            ctrl,
            &mut q,
            nsid,
            ns.nsze - tail,
            tail as u32,
            0,
            (wbuf, rbuf),
            block,
            seed,
            "namespace end",
            r,
        );
    }
    if !ctrl.needs_reset() {
        let _ = adjacent(
            ctrl,
            &mut q,
            nsid,
            lba,
            (wbuf, rbuf),
            block,
            seed,
            ns.nsze,
            r,
        );
    }

    ctrl.dma().free(wbuf);
    ctrl.dma().free(rbuf);
    release_pair(ctrl, q, r);
    Ok(())
}

/// Write, flush, read back into the other buffer, compare.
#[allow(clippy::too_many_arguments)]
fn one<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    q: &mut IoQueue,
    nsid: u32,
    lba: u64,
    blocks: u32,
    offset: usize,
    (wbuf, rbuf): (DmaBuf, DmaBuf),
    block: usize,
    seed: u64,
    name: &str,
    r: &mut Reporter<W>,
) -> Result<(), Stop> {
    let bytes = blocks as usize * block;
    let result = (|| {
        let w = wbuf.range(offset, bytes)?;
        let rd = rbuf.range(offset, bytes)?;
        let pat = Pattern { nsid, block, seed };
        pat.write(ctrl, q, lba, blocks, w)?;
        ctrl.flush(q, nsid)?;
        pat.read_compare(ctrl, q, lba, blocks, rd)
    })();
    match result {
        Ok(None) => {
            r.check(
                true,
                name,
                format_args!("lba={lba} blocks={blocks} bytes={bytes} buffer_offset={offset}"),
            );
            Ok(())
        }
        Ok(Some(m)) => {
            r.check(
                false,
                name,
                format_args!("{m} (transfer lba={lba} blocks={blocks})"),
            );
            Ok(())
        }
        Err(e) => {
            r.check(false, name, format_args!("lba={lba} blocks={blocks}: {e}"));
            Err(Stop)
        }
    }
}

/// Two writes of a page each, read back with one command: the data of one
/// command is found by another.
#[allow(clippy::too_many_arguments)]
fn adjacent<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    q: &mut IoQueue,
    nsid: u32,
    lba: u64,
    (wbuf, rbuf): (DmaBuf, DmaBuf),
    block: usize,
    seed: u64,
    nsze: u64,
    r: &mut Reporter<W>,
) -> Result<(), Stop> {
    const NAME: &str = "two writes read as one";
    let half = (PAGE_SIZE / block).max(1) as u32;
    let bytes = 2 * half as usize * block;
    if bytes > ctrl.max_transfer() || lba + 2 * half as u64 > nsze {
        r.skip(
            NAME,
            format_args!(
                "needs {bytes} bytes in one transfer and {} free blocks",
                2 * half
            ),
        );
        return Ok(());
    }
    // A different seed from the cases before, so these blocks are rewritten.
    let seed = seed ^ 0x5a5a_5a5a;
    let result = (|| {
        let first = wbuf.range(0, bytes / 2)?;
        let second = wbuf.range(bytes / 2, bytes / 2)?;
        let pat = Pattern { nsid, block, seed };
        pat.write(ctrl, q, lba, half, first)?;
        pat.write(ctrl, q, lba + half as u64, half, second)?;
        ctrl.flush(q, nsid)?;
        pat.read_compare(ctrl, q, lba, 2 * half, rbuf.range(0, bytes)?)
    })();
    match result {
        Ok(m) => {
            r.check(
                m.is_none(),
                NAME,
                format_args!("lba={lba} blocks={}{}", 2 * half, Detail(m)),
            );
            Ok(())
        }
        Err(e) => {
            r.check(false, NAME, format_args!("lba={lba}: {e}"));
            Err(Stop)
        }
    }
}

struct Detail(Option<super::Mismatch>);

impl core::fmt::Display for Detail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &self.0 {
            Some(m) => write!(f, " {m}"),
            None => Ok(()),
        }
    }
}
