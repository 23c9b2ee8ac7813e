//! The virtual ITS (issue 6): `its` and `its-fuzz`.
//!
//! `its` drives the ITS the way Linux's driver does (BASER/CBASER setup,
//! PROPBASER/PENDBASER and EnableLPIs on every vCPU, MAPC/MAPD/MAPTI) and
//! checks that every LPI is delivered exactly when the architecture says
//! (IHI 0069 ch. 5): INT, INV, INVALL, priority, MOVI, MOVALL, DISCARD,
//! CLEAR, SYNC, MAPD V=0 and re-MAPD, and GITS_TRANSLATER. It runs on 2 to
//! 4 vCPUs: collection `c` lives on vCPU `c % n`.
//!
//! `its-fuzz` issues 100,000 random commands, register rewrites included,
//! interleaved with INTs of one valid mapping that must each be delivered.
//!
//! vCPU 0 drives the ITS; the others only take LPIs. To keep an LPI pending
//! on a vCPU without it being acknowledged, that vCPU is "held": it spins
//! with IRQs masked until released.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use vigil_guest::gic;
use vigil_guest::its::{self, Bump, Its, ItsCommand, ItsError, PropTable, RdBase};
use vigil_guest::{cpu, ensure, fail, println, psci, report, BootInfo, MAX_CPUS};

/// How long any wait for a delivery or another vCPU may take.
const TIMEOUT_US: u64 = 10_000_000;
/// How long "must not be delivered" (or "no extra delivery") is watched.
const QUIET_US: u64 = 100_000;
/// LPIs whose deliveries are counted per vCPU: `LPI_BASE..+TRACKED`.
const TRACKED: usize = 1024;
/// The SGI that wakes a secondary from WFI to look at its hold flag.
const WAKE_SGI: u32 = 7;

/// COUNT[cpu][intid - 8192]: deliveries of each tracked LPI per vCPU.
static COUNT: [[AtomicU32; TRACKED]; MAX_CPUS] =
    [const { [const { AtomicU32::new(0) }; TRACKED] }; MAX_CPUS];
/// Deliveries of LPIs outside the tracked range.
static UNTRACKED: AtomicU32 = AtomicU32::new(0);
/// The order of LPIs taken on vCPU 0 while RECORD is set.
static ORDER: [AtomicU32; 8] = [const { AtomicU32::new(0) }; 8];
static ORDER_LEN: AtomicUsize = AtomicUsize::new(0);
static RECORD: AtomicBool = AtomicBool::new(false);

static HOLD: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static HELD: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static READY: AtomicUsize = AtomicUsize::new(0);
static LPIS_ON: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static MPIDR: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// The pending table of each vCPU and the property table (base, id bits).
static PEND: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static PROP_BASE: AtomicU64 = AtomicU64::new(0);
static PROP_BITS: AtomicU32 = AtomicU32::new(0);

fn lpi_handler(intid: u32) {
    let me = cpu::index() % MAX_CPUS;
    let i = (intid - gic::LPI_BASE) as usize;
    if i < TRACKED {
        COUNT[me][i].fetch_add(1, Ordering::Relaxed);
    } else {
        UNTRACKED.fetch_add(1, Ordering::Relaxed);
    }
    if me == 0 && RECORD.load(Ordering::Relaxed) {
        let k = ORDER_LEN.fetch_add(1, Ordering::Relaxed);
        if k < ORDER.len() {
            ORDER[k].store(intid, Ordering::Relaxed);
        }
    }
}

fn wake_handler(_: u32) {}

fn prop_table() -> PropTable {
    PropTable {
        base: PROP_BASE.load(Ordering::Acquire),
        id_bits: PROP_BITS.load(Ordering::Acquire),
    }
}

/// Secondaries: GIC and LPIs on, then take interrupts until the VM ends,
/// spinning with IRQs masked while held.
fn secondary(context: u64) -> ! {
    let me = (context & 0xff) as usize % MAX_CPUS;
    gic::init_cpu();
    gic::set_priority(WAKE_SGI, 0x80);
    gic::enable(WAKE_SGI);
    its::enable_lpis_with(&prop_table(), PEND[me].load(Ordering::Acquire));
    LPIS_ON[me].store(gic::lpis_enabled(), Ordering::Relaxed);
    READY.fetch_add(1, Ordering::Release);
    gic::irq_enable();
    loop {
        gic::irq_disable();
        if HOLD[me].load(Ordering::Acquire) {
            HELD[me].store(true, Ordering::Release);
            while HOLD[me].load(Ordering::Acquire) {
                core::hint::spin_loop();
            }
            HELD[me].store(false, Ordering::Release);
        } else {
            gic::wait_for_interrupt();
        }
        gic::irq_enable();
    }
}

/// The ITS and LPI state every scenario sets up.
struct Setup {
    name: &'static str,
    n: usize,
    its: Its,
    prop: PropTable,
    mem: Bump,
    rd: [RdBase; MAX_CPUS],
}

