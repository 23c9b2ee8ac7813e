//! A small GICv3 driver for test guests: the distributor, this vCPU's
//! redistributor, the system-register CPU interface, per-INTID handlers
//! and SGIs.
//!
//! The layout is QEMU `virt`'s, which Vigil gives every VM: the
//! distributor at [`GICD_BASE`], one redistributor per vCPU from
//! [`GICR_BASE`] with a [`GICR_STRIDE`] stride (RD_base, then SGI_base at
//! +64 KiB). Every interrupt is Group 1 (the guest sees a single security
//! state, `GICD_CTLR.DS` = 1).
//!
//! Use: vCPU 0 calls [`init_distributor`]; every vCPU calls [`init_cpu`]
//! before touching its SGIs/PPIs. Handlers ([`set_handler`]) are global,
//! one per INTID, and run on the vCPU that took the interrupt with IRQs
//! masked; an interrupt without a handler is fatal ("PANIC: unexpected
//! interrupt ..." and exit status 1). After the handler returns, the IRQ
//! path writes `ICC_EOIR1_EL1` and, when [`set_eoi_mode`]`(true)` was
//! selected on this vCPU, `ICC_DIR_EL1` too, unless the handler called
//! [`leave_active`].

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::boot::MAX_CPUS;
use crate::cpu;
use crate::mmio;

/// The distributor (GICD) frame.
pub const GICD_BASE: u64 = 0x0800_0000;
/// The first redistributor (vCPU 0's RD_base).
pub const GICR_BASE: u64 = 0x080A_0000;
/// Distance between two redistributors.
pub const GICR_STRIDE: u64 = 0x2_0000;
/// SGI_base relative to RD_base.
pub const GICR_SGI_OFFSET: u64 = 0x1_0000;
/// First SPI.
pub const SPI_BASE: u32 = 32;
/// Largest INTID this driver handles (exclusive): SGIs, PPIs and SPIs.
pub const MAX_INTID: u32 = 1020;
/// The virtual timer's PPI.
pub const VTIMER_PPI: u32 = 27;
/// ICC_IAR1_EL1 value when nothing is pending.
pub const SPURIOUS: u32 = 1023;
/// First LPI INTID.
pub const LPI_BASE: u32 = 8192;

// Distributor registers.
const GICD_CTLR: u64 = 0x0000;
const GICD_TYPER: u64 = 0x0004;
const GICD_IGROUPR: u64 = 0x0080;
const GICD_ISENABLER: u64 = 0x0100;
const GICD_ICENABLER: u64 = 0x0180;
const GICD_ISPENDR: u64 = 0x0200;
const GICD_ICPENDR: u64 = 0x0280;
const GICD_ISACTIVER: u64 = 0x0300;
const GICD_ICACTIVER: u64 = 0x0380;
const GICD_IPRIORITYR: u64 = 0x0400;
const GICD_ICFGR: u64 = 0x0C00;
const GICD_IROUTER: u64 = 0x6000;
const GICD_CTLR_RWP: u32 = 1 << 31;
/// EnableGrp1 (bit 1 with DS = 1; EnableGrp1NS otherwise) and ARE (bit 4).
const GICD_CTLR_ENABLE_GRP1: u32 = 1 << 1;
const GICD_CTLR_ARE: u32 = 1 << 4;

// Redistributor registers (RD_base).
const GICR_CTLR: u64 = 0x0000;
const GICR_TYPER: u64 = 0x0008;
const GICR_WAKER: u64 = 0x0014;
const GICR_PROPBASER: u64 = 0x0070;
const GICR_PENDBASER: u64 = 0x0078;
const GICR_CTLR_ENABLE_LPIS: u32 = 1 << 0;
const GICR_TYPER_PLPIS: u64 = 1 << 0;
const GICD_TYPER_LPIS: u32 = 1 << 17;
const GICR_CTLR_RWP: u32 = 1 << 3;
const GICR_TYPER_LAST: u64 = 1 << 4;
const GICR_WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const GICR_WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
// SGI_base registers.
const GICR_IGROUPR0: u64 = 0x0080;
const GICR_ISENABLER0: u64 = 0x0100;
const GICR_ICENABLER0: u64 = 0x0180;
const GICR_ISPENDR0: u64 = 0x0200;
const GICR_ICPENDR0: u64 = 0x0280;
const GICR_ISACTIVER0: u64 = 0x0300;
const GICR_ICACTIVER0: u64 = 0x0380;
const GICR_IPRIORITYR: u64 = 0x0400;
const GICR_ICFGR0: u64 = 0x0C00;

