//! `vigil-blkbench DEVICE [N]`: N (default 500) 4 KiB reads, then N 4 KiB
//! writes, at random 4 KiB-aligned offsets of DEVICE, one at a time with
//! O_DIRECT (queue depth 1), each timed with the virtual counter. Under
//! QEMU's `-icount shift=0` a CNTVCT tick is one instruction of the whole
//! machine, so the figures are the instructions a guest's request costs
//! end to end: its driver, the transport, the hypervisor, and whatever
//! serves the disk. While every CPU waits in WFI, though, `sleep=off`
//! jumps the clock to the next timer deadline: a request that waited for
//! an asynchronous backend, or met a tick, counts that jump too. So the
//! figure printed is the median (requests that met no jump), with the
//! minimum and the mean beside it. Prints one line per kind.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

const BLOCK: usize = 4096;

#[cfg(target_arch = "aarch64")]
fn counter() -> u64 {
    let v: u64;
    // SAFETY: Linux lets EL0 read the virtual counter (CNTKCTL_EL1.EL0VCTEN);
    // the ISB keeps the read after the previous request's instructions.
    unsafe { std::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nostack)) };
    v
}

#[cfg(not(target_arch = "aarch64"))]
fn counter() -> u64 {
    0
}

/// xorshift64*: the same offsets on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A 4 KiB buffer aligned for O_DIRECT.
#[repr(C, align(4096))]
struct Block([u8; BLOCK]);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dev), n) = (
        args.get(1),
        args.get(2)
            .and_then(|s| s.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(500u64),
    ) else {
        eprintln!("usage: vigil-blkbench DEVICE [N]");
        std::process::exit(2);
    };
    let f = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vigil-blkbench: {dev}: {e}");
            std::process::exit(1);
        }
    };
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    // A block device's metadata length is 0: ask for its end instead.
    let size = if size == 0 {
        use std::io::{Seek, SeekFrom};
        (&f).seek(SeekFrom::End(0)).unwrap_or(0)
    } else {
        size
    };
    let blocks = size / BLOCK as u64;
    if blocks == 0 {
        eprintln!("vigil-blkbench: {dev}: empty");
        std::process::exit(1);
    }
    let mut buf = Box::new(Block([0x5a; BLOCK]));
    let mut rng = Rng(0x5eed_b10c);
    for (kind, write) in [("read", false), ("write", true)] {
        let mut times = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let at = (rng.next() % blocks) * BLOCK as u64;
            let t0 = counter();
            let r = if write {
                f.write_at(&buf.0, at)
            } else {
                f.read_at(&mut buf.0, at)
            };
            let dt = counter().wrapping_sub(t0);
            if r.as_ref().map_or(true, |&k| k != BLOCK) {
                eprintln!("vigil-blkbench: {kind} at {at}: {r:?}");
                std::process::exit(1);
            }
            times.push(dt);
        }
        times.sort_unstable();
        let mean = times.iter().sum::<u64>() / n;
        println!(
            "vigil-blkbench: {kind} 4k qd1: {} ticks per request, median ({n} requests; min {}, mean {mean}, max {})",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
    }
}
