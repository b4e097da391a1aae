//! Kernel modules: the index of a module tree, `.modinfo`, and the
//! dependency closure with its load lists.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::{InitramfsError, KvmLoad, ModuleLoad, io_err, normalise};

/// A module file in the kernel's tree.
#[derive(Debug, Clone)]
pub(super) struct ModuleFile {
    pub(super) path: PathBuf,
    pub(super) size: u64,
    pub(super) mtime: u64,
}

/// Module name → file, for every `.ko` / `.ko.xz` / `.ko.zst` / `.ko.gz` under `dir`.
pub(super) fn index_modules(dir: &Path) -> Result<HashMap<String, ModuleFile>, InitramfsError> {
    let mut index = HashMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let ty = entry.file_type().map_err(io_err(&entry.path()))?;
            if ty.is_dir() {
                stack.push(entry.path());
                continue;
            }
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(module_name) else {
                continue;
            };
            let meta = entry.metadata().map_err(io_err(&entry.path()))?;
            index.insert(
                name,
                ModuleFile {
                    path: entry.path(),
                    size: meta.len(),
                    mtime: mtime(&meta),
                },
            );
        }
    }
    Ok(index)
}

/// `vfio-pci.ko.xz` → `vfio_pci`.
fn module_name(file: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    Some(normalise(stem))
}

pub(crate) fn mtime(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Names of the modules built into the kernel, from `modules.builtin`.
pub(super) fn builtin_modules(dir: &Path) -> BTreeSet<String> {
    fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next().and_then(module_name))
        .collect()
}

/// The module's contents, decompressed and made quick to load (see
/// [`quick_to_load`]).
pub(super) fn load_module(file: &ModuleFile) -> Result<Vec<u8>, InitramfsError> {
    read_module(&file.path).map(quick_to_load)
}

/// The trailer of a signed module (`MODULE_SIG_STRING`).
const SIG_MAGIC: &[u8] = b"~Module signature appended~\n";

/// A module as the virtual host loads it: its code and data unchanged, but
/// without the two things that make loading it slow under TCG.
///
/// - Its ftrace call-site table (`__mcount_loc`) is renamed, so the kernel
///   records no ftrace sites for it. For every site `ftrace_module_enable()`
///   (kernel/trace/ftrace.c) calls `test_for_valid_rec()`, a `kallsyms_lookup()`
///   that scans all the module's symbols: for kvm.ko's 1,512 sites and 7,900
///   symbols about 0.6 s under TCG, more than half of loading it. The sites
///   stay the NOPs objtool made of them at build time; only function tracing
///   of the module in the host is lost.
/// - Its appended signature is dropped: the bytes no longer match it, and
///   an unsigned module skips the hash `module_sig_check()` would compute
///   (~0.1 s for kvm.ko). Debian's kernels do not enforce signatures; the
///   first such module taints the host kernel `E` (unsigned module).
///
/// Bytes that are not a 64-bit little-endian ELF are returned as they are.
pub fn quick_to_load(mut module: Vec<u8>) -> Vec<u8> {
    // struct module_signature (12 bytes, sig_len big-endian last) precedes
    // the magic; the signature precedes that.
    let info = module
        .len()
        .checked_sub(SIG_MAGIC.len() + 12)
        .filter(|_| module.ends_with(SIG_MAGIC));
    let unsigned_end = info.and_then(|info| {
        let sig_len = u32::from_be_bytes(module.get(info + 8..info + 12)?.try_into().ok()?);
        info.checked_sub(usize::try_from(sig_len).ok()?)
    });
    if let Some(end) = unsigned_end {
        module.truncate(end);
    }
    if let Some(at) = section_name_at(&module, b"__mcount_loc") {
        // Same length, so no offset in the file moves.
        module[at..at + 12].copy_from_slice(b"__mcount_off");
    }
    module
}

/// Where the name of the section called `name` starts in the file.
fn section_name_at(elf: &[u8], name: &[u8]) -> Option<usize> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at =
        |o: usize| usize::try_from(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?)).ok();
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = u64_at(0x28)?;
    let (shentsize, shnum, shstrndx) = (
        usize::from(u16_at(0x3a)?),
        usize::from(u16_at(0x3c)?),
        usize::from(u16_at(0x3e)?),
    );
    let header = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    let strtab = u64_at(header(shstrndx)? + 0x18)?;
    (0..shnum).find_map(|i| {
        let at = strtab.checked_add(usize::try_from(u32_at(header(i)?)?).ok()?)?;
        let rest = elf.get(at..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        (&rest[..end] == name).then_some(at)
    })
}

/// A module file's contents (`.ko` or `.ko.xz`), decompressed.
pub fn read_module(path: &Path) -> Result<Vec<u8>, InitramfsError> {
    let raw = fs::read(path).map_err(io_err(path))?;
    let name = path.to_string_lossy();
    if name.ends_with(".xz") {
        let mut out = Vec::with_capacity(raw.len() * 4);
        lzma_rs::xz_decompress(&mut io::BufReader::new(&raw[..]), &mut out).map_err(|e| {
            InitramfsError::Bad {
                path: path.to_owned(),
                what: format!("xz decompression failed: {e}"),
            }
        })?;
        Ok(out)
    } else if name.ends_with(".ko") {
        Ok(raw)
    } else {
        Err(InitramfsError::Bad {
            path: path.to_owned(),
            what: "only .ko and .ko.xz modules are supported".into(),
        })
    }
}

