//! The agent settings `/init` sources from the results folder.

use std::path::{Path, PathBuf};

/// The file in the results folder that `/init` reads the agent settings from.
pub const AGENT_CONF: &str = "ukci-agent.conf";
/// The file in the results folder where `/init` records the agent's exit status.
pub const AGENT_EXIT_FILE: &str = "agent-exit";

/// The program the virtual host runs once it is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Absolute path on the host (the host root is shared read-only).
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Extra environment, besides `UKCI_RESULTS` (set by `/init`).
    pub env: Vec<(String, String)>,
    /// Run inside `chroot` of the host root, so a dynamically linked host
    /// binary finds its libraries and host paths look as on the host. Without
    /// it the agent runs in the busybox initramfs (program under `/host`).
    pub chroot: bool,
}

/// Quotes a word for POSIX sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `ukci-agent.conf` that `/init` sources. `results_host` is the results
/// folder's host path (where a chrooted agent finds it).
pub fn agent_conf(agent: &Agent, results_host: &Path) -> Result<String, String> {
    let program = agent.program.to_str().ok_or("agent path is not UTF-8")?;
    if !agent.program.is_absolute() {
        return Err(format!(
            "agent program `{program}` must be an absolute host path"
        ));
    }
    let results = results_host.to_str().ok_or("results path is not UTF-8")?;
    let mut out = String::from("# Written by ukci-vhost for /init; sourced by busybox sh.\n");
    out.push_str(&format!("UKCI_CHROOT={}\n", u8::from(agent.chroot)));
    out.push_str(&format!("UKCI_RESULTS_HOST={}\n", shell_quote(results)));
    for (k, v) in &agent.env {
        let valid = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "agent environment name `{k}` is not a shell variable name"
            ));
        }
        out.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    out.push_str("set --");
    for word in std::iter::once(program).chain(agent.args.iter().map(String::as_str)) {
        out.push(' ');
        out.push_str(&shell_quote(word));
    }
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_conf_quotes_every_word() {
        let agent = Agent {
            program: "/opt/ukci/bin/ukci".into(),
            args: vec!["agent".into(), "it's a $test".into()],
            env: vec![("UKCI_KERNEL".into(), "debian:6.12".into())],
            chroot: false,
        };
        let conf = agent_conf(&agent, Path::new("/work/r")).unwrap();
        assert_eq!(
            conf.lines().skip(1).collect::<Vec<_>>(),
            [
                "UKCI_CHROOT=0",
                "UKCI_RESULTS_HOST='/work/r'",
                "export UKCI_KERNEL='debian:6.12'",
                r"set -- '/opt/ukci/bin/ukci' 'agent' 'it'\''s a $test'",
            ]
        );
        let bad_env = Agent {
            env: vec![("A-B".into(), "x".into())],
            ..agent.clone()
        };
        assert!(
            agent_conf(&bad_env, Path::new("/r"))
                .unwrap_err()
                .contains("`A-B`")
        );
        let relative = Agent {
            program: "ukci".into(),
            ..agent
        };
        assert!(
            agent_conf(&relative, Path::new("/r"))
                .unwrap_err()
                .contains("absolute")
        );
    }
}
