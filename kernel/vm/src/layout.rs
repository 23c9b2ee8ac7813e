//! The machine every VM sees (DESIGN.md, "What every VM sees"): a
//! QEMU-`virt`-like memory map.

/// Distributor, 64 KiB.
pub const GICD_BASE: u64 = 0x0800_0000;
pub const GICD_SIZE: u64 = 0x1_0000;
/// The ITS control and translation frames, 128 KiB.
pub const ITS_BASE: u64 = 0x0808_0000;
pub const ITS_SIZE: u64 = 0x2_0000;
/// Redistributors: one 128 KiB frame pair per vCPU.
pub const GICR_BASE: u64 = 0x080a_0000;
pub const GICR_STRIDE: u64 = 0x2_0000;
/// The PL011 console.
pub const UART_BASE: u64 = 0x0900_0000;
pub const UART_SIZE: u64 = 0x1000;
/// Its SPI (INTID 33, SPI 1), as on QEMU `virt`.
pub const UART_SPI: u32 = 1;
/// Vigil's MMIO test device, present only in test VMs.
pub const TEST_DEVICE_BASE: u64 = 0x0a00_0000;
pub const TEST_DEVICE_SIZE: u64 = 0x1000;
/// Guest RAM starts here unless the VM is identity-mapped.
pub const RAM_BASE: u64 = 0x4000_0000;

/// Architected timer PPIs as device-tree PPI numbers (INTID - 16): secure
/// physical, non-secure physical, virtual, hypervisor.
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// The maintenance interrupt, PPI 9 (INTID 25).
pub const MAINTENANCE_PPI: u32 = 9;
