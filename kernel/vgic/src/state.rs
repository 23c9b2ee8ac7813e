//! The interrupt state machine and list-register management.
//!
//! Model (KVM's `ap_list`, Bao's LR/spill handling): every vCPU keeps the
//! list of interrupts that are *active or pending and deliverable* to it.
//! Before entry, [`VgicState::flush`] sorts that list (active first, then by
//! priority, then INTID) and writes the first N into the list registers;
//! after exit, [`VgicState::fold`] folds every LR back into the interrupt
//! state and the LRs are logically empty again. The software state is
//! therefore authoritative and the LRs are a cache of one run, so:
//!
//! * an interrupt is on at most one vCPU's list, at most once: it can never be
//!   in two LRs of a vCPU (vITS invariant 4), the flush also skips a second
//!   entry with a vINTID already placed (a retired LPI instance that is still
//!   active blocks the new instance of the same vINTID);
//! * whatever was not acknowledged folds back as pending and competes again
//!   by priority on the next entry (changing priority while pending reorders).
//!
//! LPIs: the per-LPI state (pending, priority, enable, target) lives here,
//! like in a redistributor; the vITS only translates events to vINTIDs and
//! drives the `lpi_*` interface under its route lock. Each `MAPTI` instance
//! gets a generation; a list-register instance folds back only into the
//! generation that loaded it.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::irq::{IntId, IntKind, Irq, SPI_BASE};
use crate::lpis::LpiTable;
use crate::regs::{mpidr_aff, IchHcr, IchMisr, LrState, LrValue, SgiRequest};
use crate::Kick;

/// A retired LPI instance still in a list register (acknowledged, not yet
/// deactivated). It carries its own state: the per-LPI state it came from may
/// already be freed or belong to a new mapping (vITS invariant 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Zombie {
    pub active: bool,
    pub priority: u8,
}

/// One entry of a vCPU's active-or-pending list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ApEntry {
    pub intid: u32,
    pub gen: u64,
    pub zombie: Option<Zombie>,
}

/// What the flush put in one list register.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LrMeta {
    pub intid: u32,
    pub gen: u64,
    pub written: LrValue,
    pub zombie: bool,
    pub loaded_pending: bool,
    pub loaded_latch: bool,
}

/// Counters per vCPU (for tests and diagnostics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuStats {
    /// Maintenance interrupts by reason.
    pub maint_eoi: u64,
    /// Underflow maintenance interrupts.
    pub maint_underflow: u64,
    /// No-pending maintenance interrupts.
    pub maint_no_pending: u64,
    /// LR-entry-not-present maintenance interrupts.
    pub maint_lrenp: u64,
    /// Interrupts acknowledged by the guest (pending bit consumed from an LR).
    pub acked: u64,
    /// Retired LPI instances dropped from an LR before the guest took them.
    pub retired_dropped: u64,
}

/// The virtual redistributor-side state of one vCPU.
pub(crate) struct VcpuState {
    pub mpidr: u64,
    pub private: Vec<Irq>,
    pub ap: Vec<ApEntry>,
    /// What the last flush put in each list register; empty after the
    /// fold (its buffer is kept, so the entry and exit paths allocate
    /// nothing once it has grown).
    pub lr_meta: Vec<LrMeta>,
    /// The flush's candidate buffer, likewise reused.
    pub spare_cand: Vec<(u8, u8, u32, usize)>,
    pub lpis_enabled: bool,
    pub pendbaser: u64,
    pub sleep: bool,
    pub stats: VcpuStats,
}

/// Result of folding the list registers back after an exit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FoldReport {
    /// vCPUs that now have work (interrupts migrated to them).
    pub kick: Kick,
    /// Level-sensitive INTIDs the guest deactivated (EOI maintenance): an
    /// emulated device may re-evaluate its line (the resample notification).
    pub resampled: Vec<u32>,
}

/// The LPI configuration byte of the property table (IHI 0069 §5.1, "LPI Configuration tables"):
/// priority in bits \[7:2\], enable in bit 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpiConfig {
    /// Priority (bits \[1:0\] zero).
    pub priority: u8,
    /// Enable bit.
    pub enabled: bool,
}

impl LpiConfig {
    /// Decode a property-table byte.
    pub fn from_byte(b: u8) -> Self {
        Self {
            priority: b & 0xfc,
            enabled: b & 1 != 0,
        }
    }
}

/// No vCPU in an [`SgiGroup`] slot.
const NO_VCPU: u8 = u8::MAX;

/// The vCPUs one ICC_SGI1R_EL1 target list can name: those whose affinity
/// has Aff3.Aff2.Aff1 = `key >> 4` and Aff0 / 16 = `key & 0xf` (the range
/// selector RS), by Aff0 % 16 (IHI 0069 §12.11, ICC_SGI1R_EL1).
#[derive(Clone, Copy, Debug)]
struct SgiGroup {
    key: u32,
    vcpu: [u8; 16],
}

fn sgi_key(aff321: u32, range: u8) -> u32 {
    (aff321 << 4) | u32::from(range & 0xf)
}

/// [`VgicState::oracle`] with the distributor's group enables given and
/// `lpis_on(t)` saying whether vCPU `t`'s redistributor has EnableLPIs,
/// so a caller holding part of the state mutably can ask it.
#[inline(always)]
fn oracle_with(
    irq: &Irq,
    grp0_en: bool,
    grp1_en: bool,
    lpis_on: impl Fn(usize) -> bool,
) -> Option<usize> {
    if irq.active {
        return irq.owner.or(irq.target);
    }
    if !irq.pending() || !irq.enabled {
        return None;
    }
    let group_on = if irq.group1 { grp1_en } else { grp0_en };
    if !group_on {
        return None;
    }
    let t = irq.target?;
    if irq.is_lpi() && !lpis_on(t) {
        return None;
    }
    Some(t)
}

/// The state of `intid` among one vCPU's banked interrupts (`private`),
/// the SPIs and the LPIs: [`VgicState::irq_mut`] on the fields
/// themselves, so a caller can hold other parts of the vCPU's state.
#[inline(always)]
fn irq_in<'a>(
    private: &'a mut [Irq],
    spis: &'a mut [Irq],
    lpis: &'a mut LpiTable,
    intid: u32,
) -> Option<&'a mut Irq> {
    match IntId::new(intid).kind() {
        IntKind::Sgi | IntKind::Ppi => private.get_mut(intid as usize),
        IntKind::Spi => spis.get_mut((intid - SPI_BASE) as usize),
        IntKind::Lpi => lpis.get_mut(intid),
        IntKind::Special | IntKind::Reserved => None,
    }
}

