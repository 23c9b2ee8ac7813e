//! The device tree each VM gets (DESIGN.md, "What every VM sees").

use crate::layout::*;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use vm_fdt::FdtWriter;

/// What varies between VMs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestDt<'a> {
    pub ram_base: u64,
    pub ram_size: u64,
    /// vCPUs; vCPU `i` has MPIDR affinity [`vcpu_mpidr`]`(i)`.
    pub cpus: usize,
    pub bootargs: &'a str,
    /// `[start, end)` of the initrd in guest RAM.
    pub initrd: Option<(u64, u64)>,
    pub its: bool,
    /// Vigil's MMIO test device.
    pub test_device: bool,
    /// The host's PCIe bridge, passed through; its MSIs go to the vITS.
    pub pcie: Option<PcieDt<'a>>,
    /// A virtio-mmio device at VIRTIO_MMIO_BASE (a client of a service VM).
    pub virtio_mmio: bool,
    /// A service VM's channel bridges, one per client: BAR 2's window of
    /// each (a power of two).
    pub channels: &'a [u64],
}

/// A passed-through generic ECAM PCIe host bridge, from the host's tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcieDt<'a> {
    pub ecam: (u64, u64),
    /// `ranges` as in the host's tree (identity-mapped windows).
    pub ranges: &'a [u8],
    pub bus_range: (u32, u32),
    pub interrupt_map_mask: &'a [u8],
    /// Host `interrupt-map`: 10-cell entries whose parent phandle is
    /// replaced by the guest GIC's.
    pub interrupt_map: &'a [u8],
}

const PHANDLE_GIC: u32 = 1;
const PHANDLE_ITS: u32 = 2;
const PHANDLE_CLK: u32 = 3;

/// GIC interrupt specifier types and flags (Linux binding
/// arm,gic-v3.yaml).
const SPI: u32 = 0;
const PPI: u32 = 1;
const LEVEL_HIGH: u32 = 4;

#[derive(Debug)]
pub struct Error(vm_fdt::Error);

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "building the guest device tree: {}", self.0)
    }
}

