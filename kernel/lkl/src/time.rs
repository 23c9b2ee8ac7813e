//! Kernel timers, ordered by expiry in jiffies.
//!
//! Jiffies advance only in the timer IRQ handler, which a host timer posts
//! through the ordinary trigger path. That is deliberate: if interrupts from
//! host threads ever got stuck (the LKL bug this crate exists to avoid), time
//! would stop, every sleeper would freeze, and the tests that watch jiffies
//! would see it.

use crate::host::Host;
use crate::kernel::Kctx;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;

/// Callback of a kernel timer; runs in the timer softirq.
pub type TimerCallback<H> = Box<dyn FnOnce(&Kctx<'_, H>) + Send + 'static>;

/// Handle of a pending kernel timer, for [`Kctx::del_timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId(u64);

pub(crate) struct TimerList<H: Host> {
    next_id: u64,
    /// (expiry, id) -> callback.
    by_expiry: BTreeMap<(u64, u64), TimerCallback<H>>,
    /// id -> expiry, so `del` need not scan.
    expiry_of: BTreeMap<u64, u64>,
}

impl<H: Host> TimerList<H> {
    pub(crate) fn new() -> Self {
        TimerList {
            next_id: 0,
            by_expiry: BTreeMap::new(),
            expiry_of: BTreeMap::new(),
        }
    }

    pub(crate) fn add(&mut self, expires: u64, cb: TimerCallback<H>) -> TimerId {
        let id = self.next_id;
        self.next_id += 1;
        self.by_expiry.insert((expires, id), cb);
        self.expiry_of.insert(id, expires);
        TimerId(id)
    }

    /// Removes a timer that has not fired; `false` if it fired or was gone.
    pub(crate) fn del(&mut self, id: TimerId) -> bool {
        match self.expiry_of.remove(&id.0) {
            Some(exp) => self.by_expiry.remove(&(exp, id.0)).is_some(),
            None => false,
        }
    }

    pub(crate) fn next_expiry(&self) -> Option<u64> {
        self.by_expiry.keys().next().map(|&(e, _)| e)
    }

    /// Removes and returns one timer whose expiry is `<= now`.
    pub(crate) fn pop_expired(&mut self, now: u64) -> Option<TimerCallback<H>> {
        let (&(exp, id), _) = self.by_expiry.iter().next()?;
        if exp > now {
            return None;
        }
        self.expiry_of.remove(&id);
        self.by_expiry.remove(&(exp, id))
    }
}
