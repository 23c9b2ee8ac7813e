//! Every command's effect, bit-exact decoding, the register frame, the
//! error policy, two-level device tables and the LPI tables.

mod common;

use common::*;
use std::sync::atomic::Ordering;
use vigil_vgic::sim::SimCpu;
use vigil_vgic::GICR_STRIDE;
use vigil_vits::{CmdError, Command, TranslateError, GITS_TRANSLATER, VITS_IIDR};

// ---- decoding ----

#[test]
fn encoding_is_bit_exact() {
    let c = Command::Mapd {
        device: 0xdead_beef,
        size: 0x13,
        itt_addr: 0x000f_1234_5678_9a00,
        valid: true,
    };
    assert_eq!(
        c.encode(),
        [0xdead_beef_0000_0008, 0x13, 0x800f_1234_5678_9a00, 0]
    );
    let c = Command::Mapti {
        device: 7,
        event: 0x1234_5678,
        intid: 0x2345,
        icid: 0xabcd,
    };
    assert_eq!(c.encode(), [0x7_0000_000a, 0x2345_1234_5678, 0xabcd, 0]);
    let c = Command::Mapc {
        icid: 3,
        rdbase: 0xa_bcde_f012,
        valid: true,
    };
    assert_eq!(c.encode(), [0x09, 0, 0x800a_bcde_f012_0003, 0]);
    let c = Command::Movall {
        rdbase1: 1,
        rdbase2: 2,
    };
    assert_eq!(c.encode(), [0x0e, 0, 0x1_0000, 0x2_0000]);
    assert_eq!(Command::Sync { rdbase: 5 }.encode(), [0x05, 0, 0x5_0000, 0]);
    assert_eq!(Command::Invall { icid: 9 }.encode(), [0x0d, 0, 9, 0]);
    for (op, c) in [
        (
            0x01,
            Command::Movi {
                device: 1,
                event: 2,
                icid: 3,
            },
        ),
        (
            0x03,
            Command::Int {
                device: 1,
                event: 2,
            },
        ),
        (
            0x04,
            Command::Clear {
                device: 1,
                event: 2,
            },
        ),
        (
            0x0b,
            Command::Mapi {
                device: 1,
                event: 2,
                icid: 3,
            },
        ),
        (
            0x0c,
            Command::Inv {
                device: 1,
                event: 2,
            },
        ),
        (
            0x0f,
            Command::Discard {
                device: 1,
                event: 2,
            },
        ),
    ] {
        let e = c.encode();
        assert_eq!(e[0], op | (1 << 32));
        assert_eq!(e[1], 2);
        assert_eq!(Command::decode(e), Ok(c));
    }
}

#[test]
fn decoding_ignores_reserved_bits() {
    // MAPD with junk in RES0 bits: DW1[63:5], DW2[62:52] and [7:0], DW3.
    let dw = [
        0x1234_0000_ff08,
        0xffff_ffff_ffff_ffe5,
        0x7ff0_0000_4000_01ff,
        !0,
    ];
    assert_eq!(
        Command::decode(dw),
        Ok(Command::Mapd {
            device: 0x1234,
            size: 5,
            itt_addr: 0x4000_0100,
            valid: false,
        })
    );
    // DW0[31:8] is RES0 too: the opcode is DW0[7:0] only.
    let dw = [0xffff_ff03, 4, 0, 0];
    assert_eq!(
        Command::decode(dw),
        Ok(Command::Int {
            device: 0,
            event: 4
        })
    );
    // MAPC RDbase is DW2[51:16].
    let dw = [0x09, 0, 0xfff0_0000_0001_0002, 0];
    assert_eq!(
        Command::decode(dw),
        Ok(Command::Mapc {
            icid: 2,
            rdbase: 1,
            valid: true
        })
    );
    assert_eq!(
        Command::decode([0x29, 0, 0, 0]),
        Err(0x29),
        "VMAPP is not implemented"
    );
    assert_eq!(Command::decode([0x00, 0, 0, 0]), Err(0));
}

// ---- register frame ----

#[test]
fn register_frame() {
    let r = Rig::bare(2);
    let m = &*r.mem;
    assert_eq!(r.its.mmio_read(0, 4), 1 << 31, "disabled and quiescent");
    assert_eq!(r.its.mmio_read(4, 4), u64::from(VITS_IIDR));
    assert_eq!(r.its.mmio_read(0xffe8, 4), 0x3b);
    let typer = r.its.mmio_read(8, 8);
    assert_eq!(typer & 1, 1, "Physical");
    assert_eq!((typer >> 4) & 0xf, 7, "ITT_entry_size 8 bytes");
    assert_eq!((typer >> 8) & 0x1f, 15, "IDbits");
    assert_eq!((typer >> 13) & 0x1f, 15, "Devbits");
    assert_eq!((typer >> 19) & 1, 0, "PTA = 0");
    assert_eq!((typer >> 24) & 0xff, 0, "HCC = 0");
    assert_eq!(r.its.mmio_read(0xc, 4), typer >> 32);
    // BASER0: devices, BASER1: collections, 8-byte entries, 64 KiB pages.
    let b0 = r.its.mmio_read(0x100, 8);
    assert_eq!((b0 >> 56) & 7, 1);
    assert_eq!((b0 >> 48) & 0x1f, 7);
    assert_eq!((b0 >> 8) & 3, 2);
    assert_eq!((r.its.mmio_read(0x108, 8) >> 56) & 7, 4);
    assert_eq!(r.its.mmio_read(0x110, 8), 0, "BASER2 unimplemented");
    // RO fields survive a write; the valid table is accepted.
    r.its
        .mmio_write(0x100, 8, VALID | DEV_TABLE | 0x0700_0000_0000_0300, m);
    let b0 = r.its.mmio_read(0x100, 8);
    assert_eq!(b0 & VALID, VALID);
    assert_eq!((b0 >> 56) & 7, 1);
    assert_eq!((b0 >> 8) & 3, 2);
    // 32-bit halves of CBASER.
    r.its.mmio_write(0x80, 4, CMDQ | 3, m);
    r.its.mmio_write(0x84, 4, VALID >> 32, m);
    assert_eq!(r.its.mmio_read(0x80, 8), VALID | CMDQ | 3);
    // Bad widths: RAZ/WI.
    assert_eq!(r.its.mmio_read(0x80, 2), 0);
    assert_eq!(r.its.mmio_read(0, 8), 0);
    assert_eq!(r.its.mmio_read(0x82, 4), 0);
    // Enable: no longer quiescent; CBASER/BASER writes are then ignored.
    r.its.mmio_write(0, 4, 1, m);
    assert_eq!(r.its.mmio_read(0, 4), 1);
    r.its.mmio_write(0x80, 8, 0, m);
    assert_eq!(r.its.mmio_read(0x80, 8), VALID | CMDQ | 3);
}

