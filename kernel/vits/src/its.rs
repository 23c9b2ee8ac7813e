//! The virtual ITS of one VM.
//!
//! # Lock order (vITS invariant 10)
//!
//! 1. `Vits::cmdq` — the command queue and the register frame
//!    (CTLR, CBASER, CWRITER, CREADR, `BASER<n>`). Held while commands run.
//! 2. `Vits::routes` — the event -> vLPI route: devices, their ITTs and the
//!    collection table. Held for every lookup or change of a route.
//! 3. The VM's [`Vgic`] state lock — per-LPI and per-vCPU interrupt state.
//! 4. The [`Mirror`] (the hypervisor's passthrough of a real device) is
//!    called with 1 and 2 held (1 alone for MAPC's moves) and never with
//!    3: it takes its own locks
//!    (its device map, then the physical ITS queue) and may wait for the
//!    host-LPI acknowledgement windows, which hold no lock
//!    ([`crate::hostlpi`]).
//!
//! A lock is only ever taken while holding locks *above* it. The injection
//! path ([`Vits::translate`], and so `GITS_TRANSLATER`) takes 2 then 3 and
//! never 1. Commands that change one route each (MAPTI, DISCARD, INT...)
//! run in runs that hold 2 and 3 over up to [`RUN`] commands (`Held`).
//! Reading guest memory takes no lock and cannot block (the VM's RAM stays
//! mapped while its vCPUs run), so a command's property byte is read with
//! 2 and 3 held.
//!
//! # Error policy
//!
//! IHI 0069 §5.3 lets an ITS react to a command error either by ignoring the
//! command and continuing, or by stalling (`GITS_CREADR.Stalled` until a
//! `GITS_CWRITER.Retry`). This vITS **ignores and continues** for *every*
//! parameter error (out-of-range DeviceID, EventID, ICID, INTID or RDbase;
//! unmapped device or collection; MAPTI onto a mapped event; ITT or
//! device-table entry outside RAM; unknown command number): the command has
//! no effect at all (vITS invariant 7), CREADR moves past it, the error is
//! logged, counted and recorded in [`Vits::last_error`]. `GITS_TYPER.SEIS`
//! is 0: no SError is reported. The queue stalls only when a command cannot
//! be *read* (its memory stopped being RAM): there is nothing to ignore;
//! a write of CWRITER with Retry = 1 retries it.
//!
//! Register-level misuse is handled the same way, with no effect: a
//! `CWRITER` value at or beyond the end of the queue is ignored (WI), as are
//! `CBASER`/`BASER<n>` writes while the ITS is enabled; a table or queue
//! base outside the VM's RAM is stored with Valid = 0, before any access.
//!
//! # Generations
//!
//! Every `MAPTI` that creates an LPI gives it a fresh generation (in the
//! vGIC); list-register state folds back only into the generation that
//! loaded it (vITS invariant 5). The ITE records the generation it mapped.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use vigil_vgic::sync::{Mutex, MutexGuard};
use vigil_vgic::{GuestMemory, Kick, LpiConfig, PropTable, Vgic, VgicState};

use crate::cmd::{opcode, Command, RawCommand};

/// Second 64 KiB frame: `GITS_TRANSLATER` (IHI 0069 ch. 12, GITS_TRANSLATER).
pub const GITS_TRANSLATER: u64 = 0x1_0040;
/// Size of the whole ITS register region (two 64 KiB frames).
pub const GITS_SIZE: u64 = 0x2_0000;
/// Table page size reported in `GITS_BASER<n>.Page_Size` (64 KiB).
pub const TABLE_PAGE: u64 = 0x1_0000;
/// Bytes per ITT entry (`GITS_TYPER.ITT_entry_size` + 1).
pub const ITT_ENTRY_SIZE: u64 = 8;
/// Bytes per device / collection table entry (`GITS_BASER.Entry_Size` + 1).
pub const TABLE_ENTRY_SIZE: u64 = 8;
/// `GITS_IIDR`: implementer ARM (0x43B), product 'V'.
pub const VITS_IIDR: u32 = (0x56 << 24) | 0x43b;

/// Shape of one vITS.
#[derive(Clone, Debug)]
pub struct VitsConfig {
    /// DeviceID bits (`GITS_TYPER.Devbits` + 1), 1..=32.
    pub device_id_bits: u8,
    /// EventID bits (`GITS_TYPER.IDbits` + 1), 1..=32.
    pub event_id_bits: u8,
    /// DeviceID used for `GITS_TRANSLATER` writes made by a vCPU itself
    /// (a CPU has no requester ID; the architecture leaves it to the
    /// implementation).
    pub cpu_device_id: u32,
    /// Most mapped devices. The route table lives in hypervisor memory, so
    /// what a guest can make it hold is bounded (beyond: ignored,
    /// `TooManyDevices`).
    pub max_devices: u32,
    /// Most mapped events over all devices (`TooManyMappings`);
    /// [`MAX_MAPPINGS`] by default.
    pub max_mappings: u32,
    /// Work one call may do on the command queue (a CWRITER write, or
    /// [`Vits::resume`] at a vCPU entry): a command costs 1, a command
    /// that walks mappings (INVALL, MAPC retargeting, MOVALL, MAPD
    /// unmapping a device) 1 per mapping walked, and a walk stops midway
    /// and resumes from where it stopped. None: everything at once.
    pub slice: Option<u32>,
}

/// The slice the hypervisor runs guests' ITS command queues with: at most
/// this many commands or walked mappings per trap (a few hundred
/// microseconds), so one VM's queue cannot hold a physical CPU that
/// another VM's vCPU is waiting for.
pub const SLICE: u32 = 256;

/// The default quota of mapped events per vITS: 2^17, so that a VM can map
/// 10^5 LPIs and still map and unmap more (its vGIC names 2^17 - 8192 =
/// 122,880 LPI INTIDs). Each mapping costs the hypervisor's heap a route
/// entry and, per distinct vINTID, a per-LPI record.
pub const MAX_MAPPINGS: u32 = 1 << 17;

/// The most heap one vITS at its quota takes together with its vGIC's
/// per-LPI state, in a buddy allocator's power-of-two blocks (measured by
/// `tests/heap.rs`, which fails if it is exceeded): the hypervisor's heap
/// grows by this much per VM.
pub const HEAP_AT_QUOTA: usize = 40 << 20;

impl Default for VitsConfig {
    fn default() -> Self {
        Self {
            device_id_bits: 16,
            event_id_bits: 16,
            cpu_device_id: 0,
            max_devices: 1024,
            max_mappings: MAX_MAPPINGS,
            slice: None,
        }
    }
}

/// Why a command was ignored (the error policy above).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdError {
    /// Command number not implemented.
    UnknownCommand(u8),
    /// DeviceID beyond `Devbits` or beyond the device table.
    DeviceOutOfRange(u32),
    /// The device table is not valid, or the two-level entry for this
    /// DeviceID is not valid or not in RAM.
    DeviceTableEntryInvalid(u32),
    /// MAPD Size exceeds `GITS_TYPER.IDbits`.
    IttSizeTooLarge(u8),
    /// MAPD ITT_addr..+size is not RAM of the VM.
    IttOutsideRam(u64),
    /// The device is not mapped.
    DeviceUnmapped(u32),
    /// EventID beyond the device's ITT size.
    EventOutOfRange(u32, u32),
    /// The event is not mapped.
    EventUnmapped(u32, u32),
    /// MAPTI/MAPI onto an event that is already mapped.
    EventAlreadyMapped(u32, u32),
    /// ICID beyond the collection table.
    CollectionOutOfRange(u16),
    /// The collection is not mapped.
    CollectionUnmapped(u16),
    /// The INTID is not an LPI this VM supports.
    LpiOutOfRange(u32),
    /// RDbase names no redistributor.
    RdbaseOutOfRange(u64),
    /// MAPD of a new device beyond `VitsConfig::max_devices`.
    TooManyDevices(u32),
    /// MAPTI/MAPI beyond `VitsConfig::max_mappings`.
    TooManyMappings(u32, u32),
    /// MAPD of an ITT that would take the ITTs of all devices beyond
    /// twice `VitsConfig::max_mappings` entries, or that the hypervisor's
    /// heap has no room for.
    IttQuota(u32),
    /// MAPTI/MAPI of an INTID the vGIC's LPI table has no room for.
    LpiTableFull(u32),
}

/// Why [`Vits::translate`] raised nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslateError {
    /// `GITS_CTLR.Enabled` is 0.
    Disabled,
    /// No such device is mapped.
    DeviceUnmapped,
    /// No such event is mapped.
    EventUnmapped,
    /// The event's collection is not mapped.
    CollectionUnmapped,
    /// The event is mapped again since the route was looked up (another
    /// generation; see [`crate::hostlpi`] H1).
    Remapped,
}

