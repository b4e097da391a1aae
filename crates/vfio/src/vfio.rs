//! The VFIO uAPI (`include/uapi/linux/vfio.h`): container, groups, devices,
//! regions, DMA mappings, `VFIO_DEVICE_FEATURE` for the VF token, and the
//! cdev/iommufd bind where the kernel has it. A thin edge: every ioctl is
//! here, each `unsafe` block says why it is sound, and failures carry the
//! errno name plus the kernel's message about the device.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::errno::Errno;
use crate::error::{Error, OsError, Result};
use crate::kmsg;
use crate::sysfs::Sysfs;
use crate::token::{NameToken, Token};

/// Request numbers: `_IO(';', 100 + n)`, i.e. `0x3B00 | (0x64 + n)`.
pub mod req {
    const fn io(n: u64) -> u64 {
        (0x3B << 8) | (100 + n)
    }
    pub const GET_API_VERSION: u64 = io(0);
    pub const CHECK_EXTENSION: u64 = io(1);
    pub const SET_IOMMU: u64 = io(2);
    pub const GROUP_GET_STATUS: u64 = io(3);
    pub const GROUP_SET_CONTAINER: u64 = io(4);
    pub const GROUP_UNSET_CONTAINER: u64 = io(5);
    pub const GROUP_GET_DEVICE_FD: u64 = io(6);
    pub const DEVICE_GET_INFO: u64 = io(7);
    pub const DEVICE_GET_REGION_INFO: u64 = io(8);
    pub const DEVICE_RESET: u64 = io(11);
    pub const IOMMU_MAP_DMA: u64 = io(13);
    pub const IOMMU_UNMAP_DMA: u64 = io(14);
    pub const DEVICE_FEATURE: u64 = io(17);
    pub const DEVICE_BIND_IOMMUFD: u64 = io(18);
}

pub const API_VERSION: i32 = 0;
pub const TYPE1V2_IOMMU: u32 = 3;
pub const GROUP_FLAGS_VIABLE: u32 = 1;
pub const BAR0_REGION: u32 = 0;
pub const CONFIG_REGION: u32 = 7;

/// `VFIO_DEVICE_FEATURE` flags and feature indexes.
pub mod feature {
    pub const MASK: u32 = 0xffff;
    pub const GET: u32 = 1 << 16;
    pub const SET: u32 = 1 << 17;
    pub const PROBE: u32 = 1 << 18;
    pub const PCI_VF_TOKEN: u32 = 0;
}

/// `VFIO_DEVICE_BIND_FLAG_TOKEN` (6.17+).
pub const BIND_FLAG_TOKEN: u32 = 1;

#[repr(C)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct RegionInfoRaw {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

#[repr(C)]
#[derive(Default)]
struct DeviceInfoRaw {
    argsz: u32,
    flags: u32,
    num_regions: u32,
    num_irqs: u32,
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct FeatureToken {
    argsz: u32,
    flags: u32,
    data: [u8; 16],
}

#[repr(C)]
struct BindIommufd {
    argsz: u32,
    flags: u32,
    iommufd: i32,
    out_devid: u32,
    token_uuid_ptr: u64,
}

/// An ioctl whose argument is a pointer to `T` (or, for `T = ()`, none).
///
/// # Safety
/// `arg` must be valid for what the kernel reads and writes for `request`.
unsafe fn ioctl_ptr<T>(fd: RawFd, request: u64, arg: *mut T) -> Result<i32, Errno> {
    // SAFETY: forwarded from the caller's contract.
    let r = unsafe { libc::ioctl(fd, request as _, arg) };
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}

/// An ioctl whose argument is a plain integer.
fn ioctl_val(fd: RawFd, request: u64, arg: libc::c_ulong) -> Result<i32, Errno> {
    // SAFETY: the kernel takes `arg` by value for these requests; no memory is passed.
    let r = unsafe { libc::ioctl(fd, request as _, arg) };
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}

fn os(op: &str, target: &str, errno: Errno) -> OsError {
    OsError {
        op: op.to_owned(),
        target: target.to_owned(),
        errno,
        kmsg: Vec::new(),
    }
}

fn open_rw(path: &Path) -> Result<OwnedFd, OsError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| os("open", &path.display().to_string(), Errno::of(&e)))
}

