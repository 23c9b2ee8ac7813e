//! Benchmarks (issue 10): `bench` (one VM, 2 vCPUs: rows hyp_call,
//! mmio_read_vgic, eoi, ipi, lpi, timer, translater, its_cmd) and
//! `bench-yield` (two VMs on one physical CPU: the VIGIL_YIELD round trip
//! behind the vm_switch row). Run under `-icount shift=0,sleep=off`, where
//! the virtual counter advances one tick per instruction executed (by any
//! CPU, hypervisor included), so counter deltas are instruction counts.
//!
//! Each row prints `guest: bench: <row> <instructions per op>` with one
//! decimal: the total over the iterations minus the same measurement with
//! the operation left out (the empty loop, or the empty pair of counter
//! reads), divided by the iterations.
//!
//! Interrupt rows use this file's own IRQ vector (VBAR_EL1 points at
//! [`bench_vectors`] while benchmarking; every other exception goes on to
//! the library's vectors): it acknowledges (ICC_IAR1_EL1), completes
//! (ICC_EOIR1_EL1), then reads the counter and stores it with the INTID
//! in this vCPU's [`Slot`]. "Until the handler runs" ends at that read. It
//! also handles LPIs, which the library's dispatcher does not.
//!
//! The ITS is driven with the minimum needed here ([`Its`]): flat device
//! and collection tables, a 64 KiB command queue, one device (DeviceID 0,
//! also what a vCPU's own GITS_TRANSLATER writes use) and collection 0 on
//! vCPU 0.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vigil_guest::gic;
use vigil_guest::{cpu, fail, mmio, println, psci, report, smccc, BootInfo, MAX_CPUS};

const BENCH: &str = "bench";
const YIELD: &str = "bench-yield";
/// Vigil: returns after letting another runnable vCPU of this physical CPU
/// run.
const VIGIL_YIELD: u32 = vigil_guest::smccc::hypercall::YIELD;
/// Iterations of each row.
const ITERS: u64 = 1000;
/// Batches of the its_cmd row.
const ITS_BATCHES: u64 = 8;
/// MAPTI/DISCARD pairs per batch.
const ITS_PAIRS: u64 = 128;
/// How long a wait for an interrupt or another vCPU may take.
const TIMEOUT_US: u64 = 5_000_000;

const GICD_IIDR: u64 = gic::GICD_BASE + 0x0008;
const SGI_EOI: u32 = 1;
const SGI_PING: u32 = 2;
const SGI_PONG: u32 = 3;
const LPI_INT: u32 = 8192;
const LPI_TRANSLATER: u32 = 8193;
/// MAPTI/DISCARD pairs use LPIs from here (disabled in the property table).
const LPI_BATCH: u32 = 8194;
const EVENT_INT: u32 = 0;
const EVENT_TRANSLATER: u32 = 1;
const EVENT_BATCH: u32 = 2;
const PRIORITY: u8 = 0x80;

/// What the bench IRQ vector recorded on one vCPU (offsets are used by the
/// assembly: time at 0, IAR at 8, count at 16; 64 bytes apart).
#[repr(C, align(64))]
struct Slot {
    time: AtomicU64,
    iar: AtomicU64,
    count: AtomicU64,
}

static SLOTS: [Slot; MAX_CPUS] = [const {
    Slot {
        time: AtomicU64::new(0),
        iar: AtomicU64::new(0),
        count: AtomicU64::new(0),
    }
}; MAX_CPUS];
const _: () = assert!(core::mem::size_of::<Slot>() == 64);