/// An Interrupt Translation Entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ite {
    intid: u32,
    icid: u16,
    /// The mirror mapped it to its vLPI directly ([`Mirror::map_event`]):
    /// software triggers and INV go to the mirror.
    direct: bool,
    gen: u64,
}

/// A device's ITT as the vITS keeps it: an entry per EventID, made by
/// MAPD at the size it gives (IHI 0069 §5.3, MAPD), freed when no LPI
/// state refers to it any more (vITS invariant 6: after the walk that
/// unmaps its LPIs).
type Itt = Box<[Option<Ite>]>;

struct Device {
    itt: Itt,
    /// Events mapped in `itt`.
    mapped: u32,
}

impl Device {
    /// The ITT entry of `event`, if the ITT that MAPD gave `device` has one.
    fn entry(&mut self, device: u32, event: u32) -> Result<&mut Option<Ite>, CmdError> {
        self.itt
            .get_mut(event as usize)
            .ok_or(CmdError::EventOutOfRange(device, event))
    }

    /// The mapped ITE of `event`.
    fn ite(&self, device: u32, event: u32) -> Result<Ite, CmdError> {
        self.itt
            .get(event as usize)
            .ok_or(CmdError::EventOutOfRange(device, event))?
            .ok_or(CmdError::EventUnmapped(device, event))
    }
}

/// The collection table: ICID -> target vCPU, flat, as the ITS's own
/// GITS_BASER1 table is. It grows to the highest ICID mapped (ICIDs are 16
/// bits: at most 128 KiB per vITS); a lookup, on every MSI and most
/// commands, is one load.
#[derive(Default)]
struct Collections(Vec<u16>);

impl Collections {
    const UNMAPPED: u16 = u16::MAX;

    fn get(&self, icid: u16) -> Option<usize> {
        match self.0.get(usize::from(icid)) {
            Some(&v) if v != Self::UNMAPPED => Some(usize::from(v)),
            _ => None,
        }
    }

    fn contains(&self, icid: u16) -> bool {
        self.get(icid).is_some()
    }

    /// Map `icid` to `vcpu` (below [`Self::UNMAPPED`]; the redistributor
    /// check bounds it); the previous target, or Err if the table cannot
    /// grow (the heap is out).
    fn insert(&mut self, icid: u16, vcpu: usize) -> Result<Option<usize>, ()> {
        let v = u16::try_from(vcpu)
            .ok()
            .filter(|&v| v != Self::UNMAPPED)
            .ok_or(())?;
        let i = usize::from(icid);
        if i >= self.0.len() {
            self.0
                .try_reserve_exact(i + 1 - self.0.len())
                .map_err(|_| ())?;
            self.0.resize(i + 1, Self::UNMAPPED);
        }
        let old = self.get(icid);
        self.0[i] = v;
        Ok(old)
    }

    fn remove(&mut self, icid: u16) {
        if let Some(slot) = self.0.get_mut(usize::from(icid)) {
            *slot = Self::UNMAPPED;
        }
    }
}

/// The mapped devices, sorted by DeviceID: a lookup (on every MSI and most
/// commands) is a binary search over a few contiguous entries, and walks go
/// in DeviceID order. At most `VitsConfig::max_devices` of them.
#[derive(Default)]
struct Devices(Vec<(u32, Device)>);

impl Devices {
    /// `slice::binary_search`, by hand: the library's is a call on every
    /// MSI and command.
    #[inline(always)]
    fn find(&self, device: u32) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.0.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.0[mid].0.cmp(&device) {
                core::cmp::Ordering::Less => lo = mid + 1,
                core::cmp::Ordering::Equal => return Ok(mid),
                core::cmp::Ordering::Greater => hi = mid,
            }
        }
        Err(lo)
    }

    #[inline]
    fn get(&self, device: u32) -> Option<&Device> {
        self.find(device).ok().map(|i| &self.0[i].1)
    }

    #[inline(always)]
    fn get_mut(&mut self, device: u32) -> Option<&mut Device> {
        self.find(device).ok().map(|i| &mut self.0[i].1)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Every mapped DeviceID, in order.
    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().map(|&(d, _)| d)
    }

    /// The devices from DeviceID `first` on, in order.
    fn from(&self, first: u32) -> impl Iterator<Item = (u32, &Device)> {
        let at = self.find(first).unwrap_or_else(|i| i);
        self.0[at..].iter().map(|(d, dev)| (*d, dev))
    }

    /// Room for one more device, made before any change (vITS invariant
    /// 7): Err if the heap has none.
    fn reserve(&mut self) -> Result<(), ()> {
        self.0.try_reserve(1).map_err(|_| ())
    }

    /// Map `device` (not mapped: `remove` went first), into room
    /// [`Self::reserve`] made.
    fn insert(&mut self, device: u32, dev: Device) {
        let at = self.find(device).unwrap_or_else(|i| i);
        self.0.insert(at, (device, dev));
    }

    fn remove(&mut self, device: u32) -> Option<Device> {
        self.find(device).ok().map(|i| self.0.remove(i).1)
    }
}

/// The event -> vLPI route (lock 2).
struct Routes {
    enabled: bool,
    devices: Devices,
    collections: Collections,
    /// Events mapped over all devices (the quota's count).
    mappings: u32,
    /// ITT entries over all devices (bounded by [`Vits::itt_quota`]).
    itt_entries: u64,
}

/// Where a walk of the mappings stopped: the last (DeviceID, EventID)
/// scanned, None before the first.
type Cursor = Option<(u32, u32)>;

/// A walking command's part: the cursor to resume from (None: done) and
/// the work it did.
type WalkResult = Result<(Option<Cursor>, u32), CmdError>;

/// A command that walks mappings and stopped midway, at CREADR `creadr`.
struct Walk {
    creadr: u64,
    state: WalkState,
}

enum WalkState {
    /// INVALL or MAPC: the last (DeviceID, EventID) scanned.
    Scan(Cursor),
    /// MAPD of a mapped device: its old ITT, whose mappings from this
    /// EventID on are still to free in the vGIC (the route is gone
    /// already).
    Unmap(Itt, usize),
    /// MOVALL: the LPIs still to move.
    Move,
}

/// The command queue and register frame (lock 1).
struct CmdQueue {
    /// The walk in progress, if the command at CREADR stopped midway.
    walk: Option<Walk>,
    enabled: bool,
    cbaser: u64,
    cwriter: u64,
    creadr: u64,
    stalled: bool,
    baser: [u64; 2],
    errors: u64,
    commands: u64,
    last_error: Option<CmdError>,
}

impl Routes {
    fn at_reset() -> Self {
        Self {
            enabled: false,
            devices: Devices::default(),
            collections: Collections::default(),
            mappings: 0,
            itt_entries: 0,
        }
    }
}

impl CmdQueue {
    fn at_reset() -> Self {
        Self {
            walk: None,
            enabled: false,
            cbaser: 0,
            cwriter: 0,
            creadr: 0,
            stalled: false,
            baser: [
                BASER_TYPE_DEVICE | BASER_ENTRY_SIZE | BASER_PAGE_64K,
                BASER_TYPE_COLLECTION | BASER_ENTRY_SIZE | BASER_PAGE_64K,
            ],
            errors: 0,
            commands: 0,
            last_error: None,
        }
    }
}

/// Commands a run holds locks 2 and 3 over ([`Held`]): it bounds how long
/// an injection on another CPU, or another vCPU's exit, waits for them.
const RUN: u32 = 16;
const _: () = assert!(RUN.is_power_of_two());

/// Locks 2 and 3 as a run of commands holds them: taken by the first
/// command that needs them, kept for the next ones (up to [`RUN`]) so that
/// a command costs no lock round trip of its own. They are released before
/// the mirror is called (the vGIC lock; lock order, item 4), before a
/// command that walks mappings, before an error is logged, and when the
/// run ends.
struct Held<'a> {
    its: &'a Vits,
    routes: Option<MutexGuard<'a, Routes>>,
    vgic: Option<MutexGuard<'a, VgicState>>,
}

impl<'a> Held<'a> {
    fn new(its: &'a Vits) -> Self {
        Self {
            its,
            routes: None,
            vgic: None,
        }
    }

    /// Release both.
    fn release(&mut self) {
        self.vgic = None;
        self.routes = None;
    }
}

/// The route lock of `held`, taken if the run does not hold it yet.
fn routes_of<'a, 'b>(
    routes: &'b mut Option<MutexGuard<'a, Routes>>,
    its: &'a Vits,
) -> &'b mut Routes {
    routes.get_or_insert_with(|| its.routes.lock())
}

