//! Concurrency tests (shuttle) of the interleavings listed in the vITS
//! acceptance criteria. They drive the real vGIC/vITS code: its locks
//! (`vigil_vgic::sync::Mutex`) call a scheduling hook before every
//! acquisition, which these tests point at shuttle, so shuttle preempts the
//! threads at every lock of the real implementation.

mod common;

use std::sync::Arc;

use common::*;
use shuttle::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use shuttle::thread;
use vigil_vgic::sim::SimCpu;
use vigil_vits::{Command, TranslateError};

const ITERS: usize = 300;

/// Run `f` under shuttle (see `common::explore`).
fn explore(f: impl Fn() + Send + Sync + 'static) {
    common::explore(ITERS, f);
}

fn wait(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        thread::yield_now();
    }
}

/// Enter, acknowledge and EOI everything (yielding in between), exit.
fn run_once(c: &mut SimCpu, r: &Rig) -> Vec<u32> {
    let mut got = Vec::new();
    c.enter(&r.vgic);
    while let Some(i) = c.ack() {
        thread::yield_now();
        got.push(i);
        c.eoi(i);
    }
    c.exit(&r.vgic);
    got
}

fn assert_clean(r: &Rig) {
    let st = r.vgic.lock();
    assert_eq!(st.anomalies(), 0, "no stale state was ever used");
    for v in 0..st.nr_vcpus() {
        assert_eq!(st.list_len(v), 0, "vCPU {v}: nothing left on its list");
    }
}

/// (1) Events injected on one thread while another runs MAPTI/DISCARD on
/// the same event in a loop: no injection after DISCARD returns, no use of
/// freed state.
#[test]
fn inject_vs_mapti_discard_loop() {
    explore(|| {
        let r = Arc::new(Rig::new(1));
        r.mapd(1, 3);
        // phase = 3 * round + {1: mapping, 2: mapped, 3: discarded}
        let phase = Arc::new(AtomicU32::new(0));
        let (r2, p2) = (r.clone(), phase.clone());
        let cmd = thread::spawn(move || {
            for round in 0..3 {
                p2.store(3 * round + 1, Ordering::SeqCst);
                r2.mapti(1, 0, LPI0, 0);
                p2.store(3 * round + 2, Ordering::SeqCst);
                r2.discard(1, 0);
                p2.store(3 * round + 3, Ordering::SeqCst);
            }
        });
        let (r3, p3) = (r.clone(), phase.clone());
        let inj = thread::spawn(move || {
            let mut ok = 0;
            for _ in 0..6 {
                let before = p3.load(Ordering::SeqCst);
                let res = r3.its.translate(1, 0);
                let after = p3.load(Ordering::SeqCst);
                if before == after && before % 3 == 0 {
                    assert_eq!(
                        res,
                        Err(TranslateError::EventUnmapped),
                        "injected after DISCARD returned"
                    );
                }
                ok += u32::from(res.is_ok());
            }
            ok
        });
        let r4 = r.clone();
        let vcpu = thread::spawn(move || {
            let mut c = SimCpu::new(0, 4);
            (0..3).map(|_| run_once(&mut c, &r4).len()).sum::<usize>()
        });
        cmd.join().unwrap();
        let ok = inj.join().unwrap();
        let delivered = vcpu.join().unwrap();
        assert!(delivered as u32 <= ok);
        assert!(r.drain(0).is_empty(), "nothing survives the last DISCARD");
        assert_eq!(r.its.translate(1, 0), Err(TranslateError::EventUnmapped));
        assert_eq!(r.vgic.lock().lpi_count(), 0, "per-LPI state freed");
        assert_clean(&r);
    });
}

