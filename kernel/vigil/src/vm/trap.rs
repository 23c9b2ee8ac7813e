//! Handling a guest's exits: a table of handlers indexed by exception
//! class (as Bao does), hypercalls (PSCI, SMCCC, Vigil's own), MMIO
//! emulation, and injecting the architected faults into the guest.
//!
//! A guest is untrusted: every path here either emulates what the
//! architecture defines, injects the fault the architecture defines, or
//! stops that VM alone with a log line. Nothing a guest does panics Vigil.

use core::sync::atomic::Ordering;
use vigil_vgic::guest_warn;
use vigil_vm::esr::{ec, Esr, MmioAccess, SysRegAccess};
use vigil_vm::idregs;
use vigil_vm::psci::{self, Outcome};

use super::switch::GuestRegs;
use super::{Vcpu, STATUS_GUEST_FAULT};
use crate::arch::exceptions::{ec_name, VectorKind};
use crate::arch::sysreg;
use crate::gic;
use aarch64_cpu::registers::HCR_EL2;

/// HCR_EL2 while a guest runs (Arm ARM D24.2.48): stage 2 on (VM), set/way
/// invalidation as clean+invalidate (SWIO), physical IRQ/FIQ/SError to EL2
/// (IMO/FMO/AMO), broadcast TLB/cache maintenance (FB, BSU inner
/// shareable), trap SMC (TSC), implementation-defined registers (TIDCP)
/// and ID registers (TID3), EL1 is AArch64 (RW), pointer authentication
/// not trapped (API/APK). WFI and WFE: see [`hcr_guest`].
const HCR_GUEST: u64 = HCR_EL2::VM::Enable.value
    | HCR_EL2::SWIO::SET.value
    | HCR_EL2::FMO::EnableVirtualFIQ.value
    | HCR_EL2::IMO::EnableVirtualIRQ.value
    | HCR_EL2::AMO::SET.value
    | HCR_EL2::FB::SET.value
    | HCR_EL2::BSU::InnerShareable.value
    | HCR_EL2::TID3::SET.value
    | HCR_EL2::TSC::SET.value
    | HCR_EL2::TIDCP::SET.value
    | HCR_EL2::RW::EL1IsAarch64.value
    | HCR_EL2::APK::DisableTrapPointerAuthKeyRegsToEl2.value
    | HCR_EL2::API::DisableTrapPointerAuthInstToEl2.value;

/// What the run loop does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Re-enter the guest.
    Continue,
    /// Let another vCPU of this CPU run first, if any is runnable.
    Yield,
    /// The vCPU waits for an interrupt (WFI).
    Wait,
    /// The vCPU is off or its VM stopped.
    Off,
}

/// HCR_EL2 for a vCPU that shares its physical CPU with others (`shared`)
/// or not, and whose WFI must trap (`trap_wfi`).
///
/// Shared, WFI and WFE trap (TWI, TWE): a WFI gives the CPU to the other
/// vCPUs, and a guest waits with WFE for another vCPU to do something
/// (Linux's spinlocks, csd_lock_wait, smp_cond_load), which may be one
/// queued behind it on the same CPU: without the trap it would spin out
/// its slice.
///
/// Alone on its CPU, neither traps unless `trap_wfi` (ITS commands wait
/// for their next slice, which a WFI must not sleep on), as KVM clears
/// TWI and TWE for a vCPU alone on its CPU: the CPU waits in the guest
/// itself, and what would end a wait in Vigil ends it there (Arm ARM
/// D1.6.2, "Wait for Interrupt"): a virtual interrupt in a list register
/// or a direct vLPI wakes it in place; a physical one (a kick, its timer,
/// a doorbell) is an IRQ exit. An IPI to a waiting vCPU then costs one
/// exit, not two.
pub fn hcr_guest(shared: bool, trap_wfi: bool) -> u64 {
    let mut hcr = HCR_GUEST;
    if shared || trap_wfi {
        hcr |= HCR_EL2::TWI::SET.value;
    }
    if shared {
        hcr |= HCR_EL2::TWE::SET.value;
    }
    hcr
}

