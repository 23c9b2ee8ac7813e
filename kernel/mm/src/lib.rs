//! Physical memory management that does not touch hardware: the page-frame
//! allocator that hands out page-table pages, ITS tables and guest RAM.
#![no_std]
#![forbid(unsafe_code)]

mod frames;

pub use frames::{FrameAllocator, FrameError};

/// Size of a translation granule and of a frame.
pub const PAGE_SIZE: u64 = 4096;

/// Round `x` up to a multiple of `align` (a power of two).
pub const fn align_up(x: u64, align: u64) -> u64 {
    (x + align - 1) & !(align - 1)
}

/// Round `x` down to a multiple of `align` (a power of two).
pub const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}
