//! Typed values of the GICv3 virtual CPU interface system registers
//! (IHI 0069 ch. 12, the ICH_* "hypervisor control system registers").
//!
//! These are plain values: the kernel reads and writes the real registers
//! (`ICH_LR<n>_EL2`, `ICH_HCR_EL2`, ...) and converts with `from_bits` /
//! `bits`.

/// State field of a list register, `ICH_LR<n>_EL2.State` (bits \[63:62\]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrState {
    /// 0b00: the LR holds no interrupt.
    Invalid,
    /// 0b01: pending.
    Pending,
    /// 0b10: active (acknowledged, not yet deactivated).
    Active,
    /// 0b11: active and pending.
    PendingActive,
}

impl LrState {
    /// Whether the pending bit is set.
    pub fn pending(self) -> bool {
        matches!(self, LrState::Pending | LrState::PendingActive)
    }
    /// Whether the active bit is set.
    pub fn active(self) -> bool {
        matches!(self, LrState::Active | LrState::PendingActive)
    }
    /// Build from the two bits.
    pub fn from_flags(pending: bool, active: bool) -> Self {
        match (pending, active) {
            (false, false) => LrState::Invalid,
            (true, false) => LrState::Pending,
            (false, true) => LrState::Active,
            (true, true) => LrState::PendingActive,
        }
    }
}

/// An `ICH_LR<n>_EL2` value (IHI 0069 ch. 12, `ICH_LR<n>_EL2`).
///
/// | bits | field |
/// |---|---|
/// | 63:62 | State |
/// | 61 | HW: the virtual interrupt is linked to physical `pINTID`; the guest's deactivation also deactivates the physical interrupt |
/// | 60 | Group (1 = Group 1) |
/// | 55:48 | Priority |
/// | 44:32 | pINTID when HW = 1 |
/// | 41 | EOI when HW = 0: request a maintenance interrupt when the guest deactivates it |
/// | 31:0 | vINTID |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LrValue(u64);

impl LrValue {
    const STATE_SHIFT: u32 = 62;
    const HW: u64 = 1 << 61;
    const GROUP: u64 = 1 << 60;
    const PRIO_SHIFT: u32 = 48;
    const PINTID_SHIFT: u32 = 32;
    const PINTID_MASK: u64 = 0x1fff;
    const EOI: u64 = 1 << 41;

    /// An empty (Invalid) list register.
    pub const INVALID: LrValue = LrValue(0);

    /// Wrap a raw register value.
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }
    /// The raw register value.
    pub const fn bits(self) -> u64 {
        self.0
    }
    /// A software (HW = 0) interrupt.
    pub fn new(vintid: u32, priority: u8, group1: bool, state: LrState) -> Self {
        let mut v = u64::from(vintid) | (u64::from(priority) << Self::PRIO_SHIFT);
        if group1 {
            v |= Self::GROUP;
        }
        Self(v).with_state(state)
    }
    /// Same value with the HW bit and `pINTID` set (the EOI bit shares the
    /// pINTID field and is cleared).
    pub fn with_hw(self, pintid: u32) -> Self {
        let v = self.0 & !(Self::PINTID_MASK << Self::PINTID_SHIFT);
        Self(v | Self::HW | ((u64::from(pintid) & Self::PINTID_MASK) << Self::PINTID_SHIFT))
    }
    /// Same value with the EOI maintenance request bit (only meaningful when
    /// HW = 0).
    pub fn with_eoi(self) -> Self {
        debug_assert!(!self.hw());
        Self(self.0 | Self::EOI)
    }
    /// Same value with a different state.
    pub fn with_state(self, s: LrState) -> Self {
        let bits = match s {
            LrState::Invalid => 0,
            LrState::Pending => 1,
            LrState::Active => 2,
            LrState::PendingActive => 3,
        };
        Self((self.0 & !(3 << Self::STATE_SHIFT)) | (bits << Self::STATE_SHIFT))
    }
    /// Virtual INTID.
    pub fn vintid(self) -> u32 {
        self.0 as u32
    }
    /// Physical INTID (valid when [`LrValue::hw`]).
    pub fn pintid(self) -> u32 {
        ((self.0 >> Self::PINTID_SHIFT) & Self::PINTID_MASK) as u32
    }
    /// HW bit.
    pub fn hw(self) -> bool {
        self.0 & Self::HW != 0
    }
    /// EOI maintenance request bit (HW = 0 only).
    pub fn eoi(self) -> bool {
        !self.hw() && self.0 & Self::EOI != 0
    }
    /// Group bit (true = Group 1).
    pub fn group1(self) -> bool {
        self.0 & Self::GROUP != 0
    }
    /// Priority field.
    pub fn priority(self) -> u8 {
        (self.0 >> Self::PRIO_SHIFT) as u8
    }
    /// State field.
    pub fn state(self) -> LrState {
        match self.0 >> Self::STATE_SHIFT {
            0 => LrState::Invalid,
            1 => LrState::Pending,
            2 => LrState::Active,
            _ => LrState::PendingActive,
        }
    }
}

