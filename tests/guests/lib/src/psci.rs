//! PSCI 1.1 over HVC (the VM's device tree says `method = "hvc"`).

use crate::smccc;

// The function IDs and codes are the hypervisor's own definitions
// (vigil_vm::psci), under the names the tests use.
use vigil_vm::psci::{affinity, fid, ret};

pub const PSCI_VERSION: u32 = fid::VERSION;
pub const CPU_SUSPEND_64: u32 = fid::CPU_SUSPEND_64;
pub const CPU_OFF: u32 = fid::CPU_OFF;
pub const CPU_ON_64: u32 = fid::CPU_ON_64;
pub const AFFINITY_INFO_64: u32 = fid::AFFINITY_INFO_64;
pub const SYSTEM_OFF: u32 = fid::SYSTEM_OFF;
pub const SYSTEM_RESET: u32 = fid::SYSTEM_RESET;
pub const PSCI_FEATURES: u32 = fid::FEATURES;

pub const SUCCESS: i64 = ret::SUCCESS;
pub const NOT_SUPPORTED: i64 = ret::NOT_SUPPORTED;
pub const INVALID_PARAMETERS: i64 = ret::INVALID_PARAMETERS;
pub const DENIED: i64 = ret::DENIED;
pub const ALREADY_ON: i64 = ret::ALREADY_ON;
pub const ON_PENDING: i64 = ret::ON_PENDING;
pub const INTERNAL_FAILURE: i64 = ret::INTERNAL_FAILURE;
pub const NOT_PRESENT: i64 = ret::NOT_PRESENT;
pub const DISABLED: i64 = ret::DISABLED;
pub const INVALID_ADDRESS: i64 = ret::INVALID_ADDRESS;

/// AFFINITY_INFO results.
pub const AFFINITY_ON: i64 = affinity::ON;
pub const AFFINITY_OFF: i64 = affinity::OFF;
pub const AFFINITY_ON_PENDING: i64 = affinity::ON_PENDING;

/// A PSCI return code's name, for log lines.
pub fn error_name(code: i64) -> &'static str {
    match code {
        SUCCESS => "SUCCESS",
        NOT_SUPPORTED => "NOT_SUPPORTED",
        INVALID_PARAMETERS => "INVALID_PARAMETERS",
        DENIED => "DENIED",
        ALREADY_ON => "ALREADY_ON",
        ON_PENDING => "ON_PENDING",
        INTERNAL_FAILURE => "INTERNAL_FAILURE",
        NOT_PRESENT => "NOT_PRESENT",
        DISABLED => "DISABLED",
        INVALID_ADDRESS => "INVALID_ADDRESS",
        _ => "?",
    }
}

/// PSCI_VERSION: major << 16 | minor (0x10001 for 1.1).
pub fn version() -> u64 {
    smccc::call(PSCI_VERSION, [0; 3]) as u64
}

/// PSCI_FEATURES for `function`: 0 (or feature flags) if implemented,
/// NOT_SUPPORTED otherwise.
pub fn features(function: u32) -> i64 {
    smccc::call(PSCI_FEATURES, [u64::from(function), 0, 0])
}

/// CPU_ON (64-bit) with an arbitrary entry point.
pub fn cpu_on_raw(target_mpidr: u64, entry: u64, context_id: u64) -> i64 {
    smccc::call(CPU_ON_64, [target_mpidr, entry, context_id])
}

/// CPU_ON at the library's secondary entry: the target runs the function
/// given to [`crate::set_secondary_main`] with `context_id`, whose low 8
/// bits must be the target's vCPU index (its stack slot).
pub fn cpu_on(target_mpidr: u64, context_id: u64) -> i64 {
    cpu_on_raw(
        target_mpidr,
        crate::boot::secondary_entry_address(),
        context_id,
    )
}

/// CPU_OFF for the calling vCPU. Returns only on failure.
pub fn cpu_off() -> i64 {
    smccc::call(CPU_OFF, [0; 3])
}

/// AFFINITY_INFO (64-bit) for one vCPU (lowest affinity level 0).
pub fn affinity_info(target_mpidr: u64) -> i64 {
    smccc::call(AFFINITY_INFO_64, [target_mpidr, 0, 0])
}

/// SYSTEM_OFF. Returns only on failure.
pub fn system_off() -> i64 {
    smccc::call(SYSTEM_OFF, [0; 3])
}

/// SYSTEM_RESET. Returns only on failure.
pub fn system_reset() -> i64 {
    smccc::call(SYSTEM_RESET, [0; 3])
}
