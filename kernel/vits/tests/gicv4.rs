//! Concurrency tests (shuttle) of GICv4 direct injection: the guest's
//! MAPTI/MOVI/DISCARD/INT/MAPD(V=0) through the real vITS and the real
//! passthrough mirror (`vigil_vits::mirror::PassMirror`), whose encoded
//! ITS commands a model ITS executes, against a device's MSIs and against
//! the vCPUs' vPE residency changes, which run the real protocol
//! (`vigil_gic::vpe::Residency`).
//!
//! The hardware is a model of QEMU's GICv4.0 (hw/intc/arm_gicv3_its.c,
//! arm_gicv3_redist.c): an ITS whose virtual ITEs name a vPE and a vINTID;
//! per vPE a pending table; per physical CPU the vPE resident there and a
//! doorbell LPI's pending bit. An MSI or INT sets the vLPI's bit and, if
//! its vPE is not resident, rings the doorbell; DISCARD clears the bit;
//! VMOVI moves it (ringing the new vPE's doorbell if that is not
//! resident); Valid 1 -> 0 reports PendingLast. A resident vPE's pending
//! vLPIs are the guest's to take. Every hardware operation (a command
//! batch, a register write) is atomic, as QEMU's are; the model's lock is
//! the scheduling point.
//!
//! Checked: no vLPI reaches the guest after its DISCARD returned (vITS
//! invariant 2, a new life of the vINTID starting pristine); none is lost
//! (when everything is quiet no pending table holds a bit and the vCPUs
//! are asleep: a lost wakeup leaves one behind); none goes through the
//! vGIC's list-register path; every command on a virtual mapping is
//! followed by a VSYNC of its vPE in the same batch.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use common::*;
use shuttle::sync::{Condvar, Mutex};
use shuttle::thread;
use vigil_gic::its_cmd::{ItsCommand, Opcode};
use vigil_gic::vpe::{Residency, VpeRegs};
use vigil_vits::hostlpi::HostRoutes;
use vigil_vits::mirror::{PassMirror, PhysIts, VpeRef};
use vigil_vits::Command;

const ITERS: usize = 400;
const DEV: u32 = 3;
const EV: u32 = 1;
const VINTID: u32 = LPI0 + 40;
const VCPUS: usize = 2;

#[derive(Default)]
struct Hw {
    /// Virtual ITEs: (DeviceID, EventID) -> (vPE, vINTID).
    ites: HashMap<(u32, u32), (usize, u32)>,
    /// Each vPE's pending table.
    vpt: [BTreeSet<u32>; VCPUS],
    /// vPE n is pinned to physical CPU n: whether it is resident there.
    resident: [bool; VCPUS],
    /// The doorbell LPI's pending bit at physical CPU n.
    doorbell: [bool; VCPUS],
    /// vINTIDs whose DISCARD has returned to the guest (until mapped again).
    dead: BTreeSet<u32>,
    /// vLPIs the guest took, per vCPU.
    taken: [u64; VCPUS],
    /// Everything is done but the vCPUs.
    quiet: bool,
}

impl Hw {
    /// vLPI `vintid` pending for `vpe`: its bit, and its doorbell if it is
    /// not resident (QEMU's `gicv3_redist_process_vlpi`).
    fn pend(&mut self, irq: &Condvar, vpe: usize, vintid: u32) {
        self.vpt[vpe].insert(vintid);
        if !self.resident[vpe] {
            self.doorbell[vpe] = true;
            irq.notify_all();
        }
    }

    /// `(device, event)`'s vLPI made pending, if it is mapped.
    fn trigger(&mut self, irq: &Condvar, device: u32, event: u32) {
        if let Some(&(vpe, vintid)) = self.ites.get(&(device, event)) {
            self.pend(irq, vpe, vintid);
        }
    }
}

struct Gic4 {
    hw: Mutex<Hw>,
    /// A physical CPU's interrupt line changed (a doorbell).
    irq: Condvar,
}

impl Gic4 {
    /// Make `(device, event)`'s vLPI pending: an MSI, or INT.
    fn trigger(&self, device: u32, event: u32) {
        self.hw.lock().unwrap().trigger(&self.irq, device, event);
    }

    /// The guest on vCPU `v` acknowledges a vLPI, if its vPE is resident
    /// and one is pending.
    fn take(&self, v: usize) -> Option<u32> {
        let mut hw = self.hw.lock().unwrap();
        if !hw.resident[v] {
            return None;
        }
        let vintid = hw.vpt[v].pop_first()?;
        assert!(
            !hw.dead.contains(&vintid),
            "vLPI {vintid} reached vCPU {v} after its DISCARD returned"
        );
        hw.taken[v] += 1;
        Some(vintid)
    }
}

/// vPE `n`'s residency registers on CPU `n`.
struct Regs<'a>(&'a Gic4, usize);

