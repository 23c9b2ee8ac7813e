//! PCIe passthrough: the host's PCIe bridge given to one VM, with its
//! devices' MSIs delivered through the VM's virtual ITS.
//!
//! The guest programs its devices' MSI doorbell with the ITS translation
//! register; the vITS is at the same address as the physical ITS, so the
//! device's write reaches the physical ITS (through the SMMU's stage 2).
//! The guest's ITS commands are mirrored onto the physical ITS by
//! `vigil_vits::mirror::PassMirror` (host-tested), over this module's
//! [`KernelIts`]: MAPTI maps an event to its vLPI directly (GICv4, see
//! `gic::vpe`) or to a host LPI of the target vCPU's CPU. This module is
//! the host-LPI end: a host LPI is turned back into (DeviceID, EventID) by
//! `vigil_vits::hostlpi` and handed to the vITS only for the mapping it
//! was raised for: an LPI arriving after the guest's DISCARD has returned
//! is dropped (vITS invariant 2), one arriving before it is delivered at
//! most once, and one taken before a `DISCARD; MAPTI` of the same event
//! never reaches the new mapping (H1, H2 there). Freed host LPIs are
//! reused only after every CPU that might hold one has left its handler
//! (H3): every acknowledgement publishes its epoch first
//! (`gic::set_ack_hooks`). A doorbell LPI marks its vPE.
//!
//! Lock order: vITS command queue, vITS routes (held while mirroring; the
//! vGIC lock never is), then the mirror's device map, then the physical
//! ITS command queue. The host-LPI path takes none of these: the route
//! table is atomics, then the vITS route and vGIC locks.

use core::sync::atomic::{AtomicU64, Ordering};
use spin::Once;
use vigil_gic::its_cmd::ItsCommand;
use vigil_gic::LPI_BASE;
use vigil_vits::hostlpi::HostRoutes;
use vigil_vits::mirror::{PhysIts, VpeRef};

use crate::gic::its::{self, Its, ItsDevice, ItsError};
use crate::gic::vpe;
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

/// The physical ITS and the rest of the hypervisor, as VM `vm`'s mirror
/// (`vigil_vits::mirror::PassMirror`) sees them.
pub struct KernelIts {
    vm: usize,
    its: &'static Its,
}

impl KernelIts {
    /// VM `vm`'s side of the physical ITS; None without one.
    pub fn new(vm: usize) -> Option<Self> {
        install_ack_hooks();
        Some(Self {
            vm,
            its: its::get()?,
        })
    }
}

impl PhysIts for KernelIts {
    type Device = ItsDevice;
    type Error = ItsError;

    fn run(&self, cmds: &[ItsCommand]) -> Result<(), ItsError> {
        self.its.run(cmds)
    }

    fn map_device(&self, device: u32, event_bits: u8) -> Result<ItsDevice, ItsError> {
        self.its.map_device(device, event_bits)
    }

    fn unmap_device(&self, device: ItsDevice) -> Result<(), ItsError> {
        self.its.unmap_device(device)
    }

    fn alloc_lpis(&self, count: u32) -> Option<u32> {
        self.its.alloc_lpis(count)
    }

    fn free_lpis(&self, first: u32) {
        self.its.free_lpis(first);
    }

    fn set_lpi_enabled(&self, lpi: u32, enabled: bool) {
        gic::set_lpi_config(lpi, gic::DEFAULT_PRIORITY, enabled);
    }

    /// ICID = the CPU index of the vCPU's physical CPU.
    fn icid(&self, vcpu: Option<usize>) -> u16 {
        vcpu.and_then(|t| super::vm_by_id(self.vm)?.vcpus().get(t).map(|v| v.pcpu))
            .unwrap_or(0) as u16
    }

    fn vpe(&self, vcpu: usize) -> Option<VpeRef> {
        let p = super::vm_by_id(self.vm)?.vcpus().get(vcpu)?.vpe?;
        Some(VpeRef {
            id: p.id,
            doorbell: p.doorbell,
            id_bits: p.id_bits,
        })
    }

    fn routes(&self) -> Option<&HostRoutes> {
        routes()
    }

    fn note_direct_map(&self) {
        DIRECT_MAPS.fetch_add(1, Ordering::Relaxed);
    }
}