global_asm!(
    r#"
.macro BENCH_FORWARD off
    .balign 0x80
    b       vigil_guest_vectors + \off
.endm

.section .text.bench_vectors, "ax"
.balign 0x800
.global bench_vectors
bench_vectors:
    BENCH_FORWARD 0x000
    BENCH_FORWARD 0x080
    BENCH_FORWARD 0x100
    BENCH_FORWARD 0x180
    BENCH_FORWARD 0x200
    .balign 0x80
    b       bench_irq
    BENCH_FORWARD 0x300
    BENCH_FORWARD 0x380
    BENCH_FORWARD 0x400
    BENCH_FORWARD 0x480
    BENCH_FORWARD 0x500
    BENCH_FORWARD 0x580
    BENCH_FORWARD 0x600
    BENCH_FORWARD 0x680
    BENCH_FORWARD 0x700
    BENCH_FORWARD 0x780

bench_irq:
    sub     sp, sp, #32
    stp     x0, x1, [sp]
    stp     x2, x3, [sp, #16]
    mrs     x1, icc_iar1_el1
    and     x2, x1, #0xffffff
    cmp     x2, #1023
    b.eq    2f
    cmp     x2, #27
    b.ne    1f
    msr     cntv_ctl_el0, xzr
1:  msr     icc_eoir1_el1, x1
    isb
    mrs     x0, cntvct_el0
    adrp    x2, {slots}
    add     x2, x2, :lo12:{slots}
    mrs     x3, tpidr_el1
    add     x2, x2, x3, lsl #6
    str     x0, [x2]
    str     x1, [x2, #8]
    ldr     x0, [x2, #16]
    add     x0, x0, #1
    str     x0, [x2, #16]
2:  ldp     x2, x3, [sp, #16]
    ldp     x0, x1, [sp], #32
    eret
"#,
    slots = sym SLOTS,
);

extern "C" {
    static bench_vectors: u8;
}

fn install_vectors() {
    // SAFETY: `bench_vectors` is a complete, 2 KiB-aligned vector table:
    // its IRQ entry preserves every register it uses and erets, the others
    // branch to the library's vectors.
    unsafe {
        asm!(
            "msr vbar_el1, {}",
            "isb",
            in(reg) core::ptr::addr_of!(bench_vectors) as u64,
            options(nostack, preserves_flags)
        )
    };
}

fn slot() -> &'static Slot {
    &SLOTS[cpu::index() % MAX_CPUS]
}

/// The counter, read with an ISB on each side.
fn now() -> u64 {
    let v: u64;
    // SAFETY: reading CNTVCT_EL0 has no side effects.
    unsafe {
        asm!("isb", "mrs {}, cntvct_el0", "isb", out(reg) v, options(nostack, preserves_flags))
    };
    v
}

/// Instructions between two back-to-back [`now`]-style reads, over
/// `ITERS` pairs.
fn empty_pairs() -> u64 {
    let mut total = 0;
    for _ in 0..ITERS {
        let (t0, t1): (u64, u64);
        // SAFETY: two counter reads.
        unsafe {
            asm!(
                "isb", "mrs {t0}, cntvct_el0", "isb",
                "isb", "mrs {t1}, cntvct_el0", "isb",
                t0 = out(reg) t0, t1 = out(reg) t1,
                options(nostack, preserves_flags)
            )
        };
        total += t1 - t0;
    }
    total
}

/// `total` minus `empty` over `n`, with one decimal, as "X.Y".
struct PerOp(u64);

fn per_op(total: u64, empty: u64, n: u64) -> PerOp {
    PerOp(total.saturating_sub(empty) * 10 / n)
}

impl core::fmt::Display for PerOp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.0 / 10, self.0 % 10)
    }
}

fn row(name: &str, v: PerOp) {
    println!("bench: {name} {v}");
}

fn na(name: &str, why: &str) {
    println!("bench: {name} n/a ({why})");
}

// ---------------------------------------------------------------------------
// Loops timed as a whole.

/// `n` HVCs with x0 = `fid` (or, `hvc` false, the same loop without them).
fn hvc_loop(fid: u32, n: u64, hvc: bool) -> u64 {
    let (t0, t1): (u64, u64);
    if hvc {
        // SAFETY: SMCCC calls with no memory effect (VIGIL_NULL,
        // VIGIL_YIELD, or -1 on bare QEMU); x0..x17 may be clobbered.
        unsafe {
            asm!(
                "isb", "mrs {t0}, cntvct_el0", "isb",
                "2:", "mov x0, {fid}", "hvc #0", "subs {n}, {n}, #1", "b.ne 2b",
                "isb", "mrs {t1}, cntvct_el0", "isb",
                fid = in(reg) u64::from(fid), n = inout(reg) n => _,
                t0 = out(reg) t0, t1 = out(reg) t1,
                out("x0") _, out("x1") _, out("x2") _, out("x3") _,
                out("x4") _, out("x5") _, out("x6") _, out("x7") _,
                out("x8") _, out("x9") _, out("x10") _, out("x11") _,
                out("x12") _, out("x13") _, out("x14") _, out("x15") _,
                out("x16") _, out("x17") _,
                options(nostack),
            )
        };
    } else {
        // SAFETY: only registers change.
        unsafe {
            asm!(
                "isb", "mrs {t0}, cntvct_el0", "isb",
                "2:", "mov x0, {fid}", "subs {n}, {n}, #1", "b.ne 2b",
                "isb", "mrs {t1}, cntvct_el0", "isb",
                fid = in(reg) u64::from(fid), n = inout(reg) n => _,
                t0 = out(reg) t0, t1 = out(reg) t1,
                out("x0") _,
                options(nostack),
            )
        };
    }
    t1 - t0
}

/// `n` 32-bit reads of `addr` (or, `read` false, the same loop without).
fn ldr_loop(addr: u64, n: u64, read: bool) -> u64 {
    let (t0, t1): (u64, u64);
    if read {
        // SAFETY: `addr` is a 4-byte aligned GIC register; reading it has
        // no side effects. A single `ldr` gives a valid syndrome.
        unsafe {
            asm!(
                "isb", "mrs {t0}, cntvct_el0", "isb",
                "2:", "ldr {v:w}, [{a}]", "subs {n}, {n}, #1", "b.ne 2b",
                "isb", "mrs {t1}, cntvct_el0", "isb",
                a = in(reg) addr, v = out(reg) _, n = inout(reg) n => _,
                t0 = out(reg) t0, t1 = out(reg) t1,
                options(nostack),
            )
        };
    } else {
        // SAFETY: only registers change.
        unsafe {
            asm!(
                "isb", "mrs {t0}, cntvct_el0", "isb",
                "2:", "subs {n}, {n}, #1", "b.ne 2b",
                "isb", "mrs {t1}, cntvct_el0", "isb",
                n = inout(reg) n => _,
                t0 = out(reg) t0, t1 = out(reg) t1,
                options(nostack),
            )
        };
    }
    t1 - t0
}

// ---------------------------------------------------------------------------
// Waiting for this vCPU's bench handler.

fn count() -> u64 {
    slot().count.load(Ordering::Acquire)
}

fn isr_irq_pending() -> bool {
    let isr: u64;
    // SAFETY: reading ISR_EL1 has no side effects.
    unsafe { asm!("mrs {}, isr_el1", out(reg) isr, options(nomem, nostack, preserves_flags)) };
    isr & (1 << 7) != 0
}

/// Waits with IRQs unmasked (spinning) until this vCPU's handler count
/// passes `before`; returns the handler's counter reading.
fn wait_handler_spin(name: &str, before: u64) -> u64 {
    gic::irq_enable();
    let ok = cpu::wait_until(TIMEOUT_US, || count() != before);
    gic::irq_disable();
    if !ok {
        fail!(BENCH, "{name}: the interrupt never reached the handler");
    }
    slot().time.load(Ordering::Relaxed)
}

/// The virtual counter's value [`TIMEOUT_US`] from now.
fn deadline() -> u64 {
    cpu::counter() + TIMEOUT_US.saturating_mul(cpu::counter_frequency()) / 1_000_000
}

/// Waits in WFI (IRQs masked around the check) until this vCPU's handler
/// count passes `before`, failing past `deadline` (a counter value the
/// caller takes before it starts the clock: the wait itself then costs a
/// compare, not the arithmetic of a time in microseconds, which the
/// sending vCPU would otherwise run inside the timed window while its
/// target is woken).
fn wait_handler_wfi(name: &str, before: u64, deadline: u64) {
    loop {
        gic::irq_disable();
        if count() != before {
            break;
        }
        if cpu::counter() > deadline {
            fail!(BENCH, "{name}: timed out waiting for an interrupt");
        }
        gic::wait_for_interrupt();
        gic::irq_enable();
    }
}

// ---------------------------------------------------------------------------
// The ITS, minimally.

const GITS_BASE: u64 = 0x0808_0000;
const GITS_CTLR: u64 = GITS_BASE;
const GITS_TYPER: u64 = GITS_BASE + 0x0008;
const GITS_CBASER: u64 = GITS_BASE + 0x0080;
const GITS_CWRITER: u64 = GITS_BASE + 0x0088;
const GITS_CREADR: u64 = GITS_BASE + 0x0090;
const GITS_BASER: u64 = GITS_BASE + 0x0100;
const GITS_TRANSLATER: u64 = GITS_BASE + 0x1_0040;
const GICR_CTLR: u64 = 0x0000;
const GICR_PROPBASER: u64 = 0x0070;
const GICR_PENDBASER: u64 = 0x0078;
const VALID: u64 = 1 << 63;
const QUEUE_BYTES: u64 = 0x1_0000;
/// LPI INTID bits in GICR_PROPBASER (IDbits + 1): INTIDs below 2^17, the
/// VM's own limit (GICD_TYPER.IDbits), room for 10^5 mapped LPIs.
const LPI_ID_BITS: u64 = 17;

// GIC and ITS registers change interrupt state only; this guest's ITS
// tables, queue and property table are RAM it reserved for them (beyond its
// image and stacks), as `mmio` requires.

fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: a GIC/ITS register (above).
    unsafe { mmio::read32(addr) }
}

fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: a GIC/ITS register (above).
    unsafe { mmio::write32(addr, v) }
}

fn mmio_read64(addr: u64) -> u64 {
    // SAFETY: a GIC/ITS register (above).
    unsafe { mmio::read64(addr) }
}

fn mmio_write64(addr: u64, v: u64) {
    // SAFETY: a GIC/ITS register or this guest's ITS memory (above).
    unsafe { mmio::write64(addr, v) }
}

fn mem_write8(addr: u64, v: u8) {
    // SAFETY: a byte of the LPI property table (above).
    unsafe { mmio::write8(addr, v) }
}

fn zero(addr: u64, bytes: u64) {
    for off in (0..bytes).step_by(8) {
        mmio_write64(addr + off, 0);
    }
}

struct Its {
    queue: u64,
    cwriter: u64,
    fill_itts: u64,
    /// Mappings `fill` made so far.
    filled: u32,
}

/// RAM the ITS pieces live in: the top 2 MiB of the VM's RAM below the
/// device tree (Vigil puts it near the end of RAM).
struct ItsMemory {
    prop: u64,
    pend: u64,
    device_table: u64,
    collection_table: u64,
    itt: u64,
    queue: u64,
    /// The ITTs of the devices `bench-scale` fills with mappings.
    fill_itts: u64,
}

/// Events per device `bench-scale` fills (the vITS's EventID limit).
const FILL_EVENTS: u32 = 1 << 16;
/// Devices it fills (DeviceIDs 1..): room for 10^5 mappings.
const FILL_DEVICES: u32 = 2;

fn its_memory(boot: &BootInfo) -> ItsMemory {
    let image_end = vigil_guest::boot::image_range().end;
    let limit = if boot.dtb > image_end {
        boot.ram.end.min(boot.dtb)
    } else {
        boot.ram.end
    };
    let top = (limit & !0xffff) - 0x20_0000;
    ItsMemory {
        prop: top,                        // 120 KiB (LPI_ID_BITS = 17)
        pend: top + 0x2_0000,             // 16 KiB, 64 KiB aligned
        device_table: top + 0x3_0000,     // one 64 KiB page
        collection_table: top + 0x4_0000, // one 64 KiB page
        itt: top + 0x5_0000,              // 256 events
        queue: top + 0x6_0000,            // 64 KiB
        fill_itts: top + 0x8_0000,        // 2 x 512 KiB
    }
}

