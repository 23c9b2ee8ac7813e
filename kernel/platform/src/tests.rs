extern crate std;

use super::*;
use std::vec::Vec;
use vm_fdt::FdtWriter;

/// Options for building a QEMU `virt`-shaped device tree.
struct Tree {
    /// MPIDRs; `reg` takes two cells if any has Aff3, as QEMU writes it.
    cpus: Vec<u64>,
    /// Redistributor regions; `#redistributor-regions` is written when
    /// there is more than one, or when `gicr_count` says so.
    gicr: Vec<(u64, u64)>,
    gicr_count: Option<u32>,
    gicr_stride: Option<u64>,
    with_its: bool,
    with_gic: bool,
    with_memory: bool,
    with_timer: bool,
    with_smmu: bool,
    psci_method: &'static str,
    bootargs: &'static str,
}

impl Default for Tree {
    fn default() -> Self {
        Self {
            cpus: std::vec![0, 1, 2, 3],
            gicr: std::vec![(0x080a_0000, 0xf6_0000)],
            gicr_count: None,
            gicr_stride: None,
            with_its: true,
            with_gic: true,
            with_memory: true,
            with_timer: true,
            with_smmu: false,
            psci_method: "smc",
            bootargs: "vigil.test=smp",
        }
    }
}

impl Tree {
    fn build(&self) -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_string("compatible", "linux,dummy-virt").unwrap();

        let chosen = w.begin_node("chosen").unwrap();
        w.property_string("stdout-path", "/pl011@9000000").unwrap();
        w.property_string("bootargs", self.bootargs).unwrap();
        w.end_node(chosen).unwrap();

        if self.with_memory {
            let mem = w.begin_node("memory@40000000").unwrap();
            w.property_string("device_type", "memory").unwrap();
            w.property_array_u64("reg", &[0x4000_0000, 0x8000_0000])
                .unwrap();
            w.end_node(mem).unwrap();
        }

        let cpus = w.begin_node("cpus").unwrap();
        let two_cells = self.cpus.iter().any(|&m| m >> 32 != 0);
        w.property_u32("#address-cells", if two_cells { 2 } else { 1 })
            .unwrap();
        w.property_u32("#size-cells", 0).unwrap();
        for (i, &id) in self.cpus.iter().enumerate() {
            // QEMU names them by index (cpu@16 is MPIDR 0x100).
            let cpu = w.begin_node(&std::format!("cpu@{i}")).unwrap();
            w.property_string("device_type", "cpu").unwrap();
            w.property_string("compatible", "arm,cortex-a57").unwrap();
            if two_cells {
                w.property_u64("reg", id).unwrap();
            } else {
                w.property_u32("reg", id as u32).unwrap();
            }
            w.property_string("enable-method", "psci").unwrap();
            w.end_node(cpu).unwrap();
        }
        w.end_node(cpus).unwrap();

        if self.with_gic {
            let intc = w.begin_node("intc@8000000").unwrap();
            w.property_string("compatible", "arm,gic-v3").unwrap();
            w.property_u32("#address-cells", 2).unwrap();
            w.property_u32("#size-cells", 2).unwrap();
            w.property_null("ranges").unwrap();
            let mut reg = std::vec![0x0800_0000, 0x1_0000];
            for &(base, size) in &self.gicr {
                reg.extend([base, size]);
            }
            w.property_array_u64("reg", &reg).unwrap();
            match self.gicr_count {
                Some(n) => w.property_u32("#redistributor-regions", n).unwrap(),
                None if self.gicr.len() > 1 => w
                    .property_u32("#redistributor-regions", self.gicr.len() as u32)
                    .unwrap(),
                None => {}
            }
            if let Some(stride) = self.gicr_stride {
                w.property_u64("redistributor-stride", stride).unwrap();
            }
            if self.with_its {
                let its = w.begin_node("its@8080000").unwrap();
                w.property_string("compatible", "arm,gic-v3-its").unwrap();
                w.property_null("msi-controller").unwrap();
                w.property_array_u64("reg", &[0x0808_0000, 0x2_0000])
                    .unwrap();
                w.end_node(its).unwrap();
            }
            w.end_node(intc).unwrap();
        }

