//! `ptimer`: the EL1 physical timer (CNTP_*_EL0) and its PPI 30, which
//! the guest's device tree names (`timer` node, PPI 14). Arm ARM D11.2
//! ("The Generic Timer"): the timer's output is ENABLE && ISTATUS &&
//! !IMASK, ISTATUS is set once the counter reaches CVAL, and a TVAL write
//! sets CVAL to the counter plus TVAL.
//!
//! 1. `cval`: 50 deadlines through CNTP_CVAL_EL0, waited for in WFI.
//! 2. `tval`: 50 deadlines through CNTP_TVAL_EL0, waited for in WFI.
//! 3. `masked`: with PPI 30 disabled in the redistributor, an expired
//!    timer is pending in GICR_ISPENDR0; IMASK drops the level line (not
//!    pending), clearing IMASK raises it again, and enabling the PPI
//!    delivers it.
//!
//! None may come early, every one must show ISTATUS. With
//! `vigil.ptimer.rounds=<n>` the whole sequence repeats (to overlap a VM
//! sharing the physical CPU).

use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use vigil_guest::gic;
use vigil_guest::{cpu, ensure, fail, mmio, println, report, BootInfo};

const NAME: &str = "ptimer";
const PTIMER_PPI: u32 = 30;
const SHOTS: u32 = 50;
const AHEAD_US: u64 = 300;
const TIMEOUT_US: u64 = 10_000_000;
/// "Must not be delivered" is watched this long.
const QUIET_US: u64 = 100_000;
/// Lateness that means the timer is broken rather than the host slow.
const LATE_LIMIT_US: u64 = 5_000_000;

const ENABLE: u64 = 1;
const IMASK: u64 = 2;
const ISTATUS: u64 = 4;

static TAKEN: AtomicU32 = AtomicU32::new(0);
static DEADLINE: AtomicU64 = AtomicU64::new(0);
static EARLY: AtomicU64 = AtomicU64::new(0);
static WORST: AtomicU64 = AtomicU64::new(0);
static NOT_FIRING: AtomicU32 = AtomicU32::new(0);

pub fn ctl() -> u64 {
    let v: u64;
    // SAFETY: reading CNTP_CTL_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntp_ctl_el0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn set_ctl(v: u64) {
    // SAFETY: programming this vCPU's physical timer only changes when its
    // PPI 30 fires.
    unsafe { asm!("msr cntp_ctl_el0, {}", "isb", in(reg) v, options(nostack, preserves_flags)) };
}

pub fn cval() -> u64 {
    let v: u64;
    // SAFETY: reading CNTP_CVAL_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntp_cval_el0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn set_cval(v: u64) {
    // SAFETY: as in `set_ctl`.
    unsafe { asm!("msr cntp_cval_el0, {}", "isb", in(reg) v, options(nostack, preserves_flags)) };
}

fn set_tval(v: u64) {
    // SAFETY: as in `set_ctl`.
    unsafe { asm!("msr cntp_tval_el0, {}", "isb", in(reg) v, options(nostack, preserves_flags)) };
}

fn handler(_intid: u32) {
    let now = cpu::counter();
    let deadline = DEADLINE.load(Ordering::Relaxed);
    if ctl() & ISTATUS == 0 {
        NOT_FIRING.fetch_add(1, Ordering::Relaxed);
    }
    if now < deadline {
        EARLY.fetch_max(deadline - now, Ordering::Relaxed);
    } else {
        WORST.fetch_max(now - deadline, Ordering::Relaxed);
    }
    // The line is level: mask it before the EOI, or it is taken again.
    set_ctl(ENABLE | IMASK);
    TAKEN.fetch_add(1, Ordering::Release);
}

/// Wait in WFI until `TAKEN` reaches `n` (IRQs masked around the check so
/// no interrupt falls between it and the WFI). Whether it did.
fn wait_taken(n: u32) -> bool {
    let t0 = cpu::now_us();
    loop {
        gic::irq_disable();
        if TAKEN.load(Ordering::Acquire) >= n || cpu::now_us() - t0 >= TIMEOUT_US {
            break;
        }
        gic::wait_for_interrupt();
        gic::irq_enable();
    }
    gic::irq_enable();
    TAKEN.load(Ordering::Acquire) >= n
}

fn ispendr0() -> u32 {
    // SAFETY: GICR_ISPENDR0 of this vCPU's redistributor; reading it has
    // no side effects.
    unsafe { mmio::read32(gic::sgi_base() + 0x200) }
}