impl Setup {
    /// GIC, LPI tables and EnableLPIs on `n` vCPUs, the ITS, and MAPC of
    /// collections `0..collections` to vCPU `icid % n` (then SYNC).
    fn new(name: &'static str, boot: &'static BootInfo, n: usize, collections: u16) -> Self {
        ensure!(
            name,
            boot.cpus().len() >= n,
            "{} vCPUs in the device tree, need {n}",
            boot.cpus().len()
        );
        gic::init_distributor();
        gic::init_cpu();
        ensure!(name, gic::lpis_supported(), "GICD_TYPER.LPIS is 0");
        let id_bits = gic::lpi_id_bits();
        ensure!(
            name,
            id_bits >= 14,
            "GICD_TYPER.IDbits gives {id_bits} INTID bits, LPIs need 14"
        );
        ensure!(name, gic::redistributor_has_lpis(), "GICR_TYPER.PLPIS is 0");
        let id_bits = id_bits.min(16);
        let mut mem = Bump::above_image(boot);
        let prop = PropTable::new(&mut mem, id_bits).unwrap_or_else(|e| fail!(name, "{e:?}"));
        PROP_BASE.store(prop.base, Ordering::Release);
        PROP_BITS.store(prop.id_bits, Ordering::Release);
        let pend_size = its::align_up((1u64 << id_bits) / 8, 0x1_0000);
        for (c, pend) in PEND.iter().enumerate().take(n) {
            let Some(p) = mem.alloc(pend_size, 0x1_0000) else {
                fail!(name, "no memory for vCPU {c}'s pending table");
            };
            pend.store(p, Ordering::Release);
        }
        for (c, &mpidr) in boot.cpus().iter().enumerate().take(n) {
            MPIDR[c].store(mpidr, Ordering::Relaxed);
        }
        gic::set_lpi_handler(lpi_handler);
        gic::set_handler(WAKE_SGI, wake_handler);
        its::enable_lpis_with(&prop, PEND[0].load(Ordering::Relaxed));
        LPIS_ON[0].store(gic::lpis_enabled(), Ordering::Relaxed);
        let propbaser = gic::propbaser();
        ensure!(
            name,
            propbaser == prop.propbaser(),
            "GICR_PROPBASER reads {propbaser:#x}, wrote {:#x}",
            prop.propbaser()
        );
        vigil_guest::set_secondary_main(secondary);
        for (i, &mpidr) in boot.cpus().iter().enumerate().take(n).skip(1) {
            let r = psci::cpu_on(mpidr, i as u64);
            ensure!(
                name,
                r == 0,
                "CPU_ON of vCPU {i}: {r} ({})",
                psci::error_name(r)
            );
        }
        if !cpu::wait_until(TIMEOUT_US, || READY.load(Ordering::Acquire) == n - 1) {
            fail!(
                name,
                "only {} of {} secondaries came up",
                READY.load(Ordering::Acquire),
                n - 1
            );
        }
        for (c, on) in LPIS_ON.iter().enumerate().take(n) {
            ensure!(
                name,
                on.load(Ordering::Relaxed),
                "vCPU {c}: GICR_CTLR.EnableLPIs does not read 1"
            );
        }
        gic::irq_enable();
        println!(
            "{name}: GICD_TYPER.LPIS 1, {id_bits} INTID bits used; PROPBASER {propbaser:#x}, PENDBASER and EnableLPIs on {n} vCPUs"
        );
        let its =
            Its::init(&mut mem, 16, 13, 16).unwrap_or_else(|e| fail!(name, "ITS init: {e:?}"));
        let t = its.typer;
        println!(
            "{name}: GITS_TYPER {:#x}: Physical {}, Devbits {}, IDbits {}, ITT entry {} bytes, PTA {}; device table BASER{} {:#x}, collection table BASER{} {:#x}, CBASER {:#x}",
            t.0,
            u8::from(t.physical()),
            t.dev_bits(),
            t.id_bits(),
            t.itt_entry_size(),
            u8::from(t.pta()),
            its.device_baser.0,
            its.device_baser.1,
            its.collection_baser.0,
            its.collection_baser.1,
            its.cbaser
        );
        let mut rd = [RdBase(0); MAX_CPUS];
        for (c, slot) in rd.iter_mut().enumerate().take(n) {
            *slot = its
                .rdbase(MPIDR[c].load(Ordering::Relaxed))
                .unwrap_or_else(|| fail!(name, "no redistributor for vCPU {c}"));
        }
        let mut s = Self {
            name,
            n,
            its,
            prop,
            mem,
            rd,
        };
        for icid in 0..collections {
            s.cmd(ItsCommand::mapc(icid, s.rd[s.vcpu(icid)], true));
        }
        for c in 0..n {
            s.cmd(ItsCommand::sync(s.rd[c]));
        }
        s
    }

    /// The vCPU collection `icid` was mapped to.
    fn vcpu(&self, icid: u16) -> usize {
        usize::from(icid) % self.n
    }

    fn check(&self, what: &str, r: Result<(), ItsError>) {
        if let Err(e) = r {
            fail!(self.name, "{what}: {e:?}");
        }
    }

    /// Sends one command and waits until the ITS consumed it.
    fn cmd(&mut self, c: ItsCommand) {
        let r = self.its.send(c);
        self.check("command", r);
    }

    fn cmds(&mut self, cs: &[ItsCommand]) {
        let r = self.its.send_all(cs);
        self.check("commands", r);
    }

    fn itt(&mut self, event_bits: u8) -> u64 {
        let bytes = self.its.itt_bytes(event_bits);
        match self.mem.alloc(bytes, 256) {
            Some(a) => a,
            None => fail!(self.name, "no memory for an ITT"),
        }
    }
}

fn count(c: usize, intid: u32) -> u32 {
    COUNT[c % MAX_CPUS][(intid - gic::LPI_BASE) as usize].load(Ordering::Relaxed)
}

fn snapshot(intid: u32) -> [u32; MAX_CPUS] {
    core::array::from_fn(|c| count(c, intid))
}

fn total(intid: u32) -> u32 {
    (0..MAX_CPUS).map(|c| count(c, intid)).sum()
}

/// `intid` must be delivered exactly once more, on vCPU `on`, and nowhere
/// else, within the timeout (then nothing more for QUIET_US).
fn expect_once(name: &str, what: &str, intid: u32, on: usize, before: [u32; MAX_CPUS]) {
    let arrived = cpu::wait_until(TIMEOUT_US, || total(intid) > before.iter().sum::<u32>());
    cpu::wait_until(QUIET_US, || false);
    let now = snapshot(intid);
    let delta: [u32; MAX_CPUS] = core::array::from_fn(|c| now[c] - before[c]);
    if !arrived {
        fail!(
            name,
            "{what}: LPI {intid} not delivered within {} ms (expected on vCPU {on})",
            TIMEOUT_US / 1000
        );
    }
    let expected: [u32; MAX_CPUS] = core::array::from_fn(|c| u32::from(c == on));
    if delta != expected {
        fail!(
            name,
            "{what}: LPI {intid} deliveries per vCPU {:?}, expected exactly one on vCPU {on}",
            &delta[..4]
        );
    }
}

/// `intid` must not be delivered anywhere for QUIET_US.
fn expect_none(name: &str, what: &str, intid: u32, before: [u32; MAX_CPUS]) {
    cpu::wait_until(QUIET_US, || false);
    let now = snapshot(intid);
    if now != before {
        let delta: [u32; MAX_CPUS] = core::array::from_fn(|c| now[c] - before[c]);
        fail!(
            name,
            "{what}: LPI {intid} delivered (per vCPU {:?}), expected nothing",
            &delta[..4]
        );
    }
}

/// Makes vCPU `c` spin with IRQs masked (vCPU 0: just mask).
fn hold(name: &str, c: usize) {
    if c == 0 {
        gic::irq_disable();
        return;
    }
    HOLD[c].store(true, Ordering::Release);
    gic::send_sgi(WAKE_SGI, MPIDR[c].load(Ordering::Relaxed));
    if !cpu::wait_until(TIMEOUT_US, || HELD[c].load(Ordering::Acquire)) {
        fail!(name, "vCPU {c} did not stop to be held");
    }
}

