//! A VM's stage-2 translation: guest-physical (IPA) to host-physical, with
//! `aarch64-paging`'s stage-2 support. 48-bit IPA space, 4 KiB granule,
//! tables walked from level 0.

use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes as S2};
use aarch64_paging::idmap::IdTranslation;
use aarch64_paging::paging::{Constraints, MemoryRegion, Stage2};
use aarch64_paging::{MapError, Mapping};

/// Normal memory, inner/outer write-back, inner shareable, read/write,
/// executable (stage-2 MemAttr 0b1111, S2AP RW; Arm ARM D8.5.5).
const RAM: S2 = S2::VALID
    .union(S2::ACCESS_FLAG)
    .union(S2::SH_INNER)
    .union(S2::S2AP_ACCESS_RW)
    .union(S2::MEMATTR_NORMAL_INNER_WB)
    .union(S2::MEMATTR_NORMAL_OUTER_WB);

/// Device-nGnRE, read/write, execute-never: for passed-through MMIO.
const DEVICE: S2 = S2::VALID
    .union(S2::ACCESS_FLAG)
    .union(S2::S2AP_ACCESS_RW)
    .union(S2::MEMATTR_DEVICE_nGnRE)
    .union(S2::XN);

/// VTCR_EL2 (Arm ARM D24.2.200): T0SZ 16 (48-bit IPA), SL0 2 (start at
/// level 0), inner-shareable write-back walks, 4 KiB granule, PS 48-bit,
/// RES1 bit 31.
pub fn vtcr() -> u64 {
    use aarch64_cpu::registers::VTCR_EL2;
    VTCR_EL2::RES1::SET.value
        | VTCR_EL2::PS::PA_48B_256TB.value
        | VTCR_EL2::TG0::Granule4KB.value
        | VTCR_EL2::SH0::Inner.value
        | VTCR_EL2::ORGN0::NormalWBRAWA.value
        | VTCR_EL2::IRGN0::NormalWBRAWA.value
        | VTCR_EL2::SL0::Granule4KBLevel0.value
        | VTCR_EL2::T0SZ.val(16).value
}

pub struct Stage2Tables {
    map: Mapping<IdTranslation<S2>, Stage2>,
    vmid: u16,
}

impl Stage2Tables {
    pub fn new(vmid: u16) -> Self {
        Self {
            map: Mapping::new(IdTranslation::new(), 0, Stage2),
            vmid,
        }
    }

    fn map(&mut self, ipa: u64, pa: u64, size: u64, attrs: S2) -> Result<(), MapError> {
        self.map.map_range(
            &MemoryRegion::new(ipa as usize, (ipa + size) as usize),
            PhysicalAddress(pa as usize),
            attrs,
            Constraints::empty(),
        )
    }

    /// Map guest RAM.
    pub fn map_ram(&mut self, ipa: u64, pa: u64, size: u64) -> Result<(), MapError> {
        self.map(ipa, pa, size, RAM)
    }

    /// Map device MMIO straight through (passthrough).
    pub fn map_device(&mut self, ipa: u64, pa: u64, size: u64) -> Result<(), MapError> {
        self.map(ipa, pa, size, DEVICE)
    }

    /// Physical address of the root table.
    pub fn root(&self) -> u64 {
        self.map.root_address().0 as u64
    }

    /// VTTBR_EL2: table base and VMID (Arm ARM D24.2.201).
    pub fn vttbr(&self) -> u64 {
        self.map.root_address().0 as u64 | (self.vmid as u64) << 48
    }
}

/// Whether the CPU's physical address range allows a 48-bit IPA space.
pub fn supported() -> bool {
    let mmfr0: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, id_aa64mmfr0_el1", out(reg) mmfr0, options(nomem, nostack))
    };
    mmfr0 & 0xf >= 5
}
