//! The physical ITS: tables sized to what GITS_TYPER and each GITS_BASER
//! ask for, the command queue, and a small API for mapping devices and
//! events to host LPIs.
//!
//! One lock serialises the command queue; callers batch commands and wait
//! for their completion with a SYNC. Every wait is bounded: a stalled or
//! dead ITS is reported with the command it stopped at, never a hang.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::{Mutex, Once};
use tock_registers::interfaces::{Readable, Writeable};
use vigil_gic::its_cmd::{ItsCommand, RdBase};
use vigil_gic::lpi::LpiAllocator;
use vigil_gic::queue::{Ring, OFFSET_MASK};
use vigil_gic::regs::{self, baser, GitsRegs, GitsTyper, Shareability};

use crate::arch;
use crate::arch::mmu::clean_to_poc;
use crate::regblock::RegBlock;

/// Size of the command queue: 2048 commands.
const QUEUE_SIZE: u64 = 64 * 1024;
/// Bounded wait for the ITS to consume commands.
const ITS_TIMEOUT_MS: u64 = 500;
/// Device table pages are 64 KiB where the ITS allows.
const PAGE: u64 = 64 * 1024;

#[derive(Debug)]
pub enum ItsError {
    NotPhysical,
    Memory(vigil_mm::FrameError),
    /// GITS_CREADR.Stalled: the ITS stopped at a command it rejected.
    Stalled {
        offset: u64,
        command: [u64; 4],
    },
    /// The ITS did not consume the queue in time.
    Timeout {
        creadr: u64,
        cwriter: u64,
    },
    DeviceOutOfRange(u32),
    TableRejected(usize),
    TooManyVpes,
    NoDoorbells,
}

impl core::fmt::Display for ItsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotPhysical => write!(f, "the ITS does not support physical LPIs"),
            Self::Memory(e) => write!(f, "allocating ITS memory: {e}"),
            Self::Stalled { offset, command } => write!(
                f,
                "ITS stalled at command offset {offset:#x}: {:#018x} {:#018x} {:#018x} {:#018x}",
                command[0], command[1], command[2], command[3]
            ),
            Self::Timeout { creadr, cwriter } => write!(
                f,
                "ITS did not consume its queue within {ITS_TIMEOUT_MS} ms (CREADR {creadr:#x}, CWRITER {cwriter:#x})"
            ),
            Self::DeviceOutOfRange(d) => write!(f, "DeviceID {d} beyond the ITS's DeviceID bits"),
            Self::TableRejected(n) => write!(f, "GITS_BASER{n} did not accept its table"),
            Self::TooManyVpes => write!(f, "more than {} vPEs", super::vpe::MAX_VPES),
            Self::NoDoorbells => write!(f, "no host LPIs left for vPE doorbells"),
        }
    }
}

struct Queue {
    base: u64,
    ring: Ring,
    cwriter: u64,
    /// Times the writer wrapped around (tests check the wrap handling).
    wraps: u64,
    /// Clean written commands to the PoC (the ITS does not snoop).
    clean: bool,
}

/// The device table and how to reach an entry.
struct DeviceTable {
    base: u64,
    entry_size: u64,
    page: u64,
    /// Two-level: `base` is a level-1 table of 8-byte pointers to
    /// `page`-sized level-2 tables, allocated on first use.
    indirect: bool,
    clean: bool,
    l2: Mutex<Vec<Option<u64>>>,
}

pub struct Its {
    /// Physical address of the control frame (the translation frame,
    /// with GITS_TRANSLATER, is the next 64 KiB).
    base: u64,
    regs: RegBlock<GitsRegs>,
    typer: GitsTyper,
    queue: Mutex<Queue>,
    devices: DeviceTable,
    lpis: Mutex<LpiAllocator>,
    completed: AtomicU64,
    /// GICv4 direct injection is in use: the vPE table is set up and
    /// passthrough MSIs are mapped to vLPIs (VMAPTI).
    direct: bool,
}

static ITS: Once<Its> = Once::new();

pub fn get() -> Option<&'static Its> {
    ITS.get()
}

