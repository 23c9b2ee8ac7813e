//! `hostile`: a guest that attacks what it can reach of Vigil (issue 20),
//! one mode per surface, each driven by a seeded generator:
//!
//! - `mmio`: the vGIC's distributor, every vCPU's redistributor (RD and SGI
//!   frames) and the vITS's frames, Vigil's test device and the vPL011, at
//!   random offsets (reserved ones and the edges of each frame included),
//!   with every access width, signed loads, and loads and stores whose
//!   syndrome is not valid (LDP/STP, post-index writeback), and random
//!   values. vCPU 1 runs this mode at the same time as vCPU 0.
//! - `tables`: the vITS's tables and command queue and the LPI tables
//!   (GITS_BASER<n>, GITS_CBASER, GICR_PROPBASER/PENDBASER) pointed at
//!   MMIO, at the edge of RAM and beyond it, with allowed and reserved page
//!   sizes and sizes, with the ITS and LPIs switched on and off mid-stream
//!   and CWRITER moved so the vITS walks what they point at.
//! - `sysreg`: MRS of random encodings over the whole system-register space
//!   (op0 2 and 3), and MSR of random values to every family Vigil traps
//!   (ICC_*, the timers, PMU, debug, ID registers, IMPLEMENTATION DEFINED
//!   encodings) and to EL2/EL3 encodings.
//! - `hvc`: HVC and SMC with random function IDs and arguments: PSCI (every
//!   function, invalid targets), SMCCC, Vigil's own calls, anything.
//!
//! The guest leaves alone only what would end or corrupt itself (its
//! exception vectors, stack and MMU state; PSCI CPU_OFF, SYSTEM_OFF,
//! SYSTEM_RESET, the suspends; Vigil's exit-status call): nothing a guest
//! does to itself is Vigil's to prevent. Every access is one instruction
//! in an `expect_exception`, so an abort or UNDEF Vigil injects is counted
//! and the guest goes on. It runs with interrupts masked, so whatever it
//! makes pending is never taken.
//!
//! Boot arguments: `vigil.hostile=MODE[,MODE...]` (default all),
//! `vigil.hostile.ops=N` per mode and vCPU (default 100000),
//! `vigil.seed=N` (default from the counter; printed, so a failure can be
//! replayed).

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vigil_guest::exceptions::ec;
use vigil_guest::{cpu, expect_exception, gic, its, println, psci, report, BootInfo};
use vigil_vm::psci::{fid, hypercall};

use crate::vits::Rng;

const NAME: &str = "hostile";
const DEFAULT_OPS: u64 = 100_000;
const UART_BASE: u64 = 0x0900_0000;
const GITS_SIZE: u64 = 0x2_0000;
const GICD_SIZE: u64 = 0x1_0000;

/// What the exceptions of a run of operations were.
#[derive(Default, Clone, Copy)]
struct Tally {
    ops: u64,
    /// Data aborts Vigil injected (external aborts) or the guest's own
    /// alignment faults.
    aborts: u64,
    alignment: u64,
    undefs: u64,
    /// Traps to EL1 that the CPU raises itself, under the guest's own
    /// controls: EC 0x18 for some encodings, EC 0x19/0x1d for SVE/SME
    /// registers while CPACR_EL1 traps them (a trap by an EL1 control is
    /// taken before any trap to EL2, so a hypervisor never sees them).
    el1_traps: u64,
    other: u64,
    /// The syndrome of the first exception of another kind.
    first_other: u64,
}

impl Tally {
    fn count(&mut self, e: Option<vigil_guest::Exception>) {
        self.ops += 1;
        let Some(e) = e else { return };
        match e.ec() {
            ec::UNKNOWN => self.undefs += 1,
            ec::SYSREG | 0x19 | 0x1d => self.el1_traps += 1,
            ec::DABT_CUR if e.fsc() == 0x21 => self.alignment += 1,
            ec::DABT_CUR => self.aborts += 1,
            _ => {
                if self.other == 0 {
                    self.first_other = e.esr;
                }
                self.other += 1
            }
        }
    }
}