/// Whether list entry `e` of vCPU `v` is settled for a flush, exactly as
/// the prune would judge it: the mapping that listed it, owned by `v`,
/// not in an LR, and deliverable to `v` now.
#[inline(always)]
fn settled_here(irq: &Irq, e: &ApEntry, v: usize, g0: bool, g1: bool, v_lpis: bool) -> bool {
    irq.gen == e.gen
        && irq.owner == Some(v)
        && !irq.loaded
        && oracle_with(irq, g0, g1, |t| t == v && v_lpis) == Some(v)
}

/// The LR that loads `irq` (INTID `intid`) and its record, marking it
/// loaded; `None` if it has no state to load.
#[inline(always)]
fn load_into_lr(irq: &mut Irq, intid: u32) -> Option<LrMeta> {
    // Never pending+active for a hardware-linked interrupt (the pending
    // state lives in the physical GIC), nor for a level interrupt (its
    // line is resampled at deactivation instead).
    let pend = irq.pending() && !(irq.active && (irq.hw.is_some() || irq.level));
    let state = LrState::from_flags(pend, irq.active);
    if state == LrState::Invalid {
        return None;
    }
    let mut lr = LrValue::new(intid, irq.priority, irq.group1, state);
    if let Some(p) = irq.hw {
        lr = lr.with_hw(p);
    } else if irq.level {
        lr = lr.with_eoi();
    }
    let meta = LrMeta {
        intid,
        gen: irq.gen,
        written: lr,
        zombie: false,
        loaded_pending: pend,
        loaded_latch: irq.latch,
    };
    if pend {
        // The LR owns this pending state now.
        irq.latch = false;
    }
    irq.loaded = true;
    Some(meta)
}

/// The flush's LR values: the records' in order, Invalid after them.
#[inline(always)]
fn write_lrs(metas: &[LrMeta], lrs: &mut [LrValue]) {
    for (i, lr) in lrs.iter_mut().enumerate() {
        match metas.get(i) {
            Some(m) => *lr = m.written,
            // A store only where needed: the caller's buffer is nearly
            // always Invalid already, and a plain fill becomes a memset
            // call that costs more than the whole loop.
            None if lr.bits() != LrValue::INVALID.bits() => *lr = LrValue::INVALID,
            None => {}
        }
    }
}

/// Fold the pending and active bits an LR came back with (`lp`, `la`)
/// into `irq`, the interrupt it loaded from record `meta`, which is no
/// longer loaded; then where it belongs now (the oracle, from `at`). A software
/// write made while it was loaded wins over the LR (ISACTIVER/ICACTIVER,
/// ICPENDR).
#[inline(always)]
fn fold_lr_into(
    irq: &mut Irq,
    meta: &LrMeta,
    (lp, la): (bool, bool),
    at: &Settle,
) -> Option<usize> {
    if !irq.sw_active_written {
        irq.active = la;
    }
    if lp && !irq.sw_pending_cleared {
        if irq.level {
            irq.latch |= meta.loaded_latch;
        } else {
            irq.latch = true;
        }
    }
    irq.loaded = false;
    irq.sw_active_written = false;
    irq.sw_pending_cleared = false;
    oracle_with(irq, at.g0, at.g1, |t| t != at.v || at.v_lpis)
}

/// What the oracle needs to settle a folded interrupt of vCPU `v`: the
/// distributor's group enables and `v`'s EnableLPIs.
struct Settle {
    v: usize,
    g0: bool,
    g1: bool,
    v_lpis: bool,
}

/// The parts of the state one vCPU's fold changes, borrowed apart from its
/// LR records (which it reads meanwhile).
struct FoldParts<'a> {
    v: usize,
    /// The distributor's group enables and this vCPU's EnableLPIs, for
    /// the oracle.
    grp0_en: bool,
    grp1_en: bool,
    lpis_enabled: bool,
    /// Whether an entry needs the prune after all: it belongs to another
    /// vCPU now, or something did not add up.
    unsettled: bool,
    ap: &'a mut Vec<ApEntry>,
    stats: &'a mut VcpuStats,
    private: &'a mut [Irq],
    spis: &'a mut [Irq],
    lpis: &'a mut LpiTable,
    anomalies: &'a mut u64,
}

impl FoldParts<'_> {
    fn fold_one(&mut self, meta: &LrMeta, lr: LrValue) {
        let v = self.v;
        let (lp, la) = (lr.state().pending(), lr.state().active());
        let pos = self
            .ap
            .iter()
            .position(|e| e.intid == meta.intid && e.gen == meta.gen);
        let Some(pos) = pos else {
            self.unsettled = true;
            *self.anomalies += 1;
            log::error!(
                "vgic: vcpu {v}: LR for INTID {} has no list entry",
                meta.intid
            );
            return;
        };
        if self.ap[pos].zombie.is_some() {
            // vITS invariant 5/8: a retired instance folds into its own
            // entry only; it may be acknowledged/deactivated, nothing else.
            if meta.loaded_pending && !lp && la {
                self.stats.acked += 1;
            } else if meta.loaded_pending && lp {
                self.stats.retired_dropped += 1;
            }
            if la {
                if let Some(z) = self.ap[pos].zombie.as_mut() {
                    z.active = true;
                }
            } else {
                self.ap.swap_remove(pos);
            }
            return;
        }
        let mut acked = false;
        let (g0, g1, v_lpis) = (self.grp0_en, self.grp1_en, self.lpis_enabled);
        match irq_in(self.private, self.spis, self.lpis, meta.intid) {
            Some(irq) if irq.gen == meta.gen && irq.owner == Some(v) && irq.loaded => {
                acked = meta.loaded_pending && !lp;
                // Settle it here, as the prune would: it stays listed if
                // it is still for this vCPU, leaves the list if it is for
                // nobody (taken and deactivated, the usual end), and a
                // move to another vCPU is left to the prune.
                let at = Settle { v, g0, g1, v_lpis };
                match fold_lr_into(irq, meta, (lp, la), &at) {
                    Some(t) if t == v => {}
                    Some(_) => self.unsettled = true,
                    None => {
                        irq.owner = None;
                        self.ap.swap_remove(pos);
                    }
                }
            }
            _ => {
                self.unsettled = true;
                // vITS invariant 5: not the mapping that put it there.
                *self.anomalies += 1;
                log::error!(
                    "vgic: vcpu {v}: LR for INTID {} folds into no mapping",
                    meta.intid
                );
            }
        }
        if acked {
            self.stats.acked += 1;
        }
    }
}