        let uart = w.begin_node("pl011@9000000").unwrap();
        w.property_string_list(
            "compatible",
            std::vec!["arm,pl011".into(), "arm,primecell".into()],
        )
        .unwrap();
        w.property_array_u64("reg", &[0x0900_0000, 0x1000]).unwrap();
        w.property_array_u32("interrupts", &[0, 1, 4]).unwrap();
        w.end_node(uart).unwrap();

        if self.with_timer {
            let t = w.begin_node("timer").unwrap();
            w.property_string("compatible", "arm,armv8-timer").unwrap();
            // QEMU virt: PPIs 13, 14, 11, 10, level-high (flags 0xf04).
            w.property_array_u32(
                "interrupts",
                &[1, 13, 0xf04, 1, 14, 0xf04, 1, 11, 0xf04, 1, 10, 0xf04],
            )
            .unwrap();
            w.end_node(t).unwrap();
        }

        if self.with_smmu {
            // As QEMU's virt with iommu=smmuv3 (hw/arm/virt.c): SPIs 74-77.
            let smmu = w.begin_node("smmuv3@9050000").unwrap();
            w.property_string("compatible", "arm,smmu-v3").unwrap();
            w.property_array_u64("reg", &[0x0905_0000, 0x2_0000])
                .unwrap();
            w.property_array_u32("interrupts", &[0, 74, 1, 0, 75, 1, 0, 76, 1, 0, 77, 1])
                .unwrap();
            w.property_string_list(
                "interrupt-names",
                std::vec![
                    "eventq".into(),
                    "priq".into(),
                    "cmdq-sync".into(),
                    "gerror".into()
                ],
            )
            .unwrap();
            w.property_u32("#iommu-cells", 1).unwrap();
            w.property_u32("phandle", 0x8006).unwrap();
            w.end_node(smmu).unwrap();
            let pcie = w.begin_node("pcie@10000000").unwrap();
            w.property_string("compatible", "pci-host-ecam-generic")
                .unwrap();
            w.property_array_u64("reg", &[0x40_1000_0000, 0x1000_0000])
                .unwrap();
            w.property_array_u32(
                "ranges",
                &[0x0200_0000, 0, 0x1000_0000, 0, 0x1000_0000, 0, 0x2eff_0000],
            )
            .unwrap();
            w.property_array_u32("iommu-map", &[0, 0x8006, 0, 0x1_0000])
                .unwrap();
            w.end_node(pcie).unwrap();
        }
        let psci = w.begin_node("psci").unwrap();
        w.property_string_list(
            "compatible",
            std::vec![
                "arm,psci-1.0".into(),
                "arm,psci-0.2".into(),
                "arm,psci".into()
            ],
        )
        .unwrap();
        w.property_string("method", self.psci_method).unwrap();
        w.end_node(psci).unwrap();

        w.end_node(root).unwrap();
        w.finish().unwrap()
    }
}

#[test]
fn discovers_qemu_virt_layout() {
    let dtb = Tree::default().build();
    let p = discover(&dtb).unwrap();
    assert_eq!(p.memory, Region::new(0x4000_0000, 0x8000_0000));
    assert_eq!(p.cpus.as_slice(), &[0, 1, 2, 3]);
    assert_eq!(p.gic.gicd, Region::new(0x0800_0000, 0x1_0000));
    assert_eq!(
        p.gic.redistributor_regions(),
        &[Region::new(0x080a_0000, 0xf6_0000)]
    );
    assert_eq!(p.gic.gicr_stride, None);
    assert_eq!(p.gic.its, Some(Region::new(0x0808_0000, 0x2_0000)));
    assert_eq!(p.uart, Region::new(0x0900_0000, 0x1000));
    assert_eq!(p.uart_irq, Some(33));
    assert_eq!(p.psci, Some(PsciConduit::Smc));
    assert_eq!(p.bootargs, "vigil.test=smp");
    assert_eq!(
        p.timer,
        TimerIrqs {
            phys_secure: 29,
            phys_nonsecure: 30,
            virt: 27,
            hyp: 26
        }
    );
}

