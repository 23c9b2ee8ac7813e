//! The bus of emulated devices: devices claim guest-physical ranges of a
//! VM; a trapped access with a valid syndrome is dispatched to the device
//! that owns the address (guest RAM is read through `vigil_guestmem`). A
//! leaf below the device models (`vgic`, `vits`, `vm`'s UART, RTC, virtio)
//! and the VMs that own them, so none of them need `vm` for it. Not to be
//! confused with `regblock`, Vigil's own access to physical device
//! registers.

use alloc::vec::Vec;
use vigil_vgic::{GuestMemory, Kick};

/// Who is accessing: the vCPU, and its VM's memory (for devices that read
/// guest tables, like the redistributors and the ITS).
pub struct MmioCtx<'a> {
    pub vcpu: usize,
    pub mem: &'a dyn GuestMemory,
}

/// An emulated device. `offset` is from the start of its range; `width`
/// is 1, 2, 4 or 8 bytes. Devices do their own locking: several vCPUs of a
/// VM may access one at once. A write returns the vCPUs it gave work to.
pub trait MmioDevice: Sync + Send {
    fn read(&self, ctx: &MmioCtx<'_>, offset: u64, width: u8) -> u64;
    fn write(&self, ctx: &MmioCtx<'_>, offset: u64, width: u8, value: u64) -> Kick;
}

struct Range {
    base: u64,
    size: u64,
    dev: &'static dyn MmioDevice,
}

/// The MMIO map of one VM, fixed once the VM is built.
#[derive(Default)]
pub struct MmioBus {
    ranges: Vec<Range>,
}

impl MmioBus {
    /// Claim `[base, base + size)` for `dev`. Overlaps are a programming
    /// error in VM construction.
    pub fn add(&mut self, base: u64, size: u64, dev: &'static dyn MmioDevice) {
        assert!(
            self.ranges
                .iter()
                .all(|r| base + size <= r.base || base >= r.base + r.size),
            "MMIO ranges overlap at {base:#x}"
        );
        self.ranges.push(Range { base, size, dev });
    }

    /// The device and offset for guest-physical address `ipa`, if any.
    pub fn find(&self, ipa: u64) -> Option<(&'static dyn MmioDevice, u64)> {
        self.ranges
            .iter()
            .find(|r| ipa >= r.base && ipa - r.base < r.size)
            .map(|r| (r.dev, ipa - r.base))
    }
}

/// A PCI function's configuration space that a VM must not see: reads as
/// all ones, as a configuration read of an absent function completes
/// (PCIe Base 6.0 §2.3.2, Unsupported Request), and writes are ignored.
pub struct NoFunction;

impl MmioDevice for NoFunction {
    fn read(&self, _ctx: &MmioCtx<'_>, _offset: u64, width: u8) -> u64 {
        u64::MAX >> (64 - 8 * u32::from(width))
    }

    fn write(&self, _ctx: &MmioCtx<'_>, _offset: u64, _width: u8, _value: u64) -> Kick {
        Kick::default()
    }
}
