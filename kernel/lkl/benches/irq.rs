//! IRQ delivery benchmark (not a test): trigger-to-handler latency and
//! triggers per second from 1 and 8 host threads, with the kernel idle and
//! with a kernel thread keeping the CPU busy (toggling irq_save/restore, so
//! host triggers pend and run at its restores).
//!
//! `cargo bench -p vigil-lkl` (release profile). Wall-clock figures on the
//! host: they depend on the machine and its load; compare runs on the same
//! machine only.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use vigil_lkl::{Config, Host, Kernel, StdHost};

const FIRST_LINE: u32 = 20;

struct Slot {
    seq: AtomicU64,
    at_ns: AtomicU64,
}

fn boot_with_lines(threads: usize) -> (Arc<Kernel<StdHost>>, Arc<Vec<Slot>>) {
    let k = Kernel::boot(StdHost, Config::default()).unwrap();
    let slots: Arc<Vec<Slot>> = Arc::new(
        (0..threads)
            .map(|_| Slot {
                seq: AtomicU64::new(0),
                at_ns: AtomicU64::new(0),
            })
            .collect(),
    );
    for i in 0..threads {
        let s = slots.clone();
        k.request_irq(FIRST_LINE + i as u32, move |k, _| {
            let now = k.kernel().host().time_ns();
            s[i].at_ns.store(now, Ordering::Release);
            s[i].seq.fetch_add(1, Ordering::AcqRel);
        })
        .unwrap();
    }
    (k, slots)
}

fn busy_kthread(k: &Arc<Kernel<StdHost>>) {
    k.kernel_thread("busy", |k| {
        while !k.should_stop() {
            let f = k.irq_save();
            for x in 0..200u64 {
                std::hint::black_box(x);
            }
            k.irq_restore(f);
            k.yield_now();
        }
    })
    .unwrap();
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Ping-pong: each host thread triggers its line and waits for its handler
/// before the next trigger. Latency = handler entry - trigger call.
fn latency(threads: usize, busy: bool, per_thread: u64) -> (u64, u64, u64) {
    let (k, slots) = boot_with_lines(threads);
    if busy {
        busy_kthread(&k);
    }
    let mut hs = Vec::new();
    for i in 0..threads {
        let (k, slots) = (k.clone(), slots.clone());
        hs.push(thread::spawn(move || {
            let mut lat = Vec::with_capacity(per_thread as usize);
            for n in 1..=per_thread {
                let t0 = k.host().time_ns();
                k.trigger_irq(FIRST_LINE + i as u32).unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut spins = 0u32;
                while slots[i].seq.load(Ordering::Acquire) < n {
                    spins += 1;
                    if spins > 64 {
                        thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                    assert!(Instant::now() < deadline, "IRQ not handled in 10 s");
                }
                lat.push(slots[i].at_ns.load(Ordering::Acquire).saturating_sub(t0));
            }
            lat
        }));
    }
    let mut all: Vec<u64> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
    k.shutdown(10_000_000_000).unwrap();
    all.sort_unstable();
    (
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.iter().sum::<u64>() / all.len() as u64,
    )
}

/// Fire and forget: `total` triggers split over the threads; time until
/// every one is handled.
fn throughput(threads: usize, busy: bool, total: u64) -> f64 {
    let (k, slots) = boot_with_lines(threads);
    if busy {
        busy_kthread(&k);
    }
    let per = total / threads as u64;
    let go = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut hs = Vec::new();
    for i in 0..threads {
        let (k, go) = (k.clone(), go.clone());
        hs.push(thread::spawn(move || {
            while !go.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            for _ in 0..per {
                k.trigger_irq(FIRST_LINE + i as u32).unwrap();
            }
        }));
    }
    go.store(true, Ordering::Release);
    for h in hs {
        h.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..threads).any(|i| slots[i].seq.load(Ordering::Acquire) < per) {
        assert!(Instant::now() < deadline, "backlog not drained in 60 s");
        thread::sleep(Duration::from_micros(100));
    }
    let secs = t0.elapsed().as_secs_f64();
    k.shutdown(10_000_000_000).unwrap();
    (per * threads as u64) as f64 / secs
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    println!(
        "vigil-lkl IRQ delivery (wall clock, {} CPUs)",
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>14}",
        "scenario", "p50 ns", "p99 ns", "mean ns", "triggers/s"
    );
    for busy in [false, true] {
        for threads in [1usize, 8] {
            let (p50, p99, mean) = latency(threads, busy, 20_000);
            let tps = throughput(threads, busy, 1_000_000);
            let name = format!(
                "{} host thread{}, kernel {}",
                threads,
                if threads == 1 { "" } else { "s" },
                if busy { "busy" } else { "idle" }
            );
            println!("{name:<34} {p50:>10} {p99:>10} {mean:>10} {tps:>14.0}");
        }
    }
}
