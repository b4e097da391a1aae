//! QEMU option strings (`nvme,serial=x,drive=d`) built so that every value
//! arrives as itself. QEMU's option parser ends a value at the first single
//! comma and reads `,,` as one comma inside it; a value with a comma written
//! as is would add options of its own (`serial=a,logical_block_size=4096`).
//! Every value ukci places in an option string goes through [`Opts`].

use std::ffi::OsString;
use std::fmt;

/// One option string: a leading value (the driver of `-device`, the
/// backend of `-virtfs`), then `key=value` pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opts(String);

impl Opts {
    /// Starts with the leading value (escaped like any value).
    pub fn new(head: impl fmt::Display) -> Opts {
        Opts(escape(&head.to_string()))
    }

    /// Starts with `key=value`, for options without a leading value.
    pub fn pair(key: &str, value: impl fmt::Display) -> Opts {
        let mut o = Opts::new("").set(key, value);
        o.0.remove(0);
        o
    }

    /// Adds `key=value`. Keys are ukci's own constants.
    pub fn set(mut self, key: &str, value: impl fmt::Display) -> Opts {
        debug_assert!(
            !key.is_empty() && !key.contains([',', '=']),
            "option key {key:?}"
        );
        self.0.push(',');
        self.0.push_str(key);
        self.0.push('=');
        self.0.push_str(&escape(&value.to_string()));
        self
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Opts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Opts> for OsString {
    fn from(o: Opts) -> OsString {
        o.0.into()
    }
}

impl AsRef<std::ffi::OsStr> for Opts {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

/// A value inside an option string: each comma doubled.
fn escape(v: &str) -> String {
    v.replace(',', ",,")
}

/// Splits an option string the way QEMU's parser does (`,,` is a comma in
/// a value): the leading value, then `(key, value)` pairs. For tests.
pub fn split(opts: &str) -> (String, Vec<(String, String)>) {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = opts.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    let head = parts.remove(0);
    let pairs = parts
        .into_iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p, String::new()),
        })
        .collect();
    (head, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_with_commas_stays_one_value() {
        let serial = "inj,logical_block_size=4096,physical_block_size=4096";
        let o = Opts::new("nvme").set("serial", serial).set("drive", "nvm0");
        assert_eq!(
            o.as_str(),
            "nvme,serial=inj,,logical_block_size=4096,,physical_block_size=4096,drive=nvm0"
        );
        let (head, pairs) = split(o.as_str());
        assert_eq!(head, "nvme");
        assert_eq!(
            pairs,
            [
                ("serial".to_string(), serial.to_string()),
                ("drive".to_string(), "nvm0".to_string())
            ]
        );
        assert_eq!(split(Opts::new("a,b").as_str()).0, "a,b");
        assert_eq!(
            Opts::pair("file", "/a,b").set("if", "none").as_str(),
            "file=/a,,b,if=none"
        );
    }
}
