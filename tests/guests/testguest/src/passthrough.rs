//! PCIe passthrough under stress (issue 8): `msi-stress`.
//!
//! The VM owns the host bridge (identity-mapped, 2 vCPUs) with QEMU's
//! `edu` device on it. The guest sets up its vITS, places edu's BAR0,
//! points edu's MSI at `GITS_TRANSLATER` (0x0809_0040, the physical ITS
//! behind the vITS) with data = [`EVENT`], and maps the device (DeviceID =
//! its requester ID through `msi-map`).
//!
//! vCPU 1 keeps edu raising MSIs, one at a time; vCPU 0 runs
//! [`ITERATIONS`] *lives*: MAPTI of the event to the next vLPI of a set of
//! [`NSET`] (collection 0 or 1, so vCPU 0 or 1 takes it), a dwell, then
//! DISCARD — or, every [`MAPD_EVERY`]th life, MAPD(V=0) (with the host-LPI
//! count checked) and MAPD(V=1) again.
//!
//! # The accounting
//!
//! vCPU 0 publishes `PHASE`: life `L` is `4L-3` while its MAPTI is being
//! issued, `4L-2` while it is mapped, `4L-1` while its DISCARD/MAPD(V=0)
//! is being issued, `4L` once that returned *and* vCPU 0 passed its own
//! synchronisation point (below).
//!
//! Each MSI: vCPU 1 (IRQs masked) marks it outstanding, reads `PHASE`
//! (`pre`), writes edu's raise register, reads edu's status back (a read
//! completion pushes the posted MSI write ahead of it: the MSI has reached
//! the ITS), reads `PHASE` again (`post`) and records (seq, pre, post).
//! Only one MSI is outstanding at a time, so every delivery is attributed
//! exactly: the LPI handler takes the outstanding MSI (none: a duplicate or
//! phantom delivery, check (b)) and checks that the life the vLPI is mapped
//! for overlapped the MSI's flight: `pre <= 4L-1` (not raised after the
//! mapping's removal had returned) and `post >= 4L-3` (not already at the
//! ITS before the mapping was issued). The next MSI is raised only after
//! the vCPU that took the last one made an exit after its EOI with IRQs
//! unmasked: a second instance of it would be taken then, with nothing
//! outstanding.

//! Synchronisation points (check (a), DESIGN.md vITS invariant 8): after a
//! DISCARD or MAPD(V=0) returns, an instance already in a list register of
//! a vCPU may still be taken there. Each vCPU, IRQs masked, makes an HVC
//! (an exit, which folds its list registers back: a retired instance that
//! was not acknowledged is dropped) and only then marks the vLPI dead *for
//! itself*; vCPU 0 does it inline, vCPU 1 when it sees the request. A
//! delivery of a vLPI on a vCPU that marked it dead is a violation. A vLPI
//! is mapped again only once both vCPUs passed the point of its last
//! removal.
//!
//! An MSI that is never delivered (raised while unmapped, or cleared by a
//! DISCARD) is resolved as dropped once `PHASE` has passed the end of the
//! last life its flight overlapped and vCPU 1 has synchronised for it: by
//! then it can be nowhere (pending host LPI cleared by the physical
//! DISCARD, host-LPI handler finished, list registers folded), so a later
//! delivery is flagged. In the end raised = delivered + dropped.
//!
//! The "hold": after a quarter of the MSIs vCPU 1 keeps IRQs masked for up
//! to 50 us (serving sync requests meanwhile), and vCPU 0 issues half the
//! removals with IRQs masked, so that instances pending in a list register
//! or in the vGIC meet the removal and the sync point untaken.
//!
//! Check (c): a quarter of the lives pause the raising across their MAPTI
//! and then wait until an MSI is delivered: one raised entirely while the
//! mapping is stable must be delivered (nothing removes it meanwhile).
//! Check (d): VIGIL_HOST_LPIS_FREE after every MAPD(V=0) and at the end
//! equals its value before the first MAPD.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use vigil_guest::gic;
use vigil_guest::its::{self, Bump, Its, ItsCommand, PropTable, RdBase};
use vigil_guest::pci::{self, Bdf, HostBridge};
use vigil_guest::{cpu, ensure, fail, mmio, println, psci, report, smccc, BootInfo};