impl From<vm_fdt::Error> for Error {
    fn from(e: vm_fdt::Error) -> Self {
        Self(e)
    }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn node_name(name: &str, addr: u64) -> String {
    alloc::format!("{name}@{addr:x}")
}

/// Build the flattened device tree for a VM.
pub fn build(cfg: &GuestDt<'_>) -> Result<Vec<u8>, Error> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_string("compatible", "linux,dummy-virt")?;
    w.property_string("model", "Vigil virtual machine")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_u32("interrupt-parent", PHANDLE_GIC)?;

    let chosen = w.begin_node("chosen")?;
    w.property_string("bootargs", cfg.bootargs)?;
    w.property_string("stdout-path", &node_name("/pl011", UART_BASE))?;
    if let Some((start, end)) = cfg.initrd {
        w.property_u64("linux,initrd-start", start)?;
        w.property_u64("linux,initrd-end", end)?;
    }
    w.end_node(chosen)?;

    let mem = w.begin_node(&node_name("memory", cfg.ram_base))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[cfg.ram_base, cfg.ram_size])?;
    w.end_node(mem)?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 0)?;
    for i in 0..cfg.cpus {
        // `reg` is the MPIDR affinity (Aff3 = 0: one cell).
        let mpidr = vcpu_mpidr(i);
        let cpu = w.begin_node(&alloc::format!("cpu@{mpidr:x}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,armv8")?;
        w.property_u32("reg", mpidr as u32)?;
        w.property_string("enable-method", "psci")?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus)?;

    let psci = w.begin_node("psci")?;
    w.property_string_list("compatible", strings(&["arm,psci-1.0", "arm,psci-0.2"]))?;
    w.property_string("method", "hvc")?;
    w.end_node(psci)?;

    let gic = w.begin_node(&node_name("intc", GICD_BASE))?;
    w.property_string("compatible", "arm,gic-v3")?;
    w.property_null("interrupt-controller")?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_array_u64(
        "reg",
        &[
            GICD_BASE,
            GICD_SIZE,
            GICR_BASE,
            GICR_STRIDE * cfg.cpus as u64,
        ],
    )?;
    w.property_array_u32("interrupts", &[PPI, MAINTENANCE_PPI, LEVEL_HIGH])?;
    w.property_u32("phandle", PHANDLE_GIC)?;
    // An interrupt provider needs #address-cells (for interrupt-map
    // users); the ITS child is addressed in the parent's space.
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_null("ranges")?;
    if cfg.its {
        let its = w.begin_node(&node_name("its", ITS_BASE))?;
        w.property_string("compatible", "arm,gic-v3-its")?;
        w.property_null("msi-controller")?;
        w.property_u32("#msi-cells", 1)?;
        w.property_array_u64("reg", &[ITS_BASE, ITS_SIZE])?;
        w.property_u32("phandle", PHANDLE_ITS)?;
        w.end_node(its)?;
    }
    w.end_node(gic)?;

    let timer = w.begin_node("timer")?;
    w.property_string_list(
        "compatible",
        strings(&["arm,armv8-timer", "arm,armv7-timer"]),
    )?;
    let mut irqs = Vec::new();
    for ppi in TIMER_PPIS {
        irqs.extend_from_slice(&[PPI, ppi, LEVEL_HIGH]);
    }
    w.property_array_u32("interrupts", &irqs)?;
    w.property_null("always-on")?;
    w.end_node(timer)?;

    let clk = w.begin_node("apb-pclk")?;
    w.property_string("compatible", "fixed-clock")?;
    w.property_u32("#clock-cells", 0)?;
    w.property_u32("clock-frequency", 24_000_000)?;
    w.property_string("clock-output-names", "clk24mhz")?;
    w.property_u32("phandle", PHANDLE_CLK)?;
    w.end_node(clk)?;

    let uart = w.begin_node(&node_name("pl011", UART_BASE))?;
    w.property_string_list("compatible", strings(&["arm,pl011", "arm,primecell"]))?;
    w.property_array_u64("reg", &[UART_BASE, UART_SIZE])?;
    w.property_array_u32("interrupts", &[SPI, UART_SPI, LEVEL_HIGH])?;
    w.property_array_u32("clocks", &[PHANDLE_CLK, PHANDLE_CLK])?;
    w.property_string_list("clock-names", strings(&["uartclk", "apb_pclk"]))?;
    w.end_node(uart)?;

    let rtc = w.begin_node(&node_name("pl031", RTC_BASE))?;
    w.property_string_list("compatible", strings(&["arm,pl031", "arm,primecell"]))?;
    w.property_array_u64("reg", &[RTC_BASE, RTC_SIZE])?;
    w.property_array_u32("interrupts", &[SPI, RTC_SPI, LEVEL_HIGH])?;
    w.property_u32("clocks", PHANDLE_CLK)?;
    w.property_string("clock-names", "apb_pclk")?;
    w.end_node(rtc)?;

    if let Some(p) = &cfg.pcie {
        let pci = w.begin_node(&node_name("pcie", p.ecam.0))?;
        w.property_string("compatible", "pci-host-ecam-generic")?;
        w.property_string("device_type", "pci")?;
        w.property_u32("#address-cells", 3)?;
        w.property_u32("#size-cells", 2)?;
        w.property_array_u64("reg", &[p.ecam.0, p.ecam.1])?;
        w.property("ranges", p.ranges)?;
        w.property_array_u32("bus-range", &[p.bus_range.0, p.bus_range.1])?;
        w.property_u32("linux,pci-domain", 0)?;
        w.property_null("dma-coherent")?;
        // Requester ID = DeviceID, for every RID (Linux binding
        // pci-msi.txt).
        if cfg.its {
            w.property_array_u32("msi-map", &[0, PHANDLE_ITS, 0, 0x1_0000])?;
        }
        if !p.interrupt_map.is_empty() && p.interrupt_map.len() % 40 == 0 {
            let mut cells: Vec<u32> = p
                .interrupt_map
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            for entry in cells.chunks_exact_mut(10) {
                entry[4] = PHANDLE_GIC;
            }
            w.property_u32("#interrupt-cells", 1)?;
            w.property("interrupt-map-mask", p.interrupt_map_mask)?;
            w.property_array_u32("interrupt-map", &cells)?;
        }
        w.end_node(pci)?;
    }

    for (i, &window) in cfg.channels.iter().enumerate() {
        let (ecam, mmio32, mmio64) = (channel_ecam(i), channel_mmio32(i), channel_mmio64(i));
        let pci = w.begin_node(&node_name("pcie", ecam))?;
        w.property_string("compatible", "pci-host-ecam-generic")?;
        w.property_string("device_type", "pci")?;
        w.property_u32("#address-cells", 3)?;
        w.property_u32("#size-cells", 2)?;
        w.property_array_u64("reg", &[ecam, CHANNEL_ECAM_SIZE])?;
        // IEEE 1275 PCI binding: phys.hi 0x0200_0000 is 32-bit memory,
        // 0x4300_0000 64-bit prefetchable; PCI address = CPU address.
        let hi = |a: u64| (a >> 32) as u32;
        let lo = |a: u64| a as u32;
        w.property_array_u32(
            "ranges",
            &[
                0x0200_0000,
                hi(mmio32),
                lo(mmio32),
                hi(mmio32),
                lo(mmio32),
                hi(CHANNEL_MMIO32_SIZE),
                lo(CHANNEL_MMIO32_SIZE),
                0x4300_0000,
                hi(mmio64),
                lo(mmio64),
                hi(mmio64),
                lo(mmio64),
                hi(window),
                lo(window),
            ],
        )?;
        w.property_array_u32("bus-range", &[0, 0])?;
        // Domain 0 is the passed-through bridge's, if any.
        w.property_u32("linux,pci-domain", 1 + i as u32)?;
        w.property_null("dma-coherent")?;
        // INTA of device 0 to the channel's SPI (pci.txt interrupt-map:
        // child unit address (3 cells), pin, parent, parent specifier).
        w.property_u32("#interrupt-cells", 1)?;
        w.property_array_u32("interrupt-map-mask", &[0, 0, 0, 7])?;
        w.property_array_u32(
            "interrupt-map",
            &[
                0,
                0,
                0,
                1,
                PHANDLE_GIC,
                0,
                0,
                SPI,
                channel_spi(i),
                LEVEL_HIGH,
            ],
        )?;
        w.end_node(pci)?;
    }

    if cfg.virtio_mmio {
        let dev = w.begin_node(&node_name("virtio_mmio", VIRTIO_MMIO_BASE))?;
        w.property_string("compatible", "virtio,mmio")?;
        w.property_array_u64("reg", &[VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE])?;
        w.property_array_u32("interrupts", &[SPI, VIRTIO_SPI, LEVEL_HIGH])?;
        w.property_null("dma-coherent")?;
        w.end_node(dev)?;
    }

    if cfg.test_device {
        let dev = w.begin_node(&node_name("test-device", TEST_DEVICE_BASE))?;
        w.property_string("compatible", "vigil,test-device")?;
        w.property_array_u64("reg", &[TEST_DEVICE_BASE, TEST_DEVICE_SIZE])?;
        w.end_node(dev)?;
    }

    w.end_node(root)?;
    Ok(w.finish()?)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::process::Command;

    fn cfg() -> GuestDt<'static> {
        GuestDt {
            ram_base: 0x4000_0000,
            ram_size: 512 << 20,
            cpus: 2,
            bootargs: "console=ttyAMA0 earlycon",
            initrd: Some((0x5000_0000, 0x5040_0000)),
            its: true,
            test_device: true,
            pcie: None,
            virtio_mmio: false,
            channels: &[],
        }
    }

    /// The tree passes `dtc` with no warnings (dtc comes with scripts/setup;
    /// its absence fails the test rather than skipping it).
    fn dtc_warnings(dtb: &[u8]) -> String {
        let dir = std::env::temp_dir().join(std::format!("vigil-dt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(std::format!("{}.dtb", dtb.len()));
        std::fs::write(&path, dtb).unwrap();
        let out = Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts", "-o", "/dev/null"])
            .arg(&path)
            .output()
            .expect("dtc not found: install device-tree-compiler (scripts/setup)");
        assert!(
            out.status.success(),
            "dtc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    #[test]
    fn passes_dtc_without_warnings() {
        for (cpus, its, test_device, initrd) in [
            (1, true, false, None),
            (2, true, true, Some((0x5000_0000, 0x5001_0000))),
            (4, false, false, None),
            (8, true, true, None),
            (64, true, false, None),
        ] {
            let dtb = build(&GuestDt {
                cpus,
                its,
                test_device,
                initrd,
                ..cfg()
            })
            .unwrap();
            let w = dtc_warnings(&dtb);
            assert!(w.is_empty(), "dtc warnings for {cpus} cpus its={its}: {w}");
        }
    }

    #[test]
    fn virtio_client_and_service_channel() {
        let windows = [512 << 20, 64 << 20];
        let dtb = build(&GuestDt {
            virtio_mmio: true,
            channels: &windows,
            ..cfg()
        })
        .unwrap();
        let w = dtc_warnings(&dtb);
        assert!(w.is_empty(), "dtc warnings: {w}");
        let t = ::fdt::Fdt::new(&dtb).unwrap();
        let v = t.find_compatible(&["virtio,mmio"]).unwrap();
        let r = v.reg().unwrap().next().unwrap();
        assert_eq!(r.starting_address as u64, VIRTIO_MMIO_BASE);
        assert_eq!(r.size, Some(VIRTIO_MMIO_SIZE as usize));
        let irq: Vec<u8> = v.property("interrupts").unwrap().value.to_vec();
        assert_eq!(&irq[4..8], &VIRTIO_SPI.to_be_bytes());
        let bridges: Vec<_> = t
            .all_nodes()
            .filter(|n| {
                n.compatible()
                    .is_some_and(|c| c.all().any(|s| s == "pci-host-ecam-generic"))
            })
            .collect();
        assert_eq!(bridges.len(), 2);
        for (i, pci) in bridges.iter().enumerate() {
            let cells: Vec<u32> = pci
                .property("ranges")
                .unwrap()
                .value
                .chunks(4)
                .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(cells.len(), 14);
            assert_eq!(cells[12..], [0, windows[i] as u32]);
            assert_eq!(
                u64::from(cells[10]) << 32 | u64::from(cells[11]),
                channel_mmio64(i)
            );
            assert_eq!(
                pci.property("linux,pci-domain").unwrap().as_usize(),
                Some(1 + i)
            );
            let imap: Vec<u32> = pci
                .property("interrupt-map")
                .unwrap()
                .value
                .chunks(4)
                .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(imap[8], channel_spi(i));
        }
        // Without them, neither node.
        let plain = build(&cfg()).unwrap();
        let t = ::fdt::Fdt::new(&plain).unwrap();
        assert!(t.find_compatible(&["virtio,mmio"]).is_none());
        assert!(t.find_compatible(&["pci-host-ecam-generic"]).is_none());
    }

    /// 64 vCPUs: cpu nodes in four clusters of 16 (reg = MPIDR, Aff0 < 16),
    /// and 64 redistributors (8 MiB) that end before the PL011.
    #[test]
    fn sixty_four_vcpus_in_clusters() {
        let dtb = build(&GuestDt { cpus: 64, ..cfg() }).unwrap();
        let t = ::fdt::Fdt::new(&dtb).unwrap();
        let ids: Vec<usize> = t.cpus().map(|c| c.ids().first()).collect();
        let want: Vec<usize> = (0..64).map(|i| ((i / 16) << 8) | (i % 16)).collect();
        assert_eq!(ids, want);
        let names: Vec<&str> = t
            .find_node("/cpus")
            .unwrap()
            .children()
            .map(|c| c.name)
            .collect();
        assert_eq!(names[17], "cpu@101");
        let gic = t.find_compatible(&["arm,gic-v3"]).unwrap();
        let gicr = gic.reg().unwrap().nth(1).unwrap();
        let end = gicr.starting_address as u64 + gicr.size.unwrap() as u64;
        assert_eq!(gicr.size, Some(64 * 0x2_0000));
        assert!(end <= UART_BASE, "GICR region ends at {end:#x}");
    }

    #[test]
    fn matches_the_vm() {
        let dtb = build(&cfg()).unwrap();
        let t = ::fdt::Fdt::new(&dtb).unwrap();
        let mem: Vec<_> = t.memory().regions().collect();
        assert_eq!(mem.len(), 1);
        assert_eq!(mem[0].starting_address as u64, 0x4000_0000);
        assert_eq!(mem[0].size, Some(512 << 20));
        let ids: Vec<usize> = t.cpus().map(|c| c.ids().first()).collect();
        assert_eq!(ids, std::vec![0, 1]);
        assert_eq!(t.chosen().bootargs(), Some("console=ttyAMA0 earlycon"));
        assert_eq!(t.chosen().stdout().unwrap().name, "pl011@9000000");
        let chosen = t.find_node("/chosen").unwrap();
        let start = chosen.property("linux,initrd-start").unwrap().value;
        assert_eq!(u64::from_be_bytes(start.try_into().unwrap()), 0x5000_0000);
        let end = chosen.property("linux,initrd-end").unwrap().value;
        assert_eq!(u64::from_be_bytes(end.try_into().unwrap()), 0x5040_0000);
        let psci = t.find_compatible(&["arm,psci-1.0"]).unwrap();
        assert_eq!(psci.property("method").unwrap().as_str(), Some("hvc"));
        let gic = t.find_compatible(&["arm,gic-v3"]).unwrap();
        let regs: Vec<_> = gic.reg().unwrap().collect();
        assert_eq!(regs[0].starting_address as u64, GICD_BASE);
        assert_eq!(regs[1].starting_address as u64, GICR_BASE);
        assert_eq!(
            regs[1].size,
            Some(2 * 0x2_0000),
            "one redistributor per vCPU"
        );
        let its = t.find_compatible(&["arm,gic-v3-its"]).unwrap();
        assert_eq!(
            its.reg().unwrap().next().unwrap().starting_address as u64,
            ITS_BASE
        );
        assert!(its.property("msi-controller").is_some());
        let timer = t.find_compatible(&["arm,armv8-timer"]).unwrap();
        let cells: Vec<u8> = timer.property("interrupts").unwrap().value.to_vec();
        let ppis: Vec<u32> = cells
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .skip(1)
            .step_by(3)
            .collect();
        assert_eq!(ppis, std::vec![13, 14, 11, 10]);
        let uart = t.find_compatible(&["arm,pl011"]).unwrap();
        assert_eq!(
            uart.reg().unwrap().next().unwrap().starting_address as u64,
            UART_BASE
        );
        assert!(t.find_compatible(&["vigil,test-device"]).is_some());
    }

    /// QEMU virt's bridge: I/O, 32-bit and 64-bit windows; INTA-D of slot
    /// 0 mapped to SPIs 3-6 through the host GIC (phandle 0x8005).
    fn qemu_pcie() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let be = |v: &[u32]| v.iter().flat_map(|c| c.to_be_bytes()).collect::<Vec<u8>>();
        let ranges = be(&[
            0x100_0000,
            0,
            0,
            0,
            0x3eff_0000,
            0,
            0x1_0000,
            0x200_0000,
            0,
            0x1000_0000,
            0,
            0x1000_0000,
            0,
            0x2eff_0000,
            0x300_0000,
            0x80,
            0,
            0x80,
            0,
            0x80,
            0,
        ]);
        let mut imap = Vec::new();
        for pin in 1..=4u32 {
            imap.extend_from_slice(&[0, 0, 0, pin, 0x8005, 0, 0, 0, 2 + pin, 4]);
        }
        (ranges, be(&[0x1800, 0, 0, 7]), be(&imap))
    }

    #[test]
    fn passed_through_pcie_bridge() {
        let (ranges, mask, imap) = qemu_pcie();
        let pcie = PcieDt {
            ecam: (0x40_1000_0000, 0x1000_0000),
            ranges: &ranges,
            bus_range: (0, 0xff),
            interrupt_map_mask: &mask,
            interrupt_map: &imap,
        };
        let dtb = build(&GuestDt {
            pcie: Some(pcie),
            ..cfg()
        })
        .unwrap();
        let w = dtc_warnings(&dtb);
        assert!(w.is_empty(), "dtc warnings: {w}");
        let t = ::fdt::Fdt::new(&dtb).unwrap();
        let n = t.find_compatible(&["pci-host-ecam-generic"]).unwrap();
        assert_eq!(n.name, "pcie@4010000000");
        assert_eq!(n.property("ranges").unwrap().value, &ranges[..]);
        let msi: Vec<u32> = n
            .property("msi-map")
            .unwrap()
            .value
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(msi, std::vec![0, PHANDLE_ITS, 0, 0x1_0000]);
        let map: Vec<u32> = n
            .property("interrupt-map")
            .unwrap()
            .value
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(map.len(), 40);
        for entry in map.chunks(10) {
            assert_eq!(entry[4], PHANDLE_GIC, "parent is the guest's GIC");
        }
        assert_eq!(map[8], 3, "SPI numbers unchanged");
    }

    #[test]
    fn optional_parts_are_left_out() {
        let dtb = build(&GuestDt {
            its: false,
            test_device: false,
            initrd: None,
            ..cfg()
        })
        .unwrap();
        let t = ::fdt::Fdt::new(&dtb).unwrap();
        assert!(t.find_compatible(&["arm,gic-v3-its"]).is_none());
        assert!(t.find_compatible(&["vigil,test-device"]).is_none());
        assert!(t
            .find_node("/chosen")
            .unwrap()
            .property("linux,initrd-start")
            .is_none());
    }
}
