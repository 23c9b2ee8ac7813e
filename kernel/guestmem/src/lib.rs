//! Copies to and from memory a guest shares with Vigil or with the service
//! program: a VM's RAM read by the vGIC and vITS at EL2, a client's RAM
//! mapped into the service VM's userspace.
//!
//! The guest may write that memory while it is being copied. With plain
//! accesses (`copy_nonoverlapping`, slices) that is a data race, undefined
//! behaviour in Rust: the compiler may assume the bytes do not change, and
//! read a checked value again after the check. Here every access is an
//! atomic one, relaxed: the race is defined, a copy only yields stale or
//! mixed bytes, and the caller decides on its copy, which is untrusted input
//! anyway. Aligned 8-byte words are copied as single 64-bit accesses, so
//! they are never torn (the vITS reads 64-bit table entries the guest
//! updates; Arm ARM B2.2.1 makes aligned doubleword accesses single-copy
//! atomic for the guest's side too). `scripts/test` runs this crate's tests
//! under Miri, which reports any non-atomic access racing with a guest's.
//!
//! The other side may use any access size. Mixed-size accesses to one
//! location are outside Rust's memory model but not the hardware's: on
//! AArch64 each access here is one load or store instruction.

#![no_std]

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// The split of `[addr, addr + len)` into a byte head up to 8-byte
/// alignment, whole aligned words, and a byte tail.
fn split(addr: usize, len: usize) -> (usize, usize) {
    let head = addr.wrapping_neg() & 7;
    if head >= len {
        return (len, 0);
    }
    (head, (len - head) / 8)
}

/// Copy `dst.len()` bytes from shared memory at `src` into `dst`.
///
/// # Safety
/// `[src, src + dst.len())` must be valid for reads for the whole call, and
/// every concurrent access to it must be atomic or come from outside the
/// Rust program (a guest): it is never accessed through a reference.
pub unsafe fn read(src: *const u8, dst: &mut [u8]) {
    let (head, words) = split(src as usize, dst.len());
    let (h, rest) = dst.split_at_mut(head);
    let (w, t) = rest.split_at_mut(words * 8);
    for (i, b) in h.iter_mut().enumerate() {
        // SAFETY: in range and valid (the caller's contract); AtomicU8 has
        // u8's alignment.
        *b = unsafe { AtomicU8::from_ptr(src.add(i) as *mut u8) }.load(Ordering::Relaxed);
    }
    for (i, chunk) in w.chunks_exact_mut(8).enumerate() {
        // SAFETY: in range; `split` made `src + head` 8-byte aligned.
        let v = unsafe { AtomicU64::from_ptr(src.add(head + 8 * i) as *mut u64) }
            .load(Ordering::Relaxed);
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    let at = head + words * 8;
    for (i, b) in t.iter_mut().enumerate() {
        // SAFETY: in range, as above.
        *b = unsafe { AtomicU8::from_ptr(src.add(at + i) as *mut u8) }.load(Ordering::Relaxed);
    }
}

/// Read `out.len()` little-endian 64-bit words from shared memory at
/// `src` (a guest's table entries, ITS commands): one 64-bit load each when
/// `src` is 8-byte aligned, so no word is torn.
///
/// # Safety
/// As [`read`], for `8 * out.len()` bytes at `src`.
pub unsafe fn read_le_u64s(src: *const u8, out: &mut [u64]) {
    if !(src as usize).is_multiple_of(8) {
        for (i, w) in out.iter_mut().enumerate() {
            let mut b = [0; 8];
            // SAFETY: in range (the caller's contract).
            unsafe { read(src.add(8 * i), &mut b) };
            *w = u64::from_le_bytes(b);
        }
        return;
    }
    for (i, w) in out.iter_mut().enumerate() {
        // SAFETY: in range and 8-byte aligned.
        let v = unsafe { AtomicU64::from_ptr(src.add(8 * i) as *mut u64) }.load(Ordering::Relaxed);
        *w = u64::from_le(v);
    }
}

/// Read one byte of shared memory at `src` (an LPI's property byte): a
/// single load, without [`read`]'s head/word/tail split.
///
/// # Safety
/// As [`read`], for the byte at `src`.
pub unsafe fn read_u8(src: *const u8) -> u8 {
    // SAFETY: valid (the caller's contract); AtomicU8 has u8's alignment.
    unsafe { AtomicU8::from_ptr(src as *mut u8) }.load(Ordering::Relaxed)
}

/// A range of shared memory whose address the caller translated once and
/// reads many times (a guest's ITS command queue, its LPI property table):
/// each read is a bounds check and the loads of [`read_le_u64s`] or
/// [`read_u8`].
#[derive(Clone, Copy)]
pub struct Window<'m> {
    base: *const u8,
    len: usize,
    _mem: core::marker::PhantomData<&'m ()>,
}

