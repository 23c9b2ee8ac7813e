//! The PMU and the self-hosted debug registers: what MDCR_EL2 lets a guest
//! reach, and the per-vCPU debug state.
//!
//! PMU: the guest's ID registers say there is none (PMUVer 0), so every
//! PMU register is trapped (MDCR_EL2.TPM, TPMCR) and gets what the Arm ARM
//! gives an absent PMU: UNDEFINED.
//!
//! Debug: breakpoints, watchpoints, the OS lock, claim tags and MDCCINT are
//! per vCPU, loaded lazily as KVM does. A vCPU enters with debug accesses
//! trapped (TDA, TDOSA, TDRA); its first access loads its state into the
//! hardware, lifts the traps and re-executes the instruction, and the state
//! stays live until another vCPU is loaded here, which saves it and leaves
//! the hardware neutral (every breakpoint and watchpoint disabled, the OS
//! lock set). A vCPU whose MDSCR_EL1 enables debug exceptions (MDE, KDE,
//! SS) is loaded at once, since its breakpoints must fire without an access
//! first. So one VM's breakpoint never fires in another, and gdb and perf
//! in a guest keep working. MDSCR_EL1 itself is switched with the other EL1
//! registers.

use core::sync::atomic::{AtomicUsize, Ordering};
use vigil_platform::MAX_CPUS;

use crate::arch::sysreg;

/// MDCR_EL2 bits (Arm ARM D24.2.x "MDCR_EL2").
const TPMCR: u64 = 1 << 5;
const TPM: u64 = 1 << 6;
const TDA: u64 = 1 << 9;
const TDOSA: u64 = 1 << 10;
const TDRA: u64 = 1 << 11;
const HPMN_MASK: u64 = 0x1f;
const DEBUG_TRAPS: u64 = TDA | TDOSA | TDRA;

/// MDSCR_EL1 bits that enable debug exceptions: SS (0), KDE (13), MDE (15).
const MDSCR_ENABLES: u64 = (1 << 0) | (1 << 13) | (1 << 15);

/// Most breakpoints and watchpoints the architecture defines.
const MAX_POINTS: usize = 16;

/// MDCR_EL2 while a guest runs, without the debug traps (set by `init_cpu`).
static MDCR_BASE: AtomicUsize = AtomicUsize::new(0);
/// Breakpoints and watchpoints this CPU implements (ID_AA64DFR0_EL1).
static BRPS: AtomicUsize = AtomicUsize::new(0);
static WRPS: AtomicUsize = AtomicUsize::new(0);
/// Per physical CPU: the vCPU (address of its `DebugState`) whose debug
/// registers are live in the hardware, or 0 (neutral).
static LIVE: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

macro_rules! indexed {
    ($read:ident, $write:ident, $op2:literal; $($i:literal),*) => {
        fn $read(n: usize) -> u64 {
            let v: u64;
            match n {
                // SAFETY: reading a debug register from EL2 has no side
                // effects; `n` is below the implemented count.
                $($i => unsafe { core::arch::asm!(concat!("mrs {}, S2_0_C0_C", $i, "_", $op2), out(reg) v, options(nomem, nostack)) },)*
                _ => v = 0,
            }
            v
        }

        fn $write(n: usize, v: u64) {
            match n {
                // SAFETY: debug registers only affect debug events of
                // EL1/EL0, i.e. the guest's (MDCR_EL2.TDE is 0).
                $($i => unsafe { core::arch::asm!(concat!("msr S2_0_C0_C", $i, "_", $op2, ", {}"), in(reg) v, options(nomem, nostack)) },)*
                _ => {}
            }
        }
    };
}

