//! The physical GICv3: distributor, one redistributor per CPU, the CPU
//! interface (ICC_* system registers), LPIs and the ITS.
//!
//! Physical interrupts are taken at EL2 (HCR_EL2.IMO/FMO) and dispatched
//! to handlers registered per INTID; all host LPIs go to one LPI hook. All
//! interrupts are Group 1 (with one security state, DS == 1, as QEMU `virt`
//! without EL3 has).

pub mod its;
pub mod vpe;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use spin::Once;
use tock_registers::interfaces::{Readable, Writeable};
use vigil_gic::redist::{self, Redist};
use vigil_gic::regs::{self, gicd_ctlr, gicr, GicdRegs, GicrRegs, Shareability};
use vigil_gic::{IntId, LPI_BASE, SPURIOUS};
use vigil_platform::{CpuList, GicInfo, MAX_CPUS};

use crate::arch::{self, sysreg};
use crate::regblock::RegBlock;

/// Default priority of host interrupts (lower is more urgent).
pub const DEFAULT_PRIORITY: u8 = 0xa0;

/// An interrupt handler, called with the INTID with the interrupt active.
pub type Handler = fn(intid: u32);

/// Handlers for SGIs, PPIs and SPIs (INTID < 1020), as `fn` addresses.
static HANDLERS: [AtomicUsize; 1020] = [const { AtomicUsize::new(0) }; 1020];
/// The hook every host LPI goes to.
static LPI_HANDLER: AtomicUsize = AtomicUsize::new(0);
/// SGIs/PPIs whose handler hands the still-active physical interrupt to a
/// guest (a hardware-linked list register deactivates it).
static KEEP_ACTIVE: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

struct Gic {
    info: GicInfo,
    /// LPI INTID bits (from GICD_TYPER.IDbits, at most 16).
    lpi_id_bits: u32,
    /// LPI configuration table (shared by all redistributors).
    prop_table: u64,
    /// Whether the redistributors see the tables through the caches; if
    /// not, every table write is cleaned to the point of coherency.
    prop_needs_clean: core::sync::atomic::AtomicBool,
}

static GIC: Once<Gic> = Once::new();

/// Every CPU's redistributor can host GICv4 vPEs (GICR_TYPER.VLPIS).
static VLPIS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// Per CPU: its redistributor's address, processor number and LPI pending
/// table. Small atomics in arrays sized by the compile-time cap (4 KiB
/// each at 512 CPUs), read on interrupt paths without a lock.
static GICR_OF_CPU: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static PROC_NUM_OF_CPU: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static PEND_OF_CPU: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

#[derive(Debug)]
pub enum GicError {
    NotGicV3(u32),
    NoRedistributor(u64),
    Timeout(&'static str),
    NoLpis,
    Memory(vigil_mm::FrameError),
}

impl core::fmt::Display for GicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotGicV3(pidr2) => write!(f, "GICD_PIDR2 {pidr2:#x}: not a GICv3/v4"),
            Self::NoRedistributor(mpidr) => {
                write!(f, "no redistributor has the affinity of MPIDR {mpidr:#x}")
            }
            Self::Timeout(what) => write!(f, "timed out waiting for {what}"),
            Self::NoLpis => write!(f, "the GIC does not support LPIs"),
            Self::Memory(e) => write!(f, "allocating GIC tables: {e}"),
        }
    }
}

fn gic() -> &'static Gic {
    GIC.get().expect("GIC used before gic::init")
}

/// The register block of type `T` at `addr`.
///
/// # Safety
/// `addr` must be the base of a `T` block of this GIC (the distributor, or
/// a redistributor found in the device tree's GICR range), mapped
/// Device-nGnRE for the hypervisor's lifetime; `T` is a tock-registers
/// struct, accessed only through its volatile accessors.
unsafe fn mmio<T>(addr: u64) -> &'static T {
    // SAFETY: the caller's contract.
    unsafe { &*(addr as *const T) }
}

