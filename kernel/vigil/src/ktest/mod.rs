//! In-kernel test scenarios, chosen at boot with `vigil.test=<name>`.
//!
//! One hypervisor image serves every scenario (building one per scenario
//! would be slow). Each scenario ends the run through `qemu-exit`; the host
//! harness (`tests/harness`) checks the exit status and the serial log.

use core::sync::atomic::Ordering;
use vigil_platform::Platform;

use crate::{arch, exit, mm, percpu};

mod gic;

type Scenario = fn(&Platform<'_>) -> Result<(), &'static str>;

/// Every scenario, by name.
const SCENARIOS: &[(&str, Scenario)] = &[
    ("smp", smp),
    ("memory", memory),
    ("sgi", gic::sgi),
    ("timer", gic::timer),
    ("lpi", gic::lpi),
    ("lpi-storm", gic::lpi_storm),
    ("its-wrap", gic::its_wrap),
    ("its-stall", gic::its_stall),
    ("data-abort", data_abort),
    ("stack-guard", stack_guard),
    ("panic", deliberate_panic),
    ("fail", deliberate_failure),
    ("hang", hang),
];

/// Run the named scenario and end the run with its status.
pub fn run(name: &str, platform: &Platform<'_>) -> ! {
    let Some((_, scenario)) = SCENARIOS.iter().find(|(n, _)| *n == name) else {
        log::error!(
            "vigil.test={name}: no such scenario (known: {})",
            Names(SCENARIOS)
        );
        exit::exit_failure();
    };
    log::info!("ktest: {name}: start");
    match scenario(platform) {
        Ok(()) => {
            log::info!("ktest: {name}: PASS");
            exit::exit_success()
        }
        Err(why) => {
            log::error!("ktest: {name}: FAIL: {why}");
            exit::exit_failure()
        }
    }
}

struct Names(&'static [(&'static str, Scenario)]);

impl core::fmt::Display for Names {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, (n, _)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(n)?;
        }
        Ok(())
    }
}

/// Every CPU of the device tree is online, each at EL2 with its MMU on
/// (each CPU checked that itself when it came up).
fn smp(p: &Platform<'_>) -> Result<(), &'static str> {
    let want = p.cpus.len();
    let ok = arch::wait_until(10_000, || {
        (0..want).all(|i| percpu::get(i).el2_mmu_on.load(Ordering::Acquire))
    });
    log::info!(
        "smp: {}/{} CPUs online at EL2 with the MMU on",
        (0..want)
            .filter(|&i| percpu::get(i).el2_mmu_on.load(Ordering::Acquire))
            .count(),
        want
    );
    if ok {
        Ok(())
    } else {
        Err("not every CPU came up at EL2 with the MMU on")
    }
}

/// The frame allocator hands out zeroed, writable, distinct frames and
/// takes them back; the heap works.
fn memory(_: &Platform<'_>) -> Result<(), &'static str> {
    let before = mm::free_frame_count();
    let a = mm::alloc_frames(16, 64 * 1024).map_err(|_| "allocating 16 frames failed")?;
    let b = mm::alloc_frames(1, 4096).map_err(|_| "allocating 1 frame failed")?;
    if a % (64 * 1024) != 0 || (b >= a && b < a + 16 * 4096) {
        return Err("frames misaligned or overlapping");
    }
    // SAFETY: `a` is 16 frames of RAM just allocated to this test.
    let frames = unsafe { core::slice::from_raw_parts_mut(a as *mut u64, 16 * 512) };
    if frames.iter().any(|&w| w != 0) {
        return Err("allocated frames are not zeroed");
    }
    frames
        .iter_mut()
        .enumerate()
        .for_each(|(i, w)| *w = i as u64);
    if frames.iter().enumerate().any(|(i, &w)| w != i as u64) {
        return Err("allocated frames do not hold what was written");
    }
    if mm::free_frame_count() != before - 17 {
        return Err("free count did not drop by 17");
    }
    mm::free_frames(a, 16).map_err(|_| "freeing 16 frames failed")?;
    mm::free_frames(b, 1).map_err(|_| "freeing 1 frame failed")?;
    if mm::free_frames(b, 1).is_ok() {
        return Err("a double free was accepted");
    }
    if mm::free_frame_count() != before {
        return Err("free count not restored");
    }
    let v: alloc::vec::Vec<u64> = (0..100_000).collect();
    if v.iter().sum::<u64>() != 4_999_950_000 {
        return Err("heap vector corrupted");
    }
    log::info!(
        "memory: {} frames free, frame and heap checks passed",
        before
    );
    Ok(())
}

/// Read the unmapped guard page under CPU 0's stack: the exception report
/// must name a data abort at EL2, a translation fault, and this address.
fn data_abort(_: &Platform<'_>) -> Result<(), &'static str> {
    let addr = arch::boot::stack_guard(0) + 0x10;
    log::info!("data-abort: reading unmapped address {addr:#018x}");
    // SAFETY: deliberately faults; the exception handler ends the run and
    // control never returns here.
    let v = unsafe { core::ptr::read_volatile(addr as *const u64) };
    log::error!("data-abort: read returned {v:#x}");
    Err("reading an unmapped address did not fault")
}

/// As `data-abort`, with the guard page under the last CPU's stack: the
/// secondaries' stacks are allocated at boot, and their guard pages must be
/// as unmapped as the boot CPU's, which is in the image.
fn stack_guard(p: &Platform<'_>) -> Result<(), &'static str> {
    let cpu = p.cpus.len() - 1;
    let addr = arch::boot::stack_guard(cpu) + 0x10;
    log::info!("stack-guard: reading cpu{cpu}'s guard page at {addr:#018x}");
    // SAFETY: deliberately faults, as in `data_abort`.
    let v = unsafe { core::ptr::read_volatile(addr as *const u64) };
    log::error!("stack-guard: read returned {v:#x}");
    Err("reading a guard page did not fault")
}

fn deliberate_panic(_: &Platform<'_>) -> Result<(), &'static str> {
    panic!("deliberate panic (vigil.test=panic)");
}

/// A scenario that fails, so the harness can prove it reports failures.
fn deliberate_failure(_: &Platform<'_>) -> Result<(), &'static str> {
    Err("deliberate failure (vigil.test=fail)")
}

/// Never ends: the harness must kill it at its timeout.
fn hang(_: &Platform<'_>) -> Result<(), &'static str> {
    log::info!("hang: spinning forever");
    loop {
        aarch64_cpu::asm::wfe();
    }
}
