//! The machine every VM sees (DESIGN.md, "What every VM sees"): a
//! QEMU-`virt`-like memory map.

/// Distributor, 64 KiB.
pub const GICD_BASE: u64 = 0x0800_0000;
pub const GICD_SIZE: u64 = 0x1_0000;
/// The ITS control and translation frames, 128 KiB.
pub const ITS_BASE: u64 = 0x0808_0000;
pub const ITS_SIZE: u64 = 0x2_0000;
/// Redistributors: one 128 KiB frame pair per vCPU, as many as the VM has
/// (GICR_TYPER.Last on its last one).
pub const GICR_BASE: u64 = 0x080a_0000;
pub const GICR_STRIDE: u64 = 0x2_0000;
/// Most redistributors the region holds before the PL011: 123, as on QEMU
/// `virt`, whose low redistributor region ends there too.
pub const MAX_GICR_FRAMES: usize = ((UART_BASE - GICR_BASE) / GICR_STRIDE) as usize;
const _: () = assert!(GICR_BASE >= ITS_BASE + ITS_SIZE);

/// vCPUs per cluster of a VM's MPIDR layout. One ICC_SGI1R_EL1 write names
/// targets by Aff3.Aff2.Aff1 and a 16-bit TargetList of Aff0 values
/// (IHI 0069 §12.11, ICC_SGI1R_EL1); Aff0 beyond 15 needs the range
/// selector RS, which a guest may only use when ICC_CTLR_EL1.RSS says so
/// (without it Linux's GICv3 driver reports such CPUs as unreachable by
/// SGIs, "can't SGI CPU..., no RSS").
/// So, as on QEMU `virt`: Aff0 = index % 16, Aff1 = index / 16.
pub const VCPUS_PER_CLUSTER: usize = 16;

/// MPIDR affinity of vCPU `index` (Aff1.Aff0; Aff3 = Aff2 = 0): what its
/// `cpu` node's `reg`, its MPIDR_EL1 and its GICR_TYPER say.
pub const fn vcpu_mpidr(index: usize) -> u64 {
    (((index / VCPUS_PER_CLUSTER) << 8) | (index % VCPUS_PER_CLUSTER)) as u64
}

/// The index of the vCPU of a VM with `n` vCPUs whose MPIDR affinity is
/// `mpidr` (PSCI CPU_ON, AFFINITY_INFO), if any: an affinity outside the
/// layout (Aff0 above 15, Aff2 or Aff3 set, a cluster past the last vCPU)
/// names none. Constant time.
pub const fn vcpu_index(mpidr: u64, n: usize) -> Option<usize> {
    let (aff0, aff1) = ((mpidr & 0xff) as usize, ((mpidr >> 8) & 0xff) as usize);
    if mpidr & !0xffff != 0 || aff0 >= VCPUS_PER_CLUSTER {
        return None;
    }
    let index = aff1 * VCPUS_PER_CLUSTER + aff0;
    if index < n {
        Some(index)
    } else {
        None
    }
}
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
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn vcpu_mpidrs_are_clusters_of_16_and_map_back() {
        assert_eq!(vcpu_mpidr(0), 0);
        assert_eq!(vcpu_mpidr(15), 0xf);
        assert_eq!(vcpu_mpidr(16), 0x100);
        assert_eq!(vcpu_mpidr(33), 0x201);
        assert_eq!(vcpu_mpidr(63), 0x30f);
        for n in [1, 2, 15, 16, 17, 32, 64] {
            for i in 0..n {
                let m = vcpu_mpidr(i);
                assert!(
                    m & 0xff < 16,
                    "Aff0 of vCPU {i} addressable by a TargetList"
                );
                assert_eq!(vcpu_index(m, n), Some(i), "vCPU {i} of {n}");
            }
            // Past the last vCPU, in its cluster or the next.
            assert_eq!(vcpu_index(vcpu_mpidr(n), n), None);
            assert_eq!(vcpu_index(vcpu_mpidr(n + 16), n), None);
        }
        // Outside the layout: Aff0 16 (which would be vCPU 16 with the old
        // flat layout), Aff2, Aff3, non-affinity bits.
        assert_eq!(vcpu_index(0x10, 64), None);
        assert_eq!(vcpu_index(0x1_0000, 64), None);
        assert_eq!(vcpu_index(0x1_0000_0000, 64), None);
        assert_eq!(vcpu_index(0x8000_0000, 64), None);
        assert_eq!(vcpu_index(0xff, 64), None);
    }

    #[test]
    fn redistributors_of_the_largest_vm_end_before_the_uart() {
        assert_eq!(MAX_GICR_FRAMES, 123);
    }

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