fn release(name: &str, c: usize) {
    if c == 0 {
        gic::irq_enable();
        return;
    }
    HOLD[c].store(false, Ordering::Release);
    if !cpu::wait_until(TIMEOUT_US, || !HELD[c].load(Ordering::Acquire)) {
        fail!(name, "vCPU {c} did not resume");
    }
}

fn lpi(event: u32) -> u32 {
    gic::LPI_BASE + event
}

// ---------------------------------------------------------------------------
// its

const ITS: &str = "its";
/// The device of most checks and its EventID bits.
const DEV: u32 = 1;
const DEV_EVENT_BITS: u8 = 5;

/// (event, ICID, priority, enabled) of the events mapped at the start; the
/// event's LPI is 8192 + event.
const EVENTS: [(u32, u16, u8, bool); 16] = [
    (0, 0, 0xa0, true), // INT, one per collection
    (1, 1, 0xa0, true),
    (2, 2, 0xa0, true),
    (3, 3, 0xa0, true),
    (4, 0, 0xa0, false),  // enabled by INV
    (5, 1, 0xa0, false),  // enabled by INVALL
    (6, 0, 0x80, true),   // priority A
    (7, 0, 0x40, true),   // priority B
    (8, 1, 0xa0, true),   // MOVI
    (9, 1, 0xa0, true),   // MOVI while pending
    (10, 2, 0xa0, true),  // MOVALL
    (11, 3, 0xa0, true),  // DISCARD
    (12, 1, 0xa0, true),  // DISCARD while pending
    (13, 0, 0xa0, false), // CLEAR while disabled
    (14, 3, 0xa0, true),  // CLEAR while held
    (15, 2, 0xa0, true),  // after MAPC back
];

fn order() -> ([u32; 8], usize) {
    let len = ORDER_LEN.load(Ordering::Relaxed).min(8);
    (
        core::array::from_fn(|i| ORDER[i].load(Ordering::Relaxed)),
        len,
    )
}

/// INT A and B together on vCPU 0 (masked while queued), then the order
/// they were taken in.
fn two_pending_order(s: &mut Setup, a: u32, b: u32) -> [u32; 2] {
    ORDER_LEN.store(0, Ordering::Relaxed);
    RECORD.store(true, Ordering::Relaxed);
    gic::irq_disable();
    s.cmds(&[ItsCommand::int(DEV, a), ItsCommand::int(DEV, b)]);
    gic::irq_enable();
    let got = cpu::wait_until(TIMEOUT_US, || ORDER_LEN.load(Ordering::Relaxed) >= 2);
    cpu::wait_until(QUIET_US, || false);
    RECORD.store(false, Ordering::Relaxed);
    let (o, len) = order();
    ensure!(
        ITS,
        got && len == 2,
        "INT of LPIs {} and {}: vCPU 0 took {:?}, expected both once",
        lpi(a),
        lpi(b),
        &o[..len]
    );
    [o[0], o[1]]
}