fn wait_gicd_rwp(gicd: &GicdRegs) -> Result<(), GicError> {
    if arch::wait_until(100, || gicd.ctlr.get() & gicd_ctlr::RWP == 0) {
        Ok(())
    } else {
        Err(GicError::Timeout("GICD_CTLR.RWP"))
    }
}

/// Bring up the distributor and the LPI configuration table. Primary CPU,
/// once, before any [`init_cpu`].
pub fn init(info: GicInfo, cpus: &CpuList) -> Result<(), GicError> {
    // SAFETY: the distributor frame from the device tree, mapped as
    // device memory for the hypervisor's lifetime.
    let gicd = unsafe { RegBlock::<GicdRegs>::new(info.gicd.base) };
    let arch_rev = (gicd.pidr2.get() >> 4) & 0xf;
    if arch_rev != 3 && arch_rev != 4 {
        return Err(GicError::NotGicV3(gicd.pidr2.get()));
    }
    // Disable, then configure every SPI as Group 1, level, lowest-but-one
    // priority, disabled, routed to CPU 0.
    gicd.ctlr.set(0);
    wait_gicd_rwp(&gicd)?;
    let typer = gicd.typer.get();
    let lines = ((typer & 0x1f) + 1) * 32;
    for i in 1..(lines / 32) as usize {
        gicd.icenabler[i].set(u32::MAX);
        gicd.icpendr[i].set(u32::MAX);
        gicd.icactiver[i].set(u32::MAX);
        gicd.igroupr[i].set(u32::MAX);
    }
    for i in 32..lines.min(1020) as usize {
        gicd.ipriorityr[i].set(DEFAULT_PRIORITY);
        gicd.irouter[i].set(0);
    }
    for i in 2..(lines / 16) as usize {
        gicd.icfgr[i].set(0);
    }
    wait_gicd_rwp(&gicd)?;
    // ARE plus both group enables: with DS == 1 bit 1 enables Group 1;
    // seen from Non-secure with DS == 0 bits 0/1 are Group 1 / Group 1A,
    // so this value works either way (IHI 0069 §12.9.4).
    gicd.ctlr
        .set(gicd_ctlr::ARE | gicd_ctlr::ENABLE_GRP1 | gicd_ctlr::ENABLE_GRP0);
    wait_gicd_rwp(&gicd)?;

    // Every CPU's redistributor, found now so that ITS collections can
    // name CPUs that are not up yet: one walk over every region, then a
    // binary search per CPU (not a walk per CPU: n^2 register reads).
    let redists = redistributors(&info);
    let mut vlpis = true;
    for (cpu, &mpidr) in cpus.as_slice().iter().enumerate() {
        let r = redist::find(&redists, mpidr).ok_or(GicError::NoRedistributor(mpidr))?;
        GICR_OF_CPU[cpu].store(r.addr, Ordering::Relaxed);
        PROC_NUM_OF_CPU[cpu].store(r.processor, Ordering::Relaxed);
        vlpis &= r.vlpis;
    }
    VLPIS.store(vlpis, Ordering::Relaxed);

    // LPIs: one configuration table for all redistributors.
    if typer & (1 << 17) == 0 {
        return Err(GicError::NoLpis);
    }
    let lpi_id_bits = (((typer >> 19) & 0x1f) + 1).min(16);
    let prop_size = (1u64 << lpi_id_bits) - LPI_BASE as u64;
    let prop_table =
        crate::mm::alloc_frames(prop_size.div_ceil(4096), 65536).map_err(GicError::Memory)?;
    // Every LPI starts disabled, default priority (RES1 bit 1 set).
    // SAFETY: the frames were just allocated for this table.
    unsafe {
        core::ptr::write_bytes(
            prop_table as *mut u8,
            regs::lpi_config(DEFAULT_PRIORITY, false),
            prop_size as usize,
        )
    };
    crate::arch::mmu::clean_to_poc(prop_table, prop_size as usize);
    alloc_pending_tables(cpus.len(), lpi_id_bits)?;
    GIC.call_once(|| Gic {
        info,
        lpi_id_bits,
        prop_table,
        prop_needs_clean: core::sync::atomic::AtomicBool::new(false),
    });
    log::info!(
        "GIC: GICv{arch_rev}, {lines} interrupt lines, LPIs with {lpi_id_bits} ID bits, distributor at {:#x}, {} redistributors in {} regions",
        info.gicd.base,
        redists.len(),
        info.redistributor_regions().len()
    );
    Ok(())
}

