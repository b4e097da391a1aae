//! Which tests of the cfg run, and which `run` (`scripts/runtime.bash`)
//! skips before starting QEMU, and why.

use crate::cfg::{CfgTest, NODEFAULT};
use std::path::Path;

/// The tests a manifest asks for: names matching one of `globs` (all when
/// empty) and, when `groups` is not empty, in one of them. Without
/// `groups`, a `nodefault` test is still listed: [`skip_before_start`]
/// skips it, as `run_tests.sh` does without `-g`.
pub fn select<'a>(
    cfg: &'a [CfgTest],
    globs: &[String],
    groups: &[String],
    matches: impl Fn(&str, &str) -> bool,
) -> Vec<&'a CfgTest> {
    cfg.iter()
        .filter(|t| globs.is_empty() || globs.iter().any(|g| matches(g, &t.name)))
        .filter(|t| groups.is_empty() || groups.iter().any(|g| t.in_group(g)))
        .collect()
}

/// What the host and run are, for the decisions `run` takes.
pub struct Context<'a> {
    /// The tree's `ARCH` (`x86_64`).
    pub arch: &'a str,
    /// The accelerator the test would run under (`ACCEL`).
    pub accel: &'a str,
    /// Whether the manifest names groups (`run_tests.sh -g`): then
    /// `nodefault` tests run.
    pub groups_asked: bool,
    /// The folder of the cfg, where `file` is.
    pub test_dir: &'a Path,
    /// Reads a file for `check` (`None`: not a readable file).
    pub read: &'a dyn Fn(&Path) -> Option<String>,
}

/// Why `run` would skip `t` before starting QEMU, if it would.
pub fn skip_before_start(t: &CfgTest, cx: &Context<'_>) -> Option<String> {
    if !cx.groups_asked && t.in_group(NODEFAULT) {
        return Some("test marked as manual run only".into());
    }
    if let Some(arch) = t.arch.as_deref().filter(|a| !a.is_empty())
        && arch != cx.arch
    {
        return Some(format!("{arch} only"));
    }
    if let Some(accel) = t.accel.as_deref().filter(|a| !a.is_empty()) {
        let ours = cx.accel;
        let same = ours
            .strip_prefix(accel)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(','));
        if !same {
            return Some(format!("{accel} only, but ACCEL={ours}"));
        }
    }
    for param in &t.check {
        let (path, value) = param.split_once('=').unwrap_or((param, param));
        // `[ "$(cat $path)" != "$value" ]`: trailing newlines do not count.
        let seen = (cx.read)(Path::new(path));
        if seen.as_deref().map(|s| s.trim_end_matches('\n')) != Some(value) {
            return Some(format!("{path} not equal to {value}"));
        }
    }
    let file = t.file.as_deref().unwrap_or("");
    let kernel = cx.test_dir.join(file);
    if file.is_empty() || !kernel.is_file() {
        return Some(format!(
            "Test file '{}' not found",
            Path::new(cx.test_dir.file_name().unwrap_or_default())
                .join(file)
                .display()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cfg::parse;

    const CFG: &str = "[a]\nfile = a.flat\n[b]\nfile = b.flat\narch = i386\n\
        [pmu]\nfile = a.flat\naccel = kvm\ncheck = /sys/module/kvm/parameters/enable_pmu=Y\n\
        [fep]\nfile = a.flat\ngroups = vmx nodefault\n[gone]\nfile = gone.flat\n";

    fn eq(p: &str, t: &str) -> bool {
        p == "*" || p == t || p.strip_suffix('*').is_some_and(|s| t.starts_with(s))
    }

    #[test]
    fn selection_by_glob_and_group() {
        let (cfg, _) = parse(CFG);
        let names = |v: Vec<&CfgTest>| v.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(select(&cfg, &[], &[], eq)).len(), 5);
        assert_eq!(names(select(&cfg, &["p*".into()], &[], eq)), ["pmu"]);
        assert_eq!(names(select(&cfg, &[], &["vmx".into()], eq)), ["fep"]);
    }

    fn cx<'a>(
        accel: &'a str,
        groups_asked: bool,
        test_dir: &'a Path,
        read: &'a dyn Fn(&Path) -> Option<String>,
    ) -> Context<'a> {
        Context {
            arch: "x86_64",
            accel,
            groups_asked,
            test_dir,
            read,
        }
    }

    #[test]
    fn skips_are_run_s_with_its_reasons() {
        let dir = std::env::temp_dir().join(format!("ukci-kut-sel-{}", std::process::id()));
        let test_dir = dir.join("x86");
        std::fs::create_dir_all(&test_dir).unwrap();
        std::fs::write(test_dir.join("a.flat"), b"").unwrap();
        let (cfg, _) = parse(CFG);
        let none = |_: &Path| None;
        let pmu_on = |p: &Path| {
            (p == Path::new("/sys/module/kvm/parameters/enable_pmu")).then(|| "Y\n".to_string())
        };
        let tcg = cx("tcg", false, &test_dir, &none);
        let why: Vec<Option<String>> = cfg.iter().map(|t| skip_before_start(t, &tcg)).collect();
        assert_eq!(
            why,
            [
                None,
                Some("i386 only".into()),
                Some("kvm only, but ACCEL=tcg".into()),
                Some("test marked as manual run only".into()),
                Some("Test file 'x86/gone.flat' not found".into()),
            ]
        );
        assert_eq!(
            skip_before_start(&cfg[2], &cx("kvm", false, &test_dir, &none)).as_deref(),
            Some("/sys/module/kvm/parameters/enable_pmu not equal to Y")
        );
        assert_eq!(
            skip_before_start(&cfg[2], &cx("kvm,x=1", false, &test_dir, &pmu_on)),
            None
        );
        assert_eq!(
            skip_before_start(&cfg[3], &cx("tcg", true, &test_dir, &none)),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