impl Its {
    /// Sets up LPIs on this vCPU's redistributor and the ITS, maps device
    /// 0 (256 events) and collection 0 (this vCPU) and the LPIs of the
    /// `lpi` and `translater` rows. Returns None (with the reason printed)
    /// if the GIC has no ITS or LPIs.
    fn init(boot: &BootInfo) -> Option<Its> {
        if gic::gicd_typer() & (1 << 17) == 0 {
            println!("bench: GICD_TYPER.LPIS is 0");
            return None;
        }
        let m = its_memory(boot);
        if m.prop < vigil_guest::boot::image_range().end {
            println!("bench: no room for the ITS tables");
            return None;
        }
        zero(m.prop, 0x7_0000);
        // Property table: the two measured LPIs enabled, the batch ones
        // disabled.
        for lpi in [LPI_INT, LPI_TRANSLATER] {
            mem_write8(m.prop + u64::from(lpi - 8192), PRIORITY | 1);
        }
        let rd = gic::rd_base();
        mmio_write64(rd + GICR_PROPBASER, m.prop | (LPI_ID_BITS - 1));
        mmio_write64(rd + GICR_PENDBASER, m.pend);
        mmio_write32(rd + GICR_CTLR, mmio_read32(rd + GICR_CTLR) | 1);
        if mmio_read32(rd + GICR_CTLR) & 1 == 0 {
            println!("bench: GICR_CTLR.EnableLPIs does not stick");
            return None;
        }
        mmio_write32(GITS_CTLR, 0);
        for n in 0..8 {
            let reg = GITS_BASER + n * 8;
            let baser = mmio_read64(reg);
            let base = match (baser >> 56) & 7 {
                1 => m.device_table,
                4 => m.collection_table,
                _ => continue,
            };
            // Keep Type and Entry_Size; 64 KiB pages, one page, flat.
            let keep = baser & (0x7 << 56 | 0x1f << 48);
            mmio_write64(reg, VALID | keep | base | (2 << 8));
        }
        mmio_write64(GITS_CBASER, VALID | m.queue | (QUEUE_BYTES / 4096 - 1));
        mmio_write64(GITS_CWRITER, 0);
        mmio_write32(GITS_CTLR, 1);
        let typer = mmio_read64(GITS_TYPER);
        // RDbase: the processor number (PTA = 0) or the redistributor's
        // address (PTA = 1).
        let rdbase = if typer & (1 << 19) != 0 {
            rd >> 16
        } else {
            (mmio_read64(rd + 0x8) >> 8) & 0xffff
        };
        let mut its = Its {
            queue: m.queue,
            cwriter: 0,
            fill_itts: m.fill_itts,
            filled: 0,
        };
        // MAPC ICID 0 -> this vCPU; MAPD device 0, 8 event bits.
        its.push([0x09, 0, VALID | (rdbase << 16), 0]);
        its.push([0x08, 7, VALID | m.itt, 0]);
        its.push(mapti(EVENT_INT, LPI_INT));
        its.push(mapti(EVENT_TRANSLATER, LPI_TRANSLATER));
        its.push([0x05, 0, rdbase << 16, 0]);
        its.kick();
        if !its.wait_idle() {
            println!("bench: the ITS did not consume its setup commands");
            return None;
        }
        Some(its)
    }

    /// Writes one command at CWRITER (not yet published).
    fn push(&mut self, cmd: [u64; 4]) {
        for (i, dw) in cmd.iter().enumerate() {
            mmio_write64(self.queue + self.cwriter + i as u64 * 8, *dw);
        }
        self.cwriter = (self.cwriter + 32) % QUEUE_BYTES;
    }

    fn kick(&self) {
        mmio_write64(GITS_CWRITER, self.cwriter);
    }

    fn wait_idle(&self) -> bool {
        cpu::wait_until(TIMEOUT_US, || mmio_read64(GITS_CREADR) == self.cwriter)
    }

    /// Map events of devices 1.. to LPIs of their own (above the rows'
    /// ones, disabled in the property table) until `total` are mapped, in
    /// batches the queue holds.
    fn fill(&mut self, total: u32) -> bool {
        const BATCH: u32 = 1024;
        if total > FILL_DEVICES * FILL_EVENTS {
            return false;
        }
        while self.filled < total {
            let n = (total - self.filled).min(BATCH);
            for k in self.filled..self.filled + n {
                let device = 1 + k / FILL_EVENTS;
                if k % FILL_EVENTS == 0 {
                    // MAPD: 16 event bits, its ITT in the fill area.
                    let itt = self.fill_itts + u64::from(device - 1) * u64::from(FILL_EVENTS) * 8;
                    self.push([0x08 | u64::from(device) << 32, 15, VALID | itt, 0]);
                }
                let event = k % FILL_EVENTS;
                self.push([
                    0x0A | u64::from(device) << 32,
                    u64::from(event) | u64::from(FILL_LPI + k) << 32,
                    0,
                    0,
                ]);
            }
            self.push([0x05, 0, 0, 0]);
            self.kick();
            if !self.wait_idle() {
                return false;
            }
            self.filled += n;
        }
        true
    }
}

/// The LPIs `Its::fill` maps: from here, clear of the rows' own.
const FILL_LPI: u32 = 8192 + 1024;

fn mapti(event: u32, lpi: u32) -> [u64; 4] {
    [0x0A, u64::from(event) | u64::from(lpi) << 32, 0, 0]
}

fn int(event: u32) -> [u64; 4] {
    [0x03, u64::from(event), 0, 0]
}

fn discard(event: u32) -> [u64; 4] {
    [0x0F, u64::from(event), 0, 0]
}

// ---------------------------------------------------------------------------
// The rows.

fn bench_hyp_call(empty_loop: u64) {
    if smccc::hvc(smccc::VIGIL_NULL, [0; 3]).is_err() {
        na("hyp_call", "HVC is UNDEFINED here");
        return;
    }
    hvc_loop(smccc::VIGIL_NULL, 16, true);
    row(
        "hyp_call",
        per_op(hvc_loop(smccc::VIGIL_NULL, ITERS, true), empty_loop, ITERS),
    );
}

