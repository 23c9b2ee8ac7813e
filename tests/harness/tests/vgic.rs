//! The virtual GICv3 (issue 5): the acceptance scenarios of the test
//! guest (tests/guests/testguest/src/vgic.rs). Each prints one line per
//! check and "guest: <name>: PASS", and exits 0 only if every check held.

use std::time::Duration;

use vigil_harness::{Guest, Qemu};

/// 1,000 rounds of all-to-all SGIs take ~20 s under TCG.
const IPI_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn ipi_all_to_all_4_vcpus_1000_rounds_each_exactly_once() {
    let run = Qemu::with_guests(&[Guest::test("ipi").cpus(4)])
        .timeout(IPI_TIMEOUT)
        .run();
    run.check(&[
        "[ipi] guest: ipi: 1000 rounds all-to-all among 4 vCPUs",
        "guest: ipi: cpu 0 took SGI 1: 0, SGI 2: 1000, SGI 3: 1000, SGI 4: 1000, broadcast SGI 8: 0, 3000 interrupts in all",
        "guest: ipi: cpu 1 took SGI 1: 1000, SGI 2: 0, SGI 3: 1000, SGI 4: 1000, broadcast SGI 8: 1, 3001 interrupts in all",
        "guest: ipi: cpu 2 took SGI 1: 1000, SGI 2: 1000, SGI 3: 0, SGI 4: 1000, broadcast SGI 8: 1, 3001 interrupts in all",
        "guest: ipi: cpu 3 took SGI 1: 1000, SGI 2: 1000, SGI 3: 1000, SGI 4: 0, broadcast SGI 8: 1, 3001 interrupts in all",
        "guest: ipi: 12000 SGIs, each (target, INTID) exactly 1000, nothing else",
        "guest: ipi: IRM broadcast SGI 8 from cpu 0: taken once by cpus 1-3, not by cpu 0",
        "[ipi] guest: ipi: PASS",
        "vm ipi: powered off (PSCI SYSTEM_OFF), status 0",
    ])
    .unwrap();
}

#[test]
fn prio_64_pending_interrupts_delivered_once_in_priority_order() {
    Qemu::with_guests(&[Guest::test("prio")])
        .run()
        .check(&[
            "guest: prio: 64 interrupts pending at once (16 SGIs, 13 PPIs, 35 SPIs 32..66), 12 priority levels",
            "guest: prio: all 64 delivered, each exactly once",
            "guest: prio: delivered in non-decreasing priority value order",
            "[prio] guest: prio: PASS",
            "vm prio: powered off (PSCI SYSTEM_OFF), status 0",
        ])
        .unwrap();
}

#[test]
fn active_sgi_blocks_until_icactiver_enable_and_priority_change_while_pending() {
    Qemu::with_guests(&[Guest::test("active")])
        .run()
        .check(&[
            "guest: active: EOImode 1: SGI 5 taken at priority 0x60, EOIR without DIR: priority dropped, still active",
            "guest: active: SGI 5 sent again while active: pending and active, not delivered in 200 ms",
            "guest: active: GICR_ICACTIVER0 bit 5 cleared it: the pending SGI 5 was delivered, exactly once",
            "guest: active: SPI 40 pending while disabled: not delivered; enabled: delivered once",
            "guest: active: SPI 41 at 0x80 and SPI 42 at 0x40 pending: 42 taken first",
            "guest: active: SPI 41 raised to 0x20 while pending: 41 taken first",
            "[active] guest: active: PASS",
            "vm active: powered off (PSCI SYSTEM_OFF), status 0",
        ])
        .unwrap();
}

#[test]
fn vtimer_100_deadlines_on_each_of_4_vcpus_never_early() {
    let run = Qemu::with_guests(&[Guest::test("vtimer").cpus(4)])
        .timeout(IPI_TIMEOUT)
        .run();
    run.check(&[
        "guest: vtimer: cpu 0: 100 interrupts, none early",
        "guest: vtimer: cpu 1: 100 interrupts, none early",
        "guest: vtimer: cpu 2: 100 interrupts, none early",
        "guest: vtimer: cpu 3: 100 interrupts, none early",
        "guest: vtimer: 400 interrupts on 4 vCPUs, none early, worst lateness",
        "[vtimer] guest: vtimer: PASS",
        "vm vtimer: powered off (PSCI SYSTEM_OFF), status 0",
    ])
    .unwrap();
}

/// Two vCPUs per physical CPU: the virtual timer's state is saved and
/// restored with each vCPU switch, and a timer expiring while its vCPU is
/// switched out still fires.
#[test]
fn vtimer_two_vcpus_per_cpu() {
    let run = Qemu::with_guests(&[Guest::test("vtimer").cpus(4).pcpus(&[0, 0, 1, 1])])
        .timeout(IPI_TIMEOUT)
        .run();
    run.check(&[
        "guest: vtimer: 400 interrupts on 4 vCPUs, none early, worst lateness",
        "[vtimer] guest: vtimer: PASS",
        "vm vtimer: powered off (PSCI SYSTEM_OFF), status 0",
    ])
    .unwrap();
}

/// The EL1 physical timer (CNTP, PPI 30): deadlines through CVAL and TVAL
/// met and never early, each waking WFI; pending in GICR_ISPENDR0 while the
/// PPI is disabled, not while CNTP_CTL.IMASK is set.
#[test]
fn ptimer_deadlines_met_never_early_pending_visible_while_masked() {
    let run = Qemu::with_guests(&[Guest::test("ptimer")])
        .timeout(IPI_TIMEOUT)
        .run();
    run.check(&[
        "guest: ptimer: cval: 50 deadlines met, none early, each woke WFI",
        "guest: ptimer: tval: 50 deadlines met, none early, each woke WFI",
        "guest: ptimer: masked: expired timer pending in GICR_ISPENDR0 while the PPI is disabled, not pending under IMASK, delivered once enabled",
        "[ptimer] guest: ptimer: 1 rounds, 101 interrupts",
        "[ptimer] guest: ptimer: PASS",
        "vm ptimer: powered off (PSCI SYSTEM_OFF), status 0",
    ])
    .unwrap();
}

#[test]
fn uart_level_spi_redelivered_while_high_not_after_it_drops() {
    Qemu::with_guests(&[Guest::test("uart-level")])
        .run()
        .check(&[
            "guest: uart-level: IMSC.TXIM set: PL011 RIS 0x20, SPI 33 (level) pending",
            "guest: uart-level: GICD_ICPENDR on SPI 33 with the line high: still pending",
            "guest: uart-level: SPI 33 re-delivered after each EOI while the line stayed high: 5 deliveries",
            "guest: uart-level: IMSC cleared before the 5th EOI: line low, no delivery in 200 ms, exactly 5 in all",
            "[uart-level] guest: uart-level: PASS",
            "vm uart-level: powered off (PSCI SYSTEM_OFF), status 0",
        ])
        .unwrap();
}