/// The vGIC lock of `held`, taken if the run does not hold it yet. `_order`
/// is the held route lock: the vGIC lock is only ever taken below it.
fn vgic_under<'a, 'b>(
    vgic: &'b mut Option<MutexGuard<'a, VgicState>>,
    its: &'a Vits,
    _order: &Routes,
) -> &'b mut VgicState {
    vgic.get_or_insert_with(|| its.vgic.lock())
}

// GITS_CBASER / GITS_BASER<n> fields.
const VALID: u64 = 1 << 63;
const INDIRECT: u64 = 1 << 62;
const CBASER_MASK: u64 = VALID | (7 << 59) | (7 << 53) | 0x000f_ffff_ffff_f000 | (3 << 10) | 0xff;
const BASER_WMASK: u64 =
    VALID | INDIRECT | (7 << 59) | (7 << 53) | 0x0000_ffff_ffff_f000 | (3 << 10) | 0xff;
const BASER_TYPE_DEVICE: u64 = 1 << 56;
const BASER_TYPE_COLLECTION: u64 = 4 << 56;
const BASER_ENTRY_SIZE: u64 = (TABLE_ENTRY_SIZE - 1) << 48;
const BASER_PAGE_64K: u64 = 2 << 8;
const QUEUE_OFFSET_MASK: u64 = 0xf_ffe0;

fn baser_base(v: u64) -> u64 {
    // 64 KiB pages: PA[47:16] in place, PA[51:48] in bits [15:12].
    (v & 0x0000_ffff_ffff_0000) | (((v >> 12) & 0xf) << 48)
}

fn baser_bytes(v: u64) -> u64 {
    ((v & 0xff) + 1) * TABLE_PAGE
}

/// Priority and enable of `intid` from the property table `props`; an
/// entry PROPBASER does not cover, or outside RAM, reads as disabled.
#[inline]
fn lpi_config(props: &PropTable<'_>, intid: u32, mem: &dyn GuestMemory) -> LpiConfig {
    props.config(intid, mem).unwrap_or(LpiConfig {
        priority: 0xfc,
        enabled: false,
    })
}

/// A guest's memory as one run of commands reads it: the LPI property
/// table translated once for every MAPTI and INV of the run that reads
/// it, not once per command.
struct RunMem<'m> {
    mem: &'m dyn GuestMemory,
    props: Option<PropTable<'m>>,
}

impl<'m> RunMem<'m> {
    fn new(mem: &'m dyn GuestMemory) -> Self {
        Self { mem, props: None }
    }

    /// [`lpi_config`] from the table at `propbaser` (the vGIC's, read under
    /// its lock: a table kept from an earlier PROPBASER is not used).
    #[inline(always)]
    fn lpi_config(&mut self, propbaser: u64, intid: u32) -> LpiConfig {
        match &self.props {
            Some(p) if p.propbaser() == propbaser => lpi_config(p, intid, self.mem),
            _ => self.lpi_config_new_table(propbaser, intid),
        }
    }

    /// [`Self::lpi_config`] of the run's first read, or the first since
    /// PROPBASER changed: the table is translated again.
    #[cold]
    #[inline(never)]
    fn lpi_config_new_table(&mut self, propbaser: u64, intid: u32) -> LpiConfig {
        let props = self.props.insert(PropTable::new(propbaser, self.mem));
        lpi_config(props, intid, self.mem)
    }
}

/// A physical ITS behind this virtual one, for passed-through devices
/// whose MSIs arrive as host LPIs (the hypervisor mirrors the guest's
/// mappings onto it, as Xen does for its hardware domain).
///
/// Every call is made with the route lock held (but MAPC's moves, made
/// with only the queue lock), after the virtual route changed and before
/// the command completes: when a DISCARD or MAPD(V=0)
/// returns to the guest, the physical mapping is gone too (vITS invariant
/// 2 on the passthrough path). Implementations may take their own locks
/// (the physical command queue) but never the vITS's or the vGIC's.
pub trait Mirror: Send + Sync {
    /// Whether MSIs of `device` come from a real device.
    fn owns(&self, device: u32) -> bool;
    /// MAPD(V=1) with room for 2^`event_bits` events.
    fn map_device(&self, device: u32, event_bits: u8);
    /// MAPD(V=0), or MAPD(V=1) replacing a mapped device.
    fn unmap_device(&self, device: u32);
    /// MAPTI/MAPI: the event now raises vLPI `intid` on vCPU `target`
    /// (None: its collection is not mapped yet), in this mapping's
    /// `generation` (give it to [`Vits::translate_generation`]). True if
    /// the mirror mapped it to the vLPI directly (GICv4 VMAPTI): the
    /// physical ITS then owns its pending state, and the event's software
    /// triggers and INVs go to [`Mirror::raise`] and
    /// [`Mirror::inv_event`].
    fn map_event(
        &self,
        device: u32,
        event: u32,
        intid: u32,
        target: Option<usize>,
        generation: u64,
    ) -> bool;
    /// DISCARD.
    fn unmap_event(&self, device: u32, event: u32);
    /// MOVI, or a MAPC that retargets the event's collection.
    fn move_event(&self, device: u32, event: u32, target: usize);
    /// CLEAR: drop a pending host interrupt of the event.
    fn clear_event(&self, device: u32, event: u32);
    /// A software trigger (INT, a `GITS_TRANSLATER` write) of an event it
    /// mapped directly: make it pending on the physical side, where its
    /// pending state lives (in the vPE's table, not in the vGIC: the two
    /// paths never both hold it). False if it could not (then the vGIC
    /// takes it).
    fn raise(&self, _device: u32, _event: u32) -> bool {
        false
    }
    /// INV/INVALL of an event it mapped directly: the guest changed its
    /// configuration; the physical redistributor re-reads it.
    fn inv_event(&self, _device: u32, _event: u32) {}
}

/// One VM's virtual ITS.
pub struct Vits {
    vgic: Arc<Vgic>,
    cfg: VitsConfig,
    cmdq: Mutex<CmdQueue>,
    routes: Mutex<Routes>,
    mirror: spin::Once<Arc<dyn Mirror>>,
    /// Commands are queued that the last slice did not reach (read with no
    /// lock on every vCPU entry).
    unfinished: core::sync::atomic::AtomicBool,
}