/// `/dev/vfio/vfio`: one IOMMU address space for the groups attached to it.
pub struct Container {
    fd: OwnedFd,
    iommu_set: bool,
}

impl Container {
    pub fn open() -> Result<Container> {
        let fd = open_rw(Path::new("/dev/vfio/vfio"))?;
        let c = Container {
            fd,
            iommu_set: false,
        };
        let v = ioctl_val(c.raw(), req::GET_API_VERSION, 0)
            .map_err(|e| os("VFIO_GET_API_VERSION", "/dev/vfio/vfio", e))?;
        if v != API_VERSION {
            return Err(Error::Other(format!(
                "/dev/vfio/vfio speaks VFIO API {v}, expected {API_VERSION}"
            )));
        }
        if !c.has_extension(TYPE1V2_IOMMU) {
            return Err(Error::Other(
                "/dev/vfio/vfio lacks the type1v2 IOMMU (load vfio_iommu_type1)".into(),
            ));
        }
        Ok(c)
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn has_extension(&self, ext: u32) -> bool {
        ioctl_val(self.raw(), req::CHECK_EXTENSION, ext.into()).is_ok_and(|r| r > 0)
    }

    /// Maps `buf` at `iova` for device reads and writes.
    pub fn map_dma(&self, buf: &DmaBuffer, iova: u64) -> Result<()> {
        let mut m = DmaMap {
            argsz: size_of::<DmaMap>() as u32,
            flags: 0b11, // READ | WRITE
            vaddr: buf.ptr as u64,
            iova,
            size: buf.len as u64,
        };
        // SAFETY: `m` is a live vfio_iommu_type1_dma_map; the kernel pins the
        // pages of `buf`, which stays mapped until `unmap_dma` (DmaBuffer's
        // owner unmaps before dropping it).
        unsafe { ioctl_ptr(self.raw(), req::IOMMU_MAP_DMA, &mut m) }
            .map_err(|e| os("VFIO_IOMMU_MAP_DMA", &format!("iova {iova:#x}"), e))?;
        Ok(())
    }

    pub fn unmap_dma(&self, iova: u64, size: u64) -> Result<()> {
        let mut m = DmaUnmap {
            argsz: size_of::<DmaUnmap>() as u32,
            flags: 0,
            iova,
            size,
        };
        // SAFETY: `m` is a live vfio_iommu_type1_dma_unmap the kernel reads and updates.
        unsafe { ioctl_ptr(self.raw(), req::IOMMU_UNMAP_DMA, &mut m) }
            .map_err(|e| os("VFIO_IOMMU_UNMAP_DMA", &format!("iova {iova:#x}"), e))?;
        Ok(())
    }
}

/// `/dev/vfio/<group>`.
pub struct Group {
    fd: OwnedFd,
    pub id: u32,
}

impl Group {
    pub fn open(id: u32) -> Result<Group> {
        let fd = open_rw(Path::new(&format!("/dev/vfio/{id}")))?;
        Ok(Group { fd, id })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Every device of the group is bound to a VFIO driver (or none).
    pub fn viable(&self) -> Result<bool> {
        let mut st = GroupStatus {
            argsz: size_of::<GroupStatus>() as u32,
            flags: 0,
        };
        // SAFETY: `st` is a live vfio_group_status the kernel fills in.
        unsafe { ioctl_ptr(self.raw(), req::GROUP_GET_STATUS, &mut st) }
            .map_err(|e| os("VFIO_GROUP_GET_STATUS", &format!("group {}", self.id), e))?;
        Ok(st.flags & GROUP_FLAGS_VIABLE != 0)
    }

    /// Attaches the group to `c`; the first group also selects the type1v2 IOMMU.
    pub fn attach(&self, c: &mut Container) -> Result<()> {
        let mut cfd: i32 = c.raw();
        // SAFETY: the kernel reads one int (the container fd) from `cfd`.
        unsafe { ioctl_ptr(self.raw(), req::GROUP_SET_CONTAINER, &mut cfd) }
            .map_err(|e| os("VFIO_GROUP_SET_CONTAINER", &format!("group {}", self.id), e))?;
        if !c.iommu_set {
            ioctl_val(c.raw(), req::SET_IOMMU, TYPE1V2_IOMMU.into())
                .map_err(|e| os("VFIO_SET_IOMMU type1v2", "/dev/vfio/vfio", e))?;
            c.iommu_set = true;
        }
        Ok(())
    }

    /// `VFIO_GROUP_GET_DEVICE_FD` by name, with or without ` vf_token=`. On
    /// failure the error shows the name with the token redacted, and the
    /// kernel's message about the device.
    pub fn open_device(&self, bdf: &str, token: NameToken<'_>) -> Result<Device, OsError> {
        let name = CString::new(token.device_name(bdf))
            .map_err(|_| os("VFIO_GROUP_GET_DEVICE_FD", &token.shown(bdf), Errno::EINVAL))?;
        let mut watch = kmsg::Watch::start();
        // SAFETY: `name` is a NUL-terminated string that outlives the call; the
        // kernel only reads it. A returned fd is new and owned by us.
        let r = unsafe {
            ioctl_ptr(
                self.raw(),
                req::GROUP_GET_DEVICE_FD,
                name.as_ptr() as *mut u8,
            )
        };
        drop(name);
        match r {
            Ok(fd) => Ok(Device {
                // SAFETY: the ioctl returned a fresh file descriptor nobody else owns.
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                bdf: bdf.to_owned(),
            }),
            Err(errno) => Err(OsError {
                op: "VFIO_GROUP_GET_DEVICE_FD".into(),
                target: format!("\"{}\"", token.shown(bdf)),
                errno,
                kmsg: watch.lines_for(bdf),
            }),
        }
    }
}

/// A region of a device (BAR, config space) as VFIO exposes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub index: u32,
    pub flags: u32,
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

/// An open VFIO device.
pub struct Device {
    fd: OwnedFd,
    bdf: String,
}

impl Device {
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn info(&self) -> Result<DeviceInfo> {
        let mut i = DeviceInfoRaw {
            argsz: size_of::<DeviceInfoRaw>() as u32,
            ..Default::default()
        };
        // SAFETY: `i` is a live vfio_device_info prefix (argsz says how much).
        unsafe { ioctl_ptr(self.raw(), req::DEVICE_GET_INFO, &mut i) }
            .map_err(|e| os("VFIO_DEVICE_GET_INFO", &self.bdf, e))?;
        Ok(DeviceInfo {
            flags: i.flags,
            num_regions: i.num_regions,
            num_irqs: i.num_irqs,
        })
    }

