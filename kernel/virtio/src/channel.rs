//! The channel between Vigil and a service program in a service VM's
//! userspace: one emulated PCI function per client device, which Debian's
//! unmodified kernel drives with `uio_pci_generic` (INTx, with the PCI 3.0
//! Interrupt Status and Interrupt Disable bits), and whose BARs the
//! service mmaps through sysfs:
//!
//! - BAR 0 (4 KiB, 32-bit, non-prefetchable): the [`Regs`] below — what
//!   the client's driver did (status, features, queue addresses, queue
//!   notifications, resets) and what the service does back (configure the
//!   device, signal used buffers).
//! - BAR 2 (64-bit, prefetchable, the client's RAM size rounded up to a
//!   power of two): the window onto the client's RAM and nothing else.
//!   Prefetchable, so sysfs offers `resource2_wc`, a Normal (not Device)
//!   mapping, on which ordinary unaligned loads and stores work.
//!
//! The service is trusted with its client's memory, as a Xen driver domain
//! or a vhost-user backend is; it reaches nothing else.
//!
//! This module is the register model only (host-tested); the hypervisor
//! owns the locking, the interrupt lines and the stage-2 mapping.

/// PCI identity of the function: a vendor ID from the PCI-SIG's reserved
/// range for experimental use is not available, so Vigil uses Red Hat's
/// QEMU range style with its own device number. uio_pci_generic binds to
/// it through `new_id`.
pub const VENDOR_ID: u16 = 0x1b36;
pub const DEVICE_ID: u16 = 0x10f0;
/// Class code: "other system peripheral" (0x0880).
pub const CLASS: u32 = 0x08_80_00;

/// BAR 0's size.
pub const REGS_SIZE: u64 = 0x1000;

/// BAR 0 registers (32-bit, little-endian; 64-bit values as LO/HI pairs).
pub mod reg {
    /// "VGLK".
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    /// What happened since the last read (read clears): [`super::event`].
    pub const EVENTS: u64 = 0x008;
    /// Queues notified since the last read (read clears), one bit each.
    pub const NOTIFY: u64 = 0x00c;
    /// Write: [`super::control`] bits.
    pub const CONTROL: u64 = 0x010;
    pub const CLIENT_STATUS: u64 = 0x014;
    pub const DRIVER_FEATURES_LO: u64 = 0x018;
    pub const DRIVER_FEATURES_HI: u64 = 0x01c;
    /// The virtio device type the client sees (from Vigil's VM config).
    pub const DEVICE_TYPE: u64 = 0x020;
    /// Set by the service before READY.
    pub const NUM_QUEUES: u64 = 0x024;
    pub const QUEUE_NUM_MAX: u64 = 0x028;
    pub const DEVICE_FEATURES_LO: u64 = 0x030;
    pub const DEVICE_FEATURES_HI: u64 = 0x034;
    pub const CONFIG_LEN: u64 = 0x038;
    /// The client IPA at offset 0 of BAR 2, and the RAM size behind it.
    pub const CLIENT_RAM_BASE_LO: u64 = 0x040;
    pub const CLIENT_RAM_BASE_HI: u64 = 0x044;
    pub const CLIENT_RAM_SIZE_LO: u64 = 0x048;
    pub const CLIENT_RAM_SIZE_HI: u64 = 0x04c;
    /// Selects the queue the QUEUE_* registers show.
    pub const QUEUE_SEL: u64 = 0x050;
    pub const QUEUE_SIZE: u64 = 0x054;
    pub const QUEUE_READY: u64 = 0x058;
    pub const QUEUE_DESC_LO: u64 = 0x060;
    pub const QUEUE_DESC_HI: u64 = 0x064;
    pub const QUEUE_DRIVER_LO: u64 = 0x068;
    pub const QUEUE_DRIVER_HI: u64 = 0x06c;
    pub const QUEUE_DEVICE_LO: u64 = 0x070;
    pub const QUEUE_DEVICE_HI: u64 = 0x074;
    /// The device configuration space the client reads (virtio §4.2.2,
    /// from 0x100 of the transport), written by the service.
    pub const CONFIG: u64 = 0x100;
    pub const CONFIG_END: u64 = 0x200;
}

