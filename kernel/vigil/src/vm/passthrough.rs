//! PCIe passthrough: the host's PCIe bridge given to one identity-mapped
//! VM, with its devices' MSIs delivered through the VM's virtual ITS.
//!
//! The guest programs its devices' MSI doorbell with the ITS translation
//! register; the vITS is at the same address as the physical ITS, so the
//! device's write reaches the physical ITS. The guest's ITS commands are
//! mirrored onto the physical ITS (as Xen does for its hardware domain):
//! MAPD creates the device with an ITT Vigil owns and a block of host LPIs,
//! MAPTI maps event e to host LPI base + e on the physical CPU of the
//! target vCPU, and DISCARD, MOVI, CLEAR and MAPD(V=0) follow. A host LPI
//! is turned back into (DeviceID, EventID) by one atomic read of a route
//! table and handed to the vITS, which injects it only if the guest's
//! mapping still exists — so an LPI arriving after the guest's DISCARD has
//! returned is dropped (vITS invariant 2), one arriving before it is
//! delivered at most once.
//!
//! Freed host LPIs are reused only after every CPU has left the host-LPI
//! handler it might have been in (an epoch scheme), so a late LPI can never
//! be taken for another device's.
//!
//! Lock order: vITS command queue, vITS routes (held while mirroring),
//! then this module's device map, then the physical ITS command queue.
//! The host-LPI path takes none of the first three: only the route table
//! (atomics) and then the vITS route and vGIC locks.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::{Mutex, Once};
use vigil_gic::its_cmd::ItsCommand;
use vigil_gic::LPI_BASE;
use vigil_platform::MAX_CPUS;
use vigil_vits::Mirror;

use crate::gic::its::{self, Its, ItsDevice};
use crate::{arch, gic};

/// Host LPI -> (VM, DeviceID, EventID): bit 63 valid, VM in [62:56],
/// DeviceID in [55:32], EventID in [31:0].
static ROUTES: Once<Vec<AtomicU64>> = Once::new();
const VALID: u64 = 1 << 63;

fn pack(vm: usize, device: u32, event: u32) -> u64 {
    VALID | ((vm as u64 & 0x7f) << 56) | ((device as u64 & 0xff_ffff) << 32) | event as u64
}

fn route(lpi: u32) -> Option<&'static AtomicU64> {
    ROUTES.get()?.get(lpi.checked_sub(LPI_BASE)? as usize)
}

/// Epochs for reclaiming host LPIs: a CPU in the host-LPI handler records
/// the global epoch it entered with (0 when outside).
static EPOCH: AtomicU64 = AtomicU64::new(1);
static IN_HANDLER: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Host LPI blocks waiting for every CPU to leave older handler runs.
static QUARANTINE: Mutex<Vec<(u32, u64)>> = Mutex::new(Vec::new());

/// Counters for the log and the tests.
pub static DELIVERED: AtomicU64 = AtomicU64::new(0);
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Set up the host-LPI route table and handler. Once, on the primary CPU,
/// before any VM runs; a no-op without an ITS.
pub fn init() {
    if its::get().is_none() {
        return;
    }
    ROUTES.call_once(|| (0..gic::lpi_count()).map(|_| AtomicU64::new(0)).collect());
    gic::set_lpi_handler(on_host_lpi);
}