/// Every redistributor of every region, sorted by affinity.
fn redistributors(info: &GicInfo) -> Vec<Redist> {
    let regions: Vec<(u64, u64)> = info
        .redistributor_regions()
        .iter()
        .map(|r| (r.base, r.size))
        .collect();
    let mut found = Vec::new();
    redist::scan(
        &regions,
        info.gicr_stride,
        // SAFETY: `scan` reads only frames inside the device tree's
        // redistributor regions, mapped as device memory.
        |addr| unsafe { mmio::<GicrRegs>(addr) }.typer.get(),
        |r| {
            found.push(r);
            true
        },
    );
    redist::sort(&mut found);
    found
}

/// One LPI pending table per CPU (GICR_PENDBASER: 64 KiB aligned), zeroed:
/// taken as one block of 64 KiB slots, the unused tail of each slot given
/// back, so that n CPUs cost one search of the frame allocator, not n.
fn alloc_pending_tables(cpus: usize, lpi_id_bits: u32) -> Result<(), GicError> {
    const ALIGN: u64 = 65536;
    let size = (1u64 << lpi_id_bits) / 8;
    let frames = size.div_ceil(4096);
    let slot = (frames * 4096).next_multiple_of(ALIGN);
    let base = crate::mm::alloc_frames_uncleared(cpus as u64 * slot / 4096, ALIGN)
        .map_err(GicError::Memory)?;
    for (cpu, pend) in PEND_OF_CPU.iter().enumerate().take(cpus) {
        let table = base + cpu as u64 * slot;
        if slot > frames * 4096 {
            crate::mm::free_frames(table + frames * 4096, slot / 4096 - frames)
                .map_err(GicError::Memory)?;
        }
        // SAFETY: the table's frames were just allocated for it alone.
        unsafe { core::ptr::write_bytes(table as *mut u8, 0, size as usize) };
        crate::arch::mmu::clean_to_poc(table, size as usize);
        pend.store(table, Ordering::Relaxed);
    }
    Ok(())
}

/// Whether every CPU's redistributor has GICv4's virtual-LPI frames.
pub fn vlpis() -> bool {
    VLPIS.load(Ordering::Relaxed)
}

/// Number of host LPIs (INTIDs from 8192).
pub fn lpi_count() -> u32 {
    (1u32 << gic().lpi_id_bits) - LPI_BASE
}

/// This CPU's redistributor.
fn gicr_this() -> &'static GicrRegs {
    // SAFETY: `init` stored each CPU's redistributor base, found in the
    // device tree's GICR range, before any CPU calls this.
    unsafe { mmio(GICR_OF_CPU[arch::cpu_index()].load(Ordering::Relaxed)) }
}

/// Physical address of CPU `cpu`'s redistributor.
pub fn gicr_addr(cpu: usize) -> u64 {
    GICR_OF_CPU[cpu].load(Ordering::Relaxed)
}

/// GICR_TYPER.Processor_Number of CPU `cpu`'s redistributor.
pub fn processor_number(cpu: usize) -> u64 {
    PROC_NUM_OF_CPU[cpu].load(Ordering::Relaxed)
}

