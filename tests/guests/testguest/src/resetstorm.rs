//! `reset-storm`: 100 PSCI SYSTEM_RESETs by vCPU 0 while vCPUs 1..3 call
//! CPU_ON on each other in a loop (and CPU_OFF themselves now and then),
//! with a passed-through `edu` device raising MSIs through the vITS, some
//! still in flight when the reset is asked for. Run it identity-mapped
//! with the PCIe bridge and 4 vCPUs.
//!
//! Every boot must be clean: the distributor and the vITS at their reset
//! state, vCPUs 1..3 off (AFFINITY_INFO), no vCPU of the previous boot
//! still running (a heartbeat they write stays still), and the device's
//! MSIs delivered once mapped again. CPU_ON only ever answers SUCCESS,
//! ALREADY_ON, ON_PENDING or DENIED (the reset has begun). At the end the
//! free host LPIs are back at their first boot's count.
//!
//! A record in RAM outside the image survives each reset (Vigil reloads
//! only the images).

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};

use vigil_guest::gic;
use vigil_guest::its::{self, Bump, Its, ItsCommand, PropTable};
use vigil_guest::{cpu, ensure, fail, mmio, println, psci, report, smccc, BootInfo};

use crate::passthrough::{setup_edu_for, EDU_IRQ_ACK, EDU_IRQ_RAISE, EDU_IRQ_STATUS, EVENT};

const NAME: &str = "reset-storm";
const RESETS: u64 = 100;
const CPUS: usize = 4;
const MAGIC: u64 = 0x5245_5345_5453_544d;
const VLPI: u32 = gic::LPI_BASE + 32;
/// MSIs each boot waits for.
const MSIS: u32 = 3;
const TIMEOUT_US: u64 = 10_000_000;
/// How long the heartbeat of a stale vCPU is watched for.
const QUIET_US: u64 = 50_000;
/// CPU_ON calls between a secondary's CPU_OFFs.
const OFF_EVERY: u64 = 4;

/// What survives the resets, at a fixed place in RAM.
#[repr(C)]
struct Record {
    magic: u64,
    boots: u64,
    /// Free host LPIs at the first boot, before its MAPD.
    host_lpis: u64,
    /// Written by vCPUs 1..3 on every CPU_ON they make.
    heartbeat: u64,
    cpu_on_success: u64,
    cpu_on_denied: u64,
    /// A CPU_ON result other than the four allowed (0 none).
    bad_result: u64,
    msis: u64,
}

fn record(boot: &BootInfo) -> *mut Record {
    let at = boot.ram.start + 48 * 1024 * 1024;
    if at + 4096 > boot.ram.end {
        fail!(NAME, "needs at least 49 MiB of RAM");
    }
    at as *mut Record
}

static RECORD: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static TAKEN: AtomicU32 = AtomicU32::new(0);
static EDU: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static MPIDRS: [core::sync::atomic::AtomicU64; CPUS] =
    [const { core::sync::atomic::AtomicU64::new(0) }; CPUS];

/// Field `f` of the record, read or written volatile (other vCPUs, and
/// the previous boot, write it too).
macro_rules! field {
    ($f:ident) => {{
        let r = RECORD.load(SeqCst) as *mut Record;
        // SAFETY: RECORD points at the record in this VM's RAM, outside
        // the image and the allocator's range.
        unsafe { core::ptr::addr_of_mut!((*r).$f) }
    }};
}

fn get(p: *mut u64) -> u64 {
    // SAFETY: `p` is a field of the record (see `field!`).
    unsafe { core::ptr::read_volatile(p) }
}

fn put(p: *mut u64, v: u64) {
    // SAFETY: as in `get`.
    unsafe { core::ptr::write_volatile(p, v) }
}

fn add(p: *mut u64, v: u64) {
    // SAFETY: as in `get`; the u64 field is 8-byte aligned.
    let a = unsafe { &*(p as *const core::sync::atomic::AtomicU64) };
    a.fetch_add(v, SeqCst);
}