fn bench_mmio() {
    let empty = ldr_loop(GICD_IIDR, ITERS, false);
    row(
        "mmio_read_vgic",
        per_op(ldr_loop(GICD_IIDR, ITERS, true), empty, ITERS),
    );
}

fn bench_eoi(empty: u64) {
    gic::irq_disable();
    gic::set_priority(SGI_EOI, PRIORITY);
    gic::enable(SGI_EOI);
    let me = cpu::mpidr();
    let mut total = 0;
    for i in 0..ITERS {
        gic::send_sgi(SGI_EOI, me);
        if !cpu::wait_until(TIMEOUT_US, isr_irq_pending) {
            fail!(BENCH, "eoi: SGI {SGI_EOI} to self never became pending");
        }
        let (t0, t1, iar): (u64, u64, u64);
        // SAFETY: acknowledges and completes the SGI just made pending
        // (IRQs are masked, so nothing else takes it).
        unsafe {
            asm!(
                "isb", "mrs {t0}, cntvct_el0", "isb",
                "mrs {iar}, icc_iar1_el1",
                "msr icc_eoir1_el1, {iar}",
                "isb", "mrs {t1}, cntvct_el0", "isb",
                t0 = out(reg) t0, t1 = out(reg) t1, iar = out(reg) iar,
                options(nostack, preserves_flags)
            )
        };
        if iar & 0xff_ffff != u64::from(SGI_EOI) {
            fail!(BENCH, "eoi: iteration {i}: ICC_IAR1_EL1 = {iar:#x}");
        }
        total += t1 - t0;
    }
    row("eoi", per_op(total, empty, ITERS));
}

static PEER_MPIDR: AtomicU64 = AtomicU64::new(0);
static BOOT_MPIDR: AtomicU64 = AtomicU64::new(0);
static PEER_READY: AtomicBool = AtomicBool::new(false);

/// vCPU 1: takes SGI_PING in the bench handler (waiting in WFI), answers
/// each with SGI_PONG to vCPU 0.
fn peer_main(_context: u64) -> ! {
    gic::init_cpu();
    install_vectors();
    gic::set_priority(SGI_PING, PRIORITY);
    gic::enable(SGI_PING);
    let boot = BOOT_MPIDR.load(Ordering::Relaxed);
    PEER_READY.store(true, Ordering::Release);
    let mut seen = 0;
    loop {
        seen = wait_next(seen);
        gic::send_sgi(SGI_PONG, boot);
    }
}

/// Wait in WFI (interrupts masked around the check) until the bench
/// handler has run since it counted `seen`; the count now.
fn wait_next(seen: u64) -> u64 {
    loop {
        gic::irq_disable();
        if count() != seen {
            return count();
        }
        gic::wait_for_interrupt();
        gic::irq_enable();
    }
}

/// Write ICC_SGI1R_EL1 = `sgi1r`; the virtual counter just before.
fn send_timed(sgi1r: u64) -> u64 {
    let t0: u64;
    // SAFETY: one ICC_SGI1R_EL1 write: sends the SGI it names.
    unsafe {
        asm!(
            "isb", "mrs {t0}, cntvct_el0", "isb",
            "msr icc_sgi1r_el1, {v}", "isb",
            t0 = out(reg) t0, v = in(reg) sgi1r,
            options(nostack, preserves_flags)
        )
    };
    t0
}

/// `ITERS` unicast SGIs `sgi1r` (after 16 warm-up ones), each until the
/// handler of the vCPU whose slot is `peer` ran; vCPU 0 waits in WFI
/// meanwhile. The sum of send-to-handler times.
fn unicast_total(sgi1r: u64, peer: &Slot) -> u64 {
    let mut total = 0;
    for i in 0..ITERS + 16 {
        let mine = count();
        let until = deadline();
        let t0 = send_timed(sgi1r);
        wait_handler_wfi("ipi", mine, until);
        let t1 = peer.time.load(Ordering::Acquire);
        if i >= 16 {
            total += t1.wrapping_sub(t0);
        }
    }
    total
}

fn bench_ipi(boot: &BootInfo, empty: u64) {
    let Some(&peer) = boot.cpus().get(1) else {
        na("ipi", "one vCPU");
        return;
    };
    PEER_MPIDR.store(peer, Ordering::Relaxed);
    BOOT_MPIDR.store(cpu::mpidr(), Ordering::Relaxed);
    gic::set_priority(SGI_PONG, PRIORITY);
    gic::enable(SGI_PONG);
    vigil_guest::set_secondary_main(peer_main);
    let r = psci::cpu_on(peer, 1);
    if r != 0 {
        fail!(BENCH, "ipi: CPU_ON of vCPU 1: {r}");
    }
    if !cpu::wait_until(TIMEOUT_US, || PEER_READY.load(Ordering::Acquire)) {
        fail!(BENCH, "ipi: vCPU 1 never came up");
    }
    let total = unicast_total(gic::sgi1r_for(SGI_PING, peer), &SLOTS[1]);
    gic::irq_disable();
    row("ipi", per_op(total, empty, ITERS));
}

fn bench_timer(empty: u64) {
    gic::set_priority(gic::VTIMER_PPI, PRIORITY);
    gic::enable(gic::VTIMER_PPI);
    let mut total = 0;
    for _ in 0..ITERS {
        let before = count();
        let t0: u64;
        // SAFETY: programs this vCPU's virtual timer to fire now; the
        // bench handler turns it off.
        unsafe {
            asm!(
                "isb", "mrs {t0}, cntvct_el0", "isb",
                "msr cntv_cval_el0, {t0}",
                "msr cntv_ctl_el0, {one}",
                "isb",
                t0 = out(reg) t0, one = in(reg) 1u64,
                options(nostack, preserves_flags)
            )
        };
        let t1 = wait_handler_spin("timer", before);
        total += t1 - t0;
    }
    gic::disable(gic::VTIMER_PPI);
    row("timer", per_op(total, empty, ITERS));
}

