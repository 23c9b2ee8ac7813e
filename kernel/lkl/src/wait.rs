//! Wait queues and completions.
//!
//! Both are touched only in kernel context, i.e. by the one host thread that
//! holds the virtual CPU, and an IRQ handler can only run at that thread's
//! IRQ check points, never in the middle of these functions. Their mutexes
//! are therefore never contended; they exist because Rust needs `Sync`.
//! The classic lost-wakeup window ("check, then sleep") is closed by marking
//! the task asleep before the final check: a wakeup that arrives later —
//! necessarily from an IRQ drained in `schedule()` — finds it asleep and
//! queues it.

use crate::host::{Host, HostMutex};
use crate::kernel::Kctx;
use crate::task::Task;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::fmt;

fn add_waiter<H: Host>(q: &mut VecDeque<Arc<Task<H>>>, t: &Arc<Task<H>>) {
    if !q.iter().any(|x| Arc::ptr_eq(x, t)) {
        q.push_back(t.clone());
    }
}

fn remove_waiter<H: Host>(q: &mut VecDeque<Arc<Task<H>>>, t: &Arc<Task<H>>) {
    q.retain(|x| !Arc::ptr_eq(x, t));
}

/// A wait queue: tasks sleeping until a condition holds.
pub struct WaitQueue<H: Host> {
    waiters: H::Mutex<VecDeque<Arc<Task<H>>>>,
}

impl<H: Host> fmt::Debug for WaitQueue<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitQueue").finish_non_exhaustive()
    }
}

impl<H: Host> Default for WaitQueue<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: Host> WaitQueue<H> {
    /// An empty wait queue.
    pub fn new() -> Self {
        WaitQueue {
            waiters: H::Mutex::new(VecDeque::new()),
        }
    }

    fn wait_inner(
        &self,
        k: &Kctx<'_, H>,
        mut cond: impl FnMut() -> bool,
        deadline: Option<u64>,
    ) -> bool {
        k.might_sleep("wait_event()");
        loop {
            if cond() {
                return true;
            }
            let t = k.set_current_sleeping();
            self.waiters.lock(|q| add_waiter(q, &t));
            if cond() {
                k.set_current_running();
                self.waiters.lock(|q| remove_waiter(q, &t));
                return true;
            }
            match deadline {
                None => k.schedule(),
                Some(d) if k.jiffies() < d => k.kernel().sleep_until(&t, d),
                Some(_) => {
                    k.set_current_running();
                    self.waiters.lock(|q| remove_waiter(q, &t));
                    return cond();
                }
            }
            self.waiters.lock(|q| remove_waiter(q, &t));
        }
    }

    /// Sleeps until `cond()` is true.
    ///
    /// # Panics
    /// With IRQs disabled or outside a task (Runtime invariant 5).
    pub fn wait_event(&self, k: &Kctx<'_, H>, cond: impl FnMut() -> bool) {
        self.wait_inner(k, cond, None);
    }

    /// Sleeps until `cond()` is true or `ticks` jiffies pass; returns the
    /// final value of `cond()`.
    ///
    /// # Panics
    /// As [`WaitQueue::wait_event`].
    pub fn wait_event_timeout(
        &self,
        k: &Kctx<'_, H>,
        cond: impl FnMut() -> bool,
        ticks: u64,
    ) -> bool {
        let d = k.jiffies().saturating_add(ticks);
        self.wait_inner(k, cond, Some(d))
    }

    /// Wakes every waiter; returns how many were asleep.
    pub fn wake_up_all(&self, k: &Kctx<'_, H>) -> usize {
        let ws = self.waiters.lock(core::mem::take);
        ws.iter().filter(|t| k.wake_up(t)).count()
    }

    /// Wakes the first waiter that is asleep; returns whether there was one.
    pub fn wake_up_one(&self, k: &Kctx<'_, H>) -> bool {
        while let Some(t) = self.waiters.lock(|q| q.pop_front()) {
            if k.wake_up(&t) {
                return true;
            }
        }
        false
    }
}

