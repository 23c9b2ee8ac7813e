//! The kernel side of the virtual GICv3 (the emulation core is the
//! `vigil-vgic` crate): the real ICH_* registers around each guest entry,
//! the emulated GICD and GICR frames on a VM's MMIO bus, and the virtual
//! timer forwarded through a hardware-linked list register.
//!
//! The list registers are rebuilt from the software state on every entry
//! and folded back on every exit (`flush`/`fold`); the virtual CPU
//! interface's VMCR and active-priority registers stay in the hardware
//! while a vCPU is loaded and are switched with it.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicUsize, Ordering};
use vigil_platform::MAX_CPUS;
use vigil_vgic::{CpuIfContext, IchHcr, IchMisr, IchVtr, Kick, LrValue, Vgic, VgicConfig};

use crate::gic;
use crate::vm::mmio::{MmioCtx, MmioDevice};

/// The virtual timer's PPI, hardware-linked to the physical one.
pub const VTIMER_INTID: u32 = 27;
/// The maintenance interrupt (PPI 9).
pub const MAINTENANCE_INTID: u32 = 25;

/// Most list registers the architecture defines.
const MAX_LRS: usize = 16;
static NUM_LRS: AtomicUsize = AtomicUsize::new(0);

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

macro_rules! ich_reg {
    ($read:ident, $write:ident, $enc:literal) => {
        #[allow(dead_code)]
        fn $read() -> u64 {
            let v: u64;
            // SAFETY: reading an ICH register has no side effects.
            unsafe { core::arch::asm!(concat!("mrs {}, ", $enc), out(reg) v, options(nomem, nostack)) };
            v
        }
        #[allow(dead_code)]
        fn $write(v: u64) {
            // SAFETY: ICH registers only affect the virtual CPU interface.
            unsafe { core::arch::asm!(concat!("msr ", $enc, ", {}"), in(reg) v, options(nomem, nostack)) };
        }
    };
}

ich_reg!(ich_hcr, set_ich_hcr, "S3_4_C12_C11_0");
ich_reg!(ich_vtr, _set_ich_vtr, "S3_4_C12_C11_1");
ich_reg!(ich_misr, _set_ich_misr, "S3_4_C12_C11_2");
ich_reg!(ich_eisr, _set_ich_eisr, "S3_4_C12_C11_3");
ich_reg!(ich_vmcr, set_ich_vmcr, "S3_4_C12_C11_7");
ich_reg!(ich_ap0r0, set_ich_ap0r0, "S3_4_C12_C8_0");
ich_reg!(ich_ap1r0, set_ich_ap1r0, "S3_4_C12_C9_0");

/// Per physical CPU: whether the physical virtual-timer interrupt was left
/// active for the guest to deactivate through its hardware-linked LR.
static PTIMER_HELD: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];
/// Per physical CPU: whether the last entry wrote any list register or
/// maintenance request. If not, the exit has nothing to fold.
static WROTE_LRS: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(1) }; MAX_CPUS];
/// Per physical CPU: the virtual timer line last given to the vGIC for
/// the vCPU loaded here (0 unknown, 1 low, 2 high), so an unchanged line
/// costs no vGIC lock on entry.
static VTIMER_LINE: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

/// Virtual priority bits and list registers, from ICH_VTR_EL2. Every CPU.
pub fn init_cpu() {
    let vtr = IchVtr(ich_vtr());
    NUM_LRS.store(vtr.list_regs().min(MAX_LRS), Ordering::Relaxed);
    set_ich_hcr(0);
    gic::enable_local(VTIMER_INTID);
    gic::enable_local(MAINTENANCE_INTID);
    gic::register(VTIMER_INTID, on_vtimer);
    gic::register(MAINTENANCE_INTID, on_maintenance);
    gic::keep_active(VTIMER_INTID);
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
    cfg.pri_bits = pri_bits();
    cfg.lpis = lpis;
    let g = Arc::new(Vgic::new(&cfg));
    link_vtimers(&g);
    g
}

/// Link every vCPU's virtual timer PPI to the physical one (at creation,
/// and again after a reset, which drops the link).
pub fn link_vtimers(g: &Vgic) {
    for v in 0..g.nr_vcpus() {
        g.map_hw(v, VTIMER_INTID, Some(VTIMER_INTID));
    }
}

/// Whether the live virtual timer (CNTV_*) asserts its output now.
fn vtimer_asserted() -> bool {
    let ctl: u64;
    // SAFETY: reading CNTV_CTL_EL0 has no side effects.
    unsafe { core::arch::asm!("mrs {}, cntv_ctl_el0", out(reg) ctl, options(nomem, nostack)) };
    // ENABLE and ISTATUS set, IMASK clear.
    ctl & 0b111 == 0b101
}

