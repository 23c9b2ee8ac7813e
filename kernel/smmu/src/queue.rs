//! Ring arithmetic of the command and event queues (IHI 0070 §3.5.1):
//! PROD and CONS hold an index of LOG2SIZE bits plus a wrap bit just above
//! it. The queue is empty when index and wrap are equal, full when the
//! indices are equal and the wrap bits differ.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queue {
    log2size: u32,
}

impl Queue {
    /// A queue of 2^`log2size` entries (1..=19, as IDR1.CMDQS/EVENTQS).
    pub const fn new(log2size: u32) -> Self {
        Self { log2size }
    }

    pub const fn entries(&self) -> u32 {
        1 << self.log2size
    }

    fn mask(&self) -> u32 {
        (1 << (self.log2size + 1)) - 1
    }

    /// The index part of a PROD or CONS value.
    pub fn index(&self, v: u32) -> u32 {
        v & ((1 << self.log2size) - 1)
    }

    fn wrap(&self, v: u32) -> u32 {
        v & (1 << self.log2size)
    }

    pub fn is_empty(&self, prod: u32, cons: u32) -> bool {
        prod & self.mask() == cons & self.mask()
    }

    pub fn is_full(&self, prod: u32, cons: u32) -> bool {
        self.index(prod) == self.index(cons) && self.wrap(prod) != self.wrap(cons)
    }

    /// The value after `v`: the index advances, the wrap bit flips when it
    /// passes the end.
    pub fn next(&self, v: u32) -> u32 {
        (v + 1) & self.mask()
    }

    /// Entries between `cons` and `prod` (what the consumer has still to
    /// read).
    pub fn used(&self, prod: u32, cons: u32) -> u32 {
        (prod.wrapping_sub(cons)) & self.mask()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_tells_full_from_empty() {
        let q = Queue::new(2); // 4 entries
        assert!(q.is_empty(0, 0));
        let mut p = 0;
        for _ in 0..4 {
            assert!(!q.is_full(p, 0));
            p = q.next(p);
        }
        assert_eq!(p, 0b100, "index 0, wrap set");
        assert!(q.is_full(p, 0) && !q.is_empty(p, 0));
        assert_eq!(q.used(p, 0), 4);
        let c = q.next(q.next(0));
        assert_eq!(q.used(p, c), 2);
        assert!(!q.is_full(p, c));
        // Both wrap: empty again, and past the second lap back to 0.
        let mut c = 0;
        for _ in 0..4 {
            c = q.next(c);
        }
        assert!(q.is_empty(p, c));
        for _ in 0..4 {
            p = q.next(p);
        }
        assert_eq!(p, 0);
        assert_eq!(q.index(0b111), 0b11);
        // Bits above the wrap bit (CONS.ERR) are ignored.
        assert!(q.is_empty(0x0100_0003, 3));
    }
}
