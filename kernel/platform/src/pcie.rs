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
    /// `interrupt-map-mask` and `interrupt-map` as they are.
    pub interrupt_map_mask: &'a [u8],
    pub interrupt_map: &'a [u8],
}

impl PcieHost<'_> {
    pub fn windows(&self) -> &[Region] {
        &self.windows[..self.nr_windows]
    }
}

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
    for entry in ranges.chunks_exact(28).take(MAX_WINDOWS) {
        let cpu = ((be32(entry, 3) as u64) << 32) | be32(entry, 4) as u64;
        let size = ((be32(entry, 5) as u64) << 32) | be32(entry, 6) as u64;
        windows[nr_windows] = Region::new(cpu, size);
        nr_windows += 1;
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
        interrupt_map_mask: node.property("interrupt-map-mask").map_or(&[], |p| p.value),
        interrupt_map: node.property("interrupt-map").map_or(&[], |p| p.value),
    })
}