/// (1b) The same, with the vINTID handed to another event in between:
/// an injection of the discarded event must never make the new mapping
/// pending (the route is read and used as a unit, vITS invariants 2 and 5).
#[test]
fn inject_vs_discard_mapti_reuse_loop() {
    explore(|| {
        let r = Arc::new(Rig::new(1));
        r.mapd(1, 3);
        let r2 = r.clone();
        let inj = thread::spawn(move || {
            for _ in 0..8 {
                let _ = r2.its.translate(1, 0);
            }
        });
        for _ in 0..2 {
            r.mapti(1, 0, LPI0, 0);
            r.discard(1, 0);
            r.mapti(1, 1, LPI0, 0);
            // Only event 0 is ever injected, and it is unmapped now.
            assert!(!r.vgic.lock().lpi_pending(LPI0), "new mapping born pending");
            thread::yield_now();
            assert!(!r.vgic.lock().lpi_pending(LPI0), "stale route injected");
            r.discard(1, 1);
        }
        inj.join().unwrap();
        assert_eq!(r.vgic.lock().lpi_count(), 0);
        assert!(r.drain(0).is_empty());
        assert_clean(&r);
    });
}

/// (2) DISCARD while the vLPI sits in an LR, then ack and EOI.
#[test]
fn discard_while_in_lr_then_ack_eoi() {
    explore(|| {
        let r = Arc::new(Rig::new(1));
        r.mapd(1, 3);
        r.mapti(1, 0, LPI0, 0);
        r.int(1, 0);
        let mut c = SimCpu::new(0, 4);
        c.enter(&r.vgic);
        let done = Arc::new(AtomicBool::new(false));
        let (r2, d2) = (r.clone(), done.clone());
        let cmd = thread::spawn(move || {
            r2.discard(1, 0);
            d2.store(true, Ordering::SeqCst);
        });
        thread::yield_now();
        let took = c.ack();
        thread::yield_now();
        if let Some(i) = took {
            c.eoi(i);
        }
        thread::yield_now();
        c.exit(&r.vgic);
        cmd.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        // Delivered at most once (it was in the LR before DISCARD); never
        // again afterwards.
        assert!(r.drain(0).is_empty());
        assert_eq!(r.vgic.lock().lpi_count(), 0);
        assert_clean(&r);
    });
}

/// (3) DISCARD; MAPTI reusing the vINTID while the old one is pending in an
/// LR, then INT: the new one is delivered exactly once, never in two LRs
/// (SimCpu::enter checks every flush).
#[test]
fn discard_mapti_reuse_then_int() {
    for ack_old in [false, true] {
        explore(move || {
            let r = Arc::new(Rig::new(1));
            r.mapd(1, 3);
            r.mapti(1, 0, LPI0, 0);
            r.int(1, 0);
            let mut c = SimCpu::new(0, 4);
            c.enter(&r.vgic);
            let done = Arc::new(AtomicBool::new(false));
            let (r2, d2) = (r.clone(), done.clone());
            let cmd = thread::spawn(move || {
                r2.discard(1, 0);
                r2.mapti(1, 1, LPI0, 0);
                r2.int(1, 1);
                d2.store(true, Ordering::SeqCst);
            });
            let mut got = Vec::new();
            if ack_old {
                thread::yield_now();
                got.extend(c.ack());
                thread::yield_now();
                c.eoi(LPI0);
            }
            thread::yield_now();
            c.exit(&r.vgic);
            wait(&done);
            cmd.join().unwrap();
            for _ in 0..3 {
                got.extend(run_once(&mut c, &r));
            }
            let want = if ack_old { 2 } else { 1 };
            assert_eq!(got, vec![LPI0; want], "ack_old={ack_old}");
            assert_eq!(r.vgic.lock().lpi_count(), 1);
            assert_clean(&r);
        });
    }
}

