//! Vigil's virtual GICv3: the hardware-independent core.
//!
//! What the kernel does with it, per VM ([`Vgic`]):
//!
//! * **MMIO**: forward trapped accesses to the distributor frame
//!   ([`Vgic::gicd_read`]/[`Vgic::gicd_write`]) and to the redistributor
//!   region ([`Vgic::gicr_read`]/[`Vgic::gicr_write`], offsets relative to
//!   the first redistributor, 128 KiB per vCPU).
//! * **Entry**: [`Vgic::flush`] fills the N list registers (N from
//!   `ICH_VTR_EL2`, see [`IchVtr::list_regs`]) and returns the
//!   `ICH_HCR_EL2` value (underflow / no-pending requests included).
//! * **Exit**: read back the LRs, `ICH_MISR_EL2` and `ICH_EISR_EL2`, and
//!   call [`Vgic::fold`] on *every* exit (maintenance interrupt or not); it
//!   folds the LR state back and runs one handler per maintenance reason.
//! * **Injection** from any CPU: [`Vgic::set_line`] (level lines and edges of
//!   SPIs/PPIs), [`Vgic::pulse`], [`Vgic::send_sgi`] (a trapped
//!   `ICC_SGI1R_EL1` write), LPIs through the vITS crate. Each returns a
//!   [`Kick`]: the vCPUs that must be made to exit (if running) or woken
//!   (if in WFI) so their next flush sees the new state.
//! * **Virtual timer**: [`Vgic::map_hw`] links PPI 27 to the physical PPI so
//!   its LR carries the HW bit; drive its line with [`Vgic::set_line`].
//!
//! The run loop of one vCPU, in outline:
//!
//! ```text
//! let n = IchVtr(read ICH_VTR_EL2).list_regs();          // once, at boot
//! loop {
//!     vgic.set_line(v, VTIMER_PPI, vtimer.asserted(CNTPCT));
//!     let (hcr, kick) = vgic.flush(v, &mut lrs[..n]);   // lock: VM vGIC
//!     write ICH_LR<0..n>_EL2 = lrs, ICH_HCR_EL2 = hcr, restore VMCR/APRs;
//!     enter guest ... exit;
//!     read back lrs, misr = ICH_MISR_EL2, eisr = ICH_EISR_EL2; save VMCR/APRs;
//!     write ICH_HCR_EL2 = 0;
//!     let rep = vgic.fold(v, &lrs[..n], IchMisr::from_bits(misr), eisr);
//!     kick every vCPU in rep.kick; tell devices about rep.resampled;
//!     handle the exit (MMIO -> gicd_*/gicr_*/Vits::mmio_*, SGI1R ->
//!     send_sgi, WFI -> sleep until has_deliverable(v) or a kick) and kick
//!     the vCPUs in the returned Kick.
//! }
//! ```
//!
//! Locking: one lock per VM protects all interrupt state (distributor,
//! redistributors, per-LPI state, every vCPU's list). The vITS takes it
//! *after* its own locks (see the lock order in `vigil-vits`).

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

#[doc(hidden)]
pub use log as __log;

mod irq;
pub mod log_limit;
mod lpis;
mod mem;
mod mmio;
mod regs;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod state;
pub mod sync;
#[cfg(test)]
mod tests;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

pub use irq::{IntId, IntKind, LPI_BASE, MAINTENANCE_PPI, SPI_BASE, VTIMER_PPI};
pub use mem::{GuestMemory, MemError, NoMemory, RamWindow};
pub use mmio::{
    merge_part, read_lpi_config, read_part, PropTable, GICD_SIZE, GICR_SGI_BASE, GICR_STRIDE,
    VGIC_IIDR,
};
pub use regs::{
    mpidr_aff, CpuIfContext, IchHcr, IchMisr, IchVtr, LrState, LrValue, SgiRequest, VtimerContext,
};
pub use state::{FoldReport, LpiConfig, VcpuStats, VgicState};
pub use sync::{Mutex, MutexGuard};

/// A set of vCPUs (by index, at most 64) that must be kicked: made to exit
/// if running, woken if waiting for an interrupt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kick(u64);

