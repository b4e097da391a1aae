//! The plan: which test runs where and how, or is skipped and why —
//! decided before anything executes (`cargo xtask list` prints it).

use crate::envmatch::{Environment, VirtualHost};
use crate::host::{AccelChoice, HostFacts};
use crate::manifest::{AccelRequest, DeviceKind, ExpectedOutcome, MachineType, Manifest};
use crate::qemu::{self, VmConfig, VmDevice};
use crate::rundir;
use crate::units::{ByteSize, glob};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ukci_kut::cfg::CfgTest;
use ukci_protocol::catalogue;
use ukci_vhost::accel::Accel;
use ukci_vhost::boot::Topology;
use ukci_vhost::kernel::Kernel;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MEMORY: ByteSize = ByteSize::mib(128);

#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Glob (or substring) over `suite.test`.
    pub filter: Option<String>,
    /// Overrides every manifest's accelerator.
    pub accel: Option<AccelRequest>,
    /// `--kernel`: replaces the kernel list of every virtual suite.
    pub kernels: Vec<String>,
    /// The kernels virtual suites boot, resolved before planning.
    pub resolved: BTreeMap<String, Kernel>,
    /// Planning inside a virtual host (the agent): virtual suites run here.
    pub agent: bool,
}

impl PlanOptions {
    /// The kernels a virtual suite boots in this run.
    pub fn kernels_for(&self, m: &Manifest) -> Vec<String> {
        if self.kernels.is_empty() {
            m.kernels()
        } else {
            self.kernels.clone()
        }
    }
}

/// One boot of a virtual host; the tests that share it run inside it.
#[derive(Clone, Debug)]
pub struct VirtualBoot {
    pub suite: String,
    pub manifest: PathBuf,
    pub kernel: Kernel,
    pub topology: Topology,
    pub timeout: Duration,
    /// `--accel`, which the agent applies to every test as this run does.
    pub accel: Option<AccelRequest>,
    /// The KVM this boot loads, where the lane declares variants.
    pub kvm: Option<KvmVariant>,
}

impl PartialEq for VirtualBoot {
    fn eq(&self, o: &Self) -> bool {
        self.suite == o.suite
            && self.kernel.name == o.kernel.name
            && self.kvm.as_ref().map(|k| &k.name) == o.kvm.as_ref().map(|k| &k.name)
    }
}

impl VirtualBoot {
    /// The kernel, and the KVM variant where the lane declares variants:
    /// `debian:6.12` or `debian:6.12, cr-pin-v3`.
    pub fn label(&self) -> String {
        match &self.kvm {
            Some(k) => format!("{}, {}", self.kernel.name, k.name),
            None => self.kernel.name.clone(),
        }
    }
}

/// One KVM of a lane (`[lane] kvm = [...]`), resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvmVariant {
    pub name: String,
    /// The patch set kvm.ko and kvm-amd.ko are built from; `None`: the
    /// kernel's own modules.
    pub patches: Option<PathBuf>,
    /// `key=value` parameters of the `kvm` module.
    pub params: Vec<String>,
}

fn kvm_variants(m: &Manifest) -> Vec<Option<KvmVariant>> {
    let declared: Vec<Option<KvmVariant>> = m
        .lane
        .iter()
        .flat_map(|l| &l.kvm)
        .map(|v| {
            let v = v.get_ref();
            Some(KvmVariant {
                name: v.name.get_ref().clone(),
                patches: v.patches_from(&m.path),
                params: v
                    .params
                    .iter()
                    .map(|(k, val)| format!("{}={}", k.get_ref(), val.get_ref()))
                    .collect(),
            })
        })
        .collect();
    if declared.is_empty() {
        vec![None]
    } else {
        declared
    }
}

