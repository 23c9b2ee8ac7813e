//! Ending the run with a status QEMU exits with.
//!
//! Two ways, chosen once at boot (`init`):
//! - **semihosting** (`vigil.exit=semihosting`): any status, through
//!   `qemu-exit`. Only the test harness asks for it, and only when every
//!   guest is code of this repository: with `-semihosting` QEMU services
//!   `HLT #0xF000` at EL1 too, before any EL2 trap could see it, so any guest
//!   could run host commands and reach host files (issue 21).
//! - otherwise (everything a user runs): status 0 is PSCI SYSTEM_OFF, and a
//!   non-zero status is a `pvpanic-pci` "panicked" event, which QEMU run
//!   with `-action panic=exit-failure` turns into exit status 1. The
//!   pvpanic function is Vigil's: `init` finds it on the root bus and
//!   places its BAR, and `hidden()` names what a VM given the PCIe bridge
//!   must not see (its configuration space and BAR).
//!
//! Until `init` has run (a device tree that cannot be read), no way is
//! known: Vigil prints why and halts rather than exit 0 for a failure.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use qemu_exit::QEMUExit;
use vigil_platform::pcie::{PcieHost, CONFIG_SPACE_SIZE};

use crate::console;

const QEMU: qemu_exit::AArch64 = qemu_exit::AArch64::new();

static SEMIHOSTING: AtomicBool = AtomicBool::new(false);
static INITIALISED: AtomicBool = AtomicBool::new(false);
/// CPU address of the pvpanic BAR (0: none).
static PVPANIC_BAR: AtomicU64 = AtomicU64::new(0);
/// CPU address of the pvpanic function's configuration space (0: none).
static PVPANIC_CONFIG: AtomicU64 = AtomicU64::new(0);

/// QEMU's pvpanic-pci (`hw/misc/pvpanic-pci.c`): Red Hat's vendor ID, device
/// 0x0011; BAR 0 is a one-byte event register.
const PVPANIC_ID: u32 = 0x0011_1b36;
/// `PVPANIC_PANICKED` (QEMU `include/standard-headers/misc/pvpanic.h`).
const PVPANIC_PANICKED: u8 = 1;
/// Room reserved for the BAR at the top of the 32-bit window: one 64 KiB
/// page, so a VM given the bridge is kept off it whatever its granule.
pub const BAR_SPAN: u64 = 0x1_0000;

/// How the run will end, from the boot argument `vigil.exit` and the PCIe
/// bridge. Call once on the boot CPU, before any other CPU runs.
pub fn init(way: Option<&str>, pcie: Option<&PcieHost<'_>>) -> Result<(), &'static str> {
    if let Some((config, bar)) = pcie.and_then(find_pvpanic) {
        PVPANIC_CONFIG.store(config, Ordering::Relaxed);
        PVPANIC_BAR.store(bar, Ordering::Relaxed);
    }
    INITIALISED.store(true, Ordering::Release);
    match way {
        Some("semihosting") => SEMIHOSTING.store(true, Ordering::Relaxed),
        None => {}
        Some(_) => return Err("vigil.exit: expected vigil.exit=semihosting"),
    }
    if !SEMIHOSTING.load(Ordering::Relaxed) && PVPANIC_BAR.load(Ordering::Relaxed) == 0 {
        log::warn!(
            "no pvpanic-pci device on the PCIe root bus: a failure cannot end QEMU with a non-zero status (add -device pvpanic-pci -action panic=exit-failure)"
        );
    }
    Ok(())
}

/// How the status reaches QEMU, for the boot log.
pub fn describe() -> &'static str {
    if SEMIHOSTING.load(Ordering::Relaxed) {
        "semihosting (any status)"
    } else if PVPANIC_BAR.load(Ordering::Relaxed) != 0 {
        "PSCI SYSTEM_OFF for 0, pvpanic for a failure (QEMU exits 1)"
    } else {
        "PSCI SYSTEM_OFF for 0; no way to report a failure"
    }
}

/// What a VM given the PCIe bridge must not reach: the pvpanic function's
/// configuration space and its BAR page, as (address, size).
pub fn hidden() -> [(u64, u64); 2] {
    let config = PVPANIC_CONFIG.load(Ordering::Relaxed);
    let bar = PVPANIC_BAR.load(Ordering::Relaxed);
    [
        (config, if config != 0 { CONFIG_SPACE_SIZE } else { 0 }),
        (bar, if bar != 0 { BAR_SPAN } else { 0 }),
    ]
}

/// Find pvpanic on the root bus, give it the last 64 KiB of the 32-bit
/// window and enable its memory decoding. Returns (config space, BAR).
fn find_pvpanic(p: &PcieHost<'_>) -> Option<(u64, u64)> {
    let window = p.mem32?;
    if window.size < BAR_SPAN || window.pci + window.size > 1 << 32 {
        return None;
    }
    let bus = p.bus_range.0;
    let config = (0..32)
        .filter_map(|dev| p.config_space(bus, dev, 0))
        .find(|&c| read32(c) == PVPANIC_ID)?;
    let at = window.size - BAR_SPAN;
    // PCI Local Bus 3.0 §6.2.5.1: a memory BAR keeps its low 4 bits.
    write32(config + 0x10, (window.pci + at) as u32);
    // Command register: Memory Space Enable (bit 1).
    write32(config + 0x04, read32(config + 0x04) | 2);
    Some((config, window.cpu + at))
}

fn read32(addr: u64) -> u32 {
    // SAFETY: `addr` is in the PCIe bridge's ECAM, device memory mapped at
    // EL2 (or accessed with the MMU off), and config reads have no side
    // effects.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn write32(addr: u64, v: u32) {
    // SAFETY: as `read32`; only pvpanic's own BAR and command register are
    // written, before any VM can use the bridge.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

pub fn exit_success() -> ! {
    exit(0)
}

pub fn exit_failure() -> ! {
    exit(1)
}

pub fn exit(code: u32) -> ! {
    if SEMIHOSTING.load(Ordering::Relaxed) {
        QEMU.exit(code)
    }
    if !INITIALISED.load(Ordering::Acquire) {
        console::emergency_println(format_args!(
            "exit: status {code} before the exit device was set up; halted (end QEMU with Ctrl-C)"
        ));
        halt()
    }
    if code != 0 {
        let bar = PVPANIC_BAR.load(Ordering::Relaxed);
        if bar != 0 {
            // SAFETY: Vigil's pvpanic BAR, placed and enabled by `init`,
            // mapped as device memory and hidden from every VM.
            unsafe { core::ptr::write_volatile(bar as *mut u8, PVPANIC_PANICKED) };
        } else {
            console::emergency_println(format_args!(
                "exit: status {code}, but no pvpanic device to report it; halted (end QEMU with Ctrl-C)"
            ));
        }
        halt()
    }
    crate::psci::system_off();
    halt()
}

fn halt() -> ! {
    loop {
        aarch64_cpu::asm::wfe();
    }
}
