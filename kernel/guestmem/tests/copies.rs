//! The copies give the bytes back exactly, at every alignment, and are
//! defined behaviour while another thread — the guest — writes or reads the
//! same memory: under Miri (`cargo +nightly miri test -p vigil-guestmem`,
//! run by scripts/test) a plain copy here is reported as a data race.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

/// Guest memory: 8-byte aligned words the "guest" thread accesses with
/// atomics of the same size (a guest's own accesses are outside the Rust
/// program; same-size atomics are how a test models them).
struct Shared(Box<[AtomicU64]>);

impl Shared {
    fn new(words: usize) -> Self {
        Self((0..words).map(|_| AtomicU64::new(0)).collect())
    }
    fn base(&self) -> *mut u8 {
        self.0.as_ptr() as *mut u8
    }
    fn bytes(&self) -> Vec<u8> {
        self.0
            .iter()
            .flat_map(|w| w.load(Ordering::Relaxed).to_ne_bytes())
            .collect()
    }
}

const PATTERN: [u64; 2] = [0, u64::MAX];

#[test]
fn copies_every_alignment_and_length_exactly() {
    let mem = Shared::new(8);
    let init: Vec<u8> = (0..64u8).collect();
    // Miri interprets slowly: fewer, still covering head, words and tail.
    let (offs, lens) = if cfg!(miri) { (9, 18) } else { (16, 40) };
    for off in 0..offs {
        for len in 0..=lens {
            // SAFETY: `mem` is 64 bytes and `off + len <= 55`; no other
            // thread touches it.
            unsafe { vigil_guestmem::write(mem.base(), &init) };
            let mut out = vec![0xAA; len];
            // SAFETY: as above.
            unsafe { vigil_guestmem::read(mem.base().add(off), &mut out) };
            assert_eq!(out, init[off..off + len], "read at {off} len {len}");

            let new: Vec<u8> = (0..len as u8).map(|b| b ^ 0x5A).collect();
            // SAFETY: as above.
            unsafe { vigil_guestmem::write(mem.base().add(off), &new) };
            let mut want = init.clone();
            want[off..off + len].copy_from_slice(&new);
            assert_eq!(mem.bytes(), want, "write at {off} len {len}");
        }
    }
}

#[test]
fn reads_each_byte_alone() {
    let mem = Shared::new(2);
    let init: Vec<u8> = (0..16u8).map(|b| b.wrapping_mul(37) ^ 0xC3).collect();
    // SAFETY: 16 bytes in range; no other thread touches it.
    unsafe { vigil_guestmem::write(mem.base(), &init) };
    for (off, want) in init.iter().enumerate() {
        // SAFETY: `off < 16`.
        let got = unsafe { vigil_guestmem::read_u8(mem.base().add(off)) };
        assert_eq!(got, *want, "byte at {off}");
    }
}

#[test]
fn reads_little_endian_words_at_any_alignment() {
    let mem = Shared::new(4);
    let init: Vec<u8> = (1..=32u8).collect();
    // SAFETY: 32 bytes in range; no other thread touches it.
    unsafe { vigil_guestmem::write(mem.base(), &init) };
    for off in [0, 3, 8] {
        let mut out = [0u64; 2];
        // SAFETY: `off + 16 <= 32`.
        unsafe { vigil_guestmem::read_le_u64s(mem.base().add(off), &mut out) };
        for (i, w) in out.iter().enumerate() {
            let at = off + 8 * i;
            let want = u64::from_le_bytes(init[at..at + 8].try_into().unwrap());
            assert_eq!(*w, want, "word {i} at offset {off}");
        }
    }
}

fn rounds() -> usize {
    if cfg!(miri) {
        20
    } else {
        20_000
    }
}

#[test]
fn a_read_racing_with_guest_writes_is_defined_and_never_tears_a_word() {
    let mem = Arc::new(Shared::new(4));
    let stop = Arc::new(AtomicBool::new(false));
    let guest = {
        let (mem, stop) = (mem.clone(), stop.clone());
        thread::spawn(move || {
            let mut k = 0usize;
            loop {
                for w in mem.0.iter() {
                    w.store(PATTERN[k & 1], Ordering::Relaxed);
                }
                k += 1;
                if stop.load(Ordering::Relaxed) {
                    return k;
                }
                thread::yield_now();
            }
        })
    };
    for _ in 0..rounds() {
        let mut out = [0u8; 32];
        // SAFETY: 32 bytes in range; the guest's accesses are atomic.
        unsafe { vigil_guestmem::read(mem.base(), &mut out) };
        for w in out.chunks_exact(8) {
            let v = u64::from_ne_bytes(w.try_into().unwrap());
            assert!(PATTERN.contains(&v), "torn word {v:#x}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(guest.join().unwrap() > 0);
}

#[test]
fn a_write_racing_with_guest_reads_is_defined_and_never_tears_a_word() {
    let mem = Arc::new(Shared::new(4));
    let stop = Arc::new(AtomicBool::new(false));
    let guest = {
        let (mem, stop) = (mem.clone(), stop.clone());
        thread::spawn(move || {
            let mut seen = 0u64;
            loop {
                for w in mem.0.iter() {
                    let v = w.load(Ordering::Relaxed);
                    assert!(PATTERN.contains(&v), "guest saw torn word {v:#x}");
                    seen += 1;
                }
                if stop.load(Ordering::Relaxed) {
                    return seen;
                }
                thread::yield_now();
            }
        })
    };
    for k in 0..rounds() {
        let bytes = PATTERN[k & 1].to_ne_bytes().repeat(4);
        // SAFETY: 32 bytes in range; the guest's accesses are atomic.
        unsafe { vigil_guestmem::write(mem.base(), &bytes) };
    }
    stop.store(true, Ordering::Relaxed);
    assert!(guest.join().unwrap() > 0);
}
