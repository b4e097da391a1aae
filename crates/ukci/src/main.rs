//! `ukci`: the command line. Thin: every decision lives in the runner
//! library; this file parses arguments and dispatches. `cargo xtask` runs
//! this binary for every command but `ci`.

/// `println!` for the command's output: a reader that went away
/// (`cargo xtask list --checks | head -1`) ends the command quietly, as it
/// does other Unix tools, instead of a panic.
macro_rules! out {
    () => {
        $crate::emit(format_args!(""))
    };
    ($($t:tt)*) => {
        $crate::emit(format_args!($($t)*))
    };
}

mod bench;
mod bench_kut;
mod bench_kvm;
mod bench_nvme;
mod bench_vhost;
mod guest;
mod kut;
mod prereq;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use ukci_runner::exitcode;
use ukci_runner::manifest::AccelRequest;
use ukci_runner::session::{self, Layout, TestOptions};

/// Set by `cargo xtask` to the command people typed, so usage lines and
/// help name it.
const INVOKED_AS_ENV: &str = "UKCI_INVOKED_AS";

#[derive(Parser)]
#[command(
    name = "ukci",
    version,
    about = "ukci: host virtualization security tests from inside a unikernel guest"
)]
#[command(after_help = exit_table())]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// `--accel`: one of the words manifests use.
fn accel_parser() -> impl TypedValueParser<Value = AccelRequest> {
    PossibleValuesParser::new(AccelRequest::WORDS)
        .map(|w| AccelRequest::from_word(&w).expect("a word of AccelRequest::WORDS"))
}

#[derive(clap::Args)]
struct Selection {
    /// Manifests to use (default: every manifests/*.toml).
    paths: Vec<PathBuf>,
    /// Only tests whose `suite.test` contains this (or matches it as a glob).
    #[arg(long)]
    filter: Option<String>,
    /// Accelerator for every test, overriding the manifests.
    #[arg(long, value_parser = accel_parser())]
    accel: Option<AccelRequest>,
    /// Host kernel for the virtual suites (`debian:6.12`, `dir:PATH`);
    /// repeatable; replaces the manifests' kernel lists.
    #[arg(long = "kernel", value_name = "KERNEL")]
    kernels: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the guest image into images/.
    Build,
    /// Build, set up what is missing, run the manifests, write JUnit.
    Test {
        #[command(flatten)]
        sel: Selection,
        /// VMs to run at once (default: the number of cores).
        #[arg(long, short)]
        jobs: Option<usize>,
        /// Count skips that no requirement explains as failures.
        #[arg(long)]
        strict: bool,
        /// Where reports go (default: reports/).
        #[arg(long)]
        reports: Option<PathBuf>,
    },
    /// Print the plan: what would run, where, and what is skipped and why.
    List {
        #[command(flatten)]
        sel: Selection,
        /// List the checks instead: the guest's, then the host checks the
        /// runner runs itself.
        #[arg(long)]
        checks: bool,
    },
    /// Explain what this host lacks and how to fix it.
    Doctor,
    /// Install what is missing (QEMU from bookworm-backports, busybox-static,
    /// debootstrap, the guest's Rust target), then just.
    Setup {
        /// For a CI machine: Chromium, which `cargo xtask ci` loads the HTML
        /// report in, instead of just.
        #[arg(long)]
        ci: bool,
    },
    /// Measure boot-to-verdict times and the runner's overhead.
    Bench {
        /// Runs per measurement.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Only the virtual lane's rows (agent-ready, nested VM starts,
        /// the lane manifests), not this host's QEMU and NVMe rows.
        #[arg(long = "virtual")]
        virtual_only: bool,
        /// Only kvm-unit-tests' x86 default set, ukci against the tree's
        /// own run_tests.sh under TCG (takes about half an hour).
        #[arg(long, conflicts_with = "virtual_only")]
        kut: bool,
    },
    /// Print the CI matrix (kernel × lane) derived from the manifests, as
    /// JSON for a GitHub Actions `strategy.matrix`.
    Matrix {
        /// Manifests to use (default: every manifests/*.toml).
        paths: Vec<PathBuf>,
    },
    /// Empty the per-user cache of host kernels, initramfs images and
    /// Debian package lists ($XDG_CACHE_HOME/ukci, default ~/.cache/ukci),
    /// which every checkout shares; not while a run uses it.
    CleanCache,
    /// Put back devices a crashed run left changed, as the restore journal
    /// recorded them (every run does this first by itself).
    Restore,
    /// A VF run that stops at a point and waits to be killed; started by the
    /// crash-recovery check, not by people.
    #[command(hide = true)]
    CrashPoint {
        point: String,
        #[arg(long)]
        pf: String,
        #[arg(long)]
        journal: PathBuf,
        #[arg(long)]
        guest: PathBuf,
        /// The token, in a descriptor inherited from the parent.
        #[arg(long)]
        token_file: PathBuf,
    },
    /// Run inside a virtual host: the named tests of one manifest, reported
    /// as event lines. Started by `test`, not by people.
    #[command(hide = true)]
    Agent {
        manifest: PathBuf,
        #[arg(long)]
        results: PathBuf,
        #[arg(long = "test")]
        tests: Vec<String>,
    },
}

