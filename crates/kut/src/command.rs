//! The QEMU command `x86/run` builds for a test, built with ukci's typed
//! option strings, and the shell words of the cfg's `test_args` and
//! `extra_params`, which `run_tests.sh` `eval`s.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ukci_supervise::End;
use ukci_supervise::qemu_opts::{Args, Opts};

/// What `x86/run` needs to start one test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCommand {
    /// The `.flat` image, or [`crate::decode::NO_FILE`] for the start probe.
    pub kernel: PathBuf,
    /// `kvm` or `tcg`, with `,props` if any (`ACCEL=kvm,...`).
    pub accel: String,
    pub smp: u32,
    /// `test_args`, expanded: the guest's command line, given with `-append`.
    pub append: Vec<String>,
    /// `extra_params`, expanded: added to QEMU's arguments as they are.
    pub extra: Vec<String>,
    /// The environment file the test reads, passed with `-initrd`.
    pub initrd: Option<PathBuf>,
}

/// The isa-debug-exit port kvm-unit-tests' `exit()` writes to.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

impl TestCommand {
    /// The arguments after the QEMU binary, in `x86/run`'s order:
    /// `--no-reboot -nodefaults $pit $pc_testdev -display none -serial stdio
    /// $pci_testdev -machine accel=$ACCEL -kernel FILE -smp N [-append ARGS]
    /// EXTRA -initrd ENV`.
    pub fn args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        a.flag("--no-reboot");
        a.flag("-nodefaults");
        a.pair("-global", Opts::pair("kvm-pit.lost_tick_policy", "discard"));
        a.pair("-device", Opts::new("pc-testdev"));
        a.pair(
            "-device",
            Opts::new("isa-debug-exit")
                .set("iobase", format_args!("{DEBUG_EXIT_PORT:#x}"))
                .set("iosize", "0x4"),
        );
        a.pair("-display", "none");
        a.pair("-serial", "stdio");
        a.pair("-device", Opts::new("pci-testdev"));
        // ACCEL_PROPS follow the name as the user wrote them.
        let (name, props) = self.accel.split_once(',').unwrap_or((&self.accel, ""));
        let mut machine: OsString = Opts::pair("accel", name).into();
        if !props.is_empty() {
            machine.push(",");
            machine.push(props);
        }
        a.pair("-machine", machine);
        a.pair("-kernel", &self.kernel);
        a.pair("-smp", self.smp.to_string());
        if !self.append.is_empty() {
            a.flag("-append");
            a.words(&self.append);
        }
        a.words(&self.extra);
        if let Some(env) = &self.initrd {
            a.pair("-initrd", env);
        }
        a.into_vec()
    }
}

/// Splits a cfg value into words as `eval` would: quotes removed, blanks
/// and newlines separating words. A value with a substitution (`` `…` ``,
/// `$…`) is `Err(value)`: only a shell can expand it ([`expand`]).
pub fn plain_words(value: &str) -> Result<Vec<String>, String> {
    if value.contains(['`', '$']) {
        return Err(value.to_string());
    }
    shlex::split(value).ok_or_else(|| format!("unbalanced quotes in `{value}`"))
}

/// The words of a cfg value, expanded right before the test starts (a
/// `` `date +%s` `` must be the time of the run): plain values here, ones
/// with substitutions by `/bin/sh` in `dir`, as `run_tests.sh`'s `eval`
/// expands them.
pub fn expand(value: &str, dir: &Path) -> Result<Vec<String>, String> {
    match plain_words(value) {
        Ok(words) => Ok(words),
        Err(_) if !value.contains(['`', '$']) => Err(format!("unbalanced quotes in `{value}`")),
        Err(_) => {
            let script = format!("set -- {value}\nfor w do printf '%s\\0' \"$w\"; done");
            let fin = ukci_supervise::run_in(
                dir,
                "sh".as_ref(),
                &["-c".into(), script.into()],
                Duration::from_secs(10),
                |_| {},
            );
            match fin.end {
                End::Exited(0) => Ok(fin
                    .stdout
                    .split_terminator('\0')
                    .map(String::from)
                    .collect()),
                end => Err(format!(
                    "the shell could not expand `{value}` ({end:?}): {}",
                    fin.stderr.trim()
                )),
            }
        }
    }
}

/// Whether a cfg's `disabled_if` holds: `run` evaluates it with `eval` in
/// bash; here bash runs it in `dir` with the run's `ACCEL` and `TARGET`.
pub fn disabled(condition: &str, accel: &str, dir: &Path) -> bool {
    let args: Vec<OsString> = vec![
        "-c".into(),
        format!("export ACCEL={accel} TARGET=qemu; {condition}").into(),
    ];
    let fin = ukci_supervise::run_in(dir, "bash".as_ref(), &args, Duration::from_secs(10), |_| {});
    fin.end == End::Exited(0)
}

