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
//! is turned back into (DeviceID, EventID) by `vigil_vits::hostlpi` and
//! handed to the vITS only for the mapping it was raised for: an LPI
//! arriving after the guest's DISCARD has returned is dropped (vITS
//! invariant 2), one arriving before it is delivered at most once, and
//! one taken before a `DISCARD; MAPTI` of the same event never reaches
//! the new mapping (H1, H2 there). Freed host LPIs are reused only after
//! every CPU that might hold one has left its handler (H3): every
//! acknowledgement publishes its epoch first (`gic::set_ack_hooks`).
//!
//! Lock order: vITS command queue, vITS routes (held while mirroring; the
//! vGIC lock never is), then this module's device map, then the physical
//! ITS command queue. The host-LPI path takes none of these: the route
//! table is atomics, then the vITS route and vGIC locks.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::{Mutex, Once};
use vigil_gic::its_cmd::ItsCommand;
use vigil_gic::LPI_BASE;
use vigil_vits::hostlpi::{HostRoutes, Route};
use vigil_vits::Mirror;

use crate::gic::its::{self, Its, ItsDevice};
use crate::gic::vpe::{self, Vpe};
use crate::{arch, gic};

/// Host LPI -> guest event, with the mapping's generation and the epoch
/// it was armed in (`vigil_vits::hostlpi`: invariants H1-H3).
static ROUTES: Once<HostRoutes> = Once::new();

/// Counters for the log and the tests.
pub static DELIVERED: AtomicU64 = AtomicU64::new(0);
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Events mapped to vLPIs directly (GICv4 VMAPTI).
pub static DIRECT_MAPS: AtomicU64 = AtomicU64::new(0);

/// Set up the host-LPI route table and handler. Once, on the primary CPU,
/// before any VM runs; a no-op without an ITS.
pub fn init() {
    if its::get().is_none() {
        return;
    }
    ROUTES
        .call_once(|| HostRoutes::new(LPI_BASE, gic::lpi_count() as usize, crate::percpu::count()));
    gic::set_lpi_handler(on_host_lpi);
}

fn routes() -> Option<&'static HostRoutes> {
    ROUTES.get()
}

/// Every acknowledgement publishes its epoch first (H2, H3). Installed
/// when the first VM with passthrough is created, before any vCPU runs.
fn install_ack_hooks() {
    gic::set_ack_hooks(gic::AckHooks {
        begin: |cpu| {
            if let Some(r) = routes() {
                r.begin_ack(cpu);
            }
        },
        end_window: |cpu| {
            if let Some(r) = routes() {
                r.end_window(cpu);
            }
        },
        end: |cpu| {
            if let Some(r) = routes() {
                r.end_ack(cpu);
            }
        },
    });
}

