//! Calls to the firmware's PSCI (Arm DEN 0022) over SMC, the conduit QEMU
//! offers at EL2.

use vigil_vm::psci::{fid, ret};

/// PSCI return codes (DEN 0022, table 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciError {
    NotSupported,
    InvalidParameters,
    Denied,
    AlreadyOn,
    OnPending,
    InternalFailure,
    NotPresent,
    Disabled,
    InvalidAddress,
    Unknown(i64),
}

impl PsciError {
    fn from_code(code: i64) -> Self {
        match code {
            ret::NOT_SUPPORTED => Self::NotSupported,
            ret::INVALID_PARAMETERS => Self::InvalidParameters,
            ret::DENIED => Self::Denied,
            ret::ALREADY_ON => Self::AlreadyOn,
            ret::ON_PENDING => Self::OnPending,
            ret::INTERNAL_FAILURE => Self::InternalFailure,
            ret::NOT_PRESENT => Self::NotPresent,
            ret::DISABLED => Self::Disabled,
            ret::INVALID_ADDRESS => Self::InvalidAddress,
            c => Self::Unknown(c),
        }
    }
}

fn smc(fid: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    let ret: i64;
    // SAFETY: an SMC to the firmware's PSCI implementation; arguments and
    // results are in x0-x3 per SMCCC, which may clobber x0-x17.
    unsafe {
        core::arch::asm!(
            "smc #0",
            inout("x0") fid as u64 => ret,
            inout("x1") a1 => _,
            inout("x2") a2 => _,
            inout("x3") a3 => _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack),
        );
    }
    ret
}

/// (major, minor)
pub fn version() -> (u16, u16) {
    let v = smc(fid::VERSION, 0, 0, 0) as u32;
    ((v >> 16) as u16, v as u16)
}

/// Start the CPU with affinity `mpidr` at physical address `entry` with
/// `context` in x0.
pub fn cpu_on(mpidr: u64, entry: u64, context: u64) -> Result<(), PsciError> {
    match smc(fid::CPU_ON_64, mpidr, entry, context) {
        0 => Ok(()),
        e => Err(PsciError::from_code(e)),
    }
}

/// Power the machine off (QEMU exits with status 0). Returns only if the
/// firmware refused.
pub fn system_off() {
    smc(fid::SYSTEM_OFF, 0, 0, 0);
}
