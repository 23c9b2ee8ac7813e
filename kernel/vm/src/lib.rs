//! The hardware-independent parts of Vigil's virtual machines, tested on
//! the host: exception syndromes and MMIO access decoding, the PSCI power
//! state machine, the device tree each guest gets, and where a guest's
//! images go in its RAM.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod elf;
pub mod esr;
pub mod fdt;
pub mod idregs;
pub mod image;
pub mod layout;
pub mod pl031;
pub mod psci;
