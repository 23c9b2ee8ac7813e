//! The kernel side of the virtual GICv3 (the emulation core is the
//! `vigil-vgic` crate): the real ICH_* registers around each guest entry,
//! the emulated GICD and GICR frames on a VM's MMIO bus, and the EL1
//! timers forwarded through hardware-linked list registers.
//!
//! The list registers are rebuilt from the software state on an entry
//! with anything listed for the vCPU and folded back on the exit after it
//! (`flush`/`fold`); once the guest has consumed them (every LR spent),
//! entries and exits touch no ICH register until something is listed
//! again. The virtual CPU
//! interface's VMCR and active-priority registers stay in the hardware
//! while a vCPU is loaded and are switched with it.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicUsize, Ordering};
use vigil_platform::MAX_CPUS;
use vigil_vgic::{CpuIfContext, IchHcr, IchMisr, IchVtr, Kick, LrValue, Vgic, VgicConfig};

use crate::bus::{MmioCtx, MmioDevice};
use crate::gic;

/// The virtual timer's PPI, hardware-linked to the physical one.
pub const VTIMER_INTID: u32 = 27;
/// The maintenance interrupt (PPI 9).
pub const MAINTENANCE_INTID: u32 = 25;

/// Most list registers the architecture defines.
const MAX_LRS: usize = 16;
static NUM_LRS: AtomicUsize = AtomicUsize::new(0);
/// ICH_AP0R<n>/ICH_AP1R<n> the CPU implements (from PREbits).
static NUM_APRS: AtomicUsize = AtomicUsize::new(1);

macro_rules! ich_lr {
    ($($n:literal => $enc:literal),*) => {
        fn read_lr(n: usize) -> u64 {
            let v: u64;
            match n {
                $(
                    // SAFETY: reading a list register has no side effects.
                    $n => unsafe { core::arch::asm!(concat!("mrs {}, ", $enc), out(reg) v, options(nomem, nostack)) },
                )*
                _ => v = 0,
            }
            v
        }

        fn write_lr(n: usize, v: u64) {
            match n {
                $(
                    // SAFETY: list registers only affect the virtual CPU
                    // interface, i.e. the guest about to run.
                    $n => unsafe { core::arch::asm!(concat!("msr ", $enc, ", {}"), in(reg) v, options(nomem, nostack)) },
                )*
                _ => {}
            }
        }
    };
}

ich_lr! {
    0 => "S3_4_C12_C12_0", 1 => "S3_4_C12_C12_1", 2 => "S3_4_C12_C12_2", 3 => "S3_4_C12_C12_3",
    4 => "S3_4_C12_C12_4", 5 => "S3_4_C12_C12_5", 6 => "S3_4_C12_C12_6", 7 => "S3_4_C12_C12_7",
    8 => "S3_4_C12_C13_0", 9 => "S3_4_C12_C13_1", 10 => "S3_4_C12_C13_2", 11 => "S3_4_C12_C13_3",
    12 => "S3_4_C12_C13_4", 13 => "S3_4_C12_C13_5", 14 => "S3_4_C12_C13_6", 15 => "S3_4_C12_C13_7"
}

/// `ich_reg!(read, write, "encoding")`; `_` leaves out an accessor Vigil
/// does not use.
macro_rules! ich_reg {
    (_, $write:ident, $enc:literal) => {
        ich_reg!(@write $write, $enc);
    };
    ($read:ident, _, $enc:literal) => {
        ich_reg!(@read $read, $enc);
    };
    ($read:ident, $write:ident, $enc:literal) => {
        ich_reg!(@read $read, $enc);
        ich_reg!(@write $write, $enc);
    };
    (@read $read:ident, $enc:literal) => {
        fn $read() -> u64 {
            let v: u64;
            // SAFETY: reading an ICH register has no side effects.
            unsafe { core::arch::asm!(concat!("mrs {}, ", $enc), out(reg) v, options(nomem, nostack)) };
            v
        }
    };
    (@write $write:ident, $enc:literal) => {
        fn $write(v: u64) {
            // SAFETY: ICH registers only affect the virtual CPU interface.
            unsafe { core::arch::asm!(concat!("msr ", $enc, ", {}"), in(reg) v, options(nomem, nostack)) };
        }
    };
}

ich_reg!(_, set_ich_hcr, "S3_4_C12_C11_0");
ich_reg!(ich_vtr, _, "S3_4_C12_C11_1");
ich_reg!(ich_misr, _, "S3_4_C12_C11_2");
ich_reg!(ich_eisr, _, "S3_4_C12_C11_3");
ich_reg!(ich_elrsr, _, "S3_4_C12_C11_5");
ich_reg!(ich_vmcr, set_ich_vmcr, "S3_4_C12_C11_7");

