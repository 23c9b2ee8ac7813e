//! The passthrough mirror: a vITS's mappings of real devices, mirrored
//! onto a physical ITS (as Xen does for its hardware domain).
//!
//! MAPD creates the device with an ITT of the hypervisor's and a block of
//! host LPIs; MAPTI maps event e either to its vLPI directly (GICv4
//! VMAPTI, when the target vCPU has a vPE whose pending table holds the
//! vINTID) or to host LPI base + e in the target vCPU's physical
//! collection, whose handler turns it back into (DeviceID, EventID)
//! through [`crate::hostlpi`]; DISCARD, MOVI (VMOVI), CLEAR, INT, INV and
//! MAPD(V=0) follow. Every command on a direct mapping is completed by a
//! VSYNC of its vPE (SYNC covers physical collections only; IHI 0069H
//! §5.3.28), in the same batch, before the guest's command completes.
//!
//! The physical side is behind [`PhysIts`]: the kernel's ITS driver, or a
//! model of one in the tests (`tests/gicv4.rs` runs this mirror under
//! shuttle against a model of QEMU's GICv4 that executes the encoded
//! commands).
//!
//! Lock order: called with the vITS's command-queue and route locks held
//! (crate::its, item 4); takes its device map, then whatever
//! [`PhysIts::run`] takes (the physical command queue).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use vigil_gic::its_cmd::ItsCommand;
use vigil_vgic::sync::Mutex;

use crate::hostlpi::{HostRoutes, Route};
use crate::Mirror;

/// A vCPU's GICv4 vPE, as the mirror names it in commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VpeRef {
    pub id: u16,
    /// The host LPI its redistributor raises for a vLPI while it is not
    /// resident.
    pub doorbell: u32,
    /// vINTIDs below 2^id_bits fit its pending table.
    pub id_bits: u8,
}

/// The physical ITS and the hypervisor around it.
pub trait PhysIts: Send + Sync {
    /// What a device's physical MAPD made (its ITT), given back at
    /// MAPD(V=0).
    type Device: Send;
    type Error: core::fmt::Display;
    /// Queue `cmds` and wait until the ITS has consumed them (and a SYNC).
    fn run(&self, cmds: &[ItsCommand]) -> Result<(), Self::Error>;
    /// MAPD(V=1) with an ITT for 2^`event_bits` events.
    fn map_device(&self, device: u32, event_bits: u8) -> Result<Self::Device, Self::Error>;
    /// MAPD(V=0), then free the ITT.
    fn unmap_device(&self, device: Self::Device) -> Result<(), Self::Error>;
    /// A block of at least `count` host LPIs: its first.
    fn alloc_lpis(&self, count: u32) -> Option<u32>;
    fn free_lpis(&self, first: u32);
    /// Host LPI `lpi` enabled (default priority) or disabled.
    fn set_lpi_enabled(&self, lpi: u32, enabled: bool);
    /// The physical collection that reaches guest vCPU `vcpu`'s CPU.
    fn icid(&self, vcpu: Option<usize>) -> u16;
    /// Guest vCPU `vcpu`'s vPE, if its MSIs can be injected directly.
    fn vpe(&self, vcpu: usize) -> Option<VpeRef>;
    /// The host-LPI route table, if host LPIs are routed back.
    fn routes(&self) -> Option<&HostRoutes>;
    /// An event was mapped to its vLPI directly (a counter).
    fn note_direct_map(&self) {}
}

struct PhysDevice<D> {
    dev: D,
    lpi_base: u32,
    nr_lpis: u32,
    /// Events mapped on the physical ITS: to a host LPI (None), or to a
    /// vLPI of this vPE.
    mapped: Vec<(u32, Option<VpeRef>)>,
}

impl<D> PhysDevice<D> {
    fn mapping(&self, event: u32) -> Option<Option<VpeRef>> {
        self.mapped
            .iter()
            .find(|&&(e, _)| e == event)
            .map(|&(_, vpe)| vpe)
    }
}

/// `cmd` and, on a direct mapping, the VSYNC of its vPE that completes it.
/// No allocation: an INT of a direct event is a guest's software trigger.
struct Completed([ItsCommand; 2], usize);

