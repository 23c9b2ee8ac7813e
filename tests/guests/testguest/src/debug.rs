//! `debug`: the PMU is absent and the self-hosted debug registers are this
//! VM's own. Run two of these on one physical CPU with `vigil.seed=1` and
//! `vigil.seed=2`:
//!
//! - PMU: the ID registers say there is none (ID_AA64DFR0_EL1.PMUVer 0), so
//!   PMCR_EL0, PMCCNTR_EL0 and PMUSERENR_EL0 are UNDEFINED (Arm ARM D13:
//!   the PMU registers exist only with FEAT_PMUv3).
//! - Breakpoints: seed 1 arms breakpoint 0 at `dbg_marker_a`, seed 2 at
//!   `dbg_marker_b`, both with debug exceptions enabled at EL1 (MDSCR_EL1
//!   MDE and KDE, OS lock clear, PSTATE.D clear). Every round each VM calls
//!   both markers and must take exactly its own breakpoint: the other VM's,
//!   were it left in the hardware, would fire here too.
//! - State: breakpoint 1, watchpoint 0 and the OS lock hold this VM's
//!   values across many switches. (QEMU implements MDCCINT_EL1 and the
//!   claim tags as constants, so they are not checked here.)

use core::arch::{asm, global_asm};

use vigil_guest::{ensure, expect_exception, fail, println, report, BootInfo};

const NAME: &str = "debug";
const ROUNDS: u64 = 6;
const SPINS: u64 = 5_000_000;
/// ESR_EL1.EC of a breakpoint exception taken to the current EL.
const EC_BREAKPOINT_CUR: u64 = 0x31;
const EC_UNKNOWN: u64 = 0x00;
/// DBGBCR<n>_EL1: E, PMC = 0b01 (EL1), BAS = 0b1111, unlinked address match.
const BCR_EL1_ADDRESS: u64 = 1 | (0b01 << 1) | (0xf << 5);

global_asm!(
    ".section .text",
    ".global dbg_marker_a",
    ".balign 16",
    "dbg_marker_a:",
    "    nop",
    "    ret",
    ".global dbg_marker_b",
    ".balign 16",
    "dbg_marker_b:",
    "    nop",
    "    ret",
);

extern "C" {
    fn dbg_marker_a();
    fn dbg_marker_b();
}

macro_rules! rw {
    ($read:ident, $write:ident, $reg:literal) => {
        fn $read() -> u64 {
            let v: u64;
            // SAFETY: reading a debug register has no side effects.
            unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack)) };
            v
        }
        fn $write(v: u64) {
            // SAFETY: debug registers only affect this VM's debug events,
            // which this scenario expects.
            unsafe { asm!(concat!("msr ", $reg, ", {}"), "isb", in(reg) v, options(nostack)) };
        }
    };
}

rw!(bvr0, set_bvr0, "dbgbvr0_el1");
rw!(bcr0, set_bcr0, "dbgbcr0_el1");
rw!(bvr1, set_bvr1, "dbgbvr1_el1");
rw!(bcr1, set_bcr1, "dbgbcr1_el1");
rw!(wvr0, set_wvr0, "dbgwvr0_el1");
rw!(wcr0, set_wcr0, "dbgwcr0_el1");
rw!(mdscr, set_mdscr, "mdscr_el1");
rw!(oslsr, _set_oslsr, "oslsr_el1");
rw!(_oslar, set_oslar, "oslar_el1");

fn pmu_is_undefined(what: &str, f: impl FnOnce()) {
    match expect_exception(f) {
        Some(e) if e.ec() == EC_UNKNOWN => {}
        Some(e) => fail!(NAME, "{what}: {e}, expected UNDEFINED (EC 0)"),
        None => fail!(
            NAME,
            "{what}: executed, but ID_AA64DFR0_EL1.PMUVer says there is no PMU"
        ),
    }
}

/// Whether calling `marker` takes a breakpoint exception at it.
fn hits(marker: unsafe extern "C" fn()) -> bool {
    let at = marker as usize as u64;
    // SAFETY: the markers are `nop; ret`; a breakpoint on the nop is taken
    // and skipped by `expect_exception`.
    match expect_exception(|| unsafe { marker() }) {
        None => false,
        Some(e) if e.ec() == EC_BREAKPOINT_CUR && e.elr == at => true,
        Some(e) => fail!(NAME, "calling the marker at {at:#x}: {e}"),
    }
}

fn spin() {
    // SAFETY: a countdown loop on a scratch register.
    unsafe {
        asm!("2:", "subs {n}, {n}, #1", "b.ne 2b", n = inout(reg) SPINS => _, options(nomem, nostack));
    }
}