macro_rules! ich_apr {
    ($read:ident, $write:ident; $($n:literal => $enc:literal),*) => {
        /// `ICH_AP<g>R<n>_EL2`; n below the count PREbits implies.
        fn $read(n: usize) -> u32 {
            let v: u64;
            match n {
                $(
                    // SAFETY: reading an active-priority register has no
                    // side effects.
                    $n => unsafe { core::arch::asm!(concat!("mrs {}, ", $enc), out(reg) v, options(nomem, nostack)) },
                )*
                _ => v = 0,
            }
            v as u32
        }
        fn $write(n: usize, v: u32) {
            match n {
                $(
                    // SAFETY: active priorities only affect the virtual CPU
                    // interface, i.e. the guest about to run.
                    $n => unsafe { core::arch::asm!(concat!("msr ", $enc, ", {}"), in(reg) u64::from(v), options(nomem, nostack)) },
                )*
                _ => {}
            }
        }
    };
}

ich_apr!(ich_ap0r, set_ich_ap0r;
    0 => "S3_4_C12_C8_0", 1 => "S3_4_C12_C8_1", 2 => "S3_4_C12_C8_2", 3 => "S3_4_C12_C8_3");
ich_apr!(ich_ap1r, set_ich_ap1r;
    0 => "S3_4_C12_C9_0", 1 => "S3_4_C12_C9_1", 2 => "S3_4_C12_C9_2", 3 => "S3_4_C12_C9_3");

/// The EL1 timers a guest programs directly (CNTHCTL_EL2 gives EL1 the
/// physical timer and counter; the virtual one is always EL1's). Each one's
/// physical PPI is forwarded to the same virtual PPI through a
/// hardware-linked list register, so the guest's deactivation deactivates
/// the physical interrupt (IHI 0069 §4.4.3 "Hardware-linked interrupts").
/// The guest device tree names them (`timer` node: PPI 14 and 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestTimer {
    /// CNTP_*_EL0, PPI 30.
    Physical = 0,
    /// CNTV_*_EL0, PPI 27.
    Virtual = 1,
}

impl GuestTimer {
    pub const ALL: [GuestTimer; 2] = [GuestTimer::Physical, GuestTimer::Virtual];

    pub const fn intid(self) -> u32 {
        match self {
            GuestTimer::Physical => PTIMER_INTID,
            GuestTimer::Virtual => VTIMER_INTID,
        }
    }

    fn from_intid(intid: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.intid() == intid)
    }

    /// The live CNTx_CTL_EL0.
    fn ctl(self) -> u64 {
        let ctl: u64;
        // SAFETY: reading a timer's control register has no side effects.
        unsafe {
            match self {
                GuestTimer::Physical => {
                    core::arch::asm!("mrs {}, cntp_ctl_el0", out(reg) ctl, options(nomem, nostack))
                }
                GuestTimer::Virtual => {
                    core::arch::asm!("mrs {}, cntv_ctl_el0", out(reg) ctl, options(nomem, nostack))
                }
            }
        }
        ctl
    }

    /// Turn the live timer off (no vCPU owns it here).
    fn silence(self) {
        // SAFETY: the timer belongs to a stopped guest; writing its
        // control register only affects that guest's (absent) timer.
        unsafe {
            match self {
                GuestTimer::Physical => {
                    core::arch::asm!("msr cntp_ctl_el0, xzr", options(nomem, nostack))
                }
                GuestTimer::Virtual => {
                    core::arch::asm!("msr cntv_ctl_el0, xzr", options(nomem, nostack))
                }
            }
        }
    }

    /// Whether the live timer asserts its output: ENABLE and ISTATUS set,
    /// IMASK clear (Arm ARM D11.2.4, "The timer output signal").
    fn asserted(self) -> bool {
        self.ctl() & 0b111 == 0b101
    }
}

/// The EL1 physical timer's PPI.
pub const PTIMER_INTID: u32 = 30;

