//! End-to-end: the real guest under real QEMU through `cargo xtask test`.
//! Each run writes its reports to a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use ukci_runner::exitcode;

fn root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .canonicalize()
        .unwrap()
}

struct Run {
    code: i32,
    stderr: String,
    junit: String,
    /// The serial logs the run wrote, as paths under `logs/`, sorted.
    logs: Vec<String>,
}

fn xtask_test(args: &[&str]) -> Run {
    let reports = std::env::temp_dir().join(format!(
        "ukci-it-{}-{}",
        std::process::id(),
        args.join("-").replace(['/', '*'], "_")
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_ukci"))
        .current_dir(root())
        .arg("test")
        .args(args)
        .arg("--reports")
        .arg(&reports)
        .env("CI", "1")
        .output()
        .expect("ukci runs");
    let junit = std::fs::read_to_string(reports.join("latest/junit.xml")).unwrap_or_default();
    let logs_dir = reports.join("latest/logs");
    let mut logs: Vec<String> = files_under(&logs_dir)
        .iter()
        .filter_map(|p| Some(p.strip_prefix(&logs_dir).ok()?.display().to_string()))
        .collect();
    logs.sort();
    let _ = std::fs::remove_dir_all(&reports);
    Run {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        junit,
        logs,
    }
}

/// Every file under `dir`, at any depth (not following symlinked folders).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                todo.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files
}

/// The `<testcase>` element named `name` (up to its end tag).
fn testcase<'a>(junit: &'a str, name: &str) -> &'a str {
    let start = junit
        .find(&format!("<testcase name=\"{name}\""))
        .unwrap_or_else(|| panic!("no testcase {name} in:\n{junit}"));
    let rest = &junit[start..];
    let end = rest
        .find("</testcase>")
        .map_or(rest.len(), |e| e + "</testcase>".len());
    &rest[..end]
}

#[test]
fn smoke_passes_on_every_machine_type() {
    let r = xtask_test(&["manifests/smoke.toml", "--accel", "tcg"]);
    assert_eq!(r.code, exitcode::OK, "{}", r.stderr);
    for machine in ["q35", "pc", "microvm"] {
        assert!(
            r.junit.contains(&format!("classname=\"smoke.{machine}\"")),
            "no smoke.{machine} testcases:\n{}",
            r.junit
        );
    }
    assert!(r.junit.contains("fault.selftest: #PF"), "{}", r.junit);
    assert_eq!(
        r.logs,
        [
            "smoke@tcg/microvm.log",
            "smoke@tcg/pc.log",
            "smoke@tcg/q35.log"
        ]
    );
    assert!(
        r.junit.contains("<property name=\"accel\" value=\"tcg\"/>"),
        "{}",
        r.junit
    );
    assert!(
        r.junit.contains("<property name=\"qemu.version\""),
        "{}",
        r.junit
    );
    assert!(!r.junit.contains("<failure"), "{}", r.junit);
    assert!(!r.junit.contains("<error"), "{}", r.junit);
}

#[test]
fn misbehaving_guests_are_errors_with_clear_messages() {
    let r = xtask_test(&["tests/manifests/selftest.toml"]);
    assert_eq!(r.code, exitcode::ERROR, "{}", r.stderr);
    let hang = testcase(&r.junit, "hang");
    assert!(
        hang.contains("<error") && hang.contains("timed out after 3.0 s"),
        "{hang}"
    );
    let tf = testcase(&r.junit, "triple-fault");
    assert!(
        tf.contains("<error") && tf.contains("without an EXIT line"),
        "{tf}"
    );
    let ne = testcase(&r.junit, "no-exit");
    assert!(
        ne.contains("<error") && ne.contains("SUMMARY but no EXIT line"),
        "{ne}"
    );
    let bad_cpu = testcase(&r.junit, "unknown-device");
    assert!(
        bad_cpu.contains("<error") && bad_cpu.contains("QEMU refused to start"),
        "{bad_cpu}"
    );
    // A panic ends the guest before its check finished: an error naming it.
    let panic = testcase(&r.junit, "selftest.panic: aborted");
    assert!(
        panic.contains("<error")
            && panic.contains("the guest aborted: panic at")
            && panic.contains("deliberate panic")
            && panic.contains("STATUS=127"),
        "{panic}"
    );
    assert!(!r.junit.contains("classname=\"selftest.hang\" time=\"0") || hang.contains("<error"));
}