impl core::fmt::Display for Tally {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} ops: {} aborts, {} alignment faults, {} UNDEFs, {} EL1 traps, {} other exceptions",
            self.ops, self.aborts, self.alignment, self.undefs, self.el1_traps, self.other
        )
    }
}

// ---------------------------------------------------------------------------
// mmio

/// One access instruction at `addr` with value `v` (stores) and the kind
/// `k`; loads discard what they read.
fn access(k: u64, addr: u64, v: u64) {
    // SAFETY: (every arm) `addr` is in one of this VM's emulated device
    // frames or just past one; the access is caught by `expect_exception`
    // if Vigil (or the alignment check) refuses it, and touches no memory
    // Rust uses.
    unsafe {
        match k {
            0 => asm!("ldrb {v:w}, [{a}]", v = out(reg) _, a = in(reg) addr, options(nostack)),
            1 => asm!("ldrh {v:w}, [{a}]", v = out(reg) _, a = in(reg) addr, options(nostack)),
            2 => asm!("ldr {v:w}, [{a}]", v = out(reg) _, a = in(reg) addr, options(nostack)),
            3 => asm!("ldr {v}, [{a}]", v = out(reg) _, a = in(reg) addr, options(nostack)),
            4 => asm!("ldrsb {v}, [{a}]", v = out(reg) _, a = in(reg) addr, options(nostack)),
            5 => asm!("ldrsh {v:w}, [{a}]", v = out(reg) _, a = in(reg) addr, options(nostack)),
            6 => asm!("ldrsw {v}, [{a}]", v = out(reg) _, a = in(reg) addr, options(nostack)),
            7 => asm!("strb {v:w}, [{a}]", v = in(reg) v, a = in(reg) addr, options(nostack)),
            8 => asm!("strh {v:w}, [{a}]", v = in(reg) v, a = in(reg) addr, options(nostack)),
            9 => asm!("str {v:w}, [{a}]", v = in(reg) v, a = in(reg) addr, options(nostack)),
            10 => asm!("str {v}, [{a}]", v = in(reg) v, a = in(reg) addr, options(nostack)),
            11 => asm!("str xzr, [{a}]", a = in(reg) addr, options(nostack)),
            // No valid syndrome: Vigil cannot emulate these.
            12 => {
                asm!("ldp {v}, {w}, [{a}]", v = out(reg) _, w = out(reg) _, a = in(reg) addr, options(nostack))
            }
            13 => asm!("stp {v}, {v}, [{a}]", v = in(reg) v, a = in(reg) addr, options(nostack)),
            14 => {
                asm!("ldr {v}, [{a}], #8", v = out(reg) _, a = inout(reg) addr => _, options(nostack))
            }
            _ => {
                asm!("str {v:w}, [{a}, #4]!", v = in(reg) v, a = inout(reg) addr => _, options(nostack))
            }
        }
    }
}

const ACCESS_KINDS: u64 = 16;
/// The store kinds, which the vPL011's data register is spared (random
/// bytes on the console would only be noise).
fn is_store(k: u64) -> bool {
    (7..=11).contains(&k) || k == 13 || k == 15
}

fn width(k: u64) -> u64 {
    match k {
        0 | 4 | 7 => 1,
        1 | 5 | 8 => 2,
        2 | 6 | 9 | 15 => 4,
        12 | 13 => 16,
        _ => 8,
    }
}

struct Frames {
    /// (base, size) of every frame under attack.
    list: [(u64, u64); 4 + 2 * vigil_guest::MAX_CPUS],
    n: usize,
}

impl Frames {
    fn new(boot: &BootInfo) -> Self {
        let mut f = Frames {
            list: [(0, 0); 4 + 2 * vigil_guest::MAX_CPUS],
            n: 0,
        };
        let mut add = |base: u64, size: u64| {
            f.list[f.n] = (base, size);
            f.n += 1;
        };
        add(gic::GICD_BASE, GICD_SIZE);
        add(its::GITS_BASE, GITS_SIZE);
        add(UART_BASE, 0x1000);
        if let Some(t) = boot.find_compatible("vigil,test-device") {
            add(t.start, t.end - t.start);
        }
        for i in 0..boot.cpus().len() as u64 {
            let rd = gic::GICR_BASE + i * gic::GICR_STRIDE;
            add(rd, gic::GICR_SGI_OFFSET);
            add(rd + gic::GICR_SGI_OFFSET, gic::GICR_SGI_OFFSET);
        }
        f
    }
}