#[test]
fn total_size_comes_from_header() {
    let dtb = Tree::default().build();
    assert_eq!(dtb_total_size(&dtb), Some(dtb.len()));
    assert_eq!(dtb_total_size(&[0u8; 16]), None);
    assert_eq!(dtb_total_size(&dtb[..4]), None);
}

#[test]
fn cpu_index_matches_affinity_only() {
    let dtb = Tree {
        cpus: std::vec![0x0, 0x1, 0x100, 0x101],
        ..Tree::default()
    }
    .build();
    let p = discover(&dtb).unwrap();
    // MPIDR_EL1 read on a CPU has bit 31 (RES1) set and maybe MT/U bits.
    assert_eq!(p.cpus.index_of(0x8000_0100), Some(2));
    assert_eq!(p.cpus.index_of(0x8000_0101), Some(3));
    assert_eq!(p.cpus.index_of(0x8000_0002), None);
}

#[test]
fn its_is_optional() {
    let dtb = Tree {
        with_its: false,
        ..Tree::default()
    }
    .build();
    assert_eq!(discover(&dtb).unwrap().gic.its, None);
}

#[test]
fn hvc_conduit() {
    let dtb = Tree {
        psci_method: "hvc",
        ..Tree::default()
    }
    .build();
    assert_eq!(discover(&dtb).unwrap().psci, Some(PsciConduit::Hvc));
}

#[test]
fn errors_are_specific() {
    assert_eq!(discover(&[0u8; 64]), Err(Error::BadDtb));
    let no_gic = Tree {
        with_gic: false,
        ..Tree::default()
    };
    assert_eq!(discover(&no_gic.build()), Err(Error::NoGicV3));
    let no_mem = Tree {
        with_memory: false,
        ..Tree::default()
    };
    assert_eq!(discover(&no_mem.build()), Err(Error::NoMemory));
    let no_cpus = Tree {
        cpus: std::vec![],
        ..Tree::default()
    };
    assert_eq!(discover(&no_cpus.build()), Err(Error::NoCpus));
    let too_many = Tree {
        cpus: (0..MAX_CPUS as u64 + 1).map(qemu_mpidr).collect(),
        ..Tree::default()
    };
    assert_eq!(discover(&too_many.build()), Err(Error::TooManyCpus));
    let twice = Tree {
        cpus: std::vec![0, 1, 0x100, 0x1],
        ..Tree::default()
    };
    assert_eq!(discover(&twice.build()), Err(Error::DuplicateCpu(1)));
    let no_timer = Tree {
        with_timer: false,
        ..Tree::default()
    };
    assert_eq!(discover(&no_timer.build()), Err(Error::NoTimer));
    let bad_psci = Tree {
        psci_method: "carrier-pigeon",
        ..Tree::default()
    };
    assert_eq!(discover(&bad_psci.build()), Err(Error::BadPsciMethod));
}

#[test]
fn error_messages_name_the_problem() {
    let msg = std::format!("{}", Error::MissingReg("GIC ITS"));
    assert_eq!(msg, "GIC ITS node has no usable reg property");
}

#[test]
fn bootargs_lookup() {
    let a = BootArgs::new(
        "console=ttyAMA0 vigil.test=smp vigil.log=debug vigil.quiet vigil.test=abort",
    );
    assert_eq!(a.get("vigil.test"), Some("abort"), "later words override");
    assert_eq!(a.get("vigil.log"), Some("debug"));
    assert_eq!(a.get("vigil.quiet"), Some(""));
    assert_eq!(a.get("vigil.missing"), None);
    assert_eq!(a.get("console"), Some("ttyAMA0"));
    assert_eq!(BootArgs::new("").get("vigil.test"), None);
}

#[test]
fn bootargs_unknown_options_are_reported() {
    let a = BootArgs::new("console=ttyAMA0 vigil.tset=smp vigil.log=info vigil.bogus");
    let unknown: Vec<&str> = a.unknown("vigil.", &["vigil.test", "vigil.log"]).collect();
    assert_eq!(unknown, std::vec!["vigil.tset=smp", "vigil.bogus"]);
}

/// A host device tree with VM descriptions under /chosen.
fn tree_with_domains(extra: impl Fn(&mut FdtWriter)) -> Vec<u8> {
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    let chosen = w.begin_node("chosen").unwrap();
    extra(&mut w);
    w.end_node(chosen).unwrap();
    w.end_node(root).unwrap();
    w.finish().unwrap()
}

