//! The hardware-independent half of Vigil's physical GICv3 driver: register
//! layouts, ITS command encoding, the command-queue ring arithmetic, SGI
//! register encoding and the host-LPI allocator. Everything here is plain
//! data and arithmetic so it is tested on the host; the kernel's `gic/`
//! module does the MMIO and system-register accesses.
//!
//! References are to the GICv3/v4 architecture specification, IHI 0069H.
#![no_std]
#![forbid(unsafe_code)]

pub mod intid;
pub mod its_cmd;
pub mod lpi;
pub mod queue;
pub mod redist;
pub mod regs;
pub mod sgi;
pub mod vpe;

pub use intid::{IntId, IntKind, LPI_BASE, PPI_BASE, SPI_BASE};
/// The special INTID meaning "no pending interrupt".
pub const SPURIOUS: u32 = 1023;
/// SGIs are 0..15.
pub const SGI_COUNT: u32 = PPI_BASE;
