//! PCI configuration through ECAM, for test guests given the host's PCIe
//! bridge: find a function by vendor and device ID, size and place a
//! memory BAR, turn on decoding and bus mastering, and program the MSI
//! capability.
//!
//! The bridge is the device tree's `pci-host-ecam-generic` node: `reg` is
//! the ECAM (1 MiB per bus, 32 KiB per device, 4 KiB per function),
//! `ranges` the windows BARs may be placed in, `msi-map` how requester IDs
//! become ITS DeviceIDs. Every configuration access is a single aligned
//! 32-bit load or store (the guest runs with the MMU off, so these are
//! Device accesses); narrower fields are read-modify-written.

use core::ops::Range;

use crate::mmio;

/// `PCI_COMMAND` bits.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Bus mastering: the function may issue memory writes (and so MSIs).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// The legacy INTx line is disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Capability ID of MSI.
pub const CAP_MSI: u8 = 0x05;

const VENDOR_ID: u16 = 0x00;
const COMMAND: u16 = 0x04;
const STATUS_CAP_LIST: u32 = 1 << (16 + 4);
const BAR0: u16 = 0x10;
const CAP_PTR: u16 = 0x34;

/// A function's bus/device/function number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl Bdf {
    /// The requester ID: bus << 8 | device << 3 | function.
    pub fn rid(self) -> u32 {
        (u32::from(self.bus) << 8) | (u32::from(self.dev) << 3) | u32::from(self.func)
    }
}

impl core::fmt::Display for Bdf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// What the guest learnt about the host bridge from its device tree.
#[derive(Clone, Debug)]
pub struct HostBridge {
    /// The ECAM region (CPU address).
    pub ecam: Range<u64>,
    /// The 32-bit non-prefetchable memory window, as CPU addresses, and
    /// the PCI address its start corresponds to.
    pub mem32: Option<(Range<u64>, u64)>,
    /// `msi-map`: (rid-base, msi-base, length) of its first entry.
    pub msi_map: Option<(u32, u32, u32)>,
}

