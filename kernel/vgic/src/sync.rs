//! Locks used by the vGIC and the vITS.
//!
//! Everything that may be reached from more than one physical CPU goes through
//! [`Mutex`], a thin wrapper over [`spin::Mutex`]. The wrapper exists for one
//! reason: host concurrency tests (shuttle) must be able to preempt a thread at
//! every lock acquisition of the *real* code. [`set_yield_hook`] installs a
//! function that is called before each acquisition attempt (`false`: a plain
//! scheduling point) and after each failed attempt (`true`: the lock is held
//! elsewhere, let the holder run); the kernel never installs one, so in the
//! hypervisor the hook costs one load per acquisition.

use core::ops::{Deref, DerefMut};

static YIELD_HOOK: spin::Once<fn(bool)> = spin::Once::new();

/// Install the scheduling hook (test-only seam, first caller wins).
///
/// Under a cooperative test scheduler (shuttle) the hook must offer a
/// scheduling point when called inside an execution (and yield the CPU when
/// its argument is `true`), and do nothing otherwise.
pub fn set_yield_hook(hook: fn(bool)) {
    YIELD_HOOK.call_once(|| hook);
}

/// A scheduling point: calls the hook if one is installed. `contended`:
/// the caller is spinning on something another thread must release.
#[inline]
pub fn yield_point(contended: bool) {
    if let Some(hook) = YIELD_HOOK.get() {
        hook(contended);
    }
}

/// Spin lock with a scheduling point before every acquisition attempt.
#[derive(Default)]
pub struct Mutex<T> {
    inner: spin::Mutex<T>,
}

/// Guard returned by [`Mutex::lock`].
pub struct MutexGuard<'a, T> {
    inner: spin::MutexGuard<'a, T>,
}

impl<T> Mutex<T> {
    /// A new unlocked mutex.
    pub const fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
        }
    }

    /// Acquire the lock, spinning (and yielding to the test scheduler, if
    /// any) while it is held elsewhere.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        yield_point(false);
        loop {
            if let Some(inner) = self.inner.try_lock() {
                return MutexGuard { inner };
            }
            core::hint::spin_loop();
            yield_point(true);
        }
    }

    /// Acquire the lock if it is free: for readers that must never wait
    /// (a state dump taken while the holder may be stuck).
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.inner.try_lock().map(|inner| MutexGuard { inner })
    }

    /// Consume the mutex and return the protected value.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}
