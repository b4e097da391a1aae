//! How to run a test again: the command that reruns exactly that test in
//! that environment, and the QEMU command line its VM had. Every reporter
//! shows the same lines: the terminal after its summary, the JUnit
//! testcase's system-err, the head of the test's log, the HTML page.

use crate::events::TestRun;
use crate::plan::{PlannedTest, TestKind};
use std::path::PathBuf;

/// What a rerun must repeat of this run's command line.
#[derive(Clone, Debug, Default)]
pub struct Rerun {
    /// Manifest paths are shown relative to this folder (where the run was
    /// started), when they are under it.
    pub base: PathBuf,
    /// `--strict`: a skip counted as a failure only fails again under it.
    pub strict: bool,
}

impl Rerun {
    /// Relative to the current folder, the one the command is typed in.
    pub fn here(strict: bool) -> Self {
        Rerun {
            base: std::env::current_dir().unwrap_or_default(),
            strict,
        }
    }

    /// `cargo xtask test MANIFEST --filter suite.test [--kernel K]
    /// [--strict]`, quoted for a shell: a filter that is a test's whole
    /// `suite.test` selects that test alone.
    pub fn command(&self, t: &PlannedTest) -> String {
        let manifest = t.manifest.strip_prefix(&self.base).unwrap_or(&t.manifest);
        let id = t.id();
        let mut words: Vec<&str> = vec!["cargo", "xtask", "test"];
        let manifest = manifest.to_string_lossy();
        words.extend([manifest.as_ref(), "--filter", &id]);
        if let Some(b) = &t.boot {
            words.extend(["--kernel", &b.kernel.name]);
        }
        if self.strict {
            words.push("--strict");
        }
        shell_words::join(words)
    }

    /// The reproducer of a test's run: its rerun command and the QEMU
    /// command line, one per line, each with what it is.
    pub fn lines(&self, t: &PlannedTest, run: &TestRun) -> String {
        format!("rerun: {}\n{}", self.command(t), qemu_line(t, run))
    }
}

/// The QEMU command line of the test's VM, saying where it ran.
pub fn qemu_line(t: &PlannedTest, run: &TestRun) -> String {
    match (&t.boot, run.qemu.is_empty()) {
        (_, true) if t.kind == TestKind::HostChecks => {
            "qemu: none of its own (host checks run in the runner)".into()
        }
        (_, true) => "qemu: none (no VM was started)".into(),
        (Some(b), false) => format!("qemu (inside the virtual host {}): {}", b.label(), run.qemu),
        (None, false) => format!("qemu: {}", run.qemu),
    }
}

/// Whether a run has a result that did not go as expected: what a
/// reproducer is printed for.
pub fn needs_reproducer(run: &TestRun) -> bool {
    run.judged.results.iter().any(|r| !r.outcome.as_expected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{VIRTUAL, virtual_plan};

    #[test]
    fn the_rerun_names_manifest_test_and_kernel_and_quotes_for_a_shell() {
        let plan = virtual_plan(VIRTUAL);
        let base = plan[0].manifest.parent().unwrap().to_path_buf();
        let file = plan[0].manifest.file_name().unwrap().to_string_lossy();
        let r = Rerun {
            base: base.clone(),
            strict: false,
        };
        let kernel = &plan[0].boot.as_ref().unwrap().kernel.name;
        assert_eq!(
            r.command(&plan[0]),
            format!(
                "cargo xtask test {file} --filter {} --kernel {kernel}",
                plan[0].id()
            )
        );
        let local = virtual_plan("[[test]]\nname = \"env\"\nchecks = [\"vfio.env\"]\n");
        let strict = Rerun { base, strict: true };
        assert_eq!(
            strict.command(&local[0]),
            format!("cargo xtask test {file} --filter v.env --strict")
        );
        // A path with a space stays one word.
        let mut spaced = local[0].clone();
        spaced.manifest = PathBuf::from("/my manifests/v.toml");
        assert!(
            strict
                .command(&spaced)
                .starts_with("cargo xtask test '/my manifests/v.toml' --filter"),
            "{}",
            strict.command(&spaced)
        );
    }
}
