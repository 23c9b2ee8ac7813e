//! Exception syndromes (ESR_EL2) of traps from a guest, and the MMIO
//! access a data abort describes (Arm ARM D24.2.40, "ESR_EL2").

/// Exception classes Vigil handles (ESR_EL2.EC).
pub mod ec {
    pub const UNKNOWN: u8 = 0x00;
    pub const WFX: u8 = 0x01;
    pub const HVC64: u8 = 0x16;
    pub const SMC64: u8 = 0x17;
    pub const SYSREG: u8 = 0x18;
    pub const IABT_LOWER: u8 = 0x20;
    pub const DABT_LOWER: u8 = 0x24;
    pub const BRK: u8 = 0x3c;
}

/// An ESR_EL2 value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Esr(pub u64);

impl Esr {
    pub fn ec(&self) -> u8 {
        ((self.0 >> 26) & 0x3f) as u8
    }

    /// Instruction length: 4 bytes when set (A64), else 2.
    pub fn il(&self) -> bool {
        self.0 & (1 << 25) != 0
    }

    pub fn iss(&self) -> u32 {
        (self.0 & 0x1ff_ffff) as u32
    }

    /// The immediate of an HVC or SMC.
    pub fn imm16(&self) -> u16 {
        self.0 as u16
    }

    /// WFx: WFE (true) or WFI (false); ISS.TI bit 0.
    pub fn is_wfe(&self) -> bool {
        self.0 & 1 != 0
    }

    /// Fault status code of an abort (ISS.DFSC / IFSC).
    pub fn fsc(&self) -> u8 {
        (self.0 & 0x3f) as u8
    }
}

/// A decoded data-abort syndrome with a valid instruction syndrome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// Bytes: 1, 2, 4 or 8.
    pub width: u8,
    pub write: bool,
    /// Register number; 31 is XZR (stores write zero, loads discard).
    pub reg: u8,
    /// Sign-extend the loaded value (ISS.SSE).
    pub sign_extend: bool,
    /// The register is 64-bit (ISS.SF); otherwise a 32-bit W register.
    pub sf: bool,
}

/// Why a data abort cannot be emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortError {
    /// ISS.ISV == 0: no syndrome (e.g. a load pair, or a write-back
    /// addressing mode). Vigil does not decode instructions; the guest
    /// gets an external abort.
    NoSyndrome,
    /// Not a data abort.
    NotDataAbort,
}

impl MmioAccess {
    /// Decode a data abort from a lower EL (ISS encoding for an exception
    /// from a Data Abort: ISV[24], SAS[23:22], SSE[21], SRT[20:16],
    /// SF[15], WnR[6]).
    pub fn decode(esr: Esr) -> Result<Self, AbortError> {
        if esr.ec() != ec::DABT_LOWER {
            return Err(AbortError::NotDataAbort);
        }
        let iss = esr.iss();
        if iss & (1 << 24) == 0 {
            return Err(AbortError::NoSyndrome);
        }
        Ok(Self {
            width: 1 << ((iss >> 22) & 3),
            sign_extend: iss & (1 << 21) != 0,
            reg: ((iss >> 16) & 0x1f) as u8,
            sf: iss & (1 << 15) != 0,
            write: iss & (1 << 6) != 0,
        })
    }

    /// Mask of the access width.
    pub fn mask(&self) -> u64 {
        if self.width == 8 {
            u64::MAX
        } else {
            (1u64 << (self.width as u32 * 8)) - 1
        }
    }

    /// The value a store writes, from the source register's contents
    /// (XZR reads as zero).
    pub fn store_value(&self, reg_value: u64) -> u64 {
        if self.reg == 31 {
            0
        } else {
            reg_value & self.mask()
        }
    }

    /// The register value after a load of `raw` (device data): truncated
    /// to the width, sign-extended if asked to the register's size, and a
    /// W register's upper half cleared.
    pub fn load_value(&self, raw: u64) -> u64 {
        let bits = self.width as u32 * 8;
        let mut v = raw & self.mask();
        if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            v = (((v << shift) as i64) >> shift) as u64;
        }
        if !self.sf {
            v &= 0xffff_ffff;
        }
        v
    }
}

/// A trapped MSR/MRS (EC 0x18; ISS: Op0[21:20], Op2[19:17], Op1[16:14],
/// CRn[13:10], Rt[9:5], CRm[4:1], Direction[0] = read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysRegAccess {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
    pub reg: u8,
    pub read: bool,
}

impl SysRegAccess {
    pub fn decode(esr: Esr) -> Option<Self> {
        if esr.ec() != ec::SYSREG {
            return None;
        }
        let iss = esr.iss();
        Some(Self {
            op0: ((iss >> 20) & 3) as u8,
            op2: ((iss >> 17) & 7) as u8,
            op1: ((iss >> 14) & 7) as u8,
            crn: ((iss >> 10) & 0xf) as u8,
            reg: ((iss >> 5) & 0x1f) as u8,
            crm: ((iss >> 1) & 0xf) as u8,
            read: iss & 1 != 0,
        })
    }

