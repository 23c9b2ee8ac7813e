//! The hardware-independent half of Vigil's physical GICv3 driver: register
//! layouts, ITS command encoding, the command-queue ring arithmetic, SGI
//! register encoding and the host-LPI allocator. Everything here is plain
//! data and arithmetic so it is tested on the host; the kernel's `gic/`
//! module does the MMIO and system-register accesses.
//!
//! References are to the GICv3/v4 architecture specification, IHI 0069H.
#![no_std]
#![forbid(unsafe_code)]

pub mod its_cmd;
pub mod lpi;
pub mod queue;
pub mod redist;
pub mod regs;
pub mod sgi;

/// First LPI INTID (IHI 0069 §1.2.1, "INTID ranges").
pub const LPI_BASE: u32 = 8192;
/// INTIDs 1020..1023 are special; 1023 means "no pending interrupt".
pub const SPURIOUS: u32 = 1023;
/// SGIs are 0..15, PPIs 16..31, SPIs 32..1019.
pub const SGI_COUNT: u32 = 16;
pub const PPI_BASE: u32 = 16;
pub const SPI_BASE: u32 = 32;
