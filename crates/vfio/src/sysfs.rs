//! PCI functions through sysfs: reads, and the one raw writer every change
//! goes through (see [`crate::host::Host::apply`], which guards and journals
//! before calling it). Paths hang off a root so tests can use a fake tree.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::errno::Errno;
use crate::error::OsError;
use crate::kmsg;

/// The filesystem root that holds `sys/` and `proc/` (`/` on a real host).
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

/// Vendor, device and class of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
}

impl Sysfs {
    pub fn new(root: &Path) -> Sysfs {
        Sysfs {
            root: root.to_owned(),
        }
    }

    pub fn system() -> Sysfs {
        Sysfs::new(Path::new("/"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn sys(&self, rel: &str) -> PathBuf {
        self.root.join("sys").join(rel)
    }

    pub fn proc(&self, rel: &str) -> PathBuf {
        self.root.join("proc").join(rel)
    }

    pub fn device_dir(&self, bdf: &str) -> PathBuf {
        self.sys("bus/pci/devices").join(bdf)
    }

    pub fn exists(&self, bdf: &str) -> bool {
        self.device_dir(bdf).exists()
    }

    /// A device attribute, trimmed.
    pub fn attr(&self, bdf: &str, name: &str) -> io::Result<String> {
        read_trimmed(&self.device_dir(bdf).join(name))
    }

    fn link_name(&self, path: &Path) -> Option<String> {
        let target = fs::read_link(path).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    /// The bound driver's name.
    pub fn driver(&self, bdf: &str) -> Option<String> {
        self.link_name(&self.device_dir(bdf).join("driver"))
    }

    /// `driver_override`, `None` when unset (sysfs shows `(null)`).
    pub fn driver_override(&self, bdf: &str) -> Option<String> {
        let v = self.attr(bdf, "driver_override").ok()?;
        (!v.is_empty() && v != "(null)").then_some(v)
    }

    pub fn sriov_numvfs(&self, bdf: &str) -> io::Result<u32> {
        parse_attr(&self.attr(bdf, "sriov_numvfs")?)
    }

    pub fn sriov_totalvfs(&self, bdf: &str) -> io::Result<u32> {
        parse_attr(&self.attr(bdf, "sriov_totalvfs")?)
    }

    pub fn sriov_drivers_autoprobe(&self, bdf: &str) -> io::Result<bool> {
        Ok(self.attr(bdf, "sriov_drivers_autoprobe")? == "1")
    }

    pub fn iommu_group(&self, bdf: &str) -> io::Result<u32> {
        let name = self
            .link_name(&self.device_dir(bdf).join("iommu_group"))
            .ok_or_else(|| io::Error::other(format!("{bdf} has no IOMMU group")))?;
        parse_attr(&name)
    }

    pub fn iommu_group_count(&self) -> usize {
        fs::read_dir(self.sys("kernel/iommu_groups")).map_or(0, |d| d.count())
    }

    pub fn ids(&self, bdf: &str) -> io::Result<PciIds> {
        let hex = |name: &str| -> io::Result<u32> {
            let v = self.attr(bdf, name)?;
            u32::from_str_radix(v.trim_start_matches("0x"), 16)
                .map_err(|_| io::Error::other(format!("{bdf}/{name}: `{v}` is not hex")))
        };
        Ok(PciIds {
            vendor: hex("vendor")? as u16,
            device: hex("device")? as u16,
            class: hex("class")?,
        })
    }

    /// The function's VFs, in VF order (`virtfn0`, `virtfn1`, ...).
    pub fn virtfns(&self, bdf: &str) -> Vec<String> {
        let dir = self.device_dir(bdf);
        let mut found: Vec<(u32, String)> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n: u32 = name.strip_prefix("virtfn")?.parse().ok()?;
                Some((n, self.link_name(&e.path())?))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, b)| b).collect()
    }

    /// The PF of a VF.
    pub fn physfn(&self, bdf: &str) -> Option<String> {
        self.link_name(&self.device_dir(bdf).join("physfn"))
    }

    pub fn module_param(&self, module: &str, param: &str) -> io::Result<String> {
        read_trimmed(&self.sys(&format!("module/{module}/parameters/{param}")))
    }

    /// `/dev/vfio/devices` (the VFIO cdev interface, Linux 6.6+ with IOMMUFD).
    pub fn has_vfio_cdev(&self) -> bool {
        self.root.join("dev/vfio/devices").is_dir()
    }

    /// The VFIO cdev of a function (`/dev/vfio/devices/vfioN`), if it has one.
    pub fn vfio_cdev(&self, bdf: &str) -> Option<PathBuf> {
        let dir = fs::read_dir(self.device_dir(bdf).join("vfio-dev")).ok()?;
        let name = dir.flatten().next()?.file_name();
        Some(self.root.join("dev/vfio/devices").join(name))
    }

    /// Where a [`Write`] goes.
    pub fn path_of(&self, w: &SysWrite) -> PathBuf {
        match w {
            SysWrite::DriverOverride { bdf, .. } => self.device_dir(bdf).join("driver_override"),
            SysWrite::Unbind { driver, .. } => {
                self.sys(&format!("bus/pci/drivers/{driver}/unbind"))
            }
            SysWrite::Bind { driver, .. } => self.sys(&format!("bus/pci/drivers/{driver}/bind")),
            SysWrite::DriversProbe { .. } => self.sys("bus/pci/drivers_probe"),
            SysWrite::SriovNumvfs { bdf, .. } => self.device_dir(bdf).join("sriov_numvfs"),
            SysWrite::SriovAutoprobe { bdf, .. } => {
                self.device_dir(bdf).join("sriov_drivers_autoprobe")
            }
            SysWrite::Reset { bdf } => self.device_dir(bdf).join("reset"),
            SysWrite::ModuleParam { module, param, .. } => {
                self.sys(&format!("module/{module}/parameters/{param}"))
            }
        }
    }

    /// Performs one raw write. The only function in the crate that writes to
    /// sysfs; callers go through [`crate::host::Host::apply`]. A failure
    /// carries the errno and the kernel's message about the device.
    pub fn write(&self, w: &SysWrite) -> Result<(), OsError> {
        let path = self.path_of(w);
        let value = w.value();
        let mut watch = kmsg::Watch::start();
        // O_TRUNC as `echo >` does: sysfs ignores it, a fake tree needs it.
        let res = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(value.as_bytes()));
        res.map_err(|e| OsError {
            op: format!("write {:?} to", value.trim_end()),
            target: path.display().to_string(),
            errno: Errno::of(&e),
            kmsg: watch.lines_for(w.bdf().unwrap_or("")),
        })
    }
}

/// One change to sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysWrite {
    /// `None` clears it.
    DriverOverride {
        bdf: String,
        value: Option<String>,
    },
    Unbind {
        bdf: String,
        driver: String,
    },
    Bind {
        bdf: String,
        driver: String,
    },
    DriversProbe {
        bdf: String,
    },
    SriovNumvfs {
        bdf: String,
        n: u32,
    },
    SriovAutoprobe {
        bdf: String,
        on: bool,
    },
    /// Function reset (`reset`); nothing to restore.
    Reset {
        bdf: String,
    },
    ModuleParam {
        module: String,
        param: String,
        value: String,
    },
}

