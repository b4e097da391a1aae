//! Builds patched KVM for a real Debian kernel and checks what the runner
//! relies on: the modules are the patched ones, the kernel would load them,
//! the second build comes from the cache, and a patch that does not apply
//! is named. Skips, saying why, where apt or the toolchain is missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ukci_vhost::initramfs::{modinfo_field, read_module};
use ukci_vhost::kernel::{Kernel, KernelSpec, KernelStore, Refresh};
use ukci_vhost::kvmbuild::{self, KvmBuildError};

fn patches() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../patches/kvm")
}

/// The cached (or freshly fetched) kernel, or why the test cannot run.
fn debian(series: &str) -> Result<Kernel, String> {
    let spec = KernelSpec::parse(&format!("debian:{series}")).unwrap();
    let store = KernelStore::new(&ukci_vhost::cache::user_dir());
    if !store.is_cached(&spec) && Command::new("apt-cache").arg("--version").output().is_err() {
        return Err(format!("{spec} is not cached and apt is not available"));
    }
    store
        .get(&spec, Refresh::IfStale)
        .map_err(|e| format!("{spec}: {e}"))
}

/// Errors that mean this machine cannot build here, not that the build is wrong.
fn cannot_run(e: &KvmBuildError) -> bool {
    matches!(e, KvmBuildError::Apt(_) | KvmBuildError::NeedsRoot { .. })
}

fn vermagic(path: &Path) -> String {
    modinfo_field(&read_module(path).unwrap(), "vermagic").unwrap()
}

#[test]
fn cr_pin_v3_for_debian_6_12_builds_loads_and_is_cached() {
    let kernel = match debian("6.12") {
        Ok(k) => k,
        Err(why) => return eprintln!("skipping: {why}"),
    };
    let cache = ukci_vhost::cache::user_dir();
    let set = patches().join("cr-pin-v3");
    let mut lines = Vec::new();
    let first = match kvmbuild::build(&cache, &kernel, &set, &mut |l| lines.push(l.to_owned())) {
        Ok(b) => b,
        Err(e) if cannot_run(&e) => return eprintln!("skipping: {e}"),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        first.modules.keys().collect::<Vec<_>>(),
        ["kvm", "kvm_amd", "kvm_intel"]
    );
    let stock = ["kvm.ko.xz", "kvm.ko"]
        .iter()
        .map(|f| kernel.modules_dir.join("kernel/arch/x86/kvm").join(f))
        .find(|p| p.is_file())
        .expect("the kernel's own kvm module");
    let magic = vermagic(&stock);
    assert!(
        magic.starts_with(&format!("{} ", kernel.release)),
        "{magic}"
    );
    for path in first.modules.values() {
        assert_eq!(vermagic(path), magic, "{}", path.display());
    }
    // The patched kvm says which ABI it implements.
    let kvm = read_module(&first.modules["kvm"]).unwrap();
    assert!(
        kvm.windows(b"\0cr-pin-v3\0".len())
            .any(|w| w == b"\0cr-pin-v3\0"),
        "kvm.ko is not the cr-pin-v3 build"
    );
    assert!(fs::read_to_string(&first.log).unwrap().contains("make"));
    if !first.cached {
        assert!(lines.iter().any(|l| l.contains("applying")), "{lines:?}");
    }

    let start = Instant::now();
    let again = kvmbuild::build(&cache, &kernel, &set, &mut |_| {}).unwrap();
    assert!(again.cached);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!((&again.key, &again.modules), (&first.key, &first.modules));
}

#[test]
fn a_patch_that_does_not_apply_is_named_with_its_hunk() {
    let kernel = match debian("6.12") {
        Ok(k) => k,
        Err(why) => return eprintln!("skipping: {why}"),
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kvmbuild-broken-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for sub in ["common/6.12", "heki/6.12"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
        for e in fs::read_dir(patches().join(sub)).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), dir.join(sub).join(e.file_name())).unwrap();
        }
    }
    // Change a context line of the hook patch's last hunk.
    let hook = fs::read_dir(dir.join("common/6.12"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "patch"))
        .unwrap();
    let text = fs::read_to_string(&hook).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let last = lines
        .iter()
        .rposition(|l| l.starts_with(" \t"))
        .expect("a context line");
    lines[last] = " \tNOT_IN_LINUX();";
    fs::write(&hook, lines.join("\n") + "\n").unwrap();

    let cache = ukci_vhost::cache::user_dir();
    let err = match kvmbuild::build(&cache, &kernel, &dir.join("heki"), &mut |_| {}) {
        Err(e) if cannot_run(&e) => return eprintln!("skipping: {e}"),
        Err(e) => e,
        Ok(b) => panic!("a broken patch built: {b:?}"),
    };
    let msg = err.to_string();
    assert!(matches!(err, KvmBuildError::Patch { .. }), "{msg}");
    assert!(msg.contains(&hook.display().to_string()), "{msg}");
    assert!(
        msg.contains("FAILED") && msg.contains("patching file arch/x86/kvm/"),
        "{msg}"
    );
    assert!(msg.contains(kernel.version.as_deref().unwrap()), "{msg}");
    fs::remove_dir_all(&dir).unwrap();
}
