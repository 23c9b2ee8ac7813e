//! System registers without a typed accessor in `aarch64-cpu`, by their
//! generic encodings (so no assembler extension is needed).

use tock_registers::register_bitfields;

register_bitfields! {u64,
    /// CPTR_EL2 with HCR_EL2.E2H == 0 (Arm ARM D24.2.31); `aarch64-cpu`
    /// names only TAM.
    pub CPTR_EL2_NVHE [
        /// Trap CPACR_EL1 accesses.
        TCPAC OFFSET(31) NUMBITS(1) [],
        /// Trap Activity Monitor accesses.
        TAM OFFSET(30) NUMBITS(1) [],
        /// Trap trace register accesses.
        TTA OFFSET(20) NUMBITS(1) [],
        RES1_13 OFFSET(13) NUMBITS(1) [],
        /// Trap SME.
        TSM OFFSET(12) NUMBITS(1) [],
        /// Trap FP/SIMD.
        TFP OFFSET(10) NUMBITS(1) [],
        RES1_9 OFFSET(9) NUMBITS(1) [],
        /// Trap SVE.
        TZ OFFSET(8) NUMBITS(1) [],
        RES1_7_0 OFFSET(0) NUMBITS(8) [],
    ]
}

/// CPTR_EL2 from boot on: FP/SIMD untrapped (the guests' FP registers are
/// switched lazily, `vm::switch`), SVE and SME trapped (their state is not
/// switched, so no guest may use it).
pub const CPTR_EL2_RUN: u64 = CPTR_EL2_NVHE::RES1_7_0.val(0xff).value
    | CPTR_EL2_NVHE::RES1_9::SET.value
    | CPTR_EL2_NVHE::RES1_13::SET.value
    | CPTR_EL2_NVHE::TZ::SET.value
    | CPTR_EL2_NVHE::TSM::SET.value;