const NAME: &str = "msi-stress";
/// Lives (MAPTI ... DISCARD or MAPD(V=0)) run by vCPU 0.
const ITERATIONS: u64 = 10_000;
/// Every this many lives end with MAPD(V=0) and a MAPD(V=1).
const MAPD_EVERY: u64 = 50;
/// vLPIs the event cycles through: `VLPI_BASE..VLPI_BASE + NSET`.
const NSET: u64 = 8;
const VLPI_BASE: u32 = gic::LPI_BASE + 64;
/// The EventID edu's MSI data carries, and the ITT size.
pub(crate) const EVENT: u32 = 1;
const EVENT_BITS: u8 = 2;
/// edu: vendor, device, registers.
const EDU_VENDOR: u16 = 0x1234;
const EDU_DEVICE: u16 = 0x11e8;
const EDU_ID: u64 = 0x00;
const EDU_LIVENESS: u64 = 0x04;
pub(crate) const EDU_IRQ_STATUS: u64 = 0x24;
pub(crate) const EDU_IRQ_RAISE: u64 = 0x60;
pub(crate) const EDU_IRQ_ACK: u64 = 0x64;
/// The doorbell: GITS_TRANSLATER of the ITS at 0x0808_0000.
const DOORBELL: u64 = its::GITS_BASE + its::GITS_TRANSLATER;

/// Waits for the other vCPU, and for the delivery of an MSI raised while
/// its mapping is stable (generous: wall-clock time under TCG, with other
/// QEMUs sharing the host's cores; a lost MSI still fails).
const TIMEOUT_US: u64 = 10_000_000;
/// Records of raised MSIs kept for the handlers (by seq % RING).
const RING: usize = 64;

static PHASE: AtomicU64 = AtomicU64::new(0);
/// Seq of the MSI in flight (0: none).
static OUTSTANDING: AtomicU64 = AtomicU64::new(0);
/// The last seq whose record is complete.
static RECORDED: AtomicU64 = AtomicU64::new(0);
static REC_SEQ: [AtomicU64; RING] = [const { AtomicU64::new(0) }; RING];
static REC_PRE: [AtomicU64; RING] = [const { AtomicU64::new(0) }; RING];
static REC_POST: [AtomicU64; RING] = [const { AtomicU64::new(0) }; RING];
/// The last life vCPU 1 must synchronise for, and the last it did.
static SYNC_REQ: AtomicU64 = AtomicU64::new(0);
static SYNC_ACK: AtomicU64 = AtomicU64::new(0);
/// DEAD[vcpu][v]: the vCPU passed its synchronisation point after the
/// removal of vLPI v's current life.
static DEAD: [[AtomicBool; NSET as usize]; 2] =
    [const { [const { AtomicBool::new(false) }; NSET as usize] }; 2];
/// Life of each vLPI (0: never mapped) and the vCPU that life targets.
static LIFE: [AtomicU64; NSET as usize] = [const { AtomicU64::new(0) }; NSET as usize];
static TARGET: [AtomicU64; NSET as usize] = [const { AtomicU64::new(0) }; NSET as usize];
/// Deliveries per vCPU and vLPI.
static DELIV: [[AtomicU64; NSET as usize]; 2] =
    [const { [const { AtomicU64::new(0) }; NSET as usize] }; 2];
/// Deliveries by the phase they were taken in (PHASE % 4 at the handler:
/// 0 after the removal returned, before this vCPU's sync point; 1 while
/// the MAPTI was issued; 2 mapped; 3 while the removal was issued).
static BY_PHASE: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static RAISED: AtomicU64 = AtomicU64::new(0);
/// MSIs after which vCPU 1 held IRQs masked; lives whose removal vCPU 0
/// issued with IRQs masked.
static HELD: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static CONSUMED: AtomicU64 = AtomicU64::new(0);
static BAD_STATUS: AtomicU64 = AtomicU64::new(0);
/// EXIT_REQ[c]: the last MSI vCPU c took; EXIT_DONE[c]: the last one
/// after whose EOI vCPU c made an exit with IRQs unmasked. The next MSI is
/// raised only once both agree: a second instance the exit's list-register
/// fold would produce is then taken while nothing is outstanding.
static EXIT_REQ: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
static EXIT_DONE: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// Set by vCPU 0 while no MSI may be raised.
static PAUSE: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);
static STOPPED: AtomicBool = AtomicBool::new(false);
static READY: AtomicBool = AtomicBool::new(false);
static EDU_BASE: AtomicU64 = AtomicU64::new(0);
/// vCPU 1's pending table, the property table.
static PEND1: AtomicU64 = AtomicU64::new(0);
static PROP_BASE: AtomicU64 = AtomicU64::new(0);
static PROP_BITS: AtomicU64 = AtomicU64::new(0);