#[test]
fn malformed_manifests_exit_with_the_manifest_code_and_a_position() {
    for (file, pos, what) in [
        ("syntax.toml", ":1:8:", "expected `]`"),
        ("unknown-field.toml", ":4:1:", "unknown field `timout`"),
        ("wrong-type.toml", ":4:7:", "invalid type"),
        ("unknown-check.toml", ":3:25:", "unknown check `cr-pin.v9`"),
    ] {
        let path = format!("tests/manifests/bad/{file}");
        let r = xtask_test(&[&path]);
        assert_eq!(r.code, exitcode::MANIFEST, "{file}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!("{path}{pos}")),
            "{file}: {}",
            r.stderr
        );
        assert!(r.stderr.contains(what), "{file}: {}", r.stderr);
    }
    // Every problem of a file at once, in file order, one line each.
    let path = "tests/manifests/bad/three-errors.toml";
    let r = xtask_test(&[path]);
    assert_eq!(r.code, exitcode::MANIFEST, "{}", r.stderr);
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    let want = [
        (":5:7:", "invalid type: string \"two\""),
        (":10:1:", "unknown field `timout`"),
        (":14:11:", "unknown check `cr-pin.v9`"),
    ];
    assert_eq!(errors.len(), want.len(), "{}", r.stderr);
    for (line, (pos, what)) in errors.iter().zip(want) {
        assert!(
            line.starts_with(&format!("error: {path}{pos}")) && line.contains(what),
            "{line}"
        );
    }
    let r = xtask_test(&["tests/manifests/bad/missing.toml"]);
    assert_eq!(r.code, exitcode::MANIFEST, "{}", r.stderr);
    assert!(
        r.stderr.contains("missing.toml: cannot read manifest"),
        "{}",
        r.stderr
    );
}