pub fn run(boot: &'static BootInfo) -> ! {
    let start = cpu::now_us();
    let n = boot.cpus().len().min(4);
    ensure!(ITS, n >= 2, "needs at least 2 vCPUs, has {n}");
    let mut s = Setup::new(ITS, boot, n, 4);
    println!(
        "its: MAPC of collections 0-3 to vCPUs {} {} {} {} (RDbase {} per GITS_TYPER.PTA), SYNC",
        s.vcpu(0),
        s.vcpu(1),
        s.vcpu(2),
        s.vcpu(3),
        if s.its.typer.pta() {
            "address >> 16"
        } else {
            "processor number"
        }
    );

    // Device 1: 32 events, the LPIs configured first, as Linux does.
    let itt = s.itt(DEV_EVENT_BITS);
    s.cmd(ItsCommand::mapd(DEV, itt, DEV_EVENT_BITS, true));
    for &(e, _, prio, en) in &EVENTS {
        s.prop.set(lpi(e), prio, en);
    }
    for &(e, icid, _, _) in &EVENTS {
        s.its.push(ItsCommand::mapti(DEV, e, lpi(e), icid));
    }
    for icid in 0..4 {
        s.its.push(ItsCommand::invall(icid));
    }
    let r = s.its.kick();
    s.check("MAPTI", r);
    println!(
        "its: MAPD device {DEV} ({} events, ITT {itt:#x}), MAPTI of events 0-15 to LPIs 8192-8207 over collections 0-3, INVALL",
        1 << DEV_EVENT_BITS
    );
    // Nothing may have been delivered by mapping alone.
    for &(e, ..) in &EVENTS {
        ensure!(
            ITS,
            total(lpi(e)) == 0,
            "LPI {} delivered without INT",
            lpi(e)
        );
    }

    // INT: once, on the collection's vCPU.
    for e in 0..4 {
        let before = snapshot(lpi(e));
        s.cmd(ItsCommand::int(DEV, e));
        expect_once(ITS, "INT", lpi(e), s.vcpu(e as u16), before);
    }
    println!(
        "its: INT: LPIs 8192-8195 each delivered exactly once, on vCPUs {} {} {} {}",
        s.vcpu(0),
        s.vcpu(1),
        s.vcpu(2),
        s.vcpu(3)
    );

    // Disabled in the property table: not delivered until enabled + INV.
    let before = snapshot(lpi(4));
    s.cmd(ItsCommand::int(DEV, 4));
    expect_none(ITS, "INT of a disabled LPI", lpi(4), before);
    s.prop.set(lpi(4), 0xa0, true);
    s.cmd(ItsCommand::inv(DEV, 4));
    expect_once(ITS, "enable + INV", lpi(4), s.vcpu(0), before);
    let before = snapshot(lpi(5));
    s.cmd(ItsCommand::int(DEV, 5));
    expect_none(ITS, "INT of a disabled LPI", lpi(5), before);
    s.prop.set(lpi(5), 0xa0, true);
    s.cmd(ItsCommand::invall(1));
    expect_once(ITS, "enable + INVALL", lpi(5), s.vcpu(1), before);
    println!("its: LPI 8196 disabled: INT not delivered; enabled + INV: delivered exactly once");
    println!("its: LPI 8197 disabled: INT not delivered; enabled + INVALL: delivered exactly once");

    // Priority: A 0x80, B 0x40, then A 0x20 after INV.
    let first = two_pending_order(&mut s, 6, 7);
    ensure!(
        ITS,
        first == [lpi(7), lpi(6)],
        "LPIs 8198 (0x80) and 8199 (0x40) pending together: taken in order {first:?}, expected 8199 first"
    );
    s.prop.set(lpi(6), 0x20, true);
    s.cmd(ItsCommand::inv(DEV, 6));
    let second = two_pending_order(&mut s, 6, 7);
    ensure!(
        ITS,
        second == [lpi(6), lpi(7)],
        "LPI 8198 raised to 0x20 + INV, 8199 at 0x40: taken in order {second:?}, expected 8198 first"
    );
    println!("its: priority: LPIs 8198 (0x80) and 8199 (0x40) pending together: 8199 first; 8198 set to 0x20 + INV: 8198 first");

    // MOVI.
    let (old, new) = (s.vcpu(1), s.vcpu(2));
    let before = snapshot(lpi(8));
    s.cmds(&[ItsCommand::movi(DEV, 8, 2), ItsCommand::sync(s.rd[new])]);
    s.cmd(ItsCommand::int(DEV, 8));
    expect_once(ITS, "MOVI then INT", lpi(8), new, before);
    let before = snapshot(lpi(9));
    hold(ITS, old);
    s.cmd(ItsCommand::int(DEV, 9));
    cpu::wait_until(QUIET_US, || false);
    ensure!(
        ITS,
        snapshot(lpi(9)) == before,
        "LPI 8201 taken by a held vCPU"
    );
    s.cmds(&[ItsCommand::movi(DEV, 9, 2), ItsCommand::sync(s.rd[new])]);
    release(ITS, old);
    expect_once(ITS, "MOVI while pending", lpi(9), new, before);
    println!("its: MOVI collection 1 -> 2: INT delivered once on vCPU {new}; LPI pending on held vCPU {old} then MOVI: delivered once, on vCPU {new}");

    // MOVALL with the matching MAPC remap.
    let from = s.vcpu(2);
    let to = (from + 1) % n;
    let before = snapshot(lpi(10));
    hold(ITS, from);
    s.cmd(ItsCommand::int(DEV, 10));
    cpu::wait_until(QUIET_US, || false);
    ensure!(
        ITS,
        snapshot(lpi(10)) == before,
        "LPI 8202 taken by a held vCPU"
    );
    s.cmds(&[
        ItsCommand::mapc(2, s.rd[to], true),
        ItsCommand::movall(s.rd[from], s.rd[to]),
        ItsCommand::sync(s.rd[to]),
    ]);
    release(ITS, from);
    expect_once(ITS, "MAPC + MOVALL while pending", lpi(10), to, before);
    let before = snapshot(lpi(10));
    s.cmd(ItsCommand::int(DEV, 10));
    expect_once(ITS, "INT after MAPC + MOVALL", lpi(10), to, before);
    s.cmds(&[
        ItsCommand::mapc(2, s.rd[from], true),
        ItsCommand::sync(s.rd[from]),
    ]);
    let before = snapshot(lpi(15));
    s.cmd(ItsCommand::int(DEV, 15));
    expect_once(ITS, "INT after MAPC back", lpi(15), from, before);
    println!("its: LPI pending on held vCPU {from}, MAPC collection 2 -> vCPU {to} + MOVALL {from} -> {to}: delivered once, on vCPU {to}; INT again: once on vCPU {to}; MAPC back: vCPU {from}");

    // DISCARD.
    let before = snapshot(lpi(11));
    s.cmds(&[ItsCommand::discard(DEV, 11), ItsCommand::int(DEV, 11)]);
    expect_none(ITS, "DISCARD then INT", lpi(11), before);
    let held = s.vcpu(1);
    let before = snapshot(lpi(12));
    hold(ITS, held);
    s.cmd(ItsCommand::int(DEV, 12));
    cpu::wait_until(QUIET_US, || false);
    s.cmds(&[ItsCommand::discard(DEV, 12), ItsCommand::sync(s.rd[held])]);
    release(ITS, held);
    expect_none(ITS, "INT, DISCARD while pending", lpi(12), before);
    println!("its: DISCARD then INT: nothing delivered; LPI pending on held vCPU {held}, DISCARD: never delivered");

    // CLEAR.
    let before = snapshot(lpi(13));
    s.cmd(ItsCommand::int(DEV, 13));
    expect_none(ITS, "INT of a disabled LPI", lpi(13), before);
    s.cmd(ItsCommand::clear(DEV, 13));
    s.prop.set(lpi(13), 0xa0, true);
    s.cmd(ItsCommand::inv(DEV, 13));
    expect_none(
        ITS,
        "CLEAR while disabled, then enable + INV",
        lpi(13),
        before,
    );
    s.cmd(ItsCommand::int(DEV, 13));
    expect_once(ITS, "INT after CLEAR", lpi(13), s.vcpu(0), before);
    let held = s.vcpu(3);
    let before = snapshot(lpi(14));
    hold(ITS, held);
    s.cmd(ItsCommand::int(DEV, 14));
    cpu::wait_until(QUIET_US, || false);
    s.cmds(&[ItsCommand::clear(DEV, 14), ItsCommand::sync(s.rd[held])]);
    release(ITS, held);
    expect_none(ITS, "INT, CLEAR while held", lpi(14), before);
    s.cmd(ItsCommand::int(DEV, 14));
    expect_once(ITS, "INT after CLEAR", lpi(14), held, before);
    println!("its: CLEAR of LPI 8205 pending while disabled: not delivered once enabled + INV; INT: once");
    println!("its: CLEAR of LPI 8206 pending on held vCPU {held}: not delivered; INT: once");

    // SYNC on every redistributor.
    for c in 0..n {
        s.cmd(ItsCommand::sync(s.rd[c]));
        let creadr = its::read64(its::GITS_CREADR);
        ensure!(
            ITS,
            creadr == s.its.cwriter,
            "SYNC vCPU {c}: CREADR {creadr:#x}, CWRITER {:#x}",
            s.its.cwriter
        );
    }
    println!("its: SYNC of each of {n} redistributors completes: CREADR == CWRITER, not stalled");

    // MAPD V=0, then re-MAPD with another ITT size.
    s.cmd(ItsCommand::mapd(DEV, 0, 1, false));
    for e in [0, 1, 2, 3, 6] {
        let before = snapshot(lpi(e));
        s.cmd(ItsCommand::int(DEV, e));
        expect_none(ITS, "MAPD V=0 then INT", lpi(e), before);
    }
    let itt2 = s.itt(8);
    const BIG_EVENT: u32 = 200;
    const BIG_LPI: u32 = 8192 + 40;
    s.prop.set(BIG_LPI, 0xa0, true);
    s.cmds(&[
        ItsCommand::mapd(DEV, itt2, 8, true),
        ItsCommand::mapti(DEV, BIG_EVENT, BIG_LPI, 1),
        ItsCommand::inv(DEV, BIG_EVENT),
    ]);
    let before = snapshot(BIG_LPI);
    s.cmd(ItsCommand::int(DEV, BIG_EVENT));
    expect_once(
        ITS,
        "re-MAPD (256 events), MAPTI, INT",
        BIG_LPI,
        s.vcpu(1),
        before,
    );
    let before = snapshot(lpi(0));
    s.cmd(ItsCommand::int(DEV, 0));
    expect_none(ITS, "re-MAPD, INT of an old event", lpi(0), before);
    println!("its: MAPD V=0: INT of events 0-3, 6 delivers nothing; re-MAPD with 256 events: event {BIG_EVENT} -> LPI {BIG_LPI} delivered once on vCPU {}, old event 0 nothing", s.vcpu(1));

    // GITS_TRANSLATER from this vCPU: DeviceID 0.
    const T_EVENT: u32 = 3;
    const T_LPI: u32 = 8192 + 50;
    let itt0 = s.itt(4);
    s.prop.set(T_LPI, 0x90, true);
    s.cmds(&[
        ItsCommand::mapd(0, itt0, 4, true),
        ItsCommand::mapti(0, T_EVENT, T_LPI, 3),
        ItsCommand::inv(0, T_EVENT),
        ItsCommand::sync(s.rd[s.vcpu(3)]),
    ]);
    let before = snapshot(T_LPI);
    its::translate(T_EVENT);
    expect_once(ITS, "GITS_TRANSLATER write", T_LPI, s.vcpu(3), before);
    let before = snapshot(T_LPI);
    its::translate(T_EVENT + 1);
    expect_none(
        ITS,
        "GITS_TRANSLATER write of an unmapped event",
        T_LPI,
        before,
    );
    println!(
        "its: MAPD device 0, MAPTI event {T_EVENT} -> LPI {T_LPI}: GITS_TRANSLATER write delivered once on vCPU {}; unmapped event: nothing",
        s.vcpu(3)
    );

    let untracked = UNTRACKED.load(Ordering::Relaxed);
    ensure!(
        ITS,
        untracked == 0,
        "{untracked} deliveries of unexpected LPIs"
    );
    let all: u32 = (0..TRACKED as u32).map(|i| total(gic::LPI_BASE + i)).sum();
    println!(
        "its: {all} LPI deliveries on {n} vCPUs in {} ms, each exactly as expected",
        (cpu::now_us() - start) / 1000
    );
    report::pass(ITS)
}