fn value(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0 | 1 => 0,
        2 => u64::MAX,
        3 => 1 << rng.below(64),
        _ => rng.next(),
    }
}

fn mmio(frames: &Frames, rng: &mut Rng, ops: u64) -> Tally {
    let mut t = Tally::default();
    for _ in 0..ops {
        let (base, size) = frames.list[rng.below(frames.n as u64) as usize];
        let k = rng.below(ACCESS_KINDS);
        let w = width(k).min(8);
        let off = match rng.below(8) {
            // The register-dense start of the frame, aligned.
            0..=3 => rng.below(0x200.min(size)) & !(w - 1),
            // Anywhere in it, aligned.
            4 | 5 => rng.below(size) & !(w - 1),
            // Unaligned, anywhere.
            6 => rng.below(size),
            // The last bytes, and just past the end.
            _ => size - 16 + rng.below(32),
        };
        let addr = base + off;
        if base == UART_BASE && off < 4 && is_store(k) {
            continue;
        }
        let v = value(rng);
        t.count(expect_exception(|| access(k, addr, v)));
    }
    t
}

// ---------------------------------------------------------------------------
// tables

const GICR_CTLR: u64 = 0x0000;
const GICR_PROPBASER: u64 = 0x0070;
const GICR_PENDBASER: u64 = 0x0078;

/// An address for a table or queue: RAM's first page, its last pages, just
/// past its end, far beyond it, an MMIO frame (the GIC's own included),
/// zero, or anything.
fn table_addr(rng: &mut Rng, ram: &core::ops::Range<u64>) -> u64 {
    let page = 0x1000;
    match rng.below(8) {
        0 => ram.start,
        1 => ram.end - page * (1 + rng.below(16)),
        2 => ram.end + page * rng.below(16),
        3 => ram.end + (rng.next() & 0xffff_f000),
        4 => [gic::GICD_BASE, its::GITS_BASE, gic::GICR_BASE, UART_BASE][rng.below(4) as usize],
        5 => 0,
        _ => rng.next() & 0x000f_ffff_ffff_f000,
    }
}

/// GITS_BASER<n>, GITS_CBASER, GICR_PROPBASER/PENDBASER pointed at the
/// addresses of `table_addr` with page sizes and sizes the spec allows and
/// ones it does not (IHI 0069 §12.19), the ITS and LPIs enabled and
/// disabled mid-stream, and CWRITER moved so the vITS walks whatever the
/// queue now points at.
fn tables(rng: &mut Rng, ops: u64, boot: &BootInfo) -> Tally {
    let mut t = Tally::default();
    let n = boot.cpus().len() as u64;
    for _ in 0..ops {
        let a = table_addr(rng, &boot.ram);
        let rd = gic::GICR_BASE + rng.below(n) * gic::GICR_STRIDE;
        let (addr, v, wide) = match rng.below(8) {
            // Valid bit, random cacheability/shareability, random size.
            0 => (
                its::GITS_BASE + its::GITS_CBASER,
                a | (rng.below(2) << 63) | (rng.next() & 0x0700_0000_0000_0cff),
                true,
            ),
            // Type and entry size are read-only; page size (bits 9:8) any
            // of 4K/16K/64K or the reserved 0b11; Indirect at random.
            1 => (
                its::GITS_BASE + its::GITS_BASER + 8 * rng.below(8),
                a | (rng.below(2) << 63)
                    | (rng.below(2) << 62)
                    | rng.below(4) << 8
                    | rng.below(256),
                true,
            ),
            2 => (
                rd + GICR_PROPBASER,
                a | rng.below(32) | (rng.next() & 0x0700_0000_0000_0f80),
                true,
            ),
            3 => (
                rd + GICR_PENDBASER,
                a | (rng.below(2) << 62) | (rng.next() & 0x0700_0000_0000_0f80),
                true,
            ),
            4 => (rd + GICR_CTLR, rng.below(2), false),
            5 => (its::GITS_BASE + its::GITS_CTLR, rng.below(2), false),
            6 => (
                its::GITS_BASE + its::GITS_CWRITER,
                (rng.below(1 << 20)) << 5,
                true,
            ),
            _ => (
                its::GITS_BASE + its::GITS_TRANSLATER,
                rng.next() & 0xffff,
                false,
            ),
        };
        t.count(expect_exception(|| {
            access(if wide { 10 } else { 9 }, addr, v)
        }));
    }
    t
}

