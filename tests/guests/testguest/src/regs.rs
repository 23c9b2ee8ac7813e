//! `regs`: fill every general-purpose register the compiler lets inline
//! assembly own (x0-x17, x20-x28), all 32 FP/SIMD registers, FPCR and a set
//! of EL1 system registers with values derived from `vigil.seed=<n>`, spin
//! long enough to be switched out many times by the hypervisor (run two
//! VMs with different seeds on one physical CPU), and check that nothing
//! changed: a register leaking between VMs shows up as another seed's
//! value. Its EL1 physical timer stays masked: a PPI 30 pending here
//! would be another VM's. Odd seeds keep an SGI active (running priority
//! 0x80), even seeds must see none: active priorities are per VM.

use vigil_guest::{fail, gic, println, report, BootInfo};

const NAME: &str = "regs";
const ROUNDS: u64 = 6;
const SPINS: u64 = 20_000_000;

/// x0-x17, x20-x27 (26 values), then q0-q31 as 64 u64 halves, then FPCR.
static mut BUF: [u64; 26 + 64 + 1] = [0; 26 + 64 + 1];

fn pattern(seed: u64, i: u64) -> u64 {
    (seed << 56) | (0x5a5a_0000_0000 | (i << 16) | seed).wrapping_mul(0x9e37_79b9)
}

macro_rules! sysregs {
    ($($name:literal),*) => {
        const SYSREGS: &[&str] = &[$($name),*];
        fn write_sysregs(seed: u64) {
            let mut i = 0u64;
            $(
                let v = (pattern(seed, 200 + i) & mask($name)) | force($name);
                // SAFETY: these EL1/EL0 registers have no effect while the
                // MMU is off and no exception is taken.
                unsafe { core::arch::asm!(concat!("msr ", $name, ", {}"), in(reg) v) };
                i += 1;
            )*
            let _ = i;
        }
        fn read_sysregs(out: &mut [u64]) {
            let mut i = 0;
            $(
                // SAFETY: reading system registers has no side effects.
                unsafe { core::arch::asm!(concat!("mrs {}, ", $name), out(reg) out[i]) };
                i += 1;
            )*
            let _ = i;
        }
    };
}

// TPIDR_EL1 holds the vCPU index for the library; VBAR/SCTLR run the guest.
sysregs!(
    "tpidr_el0",
    "tpidrro_el0",
    "contextidr_el1",
    "sp_el0",
    "par_el1",
    "afsr0_el1",
    "afsr1_el1",
    "amair_el1",
    "mair_el1",
    "ttbr0_el1",
    "ttbr1_el1",
    "cntkctl_el1",
    "cntp_cval_el0",
    "cntp_ctl_el0"
);

/// Bits a register keeps (the rest are RES0 or read-only).
fn mask(name: &str) -> u64 {
    match name {
        "contextidr_el1" => 0xffff_ffff,
        "par_el1" => 0x0000_ffff_ffff_f000, // PA bits of a successful result
        "afsr0_el1" | "afsr1_el1" => 0,     // IMPLEMENTATION DEFINED: QEMU RAZ
        "cntkctl_el1" => 0x3,               // EL0PCTEN, EL0VCTEN
        "ttbr0_el1" | "ttbr1_el1" => 0x0000_ffff_ffff_fffe,
        // ENABLE and IMASK (ISTATUS is read-only and follows the counter).
        "cntp_ctl_el0" => 0x3,
        _ => u64::MAX,
    }
}

/// Bits a register always gets: the physical timer stays masked, so this
/// VM's own PPI 30 never asserts and any PPI 30 pending here came from
/// another VM.
fn force(name: &str) -> u64 {
    match name {
        "cntp_ctl_el0" => 0x2,
        _ => 0,
    }
}

const PTIMER_PPI: u32 = 30;
/// The SGI an odd-seeded VM keeps active.
const HELD_SGI: u32 = 3;