fn domain(w: &mut FdtWriter, name: &str, cpus: u32, pcpus: Option<&[u32]>, kernel: bool) {
    let d = w.begin_node(name).unwrap();
    w.property_string("compatible", "vigil,domain").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    w.property_array_u32("memory", &[0, 0x20000]).unwrap();
    w.property_u32("cpus", cpus).unwrap();
    if let Some(p) = pcpus {
        w.property_array_u32("vigil,pcpus", p).unwrap();
    }
    w.property_null("vigil,test-device").unwrap();
    if kernel {
        let m = w.begin_node("module@48000000").unwrap();
        w.property_string_list(
            "compatible",
            std::vec!["multiboot,kernel".into(), "multiboot,module".into()],
        )
        .unwrap();
        w.property_array_u64("reg", &[0x4800_0000, 0x10_0000])
            .unwrap();
        w.property_string("bootargs", "vigil.guest=psci").unwrap();
        w.end_node(m).unwrap();
        let r = w.begin_node("module@49000000").unwrap();
        w.property_string_list(
            "compatible",
            std::vec!["multiboot,ramdisk".into(), "multiboot,module".into()],
        )
        .unwrap();
        w.property_array_u64("reg", &[0x4900_0000, 0x2000]).unwrap();
        w.end_node(r).unwrap();
    }
    w.end_node(d).unwrap();
}

#[test]
fn domains_are_read_from_chosen() {
    let dtb = tree_with_domains(|w| {
        domain(w, "vm0", 2, None, true);
        domain(w, "guest-b", 1, Some(&[3]), true);
    });
    let d = domains(&dtb).unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].name, "vm0");
    assert_eq!(d[0].memory, 128 << 20);
    assert_eq!(d[0].cpus, 2);
    assert_eq!(&d[0].pcpus[..2], &[0, 1]);
    assert!(d[0].test_device);
    assert!(!d[0].identity_map);
    assert_eq!(d[0].kernel, Region::new(0x4800_0000, 0x10_0000));
    assert_eq!(d[0].ramdisk, Some(Region::new(0x4900_0000, 0x2000)));
    assert_eq!(d[0].bootargs, "vigil.guest=psci");
    assert_eq!(d[1].name, "guest-b");
    assert_eq!(d[1].pcpus[0], 3);
    assert_eq!(d[0].virtio_blk, None);
}

fn with_backend(w: &mut FdtWriter, name: &str, backend: &str) {
    let d = w.begin_node(name).unwrap();
    w.property_string("compatible", "vigil,domain").unwrap();
    w.property_array_u32("memory", &[0, 0x20000]).unwrap();
    w.property_u32("cpus", 1).unwrap();
    w.property_string("vigil,virtio-blk", backend).unwrap();
    let m = w.begin_node("module@48000000").unwrap();
    w.property_string("compatible", "multiboot,kernel").unwrap();
    w.property_array_u64("reg", &[0x4800_0000, 0x10_0000])
        .unwrap();
    w.end_node(m).unwrap();
    w.end_node(d).unwrap();
}

#[test]
fn virtio_blk_names_its_service_vm() {
    let ok = tree_with_domains(|w| {
        with_backend(w, "client", "svc");
        domain(w, "svc", 1, None, true);
    });
    let d = domains(&ok).unwrap();
    assert_eq!(d[0].virtio_blk, Some("svc"));
    assert_eq!(d[1].virtio_blk, None);
    let missing = tree_with_domains(|w| with_backend(w, "client", "nobody"));
    assert_eq!(domains(&missing), Err(DomainError::BadBackend("client")));
    let itself = tree_with_domains(|w| with_backend(w, "client", "client"));
    assert_eq!(domains(&itself), Err(DomainError::BadBackend("client")));
}

