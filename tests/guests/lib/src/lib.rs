//! A small bare-metal library for EL1 test guests of Vigil.
//!
//! A guest binary is `#![no_std] #![no_main]`, links with
//! `linker/guest.ld` and names its main function with [`entry!`]:
//!
//! ```ignore
//! vigil_guest::entry!(main);
//! fn main(boot: &'static vigil_guest::BootInfo) -> ! {
//!     vigil_guest::println!("hello");          // "guest: hello"
//!     vigil_guest::report::pass("hello")       // "guest: hello: PASS", exit 0
//! }
//! ```
//!
//! What the guest relies on is Vigil's VM ABI (DESIGN.md, "What every VM
//! sees"): entry in EL1h with the MMU off and x0 = the device tree, a PL011
//! at 0x0900_0000, PSCI and Vigil hypercalls over HVC #0. The same image
//! also boots on bare QEMU `virt` at EL1 (no EL2), where QEMU implements
//! PSCI, leaves the device tree at the base of RAM and UNDEFs other HVCs.
//!
//! The guest never turns the MMU on: all its data accesses are Device
//! nGnRnE, so they must be aligned (the target has `+strict-align`) and the
//! atomics are exclusives on Device memory, which QEMU's TCG supports.

#![no_std]

pub mod boot;
pub mod console;
pub mod cpu;
pub mod exceptions;
pub mod gic;
pub mod its;
pub mod mmio;
pub mod pci;
pub mod psci;
pub mod report;
pub mod smccc;

use core::ops::Range;

pub use boot::{secondary_entry_address, set_secondary_main, MAX_CPUS};
pub use cpu::SpinBarrier;
pub use exceptions::{expect_exception, Exception};
pub use fdt;

/// What the boot vCPU learnt from the device tree and the platform.
pub struct BootInfo {
    /// IPA of the flattened device tree.
    pub dtb: u64,
    /// Whether x0 pointed at it (false: found at the base of RAM, as bare
    /// QEMU leaves it for ELF kernels).
    pub dtb_from_x0: bool,
    /// The parsed device tree.
    pub fdt: fdt::Fdt<'static>,
    /// /chosen/bootargs ("" if absent).
    pub bootargs: &'static str,
    /// The /memory region holding this image.
    pub ram: Range<u64>,
    /// Whether Vigil's hypercalls answer (VIGIL_NULL returns 0).
    pub vigil: bool,
    cpus: [u64; MAX_CPUS],
    ncpus: usize,
}

impl BootInfo {
    /// The MPIDR affinity (`reg`) of each /cpus/cpu@N node, in tree order
    /// (at most [`MAX_CPUS`]).
    pub fn cpus(&self) -> &[u64] {
        &self.cpus[..self.ncpus]
    }

    /// The value of the first `key=value` word of the bootargs.
    pub fn bootarg(&self, key: &str) -> Option<&'static str> {
        self.bootargs.split_ascii_whitespace().find_map(|word| {
            word.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
        })
    }

    /// The scenario, from `vigil.guest=<name>` in the bootargs.
    pub fn scenario(&self) -> Option<&'static str> {
        self.bootarg("vigil.guest")
    }

    /// The first `reg` range of the first node compatible with `compatible`.
    pub fn find_compatible(&self, compatible: &str) -> Option<Range<u64>> {
        let node = self.fdt.find_compatible(&[compatible])?;
        let region = node.reg()?.next()?;
        let start = region.starting_address as u64;
        Some(start..start + region.size.unwrap_or(0) as u64)
    }
}

static BOOT_INFO: spin::Once<BootInfo> = spin::Once::new();

/// The boot information, once vCPU 0 has parsed the device tree (before
/// the guest's main runs).
pub fn boot_info() -> Option<&'static BootInfo> {
    BOOT_INFO.get()
}

fn init_boot_info(dtb: u64, dtb_from_x0: bool) -> &'static BootInfo {
    // SAFETY: `dtb` holds a device tree header (checked by the caller); the
    // tree stays in place, unmodified, for the guest's lifetime.
    let fdt = match unsafe { fdt::Fdt::from_ptr(dtb as *const u8) } {
        Ok(fdt) => fdt,
        Err(e) => {
            println!("bad device tree at {dtb:#x}: {e:?}");
            exit(1)
        }
    };
    // `Fdt::find_node` gives up on trees with FDT_NOP tokens (QEMU leaves
    // some when it edits a `-dtb`); the flat walk of `all_nodes` does not.
    // These names only occur at the root.
    let top = |name: &str| fdt.all_nodes().find(|n| n.name == name);
    let bootargs = top("chosen")
        .and_then(|chosen| chosen.property("bootargs"))
        .map(|p| p.value.split(|&b| b == 0).next().unwrap_or(&[]))
        .and_then(|bytes| core::str::from_utf8(bytes).ok())
        .unwrap_or("");
    let image = boot::image_range();
    let mut ram = None;
    let memory_nodes = fdt
        .all_nodes()
        .filter(|n| n.name.split('@').next() == Some("memory"));
    for regions in memory_nodes.filter_map(|m| m.reg()) {
        for r in regions {
            let start = r.starting_address as u64;
            let range = start..start + r.size.unwrap_or(0) as u64;
            if ram.is_none() || range.contains(&image.start) {
                ram = Some(range);
            }
        }
    }
    let Some(ram) = ram else {
        println!("no /memory node in the device tree at {dtb:#x}");
        exit(1)
    };
    let mut cpus = [0; MAX_CPUS];
    let mut ncpus = 0;
    if let Some(node) = top("cpus") {
        let cells = node.cell_sizes().address_cells;
        for cpu in node.children() {
            if cpu.name.split('@').next() != Some("cpu") || ncpus == MAX_CPUS {
                continue;
            }
            let Some(reg) = cpu.property("reg") else {
                continue;
            };
            let id = match (cells, reg.value) {
                (1, &[a, b, c, d, ..]) => u64::from(u32::from_be_bytes([a, b, c, d])),
                (2, &[a, b, c, d, e, f, g, h, ..]) => u64::from_be_bytes([a, b, c, d, e, f, g, h]),
                _ => continue,
            };
            cpus[ncpus] = id;
            ncpus += 1;
        }
    }
    BOOT_INFO.call_once(|| BootInfo {
        dtb,
        dtb_from_x0,
        fdt,
        bootargs,
        ram,
        vigil: smccc::vigil_present(),
        cpus,
        ncpus,
    })
}

/// Sets the exit status (VIGIL_EXIT_STATUS) and powers the VM off
/// (PSCI SYSTEM_OFF). On bare QEMU the status is lost: SYSTEM_OFF ends QEMU
/// with status 0.
pub fn exit(status: u64) -> ! {
    let _ = smccc::vigil_exit_status(status);
    let r = psci::system_off();
    println!("SYSTEM_OFF returned {r}");
    cpu::park()
}

/// Names the guest's main function, run on vCPU 0 after boot:
/// `fn main(boot: &'static BootInfo) -> !`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        pub fn __vigil_guest_main(boot: &'static $crate::BootInfo) -> ! {
            let main: fn(&'static $crate::BootInfo) -> ! = $main;
            main(boot)
        }
    };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::sync::atomic::{AtomicBool, Ordering};
    static PANICKING: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
    if PANICKING[cpu::index() % MAX_CPUS].swap(true, Ordering::Relaxed) {
        exit(1);
    }
    match info.location() {
        Some(l) => println!("PANIC: {} at {}:{}", info.message(), l.file(), l.line()),
        None => println!("PANIC: {}", info.message()),
    }
    exit(1)
}