impl SysWrite {
    /// The device it changes (none for a module parameter).
    pub fn bdf(&self) -> Option<&str> {
        match self {
            SysWrite::DriverOverride { bdf, .. }
            | SysWrite::Unbind { bdf, .. }
            | SysWrite::Bind { bdf, .. }
            | SysWrite::DriversProbe { bdf }
            | SysWrite::SriovNumvfs { bdf, .. }
            | SysWrite::SriovAutoprobe { bdf, .. }
            | SysWrite::Reset { bdf } => Some(bdf),
            SysWrite::ModuleParam { .. } => None,
        }
    }

    /// The text written.
    pub fn value(&self) -> String {
        match self {
            // A lone newline clears driver_override.
            SysWrite::DriverOverride { value, .. } => {
                format!("{}\n", value.as_deref().unwrap_or(""))
            }
            SysWrite::Unbind { bdf, .. }
            | SysWrite::Bind { bdf, .. }
            | SysWrite::DriversProbe { bdf } => bdf.clone(),
            SysWrite::SriovNumvfs { n, .. } => n.to_string(),
            SysWrite::SriovAutoprobe { on, .. } => u8::from(*on).to_string(),
            SysWrite::Reset { .. } => "1".into(),
            SysWrite::ModuleParam { value, .. } => value.clone(),
        }
    }
}

fn read_trimmed(p: &Path) -> io::Result<String> {
    Ok(fs::read_to_string(p)?.trim().to_owned())
}

fn parse_attr<T: std::str::FromStr>(v: &str) -> io::Result<T> {
    v.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("`{v}` is not a number")))
}