impl Vits {
    /// A vITS at reset, delivering into `vgic`.
    pub fn new(vgic: Arc<Vgic>, cfg: VitsConfig) -> Self {
        let cfg = VitsConfig {
            device_id_bits: cfg.device_id_bits.clamp(1, 32),
            event_id_bits: cfg.event_id_bits.clamp(1, 32),
            ..cfg
        };
        Self {
            vgic,
            cfg,
            cmdq: Mutex::new(CmdQueue::at_reset()),
            routes: Mutex::new(Routes::at_reset()),
            mirror: spin::Once::new(),
            unfinished: core::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Mirror mappings of passed-through devices onto a physical ITS. Set
    /// once, before the guest runs.
    pub fn set_mirror(&self, m: Arc<dyn Mirror>) {
        self.mirror.call_once(|| m);
    }

    /// The mirror, if `device` is one it owns.
    fn mirror_for(&self, device: u32) -> Option<&dyn Mirror> {
        self.mirror.get().map(|m| &**m).filter(|m| m.owns(device))
    }

    /// A software trigger of an event the mirror mapped directly
    /// ([`Mirror::raise`]). Out of line: the injection path of every other
    /// event pays only the test of the ITE's flag.
    #[cold]
    #[inline(never)]
    fn raise_direct(&self, device: u32, event: u32) -> bool {
        self.mirror_for(device)
            .is_some_and(|m| m.raise(device, event))
    }

    /// INV/INVALL of `ite`, if the mirror mapped it directly
    /// ([`Mirror::inv_event`]). With the route lock held, not the vGIC's.
    fn inv_direct(&self, device: u32, event: u32, ite: &Ite) {
        if ite.direct {
            if let Some(m) = self.mirror_for(device) {
                m.inv_event(device, event);
            }
        }
    }

    /// Back to power-on state (a VM reset): disabled, no queue, no devices
    /// or collections. Takes the queue lock, then the routes lock (the
    /// documented order). The vGIC is reset separately.
    pub fn reset(&self) {
        let mut q = self.cmdq.lock();
        let mut r = self.routes.lock();
        if let Some(m) = self.mirror.get() {
            for device in r.devices.ids() {
                if m.owns(device) {
                    m.unmap_device(device);
                }
            }
        }
        *q = CmdQueue::at_reset();
        *r = Routes::at_reset();
        self.unfinished
            .store(false, core::sync::atomic::Ordering::Release);
    }

    /// Whether commands wait for another slice ([`Self::resume`]).
    pub fn has_unfinished_commands(&self) -> bool {
        self.unfinished.load(core::sync::atomic::Ordering::Acquire)
    }

    /// Run the next slice of the command queue (a vCPU of this VM is about
    /// to enter, or waits).
    pub fn resume(&self, mem: &dyn GuestMemory) -> Kick {
        if !self.has_unfinished_commands() {
            return Kick::default();
        }
        let mut q = self.cmdq.lock();
        self.process(&mut q, mem)
    }

    /// The vGIC this vITS delivers into.
    pub fn vgic(&self) -> &Arc<Vgic> {
        &self.vgic
    }

    /// Number of commands ignored under the error policy so far.
    pub fn error_count(&self) -> u64 {
        self.cmdq.lock().errors
    }

    /// The most recent command error.
    pub fn last_error(&self) -> Option<CmdError> {
        self.cmdq.lock().last_error
    }

    /// Number of commands consumed (CREADR advances) so far.
    pub fn command_count(&self) -> u64 {
        self.cmdq.lock().commands
    }

    /// The route of (DeviceID, EventID): (vINTID, ICID), if mapped.
    pub fn lookup(&self, device: u32, event: u32) -> Option<(u32, u16)> {
        let r = self.routes.lock();
        let ite = r.devices.get(device)?.ite(device, event).ok()?;
        Some((ite.intid, ite.icid))
    }

    /// The vCPU collection `icid` is mapped to.
    pub fn collection(&self, icid: u16) -> Option<usize> {
        self.routes.lock().collections.get(icid)
    }

    /// Raise the LPI of (DeviceID, EventID) as if the device had written
    /// `GITS_TRANSLATER`. Callable from any CPU at any time; it takes the
    /// route lock and the vGIC lock, never the command-queue lock
    /// (vITS invariant 10). The route is read as a unit with the injection
    /// (vITS invariant 2): once a DISCARD or MAPD(V=0) has returned, this
    /// raises nothing for that event.
    pub fn translate(&self, device: u32, event: u32) -> Result<Kick, TranslateError> {
        self.translate_checked(device, event, None)
    }

    /// [`Self::translate`] for a host LPI whose route was armed for the
    /// mapping of `generation` (low 32 bits, as [`Mirror::map_event`] gave
    /// it): if the event was unmapped and mapped again since, the LPI
    /// belongs to the old mapping and is dropped.
    pub fn translate_generation(
        &self,
        device: u32,
        event: u32,
        generation: u32,
    ) -> Result<Kick, TranslateError> {
        self.translate_checked(device, event, Some(generation))
    }

    fn translate_checked(
        &self,
        device: u32,
        event: u32,
        generation: Option<u32>,
    ) -> Result<Kick, TranslateError> {
        let routes = self.routes.lock();
        if !routes.enabled {
            return Err(TranslateError::Disabled);
        }
        // vITS invariant 3: every step tolerates "not mapped any more".
        let dev = routes
            .devices
            .get(device)
            .ok_or(TranslateError::DeviceUnmapped)?;
        let ite = dev
            .ite(device, event)
            .map_err(|_| TranslateError::EventUnmapped)?;
        if generation.is_some_and(|g| g != ite.gen as u32) {
            return Err(TranslateError::Remapped);
        }
        // A host LPI (generation given) only exists for events the mirror
        // did not map directly.
        if ite.direct && generation.is_none() && self.raise_direct(device, event) {
            return Ok(Kick::default());
        }
        let vcpu = routes
            .collections
            .get(ite.icid)
            .ok_or(TranslateError::CollectionUnmapped)?;
        let mut kick = Kick::default();
        let mut st = self.vgic.lock();
        if !st.lpi_set_pending(ite.intid, Some(ite.gen), Some(vcpu), &mut kick) {
            st.note_anomaly();
            log::error!("vits: route to INTID {} has a stale generation", ite.intid);
            return Err(TranslateError::EventUnmapped);
        }
        Ok(kick)
    }

    // ---- register frame ----

    /// Read `len` bytes at `offset` of the ITS region (two 64 KiB frames).
    pub fn mmio_read(&self, offset: u64, len: u8) -> u64 {
        match decode(offset, len) {
            Some((r, a)) => (r.read)(self, &a),
            None => 0,
        }
    }

    /// Write `len` bytes at `offset` of the ITS region. A CWRITER write
    /// processes the queue up to it before returning; a TRANSLATER write is
    /// an event from `cfg.cpu_device_id`.
    pub fn mmio_write(&self, offset: u64, len: u8, value: u64, mem: &dyn GuestMemory) -> Kick {
        match decode(offset, len) {
            Some((r, a)) => (r.write)(self, &a, value, mem),
            None => Kick::default(),
        }
    }

    /// `GITS_TYPER` (IHI 0069 ch. 12, GITS_TYPER): Physical, ITT_entry_size, IDbits,
    /// Devbits; PTA = 0 (RDbase is a processor number), HCC = 0 (all
    /// collections in memory), CIDbits = 0 (16-bit ICIDs), SEIS = 0.
    fn typer(&self) -> u64 {
        1 | ((ITT_ENTRY_SIZE - 1) << 4)
            | (u64::from(self.cfg.event_id_bits - 1) << 8)
            | (u64::from(self.cfg.device_id_bits - 1) << 13)
    }

    // ---- command processing ----

    /// Process commands from CREADR up to CWRITER, one at a time and in
    /// order (vITS invariant 1).
    fn process(&self, q: &mut CmdQueue, mem: &dyn GuestMemory) -> Kick {
        let mut kick = Kick::default();
        if !q.enabled || q.cbaser & VALID == 0 {
            return kick;
        }
        let base = q.cbaser & 0x000f_ffff_ffff_f000;
        let size = ((q.cbaser & 0xff) + 1) * 4096;
        if q.cwriter >= size || q.creadr >= size {
            // CBASER shrank under an old CWRITER: CREADR would never meet
            // it. Nothing is processed until CWRITER is rewritten.
            vigil_vgic::guest_warn!(
                "vits: CWRITER {:#x} beyond the {size:#x}-byte queue, not processed",
                q.cwriter
            );
            return kick;
        }
        let mut budget = self.cfg.slice.unwrap_or(u32::MAX);
        if self.has_unfinished_commands() {
            self.unfinished
                .store(false, core::sync::atomic::Ordering::Release);
        }
        // The queue translated once, if it is all RAM; otherwise each
        // command is read on its own, and the queue stalls on the first
        // that cannot be.
        let window = mem.window(base, size);
        let mut run_mem = RunMem::new(mem);
        let mut held = Held::new(self);
        while !q.stalled && q.creadr != q.cwriter {
            if budget == 0 {
                // The rest waits for the next slice; CREADR shows how far
                // the queue got.
                self.unfinished
                    .store(true, core::sync::atomic::Ordering::Release);
                return kick;
            }
            let dw = match &window {
                Some(w) => w.read_u64s::<4>(q.creadr),
                None => {
                    let mut dw = [0u64; 4];
                    mem.read_u64s(base + q.creadr, &mut dw).ok().map(|()| dw)
                }
            };
            let Some(dw) = dw else {
                held.release();
                log::error!(
                    "vits: command at {:#x} unreadable, queue stalled",
                    base + q.creadr
                );
                q.stalled = true;
                break;
            };
            let raw = RawCommand(dw);
            let res = if q.walk.is_none() && !raw.walks() {
                // The common case: a command that walks nothing, none
                // half-done, in the run. A run ends every RUN commands of
                // the budget: at most RUN commands since the last release
                // (walks release too).
                if budget.is_multiple_of(RUN) {
                    held.release();
                }
                budget -= 1;
                self.execute(q, &mut held, raw, &mut run_mem, &mut kick)
                    .map(|()| true)
            } else {
                held.release();
                let res = match Command::decode(dw) {
                    Ok(cmd) => self.step(q, &cmd, raw, mem, &mut kick, &mut budget),
                    Err(op) => {
                        budget -= 1;
                        Err(CmdError::UnknownCommand(op))
                    }
                };
                if res != Ok(false) && q.walk.is_some() {
                    q.walk = None;
                }
                res
            };
            if res == Ok(false) {
                // A walk stopped midway: CREADR stays on its command.
                self.unfinished
                    .store(true, core::sync::atomic::Ordering::Release);
                return kick;
            }
            if let Err(e) = res {
                // The error policy: ignore the command and continue. Logged
                // with no lock of the run held.
                held.release();
                vigil_vgic::guest_warn!("vits: command at CREADR {:#x} ignored: {e:?}", q.creadr);
                q.errors += 1;
                q.last_error = Some(e);
            }
            q.commands += 1;
            // vITS invariant 1: 32 bytes per command, wrapping.
            q.creadr += 32;
            if q.creadr == size {
                q.creadr = 0;
            }
        }
        kick
    }

    /// Run the command at CREADR, or the next part of it if it walks
    /// mappings, within `budget`. Ok(true): done; Ok(false): it stopped
    /// midway and resumes on the next call.
    fn step(
        &self,
        q: &mut CmdQueue,
        cmd: &Command,
        raw: RawCommand,
        mem: &dyn GuestMemory,
        kick: &mut Kick,
        budget: &mut u32,
    ) -> Result<bool, CmdError> {
        let walk = match q.walk.take() {
            Some(w) if w.creadr == q.creadr => Some(w),
            _ => None,
        };
        let at = q.creadr;
        let max = (*budget).max(1);
        let (done, used, state) = match (*cmd, walk.map(|w| w.state)) {
            (Command::Invall { icid }, w) => {
                let after = match w {
                    Some(WalkState::Scan(a)) => a,
                    _ => None,
                };
                let (next, used) = self.cmd_invall(q, icid, mem, kick, after, max)?;
                (next.is_none(), used, next.map(WalkState::Scan))
            }
            (
                Command::Mapc {
                    icid,
                    rdbase,
                    valid,
                },
                w,
            ) => {
                let resumed = match w {
                    Some(WalkState::Scan(a)) => Some(a),
                    _ => None,
                };
                let (next, used) = self.cmd_mapc(q, icid, rdbase, valid, kick, resumed, max)?;
                (next.is_none(), used, next.map(WalkState::Scan))
            }
            (Command::Movall { rdbase1, rdbase2 }, _) => {
                let (more, used) = self.cmd_movall(rdbase1, rdbase2, kick, max)?;
                (!more, used, more.then_some(WalkState::Move))
            }
            (Command::Mapd { .. }, Some(WalkState::Unmap(itt, from))) => {
                let (rest, used) = self.free_unmapped(itt, from, kick, max);
                (rest.is_none(), used, rest)
            }
            (
                Command::Mapd {
                    device,
                    size,
                    itt_addr,
                    valid,
                },
                _,
            ) => {
                let (rest, used) = match self.cmd_mapd(q, device, size, itt_addr, valid, mem)? {
                    Some(old) => self.free_unmapped(old, 0, kick, max),
                    None => (None, 0),
                };
                (rest.is_none(), used + 1, rest)
            }
            // A command that walks nothing, at a CREADR where a walk had
            // stopped (the guest rewrote the queue under it).
            _ => {
                self.execute(q, &mut Held::new(self), raw, &mut RunMem::new(mem), kick)?;
                (true, 1, None)
            }
        };
        *budget = budget.saturating_sub(used.max(1));
        q.walk = state.map(|state| Walk { creadr: at, state });
        Ok(done)
    }

    /// Free the vGIC state of the mappings of `itt` (a device's, whose route
    /// is gone: MAPD) from EventID `from` on, at most `max` of them: the
    /// walk to resume if some are left, and how many were freed.
    fn free_unmapped(
        &self,
        itt: Itt,
        from: usize,
        kick: &mut Kick,
        max: u32,
    ) -> (Option<WalkState>, u32) {
        let mut n = 0;
        let mut st = self.vgic.lock();
        for (event, ite) in itt.iter().enumerate().skip(from) {
            let Some(ite) = ite else { continue };
            if n == max {
                drop(st);
                return (Some(WalkState::Unmap(itt, event)), n);
            }
            st.lpi_unmap(ite.intid, kick);
            n += 1;
        }
        (None, n)
    }

    /// Run one command. Every check happens before any state changes, so an
    /// error has no side effect (vITS invariant 7). Inlined into the
    /// command loop: a call per command with the decoded command passed
    /// through memory cost more than its dispatch.
    #[inline(always)]
    fn execute<'a>(
        &'a self,
        q: &CmdQueue,
        held: &mut Held<'a>,
        raw: RawCommand,
        mem: &mut RunMem<'_>,
        kick: &mut Kick,
    ) -> Result<(), CmdError> {
        let (device, event, icid) = (raw.device(), raw.event(), raw.icid());
        match raw.opcode() {
            opcode::MAPTI => self.cmd_mapti(q, held, device, event, raw.intid(), icid, mem, kick),
            opcode::MAPI => self.cmd_mapti(q, held, device, event, event, icid, mem, kick),
            opcode::DISCARD => self.cmd_discard(held, device, event, kick),
            opcode::MOVI => self.cmd_movi(q, held, device, event, icid, kick),
            opcode::INV => self.cmd_inv(held, device, event, mem, kick),
            opcode::INT => self.cmd_int(held, device, event, kick),
            opcode::CLEAR => self.cmd_clear(held, device, event, kick),
            opcode::SYNC => self.cmd_sync(raw.rdbase()),
            // Walking commands go to `step`, which may split them.
            opcode::MAPD | opcode::MAPC | opcode::INVALL | opcode::MOVALL => Ok(()),
            op => Err(CmdError::UnknownCommand(op)),
        }
    }

    fn check_device_id(
        &self,
        q: &CmdQueue,
        device: u32,
        mem: &dyn GuestMemory,
    ) -> Result<(), CmdError> {
        if u64::from(device) >= 1u64 << self.cfg.device_id_bits {
            return Err(CmdError::DeviceOutOfRange(device));
        }
        let baser = q.baser[0];
        if baser & VALID == 0 {
            return Err(CmdError::DeviceTableEntryInvalid(device));
        }
        let entries_per_page = TABLE_PAGE / TABLE_ENTRY_SIZE;
        let l1_entries = baser_bytes(baser) / TABLE_ENTRY_SIZE;
        let dev = u64::from(device);
        if baser & INDIRECT == 0 {
            return if dev < l1_entries {
                Ok(())
            } else {
                Err(CmdError::DeviceOutOfRange(device))
            };
        }
        // Two-level table (IHI 0069 ch. 12, GITS_BASER<n>.Indirect): each
        // 8-byte level-1 entry has Valid in bit 63 and the 64 KiB-aligned
        // level-2 page address in bits [51:16].
        let idx = dev / entries_per_page;
        if idx >= l1_entries {
            return Err(CmdError::DeviceOutOfRange(device));
        }
        let l1 = mem
            .read_u64(baser_base(baser) + idx * TABLE_ENTRY_SIZE)
            .map_err(|_| CmdError::DeviceTableEntryInvalid(device))?;
        let l2 = l1 & 0x000f_ffff_ffff_0000;
        if l1 & VALID == 0 || !mem.is_ram(l2, TABLE_PAGE) {
            return Err(CmdError::DeviceTableEntryInvalid(device));
        }
        Ok(())
    }

    fn check_icid(&self, q: &CmdQueue, icid: u16) -> Result<(), CmdError> {
        let baser = q.baser[1];
        if baser & VALID == 0 || u64::from(icid) >= baser_bytes(baser) / TABLE_ENTRY_SIZE {
            return Err(CmdError::CollectionOutOfRange(icid));
        }
        Ok(())
    }

    fn check_rdbase(&self, rdbase: u64) -> Result<usize, CmdError> {
        usize::try_from(rdbase)
            .ok()
            .filter(|&v| v < self.vgic.nr_vcpus())
            .ok_or(CmdError::RdbaseOutOfRange(rdbase))
    }

    /// Most ITT entries over all devices: twice the mapping quota, so that
    /// devices may leave EventIDs unmapped and the ITTs still stay within
    /// the heap allowance ([`HEAP_AT_QUOTA`]).
    fn itt_quota(&self) -> u64 {
        2 * u64::from(self.cfg.max_mappings)
    }

    /// MAPD (IHI 0069 §5.3, MAPD). V=1 on a mapped device replaces its ITT:
    /// the old mappings go first, as with V=0. Returns the old ITT if it
    /// has mappings to free.
    #[allow(clippy::too_many_arguments)]
    fn cmd_mapd(
        &self,
        q: &CmdQueue,
        device: u32,
        size: u8,
        itt_addr: u64,
        valid: bool,
        mem: &dyn GuestMemory,
    ) -> Result<Option<Itt>, CmdError> {
        self.check_device_id(q, device, mem)?;
        let event_bits = size + 1;
        if valid {
            if event_bits > self.cfg.event_id_bits {
                return Err(CmdError::IttSizeTooLarge(size));
            }
            let bytes = (1u64 << event_bits) * ITT_ENTRY_SIZE;
            if !mem.is_ram(itt_addr, bytes) {
                return Err(CmdError::IttOutsideRam(itt_addr));
            }
        }
        let mut routes = self.routes.lock();
        let old_entries = routes.devices.get(device).map(|d| d.itt.len() as u64);
        let itt = if valid {
            if old_entries.is_none() && routes.devices.len() >= self.cfg.max_devices as usize {
                return Err(CmdError::TooManyDevices(device));
            }
            let entries = 1usize << event_bits;
            if routes.itt_entries - old_entries.unwrap_or(0) + entries as u64 > self.itt_quota() {
                return Err(CmdError::IttQuota(device));
            }
            routes
                .devices
                .reserve()
                .map_err(|()| CmdError::IttQuota(device))?;
            // Allocated here, once, before any change (vITS invariant 7);
            // MAPTI and DISCARD then only write entries. Fallible: a full
            // heap is a command error, not a panic.
            let mut itt = Vec::new();
            itt.try_reserve_exact(entries)
                .map_err(|_| CmdError::IttQuota(device))?;
            itt.resize(entries, None);
            Some(itt.into_boxed_slice())
        } else {
            None
        };
        let mut unmapped = None;
        if let Some(old) = routes.devices.remove(device) {
            routes.mappings -= old.mapped;
            routes.itt_entries -= old.itt.len() as u64;
            // vITS invariants 2 and 6: with the route lock held no injection
            // is in flight; each LPI loses this reference and is freed by
            // the vGIC (`free_unmapped`, within the slice) once nothing else
            // (ITE, LR, queue entry) refers to it. No later command runs
            // before they all are; the old ITT goes with the last.
            if let Some(m) = self.mirror_for(device) {
                m.unmap_device(device);
            }
            unmapped = (old.mapped > 0).then_some(old.itt);
        }
        if let Some(itt) = itt {
            if let Some(m) = self.mirror_for(device) {
                m.map_device(device, event_bits);
            }
            routes.itt_entries += itt.len() as u64;
            routes.devices.insert(device, Device { itt, mapped: 0 });
        }
        Ok(unmapped)
    }

    /// MAPC (IHI 0069 §5.3, MAPC). Remapping a collection retargets its
    /// LPIs: a walk of every mapping, at most `max` per call. `resumed`:
    /// the walk's cursor when this is a later part of the same command.
    /// Returns the cursor to resume from (None: done) and the work done.
    #[allow(clippy::too_many_arguments)]
    fn cmd_mapc(
        &self,
        q: &CmdQueue,
        icid: u16,
        rdbase: u64,
        valid: bool,
        kick: &mut Kick,
        resumed: Option<Cursor>,
        max: u32,
    ) -> WalkResult {
        let mut routes = self.routes.lock();
        let (vcpu, after) = match resumed {
            Some(after) => match routes.collections.get(icid) {
                Some(v) => (v, after),
                None => return Ok((None, 1)),
            },
            None => {
                self.check_icid(q, icid)?;
                if !valid {
                    routes.collections.remove(icid);
                    return Ok((None, 1));
                }
                let vcpu = self.check_rdbase(rdbase)?;
                let old = routes
                    .collections
                    .insert(icid, vcpu)
                    .map_err(|()| CmdError::CollectionOutOfRange(icid))?;
                if old.is_none_or(|o| o == vcpu) {
                    return Ok((None, 1));
                }
                (vcpu, None)
            }
        };
        let (hits, next, scanned) = scan(&routes, icid, after, max);
        {
            let mut st = self.vgic.lock();
            for &(_, _, ite) in &hits {
                st.lpi_set_target(ite.intid, Some(vcpu), kick);
            }
        }
        drop(routes);
        // The mirror runs with only the queue lock held, the route lock
        // dropped above and never the vGIC's (lock order, item 4). Routes
        // cannot change meanwhile: only this queue's commands change them,
        // and they run in order under the queue lock.
        for &(device, event, _) in &hits {
            if let Some(m) = self.mirror_for(device) {
                m.move_event(device, event, vcpu);
            }
        }
        Ok((next.map(Some), scanned))
    }

    /// MAPTI / MAPI (IHI 0069 §5.3, MAPTI and MAPI). The LPI's priority and
    /// enable are read from the property table.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn cmd_mapti<'a>(
        &'a self,
        q: &CmdQueue,
        held: &mut Held<'a>,
        device: u32,
        event: u32,
        intid: u32,
        icid: u16,
        mem: &mut RunMem<'_>,
        kick: &mut Kick,
    ) -> Result<(), CmdError> {
        if u64::from(device) >= 1u64 << self.cfg.device_id_bits {
            return Err(CmdError::DeviceOutOfRange(device));
        }
        self.check_icid(q, icid)?;
        let Held { its, routes, vgic } = held;
        let r = routes_of(routes, its);
        let st = vgic_under(vgic, its, r);
        if !st.lpi_in_range(intid) {
            return Err(CmdError::LpiOutOfRange(intid));
        }
        if r.mappings >= self.cfg.max_mappings {
            return Err(CmdError::TooManyMappings(device, event));
        }
        let target = r.collections.get(icid);
        let dev = r
            .devices
            .get_mut(device)
            .ok_or(CmdError::DeviceUnmapped(device))?;
        let slot = dev.entry(device, event)?;
        if slot.is_some() {
            // vITS invariant 7: no side effect beyond the error policy.
            return Err(CmdError::EventAlreadyMapped(device, event));
        }
        // One byte of guest RAM, read under the run's locks (reading guest
        // memory takes no lock and cannot block).
        let cfg = mem.lpi_config(st.propbaser(), intid);
        // vITS invariant 5: a vINTID nothing maps any more starts pristine
        // with a new generation, whatever an LR still holds of the old one.
        let gen = st
            .lpi_map(intid, target, cfg, kick)
            .ok_or(CmdError::LpiTableFull(intid))?;
        // Under the route lock: a host LPI the physical MAPTI raises is
        // translated only once the ITE below is in place.
        let direct = match self.mirror_for(device) {
            Some(m) => {
                *vgic = None;
                m.map_event(device, event, intid, target, gen)
            }
            None => false,
        };
        *slot = Some(Ite {
            intid,
            icid,
            direct,
            gen,
        });
        dev.mapped += 1;
        r.mappings += 1;
        Ok(())
    }