pub const MAGIC: u32 = 0x4b4c_4756;
pub const VERSION: u32 = 1;

/// EVENTS bits.
pub mod event {
    /// A queue notification: see NOTIFY.
    pub const NOTIFY: u32 = 1 << 0;
    /// The client reset the device: drop everything in flight.
    pub const RESET: u32 = 1 << 1;
    /// The client's device status changed (e.g. DRIVER_OK: queues live).
    pub const STATUS: u32 = 1 << 2;
    /// The client VM stopped for good: nothing more will come.
    pub const GONE: u32 = 1 << 3;
}

/// CONTROL bits.
pub mod control {
    /// The device is configured: the client may find it (its boot waits
    /// for this).
    pub const READY: u32 = 1 << 0;
    /// Used buffers: raise the client's used-buffer interrupt.
    pub const USED: u32 = 1 << 1;
    /// The configuration space changed: raise the client's
    /// configuration-change interrupt.
    pub const CONFIG: u32 = 1 << 2;
    /// The device hit an error it cannot recover from without a reset
    /// (virtio §2.1.2, DEVICE_NEEDS_RESET).
    pub const NEEDS_RESET: u32 = 1 << 3;
}

/// Largest NUM_QUEUES the channel shows (one NOTIFY bit each).
pub const MAX_QUEUES: u32 = 32;
/// Largest QUEUE_NUM_MAX (virtio §2.7: split queues up to 32768).
pub const MAX_QUEUE_SIZE: u32 = 32768;

/// What the service configured before READY: the device the client sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSetup {
    pub num_queues: u32,
    pub queue_num_max: u32,
    pub features: u64,
    pub config_len: u32,
}

/// A queue as the client's driver configured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueView {
    pub size: u32,
    pub ready: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

/// What the client side shows the service (filled in by the hypervisor
/// from the transport).
pub trait ClientView {
    fn status(&self) -> u32;
    fn driver_features(&self) -> u64;
    fn queue(&self, index: u32) -> QueueView;
}

/// What a BAR 0 access asks the hypervisor to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    /// The service became READY: build the client's transport from
    /// [`Regs::setup`] and let the client boot.
    pub ready: bool,
    pub used: bool,
    pub config: bool,
    pub needs_reset: bool,
    /// The service wrote the configuration space after READY.
    pub config_written: bool,
}

/// An access the model ignored (RAZ/WI), for a rate-limited log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anomaly {
    Width(u64, u8),
    Offset(u64),
    ReadOnly(u64),
    /// A setup register written after READY.
    AfterReady(u64),
    /// A setup value out of range (NUM_QUEUES, QUEUE_NUM_MAX, CONFIG_LEN).
    Range(u64, u32),
    /// CONTROL.READY with an unusable setup (no queue, or no VERSION_1).
    NotReady,
}

/// BAR 0's state.
#[derive(Clone, Debug)]
pub struct Regs {
    client_ram: (u64, u64),
    device_type: u32,
    events: u32,
    notify: u32,
    ready: bool,
    setup: DeviceSetup,
    queue_sel: u32,
    config: [u8; 256],
}

const VERSION_1: u64 = 1 << 32;