// ---------------------------------------------------------------------------
// its-fuzz

const FUZZ: &str = "its-fuzz";
const FUZZ_COMMANDS: u64 = 100_000;
/// The one mapping the fuzzer leaves alone and keeps INTing.
const VALID_DEV: u32 = 1;
const VALID_EVENT: u32 = 0;
const VALID_LPI: u32 = 8192;
const VALID_ICID: u16 = 0;
/// Mapped after the fuzzing, to show the ITS still works.
const FINAL_EVENT: u32 = 1;
const FINAL_LPI: u32 = 8192 + 1000;

/// xorshift64*: reproducible from the printed seed (also the hostile
/// virtio client's).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const OPS: [u8; 12] = [
    0x01, 0x03, 0x04, 0x05, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
];

struct Fuzzer {
    rng: Rng,
    scratch: u64,
    ram_end: u64,
    rd: [RdBase; MAX_CPUS],
    n: usize,
}

impl Fuzzer {
    fn device(&mut self) -> u32 {
        match self.rng.below(8) {
            0..=4 => self.rng.below(8) as u32,
            5 => self.rng.below(8192) as u32,
            6 => 8192 + self.rng.below(65536 - 8192) as u32,
            _ => self.rng.next() as u32,
        }
    }

    fn event(&mut self) -> u32 {
        match self.rng.below(8) {
            0..=4 => self.rng.below(32) as u32,
            5 => self.rng.below(65536) as u32,
            _ => self.rng.next() as u32,
        }
    }

    fn icid(&mut self) -> u16 {
        match self.rng.below(8) {
            0..=5 => self.rng.below(8) as u16,
            _ => self.rng.next() as u16,
        }
    }

    fn intid(&mut self) -> u32 {
        match self.rng.below(8) {
            0..=4 => 8193 + self.rng.below(256) as u32,
            5 => self.rng.below(8192) as u32,
            6 => 8192 + self.rng.below(65536) as u32,
            _ => self.rng.next() as u32,
        }
    }

    fn rdbase(&mut self) -> RdBase {
        match self.rng.below(8) {
            0..=5 => self.rd[self.rng.below(self.n as u64) as usize],
            6 => RdBase(self.rng.below(256)),
            _ => RdBase(self.rng.next() & 0xf_ffff_ffff),
        }
    }

    /// An ITT address: mostly in the scratch area (room for 16 EventID
    /// bits), else outside RAM, straddling its end, or anywhere.
    fn itt(&mut self) -> u64 {
        match self.rng.below(8) {
            0..=4 => self.scratch + self.rng.below(2048) * 256,
            5 => self.ram_end + self.rng.below(1 << 30) * 256,
            6 => self.ram_end - 256 * (1 + self.rng.below(4)),
            _ => self.rng.next() & 0x000f_ffff_ffff_ffff,
        }
    }

    /// A random command: a well-formed one with random fields, an
    /// unimplemented command number, or 32 random bytes.
    fn command(&mut self) -> [u64; 4] {
        let c = match self.rng.below(16) {
            0..=1 => {
                let mut op = self.rng.next() as u8;
                while OPS.contains(&op) {
                    op = op.wrapping_add(1);
                }
                let mut dw = [
                    self.rng.next(),
                    self.rng.next(),
                    self.rng.next(),
                    self.rng.next(),
                ];
                dw[0] = (dw[0] & !0xff) | u64::from(op);
                return dw;
            }
            2 => {
                return [
                    self.rng.next(),
                    self.rng.next(),
                    self.rng.next(),
                    self.rng.next(),
                ]
            }
            _ => OPS[self.rng.below(OPS.len() as u64) as usize],
        };
        let cmd = match c {
            0x01 => ItsCommand::movi(self.device(), self.event(), self.icid()),
            0x03 => ItsCommand::int(self.device(), self.event()),
            0x04 => ItsCommand::clear(self.device(), self.event()),
            0x05 => ItsCommand::sync(self.rdbase()),
            0x08 => {
                let bits = self.rng.below(33) as u8;
                let valid = self.rng.below(4) != 0;
                ItsCommand::mapd(self.device(), self.itt(), bits, valid)
            }
            0x09 => ItsCommand::mapc(self.icid(), self.rdbase(), self.rng.below(8) != 0),
            0x0a => ItsCommand::mapti(self.device(), self.event(), self.intid(), self.icid()),
            0x0b => ItsCommand::mapi(self.device(), self.event(), self.icid()),
            0x0c => ItsCommand::inv(self.device(), self.event()),
            0x0d => ItsCommand::invall(self.icid()),
            0x0e => ItsCommand::movall(self.rdbase(), self.rdbase()),
            _ => ItsCommand::discard(self.device(), self.event()),
        };
        let mut dw = cmd.0;
        // Sometimes junk in the reserved bits too.
        if self.rng.below(8) == 0 {
            dw[3] |= self.rng.next() & 0xfff0_0000_0000_ffff;
        }
        dw
    }
}