impl Kick {
    /// Add vCPU `v`.
    pub fn add(&mut self, v: usize) {
        if v < 64 {
            self.0 |= 1 << v;
        }
    }
    /// Whether `v` is in the set.
    pub fn contains(&self, v: usize) -> bool {
        v < 64 && self.0 & (1 << v) != 0
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
    /// Union with another set.
    pub fn merge(&mut self, other: Kick) {
        self.0 |= other.0;
    }
    /// The vCPU indices in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let v = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(v)
        })
    }
}

/// Shape of one VM's virtual GIC.
#[derive(Clone, Debug)]
pub struct VgicConfig {
    /// MPIDR of each vCPU, in vCPU index order (also redistributor order).
    pub mpidrs: Vec<u64>,
    /// Number of SPIs (rounded up to a multiple of 32, at most 988).
    pub nr_spis: u32,
    /// Virtual priority bits (`ICH_VTR_EL2.PRIbits` + 1; QEMU: 5).
    pub pri_bits: u8,
    /// LPI INTID bits reported in `GICD_TYPER.IDbits` (14..=24; the LPI
    /// table has a level-1 slot per block of INTIDs).
    pub lpi_id_bits: u8,
    /// Whether the VM has an ITS (LPIs supported).
    pub lpis: bool,
}

impl VgicConfig {
    /// A configuration with `n` vCPUs in clusters of 16: vCPU `i` has
    /// Aff1 = i / 16, Aff0 = i % 16 (the layout of Vigil's VMs,
    /// `vigil_vm::layout::vcpu_mpidr`, which a target list can address
    /// without the range selector).
    pub fn simple(n: usize) -> Self {
        Self {
            mpidrs: (0..n)
                .map(|i| (((i / 16) << 8) | (i % 16)) as u64)
                .collect(),
            nr_spis: 64,
            pri_bits: 5,
            lpi_id_bits: 16,
            lpis: true,
        }
    }
}

/// One VM's virtual GICv3.
pub struct Vgic {
    state: Mutex<VgicState>,
    /// Per vCPU: whether it has anything listed (pending or active for it,
    /// or in its list registers). The state writes it under `state` as a
    /// vCPU's list changes, and readers use it without the lock: false
    /// means the next flush would load nothing (the exit fast path) and
    /// the vCPU has nothing to wake for.
    listed: Arc<[AtomicBool]>,
    nr_vcpus: usize,
    /// The shape it was built with, for [`Vgic::reset`].
    cfg: VgicConfig,
}

impl Vgic {
    /// Build the vGIC of a VM, everything at reset values.
    pub fn new(cfg: &VgicConfig) -> Self {
        assert!(
            !cfg.mpidrs.is_empty() && cfg.mpidrs.len() <= 64,
            "1..=64 vCPUs"
        );
        let listed: Arc<[AtomicBool]> = cfg.mpidrs.iter().map(|_| AtomicBool::new(false)).collect();
        Self {
            state: Mutex::new(Self::reset_state(cfg, &listed)),
            listed,
            nr_vcpus: cfg.mpidrs.len(),
            cfg: cfg.clone(),
        }
    }

    fn reset_state(cfg: &VgicConfig, listed: &Arc<[AtomicBool]>) -> VgicState {
        // ITLinesNumber <= 30 keeps every SPI below the special INTIDs.
        let nr_spis = cfg.nr_spis.div_ceil(32).clamp(1, 30) * 32;
        VgicState::new(
            &cfg.mpidrs,
            nr_spis,
            cfg.pri_bits,
            cfg.lpi_id_bits.clamp(14, lpis::MAX_LPI_ID_BITS),
            cfg.lpis,
            listed.clone(),
        )
    }

    /// Back to power-on state (a VM reset): every interrupt inactive,
    /// disabled and not pending, registers at their reset values, no LPI
    /// state. Hardware links ([`Vgic::map_hw`]) must be made again.
    pub fn reset(&self) {
        *self.locked() = Self::reset_state(&self.cfg, &self.listed);
    }

    /// Number of vCPUs.
    pub fn nr_vcpus(&self) -> usize {
        self.nr_vcpus
    }