/// The whole interrupt state of one VM, behind [`crate::Vgic`]'s lock.
pub struct VgicState {
    /// Every vCPU by affinity, sorted by key: a targeted SGI or an
    /// IROUTER write finds its vCPUs in a search over the VM's clusters
    /// (at most 4 for 64 vCPUs), not a walk of its vCPUs.
    sgi_groups: Vec<SgiGroup>,
    pub(crate) grp0_en: bool,
    pub(crate) grp1_en: bool,
    pub(crate) spis: Vec<Irq>,
    pub(crate) vcpus: Vec<VcpuState>,
    /// Per-LPI state, indexed by INTID.
    pub(crate) lpis: LpiTable,
    pub(crate) next_gen: u64,
    pub(crate) propbaser: u64,
    pub(crate) pri_mask: u8,
    pub(crate) lpi_id_bits: u8,
    pub(crate) has_lpis: bool,
    pub(crate) anomalies: u64,
    /// Per vCPU: whether anything is on its list or in its list
    /// registers, kept up to date by every change of either and read
    /// without the lock ([`crate::Vgic::is_idle`]).
    listed: Arc<[AtomicBool]>,
}

impl VgicState {
    pub(crate) fn new(
        mpidrs: &[u64],
        nr_spis: u32,
        pri_bits: u8,
        lpi_id_bits: u8,
        has_lpis: bool,
        listed: Arc<[AtomicBool]>,
    ) -> Self {
        let vcpus = mpidrs
            .iter()
            .enumerate()
            .map(|(v, &mpidr)| VcpuState {
                mpidr,
                private: (0..SPI_BASE).map(|i| Irq::new(i, Some(v))).collect(),
                ap: Vec::new(),
                lr_meta: Vec::new(),
                spare_cand: Vec::new(),
                lpis_enabled: false,
                pendbaser: 0,
                sleep: true,
                stats: VcpuStats::default(),
            })
            .collect();
        let mut sgi_groups: Vec<SgiGroup> = Vec::new();
        for (v, &mpidr) in mpidrs.iter().enumerate() {
            let aff = mpidr_aff(mpidr);
            let key = sgi_key(aff >> 8, ((aff & 0xff) >> 4) as u8);
            let g = match sgi_groups.binary_search_by_key(&key, |g| g.key) {
                Ok(g) => g,
                Err(at) => {
                    sgi_groups.insert(
                        at,
                        SgiGroup {
                            key,
                            vcpu: [NO_VCPU; 16],
                        },
                    );
                    at
                }
            };
            let slot = &mut sgi_groups[g].vcpu[(aff & 0xf) as usize];
            assert!(*slot == NO_VCPU, "two vCPUs with MPIDR {mpidr:#x}");
            *slot = v as u8;
        }
        let pri_bits = pri_bits.clamp(4, 8);
        let mut s = Self {
            sgi_groups,
            grp0_en: false,
            grp1_en: false,
            spis: (0..nr_spis).map(|i| Irq::new(SPI_BASE + i, None)).collect(),
            vcpus,
            lpis: LpiTable::new(lpi_id_bits),
            next_gen: 1,
            propbaser: 0,
            pri_mask: !((1u16 << (8 - pri_bits)) - 1) as u8,
            lpi_id_bits,
            has_lpis,
            anomalies: 0,
            listed,
        };
        for f in s.listed.iter() {
            f.store(false, Ordering::Release);
        }
        for i in 0..s.spis.len() {
            // Reset IROUTER = 0: Aff 0.0.0.0, i.e. the vCPU with MPIDR 0.
            s.spis[i].target = s.vcpu_by_aff(0);
        }
        s
    }

    /// Number of vCPUs.
    pub fn nr_vcpus(&self) -> usize {
        self.vcpus.len()
    }

    /// Something may have left vCPU `v`'s list: if nothing is left,
    /// publish it. (A non-empty list was published when its first entry
    /// came, [`VgicState::listed_now`]; what is in the list registers
    /// stays on the list until the fold, so the list alone says whether
    /// a flush would load anything.)
    fn relist(&self, v: usize) {
        if let (Some(flag), Some(vc)) = (self.listed.get(v), self.vcpus.get(v)) {
            if vc.ap.is_empty() {
                flag.store(false, Ordering::Release);
            }
        }
    }

    /// Something was put on vCPU `t`'s list: a Release store under the
    /// lock, before the kick that tells the vCPU's CPU to look.
    fn listed_now(&self, t: usize) {
        if let Some(flag) = self.listed.get(t) {
            flag.store(true, Ordering::Release);
        }
    }

    pub(crate) fn nr_irqs(&self) -> u32 {
        SPI_BASE + self.spis.len() as u32
    }

    /// The vCPU whose affinity (Aff3.Aff2.Aff1.Aff0, as packed by
    /// [`mpidr_aff`]) is `aff`.
    pub(crate) fn vcpu_by_aff(&self, aff: u32) -> Option<usize> {
        let slots = self.sgi_group(aff >> 8, ((aff & 0xff) >> 4) as u8)?;
        Some(slots[(aff & 0xf) as usize])
            .filter(|&v| v != NO_VCPU)
            .map(usize::from)
    }

    /// The vCPUs a target list with these Aff3.Aff2.Aff1 and RS names, by
    /// TargetList bit.
    fn sgi_group(&self, aff321: u32, range: u8) -> Option<&[u8; 16]> {
        Some(&self.sgi_groups[self.sgi_group_index(aff321, range)?].vcpu)
    }

    /// Where in `sgi_groups` the group for these Aff3.Aff2.Aff1 and RS is.
    fn sgi_group_index(&self, aff321: u32, range: u8) -> Option<usize> {
        let key = sgi_key(aff321, range);
        match self.sgi_groups.as_slice() {
            // Up to 16 vCPUs: one group, no search.
            [only] => (only.key == key).then_some(0),
            groups => groups.binary_search_by_key(&key, |g| g.key).ok(),
        }
    }

    pub(crate) fn irq(&self, v: usize, intid: u32) -> Option<&Irq> {
        match IntId::new(intid).kind() {
            IntKind::Sgi | IntKind::Ppi => self.vcpus.get(v)?.private.get(intid as usize),
            IntKind::Spi => self.spis.get((intid - SPI_BASE) as usize),
            IntKind::Lpi => self.lpis.get(intid),
            IntKind::Special | IntKind::Reserved => None,
        }
    }