fn alloc(bytes: u64, align: u64) -> Result<u64, ItsError> {
    crate::mm::alloc_frames(bytes.div_ceil(4096), align.max(4096)).map_err(ItsError::Memory)
}

/// Program GITS_BASER<n> for a table of `bytes` (at least), trying
/// `indirect` first if asked. Returns (base, page size, indirect) as the
/// ITS accepted them.
fn setup_baser(
    r: &GitsRegs,
    n: usize,
    bytes: u64,
    want_indirect: bool,
) -> Result<(u64, u64, bool, bool), ItsError> {
    let cur = r.baser[n].get();
    let esz = baser::entry_size(cur);
    let mut page = PAGE;
    let mut indirect = want_indirect;
    // Page size and Indirect may be read-only: write, read back, adapt
    // (IHI 0069 §12.19.1). At most three rounds settle both.
    for _ in 0..3 {
        let table_bytes = if indirect {
            // Level 1: one 8-byte entry per level-2 page.
            (bytes.div_ceil(page) * 8).max(page)
        } else {
            bytes.max(page)
        };
        let pages = table_bytes.div_ceil(page).min(256);
        let base = alloc(pages * page, page)?;
        let v = baser::encode(
            cur,
            base,
            page,
            pages,
            indirect,
            Shareability::InnerShareable,
            regs::CACHE_RAWAWB,
        );
        r.baser[n].set(v);
        let back = r.baser[n].get();
        let got_page = baser::page_size(back);
        let got_indirect = back & baser::INDIRECT != 0;
        if got_page == page && got_indirect == indirect && back & baser::VALID != 0 {
            let clean = baser::shareability(back) == Shareability::NonShareable;
            if clean {
                clean_to_poc(base, (pages * page) as usize);
            }
            log::debug!(
                "ITS BASER{n}: {:?}, {esz}-byte entries, {pages} x {} KiB pages at {base:#x}{}",
                baser::table_type(cur),
                page / 1024,
                if indirect { ", two-level" } else { "" }
            );
            return Ok((base, page, indirect, clean));
        }
        r.baser[n].set(0);
        crate::mm::free_frames(base, pages * page / 4096).map_err(ItsError::Memory)?;
        page = got_page;
        indirect = got_indirect && indirect;
    }
    Err(ItsError::TableRejected(n))
}