struct CompletionInner<H: Host> {
    /// Completions not yet consumed; `u64::MAX` after `complete_all`.
    done: u64,
    waiters: VecDeque<Arc<Task<H>>>,
}

/// A completion: one side waits, the other (often an IRQ handler) signals.
pub struct Completion<H: Host> {
    inner: H::Mutex<CompletionInner<H>>,
}

impl<H: Host> fmt::Debug for Completion<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion").finish_non_exhaustive()
    }
}

impl<H: Host> Default for Completion<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: Host> Completion<H> {
    /// A completion not yet completed.
    pub fn new() -> Self {
        Completion {
            inner: H::Mutex::new(CompletionInner {
                done: 0,
                waiters: VecDeque::new(),
            }),
        }
    }

    /// Signals one completion and wakes one waiter. Callable from any
    /// kernel context, IRQ handlers included.
    pub fn complete(&self, k: &Kctx<'_, H>) {
        self.inner.lock(|i| {
            i.done = if i.done == u64::MAX {
                u64::MAX
            } else {
                i.done + 1
            }
        });
        // Wake the first waiter still asleep (one woken by its timeout is
        // already runnable and will find `done` itself).
        while let Some(t) = self.inner.lock(|i| i.waiters.pop_front()) {
            if k.wake_up(&t) {
                break;
            }
        }
    }

    /// Completes for good and wakes every waiter.
    pub fn complete_all(&self, k: &Kctx<'_, H>) {
        let ws = self.inner.lock(|i| {
            i.done = u64::MAX;
            core::mem::take(&mut i.waiters)
        });
        for t in &ws {
            k.wake_up(t);
        }
    }

    /// Consumes a completion if one is there, without sleeping.
    pub fn try_wait(&self) -> bool {
        self.inner.lock(|i| {
            if i.done == 0 {
                false
            } else {
                if i.done != u64::MAX {
                    i.done -= 1;
                }
                true
            }
        })
    }

    /// Whether a completion is there (a snapshot).
    pub fn is_done(&self) -> bool {
        self.inner.lock(|i| i.done > 0)
    }

    /// Back to "not completed".
    pub fn reinit(&self) {
        self.inner.lock(|i| i.done = 0);
    }

    fn wait_inner(&self, k: &Kctx<'_, H>, deadline: Option<u64>) -> bool {
        k.might_sleep("wait_for_completion()");
        loop {
            if self.try_wait() {
                return true;
            }
            let t = k.set_current_sleeping();
            self.inner.lock(|i| add_waiter(&mut i.waiters, &t));
            if self.try_wait() {
                k.set_current_running();
                self.inner.lock(|i| remove_waiter(&mut i.waiters, &t));
                return true;
            }
            match deadline {
                None => k.schedule(),
                Some(d) if k.jiffies() < d => k.kernel().sleep_until(&t, d),
                Some(_) => {
                    k.set_current_running();
                    self.inner.lock(|i| remove_waiter(&mut i.waiters, &t));
                    return self.try_wait();
                }
            }
            self.inner.lock(|i| remove_waiter(&mut i.waiters, &t));
        }
    }

    /// `wait_for_completion`: sleeps until completed, consuming one
    /// completion.
    ///
    /// # Panics
    /// With IRQs disabled or outside a task (Runtime invariant 5).
    pub fn wait(&self, k: &Kctx<'_, H>) {
        self.wait_inner(k, None);
    }

    /// `wait_for_completion_timeout`: `false` if `ticks` jiffies passed
    /// without a completion.
    ///
    /// # Panics
    /// As [`Completion::wait`].
    pub fn wait_timeout(&self, k: &Kctx<'_, H>, ticks: u64) -> bool {
        let d = k.jiffies().saturating_add(ticks);
        self.wait_inner(k, Some(d))
    }
}
