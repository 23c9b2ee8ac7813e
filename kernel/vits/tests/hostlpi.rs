//! Concurrency tests (shuttle) of the host-LPI routes (`hostlpi`): a
//! passed-through device's host LPI, acknowledged on one CPU, against the
//! guest's commands that unmap and remap its event or device on another.
//! The real vITS and `HostRoutes` run; a test mirror stands for the
//! hypervisor's physical ITS (one host LPI, its pending bit), and the
//! handler thread does what Vigil's IRQ path does: publish the epoch,
//! acknowledge, look the route up, raise through the vITS.

mod common;

use std::sync::Arc;

use common::*;
use shuttle::sync::atomic::{AtomicBool, Ordering};
use shuttle::thread;
use vigil_vits::hostlpi::{HostRoutes, Route};
use vigil_vits::{Command, Mirror};

const ITERS: usize = 400;

/// Run `f` under shuttle (see `common::explore`).
fn explore(f: impl Fn() + Send + Sync + 'static) {
    common::explore(ITERS, f);
}

/// The one host LPI of these tests.
const HOST_LPI: u32 = 8192;
/// The CPU that takes it.
const CPU: usize = 1;

/// The physical side: the host LPI's pending bit and which device owns
/// the block it belongs to.
struct Phys {
    pending: AtomicBool,
    block_free: AtomicBool,
    owner: std::sync::Mutex<Option<u32>>,
}

struct TestMirror {
    routes: Arc<HostRoutes>,
    phys: Arc<Phys>,
}

impl Mirror for TestMirror {
    fn owns(&self, _device: u32) -> bool {
        true
    }
    fn map_device(&self, device: u32, _event_bits: u8) {
        self.routes
            .reclaim(|_| self.phys.block_free.store(true, Ordering::SeqCst));
        if self.phys.block_free.swap(false, Ordering::SeqCst) {
            *self.phys.owner.lock().unwrap() = Some(device);
        }
    }
    fn unmap_device(&self, device: u32) {
        let mut owner = self.phys.owner.lock().unwrap();
        if *owner == Some(device) {
            // Physical DISCARD of every event, then the block is freed.
            self.phys.pending.store(false, Ordering::SeqCst);
            self.routes.disarm(HOST_LPI);
            self.routes.free_later(HOST_LPI);
            *owner = None;
        }
    }
    fn map_event(
        &self,
        device: u32,
        event: u32,
        _intid: u32,
        _target: Option<usize>,
        generation: u64,
    ) -> bool {
        let owned = *self.phys.owner.lock().unwrap() == Some(device);
        if !owned || event != 0 {
            return false;
        }
        self.routes.arm(
            HOST_LPI,
            Route {
                vm: 0,
                device,
                event,
                generation: generation as u32,
            },
        );
        false
    }
    fn unmap_event(&self, device: u32, event: u32) {
        if *self.phys.owner.lock().unwrap() == Some(device) && event == 0 {
            self.phys.pending.store(false, Ordering::SeqCst);
            self.routes.disarm(HOST_LPI);
        }
    }
    fn move_event(&self, _device: u32, _event: u32, _target: usize) {}
    fn clear_event(&self, _device: u32, _event: u32) {}
}

fn rig() -> (Arc<Rig>, Arc<HostRoutes>, Arc<Phys>) {
    let r = Arc::new(Rig::new(1));
    let routes = Arc::new(HostRoutes::new(HOST_LPI, 32, 2));
    let phys = Arc::new(Phys {
        pending: AtomicBool::new(false),
        block_free: AtomicBool::new(true),
        owner: std::sync::Mutex::new(None),
    });
    r.its.set_mirror(Arc::new(TestMirror {
        routes: routes.clone(),
        phys: phys.clone(),
    }));
    (r, routes, phys)
}

/// What Vigil's IRQ path does with the host LPI on CPU `CPU`: publish the
/// epoch, acknowledge (take the pending bit), look up, raise.
fn take_host_lpi(r: &Rig, routes: &HostRoutes, phys: &Phys) {
    routes.begin_ack(CPU);
    let acked = phys.pending.swap(false, Ordering::SeqCst);
    routes.end_window(CPU);
    if acked {
        if let Some(rt) = routes.lookup(HOST_LPI, routes.ack_epoch(CPU)) {
            let _ = r
                .its
                .translate_generation(rt.device, rt.event, rt.generation);
        }
    }
    routes.end_ack(CPU);
}

