//! The world switch: entering a guest and coming back on its exceptions.
//!
//! `__guest_enter(regs)` saves the hypervisor's callee-saved registers and
//! stack pointer in `regs.host`, loads the guest's FP/SIMD and general
//! registers, and ERETs. An exception from the guest (a lower-EL vector)
//! saves the guest's registers into the context that `CURRENT_REGS` names
//! for this CPU, restores the hypervisor's registers and returns from
//! `__guest_enter` with the vector number (8..15). The run loop then
//! handles the exit in ordinary Rust.
//!
//! FP/SIMD state is not touched by exits: Vigil is built for
//! `aarch64-unknown-none-softfloat`, so no EL2 code uses those registers,
//! and the loaded vCPU's values stay in them across its exits. They are
//! switched with the rest of the EL1 state, when another vCPU is loaded on
//! the CPU (`save_fp`/`restore_fp`), as KVM does with its lazy FP switch.

use core::arch::global_asm;
use core::sync::atomic::AtomicU64;
use vigil_platform::MAX_CPUS;

/// A guest's general-purpose and FP/SIMD registers, and the hypervisor's
/// registers while the guest runs. Layout shared with the assembly.
#[repr(C, align(16))]
pub struct GuestRegs {
    pub x: [u64; 31],
    /// ELR_EL2: where the guest resumes.
    pub pc: u64,
    /// SPSR_EL2: the guest's PSTATE.
    pub pstate: u64,
    /// x19..x30 and sp of the hypervisor (valid only while the guest runs).
    host: [u64; 13],
    pub q: [u128; 32],
    pub fpsr: u64,
    pub fpcr: u64,
}

impl GuestRegs {
    pub const fn new() -> Self {
        Self {
            x: [0; 31],
            pc: 0,
            pstate: 0,
            host: [0; 13],
            q: [0; 32],
            fpsr: 0,
            fpcr: 0,
        }
    }

    /// Read general register `n`; 31 is XZR.
    pub fn get(&self, n: u8) -> u64 {
        if n == 31 {
            0
        } else {
            self.x[n as usize]
        }
    }

    /// Write general register `n`; writes to 31 (XZR) are discarded.
    pub fn set(&mut self, n: u8, v: u64) {
        if n != 31 {
            self.x[n as usize] = v;
        }
    }
}

const OFF_PC: usize = 248;
const OFF_HOST: usize = 264;
const OFF_Q: usize = 368;
const OFF_FPSR: usize = 880;
const _: () = {
    assert!(core::mem::offset_of!(GuestRegs, pc) == OFF_PC);
    assert!(core::mem::offset_of!(GuestRegs, host) == OFF_HOST);
    assert!(core::mem::offset_of!(GuestRegs, q) == OFF_Q);
    assert!(core::mem::offset_of!(GuestRegs, fpsr) == OFF_FPSR);
};

/// Per physical CPU: the guest registers the lower-EL vectors save into.
#[no_mangle]
pub static CURRENT_REGS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

extern "C" {
    /// Run the guest whose registers are `regs` until it takes an
    /// exception to EL2; returns the vector number (8..15).
    ///
    /// # Safety
    /// `regs` must be this CPU's `CURRENT_REGS` entry, stay valid and
    /// untouched until return, and hold a guest state whose stage-2 and
    /// EL1 system registers are loaded.
    pub fn __guest_enter(regs: *mut GuestRegs) -> u64;
    fn __fp_save(regs: *mut GuestRegs);
    fn __fp_restore(regs: *const GuestRegs);
}

/// Save the FP/SIMD registers (the vCPU loaded here) into `regs`.
pub fn save_fp(regs: &mut GuestRegs) {
    // SAFETY: writes only `regs.q`, `regs.fpsr` and `regs.fpcr`; clobbers
    // x1-x3, caller-saved in the C ABI.
    unsafe { __fp_save(regs) }
}

/// Load the FP/SIMD registers from `regs` (the vCPU being loaded here).
/// EL2 code never uses them (soft-float target), so they stay the guest's.
pub fn restore_fp(regs: &GuestRegs) {
    // SAFETY: reads only `regs`; clobbers x1-x3 and the FP/SIMD registers,
    // which no EL2 code uses.
    unsafe { __fp_restore(regs) }
}

