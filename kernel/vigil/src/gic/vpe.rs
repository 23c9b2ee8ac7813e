//! GICv4.0 vPEs: one per vCPU of a VM with passthrough, when the ITS maps
//! the passed-through devices' MSIs to vLPIs directly (VMAPTI).
//!
//! A vPE has a virtual pending table (Vigil's, zeroed, 64 KiB aligned), a
//! doorbell (a host LPI of its own) and a place in the ITS's vPE table
//! (VMAPP, once: vCPUs are pinned, so a vPE never moves and VMOVP is never
//! needed). While its vCPU runs, the vPE is *resident* on the vCPU's
//! physical CPU: GICR_VPROPBASER names the guest's own LPI configuration
//! table and GICR_VPENDBASER.Valid is 1, and a device's MSI reaches the
//! guest's virtual CPU interface with no exit (IHI 0069H §9.4). Otherwise
//! the redistributor records the vLPI in the pending table and raises the
//! doorbell (§9.5), which makes the vCPU runnable again.
//!
//! The protocol that loses no wakeup is `vigil_gic::vpe::Residency`
//! (host-tested, and under shuttle against a model of the GICv4 in
//! `vigil-vits`): a vCPU that waits first makes its vPE non-resident and
//! reads PendingLast; clear, any vLPI from then on rings the doorbell,
//! which both wakes the CPU (a physical LPI at its own redistributor) and
//! marks the vPE as rung. This module is its registers.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use spin::Once;
use tock_registers::interfaces::{Readable, Writeable};
use vigil_gic::its_cmd::ItsCommand;
use vigil_gic::regs::{self, vlpi, GicrVlpiRegs, Shareability, GICR_VLPI_FRAME};
use vigil_gic::vpe::{Residency, VpeRegs};
use vigil_platform::MAX_VCPUS;

use super::its::{self, ItsError};
use crate::arch;

/// vPEs there can be: one per vCPU of the passthrough VM (only one VM
/// gets the bridge).
pub const MAX_VPES: usize = MAX_VCPUS;

/// Bounded wait for GICR_VPENDBASER.Dirty to clear.
const DIRTY_TIMEOUT_MS: u64 = 10;

pub struct Vpe {
    pub id: u16,
    /// The host LPI the redistributor raises for a vLPI that arrives while
    /// the vPE is not resident.
    pub doorbell: u32,
    pcpu: usize,
    /// The virtual pending table.
    vpt: u64,
    /// vINTIDs below 2^id_bits can be mapped directly (VMAPP's VPT_size).
    pub id_bits: u8,
    /// Only `pcpu` changes it.
    residency: Residency,
}

/// The registers a residency change writes: this vPE's, on its CPU's
/// redistributor, with the configuration table to give it.
struct Regs<'a> {
    vpe: &'a Vpe,
    prop: u64,
    id_bits: u8,
}

impl VpeRegs for Regs<'_> {
    fn make_valid(&self, idai: bool) {
        let r = self.vpe.regs();
        r.vpropbaser.set(vlpi::vpropbaser(
            self.prop,
            self.id_bits,
            Shareability::InnerShareable,
            regs::CACHE_RAWAWB,
        ));
        r.vpendbaser.set(vlpi::vpendbaser(
            self.vpe.vpt,
            true,
            idai,
            Shareability::InnerShareable,
            regs::CACHE_RAWAWB,
        ));
    }

    fn make_invalid(&self) -> Option<bool> {
        let r = self.vpe.regs();
        r.vpendbaser.set(vlpi::vpendbaser(
            self.vpe.vpt,
            false,
            false,
            Shareability::InnerShareable,
            regs::CACHE_RAWAWB,
        ));
        // PendingLast means something once Dirty is clear (§12.11.38).
        if !arch::wait_until(DIRTY_TIMEOUT_MS, || r.vpendbaser.get() & vlpi::DIRTY == 0) {
            log::error!(
                "vPE {}: GICR_VPENDBASER.Dirty still set after {DIRTY_TIMEOUT_MS} ms",
                self.vpe.id
            );
            return None;
        }
        Some(r.vpendbaser.get() & vlpi::PENDING_LAST != 0)
    }
}