fn bench_lpi(its: &mut Its, empty: u64) {
    let mut total = 0;
    for _ in 0..ITERS {
        its.push(int(EVENT_INT));
        let before = count();
        let t0 = now();
        its.kick();
        let t1 = wait_handler_spin("lpi", before);
        total += t1 - t0;
        if slot().iar.load(Ordering::Relaxed) & 0xff_ffff != u64::from(LPI_INT) {
            fail!(BENCH, "lpi: took {:#x}", slot().iar.load(Ordering::Relaxed));
        }
    }
    row("lpi", per_op(total, empty, ITERS));
}

fn bench_translater(empty: u64) {
    let mut total = 0;
    for _ in 0..ITERS {
        let before = count();
        let t0 = now();
        mmio_write32(GITS_TRANSLATER, EVENT_TRANSLATER);
        let t1 = wait_handler_spin("translater", before);
        total += t1 - t0;
        if slot().iar.load(Ordering::Relaxed) & 0xff_ffff != u64::from(LPI_TRANSLATER) {
            fail!(
                BENCH,
                "translater: took {:#x}",
                slot().iar.load(Ordering::Relaxed)
            );
        }
    }
    row("translater", per_op(total, empty, ITERS));
}

fn bench_its_cmd(its: &mut Its, empty: u64) {
    row("its_cmd", its_cmd_per_op(its, empty));
}

/// MAPTI/DISCARD batches with a SYNC: instructions per command.
fn its_cmd_per_op(its: &mut Its, empty: u64) -> PerOp {
    let mut total = 0;
    for _ in 0..ITS_BATCHES {
        for k in 0..ITS_PAIRS as u32 {
            its.push(mapti(EVENT_BATCH + k, LPI_BATCH + k));
            its.push(discard(EVENT_BATCH + k));
        }
        its.push([0x05, 0, 0, 0]);
        let t0 = now();
        its.kick();
        while mmio_read64(GITS_CREADR) != its.cwriter {}
        let t1 = now();
        total += t1 - t0;
    }
    // Per command of the 256, the SYNC's cost included.
    per_op(
        total,
        empty * ITS_BATCHES / ITERS,
        ITS_BATCHES * ITS_PAIRS * 2,
    )
}

/// Whether row `name` runs: all of them, or those named in
/// `vigil.bench=row,row,...` (for profiling one path).
fn want(boot: &BootInfo, name: &str) -> bool {
    boot.bootarg("vigil.bench")
        .is_none_or(|rows| rows.split(',').any(|r| r == name))
}

pub fn run(boot: &'static BootInfo) -> ! {
    let freq = cpu::counter_frequency();
    println!(
        "bench: CNTFRQ_EL0 {freq} Hz ({}), {ITERS} iterations per row",
        if boot.vigil { "Vigil" } else { "bare" }
    );
    gic::init_distributor();
    gic::init_cpu();
    install_vectors();
    gic::irq_disable();
    let empty_loop = hvc_loop(smccc::VIGIL_NULL, ITERS, false);
    let empty = empty_pairs();
    println!(
        "bench: empty loop {} per iteration, empty counter pair {}",
        per_op(empty_loop, 0, ITERS),
        per_op(empty, 0, ITERS)
    );
    if want(boot, "hyp_call") {
        bench_hyp_call(empty_loop);
    }
    if want(boot, "mmio_read_vgic") {
        bench_mmio();
    }
    if want(boot, "eoi") {
        bench_eoi(empty);
    }
    if want(boot, "timer") {
        bench_timer(empty);
    }
    let its_rows = ["lpi", "translater", "its_cmd"];
    if its_rows.iter().any(|r| want(boot, r)) {
        match Its::init(boot) {
            Some(mut its) => {
                if want(boot, "lpi") {
                    bench_lpi(&mut its, empty);
                }
                if want(boot, "translater") {
                    bench_translater(empty);
                }
                if want(boot, "its_cmd") {
                    bench_its_cmd(&mut its, empty);
                }
            }
            None => its_rows.iter().for_each(|r| na(r, "no ITS")),
        }
    }
    if want(boot, "ipi") {
        bench_ipi(boot, empty);
    }
    report::pass(BENCH)
}

// ---------------------------------------------------------------------------
// bench-scale: costs against the size of the machine and of the VM (issue
// 22). One VM with a vCPU on every physical CPU (scripts/bench runs it on
// 4, 16 and 64); rows hyp_call, ipi (vCPU 0 to the last vCPU, in another
// cluster past 16), ipi_broadcast (IRM = 1 from vCPU 0 until the last of
// the others has run its handler) and its_cmd; with
// `vigil.bench.mapped=A,B,...` also its_cmd with A, B, ... LPIs mapped
// beforehand (`mapped_<A>`).

const SCALE: &str = "bench-scale";
const SGI_BROADCAST: u32 = 4;
/// Broadcast targets that have not run their handler yet.
static BROADCAST_LEFT: AtomicU64 = AtomicU64::new(0);
/// vCPUs of the scale VM that are up.
static SCALE_UP: AtomicU64 = AtomicU64::new(0);

