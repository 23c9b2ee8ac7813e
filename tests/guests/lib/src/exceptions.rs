//! EL1 exception vectors and the "expect an exception" API.
//!
//! Every vector saves the interrupted context (all general registers, the
//! caller-saved FP/SIMD registers, FPSR/FPCR, ELR/SPSR/ESR/FAR) on the
//! current stack and calls [`vigil_guest_exception`]. A synchronous exception
//! taken while the current vCPU runs a closure under [`expect_exception`] is
//! recorded and the faulting instruction skipped (ELR_EL1 += 4); an IRQ
//! from EL1 goes to [`crate::gic`]'s handlers; anything else prints "guest: PANIC: unexpected exception ..." and exits with
//! status 1.

use core::arch::global_asm;
use core::fmt;
use core::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, Ordering};

use crate::boot::MAX_CPUS;
use crate::cpu;

/// ESR_EL1.EC values the tests look at.
pub mod ec {
    /// Unknown reason (UNDEF).
    pub const UNKNOWN: u64 = 0x00;
    /// HVC from AArch64.
    pub const HVC64: u64 = 0x16;
    /// Trapped MSR/MRS/system instruction.
    pub const SYSREG: u64 = 0x18;
    /// Instruction abort from a lower EL.
    pub const IABT_LOWER: u64 = 0x20;
    /// Instruction abort from the same EL.
    pub const IABT_CUR: u64 = 0x21;
    /// PC alignment fault.
    pub const PC_ALIGN: u64 = 0x22;
    /// Data abort from a lower EL.
    pub const DABT_LOWER: u64 = 0x24;
    /// Data abort from the same EL.
    pub const DABT_CUR: u64 = 0x25;
    /// SP alignment fault.
    pub const SP_ALIGN: u64 = 0x26;
}

/// A synchronous exception taken under [`expect_exception`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    /// ESR_EL1 at the exception.
    pub esr: u64,
    /// FAR_EL1 at the exception (meaningful for aborts).
    pub far: u64,
    /// ELR_EL1 at the exception: the faulting instruction.
    pub elr: u64,
}

impl Exception {
    /// ESR_EL1.EC, the exception class.
    pub fn ec(&self) -> u64 {
        (self.esr >> 26) & 0x3f
    }

    /// ESR_EL1.ISS.
    pub fn iss(&self) -> u64 {
        self.esr & 0x1ff_ffff
    }

    /// The data/instruction fault status code (ISS[5:0]) of an abort.
    pub fn fsc(&self) -> u64 {
        self.esr & 0x3f
    }

    /// A data abort from EL1 with a synchronous external abort status
    /// (DFSC 0x10) at `addr`: what Vigil injects for an access outside the
    /// VM's RAM and devices.
    pub fn is_external_abort_at(&self, addr: u64) -> bool {
        self.ec() == ec::DABT_CUR && self.fsc() == 0x10 && self.far == addr
    }
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ESR {:#x} (EC {:#04x}, ISS {:#x}) FAR {:#x} ELR {:#x}",
            self.esr,
            self.ec(),
            self.iss(),
            self.far,
            self.elr
        )
    }
}

/// What a vector saved. The layout is shared with the assembly below.
#[repr(C)]
pub struct Frame {
    /// x0..x30.
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
    pub esr: u64,
    pub far: u64,
    _fpsr: u64,
    _fpcr: u64,
    _pad: u64,
    /// q0..q7 then q16..q31 (the caller-saved FP/SIMD registers).
    _q: [u128; 24],
}

const FRAME_SIZE: usize = core::mem::size_of::<Frame>();
const _: () = assert!(FRAME_SIZE == 688);
const _: () = assert!(core::mem::offset_of!(Frame, elr) == 248);
const _: () = assert!(core::mem::offset_of!(Frame, _q) == 304);
const _: () = assert!(core::mem::offset_of!(Frame, _fpsr) == 280);

