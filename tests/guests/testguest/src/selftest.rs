//! Checks of the library itself, runnable on bare QEMU:
//! - `selftest`: `expect_exception` (nothing, UDF, nested, a data abort),
//!   the spin barrier, and every vCPU printing at once (lines must stay
//!   whole: check that every line of the output starts with "guest: ");
//! - `selftest-panic`: a Rust panic prints "guest: PANIC: ..." and exits 1;
//! - `selftest-fault`: an exception nobody expects prints
//!   "guest: PANIC: unexpected sync exception ..." and exits 1.

use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering};

use vigil_guest::exceptions::ec;
use vigil_guest::{cpu, ensure, expect_exception, println, psci, report, BootInfo, SpinBarrier};

const NAME: &str = "selftest";
const LINES: usize = 20;
const TIMEOUT_US: u64 = 5_000_000;

static BARRIER: SpinBarrier = SpinBarrier::new(4);

static DONE: AtomicUsize = AtomicUsize::new(0);

fn udf() {
    // SAFETY: UDF only raises an UNDEF, which the caller expects.
    unsafe { asm!("udf #0", options(nomem, nostack)) };
}

fn chatter(index: usize) {
    BARRIER.wait();
    for i in 0..LINES {
        println!("selftest: cpu {index} line {i:2} of {LINES}: the quick brown fox jumps over the lazy dog");
        // Let the others take the console between lines.
        cpu::wait_until(200, || false);
    }
    BARRIER.wait();
    DONE.fetch_add(1, Ordering::Release);
}

fn secondary(context: u64) -> ! {
    chatter((context & 0xff) as usize);
    cpu::park()
}

pub fn run(boot: &'static BootInfo) -> ! {
    ensure!(
        NAME,
        expect_exception(|| {}).is_none(),
        "an empty closure took an exception"
    );
    let e = expect_exception(udf);
    ensure!(
        NAME,
        matches!(e, Some(e) if e.ec() == ec::UNKNOWN),
        "UDF: {e:?}, expected EC 0"
    );
    let mut inner = None;
    let outer = expect_exception(|| inner = expect_exception(udf));
    ensure!(
        NAME,
        outer.is_none() && inner.is_some(),
        "nested: outer {outer:?} inner {inner:?}"
    );
    let addr = boot.ram.end;
    let e = expect_exception(|| {
        // SAFETY: a load outside RAM, expected to abort.
        unsafe { asm!("ldr {v}, [{a}]", a = in(reg) addr, v = out(reg) _, options(nostack)) };
    });
    ensure!(
        NAME,
        matches!(e, Some(e) if e.is_external_abort_at(addr)),
        "load at {addr:#x}: {e:?}, expected an external abort"
    );
    println!(
        "selftest: expect_exception: none, UDF (EC 0x00), nested, external abort at {addr:#x}"
    );

    let cpus = boot.cpus();
    if cpus.len() >= 4 {
        vigil_guest::set_secondary_main(secondary);

        for (i, &mpidr) in cpus.iter().enumerate().take(4).skip(1) {
            let r = psci::cpu_on(mpidr, i as u64);
            ensure!(NAME, r == psci::SUCCESS, "CPU_ON(cpu {i}) = {r}");
        }
        chatter(0);
        let all = cpu::wait_until(TIMEOUT_US, || DONE.load(Ordering::Acquire) == 4);
        ensure!(
            NAME,
            all,
            "only {} of 4 vCPUs finished printing",
            DONE.load(Ordering::Acquire)
        );
        println!("selftest: 4 vCPUs printed {LINES} lines each at once, through two barriers");
    } else {
        println!("selftest: fewer than 4 vCPUs, no concurrent printing");
    }
    report::pass(NAME)
}

pub fn panic() -> ! {
    let v: [u32; 2] = [1, 2];
    let i = cpu::index() + 2;
    println!("selftest-panic: indexing out of bounds");
    panic!("deliberate panic: index {i}, value {}", v[i % 3])
}

pub fn fault(boot: &'static BootInfo) -> ! {
    println!(
        "selftest-fault: reading {:#x} outside RAM with nothing expecting it",
        boot.ram.end
    );
    // SAFETY: a load outside RAM: the abort is reported by the vectors.
    unsafe { asm!("ldr {v}, [{a}]", a = in(reg) boot.ram.end, v = out(reg) _, options(nostack)) };
    report::fail(
        "selftest-fault",
        format_args!("the load of {:#x} did not abort", boot.ram.end),
    )
}
