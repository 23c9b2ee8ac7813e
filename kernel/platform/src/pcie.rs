//! The PCIe host bridge (`pci-host-ecam-generic`), for passing it through
//! to a VM: its configuration space (ECAM), its address windows, and the
//! raw properties a guest's device tree repeats.

use crate::Region;

/// Most address windows (`ranges` entries) kept.
pub const MAX_WINDOWS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcieHost<'a> {
    pub ecam: Region,
    /// CPU-side ranges of the I/O and memory windows.
    pub windows: [Region; MAX_WINDOWS],
    pub nr_windows: usize,
    /// The `ranges` property as is (3 PCI + 2 CPU address cells + 2 size).
    pub ranges: &'a [u8],
    pub bus_range: (u32, u32),
    /// The non-prefetchable 32-bit memory window, where Vigil can place a
    /// BAR of its own.
    pub mem32: Option<Window>,
    /// `interrupt-map-mask` and `interrupt-map` as they are.
    pub interrupt_map_mask: &'a [u8],
    pub interrupt_map: &'a [u8],
    /// The first `iommu-map` entry: requester IDs `rid..rid + len` are
    /// StreamIDs `sid..sid + len` of the SMMU.
    pub iommu_map: Option<IommuMap>,
}

/// One `iommu-map` entry (<rid-base &smmu sid-base length>).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuMap {
    pub rid: u32,
    pub sid: u32,
    pub len: u32,
}

/// An address window of the bridge: CPU and PCI bus addresses of its
/// start, and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub cpu: u64,
    pub pci: u64,
    pub size: u64,
}

impl PcieHost<'_> {
    pub fn windows(&self) -> &[Region] {
        &self.windows[..self.nr_windows]
    }

    /// CPU address of function `dev.func` on `bus`'s configuration space
    /// (PCIe Base 6.0 §7.2.2: 4 KiB per function, bus << 20 | device << 15
    /// | function << 12), if the bus is the bridge's.
    pub fn config_space(&self, bus: u32, dev: u32, func: u32) -> Option<u64> {
        if bus < self.bus_range.0 || bus > self.bus_range.1 || dev > 31 || func > 7 {
            return None;
        }
        let offset = (u64::from(bus - self.bus_range.0) << 20)
            | (u64::from(dev) << 15)
            | (u64::from(func) << 12);
        (offset + CONFIG_SPACE_SIZE <= self.ecam.size).then_some(self.ecam.base + offset)
    }
}

/// One function's configuration space in ECAM.
pub const CONFIG_SPACE_SIZE: u64 = 0x1000;

/// `ranges` space code (IEEE 1275 PCI binding, phys.hi bits 24-25).
const SPACE_MEM32: u32 = 0b10;

fn be32(b: &[u8], cell: usize) -> u32 {
    u32::from_be_bytes([
        b[cell * 4],
        b[cell * 4 + 1],
        b[cell * 4 + 2],
        b[cell * 4 + 3],
    ])
}

/// The first generic ECAM host bridge, if any. Only the layout QEMU uses
/// (root #address-cells = #size-cells = 2) is understood; anything else
/// is reported as no bridge.
pub fn discover<'a>(fdt: &fdt::Fdt<'a>) -> Option<PcieHost<'a>> {
    let node = fdt.find_compatible(&["pci-host-ecam-generic"])?;
    let r = node.reg()?.next()?;
    let ecam = Region::new(r.starting_address as u64, r.size? as u64);
    let ranges = node.property("ranges")?.value;
    if ranges.len() % 28 != 0 {
        return None;
    }
    let mut windows = [Region::new(0, 0); MAX_WINDOWS];
    let mut nr_windows = 0;
    let mut mem32 = None;
    for entry in ranges.chunks_exact(28).take(MAX_WINDOWS) {
        let cpu = ((be32(entry, 3) as u64) << 32) | be32(entry, 4) as u64;
        let size = ((be32(entry, 5) as u64) << 32) | be32(entry, 6) as u64;
        windows[nr_windows] = Region::new(cpu, size);
        nr_windows += 1;
        let hi = be32(entry, 0);
        // Bit 30: prefetchable.
        if (hi >> 24) & 3 == SPACE_MEM32 && hi & (1 << 30) == 0 && mem32.is_none() {
            let pci = ((be32(entry, 1) as u64) << 32) | be32(entry, 2) as u64;
            mem32 = Some(Window { cpu, pci, size });
        }
    }
    let bus_range = node
        .property("bus-range")
        .map(|p| p.value)
        .filter(|v| v.len() == 8)
        .map(|v| (be32(v, 0), be32(v, 1)))
        .unwrap_or((0, 0xff));
    Some(PcieHost {
        ecam,
        windows,
        nr_windows,
        ranges,
        bus_range,
        mem32,
        interrupt_map_mask: node.property("interrupt-map-mask").map_or(&[], |p| p.value),
        interrupt_map: node.property("interrupt-map").map_or(&[], |p| p.value),
        iommu_map: node
            .property("iommu-map")
            .map(|p| p.value)
            .filter(|v| v.len() >= 16)
            .map(|v| IommuMap {
                rid: be32(v, 0),
                sid: be32(v, 2),
                len: be32(v, 3),
            }),
    })
}