// ---------------------------------------------------------------------------
// sysreg

/// A code slot per vCPU: the generated MRS/MSR, then RET.
#[repr(C, align(64))]
struct Stub([u32; 16]);

static mut STUBS: [Stub; vigil_guest::MAX_CPUS] = [const { Stub([0; 16]) }; vigil_guest::MAX_CPUS];

const RET: u32 = 0xd65f_03c0;

/// MRS (`read`) or MSR of the system register (op0, op1, CRn, CRm, op2)
/// with x0: Arm ARM C6.2.226/C6.2.228, "MRS"/"MSR (register)".
fn sysreg_insn(read: bool, op0: u32, op1: u32, crn: u32, crm: u32, op2: u32) -> u32 {
    0xd510_0000
        | (read as u32) << 21
        | (op0 & 1) << 19
        | (op1 & 7) << 16
        | (crn & 15) << 12
        | (crm & 15) << 8
        | (op2 & 7) << 5
}

/// Runs `insn` (taking and returning x0) from this vCPU's stub.
fn run_insn(insn: u32, x0: u64) -> Option<vigil_guest::Exception> {
    // SAFETY: each vCPU writes only its own slot, and only here.
    let stub = unsafe { &mut *core::ptr::addr_of_mut!(STUBS[cpu::index()]) };
    stub.0[0] = insn;
    stub.0[1] = RET;
    let at = stub.0.as_ptr() as u64;
    // SAFETY: cache maintenance of the stub's own line, so the new
    // instruction is fetched (Arm ARM B2.4.4, "Concurrent modification and
    // execution of instructions").
    unsafe {
        asm!(
            "dc cvau, {a}", "dsb ish", "ic ivau, {a}", "dsb ish", "isb",
            a = in(reg) at, options(nostack)
        )
    };
    expect_exception(|| {
        // SAFETY: the stub is one MRS or MSR and a RET; an exception at
        // the first skips to the RET. The registers it may touch are not
        // the ones this guest runs on (see the module comment).
        unsafe {
            asm!(
                "blr {f}",
                f = in(reg) at,
                inout("x0") x0 => _,
                out("lr") _,
                options(nostack)
            )
        };
    })
}

/// A random MSR target: (op0, op1, CRn, CRm, op2).
fn msr_target(rng: &mut Rng) -> (u32, u32, u32, u32, u32) {
    let r = |rng: &mut Rng, n: u64| rng.below(n) as u32;
    match rng.below(8) {
        // ICC_* (CRn 12, CRm 8-12) and ICC_PMR_EL1.
        0 => (3, 0, 12, 8 + r(rng, 5), r(rng, 8)),
        1 => (3, 0, 4, 6, 0),
        // Timers: CNTP_*/CNTV_* (CRn 14, CRm 2/3), CNTKCTL_EL1.
        2 => match rng.below(3) {
            0 => (3, 0, 14, 1, 0),
            _ => (3, 3, 14, 2 + r(rng, 2), r(rng, 3)),
        },
        // PMU: PMCR..PMUSERENR, PMEVCNTR/PMEVTYPER, PMINTEN*.
        3 => match rng.below(3) {
            0 => (3, 3, 9, 12 + r(rng, 3), r(rng, 8)),
            1 => (3, 3, 14, 8 + r(rng, 8), r(rng, 8)),
            _ => (3, 0, 9, 14, 1 + r(rng, 2)),
        },
        // Debug: DBGB/WVR/CR<n>, MDCCINT, OSLAR/OSDLR/DBGPRCR, claim tags
        // (never MDSCR_EL1, which would arm them against this guest).
        4 => match rng.below(4) {
            0 | 1 => (2, 0, 0, r(rng, 16), 4 + r(rng, 4)),
            2 => (2, 0, 1, [0, 3, 4][rng.below(3) as usize], 4),
            _ => (2, 0, 7, 8 + r(rng, 2), 6),
        },
        // ID registers (read-only: MSR is UNDEFINED).
        5 => (3, 0, 0, r(rng, 8), r(rng, 8)),
        // IMPLEMENTATION DEFINED encodings (CRn 11 and 15).
        6 => (
            3,
            r(rng, 8),
            [11, 15][rng.below(2) as usize],
            r(rng, 16),
            r(rng, 8),
        ),
        // EL2, EL12 and EL3 encodings: UNDEFINED at EL1.
        _ => (3, 4 + r(rng, 3), r(rng, 16), r(rng, 16), r(rng, 8)),
    }
}

