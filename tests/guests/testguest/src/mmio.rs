//! `mmio`: loads and stores of every width, signed and unsigned, and
//! XZR/WZR, against Vigil's test device ("vigil,test-device").
//!
//! Every access is one inline-asm instruction with a base register and no
//! writeback, so it traps with a valid syndrome and the exact instruction
//! is known (a Rust volatile read may not be an `ldrs*`).
//!
//! `mmio-ram` runs the same checks on a RAM buffer laid out like the device
//! (scratch, then the constant at 0x100) to check the test itself on bare
//! QEMU; the access counter and read-only checks need the real device.

use core::arch::asm;

use vigil_guest::{ensure, println, report, BootInfo};

const NAME: &str = "mmio";
const COMPATIBLE: &str = "vigil,test-device";

const SCRATCH_SIZE: u64 = 0x100;
const CONSTANT: u64 = 0x100;
const CONSTANT_VALUE: u64 = 0x8081_8283_8485_8687;
const COUNT: u64 = 0x200;
const COUNT_RESET: u64 = 0x208;

/// One load or store instruction, by mnemonic.
macro_rules! load {
    ($name:ident, $insn:literal) => {
        fn $name(addr: u64) -> u64 {
            let v: u64;
            // SAFETY: `addr` is in the test device (or the RAM stand-in)
            // and aligned for the access; the load has no other effect.
            unsafe { asm!($insn, v = out(reg) v, a = in(reg) addr, options(nostack, preserves_flags)) };
            v
        }
    };
}

macro_rules! store {
    ($name:ident, $insn:literal) => {
        fn $name(addr: u64, v: u64) {
            // SAFETY: `addr` is in the test device (or the RAM stand-in)
            // and aligned for the access.
            unsafe { asm!($insn, v = in(reg) v, a = in(reg) addr, options(nostack, preserves_flags)) };
        }
    };
}

macro_rules! store_zr {
    ($name:ident, $insn:literal) => {
        fn $name(addr: u64) {
            // SAFETY: `addr` is in the test device (or the RAM stand-in)
            // and aligned for the access.
            unsafe { asm!($insn, a = in(reg) addr, options(nostack, preserves_flags)) };
        }
    };
}

macro_rules! load_zr {
    ($name:ident, $insn:literal) => {
        fn $name(addr: u64) {
            // SAFETY: `addr` is in the test device (or the RAM stand-in)
            // and aligned for the access; the result is discarded.
            unsafe { asm!($insn, a = in(reg) addr, options(nostack, preserves_flags)) };
        }
    };
}

load!(ldrb, "ldrb {v:w}, [{a}]");
load!(ldrh, "ldrh {v:w}, [{a}]");
load!(ldr_w, "ldr {v:w}, [{a}]");
load!(ldr_x, "ldr {v}, [{a}]");
load!(ldrsb_x, "ldrsb {v}, [{a}]");
load!(ldrsb_w, "ldrsb {v:w}, [{a}]");
load!(ldrsh_x, "ldrsh {v}, [{a}]");
load!(ldrsh_w, "ldrsh {v:w}, [{a}]");
load!(ldrsw, "ldrsw {v}, [{a}]");
store!(strb, "strb {v:w}, [{a}]");
store!(strh, "strh {v:w}, [{a}]");
store!(str_w, "str {v:w}, [{a}]");
store!(str_x, "str {v}, [{a}]");
store_zr!(str_xzr, "str xzr, [{a}]");
store_zr!(str_wzr, "str wzr, [{a}]");
store_zr!(strh_wzr, "strh wzr, [{a}]");
store_zr!(strb_wzr, "strb wzr, [{a}]");
load_zr!(ldr_xzr, "ldr xzr, [{a}]");
load_zr!(ldr_wzr, "ldr wzr, [{a}]");

type Load = fn(u64) -> u64;
type Store = fn(u64, u64);
type StoreZr = fn(u64);