    /// (op0, op1, crn, crm, op2), to compare against register encodings.
    pub fn encoding(&self) -> (u8, u8, u8, u8, u8) {
        (self.op0, self.op1, self.crn, self.crm, self.op2)
    }
}

/// Well-known trapped register encodings.
pub mod sysreg {
    /// ICC_SGI1R_EL1: S3_0_C12_C11_5.
    pub const ICC_SGI1R_EL1: (u8, u8, u8, u8, u8) = (3, 0, 12, 11, 5);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data abort syndrome from its fields.
    fn dabt(width_log2: u64, sse: bool, srt: u64, sf: bool, write: bool) -> Esr {
        Esr((0x24 << 26)
            | (1 << 25)
            | (1 << 24)
            | (width_log2 << 22)
            | ((sse as u64) << 21)
            | (srt << 16)
            | ((sf as u64) << 15)
            | ((write as u64) << 6)
            | 0x07)
    }

    #[test]
    fn decodes_every_width_and_direction() {
        for w in 0..4 {
            for write in [false, true] {
                let a = MmioAccess::decode(dabt(w, false, 3, true, write)).unwrap();
                assert_eq!(a.width, 1 << w);
                assert_eq!(a.write, write);
                assert_eq!(a.reg, 3);
            }
        }
    }

    #[test]
    fn no_syndrome_and_wrong_class() {
        let e = Esr(dabt(2, false, 0, false, false).0 & !(1 << 24));
        assert_eq!(MmioAccess::decode(e), Err(AbortError::NoSyndrome));
        assert_eq!(
            MmioAccess::decode(Esr(0x16 << 26)),
            Err(AbortError::NotDataAbort)
        );
    }

    #[test]
    fn loads_truncate_sign_extend_and_clear_w_upper_half() {
        let raw = 0x8081_8283_8485_8687u64;
        let ldrb = MmioAccess::decode(dabt(0, false, 1, false, false)).unwrap();
        assert_eq!(ldrb.load_value(raw), 0x87);
        let ldrsb_x = MmioAccess::decode(dabt(0, true, 1, true, false)).unwrap();
        assert_eq!(ldrsb_x.load_value(raw), 0xffff_ffff_ffff_ff87);
        let ldrsb_w = MmioAccess::decode(dabt(0, true, 1, false, false)).unwrap();
        assert_eq!(ldrsb_w.load_value(raw), 0xffff_ff87);
        let ldrsh_x = MmioAccess::decode(dabt(1, true, 1, true, false)).unwrap();
        assert_eq!(ldrsh_x.load_value(raw), 0xffff_ffff_ffff_8687);
        let ldrsw = MmioAccess::decode(dabt(2, true, 1, true, false)).unwrap();
        assert_eq!(ldrsw.load_value(raw), 0xffff_ffff_8485_8687);
        let ldr_w = MmioAccess::decode(dabt(2, false, 1, false, false)).unwrap();
        assert_eq!(ldr_w.load_value(raw), 0x8485_8687);
        let ldr_x = MmioAccess::decode(dabt(3, false, 1, true, false)).unwrap();
        assert_eq!(ldr_x.load_value(raw), raw);
        // Positive values are not sign-extended.
        assert_eq!(ldrsb_x.load_value(0x7f), 0x7f);
    }

    #[test]
    fn stores_mask_to_width_and_xzr_is_zero() {
        let strh = MmioAccess::decode(dabt(1, false, 5, false, true)).unwrap();
        assert_eq!(strh.store_value(0x1234_5678), 0x5678);
        let str_xzr = MmioAccess::decode(dabt(3, false, 31, true, true)).unwrap();
        assert_eq!(str_xzr.reg, 31);
        assert_eq!(str_xzr.store_value(0xdead_beef), 0);
    }

    #[test]
    fn sysreg_decoding() {
        // MSR ICC_SGI1R_EL1, x7: Op0=3 Op2=5 Op1=0 CRn=12 Rt=7 CRm=11 write.
        let iss = (3 << 20) | (5 << 17) | (12 << 10) | (7 << 5) | (11 << 1);
        let a = SysRegAccess::decode(Esr((0x18 << 26) | (1 << 25) | iss)).unwrap();
        assert_eq!(a.encoding(), sysreg::ICC_SGI1R_EL1);
        assert_eq!(a.reg, 7);
        assert!(!a.read);
        assert_eq!(SysRegAccess::decode(Esr(0x24 << 26)), None);
    }

    #[test]
    fn esr_fields() {
        let e = Esr((0x16 << 26) | (1 << 25) | 0x1234);
        assert_eq!(e.ec(), ec::HVC64);
        assert!(e.il());
        assert_eq!(e.imm16(), 0x1234);
        assert!(Esr((0x01 << 26) | 1).is_wfe());
    }
}