#[test]
fn tables_outside_ram_rejected_without_touching_memory() {
    let r = Rig::bare(1);
    let m = &*r.mem;
    let before = m.reads.load(Ordering::Relaxed);
    r.its.mmio_write(0x80, 8, VALID | 0x1000_0000 | 3, m);
    assert_eq!(r.its.mmio_read(0x80, 8) & VALID, 0, "CBASER left invalid");
    r.its
        .mmio_write(0x100, 8, VALID | (RAM + RAM_SIZE - 0x1_0000) | 1, m);
    assert_eq!(
        r.its.mmio_read(0x100, 8) & VALID,
        0,
        "BASER0 straddles the end of RAM"
    );
    r.its.mmio_write(0x108, 8, VALID | 0x7000_0000, m);
    assert_eq!(r.its.mmio_read(0x108, 8) & VALID, 0);
    r.its.mmio_write(0, 4, 1, m);
    r.its.mmio_write(0x88, 8, 0x60, m);
    assert_eq!(r.creadr(), 0, "an invalid queue is not processed");
    assert_eq!(
        m.reads.load(Ordering::Relaxed),
        before,
        "no memory was read"
    );
}

#[test]
fn cwriter_beyond_queue_is_ignored_and_creadr_wraps() {
    let r = Rig::new(1);
    let w = r.its.mmio_read(0x88, 8);
    r.its.mmio_write(0x88, 8, CMDQ_PAGES * 4096, &*r.mem);
    assert_eq!(r.its.mmio_read(0x88, 8), w);
    // Fill past the end: CREADR wraps to the start (vITS invariant 1).
    let n = (CMDQ_PAGES * 4096 / 32) as usize;
    for _ in 0..n + 3 {
        r.cmd(Command::Sync { rdbase: 0 });
    }
    assert_eq!(r.creadr(), r.its.mmio_read(0x88, 8));
    assert_eq!(r.creadr(), (w + (n as u64 + 3) * 32) % (CMDQ_PAGES * 4096));
    assert_eq!(r.its.error_count(), 0);
}

#[test]
fn shrinking_the_queue_under_cwriter_cannot_hang() {
    let r = Rig::new(1);
    let m = &*r.mem;
    r.its.mmio_write(0x88, 8, 0x8000, m); // 1024 SYNC-less zero commands
    assert_eq!(r.creadr(), 0x8000);
    r.its.mmio_write(0, 4, 0, m);
    r.its.mmio_write(0x80, 8, VALID | CMDQ, m); // one 4 KiB page
    assert_eq!(r.creadr(), 0);
    r.its.mmio_write(0, 4, 1, m); // must return
    assert_eq!(r.creadr(), 0);
    r.its.mmio_write(0x88, 8, 0x40, m);
    assert_eq!(r.creadr(), 0x40);
}

#[test]
fn unreadable_command_stalls_until_retry() {
    let r = Rig::new(1);
    r.mapd(1, 3);
    let at = CMDQ + r.creadr();
    r.mem.set_hole(Some((at, 32)));
    r.mapti(1, 0, LPI0, 0);
    assert_eq!(r.creadr() & 1, 1, "Stalled");
    assert_eq!(r.creadr() & !1, at - CMDQ);
    r.mem.set_hole(None);
    r.its
        .mmio_write(0x88, 8, r.its.mmio_read(0x88, 8) | 1, &*r.mem); // Retry
    assert_eq!(r.creadr() & 1, 0);
    assert_eq!(r.its.lookup(1, 0), Some((LPI0, 0)));
}

/// One CWRITER write covering several commands with a hole under the
/// third: the two before it run, the queue stalls exactly on it, and
/// Retry runs the rest.
#[test]
fn unreadable_command_mid_queue_stalls_on_that_command() {
    let r = Rig::new(1);
    r.mapd(1, 3);
    let start = r.creadr();
    r.mem.set_hole(Some((CMDQ + start + 2 * 32, 32)));
    r.cmds(&[
        Command::Mapti {
            device: 1,
            event: 0,
            intid: LPI0,
            icid: 0,
        },
        Command::Mapti {
            device: 1,
            event: 1,
            intid: LPI0 + 1,
            icid: 0,
        },
        Command::Mapti {
            device: 1,
            event: 2,
            intid: LPI0 + 2,
            icid: 0,
        },
        Command::Mapti {
            device: 1,
            event: 3,
            intid: LPI0 + 3,
            icid: 0,
        },
    ]);
    assert_eq!(r.creadr() & 1, 1, "Stalled");
    assert_eq!(r.creadr() & !1, start + 2 * 32, "on the third command");
    assert_eq!(r.its.lookup(1, 1), Some((LPI0 + 1, 0)));
    assert_eq!(r.its.lookup(1, 2), None);
    r.mem.set_hole(None);
    r.its
        .mmio_write(0x88, 8, r.its.mmio_read(0x88, 8) | 1, &*r.mem); // Retry
    assert_eq!(r.creadr(), start + 4 * 32);
    assert_eq!(r.its.lookup(1, 3), Some((LPI0 + 3, 0)));
}

// ---- command effects ----

#[test]
fn map_int_deliver() {
    let r = Rig::new(2);
    r.mapd(1, 4);
    r.mapti(1, 3, LPI0 + 5, 1);
    assert_eq!(r.its.lookup(1, 3), Some((LPI0 + 5, 1)));
    r.cmd(Command::Mapi {
        device: 1,
        event: 8200,
        icid: 0,
    });
    assert_eq!(r.its.last_error(), Some(CmdError::EventOutOfRange(1, 8200)));
    r.mapd(2, 13);
    r.cmd(Command::Mapi {
        device: 2,
        event: 8200,
        icid: 0,
    });
    assert_eq!(r.its.lookup(2, 8200), Some((8200, 0)));
    r.cmds(&[
        Command::Int {
            device: 1,
            event: 3,
        },
        Command::Int {
            device: 2,
            event: 8200,
        },
        Command::Sync { rdbase: 1 },
    ]);
    assert_eq!(r.drain(0), vec![8200]);
    assert_eq!(r.drain(1), vec![LPI0 + 5]);
    assert!(r.drain(1).is_empty());
    assert_eq!(r.its.error_count(), 1);
}

