//! Guests at EL1 behind stage 2 (issue 4): PSCI, MMIO emulation, isolation
//! between VMs, and guests that misbehave. The test guest is
//! tests/guests/testguest; each scenario prints "guest: <name>: PASS".

use std::time::Duration;
use vigil_harness::{Ending, Guest, Qemu};

#[test]
fn psci_cpu_on_race_affinity_info_cpu_off_and_system_off() {
    let run = Qemu::with_guests(&[Guest::test("psci").cpus(4)]).run();
    run.check(&[
        "[psci] guest: psci: version 1.1",
        "[psci] guest: cpu 1 up",
        "[psci] guest: cpu 2 up",
        "[psci] guest: cpu 3 up",
        "[psci] guest: psci: CPU_ON of MPIDR 0x80: INVALID_PARAMETERS",
        "[psci] guest: psci: CPU_ON with entry 0x1000: INVALID_ADDRESS",
        "[psci] guest: psci: CPU_ON of a running vCPU: ALREADY_ON",
        "[psci] guest: psci: cpu 3 called CPU_OFF, AFFINITY_INFO OFF",
        "[psci] guest: psci: race: 1 SUCCESS, 2 ALREADY_ON",
        "[psci] guest: psci: cpu 3 came back with the winner's context id",
        "[psci] guest: psci: PASS",
        "vm psci: powered off (PSCI SYSTEM_OFF), status 0",
    ])
    .unwrap();
    assert_eq!(run.lines_with("guest: cpu 3 up").count(), 2, "{}", run.log);
}

#[test]
fn mmio_emulation_every_width_sign_and_zero_register() {
    Qemu::with_guests(&[Guest::test("mmio").test_device()])
        .run()
        .check(&[
            "guest: mmio: scratch: widths 1/2/4/8 read back",
            "guest: mmio: signed loads: ldrsb x/w, ldrsh x/w, ldrsw sign-extend correctly",
            "guest: mmio: unsigned loads: ldrb/ldrh/ldr w/ldr x zero-extend",
            "guest: mmio: zero register stores: str xzr, str wzr, strh wzr, strb wzr write zeros",
            "guest: mmio: zero register loads: ldr xzr and ldr wzr reach the device",
            "[mmio] guest: mmio: PASS",
        ])
        .unwrap();
}

/// VMs at once on different CPUs, each probing every 64 MiB outside its
/// RAM (where the other VMs' memory and the hypervisor's live, in host
/// physical terms): every probe aborts inside the prober, and each VM's own
/// RAM pattern survives the others' probing; a third VM runs its own test
/// to the end meanwhile.
#[test]
fn vms_cannot_touch_each_others_memory() {
    let run = Qemu::with_guests(&[
        Guest::test("isolation").named("a").pcpus(&[0]),
        Guest::test("isolation").named("b").pcpus(&[1]),
        Guest::test("mmio")
            .named("other")
            .cpus(2)
            .pcpus(&[2, 3])
            .test_device(),
    ])
    .run();
    run.check(&[
        "[a] guest: isolation: 64 probes outside RAM aborted",
        "[a] guest: isolation: the pattern in RAM is intact",
        "[a] guest: isolation: PASS",
        "[b] guest: isolation: 64 probes outside RAM aborted",
        "[b] guest: isolation: the pattern in RAM is intact",
        "[b] guest: isolation: PASS",
        "[other] guest: mmio: PASS",
        "all VMs stopped",
    ])
    .unwrap();
    assert!(run.lines_with("injecting an external abort").count() >= 128);
}

/// A guest that does unhandled things gets the architected error, then is
/// stopped alone when it can no longer take exceptions; the other VM
/// finishes, and the run reports the stopped VM in its status.
#[test]
fn misbehaving_guest_is_stopped_alone() {
    let run = Qemu::with_guests(&[
        Guest::test("unhandled").named("bad").pcpus(&[1]),
        Guest::test("mmio").named("good").pcpus(&[2]).test_device(),
    ])
    .expect_error("vm bad: stopped: vCPU 0 cannot fetch its exception vectors")
    .run();
    assert_eq!(run.ending, Ending::Exited(2), "{}", run.log);
    for line in [
        "[bad] guest: unhandled: unknown hypercall 0xc60000ff: NOT_SUPPORTED (-1)",
        "[bad] guest: unhandled: unknown SMCCC function 0x82000000: NOT_SUPPORTED (-1)",
        "[bad] guest: unhandled: mrs S3_1_C15_C0_0: UNDEF (EC 0x00)",
        "[bad] guest: unhandled: expecting to be stopped",
        "vm bad: stopped: vCPU 0 cannot fetch its exception vectors (VBAR_EL1 0x1000",
        "[good] guest: mmio: PASS",
        "vm good: powered off (PSCI SYSTEM_OFF), status 0",
        "all VMs stopped",
    ] {
        assert_eq!(run.lines_with(line).count(), 1, "{line:?} in\n{}", run.log);
    }
    assert_eq!(run.lines_with("guest: unhandled: FAIL").count(), 0);
}

