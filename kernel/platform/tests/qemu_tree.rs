//! QEMU's own `virt` tree (dumped with `-machine dumpdtb`, decompiled,
//! with a VM description appended by scripts/qemu) compiled back with dtc:
//! and the tree QEMU then hands Vigil (`qemu-virt-booted.dtb`: the same
//! tree passed with `-dtb` and dumped back with `dumpdtb`; QEMU's
//! `arm_load_dtb` NOPs out /memory and appends its own). In the booted tree
//! `find_node` of `fdt` 0.1.5 and of `flat_device_tree` 3.1.1 finds only
//! the root and /memory (62 of 64 nodes missed, and `fdt`'s `cpus()`
//! panics), while walking `children()` sees all 64: that is why the crate
//! walks paths itself.

use std::process::Command;

fn compile(dts: &str) -> Vec<u8> {
    let out = Command::new("dtc")
        .args(["-q", "-I", "dts", "-O", "dtb", "-o", "-"])
        .arg(dts)
        .output()
        .expect("dtc not found: install device-tree-compiler (scripts/setup)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn discovers_the_recompiled_qemu_tree() {
    check_qemu_tree(&compile(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/qemu-virt-with-vm.dts"
    )));
}

#[test]
fn discovers_the_tree_qemu_boots_with() {
    check_qemu_tree(include_bytes!("data/qemu-virt-booted.dtb"));
}

fn check_qemu_tree(dtb: &[u8]) {
    let p = vigil_platform::discover(dtb).unwrap();
    assert_eq!(p.cpus.as_slice(), &[0, 1, 2, 3]);
    assert_eq!(p.memory.base, 0x4000_0000);
    assert_eq!(p.memory.size, 2 << 30);
    assert_eq!(p.uart.base, 0x0900_0000);
    assert_eq!(p.uart_irq, Some(33));
    assert_eq!(p.gic.its.map(|r| r.base), Some(0x0808_0000));
    assert_eq!(p.timer.hyp, 26);
    let pcie = p.pcie.expect("QEMU virt has a PCIe host bridge");
    assert_eq!(
        pcie.ecam,
        vigil_platform::Region::new(0x40_1000_0000, 0x1000_0000)
    );
    assert_eq!(
        pcie.windows(),
        &[
            vigil_platform::Region::new(0x3eff_0000, 0x1_0000),
            vigil_platform::Region::new(0x1000_0000, 0x2eff_0000),
            vigil_platform::Region::new(0x80_0000_0000, 0x80_0000_0000),
        ]
    );
    assert_eq!(pcie.bus_range, (0, 0xff));
    assert_eq!(
        pcie.mem32,
        Some(vigil_platform::pcie::Window {
            cpu: 0x1000_0000,
            pci: 0x1000_0000,
            size: 0x2eff_0000
        })
    );
    assert_eq!(pcie.config_space(0, 0, 0), Some(0x40_1000_0000));
    assert_eq!(pcie.config_space(0, 0x1f, 0), Some(0x40_100f_8000));
    assert_eq!(pcie.config_space(2, 3, 4), Some(0x40_1021_c000));
    assert_eq!(pcie.config_space(0, 32, 0), None);
    assert_eq!(pcie.config_space(0, 0, 8), None);
    assert_eq!(
        pcie.interrupt_map.len(),
        16 * 10 * 4,
        "16 entries of 10 cells"
    );
    assert_eq!(pcie.interrupt_map_mask.len(), 16);
    let vms = vigil_platform::domains(dtb).unwrap();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].name, "hello");
    assert_eq!(vms[0].memory, 64 << 20);
    assert_eq!(vms[0].kernel.base, 0x8000_0000);
    assert_eq!(vms[0].bootargs, "vigil.guest=hello");
}