fn shots(what: &str, ahead: u64, by_tval: bool) {
    let freq = cpu::counter_frequency();
    let us = |t: u64| t * 1_000_000 / freq.max(1);
    EARLY.store(0, Ordering::Relaxed);
    WORST.store(0, Ordering::Relaxed);
    NOT_FIRING.store(0, Ordering::Relaxed);
    for _ in 0..SHOTS {
        let n = TAKEN.load(Ordering::Acquire);
        if by_tval {
            // CVAL becomes the counter at the write plus TVAL: at least
            // `before + ahead`, at most `after + ahead`.
            let before = cpu::counter();
            DEADLINE.store(before + ahead, Ordering::Relaxed);
            set_tval(ahead);
            let after = cpu::counter();
            let c = cval();
            ensure!(
                NAME,
                (before + ahead..=after + ahead).contains(&c),
                "{what}: CNTP_TVAL_EL0 = {ahead} between counter {before} and {after} gave CVAL {c}"
            );
        } else {
            let deadline = cpu::counter() + ahead;
            DEADLINE.store(deadline, Ordering::Relaxed);
            set_cval(deadline);
        }
        set_ctl(ENABLE);
        if !wait_taken(n + 1) {
            fail!(
                NAME,
                "{what}: no PPI {PTIMER_PPI} within {TIMEOUT_US} us of a deadline {AHEAD_US} us ahead (CNTP_CTL {:#x}, GICR_ISPENDR0 {:#x})",
                ctl(),
                ispendr0()
            );
        }
    }
    set_ctl(0);
    let (early, late, not_firing) = (
        EARLY.load(Ordering::Relaxed),
        WORST.load(Ordering::Relaxed),
        NOT_FIRING.load(Ordering::Relaxed),
    );
    ensure!(
        NAME,
        early == 0,
        "{what}: an interrupt came {early} ticks before its deadline"
    );
    ensure!(
        NAME,
        not_firing == 0,
        "{what}: {not_firing} interrupts with CNTP_CTL_EL0.ISTATUS clear"
    );
    ensure!(
        NAME,
        us(late) <= LATE_LIMIT_US,
        "{what}: an interrupt came {} us late",
        us(late)
    );
    println!(
        "ptimer: {what}: {SHOTS} deadlines met, none early, each woke WFI, worst lateness {} us",
        us(late)
    );
}

fn masked() {
    let bit = 1u32 << PTIMER_PPI;
    gic::disable(PTIMER_PPI);
    let n = TAKEN.load(Ordering::Acquire);
    // Expired at once: the line is high, but the PPI is disabled.
    set_cval(cpu::counter());
    set_ctl(ENABLE);
    ensure!(
        NAME,
        cpu::wait_until(TIMEOUT_US, || ctl() & ISTATUS != 0),
        "masked: ISTATUS never set for a deadline in the past"
    );
    ensure!(
        NAME,
        cpu::wait_until(TIMEOUT_US, || ispendr0() & bit != 0),
        "masked: timer expired, PPI {PTIMER_PPI} disabled: not pending in GICR_ISPENDR0 ({:#x})",
        ispendr0()
    );
    // IMASK drops the output; a level interrupt's pending state follows.
    set_ctl(ENABLE | IMASK);
    let p = ispendr0();
    ensure!(
        NAME,
        p & bit == 0,
        "masked: CNTP_CTL.IMASK set, GICR_ISPENDR0 still {p:#x}"
    );
    set_ctl(ENABLE);
    ensure!(
        NAME,
        cpu::wait_until(TIMEOUT_US, || ispendr0() & bit != 0),
        "masked: IMASK cleared again: PPI {PTIMER_PPI} not pending"
    );
    cpu::wait_until(QUIET_US, || false);
    ensure!(
        NAME,
        TAKEN.load(Ordering::Acquire) == n,
        "masked: PPI {PTIMER_PPI} taken while disabled in the redistributor"
    );
    DEADLINE.store(0, Ordering::Relaxed);
    gic::enable(PTIMER_PPI);
    ensure!(
        NAME,
        wait_taken(n + 1),
        "masked: pending PPI {PTIMER_PPI} not delivered once enabled"
    );
    set_ctl(0);
    println!("ptimer: masked: expired timer pending in GICR_ISPENDR0 while the PPI is disabled, not pending under IMASK, delivered once enabled");
}

pub fn run(boot: &'static BootInfo) -> ! {
    gic::init_distributor();
    gic::init_cpu();
    let rounds: u32 = boot
        .bootarg("vigil.ptimer.rounds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    ensure!(
        NAME,
        ctl() & (ENABLE | IMASK) == 0,
        "CNTP_CTL_EL0 at boot is {:#x}, expected the timer off",
        ctl()
    );
    let freq = cpu::counter_frequency();
    let ahead = (freq * AHEAD_US / 1_000_000).max(1);
    gic::set_handler(PTIMER_PPI, handler);
    gic::set_priority(PTIMER_PPI, 0x80);
    gic::enable(PTIMER_PPI);
    gic::irq_enable();
    for _ in 0..rounds {
        shots("cval", ahead, false);
        shots("tval", ahead, true);
        masked();
    }
    gic::irq_disable();
    println!(
        "ptimer: {rounds} rounds, {} interrupts",
        TAKEN.load(Ordering::Relaxed)
    );
    report::pass(NAME)
}