#[test]
fn a_guest_sets_the_exit_status() {
    // The scenario name is unknown: the guest reports it and exits 1
    // through VIGIL_EXIT_STATUS and SYSTEM_OFF.
    let run = Qemu::with_guests(&[Guest::test("no-such-scenario")])
        .expect_error("vm no-such-scenario: stopped: powered off (PSCI SYSTEM_OFF), status 1")
        .run();
    assert_eq!(run.ending, Ending::Exited(1), "{}", run.log);
    assert_eq!(
        run.lines_with("vm no-such-scenario: stopped: powered off (PSCI SYSTEM_OFF), status 1")
            .count(),
        1,
        "{}",
        run.log
    );
}

#[test]
fn bad_guest_description_is_one_clear_error() {
    // More vCPUs pinned than CPUs exist. scripts/qemu would give the board
    // the 7 CPUs this needs (or refuse a --smp that is too small); QEMU's
    // own -smp after it (the later one wins) keeps the board at 4, so
    // that Vigil's check is what answers.
    let run = Qemu::with_guests(&[Guest::test("hello").cpus(2).pcpus(&[0, 6])])
        .qemu_args(&["-smp".into(), "4".into()])
        .run();
    assert_eq!(run.ending, Ending::Exited(1), "{}", run.log);
    assert_eq!(
        run.lines_with("boot: creating VMs: vCPU pinned to physical CPU 6, which is not online")
            .count(),
        1,
        "{}",
        run.log
    );
}

/// Two VMs time-sliced on one physical CPU fill their registers with
/// different patterns and check them after being switched out hundreds of
/// times: no register leaks between VMs (a mutation that drops TPIDR_EL0
/// from the switch makes this fail). A third VM on the same CPU arms its
/// EL1 physical timer over and over: the others' CNTP_CVAL/CTL keep their
/// own values and no PPI 30 becomes pending for them.
#[test]
fn world_switch_leaks_no_register_between_vms_on_one_cpu() {
    let run = Qemu::with_guests(&[
        Guest::test("regs")
            .named("regs1")
            .pcpus(&[1])
            .bootargs("vigil.guest=regs vigil.seed=1"),
        Guest::test("regs")
            .named("regs2")
            .pcpus(&[1])
            .bootargs("vigil.guest=regs vigil.seed=2"),
        Guest::test("ptimer")
            .pcpus(&[1])
            .bootargs("vigil.guest=ptimer vigil.ptimer.rounds=3"),
    ])
    .timeout(Duration::from_secs(240))
    .run();
    run.check(&[
        "[regs1] guest: regs: 6 rounds of 20000000 spins: x0-x17, x20-x28, q0-q31, FPCR and 14 EL1/EL0 system registers intact (seed 1)",
        "[regs2] guest: regs: 6 rounds of 20000000 spins: x0-x17, x20-x28, q0-q31, FPCR and 14 EL1/EL0 system registers intact (seed 2)",
        "[regs1] guest: regs: PASS",
        "[regs2] guest: regs: PASS",
        "[ptimer] guest: ptimer: 3 rounds, 303 interrupts",
        "[ptimer] guest: ptimer: PASS",
    ])
    .unwrap();
    let switches: u64 = run
        .lines_with("vCPU switches")
        .next()
        .and_then(|l| l.split(" and ").nth(1))
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no switch count:\n{}", run.log));
    assert!(switches >= 20, "only {switches} switches:\n{}", run.log);
}

/// Two VMs on one physical CPU arm hardware breakpoints at different
/// addresses that both execute: each takes only its own, and keeps its
/// breakpoint, watchpoint and OS-lock state across switches; the PMU,
/// absent from their ID registers, is UNDEFINED.
#[test]
fn debug_registers_are_per_vm_and_the_pmu_is_absent() {
    let run = Qemu::with_guests(&[
        Guest::test("debug")
            .named("debug1")
            .pcpus(&[1])
            .bootargs("vigil.guest=debug vigil.seed=1"),
        Guest::test("debug")
            .named("debug2")
            .pcpus(&[1])
            .bootargs("vigil.guest=debug vigil.seed=2"),
    ])
    .run();
    run.check(&[
        "[debug1] guest: debug: PMCR_EL0, PMCCNTR_EL0, PMUSERENR_EL0 are UNDEFINED (no PMU)",
        "[debug1] guest: debug: 6 rounds: own breakpoint fired every time, the other VM's never; breakpoint, watchpoint and OS lock state intact (seed 1)",
        "[debug2] guest: debug: 6 rounds: own breakpoint fired every time, the other VM's never; breakpoint, watchpoint and OS lock state intact (seed 2)",
        "[debug1] guest: debug: PASS",
        "[debug2] guest: debug: PASS",
    ])
    .unwrap();
}

