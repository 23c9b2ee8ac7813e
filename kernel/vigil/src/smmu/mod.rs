//! The physical SMMUv3 (IHI 0070): Vigil owns it, no guest sees it (it is
//! in no VM's device tree and no VM's stage 2). Devices passed through to
//! a VM translate at stage 2 through tables that map that VM's RAM and
//! nothing else, plus the ITS doorbell their MSIs need; every other stream
//! aborts (an invalid STE: C_BAD_STE is recorded). Faults arrive in the
//! event queue, drained on its interrupt and logged with the StreamID, the
//! address and the VM, rate-limited.
//!
//! One linear stream table of 2^SIDSIZE entries (at most 2^16), a command
//! queue of 256 entries whose every batch ends in a CMD_SYNC waited for
//! with a time bound, and an event queue of 256 entries. Lock order: the
//! command queue lock only (the event queue is drained with no lock but
//! its own, from its interrupt).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::{Mutex, Once};
use vigil_platform::SmmuInfo;
use vigil_smmu::event::Event;
use vigil_smmu::regs::*;
use vigil_smmu::{Cmd, Queue, S2Config, Ste};

use crate::arch;
use crate::gic;

const CMDQ_LOG2: u32 = 8;
const EVTQ_LOG2: u32 = 8;
const STE_BYTES: u64 = 64;
/// How long a CMD_SYNC or a CR0 update may take.
const TIMEOUT_MS: u64 = 100;

/// Why the SMMU could not be used.
#[derive(Debug)]
pub enum SmmuError {
    NoStage2,
    Memory(vigil_mm::FrameError),
    Timeout(&'static str),
    /// The command queue stopped at a command (CMDQ_CONS.ERR).
    Command(u32),
    /// IDR1 allows smaller queues than this driver uses.
    QueuesTooSmall,
    /// A VM's memory ends above the IPA size the SMMU translates.
    IpaTooLarge(u64),
}

impl core::fmt::Display for SmmuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoStage2 => write!(
                f,
                "the SMMU has no stage-2 translation (QEMU: -global arm-smmuv3.stage=2)"
            ),
            Self::Memory(e) => write!(f, "SMMU tables: {e}"),
            Self::Timeout(what) => write!(f, "SMMU {what} did not complete within {TIMEOUT_MS} ms"),
            Self::Command(e) => write!(f, "SMMU command queue error {e:#x}"),
            Self::QueuesTooSmall => write!(f, "SMMU queues smaller than 256 entries"),
            Self::IpaTooLarge(end) => write!(
                f,
                "guest memory up to {end:#x} is beyond the IPA size the SMMU translates"
            ),
        }
    }
}

/// A fault burst: StreamID, page, read.
type Burst = (u32, u64, bool);

struct CmdQ {
    base: u64,
    prod: u32,
}

pub struct Smmu {
    regs: u64,
    strtab: u64,
    sids: u32,
    /// Input-address bits a stage-2 STE may ask for (64 - S2T0SZ), from
    /// the output size the SMMU implements.
    ias: u32,
    cmdq: Mutex<CmdQ>,
    evtq: u64,
    /// The event queue's consumer index, and the last fault logged
    /// (StreamID, page, read) so a burst on one page is one line.
    evtq_cons: Mutex<(u32, Option<Burst>)>,
    /// StreamID -> VM id + 1 (0: none), for the fault log.
    owners: Vec<AtomicU64>,
}

static SMMU: Once<Smmu> = Once::new();

/// Events taken so far.
pub static FAULTS: AtomicU64 = AtomicU64::new(0);
/// Fault lines logged (bursts).
static LOGGED: AtomicU64 = AtomicU64::new(0);

pub fn get() -> Option<&'static Smmu> {
    SMMU.get()
}

impl Smmu {
    fn r32(&self, off: u64) -> u32 {
        // SAFETY: `regs` is the SMMU's register frame from the device tree,
        // mapped as device memory (the low device space).
        unsafe { core::ptr::read_volatile((self.regs + off) as *const u32) }
    }

    fn w32(&self, off: u64, v: u32) {
        // SAFETY: as in `r32`.
        unsafe { core::ptr::write_volatile((self.regs + off) as *mut u32, v) }
    }

    fn w64(&self, off: u64, v: u64) {
        // SAFETY: as in `r32`; the 64-bit base registers take 64-bit
        // accesses.
        unsafe { core::ptr::write_volatile((self.regs + off) as *mut u64, v) }
    }

    fn write_cr0(&self, v: u32) -> Result<(), SmmuError> {
        self.w32(CR0, v);
        if arch::wait_until(TIMEOUT_MS, || self.r32(CR0ACK) == v) {
            Ok(())
        } else {
            Err(SmmuError::Timeout("CR0 update"))
        }
    }

