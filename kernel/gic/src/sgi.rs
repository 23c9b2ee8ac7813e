//! ICC_SGI1R_EL1 values (IHI 0069 §12.11.23): which SGI, to whom.
//!
//! Bits: TargetList [15:0], Aff1 [23:16], INTID [27:24], Aff2 [39:32],
//! IRM [40], RS [47:44], Aff3 [55:48]. A target list names CPUs whose
//! Aff0 is `RS * 16 + bit` within one Aff3.Aff2.Aff1 cluster.

/// SGI to the CPU with affinity `mpidr` (MPIDR_EL1 layout).
pub fn to_cpu(intid: u8, mpidr: u64) -> u64 {
    let aff0 = mpidr & 0xff;
    let aff1 = (mpidr >> 8) & 0xff;
    let aff2 = (mpidr >> 16) & 0xff;
    let aff3 = (mpidr >> 32) & 0xff;
    let rs = aff0 / 16;
    (1u64 << (aff0 % 16))
        | (aff1 << 16)
        | (((intid & 0xf) as u64) << 24)
        | (aff2 << 32)
        | (rs << 44)
        | (aff3 << 48)
}

/// SGI to every CPU but the sender (IRM = 1).
pub fn to_all_but_self(intid: u8) -> u64 {
    (((intid & 0xf) as u64) << 24) | (1 << 40)
}

/// Decoded fields of an ICC_SGI1R_EL1 value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sgi1r {
    pub intid: u8,
    pub target_list: u16,
    /// Aff3.Aff2.Aff1 of the targets, in MPIDR bit positions.
    pub cluster: u64,
    /// Range selector: target list bit n means Aff0 = rs * 16 + n.
    pub rs: u8,
    pub broadcast: bool,
}

impl Sgi1r {
    pub fn decode(v: u64) -> Self {
        Self {
            intid: ((v >> 24) & 0xf) as u8,
            target_list: v as u16,
            cluster: (((v >> 16) & 0xff) << 8)
                | (((v >> 32) & 0xff) << 16)
                | (((v >> 48) & 0xff) << 32),
            rs: ((v >> 44) & 0xf) as u8,
            broadcast: v & (1 << 40) != 0,
        }
    }

    /// Whether a CPU with affinity `mpidr` is a target (the sender is
    /// excluded only by the caller, for broadcasts).
    pub fn targets(&self, mpidr: u64) -> bool {
        if self.broadcast {
            return true;
        }
        let cluster = mpidr & 0xff_00ff_ff00;
        let aff0 = mpidr & 0xff;
        cluster == self.cluster
            && aff0 / 16 == self.rs as u64
            && self.target_list & (1 << (aff0 % 16)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targeted_encoding() {
        assert_eq!(to_cpu(3, 0x0), (3 << 24) | 1);
        assert_eq!(to_cpu(15, 0x2), (15 << 24) | 4);
        // Aff0 = 17: RS = 1, bit 1.
        assert_eq!(to_cpu(1, 0x11), (1 << 24) | (1 << 44) | 2);
        // Aff3.Aff2.Aff1.Aff0 = 4.3.2.1
        assert_eq!(
            to_cpu(0, 0x04_0003_0201),
            (4 << 48) | (3 << 32) | (2 << 16) | (1 << 1)
        );
    }

    #[test]
    fn broadcast_encoding() {
        assert_eq!(to_all_but_self(9), (9 << 24) | (1 << 40));
        assert!(Sgi1r::decode(to_all_but_self(9)).broadcast);
    }

    #[test]
    fn decode_round_trips_and_matches_targets() {
        for mpidr in [0x0u64, 0x3, 0x11, 0x0102, 0x04_0003_0201, 0x8000_0001] {
            let aff = mpidr & 0xff_00ff_ffff;
            let s = Sgi1r::decode(to_cpu(7, mpidr));
            assert_eq!(s.intid, 7);
            assert!(s.targets(aff), "{mpidr:#x}");
            assert!(!s.targets(aff ^ 1), "{mpidr:#x}: only the target");
            assert!(!s.targets(aff ^ 0x100), "{mpidr:#x}: other cluster");
        }
    }
}