    /// Look up a mapped event (for the commands that need one).
    fn ite(routes: &Routes, device: u32, event: u32) -> Result<Ite, CmdError> {
        routes
            .devices
            .get(device)
            .ok_or(CmdError::DeviceUnmapped(device))?
            .ite(device, event)
    }

    /// MOVI (IHI 0069 §5.3, MOVI): pending state moves with the LPI, exactly
    /// once (vITS invariant 9).
    fn cmd_movi<'a>(
        &'a self,
        q: &CmdQueue,
        held: &mut Held<'a>,
        device: u32,
        event: u32,
        icid: u16,
        kick: &mut Kick,
    ) -> Result<(), CmdError> {
        self.check_icid(q, icid)?;
        let Held { its, routes, vgic } = held;
        let r = routes_of(routes, its);
        let vcpu = r
            .collections
            .get(icid)
            .ok_or(CmdError::CollectionUnmapped(icid));
        let dev = r
            .devices
            .get_mut(device)
            .ok_or(CmdError::DeviceUnmapped(device))?;
        let ite = dev
            .entry(device, event)?
            .as_mut()
            .ok_or(CmdError::EventUnmapped(device, event))?;
        let vcpu = vcpu?;
        ite.icid = icid;
        let intid = ite.intid;
        vgic_under(vgic, its, r).lpi_set_target(intid, Some(vcpu), kick);
        if let Some(m) = self.mirror_for(device) {
            *vgic = None;
            m.move_event(device, event, vcpu);
        }
        Ok(())
    }

    /// DISCARD (IHI 0069 §5.3, DISCARD): the route and the pending state go. Once
    /// this returns no new instance is injected (vITS invariant 2); one the
    /// guest already took can still be deactivated (vITS invariant 8).
    #[inline(always)]
    fn cmd_discard<'a>(
        &'a self,
        held: &mut Held<'a>,
        device: u32,
        event: u32,
        kick: &mut Kick,
    ) -> Result<(), CmdError> {
        let Held { its, routes, vgic } = held;
        let r = routes_of(routes, its);
        let dev = r
            .devices
            .get_mut(device)
            .ok_or(CmdError::DeviceUnmapped(device))?;
        let ite = dev
            .entry(device, event)?
            .take()
            .ok_or(CmdError::EventUnmapped(device, event))?;
        dev.mapped -= 1;
        r.mappings -= 1;
        if let Some(m) = self.mirror_for(device) {
            *vgic = None;
            m.unmap_event(device, event);
        }
        vgic_under(vgic, its, r).lpi_unmap(ite.intid, kick);
        Ok(())
    }

    /// INV (IHI 0069 §5.3, INV): reload priority and enable of one LPI.
    fn cmd_inv<'a>(
        &'a self,
        held: &mut Held<'a>,
        device: u32,
        event: u32,
        mem: &mut RunMem<'_>,
        kick: &mut Kick,
    ) -> Result<(), CmdError> {
        let Held { its, routes, vgic } = held;
        let r = routes_of(routes, its);
        let ite = Self::ite(r, device, event)?;
        let st = vgic_under(vgic, its, r);
        let cfg = mem.lpi_config(st.propbaser(), ite.intid);
        st.lpi_set_config(ite.intid, ite.gen, cfg, kick);
        if ite.direct {
            *vgic = None;
            self.inv_direct(device, event, &ite);
        }
        Ok(())
    }

    /// INVALL (IHI 0069 §5.3, INVALL): reload the configuration of every LPI
    /// mapped through collection `icid`. Pending state is untouched
    /// (vITS invariant 9). At most `max` mappings per call, from after
    /// `after`; returns the cursor to resume from (None: done) and the
    /// work done.
    fn cmd_invall(
        &self,
        q: &CmdQueue,
        icid: u16,
        mem: &dyn GuestMemory,
        kick: &mut Kick,
        after: Option<(u32, u32)>,
        max: u32,
    ) -> WalkResult {
        self.check_icid(q, icid)?;
        let routes = self.routes.lock();
        if !routes.collections.contains(icid) {
            return Err(CmdError::CollectionUnmapped(icid));
        }
        let (hits, next, scanned) = scan(&routes, icid, after, max);
        let mut st = self.vgic.lock();
        let props = PropTable::new(st.propbaser(), mem);
        for &(_, _, ite) in &hits {
            let cfg = lpi_config(&props, ite.intid, mem);
            st.lpi_set_config(ite.intid, ite.gen, cfg, kick);
        }
        drop(st);
        for (device, event, ite) in &hits {
            self.inv_direct(*device, *event, ite);
        }
        Ok((next.map(Some), scanned))
    }

    /// INT (IHI 0069 §5.3, INT): as if the device had written TRANSLATER.
    fn cmd_int<'a>(
        &'a self,
        held: &mut Held<'a>,
        device: u32,
        event: u32,
        kick: &mut Kick,
    ) -> Result<(), CmdError> {
        let Held { its, routes, vgic } = held;
        let r = routes_of(routes, its);
        let ite = Self::ite(r, device, event)?;
        let vcpu = r
            .collections
            .get(ite.icid)
            .ok_or(CmdError::CollectionUnmapped(ite.icid))?;
        if ite.direct {
            *vgic = None;
            if self.raise_direct(device, event) {
                return Ok(());
            }
        }
        vgic_under(vgic, its, r).lpi_set_pending(ite.intid, None, Some(vcpu), kick);
        Ok(())
    }

    /// CLEAR (IHI 0069 §5.3, CLEAR).
    fn cmd_clear<'a>(
        &'a self,
        held: &mut Held<'a>,
        device: u32,
        event: u32,
        kick: &mut Kick,
    ) -> Result<(), CmdError> {
        let Held { its, routes, vgic } = held;
        let r = routes_of(routes, its);
        let ite = Self::ite(r, device, event)?;
        if !r.collections.contains(ite.icid) {
            return Err(CmdError::CollectionUnmapped(ite.icid));
        }
        if let Some(m) = self.mirror_for(device) {
            *vgic = None;
            m.clear_event(device, event);
        }
        vgic_under(vgic, its, r).lpi_clear_pending(ite.intid, kick);
        Ok(())
    }

    /// SYNC (IHI 0069 §5.3, SYNC): every command completes synchronously, so
    /// there is nothing to wait for.
    fn cmd_sync(&self, rdbase: u64) -> Result<(), CmdError> {
        self.check_rdbase(rdbase).map(|_| ())
    }

    /// MOVALL (IHI 0069 §5.3, MOVALL): every LPI targeting `rdbase1` moves to
    /// `rdbase2`, pending state included, exactly once (vITS invariant 9).
    /// At most `max` per call; returns whether some are left, and the
    /// work done.
    fn cmd_movall(
        &self,
        rdbase1: u64,
        rdbase2: u64,
        kick: &mut Kick,
        max: u32,
    ) -> Result<(bool, u32), CmdError> {
        let from = self.check_rdbase(rdbase1)?;
        let to = self.check_rdbase(rdbase2)?;
        if from == to {
            return Ok((false, 1));
        }
        let _routes = self.routes.lock();
        let mut st = self.vgic.lock();
        let lpis = st.lpis_targeting(from);
        let n = lpis.len().min(max as usize);
        for &intid in &lpis[..n] {
            st.lpi_set_target(intid, Some(to), kick);
        }
        Ok((lpis.len() > n, n as u32))
    }
}