    pub fn region(&self, index: u32) -> Result<Region> {
        let mut r = RegionInfoRaw {
            argsz: size_of::<RegionInfoRaw>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: `r` is a live vfio_region_info the kernel fills in.
        unsafe { ioctl_ptr(self.raw(), req::DEVICE_GET_REGION_INFO, &mut r) }.map_err(|e| {
            os(
                "VFIO_DEVICE_GET_REGION_INFO",
                &format!("{} region {index}", self.bdf),
                e,
            )
        })?;
        Ok(Region {
            index,
            flags: r.flags,
            size: r.size,
            offset: r.offset,
        })
    }

    fn bounds(&self, r: &Region, off: u64, len: usize) -> Result<u64> {
        if off + len as u64 > r.size {
            return Err(Error::Other(format!(
                "{} region {}: access {off:#x}+{len} beyond its size {:#x}",
                self.bdf, r.index, r.size
            )));
        }
        Ok(r.offset + off)
    }

    /// Reads `buf.len()` bytes at `off` of a region (one access of that width).
    pub fn read_at(&self, r: &Region, off: u64, buf: &mut [u8]) -> Result<()> {
        let pos = self.bounds(r, off, buf.len())?;
        // SAFETY: `buf` is a valid writable buffer of the given length.
        let n = unsafe { libc::pread(self.raw(), buf.as_mut_ptr().cast(), buf.len(), pos as i64) };
        if n != buf.len() as isize {
            return Err(os(
                "pread",
                &format!("{} region {} @{off:#x}", self.bdf, r.index),
                Errno::last(),
            )
            .into());
        }
        Ok(())
    }

    pub fn write_at(&self, r: &Region, off: u64, buf: &[u8]) -> Result<()> {
        let pos = self.bounds(r, off, buf.len())?;
        // SAFETY: `buf` is a valid readable buffer of the given length.
        let n = unsafe { libc::pwrite(self.raw(), buf.as_ptr().cast(), buf.len(), pos as i64) };
        if n != buf.len() as isize {
            return Err(os(
                "pwrite",
                &format!("{} region {} @{off:#x}", self.bdf, r.index),
                Errno::last(),
            )
            .into());
        }
        Ok(())
    }

    pub fn read32(&self, r: &Region, off: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_at(r, off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn write32(&self, r: &Region, off: u64, v: u32) -> Result<()> {
        self.write_at(r, off, &v.to_le_bytes())
    }

    pub fn read16(&self, r: &Region, off: u64) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read_at(r, off, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub fn write16(&self, r: &Region, off: u64, v: u16) -> Result<()> {
        self.write_at(r, off, &v.to_le_bytes())
    }

    /// Sets memory space and bus master in the command register.
    pub fn enable_bus_master(&self) -> Result<()> {
        let cfg = self.region(CONFIG_REGION)?;
        let cmd = self.read16(&cfg, 4)?;
        self.write16(&cfg, 4, cmd | 0x6)
    }

    /// `VFIO_DEVICE_FEATURE` for `PCI_VF_TOKEN` with raw `flags` (feature
    /// index included) and `argsz` (24 for a full token payload). Rule checks
    /// use odd values on purpose.
    pub fn vf_token_feature(
        &self,
        flags: u32,
        argsz: u32,
        token: Option<&Token>,
    ) -> Result<(), OsError> {
        let mut f = FeatureToken {
            argsz,
            flags,
            data: token.map_or([0; 16], |t| *t.bytes()),
        };
        let r = {
            // SAFETY: `f` is 24 bytes; the kernel reads at most `argsz` of them and
            // the checks never pass an argsz above 24 with SET or GET.
            let r = unsafe { ioctl_ptr(self.raw(), req::DEVICE_FEATURE, &mut f) };
            // SAFETY: `f.data` is a live local; a volatile store so the copy
            // of the secret is wiped even though nothing reads it again.
            unsafe { std::ptr::write_volatile(&mut f.data, [0; 16]) };
            r
        };
        r.map(|_| ()).map_err(|e| {
            os(
                &format!("VFIO_DEVICE_FEATURE flags={flags:#x} argsz={argsz}"),
                &self.bdf,
                e,
            )
        })
    }

    /// Whether the device supports setting a VF token (an SR-IOV PF on vfio-pci).
    pub fn probe_vf_token(&self) -> Result<(), OsError> {
        self.vf_token_feature(
            feature::PROBE | feature::SET | feature::PCI_VF_TOKEN,
            24,
            None,
        )
    }

    /// Replaces the PF's VF token.
    pub fn set_vf_token(&self, token: &Token) -> Result<(), OsError> {
        self.vf_token_feature(feature::SET | feature::PCI_VF_TOKEN, 24, Some(token))
    }

    /// `VFIO_DEVICE_RESET` (function-level reset where the device has one).
    pub fn reset(&self) -> Result<()> {
        ioctl_val(self.raw(), req::DEVICE_RESET, 0)
            .map_err(|e| os("VFIO_DEVICE_RESET", &self.bdf, e))?;
        Ok(())
    }
}

/// Page-aligned anonymous memory for device DMA. Accessed only through
/// volatile reads and writes, since the device changes it behind our back.
pub struct DmaBuffer {
    ptr: *mut u8,
    len: usize,
}

impl DmaBuffer {
    /// `len` bytes (rounded up to whole pages), zeroed.
    pub fn new(len: usize) -> Result<DmaBuffer> {
        let len = len.div_ceil(4096) * 4096;
        // SAFETY: an anonymous private mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os("mmap", "DMA buffer", Errno::last()).into());
        }
        Ok(DmaBuffer { ptr: p.cast(), len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: usize, n: usize) {
        assert!(
            off + n <= self.len,
            "DMA buffer access {off}+{n} beyond {}",
            self.len
        );
    }

    pub fn write(&self, off: usize, data: &[u8]) {
        self.check(off, data.len());
        for (i, b) in data.iter().enumerate() {
            // SAFETY: in bounds (checked above) of our live mapping.
            unsafe { self.ptr.add(off + i).write_volatile(*b) };
        }
    }

    pub fn read(&self, off: usize, out: &mut [u8]) {
        self.check(off, out.len());
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: in bounds (checked above) of our live mapping.
            *b = unsafe { self.ptr.add(off + i).read_volatile() };
        }
    }

    pub fn read_u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn fill(&self, off: usize, n: usize, v: u8) {
        self.check(off, n);
        for i in 0..n {
            // SAFETY: in bounds (checked above) of our live mapping.
            unsafe { self.ptr.add(off + i).write_volatile(v) };
        }
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; nothing borrows it
        // any more (the owner unmapped it from the IOMMU first).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A container plus the groups attached to it, opened on demand per device.
pub struct Vfio {
    sys: Sysfs,
    pub container: Container,
    groups: BTreeMap<u32, Group>,
}

impl Vfio {
    pub fn new(sys: &Sysfs) -> Result<Vfio> {
        Ok(Vfio {
            sys: sys.clone(),
            container: Container::open()?,
            groups: BTreeMap::new(),
        })
    }

    /// The device's group, opened and attached if it is not yet.
    pub fn group_of(&mut self, bdf: &str) -> Result<&Group> {
        let id = self
            .sys
            .iommu_group(bdf)
            .map_err(|e| Error::Other(format!("{bdf}: {e}")))?;
        if !self.groups.contains_key(&id) {
            let g = Group::open(id)?;
            if !g.viable()? {
                return Err(Error::Other(format!(
                    "IOMMU group {id} of {bdf} is not viable: another device in it is bound to a non-VFIO driver"
                )));
            }
            g.attach(&mut self.container)?;
            self.groups.insert(id, g);
        }
        Ok(&self.groups[&id])
    }

    /// Opens a device through its group (see [`Group::open_device`]).
    pub fn open_device(&mut self, bdf: &str, token: NameToken<'_>) -> Result<Device> {
        Ok(self.group_of(bdf)?.open_device(bdf, token)?)
    }

    /// Closes the group of `bdf` (before its VF disappears, for example).
    pub fn close_group_of(&mut self, bdf: &str) {
        if let Ok(id) = self.sys.iommu_group(bdf)
            && let Some(g) = self.groups.remove(&id)
        {
            // Detach explicitly; the container keeps the other groups' mappings.
            let _ = ioctl_val(g.raw(), req::GROUP_UNSET_CONTAINER, 0);
        }
    }
}

/// The cdev path (Linux 6.6+ with IOMMUFD): binds `/dev/vfio/devices/vfioN`
/// to a fresh `/dev/iommu` context, with the token (6.17+ ABI, argsz 24 and
/// `BIND_FLAG_TOKEN`) or without it (argsz 16, as 6.6–6.16 require). Returns
/// the device id; the fds are closed again (the bind is only probed).
pub fn cdev_bind(cdev: &Path, token: Option<&Token>) -> Result<u32, OsError> {
    let dev = open_rw(cdev)?;
    let iommu = open_rw(Path::new("/dev/iommu"))?;
    let bdf = cdev.display().to_string();
    let bytes = token.map(|t| *t.bytes());
    let mut b = BindIommufd {
        argsz: if token.is_some() { 24 } else { 16 },
        flags: if token.is_some() { BIND_FLAG_TOKEN } else { 0 },
        iommufd: iommu.as_raw_fd(),
        out_devid: 0,
        token_uuid_ptr: bytes.as_ref().map_or(0, |b| b.as_ptr() as u64),
    };
    // SAFETY: `b` is a live vfio_device_bind_iommufd; `token_uuid_ptr` points at
    // 16 bytes that outlive the call (or is 0 with argsz 16, where it is unread).
    let r = unsafe { ioctl_ptr(dev.as_raw_fd(), req::DEVICE_BIND_IOMMUFD, &mut b) };
    r.map(|_| b.out_devid)
        .map_err(|e| os("VFIO_DEVICE_BIND_IOMMUFD", &bdf, e))
}
