//! Physical memory at run time: the frame allocator over RAM (with the
//! device tree, the image and the allocator's own bitmap taken out) and the
//! kernel heap carved from it.

use buddy_system_allocator::LockedHeap;
use spin::Mutex;
use vigil_mm::{align_up, FrameAllocator, FrameError, PAGE_SIZE};
use vigil_platform::Region;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// Heap size. Page tables, VM bookkeeping and ITS state live here; guest
/// RAM and device tables come from frames directly.
pub const HEAP_SIZE: u64 = 64 << 20;

/// Bytes of the heap allocated now (what the allocator handed out,
/// rounded to its block sizes).
pub fn heap_in_use() -> usize {
    HEAP.lock().stats_alloc_actual()
}

static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// The hypervisor image in RAM, from the linker script.
pub fn image() -> Region {
    let (start, end) = (
        core::ptr::addr_of!(__image_start) as u64,
        core::ptr::addr_of!(__image_end) as u64,
    );
    Region::new(start, end - start)
}

/// Summary for the boot log.
pub struct MemoryReport {
    pub bitmap: Region,
    pub heap: Region,
    pub free_frames: u64,
}

/// Set up the frame allocator over `ram` and the heap. `reserved` ranges
/// (the device tree) are never handed out. Called once, on the primary
/// CPU, before the MMU is on.
pub fn init(ram: Region, reserved: &[Region]) -> Result<MemoryReport, FrameError> {
    let image = image();
    let words = FrameAllocator::bitmap_words(ram.size);
    let bitmap_base = align_up(image.end(), PAGE_SIZE);
    let bitmap_size = align_up(words as u64 * 8, PAGE_SIZE);
    if bitmap_base + bitmap_size > ram.end() {
        return Err(FrameError::OutOfMemory {
            frames: bitmap_size / PAGE_SIZE,
        });
    }
    // SAFETY: [bitmap_base, +bitmap_size) is RAM after the image that
    // nothing else uses: it is reserved in the allocator below before any
    // frame is handed out, and this function runs once.
    let bitmap = unsafe { core::slice::from_raw_parts_mut(bitmap_base as *mut u64, words) };
    let mut fa = FrameAllocator::new(ram.base, ram.size, bitmap)?;
    fa.reserve(image.base, align_up(image.size, PAGE_SIZE))?;
    fa.reserve(bitmap_base, bitmap_size)?;
    for r in reserved {
        let start = r.base & !(PAGE_SIZE - 1);
        fa.reserve(start, align_up(r.end() - start, PAGE_SIZE))?;
    }
    let heap = fa.alloc(HEAP_SIZE / PAGE_SIZE, PAGE_SIZE)?;
    // SAFETY: the frames were just allocated for the heap alone and are
    // never freed.
    unsafe { HEAP.lock().init(heap as usize, HEAP_SIZE as usize) };
    let free_frames = fa.free_frames();
    *FRAMES.lock() = Some(fa);
    Ok(MemoryReport {
        bitmap: Region::new(bitmap_base, bitmap_size),
        heap: Region::new(heap, HEAP_SIZE),
        free_frames,
    })
}

/// Allocate `count` zeroed frames aligned to `align` bytes.
pub fn alloc_frames(count: u64, align: u64) -> Result<u64, FrameError> {
    let addr = FRAMES
        .lock()
        .as_mut()
        .expect("frame allocator used before mm::init")
        .alloc(count, align)?;
    // SAFETY: the frames were just allocated, are identity-mapped RAM, and
    // nothing else refers to them yet.
    unsafe { core::ptr::write_bytes(addr as *mut u8, 0, (count * PAGE_SIZE) as usize) };
    Ok(addr)
}

/// Allocate `count` frames aligned to `align` bytes, not cleared (memory
/// that is written before it is read, or that must be had before the MMU
/// is on, when clearing it through device-type accesses would be slow).
pub fn alloc_frames_uncleared(count: u64, align: u64) -> Result<u64, FrameError> {
    FRAMES
        .lock()
        .as_mut()
        .expect("frame allocator used before mm::init")
        .alloc(count, align)
}

/// Allocate the frames of `[addr, addr + count frames)`, which must be
/// free. The memory is not cleared.
pub fn alloc_frames_at(addr: u64, count: u64) -> Result<(), FrameError> {
    FRAMES
        .lock()
        .as_mut()
        .expect("frame allocator used before mm::init")
        .alloc_at(addr, count)
}

/// Return frames obtained from [`alloc_frames`].
pub fn free_frames(addr: u64, count: u64) -> Result<(), FrameError> {
    FRAMES
        .lock()
        .as_mut()
        .expect("frame allocator used before mm::init")
        .free(addr, count)
}

pub fn free_frame_count() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |f| f.free_frames())
}
