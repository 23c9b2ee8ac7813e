//! The virtual GICv3 (issue 5): `ipi`, `prio`, `active`, `vtimer` and
//! `uart-level`. Each uses the library's `gic` driver; every handler runs
//! with IRQs masked on the vCPU that took the interrupt, and an interrupt
//! nobody registered a handler for ends the run (status 1).

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use vigil_guest::gic::{self, Trigger};
use vigil_guest::{cpu, ensure, fail, mmio, println, psci, report, BootInfo, MAX_CPUS};

/// How long any wait for another vCPU or an interrupt may take.
const TIMEOUT_US: u64 = 5_000_000;
/// How long "must not be delivered" is watched.
const QUIET_US: u64 = 200_000;

/// The distributor and this vCPU's interface, with a line about the GIC.
fn init(name: &str) {
    gic::init_distributor();
    gic::init_cpu();
    let ctlr = gic::gicd_ctlr();
    ensure!(
        name,
        ctlr & 0x12 == 0x12,
        "GICD_CTLR = {ctlr:#x} after init, expected ARE (bit 4) and EnableGrp1 (bit 1)"
    );
    println!(
        "{name}: GICD_CTLR {ctlr:#x} (DS {}), {} INTIDs, redistributor at {:#x}",
        (ctlr >> 6) & 1,
        gic::nr_irqs(),
        gic::rd_base()
    );
}

/// Starts vCPUs 1..n (context id = index) running `main`.
fn start_secondaries(name: &str, boot: &BootInfo, n: usize, main: fn(u64) -> !) {
    let cpus = boot.cpus();
    ensure!(
        name,
        cpus.len() >= n,
        "{} vCPUs in the device tree, need {n}",
        cpus.len()
    );
    vigil_guest::set_secondary_main(main);
    for (i, &mpidr) in cpus.iter().enumerate().take(n).skip(1) {
        let r = psci::cpu_on(mpidr, i as u64);
        ensure!(
            name,
            r == 0,
            "CPU_ON of vCPU {i} (MPIDR {mpidr:#x}): {r} ({})",
            psci::error_name(r)
        );
    }
}

fn since_ms(start_us: u64) -> u64 {
    (cpu::now_us() - start_us) / 1000
}

// ---------------------------------------------------------------------------
// ipi: every vCPU of the VM (4 in the classic run, up to 64 in clusters of
// 16), rounds of all-to-all SGIs, each one counted at its target. With at
// most 7 vCPUs, sender s uses SGI s + 1 (two senders never merge into one
// delivery at a target). With more, a round is phases: in phase p each
// vCPU s sends to s + d for the (at most 7) offsets d of that phase, with
// SGI k + 1 for the k-th of them, so a target hears each SGI from one
// sender per phase, and the phases' offsets cover 1..N-1: every ordered
// pair once per round. A phase ends at a barrier.

const IPI: &str = "ipi";
/// Rounds when the bootargs do not say (`vigil.ipi.rounds=N`).
const IPI_ROUNDS: u32 = 1000;
/// Sent once by vCPU 0 with IRM = 1 (every vCPU but the sender).
const IPI_BROADCAST_SGI: u32 = 8;
/// SGIs a phase uses: 1..=7.
const IPI_SLOTS: usize = 7;

/// IPI_COUNT[target][intid]: SGIs the target took.
static IPI_COUNT: [[AtomicU32; 16]; MAX_CPUS] =
    [const { [const { AtomicU32::new(0) }; 16] }; MAX_CPUS];
static IPI_MPIDR: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static IPI_BARRIER: IpiBarrier = IpiBarrier::new();
static IPI_TAKEN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static IPI_DONE: AtomicUsize = AtomicUsize::new(0);
/// vCPUs taking part, and rounds (set by vCPU 0 before any starts).
static IPI_N: AtomicUsize = AtomicUsize::new(0);
static IPI_R: AtomicU32 = AtomicU32::new(0);

/// A spin barrier (as the library's) for however many vCPUs take part.
struct IpiBarrier {
    count: AtomicUsize,
    generation: AtomicUsize,
}

impl IpiBarrier {
    const fn new() -> Self {
        Self {
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn wait_timeout(&self, n: usize, timeout_us: u64) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return true;
        }
        cpu::wait_until(timeout_us, || {
            self.generation.load(Ordering::Acquire) != generation
        })
    }
}

/// The shape of a run with `n` vCPUs.
#[derive(Clone, Copy)]
struct IpiPlan {
    n: usize,
}

impl IpiPlan {
    /// Sender s uses SGI s + 1 (up to 7 vCPUs), or phases of offsets.
    fn classic(self) -> bool {
        self.n <= IPI_SLOTS
    }

    fn phases(self) -> usize {
        if self.classic() {
            1
        } else {
            (self.n - 1).div_ceil(IPI_SLOTS)
        }
    }

    /// The offsets d (target = sender + d mod n) of phase `p`.
    fn offsets(self, p: usize) -> core::ops::Range<usize> {
        if self.classic() {
            1..self.n
        } else {
            let first = 1 + p * IPI_SLOTS;
            first..(first + IPI_SLOTS).min(self.n)
        }
    }