/// A host LPI: find the guest event it stands for and raise it through
/// that VM's vITS.
fn on_host_lpi(intid: u32) {
    let cpu = arch::cpu_index();
    IN_HANDLER[cpu].store(EPOCH.load(Ordering::SeqCst), Ordering::SeqCst);
    let entry = route(intid).map_or(0, |r| r.load(Ordering::Acquire));
    if entry & VALID != 0 {
        let vm = ((entry >> 56) & 0x7f) as usize;
        let device = ((entry >> 32) & 0xff_ffff) as u32;
        let event = entry as u32;
        // A VM being reset (or stopped) takes no interrupt: its vITS and
        // vGIC are about to be put back to their reset state.
        let vm = super::vm_by_id(vm).filter(|v| v.is_running());
        match vm.map(|v| (v, v.its.translate(device, event))) {
            Some((v, Ok(kick))) => {
                DELIVERED.fetch_add(1, Ordering::Relaxed);
                v.kick(kick);
            }
            // The guest unmapped it meanwhile: what the architecture
            // does with a translation that fails.
            _ => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    } else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
    IN_HANDLER[cpu].store(0, Ordering::Release);
}

/// Give back quarantined host LPIs no handler can still be looking at.
fn reclaim(its: &Its) {
    let oldest_active = IN_HANDLER
        .iter()
        .map(|e| e.load(Ordering::SeqCst))
        .filter(|&e| e != 0)
        .min()
        .unwrap_or(u64::MAX);
    QUARANTINE.lock().retain(|&(first, freed_at)| {
        if freed_at < oldest_active {
            its.free_lpis(first);
            false
        } else {
            true
        }
    });
}

/// Free host LPIs now (reclaiming the quarantine first): the count the
/// leak checks compare.
pub fn free_host_lpis() -> u32 {
    its::get().map_or(0, |its| {
        reclaim(its);
        its.free_lpi_count()
    })
}

struct PhysDevice {
    its_dev: ItsDevice,
    lpi_base: u32,
    nr_lpis: u32,
    /// Events mapped on the physical ITS.
    mapped: Vec<u32>,
}

/// Mirrors one VM's vITS onto the physical ITS.
pub struct PhysMirror {
    vm: usize,
    devices: Mutex<BTreeMap<u32, PhysDevice>>,
}

impl PhysMirror {
    pub fn new(vm: usize) -> Self {
        Self {
            vm,
            devices: Mutex::new(BTreeMap::new()),
        }
    }

    /// The physical collection (ICID = CPU index) for guest vCPU `target`.
    fn icid(&self, target: Option<usize>) -> u16 {
        target
            .and_then(|t| super::vm_by_id(self.vm)?.vcpus().get(t).map(|v| v.pcpu))
            .unwrap_or(0) as u16
    }

    fn run(&self, its: &Its, what: &str, cmds: &[ItsCommand]) {
        if let Err(e) = its.run(cmds) {
            log::error!("passthrough: vm {}: physical ITS {what}: {e}", self.vm);
        }
    }
}

impl Mirror for PhysMirror {
    fn owns(&self, _device: u32) -> bool {
        // Every DeviceID behind the bridge is a real requester ID.
        true
    }

    fn map_device(&self, device: u32, event_bits: u8) {
        let Some(its) = its::get() else { return };
        reclaim(its);
        let nr_lpis = 1u32 << event_bits.min(16);
        let Some(lpi_base) = its.alloc_lpis(nr_lpis) else {
            log::error!(
                "passthrough: vm {}: no host LPIs left for DeviceID {device:#x}; its MSIs are lost",
                self.vm
            );
            return;
        };
        for lpi in lpi_base..lpi_base + nr_lpis {
            gic::set_lpi_config(lpi, gic::DEFAULT_PRIORITY, true);
        }
        match its.map_device(device, event_bits) {
            Ok(its_dev) => {
                log::debug!(
                    "passthrough: vm {}: DeviceID {device:#x}: {nr_lpis} host LPIs from {lpi_base}",
                    self.vm
                );
                self.devices.lock().insert(
                    device,
                    PhysDevice {
                        its_dev,
                        lpi_base,
                        nr_lpis,
                        mapped: Vec::new(),
                    },
                );
            }
            Err(e) => {
                log::error!(
                    "passthrough: vm {}: physical MAPD {device:#x}: {e}",
                    self.vm
                );
                its.free_lpis(lpi_base);
            }
        }
    }

    fn unmap_device(&self, device: u32) {
        let Some(its) = its::get() else { return };
        let Some(d) = self.devices.lock().remove(&device) else {
            return;
        };
        // DISCARD every event (which also clears a pending host LPI at the
        // redistributor; MAPD(V=0) alone leaves those), unmap the device
        // (no new host LPI), forget the routes, then quarantine the LPIs
        // for any handler still running.
        let discards: Vec<ItsCommand> = d
            .mapped
            .iter()
            .map(|&e| ItsCommand::discard(device, e))
            .collect();
        self.run(its, "DISCARD", &discards);
        if let Err(e) = its.unmap_device(d.its_dev) {
            log::error!(
                "passthrough: vm {}: physical MAPD(V=0) {device:#x}: {e}",
                self.vm
            );
        }
        for lpi in d.lpi_base..d.lpi_base + d.nr_lpis {
            gic::set_lpi_config(lpi, gic::DEFAULT_PRIORITY, false);
            if let Some(r) = route(lpi) {
                r.store(0, Ordering::Release);
            }
        }
        let epoch = EPOCH.fetch_add(1, Ordering::SeqCst);
        QUARANTINE.lock().push((d.lpi_base, epoch));
    }

    fn map_event(&self, device: u32, event: u32, target: Option<usize>) {
        let Some(its) = its::get() else { return };
        let Some(lpi) = self
            .devices
            .lock()
            .get_mut(&device)
            .filter(|d| event < d.nr_lpis)
            .map(|d| {
                d.mapped.push(event);
                d.lpi_base + event
            })
        else {
            return;
        };
        if let Some(r) = route(lpi) {
            r.store(pack(self.vm, device, event), Ordering::Release);
        }
        let icid = self.icid(target);
        self.run(
            its,
            "MAPTI",
            &[
                ItsCommand::mapti(device, event, lpi, icid),
                ItsCommand::inv(device, event),
            ],
        );
    }

    fn unmap_event(&self, device: u32, event: u32) {
        let Some(its) = its::get() else { return };
        let lpi = self
            .devices
            .lock()
            .get_mut(&device)
            .filter(|d| event < d.nr_lpis)
            .map(|d| {
                d.mapped.retain(|&e| e != event);
                d.lpi_base + event
            });
        self.run(its, "DISCARD", &[ItsCommand::discard(device, event)]);
        if let Some(r) = lpi.and_then(route) {
            r.store(0, Ordering::Release);
        }
    }

    fn move_event(&self, device: u32, event: u32, target: usize) {
        let Some(its) = its::get() else { return };
        let icid = self.icid(Some(target));
        self.run(its, "MOVI", &[ItsCommand::movi(device, event, icid)]);
    }

    fn clear_event(&self, device: u32, event: u32) {
        let Some(its) = its::get() else { return };
        self.run(its, "CLEAR", &[ItsCommand::clear(device, event)]);
    }
}
