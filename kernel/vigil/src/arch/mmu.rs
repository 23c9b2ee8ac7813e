//! The hypervisor's own stage-1 translation (EL2 regime).
//!
//! An identity map built with `aarch64-paging`: RAM normal write-back
//! cacheable, device space Device-nGnRE, the image's text read-only and
//! executable, its read-only data read-only, everything else execute-never
//! (SCTLR_EL2.WXN also forbids executing anything writable). The guard page
//! under each CPU's stack stays unmapped.

use aarch64_cpu::registers::{SCTLR_EL2, TCR_EL2};
use aarch64_paging::descriptor::El23Attributes as A;
use aarch64_paging::idmap::IdMap;
use aarch64_paging::paging::{El2, MemoryRegion};
use aarch64_paging::MapError;
use core::sync::atomic::Ordering;
use spin::Mutex;

use super::boot::{self, SECONDARY_MMU};

/// SCTLR_EL2 bits that are RES1 with HCR_EL2.E2H == 0 (Arm ARM D24.2.146):
/// 4, 5, 11, 16, 18, 22, 23, 28 and 29 (`aarch64-cpu` names none of them,
/// and gives 11 and 22 other meanings: EOS, EIS, which need FEAT_ExS).
pub const SCTLR_EL2_RES1: u64 =
    (1 << 4) | (1 << 5) | (1 << 11) | (1 << 16) | (1 << 18) | (3 << 22) | (3 << 28);

/// MAIR_EL2: index 0 Device-nGnRE, index 1 Normal inner/outer write-back
/// read/write-allocate.
const MAIR: u64 = 0x04 | (0xff << 8);

/// Attributes common to every valid entry. AP[1] (bit 6) is RES1 in a
/// single-EL regime such as EL2 (Arm ARM D8.4.1.2.1).
const BASE: A = A::VALID.union(A::ACCESSED).union(A::USER_RES1);
const DEVICE: A = BASE.union(A::ATTRIBUTE_INDEX_0).union(A::XN);
const NORMAL: A = BASE.union(A::ATTRIBUTE_INDEX_1).union(A::INNER_SHAREABLE);
const RAM_RW: A = NORMAL.union(A::XN);
const TEXT: A = NORMAL.union(A::READ_ONLY);
const RODATA: A = NORMAL.union(A::READ_ONLY).union(A::XN);
/// Invalid: leaves the range unmapped.
const UNMAPPED: A = A::empty();

static IDMAP: Mutex<Option<IdMap<El2>>> = Mutex::new(None);

extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// Ranges of the image, from the linker script.
pub fn image_sections() -> [(u64, u64); 2] {
    // SAFETY: only the addresses of linker symbols are taken.
    unsafe {
        [
            (sym(&__text_start), sym(&__text_end)),
            (sym(&__rodata_start), sym(&__rodata_end)),
        ]
    }
}

fn map(idmap: &mut IdMap<El2>, start: u64, end: u64, attrs: A) -> Result<(), MapError> {
    idmap.map_range(&MemoryRegion::new(start as usize, end as usize), attrs)
}

/// A region the hypervisor maps besides RAM and its image.
pub struct DeviceRange {
    pub start: u64,
    pub end: u64,
}

