//! GICv3 register blocks (tock-registers) and the encodings of the
//! 64-bit table-base registers.
//!
//! Offsets are from IHI 0069H chapter 12: GICD §12.9, GICR §12.10-12.11,
//! GITS §12.19.

use tock_registers::fields::Field;
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};
use tock_registers::{register_bitfields, register_structs, RegisterLongName};

register_structs! {
    /// Distributor (GICD), 64 KiB.
    pub GicdRegs {
        (0x0000 => pub ctlr: ReadWrite<u32>),
        (0x0004 => pub typer: ReadOnly<u32>),
        (0x0008 => pub iidr: ReadOnly<u32>),
        (0x000c => _reserved0),
        (0x0080 => pub igroupr: [ReadWrite<u32>; 32]),
        (0x0100 => pub isenabler: [ReadWrite<u32>; 32]),
        (0x0180 => pub icenabler: [ReadWrite<u32>; 32]),
        (0x0200 => pub ispendr: [ReadWrite<u32>; 32]),
        (0x0280 => pub icpendr: [ReadWrite<u32>; 32]),
        (0x0300 => pub isactiver: [ReadWrite<u32>; 32]),
        (0x0380 => pub icactiver: [ReadWrite<u32>; 32]),
        (0x0400 => pub ipriorityr: [ReadWrite<u8>; 1024]),
        (0x0800 => _reserved1),
        (0x0c00 => pub icfgr: [ReadWrite<u32>; 64]),
        (0x0d00 => pub igrpmodr: [ReadWrite<u32>; 32]),
        (0x0d80 => _reserved2),
        (0x6000 => pub irouter: [ReadWrite<u64>; 1024]),
        (0x8000 => _reserved3),
        (0xffe8 => pub pidr2: ReadOnly<u32>),
        (0xffec => _reserved4),
        (0x10000 => @END),
    }
}

register_structs! {
    /// One redistributor: the RD_base frame and the SGI_base frame
    /// (128 KiB; GICv4 adds two more frames, which QEMU's GICv3 lacks).
    pub GicrRegs {
        (0x0000 => pub ctlr: ReadWrite<u32>),
        (0x0004 => pub iidr: ReadOnly<u32>),
        (0x0008 => pub typer: ReadOnly<u64>),
        (0x0010 => pub statusr: ReadWrite<u32>),
        (0x0014 => pub waker: ReadWrite<u32>),
        (0x0018 => _reserved0),
        (0x0070 => pub propbaser: ReadWrite<u64>),
        (0x0078 => pub pendbaser: ReadWrite<u64>),
        (0x0080 => _reserved1),
        (0x10080 => pub igroupr0: ReadWrite<u32>),
        (0x10084 => _reserved2),
        (0x10100 => pub isenabler0: ReadWrite<u32>),
        (0x10104 => _reserved3),
        (0x10180 => pub icenabler0: ReadWrite<u32>),
        (0x10184 => _reserved4),
        (0x10200 => pub ispendr0: ReadWrite<u32>),
        (0x10204 => _reserved5),
        (0x10280 => pub icpendr0: ReadWrite<u32>),
        (0x10284 => _reserved6),
        (0x10300 => pub isactiver0: ReadWrite<u32>),
        (0x10304 => _reserved7),
        (0x10380 => pub icactiver0: ReadWrite<u32>),
        (0x10384 => _reserved8),
        (0x10400 => pub ipriorityr: [ReadWrite<u8>; 32]),
        (0x10420 => _reserved9),
        (0x10c00 => pub icfgr: [ReadWrite<u32>; 2]),
        (0x10c08 => _reserved10),
        (0x10d00 => pub igrpmodr0: ReadWrite<u32>),
        (0x10d04 => _reserved11),
        (0x20000 => @END),
    }
}

register_structs! {
    /// ITS control frame and translation frame (128 KiB).
    pub GitsRegs {
        (0x0000 => pub ctlr: ReadWrite<u32>),
        (0x0004 => pub iidr: ReadOnly<u32>),
        (0x0008 => pub typer: ReadOnly<u64>),
        (0x0010 => _reserved0),
        (0x0080 => pub cbaser: ReadWrite<u64>),
        (0x0088 => pub cwriter: ReadWrite<u64>),
        // Read-only in the architecture; QEMU accepts writes when
        // GICD_CTLR.DS is 1, and keeps Stalled until one (see the ITS
        // driver's stall recovery).
        (0x0090 => pub creadr: ReadWrite<u64>),
        (0x0098 => _reserved1),
        (0x0100 => pub baser: [ReadWrite<u64>; 8]),
        (0x0140 => _reserved2),
        (0x10040 => pub translater: WriteOnly<u32>),
        (0x10044 => _reserved3),
        (0x20000 => @END),
    }
}

