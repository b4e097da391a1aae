//! The image: busybox and its applets, the cache key, and the build.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use ukci_supervise::{self as supervise, End};

use super::cpio::CpioWriter;
use super::modules::{
    Lookup, ModuleFile, builtin_modules, dependency_closure, index_modules, kvm_list, load_module,
    modinfo_depends, module_list, mtime,
};
use super::{
    FORMAT, INIT_SCRIPT, Initramfs, InitramfsError, InitramfsSpec, KVM_LIST_PATH, KvmLoad,
    MODULE_LIST_PATH, io_err,
};
use crate::cache::{self, EntryLock};
use crate::kernel::Kernel;

/// Whether an ELF64 executable asks for a dynamic loader (has a PT_INTERP).
/// Returns `None` when the bytes are not a 64-bit little-endian ELF.
pub fn elf_is_dynamic(elf: &[u8]) -> Option<bool> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    const PT_INTERP: u32 = 3;
    let mut dynamic = false;
    for i in 0..phnum {
        dynamic |= u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP;
    }
    Some(dynamic)
}

/// The symlink target that reaches `bin/busybox` from an applet path.
fn applet_link_target(applet: &str) -> String {
    match applet.rsplit_once('/') {
        Some(("bin", _)) => "busybox".to_owned(),
        Some((dir, _)) => format!("{}bin/busybox", "../".repeat(dir.split('/').count())),
        None => "bin/busybox".to_owned(),
    }
}

/// The applet paths of a busybox (`bin/sh`, `sbin/insmod`, ...), from
/// `busybox --list-full`.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, InitramfsError> {
    let fin = supervise::run(
        busybox.as_os_str(),
        &["--list-full".into()],
        Duration::from_secs(30),
        |_| {},
    );
    if fin.end != End::Exited(0) {
        return Err(InitramfsError::Bad {
            path: busybox.to_owned(),
            what: format!("`--list-full` failed: {:?} {}", fin.end, fin.stderr.trim()),
        });
    }
    Ok(fin
        .stdout
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_owned())
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect())
}

/// Builds the image for `kernel` into `<cache_root>/initramfs/`, or returns
/// the cached one. Runs building the same image at once wait for the first
/// (a lock per image); each writes under its own temporary name and renames
/// it into place, so a reader sees a whole image or none.
pub fn build(
    cache_root: &Path,
    kernel: &Kernel,
    spec: &InitramfsSpec,
) -> Result<Initramfs, InitramfsError> {
    let index = index_modules(&kernel.modules_dir)?;
    let dir = cache_root.join("initramfs");
    let stem = format!("{}-{}", kernel.release, cache_key(kernel, spec, &index)?);
    let image = dir.join(format!("{stem}.cpio"));
    let order_file = dir.join(format!("{stem}.modules"));
    if let Some(cached) = cached(&image, &order_file) {
        return Ok(cached);
    }
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let _lock = EntryLock::acquire(&image).map_err(io_err(&image))?;
    if let Some(cached) = cached(&image, &order_file) {
        return Ok(cached); // another run built it while this one waited
    }

    let busybox = Busybox::read(&spec.busybox)?;
    let modules = Modules::collect(kernel, spec, &index)?;
    let tmp = cache::temp_path(&image);
    if let Err(e) = write_image(&tmp, kernel, &busybox, &modules) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    // The load order first: an image on disk always has its order beside it.
    let placed = cache::write_atomic(&order_file, modules.list.as_bytes())
        .map_err(io_err(&order_file))
        .and_then(|()| fs::rename(&tmp, &image).map_err(io_err(&image)));
    if placed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    placed?;
    Ok(Initramfs {
        path: image,
        load_order: modules.order,
        cached: false,
    })
}