/// (4) MAPD(V=0) with LPIs in the LRs of several vCPUs and injections in
/// flight, then MAPD(V=1) with another ITT size.
#[test]
fn mapd_unmap_with_lrs_and_injections_then_remap() {
    explore(|| {
        let r = Arc::new(Rig::new(2));
        r.mapd(1, 3);
        for e in 0..4 {
            r.mapti(1, e, LPI0 + e, (e % 2) as u16);
            r.int(1, e);
        }
        let mut cpus: Vec<SimCpu> = (0..2).map(|v| SimCpu::new(v, 4)).collect();
        for c in cpus.iter_mut() {
            c.enter(&r.vgic);
        }
        // 0 before, 1 while unmapping, 2 unmapped, 3 remapping, 4 done
        let phase = Arc::new(AtomicU32::new(0));
        let (r2, p2) = (r.clone(), phase.clone());
        let cmd = thread::spawn(move || {
            p2.store(1, Ordering::SeqCst);
            r2.cmd(Command::Mapd {
                device: 1,
                size: 0,
                itt_addr: 0,
                valid: false,
            });
            p2.store(2, Ordering::SeqCst);
            thread::yield_now();
            p2.store(3, Ordering::SeqCst);
            r2.mapd(1, 1); // 2 EventID bits now
            r2.mapti(1, 2, LPI0 + 2, 0);
            r2.mapti(1, 5, LPI0 + 5, 0); // out of range for the new ITT
            p2.store(4, Ordering::SeqCst);
        });
        let (r3, p3) = (r.clone(), phase.clone());
        let inj = thread::spawn(move || {
            for e in [0, 1, 2, 3, 2] {
                let before = p3.load(Ordering::SeqCst);
                let res = r3.its.translate(1, e);
                let after = p3.load(Ordering::SeqCst);
                if before == 2 && after == 2 {
                    assert_eq!(res, Err(TranslateError::DeviceUnmapped));
                }
                if before >= 4 && e != 2 {
                    assert!(res.is_err());
                }
            }
        });
        let done = phase.clone();
        let vcpus: Vec<_> = cpus
            .into_iter()
            .map(|mut c| {
                let (r, done) = (r.clone(), done.clone());
                thread::spawn(move || {
                    thread::yield_now();
                    if let Some(i) = c.ack() {
                        thread::yield_now();
                        c.eoi(i);
                    }
                    c.exit(&r.vgic);
                    while done.load(Ordering::SeqCst) != 4 {
                        thread::yield_now();
                    }
                    c
                })
            })
            .collect();
        cmd.join().unwrap();
        inj.join().unwrap();
        for h in vcpus {
            let mut c = h.join().unwrap();
            let after: Vec<u32> = (0..3).flat_map(|_| run_once(&mut c, &r)).collect();
            // Only the new mapping of event 2 can still be delivered.
            assert!(
                after.iter().all(|&i| i == LPI0 + 2),
                "vCPU {}: {after:?}",
                c.v
            );
            assert!(after.len() <= 1);
        }
        assert_eq!(r.its.lookup(1, 2), Some((LPI0 + 2, 0)));
        assert_eq!(r.its.lookup(1, 0), None);
        assert_eq!(r.its.lookup(1, 5), None);
        assert_eq!(r.vgic.lock().lpi_count(), 1);
        assert_clean(&r);
    });
}

/// (5) INT racing MOVI: delivered exactly once, on the old or the new vCPU.
#[test]
fn int_racing_movi() {
    for via_command in [false, true] {
        explore(move || {
            let r = Arc::new(Rig::new(2));
            r.mapd(1, 3);
            r.mapti(1, 0, LPI0, 0);
            let r2 = r.clone();
            let int = thread::spawn(move || {
                if via_command {
                    r2.int(1, 0);
                } else {
                    r2.its.translate(1, 0).unwrap();
                }
            });
            let r3 = r.clone();
            let movi = thread::spawn(move || {
                r3.cmd(Command::Movi {
                    device: 1,
                    event: 0,
                    icid: 1,
                })
            });
            let vcpus: Vec<_> = (0..2)
                .map(|v| {
                    let r = r.clone();
                    thread::spawn(move || {
                        let mut c = SimCpu::new(v, 4);
                        let got: Vec<u32> = (0..2).flat_map(|_| run_once(&mut c, &r)).collect();
                        (c, got)
                    })
                })
                .collect();
            int.join().unwrap();
            movi.join().unwrap();
            let mut total = 0;
            for h in vcpus {
                let (mut c, got) = h.join().unwrap();
                let more: Vec<u32> = (0..2).flat_map(|_| run_once(&mut c, &r)).collect();
                total += got.len() + more.len();
            }
            assert_eq!(total, 1, "exactly once");
            assert_clean(&r);
        });
    }
}

