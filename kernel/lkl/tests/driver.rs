//! An example driver in the shape of the USB case that broke LKL: requests
//! are submitted from kernel context, a fake device processes them on a
//! host "event thread" (as libusb's event loop would), and that thread posts
//! the completion interrupt into the kernel. The driver's IRQ handler
//! completes the waiting request. Submitters take the driver lock with
//! irq_save, so the event thread often triggers while a submitter has IRQs
//! off, and submitters sleep inside `schedule()` with their own flag off:
//! exactly the states that parked the IRQ forever under LKL's global flag.

mod common;

use common::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use vigil_lkl::{Completion, Kctx, StdHost};

const DEV_IRQ: u32 = 9;

/// A request block, like a URB.
struct Request {
    payload: u64,
    /// Written by the device.
    result: AtomicU64,
    done: Completion<StdHost>,
}

/// The fake device: a submission queue its event thread works through, and
/// a completion queue its interrupt handler empties.
#[derive(Default)]
struct FakeDevice {
    submitted: Mutex<VecDeque<Arc<Request>>>,
    doorbell: Condvar,
    completed: Mutex<VecDeque<Arc<Request>>>,
    stop: AtomicBool,
    triggers: AtomicU64,
}

impl FakeDevice {
    /// The host event thread: process, post completion, raise the IRQ.
    fn event_loop(&self, k: K) {
        loop {
            let req = {
                let mut q = self.submitted.lock().unwrap();
                loop {
                    if let Some(r) = q.pop_front() {
                        break r;
                    }
                    if self.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    q = self
                        .doorbell
                        .wait_timeout(q, Duration::from_millis(10))
                        .unwrap()
                        .0;
                }
            };
            req.result.store(req.payload * 2 + 1, Ordering::SeqCst);
            self.completed.lock().unwrap().push_back(req);
            k.trigger_irq(DEV_IRQ).expect("device IRQ refused");
            self.triggers.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The driver.
struct Driver {
    dev: Arc<FakeDevice>,
    completions: AtomicU64,
}

impl Driver {
    fn probe(k: &K, dev: Arc<FakeDevice>) -> Arc<Driver> {
        let drv = Arc::new(Driver {
            dev,
            completions: AtomicU64::new(0),
        });
        let d = drv.clone();
        k.request_irq(DEV_IRQ, move |k, _| d.interrupt(k)).unwrap();
        drv
    }

    /// IRQ handler: complete everything the device finished. One IRQ may
    /// find several requests, a later one none: that is fine.
    fn interrupt(&self, k: &Kctx<'_, StdHost>) {
        assert!(k.in_irq());
        while let Some(req) = self.dev.completed.lock().unwrap().pop_front() {
            self.completions.fetch_add(1, Ordering::Relaxed);
            req.done.complete(k);
        }
    }

    /// Submits with the driver lock taken irqsave, as a Linux driver would.
    fn submit(&self, k: &Kctx<'_, StdHost>, req: Arc<Request>) {
        let flags = k.irq_save();
        self.dev.submitted.lock().unwrap().push_back(req);
        self.dev.doorbell.notify_one();
        k.irq_restore(flags);
    }

    /// One synchronous transfer: submit, sleep until the IRQ completes it.
    fn transfer(&self, k: &Kctx<'_, StdHost>, payload: u64) -> u64 {
        let req = Arc::new(Request {
            payload,
            result: AtomicU64::new(0),
            done: Completion::new(),
        });
        self.submit(k, req.clone());
        // Bounded: 5 s of jiffies. If IRQs got stuck, jiffies would stop
        // too; the test's outer wall-clock bound catches that case.
        assert!(
            req.done.wait_timeout(k, 5_000),
            "request {payload} timed out"
        );
        req.result.load(Ordering::SeqCst)
    }
}

#[test]
fn example_driver_completes_100k_requests_from_the_event_thread() {
    const KTHREAD_CLIENTS: u64 = 2;
    const PER_KTHREAD: u64 = 40_000;
    const PER_HOST_CLIENT: u64 = 20_000;
    const TOTAL: u64 = KTHREAD_CLIENTS * PER_KTHREAD + PER_HOST_CLIENT;

    let k = boot();
    let dev = Arc::new(FakeDevice::default());
    let drv = Driver::probe(&k, dev.clone());
    let (d, k2) = (dev.clone(), k.clone());
    let event_thread = thread::Builder::new()
        .name("usb-events".into())
        .spawn(move || d.event_loop(k2))
        .unwrap();

    let t0 = Instant::now();
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..KTHREAD_CLIENTS {
        let (drv, ok) = (drv.clone(), ok.clone());
        clients.push(
            k.kernel_thread(&format!("client{c}"), move |k| {
                for i in 0..PER_KTHREAD {
                    let p = c << 32 | i;
                    assert_eq!(drv.transfer(k, p), p * 2 + 1);
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            })
            .unwrap(),
        );
    }
    // A host thread doing the same through the syscall entry.
    let (drv2, ok2, k3) = (drv.clone(), ok.clone(), k.clone());
    let host_client = thread::spawn(move || {
        for i in 0..PER_HOST_CLIENT {
            let p = 7 << 40 | i;
            let r = k3.syscall(|k| drv2.transfer(k, p)).unwrap();
            assert_eq!(r, p * 2 + 1);
            ok2.fetch_add(1, Ordering::Relaxed);
        }
    });

    for c in clients {
        bounded(
            Duration::from_secs(100),
            "kernel-thread client",
            move || c.join(),
        )
        .expect("client failed");
    }
    bounded(Duration::from_secs(100), "host client", move || {
        host_client.join()
    })
    .expect("host client failed");
    let elapsed = t0.elapsed();
    dev.stop.store(true, Ordering::SeqCst);
    event_thread.join().unwrap();
    shutdown(&k);

    eprintln!(
        "driver: {TOTAL} request/completion cycles in {elapsed:?} ({:.1} us/cycle); {} device IRQs; {:?}",
        elapsed.as_secs_f64() * 1e6 / TOTAL as f64,
        dev.triggers.load(Ordering::Relaxed),
        k.stats()
    );
    assert_eq!(ok.load(Ordering::SeqCst), TOTAL);
    assert_eq!(drv.completions.load(Ordering::SeqCst), TOTAL);
    assert_eq!(dev.triggers.load(Ordering::SeqCst), TOTAL);
    assert!(dev.completed.lock().unwrap().is_empty());
}
