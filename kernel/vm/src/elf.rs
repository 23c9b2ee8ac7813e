//! Loading an ELF64 guest (the in-project test guests): the PT_LOAD
//! segments and the entry point, validated against the guest's RAM.

use alloc::vec::Vec;

/// One loadable segment: `filesz` bytes from `offset` in the file go to
/// guest address `paddr`, followed by zeros up to `memsz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub paddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elf {
    pub entry: u64,
    pub segments: Vec<Segment>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    NotElf,
    /// Not a little-endian 64-bit AArch64 executable.
    WrongKind,
    Truncated,
    /// A segment or the entry point lies outside guest RAM.
    OutsideRam {
        addr: u64,
    },
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotElf => write!(f, "not an ELF file"),
            Self::WrongKind => write!(f, "not a little-endian AArch64 ELF64 executable"),
            Self::Truncated => write!(f, "ELF file truncated"),
            Self::OutsideRam { addr } => write!(f, "ELF loads outside guest RAM at {addr:#x}"),
        }
    }
}

pub fn is_elf(data: &[u8]) -> bool {
    data.len() >= 4 && data[0..4] == *b"\x7fELF"
}

// Offsets come from the file: `checked_add`, so a huge one is truncation,
// not an overflow (found by `scripts/fuzz image`).
fn u16_at(d: &[u8], o: usize) -> Result<u16, ElfError> {
    d.get(o..o.checked_add(2).ok_or(ElfError::Truncated)?)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(ElfError::Truncated)
}

fn u32_at(d: &[u8], o: usize) -> Result<u32, ElfError> {
    d.get(o..o.checked_add(4).ok_or(ElfError::Truncated)?)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .ok_or(ElfError::Truncated)
}

fn u64_at(d: &[u8], o: usize) -> Result<u64, ElfError> {
    d.get(o..o.checked_add(8).ok_or(ElfError::Truncated)?)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .ok_or(ElfError::Truncated)
}

/// Parse `data` and check every segment and the entry point fall in
/// `[ram_base, ram_base + ram_size)` and within the file.
pub fn parse(data: &[u8], ram_base: u64, ram_size: u64) -> Result<Elf, ElfError> {
    if !is_elf(data) {
        return Err(ElfError::NotElf);
    }
    // EI_CLASS 2 (64-bit), EI_DATA 1 (little-endian), e_machine 183
    // (AArch64), e_type 2 (EXEC).
    if data.len() < 64 || data[4] != 2 || data[5] != 1 {
        return Err(ElfError::WrongKind);
    }
    if u16_at(data, 18)? != 183 || u16_at(data, 16)? != 2 {
        return Err(ElfError::WrongKind);
    }
    let entry = u64_at(data, 24)?;
    let phoff = u64_at(data, 32)? as usize;
    let phentsize = u16_at(data, 54)? as usize;
    let phnum = u16_at(data, 56)? as usize;
    let ram_end = ram_base.saturating_add(ram_size);
    let in_ram =
        |a: u64, len: u64| a >= ram_base && a.checked_add(len).is_some_and(|e| e <= ram_end);
    let mut segments = Vec::new();
    for i in 0..phnum {
        let ph = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or(ElfError::Truncated)?;
        if u32_at(data, ph)? != 1 {
            continue; // not PT_LOAD
        }
        let seg = Segment {
            offset: u64_at(data, ph.saturating_add(8))?,
            paddr: u64_at(data, ph.saturating_add(24))?,
            filesz: u64_at(data, ph.saturating_add(32))?,
            memsz: u64_at(data, ph.saturating_add(40))?,
        };
        if seg
            .offset
            .checked_add(seg.filesz)
            .is_none_or(|e| e > data.len() as u64)
            || seg.filesz > seg.memsz
        {
            return Err(ElfError::Truncated);
        }
        if !in_ram(seg.paddr, seg.memsz) {
            return Err(ElfError::OutsideRam { addr: seg.paddr });
        }
        segments.push(seg);
    }
    if !in_ram(entry, 4) {
        return Err(ElfError::OutsideRam { addr: entry });
    }
    Ok(Elf { entry, segments })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A minimal ELF64 AArch64 executable with the given segments.
    fn elf(entry: u64, segs: &[(u64, u64, u64)]) -> Vec<u8> {
        let phoff = 64u64;
        let data_off = phoff + 56 * segs.len() as u64;
        let mut d = vec![0u8; data_off as usize];
        d[0..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[6] = 1;
        d[16..18].copy_from_slice(&2u16.to_le_bytes());
        d[18..20].copy_from_slice(&183u16.to_le_bytes());
        d[24..32].copy_from_slice(&entry.to_le_bytes());
        d[32..40].copy_from_slice(&phoff.to_le_bytes());
        d[54..56].copy_from_slice(&56u16.to_le_bytes());
        d[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        let mut off = data_off;
        for (i, &(paddr, filesz, memsz)) in segs.iter().enumerate() {
            let ph = (phoff + 56 * i as u64) as usize;
            d[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
            d[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
            d[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
            d[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            d[ph + 32..ph + 40].copy_from_slice(&filesz.to_le_bytes());
            d[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
            off += filesz;
        }
        d.resize(off as usize, 0xaa);
        d
    }

    const RAM: (u64, u64) = (0x4000_0000, 0x100_0000);

    #[test]
    fn parses_load_segments_and_entry() {
        let d = elf(
            0x4008_0000,
            &[(0x4008_0000, 0x100, 0x100), (0x4009_0000, 0x10, 0x2000)],
        );
        let e = parse(&d, RAM.0, RAM.1).unwrap();
        assert_eq!(e.entry, 0x4008_0000);
        assert_eq!(e.segments.len(), 2);
        assert_eq!(e.segments[1].memsz, 0x2000);
        assert_eq!(e.segments[1].filesz, 0x10);
    }

    #[test]
    fn rejects_what_it_cannot_load() {
        assert_eq!(parse(b"MZ..", RAM.0, RAM.1), Err(ElfError::NotElf));
        let mut d = elf(0x4008_0000, &[(0x4008_0000, 0x100, 0x100)]);
        d[18] = 62; // x86-64
        assert_eq!(parse(&d, RAM.0, RAM.1), Err(ElfError::WrongKind));
        let d = elf(0x4008_0000, &[(0x3fff_0000, 0x100, 0x100)]);
        assert_eq!(
            parse(&d, RAM.0, RAM.1),
            Err(ElfError::OutsideRam { addr: 0x3fff_0000 })
        );
        let d = elf(0x5000_0000, &[(0x4008_0000, 0x100, 0x100)]);
        assert_eq!(
            parse(&d, RAM.0, RAM.1),
            Err(ElfError::OutsideRam { addr: 0x5000_0000 })
        );
        let d = elf(0x4008_0000, &[(0x40ff_f000, 0x100, 0x2000)]);
        assert!(matches!(
            parse(&d, RAM.0, RAM.1),
            Err(ElfError::OutsideRam { .. })
        ));
        let mut d = elf(0x4008_0000, &[(0x4008_0000, 0x100, 0x100)]);
        d.truncate(d.len() - 1);
        assert_eq!(parse(&d, RAM.0, RAM.1), Err(ElfError::Truncated));
    }
}
