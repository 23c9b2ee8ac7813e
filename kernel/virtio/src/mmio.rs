//! The virtio-mmio transport (virtio 1.2 §4.2.2, non-legacy: `Version` = 2)
//! as Vigil emulates it for a client VM: the register file, feature
//! negotiation (§2.2, §3.1.1), queue configuration (§4.2.3.2), device status
//! and reset (§2.1, §2.4), the configuration generation (§2.5) and the
//! interrupt state (§4.2.3.4). The device itself runs elsewhere (a service
//! VM); this is what the driver sees of it and what the device side is told.
//!
//! The register map is a declarative table (`REGS`) of regions with their
//! direction and permitted widths, as in `vigil-vgic`'s `mmio`. Every access
//! the spec forbids — a bad width, misaligned, unmapped, the wrong direction,
//! a value not allowed in the current state — is RAZ/WI and handed back as an
//! [`Anomaly`] for the caller to log (rate limited). Nothing here panics, and
//! nothing allocates after [`Transport::new`].

use alloc::vec::Vec;

use Access::{R, RW, W};

/// Size of the register window: the control registers and up to 256 bytes of
/// device-specific configuration from [`CONFIG_OFFSET`].
pub const MMIO_SIZE: u64 = 0x200;
/// Start of the device-specific configuration space (§4.2.2, `Config`).
pub const CONFIG_OFFSET: u64 = 0x100;
/// Largest configuration space this transport exposes.
pub const CONFIG_MAX: usize = 256;
/// `MagicValue`: "virt" in little endian (§4.2.2).
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// `Version` of the non-legacy interface (§4.2.2).
pub const VERSION: u32 = 2;
/// A `VendorID` for Vigil's devices: "VIGL" in little endian (the ID is
/// free-form for virtio-mmio; QEMU uses "QEMU" the same way).
pub const VENDOR_VIGIL: u32 = u32::from_le_bytes(*b"VIGL");
/// Largest queue size of either ring layout (§2.7, §2.8).
pub const QUEUE_SIZE_MAX: u16 = 32768;
/// Most queues a [`DeviceInfo`] may declare. Notification indices are 16
/// bits (§4.2.3.3); this bound just keeps a bad `DeviceInfo` from being huge.
pub const MAX_QUEUES: usize = 1024;

// Reserved feature bits (§6), as masks of the 64-bit feature set.
/// Non-legacy device; must be offered and accepted here (§6).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Packed virtqueue layout (§2.8): queue sizes need not be powers of two.
pub const VIRTIO_F_RING_PACKED: u64 = 1 << 34;
/// Notifications carry more than the queue index (§2.9).
pub const VIRTIO_F_NOTIFICATION_DATA: u64 = 1 << 38;
/// Per-queue reset through `QueueReset` (§2.6.1).
pub const VIRTIO_F_RING_RESET: u64 = 1 << 40;

/// `InterruptStatus` bit 0: used buffer notification (§4.2.2).
pub const INT_USED_BUFFER: u32 = 1 << 0;
/// `InterruptStatus` bit 1: configuration change notification (§4.2.2).
pub const INT_CONFIG_CHANGE: u32 = 1 << 1;
const INT_DEFINED: u32 = INT_USED_BUFFER | INT_CONFIG_CHANGE;

/// The device status field (§2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStatus(pub u8);

impl DeviceStatus {
    pub const ACKNOWLEDGE: Self = Self(1);
    pub const DRIVER: Self = Self(2);
    pub const DRIVER_OK: Self = Self(4);
    pub const FEATURES_OK: Self = Self(8);
    /// Set by the device only (§2.1).
    pub const DEVICE_NEEDS_RESET: Self = Self(0x40);
    pub const FAILED: Self = Self(0x80);
    /// The bits a driver may set.
    const DRIVER_BITS: u8 = 1 | 2 | 4 | 8 | 0x80;

    pub const fn bits(self) -> u8 {
        self.0
    }
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl From<DeviceStatus> for u32 {
    fn from(s: DeviceStatus) -> u32 {
        s.0.into()
    }
}

impl core::ops::BitOr for DeviceStatus {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// What the device behind the transport is, fixed for its life.
#[derive(Clone, Copy, Debug)]
pub struct DeviceInfo<'a> {
    /// Virtio device ID (§5; 2 = block).
    pub device_id: u32,
    pub vendor_id: u32,
    /// Feature bits offered; must include [`VIRTIO_F_VERSION_1`].
    pub features: u64,
    /// `QueueNumMax` of each queue, in queue index order; 0 marks a queue
    /// that is not available (§4.2.2).
    pub queue_num_max: &'a [u16],
    /// Initial device-specific configuration space.
    pub config: &'a [u8],
}

/// Why a [`DeviceInfo`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoError {
    /// A non-legacy device must offer VIRTIO_F_VERSION_1 (§6).
    MissingVersion1,
    TooManyQueues(usize),
    QueueTooLarge {
        queue: u16,
        num_max: u16,
    },
    ConfigTooLarge(usize),
}

/// A configuration space larger than [`CONFIG_MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigTooLarge(pub usize);

/// One queue as the driver configured it, for the device side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// `QueueNum`; always <= `QueueNumMax`, but a power of two is not
    /// enforced (the queue code checks it against the negotiated layout).
    pub size: u16,
    /// Descriptor Area, Driver Area, Device Area (§2.6) as written; the
    /// queue code checks alignment and range.
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    /// `QueueReady`: the device may use the queue (§4.2.2.1).
    pub ready: bool,
}

/// What the caller must act on after a register write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// The driver wrote 0 to `Status` (§2.4): every queue and all
    /// negotiated state are gone; the device must drop requests in flight.
    Reset,
    /// The status changed otherwise (bits only ever added).
    StatusChanged {
        old: DeviceStatus,
        new: DeviceStatus,
    },
    /// The queue went live: [`Transport::queue`] has its configuration.
    QueueReady(u16),
    /// The driver wrote 0 to `QueueReady` of a live queue: the device must
    /// stop using it.
    QueueStopped(u16),
    /// The driver reset the queue (§2.6.1): the device must drop its state
    /// and call [`Transport::complete_queue_reset`].
    QueueReset(u16),
    /// Available buffer notification (§4.2.3.3). `data` is the value
    /// written: equal to `queue` unless VIRTIO_F_NOTIFICATION_DATA was
    /// negotiated, when it also carries next_off/next_wrap (§2.9).
    Notify {
        queue: u16,
        data: u32,
    },
    /// The driver wrote `width` bytes of config space at `offset` (relative
    /// to [`CONFIG_OFFSET`]). Already applied to the local copy so a read
    /// back sees it; the device validates it and may [`Transport::set_config`].
    ConfigWrite {
        offset: u16,
        width: u8,
        value: u64,
    },
}

/// A driver access the spec does not allow, or a value it refused.
/// The access was RAZ/WI unless the variant says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anomaly {
    /// Not 1, 2, 4 or 8 bytes, or a width the register does not permit
    /// (§4.2.2.2: 32-bit only below the config space).
    BadWidth {
        offset: u64,
        width: u8,
    },
    Misaligned {
        offset: u64,
        width: u8,
    },
    /// No register there (a gap, past the window, or past the config space).
    Unmapped {
        offset: u64,
    },
    /// §4.2.2.2: the driver MUST NOT write R or read W registers.
    WriteToReadOnly {
        reg: &'static str,
    },
    ReadOfWriteOnly {
        reg: &'static str,
    },
    /// A value the register does not define.
    BadValue {
        reg: &'static str,
        value: u32,
    },
    /// A queue register written with `QueueSel` naming no queue.
    NoSuchQueue {
        reg: &'static str,
        queue: u32,
    },
    /// Queue configuration written while `QueueReady` is 1 (§4.2.2.2).
    QueueLive {
        reg: &'static str,
        queue: u16,
    },
    /// Queue register written before a queue reset completed (§2.6.1).
    QueueResetting {
        reg: &'static str,
        queue: u16,
    },
    /// `QueueNum` above `QueueNumMax` (§4.2.2.2); not recorded.
    QueueNumTooLarge {
        queue: u16,
        num: u32,
        max: u16,
    },
    /// Recorded: only packed rings allow this size (§2.7). A flag only.
    QueueNumNotPowerOfTwo {
        queue: u16,
        num: u16,
    },
    /// `QueueReady` = 1 before FEATURES_OK: the ring layout is not known.
    QueueReadyBeforeFeaturesOk {
        queue: u16,
    },
    /// `QueueReady` = 1 with `QueueNum` never written.
    QueueReadyWithoutSize {
        queue: u16,
    },
    /// `QueueReset` without VIRTIO_F_RING_RESET negotiated (§4.2.2).
    QueueResetNotNegotiated,
    /// `QueueNotify` before DRIVER_OK (§3.1.1).
    NotifyBeforeDriverOk {
        value: u32,
    },
    NotifyNoSuchQueue {
        value: u32,
    },
    NotifyQueueNotReady {
        queue: u16,
    },
    /// `InterruptACK` with undefined bits (§4.2.2.2); the defined ones
    /// were still acknowledged.
    AckUndefinedBits {
        value: u32,
    },
    /// A status bit cleared other than by reset (§2.1.1); write ignored.
    StatusBitCleared {
        old: u8,
        value: u32,
    },
    /// The driver set DEVICE_NEEDS_RESET or a reserved bit; write ignored.
    StatusBadBits {
        value: u32,
    },
    /// FEATURES_OK not kept (§3.1.1): VERSION_1 not accepted, or bits not
    /// offered were written. `driver` is what it wrote, unmasked. The
    /// rest of the status write was applied.
    FeaturesRefused {
        driver: u64,
    },
    /// DRIVER_OK without FEATURES_OK (§3.1.1): not kept, rest applied.
    DriverOkWithoutFeaturesOk,
    /// `DriverFeatures` with bits not offered (§2.2.1); the offered ones
    /// were recorded, and FEATURES_OK will be refused.
    UnofferedFeatures {
        sel: u32,
        bits: u32,
    },
    /// `DriverFeatures` after FEATURES_OK (§3.1.1).
    FeaturesLocked,
}

