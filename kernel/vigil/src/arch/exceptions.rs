//! EL2 exception vectors and the report for exceptions Vigil does not
//! expect.
//!
//! Every vector saves the general-purpose registers, ELR_EL2 and SPSR_EL2
//! into a [`TrapFrame`] on the current stack and calls
//! [`handle_exception`] with the vector's [`VectorKind`]. An IRQ goes to
//! the GIC driver; every other exception is unexpected: the report names
//! the exception class, ESR, FAR, ELR and CPU, and QEMU exits with a
//! failure status. The GIC driver, the console and the exit path are rooms
//! above `arch`, so they reach it as [`Handlers`] registered at boot.

use core::arch::global_asm;

use aarch64_cpu::registers::{Readable, ESR_EL2, FAR_EL2};

/// Saved state at exception entry. Layout shared with the assembly below.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
    _pad: u64,
}

const FRAME_SIZE: usize = core::mem::size_of::<TrapFrame>();
const _: () = assert!(FRAME_SIZE.is_multiple_of(16));

/// Which of the 16 vectors was taken (Arm ARM D1.3.1, "Exception vectors").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum VectorKind {
    CurrentSp0Sync = 0,
    CurrentSp0Irq,
    CurrentSp0Fiq,
    CurrentSp0SError,
    CurrentSpxSync,
    CurrentSpxIrq,
    CurrentSpxFiq,
    CurrentSpxSError,
    Lower64Sync,
    Lower64Irq,
    Lower64Fiq,
    Lower64SError,
    Lower32Sync,
    Lower32Irq,
    Lower32Fiq,
    Lower32SError,
}

impl VectorKind {
    pub fn from_raw(raw: u64) -> Self {
        const ALL: [VectorKind; 16] = [
            VectorKind::CurrentSp0Sync,
            VectorKind::CurrentSp0Irq,
            VectorKind::CurrentSp0Fiq,
            VectorKind::CurrentSp0SError,
            VectorKind::CurrentSpxSync,
            VectorKind::CurrentSpxIrq,
            VectorKind::CurrentSpxFiq,
            VectorKind::CurrentSpxSError,
            VectorKind::Lower64Sync,
            VectorKind::Lower64Irq,
            VectorKind::Lower64Fiq,
            VectorKind::Lower64SError,
            VectorKind::Lower32Sync,
            VectorKind::Lower32Irq,
            VectorKind::Lower32Fiq,
            VectorKind::Lower32SError,
        ];
        ALL[(raw & 15) as usize]
    }
}

global_asm!(
    r#"
.macro VECTOR kind
    .balign 0x80
    sub     sp, sp, #{frame}
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       .Ltrap_common
.endm

// Exceptions from a guest leave it through the world switch
// (vm/switch.rs), which returns to the run loop.
.macro VECTOR_LOWER kind
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mov     x0, #\kind
    b       __guest_exit
.endm

.section .text
.balign 0x800
.global exception_vectors
exception_vectors:
    VECTOR 0
    VECTOR 1
    VECTOR 2
    VECTOR 3
    VECTOR 4
    VECTOR 5
    VECTOR 6
    VECTOR 7
    VECTOR_LOWER 8
    VECTOR_LOWER 9
    VECTOR_LOWER 10
    VECTOR_LOWER 11
    VECTOR_LOWER 12
    VECTOR_LOWER 13
    VECTOR_LOWER 14
    VECTOR_LOWER 15

.Ltrap_common:
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
    mrs     x9, elr_el2
    mrs     x10, spsr_el2
    stp     x30, x9, [sp, #240]
    str     x10, [sp, #256]
    mov     x1, sp
    bl      handle_exception
    ldp     x30, x9, [sp, #240]
    ldr     x10, [sp, #256]
    msr     elr_el2, x9
    msr     spsr_el2, x10
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

/// A short name for an exception class (ESR_ELx.EC, Arm ARM D24.2.40).
pub fn ec_name(ec: u64) -> &'static str {
    match ec {
        0x00 => "unknown reason",
        0x01 => "WFI/WFE",
        0x07 => "SVE/SIMD/FP access",
        0x0e => "illegal execution state",
        0x15 => "SVC from AArch64",
        0x16 => "HVC from AArch64",
        0x17 => "SMC from AArch64",
        0x18 => "MSR/MRS/system instruction",
        0x20 => "instruction abort from a lower EL",
        0x21 => "instruction abort at EL2",
        0x22 => "PC alignment fault",
        0x24 => "data abort from a lower EL",
        0x25 => "data abort at EL2",
        0x26 => "SP alignment fault",
        0x2f => "SError",
        0x3c => "BRK instruction",
        _ => "other",
    }
}

/// What the rooms above `arch` do with an exception taken at EL2.
pub struct Handlers {
    /// An IRQ (the GIC driver's acknowledge and dispatch).
    pub irq: fn(),
    /// Print one line of the report on an unexpected exception, even with
    /// the console held (the console's emergency path).
    pub report: fn(core::fmt::Arguments<'_>),
    /// End the run with a failure status.
    pub fail: fn() -> !,
}

static HANDLERS: spin::Once<Handlers> = spin::Once::new();

/// Register the [`Handlers`]: first thing at boot, before anything can
/// fault or IRQs are unmasked.
pub fn set_handlers(h: Handlers) {
    HANDLERS.call_once(|| h);
}

/// Print everything known about an exception Vigil cannot handle, then end
/// the run with a failure status.
fn unexpected(kind: VectorKind, frame: &TrapFrame) -> ! {
    let Some(h) = HANDLERS.get() else {
        // Nowhere to report to yet (only the boot code runs before).
        loop {
            aarch64_cpu::asm::wfe();
        }
    };
    let esr = ESR_EL2.get();
    let far = FAR_EL2.get();
    let ec = (esr >> 26) & 0x3f;
    (h.report)(format_args!(
        "unexpected exception on cpu{}: {:?}: EC {:#04x} ({}) ESR {:#010x} FAR {:#018x} ELR {:#018x} SPSR {:#x}",
        crate::arch::cpu_index(),
        kind,
        ec,
        ec_name(ec),
        esr,
        far,
        frame.elr,
        frame.spsr
    ));
    if ec == 0x24 || ec == 0x25 {
        // Data abort: DFSC names the fault (Arm ARM D24.2.40, ISS encoding
        // for a Data Abort).
        (h.report)(format_args!(
            "  data abort: DFSC {:#04x} ({}), WnR {}",
            esr & 0x3f,
            crate::arch::fault_status_name(esr & 0x3f),
            (esr >> 6) & 1
        ));
    }
    (h.fail)()
}

#[no_mangle]
extern "C" fn handle_exception(kind: u64, frame: &mut TrapFrame) {
    let kind = VectorKind::from_raw(kind);
    match kind {
        VectorKind::CurrentSpxIrq => {
            if let Some(h) = HANDLERS.get() {
                (h.irq)()
            }
        }
        _ => unexpected(kind, frame),
    }
}
