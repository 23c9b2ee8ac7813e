//! Physical memory at run time: the frame allocator over RAM (with the
//! device tree, the image and the allocator's own bitmap taken out) and the
//! kernel heap carved from it.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use buddy_system_allocator::Heap;
use spin::Mutex;
use vigil_mm::{align_up, FrameAllocator, FrameError, PAGE_SIZE};
use vigil_platform::Region;

#[global_allocator]
static HEAP: CachedHeap = CachedHeap(Mutex::new(Inner {
    buddy: Heap::empty(),
    free: [core::ptr::null_mut(); SMALL_CLASSES],
    cached: 0,
}));

/// Blocks up to 2^(SMALL_CLASSES - 1) bytes (1 KiB) are kept on a free
/// list of their size when freed, and handed out again from it.
const SMALL_CLASSES: usize = 11;

/// The buddy allocator with a free list per small block size in front.
/// The buddy allocator's own free is linear in the length of its free
/// list (it searches it for the buddy to merge with), so freeing many
/// small blocks at once is quadratic: a guest's 10^5 vITS mappings (a
/// box and a share of two B-tree nodes each) freed by one MAPD(V=0) or a
/// VM reset took minutes under TCG. Small blocks freed here cost O(1) and
/// are not merged; the per-LPI records and B-tree nodes they are come
/// back in the same sizes, and the heap is sized for every VM at its quota
/// at once (`heap_size`).
struct CachedHeap(Mutex<Inner>);

struct Inner {
    buddy: Heap<32>,
    /// Per size class (log2 of the block size): a singly linked list
    /// through the free blocks' first word.
    free: [*mut usize; SMALL_CLASSES],
    /// Bytes on those lists (allocated as far as the buddy knows).
    cached: usize,
}

// SAFETY: the raw pointers are free heap blocks, only touched under the
// mutex.
unsafe impl Send for Inner {}

/// The block class of `l` as the buddy allocator rounds it.
fn class(l: &Layout) -> usize {
    l.size()
        .next_power_of_two()
        .max(l.align())
        .max(core::mem::size_of::<usize>())
        .trailing_zeros() as usize
}

// SAFETY: blocks come from the buddy allocator (which satisfies size and
// alignment) or from a free list of blocks of exactly that class, which
// nothing else uses; every block is returned to the list of its class or
// to the buddy allocator it came from, under the one mutex.
unsafe impl GlobalAlloc for CachedHeap {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let c = class(&l);
        let mut h = self.0.lock();
        if c < SMALL_CLASSES && !h.free[c].is_null() {
            let block = h.free[c];
            // SAFETY: a free block of this class; its first word links
            // to the next one.
            h.free[c] = unsafe { block.read() } as *mut usize;
            h.cached -= 1 << c;
            return block.cast();
        }
        h.buddy
            .alloc(l)
            .map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let c = class(&l);
        let mut h = self.0.lock();
        if c < SMALL_CLASSES {
            let block = p.cast::<usize>();
            // SAFETY: the caller gives the block back; it is at least a
            // word and word-aligned (its class is).
            unsafe { block.write(h.free[c] as usize) };
            h.free[c] = block;
            h.cached += 1 << c;
            return;
        }
        // SAFETY: a block of the buddy allocator, with its layout.
        unsafe { h.buddy.dealloc(NonNull::new_unchecked(p), l) }
    }
}

/// Heap size with no VM. Page tables, VM bookkeeping and ITS state live
/// here; guest RAM and device tables come from frames directly.
pub const HEAP_BASE: u64 = 64 << 20;

/// The heap for `vms` VMs: [`HEAP_BASE`] and, per VM, room for its vITS
/// at its mapping quota (10^5 LPIs and more), so that no set of guests
/// can exhaust it by mapping what they are allowed to.
pub fn heap_size(vms: usize) -> u64 {
    HEAP_BASE + vms as u64 * vigil_vits::HEAP_AT_QUOTA as u64
}

/// Bytes of the heap allocated now (what the allocator handed out,
/// rounded to its block sizes).
pub fn heap_in_use() -> usize {
    let h = HEAP.0.lock();
    h.buddy.stats_alloc_actual() - h.cached
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
pub fn init(ram: Region, reserved: &[Region], heap_size: u64) -> Result<MemoryReport, FrameError> {
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
    let heap = fa.alloc(heap_size / PAGE_SIZE, PAGE_SIZE)?;
    // SAFETY: the frames were just allocated for the heap alone and are
    // never freed.
    unsafe { HEAP.0.lock().buddy.init(heap as usize, heap_size as usize) };
    let free_frames = fa.free_frames();
    *FRAMES.lock() = Some(fa);
    Ok(MemoryReport {
        bitmap: Region::new(bitmap_base, bitmap_size),
        heap: Region::new(heap, heap_size),
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