/// How long register-write-pending and wake polls may take.
const POLL_TIMEOUT_US: u64 = 1_000_000;

// Every address below is an aligned register in the VM's GIC frames
// (callers pass GICD_BASE or redistributor offsets): accessing it changes
// interrupt state only, never guest memory, as `mmio` requires.
// IPRIORITYR is byte-accessible.

fn read32(addr: u64) -> u32 {
    // SAFETY: a GIC register (above).
    unsafe { mmio::read32(addr) }
}

fn write32(addr: u64, v: u32) {
    // SAFETY: a GIC register (above).
    unsafe { mmio::write32(addr, v) }
}

fn read64(addr: u64) -> u64 {
    // SAFETY: a GIC register (above).
    unsafe { mmio::read64(addr) }
}

fn write64(addr: u64, v: u64) {
    // SAFETY: a GIC register (above).
    unsafe { mmio::write64(addr, v) }
}

fn write8(addr: u64, v: u8) {
    // SAFETY: a GIC register (above).
    unsafe { mmio::write8(addr, v) }
}

fn read8(addr: u64) -> u8 {
    // SAFETY: a GIC register (above).
    unsafe { mmio::read8(addr) }
}

macro_rules! sysreg_write {
    ($reg:literal, $v:expr) => {
        // SAFETY: writing this GIC CPU interface register only changes
        // this vCPU's interrupt state; the ISB makes it take effect.
        unsafe {
            asm!(concat!("msr ", $reg, ", {}"), "isb", in(reg) $v,
                 options(nostack, preserves_flags))
        }
    };
}

macro_rules! sysreg_read {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: reading this CPU interface register has no side effect
        // (ICC_IAR1_EL1, which acknowledges, is read only in `dispatch`).
        unsafe {
            asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nostack, preserves_flags))
        };
        v
    }};
}

fn wait_bit_clear(addr: u64, bit: u32, what: &str) {
    if !cpu::wait_until(POLL_TIMEOUT_US, || read32(addr) & bit == 0) {
        crate::println!("PANIC: gic: {what} stuck at {addr:#x}");
        crate::exit(1);
    }
}

/// `GICD_TYPER`.
pub fn gicd_typer() -> u32 {
    read32(GICD_BASE + GICD_TYPER)
}

/// `GICD_CTLR`.
pub fn gicd_ctlr() -> u32 {
    read32(GICD_BASE + GICD_CTLR)
}

/// Number of INTIDs the distributor supports (32 * (ITLinesNumber + 1)).
pub fn nr_irqs() -> u32 {
    ((gicd_typer() & 0x1f) + 1) * 32
}

/// Distributor init, once per VM: every SPI disabled, Group 1, priority
/// 0xa0, routed to vCPU 0's MPIDR; then ARE and EnableGrp1, waiting for RWP.
pub fn init_distributor() {
    let d = GICD_BASE;
    write32(d + GICD_CTLR, 0);
    wait_bit_clear(d + GICD_CTLR, GICD_CTLR_RWP, "GICD_CTLR.RWP");
    let n = nr_irqs();
    for reg in 1..n / 32 {
        let off = u64::from(reg) * 4;
        write32(d + GICD_ICENABLER + off, !0);
        write32(d + GICD_ICPENDR + off, !0);
        write32(d + GICD_ICACTIVER + off, !0);
        write32(d + GICD_IGROUPR + off, !0);
    }
    wait_bit_clear(d + GICD_CTLR, GICD_CTLR_RWP, "GICD_CTLR.RWP");
    for intid in SPI_BASE..n {
        write8(d + GICD_IPRIORITYR + u64::from(intid), 0xa0);
    }
    write32(d + GICD_CTLR, GICD_CTLR_ARE | GICD_CTLR_ENABLE_GRP1);
    wait_bit_clear(d + GICD_CTLR, GICD_CTLR_RWP, "GICD_CTLR.RWP");
    let boot = cpu::mpidr();
    for intid in SPI_BASE..n {
        route_spi(intid, boot);
    }
}

/// RD_base of each vCPU (by [`cpu::index`]), found by [`init_cpu`].
static RD_BASE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// The RD_base of the redistributor whose GICR_TYPER affinity is `mpidr`.
pub fn find_redistributor(mpidr: u64) -> Option<u64> {
    let aff = ((mpidr >> 8) & 0xff_0000_0000) | (mpidr & 0xff_ffff);
    let mut rd = GICR_BASE;
    for _ in 0..256 {
        let typer = read64(rd + GICR_TYPER);
        if typer >> 32 == aff {
            return Some(rd);
        }
        if typer & GICR_TYPER_LAST != 0 {
            return None;
        }
        rd += GICR_STRIDE;
    }
    None
}