/// Set up the ITS at `base`: tables, command queue, one collection per
/// CPU. `force_flat` keeps the device table single-level. `gicv4`: use
/// direct vLPI injection if the ITS has it (GITS_TYPER.Virtual).
pub fn init(
    base: u64,
    cpus: usize,
    force_flat: bool,
    gicv4: bool,
) -> Result<&'static Its, ItsError> {
    // SAFETY: `base` is the ITS frame from the device tree, mapped as
    // device memory for the hypervisor's lifetime.
    let regs = unsafe { RegBlock::<GitsRegs>::new(base) };
    let r: &GitsRegs = &regs;
    let typer = GitsTyper(r.typer.get());
    if !typer.physical() {
        return Err(ItsError::NotPhysical);
    }
    r.ctlr.set(0);
    if !arch::wait_until(ITS_TIMEOUT_MS, || r.ctlr.get() & (1 << 31) != 0) {
        log::warn!("ITS did not report quiescent after disable");
    }

    // GICv4 needs both ends: the ITS's V-commands and, at every CPU's
    // redistributor, the VLPI frame (GICR_TYPER.VLPIS).
    let available = typer.virtual_lpis() && super::vlpis();
    let direct = gicv4 && available;
    let mut devices = None;
    let mut vpes = false;
    for n in 0..8 {
        let cur = r.baser[n].get();
        match baser::table_type(cur) {
            baser::TableType::Devices => {
                let esz = baser::entry_size(cur);
                let bytes = (1u64 << typer.dev_bits()) * esz;
                // Two-level when the flat table would span several pages.
                let want_indirect = !force_flat && bytes > 2 * PAGE;
                let (tbase, page, indirect, clean) = setup_baser(r, n, bytes, want_indirect)?;
                let l1_entries = if indirect {
                    bytes.div_ceil(page) as usize
                } else {
                    0
                };
                devices = Some(DeviceTable {
                    base: tbase,
                    entry_size: esz,
                    page,
                    indirect,
                    clean,
                    l2: Mutex::new(alloc::vec![None; l1_entries]),
                });
            }
            baser::TableType::Collections => {
                let bytes = cpus as u64 * baser::entry_size(cur);
                setup_baser(r, n, bytes, false)?;
            }
            // Left invalid on the v3 path: no V-command is ever issued.
            baser::TableType::Vpes if direct => {
                let bytes = super::vpe::MAX_VPES as u64 * baser::entry_size(cur);
                setup_baser(r, n, bytes, false)?;
                vpes = true;
            }
            _ => {}
        }
    }
    let devices = devices.ok_or(ItsError::TableRejected(0))?;
    if direct && !vpes {
        log::warn!("ITS: GITS_TYPER.Virtual but no vPE table; GICv4 direct injection off");
    }
    let direct = direct && vpes;

    let qbase = alloc(QUEUE_SIZE, 65536)?;
    r.cbaser.set(regs::cbaser(
        qbase,
        QUEUE_SIZE,
        Shareability::InnerShareable,
        regs::CACHE_RAWAWB,
    ));
    let clean = regs::table_shareability(r.cbaser.get()) == Shareability::NonShareable;
    r.cwriter.set(0);
    r.ctlr.set(1);

    let its = ITS.call_once(|| Its {
        base,
        regs,
        typer,
        queue: Mutex::new(Queue {
            base: qbase,
            ring: Ring::new(QUEUE_SIZE).expect("valid queue size"),
            cwriter: 0,
            wraps: 0,
            clean,
        }),
        devices,
        lpis: Mutex::new(LpiAllocator::new(super::lpi_count())),
        completed: AtomicU64::new(0),
        direct,
    });
    // One collection per CPU, ICID = CPU index.
    let mut cmds = Vec::new();
    for cpu in 0..cpus {
        cmds.push(ItsCommand::mapc(cpu as u16, its.rdbase(cpu), true));
    }
    its.run(&cmds)?;
    log::info!(
        "ITS at {base:#x}: {} DeviceID bits, {} EventID bits, {}-byte ITT entries, PTA {}, device table {}, {} collections mapped; GICv4 direct injection {}",
        typer.dev_bits(),
        typer.id_bits(),
        typer.itt_entry_size(),
        typer.pta() as u8,
        if its.devices.indirect { "two-level" } else { "flat" },
        cpus,
        match (available, direct) {
            (false, _) => "not available",
            (true, true) => "on",
            (true, false) if !gicv4 => "off (vigil.gicv4=off)",
            (true, false) => "off (no vPE table)",
        }
    );
    Ok(its)
}

/// A device mapped on the ITS, with its ITT.
pub struct ItsDevice {
    pub id: u32,
    pub itt: u64,
    itt_frames: u64,
    pub event_bits: u8,
}

impl Its {
    /// Physical address of the translation frame (GITS_TRANSLATER at
    /// +0x40), where devices write their MSIs.
    pub fn translation_frame(&self) -> u64 {
        self.base + 0x1_0000
    }

    /// How a command names CPU `cpu`'s redistributor.
    pub fn rdbase(&self, cpu: usize) -> RdBase {
        RdBase::new(
            self.typer.pta(),
            super::processor_number(cpu),
            super::gicr_addr(cpu),
        )
    }

    /// Whether passthrough MSIs are mapped to vLPIs directly (GICv4).
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// EventID bits the ITS takes (bounds a vPE's vINTIDs too: VMAPP's
    /// VPT_size).
    pub fn id_bits(&self) -> u32 {
        self.typer.id_bits()
    }

    /// Commands completed so far.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Times the command queue wrapped.
    pub fn wraps(&self) -> u64 {
        self.queue.lock().wraps
    }