/// Bring up this CPU's redistributor, LPIs and CPU interface, and route
/// physical interrupts to EL2. Every CPU, after [`init`].
pub fn init_cpu() -> Result<(), GicError> {
    let g = gic();
    let mpidr = arch::mpidr();
    let cpu = arch::cpu_index();
    // The one `init` found for this CPU's device-tree affinity: it must be
    // this CPU's own.
    let addr = GICR_OF_CPU[cpu].load(Ordering::Relaxed);
    if addr == 0 {
        return Err(GicError::NoRedistributor(mpidr));
    }
    // SAFETY: `init` found `addr` in the device tree's redistributor
    // regions.
    let r: &GicrRegs = unsafe { mmio(addr) };
    if gicr::typer_affinity(r.typer.get()) != mpidr & vigil_platform::MPIDR_AFFINITY_MASK {
        return Err(GicError::NoRedistributor(mpidr));
    }

    // Wake the redistributor (IHI 0069 §11.1, "Power management").
    r.waker.set(r.waker.get() & !gicr::WAKER_PROCESSOR_SLEEP);
    if !arch::wait_until(100, || r.waker.get() & gicr::WAKER_CHILDREN_ASLEEP == 0) {
        return Err(GicError::Timeout("GICR_WAKER.ChildrenAsleep"));
    }
    // SGIs and PPIs: Group 1, disabled, not pending, default priority.
    r.icenabler0.set(u32::MAX);
    r.icpendr0.set(u32::MAX);
    r.icactiver0.set(u32::MAX);
    r.igroupr0.set(u32::MAX);
    for p in r.ipriorityr.iter() {
        p.set(DEFAULT_PRIORITY);
    }
    // SGIs are the hypervisor's own IPIs: always enabled; a handler
    // decides what each means.
    r.isenabler0.set(0xffff);
    if !arch::wait_until(100, || r.ctlr.get() & gicr::CTLR_RWP == 0) {
        return Err(GicError::Timeout("GICR_CTLR.RWP"));
    }

    // LPIs: shared configuration table, a pending table of our own.
    let share = Shareability::InnerShareable;
    r.propbaser.set(regs::propbaser(
        g.prop_table,
        g.lpi_id_bits,
        share,
        regs::CACHE_RAWAWB,
    ));
    if regs::table_shareability(r.propbaser.get()) == Shareability::NonShareable {
        // The redistributor reads the table without snooping our caches.
        g.prop_needs_clean.store(true, Ordering::Relaxed);
    }
    let pend = PEND_OF_CPU[cpu].load(Ordering::Relaxed);
    r.pendbaser
        .set(regs::pendbaser(pend, true, share, regs::CACHE_RAWAWB));
    r.ctlr.set(r.ctlr.get() | gicr::CTLR_ENABLE_LPIS);

    // CPU interface: system-register access (and allow it at EL1), all
    // priorities unmasked. EOImode 1: EOIR only drops the priority and
    // DIR deactivates, so an interrupt can be handed to a guest still
    // active (IHI 0069 §4.1.1, "Interrupt lifecycle"; the virtual timer).
    sysreg::set_icc_sre_el2(0xf);
    sysreg::isb();
    sysreg::set_icc_pmr_el1(0xff);
    sysreg::set_icc_bpr1_el1(0);
    sysreg::set_icc_ctlr_el1(sysreg::icc_ctlr_el1() | (1 << 1));
    sysreg::set_icc_igrpen1_el1(1);
    sysreg::isb();

    // Physical IRQs and FIQs are taken to EL2 (and SErrors), AArch64 EL1.
    const HCR_RW: u64 = 1 << 31;
    const HCR_AMO: u64 = 1 << 5;
    const HCR_IMO: u64 = 1 << 4;
    const HCR_FMO: u64 = 1 << 3;
    // SAFETY: adds routing of physical interrupts to EL2 and AArch64 EL1
    // to what is there; stage 2 is not touched and no guest runs yet.
    unsafe { sysreg::set_hcr_el2(sysreg::hcr_el2() | HCR_RW | HCR_AMO | HCR_IMO | HCR_FMO) };
    sysreg::isb();
    Ok(())
}