/// This vCPU's RD_base (after [`init_cpu`]).
pub fn rd_base() -> u64 {
    let rd = RD_BASE[cpu::index() % MAX_CPUS].load(Ordering::Relaxed);
    if rd == 0 {
        crate::println!("PANIC: gic: cpu {} used before init_cpu", cpu::index());
        crate::exit(1);
    }
    rd
}

/// This vCPU's SGI_base.
pub fn sgi_base() -> u64 {
    rd_base() + GICR_SGI_OFFSET
}

/// Per-vCPU init: wake this vCPU's redistributor (GICR_WAKER), make its
/// SGIs/PPIs Group 1, disabled, priority 0xa0, and set the CPU interface
/// up (ICC_SRE_EL1.SRE, PMR 0xff, BPR1 0, EOImode 0, IGRPEN1 1). IRQs stay
/// masked in PSTATE; see [`irq_enable`].
pub fn init_cpu() {
    let Some(rd) = find_redistributor(cpu::mpidr()) else {
        crate::println!("PANIC: gic: no redistributor for MPIDR {:#x}", cpu::mpidr());
        crate::exit(1);
    };
    RD_BASE[cpu::index() % MAX_CPUS].store(rd, Ordering::Relaxed);
    let waker = read32(rd + GICR_WAKER);
    write32(rd + GICR_WAKER, waker & !GICR_WAKER_PROCESSOR_SLEEP);
    wait_bit_clear(
        rd + GICR_WAKER,
        GICR_WAKER_CHILDREN_ASLEEP,
        "GICR_WAKER.ChildrenAsleep",
    );
    let sgi = rd + GICR_SGI_OFFSET;
    write32(sgi + GICR_ICENABLER0, !0);
    write32(sgi + GICR_ICPENDR0, !0);
    write32(sgi + GICR_ICACTIVER0, !0);
    write32(sgi + GICR_IGROUPR0, !0);
    wait_bit_clear(rd + GICR_CTLR, GICR_CTLR_RWP, "GICR_CTLR.RWP");
    for intid in 0..SPI_BASE {
        write8(sgi + GICR_IPRIORITYR + u64::from(intid), 0xa0);
    }
    let sre = sysreg_read!("icc_sre_el1");
    sysreg_write!("icc_sre_el1", sre | 1);
    sysreg_write!("icc_pmr_el1", 0xffu64);
    sysreg_write!("icc_bpr1_el1", 0u64);
    set_eoi_mode(false);
    sysreg_write!("icc_igrpen1_el1", 1u64);
}

/// Selects ICC_CTLR_EL1.EOImode on this vCPU: `false` (0), EOIR drops the
/// priority and deactivates; `true` (1), EOIR only drops the priority and
/// the IRQ path also writes ICC_DIR_EL1 (unless the handler called
/// [`leave_active`]).
pub fn set_eoi_mode(split: bool) {
    let ctlr = sysreg_read!("icc_ctlr_el1");
    let ctlr = if split { ctlr | 2 } else { ctlr & !2 };
    sysreg_write!("icc_ctlr_el1", ctlr);
    EOI_SPLIT[cpu::index() % MAX_CPUS].store(split, Ordering::Relaxed);
}

/// ICC_CTLR_EL1 of this vCPU.
pub fn icc_ctlr() -> u64 {
    sysreg_read!("icc_ctlr_el1")
}

/// ICC_RPR_EL1: the running priority of this vCPU (0xff when idle).
pub fn running_priority() -> u64 {
    sysreg_read!("icc_rpr_el1")
}

/// ICC_HPPIR1_EL1: the highest-priority pending Group 1 INTID (1023 if
/// none).
pub fn highest_pending() -> u32 {
    (sysreg_read!("icc_hppir1_el1") & 0xff_ffff) as u32
}

/// Unmasks IRQs (PSTATE.I = 0).
pub fn irq_enable() {
    // SAFETY: unmasking IRQs lets the vectors run the registered handlers;
    // the ISB makes pending interrupts be taken here.
    unsafe { asm!("msr daifclr, #2", "isb", options(nostack, preserves_flags)) };
}

