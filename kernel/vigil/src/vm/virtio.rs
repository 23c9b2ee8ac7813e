//! Virtio links: a client VM's virtio-mmio device whose backend is a
//! service program in another VM's userspace (a driver domain).
//!
//! ```text
//!  client VM (Linux: virtio_mmio, virtio_blk)     service VM (Linux userspace)
//!    virtio-mmio registers  --trap-->  Link  <--trap--  channel function BAR 0
//!    (Transport model)                 |                (uio_pci_generic, INTx)
//!    client RAM  <------------------ stage 2 ------------  BAR 2 window
//! ```
//!
//! The client's register accesses trap into the [`Transport`] model; a
//! queue notification, a reset or a status change is posted to the
//! channel, whose INTx (an SPI of the service VM) wakes the service. The
//! service reads what happened and the queue addresses from BAR 0, walks
//! the client's rings through BAR 2 (the client's RAM, mapped into the
//! service's stage 2 and nothing else), and writes CONTROL.USED, which
//! becomes the client's used-buffer interrupt.
//!
//! The client's boot vCPU starts only once the service has configured
//! the device (CONTROL.READY): Linux probes virtio-mmio once, at boot.
//!
//! Lock order: a link's state, then a VM's vGIC (`set_line`); kicks are
//! sent after the link's lock is released. Neither path takes another
//! link's lock.

use alloc::vec::Vec;
use spin::{Mutex, Once};
use vigil_vgic::{guest_warn, Kick, SPI_BASE};
use vigil_virtio::channel::{self, ClientView, ConfigSpace, QueueView, Regs};
use vigil_virtio::mmio::{DeviceInfo, Effect, Transport, VENDOR_VIGIL};
use vigil_vm::layout;

use super::vm_by_id;
use crate::bus::{MmioCtx, MmioDevice};

/// virtio device type of a block device (virtio 1.2 §5).
pub const VIRTIO_BLK: u32 = 2;

/// One client device and its service.
pub struct Link {
    pub client: usize,
    pub service: usize,
    /// Which of its service's channels (bridge, windows, SPI) this is.
    pub index: usize,
    state: Mutex<State>,
}

struct State {
    regs: Regs,
    /// A client reset was posted and the service has not read it yet
    /// (EVENTS.RESET): it may still write completions into the client's
    /// RAM, so the client's images are not reloaded before it has.
    reset_unread: bool,
    pci: ConfigSpace,
    /// Built when the service goes READY.
    transport: Option<Transport>,
}

static LINKS: Once<Vec<&'static Link>> = Once::new();

fn links() -> &'static [&'static Link] {
    LINKS.get().map_or(&[], |l| l.as_slice())
}

/// The link whose client is VM `id`.
pub fn link_of_client(id: usize) -> Option<&'static Link> {
    links().iter().copied().find(|l| l.client == id)
}

/// The links whose service is VM `id`, in channel order.
pub fn links_of_service(id: usize) -> impl Iterator<Item = &'static Link> {
    links().iter().copied().filter(move |l| l.service == id)
}

/// Create the links, before the VMs (their MMIO buses name them):
/// (client, service, client RAM size) for each.
pub fn create_links(pairs: &[(usize, usize, u64)]) {
    LINKS.call_once(|| {
        pairs
            .iter()
            .enumerate()
            .map(|(n, &(client, service, ram))| {
                let index = pairs[..n].iter().filter(|p| p.1 == service).count();
                let link: &'static Link = alloc::boxed::Box::leak(alloc::boxed::Box::new(Link {
                    client,
                    service,
                    index,
                    state: Mutex::new(State {
                        reset_unread: false,
                        regs: Regs::new(VIRTIO_BLK, (0, ram)),
                        pci: ConfigSpace::new(ram),
                        transport: None,
                    }),
                }));
                link
            })
            .collect()
    });
}

/// Every link back to its state at creation (at Vigil's exit, once no VM
/// runs): what the guests made it allocate is given back.
pub fn release_all() {
    for l in links() {
        let mut s = l.state.lock();
        s.transport = None;
        s.reset_unread = false;
    }
}

impl Link {
    /// The window BAR 2 spans (the client's RAM rounded up to a power of
    /// two), for the service's device tree.
    pub fn window(&self) -> u64 {
        self.state.lock().pci.bar2_size()
    }

    /// Record where the client's RAM is (once the client exists).
    pub fn set_client_ram(&self, ipa: u64, size: u64) {
        let mut s = self.state.lock();
        s.regs = Regs::new(VIRTIO_BLK, (ipa, size));
    }