register_structs! {
    /// A GICv4 redistributor's VLPI_base frame (its third 64 KiB frame,
    /// at RD_base + 0x20000; IHI 0069H §9.11, §12.11.37-38).
    pub GicrVlpiRegs {
        (0x0000 => _reserved0),
        (0x0070 => pub vpropbaser: ReadWrite<u64>),
        (0x0078 => pub vpendbaser: ReadWrite<u64>),
        (0x0080 => _reserved1),
        (0x10000 => @END),
    }
}

/// The VLPI_base frame's offset from RD_base.
pub const GICR_VLPI_FRAME: u64 = 0x2_0000;

/// GICv4.0 GICR_VPROPBASER and GICR_VPENDBASER (IHI 0069H §12.11.37-38).
pub mod vlpi {
    use super::Shareability;

    pub const VALID: u64 = 1 << 63;
    /// Implementation Defined Area Invalid: the pending table's first
    /// 1 KiB holds no cached summary (a freshly zeroed table).
    pub const IDAI: u64 = 1 << 62;
    /// Read after Valid 1 -> 0: the vPE still has a pending, enabled vLPI.
    pub const PENDING_LAST: u64 = 1 << 61;
    /// Read after Valid 1 -> 0: the redistributor is still writing the
    /// pending table back; PendingLast means something only once clear.
    pub const DIRTY: u64 = 1 << 60;

    /// GICR_VPROPBASER: the vLPI configuration table at `pa` (4 KiB
    /// aligned), for vINTIDs below 2^`id_bits`.
    pub fn vpropbaser(pa: u64, id_bits: u8, share: Shareability, cache: u64) -> u64 {
        (pa & 0x000f_ffff_ffff_f000)
            | (share as u64) << 10
            | (cache & 7) << 7
            | (id_bits.saturating_sub(1) & 0x1f) as u64
    }

    /// GICR_VPENDBASER: the vPE whose virtual pending table is at `pa`
    /// (64 KiB aligned), resident (`valid`) or not.
    pub fn vpendbaser(pa: u64, valid: bool, idai: bool, share: Shareability, cache: u64) -> u64 {
        (pa & 0x000f_ffff_ffff_0000)
            | (share as u64) << 10
            | (cache & 7) << 7
            | if valid { VALID } else { 0 }
            | if idai { IDAI } else { 0 }
    }
}

/// Size of one GICv3 redistributor (RD_base + SGI_base).
pub const GICR_STRIDE: u64 = 0x2_0000;

/// GICD_CTLR bits with one security state (DS == 1, as on QEMU `virt`
/// without EL3), IHI 0069 §12.9.4.
pub mod gicd_ctlr {
    pub const ENABLE_GRP0: u32 = 1 << 0;
    pub const ENABLE_GRP1: u32 = 1 << 1;
    pub const ARE: u32 = 1 << 4;
    pub const DS: u32 = 1 << 6;
    pub const RWP: u32 = 1 << 31;
}

/// GICR_CTLR (§12.11.2), GICR_WAKER (§12.11.37), GICR_TYPER (§12.11.34).
pub mod gicr {
    pub const CTLR_ENABLE_LPIS: u32 = 1 << 0;
    pub const CTLR_RWP: u32 = 1 << 3;
    pub const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
    pub const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
    pub const TYPER_PLPIS: u64 = 1 << 0;
    pub const TYPER_LAST: u64 = 1 << 4;

    /// Affinity Aff3.Aff2.Aff1.Aff0 from GICR_TYPER[63:32], in MPIDR bit
    /// positions.
    pub fn typer_affinity(typer: u64) -> u64 {
        let a = typer >> 32;
        (a & 0xff_ffff) | ((a >> 24) & 0xff) << 32
    }

    pub fn typer_processor_number(typer: u64) -> u64 {
        (typer >> 8) & 0xffff
    }
}

/// Memory attributes of an ITS/redistributor table (InnerCache,
/// OuterCache, Shareability fields common to GITS_BASER, GITS_CBASER,
/// GICR_PROPBASER and GICR_PENDBASER).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shareability {
    NonShareable = 0,
    InnerShareable = 1,
    OuterShareable = 2,
}