/// Build the EL2 identity map and turn the MMU on for this (the primary)
/// CPU; publish the settings for secondaries. The stacks are allocated
/// ([`boot::alloc_stacks`]): their guard pages stay unmapped.
pub fn init(ram: (u64, u64), devices: &[DeviceRange]) -> Result<(), MapError> {
    let mut idmap = IdMap::new(0, El2);
    for d in devices {
        map(&mut idmap, d.start, d.end, DEVICE)?;
    }
    map(&mut idmap, ram.0, ram.1, RAM_RW)?;
    let [(text_start, text_end), (ro_start, ro_end)] = image_sections();
    map(&mut idmap, text_start, text_end, TEXT)?;
    map(&mut idmap, ro_start, ro_end, RODATA)?;
    for cpu in 0..boot::stack_count() {
        let guard = boot::stack_guard(cpu);
        map(&mut idmap, guard, guard + boot::GUARD_SIZE, UNMAPPED)?;
    }

    let ttbr = idmap.root_address().0 as u64;
    let tcr = tcr_value();
    let sctlr = SCTLR_EL2_RES1
        | (SCTLR_EL2::M::Enable
            + SCTLR_EL2::C::Cacheable
            + SCTLR_EL2::I::Cacheable
            + SCTLR_EL2::SA::Enable
            + SCTLR_EL2::WXN::Enable)
            .value;
    for (slot, v) in SECONDARY_MMU.iter().zip([MAIR, tcr, ttbr, sctlr]) {
        slot.store(v, Ordering::Relaxed);
    }
    // SAFETY: the table maps all memory this code, its stack and its data
    // use, with the same addresses (identity), so execution continues
    // unchanged once translation is on.
    unsafe { enable(MAIR, tcr, ttbr, sctlr) };
    idmap.mark_active();
    // Secondaries read SECONDARY_MMU with their caches off.
    clean_to_poc(
        SECONDARY_MMU.as_ptr() as u64,
        core::mem::size_of_val(&SECONDARY_MMU),
    );
    boot::publish_stacks();
    *IDMAP.lock() = Some(idmap);
    Ok(())
}

/// TCR_EL2 (E2H == 0 layout, Arm ARM D24.2.178): 48-bit VA, 4 KiB granule,
/// inner-shareable write-back table walks, PS from the CPU's PA range.
fn tcr_value() -> u64 {
    use aarch64_cpu::registers::{Readable, ID_AA64MMFR0_EL1};
    let parange = ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange).min(5);
    // Bits 31 and 23 are RES1 (`aarch64-cpu` does not name them).
    const RES1: u64 = (1 << 31) | (1 << 23);
    RES1 | (TCR_EL2::PS.val(parange)
        + TCR_EL2::TG0::KiB_4
        + TCR_EL2::SH0::Inner
        + TCR_EL2::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
        + TCR_EL2::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
        + TCR_EL2::T0SZ.val(16))
    .value
}

/// # Safety
/// The tables at `ttbr` must identity-map everything the caller uses.
unsafe fn enable(mair: u64, tcr: u64, ttbr: u64, sctlr: u64) {
    // SAFETY: per the function contract.
    unsafe {
        core::arch::asm!(
            "msr mair_el2, {mair}",
            "msr tcr_el2, {tcr}",
            "msr ttbr0_el2, {ttbr}",
            "dsb ish",
            "isb",
            "tlbi alle2",
            "dsb ish",
            "isb",
            "msr sctlr_el2, {sctlr}",
            "isb",
            mair = in(reg) mair,
            tcr = in(reg) tcr,
            ttbr = in(reg) ttbr,
            sctlr = in(reg) sctlr,
            options(nostack),
        );
    }
}

/// Clean the data cache lines covering `[addr, addr + len)` to the point of
/// coherency, so observers with caches off (or non-coherent devices) see it.
pub fn clean_to_poc(addr: u64, len: usize) {
    const LINE: u64 = 64;
    let mut a = addr & !(LINE - 1);
    while a < addr + len as u64 {
        // SAFETY: cache maintenance by VA on mapped memory has no effect
        // on program state.
        unsafe { core::arch::asm!("dc cvac, {}", in(reg) a, options(nostack)) };
        a += LINE;
    }
    // SAFETY: a barrier only orders memory accesses.
    unsafe { core::arch::asm!("dsb sy", options(nostack)) };
}

/// Whether stage-1 translation is on for this CPU.
pub fn enabled() -> bool {
    use aarch64_cpu::registers::Readable;
    SCTLR_EL2.is_set(SCTLR_EL2::M)
}

/// Sanity check that the linker script and `boot` agree on stack layout.
pub fn check_stack_layout() -> bool {
    boot::stacks_end() - boot::stacks_start() == boot::STACK_SIZE + boot::GUARD_SIZE
}