/// `ICH_HCR_EL2` (IHI 0069 ch. 12, ICH_HCR_EL2): the bits the vGIC decides on each entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IchHcr(u64);

impl IchHcr {
    /// En: enable the virtual CPU interface.
    pub const EN: u64 = 1 << 0;
    /// UIE: maintenance interrupt when zero or one LR is valid (underflow).
    pub const UIE: u64 = 1 << 1;
    /// LRENPIE: maintenance interrupt while EOIcount is non-zero.
    pub const LRENPIE: u64 = 1 << 2;
    /// NPIE: maintenance interrupt while no LR is in the pending state.
    pub const NPIE: u64 = 1 << 3;
    /// Wrap a raw value.
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }
    /// Raw value to write to `ICH_HCR_EL2`.
    pub const fn bits(self) -> u64 {
        self.0
    }
    /// Underflow maintenance requested.
    pub fn uie(self) -> bool {
        self.0 & Self::UIE != 0
    }
    /// No-pending maintenance requested.
    pub fn npie(self) -> bool {
        self.0 & Self::NPIE != 0
    }
    /// EOIcount, bits \[31:27\]: deactivations that matched no LR.
    pub fn eoicount(self) -> u32 {
        ((self.0 >> 27) & 0x1f) as u32
    }
}

/// `ICH_MISR_EL2` (IHI 0069 ch. 12, ICH_MISR_EL2): why a maintenance interrupt fired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IchMisr(u64);

impl IchMisr {
    /// EOI: at least one LR with EOI = 1 was deactivated (see `ICH_EISR_EL2`).
    pub const EOI: u64 = 1 << 0;
    /// U: underflow (UIE set and zero or one LR valid).
    pub const U: u64 = 1 << 1;
    /// LRENP: LR entry not present (LRENPIE and EOIcount != 0).
    pub const LRENP: u64 = 1 << 2;
    /// NP: no pending (NPIE set and no LR pending).
    pub const NP: u64 = 1 << 3;
    /// Wrap a raw value.
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }
    /// Raw value.
    pub const fn bits(self) -> u64 {
        self.0
    }
    /// Whether a reason bit is set.
    pub fn has(self, bit: u64) -> bool {
        self.0 & bit != 0
    }
}

/// `ICH_VTR_EL2` (IHI 0069 ch. 12, ICH_VTR_EL2): virtual interface capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IchVtr(pub u64);

impl IchVtr {
    /// Number of implemented list registers (`ListRegs` + 1).
    pub fn list_regs(self) -> usize {
        (self.0 & 0x1f) as usize + 1
    }
    /// Number of virtual priority bits (`PRIbits` + 1).
    pub fn pri_bits(self) -> u8 {
        ((self.0 >> 29) & 7) as u8 + 1
    }
    /// Number of virtual preemption bits (`PREbits` + 1, bits \[28:26\]).
    pub fn pre_bits(self) -> u8 {
        ((self.0 >> 26) & 7) as u8 + 1
    }
    /// How many `ICH_AP0R<n>_EL2`/`ICH_AP1R<n>_EL2` exist: one per 32
    /// preemption levels, so 1, 2 or 4 for 5, 6 or 7 PREbits (IHI 0069
    /// §12.4.1, "ICH_AP0R<n>_EL2"; other values are reserved).
    pub fn active_priority_regs(self) -> usize {
        match self.pre_bits() {
            0..=5 => 1,
            6 => 2,
            _ => 4,
        }
    }
}

