//! The command queue in slices (issue 14, item 3): one call (a CWRITER
//! write, or `Vits::resume` at a vCPU entry) does at most `slice` units of
//! work, a command that walks mappings stops midway and resumes where it
//! stopped, CREADR shows the progress and commands complete in order.

mod common;

use common::*;
use vigil_vits::{Command, TranslateError, VitsConfig};

const SLICE: u32 = 8;

fn rig(n: usize) -> Rig {
    Rig::with(
        n,
        VitsConfig {
            slice: Some(SLICE),
            ..VitsConfig::default()
        },
    )
}

/// Resume until the queue is done; how many calls it took.
fn finish(r: &Rig) -> usize {
    let mut calls = 0;
    while r.its.has_unfinished_commands() {
        r.its.resume(&*r.mem);
        calls += 1;
        assert!(calls < 10_000, "the queue never finishes");
    }
    calls
}

fn mapti_all(r: &Rig, device: u32, n: u32, icid: u16) {
    for e in 0..n {
        r.mapti(device, e, LPI0 + device * 256 + e, icid);
        finish(r);
    }
}

#[test]
fn a_long_queue_runs_a_slice_per_call_in_order() {
    let r = rig(1);
    finish(&r);
    r.mapd(1, 5);
    finish(&r);
    let start = r.creadr();
    let cmds: Vec<Command> = (0..20)
        .map(|e| Command::Mapti {
            device: 1,
            event: e,
            intid: LPI0 + e,
            icid: 0,
        })
        .chain([Command::Sync { rdbase: 0 }])
        .collect();
    r.cmds(&cmds);
    assert_eq!(r.creadr(), start + 32 * u64::from(SLICE), "one slice ran");
    assert!(r.its.has_unfinished_commands());
    // Only the first slice's events are mapped so far: order is kept.
    assert!(r.its.translate(1, SLICE - 1).is_ok());
    assert_eq!(
        r.its.translate(1, SLICE),
        Err(TranslateError::EventUnmapped)
    );
    r.its.resume(&*r.mem);
    assert_eq!(r.creadr(), start + 32 * 2 * u64::from(SLICE));
    finish(&r);
    assert_eq!(r.creadr(), start + 32 * 21, "every command and the SYNC");
    assert!(r.its.translate(1, 19).is_ok());
}

#[test]
fn invall_walks_in_slices_and_reloads_every_configuration() {
    let r = rig(1);
    finish(&r);
    r.mapd(1, 6);
    finish(&r);
    // 40 LPIs, disabled in the property table when mapped, then made
    // pending: none can be delivered.
    for e in 0..40 {
        r.set_prop(LPI0 + 256 + e, 0xa0);
    }
    mapti_all(&r, 1, 40, 0);
    for e in 0..40 {
        r.int(1, e);
        finish(&r);
    }
    assert!(r.drain(0).is_empty(), "disabled LPIs are not delivered");
    for e in 0..40 {
        r.set_prop(LPI0 + 256 + e, 0xa1);
    }
    let at = r.creadr();
    r.cmd(Command::Invall { icid: 0 });
    assert_eq!(r.creadr(), at, "CREADR stays on an INVALL still walking");
    let calls = finish(&r);
    assert_eq!(calls, 4, "40 mappings in slices of 8: 5 calls in all");
    assert_eq!(r.creadr(), at + 32);
    let mut got = r.drain(0);
    got.sort_unstable();
    let want: Vec<u32> = (0..40).map(|e| LPI0 + 256 + e).collect();
    assert_eq!(got, want, "every configuration reloaded, once");
}

#[test]
fn mapd_unmap_drops_the_routes_at_once_and_frees_in_slices() {
    let r = rig(1);
    finish(&r);
    r.mapd(1, 6);
    finish(&r);
    mapti_all(&r, 1, 30, 0);
    assert_eq!(r.vgic.lock().lpi_count(), 30);
    let at = r.creadr();
    r.cmd(Command::Mapd {
        device: 1,
        size: 6,
        itt_addr: 0,
        valid: false,
    });
    // The route is gone from the first slice on (vITS invariant 2)...
    assert_eq!(r.its.translate(1, 0), Err(TranslateError::DeviceUnmapped));
    assert_eq!(r.creadr(), at, "...but the command is not complete");
    assert!(r.vgic.lock().lpi_count() > 0);
    finish(&r);
    assert_eq!(r.creadr(), at + 32);
    assert_eq!(r.vgic.lock().lpi_count(), 0, "every mapping freed");
}

#[test]
fn mapc_retargeting_and_movall_walk_in_slices() {
    let r = rig(2);
    finish(&r);
    r.mapd(1, 6);
    finish(&r);
    mapti_all(&r, 1, 25, 0);
    let at = r.creadr();
    r.cmd(Command::Mapc {
        icid: 0,
        rdbase: 1,
        valid: true,
    });
    assert_eq!(r.creadr(), at);
    finish(&r);
    assert_eq!(r.creadr(), at + 32);
    for e in 0..25 {
        assert_eq!(r.vgic.lock().lpi_target(LPI0 + 256 + e), Some(1));
    }
    r.cmd(Command::Movall {
        rdbase1: 1,
        rdbase2: 0,
    });
    finish(&r);
    for e in 0..25 {
        assert_eq!(r.vgic.lock().lpi_target(LPI0 + 256 + e), Some(0));
    }
    // A new INT goes where collection 0 points (vCPU 1; MOVALL moves
    // LPIs, not collections).
    r.int(1, 3);
    finish(&r);
    assert_eq!(r.drain(1), vec![LPI0 + 256 + 3]);
}

#[test]
fn a_reset_drops_a_walk_in_progress() {
    let r = rig(1);
    finish(&r);
    r.mapd(1, 6);
    finish(&r);
    mapti_all(&r, 1, 30, 0);
    r.cmd(Command::Invall { icid: 0 });
    assert!(r.its.has_unfinished_commands());
    r.its.reset();
    assert!(!r.its.has_unfinished_commands());
    assert_eq!(r.creadr(), 0);
}
