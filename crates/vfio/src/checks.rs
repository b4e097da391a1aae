//! Host checks for the VF token, reporting through `ukci_protocol::Reporter`
//! exactly like guest checks. Each host check pushes its name as prefix and
//! reports stable sub-result names; the values seen (errno by name, the
//! kernel's message) go in the detail.
//!
//! Expected results come from one table, [`RULES`] (the spec's tables in
//! `vf-token.md` 2.3–2.5, the kernel selftest `vfio_pci_sriov_uapi_test`,
//! and what was measured on Debian 6.1 and 6.12).

use std::fmt::{self, Write as _};
use std::time::Instant;

use ukci_protocol::{Reporter, Status};

use crate::errno::Errno;
use crate::error::{Error, OsError, Result};
use crate::host::Host;
use crate::nvme_pf::{Controller, PfDriver, vf_iova};
use crate::sysfs::{SysWrite, Sysfs};
use crate::token::{NameToken, Token};
use crate::vfio::{self, BAR0_REGION, Device, Vfio, feature};

/// The kernel's messages (after `vfio-pci <bdf>: `).
pub mod msg {
    pub const TOKEN_REQUIRED: &str = "VF token required to access device";
    pub const TOKEN_INCORRECT: &str = "Incorrect VF token provided for device";
    pub const PF_NOT_VFIO: &str = "VF token incorrectly provided, PF not bound to vfio-pci";
    pub const BIND_SRIOV_ENABLED: &str = "Cannot bind to PF with SR-IOV enabled";
}

/// What an operation in a rule check must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// `None`: it must succeed.
    pub errno: Option<Errno>,
    /// The kernel message it logs for the device, if any. The kernel rate-limits
    /// these, so a missing line is tolerated; a different one is not.
    pub kmsg: Option<&'static str>,
}

pub const OK: Expect = Expect {
    errno: None,
    kmsg: None,
};

const fn fails(errno: Errno, kmsg: Option<&'static str>) -> Expect {
    Expect {
        errno: Some(errno),
        kmsg,
    }
}

const REQUIRED: Expect = fails(Errno::EACCES, Some(msg::TOKEN_REQUIRED));
const INCORRECT: Expect = fails(Errno::EACCES, Some(msg::TOKEN_INCORRECT));
const MALFORMED: Expect = fails(Errno::EINVAL, None);

/// One rule: a stable sub-result name, what it does, what must happen.
#[derive(Debug)]
pub struct Rule {
    pub name: &'static str,
    pub what: &'static str,
    pub expect: Expect,
}

const fn rule(name: &'static str, what: &'static str, expect: Expect) -> Rule {
    Rule { name, what, expect }
}

