//! GICv4.0 vPE residency: the protocol by which a vCPU's vPE is resident
//! on its physical CPU's redistributor while the vCPU runs, and by which a
//! vCPU that waits loses no vLPI (IHI 0069H §9.4-9.5, §12.11.38).
//!
//! * [`Residency::schedule`]: the mark "the doorbell rang" is cleared,
//!   *then* GICR_VPENDBASER.Valid becomes 1, when the redistributor scans
//!   the pending table itself; a doorbell from before says nothing new.
//! * [`Residency::deschedule`]: Valid becomes 0, then once Dirty is clear
//!   PendingLast says whether a vLPI is pending. Set: the vCPU has an
//!   interrupt to take and must not sleep. Clear: every vLPI from here on
//!   rings the doorbell, whose handler ([`Residency::ring`]) runs on the
//!   vPE's own CPU, so the vCPU sleeps only while the mark is clear.
//!
//! Everything here runs on the vPE's CPU (the doorbell is a physical LPI
//! at its redistributor): the marks are atomics for `Sync`, never raced.
//! Other CPUs reach a vPE only through the ITS (MSIs, VMAPTI, DISCARD,
//! VMOVI), i.e. through the hardware the [`VpeRegs`] seam stands for;
//! `vigil-vits`'s `tests/gicv4.rs` runs this protocol under shuttle
//! against a model of that hardware.

use core::sync::atomic::{AtomicBool, Ordering};

/// One vPE's residency registers on its CPU's redistributor (the VLPI_base
/// frame): the kernel's MMIO, or a model in tests.
pub trait VpeRegs {
    /// GICR_VPROPBASER for this vPE, then GICR_VPENDBASER with Valid = 1
    /// (and IDAI if `idai`).
    fn make_valid(&self, idai: bool);
    /// GICR_VPENDBASER.Valid = 0; wait (bounded) for Dirty to clear and
    /// return PendingLast, or None if Dirty never cleared.
    fn make_invalid(&self) -> Option<bool>;
}

/// A vPE's residency, as its CPU tracks it.
pub struct Residency {
    /// GICR_VPENDBASER.Valid as last written.
    resident: AtomicBool,
    /// Never resident yet: the first residency says IDAI (a freshly zeroed
    /// pending table's IMPDEF area holds no summary).
    fresh: AtomicBool,
    /// A vLPI arrived while the vPE was not resident (its doorbell rang),
    /// or one was pending when it stopped being.
    rang: AtomicBool,
}

impl Default for Residency {
    fn default() -> Self {
        Self::new()
    }
}

impl Residency {
    pub const fn new() -> Self {
        Self {
            resident: AtomicBool::new(false),
            fresh: AtomicBool::new(true),
            rang: AtomicBool::new(false),
        }
    }

    pub fn is_resident(&self) -> bool {
        self.resident.load(Ordering::Relaxed)
    }

    /// Make the vPE resident (no-op if it is).
    pub fn schedule(&self, regs: &impl VpeRegs) {
        if self.resident.load(Ordering::Relaxed) {
            return;
        }
        self.rang.store(false, Ordering::SeqCst);
        regs.make_valid(self.fresh.swap(false, Ordering::Relaxed));
        self.resident.store(true, Ordering::Relaxed);
    }

    /// Make it non-resident (no-op if it is not); whether a vLPI is
    /// pending for it. A Dirty bit that never clears counts as pending: a
    /// spurious wakeup, never a lost one.
    pub fn deschedule(&self, regs: &impl VpeRegs) -> bool {
        if !self.resident.swap(false, Ordering::Relaxed) {
            return false;
        }
        regs.make_invalid().unwrap_or(true)
    }

    /// The doorbell's handler.
    pub fn ring(&self) {
        self.rang.store(true, Ordering::SeqCst);
    }

    /// Its vCPU stopped running with a vLPI pending: as if the doorbell
    /// had rung (the scheduler then finds it runnable).
    pub fn mark_pending(&self) {
        self.rang.store(true, Ordering::SeqCst);
    }

    /// Its vCPU runs, but the vPE cannot be made resident (the guest's
    /// LPIs are off): the vLPIs stay in the pending table, and what rang
    /// is no reason to wake the vCPU again.
    pub fn forget_rang(&self) {
        self.rang.store(false, Ordering::SeqCst);
    }

    /// Whether a vLPI arrived while the vPE was not resident.
    pub fn rang(&self) -> bool {
        self.rang.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    /// GICR_VPENDBASER of one redistributor with a pending table of one
    /// bit: what `make_valid`/`make_invalid` do to it.
    #[derive(Default)]
    struct Regs {
        valid: Cell<bool>,
        idai: Cell<Option<bool>>,
        pending: Cell<bool>,
        dirty_forever: Cell<bool>,
        writes: Cell<u32>,
    }

    impl VpeRegs for Regs {
        fn make_valid(&self, idai: bool) {
            assert!(!self.valid.get(), "Valid written 1 while 1");
            self.valid.set(true);
            self.idai.set(Some(idai));
            self.writes.set(self.writes.get() + 1);
        }
        fn make_invalid(&self) -> Option<bool> {
            assert!(self.valid.get(), "Valid written 0 while 0");
            self.valid.set(false);
            self.writes.set(self.writes.get() + 1);
            (!self.dirty_forever.get()).then(|| self.pending.get())
        }
    }

    #[test]
    fn idai_only_the_first_time_and_no_redundant_writes() {
        let (r, h) = (Residency::new(), Regs::default());
        r.schedule(&h);
        assert_eq!(h.idai.get(), Some(true));
        r.schedule(&h);
        assert_eq!(h.writes.get(), 1, "already resident: no write");
        assert!(!r.deschedule(&h));
        assert!(!r.deschedule(&h), "not resident: nothing pending");
        assert_eq!(h.writes.get(), 2);
        r.schedule(&h);
        assert_eq!(h.idai.get(), Some(false));
    }

    #[test]
    fn pending_last_and_doorbells_make_the_vcpu_wake() {
        let (r, h) = (Residency::new(), Regs::default());
        r.schedule(&h);
        h.pending.set(true);
        assert!(r.deschedule(&h), "PendingLast");
        r.schedule(&h);
        h.pending.set(false);
        assert!(!r.deschedule(&h));
        assert!(!r.rang());
        r.ring();
        assert!(r.rang());
        // Cleared before Valid = 1: the redistributor's own scan covers it.
        r.schedule(&h);
        assert!(!r.rang());
        assert!(!r.deschedule(&h));
        r.mark_pending();
        assert!(r.rang());
        r.forget_rang();
        assert!(!r.rang());
    }

    #[test]
    fn a_dirty_bit_that_never_clears_counts_as_pending() {
        let (r, h) = (Residency::new(), Regs::default());
        r.schedule(&h);
        h.dirty_forever.set(true);
        assert!(r.deschedule(&h));
    }
}