/// Per physical CPU, one bit per timer (`1 << GuestTimer as usize`):
/// whose physical interrupt was left active for the guest to deactivate
/// through its hardware-linked LR.
static HELD: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];
/// Per physical CPU: whether the list registers may hold anything the
/// guest can change, or ICH_HCR_EL2 a maintenance request: set by an entry
/// that wrote any, cleared by one that wrote none and by an exit that
/// found them all spent. If clear, the exit has nothing to fold and an
/// entry with nothing listed writes nothing.
static WROTE_LRS: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(1) }; MAX_CPUS];
/// Per physical CPU: the timer lines last given to the vGIC for the vCPU
/// loaded here, two bits per timer at `2 * GuestTimer as usize` (bit 0:
/// known, bit 1: high; 0 unknown), so unchanged lines cost one compare.
static LINES: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];
/// [`LINES`] with both timers' lines known and low.
const BOTH_KNOWN_LOW: usize =
    (1 << (2 * GuestTimer::Physical as usize)) | (1 << (2 * GuestTimer::Virtual as usize));

/// Virtual priority bits and list registers, from ICH_VTR_EL2. Every CPU.
pub fn init_cpu() {
    let vtr = IchVtr(ich_vtr());
    NUM_LRS.store(vtr.list_regs().min(MAX_LRS), Ordering::Relaxed);
    NUM_APRS.store(vtr.active_priority_regs(), Ordering::Relaxed);
    set_ich_hcr(0);
    for t in GuestTimer::ALL {
        gic::enable_local(t.intid());
        gic::register(t.intid(), on_timer);
        gic::keep_active(t.intid());
    }
    gic::enable_local(MAINTENANCE_INTID);
    gic::register(MAINTENANCE_INTID, on_maintenance);
}

pub fn list_regs() -> usize {
    NUM_LRS.load(Ordering::Relaxed)
}

/// The virtual priority bits the CPU implements (ICH_VTR_EL2.PRIbits + 1).
pub fn pri_bits() -> u8 {
    IchVtr(ich_vtr()).pri_bits()
}

/// A VM's virtual GIC, shared by its vCPUs and devices.
pub type VmGic = Arc<Vgic>;

pub fn new_vm_gic(vcpus: usize, lpis: bool) -> VmGic {
    let mut cfg = VgicConfig::simple(vcpus);
    cfg.mpidrs = (0..vcpus).map(vigil_vm::layout::vcpu_mpidr).collect();
    // LPI INTIDs below 2^17: room for the vITS's quota of mappings
    // (vigil_vits::MAX_MAPPINGS) on distinct LPIs.
    cfg.lpi_id_bits = 17;
    cfg.pri_bits = pri_bits();
    cfg.lpis = lpis;
    let g = Arc::new(Vgic::new(&cfg));
    link_timers(&g);
    g
}

/// Link every vCPU's timer PPIs to the physical ones (at creation, and
/// again after a reset, which drops the link).
pub fn link_timers(g: &Vgic) {
    for v in 0..g.nr_vcpus() {
        for t in GuestTimer::ALL {
            g.map_hw(v, t.intid(), Some(t.intid()));
        }
    }
}

/// Give the vGIC the live timers' lines for vCPU `v` (loaded here) where
/// they changed. At every entry (`at_entry`), and before the guest reads
/// the emulated distributor or redistributor: a guest that masks its
/// timer and then reads GICR_ISPENDR0 must see the level line low.
///
/// At an entry, both lines known low and no physical timer interrupt held
/// leave nothing to retract, and a line that rose since makes its
/// physical PPI pending, an IRQ exit as soon as the guest runs (the GIC
/// signals a level interrupt while it is asserted and not active), which
/// raises it: then no timer register is read.
#[inline(always)]
fn sample_timers(g: &Vgic, v: usize, cpu: usize, at_entry: bool) {
    let known = LINES[cpu].load(Ordering::Relaxed);
    let held = HELD[cpu].load(Ordering::Relaxed);
    if at_entry && known == BOTH_KNOWN_LOW && held == 0 {
        return;
    }
    // Both lines in one word: the common case (nothing changed, nothing
    // held) is two MRS, two loads and two compares, inline.
    let line = |t: GuestTimer| (1 | (t.asserted() as usize) << 1) << (2 * t as usize);
    let now = line(GuestTimer::Physical) | line(GuestTimer::Virtual);
    if known != now || held != 0 {
        timer_lines_changed(g, v, cpu, now);
    }
}

#[inline(never)]
fn timer_lines_changed(g: &Vgic, v: usize, cpu: usize, now: usize) {
    let known = LINES[cpu].swap(now, Ordering::Relaxed);
    for t in GuestTimer::ALL {
        let shift = 2 * t as usize;
        if (known >> shift) & 3 != (now >> shift) & 3 {
            g.set_line(v, t.intid(), (now >> shift) & 2 != 0);
        }
    }
    let held = HELD[cpu].load(Ordering::Relaxed);
    for t in GuestTimer::ALL {
        if held & (1 << t as usize) != 0 && !g.in_flight(v, t.intid()) {
            // The guest will never deactivate it now (the line dropped
            // before it took it): release the physical interrupt.
            gic::deactivate(t.intid());
            HELD[cpu].fetch_and(!(1 << t as usize), Ordering::Relaxed);
        }
    }
}