indexed!(read_bvr, write_bvr, "4"; 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
indexed!(read_bcr, write_bcr, "5"; 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
indexed!(read_wvr, write_wvr, "6"; 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
indexed!(read_wcr, write_wcr, "7"; 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

/// OSLSR_EL1.OSLK.
const OSLK: u64 = 1 << 1;

/// A vCPU's debug registers while they are not live.
#[derive(Clone, Copy, Debug)]
pub struct DebugRegs {
    bvr: [u64; MAX_POINTS],
    bcr: [u64; MAX_POINTS],
    wvr: [u64; MAX_POINTS],
    wcr: [u64; MAX_POINTS],
    mdccint: u64,
    claim: u64,
    os_lock: bool,
}

impl DebugRegs {
    /// At a PE's cold reset: nothing armed, the OS lock set (Arm ARM
    /// D2.5.4, "The OS lock").
    pub const fn reset() -> Self {
        Self {
            bvr: [0; MAX_POINTS],
            bcr: [0; MAX_POINTS],
            wvr: [0; MAX_POINTS],
            wcr: [0; MAX_POINTS],
            mdccint: 0,
            claim: 0,
            os_lock: true,
        }
    }

    fn save(&mut self) {
        for n in 0..BRPS.load(Ordering::Relaxed) {
            self.bvr[n] = read_bvr(n);
            self.bcr[n] = read_bcr(n);
        }
        for n in 0..WRPS.load(Ordering::Relaxed) {
            self.wvr[n] = read_wvr(n);
            self.wcr[n] = read_wcr(n);
        }
        self.mdccint = sysreg::read_mdccint();
        self.claim = sysreg::read_claimclr() & 0xff;
        self.os_lock = sysreg::read_oslsr() & OSLK != 0;
    }

    fn restore(&self) {
        for n in 0..BRPS.load(Ordering::Relaxed) {
            write_bvr(n, self.bvr[n]);
            write_bcr(n, self.bcr[n]);
        }
        for n in 0..WRPS.load(Ordering::Relaxed) {
            write_wvr(n, self.wvr[n]);
            write_wcr(n, self.wcr[n]);
        }
        sysreg::write_mdccint(self.mdccint);
        sysreg::write_claimclr(0xff);
        sysreg::write_claimset(self.claim);
        sysreg::write_oslar(self.os_lock as u64);
    }
}

/// A vCPU's debug state: its registers, behind their own lock (the trap
/// that loads them runs while the vCPU's main state is borrowed).
pub struct DebugState(spin::Mutex<DebugRegs>);

impl DebugState {
    pub const fn new() -> Self {
        Self(spin::Mutex::new(DebugRegs::reset()))
    }

    fn addr(&self) -> usize {
        self as *const Self as usize
    }
}

/// Per CPU, once: the debug resources and the MDCR_EL2 guests run with.
pub fn init_cpu() {
    let dfr0: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe { core::arch::asm!("mrs {}, id_aa64dfr0_el1", out(reg) dfr0, options(nomem, nostack)) };
    BRPS.store((((dfr0 >> 12) & 0xf) + 1) as usize, Ordering::Relaxed);
    WRPS.store((((dfr0 >> 20) & 0xf) + 1) as usize, Ordering::Relaxed);
    // HPMN as the reset left it (0 is reserved on some versions); every
    // PMU access traps anyway.
    let base = (sysreg::mdcr_el2() & HPMN_MASK) | TPM | TPMCR;
    MDCR_BASE.store(base as usize, Ordering::Relaxed);
    sysreg::set_mdcr_el2(base | DEBUG_TRAPS);
    neutral();
}

fn base() -> u64 {
    MDCR_BASE.load(Ordering::Relaxed) as u64
}

/// Every breakpoint and watchpoint disabled, nothing claimed, the OS lock
/// set: no debug event of one vCPU survives into another.
fn neutral() {
    DebugRegs::reset().restore();
}

/// A vCPU is being loaded on this CPU with MDSCR_EL1 `mdscr`: save the
/// outgoing vCPU's debug registers if they are live, then load the
/// incoming one's now (debug exceptions enabled) or trap its first access.
pub fn switch_to(next: &DebugState, mdscr: u64) {
    put();
    if mdscr & MDSCR_ENABLES != 0 {
        load(next);
    } else {
        sysreg::set_mdcr_el2(base() | DEBUG_TRAPS);
    }
}

/// Save the live debug registers into their vCPU, leave the hardware
/// neutral and trap debug accesses.
pub fn put() {
    let cpu = crate::arch::cpu_index();
    let live = LIVE[cpu].swap(0, Ordering::Relaxed);
    if live != 0 {
        // SAFETY: LIVE only holds addresses of `DebugState`s inside leaked,
        // never-freed vCPUs.
        let st: &DebugState = unsafe { &*(live as *const DebugState) };
        st.0.lock().save();
        neutral();
    }
    sysreg::set_mdcr_el2(base() | DEBUG_TRAPS);
}

/// A vCPU restarts (PSCI CPU_ON, reset): its debug registers go back to
/// their reset values, and are not live.
pub fn reset(st: &DebugState) {
    let cpu = crate::arch::cpu_index();
    if LIVE[cpu]
        .compare_exchange(st.addr(), 0, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        neutral();
        sysreg::set_mdcr_el2(base() | DEBUG_TRAPS);
    }
    *st.0.lock() = DebugRegs::reset();
}

fn load(st: &DebugState) {
    st.0.lock().restore();
    LIVE[crate::arch::cpu_index()].store(st.addr(), Ordering::Relaxed);
    sysreg::set_mdcr_el2(base());
}

/// A trapped access to a debug register (op0 == 2) by the vCPU loaded
/// here, whose state is `st`: load it and lift the traps, so that the
/// access re-executes on the hardware. False if it was live already (the
/// access is to something the traps do not lift: UNDEFINED).
pub fn on_trap(st: &DebugState) -> bool {
    if LIVE[crate::arch::cpu_index()].load(Ordering::Relaxed) == st.addr() {
        return false;
    }
    load(st);
    sysreg::isb();
    true
}
