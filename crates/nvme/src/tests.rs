//! The driver and the checks against the model controller: the good path,
//! and each injected fault giving the failure a user would need to see.

use crate::checks::{self, Function, Options};
use crate::cmd::{Command, Resource, VirtAction, admin, io};
use crate::ctrl::{Config, Controller};
use crate::model::{self, Model, ModelClock, ModelConfig, ModelDma, ModelMmio, Shared, Sriov};
use crate::status::{self, Code};
use crate::{Dma, Error, PAGE_SIZE, Wait};
use std::string::String;
use std::vec;
use std::vec::Vec;
use ukci_protocol::Reporter;
use ukci_protocol::line::{self, Line, Status};

type Ctrl = Controller<ModelMmio, ModelDma, ModelClock>;

const MEM: usize = 32 << 20;

fn up(cfg: ModelConfig) -> (Shared<Model>, Ctrl) {
    let (m, mmio, dma, clock) = model::new(cfg, MEM);
    let ctrl = Controller::init(mmio, dma, clock, Config::default()).expect("bring-up");
    (m, ctrl)
}

fn opts() -> Options {
    Options {
        seed: Some(0x1234_5678),
        ..Options::default()
    }
}

/// Runs checks and returns (status, name, detail) per result and the INFO lines.
fn run(
    ctrl: &mut Ctrl,
    names: &[&str],
    func: &Function,
    opts: &Options,
) -> (Vec<(Status, String, String)>, Vec<String>, String) {
    let mut r = Reporter::new(String::new());
    for n in names {
        assert!(checks::run(n, ctrl, func, opts, &mut r), "{n} unknown");
    }
    let out = r.out().clone();
    let mut results: Vec<(Status, String, String)> = Vec::new();
    let mut infos = Vec::new();
    for l in out.lines() {
        match line::parse(l) {
            Some(Line::Result {
                status,
                name,
                reason,
            }) => results.push((status, name.into(), reason.unwrap_or("").into())),
            Some(Line::Detail(d)) => {
                if let Some(last) = results.last_mut() {
                    last.2 = d.into();
                }
            }
            Some(Line::Info(i)) => infos.push(i.into()),
            _ => {}
        }
    }
    (results, infos, out)
}

fn all_pass(results: &[(Status, String, String)], out: &str) {
    assert!(!results.is_empty(), "no results:\n{out}");
    for (s, name, detail) in results {
        assert_eq!(*s, Status::Pass, "{name}: {detail}\n{out}");
    }
}

fn find<'a>(results: &'a [(Status, String, String)], name: &str) -> &'a (Status, String, String) {
    results
        .iter()
        .find(|r| r.1 == name)
        .unwrap_or_else(|| panic!("no result {name} in {results:#?}"))
}

fn pf() -> Function {
    Function {
        sriov_total_vfs: Some(2),
        vendor: 0x1b36,
        device: 0x0010,
        ..Function::default()
    }
}

// ---- bring-up ----

#[test]
fn bring_up_reads_identity_and_grant() {
    let (m, ctrl) = up(ModelConfig::default());
    assert_eq!(ctrl.controller_data().serial(), "ukci-model");
    assert_eq!(ctrl.io_pairs_granted(), 16);
    // MDTS 7 with 4 KiB pages: 512 KiB, below the driver's 1 MiB cap.
    assert_eq!(ctrl.max_transfer(), 512 << 10);
    assert_eq!(ctrl.version().0, 0x0001_0400);
    assert!(!ctrl.needs_reset());
    let m = m.borrow();
    assert_eq!(m.log[0].opcode, admin::IDENTIFY);
    assert_eq!(m.log[1].opcode, admin::SET_FEATURES);
}

