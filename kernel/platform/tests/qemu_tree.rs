//! QEMU's own `virt` tree (dumped with `-machine dumpdtb`, decompiled,
//! with a VM description appended by scripts/qemu) compiled back with dtc:
//! and the tree QEMU then hands Vigil when that one is passed with `-dtb`:
//! QEMU's `arm_load_dtb` NOPs out /memory where it was and adds its own
//! before the root's other children (`booted` below makes that edit; a
//! `dumpdtb` of a real boot showed the node near the root's start and 54
//! FDT_NOP tokens where it had been). In the booted tree
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
    let dtb = booted(&compile(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/qemu-virt-with-vm.dts"
    )));
    check_qemu_tree(&dtb);
}

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// `dtb` as QEMU boots it: root's `memory@40000000` node overwritten with
/// FDT_NOP tokens (libfdt's `fdt_nop_node`) and a copy of it added as the
/// root's first child (libfdt's `fdt_add_subnode` inserts after the
/// parent's properties), then its properties.
fn booted(dtb: &[u8]) -> Vec<u8> {
    let (off_struct, off_strings) = (be32(dtb, 8) as usize, be32(dtb, 12) as usize);
    let size_struct = be32(dtb, 36) as usize;
    // The token offsets of the memory node and of root's first child.
    let (mut at, mut depth) = (off_struct, 0);
    let (mut mem, mut mem_end, mut first) = (0, 0, 0);
    while at < off_struct + size_struct {
        let token = be32(dtb, at);
        let start = at;
        at += 4;
        match token {
            FDT_BEGIN_NODE => {
                let name_len = dtb[at..].iter().position(|&c| c == 0).unwrap();
                if depth == 1 && first == 0 {
                    first = start;
                }
                if depth == 1 && &dtb[at..at + name_len] == b"memory@40000000" {
                    mem = start;
                }
                at = (at + name_len + 1).next_multiple_of(4);
                depth += 1;
            }
            FDT_END_NODE => {
                depth -= 1;
                if depth == 1 && mem != 0 && mem_end == 0 {
                    mem_end = at;
                }
            }
            FDT_PROP => at = (at + 8 + be32(dtb, at) as usize).next_multiple_of(4),
            FDT_NOP => {}
            _ => break,
        }
    }
    assert!(mem != 0 && mem_end != 0, "no /memory@40000000");
    let node = &dtb[mem..mem_end];
    let mut out = dtb[..first].to_vec();
    out.extend_from_slice(node);
    out.extend_from_slice(&dtb[first..off_strings]);
    let shift = node.len();
    for w in out[mem + shift..mem_end + shift].chunks_exact_mut(4) {
        w.copy_from_slice(&FDT_NOP.to_be_bytes());
    }
    let grown = node.len() as u32;
    out.extend_from_slice(&dtb[off_strings..]);
    for (field, by) in [(4, grown), (12, grown), (36, grown)] {
        let v = be32(&out, field) + by;
        out[field..field + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
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