    /// Drive both interrupt lines from the state, then kick whoever got
    /// work. Called with the state unlocked. The levels are applied to the
    /// vGICs *under* the link's lock (lock order: link, then vGIC): two
    /// updates racing (the client's InterruptACK on one CPU, the service's
    /// CONTROL.USED on another) would otherwise apply their levels in the
    /// wrong order and leave the client's line low with InterruptStatus
    /// set, a lost interrupt (seen as a stalled disk under load).
    fn update_lines(&self) {
        let mut kicks: [(usize, Kick); 2] = [(0, Kick::default()); 2];
        {
            let s = self.state.lock();
            let service_line = s.pci.intx(s.regs.pending());
            let client_line = s.transport.as_ref().is_some_and(Transport::line);
            if let Some(vm) = vm_by_id(self.service) {
                kicks[0] = (
                    self.service,
                    vm.gic
                        .set_line(0, SPI_BASE + layout::channel_spi(self.index), service_line),
                );
            }
            if let Some(vm) = vm_by_id(self.client) {
                kicks[1] = (
                    self.client,
                    vm.gic
                        .set_line(0, SPI_BASE + layout::VIRTIO_SPI, client_line),
                );
            }
        }
        for (vm, k) in kicks {
            super::kick_vm(vm, k);
        }
    }

    /// The client VM resets (PSCI SYSTEM_RESET): its device resets too.
    /// Returns once the service has read the reset (it then drops what was
    /// in flight and writes nothing more into the client's RAM, which is
    /// about to be reloaded), or after `timeout_ms` with `false` (a service
    /// that does not answer: the reload goes ahead, and a late completion
    /// could land in the new boot's memory — the service is trusted with
    /// it).
    pub fn client_reset(&self, timeout_ms: u64) -> bool {
        {
            let mut s = self.state.lock();
            if let Some(t) = s.transport.as_mut() {
                let _ = t.reset();
            }
            s.regs.post_reset();
            // Nothing to wait for from a service that is not serving yet.
            s.reset_unread = s.regs.is_ready();
        }
        self.update_lines();
        crate::arch::wait_until(timeout_ms, || !self.state.lock().reset_unread)
    }

    /// The client VM stopped: tell the service.
    pub fn client_stopped(&self) {
        self.state.lock().regs.post_gone();
        self.update_lines();
    }

    /// Whether the client may boot.
    pub fn ready(&self) -> bool {
        self.state.lock().regs.is_ready()
    }

    /// The service VM reset: the channel starts over; the client's device
    /// needs a reset (virtio §2.1.2) since its backend is gone.
    pub fn service_reset(&self) {
        {
            let mut s = self.state.lock();
            s.regs.reset();
            s.reset_unread = false;
            let window = s.pci.bar2_size();
            s.pci = ConfigSpace::new(window);
            if let Some(t) = s.transport.as_mut() {
                let _ = t.needs_reset();
            }
        }
        self.update_lines();
    }
}

/// The client's transport as the channel shows it to the service.
struct Mirror<'a>(Option<&'a Transport>);

impl ClientView for Mirror<'_> {
    fn status(&self) -> u32 {
        self.0.map_or(0, |t| u32::from(t.status().bits()))
    }

    fn driver_features(&self) -> u64 {
        self.0.map_or(0, Transport::driver_features)
    }

    fn queue(&self, index: u32) -> QueueView {
        let Some(q) = self
            .0
            .and_then(|t| u16::try_from(index).ok().and_then(|i| t.queue(i)))
        else {
            return QueueView::default();
        };
        QueueView {
            size: u32::from(q.size),
            ready: q.ready,
            desc: q.desc,
            driver: q.driver,
            device: q.device,
        }
    }
}

/// The client's virtio-mmio registers.
pub struct ClientFrame(pub &'static Link);

impl MmioDevice for ClientFrame {
    fn read(&self, _ctx: &MmioCtx<'_>, offset: u64, width: u8) -> u64 {
        let s = self.0.state.lock();
        let Some(t) = s.transport.as_ref() else {
            // Not configured yet (the client should not be running).
            return 0;
        };
        let out = t.read(offset, width);
        if let Some(a) = out.anomaly {
            guest_warn!("virtio-mmio: {a:?}",);
        }
        out.value
    }

    fn write(&self, _ctx: &MmioCtx<'_>, offset: u64, width: u8, value: u64) -> Kick {
        let link = self.0;
        {
            let mut s = link.state.lock();
            let State {
                regs, transport, ..
            } = &mut *s;
            let Some(t) = transport.as_mut() else {
                return Kick::default();
            };
            let out = t.write(offset, width, value);
            if let Some(a) = out.anomaly {
                guest_warn!("virtio-mmio: {a:?}",);
            }
            match out.effect {
                Effect::Notify { queue, .. } => regs.post_notify(u32::from(queue)),
                Effect::Reset => regs.post_reset(),
                Effect::StatusChanged { .. }
                | Effect::QueueReady(_)
                | Effect::QueueStopped(_)
                | Effect::QueueReset(_) => regs.post_status(),
                // The block device has no writable configuration field
                // (virtio 1.2 §5.2.4 writeback is not offered).
                Effect::ConfigWrite { .. } | Effect::None => {}
            }
        }
        link.update_lines();
        Kick::default()
    }
}

fn client_name(l: &Link) -> &'static str {
    vm_by_id(l.client).map_or("?", |v| v.name)
}

fn service_name(l: &Link) -> &'static str {
    vm_by_id(l.service).map_or("?", |v| v.name)
}

