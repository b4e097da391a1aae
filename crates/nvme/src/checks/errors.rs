//! `nvme.errors`: commands that must fail, fail with the right status, and
//! the controller keeps working afterwards.

use super::queues::expect;
use super::{Options, Pattern, Stop, acquire_pair, buffers, pick_namespace, release_pair, seed};
use crate::cmd::{self, Command};
use crate::ctrl::Controller;
use crate::hal::{Clock, Dma, Mmio};
use crate::status;
use core::fmt::Write;
use ukci_protocol::Reporter;

pub(crate) fn run<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    opts: &Options,
    r: &mut Reporter<W>,
) -> Result<(), Stop> {
    let (nsid, ns) = pick_namespace(ctrl, opts, r)?;
    let block = ns.block_size() as usize;

    let res = ctrl.admin(Command::new(cmd::admin::RESERVED), None);
    expect(r, "admin invalid opcode", res, status::INVALID_OPCODE);

    // Queue misuse, on qid 1 while it does not exist.
    let Some(page) = ctrl.dma().alloc(1) else {
        r.check(false, "buffers", format_args!("out of DMA memory"));
        return Err(Stop);
    };
    let res = ctrl.admin(Command::create_io_sq(1, 2, 1, page.addr), None);
    expect(
        r,
        "sq on a missing cq",
        res,
        status::COMPLETION_QUEUE_INVALID,
    );
    let mqes = ctrl.cap().max_queue_entries();
    if mqes < 0x10000 {
        let res = ctrl.admin(Command::create_io_cq(1, 0, page.addr), None);
        let made = matches!(res, Ok(c) if c.status.is_success());
        expect(r, "queue larger than mqes", res, status::INVALID_QUEUE_SIZE);
        if made {
            let _ = ctrl.admin(Command::delete_io_cq(1), None);
        }
    } else {
        r.skip(
            "queue larger than mqes",
            format_args!("CAP.MQES allows 65536 entries"),
        );
    }
    let res = ctrl.admin(Command::delete_io_sq(1), None);
    expect(
        r,
        "delete a missing sq",
        res,
        status::INVALID_QUEUE_IDENTIFIER,
    );
    ctrl.dma().free(page);

    let mut q = acquire_pair(ctrl, r)?;
    let res = ctrl.admin(Command::delete_io_cq(1), None);
    expect(
        r,
        "delete a cq with its sq",
        res,
        status::INVALID_QUEUE_DELETION,
    );

    let res = ctrl.io(
        &mut q,
        Command::new(cmd::io::RESERVED).with_nsid(nsid),
        None,
    );
    expect(r, "io invalid opcode", res, status::INVALID_OPCODE);

    let Ok((wbuf, rbuf)) = buffers(ctrl, 2 * block, r) else {
        let _ = ctrl.delete_io_pair(q);
        return Err(Stop);
    };
    let two = rbuf.range(0, 2 * block).expect("sized above");
    let one = rbuf.range(0, block).expect("sized above");
    let res = ctrl.io(&mut q, Command::read(nsid, ns.nsze, 1), Some(one));
    expect(r, "read past the end", res, status::LBA_OUT_OF_RANGE);
    let res = ctrl.io(&mut q, Command::read(nsid, ns.nsze - 1, 2), Some(two));
    expect(r, "read across the end", res, status::LBA_OUT_OF_RANGE);

    // Still working: admin and I/O, data written now and read back.
    if !ctrl.needs_reset() {
        let admin = ctrl.identify_controller();
        let seed = seed(ctrl, opts) ^ 0xe77;
        let lba = ns.nsze - 1;
        let pat = Pattern { nsid, block, seed };
        let io = pat
            .write(ctrl, &mut q, lba, 1, wbuf.range(0, block).expect("sized"))
            .and_then(|()| pat.read_compare(ctrl, &mut q, lba, 1, one));
        match (admin, io) {
            (Ok(_), Ok(None)) => r.check(
                true,
                "still working",
                format_args!("identify, write and read of lba {lba}"),
            ),
            (Err(e), _) => r.check(
                false,
                "still working",
                format_args!("Identify Controller: {e}"),
            ),
            (_, Ok(Some(m))) => r.check(false, "still working", format_args!("{m}")),
            (_, Err(e)) => r.check(false, "still working", format_args!("lba {lba}: {e}")),
        };
    } else {
        r.check(
            false,
            "still working",
            format_args!("an earlier command was lost"),
        );
    }

    ctrl.dma().free(wbuf);
    ctrl.dma().free(rbuf);
    release_pair(ctrl, q, r);
    Ok(())
}