/// The image's cache key: a hash of everything that goes into it — the
/// module tree (each file's size and time), the module set and parameters,
/// the init script, busybox and the replacement modules.
fn cache_key(
    kernel: &Kernel,
    spec: &InitramfsSpec,
    index: &HashMap<String, ModuleFile>,
) -> Result<String, InitramfsError> {
    let bb_meta = fs::metadata(&spec.busybox).map_err(io_err(&spec.busybox))?;
    // The same tree under another spelling of its path is the same tree.
    let modules_dir = fs::canonicalize(&kernel.modules_dir).map_err(io_err(&kernel.modules_dir))?;
    let mut h = cache::Fnv::new();
    h.bytes(FORMAT.as_bytes())
        .bytes(kernel.release.as_bytes())
        .bytes(modules_dir.as_os_str().as_encoded_bytes())
        .bytes(INIT_SCRIPT.as_bytes())
        .bytes(spec.busybox.as_os_str().as_encoded_bytes())
        .bytes(&bb_meta.len().to_le_bytes())
        .bytes(&mtime(&bb_meta).to_le_bytes());
    for m in spec
        .modules
        .iter()
        .chain(spec.kvm.iter().map(|k| &k.module))
    {
        h.bytes(m.name.as_bytes())
            .bytes(m.params.join(" ").as_bytes());
    }
    for k in &spec.kvm {
        h.bytes(k.cpu_flag.as_bytes());
    }
    h.bytes(spec.kvm_params.join(" ").as_bytes());
    for (name, path) in &spec.replacements {
        let meta = fs::metadata(path).map_err(io_err(path))?;
        h.bytes(name.as_bytes())
            .bytes(path.as_os_str().as_encoded_bytes())
            .bytes(&meta.len().to_le_bytes())
            .bytes(&mtime(&meta).to_le_bytes());
    }
    let mut files: Vec<_> = index.iter().collect();
    files.sort_by(|a, b| a.0.cmp(b.0));
    for (name, f) in files {
        h.bytes(name.as_bytes())
            .bytes(&f.size.to_le_bytes())
            .bytes(&f.mtime.to_le_bytes());
    }
    if let Ok(meta) = fs::metadata(kernel.modules_dir.join("modules.builtin")) {
        h.bytes(&meta.len().to_le_bytes())
            .bytes(&mtime(&meta).to_le_bytes());
    }
    Ok(h.hex())
}

/// A static busybox and the applets it offers.
struct Busybox {
    binary: Vec<u8>,
    applets: Vec<String>,
}

impl Busybox {
    fn read(path: &Path) -> Result<Busybox, InitramfsError> {
        let binary = fs::read(path).map_err(io_err(path))?;
        if elf_is_dynamic(&binary) != Some(false) {
            return Err(InitramfsError::Bad {
                path: path.to_owned(),
                what:
                    "not a statically linked x86-64 busybox (install the `busybox-static` package)"
                        .into(),
            });
        }
        let applets = busybox_applets(path)?;
        Ok(Busybox { binary, applets })
    }
}

/// The modules that go into the image: the lane's closure in load order,
/// then KVM's own, their bytes, and the two load lists `/init` reads.
struct Modules {
    order: Vec<String>,
    kvm_order: Vec<String>,
    blobs: HashMap<String, Vec<u8>>,
    list: String,
    kvm_list: String,
}

impl Modules {
    fn collect(
        kernel: &Kernel,
        spec: &InitramfsSpec,
        index: &HashMap<String, ModuleFile>,
    ) -> Result<Modules, InitramfsError> {
        let builtin = builtin_modules(&kernel.modules_dir);
        let mut blobs: HashMap<String, Vec<u8>> = HashMap::new();
        let mut lookup = |name: &str| {
            let file = match spec.replacements.get(name) {
                Some(path) => Some(ModuleFile {
                    path: path.clone(),
                    size: 0,
                    mtime: 0,
                }),
                None => index.get(name).cloned(),
            };
            if let Some(file) = file {
                let data = load_module(&file)?;
                let deps = modinfo_depends(&data);
                blobs.insert(name.to_owned(), data);
                Ok(Lookup::Module(deps))
            } else if builtin.contains(name) {
                Ok(Lookup::Builtin)
            } else {
                Ok(Lookup::Missing)
            }
        };
        let wanted: Vec<String> = spec.modules.iter().map(|m| m.name.clone()).collect();
        let order = dependency_closure(&wanted, &mut lookup, &kernel.modules_dir)?;
        let list = module_list(&order, &spec.modules);
        // KVM a kernel lacks altogether is left out here and said in the log.
        let (kvm_present, kvm_absent): (Vec<&KvmLoad>, Vec<&KvmLoad>) =
            spec.kvm.iter().partition(|k| {
                spec.replacements.contains_key(&k.module.name) || index.contains_key(&k.module.name)
            });
        let kvm_wanted: Vec<String> = kvm_present.iter().map(|k| k.module.name.clone()).collect();
        let kvm_order: Vec<String> =
            dependency_closure(&kvm_wanted, &mut lookup, &kernel.modules_dir)?
                .into_iter()
                .filter(|m| !order.contains(m))
                .collect();
        let kvm_list = kvm_list(&kvm_order, &kvm_present, &kvm_absent, &spec.kvm_params);
        Ok(Modules {
            order,
            kvm_order,
            blobs,
            list,
            kvm_list,
        })
    }
}

