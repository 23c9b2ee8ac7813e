//! Host operations: everything the runtime needs from whatever it runs on.
//!
//! The kernel side never touches an OS primitive directly. It asks the host
//! for threads, locks, semaphores, a monotonic clock, timers and one word of
//! thread-local storage per kernel instance. This is LKL's `lkl_host_ops`
//! table, expressed as a Rust trait with associated types so that the kernel
//! is monomorphised over its host and pays nothing for the indirection.
//!
//! Three hosts exist or are planned:
//! - [`crate::StdHost`] (feature `std`): real OS threads, for host tests and
//!   benchmarks;
//! - a model-checking host in the crate's tests, built on `shuttle`, which
//!   runs the *same* kernel code under a controlled scheduler;
//! - later, a paravirtual host inside a Vigil guest.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use core::fmt;

/// A host mutex owning the data it protects.
///
/// The kernel holds these only for short, non-blocking critical sections and
/// never nests two of them (see "Locks" in the kernel module), so a
/// host may implement them as spinlocks.
pub trait HostMutex<T>: Send + Sync {
    /// A new, unlocked mutex holding `value`.
    fn new(value: T) -> Self;
    /// Runs `f` with exclusive access to the data.
    ///
    /// A host must not poison the data when `f` panics: the runtime's panic
    /// paths (an assertion for Runtime invariant 5) still have to release the
    /// virtual CPU afterwards.
    fn lock<R>(&self, f: impl FnOnce(&mut T) -> R) -> R;
}

/// A counting semaphore. The scheduler hands the virtual CPU from one host
/// thread to another with `up` on the receiver's semaphore and `down` on its
/// own, so every context switch is one `up` and one `down`.
pub trait HostSem: Send + Sync {
    /// A new semaphore with `count` tokens.
    fn new(count: u32) -> Self;
    /// Adds one token, waking a waiter if there is one.
    fn up(&self);
    /// Takes one token, blocking until one is available.
    fn down(&self);
    /// Takes one token, blocking at most `timeout_ns`. Returns `false` on
    /// timeout (no token taken).
    fn down_timeout(&self, timeout_ns: u64) -> bool;
}

/// A host timer calling back the function it was created with, on a host
/// thread of the host's choosing. The runtime's tick uses it to post the
/// timer IRQ, exactly as any other host thread posts an interrupt.
pub trait HostTimer: Send + Sync {
    /// Fire once, `delay_ns` from now (replaces any previous setting).
    fn set_oneshot(&self, delay_ns: u64);
    /// Fire every `period_ns`, first `period_ns` from now (replaces any
    /// previous setting).
    fn set_periodic(&self, period_ns: u64);
    /// Stop firing. A callback already running may still finish.
    fn cancel(&self);
}

/// Body of a host thread.
pub type ThreadFn = Box<dyn FnOnce() + Send + 'static>;
/// Callback of a host timer.
pub type TimerFn = Arc<dyn Fn() + Send + Sync + 'static>;

/// A host operation failed (out of threads, timers, TLS keys...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError(pub &'static str);

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host operation failed: {}", self.0)
    }
}

/// A joined host thread ended by panicking; `message` is the panic payload
/// when it was a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinError {
    /// The panic message, or a placeholder for a non-string payload.
    pub message: String,
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "thread panicked: {}", self.message)
    }
}

/// The host-operations table.
pub trait Host: Send + Sync + 'static {
    /// See [`HostMutex`].
    type Mutex<T: Send>: HostMutex<T>;
    /// See [`HostSem`].
    type Sem: HostSem;
    /// Join handle of a host thread.
    type Thread: Send;
    /// Identity of a host thread, comparable with [`Host::thread_equal`].
    type ThreadId: Copy + Send + Sync + fmt::Debug;
    /// See [`HostTimer`]. Dropping it frees the timer.
    type Timer: HostTimer;
    /// A thread-local storage slot holding one `usize` per host thread.
    type TlsKey: Copy + Send + Sync;

    /// Starts a host thread running `f`.
    fn thread_create(&self, name: &str, f: ThreadFn) -> Result<Self::Thread, HostError>;
    /// Waits for a host thread to end.
    fn thread_join(&self, thread: Self::Thread) -> Result<(), JoinError>;
    /// The calling host thread.
    fn thread_self(&self) -> Self::ThreadId;
    /// Whether two identities name the same host thread.
    fn thread_equal(&self, a: Self::ThreadId, b: Self::ThreadId) -> bool;
    /// Monotonic time in nanoseconds from an arbitrary origin.
    fn time_ns(&self) -> u64;
    /// A new, unarmed timer calling `f` when it fires.
    fn timer_create(&self, f: TimerFn) -> Result<Self::Timer, HostError>;
    /// A new TLS slot; every host thread starts with the value 0 in it.
    fn tls_key_create(&self) -> Result<Self::TlsKey, HostError>;
    /// The calling thread's value in `key`.
    fn tls_get(&self, key: Self::TlsKey) -> usize;
    /// Sets the calling thread's value in `key`.
    fn tls_set(&self, key: Self::TlsKey, value: usize);
}
