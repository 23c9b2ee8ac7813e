//! Per-CPU data, indexed by the logical CPU index in TPIDR_EL2.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use vigil_platform::MAX_CPUS;

pub struct PerCpu {
    /// Set by the CPU itself once it runs Rust code with the MMU on.
    pub online: AtomicBool,
    /// Its MPIDR_EL1 as it read it.
    pub mpidr: AtomicU64,
    /// It found itself at EL2 with stage-1 translation on.
    pub el2_mmu_on: AtomicBool,
}

static CPUS: [PerCpu; MAX_CPUS] = [const {
    PerCpu {
        online: AtomicBool::new(false),
        mpidr: AtomicU64::new(0),
        el2_mmu_on: AtomicBool::new(false),
    }
}; MAX_CPUS];

pub fn get(index: usize) -> &'static PerCpu {
    &CPUS[index]
}

pub fn this() -> &'static PerCpu {
    get(crate::arch::cpu_index())
}

pub fn online_count() -> usize {
    CPUS.iter()
        .filter(|c| c.online.load(Ordering::Acquire))
        .count()
}
