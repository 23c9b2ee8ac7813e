//! Vigil on many physical CPUs (issue 22): QEMU `virt` up to its GICv3
//! limit, with its CPUs in clusters of 16 (Aff1 = index / 16) and, past 123
//! CPUs, a second redistributor region at 256 GiB.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;
use vigil_harness::{image, run_with_timeout, workspace_root, Ending, Guest, Qemu, Run};

/// QEMU virt's MPIDR affinity of CPU `i` with GICv3 (hw/arm/virt.c).
fn qemu_mpidr(i: usize) -> u64 {
    (((i / 16) << 8) | (i % 16)) as u64
}

/// Each CPU's "cpuN online: MPIDR 0x..., EL2, MMU on" line, by N: the
/// MPIDRs it reported (a CPU reporting twice shows as two).
fn online_cpus(run: &Run) -> BTreeMap<usize, Vec<u64>> {
    let mut cpus: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for line in run.lines_with(" online: MPIDR ") {
        let Some(rest) = line.split("] cpu").nth(1) else {
            continue;
        };
        let (n, rest) = rest
            .split_once(" online: MPIDR 0x")
            .expect("an online line");
        let (mpidr, tail) = rest.split_once(',').expect("an online line");
        assert_eq!(tail, " EL2, MMU on", "{line}");
        let tag = format!("[cpu{n} ");
        assert!(line.starts_with(&tag), "logged by the CPU itself: {line}");
        cpus.entry(n.parse().expect("a CPU number"))
            .or_default()
            .push(u64::from_str_radix(mpidr, 16).expect("a hex MPIDR"));
    }
    cpus
}

/// Every CPU of `n` reported online exactly once, with QEMU's MPIDR.
fn assert_all_online(run: &Run, n: usize) {
    let cpus = online_cpus(run);
    assert_eq!(cpus.len(), n, "distinct CPUs online\n{}", run.log);
    for (i, mpidrs) in &cpus {
        assert!(*i < n, "cpu{i} of {n}");
        assert_eq!(mpidrs, &vec![qemu_mpidr(*i)], "cpu{i}\n{}", run.log);
    }
}

/// The acceptance of issue 22's physical half: 256 CPUs, no guest, every
/// one online, those past 123 with their redistributors in QEMU's high
/// region.
#[test]
fn every_one_of_256_cpus_comes_online() {
    let run = Qemu::new("")
        .smp(256)
        .timeout(Duration::from_secs(240))
        .run();
    run.check(&[
        "GICR 0x80a0000 (+0xf60000), 0x4000000000 (+0x4000000)",
        "256 redistributors in 2 regions",
        "256 collections mapped",
        "256 of 256 CPUs online",
        "boot complete; no guest configured, exiting",
    ])
    .unwrap();
    assert_all_online(&run, 256);
    eprintln!("256 CPUs: booted and exited in {:?}", run.elapsed);
}

/// The `smp` scenario's own check (each CPU at EL2 with its MMU on) across
/// the boundary of the two redistributor regions.
#[test]
fn smp_scenario_on_124_cpus_spans_both_redistributor_regions() {
    let run = Qemu::scenario("smp")
        .smp(124)
        .timeout(Duration::from_secs(180))
        .run();
    run.check(&[
        "124 redistributors in 2 regions",
        "smp: 124/124 CPUs online at EL2 with the MMU on",
        "ktest: smp: PASS",
    ])
    .unwrap();
    assert_all_online(&run, 124);
}

/// 32 CPUs are two of QEMU's clusters (16 are one): the SGI ring crosses
/// from cluster 0 to 1 and back, broadcasts reach both, and a multicast
/// takes one ICC_SGI1R_EL1 write per cluster and reaches exactly its
/// targets.
#[test]
fn sgis_cross_clusters_at_32_cpus() {
    let run = Qemu::scenario("sgi")
        .smp(32)
        .timeout(Duration::from_secs(120))
        .run();
    run.check(&[
        "sgi: ring: each of 32 CPUs received each of SGIs 0-7 exactly once",
        "sgi: broadcast: each CPU received every other CPU's broadcast exactly once",
        "sgi: multicast to 16 odd-numbered CPUs in 2 clusters: 2 writes, each target received it exactly once",
        "sgi: multicast to 31 other CPUs in 2 clusters: 2 writes, each target received it exactly once",
        "ktest: sgi: PASS",
    ])
    .unwrap();
    assert_all_online(&run, 32);
}