#[test]
fn clear_removes_pending() {
    let r = Rig::new(1);
    r.mapd(1, 4);
    r.mapti(1, 0, LPI0, 0);
    r.cmds(&[
        Command::Int {
            device: 1,
            event: 0,
        },
        Command::Clear {
            device: 1,
            event: 0,
        },
    ]);
    assert!(r.drain(0).is_empty());
}

#[test]
fn discard_removes_route_and_pending_and_frees() {
    let r = Rig::new(1);
    r.mapd(1, 4);
    r.mapti(1, 0, LPI0, 0);
    r.cmds(&[
        Command::Int {
            device: 1,
            event: 0,
        },
        Command::Discard {
            device: 1,
            event: 0,
        },
    ]);
    assert_eq!(r.its.lookup(1, 0), None);
    assert_eq!(r.vgic.lock().lpi_count(), 0, "vITS invariant 6");
    assert!(r.drain(0).is_empty());
    assert_eq!(r.its.translate(1, 0), Err(TranslateError::EventUnmapped));
    r.int(1, 0);
    assert_eq!(r.its.last_error(), Some(CmdError::EventUnmapped(1, 0)));
}

#[test]
fn movi_and_movall_move_pending_exactly_once() {
    let r = Rig::new(3);
    r.mapd(1, 4);
    r.mapti(1, 0, LPI0, 0);
    r.mapti(1, 1, LPI0 + 1, 0);
    r.cmds(&[
        Command::Int {
            device: 1,
            event: 0,
        },
        Command::Movi {
            device: 1,
            event: 0,
            icid: 1,
        },
    ]);
    assert_eq!(r.its.lookup(1, 0), Some((LPI0, 1)));
    assert!(r.drain(0).is_empty());
    assert_eq!(r.drain(1), vec![LPI0]);
    // MOVALL: every LPI targeting vCPU 0 moves to vCPU 2.
    r.cmds(&[
        Command::Int {
            device: 1,
            event: 1,
        },
        Command::Movall {
            rdbase1: 0,
            rdbase2: 2,
        },
    ]);
    assert!(r.drain(0).is_empty());
    assert_eq!(r.drain(2), vec![LPI0 + 1]);
    // MOVI onto an unmapped collection is an error, nothing moves.
    r.cmd(Command::Movi {
        device: 1,
        event: 0,
        icid: 7,
    });
    assert_eq!(r.its.last_error(), Some(CmdError::CollectionUnmapped(7)));
    assert_eq!(r.its.lookup(1, 0), Some((LPI0, 1)));
}

#[test]
fn movi_while_in_lr_delivers_once() {
    let r = Rig::new(2);
    r.mapd(1, 4);
    r.mapti(1, 0, LPI0, 0);
    r.int(1, 0);
    let mut c0 = SimCpu::new(0, 4);
    c0.enter(&r.vgic);
    r.cmd(Command::Movi {
        device: 1,
        event: 0,
        icid: 1,
    });
    let rep = c0.exit(&r.vgic); // not acknowledged: folds back, migrates
    assert!(rep.kick.contains(1));
    assert!(r.drain(0).is_empty());
    assert_eq!(r.drain(1), vec![LPI0]);
}

#[test]
fn inv_and_invall_reload_configuration() {
    let r = Rig::new(1);
    r.set_prop(LPI0, 0xa0); // disabled
    r.mapd(1, 4);
    r.mapti(1, 0, LPI0, 0);
    r.int(1, 0);
    assert!(r.drain(0).is_empty(), "disabled in the property table");
    r.set_prop(LPI0, 0xa1);
    r.cmd(Command::Inv {
        device: 1,
        event: 0,
    });
    assert_eq!(r.drain(0), vec![LPI0], "INV enabled it; pending was kept");
    // INVALL: priorities change order.
    r.mapti(1, 1, LPI0 + 1, 0);
    r.set_prop(LPI0, 0x81);
    r.set_prop(LPI0 + 1, 0x41);
    r.cmds(&[
        Command::Int {
            device: 1,
            event: 0,
        },
        Command::Int {
            device: 1,
            event: 1,
        },
    ]);
    let mut c = SimCpu::new(0, 4);
    c.enter(&r.vgic);
    let first = c.ack();
    c.exit(&r.vgic);
    assert_eq!(
        first,
        Some(LPI0),
        "old priorities: 0xa0 vs 0xa0, lower INTID first"
    );
    c.active.clear();
    r.cmd(Command::Invall { icid: 0 });
    assert_eq!(
        c.drain(&r.vgic, 8),
        vec![LPI0 + 1],
        "INVALL did not lose pending state"
    );
    r.cmd(Command::Invall { icid: 5 });
    assert_eq!(r.its.last_error(), Some(CmdError::CollectionUnmapped(5)));
}

#[test]
fn mapd_v0_unmaps_everything_and_remap_starts_empty() {
    let r = Rig::new(1);
    r.mapd(1, 4);
    for e in 0..4 {
        r.mapti(1, e, LPI0 + e, 0);
        r.int(1, e);
    }
    r.cmd(Command::Mapd {
        device: 1,
        size: 0,
        itt_addr: 0,
        valid: false,
    });
    assert_eq!(r.vgic.lock().lpi_count(), 0);
    assert!(r.drain(0).is_empty());
    r.mapd(1, 0); // one EventID bit: events 0 and 1
    assert_eq!(r.its.lookup(1, 0), None);
    r.mapti(1, 2, LPI0, 0);
    assert_eq!(r.its.last_error(), Some(CmdError::EventOutOfRange(1, 2)));
    r.mapti(1, 1, LPI0, 0);
    assert_eq!(r.its.lookup(1, 1), Some((LPI0, 0)));
}

#[test]
fn mapc_remap_retargets() {
    let r = Rig::new(2);
    r.mapd(1, 4);
    r.mapti(1, 0, LPI0, 0);
    r.cmds(&[
        Command::Mapc {
            icid: 0,
            rdbase: 1,
            valid: true,
        },
        Command::Int {
            device: 1,
            event: 0,
        },
    ]);
    assert_eq!(r.its.collection(0), Some(1));
    assert_eq!(r.drain(1), vec![LPI0]);
    r.cmd(Command::Mapc {
        icid: 0,
        rdbase: 0,
        valid: false,
    });
    assert_eq!(r.its.collection(0), None);
    assert_eq!(
        r.its.translate(1, 0),
        Err(TranslateError::CollectionUnmapped)
    );
    r.int(1, 0);
    assert_eq!(r.its.last_error(), Some(CmdError::CollectionUnmapped(0)));
}

