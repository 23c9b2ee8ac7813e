//! The CPU feature ID registers a guest sees (trapped with HCR_EL2.TID3).
//!
//! Vigil passes the host's values through, minus the features it does not
//! virtualise: SVE and SME (their register state is not switched), MPAM,
//! AMU, the PMU, SPE, trace, MTE, and the memory-copy instructions (MOPS,
//! which need HCRX_EL2 set up). A guest that probed them would otherwise
//! use state the hypervisor does not preserve.

/// (op0, op1, CRn, CRm, op2) of a system register.
pub type Encoding = (u8, u8, u8, u8, u8);

/// Whether `enc` is in the ID register space trapped by TID3 (op0 = 3,
/// op1 = 0, CRn = 0, CRm = 1..7; Arm ARM D18.3.1).
pub fn is_id_register(enc: Encoding) -> bool {
    let (op0, op1, crn, crm, _) = enc;
    op0 == 3 && op1 == 0 && crn == 0 && (1..=7).contains(&crm)
}

pub const ID_AA64PFR0_EL1: Encoding = (3, 0, 0, 4, 0);
pub const ID_AA64PFR1_EL1: Encoding = (3, 0, 0, 4, 1);
pub const ID_AA64ZFR0_EL1: Encoding = (3, 0, 0, 4, 4);
pub const ID_AA64SMFR0_EL1: Encoding = (3, 0, 0, 4, 5);
pub const ID_AA64DFR0_EL1: Encoding = (3, 0, 0, 5, 0);
pub const ID_AA64ISAR2_EL1: Encoding = (3, 0, 0, 6, 2);

/// A 4-bit field at `shift`.
const fn field(shift: u32) -> u64 {
    0xf << shift
}

/// The value a guest reads for ID register `enc` whose host value is
/// `host`.
pub fn sanitize(enc: Encoding, host: u64) -> u64 {
    match enc {
        // SVE [35:32], MPAM [43:40], AMU [47:44].
        ID_AA64PFR0_EL1 => host & !(field(32) | field(40) | field(44)),
        // MTE [11:8], SME [27:24], MPAM_frac [19:16].
        ID_AA64PFR1_EL1 => host & !(field(8) | field(24) | field(16)),
        ID_AA64ZFR0_EL1 | ID_AA64SMFR0_EL1 => 0,
        // TraceVer [7:4], PMUVer [11:8], PMSVer [35:32], TraceFilt [43:40],
        // TraceBuffer [47:44].
        ID_AA64DFR0_EL1 => host & !(field(4) | field(8) | field(32) | field(40) | field(44)),
        // MOPS [19:16].
        ID_AA64ISAR2_EL1 => host & !field(16),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_unvirtualised_features() {
        let all = u64::MAX;
        let pfr0 = sanitize(ID_AA64PFR0_EL1, all);
        assert_eq!((pfr0 >> 32) & 0xf, 0, "SVE");
        assert_eq!((pfr0 >> 40) & 0xf, 0, "MPAM");
        assert_eq!((pfr0 >> 44) & 0xf, 0, "AMU");
        assert_eq!((pfr0 >> 24) & 0xf, 0xf, "GIC stays");
        let pfr1 = sanitize(ID_AA64PFR1_EL1, all);
        assert_eq!((pfr1 >> 24) & 0xf, 0, "SME");
        assert_eq!((pfr1 >> 8) & 0xf, 0, "MTE");
        assert_eq!(sanitize(ID_AA64ZFR0_EL1, all), 0);
        assert_eq!(sanitize(ID_AA64SMFR0_EL1, all), 0);
        let dfr0 = sanitize(ID_AA64DFR0_EL1, all);
        assert_eq!((dfr0 >> 8) & 0xf, 0, "PMU");
        assert_eq!((dfr0 >> 32) & 0xf, 0, "SPE");
        assert_eq!(dfr0 & 0xf, 0xf, "debug architecture stays");
        assert_eq!((sanitize(ID_AA64ISAR2_EL1, all) >> 16) & 0xf, 0, "MOPS");
        // Everything else passes through.
        assert_eq!(sanitize((3, 0, 0, 7, 0), 0x1234), 0x1234);
    }

    #[test]
    fn id_space() {
        assert!(is_id_register(ID_AA64PFR0_EL1));
        assert!(is_id_register((3, 0, 0, 1, 0)));
        assert!(!is_id_register((3, 0, 0, 0, 0)), "MIDR_EL1 is not TID3");
        assert!(!is_id_register((3, 0, 12, 11, 5)));
    }
}