fn sysreg(rng: &mut Rng, ops: u64) -> Tally {
    let mut t = Tally::default();
    for _ in 0..ops {
        let insn = if rng.below(2) == 0 {
            let op0 = 2 + rng.below(2) as u32;
            sysreg_insn(
                true,
                op0,
                rng.below(8) as u32,
                rng.below(16) as u32,
                rng.below(16) as u32,
                rng.below(8) as u32,
            )
        } else {
            let (op0, op1, crn, crm, op2) = msr_target(rng);
            sysreg_insn(false, op0, op1, crn, crm, op2)
        };
        let v = value(rng);
        t.count(run_insn(insn, v));
    }
    t
}

// ---------------------------------------------------------------------------
// hvc

/// The calls that would end or suspend this guest, or set its exit status
/// (compared on W0, the SMCCC function ID, either calling convention).
fn ends_the_guest(f: u32) -> bool {
    let f32 = f & !0x4000_0000;
    let psci = |id: u32| f32 == id & !0x4000_0000;
    psci(fid::CPU_OFF)
        || psci(fid::SYSTEM_OFF)
        || psci(fid::SYSTEM_RESET)
        || psci(fid::CPU_SUSPEND_32)
        // CPU_FREEZE, CPU_DEFAULT_SUSPEND, SYSTEM_SUSPEND, SYSTEM_RESET2,
        // SYSTEM_OFF2 (DEN 0022 table 5.1).
        || [0x8400_000b, 0x8400_000c, 0x8400_000e, 0x8400_0012, 0x8400_0015].contains(&f32)
        || psci(hypercall::EXIT_STATUS)
}

fn function_id(rng: &mut Rng) -> u32 {
    match rng.below(8) {
        // PSCI, both conventions, every function number and beyond.
        0..=2 => 0x8400_0000 | (rng.below(2) as u32) << 30 | rng.below(0x20) as u32,
        // SMCCC architecture calls.
        3 => 0x8000_0000 | (rng.below(2) as u32) << 30 | rng.below(0x10) as u32,
        // Vigil's own calls and their neighbourhood.
        4 => 0xc600_0000 | rng.below(0x10) as u32,
        _ => rng.next() as u32,
    }
}

fn hvc(rng: &mut Rng, ops: u64, boot: &BootInfo) -> Tally {
    let mut t = Tally::default();
    let mut skipped = 0u64;
    for _ in 0..ops {
        let f = function_id(rng);
        if ends_the_guest(f) {
            skipped += 1;
            continue;
        }
        // Targets: mostly invalid MPIDRs, sometimes one of this VM's own
        // vCPUs (all on from the start: CPU_ON answers ALREADY_ON).
        let target = match rng.below(4) {
            0 => boot.cpus()[rng.below(boot.cpus().len() as u64) as usize],
            _ => value(rng),
        };
        let args = [target, value(rng), value(rng)];
        // Random upper half of x0: SMCCC ignores it (W0 is the ID).
        let x0 = u64::from(f) | (rng.below(2) * rng.next()) << 32;
        if rng.below(4) == 0 {
            t.count(vigil_guest::smccc::smc_raw(x0, args).err());
        } else {
            t.count(vigil_guest::smccc::hvc_raw(x0, args).err());
        }
    }
    println!("{NAME}: hvc: {skipped} generated calls that would end this guest skipped");
    t
}

// ---------------------------------------------------------------------------

