//! Typed QEMU command lines. Every flag ukci passes to QEMU is added here,
//! as separate arguments (never a shell string); every option string is an
//! [`Opts`], which escapes its values.

use crate::manifest::MachineType;
use crate::supervise::{self, Finished};
use crate::units::ByteSize;
use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ukci_nvme::cmd::{VF_QUEUES, VF_VECTORS};
use ukci_protocol::exit::{ISA_DEBUG_EXIT_PORT, ISA_DEBUG_EXIT_SIZE};
use ukci_supervise::qemu_opts::{self, Args, Opts, SriovNvme};
use ukci_vhost::accel::Accel;

pub const QEMU: &str = "qemu-system-x86_64";

/// A fully resolved VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub machine: MachineType,
    pub accel: Accel,
    pub cpu: String,
    pub memory: ByteSize,
    pub smp: u32,
    /// The i8254 PIT and its timer interrupt (see [`machine_has_pit`]).
    pub pit: bool,
    pub boot: Boot,
    /// The guest's command line, however `boot` passes it.
    pub append: String,
    pub devices: Vec<VmDevice>,
}

/// How QEMU starts the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// The PVH ELF through firmware: `-kernel`, the command line in
    /// `-append`.
    Pvh { kernel: PathBuf, firmware: Firmware },
    /// The firmware-less image as the BIOS: `-bios`, the command line in the
    /// fw_cfg file [`FW_CFG_CMDLINE`].
    Rom { image: PathBuf },
}

/// The firmware a PVH boot goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// The machine's own: SeaBIOS on q35 and pc, which assigns the BARs and
    /// bridge windows of the guest's PCI devices; qboot on microvm.
    Machine,
    /// qboot on q35 or pc: the guest starts without SeaBIOS's POST (under
    /// TCG ~0.1 s sooner here, ~1 s inside a virtual host), but nothing
    /// assigns PCI resources: for a guest with no PCI devices of its own.
    Qboot,
}

/// Where the guest reads its command line from on a ROM boot.
pub const FW_CFG_CMDLINE: &str = "opt/ukci/cmdline";

