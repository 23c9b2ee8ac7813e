//! The machine every VM sees (DESIGN.md, "What every VM sees"): a
//! QEMU-`virt`-like memory map.

/// Distributor, 64 KiB.
pub const GICD_BASE: u64 = 0x0800_0000;
pub const GICD_SIZE: u64 = 0x1_0000;
/// The ITS control and translation frames, 128 KiB.
pub const ITS_BASE: u64 = 0x0808_0000;
pub const ITS_SIZE: u64 = 0x2_0000;
/// Redistributors: one 128 KiB frame pair per vCPU.
pub const GICR_BASE: u64 = 0x080a_0000;
pub const GICR_STRIDE: u64 = 0x2_0000;
/// The PL011 console.
pub const UART_BASE: u64 = 0x0900_0000;
pub const UART_SIZE: u64 = 0x1000;
/// Its SPI (INTID 33, SPI 1), as on QEMU `virt`.
pub const UART_SPI: u32 = 1;
/// The real-time clock (an emulated PL031, as QEMU's virt has it).
pub const RTC_BASE: u64 = 0x0901_0000;
pub const RTC_SIZE: u64 = 0x1000;
pub const RTC_SPI: u32 = 2;
/// Vigil's MMIO test device, present only in test VMs.
pub const TEST_DEVICE_BASE: u64 = 0x0a00_0000;
pub const TEST_DEVICE_SIZE: u64 = 0x1000;
/// A client VM's virtio-mmio device (virtio 1.2 §4.2.2), served by a
/// service VM, and its SPI (INTID 48).
pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_1000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x200;
pub const VIRTIO_SPI: u32 = 16;
/// A service VM's channels, one per client it serves: each an emulated
/// ECAM host bridge of its own with one function (bus 0, device 0), whose
/// BAR 0 (4 KiB registers) sits alone in the bridge's 32-bit window and
/// BAR 2 (the client's RAM) alone in its 64-bit prefetchable window, each
/// exactly its size, so Linux can only place them there. Channel `i`'s
/// INTA is SPI 17 + i. Addresses clear of everything QEMU `virt` has,
/// since a service VM with the PCIe bridge is identity-mapped.
pub const MAX_CHANNELS: usize = 4;
/// Bus 0 only.
pub const CHANNEL_ECAM_SIZE: u64 = 0x10_0000;
pub const CHANNEL_MMIO32_SIZE: u64 = 0x1000;
/// Room for each channel's BAR 2: a client's RAM, rounded up.
pub const CHANNEL_MMIO64_SLOT: u64 = 0x10_0000_0000;
pub const CHANNEL_SPI: u32 = 17;

pub const fn channel_ecam(i: usize) -> u64 {
    0x50_0000_0000 + i as u64 * CHANNEL_ECAM_SIZE
}

pub const fn channel_mmio32(i: usize) -> u64 {
    0x0c00_0000 + i as u64 * CHANNEL_MMIO32_SIZE
}

pub const fn channel_mmio64(i: usize) -> u64 {
    0x60_0000_0000 + i as u64 * CHANNEL_MMIO64_SLOT
}

pub const fn channel_spi(i: usize) -> u32 {
    CHANNEL_SPI + i as u32
}

/// Guest RAM starts here unless the VM is identity-mapped.
pub const RAM_BASE: u64 = 0x4000_0000;

/// Architected timer PPIs as device-tree PPI numbers (INTID - 16): secure
/// physical, non-secure physical, virtual, hypervisor.
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// The maintenance interrupt, PPI 9 (INTID 25).
pub const MAINTENANCE_PPI: u32 = 9;

/// `range` less the `holes` (base, size), as up to `holes.len() + 1`
/// pieces in address order; empty holes and holes outside `range` are
/// ignored. For mapping a passed-through window around what Vigil keeps.
pub fn subtract(range: (u64, u64), holes: &[(u64, u64)]) -> impl Iterator<Item = (u64, u64)> {
    let (start, end) = (range.0, range.0 + range.1);
    let mut cuts: [(u64, u64); 4] = [(0, 0); 4];
    let mut n = 0;
    for &(b, s) in holes.iter().filter(|h| h.1 != 0) {
        let (b, e) = (b.max(start), (b + s).min(end));
        if b < e && n < cuts.len() {
            cuts[n] = (b, e);
            n += 1;
        }
    }
    cuts[..n].sort_unstable();
    let mut at = start;
    let mut pieces = [(0, 0); 5];
    let mut m = 0;
    for &(b, e) in &cuts[..n] {
        if b > at {
            pieces[m] = (at, b - at);
            m += 1;
        }
        at = at.max(e);
    }
    if end > at {
        pieces[m] = (at, end - at);
        m += 1;
    }
    pieces.into_iter().take(m)
}

#[cfg(test)]
mod tests {
    use super::subtract;
    use alloc::vec::Vec;

    fn pieces(range: (u64, u64), holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
        subtract(range, holes).collect()
    }

    #[test]
    fn holes_are_cut_out_in_order() {
        assert_eq!(pieces((0x1000, 0x9000), &[]), [(0x1000, 0x9000)]);
        assert_eq!(
            pieces((0x1000, 0x9000), &[(0x8000, 0x1000), (0x2000, 0x1000)]),
            [(0x1000, 0x1000), (0x3000, 0x5000), (0x9000, 0x1000)]
        );
        // At the edges, overlapping, empty, outside.
        assert_eq!(
            pieces((0x1000, 0x3000), &[(0x1000, 0x1000), (0x3000, 0x2000)]),
            [(0x2000, 0x1000)]
        );
        assert_eq!(
            pieces(
                (0x1000, 0x3000),
                &[(0x1800, 0x1000), (0x2000, 0x800), (0, 0)]
            ),
            [(0x1000, 0x800), (0x2800, 0x1800)]
        );
        assert_eq!(
            pieces((0x1000, 0x1000), &[(0x5000, 0x1000)]),
            [(0x1000, 0x1000)]
        );
        assert_eq!(pieces((0x1000, 0x1000), &[(0, 0x10000)]), []);
    }
}