/// A virtual host boot, all of its tests included, gets this long by default.
pub const DEFAULT_LANE_TIMEOUT: Duration = Duration::from_secs(600);
/// What the virtual host emulates.
pub const IOMMU: &str = "intel-iommu,intremap=on,caching-mode=on";
/// What the virtual host runs under, so what its KVM runs on.
pub const VHOST_ACCEL: Accel = Accel::Tcg;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Run,
    Skip(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedExpect {
    pub result: String,
    pub known_bug: bool,
    pub reason: String,
}

/// A scratch disk image the executor creates before the VM starts and
/// removes after it stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScratchImage {
    pub path: PathBuf,
    pub size: ByteSize,
}

/// What a test runs, and so how the executor runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestKind {
    /// Guest checks in a VM.
    Guest,
    /// Guest checks in a VM given a VF of the host's SR-IOV PF, which the
    /// executor brings online for exactly as long as the VM runs.
    GuestWithVf,
    /// Host checks, run in the runner itself, not in a VM.
    HostChecks,
    /// A kvm-unit-tests test, run as the tree's `x86/run` runs it.
    KvmUnitTest(Box<KutRun>),
}

impl TestKind {
    /// Whether the test uses the host's PF (at most one such test at a time).
    pub fn uses_pf(&self) -> bool {
        matches!(self, TestKind::GuestWithVf | TestKind::HostChecks)
    }
}

#[derive(Clone, Debug)]
pub struct PlannedTest {
    pub suite: String,
    pub test: String,
    pub manifest: PathBuf,
    pub checks: Vec<String>,
    pub vm: VmConfig,
    pub timeout: Duration,
    pub env: Environment,
    pub decision: Decision,
    pub expects: Vec<PlannedExpect>,
    pub scratch: Vec<ScratchImage>,
    pub kind: TestKind,
    /// Set for a test of a virtual lane: the boot it runs in.
    pub boot: Option<VirtualBoot>,
}

/// One kvm-unit-tests test's run, as planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KutRun {
    pub dir: PathBuf,
    pub test_dir: PathBuf,
    pub test: CfgTest,
    /// The environment file's path (created for the run, then removed).
    pub env_file: PathBuf,
    /// `QEMU emulator version X.Y.Z`, `uname -r`: for the environment file.
    pub qemu_version: String,
    pub host_kernel: String,
}

impl PlannedTest {
    /// Where in `reports/<run>/logs/` the test's serial log goes:
    /// `<suite>@<env>/<test>.log`, one folder per suite and environment, so
    /// the same test run in several environments (a lane's kernels, its KVM
    /// variants) keeps every log.
    pub fn log_path(&self) -> PathBuf {
        Path::new(&rundir::env_dir_name(&self.suite, &self.env.label()))
            .join(format!("{}.log", self.test))
    }

    /// `suite.test`, the JUnit classname.
    pub fn id(&self) -> String {
        format!("{}.{}", self.suite, self.test)
    }

    /// Its key in the durations history: the test in its environment.
    pub fn history_key(&self) -> String {
        format!("{}@{}", self.id(), self.env.label())
    }
}

/// Whether the test `id` is selected by `--filter`: a glob with `*` or `?`
/// matches the whole id, a filter that is some test's whole id (`exact`)
/// that test alone, any other filter every id containing it.
fn selected(filter: &Option<String>, id: &str, exact: bool) -> bool {
    match filter {
        None => true,
        Some(f) if exact => f == id,
        Some(f) if f.contains(['*', '?']) => glob(f, id),
        Some(f) => id.contains(f.as_str()),
    }
}

/// What planning a test needs besides the manifest and the test.
struct Inputs<'a> {
    host: &'a HostFacts,
    auto: &'a AccelChoice,
    guest: &'a Path,
    scratch_dir: &'a Path,
    opts: &'a PlanOptions,
}

pub fn plan(
    manifests: &[Manifest],
    host: &HostFacts,
    auto: &AccelChoice,
    guest: &Path,
    scratch_dir: &Path,
    opts: &PlanOptions,
) -> Vec<PlannedTest> {
    let inputs = Inputs {
        host,
        auto,
        guest,
        scratch_dir,
        opts,
    };
    let mut out = Vec::new();
    let exact = opts.filter.as_ref().is_some_and(|f| {
        manifests.iter().any(|m| {
            m.tests
                .iter()
                .any(|t| *f == format!("{}.{}", m.suite_name(), t.name.get_ref()))
        })
    });
    for m in manifests {
        for boot in &virtual_boots(m, opts) {
            for t in &m.tests {
                let id = format!("{}.{}", m.suite_name(), t.name.get_ref());
                if selected(&opts.filter, &id, exact) {
                    out.push(plan_test(m, t, boot.as_ref(), &inputs));
                }
            }
        }
    }
    out
}