    /// The SGI sender `s` sends with offset `d` in phase `p`.
    fn sgi(self, s: usize, d: usize, p: usize) -> u32 {
        if self.classic() {
            s as u32 + 1
        } else {
            (d - self.offsets(p).start) as u32 + 1
        }
    }

    /// The SGIs target `t` takes in phase `p`, one of each.
    fn expected(self, t: usize, p: usize) -> u16 {
        self.offsets(p)
            .map(|d| self.sgi((t + self.n - d) % self.n, d, p))
            .fold(0, |m, i| m | 1 << i)
    }

    /// How many times target `t` takes SGI `i` over `rounds` rounds.
    fn total(self, t: usize, i: usize, rounds: u32) -> u32 {
        let phases = (0..self.phases()).filter(|&p| self.expected(t, p) & (1 << i) != 0);
        phases.count() as u32 * rounds
    }
}

fn ipi_handler(intid: u32) {
    IPI_COUNT[cpu::index() % MAX_CPUS][intid as usize % 16].fetch_add(1, Ordering::Relaxed);
}

fn ipi_secondary(context: u64) -> ! {
    gic::init_cpu();
    ipi_worker((context & 0xff) as usize);
    cpu::park()
}

fn ipi_worker(me: usize) {
    let plan = IpiPlan {
        n: IPI_N.load(Ordering::Acquire),
    };
    let (n, rounds) = (plan.n, IPI_R.load(Ordering::Acquire));
    for s in 1..=IPI_SLOTS as u32 {
        gic::set_priority(s, 0x80);
        gic::enable(s);
    }
    gic::set_priority(IPI_BROADCAST_SGI, 0x80);
    gic::enable(IPI_BROADCAST_SGI);
    gic::irq_enable();
    if !IPI_BARRIER.wait_timeout(n, TIMEOUT_US) {
        fail!(IPI, "cpu {me}: the other vCPUs did not reach the start");
    }
    let got = |i: u32| IPI_COUNT[me][i as usize].load(Ordering::Relaxed);
    // What this vCPU must have taken by the end of the current phase.
    let mut want = [0u32; 16];
    for round in 1..=rounds {
        for p in 0..plan.phases() {
            for d in plan.offsets(p) {
                let t = (me + d) % n;
                gic::send_sgi(plan.sgi(me, d, p), IPI_MPIDR[t].load(Ordering::Relaxed));
            }
            let mask = plan.expected(me, p);
            for (i, w) in want.iter_mut().enumerate() {
                *w += u32::from(mask >> i & 1);
            }
            let all = || (1..=IPI_SLOTS as u32).all(|i| got(i) >= want[i as usize]);
            let t0 = cpu::now_us();
            // Masked around the check and WFI, so an SGI taken between
            // them cannot be missed; WFI wakes on a pending one regardless.
            loop {
                gic::irq_disable();
                if all() || cpu::now_us() - t0 >= TIMEOUT_US {
                    break;
                }
                gic::wait_for_interrupt();
                gic::irq_enable();
            }
            gic::irq_enable();
            if let Some(i) = (1..=IPI_SLOTS as u32).find(|&i| got(i) != want[i as usize]) {
                fail!(
                    IPI,
                    "round {round} phase {p}: cpu {me} took SGI {i} {} times, expected {}{}",
                    got(i),
                    want[i as usize],
                    if got(i) > want[i as usize] {
                        " (duplicate delivery)"
                    } else {
                        ""
                    }
                );
            }
            if !IPI_BARRIER.wait_timeout(n, TIMEOUT_US) {
                fail!(
                    IPI,
                    "round {round} phase {p}: cpu {me} waited in vain for the others"
                );
            }
        }
    }
    if me == 0 {
        gic::send_sgi_to_others(IPI_BROADCAST_SGI);
    } else if !cpu::wait_until(TIMEOUT_US, || got(IPI_BROADCAST_SGI) >= 1) {
        fail!(
            IPI,
            "cpu {me} never took the IRM broadcast SGI {IPI_BROADCAST_SGI}"
        );
    }
    if !IPI_BARRIER.wait_timeout(n, TIMEOUT_US) {
        fail!(IPI, "broadcast: cpu {me} waited in vain for the others");
    }
    // Anything late would arrive now.
    cpu::wait_until(10_000, || false);
    gic::irq_disable();
    IPI_TAKEN[me].store(gic::taken_count(), Ordering::Relaxed);
    IPI_DONE.fetch_add(1, Ordering::Release);
}