/// Masks IRQs (PSTATE.I = 1).
pub fn irq_disable() {
    // SAFETY: masking IRQs only defers interrupts.
    unsafe { asm!("msr daifset, #2", "isb", options(nostack, preserves_flags)) };
}

/// Whether IRQs are masked (PSTATE.I).
pub fn irqs_masked() -> bool {
    let daif: u64;
    // SAFETY: reading DAIF has no side effects.
    unsafe { asm!("mrs {}, daif", out(reg) daif, options(nomem, nostack, preserves_flags)) };
    daif & (1 << 7) != 0
}

/// Waits for an interrupt (WFI); returns after one is taken (IRQs unmasked)
/// or becomes pending (IRQs masked), or spuriously.
pub fn wait_for_interrupt() {
    // SAFETY: WFI only waits.
    unsafe { asm!("dsb sy", "wfi", options(nostack, preserves_flags)) };
}

/// A location of an INTID's bit: the frame base for its 1-bit registers.
fn bit_reg(intid: u32, rd_off: u64, d_off: u64) -> (u64, u32) {
    if intid < SPI_BASE {
        (sgi_base() + rd_off, 1 << intid)
    } else {
        (
            GICD_BASE + d_off + u64::from(intid / 32) * 4,
            1 << (intid % 32),
        )
    }
}

fn check_intid(intid: u32) {
    if intid >= MAX_INTID {
        crate::println!("PANIC: gic: INTID {intid} out of range");
        crate::exit(1);
    }
}

/// Enables `intid` (this vCPU's SGI/PPI, or an SPI).
pub fn enable(intid: u32) {
    check_intid(intid);
    let (reg, bit) = bit_reg(intid, GICR_ISENABLER0, GICD_ISENABLER);
    write32(reg, bit);
}

/// Disables `intid` and waits for RWP.
pub fn disable(intid: u32) {
    check_intid(intid);
    let (reg, bit) = bit_reg(intid, GICR_ICENABLER0, GICD_ICENABLER);
    write32(reg, bit);
    if intid < SPI_BASE {
        wait_bit_clear(rd_base() + GICR_CTLR, GICR_CTLR_RWP, "GICR_CTLR.RWP");
    } else {
        wait_bit_clear(GICD_BASE + GICD_CTLR, GICD_CTLR_RWP, "GICD_CTLR.RWP");
    }
}

/// Whether `intid` is enabled.
pub fn is_enabled(intid: u32) -> bool {
    check_intid(intid);
    let (reg, bit) = bit_reg(intid, GICR_ISENABLER0, GICD_ISENABLER);
    read32(reg) & bit != 0
}

/// Makes `intid` pending (ISPENDR).
pub fn set_pending(intid: u32) {
    check_intid(intid);
    let (reg, bit) = bit_reg(intid, GICR_ISPENDR0, GICD_ISPENDR);
    write32(reg, bit);
}

/// Clears the pending state of `intid` (ICPENDR).
pub fn clear_pending(intid: u32) {
    check_intid(intid);
    let (reg, bit) = bit_reg(intid, GICR_ICPENDR0, GICD_ICPENDR);
    write32(reg, bit);
}

/// Whether `intid` is pending (ISPENDR read).
pub fn is_pending(intid: u32) -> bool {
    check_intid(intid);
    let (reg, bit) = bit_reg(intid, GICR_ISPENDR0, GICD_ISPENDR);
    read32(reg) & bit != 0
}

/// Makes `intid` active (ISACTIVER).
pub fn set_active(intid: u32) {
    check_intid(intid);
    let (reg, bit) = bit_reg(intid, GICR_ISACTIVER0, GICD_ISACTIVER);
    write32(reg, bit);
}

/// Clears the active state of `intid` (ICACTIVER).
pub fn clear_active(intid: u32) {
    check_intid(intid);
    let (reg, bit) = bit_reg(intid, GICR_ICACTIVER0, GICD_ICACTIVER);
    write32(reg, bit);
}

/// Whether `intid` is active (ISACTIVER read).
pub fn is_active(intid: u32) -> bool {
    check_intid(intid);
    let (reg, bit) = bit_reg(intid, GICR_ISACTIVER0, GICD_ISACTIVER);
    read32(reg) & bit != 0
}

fn priority_reg(intid: u32) -> u64 {
    if intid < SPI_BASE {
        sgi_base() + GICR_IPRIORITYR + u64::from(intid)
    } else {
        GICD_BASE + GICD_IPRIORITYR + u64::from(intid)
    }
}