/// The boots a suite's tests run in: one per (kernel, KVM variant) of a
/// virtual lane; for a suite of this host (or inside the agent), one `None`.
fn virtual_boots(m: &Manifest, opts: &PlanOptions) -> Vec<Option<VirtualBoot>> {
    if !m.is_virtual() || opts.agent {
        return vec![None];
    }
    let lane = m.lane.as_ref();
    opts.kernels_for(m)
        .iter()
        .filter_map(|k| opts.resolved.get(k))
        .flat_map(|k| kvm_variants(m).into_iter().map(move |v| (k, v)))
        .map(|(k, kvm)| {
            Some(VirtualBoot {
                suite: m.suite_name(),
                manifest: m.path.clone(),
                kernel: k.clone(),
                topology: lane
                    .and_then(|l| l.topology.as_ref())
                    .map(|t| t.get_ref().resolve())
                    .unwrap_or_else(|| Topology::with_vfs(2)),
                timeout: lane
                    .and_then(|l| l.timeout)
                    .map_or(DEFAULT_LANE_TIMEOUT, |t| t.0),
                accel: opts.accel,
                kvm,
            })
        })
        .collect()
}

/// One test in one boot (or on this host), every setting resolved.
fn plan_test(
    m: &Manifest,
    t: &crate::manifest::Test,
    boot: Option<&VirtualBoot>,
    inputs: &Inputs<'_>,
) -> PlannedTest {
    let d = &m.defaults;
    let requested = inputs
        .opts
        .accel
        .or(t.accel)
        .or(d.accel)
        .unwrap_or(AccelRequest::Auto);
    let (accel, accel_reason) = accel_for(boot, requested, inputs.auto);
    let env = environment(inputs.host, boot, accel, accel_reason);
    let id = format!("{}.{}", m.suite_name(), t.name.get_ref());
    let (devices, scratch, with_vf) = devices(t, &id, inputs.scratch_dir);
    let checks: Vec<String> = t
        .checks
        .get_ref()
        .iter()
        .map(|c| c.get_ref().clone())
        .collect();
    // A virtual lane's test left to `auto` is planned again by the agent,
    // VM included; here its VM is never started.
    let vm = vm_config(m, t, accel.unwrap_or(Accel::Tcg), inputs, devices, with_vf);
    let env_file = inputs.scratch_dir.join(format!("{id}.env"));
    // Inside a virtual lane's boot the agent decides (its host, its KVM).
    let here = accel.filter(|_| boot.is_none());
    let (kut, kut_skip) = kut_run(m, t.name.get_ref(), here, inputs.host, &env_file);
    let decision = match (decide(m, t, &env, inputs.host), kut_skip) {
        (Decision::Run, Some(why)) => Decision::Skip(why),
        (d, _) => d,
    };
    PlannedTest {
        suite: m.suite_name(),
        test: t.name.get_ref().clone(),
        manifest: m.path.clone(),
        kind: match kut {
            Some(k) => TestKind::KvmUnitTest(Box::new(k)),
            None => test_kind(&checks, with_vf),
        },
        checks,
        vm,
        timeout: t
            .timeout
            .or(d.timeout)
            .map(|t| t.0)
            .unwrap_or(DEFAULT_TIMEOUT),
        decision,
        expects: expectations(m, t, &env),
        env,
        scratch,
        boot: boot.cloned(),
    }
}