/// Every vCPU but 0: waits in WFI; answers a PING with a PONG to vCPU 0,
/// and the last target of a broadcast sends one PONG for all.
fn scale_peer(_context: u64) -> ! {
    gic::init_cpu();
    install_vectors();
    for sgi in [SGI_PING, SGI_BROADCAST] {
        gic::set_priority(sgi, PRIORITY);
        gic::enable(sgi);
    }
    let boot = BOOT_MPIDR.load(Ordering::Relaxed);
    SCALE_UP.fetch_add(1, Ordering::AcqRel);
    let mut seen = 0;
    loop {
        seen = wait_next(seen);
        let intid = slot().iar.load(Ordering::Relaxed) & 0xff_ffff;
        if intid == u64::from(SGI_PING)
            || (intid == u64::from(SGI_BROADCAST)
                && BROADCAST_LEFT.fetch_sub(1, Ordering::AcqRel) == 1)
        {
            gic::send_sgi(SGI_PONG, boot);
        }
    }
}

/// `ITERS` unicast SGIs from vCPU 0 to vCPU `peer`, each until its
/// handler ran; vCPU 0 waits in WFI meanwhile (counting nothing).
fn scale_ipi(boot: &BootInfo, peer: usize, empty: u64) {
    let total = unicast_total(gic::sgi1r_for(SGI_PING, boot.cpus()[peer]), &SLOTS[peer]);
    row("ipi", per_op(total, empty, ITERS));
}

/// Broadcasts from vCPU 0, each until the last of the `n - 1` others ran
/// its handler.
fn scale_broadcast(n: usize, empty: u64) {
    const BCAST_ITERS: u64 = 100;
    let mut total = 0;
    for i in 0..BCAST_ITERS + 4 {
        let before: [u64; MAX_CPUS] =
            core::array::from_fn(|c| SLOTS[c].count.load(Ordering::Acquire));
        BROADCAST_LEFT.store(n as u64 - 1, Ordering::Release);
        let mine = count();
        let until = deadline();
        // SGI_BROADCAST to every other vCPU (IRM = 1).
        let t0 = send_timed((1u64 << 40) | u64::from(SGI_BROADCAST) << 24);
        wait_handler_wfi("ipi_broadcast", mine, until);
        let mut last = t0;
        for c in 1..n {
            if SLOTS[c].count.load(Ordering::Acquire) == before[c] {
                fail!(
                    SCALE,
                    "ipi_broadcast: vCPU {c} never took SGI {SGI_BROADCAST}"
                );
            }
            last = last.max(SLOTS[c].time.load(Ordering::Acquire));
        }
        if i >= 4 {
            total += last - t0;
        }
    }
    row("ipi_broadcast", per_op(total, empty, BCAST_ITERS));
    println!(
        "bench: ipi_broadcast reaches {} vCPUs: {} per target",
        n - 1,
        per_op(total, empty, BCAST_ITERS * (n as u64 - 1))
    );
}

pub fn run_scale(boot: &'static BootInfo) -> ! {
    let n = boot.cpus().len().min(MAX_CPUS);
    println!(
        "bench: CNTFRQ_EL0 {} Hz ({}), {ITERS} iterations per row, {n} vCPUs",
        cpu::counter_frequency(),
        if boot.vigil { "Vigil" } else { "bare" }
    );
    if n < 2 {
        fail!(SCALE, "needs two vCPUs at least");
    }
    gic::init_distributor();
    gic::init_cpu();
    install_vectors();
    gic::irq_disable();
    gic::set_priority(SGI_PONG, PRIORITY);
    gic::enable(SGI_PONG);
    BOOT_MPIDR.store(cpu::mpidr(), Ordering::Relaxed);
    vigil_guest::set_secondary_main(scale_peer);
    for (i, &mpidr) in boot.cpus().iter().enumerate().take(n).skip(1) {
        let r = psci::cpu_on(mpidr, i as u64);
        if r != 0 {
            fail!(SCALE, "CPU_ON of vCPU {i}: {r}");
        }
    }
    if !cpu::wait_until(TIMEOUT_US, || {
        SCALE_UP.load(Ordering::Acquire) == n as u64 - 1
    }) {
        fail!(
            SCALE,
            "only {} vCPUs came up",
            SCALE_UP.load(Ordering::Acquire) + 1
        );
    }
    let empty_loop = hvc_loop(smccc::VIGIL_NULL, ITERS, false);
    let empty = empty_pairs();
    if want(boot, "hyp_call") {
        bench_hyp_call(empty_loop);
    }
    if want(boot, "ipi") {
        scale_ipi(boot, n - 1, empty);
    }
    if want(boot, "ipi_broadcast") {
        scale_broadcast(n, empty);
    }
    let mapped = boot.bootarg("vigil.bench.mapped");
    if want(boot, "its_cmd") || mapped.is_some() {
        let Some(mut its) = Its::init(boot) else {
            fail!(SCALE, "no ITS");
        };
        if want(boot, "its_cmd") {
            bench_its_cmd(&mut its, empty);
        }
        for m in mapped.into_iter().flat_map(|m| m.split(',')) {
            let Ok(m) = m.parse::<u32>() else {
                fail!(SCALE, "vigil.bench.mapped: {m} is not a number");
            };
            if !its.fill(m) {
                fail!(SCALE, "could not map {m} LPIs");
            }
            println!(
                "bench: its_cmd_mapped_{m} {}",
                its_cmd_per_op(&mut its, empty)
            );
        }
    }
    report::pass(SCALE)
}

// ---------------------------------------------------------------------------
// bench-yield: run in two VMs sharing one physical CPU.