    /// Queue `cmds` and a CMD_SYNC, and wait (bounded) until the SMMU has
    /// consumed them all.
    pub fn run(&self, cmds: &[Cmd]) -> Result<(), SmmuError> {
        let q = Queue::new(CMDQ_LOG2);
        let mut cq = self.cmdq.lock();
        for c in cmds.iter().chain(core::iter::once(&Cmd::sync())) {
            if !arch::wait_until(TIMEOUT_MS, || !q.is_full(cq.prod, self.r32(CMDQ_CONS))) {
                return Err(SmmuError::Timeout("command queue"));
            }
            let at = cq.base + u64::from(q.index(cq.prod)) * 16;
            // SAFETY: a free slot of the command queue, which this driver
            // owns; the SMMU reads it only once PROD moves past it.
            unsafe {
                core::ptr::write_volatile(at as *mut u64, c.0[0]);
                core::ptr::write_volatile((at + 8) as *mut u64, c.0[1]);
            }
            cq.prod = q.next(cq.prod);
        }
        // SAFETY: a barrier only orders memory accesses: the commands
        // before the PROD write that publishes them.
        unsafe { core::arch::asm!("dsb ishst", options(nostack)) };
        self.w32(CMDQ_PROD, cq.prod);
        let prod = cq.prod;
        let done = arch::wait_until(TIMEOUT_MS, || {
            let cons = self.r32(CMDQ_CONS);
            cmdq_cons_err(cons) != 0 || q.is_empty(prod, cons)
        });
        let cons = self.r32(CMDQ_CONS);
        if cmdq_cons_err(cons) != 0 || self.r32(GERROR) & GERROR_CMDQ_ERR != 0 {
            return Err(SmmuError::Command(cmdq_cons_err(cons)));
        }
        if !done {
            return Err(SmmuError::Timeout("CMD_SYNC"));
        }
        Ok(())
    }

    fn write_ste(&self, sid: u32, ste: &Ste) {
        let at = self.strtab + u64::from(sid) * STE_BYTES;
        // Doubleword 0 (V) last on the way in, first on the way out, so
        // the SMMU never fetches a half-written valid entry (IHI 0070
        // §3.21.2.1; CFGI_STE follows).
        // SAFETY: `sid` is below the table's size (checked by callers);
        // the table is this driver's memory.
        unsafe {
            core::ptr::write_volatile(at as *mut u64, 0);
            for i in 1..8 {
                core::ptr::write_volatile((at + 8 * i as u64) as *mut u64, ste.0[i]);
            }
            core::arch::asm!("dsb ishst", options(nostack));
            core::ptr::write_volatile(at as *mut u64, ste.0[0]);
        }
    }

    /// The stage-2 shape this SMMU accepts for tables built like the
    /// CPU's (4 KiB granule, walk from level 0): the IPA size is capped by
    /// its output size, so every IPA Vigil maps must be below 2^ias.
    pub fn ias(&self) -> u32 {
        self.ias
    }

    /// Give StreamIDs `sids` to VM `vm` (id), translated by the stage-2
    /// tables at `ttb` under `vmid`.
    pub fn assign(
        &self,
        sids: core::ops::Range<u32>,
        vm: usize,
        vmid: u16,
        ttb: u64,
    ) -> Result<(), SmmuError> {
        let ste = Ste::s2(&S2Config {
            vmid,
            ttb,
            t0sz: (64 - self.ias) as u8,
            sl0: 2,
            ps: ps_of(self.ias),
        });
        let sids = sids.start.min(self.sids)..sids.end.min(self.sids);
        for sid in sids.clone() {
            self.owners[sid as usize].store(vm as u64 + 1, Ordering::Relaxed);
            self.write_ste(sid, &ste);
        }
        self.invalidate(sids, vmid)
    }

    /// Take StreamIDs back from VM `vmid` (it stopped): their transactions
    /// abort again, and nothing of its translations stays cached.
    pub fn unassign(&self, sids: core::ops::Range<u32>, vmid: u16) -> Result<(), SmmuError> {
        let sids = sids.start.min(self.sids)..sids.end.min(self.sids);
        for sid in sids.clone() {
            self.write_ste(sid, &Ste::invalid());
        }
        self.invalidate(sids, vmid)
    }

    fn invalidate(&self, sids: core::ops::Range<u32>, vmid: u16) -> Result<(), SmmuError> {
        if sids.len() > 64 {
            self.run(&[Cmd::cfgi_all(), Cmd::tlbi_s12_vmall(vmid)])
        } else {
            let mut cmds: Vec<Cmd> = sids.map(Cmd::cfgi_ste).collect();
            cmds.push(Cmd::tlbi_s12_vmall(vmid));
            self.run(&cmds)
        }
    }

