//! The PL011 console and `println!`.
//!
//! Every line is "guest: " + the text + "\n", written whole under a lock so
//! lines of different vCPUs never interleave. The lock remembers its owner:
//! a vCPU that faults or panics while printing can still print its report.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::cpu;

/// The PL011 of every Vigil VM (and of QEMU `virt`).
pub const PL011_BASE: u64 = 0x0900_0000;
const UARTDR: u64 = 0x000;
const UARTFR: u64 = 0x018;
const FR_TXFF: u32 = 1 << 5;

const FREE: usize = usize::MAX;
static OWNER: AtomicUsize = AtomicUsize::new(FREE);

fn put_byte(b: u8) {
    // SAFETY: PL011_BASE is the UART's MMIO frame in every VM; FR and DR are
    // 32-bit registers read and written with single aligned accesses.
    unsafe {
        while core::ptr::read_volatile((PL011_BASE + UARTFR) as *const u32) & FR_TXFF != 0 {
            core::hint::spin_loop();
        }
        core::ptr::write_volatile((PL011_BASE + UARTDR) as *mut u32, u32::from(b));
    }
}

struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            put_byte(b);
        }
        Ok(())
    }
}

/// Holds the console; released on drop unless it was re-entered.
struct Guard {
    release: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.release {
            OWNER.store(FREE, Ordering::Release);
        }
    }
}

fn lock() -> Guard {
    let me = cpu::index();
    loop {
        match OWNER.compare_exchange_weak(FREE, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return Guard { release: true },
            // Re-entered from an exception or panic on this vCPU.
            Err(owner) if owner == me => return Guard { release: false },
            Err(_) => core::hint::spin_loop(),
        }
    }
}

/// Drops the console lock if this vCPU holds it: for a vCPU that starts
/// afresh (PSCI CPU_ON after CPU_OFF, or a reset) and so holds nothing.
pub fn release_if_owner(index: usize) {
    let _ = OWNER.compare_exchange(index, FREE, Ordering::Release, Ordering::Relaxed);
}

/// Prints one "guest: ..." line. Use [`crate::println!`].
pub fn print_line(args: fmt::Arguments<'_>) {
    let _guard = lock();
    let mut uart = Uart;
    let _ = uart.write_str("guest: ");
    let _ = uart.write_fmt(args);
    let _ = uart.write_str("\n");
}

/// Prints a "guest: ..." line (the prefix and newline are added).
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!($($arg)*))
    };
}

/// One byte received on the UART, if any (polling FR.RXFE).
pub fn try_getc() -> Option<u8> {
    const FR_RXFE: u32 = 1 << 4;
    // SAFETY: PL011_BASE is the UART's MMIO frame in every VM; FR and DR
    // are 32-bit registers read with single plain loads.
    unsafe {
        if core::ptr::read_volatile((PL011_BASE + UARTFR) as *const u32) & FR_RXFE != 0 {
            return None;
        }
        Some(core::ptr::read_volatile((PL011_BASE + UARTDR) as *const u32) as u8)
    }
}
