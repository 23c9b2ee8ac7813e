//! QEMU scenarios of the physical GIC, ITS and EL2 timer (`vigil.test=`
//! scenarios in kernel/vigil/src/ktest/gic.rs).

use vigil_harness::Qemu;

#[test]
fn sgi_ping_pong_between_all_cpus() {
    Qemu::scenario("sgi")
        .run()
        .check(&[
            "sgi: ring: each of 4 CPUs received each of SGIs 0-7 exactly once",
            "sgi: broadcast: each CPU received every other CPU's broadcast exactly once",
            "ktest: sgi: PASS",
        ])
        .unwrap();
}

#[test]
fn el2_timer_ticks_at_its_rate_on_every_cpu() {
    let run = Qemu::scenario("timer").run();
    run.check(&["ktest: timer: PASS"]).unwrap();
    assert_eq!(run.lines_with("timer: cpu").count(), 4, "{}", run.log);
    assert_eq!(run.lines_with("OUT OF RANGE").count(), 0, "{}", run.log);
}

const LPI_LINES: &[&str] = &[
    "lpi: INT delivered LPI 8192 once, on cpu1",
    "lpi: after MOVI to collection 2 it arrived on cpu2",
    "lpi: after DISCARD, INT delivers nothing",
    "lpi: after MAPD(V=0) and re-MAPD with a 16-entry ITT, event 3 arrived on cpu3",
    "lpi: DeviceID 0xfff0 works too",
    "ktest: lpi: PASS",
];

#[test]
fn lpi_through_the_its_with_a_two_level_device_table() {
    let run = Qemu::scenario("lpi").run();
    run.check(LPI_LINES).unwrap();
    assert_eq!(
        run.lines_with("device table two-level").count(),
        1,
        "{}",
        run.log
    );
}

/// The physical ITS driver on QEMU's GICv4.0 board: the redistributors
/// are 4 frames each there (GICR_TYPER.VLPIS) and the ITS reports
/// virtual support; Vigil finds every redistributor and its LPIs arrive.
#[test]
fn lpi_through_the_its_on_a_gicv4_board() {
    let run = Qemu::scenario("lpi").gic(4).run();
    run.check(LPI_LINES).unwrap();
    // `gic(4)` checks the boot log names a GICv4.
    run.check(&["4 redistributors in 1 regions"]).unwrap();
}

#[test]
fn lpi_through_the_its_with_a_flat_device_table() {
    let run = Qemu::new("vigil.test=lpi vigil.its=flat").run();
    run.check(LPI_LINES).unwrap();
    assert_eq!(
        run.lines_with("device table flat").count(),
        1,
        "{}",
        run.log
    );
}

#[test]
fn ten_thousand_lpis_each_received_exactly_once() {
    Qemu::scenario("lpi-storm")
        .run()
        .check(&[
            "lpi-storm: 10000 LPIs over 64 events and 4 CPUs (cpu0 to cpu3 of 4), each received exactly once",
            "ktest: lpi-storm: PASS",
        ])
        .unwrap();
}

#[test]
fn command_queue_wraps_at_least_twice() {
    let run = Qemu::scenario("its-wrap").run();
    run.check(&["LPI still delivered exactly once", "ktest: its-wrap: PASS"])
        .unwrap();
    let line = run.lines_with("queue wrapped").next().unwrap();
    let wraps: u32 = line
        .split("queue wrapped ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no wrap count in {line:?}"));
    assert!(wraps >= 2, "{line}");
}

/// A stalled physical ITS (a MAPTI it cannot write) is reported once and
/// recovered: the commands after the stalled one, and the next batch, run.
#[test]
fn stalled_its_queue_is_recovered() {
    let run = Qemu::scenario("its-stall")
        .expect_error("replaced by a SYNC and retried: the queue runs again")
        .run();
    run.check(&[
        "its-stall: stall recovered; the commands after it ran",
        "ktest: its-stall: PASS",
    ])
    .unwrap();
    assert_eq!(
        run.lines_with("ITS stalled at command offset").count(),
        1,
        "{}",
        run.log
    );
}

#[test]
fn bad_its_option_is_one_clear_error() {
    let run = Qemu::new("vigil.its=deep").run();
    assert_eq!(run.ending, vigil_harness::Ending::Exited(1), "{}", run.log);
    assert_eq!(
        run.lines_with("boot: vigil.its=deep: expected vigil.its=flat")
            .count(),
        1,
        "{}",
        run.log
    );
}

#[test]
fn bad_gicv4_option_is_one_clear_error() {
    let run = Qemu::new("vigil.gicv4=maybe").run();
    assert_eq!(run.ending, vigil_harness::Ending::Exited(1), "{}", run.log);
    assert_eq!(
        run.lines_with("boot: vigil.gicv4=maybe: expected vigil.gicv4=on or off")
            .count(),
        1,
        "{}",
        run.log
    );
}

/// `--gic` of scripts/qemu and scripts/run takes 3 or 4; anything else is
/// one error line and exit 2 before QEMU starts.
#[test]
fn gic_flag_is_checked() {
    for script in ["scripts/qemu", "scripts/run"] {
        for bad in ["2", "5", "v4", ""] {
            let mut cmd = std::process::Command::new(vigil_harness::workspace_root().join(script));
            cmd.args(["--gic", bad]).arg(vigil_harness::image());
            let run = vigil_harness::run_with_timeout(cmd, std::time::Duration::from_secs(30));
            assert_eq!(
                run.ending,
                vigil_harness::Ending::Exited(2),
                "{script} --gic {bad:?}: {}",
                run.log
            );
            assert!(
                run.log.contains(&format!("--gic {bad}: expected 3 or 4")),
                "{script}: {}",
                run.log
            );
        }
    }
}
