//! Model checking of the CPU-ownership and pending-IRQ protocol with
//! `shuttle`.
//!
//! [`ShuttleHost`] implements the host operations on shuttle's threads,
//! mutexes and condition variables, so the kernel under test is the real
//! kernel — the same `trigger_irq`, `next_step`, `schedule` and wait code
//! the std host runs — with every host-mutex acquisition and semaphore
//! operation a scheduling point that shuttle's random and PCT schedulers
//! permute. A lost IRQ or a lost wakeup leaves some thread blocked forever,
//! which shuttle reports as a deadlock; the scenarios also assert exact
//! handler counts and the quiescent state (CPU free, nothing pending).
//!
//! The last test re-creates LKL's stale global flag by fault injection and
//! checks that the checker finds the resulting hang, so these tests are
//! known to be able to fail.

extern crate std;

use crate::host::{Host, HostError, HostMutex, HostSem, HostTimer, JoinError, ThreadFn, TimerFn};
use crate::{Completion, Config, Delivery, Error, Kernel};
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use shuttle::sync::{Condvar, Mutex};

#[derive(Debug, Default, Clone, Copy)]
struct ShuttleHost;

struct SMutex<T>(Mutex<T>);

impl<T: Send> HostMutex<T> for SMutex<T> {
    fn new(value: T) -> Self {
        SMutex(Mutex::new(value))
    }
    fn lock<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct SSem {
    count: Mutex<u32>,
    cv: Condvar,
}

impl HostSem for SSem {
    fn new(count: u32) -> Self {
        SSem {
            count: Mutex::new(count),
            cv: Condvar::new(),
        }
    }
    fn up(&self) {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_one();
    }
    fn down(&self) {
        let mut c = self.count.lock().unwrap();
        while *c == 0 {
            c = self.cv.wait(c).unwrap();
        }
        *c -= 1;
    }
    /// No time under the model checker: waits without timing out (a wait
    /// that never ends is reported as a deadlock).
    fn down_timeout(&self, _timeout_ns: u64) -> bool {
        self.down();
        true
    }
}

struct NoTimer;

impl HostTimer for NoTimer {
    fn set_oneshot(&self, _: u64) {}
    fn set_periodic(&self, _: u64) {}
    fn cancel(&self) {}
}

shuttle::thread_local! {
    static TLS: RefCell<Vec<usize>> = RefCell::new(Vec::new());
}
static NEXT_KEY: AtomicUsize = AtomicUsize::new(0);

impl Host for ShuttleHost {
    type Mutex<T: Send> = SMutex<T>;
    type Sem = SSem;
    type Thread = shuttle::thread::JoinHandle<()>;
    type ThreadId = shuttle::thread::ThreadId;
    type Timer = NoTimer;
    type TlsKey = usize;

    fn thread_create(&self, name: &str, f: ThreadFn) -> Result<Self::Thread, HostError> {
        shuttle::thread::Builder::new()
            .name(name.to_string())
            .spawn(f)
            .map_err(|_| HostError("thread_create"))
    }
    fn thread_join(&self, thread: Self::Thread) -> Result<(), JoinError> {
        thread.join().map_err(|_| JoinError {
            message: String::from("panicked"),
        })
    }
    fn thread_self(&self) -> Self::ThreadId {
        shuttle::thread::current().id()
    }
    fn thread_equal(&self, a: Self::ThreadId, b: Self::ThreadId) -> bool {
        a == b
    }
    fn time_ns(&self) -> u64 {
        0
    }
    fn timer_create(&self, _f: TimerFn) -> Result<NoTimer, HostError> {
        Ok(NoTimer)
    }
    fn tls_key_create(&self) -> Result<usize, HostError> {
        Ok(NEXT_KEY.fetch_add(1, Ordering::Relaxed) % 64)
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
        })
    }
}

type K = Arc<Kernel<ShuttleHost>>;

fn boot() -> K {
    boot_with_batch(256)
}

/// `drain_batch: 1` makes every release with more than one IRQ pending take
/// the flood path (hand the CPU to a runnable task with IRQs still
/// pending), so the checker explores it with a handful of triggers.
fn boot_with_batch(drain_batch: u32) -> K {
    Kernel::boot(
        ShuttleHost,
        Config {
            nr_irqs: 16,
            hz: 1000,
            tick: false,
            drain_batch,
        },
    )
    .unwrap()
}

