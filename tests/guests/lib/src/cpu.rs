//! The current vCPU, waiting, time and a spin barrier.

use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering};

/// MPIDR_EL1 affinity fields (Aff3..Aff0).
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// MPIDR_EL1 of this vCPU.
pub fn mpidr_raw() -> u64 {
    let v: u64;
    // SAFETY: reading MPIDR_EL1 at EL1 has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// The affinity of this vCPU: what its `cpu` node's `reg` and PSCI calls
/// use.
pub fn mpidr() -> u64 {
    mpidr_raw() & MPIDR_AFFINITY_MASK
}

/// This vCPU's index: 0 for the boot vCPU, the low byte of the CPU_ON
/// context id for the others (kept in TPIDR_EL1 by the boot code).
pub fn index() -> usize {
    let v: u64;
    // SAFETY: reading TPIDR_EL1 at EL1 has no side effects.
    unsafe { asm!("mrs {}, tpidr_el1", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v as usize
}

/// Stops this vCPU for good (WFE forever).
pub fn park() -> ! {
    loop {
        // SAFETY: WFE only waits.
        unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
    }
}

/// The virtual counter's frequency (CNTFRQ_EL0), in Hz.
pub fn counter_frequency() -> u64 {
    let v: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// The virtual counter (CNTVCT_EL0).
pub fn counter() -> u64 {
    let v: u64;
    // SAFETY: reading CNTVCT_EL0 has no side effects; the ISB keeps it from
    // being read early.
    unsafe {
        asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Microseconds since an arbitrary point.
pub fn now_us() -> u64 {
    let freq = counter_frequency().max(1);
    (u128::from(counter()) * 1_000_000 / u128::from(freq)) as u64
}

/// Spins until `cond` holds or `timeout_us` passed; returns whether it held.
pub fn wait_until(timeout_us: u64, mut cond: impl FnMut() -> bool) -> bool {
    let start = now_us();
    loop {
        if cond() {
            return true;
        }
        if now_us().wrapping_sub(start) > timeout_us {
            return cond();
        }
        core::hint::spin_loop();
    }
}

/// A reusable barrier for `n` vCPUs spinning in shared memory.
pub struct SpinBarrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    /// A barrier that releases every `n` arrivals.
    pub const fn new(n: usize) -> Self {
        Self {
            n,
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    /// Waits until `n` vCPUs have arrived.
    pub fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
        } else {
            while self.generation.load(Ordering::Acquire) == generation {
                core::hint::spin_loop();
            }
        }
    }

    /// Waits until `n` vCPUs have arrived or `timeout_us` passed; returns
    /// whether the barrier released. After a timeout the barrier is
    /// broken (this vCPU's arrival still counts): give up on it.
    pub fn wait_timeout(&self, timeout_us: u64) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            true
        } else {
            wait_until(timeout_us, || {
                self.generation.load(Ordering::Acquire) != generation
            })
        }
    }

    /// How many vCPUs wait at the barrier now.
    pub fn waiting(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}