impl Completed {
    fn new(cmd: ItsCommand, vpe: Option<VpeRef>) -> Self {
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
pub struct PassMirror<P: PhysIts> {
    vm: usize,
    phys: P,
    devices: Mutex<BTreeMap<u32, PhysDevice<P::Device>>>,
}

impl<P: PhysIts> PassMirror<P> {
    /// The mirror of VM `vm` (its index in host-LPI routes).
    pub fn new(vm: usize, phys: P) -> Self {
        Self {
            vm,
            phys,
            devices: Mutex::new(BTreeMap::new()),
        }
    }

    /// Give back quarantined host LPIs no handler can still be looking at.
    fn reclaim(&self) {
        if let Some(r) = self.phys.routes() {
            r.reclaim(|first| self.phys.free_lpis(first));
        }
    }

    /// How `event` of `device` is mapped on the physical ITS (None: not at
    /// all). Commands on an event whose physical MAPD or MAPTI failed are
    /// not mirrored (the physical ITS would reject them, or act on
    /// another's).
    fn mapping(&self, device: u32, event: u32) -> Option<Option<VpeRef>> {
        self.devices.lock().get(&device)?.mapping(event)
    }

    fn run(&self, what: &str, cmds: &[ItsCommand]) {
        if let Err(e) = self.phys.run(cmds) {
            log::error!("passthrough: vm {}: physical ITS {what}: {e}", self.vm);
        }
    }
}

impl<P: PhysIts> Mirror for PassMirror<P> {
    fn owns(&self, _device: u32) -> bool {
        // Every DeviceID behind the bridge is a real requester ID.
        true
    }

    fn map_device(&self, device: u32, event_bits: u8) {
        self.reclaim();
        let nr_lpis = 1u32 << event_bits.min(16);
        let Some(lpi_base) = self.phys.alloc_lpis(nr_lpis) else {
            log::error!(
                "passthrough: vm {}: no host LPIs left for DeviceID {device:#x}; its MSIs are lost",
                self.vm
            );
            return;
        };
        for lpi in lpi_base..lpi_base + nr_lpis {
            self.phys.set_lpi_enabled(lpi, true);
        }
        match self.phys.map_device(device, event_bits) {
            Ok(dev) => {
                log::debug!(
                    "passthrough: vm {}: DeviceID {device:#x}: {nr_lpis} host LPIs from {lpi_base}",
                    self.vm
                );
                self.devices.lock().insert(
                    device,
                    PhysDevice {
                        dev,
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
                self.phys.free_lpis(lpi_base);
            }
        }
    }

    fn unmap_device(&self, device: u32) {
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
        // redistributor, or a vLPI's bit in its vPE's table; MAPD(V=0)
        // alone leaves those), VSYNC each vPE involved, unmap the device
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
        self.run("DISCARD", &discards);
        if let Err(e) = self.phys.unmap_device(d.dev) {
            log::error!(
                "passthrough: vm {}: physical MAPD(V=0) {device:#x}: {e}",
                self.vm
            );
        }
        for lpi in d.lpi_base..d.lpi_base + d.nr_lpis {
            self.phys.set_lpi_enabled(lpi, false);
        }
        let Some(r) = self.phys.routes() else {
            self.phys.free_lpis(d.lpi_base);
            return;
        };
        for lpi in d.lpi_base..d.lpi_base + d.nr_lpis {
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
        // Direct when the target vCPU has a vPE whose table holds the
        // vINTID; otherwise (no collection yet, a vINTID beyond the vPE's
        // ID bits, or the v3 path) through a host LPI.
        let vpe = target
            .and_then(|t| self.phys.vpe(t))
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
                "VMAPTI",
                &[
                    ItsCommand::vmapti(device, event, p.id, intid, p.doorbell),
                    ItsCommand::inv(device, event),
                    ItsCommand::vsync(p.id),
                ],
            );
            self.phys.note_direct_map();
            return true;
        }
        // Armed before the physical MAPTI, which therefore raises only LPIs
        // acknowledged after the arming (H2).
        if let Some(r) = self.phys.routes() {
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
        let icid = self.phys.icid(target);
        self.run(
            "MAPTI",
            &[
                ItsCommand::mapti(device, event, lpi, icid),
                ItsCommand::inv(device, event),
            ],
        );
        false
    }

    fn unmap_event(&self, device: u32, event: u32) {
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
            "DISCARD",
            Completed::new(ItsCommand::discard(device, event), vpe).cmds(),
        );
        if vpe.is_none() {
            if let Some(r) = self.phys.routes() {
                r.disarm(lpi);
            }
        }
    }

    fn move_event(&self, device: u32, event: u32, target: usize) {
        match self.mapping(device, event) {
            None => {}
            Some(None) => {
                let icid = self.phys.icid(Some(target));
                self.run("MOVI", &[ItsCommand::movi(device, event, icid)]);
            }
            Some(Some(from)) => {
                let Some(to) = self.phys.vpe(target) else {
                    return;
                };
                // VMOVI carries the pending bit to the new vPE's table
                // (ringing its doorbell if it is not resident): vITS
                // invariant 9 on the direct path.
                self.run(
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
        let Some(vpe) = self.mapping(device, event) else {
            return;
        };
        self.run(
            "CLEAR",
            Completed::new(ItsCommand::clear(device, event), vpe).cmds(),
        );
    }

    fn raise(&self, device: u32, event: u32) -> bool {
        let Some(Some(vpe)) = self.mapping(device, event) else {
            return false;
        };
        // INT on the virtual mapping: the one pending state of this vLPI
        // is the vPE's pending table.
        self.run(
            "INT",
            Completed::new(ItsCommand::int(device, event), Some(vpe)).cmds(),
        );
        true
    }

    fn inv_event(&self, device: u32, event: u32) {
        let Some(Some(vpe)) = self.mapping(device, event) else {
            return;
        };
        self.run(
            "INV",
            Completed::new(ItsCommand::inv(device, event), Some(vpe)).cmds(),
        );
    }
}