fn exit_table() -> String {
    let mut s = String::from("Exit status of `test` and `restore`:\n");
    for (code, what) in exitcode::TABLE {
        s.push_str(&format!("  {code:>3}  {what}\n"));
    }
    s
}

fn layout() -> Layout {
    // The checkout this binary was built in, named plainly: reports and
    // reproducers show paths under it.
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let root = root.canonicalize().unwrap_or(root);
    Layout {
        root,
        reports: None,
    }
}

fn manifest_paths(layout: &Layout, paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let paths = if paths.is_empty() {
        session::all_manifests(&layout.manifests())
    } else {
        paths
    };
    if let Err(e) = kut::provide_tree(layout, &paths) {
        eprintln!("warning: the shared kvm-unit-tests tree could not be built: {e}");
    }
    paths
}

fn main() {
    let mut command = Cli::command();
    if let Ok(name) = std::env::var(INVOKED_AS_ENV) {
        command = command.bin_name(name);
    }
    let cli = match command
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exitcode::USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    std::process::exit(run(cli));
}

fn run(cli: Cli) -> i32 {
    let layout = layout();
    let result = match cli.cmd {
        Cmd::Build => {
            if let Err(code) = prereq::ensure(&layout) {
                return code;
            }
            guest::build(&layout).map(|_| exitcode::OK)
        }
        Cmd::Test {
            sel,
            jobs,
            strict,
            reports,
        } => {
            let paths = manifest_paths(&layout, sel.paths);
            let manifests = match session::load_manifests(&paths) {
                Ok(m) => m,
                Err(d) => {
                    eprint!("{d}");
                    return exitcode::MANIFEST;
                }
            };
            if let Err(code) = prereq::ensure(&layout) {
                return code;
            }
            if let Err(e) = guest::build(&layout) {
                eprintln!("error: {e:#}");
                return exitcode::HOST;
            }
            if let Err(e) = ukci_runner::supervise::install_interrupt_handler() {
                eprintln!("error: {e}");
                return exitcode::HOST;
            }
            let mut layout = layout;
            if let Some(r) = reports {
                layout.reports = Some(r);
            }
            let opts = TestOptions {
                kernels: sel.kernels,
                filter: sel.filter,
                accel: sel.accel,
                jobs: jobs.unwrap_or_else(cores),
                strict,
            };
            Ok(session::run_tests(&layout, &manifests, &opts))
        }
        Cmd::List { sel, checks } => Ok(if checks {
            list_checks()
        } else {
            list(&layout, sel)
        }),
        Cmd::Doctor => Ok(prereq::doctor(&layout)),
        Cmd::Setup { ci } => prereq::setup(&layout, ci).map(|_| exitcode::OK),
        Cmd::Bench {
            runs,
            virtual_only,
            kut,
        } => {
            if kut {
                bench_kut::run(&layout).map(|()| exitcode::OK)
            } else {
                bench::run(&layout, runs, virtual_only)
            }
        }
        Cmd::Matrix { paths } => Ok(matrix(&layout, paths)),
        Cmd::CleanCache => Ok(clean_cache(&layout)),
        Cmd::Restore => {
            let r = session::restore(&layout);
            match &r {
                session::Restored::Done(m) => out!("{m}"),
                session::Restored::Busy(m) | session::Restored::Left(m) => eprintln!("error: {m}"),
            }
            Ok(r.exit_code())
        }
        Cmd::CrashPoint {
            point,
            pf,
            journal,
            guest,
            token_file,
        } => Ok(ukci_runner::hostcheck::vf_token::crash_child(
            &point,
            &pf,
            &journal,
            &guest,
            &token_file,
        )),
        Cmd::Agent {
            manifest,
            results,
            tests,
        } => Ok(session::run_agent(&layout, &manifest, &tests, &results)),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        exitcode::HOST
    })
}