impl Window<'_> {
    /// The `len` bytes at `base`.
    ///
    /// # Safety
    /// As [`read`], for `[base, base + len)` and as long as the window
    /// lives.
    pub unsafe fn new(base: *const u8, len: usize) -> Self {
        Self {
            base,
            len,
            _mem: core::marker::PhantomData,
        }
    }

    /// `N` little-endian 64-bit words at offset `off`; None if they are not
    /// all inside the window.
    #[inline(always)]
    pub fn read_u64s<const N: usize>(&self, off: u64) -> Option<[u64; N]> {
        let off = usize::try_from(off).ok()?;
        if off > self.len || self.len - off < 8 * N {
            return None;
        }
        let mut out = [0; N];
        // SAFETY: inside the window (checked above), which `new`'s contract
        // makes valid for these reads.
        unsafe { read_le_u64s(self.base.add(off), &mut out) };
        Some(out)
    }

    /// The byte at offset `off`; None beyond the window.
    #[inline(always)]
    pub fn read_u8(&self, off: u64) -> Option<u8> {
        let off = usize::try_from(off).ok().filter(|&o| o < self.len)?;
        // SAFETY: inside the window, as above.
        Some(unsafe { read_u8(self.base.add(off)) })
    }
}

/// Copy `src` into shared memory at `dst`.
///
/// # Safety
/// `[dst, dst + src.len())` must be valid for writes for the whole call, and
/// every concurrent access to it must be atomic or come from outside the
/// Rust program; it must not overlap `src`.
pub unsafe fn write(dst: *mut u8, src: &[u8]) {
    let (head, words) = split(dst as usize, src.len());
    let (h, rest) = src.split_at(head);
    let (w, t) = rest.split_at(words * 8);
    for (i, b) in h.iter().enumerate() {
        // SAFETY: in range and valid for writes (the caller's contract).
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(*b, Ordering::Relaxed);
    }
    for (i, chunk) in w.chunks_exact(8).enumerate() {
        let mut b = [0; 8];
        b.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(b);
        // SAFETY: in range; `split` made `dst + head` 8-byte aligned.
        unsafe { AtomicU64::from_ptr(dst.add(head + 8 * i) as *mut u64) }
            .store(v, Ordering::Relaxed);
    }
    let at = head + words * 8;
    for (i, b) in t.iter().enumerate() {
        // SAFETY: in range, as above.
        unsafe { AtomicU8::from_ptr(dst.add(at + i)) }.store(*b, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::{split, Window};
    use core::sync::atomic::{AtomicU64, Ordering};

    /// A window reads whole words inside it and nothing that crosses its
    /// end, whatever the offset.
    #[test]
    fn a_window_reads_inside_and_refuses_beyond() {
        let mem: [AtomicU64; 4] = core::array::from_fn(|i| AtomicU64::new(i as u64 + 1));
        // SAFETY: `mem` outlives the window and is only accessed atomically.
        let w = unsafe { Window::new(mem.as_ptr().cast(), 32) };
        assert_eq!(w.read_u64s::<4>(0), Some([1, 2, 3, 4]));
        assert_eq!(w.read_u64s::<2>(16), Some([3, 4]));
        assert_eq!(w.read_u64s::<1>(24), Some([4]));
        assert_eq!(w.read_u64s::<2>(24), None);
        assert_eq!(w.read_u64s::<1>(32), None);
        assert_eq!(w.read_u64s::<1>(u64::MAX), None);
        mem[1].store(9, Ordering::Relaxed);
        assert_eq!(w.read_u64s::<2>(8), Some([9, 3]));
    }

    /// Bytes too: every one inside, none at or past the end.
    #[test]
    fn a_window_reads_each_byte_inside_and_none_beyond() {
        let mem: [AtomicU64; 2] = [AtomicU64::new(0x0807_0605_0403_0201), AtomicU64::new(0)];
        // SAFETY: as above.
        let w = unsafe { Window::new(mem.as_ptr().cast(), 9) };
        for i in 0..8 {
            assert_eq!(w.read_u8(i), Some(i as u8 + 1));
        }
        assert_eq!(w.read_u8(8), Some(0));
        assert_eq!(w.read_u8(9), None);
        assert_eq!(w.read_u8(u64::MAX), None);
    }

    #[test]
    fn splits_into_head_words_and_tail() {
        assert_eq!(split(0x1000, 0), (0, 0));
        assert_eq!(split(0x1000, 7), (0, 0));
        assert_eq!(split(0x1000, 8), (0, 1));
        assert_eq!(split(0x1000, 17), (0, 2));
        assert_eq!(split(0x1003, 4), (4, 0));
        assert_eq!(split(0x1003, 5), (5, 0));
        assert_eq!(split(0x1003, 13), (5, 1));
        assert_eq!(split(0x1007, 1), (1, 0));
    }
}
