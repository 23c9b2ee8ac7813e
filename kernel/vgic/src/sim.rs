//! A simulated GICv3 virtual CPU interface for host tests (feature `sim`):
//! it plays the hardware's part on the list registers — acknowledge the
//! highest-priority pending LR above the running priority, deactivate on
//! EOI (EOImode 0), and raise the maintenance reasons of `ICH_MISR_EL2`.

use alloc::vec::Vec;

use crate::{FoldReport, IchHcr, IchMisr, LrState, LrValue, Vgic};

/// One simulated vCPU's CPU interface.
pub struct SimCpu {
    /// vCPU index.
    pub v: usize,
    /// The list registers.
    pub lrs: Vec<LrValue>,
    /// `ICH_HCR_EL2` as returned by the last flush.
    pub hcr: IchHcr,
    /// `ICH_EISR_EL2`.
    pub eisr: u32,
    /// EOIs that matched no list register.
    pub eoicount: u32,
    /// Acknowledged, not yet EOIed interrupts: (INTID, priority), the
    /// running priority is the last one's.
    pub active: Vec<(u32, u8)>,
    /// Physical INTIDs deactivated through HW list registers.
    pub hw_deactivated: Vec<u32>,
    /// vCPUs the flushes asked to kick (none while every deliverability
    /// change requeues), for a caller driving several vCPUs.
    pub kicked: crate::Kick,
    /// Fold list registers that all came back inert with
    /// [`Vgic::fold_spent`], as the kernel does (the default), or always
    /// with [`Vgic::fold`] (to check that the two agree).
    pub spent_fold: bool,
    running: bool,
}

impl SimCpu {
    /// A CPU interface with `nr_lrs` list registers.
    pub fn new(v: usize, nr_lrs: usize) -> Self {
        Self {
            v,
            lrs: alloc::vec![LrValue::INVALID; nr_lrs],
            hcr: IchHcr::default(),
            eisr: 0,
            eoicount: 0,
            active: Vec::new(),
            hw_deactivated: Vec::new(),
            kicked: crate::Kick::default(),
            spent_fold: true,
            running: false,
        }
    }

    /// Enter the guest: flush. Panics if two valid LRs hold one vINTID.
    pub fn enter(&mut self, g: &Vgic) {
        assert!(!self.running, "enter while running");
        let (hcr, kick) = g.flush(self.v, &mut self.lrs);
        self.hcr = hcr;
        self.kicked.merge(kick);
        self.eisr = 0;
        self.eoicount = 0;
        self.running = true;
        let ids: Vec<u32> = self
            .lrs
            .iter()
            .filter(|l| l.state() != LrState::Invalid)
            .map(|l| l.vintid())
            .collect();
        for (i, a) in ids.iter().enumerate() {
            assert!(
                !ids[i + 1..].contains(a),
                "vINTID {a} in two LRs: {:?}",
                self.lrs
            );
        }
    }

    /// Running priority (0x100 when idle).
    pub fn running_priority(&self) -> u16 {
        self.active.last().map_or(0x100, |&(_, p)| u16::from(p))
    }

    /// Acknowledge (read `ICC_IAR1_EL1`): the highest-priority LR in the
    /// Pending state whose priority is higher than the running priority.
    pub fn ack(&mut self) -> Option<u32> {
        assert!(self.running);
        let rp = self.running_priority();
        let (i, lr) = self
            .lrs
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, l)| l.state() == LrState::Pending && u16::from(l.priority()) < rp)
            .min_by_key(|(i, l)| (l.priority(), *i))?;
        self.lrs[i] = lr.with_state(LrState::Active);
        self.active.push((lr.vintid(), lr.priority()));
        Some(lr.vintid())
    }

    /// EOI (`ICC_EOIR1_EL1`, EOImode 0): priority drop and deactivation.
    pub fn eoi(&mut self, intid: u32) {
        assert!(self.running);
        if let Some(pos) = self.active.iter().rposition(|&(i, _)| i == intid) {
            self.active.remove(pos);
        }
        let hit = self
            .lrs
            .iter()
            .position(|l| l.vintid() == intid && l.state().active());
        match hit {
            Some(i) => {
                let lr = self.lrs[i];
                let next = if lr.state() == LrState::PendingActive {
                    LrState::Pending
                } else {
                    LrState::Invalid
                };
                self.lrs[i] = lr.with_state(next);
                if lr.hw() {
                    self.hw_deactivated.push(lr.pintid());
                } else if lr.eoi() && next == LrState::Invalid {
                    self.eisr |= 1 << i;
                }
            }
            None => self.eoicount += 1,
        }
    }

    /// `ICH_MISR_EL2` as the hardware would compute it now.
    pub fn misr(&self) -> IchMisr {
        let valid = self
            .lrs
            .iter()
            .filter(|l| l.state() != LrState::Invalid)
            .count();
        let pending = self.lrs.iter().any(|l| l.state().pending());
        let mut m = 0;
        if self.eisr != 0 {
            m |= IchMisr::EOI;
        }
        if self.hcr.uie() && valid <= 1 {
            m |= IchMisr::U;
        }
        if self.hcr.npie() && !pending {
            m |= IchMisr::NP;
        }
        if self.hcr.bits() & IchHcr::LRENPIE != 0 && self.eoicount != 0 {
            m |= IchMisr::LRENP;
        }
        IchMisr::from_bits(m)
    }

    /// Exit from the guest: fold the LRs back.
    pub fn exit(&mut self, g: &Vgic) -> FoldReport {
        assert!(self.running, "exit while not running");
        let misr = self.misr();
        // As the kernel does: all of ICH_ELRSR_EL2 set (every LR Invalid,
        // none with EOI maintenance to raise) folds without the values.
        let inert = |l: &LrValue| l.state() == LrState::Invalid && (l.hw() || !l.eoi());
        let rep = if self.spent_fold && self.lrs.iter().all(inert) {
            g.fold_spent(self.v, misr)
        } else {
            g.fold(self.v, &self.lrs, misr, self.eisr)
        };
        self.running = false;
        rep
    }

    /// Whether the guest is between `enter` and `exit`.
    pub fn running(&self) -> bool {
        self.running
    }

    /// Run until nothing more can be acknowledged: each round enters,
    /// acknowledges and EOIs everything it can, and exits. Returns the
    /// INTIDs in the order taken.
    pub fn drain(&mut self, g: &Vgic, max_rounds: usize) -> Vec<u32> {
        let mut got = Vec::new();
        for _ in 0..max_rounds {
            self.enter(g);
            let mut any = false;
            while let Some(i) = self.ack() {
                got.push(i);
                self.eoi(i);
                any = true;
            }
            self.exit(g);
            if !any && !g.has_deliverable(self.v) {
                break;
            }
        }
        got
    }
}
