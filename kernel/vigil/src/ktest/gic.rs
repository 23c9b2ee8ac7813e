//! Scenarios for the physical GIC, ITS and EL2 timer.
//!
//! The secondary CPUs idle with interrupts on, so every remote action is
//! started by an SGI whose handler does it on that CPU.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use vigil_gic::its_cmd::ItsCommand;
use vigil_platform::{Platform, MAX_CPUS, MPIDR_AFFINITY_MASK};

use crate::gic::its::{self, Its, ItsError};
use crate::{arch, gic, percpu, timer};

/// SGIs the tests use: 0..=7 travel the ring, 8 asks a CPU to broadcast
/// 9, 10/11 start/stop a CPU's tick.
const RING_SGIS: u8 = 8;
const SGI_BROADCAST_CMD: u8 = 8;
const SGI_BROADCAST: u8 = 9;
const SGI_TIMER_START: u8 = 10;
const SGI_TIMER_STOP: u8 = 11;

/// Receipts per CPU and SGI (64 bytes a CPU: a compile-time-cap array).
static SGI_COUNT: [[AtomicU32; 16]; MAX_CPUS] =
    [const { [const { AtomicU32::new(0) }; 16] }; MAX_CPUS];
static NCPUS: AtomicUsize = AtomicUsize::new(0);
static RING_DONE: AtomicU32 = AtomicU32::new(0);
static TICK_HZ: AtomicU64 = AtomicU64::new(0);

fn on_sgi(intid: u32) {
    let cpu = arch::cpu_index();
    SGI_COUNT[cpu][intid as usize].fetch_add(1, Ordering::AcqRel);
    let n = NCPUS.load(Ordering::Relaxed);
    match intid as u8 {
        id if id < RING_SGIS => {
            if cpu == 0 {
                RING_DONE.store(id as u32 + 1, Ordering::Release);
            } else {
                gic::send_sgi(id, (cpu + 1) % n);
            }
        }
        SGI_BROADCAST_CMD => gic::broadcast_sgi(SGI_BROADCAST),
        SGI_TIMER_START => timer::start(TICK_HZ.load(Ordering::Relaxed)),
        SGI_TIMER_STOP => timer::stop(),
        _ => {}
    }
}

fn register_sgis(n: usize) {
    NCPUS.store(n, Ordering::Relaxed);
    // SGIs 12..15 belong to the hypervisor (vm::SGI_KICK).
    for id in 0..12 {
        gic::register(id, on_sgi);
    }
}

fn count(cpu: usize, id: u8) -> u32 {
    SGI_COUNT[cpu][id as usize].load(Ordering::Acquire)
}

