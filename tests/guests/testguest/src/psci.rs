//! `psci`: CPU_ON/CPU_OFF/AFFINITY_INFO on a 4-vCPU VM, and three vCPUs
//! racing CPU_ON for one target.

use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use vigil_guest::psci::{self, error_name};
use vigil_guest::{cpu, ensure, fail, println, report, BootInfo, SpinBarrier, MAX_CPUS};

const NAME: &str = "psci";
/// How long vCPU 0 waits for anything another vCPU does.
const TIMEOUT_US: u64 = 5_000_000;
/// An MPIDR no VM of Vigil gives a vCPU (Aff0 = 128).
const NO_SUCH_MPIDR: u64 = 0x80;
/// Not RAM in any VM: CPU_ON there must fail with INVALID_ADDRESS.
const BAD_ENTRY: u64 = 0x1000;

/// How often each vCPU ran its first-boot path.
static UP: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// The MPIDR each secondary saw, to check against the device tree.
static MPIDR_SEEN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];
/// vCPU 0 asks vCPU 3 to CPU_OFF.
static OFF3: AtomicBool = AtomicBool::new(false);
/// vCPU 0 asks vCPUs 1 and 2 to join the race.
static RACE_GO: AtomicBool = AtomicBool::new(false);
static RACE_BARRIER: SpinBarrier = SpinBarrier::new(3);
static RACE_RESULT: [AtomicI64; 3] = [const { AtomicI64::new(i64::MIN) }; 3];
static RACE_DONE: AtomicUsize = AtomicUsize::new(0);
/// The context id vCPU 3 got when it came back (0 = not yet).
static CPU3_CONTEXT: AtomicU64 = AtomicU64::new(0);
/// The MPIDR of vCPU 3, for the racers.
static MPIDR3: AtomicU64 = AtomicU64::new(0);

/// The context id racer `racer` (a vCPU index 0..2) passes: the low byte is
/// the target's stack slot (3), the next one names the racer.
fn race_context(racer: usize) -> u64 {
    3 | ((0xa0 + racer as u64) << 8)
}

fn secondary(context: u64) -> ! {
    let index = (context & 0xff) as usize;
    if index == 3 && UP[3].load(Ordering::Acquire) > 0 {
        // Second life: started by the race winner.
        println!("cpu 3 up again with context id {context:#x}");
        CPU3_CONTEXT.store(context, Ordering::Release);
        cpu::park();
    }
    println!("cpu {index} up");
    MPIDR_SEEN[index].store(cpu::mpidr(), Ordering::Relaxed);
    UP[index].fetch_add(1, Ordering::Release);
    match index {
        3 => {
            while !OFF3.load(Ordering::Acquire) {
                core::hint::spin_loop();
            }
            let r = psci::cpu_off();
            fail!(NAME, "CPU_OFF on cpu 3 returned {r} ({})", error_name(r));
        }
        1 | 2 => {
            while !RACE_GO.load(Ordering::Acquire) {
                core::hint::spin_loop();
            }
            race(index);
            cpu::park()
        }
        _ => cpu::park(),
    }
}

fn race(racer: usize) {
    let target = MPIDR3.load(Ordering::Relaxed);
    RACE_BARRIER.wait();
    let r = psci::cpu_on(target, race_context(racer));
    RACE_RESULT[racer].store(r, Ordering::Relaxed);
    RACE_DONE.fetch_add(1, Ordering::Release);
}

