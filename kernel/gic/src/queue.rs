//! Ring arithmetic of an ITS command queue (IHI 0069 §6.2.2, §12.19.5-7).
//!
//! The queue is `size` bytes of 32-byte commands. Software writes at
//! GITS_CWRITER.Offset and the ITS reads at GITS_CREADR.Offset; both wrap
//! to 0 at the end. The queue is empty when they are equal and full when
//! advancing the writer would make them equal, so one slot always stays
//! unused.

/// Bytes per command.
pub const ENTRY: u64 = 32;

/// Largest queue GITS_CBASER.Size can describe: 256 pages of 4 KiB.
pub const MAX_SIZE: u64 = 256 * 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// Size is not a non-zero multiple of 4 KiB up to 1 MiB.
    BadSize,
}

impl Ring {
    pub fn new(size: u64) -> Result<Self, RingError> {
        if size == 0 || !size.is_multiple_of(4096) || size > MAX_SIZE {
            return Err(RingError::BadSize);
        }
        Ok(Self { size })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Commands the ring holds at most (one slot stays free).
    pub fn capacity(&self) -> u64 {
        self.size / ENTRY - 1
    }

    /// The offset after `off`, and whether that wrapped to 0.
    pub fn advance(&self, off: u64) -> (u64, bool) {
        let next = (off + ENTRY) % self.size;
        (next, next == 0)
    }

    /// Commands written but not yet read.
    pub fn pending(&self, creadr: u64, cwriter: u64) -> u64 {
        ((cwriter + self.size - creadr) % self.size) / ENTRY
    }

    /// Commands that can be written before the writer would catch up with
    /// the reader.
    pub fn free(&self, creadr: u64, cwriter: u64) -> u64 {
        self.capacity() - self.pending(creadr, cwriter)
    }

    /// Whether an offset is a valid command position in this ring.
    pub fn valid_offset(&self, off: u64) -> bool {
        off < self.size && off.is_multiple_of(ENTRY)
    }
}

/// GITS_CWRITER / GITS_CREADR offset field, bits [19:5].
pub const OFFSET_MASK: u64 = 0xf_ffe0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Ring::new(0), Err(RingError::BadSize));
        assert_eq!(Ring::new(4096 + 32), Err(RingError::BadSize));
        assert_eq!(Ring::new(MAX_SIZE + 4096), Err(RingError::BadSize));
        let r = Ring::new(4096).unwrap();
        assert_eq!(r.capacity(), 127);
    }

    #[test]
    fn advance_wraps_at_the_end() {
        let r = Ring::new(4096).unwrap();
        assert_eq!(r.advance(0), (32, false));
        assert_eq!(r.advance(4096 - 64), (4096 - 32, false));
        assert_eq!(r.advance(4096 - 32), (0, true));
    }

    #[test]
    fn pending_and_free_across_the_wrap() {
        let r = Ring::new(4096).unwrap();
        assert_eq!(r.pending(0, 0), 0);
        assert_eq!(r.free(0, 0), 127);
        assert_eq!(r.pending(4096 - 32, 64), 3, "writer wrapped, reader not");
        assert_eq!(r.free(4096 - 32, 64), 124);
        // Full: the writer sits one slot behind the reader.
        assert_eq!(r.pending(64, 32), 127);
        assert_eq!(r.free(64, 32), 0);
    }

    /// Simulate a writer and a reader going around several times: the
    /// writer never overtakes, the reader never passes the writer, and every
    /// command is read exactly once in order.
    #[test]
    fn simulated_wraps_keep_order() {
        let r = Ring::new(8192).unwrap();
        let slots = (r.size() / ENTRY) as usize;
        let mut mem = [u64::MAX; 256];
        assert_eq!(slots, 256);
        let (mut w, mut rd) = (0u64, 0u64);
        let (mut next_seq, mut expect) = (0u64, 0u64);
        let mut wraps = 0;
        let mut step = 0u64;
        while expect < 3000 {
            step += 1;
            // Write a burst of 1..=40 commands, as many as fit.
            for _ in 0..(step % 40 + 1).min(r.free(rd, w)) {
                mem[(w / ENTRY) as usize] = next_seq;
                next_seq += 1;
                let (n, wrapped) = r.advance(w);
                wraps += wrapped as u32;
                w = n;
            }
            // Read a burst of 1..=30.
            for _ in 0..(step % 30 + 1).min(r.pending(rd, w)) {
                assert_eq!(mem[(rd / ENTRY) as usize], expect);
                expect += 1;
                rd = r.advance(rd).0;
            }
        }
        assert!(wraps >= 10);
    }

    #[test]
    fn offsets() {
        let r = Ring::new(4096).unwrap();
        assert!(r.valid_offset(0));
        assert!(r.valid_offset(4064));
        assert!(!r.valid_offset(4096));
        assert!(!r.valid_offset(16));
    }
}