/// Whether the ITS would take `dw` as touching the valid mapping (its
/// device, its collection or its LPI): such commands are not sent.
fn touches_valid(dw: &[u64; 4]) -> bool {
    let op = dw[0] as u8;
    let device = (dw[0] >> 32) as u32;
    let event = dw[1] as u32;
    let icid = dw[2] as u16;
    let pintid = (dw[1] >> 32) as u32;
    match op {
        0x01 | 0x03 | 0x04 | 0x08 | 0x0c | 0x0f => device == VALID_DEV,
        0x0a => device == VALID_DEV || pintid == VALID_LPI || pintid == FINAL_LPI,
        0x0b => device == VALID_DEV || event == VALID_LPI || event == FINAL_LPI,
        0x09 => icid == VALID_ICID,
        _ => false,
    }
}

#[derive(Default)]
struct FuzzStats {
    known: u64,
    unknown: u64,
    skipped: u64,
    batches: u64,
    ints: u64,
    cwriter_past_end: u64,
    cwriter_misaligned: u64,
    base_rewrites: u64,
    outside_ram: u64,
    translater: u64,
}

pub fn fuzz(boot: &'static BootInfo) -> ! {
    let start = cpu::now_us();
    let n = boot.cpus().len().clamp(1, 4);
    let mut s = Setup::new(FUZZ, boot, n, n as u16);
    let Some(scratch) = s.mem.alloc(0x10_0000, 0x1_0000) else {
        fail!(FUZZ, "no memory for the ITT scratch area");
    };
    let itt = s.itt(4);
    s.prop.set(VALID_LPI, 0xa0, true);
    s.prop.set(FINAL_LPI, 0xa0, true);
    s.cmds(&[
        ItsCommand::mapd(VALID_DEV, itt, 4, true),
        ItsCommand::mapti(VALID_DEV, VALID_EVENT, VALID_LPI, VALID_ICID),
        ItsCommand::inv(VALID_DEV, VALID_EVENT),
    ]);
    let seed = 0x5eed_1c0f_fee0_0001 ^ cpu::counter();
    let mut f = Fuzzer {
        rng: Rng(seed | 1),
        scratch,
        ram_end: boot.ram.end,
        rd: s.rd,
        n,
    };
    println!(
        "its-fuzz: seed {seed:#x}; valid mapping device {VALID_DEV} event {VALID_EVENT} -> LPI {VALID_LPI}, collection {VALID_ICID} on vCPU 0; {} command slots",
        s.its.queue_size / its::CMD_SIZE
    );
    let mut st = FuzzStats::default();
    let valid_cbaser = s.its.cbaser;
    let (dev_n, valid_dev_baser) = s.its.device_baser;
    let (col_n, valid_col_baser) = s.its.collection_baser;
    let baser_off = |k: usize| its::GITS_BASER + k as u64 * 8;
    let mut sent = 0u64;
    while sent < FUZZ_COMMANDS {
        let batch = (1 + f.rng.below(64)).min(FUZZ_COMMANDS - sent);
        for _ in 0..batch {
            let dw = f.command();
            if touches_valid(&dw) {
                st.skipped += 1;
                continue;
            }
            if OPS.contains(&(dw[0] as u8)) {
                st.known += 1;
            } else {
                st.unknown += 1;
            }
            s.its.push_raw(dw);
        }
        sent += batch;
        st.batches += 1;
        let int = f.rng.below(2) == 0;
        if int {
            s.its.push(ItsCommand::int(VALID_DEV, VALID_EVENT));
        }
        let before = total(VALID_LPI);
        let r = s.its.kick();
        s.check("fuzz batch", r);
        if int {
            st.ints += 1;
            if !cpu::wait_until(TIMEOUT_US, || total(VALID_LPI) > before) {
                fail!(
                    FUZZ,
                    "after {sent} commands: INT of the valid mapping not delivered"
                );
            }
        }
        // Register misuse, every few batches.
        match f.rng.below(24) {
            0 => {
                let bad = s.its.queue_size + its::CMD_SIZE * f.rng.below(1 << 14);
                its::write64(its::GITS_CWRITER, bad);
                let (w, r) = (
                    its::read64(its::GITS_CWRITER),
                    its::read64(its::GITS_CREADR),
                );
                ensure!(
                    FUZZ,
                    w & 0xf_ffe0 == s.its.cwriter && r == s.its.cwriter,
                    "CWRITER {bad:#x} past the queue end: CWRITER reads {w:#x}, CREADR {r:#x}, expected both {:#x}",
                    s.its.cwriter
                );
                st.cwriter_past_end += 1;
            }
            1 => {
                let bad = s.its.cwriter | (1 + f.rng.below(31));
                its::write64(its::GITS_CWRITER, bad);
                let r = its::read64(its::GITS_CREADR);
                ensure!(
                    FUZZ,
                    r == s.its.cwriter,
                    "misaligned CWRITER {bad:#x}: CREADR {r:#x}, expected {:#x}",
                    s.its.cwriter
                );
                st.cwriter_misaligned += 1;
            }
            2 => {
                let (off, keep) = match f.rng.below(3) {
                    0 => (its::GITS_CBASER, valid_cbaser),
                    1 => (baser_off(dev_n), valid_dev_baser),
                    _ => (baser_off(col_n), valid_col_baser),
                };
                its::write64(off, f.rng.next());
                let got = its::read64(off);
                ensure!(
                    FUZZ,
                    got == keep,
                    "rewrite of register {off:#x} while enabled took effect: {got:#x}, was {keep:#x}"
                );
                st.base_rewrites += 1;
            }
            3 => {
                its::translate(f.rng.next() as u32);
                st.translater += 1;
            }
            4 if f.rng.below(8) == 0 => {
                // Disabled: tables outside RAM are refused, then restored.
                let r = s.its.disable();
                s.check("disable", r);
                let outside = f.ram_end + (f.rng.below(1 << 20) << 16);
                let bad_baser = (valid_dev_baser & !0x0000_ffff_ffff_f000) | outside;
                its::write64(baser_off(dev_n), bad_baser);
                let got = its::read64(baser_off(dev_n));
                ensure!(
                    FUZZ,
                    got >> 63 == 0,
                    "device table BASER at {outside:#x}, outside RAM, kept Valid: {got:#x}"
                );
                let bad_cbaser = (valid_cbaser & !0x000f_ffff_ffff_f000) | outside;
                its::write64(its::GITS_CBASER, bad_cbaser);
                let got = its::read64(its::GITS_CBASER);
                ensure!(
                    FUZZ,
                    got >> 63 == 0,
                    "CBASER at {outside:#x}, outside RAM, kept Valid: {got:#x}"
                );
                its::write64(baser_off(dev_n), valid_dev_baser);
                its::write64(its::GITS_CBASER, valid_cbaser);
                ensure!(
                    FUZZ,
                    its::read64(baser_off(dev_n)) == valid_dev_baser
                        && its::read64(its::GITS_CBASER) == valid_cbaser,
                    "device BASER / CBASER not restored"
                );
                // A CBASER write resets CREADR to 0.
                s.its.cwriter = 0;
                its::write64(its::GITS_CWRITER, 0);
                s.its.enable();
                st.outside_ram += 1;
            }
            _ => {}
        }
    }
    let fuzz_ms = (cpu::now_us() - start) / 1000;
    // Nothing but the valid LPI may have been delivered: every other LPI
    // is disabled in the property table.
    cpu::wait_until(QUIET_US, || false);
    let delivered = total(VALID_LPI);
    ensure!(
        FUZZ,
        u64::from(delivered) == st.ints,
        "the valid LPI was delivered {delivered} times for {} INTs",
        st.ints
    );
    let stray: u32 = (1..TRACKED as u32)
        .map(|i| total(gic::LPI_BASE + i))
        .sum::<u32>()
        + UNTRACKED.load(Ordering::Relaxed);
    ensure!(FUZZ, stray == 0, "{stray} deliveries of disabled LPIs");
    println!(
        "its-fuzz: {sent} random commands ({} well-formed with random fields, {} unimplemented or random bytes, {} touching the valid mapping not sent) in {} batches, {fuzz_ms} ms",
        st.known, st.unknown, st.skipped, st.batches
    );
    println!(
        "its-fuzz: register misuse: {} CWRITER past the queue end, {} misaligned CWRITER, {} CBASER/BASER rewrites while enabled, {} tables outside RAM while disabled, {} GITS_TRANSLATER writes",
        st.cwriter_past_end, st.cwriter_misaligned, st.base_rewrites, st.outside_ram, st.translater
    );
    println!(
        "its-fuzz: valid mapping: {} INTs, {delivered} deliveries, every one within {} ms; no other LPI delivered",
        st.ints,
        TIMEOUT_US / 1000
    );
    // The ITS still maps and delivers.
    let before = snapshot(FINAL_LPI);
    s.cmds(&[
        ItsCommand::mapti(VALID_DEV, FINAL_EVENT, FINAL_LPI, VALID_ICID),
        ItsCommand::inv(VALID_DEV, FINAL_EVENT),
        ItsCommand::int(VALID_DEV, FINAL_EVENT),
    ]);
    expect_once(FUZZ, "MAPTI + INT after the fuzzing", FINAL_LPI, 0, before);
    let creadr = its::read64(its::GITS_CREADR);
    ensure!(
        FUZZ,
        creadr == s.its.cwriter,
        "CREADR {creadr:#x} after the last command, CWRITER {:#x}",
        s.its.cwriter
    );
    println!("its-fuzz: afterwards MAPTI + INT of a new event: delivered once; CREADR == CWRITER, not stalled");
    report::pass(FUZZ)
}