fn counter(k: &K, irq: u32, in_critical: Option<Arc<AtomicBool>>) -> Arc<AtomicU64> {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    k.request_irq(irq, move |k, _| {
        assert!(k.in_irq(), "handler outside IRQ context");
        if let Some(c) = &in_critical {
            // Runtime invariant 4, observed from outside.
            assert!(
                !c.load(Ordering::SeqCst),
                "IRQ {irq} ran inside an IRQs-off section"
            );
        }
        h.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    hits
}

fn quiescent(k: &K) {
    assert!(k.cpu_is_free(), "CPU still held at quiescence");
    assert_eq!(k.pending_irqs(), 0, "IRQ left pending with the CPU free");
}

const ITER: usize = 1500;

fn check(f: fn()) {
    shuttle::check_random(f, ITER);
    shuttle::check_pct(f, ITER, 3);
}

/// The LKL bug shape: a kernel thread parks in `schedule()` (its flag says
/// "disabled") while host threads trigger and enter via syscall. The
/// waiter's wakeup comes only from the host-triggered IRQ.
fn parked_waiter_and_host_trigger() {
    let k = boot();
    let done = Arc::new(Completion::<ShuttleHost>::new());
    let d = done.clone();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    k.request_irq(5, move |k, _| {
        h.fetch_add(1, Ordering::SeqCst);
        d.complete(k);
    })
    .unwrap();
    let syscall_irq = counter(&k, 6, None);
    let d = done.clone();
    let kt = k
        .kernel_thread("waiter", move |k| {
            let f = k.irq_save();
            k.irq_restore(f);
            d.wait(k);
        })
        .unwrap();
    let k2 = k.clone();
    let trig = shuttle::thread::spawn(move || {
        k2.trigger_irq(5).unwrap();
    });
    let k3 = k.clone();
    let sys = shuttle::thread::spawn(move || {
        k3.syscall(|k| {
            let f = k.irq_save();
            k.irq_restore(f);
        })
        .unwrap();
        k3.trigger_irq(6).unwrap();
    });
    trig.join().unwrap();
    sys.join().unwrap();
    kt.join().unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(syscall_irq.load(Ordering::SeqCst), 1);
    quiescent(&k);
    k.shutdown(0).unwrap();
}

#[test]
fn model_parked_waiter_and_host_trigger() {
    check(parked_waiter_and_host_trigger);
}

/// Two kernel threads toggling IRQs, triggering with IRQs off and
/// yielding; two host threads triggering. Every trigger handled exactly
/// once, never inside an IRQs-off section.
fn togglers_and_host_triggers() {
    togglers_and_host_triggers_with(boot());
}

fn togglers_and_host_triggers_flood_path() {
    let k = boot_with_batch(1);
    togglers_and_host_triggers_with(k.clone());
    FLOOD_PATH_TAKEN.fetch_add(k.stats().handoffs_with_pending, Ordering::Relaxed);
}

static FLOOD_PATH_TAKEN: AtomicU64 = AtomicU64::new(0);

fn togglers_and_host_triggers_with(k: K) {
    let crit = Arc::new(AtomicBool::new(false));
    let a = counter(&k, 5, Some(crit.clone()));
    let b = counter(&k, 6, Some(crit.clone()));
    let own = counter(&k, 7, Some(crit.clone()));
    let mut kts = Vec::new();
    for i in 0..2 {
        let crit = crit.clone();
        kts.push(
            k.kernel_thread("toggler", move |k| {
                for _ in 0..2 {
                    let f = k.irq_save();
                    crit.store(true, Ordering::SeqCst);
                    // Runtime invariant 3: pends with IRQs off.
                    assert_eq!(k.trigger_irq(7), Ok(Delivery::Pended));
                    crit.store(false, Ordering::SeqCst);
                    k.irq_restore(f);
                    if i == 0 {
                        k.yield_now();
                    }
                }
            })
            .unwrap(),
        );
    }
    let mut hosts = Vec::new();
    for irq in [5, 6] {
        let k = k.clone();
        hosts.push(shuttle::thread::spawn(move || {
            for _ in 0..2 {
                k.trigger_irq(irq).unwrap();
            }
        }));
    }
    for h in hosts {
        h.join().unwrap();
    }
    for t in kts {
        t.join().unwrap();
    }
    assert_eq!(a.load(Ordering::SeqCst), 2);
    assert_eq!(b.load(Ordering::SeqCst), 2);
    assert_eq!(own.load(Ordering::SeqCst), 4);
    quiescent(&k);
    k.shutdown(0).unwrap();
}

#[test]
fn model_togglers_and_host_triggers() {
    check(togglers_and_host_triggers);
}

#[test]
fn model_togglers_and_host_triggers_flood_path() {
    check(togglers_and_host_triggers_flood_path);
    assert!(
        FLOOD_PATH_TAKEN.load(Ordering::Relaxed) > 0,
        "no explored schedule handed the CPU over with IRQs pending"
    );
}

/// Nested triggers: a handler triggering another line (pends until it
/// returns), racing with a host trigger and a syscall that disables IRQs.
fn nested_and_syscall() {
    let k = boot();
    let inner = counter(&k, 6, None);
    let outer = Arc::new(AtomicU64::new(0));
    let o = outer.clone();
    k.request_irq(5, move |k, _| {
        o.fetch_add(1, Ordering::SeqCst);
        assert_eq!(k.trigger_irq(6), Ok(Delivery::Pended));
    })
    .unwrap();
    let k2 = k.clone();
    let host = shuttle::thread::spawn(move || {
        k2.trigger_irq(5).unwrap();
    });
    let r = k.syscall(|k| {
        let f = k.irq_save();
        let d = k.trigger_irq(5).unwrap();
        k.irq_restore(f);
        d
    });
    assert_eq!(r, Ok(Delivery::Pended));
    host.join().unwrap();
    assert_eq!(outer.load(Ordering::SeqCst), 2);
    assert_eq!(inner.load(Ordering::SeqCst), 2);
    quiescent(&k);
    k.shutdown(0).unwrap();
}

#[test]
fn model_nested_and_syscall() {
    check(nested_and_syscall);
}

/// Shutdown racing with triggers: each trigger either returns Ok and is
/// handled exactly once, or returns ShutDown; never Ok after a ShutDown.
fn shutdown_race() {
    let k = boot();
    let hits = counter(&k, 5, None);
    let ok = Arc::new(AtomicU64::new(0));
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let (k, ok) = (k.clone(), ok.clone());
        hosts.push(shuttle::thread::spawn(move || {
            let mut refused = false;
            for _ in 0..2 {
                match k.trigger_irq(5) {
                    Ok(_) => {
                        assert!(!refused);
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(Error::ShutDown) => refused = true,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    let kt = k
        .kernel_thread("worker", |k| {
            let f = k.irq_save();
            k.irq_restore(f);
        })
        .unwrap();
    k.shutdown(0).unwrap();
    let after_shutdown = hits.load(Ordering::SeqCst);
    for h in hosts {
        h.join().unwrap();
    }
    kt.join().unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), ok.load(Ordering::SeqCst));
    assert_eq!(
        after_shutdown,
        hits.load(Ordering::SeqCst),
        "handler ran after shutdown returned"
    );
    assert_eq!(k.trigger_irq(5), Err(Error::ShutDown));
}

#[test]
fn model_shutdown_race() {
    check(shutdown_race);
}

/// The exact LKL ordering: the host thread triggers only once the waiter is
/// parked in `schedule()` with its flag "disabled" and the CPU is free.
/// With the real protocol the trigger runs the handler at once.
fn trigger_after_park(fault: bool) {
    let k = boot();
    if fault {
        k.inject_stale_global_flag_fault();
    }
    let done = Arc::new(Completion::<ShuttleHost>::new());
    let d = done.clone();
    k.request_irq(5, move |k, _| d.complete(k)).unwrap();
    let d = done.clone();
    let kt = k.kernel_thread("waiter", move |k| d.wait(k)).unwrap();
    let task = kt.task().clone();
    let k2 = k.clone();
    let trig = shuttle::thread::spawn(move || {
        while !(task.state() == crate::TaskState::Sleeping && k2.cpu_is_free()) {
            shuttle::thread::yield_now();
        }
        assert!(!task.irqs_enabled_snapshot(), "parked with its flag off");
        let d = k2.trigger_irq(5).unwrap();
        if !fault {
            assert_eq!(d, Delivery::Handled);
        }
    });
    trig.join().unwrap();
    kt.join().unwrap();
    quiescent(&k);
}

#[test]
fn model_trigger_after_park() {
    shuttle::check_random(|| trigger_after_park(false), ITER);
}

/// With LKL's stale global flag re-created (a host trigger obeys the flag
/// the last parked task left behind), the checker must find the hang:
/// shuttle reports the waiter and the joiner blocked forever.
#[test]
#[should_panic(expected = "deadlock")]
fn model_finds_the_lkl_stale_flag_bug() {
    shuttle::check_random(|| trigger_after_park(true), ITER);
}
