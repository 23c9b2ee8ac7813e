//! AArch64 specifics: entry, exception vectors, MMU, and small register
//! helpers.

pub mod boot;
pub mod exceptions;
pub mod mmu;
pub mod sysreg;

use aarch64_cpu::registers::{CurrentEL, Readable, CNTFRQ_EL0, CNTPCT_EL0, MPIDR_EL1, TPIDR_EL2};
use vigil_platform::MAX_CPUS;

/// Logical index of the running CPU (set in TPIDR_EL2 at entry).
#[inline]
pub fn cpu_index() -> usize {
    // The mask is free (one AND) and lets the compiler drop the bounds
    // check of every per-CPU array on the exit path; boot only ever stores
    // an index below MAX_CPUS, so it never changes the value.
    const _: () = assert!(MAX_CPUS.is_power_of_two());
    TPIDR_EL2.get() as usize & (MAX_CPUS - 1)
}

pub fn mpidr() -> u64 {
    MPIDR_EL1.get()
}

pub fn current_el() -> u64 {
    CurrentEL.read(CurrentEL::EL)
}

/// Physical counter value. The ISB keeps the read from being hoisted.
#[inline]
pub fn counter() -> u64 {
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
    CNTPCT_EL0.get()
}

pub fn counter_freq() -> u64 {
    CNTFRQ_EL0.get()
}

/// Spin until `done()` holds or `timeout_ms` of counter time passes.
/// Returns whether `done()` held.
pub fn wait_until(timeout_ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = counter() + counter_freq() * timeout_ms / 1000;
    loop {
        if done() {
            return true;
        }
        if counter() >= deadline {
            return done();
        }
        core::hint::spin_loop();
    }
}

/// Meaning of a data/instruction fault status code (Arm ARM D24.2.40).
pub fn fault_status_name(fsc: u64) -> &'static str {
    match fsc {
        0x00..=0x03 => "address size fault",
        0x04..=0x07 => "translation fault",
        0x08..=0x0b => "access flag fault",
        0x0c..=0x0f => "permission fault",
        0x10 => "synchronous external abort",
        0x21 => "alignment fault",
        0x30 => "TLB conflict abort",
        _ => "other fault",
    }
}