/// Violations by kind, and the first one in detail.
#[derive(Clone, Copy)]
#[repr(u64)]
enum Violation {
    /// (a) delivered on a vCPU after its sync point for the removal.
    Dead = 0,
    /// (a) the MSI reached the ITS before this mapping's MAPTI was issued.
    Early,
    /// (a) the MSI was raised after this mapping's removal had returned.
    Late,
    /// (b) no MSI outstanding: a second delivery, or one after the MSI
    /// was resolved as dropped.
    Phantom,
    /// Taken on a vCPU the mapping's collection does not name.
    WrongCpu,
    /// An LPI outside the set, or of a vLPI never mapped.
    Unexpected,
    /// The raise record of the delivered MSI was missing.
    Record,
}
const KINDS: [&str; 7] = [
    "delivered after the removal and this vCPU's sync point",
    "MSI reached the ITS before the mapping was issued",
    "MSI raised after the mapping's removal returned",
    "delivered with no MSI outstanding (twice, or after being resolved as dropped)",
    "taken on the wrong vCPU",
    "unexpected LPI",
    "raise record missing",
];
static VIOLATIONS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
static FIRST: AtomicBool = AtomicBool::new(false);
/// kind, intid, vcpu, life, seq, pre, post, phase at delivery.
static FIRST_INFO: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

fn violation(kind: Violation, info: [u64; 7]) {
    VIOLATIONS[kind as usize].fetch_add(1, SeqCst);
    if !FIRST.swap(true, SeqCst) {
        FIRST_INFO[0].store(kind as u64, SeqCst);
        for (slot, v) in FIRST_INFO[1..].iter().zip(info) {
            slot.store(v, SeqCst);
        }
    }
}

fn violations() -> u64 {
    VIOLATIONS.iter().map(|v| v.load(SeqCst)).sum()
}

fn fence() {
    // SAFETY: a full-system barrier only orders memory and device accesses.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: an aligned 32-bit load from edu's BAR0, which this guest
    // placed in the bridge's memory window; edu registers have no effect
    // on guest memory.
    unsafe { mmio::read32(addr) }
}

fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: as in `mmio_read32`; edu does no DMA unless told to.
    unsafe { mmio::write32(addr, v) }
}

fn vlpi(life: u64) -> usize {
    (life % NSET) as usize
}

/// The first phase after every phase of life that `phase` may belong to.
fn life_end(phase: u64) -> u64 {
    phase.div_ceil(4) * 4
}

fn lpi_handler(intid: u32) {
    let me = cpu::index() & 1;
    let phase_now = PHASE.load(SeqCst);
    let v = intid.wrapping_sub(VLPI_BASE) as u64;
    if v >= NSET {
        violation(
            Violation::Unexpected,
            [u64::from(intid), me as u64, 0, 0, 0, 0, phase_now],
        );
        return;
    }
    let v = v as usize;
    let life = LIFE[v].load(SeqCst);
    let dead = DEAD[me][v].load(SeqCst);
    let seq = OUTSTANDING.swap(0, SeqCst);
    DELIV[me][v].fetch_add(1, SeqCst);
    BY_PHASE[(phase_now % 4) as usize].fetch_add(1, SeqCst);
    // The MSI's record: vCPU 1 writes it with IRQs masked, so only vCPU 0
    // can get here before it is complete.
    let slot = seq as usize % RING;
    let recorded = seq != 0
        && cpu::wait_until(TIMEOUT_US, || RECORDED.load(SeqCst) >= seq)
        && REC_SEQ[slot].load(SeqCst) == seq;
    let (pre, post) = if recorded {
        (REC_PRE[slot].load(SeqCst), REC_POST[slot].load(SeqCst))
    } else {
        (0, 0)
    };
    let info = [u64::from(intid), me as u64, life, seq, pre, post, phase_now];
    if dead {
        violation(Violation::Dead, info);
    }
    if life == 0 {
        violation(Violation::Unexpected, info);
    }
    if TARGET[v].load(SeqCst) != me as u64 {
        violation(Violation::WrongCpu, info);
    }
    if seq == 0 {
        violation(Violation::Phantom, info);
        return;
    }
    CONSUMED.fetch_add(1, SeqCst);
    EXIT_REQ[me].store(seq, SeqCst);
    if !recorded {
        violation(Violation::Record, info);
        return;
    }
    if life > 0 && post < 4 * life - 3 {
        violation(Violation::Early, info);
    }
    if life > 0 && pre > 4 * life - 1 {
        violation(Violation::Late, info);
    }
}

/// The HVC that makes this vCPU exit (its list registers fold back).
fn sync_point() {
    if smccc::vigil_null() != Ok(0) {
        fail!(NAME, "VIGIL_NULL did not return 0");
    }
}