/// PSCI SYSTEM_RESET restarts the VM: images reloaded, the virtual GIC
/// back at its reset state, RAM outside the image kept.
#[test]
fn system_reset_restarts_the_vm() {
    let run = Qemu::with_guests(&[Guest::test("reset").cpus(2)]).run();
    run.check(&[
        "[reset] guest: reset: first boot: GICD_CTLR",
        "vm reset: reset requested by vCPU 0 (PSCI SYSTEM_RESET)",
        "vm reset: reset: images reloaded, vCPU 0 restarts at 0x40080000",
        "[reset] guest: reset: second boot after SYSTEM_RESET: RAM kept, GICD_CTLR 0x50 (reset)",
        "[reset] guest: reset: PASS",
    ])
    .unwrap();
}

/// Issue 19, item 6: when the VM with the focus powers off, typing goes to
/// a VM still running (and the console says so), instead of being lost.
#[test]
fn focus_moves_on_when_its_vm_powers_off() {
    let run = Qemu::with_guests(&[
        Guest::test("echo").named("first").pcpus(&[0]),
        Guest::test("echo").named("second").pcpus(&[1]),
    ])
    .type_after_nth("guest: echo: ready", 2, "quit\n")
    .type_after("console input now goes to vm second", "world\nquit\n")
    .run();
    run.check(&[
        "[first] guest: echo: PASS",
        "console input now goes to vm second",
        "[second] guest: echo: world",
        "[second] guest: echo: PASS",
    ])
    .unwrap();
}

/// Ctrl-A d logs where every physical CPU and vCPU is and what interrupts
/// each vCPU has (the harness types it when a run times out, so that a
/// hang says where it is); the guests run on, and the keys reach no guest.
#[test]
fn ctrl_a_d_dumps_every_cpu_and_vcpu_and_the_guests_run_on() {
    let run = Qemu::with_guests(&[
        Guest::test("echo").named("first").pcpus(&[0]),
        Guest::test("echo").named("second").pcpus(&[1]),
    ])
    .type_after_nth("guest: echo: ready", 2, "\x01d")
    .type_after("  vm second: Running", "hello\nquit\n")
    .type_after("console input now goes to vm second", "quit\n")
    .run();
    run.check(&[
        "state dump: ",
        "  cpu0: vm first vcpu 0 loaded, run queue Some(1)",
        "  cpu1: vm second vcpu 0 loaded, run queue Some(1)",
        "  vm first: Running, vITS commands unfinished false",
        "    vcpu 0 on cpu0: On, running true, waiting false, ",
        "    vcpu 0 on cpu1: On, running true, waiting false, ",
        "[first] guest: echo: hello",
        "[first] guest: echo: PASS",
        "[second] guest: echo: PASS",
    ])
    .unwrap();
    // Every vCPU line has its vGIC state (the lock was free to read).
    assert_eq!(run.lines_with("; vGIC: grp0 ").count(), 2, "{}", run.log);
    assert_eq!(run.lines_with("echo: \u{1}").count(), 0, "{}", run.log);
}

/// Console input goes to the VM with the focus; Ctrl-A n moves the focus
/// to the next VM.
#[test]
fn console_focus_moves_between_vms() {
    let run = Qemu::with_guests(&[
        Guest::test("echo").named("first").pcpus(&[0]),
        Guest::test("echo").named("second").pcpus(&[1]),
    ])
    .type_after_nth("guest: echo: ready", 2, "hello\n")
    .type_after("[first] guest: echo: hello", "\x01n")
    .type_after("console input now goes to vm second", "world\nquit\n")
    .type_after("[second] guest: echo: PASS", "\x01nquit\n")
    .run();
    run.check(&[
        "[first] guest: echo: hello",
        "console input now goes to vm second",
        "[second] guest: echo: world",
        "[second] guest: echo: PASS",
        "console input now goes to vm first",
        "[first] guest: echo: quit",
        "[first] guest: echo: PASS",
    ])
    .unwrap();
    assert_eq!(
        run.lines_with("[second] guest: echo: hello").count(),
        0,
        "{}",
        run.log
    );
    assert_eq!(
        run.lines_with("[first] guest: echo: world").count(),
        0,
        "{}",
        run.log
    );
}