    pub(crate) fn irq_mut(&mut self, v: usize, intid: u32) -> Option<&mut Irq> {
        match IntId::new(intid).kind() {
            IntKind::Sgi | IntKind::Ppi => self.vcpus.get_mut(v)?.private.get_mut(intid as usize),
            IntKind::Spi => self.spis.get_mut((intid - SPI_BASE) as usize),
            IntKind::Lpi => self.lpis.get_mut(intid),
            IntKind::Special | IntKind::Reserved => None,
        }
    }

    /// Which vCPU should hold this interrupt on its list right now
    /// (KVM's `vgic_target_oracle`): an active interrupt stays where it is
    /// active; a pending one goes to its target if it is enabled, its group
    /// is enabled in `GICD_CTLR` and, for an LPI, the target redistributor
    /// has `EnableLPIs` set.
    fn oracle(&self, irq: &Irq) -> Option<usize> {
        oracle_with(irq, self.grp0_en, self.grp1_en, |t| {
            self.vcpus.get(t).is_some_and(|c| c.lpis_enabled)
        })
    }

    /// Re-evaluate where an interrupt belongs after any state change, and
    /// move it there (or leave the move to fold-back when it is in an LR).
    /// `v` selects the bank for SGIs/PPIs.
    pub(crate) fn queue(&mut self, v: usize, intid: u32, kick: &mut Kick) {
        let Some(irq) = self.irq(v, intid) else {
            return;
        };
        let want = self.oracle(irq);
        let (owner, loaded, gen) = (irq.owner, irq.loaded, irq.gen);
        match owner {
            None => {
                if let Some(t) = want {
                    self.vcpus[t].ap.push(ApEntry {
                        intid,
                        gen,
                        zombie: None,
                    });
                    self.listed_now(t);
                    if let Some(irq) = self.irq_mut(v, intid) {
                        irq.owner = Some(t);
                    }
                    kick.add(t);
                }
            }
            Some(o) => {
                // In an LR, or staying: the owner's next exit settles it.
                if loaded || want == Some(o) {
                    kick.add(o);
                    return;
                }
                self.vcpus[o]
                    .ap
                    .retain(|e| !(e.intid == intid && e.zombie.is_none()));
                self.relist(o);
                // A banked interrupt only ever belongs to its own vCPU.
                let target = want.filter(|&t| !IntId::new(intid).is_private() || t == v);
                if let Some(t) = target {
                    self.vcpus[t].ap.push(ApEntry {
                        intid,
                        gen,
                        zombie: None,
                    });
                    self.listed_now(t);
                    kick.add(t);
                }
                if let Some(irq) = self.irq_mut(v, intid) {
                    irq.owner = target;
                }
            }
        }
    }

    /// Drop or migrate entries of `v`'s list that no longer belong there
    /// (KVM's `vgic_prune_ap_list`). Entries in LRs are left alone.
    fn prune(&mut self, v: usize, kick: &mut Kick) {
        let mut i = 0;
        while i < self.vcpus[v].ap.len() {
            let e = self.vcpus[v].ap[i];
            if let Some(z) = e.zombie {
                if z.active {
                    i += 1;
                } else {
                    self.vcpus[v].ap.swap_remove(i);
                }
                continue;
            }
            let (stale, loaded, want) = match self.irq(v, e.intid) {
                // vITS invariant 3: the interrupt may not exist any more.
                None => (true, false, None),
                Some(irq) => (
                    irq.gen != e.gen || irq.owner != Some(v),
                    irq.loaded,
                    self.oracle(irq),
                ),
            };
            if stale {
                self.anomalies += 1;
                log::error!("vgic: vcpu {v}: stale list entry for INTID {}", e.intid);
                self.vcpus[v].ap.swap_remove(i);
                continue;
            }
            if loaded || want == Some(v) {
                i += 1;
                continue;
            }
            self.vcpus[v].ap.swap_remove(i);
            if let Some(irq) = self.irq_mut(v, e.intid) {
                irq.owner = None;
            }
            if want.is_some() {
                self.queue(v, e.intid, kick);
            }
        }
        self.relist(v);
    }

    /// The flush of a list of one settled, loadable interrupt (an IPI, an
    /// LPI, a timer tick: the usual entry with something to load), without
    /// the candidate buffer and its sort. `None`: not that case, the
    /// general flush decides.
    #[inline(always)]
    fn flush_one(&mut self, v: usize, lrs: &mut [LrValue]) -> Option<IchHcr> {
        let (g0, g1) = (self.grp0_en, self.grp1_en);
        let Self {
            vcpus, spis, lpis, ..
        } = self;
        let vc = vcpus.get_mut(v)?;
        let [e] = vc.ap[..] else {
            return None;
        };
        if lrs.is_empty() {
            return None;
        }
        if e.zombie.is_some() {
            return None;
        }
        let irq = irq_in(&mut vc.private, spis, lpis, e.intid)?;
        if !settled_here(irq, &e, v, g0, g1, vc.lpis_enabled) {
            return None;
        }
        let meta = load_into_lr(irq, e.intid)?;
        vc.lr_meta.push(meta);
        if let [first, rest @ ..] = lrs {
            *first = meta.written;
            for lr in rest {
                if lr.bits() != LrValue::INVALID.bits() {
                    *lr = LrValue::INVALID;
                }
            }
        }
        Some(IchHcr::from_bits(IchHcr::EN))
    }

    /// Put vCPU `v`'s list entries into its candidate buffer as
    /// (class, priority, intid, index): active first, then by priority.
    /// With `check`, stop and return false at the first entry the prune
    /// would drop or move (a retired instance no longer active, a stale or
    /// loaded entry, one that belongs elsewhere now).
    fn gather(&mut self, v: usize, check: bool) -> bool {
        let (g0, g1) = (self.grp0_en, self.grp1_en);
        let Self {
            vcpus, spis, lpis, ..
        } = self;
        let vc = &mut vcpus[v];
        let v_lpis = vc.lpis_enabled;
        let cand = &mut vc.spare_cand;
        cand.clear();
        for (idx, e) in vc.ap.iter().enumerate() {
            if let Some(z) = e.zombie {
                if check && !z.active {
                    return false;
                }
                cand.push((0, z.priority, e.intid, idx));
                continue;
            }
            let Some(irq) = irq_in(&mut vc.private, spis, lpis, e.intid) else {
                if check {
                    return false;
                }
                continue;
            };
            if check && !settled_here(irq, e, v, g0, g1, v_lpis) {
                return false;
            }
            cand.push((u8::from(!irq.active), irq.priority, e.intid, idx));
        }
        true
    }

