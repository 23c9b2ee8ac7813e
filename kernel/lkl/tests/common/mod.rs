//! Helpers shared by the host tests: every wait is bounded and fails the
//! test instead of hanging it.
#![allow(dead_code)]

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use vigil_lkl::{Config, Kernel, StdHost};

pub type K = Arc<Kernel<StdHost>>;

pub fn boot() -> K {
    Kernel::boot(StdHost, Config::default()).expect("boot")
}

pub fn boot_without_tick() -> K {
    Kernel::boot(
        StdHost,
        Config {
            tick: false,
            ..Config::default()
        },
    )
    .expect("boot")
}

/// Polls `cond` until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        thread::sleep(Duration::from_micros(200));
    }
}

/// Runs `f` on its own thread and returns its result, failing the test if
/// it does not finish within `timeout` (the thread is abandoned) or panics.
pub fn bounded<R: Send + 'static>(
    timeout: Duration,
    what: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let (tx, rx) = mpsc::channel();
    let h = thread::Builder::new()
        .name(format!("bounded: {what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    match rx.recv_timeout(timeout) {
        Ok(r) => {
            h.join().unwrap();
            r
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("timed out after {timeout:?}: {what}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!(),
        },
    }
}

/// Shuts the kernel down within 10 s and checks nothing was left pending.
pub fn shutdown(k: &K) {
    let k2 = k.clone();
    bounded(Duration::from_secs(20), "kernel shutdown", move || {
        k2.shutdown(10_000_000_000).expect("shutdown")
    });
    assert_eq!(k.pending_irqs(), 0);
}