/// Every rule, by host check. Names are stable: the runner and JUnit key on them.
pub const RULES: &[Rule] = &[
    // vf-token.rules (PF on vfio-pci with enable_sriov=1, one VF, VFs offline)
    rule(
        "vf.driver-override",
        "a new VF gets driver_override=vfio-pci and binds to vfio-pci",
        OK,
    ),
    rule(
        "vf-open.unset.none",
        "VF open without a token before the PF user set one",
        REQUIRED,
    ),
    rule(
        "vf-open.unset.wrong",
        "VF open with a guessed token before the PF user set one (it starts random)",
        INCORRECT,
    ),
    rule(
        "pf-open.token",
        "PF open with vf_token= while no VF is open (sets the token)",
        OK,
    ),
    rule(
        "init.same",
        "selftest init_token_match, same_uuid: VF open with the PF's token while the PF is open",
        OK,
    ),
    rule(
        "init.diff",
        "selftest init_token_match, diff_uuid",
        INCORRECT,
    ),
    rule(
        "init.none",
        "selftest init_token_match, null_uuid",
        REQUIRED,
    ),
    rule(
        "vf-open.malformed",
        "VF open with vf_token=not-a-uuid",
        MALFORMED,
    ),
    rule(
        "vf-open.short",
        "VF open with a UUID cut to 35 characters",
        MALFORMED,
    ),
    rule(
        "vf-open.unknown-option",
        "VF open with an option other than vf_token=",
        MALFORMED,
    ),
    rule(
        "feature.probe",
        "VFIO_DEVICE_FEATURE PROBE|SET PCI_VF_TOKEN on the PF",
        OK,
    ),
    rule(
        "feature.get",
        "GET PCI_VF_TOKEN on the PF is refused (the token cannot be read)",
        fails(Errno::EINVAL, None),
    ),
    rule(
        "feature.get-probe",
        "PROBE|GET PCI_VF_TOKEN on the PF is refused",
        fails(Errno::EINVAL, None),
    ),
    rule(
        "feature.set-short",
        "SET PCI_VF_TOKEN with argsz 23 (payload cut)",
        fails(Errno::EINVAL, None),
    ),
    rule(
        "feature.no-op",
        "PCI_VF_TOKEN with neither GET, SET nor PROBE",
        fails(Errno::EINVAL, None),
    ),
    rule(
        "override.set",
        "selftest override_token: SET a new token through VFIO_DEVICE_FEATURE",
        OK,
    ),
    rule(
        "override.new",
        "selftest override_token: VF open with the new token",
        OK,
    ),
    rule(
        "override.old",
        "selftest override_token: VF open with the replaced token",
        INCORRECT,
    ),
    rule(
        "override.none",
        "selftest override_token: VF open without a token",
        REQUIRED,
    ),
    rule(
        "feature.vf",
        "PROBE|SET PCI_VF_TOKEN on a VF fd",
        fails(Errno::ENOTTY, None),
    ),
    rule(
        "feature.vf-get",
        "GET PCI_VF_TOKEN on a VF fd",
        fails(Errno::ENOTTY, None),
    ),
    rule(
        "pf-reopen.vf-open.none",
        "PF open without a token while a VF is open",
        REQUIRED,
    ),
    rule(
        "pf-reopen.vf-open.wrong",
        "PF open with a wrong token while a VF is open",
        INCORRECT,
    ),
    rule(
        "pf-reopen.vf-open.right",
        "PF open with the current token while a VF is open",
        OK,
    ),
    rule(
        "override.vf-open",
        "SET a new token while a VF is open (not blocked, whatever the uapi comment says)",
        OK,
    ),
    rule(
        "vf-second-open.new",
        "second open of the open VF with the token set meanwhile",
        OK,
    ),
    rule(
        "vf-second-open.old",
        "second open of the open VF with the token it was opened with",
        INCORRECT,
    ),
    rule(
        "pf-reopen.vf-closed.new",
        "PF open with a new token once no VF is open (silently replaces it)",
        OK,
    ),
    rule(
        "pf-reopen.vf-closed.follows",
        "VF open with the token the PF open set",
        OK,
    ),
    rule(
        "pf-closed.same",
        "selftest pf_early_close, same_uuid: the token outlives the PF fd",
        OK,
    ),
    rule(
        "pf-closed.diff",
        "selftest pf_early_close, diff_uuid",
        INCORRECT,
    ),
    rule(
        "pf-closed.none",
        "selftest pf_early_close, null_uuid",
        REQUIRED,
    ),
    // vf-token.kernel-pf (PF on the kernel nvme driver)
    rule(
        "vf-open.token",
        "VF on vfio-pci, PF on nvme: a token must not be given",
        fails(Errno::EINVAL, Some(msg::PF_NOT_VFIO)),
    ),
    rule(
        "vf-open.none",
        "VF on vfio-pci, PF on nvme: no token needed",
        OK,
    ),
    rule(
        "pf-bind.vfs-exist",
        "vfio-pci refuses a PF whose VFs already exist",
        fails(Errno::EBUSY, Some(msg::BIND_SRIOV_ENABLED)),
    ),
    // nvme-pf (userspace PF driver holding the PF)
    rule(
        "vf-open.online.none",
        "VF open without a token while the PF driver holds the PF and the VF is online",
        REQUIRED,
    ),
    rule(
        "vf-open.online.wrong",
        "VF open with a wrong token while the PF driver holds the PF",
        INCORRECT,
    ),
];

/// The rule named `name` (a programming error if there is none).
pub fn find(name: &str) -> &'static Rule {
    RULES
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no rule `{name}`"))
}

/// Whether an outcome meets its expectation. Returns pass/fail and the
/// detail (`expected=EACCES errno=EACCES dmesg="..."`).
pub fn expectation_met(expect: &Expect, got: Result<(), &OsError>) -> (bool, String) {
    let want = expect.errno.map_or("ok".to_owned(), |e| e.to_string());
    match got {
        Ok(()) => (expect.errno.is_none(), format!("expected={want} result=ok")),
        Err(e) => {
            let errno_ok = expect.errno == Some(e.errno);
            // The line naming the cause, else the first one about the device.
            let shown = expect
                .kmsg
                .and_then(|w| e.kmsg.iter().find(|l| l.contains(w)))
                .or(e.kmsg.first());
            let kmsg_ok = match (expect.kmsg, shown) {
                (Some(want), Some(seen)) => seen.contains(want),
                _ => true,
            };
            let mut d = format!("expected={want} errno={}", e.errno);
            match shown {
                Some(k) => write!(d, " dmesg=\"{k}\"").unwrap(),
                None if expect.kmsg.is_some() => d.push_str(" dmesg=none(rate-limited?)"),
                None => {}
            }
            (errno_ok && kmsg_ok, d)
        }
    }
}