/// The value of `key` in a module's `.modinfo` (`vermagic`, `depends`),
/// as `modinfo -F key` prints it.
pub fn modinfo_field(module: &[u8], key: &str) -> Option<String> {
    let needle = [&b"\0"[..], key.as_bytes(), b"="].concat();
    let start = module.windows(needle.len()).position(|w| w == needle)?;
    let value = &module[start + needle.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    Some(String::from_utf8_lossy(&value[..end]).into_owned())
}

/// The `depends=` list of a module's `.modinfo` (names normalised).
pub fn modinfo_depends(module: &[u8]) -> Vec<String> {
    modinfo_field(module, "depends")
        .unwrap_or_default()
        .split(',')
        .filter(|d| !d.is_empty())
        .map(normalise)
        .collect()
}

/// What a module name resolves to while closing over dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A loadable module with these dependencies.
    Module(Vec<String>),
    /// Built into the kernel: nothing to load.
    Builtin,
    /// Neither.
    Missing,
}

/// The load order for `wanted`: every needed module once, each after all it
/// depends on. `lookup` tells what a name is.
pub fn dependency_closure(
    wanted: &[String],
    mut lookup: impl FnMut(&str) -> Result<Lookup, InitramfsError>,
    modules_dir: &Path,
) -> Result<Vec<String>, InitramfsError> {
    fn visit(
        name: &str,
        needed_by: &str,
        lookup: &mut dyn FnMut(&str) -> Result<Lookup, InitramfsError>,
        modules_dir: &Path,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), InitramfsError> {
        if order.iter().any(|o| o == name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(InitramfsError::Cycle(format!(
                "{} -> {name}",
                path.join(" -> ")
            )));
        }
        match lookup(name)? {
            Lookup::Builtin => Ok(()),
            Lookup::Missing => Err(InitramfsError::MissingModule {
                module: name.to_owned(),
                dir: modules_dir.to_owned(),
                needed_by: needed_by.to_owned(),
            }),
            Lookup::Module(deps) => {
                path.push(name.to_owned());
                for dep in &deps {
                    visit(dep, name, lookup, modules_dir, path, order)?;
                }
                path.pop();
                order.push(name.to_owned());
                Ok(())
            }
        }
    }
    let mut order = Vec::new();
    for w in wanted {
        visit(
            &normalise(w),
            "the module list",
            &mut lookup,
            modules_dir,
            &mut Vec::new(),
            &mut order,
        )?;
    }
    Ok(order)
}

/// The lines of [`KVM_LIST_PATH`]: `flag name [params...]` in load order,
/// the flag of a vendor module its CPU feature and `-` for what it needs;
/// a vendor module the kernel does not have as `absent name`.
pub fn kvm_list(
    load_order: &[String],
    present: &[&KvmLoad],
    absent: &[&KvmLoad],
    kvm_params: &[String],
) -> String {
    let mut out = String::new();
    for name in load_order {
        let vendor = present.iter().find(|k| &k.module.name == name);
        let load = match vendor {
            Some(k) => k.module.clone(),
            None if name == "kvm" => ModuleLoad {
                name: name.clone(),
                params: kvm_params.to_vec(),
            },
            None => ModuleLoad::new(name),
        };
        out.push_str(vendor.map_or("-", |k| k.cpu_flag));
        out.push(' ');
        out.push_str(&module_list(std::slice::from_ref(name), &[load]));
    }
    for k in absent {
        out.push_str(&format!("absent {}\n", k.module.name));
    }
    out
}