/// (6) More pending LPIs than LRs, then DISCARD of one still queued.
#[test]
fn discard_of_queued_lpi_with_full_lrs() {
    explore(|| {
        let r = Arc::new(Rig::new(1));
        r.mapd(1, 3);
        for e in 0..8u32 {
            r.set_prop(LPI0 + e, ((e as u8) << 4) | 1);
            r.mapti(1, e, LPI0 + e, 0);
            r.int(1, e);
        }
        let mut c = SimCpu::new(0, 4);
        c.enter(&r.vgic);
        let done = Arc::new(AtomicBool::new(false));
        let (r2, d2) = (r.clone(), done.clone());
        let cmd = thread::spawn(move || {
            r2.discard(1, 6);
            d2.store(true, Ordering::SeqCst);
        });
        let mut got = Vec::new();
        while let Some(i) = c.ack() {
            thread::yield_now();
            got.push(i);
            c.eoi(i);
        }
        c.exit(&r.vgic);
        wait(&done);
        cmd.join().unwrap();
        for _ in 0..4 {
            got.extend(run_once(&mut c, &r));
        }
        let want: Vec<u32> = [0, 1, 2, 3, 4, 5, 7].iter().map(|e| LPI0 + e).collect();
        assert_eq!(
            got, want,
            "each once, in priority order, the discarded one never"
        );
        assert_eq!(r.vgic.lock().lpi_count(), 7);
        assert_clean(&r);
    });
}

/// MOVALL racing device injections and both vCPUs running: every raised
/// LPI is delivered exactly once, on either redistributor.
#[test]
fn movall_racing_injections() {
    explore(|| {
        let r = Arc::new(Rig::new(2));
        r.mapd(1, 3);
        for e in 0..3 {
            r.mapti(1, e, LPI0 + e, 0);
        }
        let r2 = r.clone();
        let inj = thread::spawn(move || {
            for e in 0..3 {
                r2.its.translate(1, e).unwrap();
            }
        });
        let r3 = r.clone();
        let mv = thread::spawn(move || {
            r3.cmd(Command::Movall {
                rdbase1: 0,
                rdbase2: 1,
            })
        });
        let vcpus: Vec<_> = (0..2)
            .map(|v| {
                let r = r.clone();
                thread::spawn(move || {
                    let mut c = SimCpu::new(v, 4);
                    let got: Vec<u32> = (0..2).flat_map(|_| run_once(&mut c, &r)).collect();
                    (c, got)
                })
            })
            .collect();
        inj.join().unwrap();
        mv.join().unwrap();
        let mut all = Vec::new();
        for h in vcpus {
            let (mut c, got) = h.join().unwrap();
            all.extend(got);
            all.extend((0..2).flat_map(|_| run_once(&mut c, &r)));
        }
        all.sort();
        assert_eq!(all, vec![LPI0, LPI0 + 1, LPI0 + 2]);
        assert_clean(&r);
    });
}

/// vGIC core: four vCPUs broadcast distinct SGIs (IRM) while all of them
/// run flush/fold loops; each vCPU takes every other vCPU's SGI exactly
/// once and never its own.
#[test]
fn sgi_broadcast_all_to_all() {
    explore(|| {
        let r = Arc::new(Rig::new(4));
        for v in 0..4u64 {
            r.vgic.gicr_write(
                v * vigil_vgic::GICR_STRIDE + 0x1_0100,
                4,
                0xf,
                &vigil_vgic::NoMemory,
            );
        }
        let hs: Vec<_> = (0..4)
            .map(|v| {
                let r = r.clone();
                thread::spawn(move || {
                    let mut c = SimCpu::new(v, 4);
                    let mut got = run_once(&mut c, &r);
                    r.vgic.send_sgi(v, ((v as u64) << 24) | (1 << 40), true);
                    got.extend(run_once(&mut c, &r));
                    (c, got)
                })
            })
            .collect();
        let done: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        for (mut c, mut got) in done {
            got.extend((0..2).flat_map(|_| run_once(&mut c, &r)));
            got.sort();
            let want: Vec<u32> = (0..4).filter(|&s| s != c.v as u32).collect();
            assert_eq!(got, want, "vCPU {}", c.v);
        }
        assert_clean(&r);
    });
}
