//! QEMU `virt` board defaults: the facts about this board that Vigil needs
//! before (or without) reading the device tree. Everything else is
//! discovered at boot.
//!
//! The QEMU command line for the board lives beside this file in
//! `qemu-args`, one argument per line, read by `scripts/qemu`.
#![no_std]
#![forbid(unsafe_code)]

/// Start of RAM. QEMU places the device tree here for a bare ELF image and
/// does not pass its address in x0.
pub const RAM_BASE: u64 = 0x4000_0000;

/// Where QEMU leaves its device tree for an ELF kernel (the base of RAM).
pub const DTB_ADDR: u64 = RAM_BASE;

/// Largest device tree QEMU may write there: the hypervisor is linked at
/// `RAM_BASE + DTB_MAX_SIZE` (see `linker/vigil.ld`), which QEMU respects
/// as the limit for the tree.
pub const DTB_MAX_SIZE: u64 = 2 << 20;

/// The PL011 used as the console until the device tree is parsed, so that
/// a failure to parse it can still be reported.
pub const EARLY_UART: u64 = 0x0900_0000;

/// Everything below RAM is device space on `virt` (GIC, UART, PCIe MMIO,
/// flash...). The hypervisor maps it Device-nGnRE, execute-never.
pub const LOW_DEVICE_SPACE: (u64, u64) = (0, RAM_BASE);

/// The high PCIe ECAM and MMIO windows (`highmem`), also device space.
pub const HIGH_DEVICE_SPACE: (u64, u64) = (0x40_0000_0000, 0x100_0000_0000);