    /// A stalled queue (GITS_CREADR.Stalled) is reported and recovered:
    /// the command it stopped at is replaced by a SYNC to this CPU's
    /// redistributor (always valid) and the queue is restarted with
    /// GITS_CWRITER.Retry (IHI 0069 §6.3.3, "Command errors"), so the
    /// commands after it, and every later caller, still run. A later
    /// command of the batch may stall in turn; each is recovered the same
    /// way. The first stall is returned as the error of the batch.
    ///
    /// QEMU's ITS ignores Retry: it resumes on any CWRITER write but keeps
    /// Stalled set, clearing it only when CREADR is written (which it
    /// allows with GICD_CTLR.DS == 1; the write is ignored where CREADR is
    /// read-only, as the architecture has it). So a stall is a Stalled bit
    /// with commands still unread, and once the queue is through, a Stalled
    /// bit left over is cleared by writing CREADR.
    fn check_stalled(&self, q: &Queue) -> Result<(), ItsError> {
        let target = q.cwriter;
        let mut first = None;
        // Each round skips one command, so a batch cannot loop for longer
        // than the queue holds.
        for _ in 0..q.ring.capacity() {
            let c = self.regs.creadr.get();
            let offset = c & OFFSET_MASK;
            if c & 1 == 0 || offset == target {
                break;
            }
            let at = q.base + offset;
            let mut command = [0u64; 4];
            for (i, w) in command.iter_mut().enumerate() {
                // SAFETY: `at` is a command slot inside the queue.
                *w = unsafe { core::ptr::read_volatile((at + 8 * i as u64) as *const u64) };
            }
            let sync = ItsCommand::sync(self.rdbase(arch::cpu_index()));
            for (i, w) in sync.0.iter().enumerate() {
                // SAFETY: the slot the ITS stopped at, inside the queue this
                // driver owns; the ITS re-reads it only after the Retry.
                unsafe { core::ptr::write_volatile((at + 8 * i as u64) as *mut u64, *w) };
            }
            if q.clean {
                clean_to_poc(at, 32);
            }
            // SAFETY: a barrier only orders memory accesses.
            unsafe { core::arch::asm!("dsb ishst", options(nostack)) };
            self.regs.cwriter.set(target | 1);
            arch::wait_until(ITS_TIMEOUT_MS, || {
                let c = self.regs.creadr.get();
                c & OFFSET_MASK == target || (c & 1 != 0 && c & OFFSET_MASK != offset)
            });
            first.get_or_insert((offset, command));
        }
        let c = self.regs.creadr.get();
        if c & 1 != 0 && c & OFFSET_MASK == target {
            self.regs.creadr.set(target);
        }
        let Some((offset, command)) = first else {
            return Ok(());
        };
        let c = self.regs.creadr.get();
        log::error!(
            "ITS stalled at command offset {offset:#x} ({:#018x} {:#018x} {:#018x} {:#018x}); replaced by a SYNC and retried: {}",
            command[0],
            command[1],
            command[2],
            command[3],
            if c & 1 == 0 && c & OFFSET_MASK == target {
                "the queue runs again"
            } else {
                "the queue is still stuck"
            }
        );
        Err(ItsError::Stalled { offset, command })
    }