/// The ROM image installed beside the PVH guest `kernel` (`<kernel>.rom`).
pub fn rom_image_for(kernel: &Path) -> PathBuf {
    let mut name = kernel.as_os_str().to_owned();
    name.push(".rom");
    PathBuf::from(name)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmDevice {
    Nvme {
        serial: String,
        image: PathBuf,
        sriov_max_vfs: u16,
    },
    /// Devices from a `-readconfig` file that QEMU inherits as descriptor
    /// `fd` (an anonymous sealed memfd): how a VF and its token reach QEMU
    /// without appearing in its argv or in any file.
    ReadConfig { fd: RawFd },
}

/// Runs `vm` under supervision, handing QEMU the descriptors its devices
/// are read from.
pub fn run(vm: &VmConfig, timeout: Duration, on_line: impl FnMut(&str)) -> Finished {
    supervise::run_inheriting(
        QEMU.as_ref(),
        &vm.args(),
        &vm.inherited_fds(),
        timeout,
        on_line,
    )
}

/// The `-cpu` model used when a manifest names none.
pub fn default_cpu(accel: Accel, kvm_module: Option<&str>) -> String {
    match (accel, kvm_module) {
        // kvm_pvm cannot set MSR_IA32_ARCH_CAPABILITIES, which `host` asks for.
        (Accel::Kvm, Some("kvm_pvm")) => "host,-arch-capabilities".into(),
        (Accel::Kvm, _) => "host".into(),
        _ => "max".into(),
    }
}

/// Whether a guest's machine keeps its PIT. Not for a q35 guest on a KVM
/// that itself runs on TCG (a virtual host's kvm_amd on QEMU's SVM
/// emulation): there SeaBIOS sometimes never reaches the guest. Its
/// real-mode handler of the PIT's IRQ 0 (entry_08, irqentry_extrastack,
/// handle_08 switching stacks in stack_hop_back) returns through an `iretw`
/// whose frame no longer holds what the interrupt injected into the nested
/// guest pushed: it returns to `d900:<ip>` (the low-memory data segment)
/// or `d900:0000`, with TF set, and loops for good on #UD or #DB through
/// SeaBIOS's `iret` at f000:ff53 (kvm_exit traces inside the virtual host;
/// 7 of 40 boots on 6.1 and 6.12). Without the PIT no timer interrupt
/// reaches SeaBIOS, which times with the TSC (kvmclock), and the guest
/// calibrates its TSC from CPUID or an upper bound instead. microvm guests
/// boot without firmware interrupts and keep theirs.
pub fn machine_has_pit(machine: MachineType, accel: Accel, kvm_host: Option<Accel>) -> bool {
    !(machine == MachineType::Q35 && accel == Accel::Kvm && kvm_host == Some(Accel::Tcg))
}

impl VmConfig {
    /// The descriptors QEMU must inherit to read its devices.
    pub fn inherited_fds(&self) -> Vec<RawFd> {
        self.devices
            .iter()
            .filter_map(|d| match d {
                VmDevice::ReadConfig { fd } => Some(*fd),
                _ => None,
            })
            .collect()
    }

    /// The arguments after the QEMU binary.
    pub fn args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        let machine = match self.machine {
            // No legacy devices the guest does not use: faster start.
            MachineType::Microvm => Opts::new("microvm")
                .set("pit", "off")
                .set("pic", "off")
                .set("rtc", "off"),
            m if self.pit => Opts::new(m.qemu_name()),
            m => Opts::new(m.qemu_name()).set("pit", "off"),
        };
        a.pair("-machine", machine);
        a.pair("-accel", Opts::new(self.accel.word()));
        a.pair("-cpu", &self.cpu);
        a.pair("-m", format!("{}M", self.memory.mebibytes()));
        a.pair("-smp", self.smp.to_string());
        a.flag("-nodefaults");
        a.pair("-display", "none");
        a.flag("-no-reboot");
        a.pair("-serial", "stdio");
        a.pair("-monitor", "none");
        a.pair(
            "-device",
            Opts::new("isa-debug-exit")
                .set("iobase", format_args!("{ISA_DEBUG_EXIT_PORT:#x}"))
                .set("iosize", format_args!("{ISA_DEBUG_EXIT_SIZE:#x}")),
        );
        for (i, d) in self.devices.iter().enumerate() {
            d.push_args(i, &mut a);
        }
        match &self.boot {
            Boot::Pvh { kernel, firmware } => {
                if *firmware == Firmware::Qboot {
                    a.pair("-bios", "qboot.rom");
                }
                a.pair("-kernel", kernel);
                a.pair("-append", &self.append);
            }
            Boot::Rom { image } => {
                a.pair("-bios", image);
                // QEMU refuses an empty string=; no file reads as no command line.
                if !self.append.is_empty() {
                    a.pair(
                        "-fw_cfg",
                        Opts::pair("name", FW_CFG_CMDLINE).set("string", &self.append),
                    );
                }
            }
        }
        a.into_vec()
    }
}

