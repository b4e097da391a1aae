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

/// The module's contents, decompressed.
pub(super) fn load_module(file: &ModuleFile) -> Result<Vec<u8>, InitramfsError> {
    read_module(&file.path)
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