impl Shareability {
    pub fn from_bits(v: u64) -> Self {
        match v & 3 {
            1 => Self::InnerShareable,
            2 => Self::OuterShareable,
            _ => Self::NonShareable,
        }
    }
}

/// Normal, inner write-back read/write-allocate (InnerCache == 0b111).
pub const CACHE_RAWAWB: u64 = 7;
/// Device-nGnRnE (uncached).
pub const CACHE_NONE: u64 = 0;

/// GITS_BASER<n> (§12.19.1).
pub mod baser {
    use super::Shareability;

    pub const VALID: u64 = 1 << 63;
    pub const INDIRECT: u64 = 1 << 62;

    /// Table types (field Type, bits [58:56]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum TableType {
        None,
        Devices,
        /// GICv4 vPEs.
        Vpes,
        Collections,
        Reserved(u8),
    }

    pub fn table_type(v: u64) -> TableType {
        match (v >> 56) & 7 {
            0 => TableType::None,
            1 => TableType::Devices,
            2 => TableType::Vpes,
            4 => TableType::Collections,
            t => TableType::Reserved(t as u8),
        }
    }

    /// Bytes per entry (Entry_Size, bits [52:48], is size - 1).
    pub fn entry_size(v: u64) -> u64 {
        ((v >> 48) & 0x1f) + 1
    }

    /// Page size in bytes (Page_Size, bits [9:8]).
    pub fn page_size(v: u64) -> u64 {
        match (v >> 8) & 3 {
            0 => 4096,
            1 => 16384,
            _ => 65536,
        }
    }

    pub fn page_size_bits(page: u64) -> u64 {
        match page {
            4096 => 0,
            16384 => 1,
            _ => 2,
        }
    }

    pub fn shareability(v: u64) -> Shareability {
        Shareability::from_bits(v >> 10)
    }

    pub fn inner_cache(v: u64) -> u64 {
        (v >> 59) & 7
    }

    /// A BASER value describing a table of `pages` pages of `page` bytes
    /// at `pa`, keeping the read-only Type and Entry_Size of `current`.
    pub fn encode(
        current: u64,
        pa: u64,
        page: u64,
        pages: u64,
        indirect: bool,
        share: Shareability,
        cache: u64,
    ) -> u64 {
        let ro = current & ((7 << 56) | (0x1f << 48));
        // With 64 KiB pages, PA[51:48] goes in bits [15:12].
        let addr = if page == 65536 {
            (pa & 0x0000_ffff_ffff_0000) | ((pa >> 48) & 0xf) << 12
        } else {
            pa & 0x0000_ffff_ffff_f000
        };
        VALID
            | if indirect { INDIRECT } else { 0 }
            | (cache & 7) << 59
            | ro
            | addr
            | (share as u64) << 10
            | page_size_bits(page) << 8
            | ((pages - 1) & 0xff)
    }
}

/// GITS_CBASER (§12.19.2): valid, cacheability, shareability, address,
/// size in 4 KiB pages.
pub fn cbaser(pa: u64, size: u64, share: Shareability, cache: u64) -> u64 {
    (1 << 63)
        | (cache & 7) << 59
        | (pa & 0x000f_ffff_ffff_f000)
        | (share as u64) << 10
        | ((size / 4096 - 1) & 0xff)
}

/// GITS_TYPER fields (§12.19.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GitsTyper(pub u64);

impl GitsTyper {
    pub fn physical(&self) -> bool {
        self.0 & 1 != 0
    }
    /// GICv4 virtual LPIs: the V-commands and a vPE table (bit 1).
    pub fn virtual_lpis(&self) -> bool {
        self.0 & 2 != 0
    }
    /// Bytes per ITT entry.
    pub fn itt_entry_size(&self) -> u64 {
        ((self.0 >> 4) & 0xf) + 1
    }
    /// EventID bits supported.
    pub fn id_bits(&self) -> u32 {
        (((self.0 >> 8) & 0x1f) + 1) as u32
    }
    /// DeviceID bits supported.
    pub fn dev_bits(&self) -> u32 {
        (((self.0 >> 13) & 0x1f) + 1) as u32
    }
    /// Collection target addresses are physical addresses (1) or processor
    /// numbers (0).
    pub fn pta(&self) -> bool {
        self.0 & (1 << 19) != 0
    }
    /// Collections held in the ITS itself.
    pub fn hcc(&self) -> u32 {
        ((self.0 >> 24) & 0xff) as u32
    }
    /// Collection ID bits: 16 unless CIL says CIDbits holds it.
    pub fn cid_bits(&self) -> u32 {
        if self.0 & (1 << 36) != 0 {
            (((self.0 >> 32) & 0xf) + 1) as u32
        } else {
            16
        }
    }
}

