//! Vigil's virtual ITS: the hardware-independent emulation core.
//!
//! A [`Vits`] owns one VM's ITS state: the register frame (at the VM's
//! `0x0808_0000`), the command queue, the device table (flat or two-level),
//! the ITTs and the collection table. It translates events to vLPIs and
//! hands them to the VM's [`vigil_vgic::Vgic`], which owns the per-LPI
//! interrupt state (as a redistributor does) and delivers them through the
//! list registers.
//!
//! What the kernel does with it:
//!
//! * forward trapped accesses to the two ITS frames to [`Vits::mmio_read`] /
//!   [`Vits::mmio_write`] (offset relative to the ITS base); a `CWRITER`
//!   write runs the queued commands before it returns;
//! * mirror a passed-through device's mappings onto the physical ITS with
//!   [`mirror::PassMirror`] over its [`mirror::PhysIts`];
//! * raise an LPI for a passthrough device or a paravirtual service with
//!   [`Vits::translate`] (DeviceID, EventID), from any CPU;
//! * kick the vCPUs named in the returned [`vigil_vgic::Kick`];
//! * implement [`vigil_vgic::GuestMemory`] over the VM's RAM.
//!
//! The lock order, the error policy and the invariants are documented in
//! [`its`] and at each place they are enforced
//! ("vITS invariant N").

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod cmd;
pub mod hostlpi;
pub mod its;
pub mod mirror;

pub use cmd::{Command, RawCommand};
pub use its::{
    CmdError, Mirror, TranslateError, Vits, VitsConfig, GITS_SIZE, GITS_TRANSLATER, HEAP_AT_QUOTA,
    ITT_ENTRY_SIZE, MAX_MAPPINGS, SLICE, TABLE_ENTRY_SIZE, TABLE_PAGE, VITS_IIDR,
};
pub use vigil_vgic::{GuestMemory, Kick, MemError};