// ---- the register frame (IHI 0069 ch. 12, "ITS register descriptions") ----

const W8: u8 = 1;
const W16: u8 = 2;
const W32: u8 = 4;
const W64: u8 = 8;

/// One decoded access, handed to a register handler.
struct Acc {
    /// Offset inside the register (region).
    off: u64,
    /// Width in bytes.
    len: u8,
}

/// Handlers lock what they need themselves: `GITS_TRANSLATER` is the
/// injection path, which never takes the command-queue lock (vITS
/// invariant 10).
type ReadFn = fn(&Vits, &Acc) -> u64;
type WriteFn = fn(&Vits, &Acc, u64, &dyn GuestMemory) -> Kick;

struct Region {
    name: &'static str,
    offset: u64,
    len: u64,
    widths: u8,
    read: ReadFn,
    write: WriteFn,
}

const fn reg(
    name: &'static str,
    offset: u64,
    len: u64,
    widths: u8,
    read: ReadFn,
    write: WriteFn,
) -> Region {
    Region {
        name,
        offset,
        len,
        widths,
        read,
        write,
    }
}

/// The ITS register map (IHI 0069 ch. 12, GITS_* registers). The 64-bit
/// registers permit 32- and 64-bit accesses, the 32-bit ones 32-bit
/// accesses only; GITS_TRANSLATER also takes the narrower writes of
/// devices with few EventID bits (IHI 0069 ch. 12, GITS_TRANSLATER) and,
/// write-only, reads as zero. Anything else is RAZ/WI, logged.
static GITS_REGIONS: &[Region] = &[
    reg("GITS_CTLR", 0x0000, 4, W32, ctlr_r, ctlr_w),
    reg("GITS_IIDR", 0x0004, 4, W32, iidr_r, wi),
    reg("GITS_TYPER", 0x0008, 8, W32 | W64, typer_r, wi),
    reg("GITS_CBASER", 0x0080, 8, W32 | W64, cbaser_r, cbaser_w),
    reg("GITS_CWRITER", 0x0088, 8, W32 | W64, cwriter_r, cwriter_w),
    reg("GITS_CREADR", 0x0090, 8, W32 | W64, creadr_r, wi),
    // BASER0 (devices) and BASER1 (collections); BASER2..7 describe no
    // table (Type 0): RAZ/WI.
    reg("GITS_BASER", 0x0100, 0x10, W32 | W64, baser_r, baser_w),
    reg("GITS_BASER", 0x0110, 0x30, W32 | W64, raz, wi),
    reg("GITS_PIDR2", 0xffe8, 4, W32, pidr2_r, wi),
    reg(
        "GITS_TRANSLATER",
        GITS_TRANSLATER,
        4,
        W8 | W16 | W32,
        raz,
        translater_w,
    ),
];

