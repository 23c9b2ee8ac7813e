//! Allocation of host LPI INTIDs in blocks.
//!
//! Devices get LPIs in blocks of [`BLOCK`] consecutive INTIDs (as Xen does
//! for its ITS), so a device's events map to a contiguous range and
//! freeing is per block. The free count lets tests prove that unmapping
//! returns every LPI (no leak).

use crate::LPI_BASE;

/// LPIs per block.
pub const BLOCK: u32 = 32;
/// Blocks the allocator can track (2^16 LPIs at most).
pub const MAX_BLOCKS: usize = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LpiError {
    /// No free run of blocks large enough.
    Exhausted,
    /// Zero LPIs asked for.
    Empty,
    /// Not the start of an allocated range, or not allocated at all.
    NotAllocated(u32),
}

pub struct LpiAllocator {
    /// Blocks in use; `len[i]` is the length in blocks of the range that
    /// starts at block `i` (0 if no range starts there).
    len: [u16; MAX_BLOCKS],
    used: [bool; MAX_BLOCKS],
    blocks: usize,
    free_blocks: usize,
}

impl LpiAllocator {
    /// An allocator for `nr_lpis` LPIs starting at INTID 8192 (rounded down
    /// to whole blocks).
    pub fn new(nr_lpis: u32) -> Self {
        let blocks = ((nr_lpis / BLOCK) as usize).min(MAX_BLOCKS);
        Self {
            len: [0; MAX_BLOCKS],
            used: [false; MAX_BLOCKS],
            blocks,
            free_blocks: blocks,
        }
    }

    /// Allocate at least `count` consecutive LPIs; returns the first INTID.
    /// The range is whole blocks: `count` rounded up to [`BLOCK`].
    pub fn alloc(&mut self, count: u32) -> Result<u32, LpiError> {
        if count == 0 {
            return Err(LpiError::Empty);
        }
        let need = count.div_ceil(BLOCK) as usize;
        let mut start = 0;
        while start + need <= self.blocks {
            match (start..start + need).find(|&b| self.used[b]) {
                Some(b) => start = b + 1,
                None => {
                    self.used[start..start + need].fill(true);
                    self.len[start] = need as u16;
                    self.free_blocks -= need;
                    return Ok(LPI_BASE + start as u32 * BLOCK);
                }
            }
        }
        Err(LpiError::Exhausted)
    }

    /// Free the range that starts at `first` (as returned by `alloc`).
    pub fn free(&mut self, first: u32) -> Result<(), LpiError> {
        let off = first
            .checked_sub(LPI_BASE)
            .ok_or(LpiError::NotAllocated(first))?;
        if off % BLOCK != 0 {
            return Err(LpiError::NotAllocated(first));
        }
        let b = (off / BLOCK) as usize;
        if b >= self.blocks || self.len[b] == 0 {
            return Err(LpiError::NotAllocated(first));
        }
        let n = self.len[b] as usize;
        self.used[b..b + n].fill(false);
        self.len[b] = 0;
        self.free_blocks += n;
        Ok(())
    }

    /// LPIs not allocated.
    pub fn free_lpis(&self) -> u32 {
        self.free_blocks as u32 * BLOCK
    }

    pub fn total_lpis(&self) -> u32 {
        self.blocks as u32 * BLOCK
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn blocks_are_rounded_and_contiguous() {
        let mut a = LpiAllocator::new(1024);
        assert_eq!(a.total_lpis(), 1024);
        assert_eq!(a.alloc(1), Ok(8192));
        assert_eq!(a.alloc(33), Ok(8192 + 32), "33 LPIs take two blocks");
        assert_eq!(a.alloc(32), Ok(8192 + 96));
        assert_eq!(a.free_lpis(), 1024 - 128);
    }

    #[test]
    fn free_returns_whole_ranges_and_rejects_bad_ones() {
        let mut a = LpiAllocator::new(256);
        let x = a.alloc(64).unwrap();
        let y = a.alloc(32).unwrap();
        assert_eq!(a.free(x + 32), Err(LpiError::NotAllocated(x + 32)));
        assert_eq!(a.free(x + 1), Err(LpiError::NotAllocated(x + 1)));
        assert_eq!(a.free(100), Err(LpiError::NotAllocated(100)));
        a.free(x).unwrap();
        assert_eq!(a.free(x), Err(LpiError::NotAllocated(x)), "double free");
        assert_eq!(a.free_lpis(), 256 - 32);
        assert_eq!(a.alloc(64), Ok(x), "the freed range is reused");
        a.free(y).unwrap();
        a.free(x).unwrap();
        assert_eq!(a.free_lpis(), 256);
    }

    #[test]
    fn exhaustion() {
        let mut a = LpiAllocator::new(64);
        assert_eq!(a.alloc(0), Err(LpiError::Empty));
        assert_eq!(a.alloc(65), Err(LpiError::Exhausted));
        a.alloc(64).unwrap();
        assert_eq!(a.alloc(1), Err(LpiError::Exhausted));
    }

    #[test]
    fn random_churn_never_overlaps_and_never_leaks() {
        let mut a = LpiAllocator::new(4096);
        let mut live: Vec<(u32, u32)> = Vec::new();
        let mut seed = 12345u64;
        for _ in 0..20_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (seed >> 33) as u32;
            if live.is_empty() || !r.is_multiple_of(3) {
                let count = 1 + r % 100;
                if let Ok(first) = a.alloc(count) {
                    let end = first + count.div_ceil(BLOCK) * BLOCK;
                    for &(f, e) in &live {
                        assert!(end <= f || first >= e, "overlap");
                    }
                    live.push((first, end));
                }
            } else {
                let (f, _) = live.swap_remove(r as usize % live.len());
                a.free(f).unwrap();
            }
            let used: u32 = live.iter().map(|(f, e)| e - f).sum();
            assert_eq!(a.free_lpis() + used, 4096);
        }
    }
}
