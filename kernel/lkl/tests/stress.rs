//! Invariant 6 under load: 8 host threads post 1,000,000 IRQs in total while
//! kernel threads toggle irq_save/irq_restore, trigger with IRQs off, yield
//! and sleep. Every trigger is handled exactly once, no handler runs inside
//! a kernel thread's IRQs-off section, and jiffies keep advancing
//! throughout.

mod common;

use common::*;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use vigil_lkl::Delivery;

const PRODUCERS: usize = 8;
const FIRST_LINE: u32 = 20;
const KTHREAD_LINE: u32 = 40;
const KTHREADS: usize = 3;

struct Shared {
    posted: Vec<AtomicU64>,
    handled: Vec<AtomicU64>,
    /// Set by a kernel thread between irq_save and irq_restore.
    in_critical: AtomicBool,
    violations: AtomicU64,
    first_violation: std::sync::Mutex<Option<String>>,
    kthread_posted: AtomicU64,
    kthread_handled: AtomicU64,
    toggles: AtomicU64,
    sleeps: AtomicU64,
    producers_done: AtomicBool,
}

impl Shared {
    fn violation(&self, what: String) {
        self.violations.fetch_add(1, Ordering::SeqCst);
        self.first_violation.lock().unwrap().get_or_insert(what);
    }
}

/// The acceptance case: a flood. The CPU is never free while it lasts, so
/// every host trigger pends and kernel threads drain at their restores.
#[test]
fn eight_host_threads_one_million_irqs_each_handled_exactly_once() {
    let stats = run(1_000_000, None);
    assert!(stats.irqs_pended > 0);
}

/// Paced producers: the CPU goes free between bursts, so host triggers
/// also take the free CPU and run handlers themselves, racing with kernel
/// threads' releases.
#[test]
fn eight_paced_host_threads_mix_direct_and_pended_delivery() {
    let stats = run(200_000, Some(8));
    assert!(
        stats.irqs_direct > 0,
        "no trigger found the CPU free: {stats:?}"
    );
    assert!(stats.irqs_pended > 0, "no trigger pended: {stats:?}");
}