/// Find the register and build the access, or `None` (RAZ/WI, logged).
fn decode(offset: u64, len: u8) -> Option<(&'static Region, Acc)> {
    if !matches!(len, 1 | 2 | 4 | 8) || !offset.is_multiple_of(u64::from(len)) {
        vigil_vgic::guest_warn!("vits: {len}-byte access at {offset:#x} not permitted, RAZ/WI");
        return None;
    }
    let Some(r) = GITS_REGIONS
        .iter()
        .find(|r| offset >= r.offset && offset + u64::from(len) <= r.offset + r.len)
    else {
        vigil_vgic::guest_warn!("vits: access to reserved offset {offset:#x}, RAZ/WI");
        return None;
    };
    if r.widths & len == 0 {
        vigil_vgic::guest_warn!(
            "vits: {len}-byte access to {} ({offset:#x}) not permitted, RAZ/WI",
            r.name
        );
        return None;
    }
    Some((
        r,
        Acc {
            off: offset - r.offset,
            len,
        },
    ))
}

fn raz(_: &Vits, _: &Acc) -> u64 {
    0
}

fn wi(_: &Vits, _: &Acc, _: u64, _: &dyn GuestMemory) -> Kick {
    Kick::default()
}

/// The part of 64-bit register value `v` that access `a` reads.
fn half(v: u64, a: &Acc) -> u64 {
    vigil_vgic::read_part(v, a.len, a.off)
}