fn matrix(layout: &Layout, paths: Vec<PathBuf>) -> i32 {
    let paths = manifest_paths(layout, paths);
    match session::load_manifests(&paths) {
        Ok(m) => {
            out!("{}", ukci_runner::matrix::generate(&m, &layout.root));
            exitcode::OK
        }
        Err(d) => {
            eprint!("{d}");
            exitcode::MANIFEST
        }
    }
}

fn clean_cache(layout: &Layout) -> i32 {
    use ukci_vhost::cache;
    // Checkouts from before the shared cache kept kernels in their images/.
    let places = [
        layout.cache(),
        layout.images().join("kernels"),
        layout.images().join("initramfs"),
    ];
    let mut freed = 0;
    let mut status = exitcode::OK;
    for place in &places {
        match cache::remove(place) {
            Ok(n) => freed += n,
            Err(e) => {
                eprintln!("error: cannot remove {}: {e}", place.display());
                status = exitcode::HOST;
            }
        }
    }
    out!(
        "freed {} ({})",
        cache::human_size(freed),
        places[0].display()
    );
    status
}

fn emit(line: std::fmt::Arguments) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"))
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(exitcode::OK);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(exitcode::HOST);
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn list_checks() -> i32 {
    out!("guest checks (run inside the unikernel guest):");
    for c in ukci_protocol::catalogue::CHECKS {
        out!("  {:<28} {}", c.name, c.summary);
        if !c.args.is_empty() {
            let keys: Vec<&str> = c.args.iter().map(|a| a.key).collect();
            out!("  {:<28} args: {}", "", keys.join(", "));
        }
    }
    out!("host checks (run by the runner on the test host, with the SR-IOV PF):");
    for c in ukci_protocol::catalogue::HOST_CHECKS {
        out!("  {:<28} {}", c.name, c.summary);
    }
    exitcode::OK
}

fn list(layout: &Layout, sel: Selection) -> i32 {
    let paths = manifest_paths(layout, sel.paths);
    let manifests = match session::load_manifests(&paths) {
        Ok(m) => m,
        Err(d) => {
            eprint!("{d}");
            return exitcode::MANIFEST;
        }
    };
    let mut opts = ukci_runner::plan::PlanOptions {
        filter: sel.filter,
        accel: sel.accel,
        kernels: sel.kernels,
        ..Default::default()
    };
    match session::resolve_kernels(layout, &manifests, &opts) {
        Ok(k) => opts.resolved = k,
        Err(e) => {
            eprintln!("error: {e}");
            return e.code;
        }
    }
    let plan = session::make_plan(layout, &manifests, &opts);
    out!("{}", ukci_runner::terminal::plan_listing(&plan).trim_end());
    exitcode::OK
}