/// SGI ping-pong: each ring SGI travels 0 -> 1 -> ... -> 0, so every CPU
/// receives each of them exactly once; then every CPU broadcasts in turn
/// and every other CPU receives each broadcast exactly once; then CPU 0
/// multicasts to sets of CPUs with one write per cluster (past 16 CPUs
/// QEMU's clusters differ in Aff1) and exactly the targets receive it.
pub fn sgi(p: &Platform<'_>) -> Result<(), &'static str> {
    let n = p.cpus.len();
    if n < 2 {
        return Err("needs at least two CPUs");
    }
    register_sgis(n);
    for id in 0..RING_SGIS {
        gic::send_sgi(id, 1);
        if !arch::wait_until(10_000, || {
            RING_DONE.load(Ordering::Acquire) == id as u32 + 1
        }) {
            log::error!("sgi: SGI {id} did not come back around the ring");
            return Err("ring SGI lost");
        }
    }
    for cpu in 0..n {
        for id in 0..RING_SGIS {
            if count(cpu, id) != 1 {
                log::error!("sgi: cpu{cpu} received SGI {id} {} times", count(cpu, id));
                return Err("a ring SGI was not received exactly once");
            }
        }
    }
    log::info!("sgi: ring: each of {n} CPUs received each of SGIs 0-7 exactly once");

    for src in 0..n {
        if src == 0 {
            gic::broadcast_sgi(SGI_BROADCAST);
        } else {
            gic::send_sgi(SGI_BROADCAST_CMD, src);
        }
        let want = ((src + 1) * (n - 1)) as u32;
        let total = || (0..n).map(|c| count(c, SGI_BROADCAST)).sum::<u32>();
        if !arch::wait_until(10_000, || total() >= want) {
            return Err("broadcast SGI lost");
        }
        // Let any duplicate show up before the next round.
        arch::wait_until(5, || false);
        if total() != want {
            return Err("broadcast SGI duplicated");
        }
    }
    for cpu in 0..n {
        if count(cpu, SGI_BROADCAST) != (n - 1) as u32 {
            return Err("a CPU did not receive each broadcast exactly once");
        }
    }
    log::info!("sgi: broadcast: each CPU received every other CPU's broadcast exactly once");

    type Pick = fn(usize) -> bool;
    let picks: [(&str, Pick); 2] = [("odd-numbered", |c| c % 2 == 1), ("other", |c| c != 0)];
    for (what, pick) in picks {
        let before: Vec<u32> = (0..n).map(|c| count(c, SGI_BROADCAST)).collect();
        let targets = || (0..n).filter(|&c| pick(c));
        // One ICC_SGI1R_EL1 write per (cluster, Aff0 range) of targets.
        let mut groups: Vec<u64> = targets()
            .map(|c| percpu::get(c).mpidr.load(Ordering::Relaxed) & MPIDR_AFFINITY_MASK & !0xf)
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let writes = gic::send_sgi_to(SGI_BROADCAST, targets());
        if writes != groups.len() {
            log::error!(
                "sgi: multicast to {what} CPUs took {writes} writes for {} clusters",
                groups.len()
            );
            return Err("a multicast SGI took other than one write per cluster");
        }
        let got = |c: usize| count(c, SGI_BROADCAST) - before[c];
        if !arch::wait_until(10_000, || targets().all(|c| got(c) >= 1)) {
            return Err("multicast SGI lost");
        }
        arch::wait_until(5, || false);
        if let Some(c) = (0..n).find(|&c| got(c) != u32::from(pick(c))) {
            log::error!(
                "sgi: multicast to {what} CPUs: cpu{c} received it {} times",
                got(c)
            );
            return Err("a multicast SGI did not reach exactly its targets once");
        }
        log::info!(
            "sgi: multicast to {} {what} CPUs in {} clusters: {writes} writes, each target received it exactly once",
            targets().count(),
            groups.len()
        );
    }
    Ok(())
}

/// Each CPU's EL2 timer ticks at the programmed rate, counted against
/// CNTPCT over a fixed interval.
pub fn timer(p: &Platform<'_>) -> Result<(), &'static str> {
    const HZ: u64 = 1000;
    const INTERVAL_MS: u64 = 200;
    let n = p.cpus.len();
    register_sgis(n);
    TICK_HZ.store(HZ, Ordering::Relaxed);
    timer::start(HZ);
    for cpu in 1..n {
        gic::send_sgi(SGI_TIMER_START, cpu);
    }
    // Let every CPU start (its vCPU thread may be descheduled: wait for
    // it, not for a fixed time), then measure.
    if !arch::wait_until(10_000, || (0..n).all(timer::running)) {
        return Err("a CPU did not start its timer");
    }
    // Count due ticks (taken, or overdue and about to be taken) at two
    // counter values: the host may run a vCPU late, but not make its
    // deadlines move.
    let t0 = arch::counter();
    let start: Vec<u64> = (0..n).map(|c| timer::due(c, t0)).collect();
    arch::wait_until(INTERVAL_MS, || false);
    let t1 = arch::counter();
    let end: Vec<u64> = (0..n).map(|c| timer::due(c, t1)).collect();
    // Every due tick is then actually taken: none is lost.
    let taken = arch::wait_until(10_000, || (0..n).all(|c| timer::ticks(c) >= end[c]));
    timer::stop();
    for cpu in 1..n {
        gic::send_sgi(SGI_TIMER_STOP, cpu);
    }
    let freq = arch::counter_freq();
    let expected = (t1 - t0) * HZ / freq;
    let (min, max) = (expected - 1, expected + 1);
    if !taken {
        log::error!("timer: due ticks were not taken");
    }
    let mut ok = taken && timer::SPURIOUS.load(Ordering::Relaxed) == 0;
    for cpu in 0..n {
        let got = end[cpu] - start[cpu];
        let within = (min..=max).contains(&got);
        log::info!(
            "timer: cpu{cpu}: {got} ticks in {} ms at {HZ} Hz (expected {min}..={max}){}",
            (t1 - t0) * 1000 / freq,
            if within { "" } else { " -- OUT OF RANGE" }
        );
        ok &= within;
    }
    if ok {
        Ok(())
    } else {
        Err("a CPU's tick rate is off")
    }
}

/// Per-event LPI receipts: count and the CPU of the last one.
const EVENTS: usize = 64;
static LPI_BASE: AtomicU32 = AtomicU32::new(0);
static LPI_COUNT: [AtomicU32; EVENTS] = [const { AtomicU32::new(0) }; EVENTS];
static LPI_CPU: [AtomicUsize; EVENTS] = [const { AtomicUsize::new(usize::MAX) }; EVENTS];
static LPI_STRAY: AtomicU32 = AtomicU32::new(0);
static LPI_WRONG_CPU: AtomicU32 = AtomicU32::new(0);
static LPI_EXPECT_CPU: [AtomicUsize; EVENTS] = [const { AtomicUsize::new(usize::MAX) }; EVENTS];

fn on_lpi(intid: u32) {
    let base = LPI_BASE.load(Ordering::Relaxed);
    let Some(e) = intid.checked_sub(base).filter(|&e| (e as usize) < EVENTS) else {
        LPI_STRAY.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let cpu = arch::cpu_index();
    let want = LPI_EXPECT_CPU[e as usize].load(Ordering::Relaxed);
    if want != usize::MAX && want != cpu {
        LPI_WRONG_CPU.fetch_add(1, Ordering::Relaxed);
    }
    LPI_CPU[e as usize].store(cpu, Ordering::Relaxed);
    LPI_COUNT[e as usize].fetch_add(1, Ordering::AcqRel);
}

fn lpi_count(e: usize) -> u32 {
    LPI_COUNT[e].load(Ordering::Acquire)
}

fn its_or_err() -> Result<&'static Its, &'static str> {
    its::get().ok_or("no ITS on this machine")
}

fn run(its: &Its, cmds: &[ItsCommand]) -> Result<(), &'static str> {
    its.run(cmds).map_err(|e| {
        log::error!("ITS: {e}");
        "an ITS command failed"
    })
}

static FREE_AT_SETUP: AtomicU32 = AtomicU32::new(0);

/// Set up LPIs base..base+EVENTS, enabled, and the LPI hook.
fn lpi_setup(its: &Its) -> Result<u32, &'static str> {
    FREE_AT_SETUP.store(its.free_lpi_count(), Ordering::Relaxed);
    let base = its.alloc_lpis(EVENTS as u32).ok_or("no host LPIs left")?;
    LPI_BASE.store(base, Ordering::Relaxed);
    for e in 0..EVENTS {
        gic::set_lpi_config(base + e as u32, gic::DEFAULT_PRIORITY, true);
        LPI_COUNT[e].store(0, Ordering::Relaxed);
        LPI_EXPECT_CPU[e].store(usize::MAX, Ordering::Relaxed);
    }
    gic::set_lpi_handler(on_lpi);
    Ok(base)
}

/// Disable the test's LPIs and give them back: the allocator must be
/// back where it started (no leak).
fn lpi_teardown(its: &Its, base: u32) -> Result<(), &'static str> {
    for e in 0..EVENTS as u32 {
        gic::set_lpi_config(base + e, gic::DEFAULT_PRIORITY, false);
    }
    if !its.free_lpis(base) {
        return Err("freeing the host LPIs failed");
    }
    if its.free_lpi_count() != FREE_AT_SETUP.load(Ordering::Relaxed) {
        return Err("host LPIs leaked");
    }
    Ok(())
}

