//! Entry from Vigil (or bare QEMU) and from PSCI CPU_ON, up to Rust.
//!
//! vCPU 0 enters `_start` in EL1h with the MMU and caches off, DAIF masked
//! and x0 = the IPA of the VM's device tree. It clears BSS, runs on stack
//! slot 0 and calls [`primary_entry`]. A vCPU started with PSCI CPU_ON at
//! [`secondary_entry_address`] gets its context id in x0; the low 8 bits are
//! its vCPU index (its stack slot), the rest is free for the caller. It runs
//! on its own stack and calls the function registered with
//! [`set_secondary_main`] with the whole context id.
//!
//! Both paths set TPIDR_EL1 = vCPU index (see [`crate::cpu::index`]),
//! VBAR_EL1 = the library's vectors, CPACR_EL1.FPEN = 0b11 (no FP/SIMD
//! traps) and SCTLR_EL1 = its RES1 bits (MMU, caches, alignment checks off).

use core::arch::global_asm;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::{cpu, BootInfo};

/// Most vCPUs a guest supports: as many as a VM of Vigil's can have (stack
/// slots in `linker/guest.ld`, which must say the same).
pub const MAX_CPUS: usize = 64;
/// Stack size per vCPU. Must match `linker/guest.ld`.
pub const STACK_SIZE: usize = 16 * 1024;
/// The low bits of a CPU_ON context id that select the stack slot.
pub const CONTEXT_INDEX_MASK: u64 = 0xff;

/// SCTLR_EL1 RES1 bits of Armv8.0 (EIS, EOS, SPAN, TSCXT, nTLSMD, LSMAOE):
/// exception entry and return are context synchronising; M, C, I, A = 0.
const SCTLR_EL1_RES1: u64 = (1 << 29) | (1 << 28) | (1 << 23) | (1 << 22) | (1 << 20) | (1 << 11);

global_asm!(
    r#"
.section .text.boot, "ax"
.global _start
_start:
    mov     x19, x0

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
    bl      .Lcpu_setup
    mov     x0, x19
    bl      vigil_guest_primary_entry
    b       .Lpark

.global vigil_guest_secondary_entry
vigil_guest_secondary_entry:
    mov     x19, x0
    and     x0, x0, #{index_mask}
    cmp     x0, #{max_cpus}
    b.hs    .Lpark
    bl      .Lcpu_setup
    mov     x0, x19
    bl      vigil_guest_secondary_rust_entry
    b       .Lpark

// x0 = vCPU index. Sets TPIDR_EL1, SP, VBAR_EL1, CPACR_EL1, SCTLR_EL1.
.Lcpu_setup:
    msr     tpidr_el1, x0
    // Stack top = __stacks_start + (index + 1) * STACK_SIZE.
    adrp    x9, __stacks_start
    add     x9, x9, :lo12:__stacks_start
    mov     x10, #{stack_size}
    madd    x11, x0, x10, x10
    add     sp, x9, x11
    adrp    x9, vigil_guest_vectors
    add     x9, x9, :lo12:vigil_guest_vectors
    msr     vbar_el1, x9
    mov     x9, #(3 << 20)
    msr     cpacr_el1, x9
    ldr     x9, ={sctlr}
    msr     sctlr_el1, x9
    isb
    ret

.Lpark:
    wfe
    b       .Lpark
"#,
    index_mask = const CONTEXT_INDEX_MASK,
    max_cpus = const MAX_CPUS,
    stack_size = const STACK_SIZE,
    sctlr = const SCTLR_EL1_RES1,
);

extern "C" {
    fn vigil_guest_secondary_entry();
    static __image_start: u8;
    static __image_end: u8;
}

extern "Rust" {
    /// Defined by [`crate::entry!`] in the guest binary.
    fn __vigil_guest_main(boot: &'static BootInfo) -> !;
}

/// Where PSCI CPU_ON should start a secondary vCPU.
pub fn secondary_entry_address() -> u64 {
    vigil_guest_secondary_entry as *const () as usize as u64
}

/// The first and one-past-last address of the loaded image, its BSS and
/// stacks.
pub fn image_range() -> core::ops::Range<u64> {
    let start = core::ptr::addr_of!(__image_start) as u64;
    let end = core::ptr::addr_of!(__image_end) as u64;
    start..end
}

static SECONDARY_MAIN: AtomicUsize = AtomicUsize::new(0);

/// Registers what secondaries started at [`secondary_entry_address`] run,
/// with their context id. Call it before the first CPU_ON.
pub fn set_secondary_main(main: fn(u64) -> !) {
    SECONDARY_MAIN.store(main as usize, Ordering::Release);
}

/// The device tree magic, big-endian in memory.
const FDT_MAGIC: u32 = 0xd00d_feed;
/// Where QEMU puts the device tree for an ELF kernel on `virt`.
const FALLBACK_DTB: u64 = 0x4000_0000; // bare QEMU only

fn looks_like_fdt(addr: u64) -> bool {
    if addr < FALLBACK_DTB || !addr.is_multiple_of(8) {
        return false;
    }
    // SAFETY: the address is 8-byte aligned and at or above the base of
    // guest RAM; a bad x0 there aborts (reported by the vectors) rather
    // than corrupting anything, and it is only read.
    let word = unsafe { core::ptr::read_volatile(addr as *const u32) };
    u32::from_be(word) == FDT_MAGIC
}

#[no_mangle]
extern "C" fn vigil_guest_primary_entry(x0: u64) -> ! {
    let dtb = if looks_like_fdt(x0) {
        x0
    } else if looks_like_fdt(FALLBACK_DTB) {
        FALLBACK_DTB
    } else {
        crate::println!("no device tree (x0 = {x0:#x}, nothing at {FALLBACK_DTB:#x})");
        crate::exit(1);
    };
    let info = crate::init_boot_info(dtb, x0 == dtb);
    // SAFETY: `entry!` in the guest binary defines this symbol with this
    // signature; it is called once, on vCPU 0.
    unsafe { __vigil_guest_main(info) }
}

#[no_mangle]
extern "C" fn vigil_guest_secondary_rust_entry(context_id: u64) -> ! {
    // A vCPU starting here holds nothing, even if it was stopped (or reset
    // by a second CPU_ON) while printing.
    crate::console::release_if_owner(cpu::index());
    let main = SECONDARY_MAIN.load(Ordering::Acquire);
    if main == 0 {
        crate::println!(
            "cpu {} started (context id {context_id:#x}) with no secondary main",
            cpu::index()
        );
        cpu::park();
    }
    // SAFETY: the only non-zero value stored is a `fn(u64) -> !` cast to
    // usize in `set_secondary_main`.
    let main: fn(u64) -> ! = unsafe { core::mem::transmute::<usize, fn(u64) -> !>(main) };
    main(context_id)
}
