//! Coverage-guided fuzzing of Vigil's decoders and emulation cores on
//! stable Rust (issue 20). `scripts/fuzz` builds this crate with LLVM's
//! SanitizerCoverage inline 8-bit counters (`-C passes=sancov-module`), the
//! instrumentation libFuzzer uses; LLVM hands every module's counter array
//! to [`__sanitizer_cov_8bit_counters_init`] before `main`, and the engine
//! ([`engine`]) keeps an input when it makes a counter reach a bucket
//! (1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+ hits) no input reached before.
//! Built without those flags (`cargo test`), nothing calls it and the
//! engine mutates blindly; the targets then only replay their seeds and
//! the regression inputs, as a test.
//!
//! Targets ([`targets`]): the vITS (command queue, registers and tables
//! over a fake guest RAM, with the vGIC and list registers behind it), the
//! vGIC's MMIO and list-register cycle, data-abort syndrome decoding, the
//! device-tree reader (QEMU's tree and the VM descriptions a user writes
//! into it), and guest-image parsing. A target fails by panicking: on any
//! Vigil panic, and on any vGIC/vITS anomaly.

pub mod engine;
pub mod targets;

use core::sync::atomic::{AtomicUsize, Ordering};

/// Most instrumented modules (one per crate with codegen-units=1; more
/// otherwise): enough for this workspace's dependency tree.
const MAX_REGIONS: usize = 4096;

static REGION_START: [AtomicUsize; MAX_REGIONS] = [const { AtomicUsize::new(0) }; MAX_REGIONS];
static REGION_LEN: [AtomicUsize; MAX_REGIONS] = [const { AtomicUsize::new(0) }; MAX_REGIONS];
static REGIONS: AtomicUsize = AtomicUsize::new(0);

/// Called by each instrumented module's constructor with its counters
/// (SanitizerCoverage's `-sanitizer-coverage-inline-8bit-counters`).
///
/// # Safety
/// `start..stop` must be the module's counter array, valid for the whole
/// run, as LLVM's constructor passes it.
#[no_mangle]
pub unsafe extern "C" fn __sanitizer_cov_8bit_counters_init(start: *mut u8, stop: *mut u8) {
    let len = (stop as usize).saturating_sub(start as usize);
    if len == 0 {
        return;
    }
    let i = REGIONS.fetch_add(1, Ordering::AcqRel);
    if i < MAX_REGIONS {
        REGION_START[i].store(start as usize, Ordering::Release);
        REGION_LEN[i].store(len, Ordering::Release);
    }
}

/// The counter arrays registered so far.
pub(crate) fn regions() -> impl Iterator<Item = (usize, usize)> {
    let n = REGIONS.load(Ordering::Acquire).min(MAX_REGIONS);
    (0..n).map(|i| {
        (
            REGION_START[i].load(Ordering::Acquire),
            REGION_LEN[i].load(Ordering::Acquire),
        )
    })
}

/// Whether this build is instrumented (some module registered counters).
pub fn instrumented() -> bool {
    REGIONS.load(Ordering::Acquire) > 0
}

/// Reads the input of a target as a stream of fields; past the end every
/// read yields zero, so every input is a valid program.
pub struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.at >= self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.at.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.at += n;
        &self.data[start..end]
    }
}