#[test]
fn shared_vintid_between_two_events() {
    let r = Rig::new(1);
    r.mapd(1, 4);
    r.mapti(1, 0, LPI0, 0);
    r.mapti(1, 1, LPI0, 0);
    r.discard(1, 0);
    assert_eq!(r.vgic.lock().lpi_count(), 1, "still mapped by event 1");
    r.int(1, 1);
    assert_eq!(r.drain(0), vec![LPI0]);
}

/// A second MAPTI of a vINTID already mapped shares its state: it rereads
/// the property table and retargets the LPI to its own collection, and a
/// pending instance follows (IHI 0069 §5.3, MAPTI; vITS invariant 9).
#[test]
fn second_mapti_of_a_vintid_rereads_config_and_retargets() {
    let r = Rig::new(2);
    r.mapd(1, 4);
    r.set_prop(LPI0, 0xa0); // disabled
    r.mapti(1, 0, LPI0, 0);
    r.int(1, 0);
    assert!(r.drain(0).is_empty(), "disabled LPI delivered");
    r.set_prop(LPI0, 0xa1);
    r.mapti(1, 1, LPI0, 1);
    assert_eq!(r.vgic.lock().lpi_count(), 1, "one state for both events");
    assert_eq!(r.vgic.lock().lpi_target(LPI0), Some(1));
    assert!(r.drain(0).is_empty(), "pending instance left on vCPU 0");
    assert_eq!(r.drain(1), vec![LPI0], "pending instance moved to vCPU 1");
    // Each event keeps its own collection: INT goes where its ITE says.
    r.int(1, 0);
    assert_eq!(r.drain(0), vec![LPI0]);
    r.int(1, 1);
    assert_eq!(r.drain(1), vec![LPI0]);
}

#[test]
fn translater_write_from_guest() {
    let r = Rig::new(1);
    r.mapd(0, 4); // cpu_device_id = 0
    r.mapti(0, 5, LPI0 + 9, 0);
    let k = r.its.mmio_write(GITS_TRANSLATER, 4, 5, &*r.mem);
    assert!(k.contains(0));
    assert_eq!(r.drain(0), vec![LPI0 + 9]);
    assert_eq!(r.its.mmio_read(GITS_TRANSLATER, 4), 0);
    // Disabled ITS translates nothing.
    r.its.mmio_write(0, 4, 0, &*r.mem);
    assert_eq!(r.its.translate(0, 5), Err(TranslateError::Disabled));
}

#[test]
fn pending_table_honoured_when_lpis_enabled() {
    let r = Rig::bare(1);
    r.setup_tables(false);
    r.cmd(Command::Mapc {
        icid: 0,
        rdbase: 0,
        valid: true,
    });
    r.mapd(1, 4);
    r.mapti(1, 0, LPI0 + 10, 0);
    r.mapti(1, 1, LPI0 + 11, 0);
    // The guest marks LPI0+10 pending in its pending table, then enables.
    let bit = LPI0 + 10;
    r.mem
        .write(PEND_TABLE + u64::from(bit / 8), &[1 << (bit % 8)]);
    assert!(r.drain(0).is_empty());
    r.enable_lpis();
    assert_eq!(r.drain(0), vec![LPI0 + 10]);
    assert_eq!(r.vgic.gicr_read(0, 4) & 1, 1);
    // PTZ: the table is declared zero and not read.
    let r = Rig::bare(1);
    r.setup_tables(false);
    r.cmd(Command::Mapc {
        icid: 0,
        rdbase: 0,
        valid: true,
    });
    r.mapd(1, 4);
    r.mapti(1, 0, LPI0 + 10, 0);
    r.mem
        .write(PEND_TABLE + u64::from(bit / 8), &[1 << (bit % 8)]);
    r.vgic.gicr_write(0x78, 8, PEND_TABLE | (1 << 62), &*r.mem);
    r.vgic.gicr_write(0, 4, 1, &*r.mem);
    assert!(r.drain(0).is_empty());
    // LPIs of a redistributor with EnableLPIs = 0 are held back.
    let r2 = Rig::bare(2);
    r2.setup_tables(false);
    r2.vgic
        .gicr_write(GICR_STRIDE + 0x78, 8, PEND_TABLE, &*r2.mem);
    r2.vgic.gicr_write(GICR_STRIDE, 4, 1, &*r2.mem);
    r2.cmd(Command::Mapc {
        icid: 0,
        rdbase: 0,
        valid: true,
    });
    r2.mapd(1, 4);
    r2.mapti(1, 0, LPI0, 0);
    r2.int(1, 0);
    assert!(r2.drain(0).is_empty());
    r2.vgic
        .gicr_write(0x78, 8, PEND_TABLE + 0x1_0000 * 3, &*r2.mem);
    r2.vgic.gicr_write(0, 4, 1, &*r2.mem);
    assert_eq!(r2.drain(0), vec![LPI0]);
}

// ---- error policy ----