/// vCPU `me`, outside the LPI handler: the exit after taking an MSI.
fn service_exit(me: usize) {
    let req = EXIT_REQ[me].load(SeqCst);
    if req > EXIT_DONE[me].load(SeqCst) && !gic::irqs_masked() {
        sync_point();
        // Unmasked: a second instance loaded at the entry is taken here.
        gic::irq_enable();
        EXIT_DONE[me].store(req, SeqCst);
    }
}

fn exits_done() -> bool {
    (0..2).all(|c| EXIT_DONE[c].load(SeqCst) >= EXIT_REQ[c].load(SeqCst))
}

/// vCPU 1: pass the sync point for every life removed since the last
/// (IRQs masked meanwhile, and left as they were).
fn service_sync() {
    let req = SYNC_REQ.load(SeqCst);
    let ack = SYNC_ACK.load(SeqCst);
    if req > ack {
        let masked = gic::irqs_masked();
        gic::irq_disable();
        sync_point();
        for life in ack + 1..=req {
            DEAD[1][vlpi(life)].store(true, SeqCst);
        }
        SYNC_ACK.store(req, SeqCst);
        if !masked {
            gic::irq_enable();
        }
    }
}

/// vCPU 1: one MSI, recorded; false if vCPU 0 paused the raising. With
/// `hold_us`, IRQs stay masked that long after it (the "hold": its LPI
/// waits in a list register, maybe across a DISCARD and this vCPU's sync
/// point, which must then drop it).
fn raise(seq: u64, hold_us: u64) -> bool {
    let edu = EDU_BASE.load(SeqCst);
    let slot = seq as usize % RING;
    gic::irq_disable();
    REC_SEQ[slot].store(0, SeqCst);
    // Outstanding first, then PAUSE: vCPU 0 sets PAUSE, then waits for
    // nothing outstanding, so one of us sees the other.
    OUTSTANDING.store(seq, SeqCst);
    if PAUSE.load(SeqCst) {
        let _ = OUTSTANDING.compare_exchange(seq, 0, SeqCst, SeqCst);
        gic::irq_enable();
        return false;
    }
    let pre = PHASE.load(SeqCst);
    fence();
    mmio_write32(edu + EDU_IRQ_RAISE, 1);
    // The read completion follows the posted MSI write: it reached the ITS.
    let status = mmio_read32(edu + EDU_IRQ_STATUS);
    fence();
    let post = PHASE.load(SeqCst);
    REC_PRE[slot].store(pre, SeqCst);
    REC_POST[slot].store(post, SeqCst);
    REC_SEQ[slot].store(seq, SeqCst);
    RECORDED.store(seq, SeqCst);
    if status & 1 == 0 {
        BAD_STATUS.fetch_add(1, SeqCst);
    }
    mmio_write32(edu + EDU_IRQ_ACK, status);
    RAISED.fetch_add(1, SeqCst);
    if hold_us > 0 {
        HELD.fetch_add(1, SeqCst);
        cpu::wait_until(hold_us, || {
            service_sync();
            false
        });
    }
    gic::irq_enable();
    true
}

fn raiser(_context: u64) -> ! {
    gic::init_cpu();
    let prop = PropTable {
        base: PROP_BASE.load(SeqCst),
        id_bits: PROP_BITS.load(SeqCst) as u32,
    };
    its::enable_lpis_with(&prop, PEND1.load(SeqCst));
    if !gic::lpis_enabled() {
        fail!(NAME, "vCPU 1: GICR_CTLR.EnableLPIs does not read 1");
    }
    READY.store(true, SeqCst);
    gic::irq_enable();
    let mut seq = 0;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    loop {
        service_sync();
        service_exit(1);
        let out = OUTSTANDING.load(SeqCst);
        if out == 0 {
            if STOP.load(SeqCst) {
                break;
            }
            if EDU_BASE.load(SeqCst) == 0 || !exits_done() {
                // Not started yet, or the last MSI's taker has not exited.
                continue;
            }
            let r = rng.next();
            let hold_us = if r & 3 == 0 { (r >> 8) % 50 } else { 0 };
            if raise(seq + 1, hold_us) {
                seq += 1;
            }
            continue;
        }
        // Resolved as dropped once it can be nowhere any more.
        let end = life_end(REC_POST[out as usize % RING].load(SeqCst));
        if PHASE.load(SeqCst) >= end
            && SYNC_ACK.load(SeqCst) >= end / 4
            && OUTSTANDING.compare_exchange(out, 0, SeqCst, SeqCst).is_ok()
        {
            DROPPED.fetch_add(1, SeqCst);
        }
    }
    STOPPED.store(true, SeqCst);
    loop {
        service_sync();
        service_exit(1);
        core::hint::spin_loop();
    }
}