/// Sets the priority of `intid` (lower is more urgent; Vigil implements
/// the top 5 bits, so use multiples of 8).
pub fn set_priority(intid: u32, priority: u8) {
    check_intid(intid);
    write8(priority_reg(intid), priority);
}

/// The priority of `intid` as the GIC keeps it.
pub fn priority(intid: u32) -> u8 {
    check_intid(intid);
    read8(priority_reg(intid))
}

/// How an interrupt is triggered (ICFGR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Level,
    Edge,
}

/// Configures `intid` as level- or edge-triggered (PPIs and SPIs; SGIs
/// are always edge).
pub fn configure(intid: u32, trigger: Trigger) {
    check_intid(intid);
    let reg = if intid < SPI_BASE {
        sgi_base() + GICR_ICFGR0 + u64::from(intid / 16) * 4
    } else {
        GICD_BASE + GICD_ICFGR + u64::from(intid / 16) * 4
    };
    let shift = (intid % 16) * 2;
    let v = read32(reg) & !(0b11 << shift);
    let v = match trigger {
        Trigger::Level => v,
        Trigger::Edge => v | (0b10 << shift),
    };
    write32(reg, v);
}

/// Routes SPI `intid` to the vCPU with this MPIDR affinity (IRM = 0).
pub fn route_spi(intid: u32, mpidr: u64) {
    check_intid(intid);
    if intid < SPI_BASE {
        return;
    }
    let route = mpidr & cpu::MPIDR_AFFINITY_MASK;
    write64(GICD_BASE + GICD_IROUTER + u64::from(intid) * 8, route);
}

/// GICD_IROUTER of SPI `intid`.
pub fn spi_route(intid: u32) -> u64 {
    read64(GICD_BASE + GICD_IROUTER + u64::from(intid) * 8)
}

/// The ICC_SGI1R_EL1 value sending SGI `intid` to the vCPU with affinity
/// `mpidr`.
pub fn sgi1r_for(intid: u32, mpidr: u64) -> u64 {
    let aff0 = mpidr & 0xff;
    let aff1 = (mpidr >> 8) & 0xff;
    let aff2 = (mpidr >> 16) & 0xff;
    let aff3 = (mpidr >> 32) & 0xff;
    (aff3 << 48)
        | ((aff0 / 16) << 44)
        | (aff2 << 32)
        | (u64::from(intid & 0xf) << 24)
        | (aff1 << 16)
        | (1 << (aff0 % 16))
}

/// Writes ICC_SGI1R_EL1 (trapped and emulated under Vigil).
pub fn write_sgi1r(value: u64) {
    sysreg_write!("icc_sgi1r_el1", value);
}

/// Sends SGI `intid` to the vCPU with affinity `mpidr` (possibly this one).
pub fn send_sgi(intid: u32, mpidr: u64) {
    write_sgi1r(sgi1r_for(intid, mpidr));
}

/// Sends SGI `intid` to every vCPU but this one (IRM = 1).
pub fn send_sgi_to_others(intid: u32) {
    write_sgi1r((1 << 40) | (u64::from(intid & 0xf) << 24));
}

/// Whether the distributor supports LPIs (`GICD_TYPER.LPIS`).
pub fn lpis_supported() -> bool {
    gicd_typer() & GICD_TYPER_LPIS != 0
}

/// Number of INTID bits the GIC supports (`GICD_TYPER.IDbits` + 1):
/// LPIs are `LPI_BASE..1 << lpi_id_bits()`.
pub fn lpi_id_bits() -> u32 {
    ((gicd_typer() >> 19) & 0x1f) + 1
}

/// `GICR_TYPER` of this vCPU's redistributor.
pub fn gicr_typer() -> u64 {
    read64(rd_base() + GICR_TYPER)
}

/// `GICR_TYPER` of the redistributor at `rd` (an RD_base).
pub fn gicr_typer_at(rd: u64) -> u64 {
    read64(rd + GICR_TYPER)
}

/// Whether this vCPU's redistributor implements physical LPIs
/// (`GICR_TYPER.PLPIS`).
pub fn redistributor_has_lpis() -> bool {
    gicr_typer() & GICR_TYPER_PLPIS != 0
}

/// Writes this redistributor's `GICR_PROPBASER` (before [`enable_lpis`]).
pub fn set_propbaser(v: u64) {
    write64(rd_base() + GICR_PROPBASER, v);
}

/// This redistributor's `GICR_PROPBASER`.
pub fn propbaser() -> u64 {
    read64(rd_base() + GICR_PROPBASER)
}