/// Offsets in the scratch area a `size`-byte access is checked at:
/// neighbours at the start, both ends, and odd multiples of the size.
fn offsets(size: u64) -> [u64; 6] {
    [0, size, 0x38, 0x80 + size, 0xc0, SCRATCH_SIZE - size]
}

pub fn run(boot: &'static BootInfo) -> ! {
    let Some(dev) = boot.find_compatible(COMPATIBLE) else {
        vigil_guest::fail!(NAME, "no '{COMPATIBLE}' node in the device tree");
    };
    ensure!(
        NAME,
        dev.end - dev.start >= 0x1000,
        "test device at {:#x} is only {:#x} bytes",
        dev.start,
        dev.end - dev.start
    );
    println!("mmio: test device at {:#x}", dev.start);
    checks(dev.start, true)
}

/// The same checks on a RAM buffer above the image (for bare QEMU).
pub fn run_on_ram(boot: &'static BootInfo) -> ! {
    let base = (vigil_guest::boot::image_range().end + 0xfff) & !0xfff;
    ensure!(
        NAME,
        base + 0x1000 <= boot.ram.end,
        "no RAM above the image"
    );
    str_x(base + CONSTANT, CONSTANT_VALUE);
    println!("mmio: RAM stand-in at {base:#x} (no access counter, constant writable)");
    checks(base, false)
}

