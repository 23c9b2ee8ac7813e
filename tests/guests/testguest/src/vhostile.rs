//! `virtio-hostile`: a hostile virtio-blk client. It brings its
//! virtio-mmio device up as a driver would (reset, ACKNOWLEDGE, DRIVER,
//! VERSION_1, FEATURES_OK, queue 0, DRIVER_OK), then fills its rings with
//! random descriptors (loops, addresses outside its RAM, 4 GiB lengths,
//! heads out of range), moves avail.idx by random amounts, pokes random
//! transport registers now and then, and notifies 100,000 times. Its
//! service must survive it; Vigil must stay up. Seed: `vigil.seed=N`.

use vigil_guest::{mmio, println, report, BootInfo};

use crate::vits::Rng;

const NAME: &str = "virtio-hostile";
const NOTIFIES: u32 = 100_000;
const QSIZE: u64 = 256;

/// virtio-mmio registers (virtio 1.2 §4.2.2).
const STATUS: u64 = 0x070;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_DRIVER: u64 = 0x090;
const QUEUE_DEVICE: u64 = 0x0a0;

fn w32(base: u64, off: u64, v: u32) {
    // SAFETY: this VM's virtio-mmio window, from its device tree.
    unsafe { mmio::write32(base + off, v) }
}

fn r32(base: u64, off: u64) -> u32 {
    // SAFETY: as `w32`.
    unsafe { mmio::read32(base + off) }
}

fn poke(addr: u64, v: u64) {
    // SAFETY: inside this VM's own RAM (the ring area below).
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
}

pub fn run(boot: &'static BootInfo) -> ! {
    let Some(dev) = boot.find_compatible("virtio,mmio") else {
        report::fail(NAME, format_args!("no virtio,mmio device"))
    };
    let base = dev.start;
    let seed = boot
        .bootarg("vigil.seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0bad_c0de_u64)
        | 1;
    let mut rng = Rng(seed);
    // Rings in this VM's RAM, 16 MiB in.
    let desc = boot.ram.start + (16 << 20);
    let avail = desc + 16 * QSIZE;
    let used = (avail + 6 + 2 * QSIZE + 0xfff) & !0xfff;
    // Bring the device up as a driver would; again whenever the device
    // asks for a reset (DEVICE_NEEDS_RESET, after a ring it refused) or a
    // random write broke the setup.
    let init = || {
        for a in (desc..used + 0x2000).step_by(8) {
            poke(a, 0);
        }
        w32(base, STATUS, 0);
        w32(base, STATUS, 1);
        w32(base, STATUS, 1 | 2);
        w32(base, DEVICE_FEATURES_SEL, 1);
        w32(base, DRIVER_FEATURES_SEL, 1);
        w32(base, DRIVER_FEATURES, 1); // VERSION_1 only
        w32(base, STATUS, 1 | 2 | 8);
        let ok = r32(base, STATUS) & 8 != 0;
        w32(base, QUEUE_SEL, 0);
        let max = r32(base, QUEUE_NUM_MAX);
        w32(base, QUEUE_NUM, QSIZE.min(u64::from(max)) as u32);
        for (reg, addr) in [
            (QUEUE_DESC, desc),
            (QUEUE_DRIVER, avail),
            (QUEUE_DEVICE, used),
        ] {
            w32(base, reg, addr as u32);
            w32(base, reg + 4, (addr >> 32) as u32);
        }
        w32(base, QUEUE_READY, 1);
        w32(base, STATUS, 1 | 2 | 8 | 4);
        (ok, max)
    };
    let (ok, max) = init();
    println!(
        "{NAME}: seed {seed:#x}; FEATURES_OK {ok}, QueueNumMax {max}, DRIVER_OK; rings at {desc:#x}/{avail:#x}/{used:#x}"
    );

    let (mut idx, mut pokes, mut reinits) = (0u16, 0u32, 0u32);
    for n in 0..NOTIFIES {
        // A few random descriptors: any address, any length, any flags,
        // any next (so loops, out-of-range heads and 4 GiB lengths).
        for _ in 0..4 {
            let i = rng.next() % QSIZE;
            let addr = match rng.next() % 4 {
                0 => boot.ram.start + rng.next() % (boot.ram.end - boot.ram.start),
                1 => rng.next(),
                2 => desc,
                _ => boot.ram.end - 8,
            };
            let len = match rng.next() % 3 {
                0 => 0xffff_ffff,
                1 => 16,
                _ => rng.next() & 0xffff_ffff,
            };
            let flags_next = rng.next() & 0xffff_ffff;
            poke(desc + 16 * i, addr);
            poke(desc + 16 * i + 8, len | flags_next << 32);
        }
        // The next avail entry names a random head (some out of range).
        let slot = avail + 4 + 2 * (u64::from(idx) % QSIZE);
        let head = (rng.next() % (QSIZE + 8)) as u16;
        // SAFETY: inside this VM's RAM (the avail ring).
        unsafe { core::ptr::write_volatile(slot as *mut u16, head) };
        // A jump past the queue size is fatal for the ring: rare, or the
        // rest would never be looked at.
        idx = idx.wrapping_add(match rng.next() % 4096 {
            0 => (rng.next() & 0xffff) as u16,
            _ => 1,
        });
        // SAFETY: as above (avail.idx).
        unsafe { core::ptr::write_volatile((avail + 2) as *mut u16, idx) };
        // Now and then a random register write.
        if rng.next().is_multiple_of(256) {
            let off = (rng.next() % 0x200) & !3;
            if off != STATUS && off != QUEUE_READY {
                w32(base, off, rng.next() as u32);
                pokes += 1;
            }
        }
        // Acknowledge whatever it raised, like a driver would.
        let isr = r32(base, INTERRUPT_STATUS);
        if isr != 0 {
            w32(base, INTERRUPT_ACK, isr);
        }
        // Mostly queue 0; now and then one that does not exist.
        w32(base, QUEUE_NOTIFY, u32::from(rng.next().is_multiple_of(64)));
        if r32(base, STATUS) & 0x44 != 0x04 {
            init();
            idx = 0;
            reinits += 1;
        }
        if n.is_multiple_of(25_000) {
            println!("{NAME}: {n} notifications");
        }
    }
    println!(
        "{NAME}: {NOTIFIES} notifications, {pokes} random register writes, {reinits} re-initialisations; resetting"
    );
    w32(base, STATUS, 0);
    report::pass(NAME)
}