pub fn ipi(boot: &'static BootInfo) -> ! {
    init(IPI);
    let n = boot.cpus().len().min(MAX_CPUS);
    ensure!(IPI, n >= 2, "{n} vCPU: need two at least");
    let rounds = match boot.bootarg("vigil.ipi.rounds").map(str::parse::<u32>) {
        None => IPI_ROUNDS,
        Some(Ok(r)) if r > 0 => r,
        Some(_) => fail!(IPI, "vigil.ipi.rounds must be a positive number"),
    };
    let plan = IpiPlan { n };
    IPI_N.store(n, Ordering::Release);
    IPI_R.store(rounds, Ordering::Release);
    for (i, &mpidr) in boot.cpus().iter().enumerate().take(n) {
        IPI_MPIDR[i].store(mpidr, Ordering::Relaxed);
    }
    for s in 1..=IPI_SLOTS as u32 {
        gic::set_handler(s, ipi_handler);
    }
    gic::set_handler(IPI_BROADCAST_SGI, ipi_handler);
    let start = cpu::now_us();
    start_secondaries(IPI, boot, n, ipi_secondary);
    ipi_worker(0);
    if !cpu::wait_until(TIMEOUT_US, || IPI_DONE.load(Ordering::Acquire) == n) {
        fail!(
            IPI,
            "only {} vCPUs finished",
            IPI_DONE.load(Ordering::Acquire)
        );
    }
    let clusters = (boot.cpus()[n - 1] >> 8 & 0xff) + 1;
    println!(
        "ipi: {rounds} rounds all-to-all among {n} vCPUs in {} ms ({} phases per round, {clusters} cluster{})",
        since_ms(start),
        plan.phases(),
        if clusters == 1 { "" } else { "s" }
    );
    let mut total = 0;
    for t in 0..n {
        let c = |i: usize| IPI_COUNT[t][i].load(Ordering::Relaxed);
        if n <= 8 {
            println!(
                "ipi: cpu {t} took SGI 1: {}, SGI 2: {}, SGI 3: {}, SGI 4: {}, broadcast SGI {IPI_BROADCAST_SGI}: {}, {} interrupts in all",
                c(1),
                c(2),
                c(3),
                c(4),
                c(IPI_BROADCAST_SGI as usize),
                IPI_TAKEN[t].load(Ordering::Relaxed)
            );
        }
        let mut sum = 0u64;
        for i in 0..16 {
            let expected = if i == IPI_BROADCAST_SGI as usize {
                u32::from(t != 0)
            } else {
                plan.total(t, i, rounds)
            };
            ensure!(
                IPI,
                c(i) == expected,
                "cpu {t} took SGI {i} {} times, expected {expected}",
                c(i)
            );
            if i != IPI_BROADCAST_SGI as usize {
                total += c(i);
            }
            sum += u64::from(expected);
        }
        let taken = IPI_TAKEN[t].load(Ordering::Relaxed);
        ensure!(
            IPI,
            taken == sum,
            "cpu {t} acknowledged {taken} interrupts, expected {sum}"
        );
    }
    if plan.classic() {
        println!("ipi: {total} SGIs, each (target, INTID) exactly {rounds}, nothing else");
    } else {
        println!(
            "ipi: {total} SGIs, each of the {} (sender, target) pairs exactly {rounds} times, nothing else",
            n * (n - 1)
        );
    }
    println!(
        "ipi: IRM broadcast SGI {IPI_BROADCAST_SGI} from cpu 0: taken once by cpus 1-{}, not by cpu 0",
        n - 1
    );
    report::pass(IPI)
}

// ---------------------------------------------------------------------------
// prio: 64 interrupts pending at once on one vCPU.

const PRIO: &str = "prio";
const PRIO_COUNT: usize = 64;
const PRIO_LOG: usize = 128;
static PRIO_ORDER: [AtomicU32; PRIO_LOG] = [const { AtomicU32::new(0) }; PRIO_LOG];
static PRIO_LEN: AtomicUsize = AtomicUsize::new(0);

fn log_handler(intid: u32) {
    let i = PRIO_LEN.fetch_add(1, Ordering::Relaxed);
    if i < PRIO_LOG {
        PRIO_ORDER[i].store(intid, Ordering::Relaxed);
    }
}

/// The interrupts of `prio`: SGIs 0-15, PPIs 16-24 and 28-31, SPIs from 32.
fn prio_intids() -> [u32; PRIO_COUNT] {
    let mut ids = [0; PRIO_COUNT];
    for (slot, intid) in ids.iter_mut().zip((0..=24).chain(28..=31).chain(32..)) {
        *slot = intid;
    }
    ids
}

/// 12 priority levels, 0x10..0xc0, about 5 interrupts each, not in INTID
/// order.
fn prio_of(k: usize) -> u8 {
    0x10 * (1 + ((k * 5 + 3) % 12) as u8)
}