/// Writes the whole image to `tmp` and syncs it.
fn write_image(tmp: &Path, kernel: &Kernel, busybox: &Busybox, m: &Modules) -> io::Result<()> {
    let out = io::BufWriter::new(fs::File::create(tmp)?);
    let mut cpio = CpioWriter::new(out);
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "etc",
        "etc/ukci",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "host",
        "results",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(d, 0o755)?;
    }
    cpio.char_dev("dev/console", 0o600, 5, 1)?;
    cpio.char_dev("dev/null", 0o666, 1, 3)?;
    cpio.file("bin/busybox", 0o755, &busybox.binary)?;
    for applet in &busybox.applets {
        cpio.symlink(applet, &applet_link_target(applet))?;
    }
    cpio.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
    for name in m.order.iter().chain(&m.kvm_order) {
        cpio.file(&format!("lib/modules/{name}.ko"), 0o644, &m.blobs[name])?;
    }
    cpio.file(MODULE_LIST_PATH, 0o644, m.list.as_bytes())?;
    cpio.file(KVM_LIST_PATH, 0o644, m.kvm_list.as_bytes())?;
    cpio.file(
        "etc/ukci/release",
        0o644,
        format!("{}\n", kernel.release).as_bytes(),
    )?;
    cpio.finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
}

