//! Finding the redistributors: a walk over every redistributor region the
//! device tree lists (`#redistributor-regions`), and a lookup from a CPU's
//! affinity to its redistributor that costs O(log n), so bringing up n CPUs
//! is never O(n^2) register reads.
//!
//! A region is a run of contiguous redistributors; the last one of each
//! run has GICR_TYPER.Last set (IHI 0069 §12.11.34). Each redistributor is
//! two 64 KiB frames (RD_base, SGI_base), four with GICv4's VLPI_base and
//! reserved frames (GICR_TYPER.VLPIS), unless the device tree gives a
//! `redistributor-stride` (padding between them).

use crate::regs::gicr;

/// One 64 KiB redistributor frame.
pub const FRAME: u64 = 0x1_0000;

/// GICR_TYPER.VLPIS: the redistributor has the GICv4 virtual-LPI frames.
pub const TYPER_VLPIS: u64 = 1 << 1;

/// A redistributor found by [`scan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redist {
    /// Aff3.Aff2.Aff1.Aff0 of its CPU, in MPIDR bit positions.
    pub affinity: u64,
    /// Physical address of its RD_base frame.
    pub addr: u64,
    /// GICR_TYPER.Processor_Number (how a GITS_TYPER.PTA == 0 ITS names it).
    pub processor: u64,
    /// GICR_TYPER.VLPIS: it can host GICv4 vPEs.
    pub vlpis: bool,
}

/// The distance from the redistributor whose GICR_TYPER is `typer` to the
/// next one in its region: `stride` if the device tree gives one, else its
/// own size (IHI 0069, the Redistributor memory map; GICR_TYPER.VLPIS).
pub fn next_offset(typer: u64, stride: Option<u64>) -> u64 {
    match stride {
        Some(s) if s != 0 => s,
        _ if typer & TYPER_VLPIS != 0 => 4 * FRAME,
        _ => 2 * FRAME,
    }
}

/// Walk every region (base, size) in order and call `found` with each
/// redistributor whose two frames lie inside its region, reading each one's
/// GICR_TYPER (at RD_base + 8) with `read_typer`. A region ends at its
/// Last redistributor or at its end, whichever comes first. `found` returns
/// false to stop the walk. Reads each GICR_TYPER once: O(redistributors).
pub fn scan(
    regions: &[(u64, u64)],
    stride: Option<u64>,
    mut read_typer: impl FnMut(u64) -> u64,
    mut found: impl FnMut(Redist) -> bool,
) {
    for &(base, size) in regions {
        let Some(end) = base.checked_add(size) else {
            continue;
        };
        let mut addr = base;
        while addr.checked_add(2 * FRAME).is_some_and(|e| e <= end) {
            let typer = read_typer(addr);
            let r = Redist {
                affinity: gicr::typer_affinity(typer),
                addr,
                processor: gicr::typer_processor_number(typer),
                vlpis: typer & TYPER_VLPIS != 0,
            };
            if !found(r) {
                return;
            }
            if typer & gicr::TYPER_LAST != 0 {
                break;
            }
            match addr.checked_add(next_offset(typer, stride)) {
                Some(next) => addr = next,
                None => break,
            }
        }
    }
}

/// Sort a scan's results for [`find`].
pub fn sort(redists: &mut [Redist]) {
    redists.sort_unstable_by_key(|r| r.affinity);
}

/// The redistributor of the CPU with affinity `mpidr` (MPIDR_EL1 layout;
/// bits other than the affinity fields are ignored) in `sorted` (see
/// [`sort`]): a binary search.
pub fn find(sorted: &[Redist], mpidr: u64) -> Option<&Redist> {
    let want = mpidr & AFFINITY_MASK;
    sorted
        .binary_search_by_key(&want, |r| r.affinity)
        .ok()
        .map(|i| &sorted[i])
}

