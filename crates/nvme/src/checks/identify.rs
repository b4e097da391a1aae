//! `nvme.identify`: who the controller is, and whether its identify data
//! agrees with itself.

use super::{Function, Options};
use crate::ctrl::Controller;
use crate::hal::{Clock, Dma, Mmio};
use crate::identify::{ControllerData, SecondaryCtrl, ascii};
use core::fmt::Write;
use ukci_protocol::Reporter;

/// Namespaces examined in detail.
const MAX_NAMESPACES: usize = 16;

/// INFO lines naming the function and the controller: vendor, model,
/// serial, firmware, CNTLID, version, namespaces, and PF or VF. On a PF with
/// Virtualization Management, also its flexible resources and secondaries.
pub fn describe<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    func: &Function,
    r: &mut Reporter<W>,
) {
    let d = ctrl.controller_data().clone();
    let version = ctrl.version();
    r.info(format_args!(
        "function {} [{:04x}:{:04x}] {}",
        func.bdf,
        func.vendor,
        func.device,
        match func.sriov_total_vfs {
            Some(_) => "has an SR-IOV capability: a physical function",
            None => "has no SR-IOV capability: a VF or a plain function",
        }
    ));
    if let Some(total) = func.sriov_total_vfs {
        r.info(format_args!("sr-iov total_vfs={total}"));
    }
    r.info(format_args!(
        "controller vid={:#06x} ssvid={:#06x} model=\"{}\" serial=\"{}\" firmware=\"{}\"",
        d.vid,
        d.ssvid,
        d.model(),
        d.serial(),
        d.firmware()
    ));
    r.info(format_args!(
        "controller cntlid={} version={} nn={} mdts={} max_transfer={} io_pairs={} cmic={:#x} oacs={:#x}{}",
        d.cntlid,
        version,
        d.nn,
        d.mdts,
        ctrl.max_transfer(),
        ctrl.io_pairs_granted(),
        d.cmic,
        d.oacs,
        if d.cmic & crate::identify::CMIC_SRIOV_VF != 0 {
            " (associated with an SR-IOV VF: a secondary controller)"
        } else {
            ""
        }
    ));
    if func.sriov_total_vfs.is_some() && d.has_virtualization_management() {
        describe_secondaries(ctrl, r);
    }
}

fn describe_secondaries<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    r: &mut Reporter<W>,
) {
    match ctrl.primary_controller_caps() {
        Ok(p) => r.info(format_args!(
            "primary cntlid={} vq: flexible={} assigned={} primary={} private={} per_secondary={} \
             vi: flexible={} assigned={} primary={} private={} per_secondary={}",
            p.cntlid,
            p.vqfrt,
            p.vqrfa,
            p.vqrfap,
            p.vqprt,
            p.vqfrsm,
            p.vifrt,
            p.virfa,
            p.virfap,
            p.viprt,
            p.vifrsm
        )),
        Err(e) => r.info(format_args!("primary controller capabilities: {e}")),
    }
    let mut list = [SecondaryCtrl::default(); 8];
    match ctrl.secondary_controllers(0, &mut list) {
        Ok(n) => {
            r.info(format_args!("secondary controllers: {n} listed"));
            for s in &list[..n] {
                r.info(format_args!("secondary {s}"));
            }
        }
        Err(e) => r.info(format_args!("secondary controller list: {e}")),
    }
}

/// Problems with the controller's own data, as text.
fn controller_problem(d: &ControllerData, vs: u32, w: &mut impl Write) -> bool {
    let mut bad = false;
    let mut say = |w: &mut dyn Write, a: core::fmt::Arguments<'_>| {
        let _ = write!(w, "{}{a}", if bad { "; " } else { "" });
        bad = true;
    };
    if d.nn == 0 {
        say(w, format_args!("nn=0"));
    }
    if d.sqes & 0xf != 6 || d.sqes >> 4 < 6 {
        say(
            w,
            format_args!("sqes={:#x} (required 64-byte entries)", d.sqes),
        );
    }
    if d.cqes & 0xf != 4 || d.cqes >> 4 < 4 {
        say(
            w,
            format_args!("cqes={:#x} (required 16-byte entries)", d.cqes),
        );
    }
    if d.ver != 0 && d.ver != vs {
        say(w, format_args!("identify ver={:#x} but VS={vs:#x}", d.ver));
    }
    for (field, bytes) in [
        ("serial", &d.sn[..]),
        ("model", &d.mn[..]),
        ("firmware", &d.fr[..]),
    ] {
        if ascii(bytes).is_none() {
            say(w, format_args!("{field} is not printable ASCII"));
        }
    }
    bad
}