register_bitfields! {u64,
    /// GICR_PROPBASER (§12.11.29); bits not named here are RES0.
    pub GICR_PROPBASER [
        OuterCache OFFSET(56) NUMBITS(3) [],
        /// Bits \[51:12\] of the LPI configuration table's address.
        PhysicalAddress OFFSET(12) NUMBITS(40) [],
        Shareability OFFSET(10) NUMBITS(2) [],
        InnerCache OFFSET(7) NUMBITS(3) [],
        /// LPI INTID bits supported, minus one.
        IDbits OFFSET(0) NUMBITS(5) [],
    ],
    /// GICR_PENDBASER (§12.11.30); bits not named here are RES0.
    pub GICR_PENDBASER [
        /// Pending Table Zero: write-only, reads as 0.
        PTZ OFFSET(62) NUMBITS(1) [],
        OuterCache OFFSET(56) NUMBITS(3) [],
        /// Bits \[51:16\] of the LPI pending table's address.
        PhysicalAddress OFFSET(16) NUMBITS(36) [],
        Shareability OFFSET(10) NUMBITS(2) [],
        InnerCache OFFSET(7) NUMBITS(3) [],
    ]
}

/// The bits of `field` in place, as a mask. (A field's `val` already
/// truncates its value to the field's width.)
pub const fn field_mask<R: RegisterLongName>(field: Field<u64, R>) -> u64 {
    field.mask << field.shift
}

/// GICR_PROPBASER's address field: the configuration table's base.
pub const PROPBASER_PA: u64 = field_mask(GICR_PROPBASER::PhysicalAddress);
/// Every field of GICR_PROPBASER.
pub const PROPBASER_FIELDS: u64 = field_mask(GICR_PROPBASER::OuterCache)
    | PROPBASER_PA
    | field_mask(GICR_PROPBASER::Shareability)
    | field_mask(GICR_PROPBASER::InnerCache)
    | field_mask(GICR_PROPBASER::IDbits);
/// GICR_PENDBASER's address field: the pending table's base.
pub const PENDBASER_PA: u64 = field_mask(GICR_PENDBASER::PhysicalAddress);
pub const PENDBASER_PTZ: u64 = field_mask(GICR_PENDBASER::PTZ);
/// Every field of GICR_PENDBASER.
pub const PENDBASER_FIELDS: u64 = PENDBASER_PTZ
    | field_mask(GICR_PENDBASER::OuterCache)
    | PENDBASER_PA
    | field_mask(GICR_PENDBASER::Shareability)
    | field_mask(GICR_PENDBASER::InnerCache);

/// GICR_PROPBASER (§12.11.29): table of 2^id_bits - 8192 bytes at `pa`.
pub fn propbaser(pa: u64, id_bits: u32, share: Shareability, cache: u64) -> u64 {
    (GICR_PROPBASER::InnerCache.val(cache)
        + GICR_PROPBASER::Shareability.val(share as u64)
        + GICR_PROPBASER::IDbits.val(u64::from(id_bits - 1)))
    .value
        | (pa & PROPBASER_PA)
}

/// GICR_PENDBASER (§12.11.30): pending table at `pa` (64 KiB aligned);
/// PTZ says it is known to be zero.
pub fn pendbaser(pa: u64, ptz: bool, share: Shareability, cache: u64) -> u64 {
    (GICR_PENDBASER::PTZ.val(u64::from(ptz))
        + GICR_PENDBASER::InnerCache.val(cache)
        + GICR_PENDBASER::Shareability.val(share as u64))
    .value
        | (pa & PENDBASER_PA)
}

/// Shareability field of GICR_PROPBASER/PENDBASER, bits [11:10].
pub fn table_shareability(v: u64) -> Shareability {
    Shareability::from_bits(GICR_PROPBASER::Shareability.read(v))
}