    /// Lock the VM's interrupt state (for the vITS and for inspection).
    pub fn lock(&self) -> MutexGuard<'_, VgicState> {
        self.locked()
    }

    /// Take the state lock for a read that changes nothing.
    fn read_locked(&self) -> MutexGuard<'_, VgicState> {
        self.state.lock()
    }

    /// Take the state lock (to change the state).
    fn locked(&self) -> MutexGuard<'_, VgicState> {
        self.state.lock()
    }

    /// Whether a flush for vCPU `v` would load nothing: nothing is listed
    /// for it (pending or active) and nothing is in its list registers.
    /// Then the list registers can stay invalid. A lock-free check for the
    /// exit fast path; a change another CPU makes is seen here no later
    /// than that CPU's kick of `v` arrives.
    pub fn is_idle(&self, v: usize) -> bool {
        self.listed
            .get(v)
            .is_none_or(|f| !f.load(Ordering::Acquire))
    }

    /// Before entering vCPU `v`: write `lrs` (all N of them; unused ones
    /// become Invalid) and return the `ICH_HCR_EL2` value to program, and
    /// the vCPUs to kick (an interrupt found to belong elsewhere moved to
    /// them; normally none).
    ///
    /// The highest-priority interrupts go first (active ones before
    /// pending ones, then by priority, then by INTID); no vINTID appears
    /// twice; if more are waiting than fit, UIE (and NPIE when an LR is
    /// pending) are set so a maintenance interrupt refills.
    pub fn flush(&self, v: usize, lrs: &mut [LrValue]) -> (IchHcr, Kick) {
        if self.is_idle(v) {
            // Nothing listed for it: nothing to load.
            lrs.fill(LrValue::INVALID);
            return (IchHcr::from_bits(IchHcr::EN), Kick::default());
        }
        let mut kick = Kick::default();
        let hcr = self.locked().flush(v, lrs, &mut kick);
        (hcr, kick)
    }

    /// After any exit of vCPU `v`: fold the LR values read back (same
    /// order and count as written by [`Vgic::flush`]) and handle the
    /// maintenance reasons in `misr` (`eisr` = `ICH_EISR_EL2`).
    pub fn fold(&self, v: usize, lrs: &[LrValue], misr: IchMisr, eisr: u32) -> FoldReport {
        self.locked().fold(v, lrs, misr, eisr)
    }

    /// [`Vgic::fold`] when every list register the flush wrote came back
    /// inert: `ICH_ELRSR_EL2` has their bits set, so each is Invalid and
    /// none asks for an EOI maintenance interrupt (IHI 0069 §12.5.5), and
    /// `ICH_EISR_EL2` is zero. Their values need not be read: each folds
    /// as what was written, in state Invalid (the usual end of an
    /// interrupt, taken and deactivated).
    pub fn fold_spent(&self, v: usize, misr: IchMisr) -> FoldReport {
        self.locked().fold_spent(v, misr)
    }

    /// Drive the input of interrupt `intid` (SGI/PPI of vCPU `v`, or SPI):
    /// for a level-sensitive interrupt this is its line level; for an
    /// edge-triggered one, `true` is an edge.
    pub fn set_line(&self, v: usize, intid: u32, level: bool) -> Kick {
        let mut k = Kick::default();
        self.locked().set_line(v, intid, level, &mut k);
        k
    }

    /// Set the pending latch of `intid` (an edge, whatever its config).
    pub fn pulse(&self, v: usize, intid: u32) -> Kick {
        let mut k = Kick::default();
        let mut st = self.locked();
        if let Some(irq) = st.irq_mut(v, intid) {
            irq.latch = true;
            st.queue(v, intid, &mut k);
        }
        k
    }

    /// A trapped write of `ICC_SGI1R_EL1` (`group1` = true) or
    /// `ICC_SGI0R_EL1` by vCPU `from`.
    pub fn send_sgi(&self, from: usize, value: u64, group1: bool) -> Kick {
        let mut k = Kick::default();
        self.locked()
            .sgi(from, &SgiRequest::decode(value), group1, &mut k);
        k
    }

    /// Link (or unlink) virtual `intid` of vCPU `v` to physical `pintid`:
    /// its LRs then carry HW = 1 and the guest's deactivation deactivates
    /// the physical interrupt (the virtual timer, PPI 27).
    pub fn map_hw(&self, v: usize, intid: u32, pintid: Option<u32>) {
        if let Some(irq) = self.locked().irq_mut(v, intid) {
            irq.hw = pintid;
        }
    }

    /// Whether virtual `intid` of vCPU `v` is pending, active, or held in
    /// a list register. For a hardware-linked interrupt whose physical twin
    /// the hypervisor left active, `false` means nobody will deactivate
    /// the physical one any more: the hypervisor must.
    pub fn in_flight(&self, v: usize, intid: u32) -> bool {
        self.read_locked()
            .irq(v, intid)
            .is_some_and(|i| i.pending() || i.active || i.loaded)
    }

    /// Whether vCPU `v` has an interrupt to take (wake it from WFI).
    pub fn has_deliverable(&self, v: usize) -> bool {
        // Nothing listed, nothing to take: no lock on a WFI exit of an
        // idle vCPU.
        !self.is_idle(v) && self.read_locked().has_deliverable(v)
    }

    /// [`VgicState::describe`] of vCPU `v`, for a state dump. It never
    /// waits: if the state lock stays held (its holder may be the thing
    /// that is stuck), it says so instead.
    pub fn describe(&self, v: usize, f: &mut dyn core::fmt::Write) -> core::fmt::Result {
        for _ in 0..10_000 {
            if let Some(st) = self.state.try_lock() {
                return st.describe(v, f);
            }
            core::hint::spin_loop();
        }
        write!(f, "state lock held elsewhere")
    }

    /// Counters of vCPU `v`.
    pub fn stats(&self, v: usize) -> VcpuStats {
        self.read_locked().vcpus[v].stats
    }

    /// Read `len` bytes at `offset` of the distributor frame, by vCPU `v`.
    pub fn gicd_read(&self, v: usize, offset: u64, len: u8) -> u64 {
        // Distributor reads have no side effects (IHI 0069 §12.9: no
        // acknowledge register in the distributor).
        let st = self.read_locked();
        match u32::try_from(offset) {
            Ok(off) if offset < GICD_SIZE => mmio::read(
                &st,
                mmio::GICD_REGIONS,
                "GICD",
                off,
                len,
                v,
                true,
                &NoMemory,
            ),
            _ => 0,
        }
    }

    /// Write `len` bytes at `offset` of the distributor frame, by vCPU `v`.
    pub fn gicd_write(&self, v: usize, offset: u64, len: u8, value: u64) -> Kick {
        let mut st = self.locked();
        match u32::try_from(offset) {
            Ok(off) if offset < GICD_SIZE => mmio::write(
                &mut st,
                mmio::GICD_REGIONS,
                "GICD",
                off,
                len,
                v,
                true,
                value,
                &NoMemory,
            ),
            _ => Kick::default(),
        }
    }

    /// Split a redistributor-region offset into (vCPU, offset in frame).
    fn gicr_frame(&self, offset: u64) -> Option<(usize, u32)> {
        let v = usize::try_from(offset / GICR_STRIDE).ok()?;
        (v < self.nr_vcpus).then_some((v, (offset % GICR_STRIDE) as u32))
    }

    /// Read at `offset` of the redistributor region (frame `offset / 128 KiB`
    /// belongs to vCPU `offset / 128 KiB`).
    pub fn gicr_read(&self, offset: u64, len: u8) -> u64 {
        let Some((v, off)) = self.gicr_frame(offset) else {
            crate::guest_warn!("vgic: GICR +{offset:#x}: beyond the last redistributor, RAZ");
            return 0;
        };
        let st = self.read_locked();
        mmio::read(
            &st,
            mmio::GICR_REGIONS,
            "GICR",
            off,
            len,
            v,
            false,
            &NoMemory,
        )
    }

    /// Write at `offset` of the redistributor region. `mem` is used to read
    /// the LPI pending table when `GICR_CTLR.EnableLPIs` is set.
    pub fn gicr_write(&self, offset: u64, len: u8, value: u64, mem: &dyn GuestMemory) -> Kick {
        let Some((v, off)) = self.gicr_frame(offset) else {
            crate::guest_warn!("vgic: GICR +{offset:#x}: beyond the last redistributor, WI");
            return Kick::default();
        };
        let mut st = self.locked();
        mmio::write(
            &mut st,
            mmio::GICR_REGIONS,
            "GICR",
            off,
            len,
            v,
            false,
            value,
            mem,
        )
    }
}