/// Each parameter error: the command has no effect, CREADR moves on, the
/// next command runs (ignore and continue; vITS invariant 7).
#[test]
fn error_policy_ignore_and_continue() {
    let r = Rig::new(2);
    r.mapd(1, 2); // 3 EventID bits: events 0..=7
    r.mapti(1, 0, LPI0, 0);
    let cases: Vec<(Command, CmdError)> = vec![
        (
            Command::Mapd {
                device: 1 << 16,
                size: 3,
                itt_addr: ITT_BASE,
                valid: true,
            },
            CmdError::DeviceOutOfRange(1 << 16),
        ),
        (
            Command::Mapd {
                device: 2,
                size: 16,
                itt_addr: ITT_BASE,
                valid: true,
            },
            CmdError::IttSizeTooLarge(16),
        ),
        (
            Command::Mapd {
                device: 2,
                size: 3,
                itt_addr: 0x1000,
                valid: true,
            },
            CmdError::IttOutsideRam(0x1000),
        ),
        (
            Command::Mapd {
                device: 2,
                size: 15,
                itt_addr: RAM + RAM_SIZE - 0x100,
                valid: true,
            },
            CmdError::IttOutsideRam(RAM + RAM_SIZE - 0x100),
        ),
        (
            Command::Mapc {
                icid: 0,
                rdbase: 2,
                valid: true,
            },
            CmdError::RdbaseOutOfRange(2),
        ),
        (
            Command::Mapc {
                icid: 8192,
                rdbase: 0,
                valid: true,
            },
            CmdError::CollectionOutOfRange(8192),
        ),
        (
            Command::Mapti {
                device: 3,
                event: 0,
                intid: LPI0 + 1,
                icid: 0,
            },
            CmdError::DeviceUnmapped(3),
        ),
        (
            Command::Mapti {
                device: 1,
                event: 8,
                intid: LPI0 + 1,
                icid: 0,
            },
            CmdError::EventOutOfRange(1, 8),
        ),
        (
            Command::Mapti {
                device: 1,
                event: 0,
                intid: LPI0 + 1,
                icid: 0,
            },
            CmdError::EventAlreadyMapped(1, 0),
        ),
        (
            Command::Mapti {
                device: 1,
                event: 1,
                intid: 100,
                icid: 0,
            },
            CmdError::LpiOutOfRange(100),
        ),
        (
            Command::Mapti {
                device: 1,
                event: 1,
                intid: 1 << 16,
                icid: 0,
            },
            CmdError::LpiOutOfRange(1 << 16),
        ),
        (
            Command::Mapti {
                device: 1,
                event: 1,
                intid: LPI0 + 1,
                icid: 9000,
            },
            CmdError::CollectionOutOfRange(9000),
        ),
        (
            Command::Movi {
                device: 1,
                event: 1,
                icid: 1,
            },
            CmdError::EventUnmapped(1, 1),
        ),
        (
            Command::Discard {
                device: 4,
                event: 0,
            },
            CmdError::DeviceUnmapped(4),
        ),
        (
            Command::Inv {
                device: 1,
                event: 9,
            },
            CmdError::EventOutOfRange(1, 9),
        ),
        (
            Command::Int {
                device: 1,
                event: 2,
            },
            CmdError::EventUnmapped(1, 2),
        ),
        (
            Command::Clear {
                device: 1,
                event: 2,
            },
            CmdError::EventUnmapped(1, 2),
        ),
        (Command::Sync { rdbase: 5 }, CmdError::RdbaseOutOfRange(5)),
        (
            Command::Movall {
                rdbase1: 0,
                rdbase2: 9,
            },
            CmdError::RdbaseOutOfRange(9),
        ),
        (Command::Invall { icid: 3 }, CmdError::CollectionUnmapped(3)),
    ];
    for (i, (c, e)) in cases.iter().enumerate() {
        let before = r.creadr();
        r.cmds(&[
            *c,
            Command::Int {
                device: 1,
                event: 0,
            },
        ]);
        assert_eq!(
            r.creadr(),
            before + 64,
            "CREADR advances past the bad command"
        );
        assert_eq!(r.its.last_error(), Some(*e), "case {i}: {c:?}");
        assert_eq!(r.its.error_count(), i as u64 + 1);
        assert_eq!(r.its.lookup(1, 0), Some((LPI0, 0)), "no side effect");
        assert_eq!(r.its.lookup(1, 1), None);
        assert_eq!(r.vgic.lock().lpi_count(), 1);
        assert_eq!(r.its.collection(0), Some(0));
        assert_eq!(r.drain(0), vec![LPI0], "the next command still ran");
    }
    r.raw([0x2a, 1, 2, 3]);
    assert_eq!(r.its.last_error(), Some(CmdError::UnknownCommand(0x2a)));
    assert_eq!(r.creadr() & 1, 0, "never stalls on a parameter error");
}

#[test]
fn mapd_without_device_table_is_an_error() {
    let r = Rig::bare(1);
    r.its.mmio_write(0x80, 8, VALID | CMDQ | 1, &*r.mem);
    r.its.mmio_write(0, 4, 1, &*r.mem);
    r.mapd(1, 3);
    assert_eq!(
        r.its.last_error(),
        Some(CmdError::DeviceTableEntryInvalid(1))
    );
    r.cmd(Command::Mapc {
        icid: 0,
        rdbase: 0,
        valid: true,
    });
    assert_eq!(r.its.last_error(), Some(CmdError::CollectionOutOfRange(0)));
}

// ---- two-level device table ----

#[test]
fn two_level_device_table() {
    let r = Rig::bare(1);
    r.setup_tables(true);
    assert_eq!(r.its.mmio_read(0x100, 8) >> 62 & 1, 1, "Indirect kept");
    // L1 entry 1 (DeviceIDs 8192..16383) valid; entry 0 not; entry 2 points
    // outside RAM.
    r.mem.write_u64(DEV_TABLE + 8, VALID | L2_PAGE);
    r.mem.write_u64(DEV_TABLE + 16, VALID | 0x9000_0000);
    r.mapd(8192 + 5, 3);
    assert_eq!(r.its.error_count(), 0);
    r.mapd(5, 3);
    assert_eq!(
        r.its.last_error(),
        Some(CmdError::DeviceTableEntryInvalid(5))
    );
    r.mapd(2 * 8192, 3);
    assert_eq!(
        r.its.last_error(),
        Some(CmdError::DeviceTableEntryInvalid(2 * 8192))
    );
    r.cmd(Command::Mapc {
        icid: 0,
        rdbase: 0,
        valid: true,
    });
    r.enable_lpis();
    r.mapti(8192 + 5, 1, LPI0, 0);
    r.int(8192 + 5, 1);
    assert_eq!(r.drain(0), vec![LPI0]);
    // Flat table of one 64 KiB page: 8192 DeviceIDs.
    let f = Rig::new(1);
    f.mapd(8191, 0);
    assert_eq!(f.its.error_count(), 0);
    f.mapd(8192, 0);
    assert_eq!(f.its.last_error(), Some(CmdError::DeviceOutOfRange(8192)));
}

// ---- LPIs through list registers ----