/// A small xorshift for the dwell and the collection.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Guest {
    its: Its,
    itt: u64,
    host_lpis_at_start: u64,
}

impl Guest {
    fn send(&mut self, what: &str, c: ItsCommand) {
        if let Err(e) = self.its.send(c) {
            fail!(NAME, "{what}: {e:?}");
        }
    }
}

fn host_lpis_free() -> u64 {
    match smccc::vigil_host_lpis_free() {
        Ok(n) => n,
        Err(e) => fail!(NAME, "VIGIL_HOST_LPIS_FREE trapped: {e:?}"),
    }
}

/// Waits until the free host-LPI count is back at its start value.
fn expect_no_leak(g: &Guest, what: &str, timeout_us: u64) -> u64 {
    let mut now = 0;
    if !cpu::wait_until(timeout_us, || {
        now = host_lpis_free();
        now == g.host_lpis_at_start
    }) {
        fail!(
            NAME,
            "(d) {what}: {now} host LPIs free, {} before the first MAPD ({} leaked)",
            g.host_lpis_at_start,
            g.host_lpis_at_start as i64 - now as i64
        );
    }
    now
}

/// Finds edu, places BAR0, enables it and its MSI. Returns (bdf, DeviceID,
/// BAR0 address).
fn setup_edu(boot: &BootInfo) -> (Bdf, u32, u64) {
    setup_edu_for(NAME, boot, true)
}

/// [`setup_edu`] for scenario `NAME`, with its line about the device if
/// `verbose`. Used by `reset-storm` too.
pub(crate) fn setup_edu_for(name: &str, boot: &BootInfo, verbose: bool) -> (Bdf, u32, u64) {
    let Some(hb) = HostBridge::from_device_tree(boot) else {
        fail!(name, "no pci-host-ecam-generic node in the device tree");
    };
    let Some((window, pci_base)) = hb.mem32.clone() else {
        fail!(name, "the host bridge has no 32-bit memory window");
    };
    let Some(bdf) = hb.find(0, EDU_VENDOR, EDU_DEVICE) else {
        fail!(name, "no edu ({EDU_VENDOR:04x}:{EDU_DEVICE:04x}) on bus 0");
    };
    let Some(dev) = hb.device_id(bdf) else {
        fail!(name, "msi-map does not cover RID {:#x}", bdf.rid());
    };
    hb.set_command(bdf, 0);
    let Some((size, is64)) = hb.size_bar(bdf, 0) else {
        fail!(name, "edu BAR0 is not a memory BAR");
    };
    let cpu_addr = its::align_up(window.start, size);
    ensure!(
        name,
        size >= 0x1000 && cpu_addr + size <= window.end,
        "edu BAR0 of {size:#x} bytes does not fit the window {window:x?}"
    );
    let pci_addr = cpu_addr - window.start + pci_base;
    hb.set_bar(bdf, 0, pci_addr, is64);
    hb.set_command(
        bdf,
        pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER | pci::COMMAND_INTX_DISABLE,
    );
    let id = mmio_read32(cpu_addr + EDU_ID);
    ensure!(
        name,
        id & 0xff == 0xed,
        "edu identification at {cpu_addr:#x} reads {id:#x}"
    );
    mmio_write32(cpu_addr + EDU_LIVENESS, 0x1234_5678);
    let live = mmio_read32(cpu_addr + EDU_LIVENESS);
    ensure!(
        name,
        live == !0x1234_5678,
        "edu liveness check reads {live:#x}, expected {:#x}",
        !0x1234_5678u32
    );
    let Some(cap) = hb.find_capability(bdf, pci::CAP_MSI) else {
        fail!(name, "edu has no MSI capability");
    };
    let msi64 = hb.enable_msi(bdf, cap, DOORBELL, EVENT as u16);
    let (addr, data, on) = hb.msi(bdf, cap);
    ensure!(
        name,
        addr == DOORBELL && u32::from(data) == EVENT && on,
        "edu MSI reads address {addr:#x} data {data:#x} enabled {on}"
    );
    if verbose {
        println!(
        "{name}: ECAM {:#x}, window {:#x}..{:#x}; edu {bdf} (RID {:#x}, DeviceID {dev:#x}), BAR0 {size:#x} bytes at {cpu_addr:#x}, id {id:#x}; MSI cap at {cap:#x} ({}-bit) -> {DOORBELL:#x} data {EVENT}",
        hb.ecam.start,
        window.start,
        window.end,
        bdf.rid(),
        if msi64 { 64 } else { 32 }
    );
    }
    (bdf, dev, cpu_addr)
}