/// A decoded `ICC_SGI1R_EL1` / `ICC_SGI0R_EL1` write (IHI 0069 ch. 12, ICC_SGI1R_EL1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgiRequest {
    /// SGI number, bits \[27:24\].
    pub intid: u8,
    /// IRM, bit 40: all PEs except the requester.
    pub broadcast: bool,
    /// Aff3, Aff2, Aff1 of the targets (bits \[55:48\], \[39:32\], \[23:16\]).
    pub aff321: u32,
    /// RS, bits \[47:44\]: targets have Aff0 = RS * 16 + bit index.
    pub range: u8,
    /// TargetList, bits \[15:0\].
    pub targets: u16,
}

impl SgiRequest {
    /// Decode a register value.
    pub fn decode(v: u64) -> Self {
        let aff1 = (v >> 16) & 0xff;
        let aff2 = (v >> 32) & 0xff;
        let aff3 = (v >> 48) & 0xff;
        Self {
            intid: ((v >> 24) & 0xf) as u8,
            broadcast: v & (1 << 40) != 0,
            aff321: ((aff3 << 16) | (aff2 << 8) | aff1) as u32,
            range: ((v >> 44) & 0xf) as u8,
            targets: v as u16,
        }
    }
    /// Whether a PE with this MPIDR is a target (the requester excluded for
    /// a broadcast).
    pub fn targets_mpidr(&self, mpidr: u64, requester_mpidr: u64) -> bool {
        if self.broadcast {
            return mpidr_aff(mpidr) != mpidr_aff(requester_mpidr);
        }
        let aff = mpidr_aff(mpidr);
        if aff >> 8 != self.aff321 {
            return false;
        }
        let aff0 = aff & 0xff;
        let base = u32::from(self.range) * 16;
        aff0 >= base && aff0 < base + 16 && self.targets & (1 << (aff0 - base)) != 0
    }
}

/// The affinity of an MPIDR packed as Aff3.Aff2.Aff1.Aff0 (the layout of
/// `GICR_TYPER.Affinity_Value` and of `GICD_IROUTER` without IRM).
pub fn mpidr_aff(mpidr: u64) -> u32 {
    ((((mpidr >> 32) & 0xff) << 24) | (mpidr & 0xff_ffff)) as u32
}

/// Virtual CPU interface registers the kernel saves and restores with a
/// vCPU (`ICH_VMCR_EL2`, `ICH_AP0R<n>_EL2`, `ICH_AP1R<n>_EL2`). The list
/// registers and `ICH_HCR_EL2` are produced by [`crate::Vgic::flush`] on
/// every entry instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuIfContext {
    /// `ICH_VMCR_EL2`.
    pub vmcr: u64,
    /// `ICH_AP0R<n>_EL2`, n = 0..3 (only as many as PREbits implies exist).
    pub ap0r: [u32; 4],
    /// `ICH_AP1R<n>_EL2`.
    pub ap1r: [u32; 4],
}

/// The EL1 virtual timer of a vCPU (`CNTV_CTL_EL0`, `CNTV_CVAL_EL0`, and
/// the hypervisor's `CNTVOFF_EL2`), saved and restored with the vCPU.
///
/// The kernel restores it on entry, saves it on exit, and drives the
/// level of PPI 27 (hardware-linked with [`crate::Vgic::map_hw`]) with
/// [`VtimerContext::asserted`] before each flush.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtimerContext {
    /// `CNTV_CTL_EL0`.
    pub ctl: u64,
    /// `CNTV_CVAL_EL0`.
    pub cval: u64,
    /// `CNTVOFF_EL2`: virtual count = physical count - offset.
    pub cntvoff: u64,
}

impl VtimerContext {
    /// `CNTV_CTL_EL0.ENABLE`.
    pub const ENABLE: u64 = 1 << 0;
    /// `CNTV_CTL_EL0.IMASK`.
    pub const IMASK: u64 = 1 << 1;
    /// `CNTV_CTL_EL0.ISTATUS` (read-only).
    pub const ISTATUS: u64 = 1 << 2;