/// LPIs reach CPUs whose redistributors are in the high region: the ITS
/// collections name them, their pending tables work.
#[test]
fn lpis_reach_cpus_in_both_redistributor_regions_at_256_cpus() {
    Qemu::scenario("lpi-storm")
        .smp(256)
        .timeout(Duration::from_secs(240))
        .run()
        .check(&[
            "lpi-storm: 10000 LPIs over 64 events and 64 CPUs (cpu0 to cpu252 of 256), each received exactly once",
            "ktest: lpi-storm: PASS",
        ])
        .unwrap();
}

/// The secondaries' stacks are allocated at boot, outside the image; the
/// guard page under the last one is unmapped all the same.
#[test]
fn guard_page_of_an_allocated_stack_faults() {
    let run = Qemu::scenario("stack-guard").smp(16).run();
    assert_eq!(run.ending, Ending::Exited(1), "{}", run.log);
    let (addr, report) = run.announced_fault("stack-guard: reading cpu15's guard page at ");
    assert!(report.contains("ESR 0x96000007"), "{report}");
    assert!(report.contains(&format!("FAR {addr}")), "{report}");
}

/// `scripts/qemu --smp` takes 1 to 512 CPUs; anything else is one error
/// line and exit 2 before QEMU starts.
#[test]
fn scripts_qemu_smp_is_checked() {
    for bad in ["0", "513", "many", "-1"] {
        let mut cmd = Command::new(workspace_root().join("scripts/qemu"));
        cmd.args(["--smp", bad]).arg(image());
        let run = run_with_timeout(cmd, Duration::from_secs(30));
        assert_eq!(run.ending, Ending::Exited(2), "--smp {bad}: {}", run.log);
        assert!(
            run.log
                .contains(&format!("--smp {bad}: expected 1 to 512 CPUs")),
            "{}",
            run.log
        );
    }
}

/// A guest's vCPUs on CPUs of four clusters of a 64-CPU board: every IPI
/// between them kicks a CPU in another cluster (one SGI write per target
/// cluster), and none is lost or doubled.
#[test]
fn guest_ipis_between_vcpus_in_four_clusters() {
    let run = Qemu::with_guests(&[Guest::test("ipi").cpus(4).pcpus(&[0, 17, 35, 63])])
        .smp(64)
        .timeout(Duration::from_secs(240))
        .run();
    run.check(&[
        "vm ipi: 4 vCPUs on CPUs [0, 17, 35, 63]",
        "guest: ipi: 12000 SGIs, each (target, INTID) exactly 1000, nothing else",
        "guest: ipi: IRM broadcast SGI 8 from cpu 0: taken once by cpus 1-3, not by cpu 0",
        "[ipi] guest: ipi: PASS",
        "vm ipi: powered off (PSCI SYSTEM_OFF), status 0",
    ])
    .unwrap();
    eprintln!("ipi across four clusters: {:?}", run.elapsed);
}

/// GICv4's redistributors are four frames (GICR_TYPER.VLPIS), so QEMU's
/// low region holds 61: at 64 CPUs the last three are in the high region,
/// and the walk must step 256 KiB, not 128 KiB.
#[test]
fn gicv4_redistributors_of_four_frames_in_two_regions() {
    Qemu::scenario("lpi-storm")
        .smp(64)
        .qemu_args(&["-machine".into(), "gic-version=4".into()])
        .timeout(Duration::from_secs(120))
        .run()
        .check(&[
            "GIC: GICv4",
            "64 redistributors in 2 regions",
            "64 of 64 CPUs online",
            "lpi-storm: 10000 LPIs over 64 events and 64 CPUs (cpu0 to cpu63 of 64), each received exactly once",
            "ktest: lpi-storm: PASS",
        ])
        .unwrap();
}