/// LPI configuration table entry (§5.1.1): priority [7:2], bit 1 RES1,
/// enable [0].
pub fn lpi_config(priority: u8, enabled: bool) -> u8 {
    (priority & 0xfc) | 0b10 | enabled as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gicr_typer_fields() {
        // Affinity 1.2.3.4 (Aff3..Aff0), processor 5, Last, PLPIS.
        let t = (0x0102_0304u64 << 32) | (5 << 8) | gicr::TYPER_LAST | gicr::TYPER_PLPIS;
        assert_eq!(gicr::typer_affinity(t), 0x01_0002_0304);
        assert_eq!(gicr::typer_processor_number(t), 5);
    }

    #[test]
    fn baser_fields_and_encoding() {
        // Devices, 8-byte entries, as an ITS presents it before setup.
        let cur = (1u64 << 56) | (7 << 48);
        assert_eq!(baser::table_type(cur), baser::TableType::Devices);
        assert_eq!(baser::entry_size(cur), 8);
        let v = baser::encode(
            cur,
            0x4123_0000,
            65536,
            8,
            false,
            Shareability::InnerShareable,
            CACHE_RAWAWB,
        );
        assert_eq!(v & baser::VALID, baser::VALID);
        assert_eq!(v & baser::INDIRECT, 0);
        assert_eq!(baser::page_size(v), 65536);
        assert_eq!(v & 0xff, 7);
        assert_eq!(baser::shareability(v), Shareability::InnerShareable);
        assert_eq!(baser::inner_cache(v), 7);
        assert_eq!(v & 0x0000_ffff_ffff_f000, 0x4123_0000);
        assert_eq!(baser::table_type(v), baser::TableType::Devices);
        // 64 KiB pages put PA[51:48] in [15:12].
        let hi = baser::encode(
            cur,
            0x000a_0000_0001_0000,
            65536,
            1,
            true,
            Shareability::NonShareable,
            0,
        );
        assert_eq!((hi >> 12) & 0xf, 0xa);
        assert_eq!(hi & baser::INDIRECT, baser::INDIRECT);
        assert_eq!(
            baser::table_type((4u64 << 56) | 1),
            baser::TableType::Collections
        );
    }

    #[test]
    fn cbaser_encoding() {
        let v = cbaser(
            0x4100_0000,
            65536,
            Shareability::InnerShareable,
            CACHE_RAWAWB,
        );
        assert_eq!(v, (1 << 63) | (7 << 59) | 0x4100_0000 | (1 << 10) | 15);
    }

    #[test]
    fn gits_typer_fields() {
        // QEMU-like: physical, ITT entry 12 bytes, 16 ID bits, 16 dev bits,
        // PTA = 0, CIL = 0.
        let t = GitsTyper(1 | (11 << 4) | (15 << 8) | (15 << 13));
        assert!(t.physical());
        assert!(!t.virtual_lpis());
        assert!(GitsTyper(3).virtual_lpis());
        assert_eq!(t.itt_entry_size(), 12);
        assert_eq!(t.id_bits(), 16);
        assert_eq!(t.dev_bits(), 16);
        assert!(!t.pta());
        assert_eq!(t.cid_bits(), 16);
        let t = GitsTyper((1 << 19) | (1 << 36) | (7 << 32) | (3 << 24));
        assert!(t.pta());
        assert_eq!(t.cid_bits(), 8);
        assert_eq!(t.hcc(), 3);
    }

    #[test]
    fn redistributor_table_encodings() {
        let p = propbaser(0x4200_0000, 16, Shareability::InnerShareable, CACHE_RAWAWB);
        assert_eq!(p, (7 << 7) | (1 << 10) | 0x4200_0000 | 15);
        let q = pendbaser(
            0x4201_0000,
            true,
            Shareability::InnerShareable,
            CACHE_RAWAWB,
        );
        assert_eq!(q, (1 << 62) | (7 << 7) | (1 << 10) | 0x4201_0000);
        assert_eq!(table_shareability(q), Shareability::InnerShareable);
        assert_eq!(lpi_config(0xa0, true), 0xa3);
        assert_eq!(lpi_config(0xa1, false), 0xa2);
    }

    #[test]
    fn vlpi_frame_encodings() {
        let p = vlpi::vpropbaser(
            0x4_4000_1fff,
            16,
            Shareability::InnerShareable,
            CACHE_RAWAWB,
        );
        assert_eq!(p, 0x4_4000_1000 | (1 << 10) | (7 << 7) | 15);
        let q = vlpi::vpendbaser(0x4_4001_ffff, true, true, Shareability::NonShareable, 0);
        assert_eq!(q, (1 << 63) | (1 << 62) | 0x4_4001_0000);
        let q = vlpi::vpendbaser(0x4_4001_0000, false, false, Shareability::InnerShareable, 7);
        assert_eq!(q, 0x4_4001_0000 | (1 << 10) | (7 << 7));
        assert_eq!(vlpi::PENDING_LAST, 1 << 61);
        assert_eq!(vlpi::DIRTY, 1 << 60);
    }
}