fn lpi_handler(intid: u32) {
    if intid != VLPI {
        fail!(NAME, "unexpected LPI {intid}");
    }
    let edu = EDU.load(SeqCst);
    // SAFETY: edu's BAR0 registers, mapped through the PCIe window.
    unsafe {
        let st = mmio::read32(edu + EDU_IRQ_STATUS);
        mmio::write32(edu + EDU_IRQ_ACK, st);
    }
    TAKEN.fetch_add(1, SeqCst);
}

/// vCPUs 1..3: CPU_ON the other two, forever, going off now and then.
fn churn(context: u64) -> ! {
    let me = (context as usize) % CPUS;
    let mut n = 0u64;
    loop {
        for (t, mpidr) in MPIDRS.iter().enumerate().skip(1) {
            if t == me {
                continue;
            }
            let r = psci::cpu_on(mpidr.load(SeqCst), t as u64);
            match r {
                psci::SUCCESS => add(field!(cpu_on_success), 1),
                psci::DENIED => add(field!(cpu_on_denied), 1),
                psci::ALREADY_ON | psci::ON_PENDING => {}
                other => put(field!(bad_result), other as u64),
            }
            add(field!(heartbeat), 1);
        }
        n += 1;
        if n.is_multiple_of(OFF_EVERY) {
            psci::cpu_off();
        }
    }
}

fn host_lpis_free() -> u64 {
    smccc::vigil_host_lpis_free().unwrap_or_else(|e| fail!(NAME, "VIGIL_HOST_LPIS_FREE: {e:?}"))
}

fn check_clean_boot(boot: &BootInfo, k: u64) {
    // SAFETY: GICD_CTLR, the distributor's first register.
    let ctlr = unsafe { mmio::read32(gic::GICD_BASE) };
    ensure!(
        NAME,
        ctlr & 0b11 == 0,
        "boot {k}: GICD_CTLR {ctlr:#x}: groups still enabled from the previous boot"
    );
    let its_ctlr = its::read32(its::GITS_CTLR);
    ensure!(
        NAME,
        its_ctlr & 1 == 0 && its::read64(its::GITS_CREADR) == 0,
        "boot {k}: GITS_CTLR {its_ctlr:#x}, CREADR {:#x}: the vITS is not at reset",
        its::read64(its::GITS_CREADR)
    );
    for (i, &mpidr) in boot.cpus().iter().enumerate().skip(1) {
        let a = psci::affinity_info(mpidr);
        ensure!(
            NAME,
            a == psci::AFFINITY_OFF,
            "boot {k}: vCPU {i} is {a} at boot (AFFINITY_INFO), expected OFF"
        );
    }
    let beat = get(field!(heartbeat));
    cpu::wait_until(QUIET_US, || false);
    let now = get(field!(heartbeat));
    ensure!(
        NAME,
        now == beat,
        "boot {k}: a vCPU of the previous boot still runs (heartbeat {beat} -> {now})"
    );
}

fn setup_its(mem: &mut Bump, dev: u32) -> Its {
    gic::init_distributor();
    gic::init_cpu();
    let id_bits = gic::lpi_id_bits().min(16);
    let prop = PropTable::new(mem, id_bits).unwrap_or_else(|e| fail!(NAME, "{e:?}"));
    prop.set(VLPI, 0xa0, true);
    gic::set_lpi_handler(lpi_handler);
    its::enable_lpis_on_this_cpu(mem, &prop).unwrap_or_else(|e| fail!(NAME, "{e:?}"));
    let mut its = Its::init(mem, 16, 13, 4).unwrap_or_else(|e| fail!(NAME, "ITS: {e:?}"));
    let rd = its
        .rdbase(cpu::mpidr())
        .unwrap_or_else(|| fail!(NAME, "no redistributor for vCPU 0"));
    let itt = mem
        .alloc(its.itt_bytes(2), 256)
        .unwrap_or_else(|| fail!(NAME, "no memory for the ITT"));
    its.send_all(&[
        ItsCommand::mapc(0, rd, true),
        ItsCommand::mapd(dev, itt, 2, true),
        ItsCommand::mapti(dev, EVENT, VLPI, 0),
        ItsCommand::sync(rd),
    ])
    .unwrap_or_else(|e| fail!(NAME, "MAPC/MAPD/MAPTI: {e:?}"));
    its
}