global_asm!(
    r#"
.macro VECTOR kind
    .balign 0x80
    sub     sp, sp, #{frame}
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       .Lexception_common
.endm

.section .text.vectors, "ax"
.balign 0x800
.global vigil_guest_vectors
vigil_guest_vectors:
    VECTOR 0
    VECTOR 1
    VECTOR 2
    VECTOR 3
    VECTOR 4
    VECTOR 5
    VECTOR 6
    VECTOR 7
    VECTOR 8
    VECTOR 9
    VECTOR 10
    VECTOR 11
    VECTOR 12
    VECTOR 13
    VECTOR 14
    VECTOR 15

.Lexception_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x9, elr_el1
    stp     x30, x9, [sp, #240]
    mrs     x9, spsr_el1
    mrs     x10, esr_el1
    stp     x9, x10, [sp, #256]
    mrs     x9, far_el1
    str     x9, [sp, #272]
    stp     q0, q1, [sp, #304]
    stp     q2, q3, [sp, #336]
    stp     q4, q5, [sp, #368]
    stp     q6, q7, [sp, #400]
    stp     q16, q17, [sp, #432]
    stp     q18, q19, [sp, #464]
    stp     q20, q21, [sp, #496]
    stp     q22, q23, [sp, #528]
    stp     q24, q25, [sp, #560]
    stp     q26, q27, [sp, #592]
    stp     q28, q29, [sp, #624]
    stp     q30, q31, [sp, #656]
    mrs     x9, fpsr
    mrs     x10, fpcr
    stp     x9, x10, [sp, #280]

    mov     x1, sp
    bl      vigil_guest_exception

    ldp     x9, x10, [sp, #280]
    msr     fpsr, x9
    msr     fpcr, x10
    ldp     q0, q1, [sp, #304]
    ldp     q2, q3, [sp, #336]
    ldp     q4, q5, [sp, #368]
    ldp     q6, q7, [sp, #400]
    ldp     q16, q17, [sp, #432]
    ldp     q18, q19, [sp, #464]
    ldp     q20, q21, [sp, #496]
    ldp     q22, q23, [sp, #528]
    ldp     q24, q25, [sp, #560]
    ldp     q26, q27, [sp, #592]
    ldp     q28, q29, [sp, #624]
    ldp     q30, q31, [sp, #656]
    ldr     x9, [sp, #256]
    msr     spsr_el1, x9
    ldp     x30, x9, [sp, #240]
    msr     elr_el1, x9
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    add     sp, sp, #{frame}
    eret
"#,
    frame = const FRAME_SIZE,
);

/// Per-vCPU state of [`expect_exception`].
struct Slot {
    armed: AtomicBool,
    taken: AtomicBool,
    esr: AtomicU64,
    far: AtomicU64,
    elr: AtomicU64,
}

static SLOTS: [Slot; MAX_CPUS] = [const {
    Slot {
        armed: AtomicBool::new(false),
        taken: AtomicBool::new(false),
        esr: AtomicU64::new(0),
        far: AtomicU64::new(0),
        elr: AtomicU64::new(0),
    }
}; MAX_CPUS];

fn slot() -> &'static Slot {
    &SLOTS[cpu::index() % MAX_CPUS]
}

/// Runs `f` and returns the synchronous exception it took, if any. Only one
/// is expected: a second one inside the same `f` is fatal.
///
/// The exception's instruction is skipped (ELR_EL1 += 4) and `f` goes on
/// from the next one, so `f` should be a short sequence whose faulting
/// instruction is an inline `asm!` whose outputs may be left unwritten
/// (e.g. a single load or store, an `hvc`, an `mrs`). Nested calls work;
/// instruction aborts and PC/SP alignment faults are never skipped.
pub fn expect_exception<F: FnOnce()>(f: F) -> Option<Exception> {
    let s = slot();
    let was_armed = s.armed.load(Ordering::Relaxed);
    let was_taken = s.taken.load(Ordering::Relaxed);
    let saved = (
        s.esr.load(Ordering::Relaxed),
        s.far.load(Ordering::Relaxed),
        s.elr.load(Ordering::Relaxed),
    );
    s.taken.store(false, Ordering::Relaxed);
    s.armed.store(true, Ordering::Relaxed);
    compiler_fence(Ordering::SeqCst);
    f();
    compiler_fence(Ordering::SeqCst);
    s.armed.store(false, Ordering::Relaxed);
    let result = s.taken.load(Ordering::Relaxed).then(|| Exception {
        esr: s.esr.load(Ordering::Relaxed),
        far: s.far.load(Ordering::Relaxed),
        elr: s.elr.load(Ordering::Relaxed),
    });
    s.esr.store(saved.0, Ordering::Relaxed);
    s.far.store(saved.1, Ordering::Relaxed);
    s.elr.store(saved.2, Ordering::Relaxed);
    s.taken.store(was_taken, Ordering::Relaxed);
    s.armed.store(was_armed, Ordering::Relaxed);
    result
}

const KIND_NAMES: [&str; 4] = ["sync", "irq", "fiq", "serror"];
const ORIGIN_NAMES: [&str; 4] = ["EL1t", "EL1h", "EL0/64", "EL0/32"];

#[no_mangle]
extern "C" fn vigil_guest_exception(kind: u64, frame: &mut Frame) {
    let e = Exception {
        esr: frame.esr,
        far: frame.far,
        elr: frame.elr,
    };
    let skippable = !matches!(
        e.ec(),
        ec::IABT_LOWER | ec::IABT_CUR | ec::PC_ALIGN | ec::SP_ALIGN
    );
    // IRQ from EL1 with SP_EL0 or SP_EL1: the GIC driver's handlers.
    if kind == 1 || kind == 5 {
        crate::gic::dispatch();
        return;
    }
    let s = slot();
    // Synchronous, from EL1 with SP_EL0 or SP_EL1.
    if (kind == 0 || kind == 4) && skippable && s.armed.load(Ordering::Relaxed) {
        s.armed.store(false, Ordering::Relaxed);
        s.esr.store(e.esr, Ordering::Relaxed);
        s.far.store(e.far, Ordering::Relaxed);
        s.elr.store(e.elr, Ordering::Relaxed);
        s.taken.store(true, Ordering::Relaxed);
        frame.elr += 4;
        return;
    }
    s.armed.store(false, Ordering::Relaxed);
    crate::println!(
        "PANIC: unexpected {} exception from {} on cpu {}: {} SPSR {:#x} x0 {:#x} x30 {:#x}",
        KIND_NAMES[(kind % 4) as usize],
        ORIGIN_NAMES[(kind / 4 % 4) as usize],
        cpu::index(),
        e,
        frame.spsr,
        frame.x[0],
        frame.x[30]
    );
    crate::exit(1);
}