    /// ISTATUS at physical count `cntpct`: enabled and the virtual count
    /// has reached the compare value (Arm ARM D11, "the timer condition").
    pub fn istatus(&self, cntpct: u64) -> bool {
        self.ctl & Self::ENABLE != 0 && cntpct.wrapping_sub(self.cntvoff) >= self.cval
    }

    /// Whether the timer's interrupt output is asserted (ISTATUS and not
    /// masked): the line level of PPI 27.
    pub fn asserted(&self, cntpct: u64) -> bool {
        self.istatus(cntpct) && self.ctl & Self::IMASK == 0
    }

    /// Physical count at which the output asserts, to arm a host timer while
    /// the vCPU waits in WFI; `None` if disabled or masked.
    pub fn deadline(&self) -> Option<u64> {
        (self.ctl & (Self::ENABLE | Self::IMASK) == Self::ENABLE)
            .then(|| self.cval.wrapping_add(self.cntvoff))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn active_priority_registers_follow_prebits() {
        use super::IchVtr;
        // PRIbits 5, PREbits 5 (QEMU), 6 and 7; ListRegs 3.
        let vtr = |pri: u64, pre: u64| IchVtr(((pri - 1) << 29) | ((pre - 1) << 26) | 3);
        assert_eq!(vtr(5, 5).pre_bits(), 5);
        assert_eq!(vtr(5, 5).active_priority_regs(), 1);
        assert_eq!(vtr(6, 6).active_priority_regs(), 2);
        assert_eq!(vtr(7, 7).active_priority_regs(), 4);
        assert_eq!(vtr(7, 7).pri_bits(), 7);
        assert_eq!(vtr(7, 7).list_regs(), 4);
    }

    use super::*;

    #[test]
    fn lr_fields_bit_exact() {
        let v = LrValue::new(8200, 0xa0, true, LrState::Pending);
        assert_eq!(v.bits(), (1 << 62) | (1 << 60) | (0xa0 << 48) | 8200);
        let hw = LrValue::new(27, 0x80, true, LrState::Pending).with_hw(27);
        assert_eq!(hw.bits() >> 61 & 1, 1);
        assert_eq!(hw.pintid(), 27);
        assert!(!hw.eoi());
        let e = LrValue::new(40, 0, false, LrState::Active).with_eoi();
        assert_eq!(e.bits(), (2 << 62) | (1 << 41) | 40);
        assert!(e.eoi() && !e.group1());
        assert_eq!(
            e.with_state(LrState::PendingActive).state(),
            LrState::PendingActive
        );
    }

    #[test]
    fn sgi1r_decoding() {
        // Aff3=1 Aff2=2 Aff1=3, RS=1, targets 0b101, INTID 5.
        let v = (1u64 << 48) | (2 << 32) | (3 << 16) | (1 << 44) | (5 << 24) | 0b101;
        let r = SgiRequest::decode(v);
        assert_eq!(r.intid, 5);
        assert!(!r.broadcast);
        let mp = |a0: u64| (1u64 << 32) | (2 << 16) | (3 << 8) | a0;
        assert!(r.targets_mpidr(mp(16), 0));
        assert!(!r.targets_mpidr(mp(17), 0));
        assert!(r.targets_mpidr(mp(18), 0));
        assert!(!r.targets_mpidr(mp(2), 0));
        let b = SgiRequest::decode(1 << 40);
        assert!(b.broadcast && !b.targets_mpidr(1, 1) && b.targets_mpidr(2, 1));
    }

    #[test]
    fn vtimer_condition() {
        let t = VtimerContext {
            ctl: VtimerContext::ENABLE,
            cval: 1000,
            cntvoff: 500,
        };
        assert!(!t.asserted(1499) && t.asserted(1500));
        assert_eq!(t.deadline(), Some(1500));
        let masked = VtimerContext {
            ctl: VtimerContext::ENABLE | VtimerContext::IMASK,
            ..t
        };
        assert!(masked.istatus(2000) && !masked.asserted(2000));
        assert_eq!(masked.deadline(), None);
        assert!(!VtimerContext { ctl: 0, ..t }.istatus(5000));
    }

    #[test]
    fn vtr_decoding() {
        let v = IchVtr((4 << 29) | 3);
        assert_eq!(v.list_regs(), 4);
        assert_eq!(v.pri_bits(), 5);
    }
}
