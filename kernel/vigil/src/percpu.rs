//! Per-CPU data, indexed by the logical CPU index in TPIDR_EL2.
//!
//! One record per CPU the device tree lists, allocated at boot (not
//! reserved for [`vigil_platform::MAX_CPUS`]). Other modules keep small
//! per-CPU atomics in arrays sized by that compile-time cap, as Linux's
//! NR_CPUS arrays are; anything large per CPU is allocated here or at
//! boot for the CPUs present.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use vigil_platform::CpuList;

pub struct PerCpu {
    /// Set by the CPU itself once it runs Rust code with the MMU on.
    pub online: AtomicBool,
    /// Its MPIDR_EL1: the device tree's value until it reads its own (so
    /// that an SGI can name a CPU that is not up yet). Set with
    /// [`PerCpu::set_mpidr`].
    pub mpidr: AtomicU64,
    /// The ICC_SGI1R_EL1 fields naming it ([`vigil_gic::sgi::target`] of
    /// `mpidr`): a kick adds its SGI number and writes.
    sgi_target: AtomicU64,
    /// It found itself at EL2 with stage-1 translation on.
    pub el2_mmu_on: AtomicBool,
}

/// The records, leaked at [`init`]: a pointer and a length rather than a
/// `Once`, so that reaching one (every kick of another CPU does) is two
/// loads and a bounds check, not the `Once`'s state machine.
static CPUS: AtomicPtr<PerCpu> = AtomicPtr::new(core::ptr::null_mut());
static NR_CPUS: AtomicUsize = AtomicUsize::new(0);

/// One record for each CPU of `cpus`. Primary CPU, once, before any other
/// CPU starts.
pub fn init(cpus: &CpuList) {
    if !CPUS.load(Ordering::Acquire).is_null() {
        return;
    }
    let v: Vec<PerCpu> = cpus
        .as_slice()
        .iter()
        .map(|&m| PerCpu {
            online: AtomicBool::new(false),
            mpidr: AtomicU64::new(m),
            sgi_target: AtomicU64::new(vigil_gic::sgi::target(m)),
            el2_mmu_on: AtomicBool::new(false),
        })
        .collect();
    let all = v.leak();
    NR_CPUS.store(all.len(), Ordering::Relaxed);
    // Release: the records and their count are written before the
    // pointer that makes them reachable.
    CPUS.store(all.as_mut_ptr(), Ordering::Release);
}

impl PerCpu {
    /// Record its MPIDR_EL1 (and the SGI target it implies).
    pub fn set_mpidr(&self, mpidr: u64) {
        self.sgi_target
            .store(vigil_gic::sgi::target(mpidr), Ordering::Relaxed);
        self.mpidr.store(mpidr, Ordering::Relaxed);
    }

    /// ICC_SGI1R_EL1 for SGI `intid` to this CPU.
    pub fn sgi1r(&self, intid: u8) -> u64 {
        vigil_gic::sgi::with_intid(self.sgi_target.load(Ordering::Relaxed), intid)
    }
}

fn all() -> &'static [PerCpu] {
    let p = CPUS.load(Ordering::Acquire);
    if p.is_null() {
        return &[];
    }
    // SAFETY: set once by `init` to a leaked (never freed) slice of
    // NR_CPUS records, stored before the pointer.
    unsafe { core::slice::from_raw_parts(p, NR_CPUS.load(Ordering::Relaxed)) }
}

/// CPUs in the device tree (0 before [`init`]).
pub fn count() -> usize {
    all().len()
}

pub fn get(index: usize) -> &'static PerCpu {
    &all()[index]
}

pub fn this() -> &'static PerCpu {
    get(crate::arch::cpu_index())
}

pub fn online_count() -> usize {
    all()
        .iter()
        .filter(|c| c.online.load(Ordering::Acquire))
        .count()
}
