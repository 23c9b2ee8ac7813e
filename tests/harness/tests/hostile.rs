//! A hostile guest on every surface it can reach (issue 20): the vGIC's
//! and vITS's frames, the ITS and LPI tables, system registers, HVC and
//! SMC, next to a well-behaved VM time-sliced on the same physical CPUs.

use std::time::Duration;

use vigil_harness::{Ending, Guest, Qemu, Run};

/// Operations per mode and vCPU.
const OPS: u64 = 100_000;

/// The hostile VM (2 vCPUs on CPUs 0 and 1) with `bootargs`, next to the
/// `ipi` scenario's 4 vCPUs on the same two CPUs: every IPI of its 1,000
/// all-to-all rounds must arrive exactly once.
fn hostile_next_to_ipi(bootargs: &str) -> Run {
    Qemu::with_guests(&[
        Guest::test("hostile")
            .cpus(2)
            .pcpus(&[0, 1])
            .test_device()
            .bootargs(bootargs),
        Guest::test("ipi").cpus(4).pcpus(&[0, 1, 0, 1]),
    ])
    .timeout(Duration::from_secs(300))
    .run()
}

/// The count before `what` in a line of the form "... N what ...".
fn count_before(line: &str, what: &str) -> u64 {
    line.split(what)
        .next()
        .and_then(|s| s.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {what:?} in {line:?}"))
}

#[test]
fn a_hostile_guest_on_every_surface_harms_neither_vigil_nor_its_neighbour() {
    let run = hostile_next_to_ipi(&format!(
        "vigil.guest=hostile vigil.hostile.ops={OPS} vigil.seed=0x5eed"
    ));
    let started =
        format!("hostile: seed 0x5eed, {OPS} ops per mode and vCPU, modes mmio,tables,sysreg,hvc");
    run.check(&[
        started.as_str(),
        "hostile: mmio on vCPU 1: ",
        "hostile: mmio on vCPU 0: ",
        "hostile: tables on vCPU 0: ",
        "hostile: sysreg on vCPU 0: ",
        "hostile: hvc on vCPU 0: ",
        "hostile: Vigil still answers; GICD_TYPER unchanged",
        "[hostile] guest: hostile: PASS",
        "vm hostile: 0 vGIC/vITS anomalies",
        "[ipi] guest: ipi: 12000 SGIs, each (target, INTID) exactly 1000, nothing else",
        "[ipi] guest: ipi: PASS",
        "vm ipi: 0 vGIC/vITS anomalies, 0 guest-caused warnings",
        // What the hostile VM made Vigil allocate is all given back.
        "exit: every VM's vITS and vGIC state released; heap back to",
    ])
    .unwrap();
    assert_eq!(run.ending, Ending::Exited(0), "{}", run.log);
    // Each mode ran its operations (hvc skips the calls that would end the
    // guest), and the surfaces answered as designed: the emulated frames
    // abort only what has no valid syndrome or lies outside them, the
    // system registers outside Vigil's traps are UNDEFINED.
    for mode in [
        "mmio on vCPU 0",
        "mmio on vCPU 1",
        "tables on",
        "sysreg on",
        "hvc on",
    ] {
        let needle = format!("guest: hostile: {mode}");
        let line = run
            .lines_with(&needle)
            .next()
            .unwrap_or_else(|| panic!("no {mode} line:\n{}", run.log));
        let ops = count_before(line, " ops:");
        assert!(ops >= OPS * 8 / 10, "{line}");
        assert_eq!(count_before(line, " other exceptions"), 0, "{line}");
        match mode {
            m if m.starts_with("mmio") => {
                assert!(count_before(line, " aborts") > ops / 10, "{line}")
            }
            "sysreg on" => assert!(count_before(line, " UNDEFs") > ops / 2, "{line}"),
            _ => {}
        }
    }
}

/// The seed makes a run reproducible: the same seed, the same counts.
#[test]
fn a_hostile_run_replays_from_its_seed() {
    let args = "vigil.guest=hostile vigil.hostile=sysreg,hvc vigil.hostile.ops=20000 vigil.seed=77";
    let a = hostile_next_to_ipi(args);
    let b = hostile_next_to_ipi(args);
    for run in [&a, &b] {
        run.check(&["[hostile] guest: hostile: PASS"]).unwrap();
    }
    let lines = |r: &Run| -> Vec<String> {
        r.lines_with("guest: hostile: sysreg on")
            .chain(r.lines_with("guest: hostile: hvc on"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(lines(&a).len(), 2, "{}", a.log);
    assert_eq!(lines(&a), lines(&b));
}

/// The same hostile VM next to neighbours that check their LPIs (the `its`
/// scenario: every command, each LPI delivered exactly once) and their
/// virtual timers (never early), all on the same two CPUs.
#[test]
fn a_hostile_guest_leaves_a_neighbours_lpis_and_timers_alone() {
    let run = Qemu::with_guests(&[
        Guest::test("hostile")
            .cpus(2)
            .pcpus(&[0, 1])
            .test_device()
            .bootargs(&format!(
                "vigil.guest=hostile vigil.hostile.ops={OPS} vigil.seed=0x5eee"
            )),
        Guest::test("its").cpus(2).pcpus(&[0, 1]),
        Guest::test("vtimer")
            .cpus(2)
            .pcpus(&[0, 1])
            .bootargs("vigil.guest=vtimer vigil.vtimer.cpus=2"),
    ])
    .timeout(Duration::from_secs(300))
    .run();
    run.check(&[
        "[hostile] guest: hostile: PASS",
        "[its] guest: its: INT: LPIs 8192-8195 each delivered exactly once",
        "[its] guest: its: PASS",
        "guest: vtimer: cpu 0: 100 interrupts, none early",
        "guest: vtimer: cpu 1: 100 interrupts, none early",
        "[vtimer] guest: vtimer: PASS",
        "vm its: 0 vGIC/vITS anomalies",
        "vm vtimer: 0 vGIC/vITS anomalies, 0 guest-caused warnings",
        "exit: every VM's vITS and vGIC state released; heap back to",
    ])
    .unwrap();
}