    /// Fill the list registers of vCPU `v` before entry; see
    /// [`crate::Vgic::flush`].
    pub(crate) fn flush(&mut self, v: usize, lrs: &mut [LrValue], kick: &mut Kick) -> IchHcr {
        if self.vcpus.get(v).is_some_and(|vc| vc.lr_meta.is_empty()) {
            if let Some(hcr) = self.flush_one(v, lrs) {
                return hcr;
            }
        }
        self.flush_general(v, lrs, kick)
    }

    /// The rest of [`VgicState::flush`], out of line: the one-interrupt
    /// case before it then keeps to a few registers.
    #[inline(never)]
    fn flush_general(&mut self, v: usize, lrs: &mut [LrValue], kick: &mut Kick) -> IchHcr {
        if !self.vcpus[v].lr_meta.is_empty() {
            // The kernel entered twice without folding: fold what we wrote,
            // as if the guest had not touched it, so nothing is lost.
            self.anomalies += 1;
            log::error!("vgic: vcpu {v}: flush without fold-back");
            let written: Vec<LrValue> = self.vcpus[v].lr_meta.iter().map(|m| m.written).collect();
            self.fold(v, &written, IchMisr::default(), 0);
            if let Some(hcr) = self.flush_one(v, lrs) {
                return hcr;
            }
        }
        // The list is normally settled here: every change of an
        // interrupt's deliverability requeues it, and the fold pruned what
        // was in the LRs. The candidates are gathered checking exactly
        // what the prune would (an entry it would drop or move), and only
        // if one fails does the prune run and the gathering start again.
        if !self.gather(v, true) {
            // An interrupt it moves to another vCPU: that vCPU is kicked.
            self.prune(v, kick);
            self.gather(v, false);
        }
        if self.vcpus[v].ap.is_empty() {
            // Nothing pending or active for this vCPU: the common case on
            // an exit path (a hypercall, an MMIO access).
            lrs.fill(LrValue::INVALID);
            return IchHcr::from_bits(IchHcr::EN);
        }

        // Borrowed field by field (no Vec taken out and put back): the
        // list, the candidates, the LR records and this vCPU's banked
        // interrupts are disjoint parts of its state.
        let Self {
            vcpus, spis, lpis, ..
        } = self;
        let vc = &mut vcpus[v];
        let cand = &mut vc.spare_cand;
        cand.sort_unstable();

        let n = lrs.len();
        let metas = &mut vc.lr_meta;
        let mut leftover = false;
        for &(_, _, intid, idx) in cand.iter() {
            // vITS invariant 4: never the same vINTID in two LRs.
            if let Some(slot) = metas.iter().position(|m| m.intid == intid) {
                // A retired instance still active blocks the new one: ask
                // for a maintenance interrupt when it is deactivated.
                if !metas[slot].written.hw() {
                    metas[slot].written = metas[slot].written.with_eoi();
                }
                continue;
            }
            if metas.len() == n {
                leftover = true;
                break;
            }
            let e = vc.ap[idx];
            let meta = if let Some(z) = e.zombie {
                LrMeta {
                    intid,
                    gen: e.gen,
                    written: LrValue::new(intid, z.priority, true, LrState::Active),
                    zombie: true,
                    loaded_pending: false,
                    loaded_latch: false,
                }
            } else {
                let Some(meta) = irq_in(&mut vc.private, spis, lpis, intid)
                    .and_then(|irq| load_into_lr(irq, intid))
                else {
                    continue;
                };
                meta
            };
            metas.push(meta);
        }
        write_lrs(metas, lrs);
        let mut hcr = IchHcr::EN;
        if leftover {
            // More waiting than LRs: refill when the guest has consumed them.
            if metas.iter().any(|m| m.loaded_pending) {
                hcr |= IchHcr::NPIE;
            }
            hcr |= IchHcr::UIE;
        }
        IchHcr::from_bits(hcr)
    }

    /// Fold the LR values read back after an exit; see [`crate::Vgic::fold`].
    pub(crate) fn fold(
        &mut self,
        v: usize,
        lrs: &[LrValue],
        misr: IchMisr,
        eisr: u32,
    ) -> FoldReport {
        self.fold_with(
            v,
            |i, m| lrs.get(i).copied().unwrap_or(m.written),
            misr,
            eisr,
        )
    }

    /// The fold of list registers that all came back inert; see
    /// [`crate::Vgic::fold_spent`].
    pub(crate) fn fold_spent(&mut self, v: usize, misr: IchMisr) -> FoldReport {
        if misr.bits() == 0 {
            match self.retire_alone(v) {
                Some(false) => return FoldReport::default(),
                Some(true) => return self.prune_after_fold(v),
                None => {}
            }
        }
        self.fold_spent_general(v, misr)
    }

    /// The prune after a fold that found an interrupt belonging elsewhere
    /// now (out of line, as it is rare).
    #[inline(never)]
    fn prune_after_fold(&mut self, v: usize) -> FoldReport {
        let mut rep = FoldReport::default();
        self.prune(v, &mut rep.kick);
        rep
    }

    /// The rest of [`VgicState::fold_spent`], out of line: the shortcut
    /// before it then keeps to a few registers.
    #[inline(never)]
    fn fold_spent_general(&mut self, v: usize, misr: IchMisr) -> FoldReport {
        // Inert: Invalid, and no EOI maintenance to raise, so EISR is 0.
        self.fold_with(v, |_, m| m.written.with_state(LrState::Invalid), misr, 0)
    }