impl Regs {
    /// For a client device of virtio type `device_type` whose RAM is
    /// `(ipa, size)`.
    pub fn new(device_type: u32, client_ram: (u64, u64)) -> Self {
        Self {
            client_ram,
            device_type,
            events: 0,
            notify: 0,
            ready: false,
            setup: DeviceSetup {
                num_queues: 0,
                queue_num_max: 0,
                features: 0,
                config_len: 0,
            },
            queue_sel: 0,
            config: [0; 256],
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn setup(&self) -> DeviceSetup {
        self.setup
    }

    /// The configuration space as the service wrote it.
    pub fn config(&self) -> &[u8] {
        &self.config[..self.setup.config_len as usize]
    }

    /// Whether the service has an event to read: its INTx condition.
    pub fn pending(&self) -> bool {
        self.events != 0
    }

    /// The client notified queue `q`.
    pub fn post_notify(&mut self, q: u32) {
        if q < MAX_QUEUES {
            self.notify |= 1 << q;
            self.events |= event::NOTIFY;
        }
    }

    /// The client reset the device: its notifications are void.
    pub fn post_reset(&mut self) {
        self.notify = 0;
        self.events = (self.events & !event::NOTIFY) | event::RESET;
    }

    pub fn post_status(&mut self) {
        self.events |= event::STATUS;
    }

    pub fn post_gone(&mut self) {
        self.events |= event::GONE;
    }

    /// The service VM itself reset: the channel starts over.
    pub fn reset(&mut self) {
        *self = Self::new(self.device_type, self.client_ram);
    }

    pub fn read(
        &mut self,
        client: &dyn ClientView,
        offset: u64,
        width: u8,
    ) -> Result<u32, Anomaly> {
        let config = (reg::CONFIG..reg::CONFIG_END).contains(&offset);
        let ok = (width == 4 && offset.is_multiple_of(4)) || (width == 1 && config);
        if !ok {
            return Err(Anomaly::Width(offset, width));
        }
        let q = || client.queue(self.queue_sel);
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        Ok(match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::EVENTS => core::mem::take(&mut self.events),
            reg::NOTIFY => core::mem::take(&mut self.notify),
            reg::CLIENT_STATUS => client.status(),
            reg::DRIVER_FEATURES_LO => lo(client.driver_features()),
            reg::DRIVER_FEATURES_HI => hi(client.driver_features()),
            reg::DEVICE_TYPE => self.device_type,
            reg::NUM_QUEUES => self.setup.num_queues,
            reg::QUEUE_NUM_MAX => self.setup.queue_num_max,
            reg::DEVICE_FEATURES_LO => lo(self.setup.features),
            reg::DEVICE_FEATURES_HI => hi(self.setup.features),
            reg::CONFIG_LEN => self.setup.config_len,
            reg::CLIENT_RAM_BASE_LO => lo(self.client_ram.0),
            reg::CLIENT_RAM_BASE_HI => hi(self.client_ram.0),
            reg::CLIENT_RAM_SIZE_LO => lo(self.client_ram.1),
            reg::CLIENT_RAM_SIZE_HI => hi(self.client_ram.1),
            reg::QUEUE_SEL => self.queue_sel,
            reg::QUEUE_SIZE => q().size,
            reg::QUEUE_READY => q().ready as u32,
            reg::QUEUE_DESC_LO => lo(q().desc),
            reg::QUEUE_DESC_HI => hi(q().desc),
            reg::QUEUE_DRIVER_LO => lo(q().driver),
            reg::QUEUE_DRIVER_HI => hi(q().driver),
            reg::QUEUE_DEVICE_LO => lo(q().device),
            reg::QUEUE_DEVICE_HI => hi(q().device),
            o if (reg::CONFIG..reg::CONFIG_END).contains(&o) => {
                let at = (o - reg::CONFIG) as usize;
                let mut b = [0u8; 4];
                let n = width as usize;
                b[..n].copy_from_slice(&self.config[at..at + n]);
                u32::from_le_bytes(b)
            }
            reg::CONTROL => return Err(Anomaly::Offset(offset)),
            o => return Err(Anomaly::Offset(o)),
        })
    }

    pub fn write(&mut self, offset: u64, width: u8, value: u32) -> Result<Actions, Anomaly> {
        let config = (reg::CONFIG..reg::CONFIG_END).contains(&offset);
        // 32-bit aligned words; single bytes in the configuration space.
        let ok = (width == 4 && offset.is_multiple_of(4)) || (width == 1 && config);
        if !ok {
            return Err(Anomaly::Width(offset, width));
        }
        let mut act = Actions::default();
        let setup_reg = |s: &Self| {
            if s.ready {
                Err(Anomaly::AfterReady(offset))
            } else {
                Ok(())
            }
        };
        match offset {
            reg::CONTROL => {
                if value & control::READY != 0 && !self.ready {
                    let s = self.setup;
                    if s.num_queues == 0 || s.queue_num_max == 0 || s.features & VERSION_1 == 0 {
                        return Err(Anomaly::NotReady);
                    }
                    self.ready = true;
                    act.ready = true;
                }
                // The client-facing signals only mean something once the
                // client can see the device.
                if self.ready {
                    act.used = value & control::USED != 0;
                    act.config = value & control::CONFIG != 0;
                    act.needs_reset = value & control::NEEDS_RESET != 0;
                }
            }
            reg::NUM_QUEUES => {
                setup_reg(self)?;
                if value == 0 || value > MAX_QUEUES {
                    return Err(Anomaly::Range(offset, value));
                }
                self.setup.num_queues = value;
            }
            reg::QUEUE_NUM_MAX => {
                setup_reg(self)?;
                if value == 0 || value > MAX_QUEUE_SIZE || !value.is_power_of_two() {
                    return Err(Anomaly::Range(offset, value));
                }
                self.setup.queue_num_max = value;
            }
            reg::DEVICE_FEATURES_LO => {
                setup_reg(self)?;
                self.setup.features = (self.setup.features & !0xffff_ffff) | u64::from(value);
            }
            reg::DEVICE_FEATURES_HI => {
                setup_reg(self)?;
                self.setup.features =
                    (self.setup.features & 0xffff_ffff) | (u64::from(value) << 32);
            }
            reg::CONFIG_LEN => {
                setup_reg(self)?;
                if value > 256 {
                    return Err(Anomaly::Range(offset, value));
                }
                self.setup.config_len = value;
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            o if config => {
                let at = (o - reg::CONFIG) as usize;
                let n = width as usize;
                self.config[at..at + n].copy_from_slice(&value.to_le_bytes()[..n]);
                act.config_written = self.ready;
            }
            o if o <= reg::QUEUE_DEVICE_HI => {
                return Err(Anomaly::ReadOnly(o));
            }
            o => return Err(Anomaly::Offset(o)),
        }
        Ok(act)
    }
}

/// The function's PCI configuration space (PCI Local Bus 3.0 ch. 6, type
/// 0 header; no capabilities). Only what uio_pci_generic and Linux's
/// enumeration use is writable: the command register's Memory Space and
/// Bus Master enables and Interrupt Disable, the BARs (sizing as §6.2.5.1
/// defines it), and the Interrupt Line byte.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    command: u16,
    bar0: u32,
    bar2: u64,
    bar2_size: u64,
    interrupt_line: u8,
}

/// Command register bits (PCI 3.0 §6.2.2).
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
/// Status register: Interrupt Status (PCI 3.0 §6.2.3).
pub const STATUS_INTERRUPT: u16 = 1 << 3;

impl ConfigSpace {
    /// BAR 2 covers `window` bytes (a power of two, at least 4 KiB).
    pub fn new(window: u64) -> Self {
        Self {
            command: 0,
            bar0: 0,
            bar2: 0,
            bar2_size: window.next_power_of_two().max(0x1000),
            interrupt_line: 0,
        }
    }

