//! A failure's reproducer, run as printed, fails the same way: the rerun
//! command, and the QEMU command line it shows.

use std::path::Path;
use std::process::Command;
use ukci_runner::exitcode;

/// Two tests under TCG; an expectation that says the first one's checks
/// fail makes their passes XPASS, a failure, every time.
const FAILING: &str = r#"
[suite]
name = "repro"

[defaults]
accel = "tcg"
timeout = "20s"

[[test]]
name = "boot"
machine = "microvm"
checks = ["boot.smoke"]

[[test]]
name = "boot-2"
machine = "microvm"
checks = ["boot.smoke"]

[[expect]]
test = "boot"
outcome = "xfail"
reason = "deliberately wrong: boot.smoke passes under TCG, so it is an XPASS"
"#;

/// The checkout: where `cargo xtask` is typed.
fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

struct Run {
    code: i32,
    stderr: String,
}

/// `cargo xtask ARGS` as this build's binary, started in `dir`.
fn xtask(dir: &Path, args: &[String], reports: &Path) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_ukci"))
        .current_dir(dir)
        .args(args)
        .arg("--reports")
        .arg(reports)
        .env("CI", "1")
        .output()
        .expect("ukci runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The result lines of failures (fail, xpass, error).
fn not_passed(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("         "))
        .map(str::trim)
        .filter(|l| {
            ["fail ", "xpass ", "error "]
                .iter()
                .any(|w| l.starts_with(w))
        })
        .collect()
}

#[test]
fn the_printed_reproducer_fails_the_same_way() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("failing.toml");
    std::fs::write(&manifest, FAILING).unwrap();
    let first = xtask(
        root(),
        &["test".into(), manifest.display().to_string()],
        &tmp.path().join("first"),
    );
    assert_eq!(first.code, exitcode::FAILED, "{}", first.stderr);
    let failed = not_passed(&first.stderr);
    assert!(
        !failed.is_empty() && failed.iter().all(|l| l.starts_with("xpass boot.smoke")),
        "{}",
        first.stderr
    );

    // After the summary: the failing test, its rerun and its QEMU line.
    let after = &first.stderr[first
        .stderr
        .find("to run again what did not pass:")
        .expect(&first.stderr)..];
    assert!(after.contains("FAIL  repro.boot [tcg]"), "{after}");
    assert!(!after.contains("repro.boot-2"), "{after}");
    let rerun = after
        .lines()
        .find_map(|l| l.trim().strip_prefix("rerun: "))
        .expect(after);
    let qemu = after
        .lines()
        .find_map(|l| l.trim().strip_prefix("qemu: "))
        .expect(after);
    assert_eq!(
        rerun,
        format!(
            "cargo xtask test {} --filter repro.boot",
            manifest.display()
        )
    );

    // The same lines head the test's log and are in the JUnit.
    let latest = tmp.path().join("first/latest");
    let log = std::fs::read_to_string(latest.join("logs/repro@tcg/boot.log")).unwrap();
    assert!(
        log.starts_with(&format!("# rerun: {rerun}\n# qemu: {qemu}\n")),
        "{log}"
    );
    let junit = std::fs::read_to_string(latest.join("junit.xml")).unwrap();
    assert!(
        junit.contains(&format!("<system-err>rerun: {}", rerun)),
        "{junit}"
    );

    // The rerun command as printed, from another folder: only that test,
    // failing the same way.
    let words = shell_words::split(rerun).unwrap();
    assert_eq!(words[..2], ["cargo", "xtask"]);
    let again = xtask(tmp.path(), &words[2..], &tmp.path().join("again"));
    assert_eq!(again.code, exitcode::FAILED, "{}", again.stderr);
    assert_eq!(not_passed(&again.stderr), failed, "{}", again.stderr);
    assert!(
        again.stderr.contains("repro.boot [tcg]"),
        "{}",
        again.stderr
    );
    assert!(!again.stderr.contains("repro.boot-2"), "{}", again.stderr);

    // The QEMU command line as printed, in a shell: the same guest, with
    // the same verdict on the same check.
    let out = Command::new("timeout")
        .args(["60", "sh", "-c", qemu])
        .current_dir(root())
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&out.stdout);
    assert!(serial.contains("PASS: boot.smoke"), "{serial}\n{out:?}");
}