/// Device 1's event 0 mapped to LPI0 and its host LPI raised (pending),
/// then taken on CPU `CPU` while `guest` runs commands on this thread:
/// what vCPU 0 then takes (the vGIC stays consistent).
fn race_pending_host_lpi(guest: impl FnOnce(&Rig)) -> Vec<u32> {
    let (r, routes, phys) = rig();
    r.mapd(1, 3);
    r.mapti(1, 0, LPI0, 0);
    // The device raises its MSI: a host LPI for this mapping.
    phys.pending.store(true, Ordering::SeqCst);
    let (r2, rt2, p2) = (r.clone(), routes.clone(), phys.clone());
    let cpu = thread::spawn(move || take_host_lpi(&r2, &rt2, &p2));
    guest(&r);
    cpu.join().unwrap();
    let got = r.drain(0);
    assert_eq!(r.vgic.lock().anomalies(), 0);
    got
}

/// (H1, H2) A host LPI raised for (DeviceID 1, EventID 0) is being taken
/// while the guest runs `DISCARD; MAPTI` of the same event to another
/// vINTID: it may reach the old mapping (before the DISCARD), never the
/// new one. Without the generation check, an LPI whose route was read
/// before the DISCARD is raised through the new mapping; without the
/// armed epoch, one acknowledged before the DISCARD whose route is read
/// after the MAPTI is.
#[test]
fn host_lpi_taken_across_discard_mapti_never_reaches_the_new_mapping() {
    explore(|| {
        let got = race_pending_host_lpi(|r| {
            r.discard(1, 0);
            r.mapti(1, 0, LPI0 + 1, 0);
        });
        assert!(
            !got.contains(&(LPI0 + 1)),
            "the old mapping's host LPI was raised through the new one: {got:?}"
        );
    });
}

/// (H3, H2) A host LPI of device 1 is being taken while the guest unmaps
/// device 1 (MAPD V=0) and maps device 2, which gets the same block of
/// host LPIs once it is reclaimed: device 2's mapping never receives
/// device 1's interrupt. Publishing the epoch only after the
/// acknowledgement (the order before issue 14) lets the block be reclaimed
/// and re-armed under a handler that already holds one of its LPIs.
#[test]
fn host_lpi_of_an_unmapped_device_never_reaches_the_device_reusing_its_block() {
    explore(|| {
        let got = race_pending_host_lpi(|r| {
            r.cmd(Command::Mapd {
                device: 1,
                size: 3,
                itt_addr: 0,
                valid: false,
            });
            r.mapd(2, 3);
            r.mapti(2, 0, LPI0 + 1, 0);
        });
        assert!(
            !got.contains(&(LPI0 + 1)),
            "device 1's host LPI reached device 2's mapping: {got:?}"
        );
    });
}

/// The other side of H2: a host LPI raised after the MAPTI (the device's
/// MSI of the new mapping) is delivered, however its acknowledgement
/// interleaves with the arming.
#[test]
fn host_lpi_raised_after_the_mapti_is_delivered() {
    explore(|| {
        let (r, routes, phys) = rig();
        r.mapd(1, 3);
        let raised = Arc::new(AtomicBool::new(false));
        let (r2, rt2, p2, raised2) = (r.clone(), routes.clone(), phys.clone(), raised.clone());
        let cpu = thread::spawn(move || {
            // Poll like a CPU taking interrupts as they come.
            while !raised2.load(Ordering::SeqCst) || p2.pending.load(Ordering::SeqCst) {
                take_host_lpi(&r2, &rt2, &p2);
                thread::yield_now();
            }
        });
        r.mapti(1, 0, LPI0, 0);
        // The physical MAPTI is done: the device's MSI now sets pending.
        phys.pending.store(true, Ordering::SeqCst);
        raised.store(true, Ordering::SeqCst);
        cpu.join().unwrap();
        assert_eq!(
            r.drain(0),
            vec![LPI0],
            "the new mapping's interrupt was lost"
        );
    });
}