pub fn run(boot: &'static BootInfo) -> ! {
    ensure!(NAME, boot.vigil, "needs Vigil");
    ensure!(
        NAME,
        boot.cpus().len() >= CPUS,
        "needs {CPUS} vCPUs, has {}",
        boot.cpus().len()
    );
    let rec = record(boot);
    RECORD.store(rec as u64, SeqCst);
    for (i, &m) in boot.cpus().iter().enumerate().take(CPUS) {
        MPIDRS[i].store(m, SeqCst);
    }
    let first = get(field!(magic)) != MAGIC;
    if first {
        // SAFETY: the record is this scenario's RAM (see `record`).
        unsafe { core::ptr::write_bytes(rec, 0, 1) };
        put(field!(magic), MAGIC);
    }
    let k = get(field!(boots));
    check_clean_boot(boot, k);
    let bad = get(field!(bad_result));
    ensure!(
        NAME,
        bad == 0,
        "before boot {k}: CPU_ON returned {} ({})",
        bad as i64,
        psci::error_name(bad as i64)
    );
    let (_bdf, dev, bar0) = setup_edu_for(NAME, boot, first);
    EDU.store(bar0, SeqCst);
    if first {
        put(field!(host_lpis), host_lpis_free());
    }
    let mut mem = Bump::above_image(boot);
    let mut its = setup_its(&mut mem, dev);
    gic::irq_enable();
    // The device's MSIs reach this boot's mapping.
    for i in 0..MSIS {
        let want = TAKEN.load(SeqCst) + 1;
        // SAFETY: edu's IRQ_RAISE register.
        unsafe { mmio::write32(bar0 + EDU_IRQ_RAISE, 1) };
        ensure!(
            NAME,
            cpu::wait_until(TIMEOUT_US, || TAKEN.load(SeqCst) >= want),
            "boot {k}: MSI {i} not delivered within {TIMEOUT_US} us"
        );
    }
    add(field!(msis), u64::from(MSIS));
    if k == RESETS {
        // The last boot: give the device back and check no host LPI leaked.
        let rd = its.rdbase(cpu::mpidr()).unwrap();
        its.send_all(&[ItsCommand::mapd(dev, 0, 0, false), ItsCommand::sync(rd)])
            .unwrap_or_else(|e| fail!(NAME, "MAPD(V=0): {e:?}"));
        let want = get(field!(host_lpis));
        ensure!(
            NAME,
            cpu::wait_until(TIMEOUT_US, || host_lpis_free() == want),
            "after {RESETS} resets: {} host LPIs free, {want} at the first boot",
            host_lpis_free()
        );
        println!(
            "{NAME}: {RESETS} resets, every boot clean; CPU_ON raced them ({} SUCCESS, {} DENIED, no other result); {} MSIs delivered; {want} host LPIs free, as at the first boot",
            get(field!(cpu_on_success)),
            get(field!(cpu_on_denied)),
            get(field!(msis))
        );
        put(field!(magic), 0);
        report::pass(NAME)
    }
    vigil_guest::set_secondary_main(churn);
    for (t, mpidr) in MPIDRS.iter().enumerate().skip(1) {
        let r = psci::cpu_on(mpidr.load(SeqCst), t as u64);
        ensure!(
            NAME,
            r == psci::SUCCESS || r == psci::ALREADY_ON || r == psci::ON_PENDING,
            "boot {k}: CPU_ON of vCPU {t}: {r} ({})",
            psci::error_name(r)
        );
    }
    // Let the churn run a little (longer on some boots), then reset with
    // an MSI on its way.
    let wait_us = 500 + (k % 7) * 1000;
    cpu::wait_until(wait_us, || false);
    // SAFETY: edu's IRQ_RAISE register.
    unsafe { mmio::write32(bar0 + EDU_IRQ_RAISE, 1) };
    put(field!(boots), k + 1);
    if (k + 1).is_multiple_of(25) {
        println!("{NAME}: {} resets so far", k + 1);
    }
    psci::system_reset();
    fail!(NAME, "SYSTEM_RESET returned")
}