/// GIC and LPIs on both vCPUs, vCPU 1 started, the ITS with collection
/// c on vCPU c.
fn setup_its(boot: &'static BootInfo) -> (Its, Bump) {
    ensure!(
        NAME,
        boot.cpus().len() >= 2,
        "needs 2 vCPUs, has {}",
        boot.cpus().len()
    );
    gic::init_distributor();
    gic::init_cpu();
    ensure!(
        NAME,
        gic::lpis_supported() && gic::redistributor_has_lpis(),
        "no LPIs"
    );
    let id_bits = gic::lpi_id_bits().min(16);
    ensure!(NAME, id_bits >= 14, "{id_bits} INTID bits");
    let mut mem = Bump::above_image(boot);
    let prop = PropTable::new(&mut mem, id_bits).unwrap_or_else(|e| fail!(NAME, "{e:?}"));
    for v in 0..NSET as u32 {
        prop.set(VLPI_BASE + v, 0xa0, true);
    }
    PROP_BASE.store(prop.base, SeqCst);
    PROP_BITS.store(u64::from(prop.id_bits), SeqCst);
    let pend_size = its::align_up((1u64 << id_bits) / 8, 0x1_0000);
    let pend1 = mem
        .alloc(pend_size, 0x1_0000)
        .unwrap_or_else(|| fail!(NAME, "no memory"));
    PEND1.store(pend1, SeqCst);
    gic::set_lpi_handler(lpi_handler);
    its::enable_lpis_on_this_cpu(&mut mem, &prop).unwrap_or_else(|e| fail!(NAME, "{e:?}"));
    ensure!(
        NAME,
        gic::lpis_enabled(),
        "vCPU 0: EnableLPIs does not read 1"
    );
    vigil_guest::set_secondary_main(raiser);
    let mpidr1 = boot.cpus()[1];
    let r = psci::cpu_on(mpidr1, 1);
    ensure!(NAME, r == 0, "CPU_ON of vCPU 1: {r}");
    if !cpu::wait_until(TIMEOUT_US, || READY.load(SeqCst)) {
        fail!(NAME, "vCPU 1 did not come up");
    }
    let mut its = Its::init(&mut mem, 16, 13, 16).unwrap_or_else(|e| fail!(NAME, "ITS: {e:?}"));
    let rd: [RdBase; 2] = core::array::from_fn(|c| {
        its.rdbase(boot.cpus()[c])
            .unwrap_or_else(|| fail!(NAME, "no redistributor for vCPU {c}"))
    });
    for (c, &r) in rd.iter().enumerate() {
        let r2 = its.send_all(&[ItsCommand::mapc(c as u16, r, true), ItsCommand::sync(r)]);
        if let Err(e) = r2 {
            fail!(NAME, "MAPC {c}: {e:?}");
        }
    }
    gic::irq_enable();
    (its, mem)
}

