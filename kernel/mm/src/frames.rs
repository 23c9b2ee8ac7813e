//! A bitmap page-frame allocator.
//!
//! One bit per 4 KiB frame (set = in use), so 2 GiB of RAM costs 64 KiB of
//! bitmap. Allocations are contiguous runs with a power-of-two alignment,
//! found first-fit: guests need large contiguous RAM and the ITS needs
//! 64 KiB-aligned tables, while allocation is rare (VM creation, table
//! setup), never on an interrupt path.

use crate::PAGE_SIZE;
use core::fmt;

/// Why an allocator call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No free run of the requested size and alignment.
    OutOfMemory { frames: u64 },
    /// The bitmap storage cannot describe that many frames.
    BitmapTooSmall,
    /// Address or size not page aligned, or alignment not a power of two.
    Misaligned,
    /// The range is not inside the managed region.
    OutOfRange,
    /// Freeing a frame that is not allocated (a double free).
    NotAllocated { addr: u64 },
    /// Claiming a frame that is already in use.
    InUse { addr: u64 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory { frames } => {
                write!(f, "out of memory: no free run of {frames} frames")
            }
            Self::BitmapTooSmall => write!(f, "frame bitmap too small for the region"),
            Self::Misaligned => write!(f, "address, size or alignment not page aligned"),
            Self::OutOfRange => write!(f, "range outside the managed memory"),
            Self::NotAllocated { addr } => write!(f, "frame {addr:#x} freed but not allocated"),
            Self::InUse { addr } => write!(f, "frame {addr:#x} is already in use"),
        }
    }
}

/// Allocator over the frames of one physical region.
pub struct FrameAllocator<'a> {
    base: u64,
    frames: u64,
    free: u64,
    /// Bit `i` set: frame `base + i * PAGE_SIZE` is in use (or reserved).
    bitmap: &'a mut [u64],
    /// Search hint: no free frame below this index.
    low_free: u64,
}