#[test]
fn domain_errors_are_specific() {
    let no_kernel = tree_with_domains(|w| domain(w, "vm0", 1, None, false));
    assert_eq!(domains(&no_kernel), Err(DomainError::NoKernel("vm0")));
    let bad_cpus = tree_with_domains(|w| domain(w, "vm0", 0, None, true));
    assert_eq!(domains(&bad_cpus), Err(DomainError::BadCpus("vm0")));
    let bad_pcpus = tree_with_domains(|w| domain(w, "vm0", 2, Some(&[1]), true));
    assert_eq!(domains(&bad_pcpus), Err(DomainError::BadPcpus("vm0")));
    let too_many = tree_with_domains(|w| {
        for i in 0..9 {
            domain(w, &std::format!("vm{i}"), 1, None, true);
        }
    });
    assert_eq!(domains(&too_many), Err(DomainError::TooMany));
    assert_eq!(
        std::format!("{}", DomainError::NoKernel("web")),
        "VM web: no multiboot,kernel module"
    );
    assert!(domains(&Tree::default().build()).unwrap().is_empty());
    // Passthrough without an identity map parses: whether it can run
    // (it needs the SMMU) is decided when the VM is built.
    let no_identity = tree_with_domains(|w| {
        let d = w.begin_node("pt").unwrap();
        w.property_string("compatible", "vigil,domain").unwrap();
        w.property_array_u32("memory", &[0, 0x20000]).unwrap();
        w.property_u32("cpus", 1).unwrap();
        w.property_null("vigil,pci-passthrough").unwrap();
        w.end_node(d).unwrap();
    });
    assert_eq!(domains(&no_identity), Err(DomainError::NoKernel("pt")));
}

#[test]
fn smmu_and_the_bridge_iommu_map_are_found() {
    let dtb = Tree {
        with_smmu: true,
        ..Tree::default()
    }
    .build();
    let p = discover(&dtb).unwrap();
    assert_eq!(
        p.smmu,
        Some(SmmuInfo {
            regs: Region::new(0x0905_0000, 0x2_0000),
            eventq_irq: Some(74 + 32),
            gerror_irq: Some(77 + 32),
        })
    );
    assert_eq!(
        p.pcie.unwrap().iommu_map,
        Some(pcie::IommuMap {
            rid: 0,
            sid: 0,
            len: 0x1_0000
        })
    );
    assert_eq!(discover(&Tree::default().build()).unwrap().smmu, None);
}

/// QEMU virt's MPIDR for CPU `i` with GICv3: clusters of 16 (Aff1 = i / 16,
/// Aff0 = i % 16; hw/arm/virt.c, virt_cpu_mp_affinity).
fn qemu_mpidr(i: u64) -> u64 {
    ((i / 16) << 8) | (i % 16)
}

/// QEMU virt with `-smp 256`: the tree it writes (seen with dumpdtb):
/// 256 CPUs in 16 clusters and two redistributor regions, the low one
/// (123 redistributors) and 64 MiB at 256 GiB.
#[test]
fn many_cpus_in_clusters_and_two_redistributor_regions() {
    let dtb = Tree {
        cpus: (0..256).map(qemu_mpidr).collect(),
        gicr: std::vec![(0x080a_0000, 0xf6_0000), (0x40_0000_0000, 0x400_0000)],
        ..Tree::default()
    }
    .build();
    let p = discover(&dtb).unwrap();
    assert_eq!(p.cpus.len(), 256);
    assert_eq!(p.cpus.as_slice()[16], 0x100);
    assert_eq!(p.cpus.as_slice()[255], 0xf0f);
    assert_eq!(p.cpus.index_of(0x8000_0f0f), Some(255));
    assert_eq!(p.cpus.index_of(0x8000_0010), None, "Aff0 stops at 15");
    assert_eq!(
        p.gic.redistributor_regions(),
        &[
            Region::new(0x080a_0000, 0xf6_0000),
            Region::new(0x40_0000_0000, 0x400_0000)
        ]
    );
    // The most there may be.
    let dtb = Tree {
        cpus: (0..MAX_CPUS as u64).map(qemu_mpidr).collect(),
        ..Tree::default()
    }
    .build();
    assert_eq!(discover(&dtb).unwrap().cpus.len(), MAX_CPUS);
}

