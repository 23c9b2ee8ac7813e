//! `unhandled`: an unknown hypercall and an unknown SMCCC function return
//! NOT_SUPPORTED, an IMPLEMENTATION DEFINED system register UNDEFs, and a
//! guest whose vector table is unmapped when it takes an abort is stopped.

use core::arch::asm;

use vigil_guest::exceptions::ec;
use vigil_guest::{expect_exception, fail, println, smccc, BootInfo};

const NAME: &str = "unhandled";
const UNKNOWN_HYPERCALL: u32 = 0xC600_00FF;
const UNKNOWN_SMCCC: u32 = 0x8200_0000;
/// Where VBAR_EL1 points last: not RAM or a device of any VM.
const BAD_VBAR: u64 = 0x1000;

fn expect_not_supported(function: u32, what: &str) {
    match smccc::hvc(function, [0; 3]) {
        Ok(r) if r as i64 == smccc::NOT_SUPPORTED => {
            println!("unhandled: {what} {function:#x}: NOT_SUPPORTED (-1)");
        }
        Ok(r) => fail!(NAME, "{what} {function:#x} returned {:#x}, expected -1", r),
        Err(e) => fail!(
            NAME,
            "{what} {function:#x}: the HVC trapped ({e}), expected -1 in x0"
        ),
    }
}

pub fn run(boot: &'static BootInfo) -> ! {
    expect_not_supported(UNKNOWN_HYPERCALL, "unknown hypercall");
    expect_not_supported(UNKNOWN_SMCCC, "unknown SMCCC function");

    let e = expect_exception(|| {
        // SAFETY: reading an IMPLEMENTATION DEFINED register has no effect
        // here; it is expected to UNDEF.
        unsafe {
            asm!("mrs {}, S3_1_C15_C0_0", out(reg) _, options(nomem, nostack, preserves_flags))
        };
    });
    match e {
        Some(e) if e.ec() == ec::UNKNOWN => {
            println!(
                "unhandled: mrs S3_1_C15_C0_0: UNDEF (EC 0x00) at {:#x}, survived",
                e.elr
            )
        }
        Some(e) => fail!(NAME, "mrs S3_1_C15_C0_0: {e}, expected an UNDEF (EC 0x00)"),
        None => fail!(NAME, "mrs S3_1_C15_C0_0 did not UNDEF"),
    }

    let addr = boot.ram.end;
    println!("unhandled: VBAR_EL1 = {BAD_VBAR:#x}, reading {addr:#x} outside RAM");
    println!("unhandled: expecting to be stopped");
    let vbar: u64;
    let v: u64;
    // SAFETY: points the vectors at unmapped memory and takes an abort: the
    // vector fetch faults and Vigil stops the VM. If it ever returns, the
    // old VBAR_EL1 is put back before any Rust code runs.
    unsafe {
        asm!(
            "mrs {old}, vbar_el1",
            "msr vbar_el1, {bad}",
            "isb",
            "ldr {v}, [{a}]",
            "msr vbar_el1, {old}",
            "isb",
            old = out(reg) vbar,
            bad = in(reg) BAD_VBAR,
            v = out(reg) v,
            a = in(reg) addr,
            options(nostack),
        )
    };
    fail!(NAME, "still running after reading {addr:#x} (read {v:#x}) with VBAR_EL1 = {BAD_VBAR:#x} (restored {vbar:#x})")
}