fn run(total: u64, pace_every: Option<u64>) -> vigil_lkl::Stats {
    #[allow(non_snake_case)]
    let PER_PRODUCER = total / PRODUCERS as u64;
    #[allow(non_snake_case)]
    let TOTAL = PER_PRODUCER * PRODUCERS as u64;
    let k = boot();
    let s = Arc::new(Shared {
        posted: (0..PRODUCERS).map(|_| AtomicU64::new(0)).collect(),
        handled: (0..PRODUCERS).map(|_| AtomicU64::new(0)).collect(),
        in_critical: AtomicBool::new(false),
        violations: AtomicU64::new(0),
        first_violation: Default::default(),
        kthread_posted: AtomicU64::new(0),
        kthread_handled: AtomicU64::new(0),
        toggles: AtomicU64::new(0),
        sleeps: AtomicU64::new(0),
        producers_done: AtomicBool::new(false),
    });
    for i in 0..PRODUCERS {
        let s = s.clone();
        k.request_irq(FIRST_LINE + i as u32, move |k, _| {
            // Runtime invariant 4, seen from outside.
            if s.in_critical.load(Ordering::SeqCst) {
                s.violation(format!("line {i}: handler ran inside an IRQs-off section"));
            }
            if !k.in_irq() {
                s.violation(format!("line {i}: handler not in IRQ context"));
            }
            // Exactly once: never more handled than posted, at any moment.
            let h = s.handled[i].fetch_add(1, Ordering::SeqCst) + 1;
            if h > s.posted[i].load(Ordering::SeqCst) {
                s.violation(format!("line {i}: handled {h} > posted"));
            }
        })
        .unwrap();
    }
    let s2 = s.clone();
    k.request_irq(KTHREAD_LINE, move |_, _| {
        if s2.in_critical.load(Ordering::SeqCst) {
            s2.violation("kthread line: handler inside IRQs-off section".into());
        }
        s2.kthread_handled.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();

    let mut kts = Vec::new();
    for t in 0..KTHREADS {
        let s = s.clone();
        kts.push(
            k.kernel_thread(&format!("toggler{t}"), move |k| {
                let mut n: u64 = 0;
                while !k.should_stop() {
                    let f = k.irq_save();
                    s.in_critical.store(true, Ordering::SeqCst);
                    for x in 0..32u64 {
                        black_box(x);
                    }
                    if n.is_multiple_of(4) {
                        // Runtime invariant 3: pends until the restore below.
                        s.kthread_posted.fetch_add(1, Ordering::SeqCst);
                        match k.trigger_irq(KTHREAD_LINE) {
                            Ok(Delivery::Pended) => {}
                            other => s.violation(format!("trigger with IRQs off gave {other:?}")),
                        }
                    }
                    s.in_critical.store(false, Ordering::SeqCst);
                    k.irq_restore(f);
                    s.toggles.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                    if n.is_multiple_of(8) {
                        k.msleep(1);
                        s.sleeps.fetch_add(1, Ordering::Relaxed);
                    } else if n.is_multiple_of(3) {
                        k.yield_now();
                    }
                }
            })
            .unwrap(),
        );
    }

    // Jiffies monitor: the longest wall-clock stretch without a new jiffy
    // while the producers run.
    let (k2, s2) = (k.clone(), s.clone());
    let monitor = thread::spawn(move || {
        let mut last = k2.jiffies();
        let mut last_change = Instant::now();
        let mut max_gap = Duration::ZERO;
        let mut samples = 0u64;
        while !s2.producers_done.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(2));
            let j = k2.jiffies();
            let now = Instant::now();
            if j != last {
                assert!(j > last, "jiffies went backwards");
                last = j;
                last_change = now;
            }
            max_gap = max_gap.max(now - last_change);
            samples += 1;
        }
        (max_gap, samples)
    });

    let t0 = Instant::now();
    let j0 = k.jiffies();
    let toggles0 = s.toggles.load(Ordering::SeqCst);
    let mut producers = Vec::new();
    for i in 0..PRODUCERS {
        let (k, s) = (k.clone(), s.clone());
        producers.push(thread::spawn(move || {
            let line = FIRST_LINE + i as u32;
            for n in 0..PER_PRODUCER {
                s.posted[i].fetch_add(1, Ordering::SeqCst);
                k.trigger_irq(line).expect("trigger before shutdown");
                if pace_every.is_some_and(|p| n % p == 0) {
                    thread::sleep(Duration::from_micros(50));
                }
            }
        }));
    }
    for p in producers {
        let r = bounded(Duration::from_secs(100), "producer", move || p.join());
        r.expect("producer panicked");
    }
    s.producers_done.store(true, Ordering::SeqCst);
    let elapsed = t0.elapsed();
    let (max_gap, samples) = monitor.join().unwrap();
    let toggles_during = s.toggles.load(Ordering::SeqCst) - toggles0;
    let jiffies_during = k.jiffies() - j0;

    // Everything posted gets handled (the tick keeps the CPU changing hands,
    // so the backlog drains even with no producer left).
    wait_until(Duration::from_secs(60), "backlog drained", || {
        (0..PRODUCERS).all(|i| s.handled[i].load(Ordering::SeqCst) == PER_PRODUCER)
    });
    shutdown(&k);
    for kt in kts {
        kt.join().expect("kernel thread");
    }
    eprintln!(
        "stress (pace {pace_every:?}): {TOTAL} triggers in {elapsed:?}; jiffies +{jiffies_during}, longest jiffy gap {max_gap:?} over {samples} samples; \
         kernel threads: {toggles_during} toggles during the flood, {} sleeps; stats {:?}",
        s.sleeps.load(Ordering::SeqCst),
        k.stats()
    );
    assert_eq!(
        s.violations.load(Ordering::SeqCst),
        0,
        "first violation: {:?}",
        s.first_violation.lock().unwrap()
    );
    for i in 0..PRODUCERS {
        assert_eq!(s.posted[i].load(Ordering::SeqCst), PER_PRODUCER);
        assert_eq!(
            s.handled[i].load(Ordering::SeqCst),
            PER_PRODUCER,
            "line {i}"
        );
    }
    assert_eq!(
        s.kthread_handled.load(Ordering::SeqCst),
        s.kthread_posted.load(Ordering::SeqCst)
    );
    assert!(s.kthread_posted.load(Ordering::SeqCst) > 0);
    assert!(samples > 0);
    assert!(
        max_gap < Duration::from_secs(1),
        "jiffies stalled for {max_gap:?} during the flood"
    );
    let expected = elapsed.as_millis() as u64; // HZ = 1000
    assert!(
        jiffies_during * 2 >= expected,
        "jiffies advanced {jiffies_during} over {expected} ms"
    );
    assert!(
        toggles_during > 0,
        "kernel threads starved during the flood"
    );
    assert!(k.stats().irqs_handled >= TOTAL);
    k.stats()
}