/// A yield round trip longer than this means the other VM ran.
const SWITCHED: u64 = 200;

pub fn run_yield(boot: &'static BootInfo) -> ! {
    if !boot.vigil {
        na("yield_round_trip", "no Vigil hypercalls");
        report::pass(YIELD)
    }
    let empty_loop = hvc_loop(VIGIL_YIELD, ITERS, false);
    // Wait for the other VM: consecutive yields that let it run.
    let mut streak = 0;
    let mut tries = 0u64;
    while streak < 16 {
        let d = hvc_loop(VIGIL_YIELD, 1, true);
        streak = if d > SWITCHED { streak + 1 } else { 0 };
        tries += 1;
        if tries > 1_000_000 {
            fail!(YIELD, "the other VM never ran between two yields");
        }
    }
    let total = hvc_loop(VIGIL_YIELD, ITERS, true);
    // Keep yielding while the other VM finishes its own measurement.
    hvc_loop(VIGIL_YIELD, ITERS / 2, true);
    // The round trip covers this VM's loop and the other's: two empties.
    row("yield_round_trip", per_op(total, 2 * empty_loop, ITERS));
    report::pass(YIELD)
}

// ---------------------------------------------------------------------------
// bench-msi: a passed-through device's MSI (issue 16). One VM with the
// PCIe bridge and QEMU's `edu` on it; its MSI goes to the ITS's
// GITS_TRANSLATER (the physical ITS's, behind the vITS) mapped to one vLPI
// on vCPU 0. Row `msi`: from the write to edu's raise register until the
// bench handler runs. Rows `msi_exits` and `msi_irq_exits`: the vCPU's
// exits per MSI (VIGIL_EXITS, its own exit not counted), all and those for
// a physical interrupt. scripts/bench runs it on the GICv4 board with and
// without `vigil.gicv4=off`, and on bare QEMU (no exits to count).

const MSI: &str = "bench-msi";
/// The vLPI edu's MSI is mapped to.
const LPI_MSI: u32 = 8192 + 32;
/// MSIs measured, after as many to warm up.
const MSI_ITERS: u64 = 200;

pub fn run_msi(boot: &'static BootInfo) -> ! {
    use crate::passthrough::{self, EDU_IRQ_ACK, EDU_IRQ_RAISE};
    use vigil_guest::its::{self as lib_its, Bump, ItsCommand, PropTable};
    let freq = cpu::counter_frequency();
    println!(
        "bench: CNTFRQ_EL0 {freq} Hz ({}), {MSI_ITERS} MSIs",
        if boot.vigil { "Vigil" } else { "bare" }
    );
    gic::init_distributor();
    gic::init_cpu();
    install_vectors();
    gic::irq_disable();
    let empty = empty_pairs() * MSI_ITERS / ITERS;
    let mut mem = Bump::above_image(boot);
    let id_bits = gic::lpi_id_bits().min(16);
    let prop = PropTable::new(&mut mem, id_bits).unwrap_or_else(|e| fail!(MSI, "{e:?}"));
    prop.set(LPI_MSI, PRIORITY, true);
    lib_its::enable_lpis_on_this_cpu(&mut mem, &prop).unwrap_or_else(|e| fail!(MSI, "{e:?}"));
    let mut its =
        lib_its::Its::init(&mut mem, 16, 13, 16).unwrap_or_else(|e| fail!(MSI, "ITS: {e:?}"));
    let rd = its
        .rdbase(boot.cpus()[0])
        .unwrap_or_else(|| fail!(MSI, "no redistributor for vCPU 0"));
    let (_bdf, dev, bar0) = passthrough::setup_edu_for(MSI, boot, true);
    let itt = mem
        .alloc(its.itt_bytes(2), 256)
        .unwrap_or_else(|| fail!(MSI, "no memory for the ITT"));
    if let Err(e) = its.send_all(&[
        ItsCommand::mapc(0, rd, true),
        ItsCommand::mapd(dev, itt, 2, true),
        ItsCommand::mapti(dev, passthrough::EVENT, LPI_MSI, 0),
        ItsCommand::sync(rd),
    ]) {
        fail!(MSI, "mapping edu's event: {e:?}");
    }
    let one = |total: &mut u64| {
        let before = count();
        let t0 = now();
        mmio_write32(bar0 + EDU_IRQ_RAISE, 1);
        let t1 = wait_handler_spin("msi", before);
        *total += t1 - t0;
        let iar = slot().iar.load(Ordering::Relaxed) & 0xff_ffff;
        if iar != u64::from(LPI_MSI) {
            fail!(MSI, "took {iar:#x}, not the MSI's vLPI {LPI_MSI}");
        }
        mmio_write32(bar0 + EDU_IRQ_ACK, 1);
    };
    let mut warm = 0;
    for _ in 0..MSI_ITERS {
        one(&mut warm);
    }
    let before = smccc::vigil_exits();
    let mut total = 0;
    for _ in 0..MSI_ITERS {
        one(&mut total);
    }
    let after = smccc::vigil_exits();
    row("msi", per_op(total, empty, MSI_ITERS));
    match (before, after) {
        (Some((e0, i0)), Some((e1, i1))) => {
            // Less the VIGIL_EXITS call that read `after`.
            row("msi_exits", per_op(e1 - e0 - 1, 0, MSI_ITERS));
            row("msi_irq_exits", per_op(i1 - i0, 0, MSI_ITERS));
        }
        _ => {
            na("msi_exits", "no Vigil");
            na("msi_irq_exits", "no Vigil");
        }
    }
    report::pass(MSI)
}