/// The image at `image` with its load order from `order_file`, when both
/// are there.
fn cached(image: &Path, order_file: &Path) -> Option<Initramfs> {
    let list = fs::read_to_string(order_file).ok()?;
    image.is_file().then(|| Initramfs {
        path: image.to_owned(),
        load_order: list
            .lines()
            .filter_map(|l| l.split(' ').next())
            .map(str::to_owned)
            .collect(),
        cached: true,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::super::ModuleLoad;
    use super::super::{mode, read_cpio_file};
    use super::*;

    #[test]
    fn static_busybox_is_told_from_dynamic_binaries() {
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert_eq!(elf_is_dynamic(&elf), Some(false));
        elf[64 + 56..64 + 60].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        assert_eq!(elf_is_dynamic(&elf), Some(true));
        assert_eq!(elf_is_dynamic(b"#!/bin/sh\n"), None);
    }

    /// A fake kernel: modules tree with plain and xz modules, builtins.
    #[test]
    fn build_writes_a_bootable_layout_and_caches_it() {
        let root = std::env::temp_dir().join(format!("ukci-vhost-initrd-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mods = root.join("lib/modules/6.9.0-fake");
        fs::create_dir_all(mods.join("kernel/fs/9p")).unwrap();
        fs::create_dir_all(mods.join("kernel/net/9p")).unwrap();
        fs::write(mods.join("kernel/fs/9p/9p.ko"), b"\0depends=9pnet,netfs\0").unwrap();
        fs::write(mods.join("kernel/net/9p/9pnet.ko"), b"\0depends=\0").unwrap();
        // netfs as .ko.xz: produced by the system xz, as Debian does.
        let raw = mods.join("kernel/fs/netfs.ko");
        fs::write(&raw, b"\0depends=\0name=netfs\0").unwrap();
        let xz = supervise::run(
            "xz".as_ref(),
            &[
                "--check=crc32".into(),
                "--lzma2=dict=1MiB".into(),
                raw.clone().into(),
            ],
            Duration::from_secs(30),
            |_| {},
        );
        if xz.end != End::Exited(0) {
            eprintln!("skipping the .ko.xz part: no xz on PATH");
            fs::write(&raw, b"\0depends=\0name=netfs\0").unwrap();
        }
        fs::write(
            mods.join("modules.builtin"),
            "kernel/drivers/virtio/virtio_pci.ko\n",
        )
        .unwrap();
        let kernel = Kernel {
            name: "dir:fake".into(),
            package: None,
            version: None,
            release: "6.9.0-fake".into(),
            vmlinuz: root.join("bzImage"),
            modules_dir: mods.clone(),
        };
        let busybox = PathBuf::from("/bin/busybox");
        if elf_is_dynamic(&fs::read(&busybox).unwrap_or_default()) != Some(false) {
            eprintln!("skipping: no static /bin/busybox (install busybox-static)");
            return;
        }
        let spec = InitramfsSpec {
            busybox,
            modules: vec![
                ModuleLoad::new("virtio_pci"),
                ModuleLoad::with_params("9p", &["debug=0"]),
            ],
            kvm: vec![],
            replacements: BTreeMap::new(),
            kvm_params: Vec::new(),
        };
        let images = root.join("images");
        let first = build(&images, &kernel, &spec).unwrap();
        assert!(!first.cached);
        assert_eq!(first.load_order, ["9pnet", "netfs", "9p"]);
        let entries = read_cpio_file(&first.path).unwrap();
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("no {n}"))
        };
        assert_eq!(get("init").mode, mode::FILE | 0o755);
        assert_eq!(get("init").data, INIT_SCRIPT.as_bytes());
        assert_eq!(get("bin/sh").data, b"busybox");
        assert_eq!(get("sbin/insmod").data, b"../bin/busybox");
        assert_eq!(get("usr/bin/[").data, b"../../bin/busybox");
        assert_eq!(
            get("lib/modules/netfs.ko").data,
            b"\0depends=\0name=netfs\0",
            "decompressed"
        );
        assert_eq!(get(MODULE_LIST_PATH).data, b"9pnet\nnetfs\n9p debug=0\n");
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(entries.last().unwrap().name, "TRAILER!!!");

        let again = build(&images, &kernel, &spec).unwrap();
        assert!(again.cached);
        assert_eq!(again.path, first.path);
        assert_eq!(again.load_order, first.load_order);

        // A changed module set is a different image.
        let other = InitramfsSpec {
            modules: vec![ModuleLoad::new("9p")],
            ..spec.clone()
        };
        let third = build(&images, &kernel, &other).unwrap();
        assert!(!third.cached);
        assert_ne!(third.path, first.path);

        let missing = InitramfsSpec {
            modules: vec![ModuleLoad::new("vfio_pci")],
            ..spec
        };
        let msg = build(&images, &kernel, &missing).unwrap_err().to_string();
        assert!(
            msg.contains("`vfio_pci`") && msg.contains("6.9.0-fake"),
            "{msg}"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    /// Suites of one run (threads) and runs on one machine (processes) that
    /// need the same image at once: one builds it, the others wait and take it.
    #[test]
    fn concurrent_builds_of_one_image_share_it() {
        let busybox = PathBuf::from("/bin/busybox");
        if elf_is_dynamic(&fs::read(&busybox).unwrap_or_default()) != Some(false) {
            return eprintln!("skipping: no static /bin/busybox (install busybox-static)");
        }
        let root =
            std::env::temp_dir().join(format!("ukci-vhost-initrd-race-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mods = root.join("lib/modules/6.9.0-race");
        fs::create_dir_all(mods.join("kernel/fs")).unwrap();
        fs::write(mods.join("kernel/fs/9p.ko"), b"\0depends=\0").unwrap();
        let kernel = Kernel {
            name: "dir:race".into(),
            package: None,
            version: None,
            release: "6.9.0-race".into(),
            vmlinuz: root.join("bzImage"),
            modules_dir: mods,
        };
        let spec = InitramfsSpec {
            busybox,
            modules: vec![ModuleLoad::new("9p")],
            kvm: vec![],
            replacements: BTreeMap::new(),
            kvm_params: Vec::new(),
        };
        let cache = root.join("cache");
        let built: Vec<Initramfs> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| build(&cache, &kernel, &spec).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(built.iter().filter(|b| !b.cached).count(), 1, "{built:?}");
        assert!(
            built
                .iter()
                .all(|b| b.path == built[0].path && b.load_order == ["9p"])
        );
        read_cpio_file(&built[0].path).unwrap();
        let mut left: Vec<String> = fs::read_dir(cache.join("initramfs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .map(|n| n.rsplit('.').next().unwrap().to_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["cpio", "lock", "modules"],
            "no temporary file is left"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