#[test]
fn more_lpis_than_lrs_then_discard_queued() {
    let r = Rig::new(1);
    r.mapd(1, 4);
    for e in 0..8 {
        r.set_prop(LPI0 + e, (0x10 * e as u8) | 1);
        r.mapti(1, e, LPI0 + e, 0);
        r.int(1, e);
    }
    let mut c = SimCpu::new(0, 4);
    c.enter(&r.vgic);
    assert_eq!(
        r.vgic.lock().loaded_intids(0),
        vec![LPI0, LPI0 + 1, LPI0 + 2, LPI0 + 3]
    );
    assert!(c.hcr.uie() && c.hcr.npie());
    r.discard(1, 6);
    let mut got = Vec::new();
    while let Some(i) = c.ack() {
        got.push(i);
        c.eoi(i);
    }
    c.exit(&r.vgic);
    got.extend(c.drain(&r.vgic, 16));
    assert_eq!(
        got,
        vec![
            LPI0,
            LPI0 + 1,
            LPI0 + 2,
            LPI0 + 3,
            LPI0 + 4,
            LPI0 + 5,
            LPI0 + 7
        ]
    );
    assert_eq!(r.vgic.lock().lpi_count(), 7);
    assert_eq!(r.vgic.lock().list_len(0), 0);
}

#[test]
fn discard_mapti_reuse_while_in_lr() {
    for acked in [false, true] {
        let r = Rig::new(1);
        r.mapd(1, 4);
        r.mapti(1, 0, LPI0, 0);
        r.int(1, 0);
        let mut c = SimCpu::new(0, 4);
        c.enter(&r.vgic);
        if acked {
            assert_eq!(c.ack(), Some(LPI0));
        }
        r.cmds(&[
            Command::Discard {
                device: 1,
                event: 0,
            },
            Command::Mapti {
                device: 1,
                event: 1,
                intid: LPI0,
                icid: 0,
            },
            Command::Int {
                device: 1,
                event: 1,
            },
        ]);
        if acked {
            c.eoi(LPI0); // vITS invariant 8: the old one can still be EOIed
        }
        c.exit(&r.vgic);
        let got = c.drain(&r.vgic, 8);
        assert_eq!(
            got,
            vec![LPI0],
            "the new mapping's INT exactly once (acked={acked})"
        );
        let s = r.vgic.stats(0);
        assert_eq!(s.retired_dropped, u64::from(!acked));
        assert_eq!(r.vgic.lock().lpi_count(), 1);
    }
}

#[test]
fn discard_of_active_lpi_keeps_it_deactivatable() {
    let r = Rig::new(1);
    r.mapd(1, 4);
    r.mapti(1, 0, LPI0, 0);
    r.int(1, 0);
    let mut c = SimCpu::new(0, 4);
    c.enter(&r.vgic);
    assert_eq!(c.ack(), Some(LPI0));
    c.exit(&r.vgic); // acknowledged, not yet EOIed
    r.cmds(&[
        Command::Discard {
            device: 1,
            event: 0,
        },
        Command::Mapti {
            device: 1,
            event: 1,
            intid: LPI0,
            icid: 0,
        },
        Command::Int {
            device: 1,
            event: 1,
        },
    ]);
    assert_eq!(
        r.vgic.lock().lpi_count(),
        1,
        "old state freed, new one live"
    );
    c.enter(&r.vgic);
    // The retired instance is back in an LR (active) and blocks the new one
    // with the same vINTID (vITS invariant 4) until it is deactivated.
    assert_eq!(r.vgic.lock().loaded_intids(0), vec![LPI0]);
    let lr = c.lrs[0];
    assert!(lr.state().active() && !lr.state().pending() && lr.eoi());
    c.eoi(LPI0);
    assert!(c.misr().bits() & 1 != 0, "EOI maintenance requested");
    c.exit(&r.vgic);
    assert_eq!(c.drain(&r.vgic, 8), vec![LPI0]);
    assert_eq!(r.vgic.lock().list_len(0), 0);
}

/// A VM reset (PSCI SYSTEM_RESET) puts the vITS and the vGIC back to
/// power-on state: no routes, no pending LPIs, registers at reset values;
/// the guest can then set everything up again.
#[test]
fn reset_returns_to_power_on_state() {
    let r = Rig::new(2);
    r.mapd(1, 4);
    r.mapti(1, 3, LPI0 + 5, 1);
    r.int(1, 3);
    r.vgic.reset();
    r.its.reset();
    assert_eq!(r.its.lookup(1, 3), None);
    assert_eq!(r.its.collection(1), None);
    assert_eq!(r.its.mmio_read(0x80, 8), 0, "CBASER");
    assert_eq!(r.its.mmio_read(0x0, 4) & 1, 0, "GITS_CTLR.Enabled");
    assert_eq!(r.vgic.gicd_read(0, 0, 4) & 0b11, 0, "GICD_CTLR groups");
    assert!(r.drain(1).is_empty(), "the pending LPI did not survive");
    assert!(r.its.translate(1, 3).is_err());
    // Set up again from scratch, as the rebooted guest does.
    r.setup_tables(false);
    r.enable_lpis();
    r.cmd(Command::Mapc {
        icid: 0,
        rdbase: 0,
        valid: true,
    });
    r.mapd(1, 4);
    r.mapti(1, 3, LPI0 + 7, 0);
    r.cmds(&[
        Command::Int {
            device: 1,
            event: 3,
        },
        Command::Sync { rdbase: 0 },
    ]);
    assert_eq!(r.drain(0), vec![LPI0 + 7]);
}