static VPES: [Once<&'static Vpe>; MAX_VPES] = [const { Once::new() }; MAX_VPES];
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// First of the MAX_VPES doorbells (vPE n rings DOORBELLS + n).
static DOORBELLS: Once<Option<u32>> = Once::new();

/// Doorbells rung, for the log.
pub static DOORBELLS_RUNG: AtomicU64 = AtomicU64::new(0);

/// A vPE for a vCPU pinned to `pcpu`, mapped on the ITS; None on the v3
/// path (no ITS, no GICv4, or `vigil.gicv4=off`).
pub fn create(pcpu: usize) -> Result<Option<&'static Vpe>, ItsError> {
    let Some(its) = its::get().filter(|i| i.direct()) else {
        return Ok(None);
    };
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    if id >= MAX_VPES {
        return Err(ItsError::TooManyVpes);
    }
    let Some(first) = *DOORBELLS.call_once(|| its.alloc_lpis(MAX_VPES as u32)) else {
        return Err(ItsError::NoDoorbells);
    };
    let doorbell = first + id as u32;
    super::set_lpi_config(doorbell, super::DEFAULT_PRIORITY, true);
    let id_bits = (super::lpi_count() + vigil_gic::LPI_BASE)
        .trailing_zeros()
        .min(its.id_bits()) as u8;
    let bytes = (1u64 << id_bits) / 8;
    let vpt = crate::mm::alloc_frames(bytes.div_ceil(4096), 65536).map_err(ItsError::Memory)?;
    crate::arch::mmu::clean_to_poc(vpt, bytes as usize);
    its.run(&[
        ItsCommand::vmapp(id as u16, its.rdbase(pcpu), vpt, id_bits, true),
        ItsCommand::vsync(id as u16),
    ])?;
    let vpe: &'static Vpe = alloc::boxed::Box::leak(alloc::boxed::Box::new(Vpe {
        id: id as u16,
        doorbell,
        pcpu,
        vpt,
        id_bits,
        residency: Residency::new(),
    }));
    VPES[id].call_once(|| vpe);
    log::debug!("vPE {id} on CPU {pcpu}: pending table {vpt:#x}, doorbell {doorbell}");
    Ok(Some(vpe))
}

/// The vPE whose doorbell `intid` is.
pub fn by_doorbell(intid: u32) -> Option<&'static Vpe> {
    let first = (*DOORBELLS.get()?)?;
    let n = intid.checked_sub(first)? as usize;
    VPES.get(n)?.get().copied()
}

impl Vpe {
    fn regs(&self) -> &'static GicrVlpiRegs {
        // SAFETY: the VLPI_base frame of a GICv4 redistributor found in the
        // device tree's GICR range (GICR_TYPER.VLPIS, which the 256 KiB
        // stride implies), mapped as device memory for good.
        unsafe { &*((super::gicr_addr(self.pcpu) + GICR_VLPI_FRAME) as *const GicrVlpiRegs) }
    }

    pub fn is_resident(&self) -> bool {
        self.residency.is_resident()
    }

    /// Make the vPE resident on this CPU (its own), with the guest's LPI
    /// configuration table at host-physical `prop` for `id_bits` INTID
    /// bits.
    pub fn schedule(&self, prop: u64, id_bits: u8) {
        debug_assert_eq!(arch::cpu_index(), self.pcpu);
        let regs = Regs {
            vpe: self,
            prop,
            id_bits: id_bits.min(self.id_bits),
        };
        self.residency.schedule(&regs);
    }

    /// Make it non-resident. Returns whether a vLPI is pending for it
    /// (PendingLast): its vCPU then has an interrupt to take and must not
    /// sleep. From here on, a vLPI rings the doorbell.
    pub fn deschedule(&self) -> bool {
        debug_assert_eq!(arch::cpu_index(), self.pcpu);
        let regs = Regs {
            vpe: self,
            prop: 0,
            id_bits: 0,
        };
        self.residency.deschedule(&regs)
    }

    /// The doorbell rang (its handler, on this vPE's CPU).
    pub fn ring(&self) {
        self.residency.ring();
        DOORBELLS_RUNG.fetch_add(1, Ordering::Relaxed);
    }

    /// Its vCPU stopped running with a vLPI pending: as if the doorbell
    /// had rung.
    pub fn mark_pending(&self) {
        self.residency.mark_pending();
    }

    /// Its vCPU runs, but the vPE cannot be made resident (LPIs are off
    /// in the guest): what rang is no reason to wake it again.
    pub fn forget_rang(&self) {
        self.residency.forget_rang();
    }

    /// Whether a vLPI arrived while the vPE was not resident.
    pub fn rang(&self) -> bool {
        self.residency.rang()
    }
}