/// Register `handler` for an SGI, PPI or SPI.
pub fn register(intid: u32, handler: Handler) {
    HANDLERS[intid as usize].store(handler as usize, Ordering::Release);
}

/// The physical `intid` (an SGI or PPI) is handed to guests still active:
/// do not deactivate it after its handler.
pub fn keep_active(intid: u32) {
    KEEP_ACTIVE.fetch_or(1 << intid, Ordering::Relaxed);
}

/// Deactivate physical interrupt `intid` on this CPU.
pub fn deactivate(intid: u32) {
    sysreg::set_icc_dir_el1(intid as u64);
    sysreg::isb();
}

/// Called around every acknowledgement (see [`set_ack_hooks`]).
#[derive(Clone, Copy)]
pub struct AckHooks {
    /// Before ICC_IAR1_EL1 is read, on CPU `cpu`.
    pub begin: fn(cpu: usize),
    /// Once the read returned.
    pub end_window: fn(cpu: usize),
    /// Once the interrupt's handler returned (or the read was spurious).
    pub end: fn(cpu: usize),
}

static ACK_HOOKS: Once<AckHooks> = Once::new();

/// Observe every acknowledgement: the host-LPI routes publish an epoch
/// before it (a block of host LPIs is never reused, nor a route re-armed,
/// under a CPU that may already hold one of its LPIs). Once.
pub fn set_ack_hooks(hooks: AckHooks) {
    ACK_HOOKS.call_once(|| hooks);
}

/// Send every host LPI to `handler`.
pub fn set_lpi_handler(handler: Handler) {
    LPI_HANDLER.store(handler as usize, Ordering::Release);
}

/// Enable an SGI or PPI on this CPU.
pub fn enable_local(intid: u32) {
    debug_assert!(IntId::new(intid).is_private());
    gicr_this().isenabler0.set(1 << intid);
}

/// Make SPI `intid` edge-triggered (GICD_ICFGR<n>, two bits per INTID,
/// bit 1 of each pair: IHI 0069 §12.9.9), for devices that pulse their
/// line (QEMU's SMMUv3).
pub fn set_spi_edge(intid: u32) {
    // SAFETY: the distributor's base from the device tree, mapped as
    // device memory by the MMU setup.
    let d = unsafe { mmio::<GicdRegs>(gic().info.gicd.base) };
    let (reg, bit) = ((intid / 16) as usize, 2 * (intid % 16) + 1);
    d.icfgr[reg].set(d.icfgr[reg].get() | (1 << bit));
}

/// Enable an SPI, routed to the CPU with affinity `mpidr`.
pub fn enable_spi(intid: u32, mpidr: u64) {
    // SAFETY: the distributor's base from the device tree, mapped as
    // device memory by the MMU setup.
    let d = unsafe { mmio::<GicdRegs>(gic().info.gicd.base) };
    d.irouter[intid as usize].set(mpidr & vigil_platform::MPIDR_AFFINITY_MASK);
    d.isenabler[(intid / 32) as usize].set(1 << (intid % 32));
}

/// Set an LPI's priority and enable bit in the configuration table. The
/// ITS (or redistributor) sees it after an INV/INVALL/SYNC.
pub fn set_lpi_config(intid: u32, priority: u8, enabled: bool) {
    let g = gic();
    let Some(off) = IntId::new(intid).lpi_index() else {
        log::error!("gic: set_lpi_config of INTID {intid}, not an LPI");
        return;
    };
    let at = g.prop_table + u64::from(off);
    // SAFETY: `intid` is an LPI below 2^lpi_id_bits, so `at` is inside the
    // configuration table, which belongs to the GIC driver.
    unsafe { core::ptr::write_volatile(at as *mut u8, regs::lpi_config(priority, enabled)) };
    if g.prop_needs_clean.load(Ordering::Relaxed) {
        crate::arch::mmu::clean_to_poc(at, 1);
    } else {
        // SAFETY: a barrier only orders memory accesses.
        unsafe { core::arch::asm!("dsb ishst", options(nostack)) };
    }
}