/// Passthrough: mapping changes of a device the mirror owns reach the
/// physical side, in command order and before the command completes;
/// other devices never do.
#[test]
fn mirror_sees_every_mapping_change_of_its_devices() {
    use std::sync::{Arc, Mutex};
    #[derive(Default)]
    struct Fake(Mutex<Vec<String>>);
    impl vigil_vits::Mirror for Fake {
        fn owns(&self, device: u32) -> bool {
            device == 7
        }
        fn map_device(&self, device: u32, event_bits: u8) {
            self.0
                .lock()
                .unwrap()
                .push(format!("mapd {device} {event_bits}"));
        }
        fn unmap_device(&self, device: u32) {
            self.0.lock().unwrap().push(format!("unmapd {device}"));
        }
        fn map_event(
            &self,
            device: u32,
            event: u32,
            intid: u32,
            target: Option<usize>,
            _generation: u64,
        ) -> bool {
            self.0
                .lock()
                .unwrap()
                .push(format!("map {device}/{event} = {intid} -> {target:?}"));
            false
        }
        fn unmap_event(&self, device: u32, event: u32) {
            self.0
                .lock()
                .unwrap()
                .push(format!("discard {device}/{event}"));
        }
        fn move_event(&self, device: u32, event: u32, target: usize) {
            self.0
                .lock()
                .unwrap()
                .push(format!("move {device}/{event} -> {target}"));
        }
        fn clear_event(&self, device: u32, event: u32) {
            self.0
                .lock()
                .unwrap()
                .push(format!("clear {device}/{event}"));
        }
    }
    let r = Rig::new(2);
    let fake = Arc::new(Fake::default());
    r.its.set_mirror(fake.clone());
    r.mapd(7, 4);
    r.mapd(8, 4);
    r.mapti(7, 2, LPI0 + 1, 1);
    r.mapti(8, 2, LPI0 + 2, 1);
    r.cmds(&[
        Command::Movi {
            device: 7,
            event: 2,
            icid: 0,
        },
        Command::Clear {
            device: 7,
            event: 2,
        },
        Command::Discard {
            device: 7,
            event: 2,
        },
        Command::Discard {
            device: 8,
            event: 2,
        },
    ]);
    // A rejected command (event already mapped) reaches nobody.
    r.mapti(7, 3, LPI0 + 3, 1);
    r.mapti(7, 3, LPI0 + 4, 1);
    r.cmd(Command::Mapc {
        icid: 1,
        rdbase: 0,
        valid: true,
    });
    r.cmd(Command::Mapd {
        device: 7,
        size: 0,
        itt_addr: 0,
        valid: false,
    });
    assert_eq!(
        *fake.0.lock().unwrap(),
        vec![
            "mapd 7 5",
            "map 7/2 = 8193 -> Some(1)",
            "move 7/2 -> 0",
            "clear 7/2",
            "discard 7/2",
            "map 7/3 = 8195 -> Some(1)",
            "move 7/3 -> 0",
            "unmapd 7",
        ]
    );
}

/// A guest cannot make the hypervisor allocate without bound (found by
/// the vITS fuzz work: ~300,000 MAPTIs exhausted the heap and panicked
/// Vigil): mappings and devices have per-vITS quotas, and commands beyond
/// them are ignored under the error policy.
#[test]
fn quotas_bound_the_state_a_guest_can_create() {
    let r = Rig::new(1);
    let cfg = vigil_vits::VitsConfig::default();
    assert_eq!(cfg.max_mappings, vigil_vits::MAX_MAPPINGS);
    assert!(cfg.max_mappings >= 100_000, "10^5 LPIs per VM (issue 22)");
    r.map_two_full_devices();
    let n = cfg.max_mappings;
    let cmds: Vec<Command> = (0..n)
        .map(|k| Command::Mapti {
            device: 1 + k / 65536,
            event: k % 65536,
            intid: LPI0 + (k % 4096),
            icid: 0,
        })
        .collect();
    for chunk in cmds.chunks(1000) {
        r.cmds(chunk);
    }
    assert_eq!(r.its.error_count(), 0);
    r.mapd(3, 0);
    r.mapti(3, 0, LPI0, 0);
    assert_eq!(r.its.last_error(), Some(CmdError::TooManyMappings(3, 0)));
    assert_eq!(r.its.lookup(3, 0), None);
    r.discard(1, 0);
    r.mapti(3, 0, LPI0, 0);
    assert!(r.its.lookup(3, 0).is_some(), "room again after a DISCARD");
    // MAPD(V=0) returns all of a device's mappings.
    for device in [1, 3] {
        r.cmd(Command::Mapd {
            device,
            size: 0,
            itt_addr: 0,
            valid: false,
        });
    }
    r.mapd(2, 0);
    r.mapti(2, 0, LPI0, 0);
    assert!(r.its.lookup(2, 0).is_some());
    // Devices.
    let before = r.its.error_count();
    for d in 3..(3 + cfg.max_devices) {
        r.mapd(d, 0);
    }
    assert_eq!(
        r.its.error_count(),
        before + 1,
        "one over the quota (device 2 was already mapped)"
    );
    assert!(matches!(
        r.its.last_error(),
        Some(CmdError::TooManyDevices(_))
    ));
    // Remapping an already mapped device is always allowed.
    r.mapd(2, 1);
    assert!(matches!(
        r.its.last_error(),
        Some(CmdError::TooManyDevices(_))
    ));
    assert_eq!(r.its.error_count(), before + 1);
}

/// The ITTs MAPD allocates are bounded too: twice the mapping quota in
/// entries over all devices; a MAPD beyond it is ignored, and replacing or
/// unmapping a device gives its entries back.
#[test]
fn the_itt_quota_bounds_what_mapd_allocates() {
    let r = Rig::new(1);
    // The ITTs may overlap in guest RAM: the vITS keeps its own.
    let mapd = |device, size| {
        r.cmd(Command::Mapd {
            device,
            size,
            itt_addr: RAM,
            valid: true,
        })
    };
    // 2 * 2^17 entries: four devices of 2^16 events.
    for device in 1..=4 {
        mapd(device, 15);
    }
    assert_eq!(r.its.error_count(), 0);
    mapd(5, 0);
    assert_eq!(r.its.last_error(), Some(CmdError::IttQuota(5)));
    r.mapti(5, 0, LPI0, 0);
    assert_eq!(r.its.last_error(), Some(CmdError::DeviceUnmapped(5)));
    // Replacing a device with a smaller ITT makes room.
    mapd(4, 14);
    mapd(5, 0);
    r.mapti(5, 0, LPI0, 0);
    assert!(r.its.lookup(5, 0).is_some());
    assert_eq!(r.its.error_count(), 2);
    // Growing one back past the quota is refused, and leaves it as it was.
    r.mapti(4, 7, LPI0 + 1, 0);
    mapd(4, 15);
    assert_eq!(r.its.last_error(), Some(CmdError::IttQuota(4)));
    assert!(r.its.lookup(4, 7).is_some());
}

/// The vGIC's LPI table allocates a block of INTIDs when the first of them
/// is mapped and keeps it; however sparse a guest's INTIDs (GICD_TYPER.IDbits
/// up to 24 here), the blocks stay bounded, and a MAPTI beyond is ignored.
#[test]
fn the_lpi_table_is_bounded_however_sparse_the_intids() {
    let mut vgic = vigil_vgic::VgicConfig::simple(1);
    vgic.lpi_id_bits = 24;
    let r = Rig::with_vgic(vgic, vigil_vits::VitsConfig::default());
    r.mapd(1, 7);
    // One INTID per 2^17: a block each.
    for k in 0..127u32 {
        r.mapti(1, k, LPI0 + (k << 17), 0);
    }
    let mapped = r.vgic.lock().lpi_count() as u32;
    assert!(
        (64..127).contains(&mapped),
        "{mapped} blocks: at least 2^17 INTIDs' worth, not all"
    );
    assert_eq!(r.its.error_count(), u64::from(127 - mapped));
    assert_eq!(
        r.its.last_error(),
        Some(CmdError::LpiTableFull(LPI0 + (126 << 17)))
    );
    // An allocated block stays: its INTIDs can be mapped again after a
    // DISCARD, and a neighbour in the same block too.
    r.discard(1, 0);
    r.mapti(1, 0, LPI0, 0);
    r.mapti(1, 200, LPI0 + 1, 0);
    assert_eq!(r.vgic.lock().lpi_count() as u32, mapped + 1);
    assert_eq!(r.its.error_count(), u64::from(127 - mapped));
}

