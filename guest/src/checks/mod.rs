//! The checks compiled into the guest and the loop that runs the ones named
//! on the command line.
//!
//! Adding a check: put a `pub fn name(env: &Env)` in the file of its family
//! (or a new file here), add its name to `ukci_protocol::catalogue::CHECKS`
//! (the runner validates manifests against that list), and add the pair to
//! [`REGISTRY`]. The dispatcher here (`run_one`) pushes the check's name as
//! prefix, so a check reports results by their own short names through
//! `ukci_guest::report`.

mod boot;
mod cr;
mod fault;
mod nvme;
mod selftest;

use ukci_guest::arch::paging;
use ukci_guest::bootinfo::BootInfo;
use ukci_guest::report;
use ukci_protocol::Verdict;
use ukci_protocol::catalogue::{self, Cmdline};

/// What a check may look at.
pub struct Env {
    pub boot: &'static BootInfo,
    /// The whole command line: checks read their own `key=value` arguments.
    pub cmdline: Cmdline<'static>,
}

type CheckFn = fn(&Env);

const REGISTRY: &[(&str, CheckFn)] = &[
    ("boot.smoke", boot::smoke),
    ("fault.selftest", fault::selftest),
    ("nvme.identify", nvme::identify),
    ("nvme.rw", nvme::rw),
    ("nvme.queues", nvme::queues),
    ("nvme.errors", nvme::errors),
    ("nvme.bench", nvme::bench),
    ("selftest.hang", selftest::hang),
    ("selftest.triple-fault", selftest::triple_fault),
    ("selftest.panic", selftest::panic),
    ("selftest.no-exit", selftest::no_exit),
    (ukci_crpin::DETECT, cr::pin_detect),
    (ukci_crpin::V3_HIGH, cr::pin_v3_high),
    (ukci_crpin::V3_LOW, cr::pin_v3_low),
    (ukci_crpin::V1, cr::pin_v1),
    (ukci_crpin::HEKI, cr::pin_heki),
    (ukci_crpin::CR0_RESERVED, cr::cr0_reserved),
    (ukci_crpin::CR4_RESERVED, cr::cr4_reserved),
    (ukci_crpin::CR4_FEATURES, cr::cr4_features),
    (ukci_crpin::CR0_COMBINATIONS, cr::cr0_combinations),
    (ukci_crpin::CR0_WP, cr::cr0_wp),
    (ukci_crpin::SMEP, cr::smep),
    (ukci_crpin::SMAP, cr::smap),
    (ukci_crpin::UMIP, cr::umip),
];

/// Runs every check named by `checks=`, in order, and returns the verdict
/// (after `SUMMARY:`/`EXIT:`).
pub fn run(env: &Env) -> Verdict {
    let mut any = false;
    for name in env.cmdline.checks() {
        any = true;
        run_one(env, name);
    }
    if !any {
        report::push("cmdline");
        report::check(
            false,
            "no checks selected",
            format_args!(
                "cmdline=\"{}\" expected checks=name[,name...]",
                env.cmdline.0
            ),
        );
        report::pop();
    }
    report::finish()
}

fn run_one(env: &Env, name: &'static str) {
    report::push(name);
    match REGISTRY.iter().find(|(n, _)| *n == name) {
        Some((_, check)) => check(env),
        None if catalogue::find(name).is_some() => {
            report::check(
                false,
                "not built into this guest",
                format_args!("the catalogue lists it but the guest has no code for it"),
            );
        }
        None => {
            report::check(
                false,
                "unknown check",
                format_args!("known: {}", KnownChecks),
            );
        }
    }
    report::pop();
    // Checks own the test pages only while they run.
    paging::reset_test_window();
}

struct KnownChecks;

impl core::fmt::Display for KnownChecks {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, (name, _)) in REGISTRY.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}