pub fn prio(boot: &'static BootInfo) -> ! {
    init(PRIO);
    gic::irq_disable();
    let ids = prio_intids();
    let last = ids[PRIO_COUNT - 1];
    ensure!(
        PRIO,
        gic::nr_irqs() > last,
        "the distributor has {} INTIDs, need {}",
        gic::nr_irqs(),
        last + 1
    );
    for (k, &intid) in ids.iter().enumerate() {
        gic::set_handler(intid, log_handler);
        gic::set_priority(intid, prio_of(k));
        let p = gic::priority(intid);
        ensure!(
            PRIO,
            p == prio_of(k),
            "INTID {intid}: priority reads {p:#x}, wrote {:#x}",
            prio_of(k)
        );
        if intid >= gic::SPI_BASE {
            gic::configure(intid, Trigger::Edge);
        }
        gic::enable(intid);
    }
    let me = boot.cpus()[0];
    for &intid in &ids {
        match intid {
            0..=15 => gic::send_sgi(intid, me),
            _ => gic::set_pending(intid),
        }
    }
    let not_pending = ids.iter().filter(|&&i| !gic::is_pending(i)).count();
    ensure!(
        PRIO,
        not_pending == 0,
        "{not_pending} of the {PRIO_COUNT} interrupts do not read pending (first: INTID {})",
        ids.iter().find(|&&i| !gic::is_pending(i)).unwrap_or(&0)
    );
    ensure!(
        PRIO,
        gic::taken_count() == 0,
        "{} interrupts were taken with IRQs masked",
        gic::taken_count()
    );
    let hp = gic::highest_pending();
    println!(
        "prio: 64 interrupts pending at once (16 SGIs, 13 PPIs, {} SPIs {}..{last}), 12 priority levels 0x10..0xc0; ICC_HPPIR1 = {hp}",
        PRIO_COUNT - 29,
        gic::SPI_BASE
    );
    gic::irq_enable();
    let got_all = cpu::wait_until(TIMEOUT_US, || {
        PRIO_LEN.load(Ordering::Relaxed) >= PRIO_COUNT
    });
    cpu::wait_until(QUIET_US, || false);
    gic::irq_disable();
    let len = PRIO_LEN.load(Ordering::Relaxed);
    let order = |i: usize| PRIO_ORDER[i].load(Ordering::Relaxed);
    let k_of = |intid: u32| ids.iter().position(|&i| i == intid);
    let mut seen = [0u32; gic::MAX_INTID as usize];
    for i in 0..len.min(PRIO_LOG) {
        seen[order(i) as usize] += 1;
    }
    if let Some(&missing) = ids.iter().find(|&&i| seen[i as usize] == 0) {
        fail!(
            PRIO,
            "{len} deliveries{}; INTID {missing} never delivered",
            if got_all { "" } else { " (timed out)" }
        );
    }
    if let Some(dup) = (0..gic::MAX_INTID).find(|&i| seen[i as usize] > 1) {
        fail!(PRIO, "INTID {dup} delivered {} times", seen[dup as usize]);
    }
    ensure!(
        PRIO,
        len == PRIO_COUNT,
        "{len} deliveries, expected {PRIO_COUNT}"
    );
    println!("prio: all 64 delivered, each exactly once");
    let mut line = heapless_line();
    for i in 0..len {
        let intid = order(i);
        let p = k_of(intid).map_or(0xff, prio_of);
        if i > 0 {
            let prev = order(i - 1);
            let pp = k_of(prev).map_or(0xff, prio_of);
            ensure!(
                PRIO,
                p >= pp,
                "delivery {i}: INTID {intid} (priority {p:#x}) after INTID {prev} (priority {pp:#x}): out of priority order"
            );
        }
        line.push(intid, p);
    }
    println!("prio: order (INTID/priority): {}", line.as_str());
    println!("prio: delivered in non-decreasing priority value order");
    report::pass(PRIO)
}

/// A fixed buffer for the order line ("intid/prio " * 64).
struct Line {
    buf: [u8; 1024],
    len: usize,
}

fn heapless_line() -> Line {
    Line {
        buf: [0; 1024],
        len: 0,
    }
}

