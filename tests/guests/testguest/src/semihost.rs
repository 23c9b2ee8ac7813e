//! `semihost`: a hostile guest tries QEMU semihosting (issue 21). Each call
//! is `HLT #0xF000` at EL1 with the operation in w0 and its argument in x1
//! ("Semihosting for AArch32 and AArch64", Arm, 2023 Q3, §4): SYS_WRITE0,
//! SYS_OPEN and SYS_READ of a host file (`semihost.file=`), SYS_SYSTEM
//! (`touch <semihost.marker=>`) and SYS_EXIT with status 77.
//!
//! In a user's configuration (no `-semihosting`) each must UNDEF (EC 0x00)
//! at the guest's own vectors; then the guest powers off with status 0.
//! Each call that did something is printed with what it returned, so the
//! host side sees, with semihosting on, exactly what a guest could do.

use core::arch::asm;

use vigil_guest::exceptions::ec;
use vigil_guest::{expect_exception, fail, println, report, BootInfo};

const NAME: &str = "semihost";
const SYS_OPEN: u64 = 0x01;
const SYS_WRITE0: u64 = 0x04;
const SYS_READ: u64 = 0x06;
const SYS_SYSTEM: u64 = 0x12;
const SYS_EXIT: u64 = 0x18;
/// `ADP_Stopped_ApplicationExit`: SYS_EXIT's reason for a status.
const APPLICATION_EXIT: u64 = 0x2_0026;
/// What SYS_WRITE0 would print on the host; the test looks for it.
const WRITE0_TEXT: &[u8] = b"SEMIHOSTING-WRITE0-REACHED-THE-HOST\n\0";

/// One semihosting call: Ok(x0) if it returned, Err if it trapped at EL1.
fn call(op: u64, arg: u64, what: &str) -> Result<u64, ()> {
    let mut ret = op;
    let e = expect_exception(|| {
        // SAFETY: a semihosting call; without semihosting it is an
        // undefined instruction the guest's vector skips. Its parameter
        // blocks live until the call returns.
        unsafe { asm!("hlt #0xf000", inout("x0") ret, in("x1") arg, options(nostack)) };
    });
    match e {
        Some(e) if e.ec() == ec::UNKNOWN => {
            println!("semihost: {what}: UNDEF (EC 0x00) at {:#x}", e.elr);
            Err(())
        }
        Some(e) => fail!(NAME, "{what}: {e}, expected an UNDEF (EC 0x00)"),
        None => {
            println!("semihost: {what}: returned {ret:#x}: it reached the host");
            Ok(ret)
        }
    }
}

/// `s` followed by a NUL, in `buf`: QEMU wants C strings with their length.
fn c_string<'a>(buf: &'a mut [u8], parts: &[&str]) -> (&'a [u8], u64) {
    let mut n = 0;
    for p in parts {
        for &b in p.as_bytes() {
            if n + 1 >= buf.len() {
                fail!(NAME, "argument too long");
            }
            buf[n] = b;
            n += 1;
        }
    }
    buf[n] = 0;
    (&buf[..=n], n as u64)
}

pub fn run(boot: &'static BootInfo) -> ! {
    let (Some(file), Some(marker)) = (
        boot.bootarg("semihost.file"),
        boot.bootarg("semihost.marker"),
    ) else {
        fail!(NAME, "needs semihost.file=PATH and semihost.marker=PATH")
    };
    let mut reached = 0;

    if call(SYS_WRITE0, WRITE0_TEXT.as_ptr() as u64, "SYS_WRITE0").is_ok() {
        reached += 1;
    }

    let mut path = [0u8; 256];
    let (path, len) = c_string(&mut path, &[file]);
    let open = [path.as_ptr() as u64, 0 /* "r" */, len];
    if let Ok(handle) = call(SYS_OPEN, open.as_ptr() as u64, "SYS_OPEN") {
        reached += 1;
        if handle as i64 >= 0 {
            let mut data = [0u8; 128];
            let read = [handle, data.as_mut_ptr() as u64, data.len() as u64];
            if let Ok(left) = call(SYS_READ, read.as_ptr() as u64, "SYS_READ") {
                let n = data.len().saturating_sub(left as usize);
                let text = core::str::from_utf8(&data[..n]).unwrap_or("<not UTF-8>");
                println!("semihost: read from the host file: {}", text.trim_end());
            }
        }
    }

    let mut cmd = [0u8; 320];
    let (cmd, len) = c_string(&mut cmd, &["touch ", marker]);
    let system = [cmd.as_ptr() as u64, len];
    if call(SYS_SYSTEM, system.as_ptr() as u64, "SYS_SYSTEM").is_ok() {
        reached += 1;
    }

    let exit = [APPLICATION_EXIT, 77];
    if call(SYS_EXIT, exit.as_ptr() as u64, "SYS_EXIT").is_ok() {
        reached += 1;
    }

    if reached != 0 {
        fail!(NAME, "{reached} semihosting calls reached the host");
    }
    println!("semihost: every call UNDEFs at EL1; nothing reached the host");
    report::pass(NAME)
}