impl VpeRegs for Regs<'_> {
    fn make_valid(&self, _idai: bool) {
        let mut hw = self.0.hw.lock().unwrap();
        assert!(!hw.resident[self.1], "Valid written 1 while 1");
        hw.resident[self.1] = true;
    }
    fn make_invalid(&self) -> Option<bool> {
        let mut hw = self.0.hw.lock().unwrap();
        assert!(hw.resident[self.1], "Valid written 0 while 0");
        hw.resident[self.1] = false;
        Some(!hw.vpt[self.1].is_empty())
    }
}

/// The physical ITS under the real mirror: executes its encoded commands
/// on the model. Every vCPU has a vPE (id = vCPU index, pinned to the CPU
/// of the same index).
struct ModelIts(Arc<Gic4>);

/// vPE n's doorbell LPI.
const DOORBELL: u32 = LPI0 + 1000;

impl ModelIts {
    fn execute(hw: &mut Hw, irq: &Condvar, c: &ItsCommand) {
        let dw = c.0;
        let (device, event) = ((dw[0] >> 32) as u32, dw[1] as u32);
        let vpe = (dw[1] >> 32) as u16 as usize;
        match c.opcode().expect("the mirror issues known commands") {
            Opcode::Vmapti => {
                assert_eq!((dw[2] >> 32) as u32, DOORBELL + vpe as u32, "doorbell");
                hw.ites.insert((device, event), (vpe, dw[2] as u32));
            }
            Opcode::Discard => {
                if let Some((p, vintid)) = hw.ites.remove(&(device, event)) {
                    hw.vpt[p].remove(&vintid);
                }
            }
            Opcode::Clear => {
                if let Some(&(p, vintid)) = hw.ites.get(&(device, event)) {
                    hw.vpt[p].remove(&vintid);
                }
            }
            Opcode::Int => hw.trigger(irq, device, event),
            Opcode::Vmovi => {
                let Some((from, vintid)) = hw.ites.get(&(device, event)).copied() else {
                    return;
                };
                hw.ites.insert((device, event), (vpe, vintid));
                if from != vpe && hw.vpt[from].remove(&vintid) {
                    hw.pend(irq, vpe, vintid);
                }
            }
            // Effects are immediate in the model (as in QEMU's ITS).
            Opcode::Inv | Opcode::Vsync => {}
            op => panic!("unexpected {op:?} on the direct path"),
        }
    }
}

impl PhysIts for ModelIts {
    type Device = u32;
    type Error = &'static str;

    fn run(&self, cmds: &[ItsCommand]) -> Result<(), &'static str> {
        // Every command on a virtual mapping has its vPE's VSYNC after it
        // in the batch (IHI 0069H §5.3.28).
        let hw = &mut *self.0.hw.lock().unwrap();
        for (i, c) in cmds.iter().enumerate() {
            let dw = c.0;
            let vpes: Vec<usize> = match c.opcode() {
                Some(Opcode::Vmapti) => vec![(dw[1] >> 32) as u16 as usize],
                Some(Opcode::Vmovi) => {
                    let from = hw.ites.get(&((dw[0] >> 32) as u32, dw[1] as u32));
                    let mut v = vec![(dw[1] >> 32) as u16 as usize];
                    v.extend(from.map(|&(p, _)| p));
                    v
                }
                Some(Opcode::Discard | Opcode::Clear | Opcode::Int | Opcode::Inv) => hw
                    .ites
                    .get(&((dw[0] >> 32) as u32, dw[1] as u32))
                    .map(|&(p, _)| vec![p])
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            for p in vpes {
                assert!(
                    cmds[i + 1..]
                        .iter()
                        .any(|v| v.opcode() == Some(Opcode::Vsync) && (v.0[1] >> 32) as usize == p),
                    "{:?} with no VSYNC of vPE {p} after it",
                    c.opcode()
                );
            }
            Self::execute(hw, &self.0.irq, c);
        }
        Ok(())
    }
    fn map_device(&self, device: u32, _event_bits: u8) -> Result<u32, &'static str> {
        Ok(device)
    }
    fn unmap_device(&self, device: u32) -> Result<(), &'static str> {
        let hw = &mut *self.0.hw.lock().unwrap();
        assert!(
            !hw.ites.keys().any(|k| k.0 == device),
            "MAPD(V=0) with events still mapped: their pending bits would stay"
        );
        Ok(())
    }
    fn alloc_lpis(&self, _count: u32) -> Option<u32> {
        Some(LPI0 + 2000)
    }
    fn free_lpis(&self, _first: u32) {}
    fn set_lpi_enabled(&self, _lpi: u32, _enabled: bool) {}
    fn icid(&self, vcpu: Option<usize>) -> u16 {
        vcpu.unwrap_or(0) as u16
    }
    fn vpe(&self, vcpu: usize) -> Option<VpeRef> {
        (vcpu < VCPUS).then_some(VpeRef {
            id: vcpu as u16,
            doorbell: DOORBELL + vcpu as u32,
            id_bits: 16,
        })
    }
    fn routes(&self) -> Option<&HostRoutes> {
        None
    }
}