impl<'a> FrameAllocator<'a> {
    /// Manage `[base, base + size)`, all frames free, with `bitmap` as
    /// storage (one bit per frame). Frames past the region are marked used.
    pub fn new(base: u64, size: u64, bitmap: &'a mut [u64]) -> Result<Self, FrameError> {
        if !base.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(FrameError::Misaligned);
        }
        let frames = size / PAGE_SIZE;
        if (bitmap.len() as u64) * 64 < frames {
            return Err(FrameError::BitmapTooSmall);
        }
        bitmap.fill(0);
        // Mark the tail of the last word (and any extra words) as used so
        // the search never returns frames outside the region.
        for i in frames..(bitmap.len() as u64 * 64) {
            bitmap[(i / 64) as usize] |= 1 << (i % 64);
        }
        Ok(Self {
            base,
            frames,
            free: frames,
            bitmap,
            low_free: 0,
        })
    }

    /// Number of `u64` bitmap words needed for `size` bytes.
    pub const fn bitmap_words(size: u64) -> usize {
        (size / PAGE_SIZE).div_ceil(64) as usize
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn total_frames(&self) -> u64 {
        self.frames
    }

    pub fn free_frames(&self) -> u64 {
        self.free
    }

    fn used(&self, i: u64) -> bool {
        self.bitmap[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: u64, used: bool) {
        let w = &mut self.bitmap[(i / 64) as usize];
        if used {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }

    fn range_frames(&self, addr: u64, size: u64) -> Result<(u64, u64), FrameError> {
        if !addr.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(FrameError::Misaligned);
        }
        let end = addr.checked_add(size).ok_or(FrameError::OutOfRange)?;
        if addr < self.base || end > self.base + self.frames * PAGE_SIZE {
            return Err(FrameError::OutOfRange);
        }
        Ok(((addr - self.base) / PAGE_SIZE, size / PAGE_SIZE))
    }

    /// Take `[addr, addr + size)` out of the pool (the hypervisor image, the
    /// device tree). Frames already in use stay in use.
    pub fn reserve(&mut self, addr: u64, size: u64) -> Result<(), FrameError> {
        let (first, n) = self.range_frames(addr, size)?;
        for i in first..first + n {
            if !self.used(i) {
                self.set(i, true);
                self.free -= 1;
            }
        }
        Ok(())
    }

    /// Allocate `count` contiguous frames whose first address is a multiple
    /// of `align` bytes (a power of two, at least a page). Returns the
    /// physical address. The memory is not cleared.
    pub fn alloc(&mut self, count: u64, align: u64) -> Result<u64, FrameError> {
        if count == 0 || !align.is_power_of_two() || align < PAGE_SIZE {
            return Err(FrameError::Misaligned);
        }
        if count > self.free {
            return Err(FrameError::OutOfMemory { frames: count });
        }
        // First frame index at or after `low_free` whose address is aligned.
        let aligned = |i: u64| -> u64 {
            let addr = self.base + i * PAGE_SIZE;
            (crate::align_up(addr, align) - self.base) / PAGE_SIZE
        };
        let mut start = aligned(self.low_free);
        while start + count <= self.frames {
            // Find the last used frame in the candidate run, scanning down
            // so a collision skips as far as possible.
            match (start..start + count).rev().find(|&i| self.used(i)) {
                None => {
                    for i in start..start + count {
                        self.set(i, true);
                    }
                    self.free -= count;
                    if start == self.low_free {
                        self.low_free = start + count;
                    }
                    return Ok(self.base + start * PAGE_SIZE);
                }
                Some(used) => start = aligned(used + 1),
            }
        }
        Err(FrameError::OutOfMemory { frames: count })
    }

    /// Allocate exactly `[addr, addr + count frames)`, which must be free
    /// (a VM asking for RAM at a fixed physical address). Nothing changes
    /// if any frame is in use.
    pub fn alloc_at(&mut self, addr: u64, count: u64) -> Result<(), FrameError> {
        let (first, n) = self.range_frames(addr, count * PAGE_SIZE)?;
        if let Some(i) = (first..first + n).find(|&i| self.used(i)) {
            return Err(FrameError::InUse {
                addr: self.base + i * PAGE_SIZE,
            });
        }
        for i in first..first + n {
            self.set(i, true);
        }
        self.free -= n;
        Ok(())
    }

    /// Return `count` frames starting at `addr`, which must all be in use.
    /// Nothing is changed if any of them is free (a double free).
    pub fn free(&mut self, addr: u64, count: u64) -> Result<(), FrameError> {
        let (first, n) = self.range_frames(addr, count * PAGE_SIZE)?;
        if let Some(i) = (first..first + n).find(|&i| !self.used(i)) {
            return Err(FrameError::NotAllocated {
                addr: self.base + i * PAGE_SIZE,
            });
        }
        for i in first..first + n {
            self.set(i, false);
        }
        self.free += n;
        self.low_free = self.low_free.min(first);
        Ok(())
    }

    /// Whether the frame holding `addr` is in use.
    pub fn is_used(&self, addr: u64) -> bool {
        match self.range_frames(addr & !(PAGE_SIZE - 1), PAGE_SIZE) {
            Ok((i, _)) => self.used(i),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    const MIB: u64 = 1 << 20;

    fn words(size: u64) -> Vec<u64> {
        vec![0; FrameAllocator::bitmap_words(size)]
    }

    #[test]
    fn allocates_aligned_contiguous_runs() {
        let mut bm = words(16 * MIB);
        let mut fa = FrameAllocator::new(0x4000_0000, 16 * MIB, &mut bm).unwrap();
        let a = fa.alloc(1, PAGE_SIZE).unwrap();
        assert_eq!(a, 0x4000_0000);
        let b = fa.alloc(16, 64 * 1024).unwrap();
        assert_eq!(b % (64 * 1024), 0);
        assert!(b > a);
        let c = fa.alloc(1, PAGE_SIZE).unwrap();
        assert_eq!(
            c, 0x4000_1000,
            "first fit reuses the gap before the aligned run"
        );
        assert_eq!(fa.free_frames(), 4096 - 18);
    }

    #[test]
    fn reserve_takes_frames_out() {
        let mut bm = words(4 * MIB);
        let mut fa = FrameAllocator::new(0x4000_0000, 4 * MIB, &mut bm).unwrap();
        fa.reserve(0x4000_0000, 2 * MIB).unwrap();
        assert_eq!(fa.free_frames(), 512);
        assert_eq!(fa.alloc(1, PAGE_SIZE).unwrap(), 0x4020_0000);
        // Reserving an overlapping range does not double count.
        fa.reserve(0x401f_f000, 0x2000).unwrap();
        assert_eq!(fa.free_frames(), 511);
        assert!(fa.is_used(0x4020_0000));
        assert!(!fa.is_used(0x4030_0000));
    }

    #[test]
    fn out_of_memory_and_bad_arguments() {
        let mut bm = words(MIB);
        let mut fa = FrameAllocator::new(0x4000_0000, MIB, &mut bm).unwrap();
        assert_eq!(
            fa.alloc(257, PAGE_SIZE),
            Err(FrameError::OutOfMemory { frames: 257 })
        );
        assert_eq!(fa.alloc(0, PAGE_SIZE), Err(FrameError::Misaligned));
        assert_eq!(fa.alloc(1, 3 * PAGE_SIZE), Err(FrameError::Misaligned));
        assert_eq!(
            fa.reserve(0x3fff_f000, PAGE_SIZE),
            Err(FrameError::OutOfRange)
        );
        assert_eq!(
            fa.reserve(0x4000_0001, PAGE_SIZE),
            Err(FrameError::Misaligned)
        );
        let all = fa.alloc(256, PAGE_SIZE).unwrap();
        assert_eq!(all, 0x4000_0000);
        assert_eq!(
            fa.alloc(1, PAGE_SIZE),
            Err(FrameError::OutOfMemory { frames: 1 })
        );
    }

    #[test]
    fn alignment_larger_than_region_fails_cleanly() {
        // No 2 MiB boundary inside [0x4010_0000, 0x4020_0000).
        let mut bm = words(MIB);
        let mut fa = FrameAllocator::new(0x4010_0000, MIB, &mut bm).unwrap();
        assert_eq!(
            fa.alloc(1, 2 * MIB),
            Err(FrameError::OutOfMemory { frames: 1 })
        );
        assert_eq!(fa.free_frames(), 256);
    }

    #[test]
    fn alloc_at_claims_exactly_a_free_range() {
        let mut bm = words(MIB);
        let mut fa = FrameAllocator::new(0x4000_0000, MIB, &mut bm).unwrap();
        fa.alloc_at(0x4001_0000, 4).unwrap();
        assert!(fa.is_used(0x4001_3000));
        assert!(!fa.is_used(0x4001_4000));
        assert_eq!(fa.free_frames(), 252);
        assert_eq!(
            fa.alloc_at(0x4000_f000, 2),
            Err(FrameError::InUse { addr: 0x4001_0000 })
        );
        assert!(!fa.is_used(0x4000_f000), "a refused claim changes nothing");
        assert_eq!(fa.alloc_at(0x4010_0000, 1), Err(FrameError::OutOfRange));
        assert_eq!(fa.alloc(1, PAGE_SIZE), Ok(0x4000_0000));
    }

    #[test]
    fn double_free_is_refused_without_side_effects() {
        let mut bm = words(MIB);
        let mut fa = FrameAllocator::new(0x4000_0000, MIB, &mut bm).unwrap();
        let a = fa.alloc(2, PAGE_SIZE).unwrap();
        fa.free(a + PAGE_SIZE, 1).unwrap();
        assert_eq!(
            fa.free(a, 2),
            Err(FrameError::NotAllocated {
                addr: a + PAGE_SIZE
            })
        );
        assert!(fa.is_used(a), "the refused free changed nothing");
        assert_eq!(fa.free_frames(), 255);
    }

    #[test]
    fn bitmap_must_cover_region() {
        let mut bm = vec![0u64; 1];
        assert!(matches!(
            FrameAllocator::new(0, 65 * PAGE_SIZE, &mut bm),
            Err(FrameError::BitmapTooSmall)
        ));
        // A region that is not a multiple of 64 frames never hands out
        // frames past its end.
        let mut bm = vec![0u64; 1];
        let mut fa = FrameAllocator::new(0, 3 * PAGE_SIZE, &mut bm).unwrap();
        assert_eq!(fa.alloc(3, PAGE_SIZE), Ok(0));
        assert_eq!(
            fa.alloc(1, PAGE_SIZE),
            Err(FrameError::OutOfMemory { frames: 1 })
        );
    }

    /// Random alloc/free sequences against a trivially correct model: a
    /// vector of owners per frame. Checks no overlap, alignment, and that
    /// the free count always matches.
    #[test]
    fn random_sequences_match_model() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let size = 2 * MIB;
        let n = size / PAGE_SIZE;
        for _round in 0..20 {
            let mut bm = words(size);
            let mut fa = FrameAllocator::new(0x8000_0000, size, &mut bm).unwrap();
            let mut model = vec![false; n as usize];
            let mut live: Vec<(u64, u64)> = Vec::new();
            for _ in 0..2000 {
                if live.is_empty() || rand() % 3 != 0 {
                    let count = 1 + rand() % 24;
                    let align = PAGE_SIZE << (rand() % 5);
                    match fa.alloc(count, align) {
                        Ok(addr) => {
                            assert_eq!(addr % align, 0);
                            let first = ((addr - 0x8000_0000) / PAGE_SIZE) as usize;
                            for f in &mut model[first..first + count as usize] {
                                assert!(!*f, "allocator handed out a used frame");
                                *f = true;
                            }
                            live.push((addr, count));
                        }
                        Err(FrameError::OutOfMemory { .. }) => {
                            // The model must agree that no aligned run fits.
                            let step = (align / PAGE_SIZE) as usize;
                            let fits = (0..n as usize).step_by(step).any(|s| {
                                s + count as usize <= n as usize
                                    && model[s..s + count as usize].iter().all(|u| !u)
                            });
                            assert!(!fits, "allocator missed a free run");
                        }
                        Err(e) => panic!("unexpected {e}"),
                    }
                } else {
                    let (addr, count) = live.swap_remove((rand() as usize) % live.len());
                    fa.free(addr, count).unwrap();
                    let first = ((addr - 0x8000_0000) / PAGE_SIZE) as usize;
                    for f in &mut model[first..first + count as usize] {
                        *f = false;
                    }
                }
                let model_free = model.iter().filter(|u| !**u).count() as u64;
                assert_eq!(fa.free_frames(), model_free);
            }
        }
    }
}