impl Line {
    fn push(&mut self, intid: u32, prio: u8) {
        use core::fmt::Write;
        let _ = write!(
            self,
            "{}{intid}/{prio:#x}",
            if self.len > 0 { " " } else { "" }
        );
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let b = s.as_bytes();
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// active: EOImode 1, an SGI left active; enabling a pending SPI; changing
// the priority of a pending SPI.

const ACTIVE: &str = "active";
const ACTIVE_SGI: u32 = 5;
const SPI_ENABLE: u32 = 40;
const SPI_A: u32 = 41;
const SPI_B: u32 = 42;
static SGI5_TAKEN: AtomicU32 = AtomicU32::new(0);
static SGI5_RPR_IN_HANDLER: AtomicU64 = AtomicU64::new(0);

fn sgi5_handler(_intid: u32) {
    let n = SGI5_TAKEN.fetch_add(1, Ordering::Relaxed) + 1;
    if n == 1 {
        SGI5_RPR_IN_HANDLER.store(gic::running_priority(), Ordering::Relaxed);
        gic::leave_active();
    }
}

fn take_two(a: u32, b: u32) -> (u32, u32) {
    PRIO_LEN.store(0, Ordering::Relaxed);
    gic::set_pending(a);
    gic::set_pending(b);
    // Both are in the GIC; with IRQs masked nothing is taken yet.
    ensure!(
        ACTIVE,
        gic::is_pending(a) && gic::is_pending(b),
        "SPIs {a} and {b} not both pending"
    );
    gic::irq_enable();
    let ok = cpu::wait_until(TIMEOUT_US, || PRIO_LEN.load(Ordering::Relaxed) >= 2);
    cpu::wait_until(QUIET_US / 4, || false);
    gic::irq_disable();
    let len = PRIO_LEN.load(Ordering::Relaxed);
    ensure!(
        ACTIVE,
        ok && len == 2,
        "{len} deliveries of SPIs {a} and {b}, expected 2"
    );
    (
        PRIO_ORDER[0].load(Ordering::Relaxed),
        PRIO_ORDER[1].load(Ordering::Relaxed),
    )
}

pub fn active(boot: &'static BootInfo) -> ! {
    init(ACTIVE);
    let me = boot.cpus()[0];

    // An SGI left active blocks its next delivery until ICACTIVER clears it.
    gic::set_eoi_mode(true);
    ensure!(
        ACTIVE,
        gic::icc_ctlr() & 2 != 0,
        "ICC_CTLR_EL1 = {:#x}: EOImode did not stick",
        gic::icc_ctlr()
    );
    gic::set_handler(ACTIVE_SGI, sgi5_handler);
    gic::set_priority(ACTIVE_SGI, 0x60);
    gic::enable(ACTIVE_SGI);
    gic::irq_enable();
    gic::send_sgi(ACTIVE_SGI, me);
    let ok = cpu::wait_until(TIMEOUT_US, || SGI5_TAKEN.load(Ordering::Relaxed) >= 1);
    ensure!(ACTIVE, ok, "SGI 5 sent to self was never delivered");
    let rpr = SGI5_RPR_IN_HANDLER.load(Ordering::Relaxed);
    ensure!(
        ACTIVE,
        rpr == 0x60,
        "running priority in the handler was {rpr:#x}, expected 0x60"
    );
    ensure!(
        ACTIVE,
        gic::is_active(ACTIVE_SGI),
        "after EOIR without DIR, SGI 5 does not read active in GICR_ISACTIVER0"
    );
    let rpr = gic::running_priority();
    ensure!(
        ACTIVE,
        rpr == 0xff,
        "running priority after the priority drop is {rpr:#x}, expected idle (0xff)"
    );
    println!("active: EOImode 1: SGI 5 taken at priority 0x60, EOIR without DIR: priority dropped, still active");
    gic::send_sgi(ACTIVE_SGI, me);
    cpu::wait_until(QUIET_US, || false);
    let n = SGI5_TAKEN.load(Ordering::Relaxed);
    ensure!(
        ACTIVE,
        n == 1,
        "SGI 5 was delivered again while still active ({n} deliveries)"
    );
    ensure!(
        ACTIVE,
        gic::is_pending(ACTIVE_SGI) && gic::is_active(ACTIVE_SGI),
        "SGI 5 sent again: pending {} active {}, expected both",
        gic::is_pending(ACTIVE_SGI),
        gic::is_active(ACTIVE_SGI)
    );
    println!(
        "active: SGI 5 sent again while active: pending and active, not delivered in {} ms",
        QUIET_US / 1000
    );
    gic::clear_active(ACTIVE_SGI);
    let ok = cpu::wait_until(TIMEOUT_US, || SGI5_TAKEN.load(Ordering::Relaxed) >= 2);
    cpu::wait_until(QUIET_US, || false);
    let n = SGI5_TAKEN.load(Ordering::Relaxed);
    ensure!(
        ACTIVE,
        ok && n == 2,
        "after GICR_ICACTIVER0 cleared SGI 5: {n} deliveries in all, expected 2"
    );
    ensure!(
        ACTIVE,
        !gic::is_active(ACTIVE_SGI) && !gic::is_pending(ACTIVE_SGI),
        "SGI 5 after its second delivery: pending {} active {}",
        gic::is_pending(ACTIVE_SGI),
        gic::is_active(ACTIVE_SGI)
    );
    println!(
        "active: GICR_ICACTIVER0 bit 5 cleared it: the pending SGI 5 was delivered, exactly once"
    );
    gic::set_eoi_mode(false);

    // A disabled-but-pending SPI is delivered when enabled.
    gic::set_handler(SPI_ENABLE, log_handler);
    gic::configure(SPI_ENABLE, Trigger::Edge);
    gic::set_priority(SPI_ENABLE, 0x80);
    gic::route_spi(SPI_ENABLE, me);
    gic::disable(SPI_ENABLE);
    PRIO_LEN.store(0, Ordering::Relaxed);
    gic::set_pending(SPI_ENABLE);
    cpu::wait_until(QUIET_US, || false);
    let n = PRIO_LEN.load(Ordering::Relaxed);
    ensure!(ACTIVE, n == 0, "disabled SPI {SPI_ENABLE} was delivered");
    ensure!(
        ACTIVE,
        gic::is_pending(SPI_ENABLE),
        "disabled SPI {SPI_ENABLE} does not read pending"
    );
    gic::enable(SPI_ENABLE);
    let ok = cpu::wait_until(TIMEOUT_US, || PRIO_LEN.load(Ordering::Relaxed) >= 1);
    cpu::wait_until(QUIET_US, || false);
    let n = PRIO_LEN.load(Ordering::Relaxed);
    ensure!(
        ACTIVE,
        ok && n == 1,
        "after enabling the pending SPI {SPI_ENABLE}: {n} deliveries, expected 1"
    );
    println!(
        "active: SPI {SPI_ENABLE} pending while disabled: not delivered; enabled: delivered once"
    );
    gic::irq_disable();

    // Changing the priority of a pending SPI changes which is taken first.
    for intid in [SPI_A, SPI_B] {
        gic::set_handler(intid, log_handler);
        gic::configure(intid, Trigger::Edge);
        gic::route_spi(intid, me);
        gic::enable(intid);
    }
    gic::set_priority(SPI_A, 0x80);
    gic::set_priority(SPI_B, 0x40);
    let first = take_two(SPI_A, SPI_B);
    ensure!(
        ACTIVE,
        first == (SPI_B, SPI_A),
        "SPI {SPI_A} at 0x80 and SPI {SPI_B} at 0x40 taken as {first:?}"
    );
    println!("active: SPI {SPI_A} at 0x80 and SPI {SPI_B} at 0x40 pending: {SPI_B} taken first");
    gic::set_priority(SPI_A, 0x80);
    PRIO_LEN.store(0, Ordering::Relaxed);
    gic::set_pending(SPI_A);
    gic::set_pending(SPI_B);
    // Make sure the hypervisor has looked at both (an exit with them
    // pending) before the change.
    let hp = gic::highest_pending();
    ensure!(
        ACTIVE,
        hp == SPI_B,
        "ICC_HPPIR1_EL1 = {hp} with SPIs {SPI_A} (0x80) and {SPI_B} (0x40) pending"
    );
    gic::set_priority(SPI_A, 0x20);
    let hp = gic::highest_pending();
    gic::irq_enable();
    let ok = cpu::wait_until(TIMEOUT_US, || PRIO_LEN.load(Ordering::Relaxed) >= 2);
    cpu::wait_until(QUIET_US / 4, || false);
    gic::irq_disable();
    let len = PRIO_LEN.load(Ordering::Relaxed);
    ensure!(ACTIVE, ok && len == 2, "{len} deliveries, expected 2");
    let second = (
        PRIO_ORDER[0].load(Ordering::Relaxed),
        PRIO_ORDER[1].load(Ordering::Relaxed),
    );
    ensure!(
        ACTIVE,
        second == (SPI_A, SPI_B),
        "SPI {SPI_A} raised to 0x20 while pending (SPI {SPI_B} at 0x40): taken as {second:?}, HPPIR1 then {hp}"
    );
    println!("active: SPI {SPI_A} raised to 0x20 while pending: {SPI_A} taken first (HPPIR1 {hp})");
    report::pass(ACTIVE)
}

// ---------------------------------------------------------------------------
// vtimer: the virtual timer, 100 times on each of 4 vCPUs (or
// `vigil.vtimer.cpus=<n>`, 1..=4).

const VTIMER: &str = "vtimer";
const VTIMER_SHOTS: u32 = 100;
/// How far ahead each deadline is.
const VTIMER_AHEAD_US: u64 = 300;
/// Lateness that means the timer is broken rather than the host slow
/// (TCG on a loaded host: a few ms to a few tens of ms, and a vCPU thread
/// may be descheduled for longer; "never early" is what the architecture
/// promises, this only catches an interrupt that never comes in time).
const VTIMER_LATE_LIMIT_US: u64 = 5_000_000;
const CNTV_CTL_ENABLE: u64 = 1;
const CNTV_CTL_IMASK: u64 = 2;
const CNTV_CTL_ISTATUS: u64 = 4;

static VT_DEADLINE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static VT_COUNT: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
static VT_WORST: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static VT_EARLY: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static VT_NOT_FIRING: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
static VT_TICKS_AHEAD: AtomicU64 = AtomicU64::new(0);
static VT_DONE: AtomicUsize = AtomicUsize::new(0);
static VT_FAILED: AtomicBool = AtomicBool::new(false);

fn cntv_ctl() -> u64 {
    let v: u64;
    // SAFETY: reading CNTV_CTL_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntv_ctl_el0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn set_cntv_ctl(v: u64) {
    // SAFETY: programming this vCPU's virtual timer only changes when its
    // PPI 27 fires.
    unsafe { asm!("msr cntv_ctl_el0, {}", "isb", in(reg) v, options(nostack, preserves_flags)) };
}

fn set_cntv_cval(v: u64) {
    // SAFETY: as in `set_cntv_ctl`.
    unsafe { asm!("msr cntv_cval_el0, {}", "isb", in(reg) v, options(nostack, preserves_flags)) };
}

fn vtimer_arm(me: usize) {
    let deadline = cpu::counter() + VT_TICKS_AHEAD.load(Ordering::Relaxed);
    VT_DEADLINE[me].store(deadline, Ordering::Relaxed);
    set_cntv_cval(deadline);
    set_cntv_ctl(CNTV_CTL_ENABLE);
}

fn vtimer_handler(_intid: u32) {
    let now = cpu::counter();
    let me = cpu::index() % MAX_CPUS;
    let ctl = cntv_ctl();
    let deadline = VT_DEADLINE[me].load(Ordering::Relaxed);
    if ctl & CNTV_CTL_ISTATUS == 0 {
        VT_NOT_FIRING[me].fetch_add(1, Ordering::Relaxed);
    }
    if now < deadline {
        VT_EARLY[me].fetch_max(deadline - now, Ordering::Relaxed);
    } else {
        VT_WORST[me].fetch_max(now - deadline, Ordering::Relaxed);
    }
    let n = VT_COUNT[me].fetch_add(1, Ordering::Relaxed) + 1;
    if n < VTIMER_SHOTS {
        vtimer_arm(me);
    } else {
        set_cntv_ctl(CNTV_CTL_ENABLE | CNTV_CTL_IMASK);
    }
}

fn vtimer_secondary(context: u64) -> ! {
    gic::init_cpu();
    vtimer_worker((context & 0xff) as usize);
    cpu::park()
}

fn vtimer_worker(me: usize) {
    gic::set_priority(gic::VTIMER_PPI, 0x80);
    gic::enable(gic::VTIMER_PPI);
    gic::irq_enable();
    vtimer_arm(me);
    let total_us = VTIMER_AHEAD_US * u64::from(VTIMER_SHOTS) + 20 * TIMEOUT_US;
    // Wait in WFI (IRQs masked around the check, so no interrupt taken
    // between the check and the WFI is missed): the timer must wake the
    // vCPU as well as interrupt it.
    let t0 = cpu::now_us();
    let done = || VT_COUNT[me].load(Ordering::Relaxed) >= VTIMER_SHOTS;
    loop {
        gic::irq_disable();
        if done() || cpu::now_us() - t0 >= total_us {
            break;
        }
        gic::wait_for_interrupt();
        gic::irq_enable();
    }
    gic::irq_enable();
    let ok = done();
    if !ok {
        VT_FAILED.store(true, Ordering::Relaxed);
    }
    // A delivery after the timer was masked would show up now.
    cpu::wait_until(QUIET_US, || false);
    gic::irq_disable();
    set_cntv_ctl(0);
    VT_DONE.fetch_add(1, Ordering::Release);
}

pub fn vtimer(boot: &'static BootInfo) -> ! {
    init(VTIMER);
    let freq = cpu::counter_frequency();
    let ahead = freq * VTIMER_AHEAD_US / 1_000_000;
    VT_TICKS_AHEAD.store(ahead.max(1), Ordering::Relaxed);
    println!("vtimer: counter at {freq} Hz, deadlines {VTIMER_AHEAD_US} us ({ahead} ticks) ahead, {VTIMER_SHOTS} per vCPU");
    gic::set_handler(gic::VTIMER_PPI, vtimer_handler);
    let cpus = boot
        .bootarg("vigil.vtimer.cpus")
        .and_then(|s| s.parse().ok())
        .unwrap_or(4usize)
        .clamp(1, 4);
    start_secondaries(VTIMER, boot, cpus, vtimer_secondary);
    vtimer_worker(0);
    if !cpu::wait_until(30 * TIMEOUT_US, || VT_DONE.load(Ordering::Acquire) == cpus) {
        fail!(
            VTIMER,
            "only {} vCPUs finished",
            VT_DONE.load(Ordering::Acquire)
        );
    }
    let us = |ticks: u64| ticks * 1_000_000 / freq.max(1);
    let mut worst = 0;
    for c in 0..cpus {
        let n = VT_COUNT[c].load(Ordering::Relaxed);
        let late = VT_WORST[c].load(Ordering::Relaxed);
        let early = VT_EARLY[c].load(Ordering::Relaxed);
        let not_firing = VT_NOT_FIRING[c].load(Ordering::Relaxed);
        println!(
            "vtimer: cpu {c}: {n} interrupts, {}, worst lateness {late} ticks ({} us)",
            if early == 0 {
                "none early"
            } else {
                "SOME EARLY"
            },
            us(late)
        );
        ensure!(
            VTIMER,
            early == 0,
            "cpu {c}: an interrupt came {early} ticks before its deadline"
        );
        ensure!(
            VTIMER,
            not_firing == 0,
            "cpu {c}: {not_firing} interrupts with CNTV_CTL_EL0.ISTATUS clear"
        );
        ensure!(
            VTIMER,
            n == VTIMER_SHOTS,
            "cpu {c}: {n} timer interrupts, expected exactly {VTIMER_SHOTS}"
        );
        ensure!(
            VTIMER,
            us(late) <= VTIMER_LATE_LIMIT_US,
            "cpu {c}: an interrupt came {} us after its deadline (limit {VTIMER_LATE_LIMIT_US} us)",
            us(late)
        );
        worst = worst.max(late);
    }
    ensure!(
        VTIMER,
        !VT_FAILED.load(Ordering::Relaxed),
        "a vCPU timed out"
    );
    println!(
        "vtimer: {} interrupts on {cpus} vCPUs, none early, worst lateness {worst} ticks ({} us)",
        cpus as u32 * VTIMER_SHOTS,
        us(worst)
    );
    report::pass(VTIMER)
}

// ---------------------------------------------------------------------------
// uart-level: the PL011's TX interrupt on SPI 33, a level line.

const UART: &str = "uart-level";
const UART_SPI: u32 = 33;
const UART_IMSC: u64 = vigil_guest::console::PL011_BASE + 0x38;
const UART_RIS: u64 = vigil_guest::console::PL011_BASE + 0x3c;
const UART_MIS: u64 = vigil_guest::console::PL011_BASE + 0x40;
const TXIM: u32 = 1 << 5;
const UART_DELIVERIES: u32 = 5;
static UART_TAKEN: AtomicU32 = AtomicU32::new(0);
static UART_MIS_SEEN: AtomicU32 = AtomicU32::new(0);

fn uart_read(addr: u64) -> u32 {
    // SAFETY: a 32-bit PL011 register of the VM's UART; reading it has no
    // memory effect.
    unsafe { mmio::read32(addr) }
}

fn uart_write(addr: u64, v: u32) {
    // SAFETY: a 32-bit PL011 register of the VM's UART; IMSC only changes
    // which interrupts the UART signals.
    unsafe { mmio::write32(addr, v) }
}

fn uart_handler(_intid: u32) {
    UART_MIS_SEEN.fetch_or(uart_read(UART_MIS), Ordering::Relaxed);
    let n = UART_TAKEN.fetch_add(1, Ordering::Relaxed) + 1;
    if n >= UART_DELIVERIES {
        uart_write(UART_IMSC, uart_read(UART_IMSC) & !TXIM);
    }
}

pub fn uart_level(boot: &'static BootInfo) -> ! {
    init(UART);
    let me = boot.cpus()[0];
    gic::irq_disable();
    gic::set_handler(UART_SPI, uart_handler);
    gic::configure(UART_SPI, Trigger::Level);
    gic::route_spi(UART_SPI, me);
    gic::set_priority(UART_SPI, 0x80);
    gic::enable(UART_SPI);
    ensure!(
        UART,
        !gic::is_pending(UART_SPI),
        "SPI 33 pending before IMSC.TXIM was set"
    );
    uart_write(UART_IMSC, uart_read(UART_IMSC) | TXIM);
    let ris = uart_read(UART_RIS);
    ensure!(
        UART,
        ris & TXIM != 0,
        "PL011 RIS = {ris:#x}: no TX interrupt with an empty TX FIFO"
    );
    ensure!(
        UART,
        gic::is_pending(UART_SPI),
        "IMSC.TXIM set (RIS {ris:#x}): SPI 33 does not read pending in GICD_ISPENDR1"
    );
    println!("uart-level: IMSC.TXIM set: PL011 RIS {ris:#x}, SPI 33 (level) pending");
    // A level interrupt stays pending while its line is high: ICPENDR
    // clears only the latch.
    gic::clear_pending(UART_SPI);
    ensure!(
        UART,
        gic::is_pending(UART_SPI),
        "GICD_ICPENDR1 bit 1 cleared SPI 33 while its line is high"
    );
    println!("uart-level: GICD_ICPENDR on SPI 33 with the line high: still pending");
    gic::irq_enable();
    let ok = cpu::wait_until(TIMEOUT_US, || {
        UART_TAKEN.load(Ordering::Relaxed) >= UART_DELIVERIES
    });
    cpu::wait_until(QUIET_US, || false);
    gic::irq_disable();
    let n = UART_TAKEN.load(Ordering::Relaxed);
    ensure!(
        UART,
        ok,
        "SPI 33 delivered {n} times while the line stayed high, expected {UART_DELIVERIES}"
    );
    ensure!(
        UART,
        UART_MIS_SEEN.load(Ordering::Relaxed) & TXIM != 0,
        "PL011 MIS in the handler lacked TXIM"
    );
    println!("uart-level: SPI 33 re-delivered after each EOI while the line stayed high: {UART_DELIVERIES} deliveries");
    ensure!(
        UART,
        n == UART_DELIVERIES,
        "SPI 33 delivered {n} times: again after IMSC was cleared (line low)"
    );
    let mis = uart_read(UART_MIS);
    ensure!(UART, mis == 0, "PL011 MIS = {mis:#x} after IMSC cleared");
    ensure!(
        UART,
        !gic::is_pending(UART_SPI) && !gic::is_active(UART_SPI),
        "SPI 33 after the line dropped: pending {} active {}",
        gic::is_pending(UART_SPI),
        gic::is_active(UART_SPI)
    );
    println!(
        "uart-level: IMSC cleared before the 5th EOI: line low, no delivery in {} ms, exactly {UART_DELIVERIES} in all",
        QUIET_US / 1000
    );
    report::pass(UART)
}