/// A host LPI: find the guest event it stands for and raise it through
/// that VM's vITS, into the mapping it was raised for.
fn on_host_lpi(intid: u32) {
    if let Some(v) = vpe::by_doorbell(intid) {
        // A vLPI for a vPE that is not resident: its vCPU has an interrupt
        // to take (the CPU is already awake: this is its redistributor).
        v.ring();
        return;
    }
    let cpu = arch::cpu_index();
    let Some(r) = routes() else { return };
    let route = r.lookup(intid, r.ack_epoch(cpu));
    // A VM being reset (or stopped) takes no interrupt: its vITS and
    // vGIC are about to be put back to their reset state.
    let vm = route.and_then(|rt| {
        super::vm_by_id(rt.vm)
            .filter(|v| v.is_running())
            .map(|v| (v, rt))
    });
    match vm.map(|(v, rt)| {
        (
            v,
            v.its
                .translate_generation(rt.device, rt.event, rt.generation),
        )
    }) {
        Some((v, Ok(kick))) => {
            DELIVERED.fetch_add(1, Ordering::Relaxed);
            v.kick(kick);
        }
        // Unmapped or remapped meanwhile, or acknowledged before this
        // mapping existed: what the architecture does with a translation
        // that fails.
        _ => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Give back quarantined host LPIs no handler can still be looking at.
fn reclaim(its: &Its) {
    if let Some(r) = routes() {
        r.reclaim(|first| {
            its.free_lpis(first);
        });
    }
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
    /// Events mapped on the physical ITS: to a host LPI (None), or to a
    /// vLPI of this vPE (GICv4 direct injection).
    mapped: Vec<(u32, Option<&'static Vpe>)>,
}

impl PhysDevice {
    fn mapping(&self, event: u32) -> Option<Option<&'static Vpe>> {
        self.mapped
            .iter()
            .find(|&&(e, _)| e == event)
            .map(|&(_, vpe)| vpe)
    }
}

/// `cmd` and, on a direct mapping, the VSYNC of its vPE that completes it
/// (SYNC, which `Its::run` appends, covers physical collections only;
/// IHI 0069H §5.3.28). No allocation: an INT of a direct event is a guest's
/// software trigger.
struct Completed([ItsCommand; 2], usize);

impl Completed {
    fn new(cmd: ItsCommand, vpe: Option<&Vpe>) -> Self {
        match vpe {
            Some(p) => Self([cmd, ItsCommand::vsync(p.id)], 2),
            None => Self([cmd, cmd], 1),
        }
    }

    fn cmds(&self) -> &[ItsCommand] {
        &self.0[..self.1]
    }
}

/// Mirrors one VM's vITS onto the physical ITS.
pub struct PhysMirror {
    vm: usize,
    devices: Mutex<BTreeMap<u32, PhysDevice>>,
}

impl PhysMirror {
    pub fn new(vm: usize) -> Self {
        install_ack_hooks();
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

    /// Guest vCPU `target`'s vPE (GICv4 direct injection).
    fn vpe(&self, target: usize) -> Option<&'static Vpe> {
        super::vm_by_id(self.vm)?.vcpus().get(target)?.vpe
    }

    /// How `event` of `device` is mapped on the physical ITS (None: not at
    /// all). Commands on an event whose physical MAPD or MAPTI failed are
    /// not mirrored (the physical ITS would reject them, or act on
    /// another's).
    fn mapping(&self, device: u32, event: u32) -> Option<Option<&'static Vpe>> {
        self.devices.lock().get(&device)?.mapping(event)
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
        let d = {
            let mut devices = self.devices.lock();
            let Some(d) = devices.remove(&device) else {
                return;
            };
            // An empty BTreeMap keeps its root node; a VM without devices
            // holds no heap (the exit's leak check counts every byte).
            if devices.is_empty() {
                *devices = BTreeMap::new();
            }
            d
        };
        // DISCARD every event (which also clears a pending host LPI at the
        // redistributor; MAPD(V=0) alone leaves those), unmap the device
        // (no new host LPI), forget the routes, then quarantine the LPIs
        // for any handler still running.
        let mut discards: Vec<ItsCommand> = d
            .mapped
            .iter()
            .map(|&(e, _)| ItsCommand::discard(device, e))
            .collect();
        let mut vpes: Vec<u16> = d.mapped.iter().filter_map(|&(_, v)| Some(v?.id)).collect();
        vpes.sort_unstable();
        vpes.dedup();
        discards.extend(vpes.into_iter().map(ItsCommand::vsync));
        self.run(its, "DISCARD", &discards);
        if let Err(e) = its.unmap_device(d.its_dev) {
            log::error!(
                "passthrough: vm {}: physical MAPD(V=0) {device:#x}: {e}",
                self.vm
            );
        }
        let Some(r) = routes() else { return };
        for lpi in d.lpi_base..d.lpi_base + d.nr_lpis {
            gic::set_lpi_config(lpi, gic::DEFAULT_PRIORITY, false);
            r.disarm(lpi);
        }
        r.free_later(d.lpi_base);
    }

    fn map_event(
        &self,
        device: u32,
        event: u32,
        intid: u32,
        target: Option<usize>,
        generation: u64,
    ) -> bool {
        let Some(its) = its::get() else { return false };
        // Direct when the target vCPU has a vPE whose table holds the
        // vINTID; otherwise (no collection yet, a vINTID beyond the vPE's
        // ID bits, or the v3 path) through a host LPI.
        let vpe = target
            .and_then(|t| self.vpe(t))
            .filter(|p| u64::from(intid) < 1u64 << p.id_bits);
        let Some(lpi) = self
            .devices
            .lock()
            .get_mut(&device)
            .filter(|d| event < d.nr_lpis)
            .map(|d| {
                d.mapped.push((event, vpe));
                d.lpi_base + event
            })
        else {
            return false;
        };
        if let Some(p) = vpe {
            // The physical ITS owns the pending state from here; INV for
            // an implementation that caches the configuration.
            self.run(
                its,
                "VMAPTI",
                &[
                    ItsCommand::vmapti(device, event, p.id, intid, p.doorbell),
                    ItsCommand::inv(device, event),
                    ItsCommand::vsync(p.id),
                ],
            );
            DIRECT_MAPS.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        // Armed before the physical MAPTI, which therefore raises only LPIs
        // acknowledged after the arming (H2).
        if let Some(r) = routes() {
            r.arm(
                lpi,
                Route {
                    vm: self.vm,
                    device,
                    event,
                    generation: generation as u32,
                },
            );
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
        false
    }

    fn unmap_event(&self, device: u32, event: u32) {
        let Some(its) = its::get() else { return };
        let found = self
            .devices
            .lock()
            .get_mut(&device)
            .filter(|d| event < d.nr_lpis)
            .and_then(|d| {
                let at = d.mapped.iter().position(|&(e, _)| e == event)?;
                Some((d.mapped.swap_remove(at).1, d.lpi_base + event))
            });
        let Some((vpe, lpi)) = found else {
            // Never mapped on the physical ITS (its MAPD or MAPTI failed).
            return;
        };
        // On a direct mapping DISCARD also clears the vLPI's pending bit in
        // the vPE's table; after the VSYNC no instance of it is left to
        // reach the guest (vITS invariant 2).
        self.run(
            its,
            "DISCARD",
            Completed::new(ItsCommand::discard(device, event), vpe).cmds(),
        );
        if vpe.is_none() {
            if let Some(r) = routes() {
                r.disarm(lpi);
            }
        }
    }

    fn move_event(&self, device: u32, event: u32, target: usize) {
        let Some(its) = its::get() else { return };
        match self.mapping(device, event) {
            None => {}
            Some(None) => {
                let icid = self.icid(Some(target));
                self.run(its, "MOVI", &[ItsCommand::movi(device, event, icid)]);
            }
            Some(Some(from)) => {
                let Some(to) = self.vpe(target) else { return };
                // VMOVI carries the pending bit to the new vPE's table
                // (ringing its doorbell if it is not resident): vITS
                // invariant 9 on the direct path.
                self.run(
                    its,
                    "VMOVI",
                    &[
                        ItsCommand::vmovi(device, event, to.id, to.doorbell),
                        ItsCommand::vsync(from.id),
                        ItsCommand::vsync(to.id),
                    ],
                );
                if let Some(d) = self.devices.lock().get_mut(&device) {
                    if let Some(m) = d.mapped.iter_mut().find(|(e, _)| *e == event) {
                        m.1 = Some(to);
                    }
                }
            }
        }
    }

    fn clear_event(&self, device: u32, event: u32) {
        let Some(its) = its::get() else { return };
        let Some(vpe) = self.mapping(device, event) else {
            return;
        };
        self.run(
            its,
            "CLEAR",
            Completed::new(ItsCommand::clear(device, event), vpe).cmds(),
        );
    }

    fn raise(&self, device: u32, event: u32) -> bool {
        let Some(its) = its::get() else { return false };
        let Some(Some(vpe)) = self.mapping(device, event) else {
            return false;
        };
        // INT on the virtual mapping: the one pending state of this vLPI
        // is the vPE's pending table.
        self.run(
            its,
            "INT",
            Completed::new(ItsCommand::int(device, event), Some(vpe)).cmds(),
        );
        true
    }

    fn inv_event(&self, device: u32, event: u32) {
        let Some(its) = its::get() else { return };
        let Some(Some(vpe)) = self.mapping(device, event) else {
            return;
        };
        self.run(
            its,
            "INV",
            Completed::new(ItsCommand::inv(device, event), Some(vpe)).cmds(),
        );
    }
}