pub fn run(boot: &'static BootInfo) -> ! {
    let version = psci::version();
    ensure!(
        NAME,
        version == 0x10001,
        "PSCI_VERSION = {version:#x}, expected 0x10001"
    );
    println!("psci: version 1.1");

    let f = psci::features(psci::CPU_ON_64);
    ensure!(NAME, f == 0, "PSCI_FEATURES(CPU_ON_64) = {f}, expected 0");
    let f = psci::features(psci::CPU_SUSPEND_64);
    if boot.vigil {
        ensure!(
            NAME,
            f == psci::NOT_SUPPORTED,
            "PSCI_FEATURES(CPU_SUSPEND_64) = {f}, expected -1"
        );
        println!("psci: FEATURES: CPU_ON_64 0, CPU_SUSPEND_64 NOT_SUPPORTED");
    } else {
        println!("psci: FEATURES: CPU_ON_64 0, CPU_SUSPEND_64 {f} (not checked: no hypervisor)");
    }

    let cpus = boot.cpus();
    ensure!(
        NAME,
        cpus.len() >= 4,
        "{} vCPUs in the device tree, need 4",
        cpus.len()
    );
    ensure!(
        NAME,
        cpus[0] == cpu::mpidr(),
        "vCPU 0 has MPIDR {:#x}, the tree says {:#x}",
        cpu::mpidr(),
        cpus[0]
    );
    ensure!(
        NAME,
        !cpus.contains(&NO_SUCH_MPIDR),
        "MPIDR {NO_SUCH_MPIDR:#x} exists"
    );
    MPIDR3.store(cpus[3], Ordering::Relaxed);
    vigil_guest::set_secondary_main(secondary);

    let r = psci::cpu_on(NO_SUCH_MPIDR, 1);
    ensure!(
        NAME,
        r == psci::INVALID_PARAMETERS,
        "CPU_ON({NO_SUCH_MPIDR:#x}) = {r} ({}), expected INVALID_PARAMETERS",
        error_name(r)
    );
    println!("psci: CPU_ON of MPIDR {NO_SUCH_MPIDR:#x}: INVALID_PARAMETERS");

    if boot.vigil {
        let r = psci::cpu_on_raw(cpus[1], BAD_ENTRY, 1);
        ensure!(
            NAME,
            r == psci::INVALID_ADDRESS,
            "CPU_ON(cpu 1, entry {BAD_ENTRY:#x}) = {r} ({}), expected INVALID_ADDRESS",
            error_name(r)
        );
        let a = psci::affinity_info(cpus[1]);
        ensure!(
            NAME,
            a == psci::AFFINITY_OFF,
            "AFFINITY_INFO(cpu 1) = {a} after a failed CPU_ON, expected 1 (OFF)"
        );
        println!("psci: CPU_ON with entry {BAD_ENTRY:#x}: INVALID_ADDRESS, cpu 1 stays OFF");
    } else {
        // QEMU's own PSCI does not check the entry point: cpu 1 would run
        // whatever is at 0x1000.
        println!("psci: CPU_ON with entry {BAD_ENTRY:#x}: not checked (no hypervisor)");
    }

    for (i, &mpidr) in cpus.iter().enumerate().take(4).skip(1) {
        let a = psci::affinity_info(mpidr);
        ensure!(
            NAME,
            a == psci::AFFINITY_OFF,
            "AFFINITY_INFO(cpu {i}) = {a} before CPU_ON, expected 1 (OFF)"
        );
        let r = psci::cpu_on(mpidr, i as u64);
        ensure!(
            NAME,
            r == psci::SUCCESS,
            "CPU_ON(cpu {i}) = {r} ({})",
            error_name(r)
        );
        ensure!(
            NAME,
            cpu::wait_until(TIMEOUT_US, || UP[i].load(Ordering::Acquire) > 0),
            "cpu {i} did not come up"
        );
        let seen = MPIDR_SEEN[i].load(Ordering::Relaxed);
        ensure!(
            NAME,
            seen == mpidr,
            "cpu {i} runs with MPIDR {seen:#x}, the tree says {mpidr:#x}"
        );
        let a = psci::affinity_info(mpidr);
        ensure!(
            NAME,
            a == psci::AFFINITY_ON,
            "AFFINITY_INFO(cpu {i}) = {a} once up, expected 0 (ON)"
        );
    }
    println!("psci: cpus 1..3 on, AFFINITY_INFO ON for each");

    let r = psci::cpu_on(cpus[1], 1);
    ensure!(
        NAME,
        r == psci::ALREADY_ON,
        "CPU_ON(cpu 1) again = {r} ({}), expected ALREADY_ON",
        error_name(r)
    );
    println!("psci: CPU_ON of a running vCPU: ALREADY_ON");

    OFF3.store(true, Ordering::Release);
    let off = cpu::wait_until(TIMEOUT_US, || {
        psci::affinity_info(cpus[3]) == psci::AFFINITY_OFF
    });
    ensure!(
        NAME,
        off,
        "AFFINITY_INFO(cpu 3) = {} after its CPU_OFF, expected 1 (OFF)",
        psci::affinity_info(cpus[3])
    );
    println!("psci: cpu 3 called CPU_OFF, AFFINITY_INFO OFF");

    RACE_GO.store(true, Ordering::Release);
    race(0);
    ensure!(
        NAME,
        cpu::wait_until(TIMEOUT_US, || RACE_DONE.load(Ordering::Acquire) == 3),
        "the racers did not finish"
    );
    let results: [i64; 3] = core::array::from_fn(|i| RACE_RESULT[i].load(Ordering::Relaxed));
    let count = |code| results.iter().filter(|&&r| r == code).count();
    let (success, already_on, pending) = (
        count(psci::SUCCESS),
        count(psci::ALREADY_ON),
        count(psci::ON_PENDING),
    );
    for (racer, r) in results.iter().enumerate() {
        println!(
            "psci: race: cpu {racer} (context id {:#x}): {}",
            race_context(racer),
            error_name(*r)
        );
    }
    if boot.vigil || success < 2 {
        // QEMU's own PSCI may answer ON_PENDING while the winner's CPU_ON is
        // in flight; Vigil answers ALREADY_ON.
        let losers_ok = already_on == 2 || (!boot.vigil && already_on + pending == 2);
        ensure!(
            NAME,
            success == 1 && losers_ok,
            "race: results {results:?}, expected one SUCCESS and two ALREADY_ON"
        );
        if pending == 0 {
            println!("psci: race: 1 SUCCESS, 2 ALREADY_ON");
        } else {
            println!(
                "psci: race: 1 SUCCESS, {already_on} ALREADY_ON, {pending} ON_PENDING (bare QEMU)"
            );
        }
    } else {
        // QEMU's arm_set_cpu_on() marks the target ON only once it runs, so
        // racing CPU_ONs can all succeed there.
        println!(
            "psci: race: {success} SUCCESS, {already_on} ALREADY_ON, {pending} ON_PENDING: not checked (no hypervisor; QEMU's PSCI does not serialise CPU_ON)"
        );
    }

    let back = cpu::wait_until(TIMEOUT_US, || CPU3_CONTEXT.load(Ordering::Acquire) != 0);
    ensure!(NAME, back, "cpu 3 did not come back after the race");
    let got = CPU3_CONTEXT.load(Ordering::Acquire);
    let mut winners = (0..3)
        .filter(|&r| results[r] == psci::SUCCESS)
        .map(race_context);
    ensure!(
        NAME,
        winners.any(|c| c == got),
        "cpu 3 got context id {got:#x}, no winner passed it (results {results:?})"
    );
    ensure!(
        NAME,
        UP[3].load(Ordering::Relaxed) == 1,
        "cpu 3 ran its first-boot path twice"
    );
    println!("psci: cpu 3 came back with the winner's context id {got:#x}");
    report::pass(NAME)
}
