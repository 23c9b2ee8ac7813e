//! Virtio 1.2 (OASIS virtio-v1.2-cs01) for Vigil's driver domain.
//!
//! - [`mmio`]: the virtio-mmio transport (§4.2.2, non-legacy, Version 2)
//!   that Vigil emulates for a client VM: its register file, feature
//!   negotiation, queue configuration, status, reset and interrupt state.
//!   The hypervisor owns one per client device.
//! - [`queue`]: split virtqueues (§2.7) walked by the device side, every
//!   descriptor checked against the memory window and the queue size.
//! - [`blk`]: the virtio-blk device model (§5.2) the service program runs.
//! - [`channel`]: the PCI function through which a service VM's userspace
//!   serves a client device (uio_pci_generic, BARs mmapped from sysfs).
//!
//! Everything here is plain logic over a [`GuestRam`] window, so it is
//! tested on the host against hostile guests.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod blk;
pub mod channel;
pub mod mmio;
pub mod queue;

/// An address outside the memory a device may reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfRange {
    pub addr: u64,
    pub len: u64,
}

/// A driver's memory as a device sees it: guest-physical addresses of the
/// client, reachable only inside one window (the client's RAM). Interior
/// mutability: the other side (the driver) may change it at any time.
pub trait GuestRam {
    /// Copy `buf.len()` bytes at `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), OutOfRange>;
    /// Copy `buf` to `addr`.
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), OutOfRange>;
}
