//! The pending-IRQ set: which interrupts were posted and not yet handled.
//!
//! Every trigger is counted, not just flagged: Runtime invariant 6 asks that
//! each trigger be handled exactly once, and a host thread may post the same
//! line many times before the CPU holder gets to it. A level-style pending
//! *bit* would merge those and lose triggers.
//!
//! Service order is round-robin over the lines that have something pending,
//! in the order each line first became pending. Within a line, triggers are
//! identical, so that is FIFO in every observable sense; across lines, a
//! flood on one line cannot starve another (in particular the timer IRQ,
//! which keeps jiffies advancing under any mix of host-thread triggers). The
//! set never allocates after construction: the ring holds each line at most
//! once.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

/// Posted-but-unhandled interrupts, by line.
#[derive(Debug)]
pub(crate) struct PendingIrqs {
    /// Outstanding triggers per line.
    counts: Vec<u64>,
    /// Lines with a non-zero count, each exactly once, in service order.
    ring: VecDeque<u32>,
    /// Sum of `counts`.
    total: u64,
}

impl PendingIrqs {
    pub(crate) fn new(nr_irqs: u32) -> Self {
        PendingIrqs {
            counts: vec![0; nr_irqs as usize],
            ring: VecDeque::with_capacity(nr_irqs as usize),
            total: 0,
        }
    }

    /// Records one trigger of `irq` (which the caller has range-checked).
    pub(crate) fn push(&mut self, irq: u32) {
        let c = &mut self.counts[irq as usize];
        if *c == 0 {
            self.ring.push_back(irq);
        }
        *c += 1;
        self.total += 1;
    }

    /// Takes the next trigger to service.
    pub(crate) fn pop(&mut self) -> Option<u32> {
        let irq = self.ring.pop_front()?;
        let c = &mut self.counts[irq as usize];
        *c -= 1;
        if *c > 0 {
            self.ring.push_back(irq);
        }
        self.total -= 1;
        Some(irq)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub(crate) fn len(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_trigger_and_round_robins() {
        let mut p = PendingIrqs::new(8);
        assert!(p.is_empty());
        p.push(3);
        p.push(3);
        p.push(5);
        p.push(1);
        assert_eq!(p.len(), 4);
        let order: Vec<u32> = core::iter::from_fn(|| p.pop()).collect();
        assert_eq!(order, [3, 5, 1, 3]);
        assert!(p.is_empty());
        assert_eq!(p.pop(), None);
    }

    #[test]
    fn distinct_lines_keep_trigger_order() {
        let mut p = PendingIrqs::new(8);
        for irq in [7, 2, 4] {
            p.push(irq);
        }
        let order: Vec<u32> = core::iter::from_fn(|| p.pop()).collect();
        assert_eq!(order, [7, 2, 4]);
    }

    #[test]
    fn matches_a_reference_multiset_under_random_ops() {
        // A tiny xorshift so the test needs no dependency.
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut p = PendingIrqs::new(16);
        let mut model = [0u64; 16];
        for _ in 0..20_000 {
            if next() % 3 != 0 {
                let irq = (next() % 16) as u32;
                p.push(irq);
                model[irq as usize] += 1;
            } else if let Some(irq) = p.pop() {
                assert!(
                    model[irq as usize] > 0,
                    "popped a line with nothing pending"
                );
                model[irq as usize] -= 1;
            } else {
                assert!(model.iter().all(|&c| c == 0));
            }
            assert_eq!(p.len(), model.iter().sum::<u64>());
            assert!(p.ring.len() <= 16);
        }
    }
}
