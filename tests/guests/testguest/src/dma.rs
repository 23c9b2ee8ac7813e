//! `dma-attack` and `dma-canary`: a VM that owns QEMU's `edu` device
//! (passed through with the PCIe bridge, `-device edu,dma_mask=...` so it
//! can address 48 bits) aims its DMA engine at memory that is not its own,
//! next to a VM holding a canary.
//!
//! `dma-attack` (`vigil.dma.victim=ADDR vigil.dma.vigil=ADDR`): writes a
//! pattern into, and reads from, (a) the victim VM's canary (its physical
//! address), (b) a page of Vigil's own, (c) an unmapped IPA; each read
//! must bring nothing of the target. Then it DMAs between two pages of its own RAM and checks the
//! copy: its own DMA still works.
//!
//! `dma-canary`: fills a page with a pattern, waits `vigil.dma.wait_ms`
//! (default 8000) and checks it.
//!
//! edu (hw/misc/edu.c): DMA source 0x80, destination 0x88, count 0x90,
//! command 0x98 (bit 0 run, bit 1 direction: 1 = from its buffer to RAM);
//! its buffer is at device address 0x40000 (4 KiB).

use vigil_guest::{cpu, ensure, fail, mmio, println, report, BootInfo};

use vigil_guest::its::{mem_read64, mem_write64};

use crate::passthrough::setup_edu_for;

const ATTACK: &str = "dma-attack";
const CANARY: &str = "dma-canary";
const EDU_DMA_SRC: u64 = 0x80;
const EDU_DMA_DST: u64 = 0x88;
const EDU_DMA_COUNT: u64 = 0x90;
const EDU_DMA_CMD: u64 = 0x98;
const CMD_RUN: u64 = 1;
const CMD_TO_RAM: u64 = 2;
const EDU_BUF: u64 = 0x4_0000;
const LEN: u64 = 256;
const TIMEOUT_US: u64 = 10_000_000;
/// Where the canary sits in the victim's RAM.
pub const CANARY_OFFSET: u64 = 48 << 20;

fn canary_word(i: u64) -> u64 {
    0xc0de_ca4a_0000_0000 | i
}

struct Edu(u64);

impl Edu {
    fn w64(&self, off: u64, v: u64) {
        // SAFETY: edu's BAR0 registers, mapped through the PCIe window;
        // 64-bit DMA registers take 64-bit accesses.
        unsafe { mmio::write64(self.0 + off, v) }
    }

    fn r64(&self, off: u64) -> u64 {
        // SAFETY: as in `w64`.
        unsafe { mmio::read64(self.0 + off) }
    }

    /// One transfer of LEN bytes; waits for edu to finish it.
    fn dma(&self, src: u64, dst: u64, to_ram: bool) {
        self.w64(EDU_DMA_SRC, src);
        self.w64(EDU_DMA_DST, dst);
        self.w64(EDU_DMA_COUNT, LEN);
        self.w64(EDU_DMA_CMD, CMD_RUN | if to_ram { CMD_TO_RAM } else { 0 });
        if !cpu::wait_until(TIMEOUT_US, || self.r64(EDU_DMA_CMD) & CMD_RUN == 0) {
            fail!(ATTACK, "edu DMA {src:#x} -> {dst:#x} did not finish");
        }
    }

    /// RAM at `from` into the buffer.
    fn load(&self, from: u64) {
        self.dma(from, EDU_BUF, false);
    }

    /// The buffer into RAM at `to`.
    fn store(&self, to: u64) {
        self.dma(EDU_BUF, to, true);
    }
}

fn fill(at: u64, tag: u64) {
    for i in 0..LEN / 8 {
        mem_write64(at + 8 * i, tag ^ i);
    }
}

fn holds(at: u64, tag: u64) -> bool {
    (0..LEN / 8).all(|i| mem_read64(at + 8 * i) == tag ^ i)
}

pub fn attack(boot: &'static BootInfo) -> ! {
    let arg = |k: &str| {
        boot.bootarg(k)
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .unwrap_or_else(|| fail!(ATTACK, "needs {k}=ADDR"))
    };
    let victim = arg("vigil.dma.victim");
    let vigil = arg("vigil.dma.vigil");
    let unmapped = 0x2000_0000u64;
    let (_bdf, _dev, bar0) = setup_edu_for(ATTACK, boot, true);
    let edu = Edu(bar0);
    // Scratch pages of its own, above the image.
    let mine = boot.ram.start + (40 << 20);
    let (pattern, probe, copy) = (mine, mine + 0x1000, mine + 0x2000);
    const MINE: u64 = 0x6d69_6e65_0000_0000;
    fill(pattern, MINE);
    for (what, target) in [
        ("the other VM's RAM", victim),
        ("Vigil's own memory", vigil),
        ("an unmapped IPA", unmapped),
    ] {
        // Write: our pattern into the buffer, then the buffer at the
        // target.
        edu.load(pattern);
        edu.store(target);
        // Read: the target into the buffer, then the buffer into a page of
        // ours. Blocked, the read brings nothing of the target: QEMU's edu
        // gets zeros for an aborted read (the buffer may also keep our
        // pattern); anything else came from the target.
        edu.load(target);
        fill(probe, 0x5a5a_5a5a_5a5a_5a5a);
        edu.store(probe);
        let zeros = (0..LEN / 8).all(|i| mem_read64(probe + 8 * i) == 0);
        ensure!(
            ATTACK,
            zeros || holds(probe, MINE),
            "DMA read of {what} at {target:#x} brought data (first word {:#x})",
            mem_read64(probe)
        );
        println!("{ATTACK}: DMA write and read of {what} at {target:#x}: blocked");
    }
    // Its own RAM: a round trip through the buffer.
    const OWN: u64 = 0x6f77_6e00_0000_0000;
    fill(pattern, OWN);
    fill(copy, 0);
    edu.load(pattern);
    edu.store(copy);
    ensure!(
        ATTACK,
        holds(copy, OWN),
        "DMA within its own RAM ({pattern:#x} -> {copy:#x}) did not copy (first word {:#x})",
        mem_read64(copy)
    );
    println!("{ATTACK}: DMA within its own RAM ({pattern:#x} -> buffer -> {copy:#x}): copied");
    report::pass(ATTACK)
}

pub fn canary(boot: &'static BootInfo) -> ! {
    let wait_ms: u64 = boot
        .bootarg("vigil.dma.wait_ms")
        .and_then(|s| s.parse().ok())
        .unwrap_or(8000);
    let at = boot.ram.start + CANARY_OFFSET;
    ensure!(CANARY, at + 0x1000 <= boot.ram.end, "needs 49 MiB of RAM");
    for i in 0..512 {
        mem_write64(at + 8 * i, canary_word(i));
    }
    println!("{CANARY}: canary page at {at:#x}, checked in {wait_ms} ms");
    cpu::wait_until(wait_ms * 1000, || false);
    let bad = (0..512)
        .filter(|&i| mem_read64(at + 8 * i) != canary_word(i))
        .count();
    ensure!(
        CANARY,
        bad == 0,
        "{bad} of 512 canary words at {at:#x} were overwritten"
    );
    println!("{CANARY}: canary page at {at:#x} intact after {wait_ms} ms");
    report::pass(CANARY)
}
