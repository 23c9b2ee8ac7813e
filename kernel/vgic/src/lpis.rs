//! The per-LPI state of one VM: a two-level table indexed by
//! vINTID - 8192, up to `GICD_TYPER.IDbits` (as a redistributor's LPI
//! tables are indexed by INTID, IHI 0069 §5.1).
//!
//! Level 1 has a slot per block of [`LPI_BLOCK`] INTIDs, made with the
//! vGIC. A block is allocated the first time an INTID in it is mapped and
//! kept until the vGIC is reset, so mapping and unmapping (MAPTI/DISCARD)
//! in steady state allocate nothing and cost a division and an index.
//! A slot is live while an ITE maps it (`map_refs > 0`); unmapping the
//! last ITE puts it back to its pristine state (vITS invariant 6).

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::irq::{IntId, Irq, LPI_BASE};

/// LPIs per block: as many as fill a 128 KiB heap block (the buddy
/// allocator serves powers of two, so a round count of entries would
/// waste up to half of each block).
pub(crate) const LPI_BLOCK: usize = (128 << 10) / core::mem::size_of::<Irq>();

/// Most blocks one vGIC allocates: enough for every INTID below 2^17
/// (the LPIs Vigil's VMs have, 2^17 - 8192 of them), so that a guest's
/// per-LPI state stays within the heap allowance of its vITS's quota
/// (`vigil_vits::HEAP_AT_QUOTA`) whatever INTIDs it picks.
pub(crate) const MAX_LPI_BLOCKS: usize = (1usize << 17).div_ceil(LPI_BLOCK);

/// Largest `lpi_id_bits` a vGIC accepts: level 1 then takes 16K slots of
/// 16 bytes.
pub(crate) const MAX_LPI_ID_BITS: u8 = 24;

pub(crate) struct LpiTable {
    blocks: Vec<Option<Box<[Irq]>>>,
    allocated: usize,
    live: usize,
}

impl LpiTable {
    /// A table for the LPIs below 2^`id_bits` (at most [`MAX_LPI_ID_BITS`]).
    pub fn new(id_bits: u8) -> Self {
        let lpis = (1usize << id_bits.min(MAX_LPI_ID_BITS)).saturating_sub(LPI_BASE as usize);
        Self {
            blocks: (0..lpis.div_ceil(LPI_BLOCK)).map(|_| None).collect(),
            allocated: 0,
            live: 0,
        }
    }

    #[inline(always)]
    fn index(intid: u32) -> Option<(usize, usize)> {
        let off = IntId::new(intid).lpi_index()? as usize;
        Some((off / LPI_BLOCK, off % LPI_BLOCK))
    }

    /// The state of `intid` if it is mapped.
    pub fn get(&self, intid: u32) -> Option<&Irq> {
        let (b, i) = Self::index(intid)?;
        let irq = &self.blocks.get(b)?.as_ref()?[i];
        (irq.map_refs > 0).then_some(irq)
    }

    /// The state of `intid` if it is mapped.
    #[inline(always)]
    pub fn get_mut(&mut self, intid: u32) -> Option<&mut Irq> {
        let (b, i) = Self::index(intid)?;
        let irq = &mut self.blocks.get_mut(b)?.as_mut()?[i];
        (irq.map_refs > 0).then_some(irq)
    }

    /// The slot of `intid`, mapped or not, if its block is allocated: a
    /// division, two loads and no call (the MAPTI fast path).
    #[inline(always)]
    pub fn allocated_slot(&mut self, intid: u32) -> Option<&mut Irq> {
        let (b, i) = Self::index(intid)?;
        self.blocks.get_mut(b)?.as_mut()?.get_mut(i)
    }

    /// The slot of `intid`, mapped or not, allocating its block if this is
    /// the first INTID of it to be mapped. None: `intid` is beyond the
    /// table, or its block would exceed [`MAX_LPI_BLOCKS`] or the heap.
    pub fn slot(&mut self, intid: u32) -> Option<&mut Irq> {
        let (b, i) = Self::index(intid)?;
        if self.blocks.get(b)?.is_none() {
            self.allocate(b)?;
        }
        self.blocks[b].as_mut().map(|block| &mut block[i])
    }

    /// Allocate block `b` (empty, inside the table). Out of line: once
    /// per block in a vGIC's life, and it keeps the heap's registers out
    /// of `slot`'s callers (MAPTI).
    #[cold]
    #[inline(never)]
    fn allocate(&mut self, b: usize) -> Option<()> {
        if self.allocated == MAX_LPI_BLOCKS {
            return None;
        }
        // Fallible, so that no guest command can panic the hypervisor on
        // an exhausted heap.
        let mut block = Vec::new();
        block.try_reserve_exact(LPI_BLOCK).ok()?;
        let first = LPI_BASE + (b * LPI_BLOCK) as u32;
        block.extend((0..LPI_BLOCK as u32).map(|k| Irq::new(first + k, None)));
        self.blocks[b] = Some(block.into_boxed_slice());
        self.allocated += 1;
        Some(())
    }

    /// A slot became live (its first ITE).
    pub fn note_mapped(&mut self) {
        self.live += 1;
    }

    /// A slot's last ITE is gone and the caller reset it
    /// ([`Irq::reset_lpi`]): one live LPI fewer.
    pub fn note_freed(&mut self) {
        self.live -= 1;
    }

    /// Number of mapped LPIs.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Every mapped LPI, by INTID.
    pub fn iter(&self) -> impl Iterator<Item = &Irq> {
        self.blocks
            .iter()
            .flatten()
            .flat_map(|b| b.iter())
            .filter(|i| i.map_refs > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    /// A freed slot is exactly what a new one is (`Irq::reset_lpi` keeps
    /// up with `Irq::new`).
    #[test]
    fn a_freed_slot_is_pristine() {
        let mut t = LpiTable::new(16);
        let intid = LPI_BASE + 5;
        let irq = t.slot(intid).unwrap();
        *irq = Irq {
            enabled: true,
            latch: true,
            line: true,
            active: true,
            priority: 0xa0,
            group1: false,
            level: true,
            target: Some(1),
            irouter: 3,
            hw: Some(40),
            owner: Some(1),
            loaded: true,
            sw_pending_cleared: true,
            sw_active_written: true,
            gen: 9,
            map_refs: 0,
            intid,
        };
        t.note_mapped();
        t.slot(intid).unwrap().reset_lpi();
        t.note_freed();
        let fresh = Irq::new(intid, None);
        assert_eq!(
            format!("{:?}", t.slot(intid).unwrap()),
            format!("{fresh:?}")
        );
        assert_eq!(t.len(), 0);
    }
}