#[test]
fn the_command_line_names_itself_and_lists_every_check() {
    let run_as = |invoked_as: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ukci"));
        cmd.current_dir(root()).args(args);
        match invoked_as {
            Some(name) => cmd.env("UKCI_INVOKED_AS", name),
            None => cmd.env_remove("UKCI_INVOKED_AS"),
        };
        let out = cmd.output().expect("ukci runs");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let run = |args: &[&str]| run_as(None, args);
    assert!(run(&["--help"]).contains("Usage: ukci <COMMAND>"));
    assert!(run(&["list", "--help"]).contains("Usage: ukci list"));
    // Run by `cargo xtask`, it names that command.
    let xtask = Some("cargo xtask");
    assert!(run_as(xtask, &["--help"]).contains("Usage: cargo xtask <COMMAND>"));
    assert!(run_as(xtask, &["list", "--help"]).contains("Usage: cargo xtask list"));
    assert_eq!(
        run(&["--version"]),
        format!("ukci {}\n", env!("CARGO_PKG_VERSION"))
    );
    let checks = run(&["list", "--checks"]);
    for name in [
        "boot.smoke",
        "cr.arch.smep",
        "vfio.env",
        "vf-token.rules",
        "vf-token.secrets",
    ] {
        assert!(
            checks.lines().any(|l| l.trim_start().starts_with(name)),
            "{name} missing from:\n{checks}"
        );
    }
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    // A pipe whose reader is already gone: the first write fails with EPIPE,
    // as when `| head -1` has read its line.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_ukci"))
        .current_dir(root())
        .args(["list", "--checks"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("ukci runs");
    assert_eq!(out.status.code(), Some(exitcode::OK), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn every_command_has_a_just_recipe() {
    let out = Command::new(env!("CARGO_BIN_EXE_ukci"))
        .arg("--help")
        .output()
        .expect("ukci runs");
    let help = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(
        commands.contains(&"test") && commands.contains(&"restore"),
        "{help}"
    );
    let justfile = std::fs::read_to_string(root().join("justfile")).unwrap();
    for c in commands {
        assert!(
            justfile.lines().any(|l| l
                .strip_prefix(c)
                .is_some_and(|rest| rest.starts_with([':', ' ']))
                && l.contains(':')),
            "the justfile has no recipe for `cargo xtask {c}`"
        );
    }
}

#[test]
fn a_filter_that_matches_nothing_is_a_usage_error() {
    let r = xtask_test(&["manifests/smoke.toml", "--filter", "no-such-test"]);
    assert_eq!(r.code, exitcode::USAGE, "{}", r.stderr);
}

#[test]
fn strict_prints_a_skip_as_the_failure_it_counts() {
    // No host config names a PF here: the host check skips, and under
    // `--strict` that skip is a failure in its result line and the summary.
    let r = xtask_test(&[
        "manifests/vf-token-local.toml",
        "--filter",
        "vf-token-local.rules",
        "--strict",
    ]);
    assert_eq!(r.code, exitcode::FAILED, "{}", r.stderr);
    assert!(
        r.stderr.contains(" FAIL  vf-token-local.rules [")
            && r.stderr
                .contains("fail  vf-token.rules: skipped under --strict: no SR-IOV PF"),
        "{}",
        r.stderr
    );
    let total = r.stderr.lines().find(|l| l.starts_with("total")).unwrap();
    let counts: Vec<&str> = total.split_whitespace().skip(1).collect();
    assert_eq!(counts, ["0", "1", "0", "0", "0", "0"], "{}", r.stderr);
}

#[test]
fn a_kernel_that_does_not_resolve_fails_before_anything_boots() {
    for (kernel, what) in [
        ("dir:/nonexistent/kernel", "/nonexistent/kernel"),
        ("fedora:40", "unknown provider `fedora`"),
        ("debian:5.99", "series there: 6.1, "),
    ] {
        let t = std::time::Instant::now();
        let r = xtask_test(&["manifests/vhost-smoke.toml", "--kernel", kernel]);
        assert_eq!(r.code, exitcode::USAGE, "{kernel}: {}", r.stderr);
        assert!(
            r.stderr.contains("--kernel") && r.stderr.contains(what),
            "{kernel}: {}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("UKCI-VHOST"),
            "{kernel} booted something: {}",
            r.stderr
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "{kernel} took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn the_ci_workflow_runs_the_generated_matrix() {
    let workflow = std::fs::read_to_string(root().join(".github/workflows/ci.yml")).unwrap();
    assert!(
        workflow.contains("cargo xtask matrix"),
        "the plan job must run the generator"
    );
    assert!(
        workflow.contains("fromJSON(needs.plan.outputs.matrix)"),
        "the test job must use its output"
    );
    // Every `matrix.<key>` the workflow reads is a key the generator emits.
    let used: std::collections::BTreeSet<&str> = workflow
        .match_indices("matrix.")
        .filter(|(i, _)| !workflow[..*i].ends_with(|c: char| c == '.' || c.is_ascii_alphanumeric()))
        .map(|(i, _)| {
            let rest = &workflow[i + "matrix.".len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|k| !k.is_empty())
        .collect();
    for k in &used {
        assert!(
            ukci_runner::matrix::KEYS.contains(k),
            "the workflow reads matrix.{k}, which the generator does not emit"
        );
    }
    assert!(
        used.contains("args"),
        "the test job must pass the generated arguments"
    );
    // And the generator's output for this repository is a non-empty include list.
    let out = Command::new(env!("CARGO_BIN_EXE_ukci"))
        .current_dir(root())
        .arg("matrix")
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.starts_with("{\"include\":["), "{json}");
    // One job per kernel of the virtual manifests' default list.
    for kernel in ["debian:6.1", "debian:6.12", "debian:6.18", "debian:7.3"] {
        assert!(
            json.contains(&format!("\"kernel\":\"{kernel}\"")),
            "no job for {kernel}: {json}"
        );
    }
}

/// Children of `pid` that are QEMU running the hang guest.
fn qemu_children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let Some((head, rest)) = stat.rsplit_once(") ") else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            head.contains("qemu-system")
                && f.first() != Some(&"Z")
                && f.get(1) == Some(&pid.to_string().as_str())
                && String::from_utf8_lossy(&cmdline).contains("selftest.hang")
        })
        .collect()
}

/// Starts `xtask test` on the hang guest with `reports` as its reports
/// folder, and waits until its VM runs; the child and its QEMUs.
fn start_hang(reports: &Path) -> (std::process::Child, Vec<u32>) {
    let child = Command::new(env!("CARGO_BIN_EXE_ukci"))
        .current_dir(root())
        .args([
            "test",
            "tests/manifests/selftest.toml",
            "--filter",
            "hang",
            "--reports",
        ])
        .arg(reports)
        .env("CI", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut vms = Vec::new();
    while vms.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        vms = qemu_children(child.id());
    }
    assert!(!vms.is_empty(), "no VM was started");
    (child, vms)
}

/// The folders in `dir`.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ctrl_c_kills_every_vm_and_exits_130() {
    let reports = std::env::temp_dir().join(format!("ukci-it-int-{}", std::process::id()));
    let (mut child, vms) = start_hang(&reports);
    let pid = child.id();
    // SAFETY: kill only sends SIGINT to the child this test spawned.
    unsafe { libc_kill(pid as i32, 2) };
    let status = child.wait().unwrap();
    let left = entries(&reports);
    let _ = std::fs::remove_dir_all(&reports);
    assert_eq!(
        left,
        Vec::<String>::new(),
        "an interrupted run leaves no report"
    );
    let scratch = root().join(format!("images/scratch/{pid}"));
    assert!(!scratch.exists(), "{} is left", scratch.display());
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.code(),
        Some(exitcode::INTERRUPTED),
        "signal {:?}",
        status.signal()
    );
    for vm in vms {
        let stat = std::fs::read_to_string(format!("/proc/{vm}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map_or("", |(_, r)| &r[..1]);
        assert!(
            stat.is_empty() || state == "Z",
            "QEMU {vm} survived Ctrl-C: {stat}"
        );
    }
}

#[test]
fn the_next_run_reclaims_what_a_killed_run_left() {
    let reports = std::env::temp_dir().join(format!("ukci-it-kill-{}", std::process::id()));
    let (mut child, _) = start_hang(&reports);
    let pid = child.id();
    let scratch = root().join(format!("images/scratch/{pid}"));
    child.kill().unwrap();
    child.wait().unwrap();
    // SIGKILL leaves the report folder (and the scratch folder, which other
    // tests' runs may already be reclaiming).
    let report = entries(&reports);
    assert_eq!(report.len(), 1, "{report:?}");
    // Any run, even one that stops at its command line's filter.
    let out = Command::new(env!("CARGO_BIN_EXE_ukci"))
        .current_dir(root())
        .args(["test", "tests/manifests/selftest.toml", "--filter", "none"])
        .arg("--reports")
        .arg(&reports)
        .env("CI", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let left = entries(&reports);
    let _ = std::fs::remove_dir_all(&reports);
    assert_eq!(left, Vec::<String>::new(), "{stderr}");
    // Any run reclaims it: this one, or another test's started meanwhile.
    assert!(!scratch.exists(), "{} is left: {stderr}", scratch.display());
    assert!(
        stderr.contains(&format!("{}: a run that did not finish left it", report[0])),
        "{stderr}"
    );
}

#[test]
fn an_unwritable_reports_folder_stops_the_run_before_any_vm() {
    let out = Command::new(env!("CARGO_BIN_EXE_ukci"))
        .current_dir(root())
        .args([
            "test",
            "tests/manifests/selftest.toml",
            "--reports",
            "/proc/nope",
        ])
        .env("CI", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exitcode::USAGE), "{stderr}");
    assert!(
        stderr.contains("cannot write reports in /proc/nope") && stderr.contains("--reports DIR"),
        "{stderr}"
    );
    // Every test would have printed its result.
    assert!(!stderr.contains("selftest."), "a test ran: {stderr}");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Files under `dir` holding a VF token as QEMU's config or the VFIO device
/// name spell it (`vf-token = "<uuid>"`, `vf_token=<uuid>`): what a leak
/// looks like from outside, without knowing the value.
fn files_with_token_text(dir: &Path) -> Vec<PathBuf> {
    fn spelled(text: &[u8]) -> bool {
        let lower = text.to_ascii_lowercase();
        ["vf-token", "vf_token"].iter().any(|key| {
            lower.windows(key.len()).enumerate().any(|(i, w)| {
                w == key.as_bytes() && {
                    let rest = &lower[i + key.len()..];
                    let value: Vec<u8> = rest
                        .iter()
                        .skip_while(|c| matches!(c, b' ' | b'=' | b'"'))
                        .take(9)
                        .copied()
                        .collect();
                    value.len() == 9
                        && value[..8].iter().all(u8::is_ascii_hexdigit)
                        && value[8] == b'-'
                }
            })
        })
    }
    files_under(dir)
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| spelled(&b)))
        .collect()
}

#[test]
fn the_token_spelling_is_found() {
    let dir = std::env::temp_dir().join(format!("ukci-it-spell-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(
        dir.join("a/cfg"),
        "  vf-token = \"2ab74924-c335-45f4-9b16-8569e5b08258\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("log"), "0000:03:00.1 vf_token=<redacted>\n").unwrap();
    let found = files_with_token_text(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found, [dir.join("a/cfg")]);
}

/// Ctrl-C while the VF guest runs inside a virtual host: the run ends
/// interrupted, and no file the run wrote (reports, virtual host folders,
/// scratch) holds a token.
#[test]
fn no_token_reaches_a_file_even_after_an_interrupt_during_a_vf_guest() {
    let reports = std::env::temp_dir().join(format!("ukci-it-vfint-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_ukci"))
        .current_dir(root())
        .args([
            "test",
            "manifests/vf-token.toml",
            "--kernel",
            "debian:6.12",
            "--filter",
            "vf-guest",
            "--reports",
        ])
        .arg(&reports)
        .env("CI", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The agent announces the test on the host's console, then takes the
    // PF, brings a VF up and starts the guest with it.
    let started = |p: &Path| {
        std::fs::read_to_string(p.join("vhost/vf-token@debian-6.12/serial.log"))
            .is_ok_and(|s| s.contains("ukci-started: vf-token.vf-guest"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    let mut run_dir = None;
    while run_dir.is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        run_dir = std::fs::read_dir(&reports)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| started(p));
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    if run_dir.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&reports);
        panic!("the VF guest never started inside the virtual host");
    }
    // Bringing the VF up takes about a second, the guest several: this
    // lands while the PF driver holds the token and QEMU reads it.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // SAFETY: kill only sends SIGINT to the child this test spawned.
    unsafe { libc_kill(child.id() as i32, 2) };
    let status = child.wait().unwrap();
    let leaks: Vec<PathBuf> = [reports.clone(), root().join("images/scratch")]
        .iter()
        .flat_map(|d| files_with_token_text(d))
        .collect();
    let _ = std::fs::remove_dir_all(&reports);
    assert_eq!(status.code(), Some(exitcode::INTERRUPTED));
    assert!(leaks.is_empty(), "token text in {leaks:?}");
}
