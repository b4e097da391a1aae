//! The virtual host's agent for the VF-token checks: runs every host check
//! of this crate against one named PF and writes the protocol output to
//! `<results>/vfio.log` (and stdout).
//!
//! ```text
//! vfio-agent --pf 0000:01:00.0 [--vfs 2] [--journal PATH] [--crash-first]
//! vfio-agent --pf 0000:01:00.0 --journal PATH crash
//! ```
//! `--crash-first` first runs itself in `crash` mode, which changes the PF
//! and then dies without cleaning up, to prove the journal replay.

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use ukci_protocol::Reporter;
use ukci_vfio::checks::{self, FunctionState, PfUnderTest};
use ukci_vfio::{Host, Sysfs};

struct Tee(String);

impl fmt::Write for Tee {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        print!("{s}");
        self.0.push_str(s);
        Ok(())
    }
}

struct Args {
    pf: String,
    vfs: u32,
    journal: PathBuf,
    crash_first: bool,
    crash: bool,
    results: PathBuf,
}

fn args() -> Result<Args, String> {
    let results = PathBuf::from(std::env::var("UKCI_RESULTS").unwrap_or_else(|_| ".".into()));
    let mut a = Args {
        pf: String::new(),
        vfs: 2,
        journal: results.join("vfio-journal"),
        crash_first: false,
        crash: false,
        results,
    };
    let mut it = std::env::args().skip(1);
    while let Some(w) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match w.as_str() {
            "--pf" => a.pf = val("--pf")?,
            "--vfs" => a.vfs = val("--vfs")?.parse().map_err(|e| format!("--vfs: {e}"))?,
            "--journal" => a.journal = val("--journal")?.into(),
            "--crash-first" => a.crash_first = true,
            "crash" => a.crash = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if a.pf.is_empty() {
        return Err("--pf BDF is required (only named functions are touched)".into());
    }
    Ok(a)
}

/// Changes the PF like a run would, then dies without restoring anything.
fn crash(a: &Args) -> ExitCode {
    let (mut host, _) = Host::open(Sysfs::system(), &a.journal, &[&a.pf]).expect("journal");
    let _ = host.set_numvfs(&a.pf, 0);
    host.bind(&a.pf, "vfio-pci").expect("bind vfio-pci");
    host.set_numvfs(&a.pf, 1).expect("sriov_numvfs");
    println!("crash: PF changed, dying without cleanup");
    std::process::abort();
}

fn main() -> ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vfio-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if a.crash {
        return crash(&a);
    }
    let sys = Sysfs::system();
    let before = FunctionState::read(&sys, &a.pf);
    let mut r = Reporter::new(Tee(String::new()));
    r.info(format_args!(
        "vfio-agent pf={} start state [{before}]",
        a.pf
    ));

    if a.crash_first {
        let st = Command::new(std::env::current_exe().expect("own path"))
            .args(["--pf", &a.pf, "--journal"])
            .arg(&a.journal)
            .arg("crash")
            .status();
        r.info(format_args!(
            "crash child ended: {st:?}; state now [{}]",
            FunctionState::read(&sys, &a.pf)
        ));
    }
    let (mut host, replayed) = match Host::open(sys.clone(), &a.journal, &[&a.pf]) {
        Ok(h) => h,
        Err(e) => {
            r.check(false, "vfio.journal: open", format_args!("{e}"));
            r.finish();
            return ExitCode::from(3);
        }
    };
    if a.crash_first {
        let now = FunctionState::read(&sys, &a.pf);
        r.check(
            now == before && replayed.ok() && !replayed.restored.is_empty(),
            "vfio.journal: replay-after-crash",
            format_args!(
                "restored_entries={} left={} before=[{before}] now=[{now}]",
                replayed.restored.len(),
                replayed.left.len()
            ),
        );
    }
    let mut target = PfUnderTest {
        host: &mut host,
        pf: a.pf.clone(),
    };
    checks::vfio_env(&mut target, &mut r);
    checks::vf_token_kernel_pf(&mut target, &mut r);
    checks::journal_restored(&mut target, &before, "restored-after-kernel-pf", &mut r);
    checks::vf_token_rules(&mut target, &mut r);
    checks::vf_token_cdev(&mut target, &mut r);
    checks::nvme_pf(&mut target, a.vfs, &mut r);
    checks::journal_restored(&mut target, &before, "restored-at-end", &mut r);
    let verdict = r.finish();
    let out = a.results.join("vfio.log");
    if let Err(e) = std::fs::write(&out, &r.out().0) {
        eprintln!("vfio-agent: cannot write {}: {e}", out.display());
        return ExitCode::from(3);
    }
    ExitCode::from(verdict.status() as u8)
}