type Handler = fn(&'static Vcpu, &mut GuestRegs, Esr) -> Exit;

/// Handlers by ESR_EL2.EC.
static TRAPS: [Handler; 64] = {
    let mut t: [Handler; 64] = [unhandled; 64];
    t[ec::WFX as usize] = wfx;
    t[ec::HVC64 as usize] = hvc;
    t[ec::SMC64 as usize] = smc;
    t[ec::SYSREG as usize] = sysreg_access;
    t[ec::IABT_LOWER as usize] = instruction_abort;
    t[ec::DABT_LOWER as usize] = data_abort;
    t
};

/// Handle the exit of vector `kind` (8..15, from `__guest_enter`).
pub fn handle_exit(v: &'static Vcpu, regs: &mut GuestRegs, kind: u64) -> Exit {
    match VectorKind::from_raw(kind) {
        VectorKind::Lower64Sync => {
            let esr = Esr(sysreg::esr_el2());
            TRAPS[esr.ec() as usize](v, regs, esr)
        }
        VectorKind::Lower64Irq => {
            v.count_irq_exit();
            gic::handle_irq();
            Exit::Continue
        }
        other => {
            v.vm.stop(
                format_args!(
                    "{other:?} from vCPU {} at pc {:#x} (ESR {:#x})",
                    v.index,
                    regs.pc,
                    sysreg::esr_el2()
                ),
                STATUS_GUEST_FAULT,
            );
            Exit::Off
        }
    }
}

fn unhandled(v: &'static Vcpu, regs: &mut GuestRegs, esr: Esr) -> Exit {
    v.vm.stop(
        format_args!(
            "unhandled exception class {:#04x} ({}) from vCPU {} at pc {:#x}, ESR {:#x}",
            esr.ec(),
            ec_name(esr.ec() as u64),
            v.index,
            regs.pc,
            esr.0
        ),
        STATUS_GUEST_FAULT,
    );
    Exit::Off
}

fn wfx(_v: &'static Vcpu, regs: &mut GuestRegs, esr: Esr) -> Exit {
    regs.pc += 4;
    if esr.is_wfe() {
        // Only trapped on a shared CPU (`hcr_guest`): let the others run.
        // (WFI traps there, or while ITS commands wait for their slice.)
        Exit::Yield
    } else {
        Exit::Wait
    }
}

/// Vigil's own hypercalls (SMCCC vendor-specific hypervisor service,
/// owning entity 6).
pub use vigil_vm::psci::hypercall;

use vigil_vm::psci::smccc::{
    self, ARCH_FEATURES as SMCCC_ARCH_FEATURES, NOT_SUPPORTED as SMCCC_NOT_SUPPORTED,
    VERSION as SMCCC_VERSION,
};

fn hvc(v: &'static Vcpu, regs: &mut GuestRegs, esr: Esr) -> Exit {
    // ELR already points after the HVC.
    if esr.imm16() != 0 {
        log::debug!("vm {}: HVC #{} is not SMCCC", v.vm.name, esr.imm16());
        regs.x[0] = SMCCC_NOT_SUPPORTED;
        return Exit::Continue;
    }
    service_call(v, regs)
}

fn smc(v: &'static Vcpu, regs: &mut GuestRegs, _esr: Esr) -> Exit {
    // A trapped SMC has not executed: step over it (Arm ARM D1.19.2).
    regs.pc += 4;
    service_call(v, regs)
}

/// An SMCCC call (function ID in w0).
fn service_call(v: &'static Vcpu, regs: &mut GuestRegs) -> Exit {
    let fid = regs.x[0] as u32;
    if smccc::is_psci(fid) {
        if let Some(outcome) = psci::call(v.vm, v.index, fid, regs.x[1], regs.x[2], regs.x[3]) {
            return psci_outcome(v, regs, outcome);
        }
    }
    regs.x[0] = match fid {
        SMCCC_VERSION => 0x1_0001,
        SMCCC_ARCH_FEATURES => SMCCC_NOT_SUPPORTED,
        hypercall::NULL => 0,
        hypercall::HOST_LPIS_FREE => super::passthrough::free_host_lpis() as u64,
        hypercall::ANOMALIES => v.vm.anomalies(),
        hypercall::YIELD => {
            regs.x[0] = 0;
            return Exit::Yield;
        }
        hypercall::EXIT_STATUS => {
            v.vm.exit_status.store(regs.x[1] as u32, Ordering::Release);
            0
        }
        // Out of the match above, which the common calls go through.
        _ => measurement_call(v, regs, fid),
    };
    Exit::Continue
}

/// Calls for benchmarks, and unknown ones.
#[inline(never)]
fn measurement_call(v: &'static Vcpu, regs: &mut GuestRegs, fid: u32) -> u64 {
    match fid {
        hypercall::EXITS => {
            regs.x[1] = v.irq_exits.load(Ordering::Relaxed);
            v.exits.load(Ordering::Relaxed)
        }
        _ => {
            log::debug!(
                "vm {}: unknown service call {fid:#x} from vCPU {}",
                v.vm.name,
                v.index
            );
            SMCCC_NOT_SUPPORTED
        }
    }
}

fn psci_outcome(v: &'static Vcpu, regs: &mut GuestRegs, outcome: Outcome) -> Exit {
    match outcome {
        Outcome::Return(r) => {
            regs.x[0] = r as u64;
            Exit::Continue
        }
        Outcome::Started { target } => {
            regs.x[0] = psci::ret::SUCCESS as u64;
            super::kick(v.vm.vcpus()[target].pcpu);
            Exit::Continue
        }
        Outcome::CpuOff => {
            v.power.set_off();
            Exit::Off
        }
        Outcome::SystemOff => {
            let status = v.vm.exit_status.load(Ordering::Acquire);
            v.vm.stop(
                format_args!("powered off (PSCI SYSTEM_OFF), status {status}"),
                status,
            );
            Exit::Off
        }
        Outcome::SystemReset => {
            v.vm.request_reset(v.index);
            Exit::Off
        }
    }
}

/// The faulting IPA of a stage-2 abort: HPFAR_EL2.FIPA gives bits
/// [47:12] (Arm ARM D24.2.52), FAR_EL2 (`far`) the page offset.
fn fault_ipa(far: u64) -> u64 {
    ((sysreg::hpfar_el2() >> 4) << 12) | (far & 0xfff)
}

fn data_abort(v: &'static Vcpu, regs: &mut GuestRegs, esr: Esr) -> Exit {
    let far = sysreg::far_el2();
    let ipa = fault_ipa(far);
    // ISS.S1PTW: the stage-1 walk itself hit an unmapped IPA.
    let s1ptw = esr.0 & (1 << 7) != 0;
    let access = match MmioAccess::decode(esr) {
        Ok(a) if !s1ptw => a,
        _ => {
            guest_warn!(
                "vCPU {} data abort at IPA {ipa:#x} (pc {:#x}) without a usable syndrome; injecting an external abort",
                v.index,
                regs.pc
            );
            return inject_abort(regs, true, far, esr.0 & (1 << 6) != 0);
        }
    };
    let Some((dev, off)) = v.vm.bus.find(ipa) else {
        guest_warn!(
            "vCPU {} {} of {} bytes at IPA {ipa:#x} (pc {:#x}): nothing there; injecting an external abort",
            v.index,
            if access.write { "write" } else { "read" },
            access.width,
            regs.pc
        );
        return inject_abort(regs, true, far, access.write);
    };
    let ctx = crate::bus::MmioCtx {
        vcpu: v.index,
        mem: v.vm,
    };
    if access.write {
        let value = access.store_value(regs.get(access.reg));
        let kick = dev.write(&ctx, off, access.width, value);
        v.vm.kick(kick);
    } else {
        let raw = dev.read(&ctx, off, access.width);
        regs.set(access.reg, access.load_value(raw));
    }
    regs.pc += 4;
    Exit::Continue
}

fn instruction_abort(v: &'static Vcpu, regs: &mut GuestRegs, _esr: Esr) -> Exit {
    let far = sysreg::far_el2();
    let vbar = sysreg::vbar_el1();
    if (vbar..vbar + 0x800).contains(&regs.pc) {
        // Fetching its own exception vectors failed: injecting another
        // abort would only loop.
        v.vm.stop(
            format_args!(
                "vCPU {} cannot fetch its exception vectors (VBAR_EL1 {vbar:#x}, pc {:#x}): it would fault forever",
                v.index, regs.pc
            ),
            STATUS_GUEST_FAULT,
        );
        return Exit::Off;
    }
    guest_warn!(
        "vCPU {} instruction fetch from unmapped IPA {:#x}; injecting an external abort",
        v.index,
        fault_ipa(far)
    );
    inject_abort(regs, false, far, false)
}

/// Where an exception to EL1 lands relative to VBAR_EL1, from the PSTATE
/// it interrupts (Arm ARM D1.3.1, table "Vector offsets").
fn vector_offset(pstate: u64) -> u64 {
    match pstate & 0xf {
        0b0101 => 0x200, // EL1h: current EL, SP_ELx
        0b0100 => 0x000, // EL1t: current EL, SP_EL0
        _ => 0x400,      // EL0: lower EL, AArch64
    }
}

/// Take a synchronous exception to the guest's EL1 with syndrome `esr`.
fn inject_sync(regs: &mut GuestRegs, esr: u64, far: Option<u64>) {
    sysreg::set_esr_el1(esr);
    if let Some(far) = far {
        sysreg::set_far_el1(far);
    }
    sysreg::set_elr_el1(regs.pc);
    sysreg::set_spsr_el1(regs.pstate);
    regs.pc = sysreg::vbar_el1() + vector_offset(regs.pstate);
    regs.pstate = super::PSTATE_EL1H_MASKED;
}

/// A synchronous external abort (FSC 0x10) at the guest's EL1, as a data
/// or instruction abort from the EL it was running at.
fn inject_abort(regs: &mut GuestRegs, data: bool, far: u64, write: bool) -> Exit {
    let from_el1 = regs.pstate & 0xc != 0;
    let ec: u64 = match (data, from_el1) {
        (true, true) => 0x25,
        (true, false) => 0x24,
        (false, true) => 0x21,
        (false, false) => 0x20,
    };
    let esr = (ec << 26) | (1 << 25) | 0x10 | if data && write { 1 << 6 } else { 0 };
    inject_sync(regs, esr, Some(far));
    Exit::Continue
}

/// An UNDEFINED instruction exception (EC 0) at the guest's EL1.
fn inject_undef(regs: &mut GuestRegs) -> Exit {
    inject_sync(regs, 1 << 25, None);
    Exit::Continue
}

const ICC_SGI0R_EL1: idregs::Encoding = (3, 0, 12, 11, 7);
const SGI_REGISTERS: [idregs::Encoding; 3] = [
    vigil_vm::esr::sysreg::ICC_SGI1R_EL1,
    (3, 0, 12, 11, 6), // ICC_ASGI1R_EL1
    ICC_SGI0R_EL1,
];

macro_rules! read_id_reg {
    ($crm:expr, $op2:expr; $($c:literal, $o:literal);*) => {
        match ($crm, $op2) {
            $(
                ($c, $o) => {
                    let v: u64;
                    // SAFETY: reading an ID register has no side effects.
                    unsafe { core::arch::asm!(concat!("mrs {}, S3_0_C0_C", $c, "_", $o), out(reg) v, options(nomem, nostack)) };
                    v
                }
            )*
            _ => 0,
        }
    };
}

/// The host's value of ID register (3, 0, 0, crm, op2).
fn host_id_reg(crm: u8, op2: u8) -> u64 {
    read_id_reg!(crm, op2;
        1,0; 1,1; 1,2; 1,3; 1,4; 1,5; 1,6; 1,7;
        2,0; 2,1; 2,2; 2,3; 2,4; 2,5; 2,6; 2,7;
        3,0; 3,1; 3,2; 3,4; 3,5; 3,6;
        4,0; 4,1; 4,2; 4,4; 4,5; 4,6; 4,7;
        5,0; 5,1; 5,4; 5,5;
        6,0; 6,1; 6,2; 6,3;
        7,0; 7,1; 7,2; 7,3; 7,4)
}

fn sysreg_access(v: &'static Vcpu, regs: &mut GuestRegs, esr: Esr) -> Exit {
    let Some(a) = SysRegAccess::decode(esr) else {
        return inject_undef(regs);
    };
    let enc = a.encoding();
    if a.op0 == 2 && super::debug::on_trap(&v.debug) {
        // A debug register (MDCR_EL2.TDA/TDOSA/TDRA): this vCPU's debug
        // state is now live and untrapped; the access re-executes.
        return Exit::Continue;
    }
    if !a.read && SGI_REGISTERS.contains(&enc) {
        // ICC_SGI1R_EL1 / ICC_ASGI1R_EL1 (Group 1) or ICC_SGI0R_EL1
        // (Group 0): trapped because HCR_EL2.IMO is set (IHI 0069
        // §12.11, "ICC_SGI1R_EL1").
        let group1 = enc != ICC_SGI0R_EL1;
        let kick = v.vm.gic.send_sgi(v.index, regs.get(a.reg), group1);
        v.vm.kick(kick);
        regs.pc += 4;
        return Exit::Continue;
    }
    if idregs::is_id_register(enc) && a.read {
        // Unallocated encodings in the ID space read as zero (Arm ARM
        // D18.3.1).
        let value = idregs::sanitize(enc, host_id_reg(a.crm, a.op2));
        regs.set(a.reg, value);
        regs.pc += 4;
        return Exit::Continue;
    }
    let (op0, op1, crn, crm, op2) = enc;
    guest_warn!(
        "vCPU {} {} S{op0}_{op1}_C{crn}_C{crm}_{op2} at pc {:#x}: not emulated; injecting UNDEFINED",
        v.index,
        if a.read { "read of" } else { "write to" },
        regs.pc
    );
    inject_undef(regs)
}