/// vCPU `v`'s run loop as Vigil's: resident while in the guest, where it
/// takes what is presented; at each WFI non-resident, and asleep only if
/// PendingLast was clear, until its doorbell; its handler marks the vPE.
fn vcpu(gic: &Gic4, v: usize) {
    let res = Residency::new();
    let regs = Regs(gic, v);
    res.schedule(&regs);
    loop {
        while gic.take(v).is_some() {}
        thread::yield_now();
        while gic.take(v).is_some() {}
        // WFI.
        if !res.deschedule(&regs) {
            let mut hw = gic.hw.lock().unwrap();
            while !res.rang() {
                if hw.doorbell[v] {
                    // The doorbell's handler, on this CPU.
                    hw.doorbell[v] = false;
                    res.ring();
                } else if hw.quiet {
                    return;
                } else {
                    hw = gic.irq.wait(hw).unwrap();
                }
            }
        }
        res.schedule(&regs);
    }
}

fn rig() -> (Arc<Rig>, Arc<Gic4>) {
    let r = Arc::new(Rig::new(VCPUS));
    let gic = Arc::new(Gic4 {
        hw: Mutex::new(Hw::default()),
        irq: Condvar::new(),
    });
    r.its
        .set_mirror(Arc::new(PassMirror::new(0, ModelIts(gic.clone()))));
    r.mapd(DEV, 2);
    (r, gic)
}

/// Run `guest` (the commands, on vCPU 0's behalf) and a device raising
/// `msis` MSIs against two vCPUs' run loops; then check that nothing is
/// left pending and nothing went through the list registers.
fn scenario(msis: usize, guest: impl Fn(&Rig, &Gic4) + Send + Sync + 'static) {
    let guest = Arc::new(guest);
    explore(move || {
        let (r, gic) = rig();
        let vcpus: Vec<_> = (0..VCPUS)
            .map(|v| {
                let gic = gic.clone();
                thread::spawn(move || vcpu(&gic, v))
            })
            .collect();
        let device = {
            let gic = gic.clone();
            thread::spawn(move || {
                for _ in 0..msis {
                    gic.trigger(DEV, EV);
                    thread::yield_now();
                }
            })
        };
        let g = {
            let (r, gic, guest) = (r.clone(), gic.clone(), guest.clone());
            thread::spawn(move || guest(&r, &gic))
        };
        device.join().unwrap();
        g.join().unwrap();
        {
            let mut hw = gic.hw.lock().unwrap();
            hw.quiet = true;
            gic.irq.notify_all();
        }
        for t in vcpus {
            t.join().unwrap();
        }
        let hw = gic.hw.lock().unwrap();
        for v in 0..VCPUS {
            assert!(
                hw.vpt[v].is_empty(),
                "vLPIs {:?} left pending for vCPU {v}, asleep: a lost wakeup",
                hw.vpt[v]
            );
        }
        drop(hw);
        for v in 0..VCPUS {
            assert!(r.drain(v).is_empty(), "a direct vLPI in the vGIC");
        }
    });
}

fn explore(f: impl Fn() + Send + Sync + 'static) {
    common::explore(ITERS, f);
}

fn discard(r: &Rig, gic: &Gic4) {
    r.discard(DEV, EV);
    gic.hw.lock().unwrap().dead.insert(VINTID);
}

fn mapti(r: &Rig, gic: &Gic4, icid: u16) {
    gic.hw.lock().unwrap().dead.remove(&VINTID);
    r.mapti(DEV, EV, VINTID, icid);
}

/// MSIs racing the vCPUs' waits: every one raised while mapped is taken.
#[test]
fn msis_against_residency_changes_lose_no_wakeup() {
    scenario(3, |r, gic| mapti(r, gic, 1));
}

/// DISCARD, then MAPTI of the same vINTID onto the other vCPU, while MSIs
/// arrive: nothing of the old life after the DISCARD returned.
#[test]
fn discard_and_remap_against_msis_and_residency() {
    scenario(3, |r, gic| {
        mapti(r, gic, 0);
        thread::yield_now();
        discard(r, gic);
        mapti(r, gic, 1);
        thread::yield_now();
        discard(r, gic);
    });
}

/// MOVI between the vCPUs while MSIs arrive and the vPEs come and go:
/// the pending bit moves with the vLPI and wakes its new vCPU.
#[test]
fn vmovi_against_msis_and_residency() {
    scenario(3, |r, gic| {
        mapti(r, gic, 0);
        for icid in [1, 0, 1] {
            thread::yield_now();
            r.cmd(Command::Movi {
                device: DEV,
                event: EV,
                icid,
            });
        }
    });
}

/// INT (a software trigger) of a direct event goes to the physical side,
/// and MAPD(V=0) discards it: the same checks.
#[test]
fn int_and_device_unmap_against_residency() {
    scenario(1, |r, gic| {
        mapti(r, gic, 1);
        r.int(DEV, EV);
        r.cmd(Command::Mapd {
            device: DEV,
            size: 0,
            itt_addr: 0,
            valid: false,
        });
        gic.hw.lock().unwrap().dead.insert(VINTID);
    });
}