/// The `-initrd` environment file `initrd_create` writes (`env_params`,
/// `env_errata`): the target, QEMU's accelerator and version, the host
/// kernel's version, and `ERRATA_FORCE=y` under TCG.
pub fn environment(accel: &str, qemu_version_line: &str, kernel_release: &str) -> String {
    let mut env = String::from("TARGET=\n");
    let accel = accel.split(',').next().unwrap_or(accel);
    env.push_str(&format!("QEMU_ACCEL={accel}\n"));
    // `IFS='[ .]' read -r _ _ _ MAJOR MINOR MICRO rest`: "QEMU emulator
    // version 10.0.2 (Debian ...)".
    let v: Vec<&str> = qemu_version_line.split([' ', '.']).collect();
    env.push_str(&format!("QEMU_VERSION_STRING={qemu_version_line}\n"));
    for (i, key) in ["QEMU_MAJOR", "QEMU_MINOR", "QEMU_MICRO"]
        .iter()
        .enumerate()
    {
        env.push_str(&format!("{key}={}\n", v.get(3 + i).unwrap_or(&"")));
    }
    let (version, rest) = kernel_release
        .split_once('.')
        .unwrap_or((kernel_release, ""));
    let (patch, rest) = rest.split_once('.').unwrap_or((rest, ""));
    let (sub, extra) = rest.split_once('-').unwrap_or((rest, ""));
    let digits = |s: &str| {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    };
    env.push_str(&format!("KERNEL_VERSION_STRING={kernel_release}\n"));
    env.push_str(&format!("KERNEL_VERSION={version}\n"));
    env.push_str(&format!("KERNEL_PATCHLEVEL={patch}\n"));
    env.push_str(&format!("KERNEL_SUBLEVEL={}\n", digits(sub)));
    env.push_str(&format!("KERNEL_EXTRAVERSION={}\n", digits(extra)));
    if accel == "tcg" {
        env.push_str("ERRATA_FORCE=y\n");
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(c: &TestCommand) -> String {
        c.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_command_is_x86_runs() {
        let c = TestCommand {
            kernel: "/t/x86/apic.flat".into(),
            accel: "tcg".into(),
            smp: 2,
            append: vec![],
            extra: plain_words("-cpu qemu64,+x2apic,+tsc-deadline").unwrap(),
            initrd: Some("/s/env".into()),
        };
        assert_eq!(
            text(&c),
            "--no-reboot -nodefaults -global kvm-pit.lost_tick_policy=discard -device pc-testdev \
             -device isa-debug-exit,iobase=0xf4,iosize=0x4 -display none -serial stdio \
             -device pci-testdev -machine accel=tcg -kernel /t/x86/apic.flat -smp 2 \
             -cpu qemu64,+x2apic,+tsc-deadline -initrd /s/env"
        );
        let c = TestCommand {
            append: plain_words(
                "\"-pause_filter_test -svm_unsupported_instruction_intercept_test\"",
            )
            .unwrap(),
            accel: "kvm,kernel-irqchip=split".into(),
            initrd: None,
            ..c
        };
        let args = c.args();
        let i = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(
            args[i + 1],
            "-pause_filter_test -svm_unsupported_instruction_intercept_test",
            "a quoted test_args is one argument"
        );
        assert!(text(&c).contains("-machine accel=kvm,kernel-irqchip=split "));
    }

    #[test]
    fn words_split_as_eval_splits_them() {
        assert_eq!(plain_words("'cpuid'").unwrap(), ["cpuid"]);
        assert_eq!(
            plain_words("-cpu max -m 4g").unwrap(),
            ["-cpu", "max", "-m", "4g"]
        );
        assert_eq!(plain_words("a\nb").unwrap(), ["a", "b"]);
        assert!(plain_words("\"10000000 `date +%s`\"").is_err());
        let dir = std::env::temp_dir();
        let w = expand("\"10000000 `echo 17`\" $((1+1))", &dir).unwrap();
        assert_eq!(w, ["10000000 17", "2"]);
        assert_eq!(expand("'a b' c", &dir).unwrap(), ["a b", "c"]);
        assert!(expand("'a", &dir).is_err());
        assert!(disabled("[[ \"$ACCEL\" == tcg ]]", "tcg", &dir));
        assert!(!disabled("[[ \"$ACCEL\" == tcg ]]", "kvm", &dir));
    }

    #[test]
    fn the_environment_file_has_what_env_params_writes() {
        let e = environment(
            "tcg",
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)",
            "6.12.117+deb12-amd64",
        );
        for want in [
            "QEMU_ACCEL=tcg\n",
            "QEMU_MAJOR=10\nQEMU_MINOR=0\nQEMU_MICRO=2\n",
            "KERNEL_VERSION=6\nKERNEL_PATCHLEVEL=12\nKERNEL_SUBLEVEL=117\n",
            "ERRATA_FORCE=y\n",
        ] {
            assert!(e.contains(want), "{want:?} missing in {e}");
        }
        assert!(!environment("kvm", "", "6.1.0").contains("ERRATA_FORCE"));
    }
}
