//! Host checks: checks the runner runs on the host it is on (in a virtual
//! target, inside the virtual host), reporting through the same protocol as
//! guest checks. Those that change devices touch only the PF they are given
//! and journal every change first (`ukci_vfio::Host`). Their names and
//! summaries are in the catalogue ([`ukci_protocol::catalogue::HOST_CHECKS`]); this module
//! maps each name to the code that runs it.

pub mod vf_token;

use crate::hostconfig::HostCheckContext;
use ukci_protocol::Reporter;
use ukci_vfio::checks::{self as vc, PfUnderTest};
use ukci_vfio::{Host, Sysfs};

type Run = fn(&mut PfUnderTest<'_>, &HostCheckContext, &mut Reporter<&mut String>);

/// The code behind a host check of the catalogue.
fn runner(name: &str) -> Option<Run> {
    let run: Run = match name {
        "vfio.env" => |l, _, r| vc::vfio_env(l, r),
        "vf-token.rules" => |l, _, r| vc::vf_token_rules(l, r),
        "vf-token.kernel-pf" => |l, _, r| vc::vf_token_kernel_pf(l, r),
        "vf-token.cdev" => |l, _, r| vc::vf_token_cdev(l, r),
        "vf-token.pf-driver" => |l, _, r| vc::nvme_pf(l, 2, r),
        "vf-token.qemu" => vf_token::qemu_honours_token,
        "vf-token.crash-recovery" => vf_token::crash_recovery,
        "vf-token.secrets" => vf_token::no_secret_files,
        _ => return None,
    };
    Some(run)
}

/// Runs host checks in order and returns the protocol text, as a guest's
/// serial log would read. The journal of an earlier crashed run is replayed
/// first (`Host::open`); every check leaves the PF as it found it.
pub fn run(checks: &[String], ctx: &HostCheckContext) -> String {
    let mut out = String::new();
    let mut r = Reporter::new(&mut out);
    let Some(pf) = ctx.pf.clone() else {
        for name in checks {
            r.skip(name, format_args!("no SR-IOV PF to use: {}", ctx.pf_source));
        }
        r.finish();
        return out;
    };
    match Host::open(Sysfs::system(), &ctx.journal, &[pf.as_str()]) {
        Err(e) => {
            for name in checks {
                r.check(false, name, format_args!("cannot take the PF {pf}: {e}"));
            }
        }
        Ok((mut host, replay)) => {
            if !replay.restored.is_empty() || !replay.left.is_empty() {
                r.info(format_args!(
                    "restore journal of an earlier run replayed: {} restored, {} left",
                    replay.restored.len(),
                    replay.left.len()
                ));
            }
            for line in replay
                .left
                .iter()
                .map(ToString::to_string)
                .chain(replay.notes)
            {
                r.info(format_args!("{line}"));
            }
            let mut target = PfUnderTest {
                host: &mut host,
                pf,
            };
            for name in checks {
                match runner(name) {
                    Some(run) => run(&mut target, ctx, &mut r),
                    None => {
                        r.check(false, name, format_args!("unknown host check"));
                    }
                }
            }
            if let Err(e) = host.put_back() {
                r.check(false, "restore", format_args!("{e}"));
            }
        }
    }
    r.finish();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ukci_protocol::catalogue;

    #[test]
    fn every_host_check_of_the_catalogue_runs_here() {
        for c in catalogue::HOST_CHECKS {
            assert!(runner(c.name).is_some(), "{} has no code", c.name);
        }
        assert!(runner("boot.smoke").is_none(), "a guest check");
    }

    #[test]
    fn without_a_pf_every_host_check_skips_with_the_reason() {
        let ctx = HostCheckContext {
            pf: None,
            pf_source: "no host config".into(),
            ..Default::default()
        };
        let out = run(&["vf-token.rules".into()], &ctx);
        assert!(
            out.contains("SKIP: vf-token.rules (no SR-IOV PF to use: no host config)"),
            "{out}"
        );
        assert!(out.contains("EXIT: STATUS=77"), "{out}");
    }
}
