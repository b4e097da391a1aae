//! `unittests.cfg` as kvm-unit-tests' own `scripts/common.bash`
//! (`for_each_unittest`) reads it: a `[name]` line starts a test, and each
//! `key = value` line after it sets one of its parameters. Lines are read
//! with surrounding blanks removed (bash `read -r`); a key must start its
//! line; `extra_params`/`qemu_params` may be a `"""` block spanning lines.
//! Anything else (comments, blank lines, unknown keys) is ignored by the
//! scripts; an unknown key is reported here as a warning.

use std::time::Duration;

/// One `[section]` of the cfg, its values as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CfgTest {
    pub name: String,
    /// 1-based line of `[name]`.
    pub line: usize,
    /// The test binary, relative to the arch folder (`apic.flat`).
    pub file: Option<String>,
    /// `smp`: a number, or `$MAX_SMP`.
    pub smp: Option<String>,
    /// `test_args`: shell words, passed with `-append`.
    pub test_args: Option<String>,
    /// `extra_params` / `qemu_params`: shell words added to QEMU's command.
    pub extra_params: Option<String>,
    pub groups: Vec<String>,
    pub arch: Option<String>,
    pub machine: Option<String>,
    /// `check`: `path=value` words.
    pub check: Vec<String>,
    /// A shell condition; true skips the test.
    pub disabled_if: Option<String>,
    pub accel: Option<String>,
    pub timeout: Option<String>,
}

/// A line of the cfg the scripts ignore although it looks meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

/// The keys `for_each_unittest` reads for QEMU, and `kvmtool_params`,
/// which it reads only for kvmtool.
pub const KEYS: &[&str] = &[
    "file",
    "smp",
    "test_args",
    "extra_params",
    "qemu_params",
    "kvmtool_params",
    "groups",
    "arch",
    "machine",
    "check",
    "disabled_if",
    "accel",
    "timeout",
];

/// The default of `timeout` (`scripts/runtime.bash`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// The limit of a test whose cfg says `timeout = 0`. timeout(1) then sets
/// none and `run_tests.sh` waits for as long as the test runs; every process
/// ukci starts has a limit, so such a test gets this generous one.
pub const UNLIMITED_TIMEOUT: Duration = Duration::from_secs(3600);

/// The group that keeps a test out of a default run.
pub const NODEFAULT: &str = "nodefault";

/// `key = value` with the key at the start of the line: `^key *= *(.*)$`.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once('=')?;
    let key = key.trim_end_matches(' ');
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| (key, value.trim_start_matches(' ')))
}

/// Parses the cfg text into its tests, in file order, and the warnings.
pub fn parse(text: &str) -> (Vec<CfgTest>, Vec<Warning>) {
    let mut tests: Vec<CfgTest> = Vec::new();
    let mut warnings = Vec::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    while let Some((n, raw)) = lines.next() {
        let line = raw.trim_matches([' ', '\t']);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if tests.iter().any(|t| t.name == name) {
                warnings.push(Warning {
                    line: n,
                    message: format!("test `{name}` is declared again; both run"),
                });
            }
            tests.push(CfgTest {
                name: name.to_string(),
                line: n,
                ..CfgTest::default()
            });
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((key, value)) = key_value(line) else {
            warnings.push(Warning {
                line: n,
                message: format!("`{line}` is neither a [test] nor a key = value line"),
            });
            continue;
        };
        let Some(t) = tests.last_mut() else {
            warnings.push(Warning {
                line: n,
                message: format!("`{key}` before the first [test] is ignored"),
            });
            continue;
        };
        let value = value.to_string();
        match key {
            "file" => t.file = Some(value),
            "smp" => t.smp = Some(value),
            "test_args" => t.test_args = Some(value),
            "extra_params" | "qemu_params" => {
                t.extra_params = Some(match value.strip_prefix("\"\"\"") {
                    Some(first) => triple_quoted(first, &mut lines),
                    None => value,
                })
            }
            "kvmtool_params" => {}
            "groups" => t.groups = value.split_whitespace().map(String::from).collect(),
            "arch" => t.arch = Some(value),
            "machine" => t.machine = Some(value),
            "check" => t.check = value.split_whitespace().map(String::from).collect(),
            "disabled_if" => t.disabled_if = Some(value),
            "accel" => t.accel = Some(value),
            "timeout" => t.timeout = Some(value),
            _ => warnings.push(Warning {
                line: n,
                message: format!(
                    "unknown key `{key}` in [{}]: kvm-unit-tests ignores it (known: {})",
                    t.name,
                    KEYS.join(", ")
                ),
            }),
        }
    }
    (tests, warnings)
}