/// Before entering vCPU `v`: sample its timers' lines, and load the list
/// registers and ICH_HCR_EL2 from the software state.
/// Returns the vCPUs to kick (an interrupt the flush found belonging
/// elsewhere; normally none).
pub fn enter(g: &Vgic, v: usize) -> Kick {
    let cpu = crate::arch::cpu_index();
    sample_timers(g, v, cpu, true);
    if WROTE_LRS[cpu].load(Ordering::Relaxed) == 0 && g.is_idle(v) {
        // The LRs are all invalid and ICH_HCR_EL2 is just En since the
        // last entry, and nothing new is to be loaded: leave them.
        return Kick::default();
    }
    let (any, kick) = match list_regs() {
        n @ 0..=4 => flush_into::<4>(g, v, n),
        n => flush_into::<MAX_LRS>(g, v, n),
    };
    WROTE_LRS[cpu].store(any as usize, Ordering::Relaxed);
    kick
}

/// Flush into the first `n` list registers through an `N`-entry buffer:
/// the common 4-LR CPU then zeroes 32 bytes inline, not 128 through a
/// `memset` call (the soft-float build has no SIMD stores). Whether any LR
/// or maintenance request was written, and the flush's kicks.
#[inline(always)]
fn flush_into<const N: usize>(g: &Vgic, v: usize, n: usize) -> (bool, Kick) {
    let mut lrs = [LrValue::default(); N];
    let (hcr, kick) = g.flush(v, &mut lrs[..n]);
    let mut any = hcr.bits() != IchHcr::EN;
    for (i, lr) in lrs[..n].iter().enumerate() {
        write_lr(i, lr.bits());
        any |= lr.bits() != 0;
    }
    set_ich_hcr(hcr.bits());
    (any, kick)
}

/// The vCPU loaded on this CPU changes: forget what was known of the
/// previous one's timer lines.
pub fn forget_loaded() {
    let cpu = crate::arch::cpu_index();
    LINES[cpu].store(0, Ordering::Relaxed);
    WROTE_LRS[cpu].store(1, Ordering::Relaxed);
}

/// Timer `t`'s line of the vCPU loaded here is high (its physical
/// interrupt fired).
pub fn timer_line_high(g: &Vgic, v: usize, t: GuestTimer) {
    let shift = 2 * t as usize;
    LINES[crate::arch::cpu_index()].fetch_or(3 << shift, Ordering::Relaxed);
    let _ = g.set_line(v, t.intid(), true);
}

/// After an exit of vCPU `v`: read the list registers back and fold them
/// into the software state. Returns the vCPUs to kick.
pub fn exit(g: &Vgic, v: usize) -> Kick {
    let cpu = crate::arch::cpu_index();
    if WROTE_LRS[cpu].load(Ordering::Relaxed) == 0 {
        // Every LR was empty and no maintenance was asked for: the guest
        // cannot have changed anything (the fast path of most exits).
        return Kick::default();
    }
    match list_regs() {
        n @ 0..=4 => fold_from::<4>(g, v, n),
        n => fold_from::<MAX_LRS>(g, v, n),
    }
}

/// Read back the first `n` list registers and fold them (`N` as for
/// [`flush_into`]).
#[inline(always)]
fn fold_from<const N: usize>(g: &Vgic, v: usize, n: usize) -> Kick {
    // ICH_ELRSR_EL2 bit n: LR n is Invalid with no EOI maintenance request
    // (IHI 0069 §12.5.5): inert as it stands.
    let all = (1u64 << n) - 1;
    if ich_elrsr() & all == all {
        // The guest consumed everything it was given (the usual end of an
        // interrupt: taken and deactivated): the LRs need neither reading
        // (each is what was written, Invalid) nor a rewrite. ICH_HCR_EL2 =
        // En alone drops any maintenance condition (no enable bit but En,
        // nothing in an LR to raise EOI), so an entry with nothing new
        // listed touches no ICH register.
        let misr = IchMisr::from_bits(ich_misr());
        set_ich_hcr(IchHcr::EN);
        WROTE_LRS[crate::arch::cpu_index()].store(0, Ordering::Relaxed);
        return g.fold_spent(v, misr).kick;
    }
    let mut lrs = [LrValue::default(); N];
    for (i, lr) in lrs[..n].iter_mut().enumerate() {
        *lr = LrValue::from_bits(read_lr(i));
    }
    let misr = IchMisr::from_bits(ich_misr());
    let eisr = ich_eisr() as u32;
    // Clearing ICH_HCR_EL2 drops the maintenance interrupt's condition.
    set_ich_hcr(0);
    g.fold(v, &lrs[..n], misr, eisr).kick
}

