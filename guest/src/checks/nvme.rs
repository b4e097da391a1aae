//! `nvme.identify`, `nvme.rw`, `nvme.queues`, `nvme.errors` and
//! `nvme.bench`: the checks of `ukci-nvme`, on the NVMe function named by
//! `nvme.bdf=` or else the first one of class 01:08:02.
//!
//! The firmware-less ROM image (used on microvm, which has no PCI bus here)
//! leaves the driver out to fit its 128 KiB: there every NVMe check skips.
//!
//! Each check brings the controller up afresh (its own reset, admin queue
//! and DMA pool), runs, and disables it again, so checks never depend on
//! one another's leftovers.

use super::Env;
use imp::run;
use ukci_nvme::checks;

pub fn identify(env: &Env) {
    run(env, "nvme.identify");
}

pub fn rw(env: &Env) {
    run(env, "nvme.rw");
}

pub fn queues(env: &Env) {
    run(env, "nvme.queues");
}

pub fn errors(env: &Env) {
    run(env, "nvme.errors");
}

pub fn bench(env: &Env) {
    run(env, checks::BENCH);
}

#[cfg(not(feature = "rom"))]
mod imp {
    use super::Env;
    use ukci_guest::arch::tsc;
    use ukci_guest::nvme::{self, OpenError, PoolDma, TscClock};
    use ukci_guest::report::{self, info};
    use ukci_guest::{dma, pci};
    use ukci_nvme::checks::{self, ARG_BDF, Options};
    use ukci_nvme::{Config, Controller};

    pub fn run(env: &Env, name: &'static str) {
        let bdf = env.cmdline.get(ARG_BDF);
        let dev = match nvme::open(env.boot, bdf) {
            Ok(d) => d,
            Err(e @ OpenError::Absent { .. }) => {
                report::skip(
                    "controller",
                    format_args!("{e}: this VM has no NVMe controller (add one, on q35 or pc)"),
                );
                return;
            }
            Err(e) => {
                report::check(false, "controller", format_args!("{e}"));
                return;
            }
        };
        let (pool, pages, _) = dma::stats();
        info!(
            "{} [{:04x}:{:04x}] bar0 {} dma_pool={pool:#x}+{}KiB {}",
            dev.pci.bdf,
            dev.pci.vendor_id,
            dev.pci.device_id,
            dev.pci.bars[0],
            pages * 4,
            tsc::calibration()
        );
        if pci::truncated() {
            info!("the PCI scan stopped at {} functions", pci::MAX_FUNCTIONS);
        }
        let opts = Options::from_cmdline(&env.cmdline);
        let mut ctrl = match Controller::init(dev.bar0, PoolDma, TscClock, Config::default()) {
            Ok(c) => c,
            Err(e) => {
                report::check(
                    false,
                    "controller",
                    format_args!("bring-up of {}: {e}", dev.function.bdf),
                );
                return;
            }
        };
        report::with_reporter(|r| {
            if name != "nvme.identify" {
                // nvme.identify describes the controller itself.
                checks::describe(&mut ctrl, &dev.function, r);
            }
            // The checks push their own name: report at the top level.
            r.pop();
            checks::run(name, &mut ctrl, &dev.function, &opts, r);
            r.push(name);
        });
        if let Err(e) = ctrl.disable() {
            report::check(false, "controller disable", format_args!("{e}"));
        }
    }
}

#[cfg(feature = "rom")]
mod imp {
    use super::Env;
    use ukci_guest::report;

    pub fn run(_env: &Env, _name: &'static str) {
        report::skip(
            "controller",
            format_args!(
                "the firmware-less ROM image has no NVMe driver (it boots microvm, which has no PCI bus here)"
            ),
        );
    }
}