    pub fn bar2_size(&self) -> u64 {
        self.bar2_size
    }

    /// BAR 0's address (memory BAR, low 4 bits are flags).
    pub fn bar0(&self) -> u64 {
        u64::from(self.bar0 & !0xf)
    }

    pub fn bar2(&self) -> u64 {
        self.bar2 & !0xf
    }

    pub fn memory_enabled(&self) -> bool {
        self.command & CMD_MEMORY != 0
    }

    /// The INTx line: an event pending and interrupts not disabled.
    pub fn intx(&self, pending: bool) -> bool {
        pending && self.command & CMD_INTX_DISABLE == 0
    }

    /// Read the aligned 32-bit word at `offset` (callers split narrower
    /// accesses); `pending` is the function's interrupt condition.
    pub fn read32(&self, offset: u64, pending: bool) -> u32 {
        match offset {
            0x00 => u32::from(VENDOR_ID) | u32::from(DEVICE_ID) << 16,
            0x04 => {
                let status = if pending { STATUS_INTERRUPT } else { 0 };
                u32::from(self.command) | u32::from(status) << 16
            }
            // Revision 1, class "other system peripheral".
            0x08 => 1 | CLASS << 8,
            // Header type 0, single function.
            0x0c => 0,
            // BAR 0: 32-bit memory, non-prefetchable.
            0x10 => self.bar0 & !0xf,
            // BAR 2/3: 64-bit (type 0b10) prefetchable (bit 3) memory.
            0x18 => (self.bar2 as u32 & !0xf) | 0b1100,
            0x1c => (self.bar2 >> 32) as u32,
            0x2c => u32::from(VENDOR_ID) | u32::from(DEVICE_ID) << 16,
            // Interrupt Line, Interrupt Pin INTA.
            0x3c => u32::from(self.interrupt_line) | 1 << 8,
            _ => 0,
        }
    }

