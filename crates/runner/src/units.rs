//! Small values as people write them in manifests: sizes and durations
//! (`128M`, `10s`) and globs over test and result names (`cr.arch.*`).

use serde::{Deserialize, Deserializer, de};
use std::fmt;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(u64);

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }
    pub const fn gib(n: u64) -> Self {
        ByteSize(n << 30)
    }
    pub const fn bytes(self) -> u64 {
        self.0
    }
    pub fn mebibytes(self) -> u64 {
        self.0 >> 20
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size"))?;
        let shift = match unit.trim() {
            "" | "B" => 0,
            "K" | "KiB" | "k" => 10,
            "M" | "MiB" => 20,
            "G" | "GiB" => 30,
            _ => return Err(format!("`{s}` has an unknown unit; use K, M or G (binary)")),
        };
        n.checked_mul(1 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{}G", b >> 30)
        } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}M", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}K", b >> 10)
        } else {
            write!(f, "{b}")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"128M\" or \"1G\", or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse::<ByteSize>()
                    .map_err(|e| E::custom(format!("size: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A test's hard time limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout(pub Duration);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. \"10s\" or \"500ms\""))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("`{s}` has an unknown unit; use ms, s or m")),
    };
    if !(0.001..=86_400.0).contains(&secs) {
        return Err(format!("`{s}` is out of range (1ms to 24h)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Timeout;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a timeout such as \"10s\", \"500ms\" or \"2m\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timeout, E> {
                parse_duration(&v.to_string())
                    .map(Timeout)
                    .map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timeout, E> {
                parse_duration(&v.to_string())
                    .map(Timeout)
                    .map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timeout, E> {
                parse_duration(v)
                    .map(Timeout)
                    .map_err(|e| E::custom(format!("timeout: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Simple glob: `*` any run, `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether some text that starts with `prefix` matches the glob `pattern`.
pub fn glob_prefix(pattern: &str, prefix: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    // The pattern positions reachable after reading the prefix so far.
    let close = |set: &mut Vec<bool>| {
        for i in 0..p.len() {
            if set[i] && p[i] == '*' {
                set[i + 1] = true;
            }
        }
    };
    let mut at = vec![false; p.len() + 1];
    at[0] = true;
    close(&mut at);
    for c in prefix.chars() {
        let mut next = vec![false; p.len() + 1];
        for i in (0..p.len()).filter(|&i| at[i]) {
            match p[i] {
                '*' => next[i] = true,
                '?' => next[i + 1] = true,
                x if x == c => next[i + 1] = true,
                _ => {}
            }
        }
        close(&mut next);
        at = next;
    }
    // Whatever pattern is left can always be completed.
    at.contains(&true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("128M".parse::<ByteSize>().unwrap(), ByteSize::mib(128));
        assert_eq!("1G".parse::<ByteSize>().unwrap().to_string(), "1G");
        assert!("12X".parse::<ByteSize>().is_err());
        assert!("M".parse::<ByteSize>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("cr.*: bit ?0", "cr.arch: bit 40"));
        assert!(!glob("cr.*: bit ?0", "cr.arch: bit 41"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b", "a"));
        assert!(glob_prefix(
            "cr.arch.cr0-reserved: bit-*: fault",
            "cr.arch.cr0-reserved: "
        ));
        assert!(glob_prefix("*: pke", "nvme.rw: "));
        assert!(glob_prefix("nvme.*", "nvme.rw: "));
        assert!(!glob_prefix("nvme.rx: *", "nvme.rw: "));
        assert!(!glob_prefix("boot.smoke", "boot.smoke: "));
    }
}