/// The result of a read: the value (0 on an anomaly) and the anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOutcome {
    pub value: u64,
    pub anomaly: Option<Anomaly>,
}

/// The result of a write: at most one effect, whether the interrupt line
/// ([`Transport::line`]) changed level, and an anomaly to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    pub effect: Effect,
    pub line_changed: bool,
    pub anomaly: Option<Anomaly>,
}

impl WriteOutcome {
    const NONE: Self = Self {
        effect: Effect::None,
        line_changed: false,
        anomaly: None,
    };
    fn effect(effect: Effect) -> Self {
        Self {
            effect,
            ..Self::NONE
        }
    }
    fn anomaly(a: Anomaly) -> Self {
        Self {
            anomaly: Some(a),
            ..Self::NONE
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct QueueState {
    num_max: u16,
    num: u16,
    desc: u64,
    driver: u64,
    device: u64,
    ready: bool,
    /// `QueueReset` reads 1 until the device completes it (§2.6.1).
    resetting: bool,
}

impl QueueState {
    const fn new(num_max: u16) -> Self {
        Self {
            num_max,
            num: 0,
            desc: 0,
            driver: 0,
            device: 0,
            ready: false,
            resetting: false,
        }
    }
}

/// The register model of one virtio-mmio device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transport {
    device_id: u32,
    vendor_id: u32,
    offered: u64,
    config: [u8; CONFIG_MAX],
    config_len: usize,
    /// Survives reset, so a driver never sees it go back (§2.5).
    config_generation: u32,
    queues: Vec<QueueState>,
    // Driver state, cleared by reset:
    status: DeviceStatus,
    device_features_sel: u32,
    driver_features_sel: u32,
    /// Windows 0 and 1 as written, unmasked, so that FEATURES_OK can be
    /// refused when the driver asked for something not offered.
    driver_features: u64,
    /// A nonzero write to a window above 1 (features never offered).
    driver_features_beyond: bool,
    queue_sel: u32,
    shm_sel: u32,
    interrupt_status: u32,
}

// ---- the register table ----

const W8: u8 = 1;
const W16: u8 = 2;
const W32: u8 = 4;
const W64: u8 = 8;

/// One decoded access.
struct Acc {
    /// Offset in the window, for anomalies.
    offset: u64,
    /// Offset inside the region.
    off: u16,
    width: u8,
    name: &'static str,
}

type ReadFn = fn(&Transport, &Acc) -> Result<u64, Anomaly>;
type WriteFn = fn(&mut Transport, &Acc, u64) -> WriteOutcome;

/// Direction of a register (§4.2.2) with its handlers.
#[derive(Clone, Copy)]
enum Access {
    R(ReadFn),
    W(WriteFn),
    RW(ReadFn, WriteFn),
}

struct Region {
    name: &'static str,
    offset: u16,
    len: u16,
    widths: u8,
    access: Access,
}

/// A control register: 32-bit wide and aligned only (§4.2.2.2).
const fn reg(name: &'static str, offset: u16, access: Access) -> Region {
    Region {
        name,
        offset,
        len: 4,
        widths: W32,
        access,
    }
}

/// Table "MMIO Device Register Layout" (§4.2.2).
static REGS: &[Region] = &[
    reg("MagicValue", 0x000, R(|_, _| Ok(MAGIC_VALUE.into()))),
    reg("Version", 0x004, R(|_, _| Ok(VERSION.into()))),
    reg("DeviceID", 0x008, R(|t, _| Ok(t.device_id.into()))),
    reg("VendorID", 0x00c, R(|t, _| Ok(t.vendor_id.into()))),
    reg("DeviceFeatures", 0x010, R(device_features_r)),
    reg("DeviceFeaturesSel", 0x014, W(device_features_sel_w)),
    reg("DriverFeatures", 0x020, W(driver_features_w)),
    reg("DriverFeaturesSel", 0x024, W(driver_features_sel_w)),
    reg("QueueSel", 0x030, W(queue_sel_w)),
    reg("QueueNumMax", 0x034, R(queue_num_max_r)),
    reg("QueueNum", 0x038, W(queue_num_w)),
    reg("QueueReady", 0x044, RW(queue_ready_r, queue_ready_w)),
    reg("QueueNotify", 0x050, W(queue_notify_w)),
    reg(
        "InterruptStatus",
        0x060,
        R(|t, _| Ok(t.interrupt_status.into())),
    ),
    reg("InterruptACK", 0x064, W(interrupt_ack_w)),
    reg("Status", 0x070, RW(|t, _| Ok(t.status.0.into()), status_w)),
    reg(
        "QueueDescLow",
        0x080,
        W(|t, a, v| addr_w(t, a, v, Half::Low, desc)),
    ),
    reg(
        "QueueDescHigh",
        0x084,
        W(|t, a, v| addr_w(t, a, v, Half::High, desc)),
    ),
    reg(
        "QueueDriverLow",
        0x090,
        W(|t, a, v| addr_w(t, a, v, Half::Low, drv)),
    ),
    reg(
        "QueueDriverHigh",
        0x094,
        W(|t, a, v| addr_w(t, a, v, Half::High, drv)),
    ),
    reg(
        "QueueDeviceLow",
        0x0a0,
        W(|t, a, v| addr_w(t, a, v, Half::Low, dev)),
    ),
    reg(
        "QueueDeviceHigh",
        0x0a4,
        W(|t, a, v| addr_w(t, a, v, Half::High, dev)),
    ),
    reg("SHMSel", 0x0ac, W(shm_sel_w)),
    reg("SHMLenLow", 0x0b0, R(no_shm_r)),
    reg("SHMLenHigh", 0x0b4, R(no_shm_r)),
    reg("SHMBaseLow", 0x0b8, R(no_shm_r)),
    reg("SHMBaseHigh", 0x0bc, R(no_shm_r)),
    reg("QueueReset", 0x0c0, RW(queue_reset_r, queue_reset_w)),
    reg(
        "ConfigGeneration",
        0x0fc,
        R(|t, _| Ok(t.config_generation.into())),
    ),
    // "accessed with byte alignment"; §4.2.2.2 has the driver use the
    // field's width. 64-bit accesses are allowed too: a guest's `ldr x`
    // of a 64-bit field is harmless.
    Region {
        name: "Config",
        offset: CONFIG_OFFSET as u16,
        len: CONFIG_MAX as u16,
        widths: W8 | W16 | W32 | W64,
        access: RW(config_r, config_w),
    },
];

/// Find the region of an access, or why there is none.
fn decode(offset: u64, width: u8) -> Result<(&'static Region, Acc), Anomaly> {
    if !matches!(width, 1 | 2 | 4 | 8) {
        return Err(Anomaly::BadWidth { offset, width });
    }
    if !offset.is_multiple_of(u64::from(width)) {
        return Err(Anomaly::Misaligned { offset, width });
    }
    // Checked first, so the sums below cannot overflow.
    if offset >= MMIO_SIZE {
        return Err(Anomaly::Unmapped { offset });
    }
    let Some(r) = REGS
        .iter()
        .find(|r| offset >= u64::from(r.offset) && offset < u64::from(r.offset) + u64::from(r.len))
    else {
        return Err(Anomaly::Unmapped { offset });
    };
    // An access starting in a register but wider than it (say 64-bit at a
    // 32-bit register) is a bad width, not a gap.
    let end = offset + u64::from(width);
    if r.widths & width == 0 || end > u64::from(r.offset) + u64::from(r.len) {
        return Err(Anomaly::BadWidth { offset, width });
    }
    Ok((
        r,
        Acc {
            offset,
            off: (offset - u64::from(r.offset)) as u16,
            width,
            name: r.name,
        },
    ))
}

// ---- handlers ----

/// Bits `sel*32 .. sel*32+31` of a 64-bit feature set; 0 beyond (§4.2.2).
fn window(features: u64, sel: u32) -> u32 {
    match sel {
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}

fn device_features_r(t: &Transport, _: &Acc) -> Result<u64, Anomaly> {
    Ok(window(t.offered, t.device_features_sel).into())
}

fn device_features_sel_w(t: &mut Transport, _: &Acc, v: u64) -> WriteOutcome {
    t.device_features_sel = v as u32;
    WriteOutcome::NONE
}

/// The driver may accept only offered bits (§2.2.1): the offered part is
/// recorded, anything else is remembered so FEATURES_OK is refused.
fn driver_features_w(t: &mut Transport, _: &Acc, v: u64) -> WriteOutcome {
    if t.status.contains(DeviceStatus::FEATURES_OK) {
        return WriteOutcome::anomaly(Anomaly::FeaturesLocked);
    }
    let v = v as u32;
    let sel = t.driver_features_sel;
    match sel {
        0 => t.driver_features = (t.driver_features & !0xffff_ffff) | u64::from(v),
        1 => t.driver_features = (t.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
        _ => t.driver_features_beyond |= v != 0,
    }
    let unoffered = v & !window(t.offered, sel);
    if unoffered != 0 {
        return WriteOutcome::anomaly(Anomaly::UnofferedFeatures {
            sel,
            bits: unoffered,
        });
    }
    WriteOutcome::NONE
}

fn driver_features_sel_w(t: &mut Transport, _: &Acc, v: u64) -> WriteOutcome {
    t.driver_features_sel = v as u32;
    WriteOutcome::NONE
}

/// Any index may be selected: drivers probe for queues by reading
/// `QueueNumMax` (§4.2.3.2).
fn queue_sel_w(t: &mut Transport, _: &Acc, v: u64) -> WriteOutcome {
    t.queue_sel = v as u32;
    WriteOutcome::NONE
}

/// 0 for a queue that does not exist (§4.2.2).
fn queue_num_max_r(t: &Transport, _: &Acc) -> Result<u64, Anomaly> {
    Ok(t.selected().map_or(0, |q| q.num_max.into()))
}

fn queue_num_w(t: &mut Transport, a: &Acc, v: u64) -> WriteOutcome {
    let packed = t.negotiated(VIRTIO_F_RING_PACKED);
    let (i, q) = match t.selected_for_config(a) {
        Ok(x) => x,
        Err(e) => return WriteOutcome::anomaly(e),
    };
    let num = v as u32;
    if num > u32::from(q.num_max) {
        return WriteOutcome::anomaly(Anomaly::QueueNumTooLarge {
            queue: i,
            num,
            max: q.num_max,
        });
    }
    q.num = num as u16;
    if !packed && q.num != 0 && !q.num.is_power_of_two() {
        return WriteOutcome::anomaly(Anomaly::QueueNumNotPowerOfTwo {
            queue: i,
            num: q.num,
        });
    }
    WriteOutcome::NONE
}

/// "Returns the last value written" (§4.2.2), which is 0 or 1 here since
/// other values are refused; 0 while a queue reset is in progress.
fn queue_ready_r(t: &Transport, _: &Acc) -> Result<u64, Anomaly> {
    Ok(t.selected().map_or(0, |q| q.ready.into()))
}

fn queue_ready_w(t: &mut Transport, a: &Acc, v: u64) -> WriteOutcome {
    let features_ok = t.status.contains(DeviceStatus::FEATURES_OK);
    let sel = t.queue_sel;
    let Some(q) = t.queues.get_mut(sel as usize) else {
        return WriteOutcome::anomaly(Anomaly::NoSuchQueue {
            reg: a.name,
            queue: sel,
        });
    };
    let i = sel as u16;
    match v as u32 {
        0 if q.ready => {
            q.ready = false;
            WriteOutcome::effect(Effect::QueueStopped(i))
        }
        0 => WriteOutcome::NONE,
        1 if q.ready => WriteOutcome::NONE,
        1 if q.resetting => WriteOutcome::anomaly(Anomaly::QueueResetting {
            reg: a.name,
            queue: i,
        }),
        // The device interprets the ring by the negotiated features.
        1 if !features_ok => {
            WriteOutcome::anomaly(Anomaly::QueueReadyBeforeFeaturesOk { queue: i })
        }
        1 if q.num == 0 => WriteOutcome::anomaly(Anomaly::QueueReadyWithoutSize { queue: i }),
        1 => {
            q.ready = true;
            WriteOutcome::effect(Effect::QueueReady(i))
        }
        value => WriteOutcome::anomaly(Anomaly::BadValue { reg: a.name, value }),
    }
}

/// §4.2.3.3: the value is the queue index, or with NOTIFICATION_DATA the
/// index in bits 0-15 (§2.9).
fn queue_notify_w(t: &mut Transport, _: &Acc, v: u64) -> WriteOutcome {
    let value = v as u32;
    if !t.status.contains(DeviceStatus::DRIVER_OK) {
        return WriteOutcome::anomaly(Anomaly::NotifyBeforeDriverOk { value });
    }
    let index = if t.negotiated(VIRTIO_F_NOTIFICATION_DATA) {
        value & 0xffff
    } else {
        value
    };
    match t.queues.get(index as usize) {
        None => WriteOutcome::anomaly(Anomaly::NotifyNoSuchQueue { value }),
        Some(q) if !q.ready => WriteOutcome::anomaly(Anomaly::NotifyQueueNotReady {
            queue: index as u16,
        }),
        Some(_) => WriteOutcome::effect(Effect::Notify {
            queue: index as u16,
            data: value,
        }),
    }
}

fn interrupt_ack_w(t: &mut Transport, _: &Acc, v: u64) -> WriteOutcome {
    let value = v as u32;
    let was = t.line();
    t.interrupt_status &= !(value & INT_DEFINED);
    WriteOutcome {
        effect: Effect::None,
        line_changed: was != t.line(),
        anomaly: (value & !INT_DEFINED != 0).then_some(Anomaly::AckUndefinedBits { value }),
    }
}

/// §2.1, §3.1.1: 0 resets; otherwise bits are only added, and the device
/// refuses FEATURES_OK for an unacceptable feature set by not keeping it.
fn status_w(t: &mut Transport, _: &Acc, v: u64) -> WriteOutcome {
    let value = v as u32;
    if value == 0 {
        return t.reset();
    }
    let old = t.status;
    let allowed = u32::from(DeviceStatus::DRIVER_BITS | DeviceStatus::DEVICE_NEEDS_RESET.0);
    if value & !allowed != 0 || (value as u8 & !old.0 & DeviceStatus::DEVICE_NEEDS_RESET.0) != 0 {
        return WriteOutcome::anomaly(Anomaly::StatusBadBits { value });
    }
    if old.0 & !(value as u8) != 0 {
        return WriteOutcome::anomaly(Anomaly::StatusBitCleared { old: old.0, value });
    }
    let mut new = DeviceStatus(value as u8);
    let mut anomaly = None;
    if new.contains(DeviceStatus::FEATURES_OK)
        && !old.contains(DeviceStatus::FEATURES_OK)
        && !t.features_acceptable()
    {
        new.0 &= !DeviceStatus::FEATURES_OK.0;
        anomaly = Some(Anomaly::FeaturesRefused {
            driver: t.driver_features,
        });
    }
    if new.contains(DeviceStatus::DRIVER_OK) && !new.contains(DeviceStatus::FEATURES_OK) {
        new.0 &= !DeviceStatus::DRIVER_OK.0;
        anomaly = anomaly.or(Some(Anomaly::DriverOkWithoutFeaturesOk));
    }
    t.status = new;
    WriteOutcome {
        effect: if new == old {
            Effect::None
        } else {
            Effect::StatusChanged { old, new }
        },
        line_changed: false,
        anomaly,
    }
}

#[derive(Clone, Copy)]
enum Half {
    Low,
    High,
}

fn desc(q: &mut QueueState) -> &mut u64 {
    &mut q.desc
}
fn drv(q: &mut QueueState) -> &mut u64 {
    &mut q.driver
}
fn dev(q: &mut QueueState) -> &mut u64 {
    &mut q.device
}

/// The Queue{Desc,Driver,Device}{Low,High} pairs (§4.2.2).
fn addr_w(
    t: &mut Transport,
    a: &Acc,
    v: u64,
    half: Half,
    field: fn(&mut QueueState) -> &mut u64,
) -> WriteOutcome {
    let q = match t.selected_for_config(a) {
        Ok((_, q)) => q,
        Err(e) => return WriteOutcome::anomaly(e),
    };
    let f = field(q);
    let v = u64::from(v as u32);
    *f = match half {
        Half::Low => (*f & !0xffff_ffff) | v,
        Half::High => (*f & 0xffff_ffff) | (v << 32),
    };
    WriteOutcome::NONE
}

fn shm_sel_w(t: &mut Transport, _: &Acc, v: u64) -> WriteOutcome {
    t.shm_sel = v as u32;
    WriteOutcome::NONE
}

/// No shared memory regions: every ID is unused, length and base read as
/// -1 (§4.2.2).
fn no_shm_r(_: &Transport, _: &Acc) -> Result<u64, Anomaly> {
    Ok(u32::MAX.into())
}

/// 1 while a queue reset is in progress (§4.2.2.1).
fn queue_reset_r(t: &Transport, _: &Acc) -> Result<u64, Anomaly> {
    if !t.negotiated(VIRTIO_F_RING_RESET) {
        return Err(Anomaly::QueueResetNotNegotiated);
    }
    Ok(t.selected().map_or(0, |q| q.resetting.into()))
}

/// §2.6.1: the queue stops at once and forgets its configuration; it stays
/// "resetting" until the device side confirms it dropped its state.
fn queue_reset_w(t: &mut Transport, a: &Acc, v: u64) -> WriteOutcome {
    if !t.negotiated(VIRTIO_F_RING_RESET) {
        return WriteOutcome::anomaly(Anomaly::QueueResetNotNegotiated);
    }
    let sel = t.queue_sel;
    let Some(q) = t.queues.get_mut(sel as usize) else {
        return WriteOutcome::anomaly(Anomaly::NoSuchQueue {
            reg: a.name,
            queue: sel,
        });
    };
    if v as u32 != 1 {
        return WriteOutcome::anomaly(Anomaly::BadValue {
            reg: a.name,
            value: v as u32,
        });
    }
    if q.resetting {
        return WriteOutcome::NONE;
    }
    *q = QueueState {
        resetting: true,
        ..QueueState::new(q.num_max)
    };
    WriteOutcome::effect(Effect::QueueReset(sel as u16))
}

fn config_range(t: &Transport, a: &Acc) -> Result<core::ops::Range<usize>, Anomaly> {
    let start = usize::from(a.off);
    let end = start + usize::from(a.width);
    if end > t.config_len {
        return Err(Anomaly::Unmapped { offset: a.offset });
    }
    Ok(start..end)
}

/// Little endian like every register (§4.2.2).
fn config_r(t: &Transport, a: &Acc) -> Result<u64, Anomaly> {
    let r = config_range(t, a)?;
    let mut b = [0u8; 8];
    if let (Some(dst), Some(src)) = (b.get_mut(..r.len()), t.config.get(r)) {
        dst.copy_from_slice(src);
    }
    Ok(u64::from_le_bytes(b))
}

fn config_w(t: &mut Transport, a: &Acc, v: u64) -> WriteOutcome {
    let r = match config_range(t, a) {
        Ok(r) => r,
        Err(e) => return WriteOutcome::anomaly(e),
    };
    let bytes = v.to_le_bytes();
    if let (Some(dst), Some(src)) = (t.config.get_mut(r.clone()), bytes.get(..r.len())) {
        dst.copy_from_slice(src);
    }
    let mask = if a.width == 8 {
        u64::MAX
    } else {
        (1u64 << (u32::from(a.width) * 8)) - 1
    };
    WriteOutcome::effect(Effect::ConfigWrite {
        offset: a.off,
        width: a.width,
        value: v & mask,
    })
}

// ---- the transport ----

impl Transport {
    /// A device in its reset state, as `info` describes it.
    pub fn new(info: DeviceInfo<'_>) -> Result<Self, InfoError> {
        if info.features & VIRTIO_F_VERSION_1 == 0 {
            return Err(InfoError::MissingVersion1);
        }
        if info.queue_num_max.len() > MAX_QUEUES {
            return Err(InfoError::TooManyQueues(info.queue_num_max.len()));
        }
        if let Some((i, &n)) = info
            .queue_num_max
            .iter()
            .enumerate()
            .find(|(_, &n)| n > QUEUE_SIZE_MAX)
        {
            return Err(InfoError::QueueTooLarge {
                queue: i as u16,
                num_max: n,
            });
        }
        let mut config = [0; CONFIG_MAX];
        config
            .get_mut(..info.config.len())
            .ok_or(InfoError::ConfigTooLarge(info.config.len()))?
            .copy_from_slice(info.config);
        Ok(Self {
            device_id: info.device_id,
            vendor_id: info.vendor_id,
            offered: info.features,
            config,
            config_len: info.config.len(),
            config_generation: 0,
            queues: info
                .queue_num_max
                .iter()
                .map(|&n| QueueState::new(n))
                .collect(),
            status: DeviceStatus(0),
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_beyond: false,
            queue_sel: 0,
            shm_sel: 0,
            interrupt_status: 0,
        })
    }

    /// A driver read of `width` bytes at `offset` in the window. Reads have
    /// no side effects.
    pub fn read(&self, offset: u64, width: u8) -> ReadOutcome {
        let res = decode(offset, width).and_then(|(r, a)| match r.access {
            R(f) | RW(f, _) => f(self, &a),
            W(_) => Err(Anomaly::ReadOfWriteOnly { reg: r.name }),
        });
        match res {
            Ok(value) => ReadOutcome {
                value,
                anomaly: None,
            },
            Err(a) => ReadOutcome {
                value: 0,
                anomaly: Some(a),
            },
        }
    }

    /// A driver write of the low `width` bytes of `value` at `offset`.
    pub fn write(&mut self, offset: u64, width: u8, value: u64) -> WriteOutcome {
        match decode(offset, width) {
            Err(e) => WriteOutcome::anomaly(e),
            Ok((r, a)) => match r.access {
                W(f) | RW(_, f) => f(self, &a, value),
                R(_) => WriteOutcome::anomaly(Anomaly::WriteToReadOnly { reg: r.name }),
            },
        }
    }

    pub fn status(&self) -> DeviceStatus {
        self.status
    }

    /// The features offered.
    pub fn device_features(&self) -> u64 {
        self.offered
    }

    /// What the driver accepted so far, masked by what was offered.
    pub fn driver_features(&self) -> u64 {
        self.driver_features & self.offered
    }

    /// The negotiated features once FEATURES_OK is set (§3.1.1).
    pub fn negotiated_features(&self) -> Option<u64> {
        self.status
            .contains(DeviceStatus::FEATURES_OK)
            .then(|| self.driver_features())
    }

    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// Queue `i` as the driver configured it, `None` if there is no such queue.
    pub fn queue(&self, i: u16) -> Option<QueueConfig> {
        self.queues.get(usize::from(i)).map(|q| QueueConfig {
            size: q.num,
            desc: q.desc,
            driver: q.driver,
            device: q.device,
            ready: q.ready,
        })
    }

    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// The level of the device's interrupt (an SPI): asserted while any
    /// `InterruptStatus` bit is set (§4.2.3.4).
    pub fn line(&self) -> bool {
        self.interrupt_status != 0
    }

    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }

    pub fn config(&self) -> &[u8] {
        self.config.get(..self.config_len).unwrap_or(&[])
    }

    /// Used buffer notification. Ignored before DRIVER_OK (§2.1.2: a device
    /// must not notify earlier), which also drops completions of requests
    /// from before a reset. Returns whether the line changed.
    pub fn raise_used_buffer(&mut self) -> bool {
        self.raise(INT_USED_BUFFER)
    }

    /// Configuration change notification; ignored before DRIVER_OK, as the
    /// driver reads the configuration during initialization anyway.
    /// Returns whether the line changed.
    pub fn raise_config_change(&mut self) -> bool {
        self.raise(INT_CONFIG_CHANGE)
    }

    /// The device changed its configuration space: a new generation
    /// (§2.5) and a configuration change notification. Identical contents
    /// change nothing. Returns whether the line changed.
    pub fn set_config(&mut self, bytes: &[u8]) -> Result<bool, ConfigTooLarge> {
        let dst = self
            .config
            .get_mut(..bytes.len())
            .ok_or(ConfigTooLarge(bytes.len()))?;
        if self.config_len == bytes.len() && dst == bytes {
            return Ok(false);
        }
        dst.copy_from_slice(bytes);
        // Stale bytes past a shorter space would reappear if it grew again.
        if let Some(rest) = self.config.get_mut(bytes.len()..) {
            rest.fill(0);
        }
        self.config_len = bytes.len();
        self.config_generation = self.config_generation.wrapping_add(1);
        Ok(self.raise_config_change())
    }

    /// The device hit an error it needs a reset to leave: sets
    /// DEVICE_NEEDS_RESET and, after DRIVER_OK, notifies a configuration
    /// change (§2.1.2). Returns whether the line changed.
    pub fn needs_reset(&mut self) -> bool {
        self.status = self.status | DeviceStatus::DEVICE_NEEDS_RESET;
        self.raise_config_change()
    }

    /// The device dropped the state of queue `i` after [`Effect::QueueReset`]:
    /// `QueueReset` reads 0 and the driver may set the queue up again
    /// (§2.6.1). Returns false if no reset of that queue was in progress.
    pub fn complete_queue_reset(&mut self, i: u16) -> bool {
        match self.queues.get_mut(usize::from(i)) {
            Some(q) if q.resetting => {
                q.resetting = false;
                true
            }
            _ => false,
        }
    }

    fn raise(&mut self, bit: u32) -> bool {
        if !self.status.contains(DeviceStatus::DRIVER_OK) {
            return false;
        }
        let was = self.line();
        self.interrupt_status |= bit;
        was != self.line()
    }

    /// Device reset (§2.4, §4.2.2.1), as a driver write of 0 to `Status`
    /// does; also for the hypervisor when the client VM itself resets. All
    /// driver state goes back to its initial value, interrupts are cleared,
    /// every queue is not ready. The configuration space and its generation
    /// are the device's and stay.
    pub fn reset(&mut self) -> WriteOutcome {
        let was = self.line();
        self.status = DeviceStatus(0);
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_beyond = false;
        self.queue_sel = 0;
        self.shm_sel = 0;
        self.interrupt_status = 0;
        for q in &mut self.queues {
            *q = QueueState::new(q.num_max);
        }
        WriteOutcome {
            effect: Effect::Reset,
            line_changed: was != self.line(),
            anomaly: None,
        }
    }

    fn negotiated(&self, feature: u64) -> bool {
        self.negotiated_features().is_some_and(|f| f & feature != 0)
    }

    /// VERSION_1 accepted and nothing but offered bits written (§2.2.1,
    /// §3.1.1; a non-legacy device cannot work without VERSION_1).
    fn features_acceptable(&self) -> bool {
        self.driver_features & VIRTIO_F_VERSION_1 != 0
            && self.driver_features & !self.offered == 0
            && !self.driver_features_beyond
    }

    fn selected(&self) -> Option<&QueueState> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The selected queue, if its configuration may be written: it exists,
    /// is not live (§4.2.2.2) and is not being reset (§2.6.1).
    fn selected_for_config(&mut self, a: &Acc) -> Result<(u16, &mut QueueState), Anomaly> {
        let sel = self.queue_sel;
        let q = self
            .queues
            .get_mut(sel as usize)
            .ok_or(Anomaly::NoSuchQueue {
                reg: a.name,
                queue: sel,
            })?;
        let i = sel as u16;
        if q.ready {
            return Err(Anomaly::QueueLive {
                reg: a.name,
                queue: i,
            });
        }
        if q.resetting {
            return Err(Anomaly::QueueResetting {
                reg: a.name,
                queue: i,
            });
        }
        Ok((i, q))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    // Register offsets (§4.2.2), spelled out again so the tests check the
    // table rather than trust it.
    const MAGIC: u64 = 0x000;
    const VERSION_REG: u64 = 0x004;
    const DEVICE_ID: u64 = 0x008;
    const VENDOR_ID: u64 = 0x00c;
    const DEV_FEAT: u64 = 0x010;
    const DEV_FEAT_SEL: u64 = 0x014;
    const DRV_FEAT: u64 = 0x020;
    const DRV_FEAT_SEL: u64 = 0x024;
    const QUEUE_SEL: u64 = 0x030;
    const QUEUE_NUM_MAX: u64 = 0x034;
    const QUEUE_NUM: u64 = 0x038;
    const QUEUE_READY: u64 = 0x044;
    const QUEUE_NOTIFY: u64 = 0x050;
    const INT_STATUS: u64 = 0x060;
    const INT_ACK: u64 = 0x064;
    const STATUS: u64 = 0x070;
    const DESC_LO: u64 = 0x080;
    const DESC_HI: u64 = 0x084;
    const DRIVER_LO: u64 = 0x090;
    const DRIVER_HI: u64 = 0x094;
    const DEVICE_LO: u64 = 0x0a0;
    const DEVICE_HI: u64 = 0x0a4;
    const SHM_SEL: u64 = 0x0ac;
    const SHM_LEN_LO: u64 = 0x0b0;
    const SHM_LEN_HI: u64 = 0x0b4;
    const SHM_BASE_LO: u64 = 0x0b8;
    const SHM_BASE_HI: u64 = 0x0bc;
    const QUEUE_RESET: u64 = 0x0c0;
    const CONFIG_GEN: u64 = 0x0fc;

    /// (offset, readable, writable) of every control register.
    const CONTROL: &[(u64, bool, bool)] = &[
        (MAGIC, true, false),
        (VERSION_REG, true, false),
        (DEVICE_ID, true, false),
        (VENDOR_ID, true, false),
        (DEV_FEAT, true, false),
        (DEV_FEAT_SEL, false, true),
        (DRV_FEAT, false, true),
        (DRV_FEAT_SEL, false, true),
        (QUEUE_SEL, false, true),
        (QUEUE_NUM_MAX, true, false),
        (QUEUE_NUM, false, true),
        (QUEUE_READY, true, true),
        (QUEUE_NOTIFY, false, true),
        (INT_STATUS, true, false),
        (INT_ACK, false, true),
        (STATUS, true, true),
        (DESC_LO, false, true),
        (DESC_HI, false, true),
        (DRIVER_LO, false, true),
        (DRIVER_HI, false, true),
        (DEVICE_LO, false, true),
        (DEVICE_HI, false, true),
        (SHM_SEL, false, true),
        (SHM_LEN_LO, true, false),
        (SHM_LEN_HI, true, false),
        (SHM_BASE_LO, true, false),
        (SHM_BASE_HI, true, false),
        (QUEUE_RESET, true, true),
        (CONFIG_GEN, true, false),
    ];

    const ACK: u64 = 1;
    const DRIVER: u64 = 2;
    const DRIVER_OK: u64 = 4;
    const FEATURES_OK: u64 = 8;

    /// virtio-blk: SEG_MAX (2), BLK_SIZE (6), FLUSH (9).
    const BLK_FEATURES: u64 = (1 << 2) | (1 << 6) | (1 << 9);
    const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_RESET | BLK_FEATURES;
    const CONFIG: [u8; 12] = [0x00, 0x10, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0];

    fn info(features: u64) -> DeviceInfo<'static> {
        DeviceInfo {
            device_id: 2,
            vendor_id: VENDOR_VIGIL,
            features,
            queue_num_max: &[256, 128],
            config: &CONFIG,
        }
    }

    fn blk() -> Transport {
        Transport::new(info(FEATURES)).unwrap()
    }

    fn rd(t: &Transport, off: u64) -> u64 {
        let r = t.read(off, 4);
        assert_eq!(r.anomaly, None, "read {off:#x}");
        r.value
    }

    fn wr(t: &mut Transport, off: u64, v: u64) -> WriteOutcome {
        t.write(off, 4, v)
    }

    /// Write expecting no anomaly.
    fn ok(t: &mut Transport, off: u64, v: u64) -> Effect {
        let o = wr(t, off, v);
        assert_eq!(o.anomaly, None, "write {off:#x} = {v:#x}");
        o.effect
    }

    /// Linux's `virtio_add_status`: read, OR, write.
    fn add_status(t: &mut Transport, bit: u64) -> WriteOutcome {
        let s = rd(t, STATUS);
        wr(t, STATUS, s | bit)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, negotiate `features`, FEATURES_OK.
    fn negotiate(t: &mut Transport, features: u64) -> WriteOutcome {
        assert_eq!(ok(t, STATUS, 0), Effect::Reset);
        add_status(t, ACK);
        add_status(t, DRIVER);
        ok(t, DRV_FEAT_SEL, 1);
        wr(t, DRV_FEAT, features >> 32);
        ok(t, DRV_FEAT_SEL, 0);
        wr(t, DRV_FEAT, features & 0xffff_ffff);
        add_status(t, FEATURES_OK)
    }

    fn setup_queue(t: &mut Transport, i: u64, num: u64, base: u64) -> Effect {
        ok(t, QUEUE_SEL, i);
        ok(t, QUEUE_NUM, num);
        ok(t, DESC_LO, base & 0xffff_ffff);
        ok(t, DESC_HI, base >> 32);
        ok(t, DRIVER_LO, (base + 0x1000) & 0xffff_ffff);
        ok(t, DRIVER_HI, (base + 0x1000) >> 32);
        ok(t, DEVICE_LO, (base + 0x2000) & 0xffff_ffff);
        ok(t, DEVICE_HI, (base + 0x2000) >> 32);
        ok(t, QUEUE_READY, 1)
    }

    /// A device the driver has fully initialized with both queues live.
    fn live() -> Transport {
        let mut t = blk();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | VIRTIO_F_RING_RESET | (1 << 9));
        setup_queue(&mut t, 0, 256, 0x4000_0000);
        setup_queue(&mut t, 1, 64, 0x4001_0000);
        add_status(&mut t, DRIVER_OK);
        t
    }

    #[test]
    fn linux_driver_init_sequence() {
        let mut t = blk();
        // virtio_mmio_probe
        assert_eq!(rd(&t, MAGIC), 0x7472_6976);
        assert_eq!(rd(&t, VERSION_REG), 2);
        assert_eq!(rd(&t, DEVICE_ID), 2);
        assert_eq!(rd(&t, VENDOR_ID), 0x4c47_4956, "\"VIGL\"");
        // register_virtio_device: reset, ACKNOWLEDGE
        assert_eq!(ok(&mut t, STATUS, 0), Effect::Reset);
        assert_eq!(rd(&t, STATUS), 0);
        assert_eq!(
            add_status(&mut t, ACK).effect,
            Effect::StatusChanged {
                old: DeviceStatus(0),
                new: DeviceStatus::ACKNOWLEDGE
            }
        );
        // virtio_dev_probe: DRIVER, read features high then low
        add_status(&mut t, DRIVER);
        ok(&mut t, DEV_FEAT_SEL, 1);
        let hi = rd(&t, DEV_FEAT);
        ok(&mut t, DEV_FEAT_SEL, 0);
        let lo = rd(&t, DEV_FEAT);
        assert_eq!((hi << 32) | lo, FEATURES);
        // The driver wants FLUSH and VERSION_1 only.
        let want = ((hi << 32) | lo) & (VIRTIO_F_VERSION_1 | (1 << 9));
        ok(&mut t, DRV_FEAT_SEL, 1);
        ok(&mut t, DRV_FEAT, want >> 32);
        ok(&mut t, DRV_FEAT_SEL, 0);
        ok(&mut t, DRV_FEAT, want & 0xffff_ffff);
        assert_eq!(t.negotiated_features(), None);
        let o = add_status(&mut t, FEATURES_OK);
        assert_eq!(o.anomaly, None);
        assert_eq!(
            rd(&t, STATUS),
            ACK | DRIVER | FEATURES_OK,
            "FEATURES_OK kept"
        );
        assert_eq!(t.negotiated_features(), Some(want));
        // Config read inside a generation pair (virtio_cread64: two 32-bit reads).
        let g = rd(&t, CONFIG_GEN);
        let cap = t.read(0x100, 4).value | (t.read(0x104, 4).value << 32);
        assert_eq!(cap, 0x1000);
        assert_eq!(rd(&t, CONFIG_GEN), g);
        // vm_find_vqs / vm_setup_vq for both queues
        for (i, num) in [(0u64, 256u64), (1, 128)] {
            ok(&mut t, QUEUE_SEL, i);
            assert_eq!(rd(&t, QUEUE_READY), 0);
            assert_eq!(rd(&t, QUEUE_NUM_MAX), num);
            let e = setup_queue(&mut t, i, num, 0x4000_0000 + i * 0x1_0000);
            assert_eq!(e, Effect::QueueReady(i as u16));
            assert_eq!(rd(&t, QUEUE_READY), 1);
        }
        // A third queue does not exist.
        ok(&mut t, QUEUE_SEL, 2);
        assert_eq!(rd(&t, QUEUE_NUM_MAX), 0);
        assert_eq!(
            t.queue(1),
            Some(QueueConfig {
                size: 128,
                desc: 0x4001_0000,
                driver: 0x4001_1000,
                device: 0x4001_2000,
                ready: true
            })
        );
        // virtio_device_ready
        assert!(!t.raise_used_buffer(), "no interrupt before DRIVER_OK");
        add_status(&mut t, DRIVER_OK);
        assert_eq!(rd(&t, STATUS), ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        // I/O: notify, completion interrupt, vm_interrupt's read + ACK.
        assert_eq!(
            ok(&mut t, QUEUE_NOTIFY, 0),
            Effect::Notify { queue: 0, data: 0 }
        );
        assert!(t.raise_used_buffer(), "line goes up");
        assert!(!t.raise_used_buffer(), "already up");
        assert!(t.line());
        assert_eq!(rd(&t, INT_STATUS), 1);
        let o = wr(&mut t, INT_ACK, 1);
        assert_eq!(
            (o.effect, o.line_changed, o.anomaly),
            (Effect::None, true, None)
        );
        assert!(!t.line());
        assert_eq!(rd(&t, INT_STATUS), 0);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let mut t = blk();
        let o = negotiate(&mut t, 1 << 9);
        assert_eq!(o.anomaly, Some(Anomaly::FeaturesRefused { driver: 1 << 9 }));
        assert_eq!(o.effect, Effect::None, "nothing else changed");
        assert_eq!(rd(&t, STATUS), ACK | DRIVER, "FEATURES_OK not kept");
        assert_eq!(t.negotiated_features(), None);
        // DRIVER_OK without FEATURES_OK is not kept either.
        let o = add_status(&mut t, DRIVER_OK);
        assert_eq!(o.anomaly, Some(Anomaly::DriverOkWithoutFeaturesOk));
        assert_eq!(rd(&t, STATUS), ACK | DRIVER);
        // The driver may fix its features and try again.
        ok(&mut t, DRV_FEAT_SEL, 1);
        ok(&mut t, DRV_FEAT, 1);
        assert_eq!(add_status(&mut t, FEATURES_OK).anomaly, None);
        assert_eq!(t.negotiated_features(), Some(VIRTIO_F_VERSION_1 | (1 << 9)));
    }

    #[test]
    fn unoffered_features_are_masked_and_refuse_features_ok() {
        let mut t = blk();
        ok(&mut t, STATUS, 0);
        add_status(&mut t, ACK | DRIVER);
        ok(&mut t, DRV_FEAT_SEL, 0);
        assert_eq!(
            wr(&mut t, DRV_FEAT, (1 << 9) | (1 << 5)).anomaly,
            Some(Anomaly::UnofferedFeatures {
                sel: 0,
                bits: 1 << 5
            })
        );
        ok(&mut t, DRV_FEAT_SEL, 1);
        ok(&mut t, DRV_FEAT, 1);
        assert_eq!(t.driver_features(), VIRTIO_F_VERSION_1 | (1 << 9), "masked");
        assert!(matches!(
            add_status(&mut t, FEATURES_OK).anomaly,
            Some(Anomaly::FeaturesRefused { .. })
        ));
        assert_eq!(rd(&t, STATUS), ACK | DRIVER);
        // Windows above 1 hold no offered feature.
        ok(&mut t, DRV_FEAT_SEL, 0);
        ok(&mut t, DRV_FEAT, 1 << 9);
        ok(&mut t, DRV_FEAT_SEL, 2);
        assert!(wr(&mut t, DRV_FEAT, 1).anomaly.is_some());
        assert!(add_status(&mut t, FEATURES_OK).anomaly.is_some());
        // Until reset.
        let o = negotiate(&mut t, VIRTIO_F_VERSION_1);
        assert_eq!(o.anomaly, None);
        // Features are locked once accepted.
        assert_eq!(
            wr(&mut t, DRV_FEAT, 1 << 9).anomaly,
            Some(Anomaly::FeaturesLocked)
        );
        assert_eq!(t.negotiated_features(), Some(VIRTIO_F_VERSION_1));
    }

    #[test]
    fn device_features_windows() {
        let mut t = blk();
        for (sel, want) in [
            (0, FEATURES as u32),
            (1, (FEATURES >> 32) as u32),
            (2, 0),
            (u32::MAX, 0),
        ] {
            ok(&mut t, DEV_FEAT_SEL, sel.into());
            assert_eq!(rd(&t, DEV_FEAT), u64::from(want));
        }
    }

    #[test]
    fn device_info_is_validated() {
        assert_eq!(
            Transport::new(info(BLK_FEATURES)).unwrap_err(),
            InfoError::MissingVersion1
        );
        let big = [0u8; 257];
        let mut i = info(FEATURES);
        i.config = &big;
        assert_eq!(
            Transport::new(i).unwrap_err(),
            InfoError::ConfigTooLarge(257)
        );
        i.config = &big[..256];
        assert!(Transport::new(i).is_ok());
        i.queue_num_max = &[256, 32769];
        assert_eq!(
            Transport::new(i).unwrap_err(),
            InfoError::QueueTooLarge {
                queue: 1,
                num_max: 32769
            }
        );
        let many = [8u16; MAX_QUEUES + 1];
        i.queue_num_max = &many;
        assert_eq!(
            Transport::new(i).unwrap_err(),
            InfoError::TooManyQueues(MAX_QUEUES + 1)
        );
    }

    #[test]
    fn control_registers_are_32_bit_only() {
        let mut t = live();
        for &(off, _, _) in CONTROL {
            for w in [1u8, 2, 8] {
                let want = if off % u64::from(w) == 0 {
                    Anomaly::BadWidth {
                        offset: off,
                        width: w,
                    }
                } else {
                    Anomaly::Misaligned {
                        offset: off,
                        width: w,
                    }
                };
                let before = t.clone();
                assert_eq!(
                    t.read(off, w),
                    ReadOutcome {
                        value: 0,
                        anomaly: Some(want)
                    }
                );
                assert_eq!(t.write(off, w, 0).anomaly, Some(want), "{off:#x}/{w}");
                assert_eq!(t.write(off, w, u64::MAX).anomaly, Some(want));
                assert_eq!(t, before, "WI");
            }
            for m in [1u64, 2, 3] {
                let want = Some(Anomaly::Misaligned {
                    offset: off + m,
                    width: 4,
                });
                assert_eq!(t.read(off + m, 4).anomaly, want);
                assert_eq!(t.write(off + m, 4, 0).anomaly, want);
            }
        }
        for w in [0u8, 3, 5, 16, 255] {
            assert_eq!(
                t.read(STATUS, w).anomaly,
                Some(Anomaly::BadWidth {
                    offset: STATUS,
                    width: w
                })
            );
        }
    }

    #[test]
    fn gaps_and_beyond_are_unmapped() {
        let mut t = live();
        let mapped: Vec<u64> = CONTROL.iter().map(|c| c.0).collect();
        for off in (0..0x100).step_by(4).filter(|o| !mapped.contains(o)) {
            let before = t.clone();
            assert_eq!(
                t.read(off, 4),
                ReadOutcome {
                    value: 0,
                    anomaly: Some(Anomaly::Unmapped { offset: off })
                }
            );
            assert_eq!(
                t.write(off, 4, u64::MAX).anomaly,
                Some(Anomaly::Unmapped { offset: off })
            );
            assert_eq!(t, before);
        }
        // Past this device's 12 bytes of config, and past the window.
        for off in [0x10c, 0x1fc, 0x200, 0x1000, u64::MAX - 3] {
            assert_eq!(
                t.read(off, 4).anomaly,
                Some(Anomaly::Unmapped { offset: off })
            );
            assert_eq!(
                t.write(off, 4, 1).anomaly,
                Some(Anomaly::Unmapped { offset: off })
            );
        }
        assert_eq!(
            t.read(u64::MAX - 7, 8).anomaly,
            Some(Anomaly::Unmapped {
                offset: u64::MAX - 7
            })
        );
        // Straddling the end of the config space.
        assert_eq!(
            t.read(0x108, 8).anomaly,
            Some(Anomaly::Unmapped { offset: 0x108 })
        );
    }

    #[test]
    fn config_space_widths() {
        let mut t = live();
        assert_eq!(t.read(0x100, 1).value, 0x00);
        assert_eq!(t.read(0x101, 1).value, 0x10);
        assert_eq!(t.read(0x100, 2).value, 0x1000);
        assert_eq!(t.read(0x100, 4).value, 0x1000);
        assert_eq!(t.read(0x100, 8).value, 0x1000);
        assert_eq!(t.read(0x108, 4).value, 0x80);
        assert_eq!(t.read(0x10b, 1).value, 0);
        assert_eq!(
            t.read(0x101, 2).anomaly,
            Some(Anomaly::Misaligned {
                offset: 0x101,
                width: 2
            })
        );
        assert_eq!(
            t.read(0x104, 8).anomaly,
            Some(Anomaly::Misaligned {
                offset: 0x104,
                width: 8
            })
        );
        // A driver write lands locally and is forwarded, masked to its width.
        let o = t.write(0x10a, 2, 0xdead_beef);
        assert_eq!(
            o.effect,
            Effect::ConfigWrite {
                offset: 0xa,
                width: 2,
                value: 0xbeef
            }
        );
        assert_eq!(t.read(0x108, 4).value, 0xbeef_0080);
        assert_eq!(
            t.config_generation(),
            0,
            "a driver write is no new generation"
        );
    }

    #[test]
    fn read_only_and_write_only() {
        let mut t = live();
        for &(off, readable, writable) in CONTROL {
            let r = t.read(off, 4);
            if readable {
                assert!(r.anomaly.is_none() || off == QUEUE_RESET, "{off:#x}: {r:?}");
            } else {
                assert!(
                    matches!(r.anomaly, Some(Anomaly::ReadOfWriteOnly { .. })),
                    "{off:#x}: {r:?}"
                );
                assert_eq!(r.value, 0, "RAZ");
            }
            if !writable {
                let before = t.clone();
                let o = t.write(off, 4, 0xffff_ffff);
                assert!(
                    matches!(o.anomaly, Some(Anomaly::WriteToReadOnly { .. })),
                    "{off:#x}: {o:?}"
                );
                assert_eq!(o.effect, Effect::None);
                assert_eq!(t, before, "WI");
            }
        }
        assert_eq!(
            t.read(QUEUE_NUM, 4).anomaly,
            Some(Anomaly::ReadOfWriteOnly { reg: "QueueNum" })
        );
        assert_eq!(
            t.write(MAGIC, 4, 0).anomaly,
            Some(Anomaly::WriteToReadOnly { reg: "MagicValue" })
        );
    }

    #[test]
    fn no_shared_memory_regions() {
        let mut t = blk();
        for sel in [0, 1, 0xffff_ffff] {
            ok(&mut t, SHM_SEL, sel);
            for off in [SHM_LEN_LO, SHM_LEN_HI, SHM_BASE_LO, SHM_BASE_HI] {
                assert_eq!(rd(&t, off), 0xffff_ffff);
            }
        }
    }

    #[test]
    fn queue_writes_while_ready_are_ignored() {
        let mut t = live();
        ok(&mut t, QUEUE_SEL, 0);
        let before = t.queue(0);
        for off in [
            QUEUE_NUM, DESC_LO, DESC_HI, DRIVER_LO, DRIVER_HI, DEVICE_LO, DEVICE_HI,
        ] {
            let o = wr(&mut t, off, 0x10);
            assert!(
                matches!(o.anomaly, Some(Anomaly::QueueLive { queue: 0, .. })),
                "{off:#x}: {o:?}"
            );
            assert_eq!(o.effect, Effect::None);
        }
        assert_eq!(t.queue(0), before);
        // Stopping the queue is allowed and allows reconfiguring it.
        assert_eq!(ok(&mut t, QUEUE_READY, 0), Effect::QueueStopped(0));
        assert_eq!(rd(&t, QUEUE_READY), 0);
        assert_eq!(ok(&mut t, QUEUE_READY, 0), Effect::None);
        ok(&mut t, QUEUE_NUM, 16);
        assert_eq!(t.queue(0).unwrap().size, 16);
        // Notifying a stopped queue is an anomaly.
        assert_eq!(
            wr(&mut t, QUEUE_NOTIFY, 0).anomaly,
            Some(Anomaly::NotifyQueueNotReady { queue: 0 })
        );
        assert_eq!(ok(&mut t, QUEUE_READY, 1), Effect::QueueReady(0));
        assert_eq!(ok(&mut t, QUEUE_READY, 1), Effect::None, "already ready");
        assert_eq!(
            wr(&mut t, QUEUE_READY, 2).anomaly,
            Some(Anomaly::BadValue {
                reg: "QueueReady",
                value: 2
            })
        );
    }

    #[test]
    fn queue_num_rules() {
        let mut t = blk();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        ok(&mut t, QUEUE_SEL, 1);
        assert_eq!(
            wr(&mut t, QUEUE_NUM, 129).anomaly,
            Some(Anomaly::QueueNumTooLarge {
                queue: 1,
                num: 129,
                max: 128
            })
        );
        assert_eq!(t.queue(1).unwrap().size, 0, "not recorded");
        let o = wr(&mut t, QUEUE_NUM, 100);
        assert_eq!(
            o.anomaly,
            Some(Anomaly::QueueNumNotPowerOfTwo { queue: 1, num: 100 })
        );
        assert_eq!(t.queue(1).unwrap().size, 100, "recorded, only flagged");
        ok(&mut t, QUEUE_NUM, 0);
        assert_eq!(
            wr(&mut t, QUEUE_READY, 1).anomaly,
            Some(Anomaly::QueueReadyWithoutSize { queue: 1 })
        );
        assert!(!t.queue(1).unwrap().ready);
        // No such queue.
        ok(&mut t, QUEUE_SEL, 7);
        for off in [QUEUE_NUM, QUEUE_READY, DESC_LO] {
            assert!(matches!(
                wr(&mut t, off, 1).anomaly,
                Some(Anomaly::NoSuchQueue { queue: 7, .. })
            ));
        }
        assert_eq!(rd(&t, QUEUE_READY), 0);
        // A packed ring may have any size.
        let mut p = Transport::new(info(FEATURES | VIRTIO_F_RING_PACKED)).unwrap();
        negotiate(&mut p, VIRTIO_F_VERSION_1 | VIRTIO_F_RING_PACKED);
        assert_eq!(ok(&mut p, QUEUE_NUM, 100), Effect::None);
    }

    #[test]
    fn queue_ready_needs_features_ok() {
        let mut t = blk();
        ok(&mut t, STATUS, 0);
        add_status(&mut t, ACK | DRIVER);
        ok(&mut t, QUEUE_NUM, 256);
        assert_eq!(
            wr(&mut t, QUEUE_READY, 1).anomaly,
            Some(Anomaly::QueueReadyBeforeFeaturesOk { queue: 0 })
        );
        assert_eq!(rd(&t, QUEUE_READY), 0);
    }

    #[test]
    fn notify_rules() {
        let mut t = blk();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 256, 0x4000_0000);
        assert_eq!(
            wr(&mut t, QUEUE_NOTIFY, 0).anomaly,
            Some(Anomaly::NotifyBeforeDriverOk { value: 0 })
        );
        add_status(&mut t, DRIVER_OK);
        assert_eq!(
            ok(&mut t, QUEUE_NOTIFY, 0),
            Effect::Notify { queue: 0, data: 0 }
        );
        assert_eq!(
            wr(&mut t, QUEUE_NOTIFY, 1).anomaly,
            Some(Anomaly::NotifyQueueNotReady { queue: 1 })
        );
        for v in [2, 0x1_0000, 0xffff_ffff] {
            assert_eq!(
                wr(&mut t, QUEUE_NOTIFY, v).anomaly,
                Some(Anomaly::NotifyNoSuchQueue { value: v as u32 }),
                "without NOTIFICATION_DATA the whole value is the index"
            );
        }
        // With NOTIFICATION_DATA the index is bits 0-15 (§2.9).
        let mut n = Transport::new(info(FEATURES | VIRTIO_F_NOTIFICATION_DATA)).unwrap();
        negotiate(&mut n, VIRTIO_F_VERSION_1 | VIRTIO_F_NOTIFICATION_DATA);
        setup_queue(&mut n, 1, 128, 0x4000_0000);
        add_status(&mut n, DRIVER_OK);
        assert_eq!(
            ok(&mut n, QUEUE_NOTIFY, 0x8005_0001),
            Effect::Notify {
                queue: 1,
                data: 0x8005_0001
            }
        );
    }

    #[test]
    fn status_only_moves_forward() {
        let mut t = live();
        let s = rd(&t, STATUS);
        let o = wr(&mut t, STATUS, ACK | DRIVER);
        assert_eq!(
            o.anomaly,
            Some(Anomaly::StatusBitCleared {
                old: s as u8,
                value: 3
            })
        );
        assert_eq!(rd(&t, STATUS), s, "old value kept");
        for v in [s | 0x10, s | 0x100, s | 0x40] {
            assert_eq!(
                wr(&mut t, STATUS, v).anomaly,
                Some(Anomaly::StatusBadBits { value: v as u32 })
            );
            assert_eq!(rd(&t, STATUS), s);
        }
        assert_eq!(
            ok(&mut t, STATUS, s),
            Effect::None,
            "rewriting is no change"
        );
        assert_eq!(
            ok(&mut t, STATUS, s | 0x80),
            Effect::StatusChanged {
                old: DeviceStatus(s as u8),
                new: DeviceStatus(s as u8 | 0x80)
            }
        );
    }

    #[test]
    fn needs_reset_raises_config_change() {
        let mut t = live();
        assert!(t.needs_reset());
        assert_eq!(rd(&t, STATUS) & 0x40, 0x40);
        assert_eq!(rd(&t, INT_STATUS), 2);
        // The driver keeps DEVICE_NEEDS_RESET when it adds a bit, and may
        // not clear it.
        assert_eq!(add_status(&mut t, 0x80).anomaly, None);
        let s = rd(&t, STATUS);
        assert!(wr(&mut t, STATUS, s & !0x40).anomaly.is_some());
        assert_eq!(ok(&mut t, STATUS, 0), Effect::Reset);
        assert_eq!(rd(&t, STATUS), 0);
        // Before DRIVER_OK: the bit, but no interrupt.
        assert!(!t.needs_reset());
        assert_eq!(rd(&t, STATUS), 0x40);
        assert_eq!(rd(&t, INT_STATUS), 0);
    }

    #[test]
    fn interrupt_ack() {
        let mut t = live();
        assert!(t.raise_used_buffer());
        assert!(!t.raise_config_change());
        assert_eq!(rd(&t, INT_STATUS), 3);
        let o = wr(&mut t, INT_ACK, 1);
        assert!(!o.line_changed, "config change still pending");
        assert_eq!(rd(&t, INT_STATUS), 2);
        let o = wr(&mut t, INT_ACK, 0xff);
        assert_eq!(o.anomaly, Some(Anomaly::AckUndefinedBits { value: 0xff }));
        assert!(o.line_changed, "defined bits still acknowledged");
        assert_eq!(rd(&t, INT_STATUS), 0);
        let o = wr(&mut t, INT_ACK, 3);
        assert_eq!((o.line_changed, o.anomaly), (false, None));
    }

    #[test]
    fn reset_clears_state() {
        let mut t = live();
        ok(&mut t, QUEUE_SEL, 1);
        ok(&mut t, DEV_FEAT_SEL, 1);
        ok(&mut t, SHM_SEL, 3);
        t.raise_used_buffer();
        t.set_config(&[1, 2, 3]).unwrap();
        let gen = t.config_generation();
        let o = wr(&mut t, STATUS, 0);
        assert_eq!(
            o,
            WriteOutcome {
                effect: Effect::Reset,
                line_changed: true,
                anomaly: None
            }
        );
        assert_eq!(rd(&t, STATUS), 0);
        assert_eq!(rd(&t, INT_STATUS), 0);
        assert!(!t.line());
        assert_eq!(t.driver_features(), 0);
        assert_eq!(t.negotiated_features(), None);
        assert_eq!(
            rd(&t, DEV_FEAT),
            FEATURES & 0xffff_ffff,
            "selector back to 0"
        );
        assert_eq!(rd(&t, QUEUE_NUM_MAX), 256, "queue selector back to 0");
        for i in 0..2 {
            assert_eq!(
                t.queue(i),
                Some(QueueConfig {
                    size: 0,
                    desc: 0,
                    driver: 0,
                    device: 0,
                    ready: false
                })
            );
        }
        assert_eq!(t.config_generation(), gen, "generation kept, monotonic");
        assert_eq!(t.config(), &[1, 2, 3], "config space is the device's");
        // A reset of a reset device is still a reset; the line stays low.
        assert_eq!(
            wr(&mut t, STATUS, 0),
            WriteOutcome {
                effect: Effect::Reset,
                line_changed: false,
                anomaly: None
            }
        );
        // And the device can be brought up again.
        assert_eq!(negotiate(&mut t, VIRTIO_F_VERSION_1).anomaly, None);
        assert_eq!(setup_queue(&mut t, 0, 8, 0x1000), Effect::QueueReady(0));
    }

    #[test]
    fn config_generation_on_set_config() {
        let mut t = blk();
        let g0 = rd(&t, CONFIG_GEN);
        // Before DRIVER_OK: new generation, no interrupt.
        assert_eq!(t.set_config(&[0, 0x20, 0, 0, 0, 0, 0, 0]), Ok(false));
        let g1 = rd(&t, CONFIG_GEN);
        assert_ne!(g0, g1);
        assert_eq!(t.read(0x100, 8).value, 0x2000);
        assert_eq!(
            t.read(0x108, 4).anomaly,
            Some(Anomaly::Unmapped { offset: 0x108 })
        );
        assert_eq!(t.set_config(&[0, 0x20, 0, 0, 0, 0, 0, 0]), Ok(false));
        assert_eq!(rd(&t, CONFIG_GEN), g1, "same contents, same generation");
        assert_eq!(t.set_config(&[0; 257]), Err(ConfigTooLarge(257)));
        assert_eq!(rd(&t, CONFIG_GEN), g1);
        // After DRIVER_OK a change also interrupts.
        let mut t = live();
        let g = t.config_generation();
        assert_eq!(t.set_config(&CONFIG[..8]), Ok(true));
        assert_eq!(rd(&t, INT_STATUS), INT_CONFIG_CHANGE.into());
        assert_eq!(t.config_generation(), g.wrapping_add(1));
        // Growing again shows zeros, not the old bytes.
        assert_eq!(t.set_config(&[0xff; 8]), Ok(false));
        assert_eq!(t.set_config(&[0xff; 12]), Ok(false));
        assert_eq!(t.read(0x108, 4).value, 0xffff_ffff);
        t.set_config(&[1; 4]).unwrap();
        t.set_config(&[1; 8]).unwrap();
        assert_eq!(t.read(0x104, 4).value, 0x0101_0101);
        t.set_config(&[1; 4]).unwrap();
        t.set_config(&[1, 1, 1, 1, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(t.read(0x104, 4).value, 0);
    }

    #[test]
    fn queue_reset() {
        let mut t = live();
        ok(&mut t, QUEUE_SEL, 1);
        assert_eq!(rd(&t, QUEUE_RESET), 0);
        assert_eq!(ok(&mut t, QUEUE_RESET, 1), Effect::QueueReset(1));
        assert_eq!(rd(&t, QUEUE_RESET), 1, "in progress");
        assert_eq!(rd(&t, QUEUE_READY), 0);
        assert!(!t.queue(1).unwrap().ready);
        assert_eq!(t.queue(1).unwrap().size, 0, "configuration dropped");
        assert_eq!(
            wr(&mut t, QUEUE_NOTIFY, 1).anomaly,
            Some(Anomaly::NotifyQueueNotReady { queue: 1 })
        );
        assert!(matches!(
            wr(&mut t, QUEUE_NUM, 64).anomaly,
            Some(Anomaly::QueueResetting { queue: 1, .. })
        ));
        assert!(matches!(
            wr(&mut t, QUEUE_READY, 1).anomaly,
            Some(Anomaly::QueueResetting { queue: 1, .. })
        ));
        assert_eq!(
            ok(&mut t, QUEUE_RESET, 1),
            Effect::None,
            "already resetting"
        );
        assert!(!t.complete_queue_reset(0));
        assert!(t.complete_queue_reset(1));
        assert!(!t.complete_queue_reset(1));
        assert_eq!(rd(&t, QUEUE_RESET), 0);
        // Queue 0 was untouched and the driver sets queue 1 up again.
        assert!(t.queue(0).unwrap().ready);
        assert_eq!(
            setup_queue(&mut t, 1, 32, 0x5000_0000),
            Effect::QueueReady(1)
        );
        assert_eq!(
            ok(&mut t, QUEUE_NOTIFY, 1),
            Effect::Notify { queue: 1, data: 1 }
        );
        // A device reset ends a queue reset in progress.
        ok(&mut t, QUEUE_RESET, 1);
        ok(&mut t, STATUS, 0);
        assert!(!t.complete_queue_reset(1));
        assert_eq!(
            wr(&mut t, QUEUE_RESET, 1).anomaly,
            Some(Anomaly::QueueResetNotNegotiated),
            "nothing negotiated after reset"
        );
    }

    #[test]
    fn queue_reset_needs_ring_reset() {
        // Offered but not accepted.
        let mut t = blk();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        assert_eq!(
            t.read(QUEUE_RESET, 4).anomaly,
            Some(Anomaly::QueueResetNotNegotiated)
        );
        assert_eq!(
            wr(&mut t, QUEUE_RESET, 1).anomaly,
            Some(Anomaly::QueueResetNotNegotiated)
        );
        // Not offered: the driver cannot accept it.
        let mut t = Transport::new(info(VIRTIO_F_VERSION_1)).unwrap();
        assert!(negotiate(&mut t, VIRTIO_F_VERSION_1 | VIRTIO_F_RING_RESET)
            .anomaly
            .is_some());
        assert_eq!(
            wr(&mut t, QUEUE_RESET, 1).anomaly,
            Some(Anomaly::QueueResetNotNegotiated)
        );
    }

    #[test]
    fn raising_before_driver_ok_is_dropped() {
        let mut t = blk();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        assert!(!t.raise_used_buffer());
        assert!(!t.raise_config_change());
        assert_eq!(rd(&t, INT_STATUS), 0);
    }

    // ---- random access sequences ----

    #[derive(Clone, Debug)]
    enum Op {
        Read(u64, u8),
        Write(u64, u8, u64),
        UsedBuffer,
        ConfigChange,
        SetConfig(Vec<u8>),
        NeedsReset,
        CompleteQueueReset(u16),
    }

    fn offset() -> impl Strategy<Value = u64> {
        let known: Vec<u64> = CONTROL
            .iter()
            .map(|c| c.0)
            .chain([0x100, 0x104, 0x108])
            .collect();
        prop_oneof![
            8 => proptest::sample::select(known),
            2 => 0..0x210u64,
            1 => any::<u64>(),
        ]
    }

    fn width() -> impl Strategy<Value = u8> {
        prop_oneof![8 => Just(4u8), 2 => proptest::sample::select(&[1u8, 2, 8][..]), 1 => any::<u8>()]
    }

    fn value() -> impl Strategy<Value = u64> {
        prop_oneof![
            6 => proptest::sample::select(&[0u64, 1, 2, 3, 4, 7, 8, 0xb, 0xf, 0x40, 0x80, 0x200, 256, 128][..]),
            2 => 0..512u64,
            1 => any::<u32>().prop_map(u64::from),
            1 => any::<u64>(),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (offset(), width()).prop_map(|(o, w)| Op::Read(o, w)),
            10 => (offset(), width(), value()).prop_map(|(o, w, v)| Op::Write(o, w, v)),
            1 => Just(Op::UsedBuffer),
            1 => Just(Op::ConfigChange),
            1 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::SetConfig),
            1 => Just(Op::NeedsReset),
            1 => (0..3u16).prop_map(Op::CompleteQueueReset),
        ]
    }

    fn check_invariants(t: &Transport) {
        assert_eq!(t.read(MAGIC, 4).value, u64::from(MAGIC_VALUE));
        assert_eq!(t.read(VERSION_REG, 4).value, 2);
        assert_eq!(t.interrupt_status() & !3, 0);
        assert_eq!(t.line(), t.interrupt_status() != 0);
        assert_eq!(t.read(INT_STATUS, 4).value, u64::from(t.interrupt_status()));
        assert_eq!(t.read(STATUS, 4).value, u64::from(t.status().bits()));
        let max = [256u16, 128];
        for (i, m) in max.iter().enumerate() {
            let q = t.queue(i as u16).unwrap();
            assert!(q.size <= *m, "queue {i}: {q:?}");
            assert!(!q.ready || q.size > 0);
            assert!(!q.ready || t.status().contains(DeviceStatus::FEATURES_OK));
        }
        assert_eq!(t.queue(2), None);
        let s = t.status();
        if s.contains(DeviceStatus::FEATURES_OK) {
            let f = t.negotiated_features().unwrap();
            assert_ne!(f & VIRTIO_F_VERSION_1, 0);
            assert_eq!(f & !FEATURES, 0);
            assert_eq!(t.driver_features, f, "nothing unoffered written");
        } else {
            assert_eq!(t.negotiated_features(), None);
        }
        assert!(!s.contains(DeviceStatus::DRIVER_OK) || s.contains(DeviceStatus::FEATURES_OK));
        assert_eq!(s.0 & 0x30, 0, "reserved status bits");
        // Interrupts are raised only after DRIVER_OK, which only a reset
        // clears, and a reset clears them too.
        assert!(!t.line() || s.contains(DeviceStatus::DRIVER_OK));
    }

    fn run(mut t: Transport, ops: &[Op]) {
        for op in ops {
            let was = t.line();
            let gen = t.config_generation();
            match op {
                Op::Read(o, w) => {
                    let before = t.clone();
                    let r = t.read(*o, *w);
                    assert!(r.anomaly.is_none() || r.value == 0, "RAZ");
                    assert_eq!(t, before, "reads have no side effects");
                }
                Op::Write(o, w, v) => {
                    let out = t.write(*o, *w, *v);
                    assert_eq!(out.line_changed, was != t.line(), "{op:?}");
                    if out.effect == Effect::Reset {
                        assert_eq!(t.status(), DeviceStatus(0));
                        assert!(!t.line());
                        assert!((0..2).all(|i| !t.queue(i).unwrap().ready));
                    }
                    if let Effect::StatusChanged { old, new } = out.effect {
                        assert_eq!(old.0 & !new.0, 0, "bits only added");
                    }
                }
                Op::UsedBuffer => assert_eq!(t.raise_used_buffer(), was != t.line()),
                Op::ConfigChange => assert_eq!(t.raise_config_change(), was != t.line()),
                Op::SetConfig(b) => {
                    let r = t.set_config(b);
                    assert_eq!(r.is_err(), b.len() > CONFIG_MAX);
                    assert_eq!(r.unwrap_or(false), was != t.line());
                    if r.is_ok() {
                        assert_eq!(t.config(), &b[..]);
                    }
                }
                Op::NeedsReset => assert_eq!(t.needs_reset(), was != t.line()),
                Op::CompleteQueueReset(i) => {
                    t.complete_queue_reset(*i);
                }
            }
            assert!(t.config_generation() >= gen, "generation monotonic");
            check_invariants(&t);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]
        #[test]
        fn random_accesses_keep_invariants(ops in proptest::collection::vec(op(), 1..120)) {
            run(blk(), &ops);
        }

        /// The same, starting from a live device so queue and interrupt
        /// paths are reached more often.
        #[test]
        fn random_accesses_on_live_device(ops in proptest::collection::vec(op(), 1..60)) {
            run(live(), &ops);
        }
    }
}