pub fn run(boot: &'static BootInfo) -> ! {
    let t0 = cpu::now_us();
    ensure!(NAME, boot.vigil, "needs Vigil (VIGIL_HOST_LPIS_FREE)");
    let (its, mut mem) = setup_its(boot);
    let (_bdf, dev, bar0) = setup_edu(boot);
    let host_lpis_at_start = host_lpis_free();
    ensure!(
        NAME,
        host_lpis_at_start > 0,
        "VIGIL_HOST_LPIS_FREE is 0: no physical ITS?"
    );
    let itt_bytes = its.itt_bytes(EVENT_BITS);
    let itt = mem
        .alloc(itt_bytes, 256)
        .unwrap_or_else(|| fail!(NAME, "no memory for the ITT"));
    let mut g = Guest {
        its,
        itt,
        host_lpis_at_start,
    };
    g.send("MAPD", ItsCommand::mapd(dev, itt, EVENT_BITS, true));
    println!(
        "{NAME}: vITS up, collections 0/1 on vCPUs 0/1; DeviceID {dev:#x} mapped ({} events); {host_lpis_at_start} host LPIs free before it; vLPIs {}..{}; {ITERATIONS} lives, MAPD(V=0)/MAPD(V=1) every {MAPD_EVERY}",
        1 << EVENT_BITS,
        VLPI_BASE,
        VLPI_BASE + NSET as u32 - 1
    );
    EDU_BASE.store(bar0, SeqCst);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut waited, mut waited_delivered, mut mapd_cycles, mut held0) = (0u64, 0u64, 0, 0);
    let mut per_life_max = 0;
    let mut t_cmd = 0u64;
    let mut t_dwell = 0u64;
    let mut t_sync = 0u64;
    let mut t_ack = 0u64;
    let progress_every = ITERATIONS / 5;
    let mut life = 0;
    while life < ITERATIONS {
        life += 1;
        let v = vlpi(life);
        let r = rng.next();
        let target = r & 1;
        // Both vCPUs passed the sync point of v's previous life.
        let t = cpu::now_us();
        if !cpu::wait_until(TIMEOUT_US, || {
            service_exit(0);
            SYNC_ACK.load(SeqCst) + NSET >= life
        }) {
            fail!(NAME, "vCPU 1 did not synchronise for life {}", life - NSET);
        }
        t_ack += cpu::now_us() - t;
        DEAD[0][v].store(false, SeqCst);
        DEAD[1][v].store(false, SeqCst);
        TARGET[v].store(target, SeqCst);
        LIFE[v].store(life, SeqCst);
        let before = DELIV[0][v].load(SeqCst) + DELIV[1][v].load(SeqCst);
        // A quarter of the lives wait for a delivery: no MSI may be in
        // flight across their MAPTI, so every MSI raised in them is raised
        // while the mapping is stable and must be delivered.
        let wait_life = r & 0x30 == 0;
        if wait_life {
            PAUSE.store(true, SeqCst);
            if !cpu::wait_until(TIMEOUT_US, || {
                service_exit(0);
                OUTSTANDING.load(SeqCst) == 0
            }) {
                fail!(
                    NAME,
                    "life {life}: the MSI in flight (seq {}) was neither delivered nor resolved",
                    OUTSTANDING.load(SeqCst)
                );
            }
        }
        PHASE.store(4 * life - 3, SeqCst);
        fence();
        let t = cpu::now_us();
        g.send(
            "MAPTI",
            ItsCommand::mapti(dev, EVENT, VLPI_BASE + v as u32, target as u16),
        );
        fence();
        PHASE.store(4 * life - 2, SeqCst);
        let t1 = cpu::now_us();
        t_cmd += t1 - t;
        let delivered = || DELIV[0][v].load(SeqCst) + DELIV[1][v].load(SeqCst) > before;
        PAUSE.store(false, SeqCst);
        if wait_life {
            waited += 1;
            if cpu::wait_until(TIMEOUT_US, || {
                service_exit(0);
                delivered() || violations() > 0
            }) {
                waited_delivered += u64::from(delivered());
            } else {
                let out = OUTSTANDING.load(SeqCst);
                let slot = out as usize % RING;
                fail!(
                    NAME,
                    "(c) life {life} (vLPI {}, vCPU {target}) mapped and stable: no MSI delivered in {} ms; outstanding seq {out} (PHASE {} before raising, {} after), {} raised",
                    VLPI_BASE + v as u32,
                    TIMEOUT_US / 1000,
                    REC_PRE[slot].load(SeqCst),
                    REC_POST[slot].load(SeqCst),
                    RAISED.load(SeqCst)
                );
            }
        } else {
            let spin = (r >> 8) % 40;
            cpu::wait_until(spin, || {
                service_exit(0);
                false
            });
        }
        // Half the removals are issued with IRQs masked (a pending
        // instance must then vanish with the mapping).
        let masked_removal = r & 0x40 == 0;
        if masked_removal {
            gic::irq_disable();
            held0 += 1;
            cpu::wait_until((r >> 16) % 20, || false);
        }
        PHASE.store(4 * life - 1, SeqCst);
        fence();
        let t = cpu::now_us();
        t_dwell += t - t1;
        let mapd_cycle = life % MAPD_EVERY == 0;
        if mapd_cycle {
            g.send("MAPD(V=0)", ItsCommand::mapd(dev, 0, EVENT_BITS, false));
        } else {
            g.send("DISCARD", ItsCommand::discard(dev, EVENT));
        }
        // vCPU 0's own sync point, then vCPU 1's (asynchronously).
        let t1 = cpu::now_us();
        t_cmd += t1 - t;
        gic::irq_disable();
        sync_point();
        DEAD[0][v].store(true, SeqCst);
        fence();
        PHASE.store(4 * life, SeqCst);
        SYNC_REQ.store(life, SeqCst);
        gic::irq_enable();
        t_sync += cpu::now_us() - t1;
        let n = DELIV[0][v].load(SeqCst) + DELIV[1][v].load(SeqCst) - before;
        per_life_max = per_life_max.max(n);
        if mapd_cycle {
            mapd_cycles += 1;
            expect_no_leak(&g, "after MAPD(V=0)", TIMEOUT_US);
            g.send("MAPD(V=1)", ItsCommand::mapd(dev, g.itt, EVENT_BITS, true));
        }
        if violations() > 0 {
            break;
        }
        if life % progress_every == 0 {
            println!(
                "{NAME}: {life} lives: {} MSIs raised, {} delivered, {} dropped",
                RAISED.load(SeqCst),
                CONSUMED.load(SeqCst),
                DROPPED.load(SeqCst)
            );
        }
    }
    println!(
        "{NAME}: vCPU 0 time: commands {} ms, dwell {} ms, sync points {} ms, waiting for vCPU 1's {} ms",
        t_cmd / 1000,
        t_dwell / 1000,
        t_sync / 1000,
        t_ack / 1000
    );
    // Stop the raiser; it resolves its last MSI first.
    STOP.store(true, SeqCst);
    if !cpu::wait_until(TIMEOUT_US, || {
        service_exit(0);
        STOPPED.load(SeqCst)
    }) {
        fail!(
            NAME,
            "vCPU 1 did not stop (outstanding seq {})",
            OUTSTANDING.load(SeqCst)
        );
    }
    g.send(
        "final MAPD(V=0)",
        ItsCommand::mapd(dev, 0, EVENT_BITS, false),
    );
    sync_point();
    let total_before_quiet: u64 = DELIV.iter().flatten().map(|d| d.load(SeqCst)).sum();
    cpu::wait_until(50_000, || {
        service_exit(0);
        false
    });
    let total: u64 = DELIV.iter().flatten().map(|d| d.load(SeqCst)).sum();
    let host_lpis_at_end = expect_no_leak(&g, "after the final MAPD(V=0)", 1_000_000);
    let elapsed_ms = (cpu::now_us() - t0) / 1000;
    let (raised, consumed, dropped) = (
        RAISED.load(SeqCst),
        CONSUMED.load(SeqCst),
        DROPPED.load(SeqCst),
    );
    let per_vcpu: [u64; 2] =
        core::array::from_fn(|c| DELIV[c].iter().map(|d| d.load(SeqCst)).sum());
    let by_phase: [u64; 4] = core::array::from_fn(|p| BY_PHASE[p].load(SeqCst));
    println!(
        "{NAME}: {life} lives ({mapd_cycles} ending in MAPD(V=0)) in {elapsed_ms} ms: {raised} MSIs raised, {total} LPIs delivered (vCPU 0 {}, vCPU 1 {}), {dropped} dropped; per phase: {} while MAPTI was issued, {} mapped, {} while DISCARD/MAPD(V=0) was issued, {} after it returned before the sync point; at most {per_life_max} in one life; {waited_delivered} of {waited} waiting lives got theirs; IRQs held masked by vCPU 1 after {} MSIs, by vCPU 0 across {held0} removals",
        per_vcpu[0],
        per_vcpu[1],
        by_phase[1],
        by_phase[2],
        by_phase[3],
        by_phase[0],
        HELD.load(SeqCst)
    );
    if violations() > 0 {
        let info: [u64; 8] = core::array::from_fn(|i| FIRST_INFO[i].load(SeqCst));
        let counts: [u64; 7] = core::array::from_fn(|i| VIOLATIONS[i].load(SeqCst));
        fail!(
            NAME,
            "{}: INTID {} on vCPU {}, life {}, MSI seq {} (PHASE {} before raising, {} after), PHASE {} at delivery; violations by kind {counts:?}",
            KINDS[info[0] as usize],
            info[1],
            info[2],
            info[3],
            info[4],
            info[5],
            info[6],
            info[7]
        );
    }
    ensure!(
        NAME,
        total == total_before_quiet,
        "{} LPIs delivered after the final MAPD(V=0)",
        total - total_before_quiet
    );
    ensure!(
        NAME,
        consumed == total && consumed + dropped == raised,
        "(b) {raised} MSIs raised but {consumed} delivered + {dropped} dropped ({total} deliveries)"
    );
    ensure!(
        NAME,
        BAD_STATUS.load(SeqCst) == 0,
        "edu's interrupt status lacked the raised bit {} times",
        BAD_STATUS.load(SeqCst)
    );
    // (c): not vacuous.
    ensure!(
        NAME,
        life == ITERATIONS && total >= ITERATIONS / 4,
        "(c) only {total} LPIs delivered over {life} lives"
    );
    ensure!(
        NAME,
        per_vcpu[0] > 0 && per_vcpu[1] > 0 && by_phase[2] > 0,
        "(c) deliveries per vCPU {per_vcpu:?}, per phase {by_phase:?}"
    );
    ensure!(
        NAME,
        waited_delivered == waited && waited > 0,
        "(c) only {waited_delivered} of {waited} waiting lives got an MSI"
    );
    println!(
        "{NAME}: no delivery after a removal and its sync point, none twice, {host_lpis_at_end} host LPIs free at the end as at the start"
    );
    report::pass(NAME)
}
