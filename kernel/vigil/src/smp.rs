//! Bringing up the secondary CPUs through the firmware's PSCI.

use core::sync::atomic::Ordering;
use vigil_platform::CpuList;

use crate::{arch, percpu, psci};

/// How long a secondary may take to report in.
const ONLINE_TIMEOUT_MS: u64 = 10_000;

/// Mark this CPU online and log it.
pub fn announce() {
    let me = percpu::this();
    let mpidr = arch::mpidr();
    me.set_mpidr(mpidr);
    log::info!(
        "cpu{} online: MPIDR {:#x}, EL{}, MMU {}",
        arch::cpu_index(),
        mpidr & vigil_platform::MPIDR_AFFINITY_MASK,
        arch::current_el(),
        if arch::mmu::enabled() { "on" } else { "off" }
    );
    me.el2_mmu_on.store(
        arch::current_el() == 2 && arch::mmu::enabled(),
        Ordering::Release,
    );
    me.online.store(true, Ordering::Release);
}

/// Start every CPU in `cpus` except the boot CPU, and wait for each.
/// Returns the number online (including the boot CPU).
pub fn start_secondaries(cpus: &CpuList, boot_index: usize) -> usize {
    let entry = arch::boot::_secondary_entry as *const () as u64;
    for (index, &mpidr) in cpus.as_slice().iter().enumerate() {
        if index == boot_index {
            continue;
        }
        if let Err(e) = psci::cpu_on(mpidr, entry, index as u64) {
            log::error!("cpu{index} (MPIDR {mpidr:#x}): PSCI CPU_ON failed: {e:?}");
            continue;
        }
        let cpu = percpu::get(index);
        if !arch::wait_until(ONLINE_TIMEOUT_MS, || cpu.online.load(Ordering::Acquire)) {
            log::error!(
                "cpu{index} (MPIDR {mpidr:#x}) did not come online within {ONLINE_TIMEOUT_MS} ms"
            );
        }
    }
    percpu::online_count()
}
