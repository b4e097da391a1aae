//! `nvme.queues`: create every I/O queue pair the controller grants, use
//! each one, delete them all.

use super::{MAX_PAIRS, Options, Pattern, Stop, buffers, pick_namespace, seed};
use crate::cmd::Command;
use crate::ctrl::Controller;
use crate::hal::{Clock, Dma, Mmio};
use crate::queue::IoQueue;
use crate::status;
use core::fmt::Write;
use ukci_protocol::Reporter;

pub(crate) fn run<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    opts: &Options,
    r: &mut Reporter<W>,
) -> Result<(), Stop> {
    let granted = ctrl.io_pairs_granted();
    let n = granted.min(opts.max_pairs).min(MAX_PAIRS);
    r.info(format_args!(
        "granted={granted} requested={} using={n}",
        ctrl.config().io_pairs
    ));

    let mut table: [Option<IoQueue>; MAX_PAIRS as usize] = core::array::from_fn(|_| None);
    let mut created = 0u16;
    let mut failure = None;
    for qid in 1..=n {
        match ctrl.create_io_pair(qid, 0) {
            Ok(q) => {
                table[qid as usize - 1] = Some(q);
                created += 1;
            }
            Err(e) => {
                failure = Some((qid, e));
                break;
            }
        }
    }
    match failure {
        None => r.check(
            true,
            "create",
            format_args!("pairs={created} granted={granted}"),
        ),
        Some((qid, e)) => r.check(false, "create", format_args!("pair {qid} of {n}: {e}")),
    };

    if created == n && n > 0 {
        use_each(ctrl, &mut table[..n as usize], opts, r);
    }

    let mut deleted = 0u16;
    let mut failure = None;
    for slot in table.iter_mut() {
        let Some(q) = slot.take() else { continue };
        let qid = q.qid();
        if ctrl.needs_reset() {
            ctrl.forget_io_pair(q);
            continue;
        }
        match ctrl.delete_io_pair(q) {
            Ok(()) => deleted += 1,
            Err(e) => {
                failure.get_or_insert((qid, e));
            }
        }
    }
    match failure {
        None if created == 0 => r.skip("delete", format_args!("no pair was created")),
        None if deleted == created => {
            r.check(true, "delete", format_args!("pairs={deleted}"));
        }
        None => {
            r.check(
                false,
                "delete",
                format_args!("deleted={deleted} of {created}: a reset removed the rest"),
            );
        }
        Some((qid, e)) => {
            r.check(false, "delete", format_args!("pair {qid}: {e}"));
        }
    }
    if created == 0 || ctrl.needs_reset() {
        return Err(Stop);
    }

    // A deleted queue is really gone.
    let gone = ctrl.admin(Command::delete_io_sq(1), None);
    expect(
        r,
        "deleted queue is gone",
        gone,
        status::INVALID_QUEUE_IDENTIFIER,
    );

    // The grant is a limit: one more completion queue is refused. Only
    // when every granted pair is in use, and the controller granted no more
    // than the driver asked for.
    let offered = ctrl.io_pairs_offered();
    if n == granted && offered == granted as u32 && granted < u16::MAX {
        let Some(page) = ctrl.dma().alloc(1) else {
            r.check(false, "beyond the grant", format_args!("out of DMA memory"));
            return Err(Stop);
        };
        let qid = granted + 1;
        let res = ctrl.admin(Command::create_io_cq(qid, 2, page.addr), None);
        let created_anyway = matches!(res, Ok(c) if c.status.is_success());
        expect(r, "beyond the grant", res, status::INVALID_QUEUE_IDENTIFIER);
        if created_anyway {
            let _ = ctrl.admin(Command::delete_io_cq(qid), None);
        }
        ctrl.dma().free(page);
    } else {
        r.skip(
            "beyond the grant",
            format_args!("{n} pairs used, the controller offered {offered}"),
        );
    }
    Ok(())
}

/// Reports whether a command completed with `want`.
pub(crate) fn expect<W: Write>(
    r: &mut Reporter<W>,
    name: &str,
    res: Result<crate::cmd::Completion, crate::Error>,
    want: status::Code,
) -> bool {
    match res {
        Ok(c) => r.check(
            c.status.code() == want,
            name,
            format_args!("status={} expected={want}", c.status),
        ),
        Err(e) => r.check(false, name, format_args!("{e} (expected {want})")),
    }
}

/// One block written through queue i, read back through queue n-1-i, with
/// a flush on every queue in between.
fn use_each<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    table: &mut [Option<IoQueue>],
    opts: &Options,
    r: &mut Reporter<W>,
) {
    const NAME: &str = "io on every queue";
    let Ok((nsid, ns)) = pick_namespace(ctrl, opts, r) else {
        return;
    };
    let n = table.len();
    let block = ns.block_size() as usize;
    if (n as u64) > ns.nsze || block > ctrl.max_transfer() {
        r.skip(
            NAME,
            format_args!("namespace {nsid} too small for {n} blocks"),
        );
        return;
    }
    let Ok((wbuf, rbuf)) = buffers(ctrl, n * block, r) else {
        return;
    };
    let pat = Pattern {
        nsid,
        block,
        seed: seed(ctrl, opts) ^ 0x9e37_79b9,
    };
    let mut outcome: Result<(), (usize, &'static str, crate::Error)> = Ok(());
    let mut mismatch = None;
    'run: {
        for (i, slot) in table.iter_mut().enumerate() {
            let q = slot.as_mut().expect("created");
            let lba = i as u64;
            let data = match wbuf.range(i * block, block) {
                Ok(d) => d,
                Err(e) => {
                    outcome = Err((i, "write", e));
                    break 'run;
                }
            };
            if let Err(e) = pat.write(ctrl, q, lba, 1, data) {
                outcome = Err((i, "write", e));
                break 'run;
            }
        }
        for (i, slot) in table.iter_mut().enumerate() {
            if let Err(e) = ctrl.flush(slot.as_mut().expect("created"), nsid) {
                outcome = Err((i, "flush", e));
                break 'run;
            }
        }
        for i in 0..n {
            let q = table[n - 1 - i].as_mut().expect("created");
            let lba = i as u64;
            let res = rbuf
                .range(i * block, block)
                .and_then(|d| pat.read_compare(ctrl, q, lba, 1, d));
            match res {
                Ok(None) => {}
                Ok(Some(m)) => {
                    mismatch.get_or_insert((n - i, lba, m));
                }
                Err(e) => {
                    outcome = Err((n - 1 - i, "read", e));
                    break 'run;
                }
            }
        }
    }
    match (outcome, mismatch) {
        (Ok(()), None) => r.check(
            true,
            NAME,
            format_args!("queues={n}: block i written on queue i+1, read back on queue {n}-i"),
        ),
        (Ok(()), Some((qid, _, m))) => {
            r.check(false, NAME, format_args!("read on queue {qid}: {m}"))
        }
        (Err((i, what, e)), _) => {
            r.check(false, NAME, format_args!("{what} on queue {}: {e}", i + 1))
        }
    };
    ctrl.dma().free(wbuf);
    ctrl.dma().free(rbuf);
}