pub fn run(boot: &'static BootInfo) -> ! {
    let seed: u64 = boot
        .bootarg("vigil.seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let dfr0: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe { asm!("mrs {}, id_aa64dfr0_el1", out(reg) dfr0, options(nomem, nostack)) };
    ensure!(
        NAME,
        (dfr0 >> 8) & 0xf == 0,
        "ID_AA64DFR0_EL1.PMUVer = {}, expected 0 (no PMU)",
        (dfr0 >> 8) & 0xf
    );
    let brps = ((dfr0 >> 12) & 0xf) + 1;
    ensure!(NAME, brps >= 2, "only {brps} breakpoints");

    // SAFETY: a PMU register read, which must trap.
    let pmcr = || unsafe { asm!("mrs {}, pmcr_el0", out(reg) _, options(nomem, nostack)) };
    pmu_is_undefined("MRS PMCR_EL0", pmcr);
    // SAFETY: as above.
    let pmccntr = || unsafe { asm!("mrs {}, pmccntr_el0", out(reg) _, options(nomem, nostack)) };
    pmu_is_undefined("MRS PMCCNTR_EL0", pmccntr);
    // SAFETY: a PMU register write, which must trap.
    let pmuserenr =
        || unsafe { asm!("msr pmuserenr_el0, {}", in(reg) 0xfu64, options(nomem, nostack)) };
    pmu_is_undefined("MSR PMUSERENR_EL0", pmuserenr);
    println!("debug: PMCR_EL0, PMCCNTR_EL0, PMUSERENR_EL0 are UNDEFINED (no PMU)");

    ensure!(
        NAME,
        oslsr() & 2 != 0,
        "OSLSR_EL1 = {:#x} at boot, expected the OS lock set (cold reset)",
        oslsr()
    );
    let (mine, theirs): (unsafe extern "C" fn(), unsafe extern "C" fn()) = if seed % 2 == 1 {
        (dbg_marker_a, dbg_marker_b)
    } else {
        (dbg_marker_b, dbg_marker_a)
    };
    // Breakpoint 1 and watchpoint 0 hold patterns, disabled (E = 0).
    let pat =
        |i: u64| ((seed << 40) | (i << 20) | 0x1000).wrapping_mul(0x9e37) & 0x0000_ffff_ffff_fffc;
    set_oslar(0);
    set_bvr0(mine as usize as u64);
    set_bcr0(BCR_EL1_ADDRESS);
    set_bvr1(pat(1));
    set_bcr1(0x1e0 | (seed & 1) << 1); // E = 0
    set_wvr0(pat(2));
    set_wcr0((0xff << 5) | (seed & 3) << 3); // E = 0, BAS, LSC
                                             // MDE (15) and KDE (13): breakpoints fire at EL1; PSTATE.D cleared.
    set_mdscr(mdscr() | (1 << 15) | (1 << 13));
    // SAFETY: unmasking debug exceptions, which this scenario expects.
    unsafe { asm!("msr daifclr, #8", "isb", options(nomem, nostack)) };
    let want = (bvr1(), bcr1(), wvr0(), wcr0());
    for round in 0..ROUNDS {
        spin();
        ensure!(
            NAME,
            hits(mine),
            "round {round}: breakpoint 0 at {:#x} did not fire (DBGBVR0 {:#x}, DBGBCR0 {:#x}, MDSCR {:#x}, OSLSR {:#x})",
            mine as usize,
            bvr0(),
            bcr0(),
            mdscr(),
            oslsr()
        );
        spin();
        ensure!(
            NAME,
            !hits(theirs),
            "round {round}: a breakpoint fired at {:#x}, which only the other VM arms",
            theirs as usize
        );
        let got = (bvr1(), bcr1(), wvr0(), wcr0());
        ensure!(
            NAME,
            got == want,
            "round {round}: (DBGBVR1, DBGBCR1, DBGWVR0, DBGWCR0) = {got:#x?}, expected {want:#x?}"
        );
        ensure!(
            NAME,
            bvr0() == mine as usize as u64 && oslsr() & 2 == 0,
            "round {round}: DBGBVR0 {:#x}, OSLSR {:#x}",
            bvr0(),
            oslsr()
        );
    }
    // SAFETY: masking debug exceptions again.
    unsafe { asm!("msr daifset, #8", options(nomem, nostack)) };
    set_bcr0(0);
    println!(
        "debug: {ROUNDS} rounds: own breakpoint fired every time, the other VM's never; breakpoint, watchpoint and OS lock state intact (seed {seed})"
    );
    report::pass(NAME)
}
