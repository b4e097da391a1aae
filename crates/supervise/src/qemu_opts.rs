//! QEMU option strings (`nvme,serial=x,drive=d`) built so that every value
//! arrives as itself. QEMU's option parser ends a value at the first single
//! comma and reads `,,` as one comma inside it; a value with a comma written
//! as is would add options of its own (`serial=a,logical_block_size=4096`).
//! Every value ukci places in an option string goes through [`Opts`].

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

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

/// A raw image file as a `-drive` that only a `-device` uses.
pub fn raw_drive(id: &str, image: &Path) -> Opts {
    Opts::pair("file", image.display())
        .set("if", "none")
        .set("id", id)
        .set("format", "raw")
}

/// An SR-IOV NVMe PF as QEMU emulates one: a controller in an NVMe
/// subsystem, with namespaces on raw image files, behind its own PCIe root
/// port. On the root bus QEMU 10.0 maps the PF's 64-bit VF BAR as 32-bit and
/// the VFs' registers read 0; behind a root port the VF BARs work.
#[derive(Clone, Debug)]
pub struct SriovNvme<'a> {
    /// Names the devices: root port `rp{n}` (chassis n+1, slot n),
    /// subsystem `subsys{n}`, controller `nvme{n}`, drives `nvme{n}ns{k}`.
    pub index: usize,
    pub serial: &'a str,
    /// The subsystem's NQN; QEMU derives one from its id when `None`.
    pub nqn: Option<&'a str>,
    /// `sriov_max_vfs`: TotalVFs of the PF.
    pub vfs: u16,
    /// `sriov_vq_flexible`: queue resources the PF can hand to its VFs.
    pub vq_flexible: u32,
    /// `sriov_vi_flexible`: interrupt resources the PF can hand to its VFs.
    pub vi_flexible: u32,
    pub max_ioqpairs: u32,
    pub msix_qsize: u32,
    /// The image of each namespace, NSID 1 first.
    pub namespaces: &'a [PathBuf],
}

impl SriovNvme<'_> {
    /// The `(flag, value)` pairs, in the order QEMU needs them: the port
    /// before the controller on it, the controller before its namespaces.
    pub fn args(&self) -> Vec<(&'static str, Opts)> {
        let n = self.index;
        let (port, subsys, ctrl) = (format!("rp{n}"), format!("subsys{n}"), format!("nvme{n}"));
        let mut subsystem = Opts::new("nvme-subsys").set("id", &subsys);
        if let Some(nqn) = self.nqn {
            subsystem = subsystem.set("nqn", nqn);
        }
        let mut a = vec![
            (
                "-device",
                Opts::new("pcie-root-port")
                    .set("id", &port)
                    .set("chassis", n + 1)
                    .set("slot", n),
            ),
            ("-device", subsystem),
            (
                "-device",
                Opts::new("nvme")
                    .set("id", &ctrl)
                    .set("serial", self.serial)
                    .set("subsys", &subsys)
                    .set("bus", &port)
                    .set("sriov_max_vfs", self.vfs)
                    .set("sriov_vq_flexible", self.vq_flexible)
                    .set("sriov_vi_flexible", self.vi_flexible)
                    .set("max_ioqpairs", self.max_ioqpairs)
                    .set("msix_qsize", self.msix_qsize),
            ),
        ];
        for (k, image) in (1..).zip(self.namespaces) {
            let drive = format!("{ctrl}ns{k}");
            a.push(("-drive", raw_drive(&drive, image)));
            a.push((
                "-device",
                Opts::new("nvme-ns")
                    .set("drive", &drive)
                    .set("bus", &ctrl)
                    .set("nsid", k),
            ));
        }
        a
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

/// A QEMU command line (without the program) as it is built: flags, and
/// flags with their value, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Args(Vec<OsString>);

impl Args {
    /// A flag alone (`-no-reboot`).
    pub fn flag(&mut self, flag: &str) {
        self.0.push(flag.into());
    }

    /// A flag and its value (`-device` and an [`Opts`], `-kernel` and a path).
    pub fn pair(&mut self, flag: &str, value: impl AsRef<std::ffi::OsStr>) {
        self.0.push(flag.into());
        self.0.push(value.as_ref().to_owned());
    }

    /// Words as they are (a test's extra parameters).
    pub fn words<S: Into<OsString>>(&mut self, words: impl IntoIterator<Item = S>) {
        self.0.extend(words.into_iter().map(Into::into));
    }

    pub fn into_vec(self) -> Vec<OsString> {
        self.0
    }
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

    #[test]
    fn an_sriov_nvme_sits_behind_its_root_port_with_its_namespaces() {
        let images = [PathBuf::from("/s/a,b.img"), PathBuf::from("/s/c.img")];
        let nvme = SriovNvme {
            index: 1,
            serial: "s,x",
            nqn: Some("q"),
            vfs: 2,
            vq_flexible: 4,
            vi_flexible: 2,
            max_ioqpairs: 8,
            msix_qsize: 10,
            namespaces: &images,
        };
        let got: Vec<String> = nvme
            .args()
            .iter()
            .map(|(f, o)| format!("{f} {o}"))
            .collect();
        assert_eq!(
            got,
            [
                "-device pcie-root-port,id=rp1,chassis=2,slot=1",
                "-device nvme-subsys,id=subsys1,nqn=q",
                "-device nvme,id=nvme1,serial=s,,x,subsys=subsys1,bus=rp1,sriov_max_vfs=2,\
                 sriov_vq_flexible=4,sriov_vi_flexible=2,max_ioqpairs=8,msix_qsize=10",
                "-drive file=/s/a,,b.img,if=none,id=nvme1ns1,format=raw",
                "-device nvme-ns,drive=nvme1ns1,bus=nvme1,nsid=1",
                "-drive file=/s/c.img,if=none,id=nvme1ns2,format=raw",
                "-device nvme-ns,drive=nvme1ns2,bus=nvme1,nsid=2",
            ]
        );
        let plain = SriovNvme { nqn: None, ..nvme };
        assert_eq!(plain.args()[1].1.as_str(), "nvme-subsys,id=subsys1");
    }
}