/// The run of `test` if the manifest takes it from a kvm-unit-tests cfg, and
/// why the tree's `run` would skip it before starting QEMU under `accel` on
/// this host; with no `accel` that is left to the agent that runs it.
fn kut_run(
    m: &Manifest,
    test: &str,
    accel: Option<Accel>,
    host: &HostFacts,
    env_file: &Path,
) -> (Option<KutRun>, Option<String>) {
    let Some((suite, t)) = m.kut.as_ref().and_then(|k| Some((k, k.find(test)?))) else {
        return (None, None);
    };
    let skip = accel.and_then(|a| suite.skip_before_start(t, a.word()));
    let run = KutRun {
        dir: suite.dir.clone(),
        test_dir: suite.test_dir.clone(),
        test: t.clone(),
        env_file: env_file.to_path_buf(),
        qemu_version: host
            .qemu_version
            .as_ref()
            .map(|v| format!("QEMU emulator version {v}"))
            .unwrap_or_default(),
        host_kernel: host.host_kernel.clone(),
    };
    (Some(run), skip)
}

/// The accelerator a test runs under and why; `None` where the agent of a
/// virtual host decides `auto`.
fn accel_for(
    boot: Option<&VirtualBoot>,
    requested: AccelRequest,
    auto: &AccelChoice,
) -> (Option<Accel>, String) {
    match (boot, requested) {
        // The agent decides, as this host decides `auto`: by a probe boot
        // under the virtual host's own KVM.
        (Some(_), a) => (
            a.fixed(),
            "decided inside the virtual host (a probe boot under its KVM)".to_string(),
        ),
        (None, AccelRequest::Auto) => (Some(auto.accel), auto.reason.clone()),
        (None, a) => (a.fixed(), "requested".to_string()),
    }
}

/// The environment a test runs in: this host's facts, or what is known of
/// a virtual host before it boots.
fn environment(
    host: &HostFacts,
    boot: Option<&VirtualBoot>,
    accel: Option<Accel>,
    accel_reason: String,
) -> Environment {
    let qemu_version = host.qemu_version.clone().unwrap_or_default();
    match boot {
        None => Environment {
            accel,
            accel_reason,
            qemu_version,
            host_kernel: host.host_kernel.clone(),
            kvm_module: host.kvm_module.clone(),
            kvm_host: host.kvm_host,
            kvm_log: host.kvm_log.clone(),
            kvm_variant: host.kvm_variant.clone(),
            kvm_build: host.kvm_build.clone(),
            cpu_model: host.cpu_model.clone(),
            virtual_host: None,
        },
        Some(b) => Environment {
            accel,
            accel_reason,
            qemu_version,
            host_kernel: b.kernel.release.clone(),
            kvm_module: None,
            kvm_host: Some(VHOST_ACCEL),
            kvm_log: String::new(),
            kvm_variant: b.kvm.as_ref().map(|k| k.name.clone()),
            kvm_build: None,
            cpu_model: "QEMU TCG max".into(),
            virtual_host: Some(VirtualHost {
                kernel: b.kernel.name.clone(),
                package: b.kernel.package.clone(),
                version: b.kernel.version.clone(),
                iommu: IOMMU.into(),
            }),
        },
    }
}

/// The test's devices, the scratch images behind its NVMe controllers, and
/// whether it asks for a VF of the host's PF.
fn devices(
    t: &crate::manifest::Test,
    id: &str,
    scratch_dir: &Path,
) -> (Vec<VmDevice>, Vec<ScratchImage>, bool) {
    let mut scratch = Vec::new();
    let mut devices = Vec::new();
    let mut with_vf = false;
    for (i, dev) in t.devices.iter().enumerate() {
        match dev.kind.get_ref() {
            DeviceKind::NvmeVf => with_vf = true,
            DeviceKind::Nvme => {
                let path = scratch_dir.join(format!("{id}.{i}.img"));
                scratch.push(ScratchImage {
                    path: path.clone(),
                    size: dev
                        .size
                        .as_ref()
                        .map(|s| *s.get_ref())
                        .unwrap_or(ByteSize::mib(16)),
                });
                devices.push(VmDevice::Nvme {
                    serial: dev
                        .serial
                        .as_ref()
                        .map(|s| s.get_ref().clone())
                        .unwrap_or_else(|| format!("ukci-{i}")),
                    image: path,
                    sriov_max_vfs: dev
                        .sriov_max_vfs
                        .as_ref()
                        .map(|v| *v.get_ref())
                        .unwrap_or(0),
                });
            }
        }
    }
    (devices, scratch, with_vf)
}

