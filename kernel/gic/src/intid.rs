//! Interrupt IDs: the one place where the INTID space is split into its
//! ranges, for the physical GIC driver and the virtual GIC alike.

/// First PPI INTID.
pub const PPI_BASE: u32 = 16;
/// First SPI INTID.
pub const SPI_BASE: u32 = 32;
/// First LPI INTID (IHI 0069 §2.2, "INTIDs").
pub const LPI_BASE: u32 = 8192;
/// First special INTID (1020-1023: spurious and the like).
pub const SPECIAL_BASE: u32 = 1020;
/// First INTID past the special ones: reserved up to [`LPI_BASE`].
pub const RESERVED_BASE: u32 = 1024;

/// An interrupt ID, the one place where the INTID space is split into its
/// ranges (IHI 0069 §2.2, "INTIDs"): SGIs 0-15 and PPIs 16-31, banked per
/// redistributor; SPIs 32-1019, shared; the special INTIDs 1020-1023;
/// reserved 1024-8191; LPIs from 8192.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct IntId(u32);

/// The range an [`IntId`] falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntKind {
    Sgi,
    Ppi,
    Spi,
    Special,
    Reserved,
    Lpi,
}

impl IntId {
    pub const fn new(raw: u32) -> Self {
        Self(raw)
    }

    pub const fn raw(self) -> u32 {
        self.0
    }

    pub const fn kind(self) -> IntKind {
        match self.0 {
            0..PPI_BASE => IntKind::Sgi,
            PPI_BASE..SPI_BASE => IntKind::Ppi,
            SPI_BASE..SPECIAL_BASE => IntKind::Spi,
            SPECIAL_BASE..RESERVED_BASE => IntKind::Special,
            RESERVED_BASE..LPI_BASE => IntKind::Reserved,
            _ => IntKind::Lpi,
        }
    }

    /// An SGI or a PPI: banked, one instance per redistributor (vCPU).
    pub const fn is_private(self) -> bool {
        self.0 < SPI_BASE
    }

    pub const fn is_sgi(self) -> bool {
        self.0 < PPI_BASE
    }

    pub const fn is_spi(self) -> bool {
        matches!(self.kind(), IntKind::Spi)
    }

    pub const fn is_lpi(self) -> bool {
        self.0 >= LPI_BASE
    }

    /// Index of an SPI among the SPIs (INTID - 32).
    pub const fn spi_index(self) -> Option<u32> {
        if self.is_spi() {
            Some(self.0 - SPI_BASE)
        } else {
            None
        }
    }

    /// Index of an LPI in the property and pending tables (INTID - 8192).
    pub const fn lpi_index(self) -> Option<u32> {
        if self.is_lpi() {
            Some(self.0 - LPI_BASE)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{IntId, IntKind};

    #[test]
    fn ranges_split_at_the_architected_boundaries() {
        let kind = |raw| IntId::new(raw).kind();
        assert_eq!(kind(0), IntKind::Sgi);
        assert_eq!(kind(15), IntKind::Sgi);
        assert_eq!(kind(16), IntKind::Ppi);
        assert_eq!(kind(31), IntKind::Ppi);
        assert_eq!(kind(32), IntKind::Spi);
        assert_eq!(kind(1019), IntKind::Spi);
        assert_eq!(kind(1020), IntKind::Special);
        assert_eq!(kind(1023), IntKind::Special);
        assert_eq!(kind(1024), IntKind::Reserved);
        assert_eq!(kind(8191), IntKind::Reserved);
        assert_eq!(kind(8192), IntKind::Lpi);
        assert_eq!(kind(u32::MAX), IntKind::Lpi);
        for raw in [0, 15, 16, 31] {
            assert!(IntId::new(raw).is_private(), "{raw}");
        }
        for raw in [32, 1019, 1020, 8192] {
            assert!(!IntId::new(raw).is_private(), "{raw}");
        }
        assert!(IntId::new(15).is_sgi() && !IntId::new(16).is_sgi());
    }

    #[test]
    fn indices_count_from_the_range_start() {
        assert_eq!(IntId::new(31).spi_index(), None);
        assert_eq!(IntId::new(32).spi_index(), Some(0));
        assert_eq!(IntId::new(1019).spi_index(), Some(987));
        assert_eq!(IntId::new(1020).spi_index(), None);
        assert_eq!(IntId::new(8191).lpi_index(), None);
        assert_eq!(IntId::new(8192).lpi_index(), Some(0));
        assert_eq!(IntId::new(8192 + 77).lpi_index(), Some(77));
        assert_eq!(IntId::new(8192).raw(), 8192);
    }
}