    /// The spent fold of the usual case: the flush loaded one interrupt,
    /// the only one on the list, and it came back Invalid (taken and
    /// deactivated). What [`FoldParts::fold_one`] does with an Invalid LR
    /// (the same [`fold_lr_into`]) and the fold's relist after it, without the search of
    /// the list: Some(whether the prune must run, the interrupt now
    /// belonging to another vCPU), or None, having changed nothing, for
    /// the general fold.
    #[inline(always)]
    fn retire_alone(&mut self, v: usize) -> Option<bool> {
        let (g0, g1) = (self.grp0_en, self.grp1_en);
        let Self {
            vcpus,
            spis,
            lpis,
            listed,
            ..
        } = self;
        let vc = vcpus.get_mut(v)?;
        let ([meta], [e]) = (&vc.lr_meta[..], &vc.ap[..]) else {
            return None;
        };
        if meta.zombie || e.zombie.is_some() || e.intid != meta.intid || e.gen != meta.gen {
            return None;
        }
        let acked = meta.loaded_pending;
        let v_lpis = vc.lpis_enabled;
        let irq = irq_in(&mut vc.private, spis, lpis, meta.intid)?;
        if irq.gen != meta.gen || irq.owner != Some(v) || !irq.loaded {
            return None;
        }
        // The LR came back Invalid: neither pending nor active.
        let at = Settle { v, g0, g1, v_lpis };
        let unsettled = match fold_lr_into(irq, meta, (false, false), &at) {
            Some(t) => t != v,
            None => {
                irq.owner = None;
                vc.ap.clear();
                if let Some(flag) = listed.get(v) {
                    flag.store(false, Ordering::Release);
                }
                false
            }
        };
        vc.lr_meta.clear();
        if acked {
            vc.stats.acked += 1;
        }
        Some(unsettled)
    }

    /// The fold, LR `i` (written as record `m`) reading back as
    /// `lr_at(i, m)`.
    #[inline(always)]
    fn fold_with(
        &mut self,
        v: usize,
        lr_at: impl Fn(usize, &LrMeta) -> LrValue,
        misr: IchMisr,
        eisr: u32,
    ) -> FoldReport {
        let mut rep = FoldReport::default();
        let unsettled = {
            // Field by field, as in the flush: the records are read while
            // the list, the counters and the interrupts change.
            let Self {
                vcpus,
                spis,
                lpis,
                anomalies,
                grp0_en,
                grp1_en,
                ..
            } = self;
            let vc = &mut vcpus[v];
            let mut parts = FoldParts {
                v,
                grp0_en: *grp0_en,
                grp1_en: *grp1_en,
                lpis_enabled: vc.lpis_enabled,
                unsettled: false,
                ap: &mut vc.ap,
                stats: &mut vc.stats,
                private: &mut vc.private,
                spis,
                lpis,
                anomalies,
            };
            for (i, meta) in vc.lr_meta.iter().enumerate() {
                let mut lr = lr_at(i, meta);
                if lr.vintid() != meta.intid {
                    *parts.anomalies += 1;
                    log::error!(
                        "vgic: vcpu {v}: LR{i} holds INTID {} but {} was written",
                        lr.vintid(),
                        meta.intid
                    );
                    lr = meta.written;
                }
                parts.fold_one(meta, lr);
            }
            parts.unsettled
        };
        // One handler per maintenance reason (ICH_MISR_EL2).
        if misr.has(IchMisr::EOI) {
            let metas = core::mem::take(&mut self.vcpus[v].lr_meta);
            self.maint_eoi(v, &metas, eisr, &mut rep);
            self.vcpus[v].lr_meta = metas;
        }
        if misr.has(IchMisr::U) {
            self.maint_underflow(v);
        }
        if misr.has(IchMisr::NP) {
            self.maint_no_pending(v);
        }
        if misr.has(IchMisr::LRENP) {
            self.maint_lrenp(v);
        }
        // Nothing is loaded any more (the records' buffer stays for the
        // next flush).
        self.vcpus[v].lr_meta.clear();
        // Each folded entry was settled above; the others were settled
        // before (every deliverability change requeues an interrupt that
        // is not in an LR). The prune runs only if one must move, and the
        // next flush checks the whole list again anyway.
        if unsettled {
            self.prune(v, &mut rep.kick);
        } else {
            self.relist(v);
        }
        rep
    }

    /// EOI maintenance: LRs with the EOI bit were deactivated. For level
    /// interrupts the line is resampled (the next flush re-delivers it if it
    /// is still high; fold has already cleared the active state).
    fn maint_eoi(&mut self, v: usize, metas: &[LrMeta], eisr: u32, rep: &mut FoldReport) {
        self.vcpus[v].stats.maint_eoi += 1;
        for (i, m) in metas.iter().enumerate() {
            if eisr & (1 << i) == 0 || m.zombie {
                continue;
            }
            if self.irq(v, m.intid).is_some_and(|irq| irq.level) {
                rep.resampled.push(m.intid);
            }
        }
    }

    /// Underflow: zero or one LR still valid; the next flush refills.
    fn maint_underflow(&mut self, v: usize) {
        self.vcpus[v].stats.maint_underflow += 1;
    }

    /// No pending LR left; the next flush refills.
    fn maint_no_pending(&mut self, v: usize) {
        self.vcpus[v].stats.maint_no_pending += 1;
    }

    /// A deactivation matched no LR (EOIcount): only possible for an
    /// interrupt evicted while active; its active state was already folded.
    fn maint_lrenp(&mut self, v: usize) {
        self.vcpus[v].stats.maint_lrenp += 1;
        crate::guest_warn!("vgic: vcpu {v}: deactivation of an interrupt not in a list register");
    }

    /// Whether vCPU `v` has an interrupt to take (wake from WFI).
    pub(crate) fn has_deliverable(&self, v: usize) -> bool {
        self.vcpus[v].ap.iter().any(|e| {
            e.zombie.is_none()
                && self
                    .irq(v, e.intid)
                    .is_some_and(|irq| irq.pending() && self.oracle(irq) == Some(v))
        })
    }

    /// One line on vCPU `v`'s interrupts, for a state dump: its CPU
    /// interface switches, then each interrupt on its active-or-pending
    /// list with its flags (P pending latch, L line high, A active,
    /// E enabled, R in a list register now, Z retired by its unmapping).
    pub(crate) fn describe(&self, v: usize, f: &mut dyn core::fmt::Write) -> core::fmt::Result {
        let Some(vc) = self.vcpus.get(v) else {
            return write!(f, "no vCPU {v}");
        };
        write!(
            f,
            "grp0 {} grp1 {} lpis {} deliverable {}, {} listed:",
            on(self.grp0_en),
            on(self.grp1_en),
            on(vc.lpis_enabled),
            on(self.has_deliverable(v)),
            vc.ap.len()
        )?;
        for e in vc.ap.iter().take(16) {
            write!(f, " {}(", e.intid)?;
            if e.zombie.is_some() {
                write!(f, "Z")?;
            } else if let Some(irq) = self.irq(v, e.intid) {
                for (set, c) in [
                    (irq.latch, 'P'),
                    (irq.line, 'L'),
                    (irq.active, 'A'),
                    (irq.enabled, 'E'),
                    (irq.loaded, 'R'),
                ] {
                    if set {
                        write!(f, "{c}")?;
                    }
                }
                if irq.target != Some(v) {
                    write!(f, " ->{:?}", irq.target)?;
                }
            }
            write!(f, ")")?;
        }
        if vc.ap.len() > 16 {
            write!(f, " ...")?;
        }
        Ok(())
    }

