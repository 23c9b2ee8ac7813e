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
/// The first deadline since `start`, and the ticks taken before it: the
/// k-th deadline after it is FIRST + k * PERIOD, since each tick re-arms
/// one period after the last compare value.
static FIRST: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static BASE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
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
    let first = arch::counter() + period;
    FIRST[cpu].store(first, Ordering::Relaxed);
    BASE[cpu].store(TICKS[cpu].load(Ordering::Relaxed), Ordering::Relaxed);
    // Published last: `running` and `due` read FIRST and BASE after it.
    PERIOD[cpu].store(period, Ordering::Release);
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

/// Whether CPU `cpu` has started ticking.
pub fn running(cpu: usize) -> bool {
    PERIOD[cpu].load(Ordering::Acquire) != 0
}

/// Ticks of CPU `cpu` that are due at counter value `now`: those taken
/// before its `start`, plus every deadline since that is at or before
/// `now`, taken or not yet (the host may be running the CPU late).
/// Independent of handling latency, so rates can be checked on a loaded
/// machine; computed from fixed values, so no race with the handler.
pub fn due(cpu: usize, now: u64) -> u64 {
    let period = PERIOD[cpu].load(Ordering::Acquire);
    if period == 0 {
        return TICKS[cpu].load(Ordering::Relaxed);
    }
    let first = FIRST[cpu].load(Ordering::Relaxed);
    let passed = if now >= first {
        (now - first) / period + 1
    } else {
        0
    };
    BASE[cpu].load(Ordering::Relaxed) + passed
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
    sysreg::set_cnthp_cval_el2(sysreg::cnthp_cval_el2() + period);
    let hook = HOOK.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: only `fn()` values are stored in HOOK.
        let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(hook) };
        f();
    }
}