global_asm!(
    r#"
.section .text
.global __guest_enter
__guest_enter:
    stp     x19, x20, [x0, #{host} + 0]
    stp     x21, x22, [x0, #{host} + 16]
    stp     x23, x24, [x0, #{host} + 32]
    stp     x25, x26, [x0, #{host} + 48]
    stp     x27, x28, [x0, #{host} + 64]
    stp     x29, x30, [x0, #{host} + 80]
    mov     x1, sp
    str     x1, [x0, #{host} + 96]

    ldp     x2, x3, [x0, #{pc}]
    msr     elr_el2, x2
    msr     spsr_el2, x3
    ldp     x2, x3, [x0, #16]
    ldp     x4, x5, [x0, #32]
    ldp     x6, x7, [x0, #48]
    ldp     x8, x9, [x0, #64]
    ldp     x10, x11, [x0, #80]
    ldp     x12, x13, [x0, #96]
    ldp     x14, x15, [x0, #112]
    ldp     x16, x17, [x0, #128]
    ldp     x18, x19, [x0, #144]
    ldp     x20, x21, [x0, #160]
    ldp     x22, x23, [x0, #176]
    ldp     x24, x25, [x0, #192]
    ldp     x26, x27, [x0, #208]
    ldp     x28, x29, [x0, #224]
    ldr     x30, [x0, #240]
    ldp     x0, x1, [x0, #0]
    eret
    // Speculation barrier after ERET (Arm's guidance against straight-line
    // speculation).
    dsb     nsh
    isb

// Entered from a lower-EL vector with x0 = vector number and the guest's
// x0, x1 pushed on the hypervisor stack.
.global __guest_exit
__guest_exit:
    str     x2, [sp, #-16]!
    mrs     x1, tpidr_el2
    adrp    x2, CURRENT_REGS
    add     x2, x2, :lo12:CURRENT_REGS
    ldr     x1, [x2, x1, lsl #3]
    stp     x3, x4, [x1, #24]
    stp     x5, x6, [x1, #40]
    stp     x7, x8, [x1, #56]
    stp     x9, x10, [x1, #72]
    stp     x11, x12, [x1, #88]
    stp     x13, x14, [x1, #104]
    stp     x15, x16, [x1, #120]
    stp     x17, x18, [x1, #136]
    stp     x19, x20, [x1, #152]
    stp     x21, x22, [x1, #168]
    stp     x23, x24, [x1, #184]
    stp     x25, x26, [x1, #200]
    stp     x27, x28, [x1, #216]
    stp     x29, x30, [x1, #232]
    ldr     x2, [sp], #16
    str     x2, [x1, #16]
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x1, #0]
    mrs     x2, elr_el2
    mrs     x3, spsr_el2
    stp     x2, x3, [x1, #{pc}]

    ldp     x19, x20, [x1, #{host} + 0]
    ldp     x21, x22, [x1, #{host} + 16]
    ldp     x23, x24, [x1, #{host} + 32]
    ldp     x25, x26, [x1, #{host} + 48]
    ldp     x27, x28, [x1, #{host} + 64]
    ldp     x29, x30, [x1, #{host} + 80]
    ldr     x2, [x1, #{host} + 96]
    mov     sp, x2
    ret

// __fp_save(regs) / __fp_restore(regs): the FP/SIMD registers, FPSR and
// FPCR to and from `regs`. The only FP/SIMD instructions in Vigil (the
// soft-float target has none of its own).
.arch_extension fp
.arch_extension simd
.global __fp_save
__fp_save:
    add     x1, x0, #{q}
    stp     q0, q1, [x1, #0]
    stp     q2, q3, [x1, #32]
    stp     q4, q5, [x1, #64]
    stp     q6, q7, [x1, #96]
    stp     q8, q9, [x1, #128]
    stp     q10, q11, [x1, #160]
    stp     q12, q13, [x1, #192]
    stp     q14, q15, [x1, #224]
    stp     q16, q17, [x1, #256]
    stp     q18, q19, [x1, #288]
    stp     q20, q21, [x1, #320]
    stp     q22, q23, [x1, #352]
    stp     q24, q25, [x1, #384]
    stp     q26, q27, [x1, #416]
    stp     q28, q29, [x1, #448]
    stp     q30, q31, [x1, #480]
    mrs     x2, fpsr
    mrs     x3, fpcr
    add     x1, x0, #{fpsr}
    stp     x2, x3, [x1]
    ret

.global __fp_restore
__fp_restore:
    add     x1, x0, #{q}
    ldp     q0, q1, [x1, #0]
    ldp     q2, q3, [x1, #32]
    ldp     q4, q5, [x1, #64]
    ldp     q6, q7, [x1, #96]
    ldp     q8, q9, [x1, #128]
    ldp     q10, q11, [x1, #160]
    ldp     q12, q13, [x1, #192]
    ldp     q14, q15, [x1, #224]
    ldp     q16, q17, [x1, #256]
    ldp     q18, q19, [x1, #288]
    ldp     q20, q21, [x1, #320]
    ldp     q22, q23, [x1, #352]
    ldp     q24, q25, [x1, #384]
    ldp     q26, q27, [x1, #416]
    ldp     q28, q29, [x1, #448]
    ldp     q30, q31, [x1, #480]
    add     x1, x0, #{fpsr}
    ldp     x2, x3, [x1]
    msr     fpsr, x2
    msr     fpcr, x3
    ret
"#,
    host = const OFF_HOST,
    q = const OFF_Q,
    fpsr = const OFF_FPSR,
    pc = const OFF_PC,
);