/// Before entering vCPU `v`: sample the virtual timer's line, and load the
/// list registers and ICH_HCR_EL2 from the software state.
pub fn enter(g: &Vgic, v: usize) {
    let cpu = crate::arch::cpu_index();
    let line = if vtimer_asserted() { 2 } else { 1 };
    if VTIMER_LINE[cpu].swap(line, Ordering::Relaxed) != line {
        g.set_line(v, VTIMER_INTID, line == 2);
    }
    if PTIMER_HELD[cpu].load(Ordering::Relaxed) != 0 && !g.in_flight(v, VTIMER_INTID) {
        // The guest will never deactivate it now (the line dropped before
        // it took it): release the physical interrupt ourselves.
        gic::deactivate(VTIMER_INTID);
        PTIMER_HELD[cpu].store(0, Ordering::Relaxed);
    }
    if WROTE_LRS[cpu].load(Ordering::Relaxed) == 0 && g.is_idle(v) {
        // The LRs are all invalid and ICH_HCR_EL2 is just En since the
        // last entry, and nothing new is to be loaded: leave them.
        return;
    }
    let n = list_regs();
    let mut lrs = [LrValue::default(); MAX_LRS];
    let hcr = g.flush(v, &mut lrs[..n]);
    let mut any = hcr.bits() != IchHcr::EN;
    for (i, lr) in lrs[..n].iter().enumerate() {
        write_lr(i, lr.bits());
        any |= lr.bits() != 0;
    }
    set_ich_hcr(hcr.bits());
    WROTE_LRS[cpu].store(any as usize, Ordering::Relaxed);
}

/// The vCPU loaded on this CPU changes: forget what was known of the
/// previous one's timer line.
pub fn forget_loaded() {
    let cpu = crate::arch::cpu_index();
    VTIMER_LINE[cpu].store(0, Ordering::Relaxed);
    WROTE_LRS[cpu].store(1, Ordering::Relaxed);
}

/// The virtual timer line of the vCPU loaded here is high (its physical
/// interrupt fired).
pub fn vtimer_line_high(g: &Vgic, v: usize) {
    VTIMER_LINE[crate::arch::cpu_index()].store(2, Ordering::Relaxed);
    let _ = g.set_line(v, VTIMER_INTID, true);
}

/// After an exit of vCPU `v`: read the list registers back and fold them
/// into the software state. Returns the vCPUs to kick.
pub fn exit(g: &Vgic, v: usize) -> Kick {
    if WROTE_LRS[crate::arch::cpu_index()].load(Ordering::Relaxed) == 0 {
        // Every LR was empty and no maintenance was asked for: the guest
        // cannot have changed anything (the fast path of most exits).
        return Kick::default();
    }
    let n = list_regs();
    let mut lrs = [LrValue::default(); MAX_LRS];
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
pub fn save_cpuif(ctx: &mut CpuIfContext) {
    ctx.vmcr = ich_vmcr();
    ctx.ap0r[0] = ich_ap0r0() as u32;
    ctx.ap1r[0] = ich_ap1r0() as u32;
}

pub fn restore_cpuif(ctx: &CpuIfContext) {
    set_ich_vmcr(ctx.vmcr);
    set_ich_ap0r0(ctx.ap0r[0] as u64);
    set_ich_ap1r0(ctx.ap1r[0] as u64);
}

/// The physical virtual-timer interrupt fired: the timer of the vCPU
/// loaded here expired. It stays active until the guest deactivates the
/// hardware-linked virtual one; the next entry's `enter` injects it.
fn on_vtimer(_intid: u32) {
    let cpu = crate::arch::cpu_index();
    if crate::vm::vtimer_fired() {
        PTIMER_HELD[cpu].store(1, Ordering::Relaxed);
    } else {
        // No vCPU owns the timer here (its VM stopped): silence it.
        // SAFETY: writing CNTV_CTL_EL0 only affects the (absent) guest.
        unsafe { core::arch::asm!("msr cntv_ctl_el0, xzr", options(nomem, nostack)) };
        gic::deactivate(VTIMER_INTID);
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
    fn read(&self, _ctx: &MmioCtx<'_>, offset: u64, width: u8) -> u64 {
        self.0.gicr_read(offset, width)
    }

    fn write(&self, ctx: &MmioCtx<'_>, offset: u64, width: u8, value: u64) -> Kick {
        self.0.gicr_write(offset, width, value, ctx.mem)
    }
}

/// Before another vCPU's state is loaded here: a physical virtual-timer
/// interrupt left active for the outgoing vCPU is released (the incoming
/// vCPU's timer raises its own).
pub fn release_vtimer() {
    let cpu = crate::arch::cpu_index();
    if PTIMER_HELD[cpu].swap(0, Ordering::Relaxed) != 0 {
        gic::deactivate(VTIMER_INTID);
    }
}