/// `sysreg!(doc, read, write, "encoding")` defines the accessors; `_` in
/// place of a name leaves out one Vigil does not use (a read-only register,
/// or one only written).
macro_rules! sysreg {
    ($(#[$doc:meta])* _, $write:ident, $enc:literal) => {
        sysreg!(@write $(#[$doc])* $write, $enc);
    };
    ($(#[$doc:meta])* $read:ident, _, $enc:literal) => {
        sysreg!(@read $(#[$doc])* $read, $enc);
    };
    ($(#[$doc:meta])* $read:ident, $write:ident, $enc:literal) => {
        sysreg!(@read $(#[$doc])* $read, $enc);
        sysreg!(@write $(#[$doc])* $write, $enc);
    };
    (@read $(#[$doc:meta])* $read:ident, $enc:literal) => {
        $(#[$doc])*
        #[inline]
        pub fn $read() -> u64 {
            let v: u64;
            // SAFETY: reading this system register has no side effects
            // beyond those the architecture documents for it, which the
            // callers rely on (e.g. acknowledging an interrupt).
            unsafe { core::arch::asm!(concat!("mrs {}, ", $enc), out(reg) v, options(nostack)) };
            v
        }
    };
    (@write $(#[$doc:meta])* $write:ident, $enc:literal) => {
        $(#[$doc])*
        #[inline]
        pub fn $write(v: u64) {
            // SAFETY: the callers write values valid for this register at
            // EL2; none of these registers changes memory mappings.
            unsafe { core::arch::asm!(concat!("msr ", $enc, ", {}"), in(reg) v, options(nostack)) };
        }
    };
}

sysreg!(
    /// ICC_SRE_EL2 (IHI 0069 §12.12.8).
    _, set_icc_sre_el2, "S3_4_C12_C9_5"
);
sysreg!(
    /// ICC_PMR_EL1.
    _, set_icc_pmr_el1, "S3_0_C4_C6_0"
);
sysreg!(
    /// ICC_IAR1_EL1 (reading acknowledges).
    icc_iar1_el1, _, "S3_0_C12_C12_0"
);
sysreg!(
    /// ICC_EOIR1_EL1.
    _, set_icc_eoir1_el1, "S3_0_C12_C12_1"
);
sysreg!(
    /// ICC_DIR_EL1.
    _, set_icc_dir_el1, "S3_0_C12_C11_1"
);
sysreg!(
    /// ICC_SGI1R_EL1.
    _, set_icc_sgi1r_el1, "S3_0_C12_C11_5"
);
sysreg!(
    /// ICC_IGRPEN1_EL1.
    _, set_icc_igrpen1_el1, "S3_0_C12_C12_7"
);
sysreg!(
    /// ICC_CTLR_EL1.
    icc_ctlr_el1, set_icc_ctlr_el1, "S3_0_C12_C12_4"
);
sysreg!(
    /// ICC_BPR1_EL1.
    _, set_icc_bpr1_el1, "S3_0_C12_C12_3"
);
sysreg!(
    /// CNTHP_CTL_EL2: EL2 physical timer control.
    cnthp_ctl_el2, set_cnthp_ctl_el2, "S3_4_C14_C2_1"
);
sysreg!(
    /// CNTHP_CVAL_EL2: EL2 physical timer compare value.
    cnthp_cval_el2, set_cnthp_cval_el2, "S3_4_C14_C2_2"
);
/// A register whose writes decide how guests are translated or trapped:
/// the setter is `unsafe`, with the contract given at each one.
macro_rules! sysreg_unsafe_set {
    ($(#[$doc:meta])* _, $write:ident, $enc:literal, $contract:literal) => {
        $(#[$doc])*
        ///
        /// # Safety
        #[doc = $contract]
        #[inline]
        pub unsafe fn $write(v: u64) {
            // SAFETY: the caller's contract.
            unsafe { core::arch::asm!(concat!("msr ", $enc, ", {}"), in(reg) v, options(nostack)) };
        }
    };
    ($(#[$doc:meta])* $read:ident, $write:ident, $enc:literal, $contract:literal) => {
        sysreg!(@read $(#[$doc])* $read, $enc);
        sysreg_unsafe_set!($(#[$doc])* _, $write, $enc, $contract);
    };
}

sysreg_unsafe_set!(
    /// HCR_EL2: stage 2 on or off, what traps to EL2, where physical
    /// interrupts go.
    hcr_el2, set_hcr_el2, "hcr_el2",
    "`v` must keep stage 2 enabled (VM) whenever a guest can run next, and \
     route physical IRQs to EL2 (IMO): a VM must never run untranslated or \
     take the host's interrupts. Follow with an ISB before the guest runs."
);
sysreg!(
    /// MDCCINT_EL1 (debug communications channel interrupts).
    read_mdccint, write_mdccint, "S2_0_C0_C2_0"
);
sysreg!(
    /// OSLAR_EL1 (write 1 to set the OS lock, 0 to clear it).
    _, write_oslar, "S2_0_C1_C0_4"
);
sysreg!(
    /// OSLSR_EL1 (bit 1: the OS lock is set).
    read_oslsr, _, "S2_0_C1_C1_4"
);
sysreg!(
    /// DBGCLAIMCLR_EL1 (reads the claim tags; writing 1s clears them).
    read_claimclr, write_claimclr, "S2_0_C7_C9_6"
);
sysreg!(
    /// DBGCLAIMSET_EL1 (writing 1s sets claim tags).
    _, write_claimset, "S2_0_C7_C8_6"
);
sysreg!(
    /// MDCR_EL2: what of the PMU and debug EL1 may reach.
    mdcr_el2, set_mdcr_el2, "mdcr_el2"
);
sysreg_unsafe_set!(
    /// VTCR_EL2: the shape of stage-2 translation.
    _, set_vtcr_el2, "vtcr_el2",
    "`v` must describe the stage-2 tables every VTTBR_EL2 points at (granule, \
     levels, IPA size), with no guest running on this CPU."
);
sysreg_unsafe_set!(
    /// VTTBR_EL2: the running VM's stage-2 tables and VMID.
    _, set_vttbr_el2, "vttbr_el2",
    "`v` must point at live stage-2 tables that map only the memory of the \
     VM about to run, with that VM's own VMID; no vCPU of another VM may run \
     on this CPU until it is replaced."
);
sysreg!(_, set_vmpidr_el2, "vmpidr_el2");
sysreg!(cnthctl_el2, set_cnthctl_el2, "cnthctl_el2");
sysreg!(_, set_cntvoff_el2, "cntvoff_el2");
sysreg!(esr_el2, _, "esr_el2");
sysreg!(far_el2, _, "far_el2");
sysreg!(hpfar_el2, _, "hpfar_el2");
sysreg!(_, set_esr_el1, "esr_el1");
sysreg!(_, set_far_el1, "far_el1");
sysreg!(_, set_elr_el1, "elr_el1");
sysreg!(_, set_spsr_el1, "spsr_el1");
sysreg!(vbar_el1, _, "vbar_el1");

/// Unmask IRQs at the current EL.
#[inline]
pub fn irq_enable() {
    // SAFETY: unmasking interrupts; handlers are installed before this.
    unsafe { core::arch::asm!("msr daifclr, #2", options(nostack)) };
}

/// Mask IRQs at EL2.
#[inline]
pub fn irq_disable() {
    // SAFETY: masking interrupts has no memory effects.
    unsafe { core::arch::asm!("msr daifset, #2", options(nostack)) };
}

pub fn isb() {
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}