/// The test's VM: its settings, else `[defaults]`, else the built-in ones.
fn vm_config(
    m: &Manifest,
    t: &crate::manifest::Test,
    accel: Accel,
    inputs: &Inputs<'_>,
    devices: Vec<VmDevice>,
    with_vf: bool,
) -> VmConfig {
    let (d, host) = (&m.defaults, inputs.host);
    let machine = t.machine.or(d.machine).unwrap_or(MachineType::Q35);
    VmConfig {
        machine,
        pit: qemu::machine_has_pit(machine, accel, host.kvm_host),
        accel,
        cpu: t
            .cpu
            .as_ref()
            .or(d.cpu.as_ref())
            .map(|c| c.get_ref().clone())
            .unwrap_or_else(|| qemu::default_cpu(accel, host.kvm_module.as_deref())),
        memory: t
            .memory
            .as_ref()
            .or(d.memory.as_ref())
            .map(|m| *m.get_ref())
            .unwrap_or(DEFAULT_MEMORY),
        smp: t
            .smp
            .as_ref()
            .or(d.smp.as_ref())
            .map(|s| *s.get_ref())
            .unwrap_or(1),
        boot: guest_boot(machine, inputs.guest, with_vf || !devices.is_empty()),
        append: guest_cmdline(t),
        devices,
    }
}

/// The guest's command line: `checks=a,b key=value`.
fn guest_cmdline(t: &crate::manifest::Test) -> String {
    let checks: Vec<&str> = t
        .checks
        .get_ref()
        .iter()
        .map(|c| c.get_ref().as_str())
        .collect();
    let args: Vec<(&str, String)> = t
        .args
        .iter()
        .map(|(k, v)| (k.get_ref().as_str(), v.get_ref().to_string()))
        .collect();
    let arg_refs: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut append = String::new();
    let _ = catalogue::write_cmdline(&mut append, &checks, &arg_refs);
    append
}

/// The manifest's expectations that apply to this test in `env`.
fn expectations(m: &Manifest, t: &crate::manifest::Test, env: &Environment) -> Vec<PlannedExpect> {
    m.expectations
        .iter()
        .filter(|e| glob(e.test.get_ref(), t.name.get_ref()) && e.when.check(env).is_ok())
        .map(|e| PlannedExpect {
            result: e.result.get_ref().clone(),
            known_bug: *e.outcome.get_ref() == ExpectedOutcome::Kfail,
            reason: e.reason.get_ref().clone(),
        })
        .collect()
}

/// Host checks only: the runner runs them; else guest checks, with a VF
/// where the test asks for one.
fn test_kind(checks: &[String], with_vf: bool) -> TestKind {
    if checks.iter().all(|c| catalogue::find_host(c).is_some()) {
        TestKind::HostChecks
    } else if with_vf {
        TestKind::GuestWithVf
    } else {
        TestKind::Guest
    }
}

/// How the guest boots on `machine`: on microvm straight from the ROM image
/// beside `guest` when it was built (no firmware, so the boot costs little
/// more than QEMU's own start), elsewhere the PVH ELF through firmware: on
/// q35 and pc SeaBIOS where the guest has `pci_devices` of its own (an NVMe,
/// a VF), whose resources it assigns, else qboot, which starts sooner.
pub fn guest_boot(machine: MachineType, guest: &Path, pci_devices: bool) -> qemu::Boot {
    let rom = qemu::rom_image_for(guest);
    let kernel = guest.to_path_buf();
    match machine {
        MachineType::Microvm if rom.exists() => qemu::Boot::Rom { image: rom },
        MachineType::Microvm => qemu::Boot::Pvh {
            kernel,
            firmware: qemu::Firmware::Machine,
        },
        _ => qemu::Boot::Pvh {
            kernel,
            firmware: if pci_devices {
                qemu::Firmware::Machine
            } else {
                qemu::Firmware::Qboot
            },
        },
    }
}