#[test]
fn rdy_that_never_comes_is_a_timeout_bounded_by_cap_to() {
    let (m, mmio, dma, clock) = model::new(
        ModelConfig {
            to: 4,
            ..ModelConfig::default()
        },
        MEM,
    );
    m.borrow_mut().faults.never_ready = true;
    match Controller::init(mmio, dma, clock, Config::default()) {
        Err(Error::Timeout {
            what: Wait::Ready(true),
            waited_ns,
            ..
        }) => {
            // CAP.TO = 4 is 2 s; the wait ends just after it.
            assert!(
                (2_000_000_000..2_001_000_000).contains(&waited_ns),
                "{waited_ns}"
            );
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("came up without RDY"),
    }
}

#[test]
fn fatal_status_while_enabling_is_reported() {
    let (m, mmio, dma, clock) = model::new(ModelConfig::default(), MEM);
    m.borrow_mut().faults.fatal_on_enable = true;
    let e = Controller::init(mmio, dma, clock, Config::default())
        .err()
        .expect("must fail");
    assert!(matches!(e, Error::Fatal { csts } if csts & 2 != 0), "{e}");
}

#[test]
fn an_offline_secondary_is_named_as_such() {
    let (_, mmio, dma, clock) = model::new(
        ModelConfig {
            offline: true,
            ..ModelConfig::default()
        },
        MEM,
    );
    let e = Controller::init(mmio, dma, clock, Config::default())
        .err()
        .expect("must fail");
    assert_eq!(e, Error::Offline { csts: 2 });
    assert!(std::format!("{e}").contains("Virtualization Management"));
}

#[test]
fn a_stopped_clock_cannot_make_a_wait_endless() {
    let (m, mmio, dma, _) = model::new(ModelConfig::default(), MEM);
    m.borrow_mut().faults.never_ready = true;
    let clock = ModelClock { now: 5, step: 0 };
    let e = Controller::init(mmio, dma, clock, Config::default())
        .err()
        .expect("must fail");
    assert_eq!(
        e,
        Error::ClockStalled {
            what: Wait::Ready(true)
        }
    );
}

#[test]
fn doorbell_stride_is_honoured() {
    let (m, mut ctrl) = up(ModelConfig {
        dstrd: 2,
        ..ModelConfig::default()
    });
    let (results, _, out) = run(&mut ctrl, &["nvme.rw"], &Function::default(), &opts());
    all_pass(&results, &out);
    assert!(
        m.borrow()
            .log
            .iter()
            .any(|r| r.qid == 1 && r.opcode == io::WRITE)
    );
}

// ---- I/O ----

#[test]
fn rw_passes_and_exercises_every_prp_shape() {
    let (m, mut ctrl) = up(ModelConfig::default());
    let (results, infos, out) = run(&mut ctrl, &["nvme.rw"], &Function::default(), &opts());
    all_pass(&results, &out);
    for name in [
        "nvme.rw: one block",
        "nvme.rw: one page",
        "nvme.rw: two pages through prp2",
        "nvme.rw: prp list",
        "nvme.rw: prp list from mid-page",
        "nvme.rw: mdts",
        "nvme.rw: namespace end",
        "nvme.rw: two writes read as one",
    ] {
        find(&results, name);
    }
    assert!(infos.iter().any(|i| i.contains("block=512")), "{infos:?}");
    let m = m.borrow();
    let writes: Vec<_> = m
        .log
        .iter()
        .filter(|r| r.qid == 1 && r.opcode == io::WRITE)
        .collect();
    assert!(writes.iter().any(|w| w.bytes == 512));
    assert!(
        writes.iter().any(|w| w.bytes == 512 << 10),
        "a write of MDTS size"
    );
    assert!(
        writes.iter().any(|w| w.prp_list),
        "a write through a PRP list"
    );
    assert!(m.log.iter().any(|r| r.opcode == io::FLUSH && r.qid == 1));
    // The queue pair was deleted again.
    assert_eq!(m.live_io_queues(), (0, 0));
}

#[test]
fn rw_with_4k_blocks_and_small_mdts() {
    let cfg = ModelConfig {
        namespaces: vec![(1, 512, 12)],
        mdts: 2,
        ..ModelConfig::default()
    };
    let (_, mut ctrl) = up(cfg);
    let (results, _, out) = run(&mut ctrl, &["nvme.rw"], &Function::default(), &opts());
    // 16 KiB MDTS: the 5-page list case cannot run and says why.
    let list = find(&results, "nvme.rw: prp list");
    assert_eq!(list.0, Status::Skip, "{out}");
    assert!(list.2.contains("transfer limit 16384"), "{}", list.2);
    for r in results.iter().filter(|r| r.0 != Status::Skip) {
        assert_eq!(r.0, Status::Pass, "{r:?}\n{out}");
    }
}

#[test]
fn a_corrupted_read_fails_naming_lba_and_offset() {
    let (m, mut ctrl) = up(ModelConfig::default());
    // Block 0 is the "one block" case; corrupt byte 77 of it.
    m.borrow_mut().faults.corrupt_read = Some((0, 77));
    let (results, _, out) = run(&mut ctrl, &["nvme.rw"], &Function::default(), &opts());
    let (s, _, detail) = find(&results, "nvme.rw: one block");
    assert_eq!(*s, Status::Fail, "{out}");
    assert!(detail.contains("lba=0 offset=77"), "{detail}");
    assert!(detail.contains("bytes_differing=1"), "{detail}");
    let pairs: Vec<_> = line::detail_pairs(detail).collect();
    assert!(pairs.contains(&("lba", "0")) && pairs.contains(&("offset", "77")));
    // Deep inside a multi-page transfer it is found just as precisely.
    let (m, mut ctrl) = up(ModelConfig::default());
    m.borrow_mut().faults.corrupt_read = Some((30, 500));
    let (results, _, _) = run(&mut ctrl, &["nvme.rw"], &Function::default(), &opts());
    let (s, _, detail) = find(&results, "nvme.rw: prp list");
    assert_eq!(*s, Status::Fail);
    assert!(detail.contains("lba=30 offset=500"), "{detail}");
}

#[test]
fn lost_writes_are_caught_even_over_matching_old_data() {
    // The disk already holds exactly what the first case will write (an
    // earlier run with the same seed). Writes now go nowhere: a check that
    // trusted old contents would pass; this one re-seeds per run.
    let (m, mut ctrl) = up(ModelConfig::default());
    let first = opts();
    let (results, _, out) = run(&mut ctrl, &["nvme.rw"], &Function::default(), &first);
    all_pass(&results, &out);
    m.borrow_mut().faults.lose_writes = true;
    let second = Options {
        seed: None,
        ..opts()
    };
    let (results, _, out) = run(&mut ctrl, &["nvme.rw"], &Function::default(), &second);
    let (s, _, detail) = find(&results, "nvme.rw: one block");
    assert_eq!(*s, Status::Fail, "{out}");
    assert!(detail.contains("mismatch lba=0 offset=0"), "{detail}");
}

#[test]
fn a_lost_completion_is_a_bounded_timeout_then_reset_recovers() {
    let (m, mut ctrl) = up(ModelConfig::default());
    m.borrow_mut().faults.drop_completion = Some((1, io::READ));
    let (results, _, out) = run(&mut ctrl, &["nvme.rw"], &Function::default(), &opts());
    let (s, _, detail) = find(&results, "nvme.rw: one block");
    assert_eq!(*s, Status::Fail, "{out}");
    assert!(
        detail.contains("timed out after 10000 ms waiting for completion of opcode 0x02"),
        "{detail}"
    );
    assert!(ctrl.needs_reset());
    // Further commands refuse rather than hang, until a reset.
    let e = ctrl
        .admin(Command::identify_controller(), None)
        .unwrap_err();
    assert_eq!(e, Error::NeedsReset);
    // The next check resets the controller and passes.
    let (results, infos, out) = run(&mut ctrl, &["nvme.rw"], &Function::default(), &opts());
    all_pass(&results, &out);
    assert!(infos.iter().any(|i| i.contains("controller reset")));
}

#[test]
fn a_wrong_phase_tag_is_not_taken_for_a_completion() {
    let (m, mut ctrl) = up(ModelConfig::default());
    m.borrow_mut().faults.wrong_phase = Some((0, admin::IDENTIFY));
    let e = ctrl.identify_controller().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                what: Wait::Completion {
                    qid: 0,
                    opcode: 0x06,
                    ..
                },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn transfers_over_the_limit_are_refused_before_submission() {
    let (m, mut ctrl) = up(ModelConfig::default());
    let mut q = ctrl.create_io_pair(1, 0).unwrap();
    let buf = ctrl.dma().alloc(200).unwrap();
    let before = m.borrow().log.len();
    let e = ctrl
        .read(&mut q, 1, 0, 1600, buf.range(0, 1600 * 512).unwrap())
        .unwrap_err();
    assert_eq!(
        e,
        Error::TooLarge {
            bytes: 819_200,
            max: 524_288
        }
    );
    assert_eq!(m.borrow().log.len(), before);
    assert_eq!(buf.range(4096, 200 * 4096), Err(Error::OutOfBounds));
    ctrl.delete_io_pair(q).unwrap();
}

#[test]
fn queue_rings_wrap_with_the_phase_tag() {
    let (m, mut ctrl) = up(ModelConfig::default());
    // 4 entries: 3 usable slots, so 20 commands wrap both rings many times.
    let mut q = ctrl.create_io_pair(1, 4).unwrap();
    assert_eq!(q.entries(), 4);
    for _ in 0..20 {
        ctrl.flush(&mut q, 1).unwrap();
    }
    // Admin queue (32 entries) wraps too.
    for _ in 0..70 {
        ctrl.identify_controller().unwrap();
    }
    ctrl.delete_io_pair(q).unwrap();
    assert!(m.borrow().log.iter().all(|r| r.code.is_success()));
}

#[test]
fn dma_memory_is_given_back() {
    let (m, mut ctrl) = up(ModelConfig::default());
    let mem = ctrl.dma().0.clone();
    let before = mem.borrow().pages_in_use();
    let (results, _, out) = run(
        &mut ctrl,
        &["nvme.rw", "nvme.queues", "nvme.errors"],
        &Function::default(),
        &opts(),
    );
    all_pass(&results, &out);
    assert_eq!(mem.borrow().pages_in_use(), before);
    drop(m);
}

// ---- queues ----

#[test]
fn queues_creates_uses_and_deletes_every_granted_pair() {
    let (m, mut ctrl) = up(ModelConfig {
        max_io_pairs: 8,
        ..ModelConfig::default()
    });
    let (results, infos, out) = run(&mut ctrl, &["nvme.queues"], &Function::default(), &opts());
    all_pass(&results, &out);
    assert!(
        find(&results, "nvme.queues: create")
            .2
            .contains("pairs=8 granted=8")
    );
    find(&results, "nvme.queues: io on every queue");
    find(&results, "nvme.queues: deleted queue is gone");
    find(&results, "nvme.queues: beyond the grant");
    assert!(infos.iter().any(|i| i.contains("granted=8")));
    let m = m.borrow();
    assert_eq!(m.max_live_io_sqs, 8);
    assert_eq!(m.live_io_queues(), (0, 0));
    for qid in 1..=8 {
        for op in [io::WRITE, io::FLUSH, io::READ] {
            assert!(
                m.log.iter().any(|r| r.qid == qid && r.opcode == op),
                "qid {qid} op {op}"
            );
        }
    }
}

#[test]
fn queues_respects_the_configured_limit() {
    let (m, mut ctrl) = up(ModelConfig {
        max_io_pairs: 16,
        ..ModelConfig::default()
    });
    let o = Options {
        max_pairs: 3,
        ..opts()
    };
    let (results, _, out) = run(&mut ctrl, &["nvme.queues"], &Function::default(), &o);
    assert!(
        find(&results, "nvme.queues: create")
            .2
            .contains("pairs=3 granted=16"),
        "{out}"
    );
    assert_eq!(
        find(&results, "nvme.queues: beyond the grant").0,
        Status::Skip
    );
    assert_eq!(m.borrow().max_live_io_sqs, 3);
}

#[test]
fn queues_does_not_probe_beyond_a_grant_larger_than_the_request() {
    let (m, mmio, dma, clock) = model::new(
        ModelConfig {
            max_io_pairs: 6,
            ..ModelConfig::default()
        },
        MEM,
    );
    let cfg = Config {
        io_pairs: 4,
        ..Config::default()
    };
    let mut ctrl = Controller::init(mmio, dma, clock, cfg).unwrap();
    assert_eq!((ctrl.io_pairs_granted(), ctrl.io_pairs_offered()), (4, 6));
    let (results, _, out) = run(&mut ctrl, &["nvme.queues"], &Function::default(), &opts());
    assert!(
        find(&results, "nvme.queues: create")
            .2
            .contains("pairs=4 granted=4"),
        "{out}"
    );
    let (s, _, reason) = find(&results, "nvme.queues: beyond the grant");
    assert_eq!(*s, Status::Skip);
    assert!(reason.contains("offered 6"), "{reason}");
    assert_eq!(m.borrow().max_live_io_sqs, 4);
}

#[test]
fn queues_reports_a_controller_that_exceeds_its_grant() {
    let (m, mut ctrl) = up(ModelConfig {
        max_io_pairs: 4,
        ..ModelConfig::default()
    });
    // The controller accepts qid 5 although it granted 4.
    m.borrow_mut().faults.accept_any_qid = true;
    let (results, _, _) = run(&mut ctrl, &["nvme.queues"], &Function::default(), &opts());
    let (s, _, detail) = find(&results, "nvme.queues: beyond the grant");
    assert_eq!(*s, Status::Fail);
    assert!(
        detail.contains(
            "status=Successful Completion (0x000) expected=Invalid Queue Identifier (0x101)"
        ),
        "{detail}"
    );
}

// ---- errors ----

#[test]
fn errors_get_the_right_status_codes() {
    let (m, mut ctrl) = up(ModelConfig::default());
    let (results, _, out) = run(&mut ctrl, &["nvme.errors"], &Function::default(), &opts());
    all_pass(&results, &out);
    let expected = [
        ("admin invalid opcode", "Invalid Command Opcode (0x001"),
        ("sq on a missing cq", "Completion Queue Invalid (0x100"),
        ("queue larger than mqes", "Invalid Queue Size (0x102"),
        ("delete a missing sq", "Invalid Queue Identifier (0x101"),
        ("delete a cq with its sq", "Invalid Queue Deletion (0x10c"),
        ("io invalid opcode", "Invalid Command Opcode (0x001"),
        ("read past the end", "LBA Out of Range (0x080"),
        ("read across the end", "LBA Out of Range (0x080"),
    ];
    for (name, status) in expected {
        let full = std::format!("nvme.errors: {name}");
        let (_, _, detail) = find(&results, &full);
        assert!(
            detail.contains(&std::format!("status={status}")),
            "{name}: {detail}"
        );
    }
    find(&results, "nvme.errors: still working");
    assert_eq!(m.borrow().live_io_queues(), (0, 0));
}

#[test]
fn a_wrong_status_code_fails_naming_both() {
    let (m, mut ctrl) = up(ModelConfig::default());
    m.borrow_mut().faults.fail_with = Some((1, io::READ, status::INVALID_FIELD));
    let (results, _, _) = run(&mut ctrl, &["nvme.errors"], &Function::default(), &opts());
    let (s, _, detail) = find(&results, "nvme.errors: read past the end");
    assert_eq!(*s, Status::Fail);
    assert!(
        detail.contains(
            "status=Invalid Field in Command (0x002, dnr) expected=LBA Out of Range (0x080)"
        ),
        "{detail}"
    );
    // ...and the controller is then found not working for reads.
    assert_eq!(find(&results, "nvme.errors: still working").0, Status::Fail);
}

// ---- identify ----

#[test]
fn identify_reports_a_vf_as_a_secondary_controller() {
    let cfg = ModelConfig {
        cntlid: 1,
        is_vf: true,
        ..ModelConfig::default()
    };
    let (_, mut ctrl) = up(cfg);
    let vf = Function {
        bdf: checks::Bdf {
            bus: 1,
            dev: 0,
            func: 1,
        },
        ..Function::default()
    };
    let (results, infos, out) = run(&mut ctrl, &["nvme.identify"], &vf, &opts());
    all_pass(&results, &out);
    find(&results, "nvme.identify: controller");
    find(&results, "nvme.identify: namespace list");
    find(&results, "nvme.identify: namespace 1");
    let all = infos.join("\n");
    assert!(all.contains("function 01:00.1"), "{all}");
    assert!(all.contains("no SR-IOV capability"), "{all}");
    assert!(all.contains("cntlid=1"), "{all}");
    assert!(all.contains("secondary controller"), "{all}");
    assert!(all.contains("serial=\"ukci-model\""), "{all}");
    assert!(all.contains("namespace 1: nsze=4096"), "{all}");
}

#[test]
fn identify_on_a_pf_lists_its_secondaries() {
    let cfg = ModelConfig {
        sriov: Some(Sriov {
            vfs: 2,
            vq_flexible: 4,
            vi_flexible: 2,
        }),
        namespaces: vec![(1, 2048, 9), (3, 1024, 12)],
        ..ModelConfig::default()
    };
    let (_, mut ctrl) = up(cfg);
    let (results, infos, out) = run(&mut ctrl, &["nvme.identify"], &pf(), &opts());
    all_pass(&results, &out);
    find(&results, "nvme.identify: namespace 3");
    let all = infos.join("\n");
    assert!(all.contains("physical function"), "{all}");
    assert!(all.contains("primary cntlid=0 vq: flexible=4"), "{all}");
    assert!(
        all.contains("secondary scid=2 vfn=2 offline nvq=0 nvi=0"),
        "{all}"
    );
}

#[test]
fn identify_flags_inconsistent_namespace_data() {
    // A namespace whose only format has a 2^3-byte block.
    let (_, mut ctrl) = up(ModelConfig {
        namespaces: vec![(1, 100, 3)],
        ..ModelConfig::default()
    });
    let (results, _, _) = run(&mut ctrl, &["nvme.identify"], &Function::default(), &opts());
    let (s, _, detail) = find(&results, "nvme.identify: namespace 1");
    assert_eq!(*s, Status::Fail);
    assert!(detail.contains("lbads=3"), "{detail}");
    // ...and the I/O checks skip it with the reason.
    let (results, _, _) = run(&mut ctrl, &["nvme.rw"], &Function::default(), &opts());
    let (s, _, reason) = find(&results, "nvme.rw: namespace");
    assert_eq!(*s, Status::Skip);
    assert!(
        reason.contains("no active namespace with a usable LBA format"),
        "{reason}"
    );
}

// ---- virtualization management, as a host PF driver would use it ----

#[test]
fn secondary_bring_up_sequence_on_the_model() {
    let cfg = ModelConfig {
        sriov: Some(Sriov {
            vfs: 1,
            vq_flexible: 2,
            vi_flexible: 1,
        }),
        ..ModelConfig::default()
    };
    let (m, mut ctrl) = up(cfg);
    assert!(ctrl.controller_data().has_virtualization_management());
    let code = |r: Result<u32, Error>| r.map_err(|e| e.status().map(|s| s.code()));
    // Online before resources: refused.
    let r = ctrl.virtualization_management(VirtAction::SecondaryOnline, Resource::Queue, 1, 0);
    assert_eq!(
        code(r),
        Err(Some(status::INVALID_SECONDARY_CONTROLLER_STATE))
    );
    // The primary gives up its flexible resources.
    ctrl.virtualization_management(
        VirtAction::PrimaryFlexibleAllocation,
        Resource::Interrupt,
        0,
        0,
    )
    .unwrap();
    ctrl.virtualization_management(VirtAction::PrimaryFlexibleAllocation, Resource::Queue, 0, 0)
        .unwrap();
    // Primary allocation aimed at a secondary: wrong controller.
    let r = ctrl.virtualization_management(
        VirtAction::PrimaryFlexibleAllocation,
        Resource::Queue,
        1,
        0,
    );
    assert_eq!(code(r), Err(Some(status::INVALID_CONTROLLER_IDENTIFIER)));
    assert_eq!(
        ctrl.virtualization_management(VirtAction::SecondaryAssign, Resource::Interrupt, 1, 1),
        Ok(1)
    );
    assert_eq!(
        ctrl.virtualization_management(VirtAction::SecondaryAssign, Resource::Queue, 1, 2),
        Ok(2)
    );
    ctrl.virtualization_management(VirtAction::SecondaryOnline, Resource::Queue, 1, 0)
        .unwrap();
    // Assigning to an online secondary is refused.
    let r = ctrl.virtualization_management(VirtAction::SecondaryAssign, Resource::Queue, 1, 2);
    assert_eq!(
        code(r),
        Err(Some(status::INVALID_SECONDARY_CONTROLLER_STATE))
    );
    let mut list = [Default::default(); 4];
    let n = ctrl.secondary_controllers(0, &mut list).unwrap();
    assert_eq!(n, 1);
    assert!(list[0].online() && list[0].nvq == 2 && list[0].nvi == 1 && list[0].vfn == 1);
    let caps = ctrl.primary_controller_caps().unwrap();
    assert_eq!((caps.vqfrt, caps.vqrfa, caps.vqrfap), (2, 2, 0));
    // A controller reset of the primary takes the secondary offline.
    ctrl.reset().unwrap();
    assert!(!m.borrow().secondaries()[0].online());
}

#[test]
fn virtualization_management_is_an_invalid_opcode_without_sriov() {
    let (_, mut ctrl) = up(ModelConfig::default());
    let e = ctrl
        .virtualization_management(VirtAction::SecondaryOnline, Resource::Queue, 1, 0)
        .unwrap_err();
    assert_eq!(e.status().map(|s| s.code()), Some(Code::new(0, 1)));
    assert!(std::format!("{e}").contains("opcode 0x1c on queue 0 failed: Invalid Command Opcode"));
}

#[test]
fn all_four_checks_pass_together_on_a_good_controller() {
    let (_, mut ctrl) = up(ModelConfig {
        max_io_pairs: 4,
        ..ModelConfig::default()
    });
    let (results, _, out) = run(&mut ctrl, &checks::NAMES, &pf(), &Options::default());
    all_pass(&results, &out);
    assert!(results.len() > 20, "{out}");
    let _ = PAGE_SIZE;
}

#[test]
fn bench_reports_throughput_for_both_shapes_and_checks_the_data() {
    let (_, mut ctrl) = up(ModelConfig::default());
    let o = Options {
        max_bytes: 1 << 20,
        ..opts()
    };
    let (results, infos, out) = run(&mut ctrl, &[checks::BENCH], &pf(), &o);
    all_pass(&results, &out);
    let names: Vec<&str> = results.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(names, ["nvme.bench: 4k", "nvme.bench: mdts"], "{out}");
    let bench: Vec<&String> = infos.iter().filter(|i| i.contains(" op=")).collect();
    assert_eq!(bench.len(), 4, "{out}");
    // MDTS 7 with 4 KiB pages: 512 KiB transfers, two of them per MiB.
    assert!(
        bench
            .iter()
            .any(|i| i.contains("op=read transfer=524288 count=2 bytes=1048576")),
        "{out}"
    );
    assert!(bench.iter().all(|i| i.contains("mib_per_s=")), "{out}");
    // The queue is gone afterwards.
    assert!(ctrl.create_io_pair(1, 0).is_ok());
}

#[test]
fn bench_fails_when_the_data_does_not_come_back() {
    let (m, mut ctrl) = up(ModelConfig::default());
    m.borrow_mut().faults.lose_writes = true;
    let o = Options {
        max_bytes: 64 << 10,
        ..opts()
    };
    let (results, _, out) = run(&mut ctrl, &[checks::BENCH], &pf(), &o);
    let (s, _, detail) = find(&results, "nvme.bench: 4k");
    assert_eq!(*s, Status::Fail, "{out}");
    assert!(detail.contains("read back after 16 transfers"), "{detail}");
}
