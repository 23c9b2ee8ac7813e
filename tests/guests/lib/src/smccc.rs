//! SMCCC calls over HVC #0 and Vigil's own hypercalls (their IDs are
//! `vigil_vm::psci::hypercall`'s).
//!
//! Under Vigil every HVC returns (an unknown function gives -1). On bare
//! QEMU `virt` without EL2 (PSCI conduit HVC), QEMU 10 answers every HVC
//! itself: PSCI functions are implemented, anything else (Vigil's
//! hypercalls included) returns -1. An HVC with nothing to take it is
//! UNDEFINED at EL1 architecturally (no EL2, or an emulator that does not
//! intercept it); [`hvc`] reports that as `Err` and [`call`] as
//! [`NOT_SUPPORTED`], so the library works in all three cases.

use core::arch::asm;
pub use vigil_vm::psci::hypercall;

use crate::exceptions::{expect_exception, Exception};

/// SMCCC/PSCI NOT_SUPPORTED.
pub const NOT_SUPPORTED: i64 = vigil_vm::psci::ret::NOT_SUPPORTED;

/// Vigil: x1 = the status QEMU exits with when this VM powers off.
pub const VIGIL_EXIT_STATUS: u32 = hypercall::EXIT_STATUS;
/// Vigil: does nothing, returns 0.
pub const VIGIL_NULL: u32 = hypercall::NULL;

/// One SMCCC call through `insn` ("hvc #0" or "smc #0") with x0 = `x0`
/// (all 64 bits: SMCCC reads only W0, which callers may test), x1..x3 =
/// `args`; x0 after it, or the exception if the instruction itself trapped.
macro_rules! smccc_call {
    ($insn:literal, $x0:expr, $args:expr) => {{
        let mut x0: u64 = $x0;
        let args: [u64; 3] = $args;
        let exception = expect_exception(|| {
            // SAFETY: an SMCCC call has no effect on this guest's memory
            // beyond what the called function documents; x0..x17 may be
            // clobbered.
            unsafe {
                asm!(
                    $insn,
                    inout("x0") x0,
                    inout("x1") args[0] => _,
                    inout("x2") args[1] => _,
                    inout("x3") args[2] => _,
                    out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                    out("x8") _, out("x9") _, out("x10") _, out("x11") _,
                    out("x12") _, out("x13") _, out("x14") _, out("x15") _,
                    out("x16") _, out("x17") _,
                    options(nostack),
                )
            }
        });
        match exception {
            None => Ok(x0),
            Some(e) => Err(e),
        }
    }};
}

/// `hvc #0` with x0 = `function`, x1..x3 = `args`; returns x0, or the
/// exception if the HVC itself trapped (UNDEF: nothing at EL2 handles it).
pub fn hvc(function: u32, args: [u64; 3]) -> Result<u64, Exception> {
    smccc_call!("hvc #0", u64::from(function), args)
}

/// `hvc #0` with all 64 bits of x0 chosen by the caller.
pub fn hvc_raw(x0: u64, args: [u64; 3]) -> Result<u64, Exception> {
    smccc_call!("hvc #0", x0, args)
}

/// `smc #0` with all 64 bits of x0 chosen by the caller (under Vigil it
/// traps to EL2, HCR_EL2.TSC, and is answered as an HVC would be).
pub fn smc_raw(x0: u64, args: [u64; 3]) -> Result<u64, Exception> {
    smccc_call!("smc #0", x0, args)
}

/// An SMCCC call returning x0 as a signed value; an HVC that traps counts
/// as [`NOT_SUPPORTED`].
pub fn call(function: u32, args: [u64; 3]) -> i64 {
    match hvc(function, args) {
        Ok(x0) => x0 as i64,
        Err(_) => NOT_SUPPORTED,
    }
}

/// Whether Vigil's hypercalls answer (VIGIL_NULL returns 0). False on bare
/// QEMU, where it returns -1 (or would UNDEF).
pub fn vigil_present() -> bool {
    hvc(VIGIL_NULL, [0; 3]) == Ok(0)
}

/// VIGIL_NULL: returns x0 (0 under Vigil).
pub fn vigil_null() -> Result<u64, Exception> {
    hvc(VIGIL_NULL, [0; 3])
}

/// VIGIL_EXIT_STATUS: sets the status QEMU exits with when this VM powers
/// off. Returns x0 (0 under Vigil).
pub fn vigil_exit_status(status: u64) -> Result<u64, Exception> {
    hvc(VIGIL_EXIT_STATUS, [status, 0, 0])
}

/// Vigil: returns how many host LPIs are free on the physical ITS (0
/// without one), after giving back those no handler can still use.
pub const VIGIL_HOST_LPIS_FREE: u32 = hypercall::HOST_LPIS_FREE;

/// VIGIL_HOST_LPIS_FREE: the free host LPIs on the physical ITS.
pub fn vigil_host_lpis_free() -> Result<u64, Exception> {
    hvc(VIGIL_HOST_LPIS_FREE, [0; 3])
}

/// Vigil: returns the calling vCPU's exits so far (this call's included)
/// and, of them, those for a physical interrupt.
pub const VIGIL_EXITS: u32 = hypercall::EXITS;

/// VIGIL_EXITS: (exits, IRQ exits), or None where Vigil does not answer.
pub fn vigil_exits() -> Option<(u64, u64)> {
    if !vigil_present() {
        return None;
    }
    let (x0, x1): (u64, u64);
    // SAFETY: VIGIL_EXITS reads counters only; x0..x17 may be clobbered.
    // Vigil is present, so the HVC returns.
    unsafe {
        asm!(
            "hvc #0",
            inout("x0") u64::from(VIGIL_EXITS) => x0,
            inout("x1") 0u64 => x1,
            out("x2") _, out("x3") _, out("x4") _, out("x5") _,
            out("x6") _, out("x7") _, out("x8") _, out("x9") _,
            out("x10") _, out("x11") _, out("x12") _, out("x13") _,
            out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            options(nostack),
        )
    };
    (x0 != u64::MAX).then_some((x0, x1))
}

/// Vigil: returns the calling VM's vGIC/vITS anomaly count (emulation
/// states that must never occur; 0 unless Vigil has a bug).
pub const VIGIL_ANOMALIES: u32 = hypercall::ANOMALIES;

/// VIGIL_ANOMALIES, or None where Vigil does not answer it.
pub fn vigil_anomalies() -> Option<u64> {
    match hvc(VIGIL_ANOMALIES, [0; 3]) {
        Ok(n) if n as i64 != NOT_SUPPORTED => Some(n),
        _ => None,
    }
}