pub fn run(boot: &'static BootInfo) -> ! {
    let seed: u64 = boot
        .bootarg("vigil.seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    gic::init_distributor();
    gic::init_cpu();
    // Odd seeds hold an SGI active (acknowledged, not EOIed) through every
    // round: their running priority is 0x80, from ICH_AP1R0 bit 16; even
    // seeds must stay idle (0xff) on the same physical CPU.
    let hold = seed % 2 == 1;
    if hold {
        gic::set_priority(HELD_SGI, 0x80);
        gic::enable(HELD_SGI);
        gic::send_sgi(HELD_SGI, vigil_guest::cpu::mpidr());
        let ok = vigil_guest::cpu::wait_until(5_000_000, || {
            let intid: u64;
            // SAFETY: acknowledging with IRQs masked in PSTATE only makes
            // the SGI active; this scenario EOIs it at the end.
            unsafe { core::arch::asm!("mrs {}, S3_0_C12_C12_0", out(reg) intid) };
            intid & 0xff_ffff == u64::from(HELD_SGI)
        });
        if !ok {
            fail!(NAME, "SGI {HELD_SGI} to itself never became pending");
        }
    }
    let want_rpr = if hold { 0x80 } else { 0xff };
    let mut sys_want = [0u64; 16];
    let mut sys_got = [0u64; 16];
    for round in 0..ROUNDS {
        write_sysregs(seed);
        read_sysregs(&mut sys_want);
        let s = seed + round;
        let buf = core::ptr::addr_of_mut!(BUF) as u64;
        // SAFETY: the block only writes BUF (whose address it is given) and
        // declares every register it uses as clobbered.
        unsafe {
            core::arch::asm!(
                // Fill: x0..x17, x20..x27 from the pattern, q0..q31 and FPCR.
                "mov x28, {seed}",
                "movz x0, #0x1001", "mul x0, x0, x28", "add x1, x0, #1", "add x2, x0, #2", "add x3, x0, #3",
                "add x4, x0, #4", "add x5, x0, #5", "add x6, x0, #6", "add x7, x0, #7", "add x8, x0, #8",
                "add x9, x0, #9", "add x10, x0, #10", "add x11, x0, #11", "add x12, x0, #12", "add x13, x0, #13",
                "add x14, x0, #14", "add x15, x0, #15", "add x16, x0, #16", "add x17, x0, #17",
                "add x20, x0, #20", "add x21, x0, #21", "add x22, x0, #22", "add x23, x0, #23",
                "add x24, x0, #24", "add x25, x0, #25", "add x26, x0, #26", "add x27, x0, #27",
                "dup v0.2d, x0", "dup v1.2d, x1", "dup v2.2d, x2", "dup v3.2d, x3",
                "dup v4.2d, x4", "dup v5.2d, x5", "dup v6.2d, x6", "dup v7.2d, x7",
                "dup v8.2d, x8", "dup v9.2d, x9", "dup v10.2d, x10", "dup v11.2d, x11",
                "dup v12.2d, x12", "dup v13.2d, x13", "dup v14.2d, x14", "dup v15.2d, x15",
                "dup v16.2d, x16", "dup v17.2d, x17", "dup v18.2d, x20", "dup v19.2d, x21",
                "dup v20.2d, x22", "dup v21.2d, x23", "dup v22.2d, x24", "dup v23.2d, x25",
                "dup v24.2d, x26", "dup v25.2d, x27", "dup v26.2d, x0", "dup v27.2d, x1",
                "dup v28.2d, x2", "dup v29.2d, x3", "dup v30.2d, x4", "dup v31.2d, x5",
                // FPCR: rounding mode from the seed (RMode, bits 23:22).
                "and x28, x28, #3", "lsl x28, x28, #22", "msr fpcr, x28",
                // Spin, long enough to be preempted many times.
                "mov x28, {spins}",
                "2:", "subs x28, x28, #1", "b.ne 2b",
                // Dump everything to BUF.
                "mov x28, {buf}",
                "stp x0, x1, [x28, #0]", "stp x2, x3, [x28, #16]", "stp x4, x5, [x28, #32]",
                "stp x6, x7, [x28, #48]", "stp x8, x9, [x28, #64]", "stp x10, x11, [x28, #80]",
                "stp x12, x13, [x28, #96]", "stp x14, x15, [x28, #112]", "stp x16, x17, [x28, #128]",
                "stp x20, x21, [x28, #144]", "stp x22, x23, [x28, #160]", "stp x24, x25, [x28, #176]",
                "stp x26, x27, [x28, #192]",
                "add x28, x28, #208",
                "stp q0, q1, [x28, #0]", "stp q2, q3, [x28, #32]", "stp q4, q5, [x28, #64]",
                "stp q6, q7, [x28, #96]", "stp q8, q9, [x28, #128]", "stp q10, q11, [x28, #160]",
                "stp q12, q13, [x28, #192]", "stp q14, q15, [x28, #224]", "stp q16, q17, [x28, #256]",
                "stp q18, q19, [x28, #288]", "stp q20, q21, [x28, #320]", "stp q22, q23, [x28, #352]",
                "stp q24, q25, [x28, #384]", "stp q26, q27, [x28, #416]", "stp q28, q29, [x28, #448]",
                "stp q30, q31, [x28, #480]",
                "mrs x0, fpcr", "str x0, [x28, #512]",
                "msr fpcr, xzr",
                seed = in(reg) s,
                spins = in(reg) SPINS,
                buf = in(reg) buf,
                out("x0") _, out("x1") _, out("x2") _, out("x3") _, out("x4") _, out("x5") _,
                out("x6") _, out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _,
                out("x12") _, out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                out("x20") _, out("x21") _, out("x22") _, out("x23") _, out("x24") _, out("x25") _,
                out("x26") _, out("x27") _, out("x28") _,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
                out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                out("v12") _, out("v13") _, out("v14") _, out("v15") _, out("v16") _, out("v17") _,
                out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
                out("v30") _, out("v31") _,
            );
        }
        // SAFETY: single-threaded use of BUF after the block wrote it.
        let got = unsafe { &*core::ptr::addr_of!(BUF) };
        let base = 0x1001u64.wrapping_mul(s);
        let gp: [u64; 26] =
            core::array::from_fn(|i| base + if i < 18 { i as u64 } else { i as u64 + 2 });
        for (i, (&g, &w)) in got[..26].iter().zip(gp.iter()).enumerate() {
            if g != w {
                let reg = if i < 18 { i } else { i + 2 };
                fail!(
                    NAME,
                    "round {round}: x{reg} = {g:#x}, expected {w:#x} (seed {s})"
                );
            }
        }
        let q_src: [u64; 32] = core::array::from_fn(|q| match q {
            0..=17 => gp[q],
            18..=25 => gp[q],
            _ => gp[q - 26],
        });
        for q in 0..32 {
            let (lo, hi) = (got[26 + 2 * q], got[26 + 2 * q + 1]);
            if lo != q_src[q] || hi != q_src[q] {
                fail!(
                    NAME,
                    "round {round}: q{q} = {hi:#x}:{lo:#x}, expected {:#x} twice (seed {s})",
                    q_src[q]
                );
            }
        }
        let fpcr_want = (s & 3) << 22;
        if got[90] != fpcr_want {
            fail!(
                NAME,
                "round {round}: FPCR = {:#x}, expected {fpcr_want:#x}",
                got[90]
            );
        }
        read_sysregs(&mut sys_got);
        for (i, name) in SYSREGS.iter().enumerate() {
            if sys_got[i] & mask(name) != sys_want[i] & mask(name) {
                fail!(
                    NAME,
                    "round {round}: {name} = {:#x}, expected {:#x}",
                    sys_got[i],
                    sys_want[i]
                );
            }
        }
        // SAFETY: GICR_ISPENDR0 of this vCPU's redistributor; reading it
        // has no side effects.
        let pending = unsafe { vigil_guest::mmio::read32(gic::sgi_base() + 0x200) };
        if pending & (1 << PTIMER_PPI) != 0 {
            fail!(
                NAME,
                "round {round}: PPI {PTIMER_PPI} pending (GICR_ISPENDR0 {pending:#x}) though this VM's physical timer is masked"
            );
        }
        let rpr = gic::running_priority() & 0xff;
        if rpr != want_rpr {
            fail!(
                NAME,
                "round {round}: running priority {rpr:#x}, expected {want_rpr:#x} (active priorities of another VM?)"
            );
        }
    }
    if hold {
        // SAFETY: ends the SGI acknowledged above (EOImode 0: drop and
        // deactivate).
        unsafe { core::arch::asm!("msr S3_0_C12_C12_1, {}", in(reg) u64::from(HELD_SGI)) };
    }
    println!(
        "regs: {ROUNDS} rounds of {SPINS} spins: x0-x17, x20-x28, q0-q31, FPCR and {} EL1/EL0 system registers intact (seed {seed})",
        SYSREGS.len()
    );
    report::pass(NAME)
}