    /// Write `value` to the bytes of the aligned word at `offset` that
    /// `mask` selects.
    pub fn write32(&mut self, offset: u64, value: u32, mask: u32) {
        let merge = |old: u32| (old & !mask) | (value & mask);
        match offset {
            0x04 => {
                let writable = CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE;
                let v = merge(u32::from(self.command)) as u16;
                self.command = v & writable;
            }
            // Sizing: the BAR keeps only the bits above its size.
            0x10 => self.bar0 = merge(self.bar0) & !(REGS_SIZE as u32 - 1),
            0x18 => {
                let lo = merge(self.bar2 as u32) as u64;
                self.bar2 = ((self.bar2 & !0xffff_ffff) | lo) & !(self.bar2_size - 1);
            }
            0x1c => {
                let hi = merge((self.bar2 >> 32) as u32) as u64;
                self.bar2 = ((self.bar2 & 0xffff_ffff) | hi << 32) & !(self.bar2_size - 1);
            }
            0x3c => self.interrupt_line = merge(u32::from(self.interrupt_line)) as u8,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Client;
    impl ClientView for Client {
        fn status(&self) -> u32 {
            0xf
        }
        fn driver_features(&self) -> u64 {
            0x1_0000_0246
        }
        fn queue(&self, index: u32) -> QueueView {
            QueueView {
                size: 128,
                ready: index == 0,
                desc: 0x4000_1000 + u64::from(index),
                driver: 0x4000_2000,
                device: 0x1_4000_3000,
            }
        }
    }

    fn setup(r: &mut Regs) {
        r.write(reg::NUM_QUEUES, 4, 1).unwrap();
        r.write(reg::QUEUE_NUM_MAX, 4, 256).unwrap();
        r.write(reg::DEVICE_FEATURES_LO, 4, 0x246).unwrap();
        r.write(reg::DEVICE_FEATURES_HI, 4, 1).unwrap();
        r.write(reg::CONFIG_LEN, 4, 60).unwrap();
        r.write(reg::CONFIG, 4, 0x0010_0000).unwrap();
    }

    #[test]
    fn the_service_configures_then_goes_ready() {
        let mut r = Regs::new(2, (0x4000_0000, 512 << 20));
        assert_eq!(r.read(&Client, reg::MAGIC, 4), Ok(MAGIC));
        assert_eq!(r.read(&Client, reg::DEVICE_TYPE, 4), Ok(2));
        assert_eq!(r.read(&Client, reg::CLIENT_RAM_SIZE_LO, 4), Ok(512 << 20));
        // READY before a usable setup is refused.
        assert_eq!(
            r.write(reg::CONTROL, 4, control::READY),
            Err(Anomaly::NotReady)
        );
        assert_eq!(
            r.write(reg::QUEUE_NUM_MAX, 4, 100),
            Err(Anomaly::Range(reg::QUEUE_NUM_MAX, 100))
        );
        setup(&mut r);
        // USED before READY does nothing.
        assert_eq!(
            r.write(reg::CONTROL, 4, control::USED),
            Ok(Actions::default())
        );
        let a = r.write(reg::CONTROL, 4, control::READY).unwrap();
        assert!(a.ready && !a.used);
        assert!(r.is_ready());
        assert_eq!(
            r.setup(),
            DeviceSetup {
                num_queues: 1,
                queue_num_max: 256,
                features: 0x1_0000_0246,
                config_len: 60
            }
        );
        assert_eq!(&r.config()[..4], &[0, 0, 0x10, 0]);
        // Setup is frozen now; the config space can still change.
        assert_eq!(
            r.write(reg::NUM_QUEUES, 4, 2),
            Err(Anomaly::AfterReady(reg::NUM_QUEUES))
        );
        let a = r.write(reg::CONFIG + 1, 1, 0x20).unwrap();
        assert!(a.config_written);
        assert_eq!(r.read(&Client, reg::CONFIG, 4), Ok(0x0010_2000));
        let a = r
            .write(reg::CONTROL, 4, control::USED | control::CONFIG)
            .unwrap();
        assert!(a.used && a.config && !a.ready && !a.needs_reset);
    }

    #[test]
    fn events_and_notifications_read_once() {
        let mut r = Regs::new(2, (0x4000_0000, 1 << 20));
        assert!(!r.pending());
        r.post_notify(0);
        r.post_notify(3);
        r.post_notify(40); // no such queue bit: ignored
        assert!(r.pending());
        assert_eq!(r.read(&Client, reg::EVENTS, 4), Ok(event::NOTIFY));
        assert!(!r.pending());
        assert_eq!(r.read(&Client, reg::NOTIFY, 4), Ok(0b1001));
        assert_eq!(r.read(&Client, reg::NOTIFY, 4), Ok(0));
        r.post_notify(1);
        r.post_reset();
        // A reset voids the notifications before it.
        assert_eq!(r.read(&Client, reg::EVENTS, 4), Ok(event::RESET));
        assert_eq!(r.read(&Client, reg::NOTIFY, 4), Ok(0));
        r.post_status();
        assert_eq!(r.read(&Client, reg::EVENTS, 4), Ok(event::STATUS));
        r.post_gone();
        assert_eq!(r.read(&Client, reg::EVENTS, 4), Ok(event::GONE));
    }

    #[test]
    fn client_state_is_mirrored() {
        let mut r = Regs::new(2, (0x4000_0000, 1 << 20));
        assert_eq!(r.read(&Client, reg::CLIENT_STATUS, 4), Ok(0xf));
        assert_eq!(r.read(&Client, reg::DRIVER_FEATURES_HI, 4), Ok(1));
        r.write(reg::QUEUE_SEL, 4, 1).unwrap();
        assert_eq!(r.read(&Client, reg::QUEUE_READY, 4), Ok(0));
        assert_eq!(r.read(&Client, reg::QUEUE_DESC_LO, 4), Ok(0x4000_1001));
        assert_eq!(r.read(&Client, reg::QUEUE_DEVICE_HI, 4), Ok(1));
        assert_eq!(r.read(&Client, reg::QUEUE_SIZE, 4), Ok(128));
    }

    #[test]
    fn bad_accesses_are_refused() {
        let mut r = Regs::new(2, (0, 1 << 20));
        assert_eq!(r.read(&Client, reg::MAGIC, 2), Err(Anomaly::Width(0, 2)));
        assert_eq!(r.read(&Client, 0x2, 4), Err(Anomaly::Width(2, 4)));
        assert_eq!(r.read(&Client, 0x800, 4), Err(Anomaly::Offset(0x800)));
        assert_eq!(
            r.read(&Client, reg::CONTROL, 4),
            Err(Anomaly::Offset(reg::CONTROL))
        );
        assert_eq!(
            r.write(reg::MAGIC, 4, 1),
            Err(Anomaly::ReadOnly(reg::MAGIC))
        );
        assert_eq!(
            r.write(reg::EVENTS, 4, 1),
            Err(Anomaly::ReadOnly(reg::EVENTS))
        );
        assert_eq!(r.write(0xffc, 4, 1), Err(Anomaly::Offset(0xffc)));
        assert_eq!(
            r.write(reg::CONFIG_END - 1, 1, 7).map(|a| a.config_written),
            Ok(false)
        );
        assert_eq!(
            r.write(reg::CONFIG_END - 1, 4, 7),
            Err(Anomaly::Width(0x1ff, 4))
        );
        assert_eq!(
            r.write(reg::CONFIG_LEN, 4, 257),
            Err(Anomaly::Range(reg::CONFIG_LEN, 257))
        );
    }

    #[test]
    fn config_space_identity_and_bar_sizing() {
        let mut c = ConfigSpace::new(384 << 20);
        assert_eq!(c.bar2_size(), 512 << 20);
        assert_eq!(c.read32(0, false), 0x10f0_1b36);
        assert_eq!(c.read32(0x08, false) >> 8, CLASS);
        assert_eq!(c.read32(0x3c, false) >> 8 & 0xff, 1, "INTA");
        // Sizing per PCI 3.0 §6.2.5.1: write all ones, read the mask back.
        c.write32(0x10, !0, !0);
        assert_eq!(c.read32(0x10, false), !(REGS_SIZE as u32 - 1));
        c.write32(0x18, !0, !0);
        c.write32(0x1c, !0, !0);
        let lo = c.read32(0x18, false);
        let hi = c.read32(0x1c, false);
        assert_eq!(lo & 0xf, 0b1100, "64-bit prefetchable");
        let mask = (u64::from(hi) << 32) | u64::from(lo & !0xf);
        assert_eq!(!mask + 1, 512 << 20);
        c.write32(0x10, 0x0c00_0000, !0);
        c.write32(0x18, 0, !0);
        c.write32(0x1c, 0x60, !0);
        assert_eq!(c.bar0(), 0x0c00_0000);
        assert_eq!(c.bar2(), 0x60_0000_0000);
        // A BAR keeps its size alignment.
        c.write32(0x10, 0x0c00_0123, !0);
        assert_eq!(c.bar0(), 0x0c00_0000);
    }

    #[test]
    fn intx_follows_status_and_disable() {
        let mut c = ConfigSpace::new(1 << 20);
        assert!(!c.intx(false));
        assert!(c.intx(true));
        assert_eq!(c.read32(0x04, true) >> 16, u32::from(STATUS_INTERRUPT));
        // uio_pci_generic masks with Interrupt Disable (a 16-bit write of
        // the command register), userspace unmasks the same way.
        c.write32(0x04, u32::from(CMD_INTX_DISABLE | CMD_MEMORY), 0xffff);
        assert!(!c.intx(true));
        assert!(c.memory_enabled());
        assert_eq!(
            c.read32(0x04, true) >> 16,
            u32::from(STATUS_INTERRUPT),
            "status still shows it"
        );
        c.write32(0x04, u32::from(CMD_MEMORY), 0xffff);
        assert!(c.intx(true));
        // Read-only bits stay.
        c.write32(0x04, 0xffff_ffff, !0);
        assert_eq!(
            c.read32(0x04, false) & 0xffff,
            u32::from(CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE)
        );
        c.write32(0x00, 0, !0);
        assert_eq!(c.read32(0, false), 0x10f0_1b36);
    }
}