fn report_rule<W: fmt::Write, T>(
    r: &mut Reporter<W>,
    name: &str,
    got: &Result<T, OsError>,
) -> bool {
    let rule = find(name);
    let (ok, detail) = expectation_met(&rule.expect, got.as_ref().map(|_| ()));
    r.check(ok, name, format_args!("{detail}"))
}

fn report_err<W: fmt::Write>(r: &mut Reporter<W>, name: &str, e: &Error) {
    r.check(false, name, format_args!("{e}"));
}

/// The state of a function that a run must leave as it found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionState {
    pub driver: Option<String>,
    pub driver_override: Option<String>,
    pub numvfs: Option<u32>,
    pub autoprobe: Option<bool>,
}

impl FunctionState {
    pub fn read(sys: &Sysfs, bdf: &str) -> FunctionState {
        FunctionState {
            driver: sys.driver(bdf),
            driver_override: sys.driver_override(bdf),
            numvfs: sys.sriov_numvfs(bdf).ok(),
            autoprobe: sys.sriov_drivers_autoprobe(bdf).ok(),
        }
    }
}

impl fmt::Display for FunctionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "driver={} driver_override={} numvfs={} autoprobe={}",
            self.driver.as_deref().unwrap_or("none"),
            self.driver_override.as_deref().unwrap_or("none"),
            self.numvfs.map_or("?".into(), |n| n.to_string()),
            self.autoprobe.map_or("?", |a| if a { "1" } else { "0" })
        )
    }
}

/// What the checks run against: the PF and the VFIO host that changes it
/// (journaled).
pub struct PfUnderTest<'a> {
    pub host: &'a mut Host,
    pub pf: String,
}

