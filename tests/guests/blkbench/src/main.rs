//! `vigil-blkbench [--profile] DEVICE [N]`: N (default 500) 4 KiB reads,
//! then N 4 KiB writes, at random 4 KiB-aligned offsets of DEVICE, one at a
//! time with O_DIRECT (queue depth 1), each timed with the virtual counter. Under
//! QEMU's `-icount shift=0` a CNTVCT tick is one instruction of the whole
//! machine, so the figures are the instructions a guest's request costs
//! end to end: its driver, the transport, the hypervisor, and whatever
//! serves the disk. While every CPU waits in WFI, though, `sleep=off`
//! jumps the clock to the next timer deadline: a request that waited for
//! an asynchronous backend, or met a tick, counts that jump too. So the
//! figure printed is the median (requests that met no jump), with the
//! minimum and the mean beside it. Prints one line per kind.
//!
//! `--profile` is for scripts/profile, which traces the measured requests
//! with QEMU's `-d exec`: first it prints where this program is mapped and
//! the address of `stamp`, the (never inlined) counter read that starts and
//! ends each timed request, so the trace can be cut into requests; then it
//! does 256 untimed requests of each kind and N timed ones (reported as
//! "profile untraced"), prints "profile ready" and waits for a line on
//! stdin (the host turns tracing on, then types it); after the N timed
//! requests of each kind it prints "profile done" and waits for a line
//! again (the host turns tracing off); then it prints every request's ticks
//! and the usual summary lines. Timed requests are the same in both modes.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

const BLOCK: usize = 4096;
/// `--profile`: untimed requests of each kind first. The driver domain's
/// first hundred or so requests cost more (up to half again as much) than
/// the steady state, which scripts/bench's median over 500 reflects.
const WARMUP: u64 = 256;

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

/// The counter read of `--profile`: a call, so that every timed request
/// begins and ends with a translation block at this function's address.
#[inline(never)]
fn stamp() -> u64 {
    counter()
}

/// `--profile`: the lines of /proc/self/maps that map this program.
fn print_maps() {
    let exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
    let exe = exe.to_string_lossy();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    for line in maps
        .lines()
        .filter(|l| !exe.is_empty() && l.ends_with(&*exe))
    {
        println!("vigil-blkbench: profile maps {line}");
    }
    println!(
        "vigil-blkbench: profile stamp {:#x}",
        stamp as *const () as usize
    );
}

/// `--profile`: say `what` and wait for a line on stdin, polling rather
/// than sleeping: while every vCPU waits in WFI, `-icount sleep=off` runs
/// the virtual clock from one timer deadline to the next as fast as QEMU
/// can, and the busy vCPU thread then starves QEMU's main loop, which
/// serves the monitor that the host is using meanwhile.
fn handshake(what: &str) {
    println!("vigil-blkbench: profile {what}");
    let mut fds = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    while unsafe { libc::poll(&mut fds, 1, 0) } == 0 {
        std::hint::spin_loop();
    }
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
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

/// `n` requests of one kind at random offsets, each timed by two reads of
/// `clock` (a generic, so that `counter` is inlined as it always was).
fn requests(
    f: &std::fs::File,
    blocks: u64,
    rng: &mut Rng,
    buf: &mut Block,
    write: bool,
    n: u64,
    clock: impl Fn() -> u64,
) -> Vec<u64> {
    let kind = if write { "write" } else { "read" };
    let mut times = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let at = (rng.next() % blocks) * BLOCK as u64;
        let t0 = clock();
        let r = if write {
            f.write_at(&buf.0, at)
        } else {
            f.read_at(&mut buf.0, at)
        };
        let dt = clock().wrapping_sub(t0);
        if r.as_ref().map_or(true, |&k| k != BLOCK) {
            eprintln!("vigil-blkbench: {kind} at {at}: {r:?}");
            std::process::exit(1);
        }
        times.push(dt);
    }
    times
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let profile = args.get(1).is_some_and(|a| a == "--profile");
    if profile {
        args.remove(1);
    }
    let (Some(dev), n) = (
        args.get(1),
        args.get(2)
            .and_then(|s| s.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(500u64),
    ) else {
        eprintln!("usage: vigil-blkbench [--profile] DEVICE [N]");
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
    let mut all = Vec::new();
    let mut untraced = Vec::new();
    if profile {
        print_maps();
        for write in [false, true] {
            requests(&f, blocks, &mut rng, &mut buf, write, WARMUP, || 0);
        }
        // The same requests untraced, for comparison: tracing slows QEMU's
        // vCPU against its main loop, where the disk's completions run.
        for write in [false, true] {
            untraced.push(requests(&f, blocks, &mut rng, &mut buf, write, n, stamp));
        }
        handshake("ready");
        for write in [false, true] {
            all.push(requests(&f, blocks, &mut rng, &mut buf, write, n, stamp));
        }
        handshake("done");
    } else {
        for write in [false, true] {
            all.push(requests(&f, blocks, &mut rng, &mut buf, write, n, counter));
        }
    }
    for (kind, times) in ["read", "write"].into_iter().zip(untraced) {
        summary(&format!("profile untraced {kind}"), times);
    }
    for (kind, times) in ["read", "write"].into_iter().zip(all) {
        if profile {
            for chunk in times.chunks(25) {
                let v: Vec<String> = chunk.iter().map(u64::to_string).collect();
                println!("vigil-blkbench: profile ticks {kind} {}", v.join(" "));
            }
        }
        summary(kind, times);
    }
}

/// "vigil-blkbench: WHAT 4k qd1: MEDIAN ticks per request, median (...)"
fn summary(what: &str, mut times: Vec<u64>) {
    let n = times.len() as u64;
    times.sort_unstable();
    let mean = times.iter().sum::<u64>() / n;
    println!(
        "vigil-blkbench: {what} 4k qd1: {} ticks per request, median ({n} requests; min {}, mean {mean}, max {})",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}