/// Send SGI `intid` to the CPU with index `cpu`.
pub fn send_sgi(intid: u8, cpu: usize) {
    let sgi1r = crate::percpu::get(cpu).sgi1r(intid);
    // SAFETY: a barrier only orders memory accesses: make prior writes
    // visible to the target before the SGI.
    unsafe { core::arch::asm!("dsb ishst", options(nostack)) };
    sysreg::set_icc_sgi1r_el1(sgi1r);
    sysreg::isb();
}

/// Send SGI `intid` to each CPU (by index) of `cpus`: one ICC_SGI1R_EL1
/// write per target cluster, whatever the number of CPUs in it. Returns
/// the number of writes.
pub fn send_sgi_to(intid: u8, cpus: impl IntoIterator<Item = usize>) -> usize {
    // SAFETY: a barrier only orders memory accesses: make prior writes
    // visible to the targets before the SGI.
    unsafe { core::arch::asm!("dsb ishst", options(nostack)) };
    let mpidrs = cpus
        .into_iter()
        .map(|c| crate::percpu::get(c).mpidr.load(Ordering::Relaxed));
    let n = vigil_gic::sgi::to_cpus(intid, mpidrs, sysreg::set_icc_sgi1r_el1);
    sysreg::isb();
    n
}

/// Send SGI `intid` to every CPU but this one.
pub fn broadcast_sgi(intid: u8) {
    // SAFETY: a barrier only orders memory accesses.
    unsafe { core::arch::asm!("dsb ishst", options(nostack)) };
    sysreg::set_icc_sgi1r_el1(vigil_gic::sgi::to_all_but_self(intid));
    sysreg::isb();
}

/// Take and handle every pending interrupt. Called from the IRQ vector.
pub fn handle_irq() {
    let hooks = ACK_HOOKS.get().copied();
    let cpu = arch::cpu_index();
    loop {
        if let Some(h) = hooks {
            (h.begin)(cpu);
            // The epoch is visible to every CPU before the read below.
            // SAFETY: a barrier only orders memory accesses.
            unsafe { core::arch::asm!("dsb ish", options(nostack)) };
        }
        let intid = (sysreg::icc_iar1_el1() & 0xff_ffff) as u32;
        if let Some(h) = hooks {
            sysreg::isb();
            (h.end_window)(cpu);
        }
        if intid == SPURIOUS {
            if let Some(h) = hooks {
                (h.end)(cpu);
            }
            return;
        }
        let id = IntId::new(intid);
        let h = if id.is_lpi() {
            LPI_HANDLER.load(Ordering::Acquire)
        } else if (intid as usize) < HANDLERS.len() {
            HANDLERS[intid as usize].load(Ordering::Acquire)
        } else {
            0
        };
        if h == 0 {
            log::warn!("unhandled physical interrupt {intid}");
        } else {
            // SAFETY: only `fn(u32)` values are stored in the tables.
            let f: Handler = unsafe { core::mem::transmute::<usize, Handler>(h) };
            f(intid);
        }
        if let Some(h) = hooks {
            (h.end)(cpu);
        }
        sysreg::set_icc_eoir1_el1(intid as u64);
        // LPIs have no active state; forwarded interrupts are deactivated
        // by the guest.
        if id.is_private() && KEEP_ACTIVE.load(Ordering::Relaxed) & (1 << intid) != 0 {
            continue;
        }
        if !id.is_lpi() {
            sysreg::set_icc_dir_el1(intid as u64);
        }
    }
}