/// GICv4 passthrough: an event the mirror mapped directly (its MAPTI said
/// so) has its pending state on the physical side. A software trigger of
/// it (INT, a guest GITS_TRANSLATER write) goes to the mirror and leaves
/// the vGIC alone, so the vLPI is never pending on both paths; INV and
/// INVALL reach the mirror for the physical redistributor to re-read the
/// configuration. Events it did not map directly keep the list-register
/// path and never reach those two calls.
#[test]
fn direct_mapped_events_are_raised_and_invalidated_by_the_mirror() {
    use std::sync::{Arc, Mutex};
    #[derive(Default)]
    struct Direct(Mutex<Vec<String>>);
    impl Direct {
        fn log(&self, s: String) {
            self.0.lock().unwrap().push(s);
        }
    }
    impl vigil_vits::Mirror for Direct {
        fn owns(&self, device: u32) -> bool {
            device == 0
        }
        fn map_device(&self, _: u32, _: u8) {}
        fn unmap_device(&self, _: u32) {}
        fn map_event(&self, _: u32, event: u32, _: u32, _: Option<usize>, _: u64) -> bool {
            // Event 5 is mapped directly; event 6 is not.
            event == 5
        }
        fn unmap_event(&self, _: u32, _: u32) {}
        fn move_event(&self, _: u32, _: u32, _: usize) {}
        fn clear_event(&self, _: u32, _: u32) {}
        fn raise(&self, device: u32, event: u32) -> bool {
            self.log(format!("raise {device}/{event}"));
            true
        }
        fn inv_event(&self, device: u32, event: u32) {
            self.log(format!("inv {device}/{event}"));
        }
    }
    let r = Rig::new(1);
    let m = Arc::new(Direct::default());
    r.its.set_mirror(m.clone());
    r.mapd(0, 4); // cpu_device_id = 0
    r.mapd(1, 4); // not the mirror's
    r.mapti(0, 5, LPI0 + 9, 0);
    r.mapti(0, 6, LPI0 + 10, 0);
    r.mapti(1, 5, LPI0 + 11, 0);
    r.int(0, 5);
    let k = r.its.mmio_write(GITS_TRANSLATER, 4, 5, &*r.mem);
    assert!(
        !k.contains(0),
        "a direct event kicked nobody's list registers"
    );
    assert!(
        r.drain(0).is_empty(),
        "the vGIC holds no pending direct vLPI"
    );
    r.int(0, 6);
    r.int(1, 5);
    assert_eq!(r.drain(0), vec![LPI0 + 10, LPI0 + 11]);
    r.cmd(Command::Inv {
        device: 0,
        event: 5,
    });
    r.cmd(Command::Invall { icid: 0 });
    assert_eq!(
        *m.0.lock().unwrap(),
        vec!["raise 0/5", "raise 0/5", "inv 0/5", "inv 0/5"],
        "only the direct event reaches the mirror's raise and INV"
    );
}

/// The property table a run of commands reads through one translated
/// window reads exactly as the byte-wise read does: for every IDbits (the
/// table inside RAM, straddling its end, far beyond it) and INTIDs around
/// every edge.
#[test]
fn a_property_table_window_reads_as_the_bytewise_read() {
    use vigil_vgic::{read_lpi_config, GuestMemory, PropTable};
    let m = FakeMem::new();
    // Each byte of RAM distinct enough: priorities and enables both vary.
    for i in 0..RAM_SIZE / 8 {
        m.write_u64(RAM + 8 * i, i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
    let mut windowed = 0;
    for field in 0..32u64 {
        for base in [RAM, RAM + 0x8_0000, RAM + RAM_SIZE - 0x1000, 0x1000] {
            let propbaser = base | field;
            m.set_windows(true);
            let t = PropTable::new(propbaser, &m);
            // Whether this table was read through a window (IDbits 14 to
            // 20 at the lower bases fit in RAM).
            windowed += usize::from(field >= 13 && m.window(base, (2 << field) - 8192).is_some());
            let idbits = field as u32 + 1;
            let mut intids = vec![0, 1, 8191, 8192, 8193, 9000, u32::MAX];
            for b in [idbits, 14, 16, 20] {
                let top = 1u64 << b;
                intids.extend([top - 1, top, top + 1].map(|v| v as u32));
            }
            for intid in intids {
                let got = t.config(intid, &m);
                m.set_windows(false);
                assert_eq!(
                    got,
                    read_lpi_config(propbaser, intid, &m),
                    "PROPBASER {propbaser:#x}, INTID {intid}"
                );
                m.set_windows(true);
            }
        }
    }
    assert!(windowed >= 10, "{windowed} tables read through a window");
}

/// MAPTI takes the priority and enable in the property table when it runs,
/// whether the queue and the table are read through windows or byte by
/// byte, and a byte the guest changed since the last run is read anew.
#[test]
fn mapti_reads_the_property_byte_of_its_run() {
    for windows in [true, false] {
        let r = Rig::new(1);
        r.mem.set_windows(windows);
        r.mapd(1, 4);
        r.set_prop(LPI0, 0x81);
        r.mapti(1, 0, LPI0, 0);
        // Written after the first run read the table.
        r.set_prop(LPI0 + 1, 0x41);
        r.set_prop(LPI0 + 2, 0x40);
        r.mapti(1, 1, LPI0 + 1, 0);
        r.mapti(1, 2, LPI0 + 2, 0);
        for e in 0..3 {
            r.int(1, e);
        }
        let mut c = SimCpu::new(0, 4);
        assert_eq!(
            c.drain(&r.vgic, 8),
            vec![LPI0 + 1, LPI0],
            "windows {windows}: 0x40 before 0x80, the disabled one not at all"
        );
    }
}
