//! The QEMU command line of the virtual host.

use std::ffi::OsString;

use std::path::PathBuf;

use ukci_supervise::qemu_opts::{Args, Opts, SriovNvme};

use super::{Accel, BootConfig, kernel_cmdline};

/// The QEMU arguments (without the program).
pub fn qemu_args(cfg: &BootConfig) -> Vec<OsString> {
    let mut a = Args::default();
    a.pair("-name", Opts::new(format_args!("ukci-vhost {}", cfg.name)));
    match cfg.accel {
        // One TCG thread runs both vCPUs in turn. Multi-threaded TCG raced
        // here: QEMU 10.0.2 aborted in iotlb_to_section while the host
        // enabled VFs, and a host lost a timer interrupt for good. With two
        // virtual hosts on two cores the single thread is also faster.
        Accel::Tcg => {
            a.pair("-machine", "q35");
            a.pair("-accel", "tcg,thread=single,tb-size=512");
            a.pair("-cpu", "max");
        }
        // With KVM the interrupt remapping of intel-iommu needs a split irqchip.
        Accel::Kvm => {
            a.pair("-machine", "q35,kernel-irqchip=split");
            a.pair("-accel", "kvm");
            a.pair("-cpu", "host,-arch-capabilities");
        }
    }
    a.pair("-smp", cfg.cpus.to_string());
    a.pair("-m", format!("{}M", cfg.memory_mib));
    a.flag("-nodefaults");
    a.flag("-no-user-config");
    a.pair("-display", "none");
    a.flag("-no-reboot");
    a.pair("-chardev", "stdio,id=console,signal=off");
    a.pair("-serial", "chardev:console");
    // qboot instead of SeaBIOS: it loads the kernel from fw_cfg and jumps to
    // it, without SeaBIOS's POST (~0.2 s under TCG before the kernel starts).
    // It assigns no PCI resources; Linux does (pcibios_assign_resources),
    // the root port's windows and the NVMe's SR-IOV VF BARs included.
    a.pair("-bios", "qboot.rom");
    a.pair("-device", "intel-iommu,intremap=on,caching-mode=on");
    a.pair("-kernel", &cfg.vmlinuz);
    a.pair("-initrd", &cfg.initramfs);
    a.pair("-append", kernel_cmdline(cfg));

    let t = &cfg.topology;
    let namespaces: Vec<PathBuf> = (1..=t.namespaces).map(|n| cfg.namespace_image(n)).collect();
    let nvme = SriovNvme {
        index: 0,
        serial: "ukci0001",
        nqn: Some("ukci-vhost"),
        vfs: t.vfs,
        vq_flexible: t.vq_flexible,
        vi_flexible: t.vi_flexible,
        max_ioqpairs: t.max_ioqpairs,
        msix_qsize: t.msix_qsize,
        namespaces: &namespaces,
    };
    for (flag, o) in nvme.args() {
        a.pair(flag, o);
    }
    a.pair(
        "-virtfs",
        Opts::new("local")
            .set("path", cfg.host_root.display())
            .set("mount_tag", "hostroot")
            .set("security_model", "none")
            .set("readonly", "on"),
    );
    a.pair(
        "-virtfs",
        Opts::new("local")
            .set("path", cfg.results_dir.display())
            .set("mount_tag", "results")
            .set("security_model", "none"),
    );
    a.into_vec()
}

#[cfg(test)]
mod tests {
    use super::super::test_config as cfg;
    use super::*;

    fn args_of(c: &BootConfig) -> Vec<String> {
        qemu_args(c)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn value_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn qemu_command_has_the_lane_devices() {
        let a = args_of(&cfg());
        assert!(a.contains(&"-no-reboot".to_string()));
        assert!(a.contains(&"-nodefaults".to_string()));
        assert_eq!(value_after(&a, "-machine"), ["q35"]);
        assert_eq!(value_after(&a, "-accel"), ["tcg,thread=single,tb-size=512"]);
        assert_eq!(value_after(&a, "-bios"), ["qboot.rom"]);
        let devices = value_after(&a, "-device");
        assert_eq!(devices[0], "intel-iommu,intremap=on,caching-mode=on");
        let rp = devices
            .iter()
            .position(|d| d.starts_with("pcie-root-port,id=rp0"))
            .unwrap();
        let nvme = devices.iter().position(|d| d.starts_with("nvme,")).unwrap();
        assert!(
            rp < nvme,
            "the root port exists before the NVMe is plugged into it"
        );
        assert!(devices[nvme].contains("bus=rp0"));
        assert!(devices[nvme].contains("subsys=subsys0"));
        assert!(devices[nvme].contains("sriov_max_vfs=2,sriov_vq_flexible=4,sriov_vi_flexible=2"));
        assert_eq!(
            value_after(&a, "-drive"),
            ["file=/s/nvme-ns1.img,if=none,id=nvme0ns1,format=raw"]
        );
        let fs = value_after(&a, "-virtfs");
        assert_eq!(
            fs[0],
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on"
        );
        assert_eq!(
            fs[1], "local,path=/r,,1,mount_tag=results,security_model=none",
            "comma escaped"
        );
        let append = value_after(&a, "-append")[0];
        for w in [
            "console=ttyS0",
            "intel_iommu=on",
            "panic=-1",
            "hung_task_panic=1",
            "sysctl.kernel.hung_task_timeout_secs=60",
            "cryptomgr.notests",
            "initcall_blacklist=jent_mod_init,crypto_kdf108_init,init_encrypted",
            "ipv6.disable=1",
        ] {
            assert!(append.split(' ').any(|x| x == w), "{append}");
        }
        assert_eq!(value_after(&a, "-serial"), ["chardev:console"]);
    }

    #[test]
    fn kvm_uses_a_split_irqchip_for_interrupt_remapping() {
        let mut c = cfg();
        let tcg = kernel_cmdline(&c);
        c.accel = Accel::Kvm;
        let a = args_of(&c);
        assert_eq!(value_after(&a, "-machine"), ["q35,kernel-irqchip=split"]);
        assert_eq!(value_after(&a, "-accel"), ["kvm"]);
        // The periodic tick is TCG's only.
        let kvm = kernel_cmdline(&c);
        for w in ["nohz=off", "highres=off", "no_timer_check"] {
            assert!(tcg.split(' ').any(|x| x == w), "{tcg}");
            assert!(!kvm.split(' ').any(|x| x == w), "{kvm}");
        }
    }

    #[test]
    fn namespaces_each_get_a_drive_and_an_nsid() {
        let mut c = cfg();
        c.topology.namespaces = 2;
        let a = args_of(&c);
        let ns: Vec<_> = value_after(&a, "-device")
            .into_iter()
            .filter(|d| d.starts_with("nvme-ns"))
            .collect();
        assert_eq!(
            ns,
            [
                "nvme-ns,drive=nvme0ns1,bus=nvme0,nsid=1",
                "nvme-ns,drive=nvme0ns2,bus=nvme0,nsid=2"
            ]
        );
    }
}