    /// Drain the event queue, logging each fault with its stream's VM:
    /// one line per burst on one page (QEMU faults each beat of a
    /// transfer), every fault counted, and beyond 256 lines only every
    /// power of two.
    pub fn drain_events(&self) {
        let q = Queue::new(EVTQ_LOG2);
        let mut guard = self.evtq_cons.lock();
        let (cons, last) = &mut *guard;
        loop {
            let prod = self.r32(EVENTQ_PROD);
            if q.is_empty(prod, *cons) {
                break;
            }
            let at = self.evtq + u64::from(q.index(*cons)) * 32;
            let mut rec = [0u64; 4];
            for (i, w) in rec.iter_mut().enumerate() {
                // SAFETY: an entry the SMMU wrote (between CONS and PROD)
                // of the event queue this driver allocated.
                *w = unsafe { core::ptr::read_volatile((at + 8 * i as u64) as *const u64) };
            }
            *cons = q.next(*cons);
            self.w32(EVENTQ_CONS, *cons);
            let e = Event::decode(rec);
            FAULTS.fetch_add(1, Ordering::Relaxed);
            let key = (e.sid, e.input >> 12, e.read);
            if *last == Some(key) {
                continue;
            }
            *last = Some(key);
            let n = LOGGED.fetch_add(1, Ordering::Relaxed) + 1;
            if n > 256 && !n.is_power_of_two() {
                continue;
            }
            let owner = self
                .owners
                .get(e.sid as usize)
                .map_or(0, |o| o.load(Ordering::Relaxed));
            let vm = if owner == 0 {
                "no VM"
            } else {
                crate::console::vm_name(owner as usize - 1)
            };
            if e.is_translation_fault() {
                log::warn!(
                    "smmu: {} of StreamID {:#x} (vm {vm}): DMA {} at {:#x} blocked (stage {})",
                    e.name(),
                    e.sid,
                    if e.read { "read" } else { "write" },
                    e.input,
                    if e.stage2 { 2 } else { 1 },
                );
            } else {
                log::warn!("smmu: {} of StreamID {:#x} (vm {vm})", e.name(), e.sid);
            }
        }
    }
}

/// S2PS for an output size of `bits` (VTCR_EL2.PS encoding).
fn ps_of(bits: u32) -> u8 {
    match bits {
        0..=32 => 0,
        33..=36 => 1,
        37..=40 => 2,
        41..=42 => 3,
        43..=44 => 4,
        45..=48 => 5,
        _ => 6,
    }
}

fn on_event(_intid: u32) {
    if let Some(s) = get() {
        s.drain_events();
    }
}

fn on_gerror(_intid: u32) {
    if let Some(s) = get() {
        let (g, gn) = (s.r32(GERROR), s.r32(GERRORN));
        log::error!("smmu: global error GERROR {g:#x} (GERRORN {gn:#x})");
        // Acknowledge: GERRORN toggles to match GERROR.
        s.w32(GERRORN, g);
    }
}