fn be32(b: &[u8], i: usize) -> Option<u32> {
    let w = b.get(i * 4..i * 4 + 4)?;
    Some(u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
}

impl HostBridge {
    /// The first `pci-host-ecam-generic` node of the device tree.
    pub fn from_device_tree(boot: &crate::BootInfo) -> Option<Self> {
        let node = boot.fdt.find_compatible(&["pci-host-ecam-generic"])?;
        let reg = node.reg()?.next()?;
        let start = reg.starting_address as u64;
        let ecam = start..start + reg.size? as u64;
        // ranges: (3 cells PCI address, parent address, 2 cells size);
        // the parent is the root (#address-cells from the tree, usually 2).
        let parent_cells = boot
            .fdt
            .all_nodes()
            .next()
            .map_or(2, |root| root.cell_sizes().address_cells);
        let mut mem32 = None;
        if let Some(ranges) = node.property("ranges") {
            let entry = 3 + parent_cells + 2;
            let n = ranges.value.len() / 4 / entry;
            for k in 0..n {
                let cell = |i: usize| be32(ranges.value, k * entry + i).map(u64::from);
                let (Some(space), Some(pci_hi), Some(pci_lo)) = (cell(0), cell(1), cell(2)) else {
                    continue;
                };
                let mut cpu = 0;
                for i in 0..parent_cells {
                    cpu = (cpu << 32) | cell(3 + i).unwrap_or(0);
                }
                let size = (cell(3 + parent_cells).unwrap_or(0) << 32)
                    | cell(4 + parent_cells).unwrap_or(0);
                // Space code 0b10: 32-bit memory; bit 30: prefetchable.
                if (space >> 24) & 3 == 2 && space & (1 << 30) == 0 {
                    mem32 = Some((cpu..cpu + size, (pci_hi << 32) | pci_lo));
                    break;
                }
            }
        }
        let msi_map = node
            .property("msi-map")
            .and_then(|p| Some((be32(p.value, 0)?, be32(p.value, 2)?, be32(p.value, 3)?)));
        Some(Self {
            ecam,
            mem32,
            msi_map,
        })
    }

    /// The ITS DeviceID of `bdf`'s MSIs, through `msi-map` (the requester
    /// ID itself without one).
    pub fn device_id(&self, bdf: Bdf) -> Option<u32> {
        let rid = bdf.rid();
        match self.msi_map {
            None => Some(rid),
            Some((rid_base, msi_base, len)) => {
                let off = rid.checked_sub(rid_base)?;
                (off < len).then(|| msi_base + off)
            }
        }
    }

    fn cfg_addr(&self, bdf: Bdf, off: u16) -> u64 {
        let a = self.ecam.start
            + (u64::from(bdf.bus) << 20)
            + (u64::from(bdf.dev & 0x1f) << 15)
            + (u64::from(bdf.func & 7) << 12)
            + u64::from(off & 0xffc);
        assert!(a + 4 <= self.ecam.end, "ECAM access beyond the region");
        a
    }

    /// The 32-bit configuration register at `off` (rounded down to 4).
    pub fn read32(&self, bdf: Bdf, off: u16) -> u32 {
        // SAFETY: an aligned 32-bit load from the ECAM the device tree
        // gives this VM; configuration reads have no memory effect on the
        // guest.
        unsafe { mmio::read32(self.cfg_addr(bdf, off)) }
    }

    /// Writes the 32-bit configuration register at `off`.
    pub fn write32(&self, bdf: Bdf, off: u16, v: u32) {
        // SAFETY: an aligned 32-bit store to the ECAM; it changes the
        // function's configuration, never guest memory directly (bus
        // mastering is the caller's decision).
        unsafe { mmio::write32(self.cfg_addr(bdf, off), v) }
    }

    /// The 16-bit register at `off` (2-byte aligned).
    pub fn read16(&self, bdf: Bdf, off: u16) -> u16 {
        (self.read32(bdf, off) >> ((off & 2) * 8)) as u16
    }

    /// Writes the 16-bit register at `off` by read-modify-write of its
    /// 32-bit word. Do not use it next to write-1-to-clear bits (the
    /// status register: use [`HostBridge::set_command`]).
    pub fn write16(&self, bdf: Bdf, off: u16, v: u16) {
        let shift = (off & 2) * 8;
        let w = self.read32(bdf, off) & !(0xffff << shift);
        self.write32(bdf, off, w | (u32::from(v) << shift));
    }

    /// (vendor, device) of `bdf`, or None if nothing answers there.
    pub fn id(&self, bdf: Bdf) -> Option<(u16, u16)> {
        let v = self.read32(bdf, VENDOR_ID);
        let vendor = v as u16;
        (vendor != 0xffff && vendor != 0).then_some((vendor, (v >> 16) as u16))
    }

    /// The first function 0..7 of a device 0..31 on `bus` with this
    /// vendor and device ID.
    pub fn find(&self, bus: u8, vendor: u16, device: u16) -> Option<Bdf> {
        (0..32u8)
            .flat_map(|dev| (0..8u8).map(move |func| Bdf { bus, dev, func }))
            .filter(|b| (u64::from(b.bus) + 1) << 20 <= self.ecam.end - self.ecam.start)
            .find(|&b| self.id(b) == Some((vendor, device)))
    }

    /// `PCI_COMMAND`.
    pub fn command(&self, bdf: Bdf) -> u16 {
        self.read32(bdf, COMMAND) as u16
    }

    /// Writes `PCI_COMMAND` (the status half is written 0: its bits are
    /// read-only or write-1-to-clear).
    pub fn set_command(&self, bdf: Bdf, v: u16) {
        self.write32(bdf, COMMAND, u32::from(v));
    }

    /// Size and kind of memory BAR `n`: (size, 64-bit). Decoding must be
    /// off. None for an I/O or unimplemented BAR.
    pub fn size_bar(&self, bdf: Bdf, n: u16) -> Option<(u64, bool)> {
        let off = BAR0 + 4 * n;
        let old = self.read32(bdf, off);
        if old & 1 != 0 {
            return None;
        }
        let is64 = (old >> 1) & 3 == 2;
        self.write32(bdf, off, !0);
        let lo = self.read32(bdf, off) & !0xf;
        self.write32(bdf, off, old);
        let mut mask = u64::from(lo) | 0xffff_ffff_0000_0000;
        if is64 {
            let old_hi = self.read32(bdf, off + 4);
            self.write32(bdf, off + 4, !0);
            let hi = self.read32(bdf, off + 4);
            self.write32(bdf, off + 4, old_hi);
            mask = (u64::from(hi) << 32) | u64::from(lo);
        }
        if lo == 0 && !is64 {
            return None;
        }
        Some(((!mask).wrapping_add(1), is64))
    }

    /// Places memory BAR `n` at PCI address `addr`.
    pub fn set_bar(&self, bdf: Bdf, n: u16, addr: u64, is64: bool) {
        let off = BAR0 + 4 * n;
        self.write32(bdf, off, addr as u32);
        if is64 {
            self.write32(bdf, off + 4, (addr >> 32) as u32);
        }
    }

    /// The configuration offset of the first capability with this ID.
    pub fn find_capability(&self, bdf: Bdf, id: u8) -> Option<u16> {
        if self.read32(bdf, COMMAND) & STATUS_CAP_LIST == 0 {
            return None;
        }
        let mut at = (self.read32(bdf, CAP_PTR) & 0xfc) as u16;
        for _ in 0..48 {
            if at < 0x40 {
                return None;
            }
            let w = self.read32(bdf, at);
            if w as u8 == id {
                return Some(at);
            }
            at = ((w >> 8) & 0xfc) as u16;
        }
        None
    }

    /// Programs the MSI capability at `cap` with one vector: address,
    /// data, then MSI Enable (Multiple Message Enable 0). Returns whether
    /// the function has 64-bit addresses.
    pub fn enable_msi(&self, bdf: Bdf, cap: u16, address: u64, data: u16) -> bool {
        let control = self.read16(bdf, cap + 2);
        let is64 = control & (1 << 7) != 0;
        self.write16(bdf, cap + 2, control & !((7 << 4) | 1));
        self.write32(bdf, cap + 4, address as u32);
        let data_off = if is64 {
            self.write32(bdf, cap + 8, (address >> 32) as u32);
            cap + 0xc
        } else {
            cap + 8
        };
        self.write16(bdf, data_off, data);
        self.write16(bdf, cap + 2, (control & !(7 << 4)) | 1);
        is64
    }

    /// Turns MSI off again.
    pub fn disable_msi(&self, bdf: Bdf, cap: u16) {
        let control = self.read16(bdf, cap + 2);
        self.write16(bdf, cap + 2, control & !1);
    }

    /// (address, data, enabled) the MSI capability at `cap` holds.
    pub fn msi(&self, bdf: Bdf, cap: u16) -> (u64, u16, bool) {
        let control = self.read16(bdf, cap + 2);
        let is64 = control & (1 << 7) != 0;
        let lo = u64::from(self.read32(bdf, cap + 4));
        let (hi, data_off) = if is64 {
            (u64::from(self.read32(bdf, cap + 8)), cap + 0xc)
        } else {
            (0, cap + 8)
        };
        (
            (hi << 32) | lo,
            self.read16(bdf, data_off),
            control & 1 != 0,
        )
    }
}
