//! Where a guest's kernel, device tree and initrd go in its RAM.
//!
//! A Linux arm64 `Image` is placed per its header (Documentation/arch/
//! arm64/booting.rst): `text_offset` bytes above a 2 MiB-aligned base,
//! with `image_size` bytes (BSS included) reserved. Anything else is a raw
//! binary, loaded at RAM + 0x80000. The device tree goes in the top 2 MiB
//! of RAM and the initrd just below it.

/// Offset of a raw binary (and of old Linux images without a size).
pub const RAW_OFFSET: u64 = 0x8_0000;
const MIB: u64 = 1 << 20;
/// The arm64 Image magic, "ARM\x64", at offset 0x38.
const IMAGE_MAGIC: u32 = 0x644d_5241;

/// What a kernel file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Linux { text_offset: u64, image_size: u64 },
    Raw,
}

/// Look at the first 64 bytes of a kernel.
pub fn inspect(header: &[u8]) -> Kind {
    if header.len() < 64 {
        return Kind::Raw;
    }
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().unwrap());
    let magic = u32::from_le_bytes(header[0x38..0x3c].try_into().unwrap());
    if magic != IMAGE_MAGIC {
        return Kind::Raw;
    }
    let image_size = u64_at(0x10);
    if image_size == 0 {
        // Before Linux 3.17: text_offset is 0x80000, size unknown.
        Kind::Linux {
            text_offset: RAW_OFFSET,
            image_size: 0,
        }
    } else {
        Kind::Linux {
            text_offset: u64_at(0x08),
            image_size,
        }
    }
}

/// Guest addresses of everything loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub kernel: u64,
    pub dtb: u64,
    pub initrd: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlaceError {
    /// RAM does not start on a 2 MiB boundary.
    MisalignedRam,
    /// The pieces do not fit in RAM without overlapping.
    TooSmall {
        needed: u64,
        ram: u64,
    },
    DtbTooLarge,
}

impl core::fmt::Display for PlaceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::MisalignedRam => write!(f, "guest RAM must start on a 2 MiB boundary"),
            Self::TooSmall { needed, ram } => write!(
                f,
                "guest RAM of {} MiB is too small: kernel, initrd and device tree need {} MiB",
                ram / MIB,
                needed.div_ceil(MIB)
            ),
            Self::DtbTooLarge => write!(f, "guest device tree larger than 2 MiB"),
        }
    }
}

/// Place a kernel of `kernel_len` bytes, a device tree of `dtb_len` and
/// an optional initrd in RAM `[ram_base, ram_base + ram_size)`.
pub fn place(
    ram_base: u64,
    ram_size: u64,
    kind: Kind,
    kernel_len: u64,
    dtb_len: u64,
    initrd_len: Option<u64>,
) -> Result<Placement, PlaceError> {
    if !ram_base.is_multiple_of(2 * MIB) {
        return Err(PlaceError::MisalignedRam);
    }
    if dtb_len > 2 * MIB {
        return Err(PlaceError::DtbTooLarge);
    }
    let (kernel, kernel_end) = match kind {
        Kind::Linux {
            text_offset,
            image_size,
        } => {
            let k = ram_base + text_offset;
            (k, k + image_size.max(kernel_len))
        }
        Kind::Raw => (ram_base + RAW_OFFSET, ram_base + RAW_OFFSET + kernel_len),
    };
    let top = ram_base + ram_size;
    let dtb = top.checked_sub(2 * MIB);
    let initrd = match (initrd_len, dtb) {
        (Some(len), Some(d)) => d.checked_sub(len.div_ceil(4096) * 4096).map(Some),
        (None, Some(_)) => Some(None),
        _ => None,
    };
    let needed =
        (kernel_end - ram_base) + 2 * MIB + initrd_len.map_or(0, |l| l.div_ceil(4096) * 4096);
    match (dtb, initrd) {
        (Some(dtb), Some(initrd)) if initrd.unwrap_or(dtb) >= kernel_end => Ok(Placement {
            kernel,
            dtb,
            initrd,
        }),
        _ => Err(PlaceError::TooSmall {
            needed,
            ram: ram_size,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux_header(text_offset: u64, image_size: u64) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
        h[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        h[0x38..0x3c].copy_from_slice(b"ARM\x64");
        h
    }

    #[test]
    fn recognises_linux_images() {
        assert_eq!(
            inspect(&linux_header(0, 30 * MIB)),
            Kind::Linux {
                text_offset: 0,
                image_size: 30 * MIB
            }
        );
        assert_eq!(
            inspect(&linux_header(0x1234, 0)),
            Kind::Linux {
                text_offset: RAW_OFFSET,
                image_size: 0
            },
            "old images without a size use the historical offset"
        );
        assert_eq!(inspect(&[0u8; 64]), Kind::Raw);
        assert_eq!(inspect(&[0u8; 10]), Kind::Raw);
    }

    #[test]
    fn places_linux_with_bss_room_and_dtb_on_top() {
        let kind = Kind::Linux {
            text_offset: 0,
            image_size: 40 * MIB,
        };
        let p = place(
            0x4000_0000,
            512 * MIB,
            kind,
            30 * MIB,
            4096,
            Some(5 * MIB + 1),
        )
        .unwrap();
        assert_eq!(p.kernel, 0x4000_0000);
        assert_eq!(p.dtb, 0x4000_0000 + 510 * MIB);
        assert_eq!(p.initrd, Some(0x4000_0000 + 510 * MIB - 5 * MIB - 4096));
        assert_eq!(p.dtb % 8, 0);
    }

    #[test]
    fn raw_binaries_go_at_0x80000() {
        let p = place(0x4000_0000, 64 * MIB, Kind::Raw, 100_000, 4096, None).unwrap();
        assert_eq!(p.kernel, 0x4008_0000);
        assert_eq!(p.initrd, None);
    }

    #[test]
    fn too_small_or_misaligned() {
        let kind = Kind::Linux {
            text_offset: 0,
            image_size: 40 * MIB,
        };
        assert!(matches!(
            place(0x4000_0000, 32 * MIB, kind, 30 * MIB, 4096, None),
            Err(PlaceError::TooSmall { .. })
        ));
        assert!(matches!(
            place(0x4000_0000, 48 * MIB, kind, 30 * MIB, 4096, Some(8 * MIB)),
            Err(PlaceError::TooSmall { .. })
        ));
        assert_eq!(
            place(0x4010_0000, 64 * MIB, Kind::Raw, 10, 10, None),
            Err(PlaceError::MisalignedRam)
        );
        assert_eq!(
            place(0x4000_0000, 64 * MIB, Kind::Raw, 10, 3 * MIB, None),
            Err(PlaceError::DtbTooLarge)
        );
        assert_eq!(
            place(0x4000_0000, MIB, Kind::Raw, 10, 10, None).map(|_| ()),
            Err(PlaceError::TooSmall {
                needed: RAW_OFFSET + 10 + 2 * MIB,
                ram: MIB
            })
        );
    }
}
