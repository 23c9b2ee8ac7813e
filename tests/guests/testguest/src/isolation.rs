//! `isolation`: the VM's own RAM holds what it writes, and every access
//! outside its RAM and devices takes a synchronous external abort.

use vigil_guest::{ensure, expect_exception, mmio, println, report, BootInfo};

const NAME: &str = "isolation";
const MIB: u64 = 1 << 20;
/// The probes: every 64 MiB from the end of RAM up to here, then 4 GiB.
const PROBE_STEP: u64 = 64 * MIB;
const PROBE_LIMIT: u64 = 0xC000_0000;
const PROBE_HIGH: u64 = 0x1_0000_0000;
const PATTERN_SIZE: u64 = MIB;

fn pattern(addr: u64) -> u64 {
    addr.rotate_left(17) ^ 0x5a5a_a5a5_0f0f_f0f0
}

fn read(addr: u64) -> u64 {
    // SAFETY: a load from `addr`, which is outside this VM's RAM: it aborts
    // (caught by `expect_exception`) or reads a device, never memory Rust
    // uses.
    unsafe { mmio::read64(addr) }
}

fn write(addr: u64, v: u64) {
    // SAFETY: a store to `addr`, which is outside this VM's RAM: it aborts
    // (caught by `expect_exception`), never touching memory Rust uses.
    unsafe { mmio::write64(addr, v) }
}

/// Reads and writes `addr`; both must abort with FAR = `addr`.
fn probe(addr: u64) {
    let e = expect_exception(|| {
        read(addr);
    });
    match e {
        Some(e) if e.is_external_abort_at(addr) => {}
        Some(e) => vigil_guest::fail!(
            NAME,
            "read of {addr:#x}: {e}, expected a data abort (EC 0x25, DFSC 0x10) at it"
        ),
        None => vigil_guest::fail!(NAME, "read of {addr:#x} outside RAM did not abort"),
    }
    let e = expect_exception(|| write(addr, pattern(addr)));
    match e {
        Some(e) if e.is_external_abort_at(addr) => {}
        Some(e) => vigil_guest::fail!(
            NAME,
            "write of {addr:#x}: {e}, expected a data abort (EC 0x25, DFSC 0x10) at it"
        ),
        None => vigil_guest::fail!(NAME, "write of {addr:#x} outside RAM did not abort"),
    }
}

pub fn run(boot: &'static BootInfo) -> ! {
    let ram = boot.ram.clone();
    let start = (vigil_guest::boot::image_range().end + MIB - 1) & !(MIB - 1);
    let end = start + PATTERN_SIZE;
    ensure!(
        NAME,
        end <= ram.end,
        "RAM {:#x}..{:#x} has no MiB above the image",
        ram.start,
        ram.end
    );
    for addr in (start..end).step_by(8) {
        // SAFETY: [start, end) is RAM of this VM above the image, its BSS
        // and stacks, so nothing else uses it.
        unsafe { core::ptr::write_volatile(addr as *mut u64, pattern(addr)) };
    }
    println!("isolation: wrote a pattern over {start:#x}..{end:#x}");

    let mut addresses = 0;
    let mut first = None;
    let mut last = 0;
    let mut addr = ram.end;
    while addr < PROBE_LIMIT {
        probe(addr);
        first.get_or_insert(addr);
        last = addr;
        addresses += 1;
        addr += PROBE_STEP;
    }
    if !ram.contains(&PROBE_HIGH) {
        probe(PROBE_HIGH);
        first.get_or_insert(PROBE_HIGH);
        last = PROBE_HIGH;
        addresses += 1;
    }
    ensure!(
        NAME,
        addresses > 0,
        "nothing to probe: RAM is {:#x}..{:#x}",
        ram.start,
        ram.end
    );
    println!(
        "isolation: read and wrote {addresses} addresses from {:#x} to {last:#x} (every 64 MiB from the end of RAM to 0xc0000000, and 0x100000000)",
        first.unwrap_or(0)
    );
    println!("isolation: {} probes outside RAM aborted", 2 * addresses);

    for addr in (start..end).step_by(8) {
        // SAFETY: as above; the pattern was written there.
        let got = unsafe { core::ptr::read_volatile(addr as *const u64) };
        ensure!(
            NAME,
            got == pattern(addr),
            "RAM at {addr:#x} reads {got:#x}, wrote {:#x}",
            pattern(addr)
        );
    }
    println!("isolation: the pattern in RAM is intact");
    report::pass(NAME)
}
