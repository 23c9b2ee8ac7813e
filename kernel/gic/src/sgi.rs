//! ICC_SGI1R_EL1 values (IHI 0069 §12.2, ICC_SGI1R_EL1): which SGI, to whom.
//!
//! Bits: TargetList [15:0], Aff1 [23:16], INTID [27:24], Aff2 [39:32],
//! IRM [40], RS [47:44], Aff3 [55:48]. A target list names CPUs whose
//! Aff0 is `RS * 16 + bit` within one Aff3.Aff2.Aff1 cluster.

/// SGI to the CPU with affinity `mpidr` (MPIDR_EL1 layout).
pub fn to_cpu(intid: u8, mpidr: u64) -> u64 {
    with_intid(target(mpidr), intid)
}

/// The fields of an ICC_SGI1R_EL1 value that name the CPU with affinity
/// `mpidr` (TargetList bit, Aff1-3, RS), INTID 0: a value to keep per
/// CPU, made an SGI by [`with_intid`].
pub fn target(mpidr: u64) -> u64 {
    let aff0 = mpidr & 0xff;
    let aff1 = (mpidr >> 8) & 0xff;
    let aff2 = (mpidr >> 16) & 0xff;
    let aff3 = (mpidr >> 32) & 0xff;
    let rs = aff0 / 16;
    (1u64 << (aff0 % 16)) | (aff1 << 16) | (aff2 << 32) | (rs << 44) | (aff3 << 48)
}

/// `target` (INTID 0, as [`target`] gives) with SGI `intid`.
pub fn with_intid(target: u64, intid: u8) -> u64 {
    target | intid_field(intid)
}

fn intid_field(intid: u8) -> u64 {
    u64::from(intid & 0xf) << 24
}

/// Most groups [`to_cpus`] holds before it writes.
pub const MAX_GROUPS: usize = 16;

/// Send SGI `intid` to every CPU in `targets` (MPIDR_EL1 values): call
/// `write` with one ICC_SGI1R_EL1 value per group of targets that share
/// Aff3.Aff2.Aff1 and the range Aff0 / 16, since one write's TargetList
/// names at most 16 CPUs of one cluster (IHI 0069, ICC_SGI1R_EL1). On QEMU
/// `virt`, whose clusters are 16 CPUs, that is one write per cluster.
/// Returns the number of writes.
///
/// A target listed twice is named once. Up to [`MAX_GROUPS`] groups are
/// held (no allocation: this is the kick path); past that the groups held
/// so far are written first, so every target still gets the SGI and only
/// a target listed again after that may get a second one.
pub fn to_cpus(
    intid: u8,
    targets: impl IntoIterator<Item = u64>,
    mut write: impl FnMut(u64),
) -> usize {
    const LIST: u64 = 0xffff;
    let mut groups = [0u64; MAX_GROUPS];
    let mut len = 0;
    let mut writes = 0;
    for mpidr in targets {
        let v = to_cpu(intid, mpidr);
        if let Some(g) = groups[..len].iter_mut().find(|g| **g & !LIST == v & !LIST) {
            *g |= v & LIST;
            continue;
        }
        if len == MAX_GROUPS {
            groups.iter().for_each(|&g| write(g));
            writes += len;
            len = 0;
        }
        groups[len] = v;
        len += 1;
    }
    groups[..len].iter().for_each(|&g| write(g));
    writes + len
}

/// SGI to every CPU but the sender (IRM = 1).
pub fn to_all_but_self(intid: u8) -> u64 {
    intid_field(intid) | (1 << 40)
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
    extern crate std;
    use super::*;
    use std::vec::Vec;

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

    /// The CPUs a list of writes reaches, each with how many writes name it.
    fn reached(writes: &[u64], universe: &[u64]) -> std::collections::BTreeMap<u64, usize> {
        let mut m = std::collections::BTreeMap::new();
        for &w in writes {
            for &cpu in universe {
                if Sgi1r::decode(w).targets(cpu) {
                    *m.entry(cpu).or_insert(0) += 1;
                }
            }
        }
        m
    }

    /// QEMU virt's MPIDR of CPU `i`: clusters of 16.
    fn qemu(i: u64) -> u64 {
        ((i / 16) << 8) | (i % 16)
    }

    #[test]
    fn one_write_per_cluster_reaching_each_target_once() {
        let all: Vec<u64> = (0..512).map(qemu).collect();
        // Every CPU of 512: 32 clusters, 32 writes.
        let mut w = Vec::new();
        assert_eq!(to_cpus(5, all.iter().copied(), |v| w.push(v)), 32);
        assert_eq!(w.len(), 32);
        let r = reached(&w, &all);
        assert_eq!(r.len(), 512);
        assert!(r.values().all(|&n| n == 1));
        assert!(w
            .iter()
            .all(|&v| Sgi1r::decode(v).intid == 5 && v as u16 == 0xffff));

        // Odd CPUs, in no particular order, some listed twice.
        let odd: Vec<u64> = (0..100).rev().filter(|i| i % 2 == 1).map(qemu).collect();
        let mut w = Vec::new();
        let n = to_cpus(1, odd.iter().chain(odd.iter().take(10)).copied(), |v| {
            w.push(v)
        });
        assert_eq!(n, 7, "CPUs 1..99: clusters 0 to 6");
        let r = reached(&w, &all);
        assert_eq!(r.keys().copied().collect::<Vec<_>>(), {
            let mut s = odd.clone();
            s.sort();
            s
        });
        assert!(r.values().all(|&n| n == 1), "{r:?}");

        // Nothing to send: no write.
        assert_eq!(to_cpus(1, [], |_| panic!("no write expected")), 0);
    }

    #[test]
    fn range_selector_and_upper_affinities_split_groups() {
        // Aff0 0 and 16 share a cluster but not a range; Aff2 and Aff3
        // differ from Aff1 alone.
        let cpus = [0x0, 0x10, 0x11, 0x01_0000, 0x01_0000_0000, 0x1];
        let mut w = Vec::new();
        assert_eq!(to_cpus(2, cpus, |v| w.push(v)), 4);
        let r = reached(&w, &cpus);
        assert_eq!(r.len(), cpus.len());
        assert!(r.values().all(|&n| n == 1));
    }

    #[test]
    fn more_groups_than_held_still_reach_everyone() {
        // 100 clusters, one CPU each: writes flush as the table fills.
        let cpus: Vec<u64> = (0..100).map(|c| c << 8).collect();
        let mut w = Vec::new();
        assert_eq!(to_cpus(3, cpus.iter().copied(), |v| w.push(v)), 100);
        let r = reached(&w, &cpus);
        assert_eq!(r.len(), 100);
        assert!(r.values().all(|&n| n == 1));
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