/// A small text buffer for details built piecewise.
pub(crate) struct Text {
    buf: [u8; 200],
    len: usize,
}

impl Text {
    pub(crate) fn new() -> Text {
        Text {
            buf: [0; 200],
            len: 0,
        }
    }
    pub(crate) fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Write for Text {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // Cut at a character boundary when full.
        let mut n = s.len().min(self.buf.len() - self.len);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

pub(crate) fn run<M: Mmio, D: Dma, C: Clock, W: Write>(
    ctrl: &mut Controller<M, D, C>,
    func: &Function,
    opts: &Options,
    r: &mut Reporter<W>,
) {
    // Fresh data, not what bring-up cached: the check is about the command.
    let d = match ctrl.identify_controller() {
        Ok(d) => d,
        Err(e) => {
            r.check(
                false,
                "controller",
                format_args!("Identify Controller: {e}"),
            );
            return;
        }
    };
    describe(ctrl, func, r);
    let mut text = Text::new();
    let bad = controller_problem(&d, ctrl.version().0, &mut text);
    r.check(
        !bad && d == *ctrl.controller_data(),
        "controller",
        format_args!(
            "{}{}",
            if bad { text.as_str() } else { "consistent" },
            if d != *ctrl.controller_data() {
                "; differs from the data read at bring-up"
            } else {
                ""
            }
        ),
    );

    let mut ids = [0u32; 64];
    let n = match ctrl.active_namespaces(&mut ids) {
        Ok(n) => n,
        Err(e) => {
            r.check(false, "namespace list", format_args!("{e}"));
            return;
        }
    };
    let ids = &ids[..n];
    let ascending = ids.windows(2).all(|w| w[0] < w[1]);
    let in_range = ids.iter().all(|&id| id != 0 && id <= d.nn);
    r.check(
        ascending && in_range,
        "namespace list",
        format_args!(
            "active={n} nn={}{}{}",
            d.nn,
            if ascending { "" } else { " not ascending" },
            if in_range { "" } else { " nsid outside 1..=nn" }
        ),
    );
    if n == 0 {
        r.info(format_args!("no active namespaces"));
    }

    let mdts = d.max_transfer(ctrl.cap().mps_min());
    let mut checked = 0;
    for &nsid in ids.iter().take(MAX_NAMESPACES) {
        if opts.nsid.is_some_and(|want| want != nsid) {
            continue;
        }
        checked += 1;
        let ns = match ctrl.identify_namespace(nsid) {
            Ok(ns) => ns,
            Err(e) => {
                let mut name = Text::new();
                let _ = write!(name, "namespace {nsid}");
                r.check(
                    false,
                    name.as_str(),
                    format_args!("Identify Namespace: {e}"),
                );
                continue;
            }
        };
        let f = ns.format();
        let bs = ns.block_size();
        r.info(format_args!(
            "namespace {nsid}: nsze={} ncap={} nuse={} lbaf={} block={} metadata={} size={} MiB",
            ns.nsze,
            ns.ncap,
            ns.nuse,
            ns.format_index(),
            bs,
            f.ms,
            (ns.nsze.saturating_mul(bs)) >> 20
        ));
        let mut text = Text::new();
        let mut bad = false;
        let mut say = |t: &mut Text, a: core::fmt::Arguments<'_>| {
            let _ = write!(t, "{}{a}", if bad { "; " } else { "" });
            bad = true;
        };
        if ns.nsze == 0 {
            say(&mut text, format_args!("nsze=0"));
        }
        if ns.ncap > ns.nsze || ns.nuse > ns.ncap {
            say(
                &mut text,
                format_args!(
                    "nuse={} <= ncap={} <= nsze={} violated",
                    ns.nuse, ns.ncap, ns.nsze
                ),
            );
        }
        if ns.format_index() > ns.nlbaf as usize {
            say(
                &mut text,
                format_args!(
                    "flbas={:#x} selects a format beyond nlbaf={}",
                    ns.flbas, ns.nlbaf
                ),
            );
        }
        if bs == 0 {
            say(&mut text, format_args!("lbads={} (below 9)", f.lbads));
        }
        if let Some(m) = mdts
            && bs > m
        {
            say(&mut text, format_args!("block size {bs} above MDTS {m}"));
        }
        let mut name = Text::new();
        let _ = write!(name, "namespace {nsid}");
        r.check(
            !bad,
            name.as_str(),
            format_args!("{}", if bad { text.as_str() } else { "consistent" }),
        );
    }
    if let Some(want) = opts.nsid
        && checked == 0
    {
        r.check(
            false,
            "namespace",
            format_args!("nsid={want} is not active"),
        );
    }
}