/// `its-flood`: more MAPTIs than the hypervisor could once hold (about
/// 300,000 exhausted its heap and panicked it): the vITS's quota turns the
/// excess into ignored commands, the hypervisor stays up, and an event
/// mapped afterwards (after making room) still delivers.
pub fn flood(boot: &'static BootInfo) -> ! {
    const NAME: &str = "its-flood";
    let mut s = Setup::new(NAME, boot, 1, 1);
    let Some(itt) = s.mem.alloc(0x8_0000, 0x1_0000) else {
        fail!(NAME, "no guest memory for the ITT");
    };
    let mut sent = 0u64;
    let start = cpu::now_us();
    for dev in 2..42u32 {
        s.its.push(ItsCommand::mapd(dev, itt, 16, true));
        for e in 0..8192u32 {
            s.its.push(ItsCommand::mapti(dev, e, 8192 + (e % 4096), 0));
            sent += 1;
            if sent.is_multiple_of(2000) {
                let r = s.its.kick();
                s.check("flood", r);
            }
        }
    }
    let r = s.its.kick();
    s.check("flood", r);
    println!(
        "its-flood: {sent} MAPTIs over 40 devices in {} ms; the hypervisor is still up",
        (cpu::now_us() - start) / 1000
    );
    // Make room (unmap every flooded device), then a fresh mapping works.
    for dev in 2..42u32 {
        s.its.push(ItsCommand::mapd(dev, 0, 1, false));
    }
    let r = s.its.kick();
    s.check("unmap", r);
    report::pass(NAME)
}