impl VmDevice {
    fn push_args(&self, i: usize, a: &mut Args) {
        match self {
            VmDevice::ReadConfig { fd } => {
                a.pair("-readconfig", ukci_vfio::token::proc_fd_path(*fd))
            }
            VmDevice::Nvme {
                serial,
                image,
                sriov_max_vfs,
            } => {
                if *sriov_max_vfs == 0 {
                    let drive = format!("nvm{i}");
                    a.pair("-drive", qemu_opts::raw_drive(&drive, image));
                    a.pair(
                        "-device",
                        Opts::new("nvme").set("serial", serial).set("drive", &drive),
                    );
                } else {
                    let vfs = u32::from(*sriov_max_vfs);
                    let nvme = SriovNvme {
                        index: i,
                        serial,
                        nqn: None,
                        vfs: *sriov_max_vfs,
                        vq_flexible: u32::from(VF_QUEUES) * vfs,
                        vi_flexible: u32::from(VF_VECTORS) * vfs,
                        max_ioqpairs: 2 * vfs + 4,
                        msix_qsize: vfs + 8,
                        namespaces: std::slice::from_ref(image),
                    };
                    for (flag, o) in nvme.args() {
                        a.pair(flag, o);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> VmConfig {
        VmConfig {
            machine: MachineType::Q35,
            accel: Accel::Tcg,
            cpu: "max".into(),
            memory: ByteSize::mib(128),
            smp: 1,
            pit: true,
            boot: Boot::Pvh {
                kernel: "/g/ukci-guest".into(),
                firmware: Firmware::Machine,
            },
            append: "checks=boot.smoke".into(),
            devices: vec![],
        }
    }

    fn text(v: &VmConfig) -> String {
        v.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn every_vm_has_the_safety_flags_and_the_exit_device() {
        let t = text(&vm());
        for want in [
            "-no-reboot",
            "-nodefaults",
            "-display none",
            "-monitor none",
            "-device isa-debug-exit,iobase=0xf4,iosize=0x4",
            "-kernel /g/ukci-guest",
        ] {
            assert!(t.contains(want), "{want} missing in {t}");
        }
    }

    #[test]
    fn a_pvh_guest_through_qboot_names_it_as_the_bios() {
        let mut v = vm();
        assert!(!text(&v).contains("-bios"), "{}", text(&v));
        v.boot = Boot::Pvh {
            kernel: "/g/ukci-guest".into(),
            firmware: Firmware::Qboot,
        };
        assert!(text(&v).contains("-bios qboot.rom -kernel /g/ukci-guest"));
    }

    #[test]
    fn the_append_string_stays_one_argument() {
        let mut v = vm();
        v.append = "checks=a,b nvme.blocks=8".into();
        let args = v.args();
        let i = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[i + 1], "checks=a,b nvme.blocks=8");
    }

    #[test]
    fn a_rom_boot_passes_the_command_line_in_fw_cfg_with_commas_doubled() {
        let mut v = vm();
        v.machine = MachineType::Microvm;
        v.boot = Boot::Rom {
            image: "/g/ukci-guest.rom".into(),
        };
        v.append = "checks=a,b nvme.blocks=8".into();
        let args = v.args();
        let t = text(&v);
        assert!(t.contains("-bios /g/ukci-guest.rom"), "{t}");
        assert!(!t.contains("-kernel") && !t.contains("-append"), "{t}");
        let i = args.iter().position(|a| a == "-fw_cfg").unwrap();
        assert_eq!(
            args[i + 1],
            "name=opt/ukci/cmdline,string=checks=a,,b nvme.blocks=8"
        );
        v.append.clear();
        assert!(!text(&v).contains("-fw_cfg"));
    }

    #[test]
    fn the_rom_image_sits_beside_the_kernel() {
        assert_eq!(
            rom_image_for(Path::new("/r/images/ukci-guest")),
            Path::new("/r/images/ukci-guest.rom")
        );
    }

    #[test]
    fn an_sriov_nvme_sits_behind_a_root_port_in_a_subsystem() {
        let mut v = vm();
        v.devices.push(VmDevice::Nvme {
            serial: "s".into(),
            image: "/tmp/a,b.img".into(),
            sriov_max_vfs: 2,
        });
        let t = text(&v);
        assert!(t.contains("file=/tmp/a,,b.img"), "{t}");
        assert!(t.contains("-device pcie-root-port,id=rp0"), "{t}");
        assert!(
            t.contains(
                "subsys=subsys0,bus=rp0,sriov_max_vfs=2,sriov_vq_flexible=4,sriov_vi_flexible=2"
            ),
            "{t}"
        );
    }

    #[test]
    fn a_serial_with_commas_reaches_qemu_as_one_value() {
        let serial = "inj,logical_block_size=4096,physical_block_size=4096";
        for vfs in [0, 2] {
            let mut v = vm();
            v.devices.push(VmDevice::Nvme {
                serial: serial.into(),
                image: "/s/a.img".into(),
                sriov_max_vfs: vfs,
            });
            let args = v.args();
            let nvme = args
                .iter()
                .filter_map(|a| a.to_str())
                .find(|a| a.starts_with("nvme,"))
                .unwrap();
            let (_, pairs) = ukci_supervise::qemu_opts::split(nvme);
            let got: Vec<&str> = pairs
                .iter()
                .filter(|(k, _)| k == "serial" || k.contains("block_size"))
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(got, [serial], "{nvme}");
        }
    }

    #[test]
    fn a_q35_guest_on_a_kvm_over_tcg_has_no_pit() {
        let (kvm, tcg) = (Accel::Kvm, Accel::Tcg);
        assert!(!machine_has_pit(MachineType::Q35, kvm, Some(tcg)));
        assert!(machine_has_pit(MachineType::Q35, kvm, None));
        assert!(machine_has_pit(MachineType::Q35, tcg, Some(tcg)));
        assert!(machine_has_pit(MachineType::Microvm, kvm, Some(tcg)));
        let mut v = vm();
        assert!(text(&v).contains("-machine q35 "), "{}", text(&v));
        v.pit = false;
        assert!(text(&v).contains("-machine q35,pit=off "), "{}", text(&v));
    }

    #[test]
    fn kvm_pvm_gets_a_cpu_model_it_can_start() {
        assert_eq!(
            default_cpu(Accel::Kvm, Some("kvm_pvm")),
            "host,-arch-capabilities"
        );
        assert_eq!(default_cpu(Accel::Kvm, Some("kvm_intel")), "host");
        assert_eq!(default_cpu(Accel::Tcg, Some("kvm_pvm")), "max");
    }
}