fn kernel_release(sys: &Sysfs) -> String {
    std::fs::read_to_string(sys.proc("sys/kernel/osrelease"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// `vfio.env`: the facts the results depend on.
pub fn vfio_env<W: fmt::Write>(target: &mut PfUnderTest<'_>, r: &mut Reporter<W>) {
    r.push("vfio.env");
    let sys = target.host.sys();
    let pf = &target.pf;
    let sriov = sys
        .module_param("vfio_pci", "enable_sriov")
        .unwrap_or_else(|_| "absent".into());
    let groups = sys.iommu_group_count();
    let total = sys.sriov_totalvfs(pf).ok();
    let cdev = sys.has_vfio_cdev();
    let ids = sys
        .ids(pf)
        .map(|i| format!("{:04x}:{:04x}", i.vendor, i.device))
        .unwrap_or_else(|_| "?".into());
    let type1 = vfio::Container::open().is_ok();
    r.check(
        sriov == "Y" && groups > 0 && total.unwrap_or(0) > 0 && type1,
        "facts",
        format_args!(
            "kernel={} vfio_pci.enable_sriov={sriov} iommu_groups={groups} pf={pf} pf_id={ids} \
             pf_driver={} sriov_totalvfs={} vfio_type1v2={} vfio_cdev={}",
            kernel_release(sys),
            sys.driver(pf).as_deref().unwrap_or("none"),
            total.map_or("?".into(), |t| t.to_string()),
            if type1 { "yes" } else { "no" },
            if cdev { "present" } else { "absent" },
        ),
    );
    r.pop();
}

/// Puts the PF on vfio-pci with SR-IOV off, then `n` VFs.
pub fn pf_on_vfio(target: &mut PfUnderTest<'_>, vfs: u32) -> Result<Vec<String>> {
    let pf = target.pf.clone();
    if target.host.sys().driver(&pf).as_deref() != Some("vfio-pci") {
        target.host.set_numvfs(&pf, 0).ok();
        target.host.bind(&pf, "vfio-pci")?;
    }
    target.host.set_numvfs(&pf, 0)?;
    target.host.set_numvfs(&pf, vfs)?;
    Ok(target.host.sys().virtfns(&pf))
}

/// `vf-token.rules`: the token rules with the PF on vfio-pci and VFs
/// offline: the kernel selftest's cases and the spec's tables.
pub fn vf_token_rules<W: fmt::Write>(target: &mut PfUnderTest<'_>, r: &mut Reporter<W>) {
    r.push("vf-token.rules");
    if let Err(e) = rules_inner(target, r) {
        report_err(r, "setup", &e);
    }
    if let Err(e) = target.host.set_numvfs(&target.pf.clone(), 0) {
        report_err(r, "cleanup", &e);
    }
    r.pop();
}

fn rules_inner<W: fmt::Write>(target: &mut PfUnderTest<'_>, r: &mut Reporter<W>) -> Result<()> {
    let vfs = pf_on_vfio(target, 1)?;
    let pf = target.pf.clone();
    let vf = vfs
        .first()
        .cloned()
        .ok_or_else(|| Error::Other(format!("{pf}: no VF after sriov_numvfs=1")))?;
    let sys = target.host.sys();
    let (drv, ovr) = (sys.driver(&vf), sys.driver_override(&vf));
    r.check(
        drv.as_deref() == Some("vfio-pci") && ovr.as_deref() == Some("vfio-pci"),
        "vf.driver-override",
        format_args!(
            "vf={vf} driver={} driver_override={}",
            drv.as_deref().unwrap_or("none"),
            ovr.as_deref().unwrap_or("none")
        ),
    );
    let mut vfio = Vfio::new(target.host.sys())?;
    let (t1, t2, t3) = (Token::random(), Token::random(), Token::random());
    let open = |v: &mut Vfio, bdf: &str, t: NameToken<'_>| -> Result<Device, OsError> {
        v.open_device(bdf, t).map_err(os_only)
    };

    report_rule(
        r,
        "vf-open.unset.none",
        &open(&mut vfio, &vf, NameToken::None),
    );
    report_rule(
        r,
        "vf-open.unset.wrong",
        &open(&mut vfio, &vf, NameToken::Token(&t2)),
    );

    // init_token_match
    let pf_fd = open(&mut vfio, &pf, NameToken::Token(&t1));
    report_rule(r, "pf-open.token", &pf_fd);
    let pf_fd = pf_fd?;
    report_rule(r, "init.same", &open(&mut vfio, &vf, NameToken::Token(&t1)));
    report_rule(r, "init.diff", &open(&mut vfio, &vf, NameToken::Token(&t2)));
    report_rule(r, "init.none", &open(&mut vfio, &vf, NameToken::None));

    let text = short_token();
    report_rule(
        r,
        "vf-open.malformed",
        &open(&mut vfio, &vf, NameToken::Raw("vf_token=not-a-uuid")),
    );
    report_rule(
        r,
        "vf-open.short",
        &open(&mut vfio, &vf, NameToken::Raw(&text)),
    );
    report_rule(
        r,
        "vf-open.unknown-option",
        &open(
            &mut vfio,
            &vf,
            NameToken::Raw("vf_tokn=00000000-0000-4000-8000-000000000000"),
        ),
    );

    // The feature on the PF.
    use feature::{GET, PCI_VF_TOKEN, PROBE, SET};
    report_rule(r, "feature.probe", &pf_fd.probe_vf_token());
    report_rule(
        r,
        "feature.get",
        &pf_fd.vf_token_feature(GET | PCI_VF_TOKEN, 24, None),
    );
    report_rule(
        r,
        "feature.get-probe",
        &pf_fd.vf_token_feature(GET | PROBE | PCI_VF_TOKEN, 24, None),
    );
    report_rule(
        r,
        "feature.set-short",
        &pf_fd.vf_token_feature(SET | PCI_VF_TOKEN, 23, Some(&t1)),
    );
    report_rule(
        r,
        "feature.no-op",
        &pf_fd.vf_token_feature(PCI_VF_TOKEN, 24, None),
    );

    // override_token
    report_rule(r, "override.set", &pf_fd.set_vf_token(&t2));
    report_rule(
        r,
        "override.new",
        &open(&mut vfio, &vf, NameToken::Token(&t2)),
    );
    report_rule(
        r,
        "override.old",
        &open(&mut vfio, &vf, NameToken::Token(&t1)),
    );
    report_rule(r, "override.none", &open(&mut vfio, &vf, NameToken::None));

    // A VF in use.
    let vf_fd = open(&mut vfio, &vf, NameToken::Token(&t2))?;
    report_rule(r, "feature.vf", &vf_fd.probe_vf_token());
    report_rule(
        r,
        "feature.vf-get",
        &vf_fd.vf_token_feature(GET | PCI_VF_TOKEN, 24, None),
    );
    report_rule(
        r,
        "pf-reopen.vf-open.none",
        &open(&mut vfio, &pf, NameToken::None),
    );
    report_rule(
        r,
        "pf-reopen.vf-open.wrong",
        &open(&mut vfio, &pf, NameToken::Token(&t1)),
    );
    report_rule(
        r,
        "pf-reopen.vf-open.right",
        &open(&mut vfio, &pf, NameToken::Token(&t2)),
    );
    report_rule(r, "override.vf-open", &pf_fd.set_vf_token(&t1));
    report_rule(
        r,
        "vf-second-open.new",
        &open(&mut vfio, &vf, NameToken::Token(&t1)),
    );
    report_rule(
        r,
        "vf-second-open.old",
        &open(&mut vfio, &vf, NameToken::Token(&t2)),
    );
    drop(vf_fd);

    // No VF open any more: a PF open with any token takes over.
    report_rule(
        r,
        "pf-reopen.vf-closed.new",
        &open(&mut vfio, &pf, NameToken::Token(&t3)),
    );
    report_rule(
        r,
        "pf-reopen.vf-closed.follows",
        &open(&mut vfio, &vf, NameToken::Token(&t3)),
    );

    // pf_early_close
    drop(pf_fd);
    report_rule(
        r,
        "pf-closed.same",
        &open(&mut vfio, &vf, NameToken::Token(&t3)),
    );
    report_rule(
        r,
        "pf-closed.diff",
        &open(&mut vfio, &vf, NameToken::Token(&t1)),
    );
    report_rule(r, "pf-closed.none", &open(&mut vfio, &vf, NameToken::None));
    vfio.close_group_of(&vf);
    Ok(())
}

/// `vf_token=` with the UUID one character short (not secret: a fresh UUID
/// unrelated to any token in use).
fn short_token() -> String {
    let u = uuid::Uuid::new_v4().hyphenated().to_string();
    format!("vf_token={}", &u[..35])
}

/// `vf-token.kernel-pf`: the PF on the kernel `nvme` driver. A token given
/// for its VF is refused, none is needed; and vfio-pci will not take over a
/// PF whose VFs exist. Skips where the nvme driver is not loaded.
pub fn vf_token_kernel_pf<W: fmt::Write>(target: &mut PfUnderTest<'_>, r: &mut Reporter<W>) {
    r.push("vf-token.kernel-pf");
    if !target.host.sys().sys("bus/pci/drivers/nvme").exists() {
        for n in ["vf-open.token", "vf-open.none", "pf-bind.vfs-exist"] {
            r.skip(
                n,
                format_args!("the kernel nvme driver is not loaded on this host"),
            );
        }
    } else if let Err(e) = kernel_pf_inner(target, r) {
        report_err(r, "setup", &e);
    }
    r.pop();
}

fn kernel_pf_inner<W: fmt::Write>(target: &mut PfUnderTest<'_>, r: &mut Reporter<W>) -> Result<()> {
    let pf = target.pf.clone();
    let h = &mut *target.host;
    if h.sys().driver(&pf).as_deref() != Some("nvme") {
        h.set_numvfs(&pf, 0).ok();
        h.bind(&pf, "nvme")?;
    }
    // VFs start offline; keep nvme from probing them.
    h.set_autoprobe(&pf, false)?;
    h.set_numvfs(&pf, 0)?;
    h.set_numvfs(&pf, 1)?;
    let vf = h
        .sys()
        .virtfns(&pf)
        .first()
        .cloned()
        .ok_or_else(|| Error::Other(format!("{pf}: no VF after sriov_numvfs=1")))?;
    h.bind(&vf, "vfio-pci")?;
    {
        let mut vfio = Vfio::new(h.sys())?;
        let t = Token::random();
        let group = vfio.group_of(&vf)?;
        report_rule(
            r,
            "vf-open.token",
            &group.open_device(&vf, NameToken::Token(&t)),
        );
        report_rule(r, "vf-open.none", &group.open_device(&vf, NameToken::None));
    }
    h.unbind(&pf)?;
    h.apply(SysWrite::DriverOverride {
        bdf: pf.clone(),
        value: Some("vfio-pci".into()),
    })?;
    let bind = h.apply(SysWrite::Bind {
        bdf: pf.clone(),
        driver: "vfio-pci".into(),
    });
    let bind: Result<(), OsError> = match bind {
        Ok(()) => Ok(()),
        Err(Error::Os(o)) => Err(o),
        Err(e) => return Err(e),
    };
    report_rule(r, "pf-bind.vfs-exist", &bind);
    Ok(())
}

/// `vfio.journal`: after [`Host::restore`], the PF is as it was before the run.
pub fn journal_restored<W: fmt::Write>(
    target: &mut PfUnderTest<'_>,
    before: &FunctionState,
    name: &str,
    r: &mut Reporter<W>,
) {
    r.push("vfio.journal");
    match target.host.restore() {
        Ok(rep) => {
            let now = FunctionState::read(target.host.sys(), &target.pf);
            r.check(
                rep.ok() && &now == before && !target.host.journal_path().exists(),
                name,
                format_args!(
                    "restored_entries={} left={} before=[{before}] now=[{now}]{}",
                    rep.restored.len(),
                    rep.left.len(),
                    rep.left
                        .first()
                        .map(|l| format!(" first_left=\"{l}\""))
                        .unwrap_or_default()
                ),
            );
        }
        Err(e) => report_err(r, name, &e),
    }
    r.pop();
}

/// `nvme-pf`: the userspace PF driver brings `n` VFs online, each VF's
/// controller becomes ready through its own VFIO device (opened with the
/// token), and teardown takes them offline and disables SR-IOV.
pub fn nvme_pf<W: fmt::Write>(target: &mut PfUnderTest<'_>, n: u32, r: &mut Reporter<W>) {
    r.push("vf-token.pf-driver");
    if let Err(e) = nvme_pf_inner(target, n, r) {
        report_err(r, "setup", &e);
    }
    r.pop();
}

fn nvme_pf_inner<W: fmt::Write>(
    target: &mut PfUnderTest<'_>,
    n: u32,
    r: &mut Reporter<W>,
) -> Result<()> {
    pf_on_vfio(target, 0)?;
    let pf = target.pf.clone();
    let mut vfio = Vfio::new(target.host.sys())?;
    let start = Instant::now();
    let mut drv = match PfDriver::open(&mut vfio, &pf, Token::random()) {
        Ok(d) => d,
        Err(e) => {
            report_err(r, "open", &e);
            return Ok(());
        }
    };
    let c = drv.caps;
    r.check(
        true,
        "open",
        format_args!(
            "cntlid={} model=\"{}\" oacs={:#x} vqfrt={} vqrfap={} vqprt={} vqfrsm={} vifrt={} virfap={} viprt={} vifrsm={} {}",
            drv.id.cntlid, drv.id.model(), drv.id.oacs, c.vqfrt, c.vqrfap, c.vqprt, c.vqfrsm,
            c.vifrt, c.virfap, c.viprt, c.vifrsm, drv.timings
        ),
    );
    let enough = c.vqfrt >= 2 * n && c.vifrt >= n && c.vqfrsm >= 2 && c.vifrsm >= 1;
    r.check(
        enough,
        "primary-caps",
        format_args!(
            "vfs={n} needs vqfrt>={} vifrt>={n} vqfrsm>=2 vifrsm>=1; has vqfrt={} vifrt={} vqfrsm={} vifrsm={}",
            2 * n,
            c.vqfrt,
            c.vifrt,
            c.vqfrsm,
            c.vifrsm
        ),
    );
    let vfs = match drv.bring_up_vfs(target.host, n) {
        Ok(v) => v,
        Err(e) => {
            report_err(r, "vfs-online", &e);
            let _ = drv.teardown(&mut vfio, target.host);
            return Ok(());
        }
    };
    let list: Vec<String> = vfs.iter().map(|(b, s)| format!("{b}:[{s}]")).collect();
    r.check(
        vfs.len() == n as usize,
        "vfs-online",
        format_args!(
            "secondaries={} total={}ms {}",
            list.join(","),
            start.elapsed().as_millis(),
            drv.timings
        ),
    );

    // The token still guards the online VFs.
    let first = vfs[0].0.clone();
    let got = vfio.open_device(&first, NameToken::None);
    report_rule(r, "vf-open.online.none", &got.map_err(os_only));
    let got = vfio.open_device(&first, NameToken::Token(&Token::random()));
    report_rule(r, "vf-open.online.wrong", &got.map_err(os_only));

    for (i, (vf, s)) in vfs.iter().enumerate() {
        let name = format!("vf.{}.ready", i + 1);
        match vf_ready(&mut vfio, vf, s.vfn, drv.token()) {
            Ok((csts_before, csts, cntlid, rdy)) => r.check(
                csts & ukci_nvme::regs::csts::RDY != 0 && cntlid == s.scid,
                &name,
                format_args!(
                    "vf={vf} csts_at_open={csts_before:#x} csts={csts:#x} ready_after={}ms identify_cntlid={cntlid} scid={}",
                    rdy.as_millis(),
                    s.scid
                ),
            ),
            Err(e) => r.check(false, &name, format_args!("vf={vf}: {e}")),
        };
    }

    let t = Instant::now();
    let torn = drv.teardown(&mut vfio, target.host);
    let numvfs = target.host.sys().sriov_numvfs(&pf).unwrap_or(u32::MAX);
    match torn {
        Ok(()) => r.check(
            numvfs == 0,
            "teardown",
            format_args!("sriov_numvfs={numvfs} took={}ms", t.elapsed().as_millis()),
        ),
        Err(e) => r.check(false, "teardown", format_args!("{e}")),
    };
    Ok(())
}

fn os_only(e: Error) -> OsError {
    match e {
        Error::Os(o) => o,
        other => OsError {
            op: "open".into(),
            target: String::new(),
            errno: Errno(0),
            kmsg: vec![other.to_string()],
        },
    }
}

/// Opens a VF with the token, starts its controller and identifies it.
/// Returns CSTS at open, CSTS after enable, the controller ID and the time
/// the bring-up (reset, enable, Identify Controller) took.
fn vf_ready(
    vfio: &mut Vfio,
    vf: &str,
    vfn: u16,
    token: &Token,
) -> Result<(u32, u32, u16, std::time::Duration)> {
    let dev = vfio.open_device(vf, NameToken::Token(token))?;
    let before = dev.read32(&dev.region(BAR0_REGION)?, ukci_nvme::regs::CSTS as u64)?;
    let t = Instant::now();
    let mut ctrl = Controller::open(vfio, dev, vf_iova(vfn))?;
    let rdy = t.elapsed();
    let csts = ctrl.csts()?;
    let cntlid = ctrl.data().cntlid;
    ctrl.close(vfio)?;
    Ok((before, csts, cntlid, rdy))
}

/// `vf-token.cdev`: the cdev/iommufd bind of a linked VF, where the kernel
/// has `/dev/vfio/devices` (6.6+ with IOMMUFD). Without a token it must be
/// refused (EACCES) from 6.17 on; 6.6–6.16 let it through (a known gap).
pub fn vf_token_cdev<W: fmt::Write>(target: &mut PfUnderTest<'_>, r: &mut Reporter<W>) {
    r.push("vf-token.cdev");
    if !target.host.sys().has_vfio_cdev() {
        let why = "no /dev/vfio/devices: this kernel has no VFIO cdev (CONFIG_VFIO_DEVICE_CDEV off or before 6.6)";
        r.skip("bind.none", format_args!("{why}"));
        r.skip("bind.token", format_args!("{why}"));
        r.pop();
        return;
    }
    let res = (|| -> Result<()> {
        let vfs = pf_on_vfio(target, 1)?;
        let vf = vfs
            .first()
            .cloned()
            .ok_or_else(|| Error::Other("no VF".into()))?;
        let mut vfio = Vfio::new(target.host.sys())?;
        let t = Token::random();
        let _pf = vfio.open_device(&target.pf, NameToken::Token(&t))?;
        let cdev = target
            .host
            .sys()
            .vfio_cdev(&vf)
            .ok_or_else(|| Error::Other(format!("{vf} has no vfio-dev entry")))?;
        match vfio::cdev_bind(&cdev, None) {
            Err(e) if e.errno == Errno::EACCES => {
                r.check(true, "bind.none", format_args!("expected=EACCES errno=EACCES"));
            }
            Ok(_) => r.result(
                Status::Xfail,
                "bind.none",
                format_args!("bound without a token: this kernel lacks the cdev token check (added in 6.17, 86624ba3b522)"),
            ),
            Err(e) => {
                r.check(false, "bind.none", format_args!("expected=EACCES errno={}", e.errno));
            }
        }
        match vfio::cdev_bind(&cdev, Some(&t)) {
            Ok(_) => {
                r.check(true, "bind.token", format_args!("expected=ok result=ok"));
            }
            Err(e) if e.errno == Errno::E2BIG => r.result(
                Status::Kfail,
                "bind.token",
                format_args!("E2BIG: 6.17 cdev token ABI before 2f03f21fe751"),
            ),
            Err(e) if e.errno == Errno::EINVAL => r.result(
                Status::Xfail,
                "bind.token",
                format_args!("EINVAL: this kernel predates VFIO_DEVICE_BIND_FLAG_TOKEN (6.17)"),
            ),
            Err(e) => {
                r.check(
                    false,
                    "bind.token",
                    format_args!("expected=ok errno={}", e.errno),
                );
            }
        }
        vfio.close_group_of(&vf);
        Ok(())
    })();
    if let Err(e) = res {
        report_err(r, "setup", &e);
    }
    let pf = target.pf.clone();
    let _ = target.host.set_numvfs(&pf, 0);
    r.pop();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(errno: Errno, kmsg: Option<&str>) -> OsError {
        OsError {
            op: "VFIO_GROUP_GET_DEVICE_FD".into(),
            target: "0000:01:00.1".into(),
            errno,
            kmsg: kmsg.map(Into::into).into_iter().collect(),
        }
    }

    #[test]
    fn rule_names_are_unique_and_dotted() {
        for (i, a) in RULES.iter().enumerate() {
            assert!(!a.name.contains(' ') && !a.name.contains(':'), "{}", a.name);
            for b in &RULES[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn the_table_follows_the_spec() {
        // A linked VF: no token → "required", wrong token → "incorrect", both EACCES.
        for n in [
            "init.none",
            "override.none",
            "pf-closed.none",
            "vf-open.unset.none",
            "pf-reopen.vf-open.none",
        ] {
            assert_eq!(find(n).expect, REQUIRED, "{n}");
        }
        for n in [
            "init.diff",
            "override.old",
            "pf-closed.diff",
            "pf-reopen.vf-open.wrong",
            "vf-second-open.old",
        ] {
            assert_eq!(find(n).expect, INCORRECT, "{n}");
        }
        for n in [
            "init.same",
            "override.new",
            "pf-closed.same",
            "pf-reopen.vf-open.right",
            "override.vf-open",
        ] {
            assert_eq!(find(n).expect, OK, "{n}");
        }
        assert_eq!(find("feature.get").expect.errno, Some(Errno::EINVAL));
        assert_eq!(find("feature.vf").expect.errno, Some(Errno::ENOTTY));
        assert_eq!(find("vf-open.token").expect.errno, Some(Errno::EINVAL));
        assert_eq!(find("pf-bind.vfs-exist").expect.errno, Some(Errno::EBUSY));
        assert_eq!(find("vf-open.malformed").expect.errno, Some(Errno::EINVAL));
    }

    #[test]
    fn judging_wants_the_errno_and_tolerates_a_rate_limited_message() {
        let req = find("init.none").expect;
        let (ok, d) = expectation_met(
            &req,
            Err(&err(
                Errno::EACCES,
                Some("vfio-pci 0000:01:00.1: VF token required to access device"),
            )),
        );
        assert!(ok);
        assert_eq!(
            d,
            "expected=EACCES errno=EACCES dmesg=\"vfio-pci 0000:01:00.1: VF token required to access device\""
        );
        let (ok, d) = expectation_met(&req, Err(&err(Errno::EACCES, None)));
        assert!(ok, "{d}");
        assert!(d.contains("dmesg=none"));
        // Right errno, wrong reason.
        let (ok, _) = expectation_met(
            &req,
            Err(&err(
                Errno::EACCES,
                Some("vfio-pci 0000:01:00.1: Incorrect VF token provided for device"),
            )),
        );
        assert!(!ok);
        let (ok, d) = expectation_met(&req, Err(&err(Errno::EINVAL, None)));
        assert!(!ok);
        assert_eq!(d, "expected=EACCES errno=EINVAL dmesg=none(rate-limited?)");
        let (ok, d) = expectation_met(&req, Ok(()));
        assert!(!ok);
        assert_eq!(d, "expected=EACCES result=ok");
        let (ok, _) = expectation_met(&OK, Ok(()));
        assert!(ok);
        let (ok, _) = expectation_met(&OK, Err(&err(Errno::EACCES, None)));
        assert!(!ok);
    }

    #[test]
    fn results_go_through_the_protocol_with_stable_names() {
        let mut out = String::new();
        let mut r = Reporter::new(&mut out);
        r.push("vf-token.rules");
        let got: Result<(), OsError> = Err(err(Errno::EACCES, None));
        assert!(report_rule(&mut r, "init.none", &got));
        r.pop();
        assert!(out.starts_with(
            "PASS: vf-token.rules: init.none\nukci-detail: expected=EACCES errno=EACCES"
        ));
    }
}