    /// Queue `cmds` plus a SYNC, and wait until the ITS has consumed them
    /// all. Waits for room when the queue is full, so any number of
    /// commands may be given.
    pub fn run(&self, cmds: &[ItsCommand]) -> Result<(), ItsError> {
        let mut q = self.queue.lock();
        let sync = ItsCommand::sync(self.rdbase(arch::cpu_index()));
        for cmd in cmds.iter().chain(core::iter::once(&sync)) {
            if q.ring.free(self.regs.creadr.get() & OFFSET_MASK, q.cwriter) == 0 {
                // Publish what is written and wait for room.
                self.regs.cwriter.set(q.cwriter);
                let ring = q.ring;
                let cw = q.cwriter;
                if !arch::wait_until(ITS_TIMEOUT_MS, || {
                    let c = self.regs.creadr.get();
                    c & 1 != 0 || ring.free(c & OFFSET_MASK, cw) > 0
                }) {
                    return Err(ItsError::Timeout {
                        creadr: self.regs.creadr.get(),
                        cwriter: q.cwriter,
                    });
                }
                self.check_stalled(&q)?;
            }
            let at = q.base + q.cwriter;
            for (i, w) in cmd.0.iter().enumerate() {
                // SAFETY: `at` is a free command slot in the queue, which
                // belongs to this driver; the ITS reads it only after
                // CWRITER moves past it.
                unsafe { core::ptr::write_volatile((at + 8 * i as u64) as *mut u64, *w) };
            }
            if q.clean {
                clean_to_poc(at, 32);
            }
            let (next, wrapped) = q.ring.advance(q.cwriter);
            q.cwriter = next;
            q.wraps += wrapped as u64;
        }
        // SAFETY: a barrier only orders memory accesses: commands before
        // the CWRITER write that publishes them.
        unsafe { core::arch::asm!("dsb ishst", options(nostack)) };
        self.regs.cwriter.set(q.cwriter);
        let target = q.cwriter;
        if !arch::wait_until(ITS_TIMEOUT_MS, || {
            let c = self.regs.creadr.get();
            c & 1 != 0 || c & OFFSET_MASK == target
        }) {
            return Err(ItsError::Timeout {
                creadr: self.regs.creadr.get(),
                cwriter: target,
            });
        }
        self.check_stalled(&q)?;
        self.completed
            .fetch_add(cmds.len() as u64 + 1, Ordering::Relaxed);
        Ok(())
    }

    /// Make sure the device table can hold `id` (allocating its level-2
    /// page in a two-level table).
    fn ensure_device_entry(&self, id: u32) -> Result<(), ItsError> {
        if id >= 1 << self.typer.dev_bits() {
            return Err(ItsError::DeviceOutOfRange(id));
        }
        let t = &self.devices;
        if !t.indirect {
            return Ok(());
        }
        let idx = (id as u64 * t.entry_size / t.page) as usize;
        let mut l2 = t.l2.lock();
        if l2[idx].is_none() {
            let page = alloc(t.page, t.page)?;
            if t.clean {
                clean_to_poc(page, t.page as usize);
            }
            let entry = t.base + idx as u64 * 8;
            // SAFETY: `entry` is inside the level-1 table this driver owns;
            // the ITS reads it only for DeviceIDs mapped after this write.
            unsafe { core::ptr::write_volatile(entry as *mut u64, page | (1 << 63)) };
            if t.clean {
                clean_to_poc(entry, 8);
            }
            l2[idx] = Some(page);
        }
        Ok(())
    }

    /// MAPD a device with room for 2^event_bits events.
    pub fn map_device(&self, id: u32, event_bits: u8) -> Result<ItsDevice, ItsError> {
        self.ensure_device_entry(id)?;
        let bytes = (1u64 << event_bits) * self.typer.itt_entry_size();
        let frames = bytes.div_ceil(4096);
        let itt = alloc(bytes, 4096)?;
        clean_to_poc(itt, (frames * 4096) as usize);
        self.run(&[ItsCommand::mapd(id, itt, event_bits, true)])?;
        Ok(ItsDevice {
            id,
            itt,
            itt_frames: frames,
            event_bits,
        })
    }

    /// MAPD(V=0), then free the ITT.
    pub fn unmap_device(&self, dev: ItsDevice) -> Result<(), ItsError> {
        self.run(&[ItsCommand::mapd(dev.id, 0, dev.event_bits, false)])?;
        crate::mm::free_frames(dev.itt, dev.itt_frames).map_err(ItsError::Memory)
    }

    /// Allocate host LPIs, at least `count`, in whole blocks.
    pub fn alloc_lpis(&self, count: u32) -> Option<u32> {
        self.lpis.lock().alloc(count).ok()
    }

    pub fn free_lpis(&self, first: u32) -> bool {
        self.lpis.lock().free(first).is_ok()
    }

    pub fn free_lpi_count(&self) -> u32 {
        self.lpis.lock().free_lpis()
    }
}