    pub(crate) fn set_line(&mut self, v: usize, intid: u32, level: bool, kick: &mut Kick) {
        let Some(irq) = self.irq_mut(v, intid) else {
            crate::guest_warn!("vgic: injection of unknown INTID {intid}");
            return;
        };
        if irq.level {
            irq.line = level;
        } else if level {
            irq.latch = true;
        }
        self.queue(v, intid, kick);
    }

    /// A trapped SGI register write of vCPU `from`. Its cost is linear in
    /// the vCPUs it reaches and nothing else: IRM = 1 walks every other
    /// vCPU; a target list looks its cluster up and visits its set bits.
    pub(crate) fn sgi(&mut self, from: usize, req: &SgiRequest, group1: bool, kick: &mut Kick) {
        if req.broadcast {
            // IRM = 1: every PE but the requester (IHI 0069 §12.11).
            for t in (0..self.vcpus.len()).filter(|&t| t != from) {
                self.sgi_to(t, req.intid, group1, kick);
            }
            return;
        }
        let Some(g) = self.sgi_group_index(req.aff321, req.range) else {
            // No vCPU has that affinity: nobody is a target.
            return;
        };
        let mut bits = req.targets;
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let t = self.sgi_groups[g].vcpu[b & 15];
            if t != NO_VCPU {
                self.sgi_to(usize::from(t), req.intid, group1, kick);
            }
        }
    }

    fn sgi_to(&mut self, t: usize, intid: u8, group1: bool, kick: &mut Kick) {
        let intid = u32::from(intid & 0xf);
        let (g0, g1) = (self.grp0_en, self.grp1_en);
        let Some(vc) = self.vcpus.get_mut(t) else {
            return;
        };
        let Some(irq) = vc.private.get_mut(intid as usize) else {
            return;
        };
        // With a single security state, an ICC_SGI0R write only reaches
        // SGIs configured as Group 0, while ICC_SGI1R reaches either
        // group (as KVM's vgic_v3_dispatch_sgi).
        if irq.group1 && !group1 {
            return;
        }
        irq.latch = true;
        if irq.owner.is_some() {
            self.queue(t, intid, kick);
            return;
        }
        // The usual IPI, on no list: `queue`'s first case, with the one
        // lookup above (an SGI is no LPI: the oracle asks no
        // redistributor).
        match oracle_with(irq, g0, g1, |_| false) {
            None => {}
            Some(o) if o == t => {
                irq.owner = Some(t);
                let gen = irq.gen;
                vc.ap.push(ApEntry {
                    intid,
                    gen,
                    zombie: None,
                });
                self.listed_now(t);
                kick.add(t);
            }
            Some(_) => self.queue(t, intid, kick),
        }
    }

    // ---- LPI interface (driven by the vITS under its route lock) ----

    /// The redistributors' shared `GICR_PROPBASER`.
    pub fn propbaser(&self) -> u64 {
        self.propbaser
    }

    /// Number of LPI INTID bits the VM supports (`GICD_TYPER.IDbits` + 1).
    pub fn lpi_id_bits(&self) -> u8 {
        self.lpi_id_bits
    }

    /// Whether `intid` is an LPI INTID this VM supports
    /// (`GICD_TYPER.IDbits`).
    pub fn lpi_in_range(&self, intid: u32) -> bool {
        IntId::new(intid).is_lpi() && u64::from(intid) < (1u64 << self.lpi_id_bits)
    }

    /// One more ITE maps to `intid` (MAPTI, MAPI). The first mapping creates
    /// pristine per-LPI state with a fresh generation (vITS invariant 5).
    /// Further ITEs share it: it takes the configuration just read from the
    /// property table and, when the new ITE's collection is mapped, its
    /// target, and a pending instance follows (vITS invariant 9). Returns
    /// the generation; None, changing nothing, when the LPI table has no
    /// room for `intid` (its block would exceed the table's bound or the
    /// heap).
    #[inline(always)]
    pub fn lpi_map(
        &mut self,
        intid: u32,
        target: Option<usize>,
        cfg: LpiConfig,
        kick: &mut Kick,
    ) -> Option<u64> {
        let priority = cfg.priority & self.pri_mask;
        let next_gen = self.next_gen;
        // The common case, with no call (so no registers to save): the
        // first ITE of an LPI whose block exists. A free slot is pristine
        // (`Irq::reset_lpi`): not pending, nothing to queue.
        if let Some(irq) = self.lpis.allocated_slot(intid) {
            if irq.map_refs == 0 {
                irq.priority = priority;
                irq.enabled = cfg.enabled;
                irq.map_refs = 1;
                irq.gen = next_gen;
                irq.target = target;
                self.next_gen += 1;
                self.lpis.note_mapped();
                return Some(next_gen);
            }
        }
        self.lpi_map_slow(intid, target, cfg, kick)
    }

    /// [`Self::lpi_map`] of an LPI whose block is still to be allocated,
    /// or that another ITE maps already (its generation then stays).
    #[cold]
    #[inline(never)]
    fn lpi_map_slow(
        &mut self,
        intid: u32,
        target: Option<usize>,
        cfg: LpiConfig,
        kick: &mut Kick,
    ) -> Option<u64> {
        let priority = cfg.priority & self.pri_mask;
        let irq = self.lpis.slot(intid)?;
        if irq.map_refs == 0 {
            // Its block was just allocated: the common case maps it.
            return self.lpi_map(intid, target, cfg, kick);
        }
        irq.priority = priority;
        irq.enabled = cfg.enabled;
        irq.map_refs += 1;
        if target.is_some() {
            irq.target = target;
        }
        let gen = irq.gen;
        self.queue(0, intid, kick);
        Some(gen)
    }

    /// One ITE fewer maps to `intid` (DISCARD, MAPD V=0). When it was the
    /// last, the pending state is cleared, any instance in an LR is retired
    /// and the per-LPI state is freed (vITS invariants 2, 6, 8).
    #[inline(always)]
    pub fn lpi_unmap(&mut self, intid: u32, kick: &mut Kick) {
        let Some(irq) = self.lpis.get_mut(intid) else {
            return;
        };
        irq.map_refs -= 1;
        if irq.map_refs > 0 {
            return;
        }
        let (owner, gen, loaded, active, priority) =
            (irq.owner, irq.gen, irq.loaded, irq.active, irq.priority);
        // vITS invariant 6: nothing else refers to the LPI's state once
        // its instance (if any) is off the lists below; its slot is
        // pristine again.
        irq.reset_lpi();
        self.lpis.note_freed();
        if let Some(o) = owner {
            self.unlist_unmapped(o, intid, gen, Zombie { active, priority }, loaded, kick);
        }
    }

    /// The instance of a just unmapped LPI on vCPU `o`'s lists: one the
    /// guest may already have taken (in an LR, or active) becomes a zombie
    /// (vITS invariant 8), one still only queued goes.
    #[cold]
    #[inline(never)]
    fn unlist_unmapped(
        &mut self,
        o: usize,
        intid: u32,
        gen: u64,
        zombie: Zombie,
        loaded: bool,
        kick: &mut Kick,
    ) {
        let ap = &mut self.vcpus[o].ap;
        // At most one live entry per (INTID, generation).
        let Some(pos) = ap
            .iter()
            .position(|e| e.intid == intid && e.gen == gen && e.zombie.is_none())
        else {
            return;
        };
        if loaded || zombie.active {
            // vITS invariant 8: an instance the guest may already have
            // taken can still be acknowledged and deactivated; it keeps
            // its own state, the per-LPI state goes.
            ap[pos].zombie = Some(zombie);
            kick.add(o);
        } else {
            ap.remove(pos);
            self.relist(o);
        }
    }

    /// Generation of the live mapping of `intid`, if mapped.
    pub fn lpi_gen(&self, intid: u32) -> Option<u64> {
        self.lpis.get(intid).map(|i| i.gen)
    }

    /// Whether `intid` is pending (latched, or in an LR right now).
    pub fn lpi_pending(&self, intid: u32) -> bool {
        self.lpis
            .get(intid)
            .is_some_and(|i| i.latch || (i.loaded && i.owner.is_some()))
    }

    /// The vCPU an LPI is targeted at.
    pub fn lpi_target(&self, intid: u32) -> Option<usize> {
        self.lpis.get(intid).and_then(|i| i.target)
    }

    /// New priority/enable from the property table (INV, INVALL), for the
    /// mapping of generation `gen` only (vITS invariant 3).
    pub fn lpi_set_config(&mut self, intid: u32, gen: u64, cfg: LpiConfig, kick: &mut Kick) {
        let mask = self.pri_mask;
        let Some(irq) = self.lpis.get_mut(intid).filter(|i| i.gen == gen) else {
            return;
        };
        irq.priority = cfg.priority & mask;
        irq.enabled = cfg.enabled;
        let t = irq.target.unwrap_or(0);
        self.queue(t, intid, kick);
    }

    /// Make a mapped LPI pending on `target` (INT, a translated event).
    /// Returns false, changing nothing, when `intid` is not mapped or, with
    /// `gen`, its mapping is not of that generation (vITS invariant 3).
    pub fn lpi_set_pending(
        &mut self,
        intid: u32,
        gen: Option<u64>,
        target: Option<usize>,
        kick: &mut Kick,
    ) -> bool {
        let Some(irq) = self
            .lpis
            .get_mut(intid)
            .filter(|i| gen.is_none_or(|g| i.gen == g))
        else {
            return false;
        };
        irq.latch = true;
        irq.target = target;
        self.queue(target.unwrap_or(0), intid, kick);
        true
    }

    /// Clear the pending state of an LPI (CLEAR).
    pub fn lpi_clear_pending(&mut self, intid: u32, kick: &mut Kick) {
        let Some(irq) = self.lpis.get_mut(intid) else {
            return;
        };
        irq.latch = false;
        if irq.loaded {
            irq.sw_pending_cleared = true;
        }
        self.queue(0, intid, kick);
    }

    /// Retarget an LPI (MOVI, MOVALL, MAPC of its collection). Pending state
    /// moves with it exactly once (vITS invariant 9): a queued instance is
    /// moved now, one in an LR folds back on the old vCPU's exit and is then
    /// migrated by the prune.
    pub fn lpi_set_target(&mut self, intid: u32, target: Option<usize>, kick: &mut Kick) {
        let Some(irq) = self.lpis.get_mut(intid) else {
            return;
        };
        irq.target = target;
        self.queue(0, intid, kick);
    }

    /// All mapped LPIs currently targeted at `v` (INVALL, MOVALL).
    pub fn lpis_targeting(&self, v: usize) -> Vec<u32> {
        self.lpis
            .iter()
            .filter(|i| i.target == Some(v))
            .map(|i| i.intid)
            .collect()
    }

    /// Number of live per-LPI state records (for tests: invariant 6).
    pub fn lpi_count(&self) -> usize {
        self.lpis.len()
    }

    /// INTIDs held in list-register entries of vCPU `v` right now (loaded
    /// by the last flush and not yet folded).
    pub fn loaded_intids(&self, v: usize) -> Vec<u32> {
        self.vcpus[v].lr_meta.iter().map(|m| m.intid).collect()
    }

    /// Number of entries (live and retired) on `v`'s active-or-pending list.
    pub fn list_len(&self, v: usize) -> usize {
        self.vcpus[v].ap.len()
    }

    /// Internal inconsistencies detected and survived (stale list entries,
    /// LR state with no mapping to fold into, flush without fold). Always 0
    /// in a correct kernel; tests assert it.
    ///
    /// A vCPU whose lock-free `listed` flag disagrees with its list (the
    /// exit fast path would skip or wake wrongly) counts as one.
    pub fn anomalies(&self) -> u64 {
        let unlisted = self
            .vcpus
            .iter()
            .zip(self.listed.iter())
            .filter(|(vc, f)| vc.ap.is_empty() == f.load(Ordering::Acquire))
            .count();
        self.anomalies + unlisted as u64
    }

    /// Record an internal inconsistency found by a user of this state.
    pub fn note_anomaly(&mut self) {
        self.anomalies += 1;
    }

    /// Whether LPIs are enabled on `v`'s redistributor.
    pub fn lpis_enabled(&self, v: usize) -> bool {
        self.vcpus.get(v).is_some_and(|c| c.lpis_enabled)
    }
}

fn on(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}
