//! `nvme.bench`: sequential write and read throughput at queue depth 1, for
//! 4 KiB transfers and for the largest transfer the driver issues (MDTS,
//! capped by `Config::max_transfer`).
//!
//! Each shape writes `nvme.max-bytes` (at most the namespace) from one
//! patterned buffer, flushes, and reads it all back; the last read is
//! compared with what was written, so a fast but wrong device fails. The
//! figures are INFO lines `bench op=.. transfer=.. count=.. bytes=.. ns=..
//! mib_per_s=..` (`cargo xtask bench` parses them) and repeated in the
//! details of the passing results.

use super::{
    Options, Stop, acquire_pair, buffers, compare, fill_pattern, pick_namespace, release_pair, seed,
};
use crate::ctrl::{Controller, DmaRange};
use crate::error::Error;
use crate::hal::{Clock, Dma, DmaBuf, Mmio};
use crate::queue::IoQueue;
use core::fmt::{self, Write};
use ukci_protocol::Reporter;

/// The small transfer measured.
pub const SMALL: usize = 4096;

/// Bytes per second as MiB/s with two decimals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub bytes: u64,
    pub ns: u64,
}

impl Rate {
    /// MiB/s times 100.
    pub fn centi_mib_per_s(&self) -> u64 {
        let ns = u128::from(self.ns.max(1));
        (u128::from(self.bytes) * 100 * 1_000_000_000 / ns / (1 << 20)) as u64
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.centi_mib_per_s();
        write!(f, "{}.{:02}", c / 100, c % 100)
    }
}

pub(crate) fn run<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    opts: &Options,
    r: &mut Reporter<W>,
) -> Result<(), Stop> {
    let (nsid, ns) = pick_namespace(ctrl, opts, r)?;
    let block = ns.block_size() as usize;
    let max = ctrl.max_transfer() / block * block;
    let capacity = ns.nsze.saturating_mul(block as u64);
    let per_shape = (opts.max_bytes as u64).min(capacity);
    let seed = seed(ctrl, opts);
    r.info(format_args!(
        "nsid={nsid} block={block} capacity={capacity} bytes_per_shape={per_shape} \
         max_transfer={max} queue_depth=1"
    ));
    let mut q = acquire_pair(ctrl, r)?;
    let bufs = match buffers(ctrl, max, r) {
        Ok(b) => b,
        Err(stop) => {
            let _ = ctrl.delete_io_pair(q);
            return Err(stop);
        }
    };
    let small = SMALL.max(block);
    for (name, size) in [("4k", small), ("mdts", max)] {
        if size == 0 || size > max {
            r.skip(
                name,
                format_args!("{size}-byte transfers exceed the transfer limit {max}"),
            );
            continue;
        }
        if (size as u64) > per_shape {
            r.skip(
                name,
                format_args!("{size}-byte transfers exceed the {per_shape} bytes to move"),
            );
            continue;
        }
        let shape = Shape {
            nsid,
            block,
            size,
            count: per_shape / size as u64,
            nsze: ns.nsze,
            seed,
        };
        if shape.measure(ctrl, &mut q, bufs, name, r).is_err() {
            break;
        }
    }
    ctrl.dma().free(bufs.0);
    ctrl.dma().free(bufs.1);
    release_pair(ctrl, q, r);
    Ok(())
}

struct Shape {
    nsid: u32,
    block: usize,
    size: usize,
    count: u64,
    nsze: u64,
    seed: u64,
}

impl Shape {
    fn blocks(&self) -> u64 {
        (self.size / self.block) as u64
    }

    /// The LBA of transfer `i`: consecutive, wrapping at the namespace end.
    fn lba(&self, i: u64) -> u64 {
        let span = self.blocks();
        let slots = self.nsze / span;
        (i % slots) * span
    }

    fn measure<M: Mmio, D: Dma, C: Clock, W: Write>(
        &self,
        ctrl: &mut Controller<M, D, C>,
        q: &mut IoQueue,
        (wbuf, rbuf): (DmaBuf, DmaBuf),
        name: &str,
        r: &mut Reporter<W>,
    ) -> Result<(), Stop> {
        let fail = |r: &mut Reporter<W>, what: &str, e: Error| {
            r.check(false, name, format_args!("{what}: {e}"));
            Stop
        };
        let (w, rd) = match (wbuf.range(0, self.size), rbuf.range(0, self.size)) {
            (Ok(w), Ok(rd)) => (w, rd),
            (Err(e), _) | (_, Err(e)) => return Err(fail(r, "buffers", e)),
        };
        // The same data for every transfer: generating it is not measured.
        fill_pattern(ctrl.dma(), w, 0, self.block, self.seed);
        let write = self
            .timed(ctrl, q, w, true)
            .map_err(|e| fail(r, "write", e))?;
        ctrl.dma().fill(rd.addr, rd.len, 0xa5);
        let read = self
            .timed(ctrl, q, rd, false)
            .map_err(|e| fail(r, "read", e))?;
        // The last transfer read must be what was written.
        let mismatch = compare(ctrl.dma(), rd, 0, self.block, self.seed);
        for (op, rate) in [("write", write), ("read", read)] {
            r.info(format_args!(
                "bench op={op} transfer={} count={} bytes={} ns={} mib_per_s={rate}",
                self.size, self.count, rate.bytes, rate.ns
            ));
        }
        match mismatch {
            None => r.check(
                true,
                name,
                format_args!(
                    "transfer={} count={} write_mib_per_s={write} read_mib_per_s={read}",
                    self.size, self.count
                ),
            ),
            Some(m) => r.check(
                false,
                name,
                format_args!("read back after {} transfers: {m}", self.count),
            ),
        };
        Ok(())
    }

    /// `count` transfers (then a flush, for writes), timed.
    fn timed<M: Mmio, D: Dma, C: Clock>(
        &self,
        ctrl: &mut Controller<M, D, C>,
        q: &mut IoQueue,
        data: DmaRange,
        write: bool,
    ) -> Result<Rate, Error> {
        let blocks = self.blocks() as u32;
        let start = ctrl.clock().now_ns();
        for i in 0..self.count {
            let lba = self.lba(i);
            if write {
                ctrl.write(q, self.nsid, lba, blocks, data)?;
            } else {
                ctrl.read(q, self.nsid, lba, blocks, data)?;
            }
        }
        if write {
            ctrl.flush(q, self.nsid)?;
        }
        let ns = ctrl.clock().now_ns().saturating_sub(start);
        Ok(Rate {
            bytes: self.count * self.size as u64,
            ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_print_as_mib_per_second() {
        let r = Rate {
            bytes: 3 << 20,
            ns: 2_000_000_000,
        };
        assert_eq!(std::format!("{r}"), "1.50");
        assert_eq!(
            std::format!("{}", Rate { bytes: 0, ns: 0 }),
            "0.00",
            "no division by zero"
        );
        let s = Shape {
            nsid: 1,
            block: 512,
            size: 4096,
            count: 10,
            nsze: 24,
            seed: 0,
        };
        assert_eq!(
            (0..4).map(|i| s.lba(i)).collect::<std::vec::Vec<_>>(),
            [0, 8, 16, 0]
        );
    }
}