static SECONDARY_GO: AtomicBool = AtomicBool::new(false);
static SECONDARY_DONE: AtomicBool = AtomicBool::new(false);
static SECONDARY_OPS: AtomicU64 = AtomicU64::new(0);
static SECONDARY_SEED: AtomicU64 = AtomicU64::new(0);

/// vCPU 1: on from the start, so that a random CPU_ON never finds it off
/// (and starts it at a random address); runs the mmio mode when told.
fn secondary(_: u64) -> ! {
    gic::irq_disable();
    let boot = vigil_guest::boot_info().expect("boot info before CPU_ON");
    let frames = Frames::new(boot);
    loop {
        while !SECONDARY_GO.swap(false, Ordering::AcqRel) {
            core::hint::spin_loop();
        }
        let mut rng = Rng(SECONDARY_SEED.load(Ordering::Acquire) | 1);
        let t = mmio(&frames, &mut rng, SECONDARY_OPS.load(Ordering::Acquire));
        println!("{NAME}: mmio on vCPU {}: {t}", cpu::index());
        SECONDARY_DONE.store(true, Ordering::Release);
    }
}

fn parse(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

pub fn run(boot: &'static BootInfo) -> ! {
    gic::irq_disable();
    let seed = boot
        .bootarg("vigil.seed")
        .and_then(parse)
        .unwrap_or_else(|| 0x5eed_0000_0000_0000 ^ cpu::counter());
    let ops = boot
        .bootarg("vigil.hostile.ops")
        .and_then(parse)
        .unwrap_or(DEFAULT_OPS);
    let modes = boot
        .bootarg("vigil.hostile")
        .unwrap_or("mmio,tables,sysreg,hvc");
    println!(
        "{NAME}: seed {seed:#x}, {ops} ops per mode and vCPU, modes {modes}, {} vCPUs",
        boot.cpus().len()
    );
    let typer = gic::gicd_typer();
    let frames = Frames::new(boot);
    let mut rng = Rng(seed | 1);
    // Every vCPU on (at most 2 are used).
    let others = boot.cpus().len() > 1;
    if boot.cpus().len() > 2 {
        vigil_guest::fail!(NAME, "runs on 1 or 2 vCPUs");
    }
    if others {
        vigil_guest::set_secondary_main(secondary);
        let r = psci::cpu_on(boot.cpus()[1], 1);
        if r != 0 {
            vigil_guest::fail!(NAME, "CPU_ON of vCPU 1: {}", psci::error_name(r));
        }
    }
    for mode in modes.split(',') {
        let t = match mode {
            "mmio" => {
                if others {
                    SECONDARY_SEED.store(seed.rotate_left(32), Ordering::Release);
                    SECONDARY_OPS.store(ops, Ordering::Release);
                    SECONDARY_DONE.store(false, Ordering::Release);
                    SECONDARY_GO.store(true, Ordering::Release);
                }
                let t = mmio(&frames, &mut rng, ops);
                if others
                    && !cpu::wait_until(600_000_000, || SECONDARY_DONE.load(Ordering::Acquire))
                {
                    vigil_guest::fail!(NAME, "vCPU 1 did not finish its mmio run");
                }
                t
            }
            "tables" => tables(&mut rng, ops, boot),
            "sysreg" => sysreg(&mut rng, ops),
            "hvc" => hvc(&mut rng, ops, boot),
            other => vigil_guest::fail!(NAME, "unknown mode {other:?}"),
        };
        println!("{NAME}: {mode} on vCPU 0: {t}");
        if t.other != 0 {
            vigil_guest::fail!(
                NAME,
                "{mode}: {} exceptions of an unexpected kind, the first with ESR {:#x}",
                t.other,
                t.first_other
            );
        }
    }
    // Vigil still serves this VM: its calls answer and its distributor
    // reads as it did.
    if !matches!(vigil_guest::smccc::vigil_null(), Ok(0)) {
        vigil_guest::fail!(NAME, "Vigil's NULL call no longer answers 0");
    }
    if gic::gicd_typer() != typer {
        vigil_guest::fail!(NAME, "GICD_TYPER changed under random writes");
    }
    println!("{NAME}: Vigil still answers; GICD_TYPER unchanged");
    report::pass(NAME)
}