/// Writes this redistributor's `GICR_PENDBASER` (before [`enable_lpis`]).
pub fn set_pendbaser(v: u64) {
    write64(rd_base() + GICR_PENDBASER, v);
}

/// This redistributor's `GICR_PENDBASER`.
pub fn pendbaser() -> u64 {
    read64(rd_base() + GICR_PENDBASER)
}

/// Sets `GICR_CTLR.EnableLPIs` on this vCPU's redistributor; returns
/// whether it reads back set.
pub fn enable_lpis() -> bool {
    let ctlr = rd_base() + GICR_CTLR;
    write32(ctlr, read32(ctlr) | GICR_CTLR_ENABLE_LPIS);
    lpis_enabled()
}

/// Whether `GICR_CTLR.EnableLPIs` is set on this vCPU's redistributor.
pub fn lpis_enabled() -> bool {
    read32(rd_base() + GICR_CTLR) & GICR_CTLR_ENABLE_LPIS != 0
}

/// An interrupt handler: gets the INTID it was taken for.
pub type Handler = fn(u32);

static HANDLERS: [AtomicUsize; MAX_INTID as usize] =
    [const { AtomicUsize::new(0) }; MAX_INTID as usize];
static LPI_HANDLER: AtomicUsize = AtomicUsize::new(0);
static EOI_SPLIT: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static LEAVE_ACTIVE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static TAKEN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Registers the handler of `intid` (for every vCPU).
pub fn set_handler(intid: u32, handler: Handler) {
    check_intid(intid);
    HANDLERS[intid as usize].store(handler as usize, Ordering::Release);
}

/// Registers the handler of every LPI (INTID [`LPI_BASE`] and up, on every
/// vCPU). Without one, an LPI is fatal like any unexpected interrupt.
pub fn set_lpi_handler(handler: Handler) {
    LPI_HANDLER.store(handler as usize, Ordering::Release);
}

/// Removes the handler of `intid`: it becomes fatal again.
pub fn clear_handler(intid: u32) {
    check_intid(intid);
    HANDLERS[intid as usize].store(0, Ordering::Release);
}

/// Called from a handler with EOImode 1: write only ICC_EOIR1_EL1 (priority
/// drop) for this interrupt and leave it active.
pub fn leave_active() {
    LEAVE_ACTIVE[cpu::index() % MAX_CPUS].store(true, Ordering::Relaxed);
}

/// Deactivates `intid` through ICC_DIR_EL1 (EOImode 1).
pub fn deactivate(intid: u32) {
    sysreg_write!("icc_dir_el1", u64::from(intid));
}

/// How many interrupts (not spurious) this vCPU acknowledged.
pub fn taken_count() -> u64 {
    TAKEN[cpu::index() % MAX_CPUS].load(Ordering::Relaxed)
}

/// The IRQ path, called by the vectors: acknowledge, call the handler, EOI
/// (and DIR in EOImode 1).
pub(crate) fn dispatch() {
    let me = cpu::index() % MAX_CPUS;
    let iar: u64;
    // SAFETY: acknowledging the interrupt this IRQ exception was taken
    // for; it is completed below.
    unsafe { asm!("mrs {}, icc_iar1_el1", out(reg) iar, options(nostack, preserves_flags)) };
    let intid = (iar & 0xff_ffff) as u32;
    if (MAX_INTID..LPI_BASE).contains(&intid) {
        // Spurious (1023) or special: nothing to complete.
        return;
    }
    TAKEN[me].fetch_add(1, Ordering::Relaxed);
    let handler = if intid >= LPI_BASE {
        LPI_HANDLER.load(Ordering::Acquire)
    } else {
        HANDLERS[intid as usize].load(Ordering::Acquire)
    };
    if handler == 0 {
        crate::println!(
            "PANIC: unexpected interrupt INTID {intid} on cpu {}",
            cpu::index()
        );
        crate::exit(1);
    }
    // SAFETY: the only non-zero values stored (in HANDLERS and LPI_HANDLER) are
    // `Handler`s cast to usize in `set_handler` and `set_lpi_handler`.
    let handler = unsafe { core::mem::transmute::<usize, Handler>(handler) };
    LEAVE_ACTIVE[me].store(false, Ordering::Relaxed);
    handler(intid);
    sysreg_write!("icc_eoir1_el1", iar);
    if EOI_SPLIT[me].load(Ordering::Relaxed) && !LEAVE_ACTIVE[me].swap(false, Ordering::Relaxed) {
        sysreg_write!("icc_dir_el1", iar);
    }
}