fn decide(
    m: &Manifest,
    t: &crate::manifest::Test,
    env: &Environment,
    host: &HostFacts,
) -> Decision {
    // The accelerator and the KVM of a virtual host are known only inside
    // it: the agent plans the test again there and decides on those.
    if env.virtual_host.is_some() {
        for req in [&m.requires, &t.requires] {
            if let Err(why) = req.before_boot().check(env) {
                return Decision::Skip(why);
            }
        }
        return Decision::Run;
    }
    if env.accel == Some(Accel::Kvm)
        && env.virtual_host.is_none()
        && let Err(e) = &host.dev_kvm
    {
        return Decision::Skip(format!("needs KVM: {e}"));
    }
    for req in [&m.requires, &t.requires] {
        if let Err(why) = req.check(env) {
            return Decision::Skip(why);
        }
    }
    Decision::Run
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::envmatch::Version;
    use crate::manifest;

    fn host() -> HostFacts {
        HostFacts {
            qemu_version: Some(Version(vec![10, 0, 2])),
            host_kernel: "6.18.44".into(),
            kvm_module: Some("kvm_pvm".into()),
            kvm_host: None,
            kvm_log: String::new(),
            kvm_variant: None,
            kvm_build: None,
            cpu_model: "EPYC".into(),
            dev_kvm: Ok(()),
        }
    }

    fn auto() -> AccelChoice {
        AccelChoice {
            accel: Accel::Tcg,
            reason: "auto: probe timed out".into(),
        }
    }

    pub(crate) fn plan_of(text: &str, opts: PlanOptions) -> Vec<PlannedTest> {
        let m = manifest::parse(Path::new("manifests/s.toml"), text).unwrap();
        plan(
            &[m],
            &host(),
            &auto(),
            Path::new("/g"),
            Path::new("/scratch"),
            &opts,
        )
    }

    const TEXT: &str = r#"
[defaults]
machine = "pc"
timeout = "3s"

[[test]]
name = "a"
checks = ["boot.smoke"]

[[test]]
name = "b"
machine = "microvm"
accel = "kvm"
checks = ["boot.smoke", "fault.selftest"]
requires = { qemu = ">=11.0" }

[[expect]]
test = "a"
result = "boot.smoke: *"
when = { accel = "tcg" }
outcome = "kfail"
reason = "why"
"#;

    #[test]
    fn defaults_auto_and_requirements_resolve() {
        let p = plan_of(TEXT, PlanOptions::default());
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].vm.machine, MachineType::Pc);
        assert_eq!(p[0].vm.accel, Accel::Tcg);
        assert_eq!(p[0].env.accel_reason, "auto: probe timed out");
        assert_eq!(p[0].vm.cpu, "max");
        assert_eq!(p[0].timeout, Duration::from_secs(3));
        assert_eq!(p[0].vm.append, "checks=boot.smoke");
        assert_eq!(p[0].decision, Decision::Run);
        assert_eq!(p[0].expects.len(), 1);
        assert_eq!(p[1].vm.cpu, "host,-arch-capabilities");
        assert_eq!(
            p[1].decision,
            Decision::Skip("needs QEMU >=11.0, this run has 10.0.2".into())
        );
        assert!(p[1].expects.is_empty());
    }

    #[test]
    fn filter_and_accel_override() {
        let p = plan_of(
            TEXT,
            PlanOptions {
                filter: Some("s.b".into()),
                accel: Some(AccelRequest::Tcg),
                ..Default::default()
            },
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].vm.accel, Accel::Tcg);
        assert_eq!(p[0].env.accel_reason, "requested");
    }

    fn kernel(name: &str, release: &str) -> Kernel {
        Kernel {
            name: name.into(),
            package: Some(format!("linux-image-{release}")),
            version: Some("1".into()),
            release: release.into(),
            vmlinuz: "/k/vmlinuz".into(),
            modules_dir: "/k/modules".into(),
        }
    }

    /// The plan of a virtual manifest on debian:6.1 and debian:6.12.
    pub(crate) fn virtual_plan(text: &str) -> Vec<PlannedTest> {
        let m = manifest::parse(Path::new("v.toml"), text).unwrap();
        plan(
            &[m],
            &host(),
            &auto(),
            Path::new("/g"),
            Path::new("/s"),
            &both_kernels(),
        )
    }

    fn both_kernels() -> PlanOptions {
        let mut opts = PlanOptions::default();
        opts.resolved
            .insert("debian:6.1".into(), kernel("debian:6.1", "6.1.0-56-amd64"));
        opts.resolved.insert(
            "debian:6.12".into(),
            kernel("debian:6.12", "6.12.117+deb12-amd64"),
        );
        opts
    }

    #[test]
    fn each_kvm_variant_is_a_boot_and_a_suite_of_its_own() {
        let text = "[lane]\nkind = \"virtual\"\nkernels = [\"debian:6.12\"]\n\
            kvm = [{ name = \"stock\" }, { name = \"flawed\", params = { crpin_flaw = \"guest-unpin\" } }]\n\
            [[test]]\nname = \"a\"\nchecks = [\"cr-pin.detect\"]\n\
            [[expect]]\ntest = \"a\"\nwhen = { kvm_variant = \"flawed\" }\noutcome = \"kfail\"\nreason = \"r\"\n";
        let p = virtual_plan(text);
        assert_eq!(p.len(), 2);
        let labels: Vec<String> = p.iter().map(|t| t.env.label()).collect();
        assert_eq!(labels, ["debian:6.12, stock", "debian:6.12, flawed"]);
        assert_ne!(p[0].boot, p[1].boot, "two variants share a boot");
        assert_eq!(
            p[1].boot.as_ref().unwrap().kvm.as_ref().unwrap().params,
            ["crpin_flaw=guest-unpin"]
        );
        // The expectation keys on the variant, which is known before boot.
        assert!(p[0].expects.is_empty());
        assert_eq!(p[1].expects.len(), 1);
    }

    #[test]
    fn a_filter_that_is_a_whole_test_id_selects_that_test_alone() {
        let text = "[[test]]\nname = \"env\"\nchecks = [\"vfio.env\"]\n\
            [[test]]\nname = \"env-2\"\nchecks = [\"vfio.env\"]\n";
        let ids = |filter: &str| -> Vec<String> {
            let opts = PlanOptions {
                filter: Some(filter.into()),
                ..Default::default()
            };
            plan_of(text, opts).iter().map(PlannedTest::id).collect()
        };
        assert_eq!(ids("s.env"), ["s.env"]);
        assert_eq!(ids("s.en"), ["s.env", "s.env-2"]);
        assert_eq!(ids("s.env*"), ["s.env", "s.env-2"]);
        assert_eq!(ids("s.env-2"), ["s.env-2"]);
    }

    pub(crate) const VIRTUAL: &str = r#"