/// Issue 22's guest half: a VM with 64 vCPUs, one per CPU of a 64-CPU
/// board, in four clusters of 16 of its own (MPIDR Aff1 = i / 16): every
/// ordered pair of vCPUs exchanges SGIs (target lists in every cluster,
/// 9 phases a round), none lost or doubled, and an IRM broadcast reaches
/// the 63 others once.
#[test]
fn guest_with_64_vcpus_ipis_all_to_all() {
    let pcpus: Vec<usize> = (0..64).collect();
    let run = Qemu::with_guests(&[Guest::test("ipi")
        .cpus(64)
        .pcpus(&pcpus)
        .bootargs("vigil.guest=ipi vigil.ipi.rounds=3")])
    .smp(64)
    .timeout(Duration::from_secs(300))
    .run();
    run.check(&[
        "vm ipi: 64 vCPUs on CPUs [0, 1, 2,",
        "guest: ipi: 3 rounds all-to-all among 64 vCPUs",
        "(9 phases per round, 4 clusters)",
        "guest: ipi: 12096 SGIs, each of the 4032 (sender, target) pairs exactly 3 times, nothing else",
        "guest: ipi: IRM broadcast SGI 8 from cpu 0: taken once by cpus 1-63, not by cpu 0",
        "[ipi] guest: ipi: PASS",
        "vm ipi: powered off (PSCI SYSTEM_OFF), status 0",
    ])
    .unwrap();
    eprintln!("ipi among 64 vCPUs: {:?}", run.elapsed);
}

/// 32 vCPUs oversubscribed 2:1 on 16 CPUs (two vCPUs of one guest
/// cluster on each CPU): the same exactness while vCPUs that wait are
/// switched out.
#[test]
fn guest_with_32_vcpus_on_16_cpus_ipis_all_to_all() {
    let pcpus: Vec<usize> = (0..32).map(|v| v % 16).collect();
    let run = Qemu::with_guests(&[Guest::test("ipi")
        .cpus(32)
        .pcpus(&pcpus)
        .bootargs("vigil.guest=ipi vigil.ipi.rounds=3")])
    .smp(16)
    .timeout(Duration::from_secs(300))
    .run();
    run.check(&[
        "guest: ipi: 3 rounds all-to-all among 32 vCPUs",
        "(5 phases per round, 2 clusters)",
        "guest: ipi: 2976 SGIs, each of the 992 (sender, target) pairs exactly 3 times, nothing else",
        "guest: ipi: IRM broadcast SGI 8 from cpu 0: taken once by cpus 1-31, not by cpu 0",
        "[ipi] guest: ipi: PASS",
    ])
    .unwrap();
    eprintln!("ipi among 32 vCPUs on 16 CPUs: {:?}", run.elapsed);
}

/// A guest's cpus= is 1 to 64 and its pinning must fit the board: one
/// error line and exit 2 before QEMU starts. Without --smp the board
/// follows the pinning (here 20 CPUs for a vCPU on CPU 19).
#[test]
fn scripts_qemu_checks_vcpus_and_pinning() {
    let tg = vigil_harness::test_guest().display().to_string();
    for (args, why) in [
        (
            vec![format!("name=big,kernel={tg},cpus=65")],
            "guest 0 (big): cpus=65: expected 1 to 64 vCPUs",
        ),
        (
            vec![format!("name=p,kernel={tg},cpus=2,pcpus=0")],
            "guest 0 (p): pcpus=0 names 1 CPUs for 2 vCPUs",
        ),
        (
            vec![
                "--smp".into(),
                "4".into(),
                format!("name=p,kernel={tg},cpus=2,pcpus=0:9"),
            ],
            "guest 0 (p): a vCPU is pinned to CPU 9, but --smp 4 gives the board CPUs 0-3",
        ),
    ] {
        let mut cmd = Command::new(workspace_root().join("scripts/qemu"));
        let (opts, spec) = args.split_at(args.len() - 1);
        cmd.args(opts).arg("--guest").arg(&spec[0]).arg(image());
        let run = run_with_timeout(cmd, Duration::from_secs(30));
        assert_eq!(run.ending, Ending::Exited(2), "{args:?}: {}", run.log);
        assert!(run.log.contains(why), "{args:?}: {}", run.log);
    }
    let run = Qemu::with_guests(&[Guest::test("hello").cpus(2).pcpus(&[0, 19])]).run();
    run.check(&["20 of 20 CPUs online", "vm hello: 2 vCPUs on CPUs [0, 19]"])
        .unwrap();
}