#[test]
fn aff2_and_aff3_cpus_take_two_reg_cells() {
    let dtb = Tree {
        cpus: std::vec![0x0, 0x01_0000, 0x01_0000_0000, 0x02_0003_0405],
        ..Tree::default()
    }
    .build();
    let p = discover(&dtb).unwrap();
    assert_eq!(
        p.cpus.as_slice(),
        &[0x0, 0x01_0000, 0x01_0000_0000, 0x02_0003_0405]
    );
    assert_eq!(p.cpus.index_of(0x8200_0000_0000 | 0x02_0003_0405), Some(3));
    assert_eq!(p.cpus.index_of(0x01_0000_0000), Some(2));
}

#[test]
fn redistributor_region_count_and_stride_are_checked() {
    // #redistributor-regions counts reg entries after the distributor's;
    // one only: the second region is not taken.
    let one = Tree {
        gicr: std::vec![(0x080a_0000, 0xf6_0000), (0x40_0000_0000, 0x400_0000)],
        gicr_count: Some(1),
        ..Tree::default()
    };
    assert_eq!(
        discover(&one.build()).unwrap().gic.redistributor_regions(),
        &[Region::new(0x080a_0000, 0xf6_0000)]
    );
    let more_than_reg = Tree {
        gicr_count: Some(3),
        gicr: std::vec![(0x080a_0000, 0xf6_0000), (0x40_0000_0000, 0x400_0000)],
        ..Tree::default()
    };
    assert_eq!(
        discover(&more_than_reg.build()),
        Err(Error::MissingReg("GIC redistributor"))
    );
    for n in [0, MAX_GICR_REGIONS as u32 + 1] {
        let t = Tree {
            gicr_count: Some(n),
            ..Tree::default()
        };
        assert_eq!(discover(&t.build()), Err(Error::TooManyGicrRegions), "{n}");
    }
    let many: Vec<(u64, u64)> = (0..MAX_GICR_REGIONS as u64)
        .map(|i| (0x1000_0000 * (i + 1), 0x2_0000))
        .collect();
    let t = Tree {
        gicr: many.clone(),
        ..Tree::default()
    };
    let regions: Vec<Region> = many.iter().map(|&(b, s)| Region::new(b, s)).collect();
    assert_eq!(
        discover(&t.build()).unwrap().gic.redistributor_regions(),
        &regions[..]
    );

    let strided = Tree {
        gicr_stride: Some(0x4_0000),
        ..Tree::default()
    };
    assert_eq!(
        discover(&strided.build()).unwrap().gic.gicr_stride,
        Some(0x4_0000)
    );
    for bad in [0, 0x1000] {
        let t = Tree {
            gicr_stride: Some(bad),
            ..Tree::default()
        };
        assert_eq!(discover(&t.build()), Err(Error::BadGicrStride), "{bad:#x}");
    }
    assert!(GicInfo::new(Region::new(0, 0), &regions, None).is_ok());
    assert_eq!(
        GicInfo::new(
            Region::new(0, 0),
            &[Region::new(0, 0); MAX_GICR_REGIONS + 1],
            None
        ),
        Err(Error::TooManyGicrRegions)
    );
}

#[test]
fn vcpu_pinning_reaches_every_physical_cpu() {
    // vCPUs (at most MAX_VCPUS) may be pinned to any physical CPU below
    // MAX_CPUS, past the 255 a byte would hold.
    let last = MAX_CPUS as u32 - 1;
    let dtb = tree_with_domains(|w| domain(w, "big", 2, Some(&[300, last]), true));
    let d = domains(&dtb).unwrap();
    assert_eq!(&d[0].pcpus[..2], &[300, last as u16]);
    let dtb = tree_with_domains(|w| domain(w, "big", 1, Some(&[last + 1]), true));
    assert_eq!(domains(&dtb), Err(DomainError::BadPcpus("big")));
    let n = MAX_VCPUS as u32;
    let pcpus: Vec<u32> = (0..n).collect();
    let dtb = tree_with_domains(|w| domain(w, "full", n, Some(&pcpus), true));
    assert_eq!(domains(&dtb).unwrap()[0].cpus, MAX_VCPUS);
    let dtb = tree_with_domains(|w| domain(w, "over", n + 1, None, true));
    assert_eq!(domains(&dtb), Err(DomainError::BadCpus("over")));
}