/// 64-bit register value `old` with access `a`'s part replaced by `value`.
fn merge(old: u64, value: u64, a: &Acc) -> u64 {
    vigil_vgic::merge_part(old, value, a.len, a.off)
}

/// `GITS_CTLR` (IHI 0069 ch. 12, GITS_CTLR): Enabled, and Quiescent — all processing is
/// synchronous, so the ITS is quiescent exactly when it is disabled.
fn ctlr_r(its: &Vits, _: &Acc) -> u64 {
    if its.cmdq.lock().enabled {
        1
    } else {
        1 << 31
    }
}

fn ctlr_w(its: &Vits, _: &Acc, value: u64, mem: &dyn GuestMemory) -> Kick {
    let mut q = its.cmdq.lock();
    let en = value & 1 != 0;
    if en != q.enabled {
        q.enabled = en;
        its.routes.lock().enabled = en;
        if en {
            return its.process(&mut q, mem);
        }
    }
    Kick::default()
}

fn iidr_r(_: &Vits, _: &Acc) -> u64 {
    u64::from(VITS_IIDR)
}

fn typer_r(its: &Vits, a: &Acc) -> u64 {
    half(its.typer(), a)
}

fn cbaser_r(its: &Vits, a: &Acc) -> u64 {
    half(its.cmdq.lock().cbaser, a)
}

/// `GITS_CBASER` (IHI 0069 ch. 12, GITS_CBASER): WI while the ITS is enabled; a queue outside
/// RAM is stored with Valid = 0; a write resets CREADR to 0.
fn cbaser_w(its: &Vits, a: &Acc, value: u64, mem: &dyn GuestMemory) -> Kick {
    let mut q = its.cmdq.lock();
    if q.enabled {
        vigil_vgic::guest_warn!("vits: GITS_CBASER write while enabled, ignored");
        return Kick::default();
    }
    let mut v = merge(q.cbaser, value, a) & CBASER_MASK;
    let base = v & 0x000f_ffff_ffff_f000;
    let size = ((v & 0xff) + 1) * 4096;
    if v & VALID != 0 && !mem.is_ram(base, size) {
        vigil_vgic::guest_warn!(
            "vits: command queue {base:#x}+{size:#x} outside RAM, left invalid"
        );
        v &= !VALID;
    }
    q.cbaser = v;
    q.creadr = 0;
    q.stalled = false;
    Kick::default()
}

fn cwriter_r(its: &Vits, a: &Acc) -> u64 {
    half(its.cmdq.lock().cwriter, a)
}

/// `GITS_CWRITER` (IHI 0069 ch. 12, GITS_CWRITER): runs the queue up to it; Retry resumes a
/// stalled queue; an offset beyond the queue is WI.
fn cwriter_w(its: &Vits, a: &Acc, value: u64, mem: &dyn GuestMemory) -> Kick {
    let mut q = its.cmdq.lock();
    let v = merge(q.cwriter, value, a);
    let off = v & QUEUE_OFFSET_MASK;
    if off >= ((q.cbaser & 0xff) + 1) * 4096 {
        vigil_vgic::guest_warn!("vits: GITS_CWRITER {off:#x} beyond the command queue, ignored");
        return Kick::default();
    }
    q.cwriter = off;
    if v & 1 != 0 {
        q.stalled = false;
    }
    its.process(&mut q, mem)
}

/// `GITS_CREADR` (IHI 0069 ch. 12, GITS_CREADR): the offset and Stalled.
fn creadr_r(its: &Vits, a: &Acc) -> u64 {
    let q = its.cmdq.lock();
    half(q.creadr | u64::from(q.stalled), a)
}

fn baser_r(its: &Vits, a: &Acc) -> u64 {
    half(its.cmdq.lock().baser[(a.off / 8) as usize], a)
}

/// `GITS_BASER<n>` (IHI 0069 ch. 12, GITS_BASER<n>): WI while the ITS is enabled; Type,
/// Entry_Size and Page_Size are read-only; the collection table is flat
/// only; a table outside RAM is stored with Valid = 0.
fn baser_w(its: &Vits, a: &Acc, value: u64, mem: &dyn GuestMemory) -> Kick {
    let mut q = its.cmdq.lock();
    if q.enabled {
        vigil_vgic::guest_warn!("vits: GITS_BASER write while enabled, ignored");
        return Kick::default();
    }
    let n = (a.off / 8) as usize;
    let ro = q.baser[n] & !BASER_WMASK;
    let mut v = (merge(q.baser[n], value, a) & BASER_WMASK) | ro;
    if n == 1 {
        v &= !INDIRECT;
    }
    let (base, bytes) = (baser_base(v), baser_bytes(v));
    if v & VALID != 0 && !mem.is_ram(base, bytes) {
        vigil_vgic::guest_warn!(
            "vits: GITS_BASER{n} table {base:#x}+{bytes:#x} outside RAM, left invalid"
        );
        v &= !VALID;
    }
    q.baser[n] = v;
    Kick::default()
}

/// `GITS_PIDR2` (IHI 0069 ch. 12, identification registers): ArchRev = 3
/// (GICv3).
fn pidr2_r(_: &Vits, _: &Acc) -> u64 {
    0x3b
}

/// `GITS_TRANSLATER` (IHI 0069 ch. 12, GITS_TRANSLATER): an event of `cfg.cpu_device_id`, its
/// EventID the bits written. Takes the route and vGIC locks only.
fn translater_w(its: &Vits, a: &Acc, value: u64, _: &dyn GuestMemory) -> Kick {
    if a.off != 0 {
        return Kick::default();
    }
    let mask = (1u64 << (u32::from(a.len) * 8)) - 1;
    its.translate(its.cfg.cpu_device_id, (value & mask) as u32)
        .unwrap_or_default()
}

/// The mappings of collection `icid` in (DeviceID, EventID) order after
/// `after`, scanning at most `max` mappings: (DeviceID, EventID, ITE) of
/// those that match, the cursor to resume from if the scan stopped early
/// (None: it reached the end), and how many were scanned.
#[allow(clippy::type_complexity)]
fn scan(
    routes: &Routes,
    icid: u16,
    after: Option<(u32, u32)>,
    max: u32,
) -> (Vec<(u32, u32, Ite)>, Option<(u32, u32)>, u32) {
    let mut hits = Vec::new();
    let mut scanned = 0u32;
    let mut last = after;
    for (device, dev) in routes.devices.from(after.map_or(0, |(d, _)| d)) {
        let from = match after {
            Some((d, e)) if d == device => e as usize + 1,
            _ => 0,
        };
        // Unmapped entries are skipped, not counted: the ITT quota bounds
        // how many there are.
        for (event, ite) in dev.itt.iter().enumerate().skip(from) {
            let Some(ite) = ite else { continue };
            if scanned == max {
                // More to scan: resume after the last one scanned.
                return (hits, last, scanned);
            }
            scanned += 1;
            let event = event as u32;
            last = Some((device, event));
            if ite.icid == icid {
                hits.push((device, event, *ite));
            }
        }
    }
    (hits, None, scanned)
}

#[cfg(test)]
mod tests {
    use super::Collections;

    /// The flat collection table answers as the map it replaced: unmapped
    /// until MAPC, the last MAPC wins, V=0 unmaps, ICIDs far apart grow it
    /// without disturbing each other, and no vCPU index can alias
    /// "unmapped".
    #[test]
    fn collection_table_maps_remaps_and_unmaps() {
        let mut c = Collections::default();
        assert_eq!(c.get(0), None);
        assert_eq!(c.insert(3, 1), Ok(None));
        assert_eq!((c.get(3), c.get(2), c.get(4)), (Some(1), None, None));
        assert_eq!(c.insert(3, 2), Ok(Some(1)));
        assert_eq!(c.insert(u16::MAX, 0), Ok(None));
        assert_eq!((c.get(3), c.get(u16::MAX)), (Some(2), Some(0)));
        c.remove(3);
        c.remove(40_000);
        assert!(!c.contains(3) && c.contains(u16::MAX));
        assert_eq!(c.insert(5, usize::from(u16::MAX)), Err(()));
        assert_eq!(c.insert(5, 1 << 20), Err(()));
        assert!(!c.contains(5));
    }
}