/// Take the SMMU: every stream aborts until a VM's device is assigned.
/// Primary CPU, once, after the GIC.
pub fn init(info: SmmuInfo) -> Result<&'static Smmu, SmmuError> {
    let regs = info.regs.base;
    let probe = Smmu {
        regs,
        strtab: 0,
        sids: 0,
        ias: 0,
        cmdq: Mutex::new(CmdQ { base: 0, prod: 0 }),
        evtq: 0,
        evtq_cons: Mutex::new((0, None)),
        owners: Vec::new(),
    };
    if probe.r32(IDR0) & IDR0_S2P == 0 {
        return Err(SmmuError::NoStage2);
    }
    let idr1 = probe.r32(IDR1);
    let sid_bits = idr1_sidsize(idr1).min(16);
    let sids = 1u32 << sid_bits;
    let ias = idr5_oas_bits(probe.r32(IDR5)).min(48);
    if idr1_cmdqs(idr1) < CMDQ_LOG2 || idr1_eventqs(idr1) < EVTQ_LOG2 {
        return Err(SmmuError::QueuesTooSmall);
    }
    // Off while the tables change; transactions abort meanwhile.
    probe.write_cr0(0)?;
    probe.w32(GBPA, GBPA_ABORT | GBPA_UPDATE);
    if !arch::wait_until(TIMEOUT_MS, || probe.r32(GBPA) & GBPA_UPDATE == 0) {
        return Err(SmmuError::Timeout("GBPA update"));
    }
    let table_bytes = u64::from(sids) * STE_BYTES;
    let strtab = crate::mm::alloc_frames(table_bytes.div_ceil(4096), table_bytes.max(4096))
        .map_err(SmmuError::Memory)?;
    // SAFETY: just allocated for the table; all zero = every STE invalid.
    unsafe { core::ptr::write_bytes(strtab as *mut u8, 0, table_bytes as usize) };
    let cmdq = crate::mm::alloc_frames(1, 4096).map_err(SmmuError::Memory)?;
    let evtq = crate::mm::alloc_frames(2, 8192).map_err(SmmuError::Memory)?;
    // SAFETY: just allocated.
    unsafe {
        core::ptr::write_bytes(cmdq as *mut u8, 0, 4096);
        core::ptr::write_bytes(evtq as *mut u8, 0, 8192);
    }
    let smmu = Smmu {
        strtab,
        sids,
        ias,
        cmdq: Mutex::new(CmdQ {
            base: cmdq,
            prod: 0,
        }),
        evtq,
        owners: (0..sids).map(|_| AtomicU64::new(0)).collect(),
        ..probe
    };
    smmu.w32(CR1, CR1_WB_ISH);
    smmu.w32(CR2, CR2_RECINVSID_PTM);
    smmu.w64(STRTAB_BASE, strtab_base(strtab));
    smmu.w32(STRTAB_BASE_CFG, strtab_base_cfg(sid_bits));
    smmu.w64(CMDQ_BASE, queue_base(cmdq, CMDQ_LOG2));
    smmu.w32(CMDQ_PROD, 0);
    smmu.w32(CMDQ_CONS, 0);
    smmu.w64(EVENTQ_BASE, queue_base(evtq, EVTQ_LOG2));
    smmu.w32(EVENTQ_PROD, 0);
    smmu.w32(EVENTQ_CONS, 0);
    smmu.write_cr0(CR0_CMDQEN | CR0_EVENTQEN)?;
    smmu.run(&[Cmd::cfgi_all(), Cmd::tlbi_nsnh_all()])?;
    for irq in [info.eventq_irq, info.gerror_irq].into_iter().flatten() {
        gic::set_spi_edge(irq);
    }
    if let Some(irq) = info.eventq_irq {
        gic::register(irq, on_event);
        gic::enable_spi(irq, arch::mpidr());
    }
    if let Some(irq) = info.gerror_irq {
        gic::register(irq, on_gerror);
        gic::enable_spi(irq, arch::mpidr());
    }
    smmu.w32(IRQ_CTRL, IRQ_CTRL_GERROR_EVENTQ);
    smmu.write_cr0(CR0_CMDQEN | CR0_EVENTQEN | CR0_SMMUEN)?;
    let s = SMMU.call_once(|| smmu);
    log::info!(
        "SMMUv3 at {regs:#x}: stage 2, {sids} StreamIDs (linear table at {strtab:#x}), {ias}-bit IPA; every stream aborts until assigned"
    );
    Ok(s)
}

/// A page of Vigil's own at a fixed address, filled with a pattern at
/// boot and checked when the run ends (`vigil.dma_canary=ADDR`): a test
/// aims a device's DMA at it, and the check shows the SMMU kept it out.
static CANARY: AtomicU64 = AtomicU64::new(0);

fn canary_word(i: u64) -> u64 {
    0xca4a_7200_0000_0000 ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Reserve and fill the canary page at `addr` (4 KiB aligned).
pub fn set_canary(addr: u64) -> Result<(), vigil_mm::FrameError> {
    crate::mm::alloc_frames_at(addr & !0xfff, 1)?;
    let base = addr & !0xfff;
    for i in 0..512 {
        // SAFETY: the frame was just reserved for the canary; RAM is
        // identity-mapped in the hypervisor.
        unsafe { core::ptr::write_volatile((base + 8 * i) as *mut u64, canary_word(i)) };
    }
    CANARY.store(base, Ordering::Release);
    log::info!("DMA canary: Vigil's page at {base:#x} holds a pattern, checked at the end");
    Ok(())
}

/// Check the canary page (if any): a line either way.
pub fn check_canary() {
    let base = CANARY.load(Ordering::Acquire);
    if base == 0 {
        return;
    }
    let bad = (0..512)
        .filter(|&i| {
            // SAFETY: the canary frame, reserved at boot.
            let w = unsafe { core::ptr::read_volatile((base + 8 * i) as *const u64) };
            w != canary_word(i)
        })
        .count();
    if bad == 0 {
        log::info!("DMA canary: Vigil's page at {base:#x} intact");
    } else {
        log::error!("DMA canary: {bad} of 512 words of Vigil's page at {base:#x} overwritten");
    }
}
