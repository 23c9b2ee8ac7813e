//! The EL2 physical timer (CNTHP) as a per-CPU periodic tick.
//!
//! Each tick re-arms the compare value one period after the previous one
//! (not after "now"), so the tick rate does not drift with handler latency;
//! a late tick fires at once and catches up.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use vigil_platform::MAX_CPUS;

use crate::arch::{self, sysreg};
use crate::gic;

static PERIOD: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static TICKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// The compare value each CPU armed last: its next deadline.
static DEADLINE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static HOOK: AtomicUsize = AtomicUsize::new(0);
static INTID: AtomicU64 = AtomicU64::new(0);

const CTL_ENABLE: u64 = 1 << 0;
const CTL_IMASK: u64 = 1 << 1;

/// Register the timer's interrupt (the hypervisor timer PPI from the
/// device tree). Primary CPU, once.
pub fn init(intid: u32) {
    INTID.store(intid as u64, Ordering::Relaxed);
    gic::register(intid, on_tick);
}

/// Call `hook` on every tick, on the CPU that ticked.
pub fn set_hook(hook: fn()) {
    HOOK.store(hook as usize, Ordering::Release);
}

/// Start ticking at `hz` on this CPU.
pub fn start(hz: u64) {
    let cpu = arch::cpu_index();
    let period = arch::counter_freq() / hz;
    PERIOD[cpu].store(period, Ordering::Relaxed);
    let first = arch::counter() + period;
    DEADLINE[cpu].store(first, Ordering::Release);
    sysreg::set_cnthp_cval_el2(first);
    sysreg::set_cnthp_ctl_el2(CTL_ENABLE);
    gic::enable_local(INTID.load(Ordering::Relaxed) as u32);
}

/// Stop ticking on this CPU.
pub fn stop() {
    sysreg::set_cnthp_ctl_el2(CTL_IMASK);
    PERIOD[arch::cpu_index()].store(0, Ordering::Relaxed);
}

/// Ticks taken so far on CPU `cpu`.
pub fn ticks(cpu: usize) -> u64 {
    TICKS[cpu].load(Ordering::Relaxed)
}

/// Interrupts taken with the timer condition not met.
pub static SPURIOUS: AtomicU64 = AtomicU64::new(0);

/// Ticks of CPU `cpu` that are due at counter value `now`: those taken
/// plus those whose deadline passed but that the CPU has not taken yet
/// (the host may be running it late). Independent of handling latency, so
/// rates can be checked on a loaded machine.
pub fn due(cpu: usize, now: u64) -> u64 {
    loop {
        let ticks = TICKS[cpu].load(Ordering::Acquire);
        let deadline = DEADLINE[cpu].load(Ordering::Acquire);
        if TICKS[cpu].load(Ordering::Acquire) != ticks {
            continue;
        }
        let period = PERIOD[cpu].load(Ordering::Relaxed).max(1);
        let late = if now >= deadline {
            (now - deadline) / period + 1
        } else {
            0
        };
        return ticks + late;
    }
}

fn on_tick(_intid: u32) {
    let cpu = arch::cpu_index();
    if sysreg::cnthp_ctl_el2() & 4 == 0 {
        SPURIOUS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    TICKS[cpu].fetch_add(1, Ordering::Relaxed);
    let period = PERIOD[cpu].load(Ordering::Relaxed);
    if period == 0 {
        sysreg::set_cnthp_ctl_el2(CTL_IMASK);
        return;
    }
    // The timer condition is level: moving CVAL past now clears it.
    let next = sysreg::cnthp_cval_el2() + period;
    sysreg::set_cnthp_cval_el2(next);
    // Publish the new deadline after the tick count (see `due`).
    DEADLINE[cpu].store(next, Ordering::Release);
    let hook = HOOK.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: only `fn()` values are stored in HOOK.
        let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(hook) };
        f();
    }
}