/// The lines of `/etc/ukci/modules`: `name [params...]` in load order.
pub fn module_list(load_order: &[String], requested: &[ModuleLoad]) -> String {
    let mut out = String::new();
    for name in load_order {
        out.push_str(name);
        if let Some(req) = requested.iter().find(|r| &r.name == name) {
            for p in &req.params {
                out.push(' ');
                out.push_str(p);
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::kvm_modules;
    use super::*;

    #[test]
    fn the_kvm_list_gates_vendor_modules_on_their_cpu_flag() {
        let kvm = kvm_modules();
        let order: Vec<String> = ["kvm", "ccp", "kvm_amd"].map(String::from).to_vec();
        let list = kvm_list(&order, &[&kvm[0]], &[&kvm[1]], &["crpin_flaw=none".into()]);
        assert_eq!(
            list,
            "- kvm crpin_flaw=none\n- ccp\nsvm kvm_amd\nabsent kvm_intel\n"
        );
    }

    #[test]
    fn depends_come_from_modinfo() {
        let module =
            b"\x7fELF...\0license=GPL\0depends=vfio,irqbypass,vfio-pci-core\0retpoline=Y\0";
        assert_eq!(
            modinfo_depends(module),
            ["vfio", "irqbypass", "vfio_pci_core"]
        );
        assert!(modinfo_depends(b"\0license=GPL\0depends=\0name=x\0").is_empty());
        assert!(modinfo_depends(b"no modinfo").is_empty());
        let info = b"\0license=GPL\0vermagic=7.3.4+deb13-amd64 SMP preempt mod_unload \0name=kvm\0";
        assert_eq!(
            modinfo_field(info, "vermagic").as_deref(),
            Some("7.3.4+deb13-amd64 SMP preempt mod_unload ")
        );
        assert_eq!(modinfo_field(info, "magic"), None, "whole keys only");
    }

    /// A relocatable ELF64 with sections `""`, `.text`, `__mcount_loc` and
    /// `.shstrtab`, its section headers at the end.
    fn tiny_module() -> Vec<u8> {
        let names = b"\0.text\0__mcount_loc\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let strtab_at = elf.len() as u64;
        elf.extend_from_slice(names);
        let shoff = elf.len() as u64;
        elf[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&3u16.to_le_bytes());
        for name in [0u32, 1, 7, 20] {
            let mut sh = [0u8; 64];
            sh[..4].copy_from_slice(&name.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&strtab_at.to_le_bytes());
            elf.extend_from_slice(&sh);
        }
        elf
    }

    #[test]
    fn modules_lose_their_ftrace_sites_and_signature_only() {
        let plain = tiny_module();
        let mut signed = plain.clone();
        signed.extend_from_slice(&[0xaa; 300]);
        signed.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        signed.extend_from_slice(&300u32.to_be_bytes());
        signed.extend_from_slice(SIG_MAGIC);
        for module in [plain.clone(), signed] {
            let quick = quick_to_load(module);
            assert_eq!(quick.len(), plain.len(), "the signature is gone");
            assert_eq!(section_name_at(&quick, b"__mcount_loc"), None);
            let at = section_name_at(&quick, b"__mcount_off").expect("renamed in place");
            assert_eq!(at, 64 + 7);
            let mut back = quick.clone();
            back[at..at + 12].copy_from_slice(b"__mcount_loc");
            assert_eq!(back, plain, "nothing else changed");
        }
        assert_eq!(quick_to_load(b"not an ELF".to_vec()), b"not an ELF");
        assert_eq!(
            quick_to_load(SIG_MAGIC.to_vec()),
            SIG_MAGIC,
            "too short to be signed"
        );
    }

    fn fake(deps: &[(&str, &[&str])]) -> impl FnMut(&str) -> Result<Lookup, InitramfsError> {
        let map: HashMap<String, Vec<String>> = deps
            .iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect();
        move |name| {
            Ok(match map.get(name) {
                Some(d) => Lookup::Module(d.clone()),
                None if name == "virtio_pci" => Lookup::Builtin,
                None => Lookup::Missing,
            })
        }
    }

    #[test]
    fn closure_orders_dependencies_first_once_and_skips_builtins() {
        let lookup = fake(&[
            ("vfio_pci", &["vfio", "vfio_pci_core"]),
            ("vfio_pci_core", &["vfio", "irqbypass"]),
            ("vfio", &["iommufd"]),
            ("iommufd", &[]),
            ("irqbypass", &[]),
            ("vfio_iommu_type1", &["vfio"]),
            ("9p", &["9pnet", "netfs"]),
            ("9pnet", &[]),
            ("netfs", &[]),
        ]);
        let wanted: Vec<String> = ["virtio_pci", "9p", "vfio-pci", "vfio_iommu_type1"]
            .map(String::from)
            .to_vec();
        let order = dependency_closure(&wanted, lookup, Path::new("/m")).unwrap();
        assert_eq!(
            order,
            [
                "9pnet",
                "netfs",
                "9p",
                "iommufd",
                "vfio",
                "irqbypass",
                "vfio_pci_core",
                "vfio_pci",
                "vfio_iommu_type1"
            ]
        );
    }

    #[test]
    fn closure_names_a_missing_module_and_who_needs_it() {
        let lookup = fake(&[("9p", &["9pnet", "fscache"]), ("9pnet", &[])]);
        let err =
            dependency_closure(&["9p".into()], lookup, Path::new("/lib/modules/x")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`fscache`")
                && msg.contains("needed by 9p")
                && msg.contains("/lib/modules/x"),
            "{msg}"
        );
    }

    #[test]
    fn closure_reports_cycles() {
        let lookup = fake(&[("a", &["b"]), ("b", &["a"])]);
        let err = dependency_closure(&["a".into()], lookup, Path::new("/m")).unwrap_err();
        assert_eq!(err.to_string(), "module dependency cycle: a -> b -> a");
    }

    #[test]
    fn module_list_carries_params_of_requested_modules_only() {
        let req = [ModuleLoad::with_params(
            "vfio-pci",
            &["enable_sriov=1", "disable_idle_d3=1"],
        )];
        let list = module_list(&["vfio".into(), "vfio_pci".into()], &req);
        assert_eq!(list, "vfio\nvfio_pci enable_sriov=1 disable_idle_d3=1\n");
    }
}
