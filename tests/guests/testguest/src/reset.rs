//! `reset`: PSCI SYSTEM_RESET restarts the VM. The first boot leaves a
//! marker in RAM outside the image and enables the virtual distributor,
//! then asks for a reset; the second boot finds the marker (same RAM), a
//! distributor back at its reset state, and passes.

use vigil_guest::{fail, gic, println, psci, report, BootInfo};

const NAME: &str = "reset";
const MAGIC: u64 = 0x5245_5345_5421_2121;
/// GICD_CTLR: EnableGrp0 | EnableGrp1.
const GICD_CTLR: u64 = 0x0800_0000;

pub fn run(boot: &'static BootInfo) -> ! {
    let marker = boot.ram.start + 48 * 1024 * 1024;
    if marker + 8 > boot.ram.end {
        fail!(NAME, "needs at least 49 MiB of RAM");
    }
    let p = marker as *mut u64;
    // SAFETY: `marker` is guest RAM above the image and its stacks, used by
    // nothing else.
    let seen = unsafe { core::ptr::read_volatile(p) };
    if seen != MAGIC {
        gic::init_distributor();
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(p, MAGIC) };
        // SAFETY: GICD_CTLR is the distributor's first register.
        let ctlr = unsafe { core::ptr::read_volatile(GICD_CTLR as *const u32) };
        println!("reset: first boot: GICD_CTLR {ctlr:#x}, asking for SYSTEM_RESET");
        psci::system_reset();
        fail!(NAME, "SYSTEM_RESET returned");
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(p, 0) };
    // SAFETY: GICD_CTLR is the distributor's first register.
    let ctlr = unsafe { core::ptr::read_volatile(GICD_CTLR as *const u32) };
    if ctlr & 0b11 != 0 {
        fail!(
            NAME,
            "after the reset GICD_CTLR is {ctlr:#x}: groups still enabled"
        );
    }
    println!("reset: second boot after SYSTEM_RESET: RAM kept, GICD_CTLR {ctlr:#x} (reset)");
    report::pass(NAME)
}
