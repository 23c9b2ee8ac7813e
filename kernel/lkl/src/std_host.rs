//! [`StdHost`]: the host operations on real OS threads (feature `std`).

extern crate std;

use crate::host::{Host, HostError, HostMutex, HostSem, HostTimer, JoinError, ThreadFn, TimerFn};
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::{AtomicUsize, Ordering};
use core::time::Duration;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::Instant;

/// Host operations on `std::thread`, `std::sync` and `std::time::Instant`.
///
/// Cheap to copy; all instances share one clock origin.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdHost;

/// Locks ignoring poison: the runtime's assertion panics unwind through
/// guards that must still be able to release the virtual CPU.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`HostMutex`] on `std::sync::Mutex`.
#[derive(Debug)]
pub struct StdMutex<T>(Mutex<T>);

impl<T: Send> HostMutex<T> for StdMutex<T> {
    fn new(value: T) -> Self {
        StdMutex(Mutex::new(value))
    }
    fn lock<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut lock(&self.0))
    }
}

/// [`HostSem`] on a mutex and a condition variable.
#[derive(Debug)]
pub struct StdSem {
    count: Mutex<u32>,
    cv: Condvar,
}

impl HostSem for StdSem {
    fn new(count: u32) -> Self {
        StdSem {
            count: Mutex::new(count),
            cv: Condvar::new(),
        }
    }
    fn up(&self) {
        *lock(&self.count) += 1;
        self.cv.notify_one();
    }
    fn down(&self) {
        let mut c = lock(&self.count);
        while *c == 0 {
            c = self.cv.wait(c).unwrap_or_else(|e| e.into_inner());
        }
        *c -= 1;
    }
    fn down_timeout(&self, timeout_ns: u64) -> bool {
        let deadline = Instant::now() + Duration::from_nanos(timeout_ns);
        let mut c = lock(&self.count);
        while *c == 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            c = self
                .cv
                .wait_timeout(c, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *c -= 1;
        true
    }
}

#[derive(Debug, Default)]
struct TimerState {
    next: Option<Instant>,
    period: Option<Duration>,
    stop: bool,
}

#[derive(Debug, Default)]
struct TimerShared {
    state: Mutex<TimerState>,
    cv: Condvar,
}

/// [`HostTimer`]: one host thread per timer, sleeping on a condition
/// variable until the next deadline. Dropping the timer stops and joins it.
#[derive(Debug)]
pub struct StdTimer {
    shared: Arc<TimerShared>,
    thread: Option<JoinHandle<()>>,
}

impl StdTimer {
    fn run(shared: Arc<TimerShared>, f: TimerFn) {
        let mut st = lock(&shared.state);
        loop {
            if st.stop {
                return;
            }
            match st.next {
                None => st = shared.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(t) => {
                    let now = Instant::now();
                    if now < t {
                        st = shared
                            .cv
                            .wait_timeout(st, t - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        continue;
                    }
                    // Periodic: keep the phase, but never fire a burst to
                    // catch up after the host descheduled us for long.
                    st.next = st.period.map(|p| if t + p > now { t + p } else { now + p });
                    drop(st);
                    f();
                    st = lock(&shared.state);
                }
            }
        }
    }

    fn set(&self, next: Option<Instant>, period: Option<Duration>) {
        let mut st = lock(&self.shared.state);
        st.next = next;
        st.period = period;
        drop(st);
        self.shared.cv.notify_one();
    }
}

impl HostTimer for StdTimer {
    fn set_oneshot(&self, delay_ns: u64) {
        self.set(Some(Instant::now() + Duration::from_nanos(delay_ns)), None);
    }
    fn set_periodic(&self, period_ns: u64) {
        let p = Duration::from_nanos(period_ns.max(1));
        self.set(Some(Instant::now() + p), Some(p));
    }
    fn cancel(&self) {
        self.set(None, None);
    }
}

impl Drop for StdTimer {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.cv.notify_one();
        if let Some(t) = self.thread.take() {
            // A timer freed from its own callback cannot join itself; its
            // loop sees `stop` and ends on its own.
            if t.thread().id() != thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

std::thread_local! {
    static TLS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}
static NEXT_TLS_KEY: AtomicUsize = AtomicUsize::new(0);

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn panic_message(payload: &(dyn core::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}

impl Host for StdHost {
    type Mutex<T: Send> = StdMutex<T>;
    type Sem = StdSem;
    type Thread = JoinHandle<()>;
    type ThreadId = ThreadId;
    type Timer = StdTimer;
    type TlsKey = usize;

    fn thread_create(&self, name: &str, f: ThreadFn) -> Result<Self::Thread, HostError> {
        thread::Builder::new()
            .name(name.to_string())
            .spawn(f)
            .map_err(|_| HostError("thread_create"))
    }
    fn thread_join(&self, thread: Self::Thread) -> Result<(), JoinError> {
        thread.join().map_err(|p| JoinError {
            message: panic_message(&*p),
        })
    }
    fn thread_self(&self) -> ThreadId {
        thread::current().id()
    }
    fn thread_equal(&self, a: ThreadId, b: ThreadId) -> bool {
        a == b
    }
    fn time_ns(&self) -> u64 {
        u64::try_from(origin().elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
    fn timer_create(&self, f: TimerFn) -> Result<Self::Timer, HostError> {
        let shared = Arc::new(TimerShared::default());
        let s2 = shared.clone();
        let thread = thread::Builder::new()
            .name("lkl-host-timer".to_string())
            .spawn(move || StdTimer::run(s2, f))
            .map_err(|_| HostError("timer_create"))?;
        Ok(StdTimer {
            shared,
            thread: Some(thread),
        })
    }
    fn tls_key_create(&self) -> Result<usize, HostError> {
        Ok(NEXT_TLS_KEY.fetch_add(1, Ordering::Relaxed))
    }
    fn tls_get(&self, key: usize) -> usize {
        TLS.with(|t| t.borrow().get(key).copied().unwrap_or(0))
    }
    fn tls_set(&self, key: usize, value: usize) {
        TLS.with(|t| {
            let mut t = t.borrow_mut();
            if t.len() <= key {
                t.resize(key + 1, 0);
            }
            t[key] = value;
        });
    }
}