const DEV: u32 = 0x42;

/// Wait until event `e` has been received `n` times, then a little longer
/// to catch a duplicate.
fn expect_count(e: usize, n: u32) -> Result<(), &'static str> {
    if !arch::wait_until(10_000, || lpi_count(e) >= n) {
        log::error!("lpi: event {e}: {} receipts, expected {n}", lpi_count(e));
        return Err("LPI not delivered");
    }
    arch::wait_until(10, || false);
    if lpi_count(e) != n {
        log::error!("lpi: event {e}: {} receipts, expected {n}", lpi_count(e));
        return Err("LPI delivered more than once");
    }
    Ok(())
}

/// MAPD/MAPC/MAPTI then INT delivers on the collection's CPU; MOVI moves
/// it; DISCARD stops it; MAPD(V=0) and a new MAPD with another ITT size
/// make it work again.
pub fn lpi(p: &Platform<'_>) -> Result<(), &'static str> {
    if p.cpus.len() < 4 {
        return Err("needs 4 CPUs");
    }
    let its = its_or_err()?;
    let base = lpi_setup(its)?;
    let dev = its.map_device(DEV, 6).map_err(|_| "MAPD failed")?;
    run(
        its,
        &[ItsCommand::mapti(DEV, 0, base, 1), ItsCommand::inv(DEV, 0)],
    )?;
    run(its, &[ItsCommand::int(DEV, 0)])?;
    expect_count(0, 1)?;
    if LPI_CPU[0].load(Ordering::Relaxed) != 1 {
        return Err("LPI did not arrive on its collection's CPU (1)");
    }
    log::info!("lpi: INT delivered LPI {base} once, on cpu1");

    run(its, &[ItsCommand::movi(DEV, 0, 2), ItsCommand::int(DEV, 0)])?;
    expect_count(0, 2)?;
    if LPI_CPU[0].load(Ordering::Relaxed) != 2 {
        return Err("after MOVI the LPI did not arrive on cpu2");
    }
    log::info!("lpi: after MOVI to collection 2 it arrived on cpu2");

    run(its, &[ItsCommand::discard(DEV, 0)])?;
    run(its, &[ItsCommand::int(DEV, 0)])?;
    arch::wait_until(50, || false);
    if lpi_count(0) != 2 {
        return Err("an LPI arrived after DISCARD");
    }
    log::info!("lpi: after DISCARD, INT delivers nothing");

    its.unmap_device(dev).map_err(|_| "MAPD(V=0) failed")?;
    let dev = its.map_device(DEV, 4).map_err(|_| "re-MAPD failed")?;
    run(
        its,
        &[
            ItsCommand::mapti(DEV, 3, base + 3, 3),
            ItsCommand::int(DEV, 3),
        ],
    )?;
    expect_count(3, 1)?;
    if LPI_CPU[3].load(Ordering::Relaxed) != 3 || lpi_count(0) != 2 {
        return Err("after re-MAPD the LPI went astray");
    }
    log::info!("lpi: after MAPD(V=0) and re-MAPD with a 16-entry ITT, event 3 arrived on cpu3");
    its.unmap_device(dev)
        .map_err(|_| "final MAPD(V=0) failed")?;

    // A DeviceID far from the first one: in a two-level device table it
    // needs a level-2 page of its own.
    const FAR_DEV: u32 = 0xfff0;
    let far = its
        .map_device(FAR_DEV, 1)
        .map_err(|_| "MAPD of a far DeviceID failed")?;
    run(
        its,
        &[
            ItsCommand::mapti(FAR_DEV, 1, base + 10, 0),
            ItsCommand::int(FAR_DEV, 1),
        ],
    )?;
    expect_count(10, 1)?;
    its.unmap_device(far)
        .map_err(|_| "MAPD(V=0) of the far device failed")?;
    log::info!("lpi: DeviceID {FAR_DEV:#x} works too");
    lpi_teardown(its, base)?;
    if LPI_STRAY.load(Ordering::Relaxed) != 0 {
        return Err("stray LPIs arrived");
    }
    Ok(())
}

/// 10,000 INTs over 64 events spread across the CPUs (round robin, or
/// evenly from the first to near the last when there are more CPUs than
/// events, so that redistributors of every region take some): every event
/// received exactly as often as it was triggered, each on its collection's
/// CPU.
pub fn lpi_storm(p: &Platform<'_>) -> Result<(), &'static str> {
    const TOTAL: usize = 10_000;
    let n = p.cpus.len();
    let its = its_or_err()?;
    let base = lpi_setup(its)?;
    let dev = its.map_device(DEV, 6).map_err(|_| "MAPD failed")?;
    let cpu_of = |e: usize| if n <= EVENTS { e % n } else { e * n / EVENTS };
    let mut maps = Vec::new();
    for (e, expect) in LPI_EXPECT_CPU.iter().enumerate() {
        expect.store(cpu_of(e), Ordering::Relaxed);
        maps.push(ItsCommand::mapti(
            DEV,
            e as u32,
            base + e as u32,
            cpu_of(e) as u16,
        ));
    }
    maps.push(ItsCommand::invall(0));
    run(its, &maps)?;
    let wraps_before = its.wraps();
    let mut sent = [0u32; EVENTS];
    let mut total = 0;
    while total < TOTAL {
        // Trigger each event at most once per round: an LPI made pending
        // again before it is taken merges with the first (edge semantics).
        let batch = (TOTAL - total).min(EVENTS);
        let cmds: Vec<ItsCommand> = (0..batch).map(|e| ItsCommand::int(DEV, e as u32)).collect();
        run(its, &cmds)?;
        for s in sent.iter_mut().take(batch) {
            *s += 1;
        }
        total += batch;
        if !arch::wait_until(10_000, || (0..EVENTS).all(|e| lpi_count(e) >= sent[e])) {
            return Err("LPIs lost in the storm");
        }
    }
    arch::wait_until(20, || false);
    for (e, &s) in sent.iter().enumerate() {
        if lpi_count(e) != s {
            log::error!("lpi-storm: event {e}: received {} of {s}", lpi_count(e));
            return Err("an event was not received exactly as often as triggered");
        }
    }
    if LPI_WRONG_CPU.load(Ordering::Relaxed) != 0 {
        return Err("LPIs arrived on the wrong CPU");
    }
    let received: u32 = (0..EVENTS).map(lpi_count).sum();
    log::info!(
        "lpi-storm: {received} LPIs over {EVENTS} events and {} CPUs (cpu0 to cpu{} of {n}), each received exactly once; queue wrapped {} times",
        n.min(EVENTS),
        cpu_of(EVENTS - 1),
        its.wraps() - wraps_before
    );
    its.unmap_device(dev).map_err(|_| "MAPD(V=0) failed")?;
    lpi_teardown(its, base)
}

/// More than two queue's worth of commands: the writer wraps at least
/// twice and the ITS still processes everything in order.
pub fn its_wrap(_: &Platform<'_>) -> Result<(), &'static str> {
    let its = its_or_err()?;
    let base = lpi_setup(its)?;
    let dev = its.map_device(DEV, 6).map_err(|_| "MAPD failed")?;
    run(its, &[ItsCommand::mapti(DEV, 5, base + 5, 0)])?;
    let wraps = its.wraps();
    let done = its.completed();
    // 5,000 commands in uneven batches (so the wrap lands mid-batch), each
    // INV; the LPI must then still be delivered exactly once.
    let mut left = 5000usize;
    let mut k = 0;
    while left > 0 {
        let batch = left.min(97 + k * 31 % 400);
        run(its, &alloc::vec![ItsCommand::inv(DEV, 5); batch])?;
        left -= batch;
        k += 1;
    }
    run(its, &[ItsCommand::int(DEV, 5)])?;
    expect_count(5, 1)?;
    let wrapped = its.wraps() - wraps;
    log::info!(
        "its-wrap: {} commands, queue wrapped {wrapped} times, LPI still delivered exactly once",
        its.completed() - done
    );
    its.unmap_device(dev).map_err(|_| "MAPD(V=0) failed")?;
    lpi_teardown(its, base)?;
    if wrapped < 2 {
        return Err("the queue did not wrap twice");
    }
    Ok(())
}

/// A physical address no RAM or device backs (bit 51: above every region of
/// QEMU's `virt`), where an ITS write fails.
const UNBACKED: u64 = 1 << 51;

/// A stalled physical command queue is recovered (IHI 0069 §6.3.3,
/// "Command errors": the ITS stops at the command, sets GITS_CREADR.Stalled
/// and resumes on a GITS_CWRITER write with Retry). A MAPTI into an ITT in
/// unbacked memory makes QEMU's ITS stall (it cannot write the ITE). The
/// batch that hit it gets `ItsError::Stalled`; the command after it in that
/// batch, and the next batch, still run, and their LPI is delivered.
pub fn its_stall(_: &Platform<'_>) -> Result<(), &'static str> {
    const BAD: u32 = DEV + 1;
    let its = its_or_err()?;
    let base = lpi_setup(its)?;
    let dev = its.map_device(DEV, 6).map_err(|_| "MAPD failed")?;
    let bad = its.map_device(BAD, 6).map_err(|_| "MAPD failed")?;
    run(its, &[ItsCommand::mapti(DEV, 0, base, 0)])?;
    // BAD's ITT moves to memory the ITS cannot write.
    run(its, &[ItsCommand::mapd(BAD, UNBACKED, 6, true)])?;
    match its.run(&[
        ItsCommand::mapti(BAD, 1, base + 1, 0),
        ItsCommand::int(DEV, 0),
    ]) {
        Err(ItsError::Stalled { command, .. }) if command[0] & 0xff == 0x0a => {}
        Err(e) => {
            log::error!("its-stall: {e}");
            return Err("the stall was reported as another error");
        }
        Ok(()) => return Err("the MAPTI into unbacked memory did not stall the ITS"),
    }
    // The INT queued behind the stalled MAPTI ran after the Retry...
    expect_count(0, 1)?;
    // ...and so does the next caller's batch.
    run(its, &[ItsCommand::int(DEV, 0)])?;
    expect_count(0, 2)?;
    log::info!("its-stall: stall recovered; the commands after it ran");
    its.unmap_device(bad).map_err(|_| "MAPD(V=0) failed")?;
    its.unmap_device(dev).map_err(|_| "MAPD(V=0) failed")?;
    lpi_teardown(its, base)
}
