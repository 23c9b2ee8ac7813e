//! QEMU scenarios of the foundation: boot, SMP, memory, and the failure
//! paths (exceptions, panics, failing and hanging scenarios) that every
//! later test relies on being reported.

use std::time::Duration;
use vigil_harness::{Ending, Qemu};

fn cpu_lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("[cpu{i} INFO ] cpu{i} online: MPIDR {i:#x}, EL2, MMU on"))
        .collect()
}

#[test]
fn all_cpus_come_up_at_el2_with_mmu_on() {
    let run = Qemu::scenario("smp").run();
    let mut expected: Vec<String> = cpu_lines(4);
    expected.push("smp: 4/4 CPUs online at EL2 with the MMU on".into());
    expected.push("ktest: smp: PASS".into());
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    run.check(&expected).unwrap();
}

#[test]
fn default_boot_exits_cleanly() {
    let run = Qemu::new("").run();
    run.check(&[
        "Vigil 0.1.0 starting",
        "4 of 4 CPUs online",
        "boot complete",
    ])
    .unwrap();
}

#[test]
fn frame_allocator_and_heap_work_on_target() {
    Qemu::scenario("memory")
        .run()
        .check(&["frame and heap checks passed", "ktest: memory: PASS"])
        .unwrap();
}

#[test]
fn data_abort_at_el2_is_reported_with_esr_and_far() {
    let run = Qemu::scenario("data-abort").run();
    assert_eq!(run.ending, Ending::Exited(1), "{}", run.log);
    let (addr, report) = run.announced_fault("reading unmapped address ");
    // EC 0x25: data abort taken without a change of EL; ESR.ISS.DFSC 0x07:
    // translation fault at level 3 (Arm ARM D24.2.40).
    assert!(report.contains("EC 0x25 (data abort at EL2)"), "{report}");
    assert!(report.contains("ESR 0x96000007"), "{report}");
    assert!(
        report.contains(&format!("FAR {addr}")),
        "FAR not {addr}: {report}"
    );
    assert!(report.contains("ELR 0x"), "{report}");
    assert_eq!(
        run.lines_with("DFSC 0x07 (translation fault), WnR 0")
            .count(),
        1,
        "{}",
        run.log
    );
}

#[test]
fn panic_is_reported_and_fails_the_run() {
    let run = Qemu::scenario("panic").run();
    assert_eq!(run.ending, Ending::Exited(1), "{}", run.log);
    assert_eq!(run.lines_with("[cpu0 FATAL] panic: panicked at").count(), 1);
    assert!(run.log.contains("deliberate panic (vigil.test=panic)"));
}

/// The harness must be able to fail: a scenario that fails is judged
/// failed by the very check the passing scenarios use.
#[test]
fn failing_scenario_is_reported_as_failed() {
    let run = Qemu::scenario("fail")
        .expect_error("ktest: fail: FAIL: deliberate failure (vigil.test=fail)")
        .run();
    assert_eq!(run.ending, Ending::Exited(1));
    let err = run.check(&["ktest: fail: start"]).unwrap_err();
    assert!(err.contains("QEMU exited with status 1"), "{err}");
    assert!(run.log.contains("ktest: fail: FAIL: deliberate failure"));
}

/// A hung run is killed at the timeout and counted as a failure.
#[test]
fn hanging_scenario_is_killed_and_failed() {
    let run = Qemu::scenario("hang")
        .timeout(Duration::from_secs(20))
        .run();
    assert_eq!(run.ending, Ending::TimedOut, "{}", run.log);
    assert!(run.elapsed < Duration::from_secs(45));
    assert!(run.check(&[]).is_err());
    assert!(run.log.contains("hang: spinning forever"), "{}", run.log);
}

#[test]
fn unknown_scenario_and_option_are_reported() {
    let run = Qemu::new("vigil.test=no-such-thing vigil.lgo=debug")
        .expect_error("vigil.test=no-such-thing: no such scenario")
        .run();
    assert_eq!(run.ending, Ending::Exited(1));
    assert_eq!(
        run.lines_with("vigil.test=no-such-thing: no such scenario (known: smp,")
            .count(),
        1,
        "{}",
        run.log
    );
    assert_eq!(
        run.lines_with("ignoring unknown boot option vigil.lgo=debug")
            .count(),
        1
    );
}

#[test]
fn log_level_is_chosen_at_boot() {
    let quiet = Qemu::new("vigil.log=warn vigil.test=smp").run();
    quiet.check(&[]).unwrap();
    assert_eq!(quiet.lines_with("INFO").count(), 0, "{}", quiet.log);
    let bad = Qemu::new("vigil.log=loud").run();
    bad.check(&["vigil.log=loud: not a level"]).unwrap();
}
