//! The runtime invariants of DESIGN.md, one scenario each, on real threads.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use vigil_lkl::{Completion, CpuHolder, Delivery, Error, StdHost, TaskState};

const SEC: Duration = Duration::from_secs(1);

fn counter_irq(k: &K, irq: u32) -> Arc<AtomicU64> {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    k.request_irq(irq, move |_, _| {
        h.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    hits
}

/// Invariants 1 and 2, the LKL bug itself: the last kernel thread to run is
/// parked inside `schedule()` with its own flag "disabled". A host thread's
/// trigger must not care: with the CPU free it runs the handler at once.
#[test]
fn host_trigger_after_last_thread_left_irqs_disabled_runs_once_within_500ms() {
    let k = boot_without_tick();
    let done = Arc::new(Completion::<StdHost>::new());
    let hits = Arc::new(AtomicU64::new(0));
    let (h, d) = (hits.clone(), done.clone());
    k.request_irq(5, move |k, _| {
        h.fetch_add(1, Ordering::SeqCst);
        d.complete(k);
    })
    .unwrap();
    let d = done.clone();
    let kt = k
        .kernel_thread("sleeper", move |k| {
            let f = k.irq_save();
            k.irq_restore(f);
            d.wait(k);
        })
        .unwrap();
    wait_until(2 * SEC, "sleeper parked in schedule()", || {
        kt.task().state() == TaskState::Sleeping && k.cpu_is_free()
    });
    // The stale state LKL's global flag would have shown a host thread.
    assert!(
        !kt.task().irqs_enabled_snapshot(),
        "the parked thread should carry 'IRQs disabled' (it sleeps inside schedule)"
    );
    let k2 = k.clone();
    let t0 = Instant::now();
    let delivery = thread::spawn(move || k2.trigger_irq(5)).join().unwrap();
    assert_eq!(
        delivery,
        Ok(Delivery::Handled),
        "CPU was free: must run now"
    );
    wait_until(Duration::from_millis(500), "handler within 500 ms", || {
        hits.load(Ordering::SeqCst) == 1
    });
    assert!(t0.elapsed() < Duration::from_millis(500));
    bounded(2 * SEC, "sleeper finishes", move || kt.join()).unwrap();
    thread::sleep(Duration::from_millis(20));
    assert_eq!(hits.load(Ordering::SeqCst), 1, "handled exactly once");
    shutdown(&k);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// Same shape with the tick running and several parked threads: the timer
/// IRQ (posted by a host timer thread) keeps flowing, jiffies advance,
/// and the sleepers wake on time.
#[test]
fn jiffies_advance_while_threads_sleep_inside_schedule() {
    let k = boot();
    let hits = counter_irq(&k, 6);
    let mut kts = Vec::new();
    for i in 0..3 {
        kts.push(
            k.kernel_thread(&format!("napper{i}"), |k| {
                for _ in 0..20 {
                    let f = k.irq_save();
                    k.irq_restore(f);
                    k.msleep(2);
                }
            })
            .unwrap(),
        );
    }
    let j0 = k.jiffies();
    let k2 = k.clone();
    let trig = thread::spawn(move || {
        for _ in 0..200 {
            k2.trigger_irq(6).unwrap();
            thread::sleep(Duration::from_micros(100));
        }
    });
    for kt in kts {
        bounded(10 * SEC, "nappers finish", move || kt.join()).unwrap();
    }
    trig.join().unwrap();
    assert!(
        k.jiffies() >= j0 + 40,
        "jiffies advanced {} < 40",
        k.jiffies() - j0
    );
    shutdown(&k);
    assert_eq!(hits.load(Ordering::SeqCst), 200);
}

/// Invariants 2 and 3: a kernel thread holds the CPU with IRQs disabled
/// while a host thread triggers. The trigger pends; the handler does not run
/// before the restore, and runs inside it, in that thread's context.
#[test]
fn trigger_while_kernel_thread_has_irqs_disabled_runs_at_restore() {
    let k = boot();
    let in_restore = Arc::new(AtomicBool::new(false));
    let ran_in_restore = Arc::new(AtomicUsize::new(0));
    let hits = Arc::new(AtomicU64::new(0));
    let (ir, rir, h) = (in_restore.clone(), ran_in_restore.clone(), hits.clone());
    k.request_irq(7, move |k, _| {
        assert!(k.in_irq());
        if ir.load(Ordering::SeqCst) && k.current().is_some() {
            rir.fetch_add(1, Ordering::SeqCst);
        }
        h.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    let ready = Arc::new(AtomicBool::new(false));
    let triggered = Arc::new(AtomicBool::new(false));
    let result = Arc::new(Mutex::new(None));
    let (rd, tr, ir, h, res) = (
        ready.clone(),
        triggered.clone(),
        in_restore.clone(),
        hits.clone(),
        result.clone(),
    );
    let kt = k
        .kernel_thread("holder", move |k| {
            let f = k.irq_save();
            assert!(k.irqs_disabled());
            rd.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + 5 * SEC;
            while !tr.load(Ordering::SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1)); // holds the CPU
            }
            // Give a wrongly delivered IRQ every chance to show up.
            thread::sleep(Duration::from_millis(50));
            let before = h.load(Ordering::SeqCst);
            ir.store(true, Ordering::SeqCst);
            k.irq_restore(f);
            ir.store(false, Ordering::SeqCst);
            let after = h.load(Ordering::SeqCst);
            *res.lock().unwrap() = Some((before, after));
        })
        .unwrap();
    wait_until(5 * SEC, "holder has IRQs disabled", || {
        ready.load(Ordering::SeqCst)
    });
    let k2 = k.clone();
    let d = thread::spawn(move || k2.trigger_irq(7)).join().unwrap();
    assert_eq!(d, Ok(Delivery::Pended), "CPU held: must pend");
    triggered.store(true, Ordering::SeqCst);
    bounded(10 * SEC, "holder finishes", move || kt.join()).unwrap();
    let (before, after) = result.lock().unwrap().expect("holder recorded");
    assert_eq!(before, 0, "handler ran while the holder had IRQs disabled");
    assert_eq!(after, 1, "handler did not run at the enabling restore");
    assert_eq!(ran_in_restore.load(Ordering::SeqCst), 1);
    shutdown(&k);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// Invariant 3 from the thread's own side: it triggers with IRQs disabled,
/// the IRQ pends and runs at its enabling restore.
#[test]
fn kernel_thread_self_trigger_with_irqs_disabled_pends_until_restore() {
    let k = boot_without_tick();
    let hits = counter_irq(&k, 8);
    let h = hits.clone();
    let out = k
        .syscall(move |k| {
            let f = k.irq_save();
            let d = k.trigger_irq(8).unwrap();
            let before = h.load(Ordering::SeqCst);
            k.irq_restore(f);
            let after = h.load(Ordering::SeqCst);
            let d2 = k.trigger_irq(8).unwrap(); // IRQs on: runs now
            (d, before, after, d2, h.load(Ordering::SeqCst))
        })
        .unwrap();
    assert_eq!(out, (Delivery::Pended, 0, 1, Delivery::Handled, 2));
    shutdown(&k);
}

/// Invariant 2 for a host thread inside a syscall: a trigger from another
/// host thread pends and is drained before the syscall gives the CPU back.
#[test]
fn trigger_during_syscall_runs_before_the_cpu_is_released() {
    let k = boot_without_tick();
    let hits = counter_irq(&k, 9);
    let (ready, go) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (r, g, h) = (ready.clone(), go.clone(), hits.clone());
    let k2 = k.clone();
    let caller = thread::spawn(move || {
        k2.syscall(move |_k| {
            r.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + 5 * SEC;
            while !g.load(Ordering::SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            h.load(Ordering::SeqCst)
        })
        .unwrap()
    });
    wait_until(5 * SEC, "syscall running", || ready.load(Ordering::SeqCst));
    assert_eq!(k.trigger_irq(9), Ok(Delivery::Pended));
    go.store(true, Ordering::SeqCst);
    let seen_inside = bounded(10 * SEC, "syscall returns", move || caller.join().unwrap());
    assert_eq!(
        seen_inside, 0,
        "IRQs enabled but no check point: still pending inside"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "drained before the CPU was released"
    );
    assert_eq!(k.cpu_holder(), CpuHolder::Free);
    shutdown(&k);
}

/// Invariant 4 and nesting: a handler that triggers IRQs (they pend until it
/// returns), a softirq that triggers one (it runs at once: softirqs run with
/// IRQs enabled). Exact order, nothing lost.
#[test]
fn nested_triggers_from_handlers_and_softirqs_run_in_order() {
    let k = boot();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let push = |log: &Arc<Mutex<Vec<String>>>, s: &str| log.lock().unwrap().push(s.to_string());
    const SOFT: u32 = 3;
    let l = log.clone();
    k.request_irq(10, move |k, _| {
        push(&l, "A");
        assert_eq!(
            k.trigger_irq(11),
            Ok(Delivery::Pended),
            "trigger inside hard IRQ must pend"
        );
        assert_eq!(k.trigger_irq(12), Ok(Delivery::Pended));
        push(&l, "A-end");
    })
    .unwrap();
    let l = log.clone();
    k.request_irq(11, move |k, _| {
        push(&l, "B");
        k.raise_softirq(SOFT).unwrap();
    })
    .unwrap();
    let l = log.clone();
    k.request_irq(12, move |_, _| push(&l, "C")).unwrap();
    let l = log.clone();
    k.request_irq(13, move |k, _| {
        assert!(k.in_irq());
        push(&l, "D")
    })
    .unwrap();
    let l = log.clone();
    k.request_irq(14, move |_, _| push(&l, "E")).unwrap();
    let l = log.clone();
    k.open_softirq(SOFT, move |k| {
        assert!(k.in_softirq() && !k.irqs_disabled());
        push(&l, "S");
        assert_eq!(
            k.trigger_irq(13),
            Ok(Delivery::Handled),
            "softirq has IRQs on"
        );
        assert_eq!(k.trigger_irq(14), Ok(Delivery::Handled));
        push(&l, "S-end");
    })
    .unwrap();
    let expected = ["A", "A-end", "B", "C", "S", "D", "E", "S-end"];

    // From a host thread (borrowed CPU) ...
    let k2 = k.clone();
    bounded(5 * SEC, "host trigger", move || k2.trigger_irq(10).unwrap());
    wait_until(5 * SEC, "all nested IRQs", || {
        log.lock().unwrap().len() == expected.len()
    });
    assert_eq!(*log.lock().unwrap(), expected);
    log.lock().unwrap().clear();

    // ... and from a kernel thread with IRQs enabled (runs in its context).
    let kt = k
        .kernel_thread("nester", |k| {
            assert_eq!(k.trigger_irq(10), Ok(Delivery::Handled));
        })
        .unwrap();
    bounded(5 * SEC, "nester", move || kt.join()).unwrap();
    wait_until(5 * SEC, "all nested IRQs", || {
        log.lock().unwrap().len() == expected.len()
    });
    assert_eq!(*log.lock().unwrap(), expected);
    shutdown(&k);
    assert_eq!(
        log.lock().unwrap().len(),
        expected.len(),
        "nothing ran twice"
    );
}

/// Invariant 5: a kernel thread that sleeps with IRQs disabled trips the
/// assertion (it does not hang); the runtime releases the CPU for it and
/// the kernel keeps working.
#[test]
fn kernel_thread_sleeping_with_irqs_disabled_trips_the_assertion() {
    let k = boot();
    let hits = counter_irq(&k, 15);
    let kt = k
        .kernel_thread("bad-sleeper", |k| {
            let _f = k.irq_save();
            k.msleep(1);
            unreachable!("slept with IRQs disabled");
        })
        .unwrap();
    let err = bounded(5 * SEC, "bad sleeper dies", move || kt.join()).expect_err("must panic");
    assert!(
        err.message.contains("scheduling while atomic")
            && err
                .message
                .contains("sleeping with IRQs disabled is forbidden"),
        "unexpected message: {}",
        err.message
    );
    // Same for a completion wait.
    let c = Arc::new(Completion::<StdHost>::new());
    let kt = k
        .kernel_thread("bad-waiter", move |k| {
            k.irq_disable();
            c.wait(k);
        })
        .unwrap();
    let err = bounded(5 * SEC, "bad waiter dies", move || kt.join()).expect_err("must panic");
    assert!(
        err.message
            .contains("wait_for_completion() with IRQs disabled"),
        "{}",
        err.message
    );
    // The kernel is still alive: IRQs flow, time advances.
    let j = k.jiffies();
    let k2 = k.clone();
    bounded(5 * SEC, "trigger", move || k2.trigger_irq(15).unwrap());
    wait_until(5 * SEC, "handler", || hits.load(Ordering::SeqCst) == 1);
    wait_until(5 * SEC, "jiffies advance", || k.jiffies() > j + 5);
    shutdown(&k);
}

/// Invariant 5 through the syscall entry: the panic reaches the host caller.
#[test]
#[should_panic(expected = "with IRQs disabled (Runtime invariant 5")]
fn syscall_sleeping_with_irqs_disabled_panics() {
    let k = boot_without_tick();
    let _ = k.syscall(|k| {
        let _f = k.irq_save();
        k.schedule_timeout(1);
    });
}

/// Invariant 5 in IRQ context: a handler may not sleep.
#[test]
fn handler_that_sleeps_trips_the_assertion() {
    let k = boot_without_tick();
    k.request_irq(16, |k, _| k.msleep(1)).unwrap();
    let k2 = k.clone();
    let r = bounded(5 * SEC, "trigger", move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| k2.trigger_irq(16)))
    });
    let p = r.expect_err("must panic");
    let msg = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap();
    assert!(msg.contains("in hard IRQ context"), "{msg}");
    // The borrowed CPU was given back.
    assert_eq!(k.cpu_holder(), CpuHolder::Free);
}

/// Invariant 6 at shutdown: every trigger that returned Ok is handled
/// exactly once; after shutdown triggers are refused with an error.
#[test]
fn shutdown_refuses_triggers_and_loses_none() {
    let k = boot();
    let hits = counter_irq(&k, 17);
    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut ts = Vec::new();
    for _ in 0..4 {
        let (k2, ok, stop) = (k.clone(), ok.clone(), stop.clone());
        ts.push(thread::spawn(move || {
            let mut refused = false;
            while !stop.load(Ordering::SeqCst) {
                match k2.trigger_irq(17) {
                    Ok(_) => {
                        assert!(!refused, "accepted after a refusal");
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(Error::ShutDown) => refused = true,
                    Err(e) => panic!("{e}"),
                }
            }
            refused
        }));
    }
    let kt = k
        .kernel_thread("worker", |k| {
            while !k.should_stop() {
                let f = k.irq_save();
                k.irq_restore(f);
                k.msleep(1);
            }
        })
        .unwrap();
    thread::sleep(Duration::from_millis(100));
    shutdown(&k);
    stop.store(true, Ordering::SeqCst);
    for t in ts {
        assert!(t.join().unwrap(), "every trigger thread saw the refusal");
    }
    kt.join().unwrap();
    assert!(ok.load(Ordering::SeqCst) > 0);
    assert_eq!(hits.load(Ordering::SeqCst), ok.load(Ordering::SeqCst));
    assert_eq!(k.trigger_irq(17), Err(Error::ShutDown));
    assert_eq!(k.syscall(|_| ()), Err(Error::ShutDown));
}

#[test]
fn registration_errors() {
    let k = boot_without_tick();
    assert_eq!(k.trigger_irq(20), Err(Error::NoHandler(20)));
    assert_eq!(k.trigger_irq(1000), Err(Error::InvalidIrq(1000)));
    assert_eq!(k.request_irq(0, |_, _| ()), Err(Error::InvalidIrq(0)));
    k.request_irq(20, |_, _| ()).unwrap();
    assert_eq!(k.request_irq(20, |_, _| ()), Err(Error::IrqBusy(20)));
    assert_eq!(k.trigger_irq(20), Ok(Delivery::Handled));
    k.free_irq(20).unwrap();
    assert_eq!(k.trigger_irq(20), Err(Error::NoHandler(20)));
    shutdown(&k);
}

/// Wait queues, completions with timeout and kernel timers.
#[test]
fn waits_timeouts_and_wait_queues() {
    let k = boot();
    let wq = Arc::new(vigil_lkl::WaitQueue::<StdHost>::new());
    let flag = Arc::new(AtomicBool::new(false));
    let (w, f) = (wq.clone(), flag.clone());
    let waiter = k
        .kernel_thread("wq-waiter", move |k| {
            let c = Completion::<StdHost>::new();
            let j = k.jiffies();
            assert!(!c.wait_timeout(k, 5), "nobody completes it");
            assert!(k.jiffies() >= j + 5, "timed out early");
            w.wait_event(k, || f.load(Ordering::SeqCst));
            assert!(!w.wait_event_timeout(k, || false, 3));
        })
        .unwrap();
    thread::sleep(Duration::from_millis(30));
    flag.store(true, Ordering::SeqCst);
    let w = wq.clone();
    bounded(5 * SEC, "wake", move || {
        // Spin until the waiter is queued, then wake it from kernel context.
        loop {
            if k_wake(&k, &w) {
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        k
    });
    bounded(5 * SEC, "waiter", move || waiter.join()).unwrap();

    fn k_wake(k: &K, w: &Arc<vigil_lkl::WaitQueue<StdHost>>) -> bool {
        k.syscall(|k| w.wake_up_all(k) > 0).unwrap()
    }
}