/// `its-hog`: a VM that keeps the hypervisor as busy as one ITS command
/// queue can: 16,384 mappings through collection 0, then for
/// `vigil.hog.ms` (default 3000) of its own time and at least once, whole
/// queues of 256 INVALLs (each one re-reads the configuration of every
/// mapping) in one CWRITER write. Run it on the
/// physical CPU of a VM that measures its timer's lateness: EL2 must not
/// run so much of it in one trap that the other VM waits past its slice.
///
/// With `vigil.hog.wait=wfi` each queue ends with an INT of LPI 8192 and
/// the vCPU waits for it in WFI instead of polling CREADR: the queue runs
/// in slices, one per entry, so a vCPU alone on its CPU whose WFI did not
/// come back to the hypervisor would sleep on its own unfinished queue
/// (its virtual timer, armed [`HOG_WFI_TIMEOUT_US`] ahead, ends such a
/// wait as a failure).
pub fn hog(boot: &'static BootInfo) -> ! {
    const NAME: &str = "its-hog";
    let ms: u64 = boot
        .bootarg("vigil.hog.ms")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let wfi = boot.bootarg("vigil.hog.wait") == Some("wfi");
    let mut s = Setup::new(NAME, boot, 1, 1);
    if wfi {
        s.prop.set(gic::LPI_BASE, 0xa0, true);
        gic::set_priority(gic::VTIMER_PPI, 0x80);
        gic::set_handler(gic::VTIMER_PPI, hog_timer_handler);
        gic::enable(gic::VTIMER_PPI);
    }
    let Some(itt) = s.mem.alloc(0x2_0000, 0x1_0000) else {
        fail!(NAME, "no guest memory for the ITTs");
    };
    let mut mapped = 0u32;
    for dev in 2..4u32 {
        s.its.push(ItsCommand::mapd(
            dev,
            itt + u64::from(dev - 2) * 0x1_0000,
            13,
            true,
        ));
        for e in 0..8192u32 {
            s.its.push(ItsCommand::mapti(dev, e, 8192 + mapped, 0));
            mapped += 1;
            if mapped.is_multiple_of(400) {
                let r = s.its.kick();
                s.check("map", r);
            }
        }
    }
    let r = s.its.kick();
    s.check("map", r);
    // 256 INVALLs per CWRITER write walk 4.2 million mappings, which once
    // ran in one trap (about 3 s under TCG).
    let slots = s.its.free_slots().min(256);
    let start = cpu::now_us();
    let (mut rounds, mut commands, mut worst_us) = (0u64, 0u64, 0u64);
    while rounds == 0 || cpu::now_us() - start < ms * 1000 {
        if wfi {
            for _ in 1..slots {
                s.its.push(ItsCommand::invall(0));
            }
            s.its.push(ItsCommand::int(2, 0));
            let t = cpu::now_us();
            hog_wait_in_wfi(&mut s, slots);
            worst_us = worst_us.max(cpu::now_us() - t);
            rounds += 1;
            commands += slots;
            continue;
        }
        for _ in 0..slots {
            s.its.push(ItsCommand::invall(0));
        }
        let t = cpu::now_us();
        let r = s.its.kick_for(120_000_000);
        s.check("invall", r);
        worst_us = worst_us.max(cpu::now_us() - t);
        rounds += 1;
        commands += slots;
    }
    println!(
        "its-hog: {mapped} mappings; {rounds} queues of {slots} INVALLs ({commands} commands) in {ms} ms, slowest queue {worst_us} us"
    );
    report::pass(NAME)
}

/// How long `its-hog`'s WFI mode waits for a queue's closing INT.
const HOG_WFI_TIMEOUT_US: u64 = 30_000_000;
/// The virtual timer went off: the WFI wait timed out.
static HOG_TIMED_OUT: AtomicBool = AtomicBool::new(false);

fn hog_timer_handler(_: u32) {
    set_vtimer(0, 0);
    HOG_TIMED_OUT.store(true, Ordering::Release);
}

/// This vCPU's virtual timer: CNTV_CVAL_EL0 = `cval`, CNTV_CTL_EL0 = `ctl`.
fn set_vtimer(cval: u64, ctl: u64) {
    // SAFETY: programming this vCPU's virtual timer only changes when its
    // PPI 27 fires.
    unsafe {
        core::arch::asm!(
            "msr cntv_cval_el0, {cval}", "msr cntv_ctl_el0, {ctl}", "isb",
            cval = in(reg) cval, ctl = in(reg) ctl,
            options(nostack, preserves_flags)
        )
    };
}

/// Publish the queued commands and wait in WFI (IRQs masked around the
/// check) for the INT that ends them, then check CREADR reached CWRITER.
fn hog_wait_in_wfi(s: &mut Setup, slots: u64) {
    const NAME: &str = "its-hog";
    let before = count(0, gic::LPI_BASE);
    let freq = cpu::counter_frequency();
    HOG_TIMED_OUT.store(false, Ordering::Relaxed);
    set_vtimer(
        cpu::counter() + HOG_WFI_TIMEOUT_US.saturating_mul(freq) / 1_000_000,
        1,
    );
    s.its.publish();
    loop {
        gic::irq_disable();
        if count(0, gic::LPI_BASE) != before {
            break;
        }
        if HOG_TIMED_OUT.load(Ordering::Acquire) {
            fail!(
                NAME,
                "the INT closing {slots} commands never arrived while vCPU 0 waited in WFI ({} s): its queue was left unfinished, GITS_CREADR {:#x}",
                HOG_WFI_TIMEOUT_US / 1_000_000,
                its::read64(its::GITS_CREADR)
            );
        }
        gic::wait_for_interrupt();
        gic::irq_enable();
    }
    gic::irq_enable();
    set_vtimer(0, 0);
    let r = s.its.wait();
    s.check("invall", r);
}

/// `its-orphan` (a VM with the PCIe bridge): MAPD of a device with 2^16
/// events, more than the host has LPIs for, so the hypervisor's physical
/// MAPD fails; then MAPTI, MOVI, CLEAR and DISCARD of one of its events
/// and MAPD(V=0). The vITS runs them all (the guest's view is whole); the
/// hypervisor must mirror none of them onto the physical ITS, which has no
/// such device (the harness watches QEMU's ITS for complaints).
pub fn orphan(boot: &'static BootInfo) -> ! {
    const NAME: &str = "its-orphan";
    const DEV: u32 = 0x10;
    let mut s = Setup::new(NAME, boot, 2, 2);
    let Some(itt) = s.mem.alloc(s.its.itt_bytes(16), 0x1_0000) else {
        fail!(NAME, "no guest memory for the ITT");
    };
    let rd0 = s.rd[0];
    let r = s.its.send_all(&[
        ItsCommand::mapd(DEV, itt, 16, true),
        ItsCommand::mapti(DEV, 1, gic::LPI_BASE + 5, 0),
        ItsCommand::movi(DEV, 1, 1),
        ItsCommand::clear(DEV, 1),
        ItsCommand::discard(DEV, 1),
        ItsCommand::mapd(DEV, 0, 1, false),
        ItsCommand::sync(rd0),
    ]);
    s.check("commands", r);
    println!("{NAME}: MAPD (2^16 events), MAPTI, MOVI, CLEAR, DISCARD, MAPD(V=0) of DeviceID {DEV:#x} completed");
    report::pass(NAME)
}
