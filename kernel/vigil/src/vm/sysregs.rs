//! The EL1 system registers of a vCPU, switched when a physical CPU
//! changes which vCPU it runs (not on every exit: while a vCPU stays
//! loaded its EL1 state lives in the registers).

macro_rules! el1_regs {
    ($($field:ident => $reg:literal),* $(,)?) => {
        /// Saved EL1 (and EL0 thread) registers of a vCPU.
        #[derive(Clone, Copy, Debug, Default)]
        pub struct El1Regs {
            $(pub $field: u64,)*
        }

        impl El1Regs {
            /// Read the live registers.
            pub fn save(&mut self) {
                $(
                    // SAFETY: reading an EL1 register from EL2 has no side
                    // effects.
                    unsafe {
                        core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) self.$field,
                            options(nomem, nostack, preserves_flags));
                    }
                )*
            }

            /// Load these values into the registers.
            pub fn restore(&self) {
                $(
                    // SAFETY: EL1 registers only affect EL1/EL0 execution,
                    // which is the guest's; the hypervisor at EL2 does not
                    // depend on them.
                    unsafe {
                        core::arch::asm!(concat!("msr ", $reg, ", {}"), in(reg) self.$field,
                            options(nomem, nostack, preserves_flags));
                    }
                )*
            }
        }
    };
}

el1_regs! {
    sctlr => "sctlr_el1",
    cpacr => "cpacr_el1",
    ttbr0 => "ttbr0_el1",
    ttbr1 => "ttbr1_el1",
    tcr => "tcr_el1",
    esr => "esr_el1",
    afsr0 => "afsr0_el1",
    afsr1 => "afsr1_el1",
    far => "far_el1",
    mair => "mair_el1",
    amair => "amair_el1",
    vbar => "vbar_el1",
    contextidr => "contextidr_el1",
    tpidr_el0 => "tpidr_el0",
    tpidrro_el0 => "tpidrro_el0",
    tpidr_el1 => "tpidr_el1",
    cntkctl => "cntkctl_el1",
    par => "par_el1",
    sp_el0 => "sp_el0",
    sp_el1 => "sp_el1",
    elr => "elr_el1",
    spsr => "spsr_el1",
    csselr => "csselr_el1",
    mdscr => "mdscr_el1",
    // Each timer's compare value before its control: restoring an enabled
    // control with the previous vCPU's deadline could fire the timer.
    cntv_cval => "cntv_cval_el0",
    cntv_ctl => "cntv_ctl_el0",
    // The EL1 physical timer: CNTHCTL_EL2.EL1PCEN gives it to the guest.
    cntp_cval => "cntp_cval_el0",
    cntp_ctl => "cntp_ctl_el0",
}

/// SCTLR_EL1 at reset as Linux expects it: MMU and caches off, RES1 bits
/// (Arm ARM D24.2.144) set.
pub const SCTLR_EL1_RESET: u64 =
    (1 << 29) | (1 << 28) | (1 << 23) | (1 << 22) | (1 << 20) | (1 << 11);

impl El1Regs {
    pub fn reset() -> Self {
        Self {
            sctlr: SCTLR_EL1_RESET,
            ..Self::default()
        }
    }
}

/// Pointer-authentication keys, switched only where FEAT_PAuth exists
/// (accessing them otherwise is UNDEFINED).
#[derive(Clone, Copy, Debug, Default)]
pub struct PauthKeys([u64; 10]);

macro_rules! pauth_access {
    ($($i:literal => $reg:literal),*) => {
        impl PauthKeys {
            pub fn save(&mut self) {
                $(
                    // SAFETY: reading a key register from EL2 has no side
                    // effects; callers check FEAT_PAuth.
                    unsafe { core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) self.0[$i], options(nomem, nostack)) };
                )*
            }
            pub fn restore(&self) {
                $(
                    // SAFETY: the keys only affect EL1/EL0 pointer
                    // authentication, i.e. the guest's.
                    unsafe { core::arch::asm!(concat!("msr ", $reg, ", {}"), in(reg) self.0[$i], options(nomem, nostack)) };
                )*
            }
        }
    };
}

pauth_access! {
    0 => "S3_0_C2_C1_0", 1 => "S3_0_C2_C1_1", 2 => "S3_0_C2_C1_2", 3 => "S3_0_C2_C1_3",
    4 => "S3_0_C2_C2_0", 5 => "S3_0_C2_C2_1", 6 => "S3_0_C2_C2_2", 7 => "S3_0_C2_C2_3",
    8 => "S3_0_C2_C3_0", 9 => "S3_0_C2_C3_1"
}

/// Whether the CPU has pointer authentication (ID_AA64ISAR1_EL1 APA/API/
/// GPA/GPI, ID_AA64ISAR2_EL1 APA3/GPA3).
pub fn has_pauth() -> bool {
    let (isar1, isar2): (u64, u64);
    // SAFETY: reading ID registers has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, id_aa64isar1_el1", out(reg) isar1, options(nomem, nostack));
        core::arch::asm!("mrs {}, S3_0_C0_C6_2", out(reg) isar2, options(nomem, nostack));
    }
    let f = |v: u64, s: u32| (v >> s) & 0xf != 0;
    f(isar1, 4) || f(isar1, 8) || f(isar1, 24) || f(isar1, 28) || f(isar2, 12) || f(isar2, 8)
}