/// Whether an ECAM access reaches the function at device 0: PCIe Base 6.0
/// §7.2.2, configuration accesses are naturally aligned and at most 32
/// bits; others, and the rest of the bus, are an absent function.
fn config_access(offset: u64, width: u8) -> bool {
    offset < vigil_platform::pcie::CONFIG_SPACE_SIZE
        && width <= 4
        && offset.is_multiple_of(u64::from(width))
}

/// The service's channel bridge configuration space (ECAM, bus 0): the
/// function at device 0, nothing elsewhere.
pub struct ChannelEcam(pub &'static Link);

impl MmioDevice for ChannelEcam {
    fn read(&self, _ctx: &MmioCtx<'_>, offset: u64, width: u8) -> u64 {
        let ones = u64::MAX >> (64 - 8 * u32::from(width));
        if !config_access(offset, width) {
            return ones;
        }
        let s = self.0.state.lock();
        let word = s.pci.read32(offset & !3, s.regs.pending());
        u64::from(word >> (8 * (offset & 3))) & ones
    }

    fn write(&self, _ctx: &MmioCtx<'_>, offset: u64, width: u8, value: u64) -> Kick {
        if !config_access(offset, width) {
            return Kick::default();
        }
        let shift = 8 * (offset & 3);
        let mask = (u32::MAX >> (32 - 8 * u32::from(width))) << shift;
        {
            let mut s = self.0.state.lock();
            s.pci.write32(offset & !3, (value as u32) << shift, mask);
            let window = layout::channel_mmio64(self.0.index);
            if s.pci.memory_enabled() && s.pci.bar2() != window && s.pci.bar2() != 0 {
                guest_warn!(
                    "channel BAR 2 at {:#x}: the client's RAM is at {:#x}",
                    s.pci.bar2(),
                    window
                );
            }
        }
        // Interrupt Disable may have changed.
        self.0.update_lines();
        Kick::default()
    }
}

/// The channel function's BAR 0.
pub struct ChannelRegs(pub &'static Link);

impl ChannelRegs {
    fn decoded(&self, s: &State) -> bool {
        s.pci.memory_enabled() && s.pci.bar0() == layout::channel_mmio32(self.0.index)
    }
}

impl MmioDevice for ChannelRegs {
    fn read(&self, _ctx: &MmioCtx<'_>, offset: u64, width: u8) -> u64 {
        let value = {
            let mut s = self.0.state.lock();
            if !self.decoded(&s) {
                return 0;
            }
            let State {
                regs, transport, ..
            } = &mut *s;
            match regs.read(&Mirror(transport.as_ref()), offset, width) {
                Ok(v) => {
                    if offset == channel::reg::EVENTS && v & channel::event::RESET != 0 {
                        s.reset_unread = false;
                    }
                    u64::from(v)
                }
                Err(a) => {
                    guest_warn!("channel: {a:?}",);
                    0
                }
            }
        };
        // Reading EVENTS may drop the line.
        if offset == channel::reg::EVENTS {
            self.0.update_lines();
        }
        value
    }

    fn write(&self, _ctx: &MmioCtx<'_>, offset: u64, width: u8, value: u64) -> Kick {
        let link = self.0;
        let mut start_client = false;
        {
            let mut s = link.state.lock();
            if !self.decoded(&s) {
                return Kick::default();
            }
            let act = match s.regs.write(offset, width, value as u32) {
                Ok(a) => a,
                Err(a) => {
                    guest_warn!("channel: {a:?}",);
                    return Kick::default();
                }
            };
            if act.ready {
                let setup = s.regs.setup();
                // Bounded by the channel model (MAX_QUEUES, MAX_QUEUE_SIZE).
                let nums = [setup.queue_num_max as u16; channel::MAX_QUEUES as usize];
                let info = DeviceInfo {
                    device_id: VIRTIO_BLK,
                    vendor_id: VENDOR_VIGIL,
                    features: setup.features,
                    queue_num_max: &nums[..setup.num_queues as usize],
                    config: s.regs.config(),
                };
                match Transport::new(info) {
                    Ok(t) => {
                        s.transport = Some(t);
                        start_client = true;
                    }
                    Err(e) => {
                        guest_warn!("channel: unusable device setup: {e:?}",);
                        return Kick::default();
                    }
                }
            }
            let State {
                regs, transport, ..
            } = &mut *s;
            if let Some(t) = transport.as_mut() {
                if act.config_written {
                    // Within 256 bytes: the channel's config is that large.
                    let _ = t.set_config(regs.config());
                }
                if act.used {
                    t.raise_used_buffer();
                }
                if act.config {
                    t.raise_config_change();
                }
                if act.needs_reset {
                    t.needs_reset();
                }
            }
        }
        if start_client {
            log::info!(
                "vm {}: virtio-blk backend ready in vm {}; starting vm {}",
                client_name(link),
                service_name(link),
                client_name(link)
            );
            if let Some(vm) = vm_by_id(link.client) {
                vm.start_held();
            }
        }
        link.update_lines();
        Kick::default()
    }
}