/// Aff3 (bits 39:32) and Aff2..Aff0 (bits 23:0) of MPIDR_EL1.
const AFFINITY_MASK: u64 = 0xff_00ff_ffff;

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    /// GICR_TYPER of a redistributor: affinity, processor number, Last.
    fn typer(affinity: u64, processor: u64, last: bool, vlpis: bool) -> u64 {
        let aff = (affinity & 0xff_ffff) | ((affinity >> 32) & 0xff) << 24;
        (aff << 32)
            | (processor << 8)
            | if last { gicr::TYPER_LAST } else { 0 }
            | if vlpis { TYPER_VLPIS } else { 0 }
    }

    /// QEMU virt's layout for `n` CPUs: clusters of 16 (Aff1 = i / 16),
    /// the low region (123 redistributors of 128 KiB, or 61 of 256 KiB
    /// with GICv4) at 0x080a_0000 and the rest in the high one at 256 GiB.
    fn qemu(n: u64, v4: bool) -> (Vec<(u64, u64)>, BTreeMap<u64, u64>) {
        let size = if v4 { 4 * FRAME } else { 2 * FRAME };
        let low = (0x080a_0000, 0xf6_0000);
        let high = (0x40_0000_0000, 0x400_0000);
        let low_cap = low.1 / size;
        let mut mem = BTreeMap::new();
        for i in 0..n {
            let (base, k, count) = if i < low_cap {
                (low.0, i, n.min(low_cap))
            } else {
                (high.0, i - low_cap, n - low_cap)
            };
            let mpidr = ((i / 16) << 8) | (i % 16);
            mem.insert(base + k * size, typer(mpidr, i, k + 1 == count, v4));
        }
        let regions = if n > low_cap {
            std::vec![low, high]
        } else {
            std::vec![low]
        };
        (regions, mem)
    }

    fn scan_all(
        regions: &[(u64, u64)],
        stride: Option<u64>,
        mem: &BTreeMap<u64, u64>,
    ) -> Vec<Redist> {
        let mut out = Vec::new();
        let mut reads = 0;
        scan(
            regions,
            stride,
            |a| {
                reads += 1;
                // Unbacked frames read as zero, as reserved space does.
                mem.get(&a).copied().unwrap_or(0)
            },
            |r| {
                out.push(r);
                true
            },
        );
        assert_eq!(reads, out.len(), "one GICR_TYPER read per redistributor");
        out
    }

    #[test]
    fn every_cpu_is_found_across_both_regions() {
        for (n, v4) in [
            (4, false),
            (123, false),
            (124, false),
            (256, false),
            (512, false),
            (64, true),
        ] {
            let (regions, mem) = qemu(n, v4);
            let mut found = scan_all(&regions, None, &mem);
            assert_eq!(found.len() as u64, n, "{n} CPUs, v4 {v4}");
            sort(&mut found);
            for i in 0..n {
                let mpidr = 0x8000_0000 | ((i / 16) << 8) | (i % 16);
                let r = find(&found, mpidr).unwrap_or_else(|| panic!("cpu {i} of {n}"));
                assert_eq!(r.processor, i);
                assert_eq!(r.vlpis, v4, "GICR_TYPER.VLPIS of cpu {i}");
                assert_eq!(
                    mem.get(&r.addr).map(|&t| gicr::typer_affinity(t)),
                    Some(mpidr & AFFINITY_MASK)
                );
                let in_high = r.addr >= 0x40_0000_0000;
                let low_cap = if v4 { 61 } else { 123 };
                assert_eq!(in_high, i >= low_cap, "cpu {i} of {n}");
            }
            assert_eq!(find(&found, 0x8000_0000 | (n / 16 + 1) << 8), None);
        }
    }

    #[test]
    fn a_region_ends_at_last_or_at_its_end() {
        let mut mem = BTreeMap::new();
        mem.insert(0x10_0000, typer(0, 0, false, false));
        mem.insert(0x12_0000, typer(1, 1, true, false));
        // Past Last: never read.
        mem.insert(0x14_0000, typer(2, 2, false, false));
        // A region without Last: stops where its frames run out (a
        // redistributor's two frames must both fit).
        mem.insert(0x20_0000, typer(0x100, 3, false, false));
        mem.insert(0x22_0000, typer(0x101, 4, false, false));
        let found = scan_all(&[(0x10_0000, 0x10_0000), (0x20_0000, 0x3_0000)], None, &mem);
        let affs: Vec<u64> = found.iter().map(|r| r.affinity).collect();
        assert_eq!(affs, std::vec![0, 1, 0x100]);
    }

    #[test]
    fn stride_from_the_device_tree_wins() {
        let mut mem = BTreeMap::new();
        mem.insert(0x10_0000, typer(0, 0, false, false));
        mem.insert(0x14_0000, typer(1, 1, true, false));
        let found = scan_all(&[(0x10_0000, 0x10_0000)], Some(0x4_0000), &mem);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].addr, 0x14_0000);
        assert_eq!(next_offset(TYPER_VLPIS, None), 0x4_0000);
        assert_eq!(next_offset(0, None), 0x2_0000);
        assert_eq!(
            next_offset(0, Some(0)),
            0x2_0000,
            "a zero stride is ignored"
        );
    }

    #[test]
    fn hostile_regions_end_the_walk_without_overflow() {
        let found = scan_all(
            &[
                (u64::MAX - FRAME, 4 * FRAME),
                (u64::MAX - 3 * FRAME, 3 * FRAME),
            ],
            None,
            &BTreeMap::new(),
        );
        assert_eq!(found.len(), 1);
        // The walk can stop early.
        let (regions, mem) = qemu(8, false);
        let mut n = 0;
        scan(
            &regions,
            None,
            |a| mem[&a],
            |_| {
                n += 1;
                n < 3
            },
        );
        assert_eq!(n, 3);
    }

    #[test]
    fn find_ignores_non_affinity_bits() {
        let mut r = std::vec![
            Redist {
                affinity: 0x01_0000_0203,
                addr: 1,
                processor: 0,
                vlpis: false,
            },
            Redist {
                affinity: 0x0,
                addr: 2,
                processor: 1,
                vlpis: true,
            },
        ];
        sort(&mut r);
        // MT (bit 24), U (bit 30) and RES1 bit 31 are not affinity.
        assert_eq!(find(&r, 0x01_c100_0203).map(|r| r.addr), Some(1));
        assert_eq!(find(&r, 0x8000_0000).map(|r| r.addr), Some(2));
        assert_eq!(find(&r, 0x203), None);
    }
}
