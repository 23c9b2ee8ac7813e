//! Single-instruction device accesses.
//!
//! Each accessor is one `ldr`/`str` (or `ldrb`/`strb`) with a plain base
//! register and no writeback, so a trapped access always has a valid
//! syndrome (ESR_EL2.ISS.ISV, Arm ARM D24.2.40) for the hypervisor to
//! emulate. `read_volatile` lets the compiler pick `ldp` or a post-indexed
//! form, which a hypervisor cannot emulate.
//!
//! # Safety
//! For every function here: `addr` is aligned to the access size and is a
//! device register (or a probe whose abort the caller expects) whose access
//! does not change memory the program relies on.

use core::arch::asm;

/// Loads the byte at `addr`.
///
/// # Safety
/// See the module documentation.
#[inline(always)]
pub unsafe fn read8(addr: u64) -> u8 {
    let v: u32;
    // SAFETY: the caller's contract (module documentation).
    unsafe { asm!("ldrb {:w}, [{}]", out(reg) v, in(reg) addr, options(nostack, preserves_flags)) };
    v as u8
}

/// Stores the byte `v` at `addr`.
///
/// # Safety
/// See the module documentation.
#[inline(always)]
pub unsafe fn write8(addr: u64, v: u8) {
    // SAFETY: the caller's contract (module documentation).
    unsafe {
        asm!("strb {:w}, [{}]", in(reg) u32::from(v), in(reg) addr, options(nostack, preserves_flags))
    };
}

/// Loads the 32-bit word at `addr`.
///
/// # Safety
/// See the module documentation.
#[inline(always)]
pub unsafe fn read32(addr: u64) -> u32 {
    let v: u32;
    // SAFETY: the caller's contract (module documentation).
    unsafe { asm!("ldr {:w}, [{}]", out(reg) v, in(reg) addr, options(nostack, preserves_flags)) };
    v
}

/// Stores the 32-bit word `v` at `addr`.
///
/// # Safety
/// See the module documentation.
#[inline(always)]
pub unsafe fn write32(addr: u64, v: u32) {
    // SAFETY: the caller's contract (module documentation).
    unsafe { asm!("str {:w}, [{}]", in(reg) v, in(reg) addr, options(nostack, preserves_flags)) };
}

/// Loads the 64-bit word at `addr`.
///
/// # Safety
/// See the module documentation.
#[inline(always)]
pub unsafe fn read64(addr: u64) -> u64 {
    let v: u64;
    // SAFETY: the caller's contract (module documentation).
    unsafe { asm!("ldr {}, [{}]", out(reg) v, in(reg) addr, options(nostack, preserves_flags)) };
    v
}

/// Stores the 64-bit word `v` at `addr`.
///
/// # Safety
/// See the module documentation.
#[inline(always)]
pub unsafe fn write64(addr: u64, v: u64) {
    // SAFETY: the caller's contract (module documentation).
    unsafe { asm!("str {}, [{}]", in(reg) v, in(reg) addr, options(nostack, preserves_flags)) };
}
