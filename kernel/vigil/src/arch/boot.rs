//! Entry from QEMU and from PSCI CPU_ON, up to the first Rust code.
//!
//! The primary CPU enters `_start` at EL2 with the MMU off (QEMU starts
//! secondaries powered off). It clears BSS and runs `kmain` on CPU 0's
//! stack, the one in the image. Secondaries enter `_secondary_entry` with
//! their logical index in x0 (PSCI context id), take their stack from the
//! block the primary allocated for them ([`alloc_stacks`]), turn on the MMU
//! with the tables the primary published in `SECONDARY_MMU`, and run
//! `secondary_main`.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// Per-CPU stack size and the unmapped guard page below each stack. Must
/// match `linker/vigil.ld`.
pub const STACK_SIZE: u64 = 64 * 1024;
pub const GUARD_SIZE: u64 = 4096;
/// One CPU's guard page and stack.
const SLOT: u64 = STACK_SIZE + GUARD_SIZE;

/// MAIR_EL2, TCR_EL2, TTBR0_EL2 and SCTLR_EL2 for secondaries, written by
/// the primary (and cleaned to the point of coherency, since secondaries
/// read them with the MMU and caches off) before any CPU_ON.
#[no_mangle]
pub static SECONDARY_MMU: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// The secondaries' stacks: the base of their block and the number of
/// CPUs (the boot CPU included). CPU i >= 1 has the slot at
/// base + (i - 1) x SLOT, its guard page at the bottom. Cleaned to the
/// point of coherency like `SECONDARY_MMU`.
#[no_mangle]
static SECONDARY_STACKS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

global_asm!(
    r#"
.section .text.boot, "ax"
.global _start
_start:
    mrs     x9, CurrentEL
    cmp     x9, #(2 << 2)
    b.ne    .Lnot_el2

    // Clear BSS. It is 16-byte aligned and sized (linker script).
    adrp    x9, __bss_start
    add     x9, x9, :lo12:__bss_start
    adrp    x10, __bss_end
    add     x10, x10, :lo12:__bss_end
1:  cmp     x9, x10
    b.hs    2f
    stp     xzr, xzr, [x9], #16
    b       1b
2:  mov     x0, #0
    adrp    x1, __stacks_end
    add     x1, x1, :lo12:__stacks_end
    bl      .Lcpu_setup
    bl      kmain
    b       .Lpark

.global _secondary_entry
_secondary_entry:
    mrs     x9, CurrentEL
    cmp     x9, #(2 << 2)
    b.ne    .Lnot_el2
    // Index 1..count, stack top = base + index * SLOT (the MMU is off:
    // SECONDARY_STACKS was cleaned to the point of coherency).
    adrp    x9, SECONDARY_STACKS
    add     x9, x9, :lo12:SECONDARY_STACKS
    ldp     x10, x11, [x9]
    cbz     x0, .Lpark
    cmp     x0, x11
    b.hs    .Lpark
    ldr     x12, ={slot}
    madd    x1, x0, x12, x10
    bl      .Lcpu_setup

    // MMU on with the primary's tables before touching Rust data.
    adrp    x9, SECONDARY_MMU
    add     x9, x9, :lo12:SECONDARY_MMU
    ldp     x10, x11, [x9]
    ldp     x12, x13, [x9, #16]
    msr     mair_el2, x10
    msr     tcr_el2, x11
    msr     ttbr0_el2, x12
    isb
    tlbi    alle2
    dsb     nsh
    isb
    msr     sctlr_el2, x13
    isb
    mov     x0, x19
    bl      secondary_main
    b       .Lpark

// x0 = logical CPU index, x1 = its stack top. Sets SP, TPIDR_EL2,
// VBAR_EL2, FP access. Preserves x0 and keeps it in x19 too.
.Lcpu_setup:
    mov     x19, x0
    msr     tpidr_el2, x0
    mov     sp, x1
    adrp    x9, exception_vectors
    add     x9, x9, :lo12:exception_vectors
    msr     vbar_el2, x9
    // CPTR_EL2: FP/SIMD untrapped, SVE and SME trapped (sysreg::CPTR_EL2_RUN).
    ldr     x9, ={cptr}
    msr     cptr_el2, x9
    // SCTLR_EL2: RES1 bits only, MMU and caches off until Rust enables them.
    ldr     x9, ={sctlr_res1}
    msr     sctlr_el2, x9
    isb
    ret

.Lnot_el2:
.Lpark:
    wfe
    b       .Lpark
"#,
    slot = const SLOT,
    sctlr_res1 = const super::mmu::SCTLR_EL2_RES1,
    cptr = const super::sysreg::CPTR_EL2_RUN,
);

extern "C" {
    /// Entry point for secondaries, for PSCI CPU_ON.
    pub fn _secondary_entry();
    static __stacks_start: u8;
    static __stacks_end: u8;
}

/// Allocate the stacks of CPUs 1..`cpus` in one block (one allocation:
/// linear in CPUs) and publish it for `_secondary_entry`. Primary CPU,
/// once, before the MMU is on (the guard pages are left out of its map)
/// and before any CPU_ON. The stacks are not cleared. `alloc(frames,
/// align)` is the frame allocator's, a room above this one.
pub fn alloc_stacks<E>(
    cpus: usize,
    alloc: impl FnOnce(u64, u64) -> Result<u64, E>,
) -> Result<(), E> {
    let base = match cpus {
        0 | 1 => 0,
        n => alloc((n as u64 - 1) * SLOT / 4096, 4096)?,
    };
    SECONDARY_STACKS[0].store(base, Ordering::Relaxed);
    SECONDARY_STACKS[1].store(cpus as u64, Ordering::Relaxed);
    Ok(())
}

/// Make [`alloc_stacks`]'s result visible to CPUs with their caches off.
/// Once the MMU is on (cache maintenance by VA needs it).
pub fn publish_stacks() {
    super::mmu::clean_to_poc(
        SECONDARY_STACKS.as_ptr() as u64,
        core::mem::size_of_val(&SECONDARY_STACKS),
    );
}

/// The guard page below CPU `index`'s stack.
pub fn stack_guard(index: usize) -> u64 {
    match index {
        0 => stacks_start(),
        i => SECONDARY_STACKS[0].load(Ordering::Relaxed) + (i as u64 - 1) * SLOT,
    }
}

/// CPUs that have a stack: those [`alloc_stacks`] was given.
pub fn stack_count() -> usize {
    (SECONDARY_STACKS[1].load(Ordering::Relaxed) as usize).max(1)
}

pub fn stacks_start() -> u64 {
    core::ptr::addr_of!(__stacks_start) as u64
}

pub fn stacks_end() -> u64 {
    core::ptr::addr_of!(__stacks_end) as u64
}
