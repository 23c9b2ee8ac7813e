//! The kernel side of the virtual ITS (the emulation core is the
//! `vigil-vits` crate): its register frames on a VM's MMIO bus. A host
//! LPI of a passed-through device reaches the core as if the device had
//! written GITS_TRANSLATER through `vm::passthrough`
//! (`Vits::translate_generation`).
//!
//! A CWRITER write traps here and the core processes the queued commands
//! synchronously before the guest resumes. Lock order (DESIGN.md vITS
//! invariant 10, enforced in the core): command queue, then routes, then
//! the VM's vGIC; a host LPI's translation takes routes and vGIC only.

use alloc::sync::Arc;
use vigil_vits::{Kick, Vits, VitsConfig};

use crate::bus::{MmioCtx, MmioDevice};
use crate::vgic::VmGic;

/// A VM's virtual ITS.
pub type VmIts = Arc<Vits>;

/// DeviceID that a vCPU's own GITS_TRANSLATER writes carry (a CPU has no
/// requester ID; IHI 0069 leaves it to the implementation). Guests that
/// want to signal themselves map this device.
pub const CPU_DEVICE_ID: u32 = 0;

pub fn new_vm_its(gic: &VmGic) -> VmIts {
    Arc::new(Vits::new(
        gic.clone(),
        VitsConfig {
            device_id_bits: 16,
            event_id_bits: 16,
            cpu_device_id: CPU_DEVICE_ID,
            // Bounded work per trap; the rest at the VM's next entries.
            slice: Some(vigil_vits::SLICE),
            ..VitsConfig::default()
        },
    ))
}

/// The two 64 KiB ITS frames (control, translation).
pub struct ItsFrames(pub VmIts);

impl MmioDevice for ItsFrames {
    fn read(&self, _ctx: &MmioCtx<'_>, offset: u64, width: u8) -> u64 {
        self.0.mmio_read(offset, width)
    }

    fn write(&self, ctx: &MmioCtx<'_>, offset: u64, width: u8, value: u64) -> Kick {
        self.0.mmio_write(offset, width, value, ctx.mem)
    }
}