/// The virtual CPU interface state of a vCPU that is not loaded.
/// Every active-priority register PREbits implies is switched: with 6 or
/// 7 preemption bits, priorities past the first 32 levels live in
/// ICH_AP<g>R1..3.
pub fn save_cpuif(ctx: &mut CpuIfContext) {
    ctx.vmcr = ich_vmcr();
    for n in 0..NUM_APRS.load(Ordering::Relaxed) {
        ctx.ap0r[n] = ich_ap0r(n);
        ctx.ap1r[n] = ich_ap1r(n);
    }
}

pub fn restore_cpuif(ctx: &CpuIfContext) {
    set_ich_vmcr(ctx.vmcr);
    for n in 0..NUM_APRS.load(Ordering::Relaxed) {
        set_ich_ap0r(n, ctx.ap0r[n]);
        set_ich_ap1r(n, ctx.ap1r[n]);
    }
}

/// Who owns a guest timer's interrupt on this CPU: the vCPU loaded here,
/// which only the scheduler knows, a room above this one. It raises that
/// vCPU's line ([`timer_line_high`]) and says whether there was one; set
/// once at boot ([`set_timer_owner`]).
static TIMER_OWNER: spin::Once<fn(GuestTimer) -> bool> = spin::Once::new();

/// Register the scheduler's [`TIMER_OWNER`] hook.
pub fn set_timer_owner(owner: fn(GuestTimer) -> bool) {
    TIMER_OWNER.call_once(|| owner);
}

/// A guest timer's physical interrupt fired: the timer of the vCPU loaded
/// here expired. It stays active until the guest deactivates the
/// hardware-linked virtual one; the next entry's `enter` injects it.
fn on_timer(intid: u32) {
    let Some(t) = GuestTimer::from_intid(intid) else {
        return;
    };
    let cpu = crate::arch::cpu_index();
    if TIMER_OWNER.get().is_some_and(|owner| owner(t)) {
        HELD[cpu].fetch_or(1 << t as usize, Ordering::Relaxed);
    } else {
        // No vCPU owns the timer here (its VM stopped): silence it.
        t.silence();
        gic::deactivate(intid);
    }
}

/// Maintenance interrupts need no work of their own: every exit folds the
/// list registers, which runs the handler for each reason.
fn on_maintenance(_intid: u32) {}

/// The emulated distributor frame.
pub struct GicdFrame(pub VmGic);

impl MmioDevice for GicdFrame {
    fn read(&self, ctx: &MmioCtx<'_>, offset: u64, width: u8) -> u64 {
        self.0.gicd_read(ctx.vcpu, offset, width)
    }

    fn write(&self, ctx: &MmioCtx<'_>, offset: u64, width: u8, value: u64) -> Kick {
        self.0.gicd_write(ctx.vcpu, offset, width, value)
    }
}

/// The emulated redistributor frames (128 KiB per vCPU).
pub struct GicrFrames(pub VmGic);

impl MmioDevice for GicrFrames {
    fn read(&self, ctx: &MmioCtx<'_>, offset: u64, width: u8) -> u64 {
        // GICR_ISPENDR0/ICPENDR0/ISACTIVER0/ICACTIVER0 show the PPIs'
        // state (with ARE, only here): the reading vCPU's timer lines
        // first (they are loaded here; other vCPUs' are as of their last
        // entry).
        if matches!(offset % vigil_vgic::GICR_STRIDE, 0x1_0200..=0x1_03ff) {
            sample_timers(&self.0, ctx.vcpu, crate::arch::cpu_index(), false);
        }
        self.0.gicr_read(offset, width)
    }

    fn write(&self, ctx: &MmioCtx<'_>, offset: u64, width: u8, value: u64) -> Kick {
        self.0.gicr_write(offset, width, value, ctx.mem)
    }
}

/// Before another vCPU's state is loaded here: a physical timer interrupt
/// left active for the outgoing vCPU is released (the incoming vCPU's
/// timers raise their own).
pub fn release_timers() {
    let cpu = crate::arch::cpu_index();
    let held = HELD[cpu].swap(0, Ordering::Relaxed);
    for t in GuestTimer::ALL {
        if held & (1 << t as usize) != 0 {
            gic::deactivate(t.intid());
        }
    }
}