/// The rest of a `"""` block: lines up to the one ending in `"""`, joined
/// with newlines, a backslash at a line's end joining it to the next.
fn triple_quoted<'a>(first: &str, lines: &mut impl Iterator<Item = (usize, &'a str)>) -> String {
    if let Some(v) = first.trim_end().strip_suffix("\"\"\"") {
        return v.to_string();
    }
    let mut out = format!("{first}\n");
    for (_, raw) in lines {
        if out.ends_with("\\\n") && odd_backslashes(&out[..out.len() - 1]) {
            out.truncate(out.len() - 2);
        }
        // `read -r` with the default IFS drops the line's blanks.
        let line = raw.trim_matches([' ', '\t']);
        if let Some(v) = line.strip_suffix("\"\"\"") {
            out.push_str(v);
            return out;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn odd_backslashes(s: &str) -> bool {
    s.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1
}

/// A `timeout(1)` duration: a decimal number with an optional unit
/// (`s`, `m`, `h`, `d`); 0 means none.
pub fn parse_timeout(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (num, unit) = match v.char_indices().last()? {
        (i, c @ ('s' | 'm' | 'h' | 'd')) => (&v[..i], c),
        _ => (v, 's'),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let scale = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        _ => 86400.0,
    };
    Some(Duration::from_secs_f64(n * scale))
}

impl CfgTest {
    /// The timeout `run_tests.sh` gives it ([`UNLIMITED_TIMEOUT`] for none).
    pub fn timeout(&self) -> Result<Duration, String> {
        match &self.timeout {
            None => Ok(DEFAULT_TIMEOUT),
            Some(v) => match parse_timeout(v) {
                Some(d) if d.is_zero() => Ok(UNLIMITED_TIMEOUT),
                Some(d) => Ok(d),
                None => Err(format!("timeout = {v} is not a timeout(1) duration")),
            },
        }
    }

    /// The number of vCPUs: the `smp` value, `$MAX_SMP` being `max_smp`.
    pub fn smp(&self, max_smp: u32) -> Result<u32, String> {
        match self.smp.as_deref().map(str::trim) {
            None => Ok(1),
            Some("$MAX_SMP" | "${MAX_SMP}") => Ok(max_smp),
            Some(v) => v
                .parse()
                .map_err(|_| format!("smp = {v} is not a number or $MAX_SMP")),
        }
    }

    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "\
# comment
[x2apic]
file = apic.flat
smp = 2
qemu_params = -cpu qemu64,+x2apic,+tsc-deadline
arch = x86_64
timeout = 30
groups = apic

#[init]
#file = init.flat

[pmu]
file = pmu.flat
check = /sys/module/kvm/parameters/enable_pmu=Y /proc/sys/kernel/nmi_watchdog=0
accel = kvm
groups = pmu nodefault
  flies = 3
[multi]
file = m.flat
extra_params = \"\"\"-cpu max \\
   -m 256
   -smp 2\"\"\"
test_args = \"10000000 `date +%s`\"
";

    #[test]
    fn reads_sections_and_keys_like_for_each_unittest() {
        let (t, w) = parse(CFG);
        assert_eq!(
            t.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["x2apic", "pmu", "multi"]
        );
        assert_eq!(t[0].line, 2);
        assert_eq!(t[0].file.as_deref(), Some("apic.flat"));
        assert_eq!(t[0].smp(4), Ok(2));
        assert_eq!(
            t[0].extra_params.as_deref(),
            Some("-cpu qemu64,+x2apic,+tsc-deadline")
        );
        assert_eq!(t[0].timeout(), Ok(Duration::from_secs(30)));
        assert_eq!(t[0].groups, ["apic"]);
        assert_eq!(t[1].check.len(), 2);
        assert!(t[1].in_group(NODEFAULT));
        assert_eq!(t[1].accel.as_deref(), Some("kvm"));
        assert_eq!(t[1].timeout(), Ok(DEFAULT_TIMEOUT));
        assert_eq!(
            t[2].extra_params.as_deref(),
            Some("-cpu max -m 256\n-smp 2"),
            "a backslash joins lines, a newline stays a word break"
        );
        assert_eq!(t[2].test_args.as_deref(), Some("\"10000000 `date +%s`\""));
        assert_eq!(
            w,
            [Warning {
                line: 18,
                message: "unknown key `flies` in [pmu]: kvm-unit-tests ignores it (known: \
                          file, smp, test_args, extra_params, qemu_params, kvmtool_params, groups, \
                          arch, machine, check, disabled_if, accel, timeout)"
                    .into()
            }]
        );
    }

    #[test]
    fn timeouts_read_as_timeout_1_reads_them() {
        assert_eq!(parse_timeout("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_timeout("240"), Some(Duration::from_secs(240)));
        assert_eq!(parse_timeout("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(parse_timeout("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("soon"), None);
        assert_eq!(parse_timeout("-1"), None);
        let with = |v: &str| CfgTest {
            timeout: Some(v.into()),
            ..CfgTest::default()
        };
        assert_eq!(with("30").timeout(), Ok(Duration::from_secs(30)));
        // timeout(1) reads 0 as no limit; ukci's is long instead of none.
        assert_eq!(with("0").timeout(), Ok(UNLIMITED_TIMEOUT));
        assert_eq!(with("0s").timeout(), Ok(UNLIMITED_TIMEOUT));
        assert!(with("soon").timeout().is_err());
        let t = CfgTest {
            smp: Some("$MAX_SMP".into()),
            ..CfgTest::default()
        };
        assert_eq!(t.smp(2), Ok(2));
        let t = CfgTest {
            smp: Some("two".into()),
            ..CfgTest::default()
        };
        assert!(t.smp(2).is_err());
    }

    #[test]
    fn groups_split_and_stray_lines_are_warned() {
        let (t, w) = parse(
            "[a]\nfile = a.flat\n[b]\nfile = b.flat\ngroups = vmx nested_exception nodefault\ntimeout = 240\n",
        );
        assert!(w.is_empty());
        assert_eq!(t[1].groups, ["vmx", "nested_exception", "nodefault"]);
        let (_, w) = parse("file = x.flat\n[a]\nnot a key\n");
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!((w[0].line, w[1].line), (1, 3));
    }
}