fn checks(base: u64, device: bool) -> ! {
    // Widths 1/2/4/8: distinct values at several offsets, stored first and
    // read back after, so one store landing on another's bytes shows.
    let widths: [(u64, Store, Load, &str); 4] = [
        (1, strb, ldrb, "strb/ldrb"),
        (2, strh, ldrh, "strh/ldrh"),
        (4, str_w, ldr_w, "str w/ldr w"),
        (8, str_x, ldr_x, "str x/ldr x"),
    ];
    for (size, store, load, what) in widths {
        let mask = if size == 8 {
            u64::MAX
        } else {
            (1 << (size * 8)) - 1
        };
        let value =
            |i: u64| (0xf1e2_d3c4_b5a6_9788u64.rotate_left((i * 8 + size) as u32) ^ (i + 1)) & mask;
        for off in (0..SCRATCH_SIZE).step_by(8) {
            str_x(base + off, 0);
        }
        for (i, &off) in offsets(size).iter().enumerate() {
            store(base + off, value(i as u64));
        }
        for (i, &addr) in offsets(size).iter().enumerate() {
            let got = load(base + addr);
            ensure!(
                NAME,
                got == value(i as u64),
                "{what} at {addr:#x}: read {got:#x}, wrote {:#x}",
                value(i as u64)
            );
        }
    }
    println!(
        "mmio: scratch: widths 1/2/4/8 read back at {} offsets each",
        offsets(1).len()
    );

    // Little-endian lanes and partial writes merging with the rest.
    str_x(base + 0x40, 0x0807_0605_0403_0201);
    for i in 0..8 {
        let got = ldrb(base + 0x40 + i);
        ensure!(
            NAME,
            got == i + 1,
            "ldrb at {:#x}: {got:#x}, expected {:#x} (little-endian)",
            0x40 + i,
            i + 1
        );
    }
    let got = ldrh(base + 0x42);
    ensure!(
        NAME,
        got == 0x0403,
        "ldrh at 0x42: {got:#x}, expected 0x403"
    );
    let got = ldr_w(base + 0x44);
    ensure!(
        NAME,
        got == 0x0807_0605,
        "ldr w at 0x44: {got:#x}, expected 0x8070605"
    );
    strb(base + 0x43, 0xaa);
    strh(base + 0x44, 0xbbcc);
    let got = ldr_x(base + 0x40);
    ensure!(
        NAME,
        got == 0x0807_bbcc_aa03_0201,
        "ldr x after strb/strh into it: {got:#x}, expected 0x807bbccaa030201"
    );
    println!("mmio: scratch: little-endian byte lanes, partial stores merge");

    // Signed loads of the constant 0x8081_8283_8485_8687.
    let c = base + CONSTANT;
    let signed: [(Load, u64, &str); 5] = [
        (ldrsb_x, 0xffff_ffff_ffff_ff87, "ldrsb x"),
        (ldrsb_w, 0x0000_0000_ffff_ff87, "ldrsb w"),
        (ldrsh_x, 0xffff_ffff_ffff_8687, "ldrsh x"),
        (ldrsh_w, 0x0000_0000_ffff_8687, "ldrsh w"),
        (ldrsw, 0xffff_ffff_8485_8687, "ldrsw"),
    ];
    for (load, expected, what) in signed {
        let got = load(c);
        ensure!(
            NAME,
            got == expected,
            "{what} of the constant: {got:#x}, expected {expected:#x}"
        );
    }
    println!("mmio: signed loads: ldrsb x/w, ldrsh x/w, ldrsw sign-extend correctly");

    let unsigned: [(Load, u64, &str); 4] = [
        (ldrb, 0x87, "ldrb"),
        (ldrh, 0x8687, "ldrh"),
        (ldr_w, 0x8485_8687, "ldr w"),
        (ldr_x, CONSTANT_VALUE, "ldr x"),
    ];
    for (load, expected, what) in unsigned {
        let got = load(c);
        ensure!(
            NAME,
            got == expected,
            "{what} of the constant: {got:#x}, expected {expected:#x}"
        );
    }
    let got = ldrb(c + 7);
    ensure!(
        NAME,
        got == 0x80,
        "ldrb of the constant's byte 7: {got:#x}, expected 0x80"
    );
    if device {
        str_x(c, 0);
        strb(c + 1, 0);
        let got = ldr_x(c);
        ensure!(
            NAME,
            got == CONSTANT_VALUE,
            "the constant reads {got:#x} after writes, expected them ignored"
        );
        println!(
            "mmio: unsigned loads: ldrb/ldrh/ldr w/ldr x zero-extend; the constant ignores writes"
        );
    } else {
        println!("mmio: unsigned loads: ldrb/ldrh/ldr w/ldr x zero-extend");
    }

    // XZR/WZR as the store source: only the access's bytes become zero.
    let zr: [(StoreZr, u64, &str); 4] = [
        (str_xzr, 0, "str xzr"),
        (str_wzr, 0xffff_ffff_0000_0000, "str wzr"),
        (strh_wzr, 0xffff_ffff_ffff_0000, "strh wzr"),
        (strb_wzr, 0xffff_ffff_ffff_ff00, "strb wzr"),
    ];
    for (store, expected, what) in zr {
        str_x(base + 0x50, u64::MAX);
        store(base + 0x50);
        let got = ldr_x(base + 0x50);
        ensure!(
            NAME,
            got == expected,
            "{what} over all-ones: read {got:#x}, expected {expected:#x}"
        );
    }
    println!("mmio: zero register stores: str xzr, str wzr, strh wzr, strb wzr write zeros");

    // XZR/WZR as the load target: the load must still reach the device.
    if device {
        str_x(base + COUNT_RESET, 0);
        let n = ldr_x(base + COUNT);
        ensure!(
            NAME,
            n == 0,
            "access counter right after reset: {n}, expected 0"
        );
        str_x(base + COUNT_RESET, 0);
        ldr_xzr(c);
        let n = ldr_x(base + COUNT);
        ensure!(
            NAME,
            n == 1,
            "access counter after one ldr xzr: {n}, expected 1"
        );
        str_x(base + COUNT_RESET, 0);
        ldr_xzr(base);
        ldr_wzr(base + 4);
        ldr_xzr(c);
        let n = ldr_x(base + COUNT);
        ensure!(
            NAME,
            n == 3,
            "access counter after ldr xzr, ldr wzr, ldr xzr: {n}, expected 3"
        );
        println!("mmio: zero register loads: ldr xzr and ldr wzr reach the device (access counter 1, then 3)");
    } else {
        ldr_xzr(c);
        ldr_wzr(base + 4);
        println!("mmio: zero register loads: ldr xzr/ldr wzr run (no access counter in RAM)");
    }
    report::pass(NAME)
}
