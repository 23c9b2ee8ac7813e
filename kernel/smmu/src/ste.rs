//! Stream table entries (IHI 0070 §5.2, "Stream Table Entry"): 64 bytes,
//! eight little-endian doublewords. Vigil uses three kinds: invalid (V = 0:
//! the stream's transactions abort and C_BAD_STE is recorded), and stage-1
//! bypass with stage-2 translation for a VM's devices.

/// One stream table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ste(pub [u64; 8]);

/// STE.Config [3:1] (IHI 0070 §5.2, table "STE.Config").
pub const CONFIG_ABORT: u64 = 0b000;
pub const CONFIG_BYPASS: u64 = 0b100;
pub const CONFIG_S2: u64 = 0b110;

/// A VM's stage-2 translation as an STE describes it (the same fields as
/// VTCR_EL2 and VTTBR_EL2 of the CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Config {
    pub vmid: u16,
    /// Stage-2 table base (4 KiB aligned at least).
    pub ttb: u64,
    /// S2T0SZ: the input (IPA) size is 64 - t0sz bits.
    pub t0sz: u8,
    /// S2SL0: starting level, encoded as VTCR_EL2.SL0 (4 KiB granule: 2 is
    /// level 0).
    pub sl0: u8,
    /// S2PS: output size, encoded as VTCR_EL2.PS.
    pub ps: u8,
}

impl Ste {
    /// V = 0: the stream is not configured; its transactions abort and the
    /// SMMU records C_BAD_STE.
    pub const fn invalid() -> Self {
        Self([0; 8])
    }

    /// V = 1, Config = abort: transactions abort silently.
    pub const fn abort() -> Self {
        Self([1 | (CONFIG_ABORT << 1), 0, 0, 0, 0, 0, 0, 0])
    }

    /// Stage 1 bypassed, stage 2 translated by `s2`, walks inner/outer
    /// write-back inner shareable, 4 KiB granule, AArch64 tables, access
    /// flag faults disabled (S2AFFD: the tables set AF), faults recorded
    /// (S2R), no stall (S2S = 0), little-endian (S2ENDI = 0).
    ///
    /// Word 4 (bits 128..159): S2VMID [143:128]. Word 5 (bits 160..191):
    /// S2T0SZ [165:160], S2SL0 [167:166], S2IR0 [169:168], S2OR0
    /// [171:170], S2SH0 [173:172], S2TG [175:174], S2PS [178:176], S2AA64
    /// 179, S2ENDI 180, S2AFFD 181, S2PTW 182, S2HD 183, S2HA 184, S2S
    /// 185, S2R 186. S2TTB [243:196] (doubleword 3, bits [51:4]).
    pub fn s2(cfg: &S2Config) -> Self {
        let dw0 = 1 | (CONFIG_S2 << 1);
        let word5: u64 = u64::from(cfg.t0sz & 0x3f)
            | (u64::from(cfg.sl0 & 3) << 6)
            | (1 << 8) // S2IR0: write-back
            | (1 << 10) // S2OR0: write-back
            | (3 << 12) // S2SH0: inner shareable
            // S2TG [15:14] = 0: 4 KiB granule
            | (u64::from(cfg.ps & 7) << 16)
            | (1 << 19) // S2AA64
            | (1 << 21) // S2AFFD
            | (1 << 26); // S2R
        let dw2 = u64::from(cfg.vmid) | (word5 << 32);
        let dw3 = cfg.ttb & 0x000f_ffff_ffff_fff0;
        Self([dw0, 0, dw2, dw3, 0, 0, 0, 0])
    }

    pub fn valid(&self) -> bool {
        self.0[0] & 1 != 0
    }

    pub fn config(&self) -> u64 {
        (self.0[0] >> 1) & 7
    }

    pub fn s2vmid(&self) -> u16 {
        self.0[2] as u16
    }

    pub fn s2ttb(&self) -> u64 {
        self.0[3] & 0x000f_ffff_ffff_fff0
    }

    /// Word 5 of the entry (the stage-2 translation controls).
    pub fn word5(&self) -> u32 {
        (self.0[2] >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit positions from IHI 0070 §5.2, counted from bit 0 of the STE.
    fn bit(ste: &Ste, n: usize) -> u64 {
        (ste.0[n / 64] >> (n % 64)) & 1
    }
    fn field(ste: &Ste, lo: usize, width: usize) -> u64 {
        (0..width).map(|i| bit(ste, lo + i) << i).sum()
    }

    #[test]
    fn stage2_entry_is_bit_exact() {
        let ste = Ste::s2(&S2Config {
            vmid: 0x1234,
            ttb: 0x0000_0012_3456_7000,
            t0sz: 20,
            sl0: 2,
            ps: 4,
        });
        assert_eq!(field(&ste, 0, 1), 1, "V");
        assert_eq!(field(&ste, 1, 3), 0b110, "Config: S1 bypass, S2 translate");
        assert_eq!(field(&ste, 128, 16), 0x1234, "S2VMID");
        assert_eq!(field(&ste, 160, 6), 20, "S2T0SZ");
        assert_eq!(field(&ste, 166, 2), 2, "S2SL0");
        assert_eq!(field(&ste, 168, 2), 1, "S2IR0");
        assert_eq!(field(&ste, 170, 2), 1, "S2OR0");
        assert_eq!(field(&ste, 172, 2), 3, "S2SH0");
        assert_eq!(field(&ste, 174, 2), 0, "S2TG 4 KiB");
        assert_eq!(field(&ste, 176, 3), 4, "S2PS");
        assert_eq!(field(&ste, 179, 1), 1, "S2AA64");
        assert_eq!(field(&ste, 180, 1), 0, "S2ENDI");
        assert_eq!(field(&ste, 181, 1), 1, "S2AFFD");
        assert_eq!(field(&ste, 183, 2), 0, "S2HD, S2HA");
        assert_eq!(field(&ste, 185, 1), 0, "S2S");
        assert_eq!(field(&ste, 186, 1), 1, "S2R");
        assert_eq!(field(&ste, 196, 48) << 4, 0x0000_0012_3456_7000, "S2TTB");
        assert_eq!(ste.s2vmid(), 0x1234);
        assert_eq!(ste.s2ttb(), 0x0000_0012_3456_7000);
        assert_eq!(ste.config(), CONFIG_S2);
        assert!(ste.valid());
        for dw in [1, 4, 5, 6, 7] {
            assert_eq!(ste.0[dw], 0, "doubleword {dw} is RES0 here");
        }
    }

    #[test]
    fn invalid_and_abort_entries() {
        assert!(!Ste::invalid().valid());
        assert_eq!(Ste::invalid().0, [0; 8]);
        let a = Ste::abort();
        assert!(a.valid());
        assert_eq!(a.config(), CONFIG_ABORT);
    }
}