[lane]
kind = "virtual"
kernels = ["debian:6.1", "debian:6.12"]
topology = { vfs = 4 }

[[test]]
name = "env"
checks = ["vfio.env"]

[[test]]
name = "nested"
checks = ["boot.smoke"]
requires = { host_kernel = ">=6.12" }
"#;

    #[test]
    fn a_virtual_suite_plans_every_test_once_per_kernel() {
        let p = virtual_plan(VIRTUAL);
        let got: Vec<_> = p
            .iter()
            .map(|t| (t.id(), t.env.label(), t.kind.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "v.env".to_string(),
                    "debian:6.1".to_string(),
                    TestKind::HostChecks
                ),
                (
                    "v.nested".to_string(),
                    "debian:6.1".to_string(),
                    TestKind::Guest
                ),
                (
                    "v.env".to_string(),
                    "debian:6.12".to_string(),
                    TestKind::HostChecks
                ),
                (
                    "v.nested".to_string(),
                    "debian:6.12".to_string(),
                    TestKind::Guest
                ),
            ]
        );
        assert_eq!(
            p[1].decision,
            Decision::Skip("needs host kernel >=6.12, this run has 6.1.0-56-amd64".into())
        );
        assert_eq!(p[3].decision, Decision::Run);
        assert_eq!(p[0].boot.as_ref().unwrap().topology.vfs, 4);
        // The agent decides the accelerator inside the host; what its KVM
        // runs on is known here.
        assert_eq!(p[0].env.accel_word(), "auto");
        assert_eq!(p[0].env.kvm_host, Some(Accel::Tcg));
        assert!(
            p[0].env
                .properties()
                .contains(&("kernel.package", "linux-image-6.1.0-56-amd64".into()))
        );

        // --kernel replaces the list; the agent plans the suite where it runs.
        let m = manifest::parse(Path::new("v.toml"), VIRTUAL).unwrap();
        let mut opts = both_kernels();
        opts.kernels = vec!["debian:6.12".into()];
        let p = plan(
            std::slice::from_ref(&m),
            &host(),
            &auto(),
            Path::new("/g"),
            Path::new("/s"),
            &opts,
        );
        assert_eq!(p.len(), 2);
        opts.agent = true;
        let p = plan(
            &[m],
            &host(),
            &auto(),
            Path::new("/g"),
            Path::new("/s"),
            &opts,
        );
        assert!(
            p.iter()
                .all(|t| t.boot.is_none() && t.env.virtual_host.is_none())
        );
    }

    #[test]
    fn microvm_boots_the_rom_image_when_there_is_one() {
        let dir = std::env::temp_dir().join(format!("ukci-rom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let guest = dir.join("ukci-guest");
        let pvh = |firmware| qemu::Boot::Pvh {
            kernel: guest.clone(),
            firmware,
        };
        let (machine, qboot) = (qemu::Firmware::Machine, qemu::Firmware::Qboot);
        assert_eq!(
            guest_boot(MachineType::Microvm, &guest, false),
            pvh(machine)
        );
        std::fs::write(dir.join("ukci-guest.rom"), b"rom").unwrap();
        assert_eq!(
            guest_boot(MachineType::Microvm, &guest, true),
            qemu::Boot::Rom {
                image: dir.join("ukci-guest.rom")
            }
        );
        // SeaBIOS assigns PCI resources; a guest without PCI devices of its
        // own does without its POST.
        assert_eq!(guest_boot(MachineType::Q35, &guest, true), pvh(machine));
        assert_eq!(guest_boot(MachineType::Pc, &guest, true), pvh(machine));
        assert_eq!(guest_boot(MachineType::Q35, &guest, false), pvh(qboot));
        assert_eq!(guest_boot(MachineType::Pc, &guest, false), pvh(qboot));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kvm_without_dev_kvm_is_skipped_with_the_reason() {
        let m = manifest::parse(Path::new("s.toml"), TEXT).unwrap();
        let mut h = host();
        h.dev_kvm = Err("/dev/kvm cannot be opened: No such file or directory".into());
        let p = plan(
            &[m],
            &h,
            &auto(),
            Path::new("/g"),
            Path::new("/s"),
            &PlanOptions::default(),
        );
        assert_eq!(
            p[1].decision,
            Decision::Skip(
                "needs KVM: /dev/kvm cannot be opened: No such file or directory".into()
            )
        );
    }

    #[test]
    fn only_tests_that_take_the_pf_run_one_at_a_time() {
        assert!(TestKind::GuestWithVf.uses_pf() && TestKind::HostChecks.uses_pf());
        assert!(!TestKind::Guest.uses_pf());
        let kut = KutRun {
            dir: "/t".into(),
            test_dir: "/t/x86".into(),
            test: CfgTest::default(),
            env_file: "/s/env".into(),
            qemu_version: String::new(),
            host_kernel: String::new(),
        };
        assert!(!TestKind::KvmUnitTest(Box::new(kut)).uses_pf());
    }
}
