//! A small GICv3 ITS driver for test guests, set up the way Linux's
//! `irq-gic-v3-its` does it: device and collection tables from
//! `GITS_BASER<n>`, a command queue from `GITS_CBASER`, commands written at
//! `GITS_CWRITER` and waited for at `GITS_CREADR`; plus the LPI property
//! and pending tables of the redistributors.
//!
//! The ITS is QEMU `virt`'s, which Vigil gives every VM: the control frame
//! at [`GITS_BASE`], `GITS_TRANSLATER` in the translation frame 64 KiB
//! above. Commands are built with `vigil_gic::its_cmd`.
//!
//! The tables live in guest RAM handed out by a [`Bump`] allocator. The
//! guest runs with the MMU off, so all of it is accessed with aligned
//! 64-bit (or byte) stores.

use core::arch::asm;

pub use vigil_gic::its_cmd::{ItsCommand, RdBase};
use vigil_gic::regs::{self, baser, GitsTyper, Shareability};

use crate::cpu;
use crate::gic;
use crate::mmio;

/// The ITS control frame.
pub const GITS_BASE: u64 = 0x0808_0000;
/// `GITS_CTLR` (32-bit).
pub const GITS_CTLR: u64 = 0x0000;
/// `GITS_IIDR` (32-bit).
pub const GITS_IIDR: u64 = 0x0004;
/// `GITS_TYPER`.
pub const GITS_TYPER: u64 = 0x0008;
/// `GITS_CBASER`.
pub const GITS_CBASER: u64 = 0x0080;
/// `GITS_CWRITER`.
pub const GITS_CWRITER: u64 = 0x0088;
/// `GITS_CREADR`.
pub const GITS_CREADR: u64 = 0x0090;
/// `GITS_BASER<0>`; `<n>` is 8 bytes further each.
pub const GITS_BASER: u64 = 0x0100;
/// `GITS_TRANSLATER` (32-bit), in the translation frame.
pub const GITS_TRANSLATER: u64 = 0x1_0040;
/// `GITS_CTLR.Enabled`.
pub const CTLR_ENABLED: u32 = 1 << 0;
/// `GITS_CTLR.Quiescent`.
pub const CTLR_QUIESCENT: u32 = 1 << 31;
/// `GITS_CREADR.Stalled`.
pub const CREADR_STALLED: u64 = 1 << 0;
/// `GITS_CWRITER.Retry`.
pub const CWRITER_RETRY: u64 = 1 << 0;
/// Bytes per command.
pub const CMD_SIZE: u64 = 32;
/// How long the ITS may take to consume the queue.
pub const CMD_TIMEOUT_US: u64 = 1_000_000;

/// Reads a 32-bit ITS register (offset from [`GITS_BASE`]).
pub fn read32(off: u64) -> u32 {
    // SAFETY: an aligned register in the VM's ITS frames; ITS register
    // accesses change ITS state only.
    unsafe { mmio::read32(GITS_BASE + off) }
}

/// Writes a 32-bit ITS register.
pub fn write32(off: u64, v: u32) {
    // SAFETY: as in `read32`.
    unsafe { mmio::write32(GITS_BASE + off, v) }
}

/// Reads a 64-bit ITS register.
pub fn read64(off: u64) -> u64 {
    // SAFETY: as in `read32`.
    unsafe { mmio::read64(GITS_BASE + off) }
}

/// Writes a 64-bit ITS register.
pub fn write64(off: u64, v: u64) {
    // SAFETY: as in `read32`.
    unsafe { mmio::write64(GITS_BASE + off, v) }
}

/// `GITS_TYPER`.
pub fn typer() -> GitsTyper {
    GitsTyper(read64(GITS_TYPER))
}

/// Writes `GITS_TRANSLATER` from this vCPU: an event of the DeviceID the
/// platform gives CPU writes (0 under Vigil).
pub fn translate(event: u32) {
    write32(GITS_TRANSLATER, event);
}

/// Stores `v` at guest-physical `addr` (8-byte aligned, in RAM).
pub fn mem_write64(addr: u64, v: u64) {
    // SAFETY: callers pass memory the `Bump` allocator handed out (owned by
    // the ITS driver or the scenario), never the image or the stacks.
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) };
}

/// Loads the u64 at guest-physical `addr` (8-byte aligned, in RAM).
pub fn mem_read64(addr: u64) -> u64 {
    // SAFETY: as in `mem_write64`; reading RAM has no side effect.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Stores a byte at guest-physical `addr` (in RAM).
pub fn mem_write8(addr: u64, v: u8) {
    // SAFETY: as in `mem_write64`.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) };
}

/// Loads the byte at guest-physical `addr`.
pub fn mem_read8(addr: u64) -> u8 {
    // SAFETY: as in `mem_read64`.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

fn barrier() {
    // SAFETY: a full-system data barrier only orders memory accesses (table
    // writes before the register write that makes the ITS read them).
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// A bump allocator over a range of guest RAM the guest does not otherwise
/// use. Memory it hands out is zeroed.
pub struct Bump {
    next: u64,
    end: u64,
}

impl Bump {
    /// Hands out `start..end`.
    pub const fn new(start: u64, end: u64) -> Self {
        Self { next: start, end }
    }

    /// The RAM above this image, up to `ram.end` and below the device tree
    /// if that sits above the image.
    pub fn above_image(boot: &crate::BootInfo) -> Self {
        let image = crate::boot::image_range();
        let start = align_up(image.end, 0x10_0000);
        let mut end = boot.ram.end;
        if boot.dtb >= start && boot.dtb < end {
            end = boot.dtb & !0xffff;
        }
        Self::new(start, end)
    }

    /// `size` zeroed bytes aligned to `align` (a power of two), or `None`
    /// when the range is exhausted.
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        let at = align_up(self.next, align);
        if at.checked_add(size)? > self.end {
            return None;
        }
        self.next = at + size;
        let mut a = at;
        while a < at + size {
            mem_write64(a, 0);
            a += 8;
        }
        Some(at)
    }

    /// Bytes left.
    pub fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.next)
    }
}

/// `v` rounded up to a multiple of `align` (a power of two).
pub const fn align_up(v: u64, align: u64) -> u64 {
    (v + align - 1) & !(align - 1)
}

/// Why the ITS driver gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItsError {
    /// Out of table memory.
    NoMemory,
    /// `GITS_BASER<n>` or `GITS_CBASER` did not keep Valid.
    TableRejected(u64),
    /// No device or collection table among `GITS_BASER<n>`.
    NoTable(&'static str),
    /// `GITS_CTLR.Quiescent` did not come up after disabling the ITS.
    NotQuiescent,
    /// The ITS did not consume the queue up to CWRITER in time
    /// (CREADR, CWRITER).
    Timeout(u64, u64),
    /// `GITS_CREADR.Stalled` is set (CREADR).
    Stalled(u64),
}

/// The ITS, as this guest set it up.
pub struct Its {
    /// `GITS_TYPER`.
    pub typer: GitsTyper,
    /// Command queue base and size in bytes.
    pub queue: u64,
    /// Queue size in bytes.
    pub queue_size: u64,
    /// The next command slot (our view of `GITS_CWRITER`).
    pub cwriter: u64,
    /// Index of the device table's `GITS_BASER<n>` and its value.
    pub device_baser: (usize, u64),
    /// Index of the collection table's `GITS_BASER<n>` and its value.
    pub collection_baser: (usize, u64),
    /// The `GITS_CBASER` value.
    pub cbaser: u64,
}

/// The LPI property table of all redistributors (they share one:
/// `GICR_TYPER.CommonLPIAff` = 0).
#[derive(Clone, Copy, Debug)]
pub struct PropTable {
    /// Base address.
    pub base: u64,
    /// INTID bits it covers.
    pub id_bits: u32,
}

impl PropTable {
    /// A table for LPIs up to `1 << id_bits`, every LPI disabled at
    /// priority `0xa0`.
    pub fn new(mem: &mut Bump, id_bits: u32) -> Result<Self, ItsError> {
        let size = (1u64 << id_bits) - u64::from(gic::LPI_BASE);
        let base = mem.alloc(size, 0x1000).ok_or(ItsError::NoMemory)?;
        let t = Self { base, id_bits };
        let fill = u64::from(regs::lpi_config(0xa0, false)) * 0x0101_0101_0101_0101;
        let mut a = base;
        while a < base + size {
            mem_write64(a, fill);
            a += 8;
        }
        barrier();
        Ok(t)
    }

    /// Sets the priority and enable of `intid` (takes effect at the next
    /// INV/INVALL covering it).
    pub fn set(&self, intid: u32, priority: u8, enabled: bool) {
        mem_write8(
            self.base + u64::from(intid - gic::LPI_BASE),
            regs::lpi_config(priority, enabled),
        );
        barrier();
    }

    /// The `GICR_PROPBASER` value.
    pub fn propbaser(&self) -> u64 {
        regs::propbaser(
            self.base,
            self.id_bits,
            Shareability::InnerShareable,
            regs::CACHE_RAWAWB,
        )
    }
}

/// Gives this vCPU's redistributor the property table and a fresh, zeroed
/// pending table (64 KiB aligned) from `mem`, then sets EnableLPIs.
/// Returns the pending table.
pub fn enable_lpis_on_this_cpu(mem: &mut Bump, prop: &PropTable) -> Result<u64, ItsError> {
    let size = align_up((1u64 << prop.id_bits) / 8, 0x1_0000);
    let pend = mem.alloc(size, 0x1_0000).ok_or(ItsError::NoMemory)?;
    enable_lpis_with(prop, pend);
    Ok(pend)
}

/// As [`enable_lpis_on_this_cpu`], with a pending table the caller
/// allocated (zeroed, 64 KiB aligned, `(1 << id_bits) / 8` bytes).
pub fn enable_lpis_with(prop: &PropTable, pend: u64) {
    barrier();
    gic::set_propbaser(prop.propbaser());
    gic::set_pendbaser(regs::pendbaser(
        pend,
        false,
        Shareability::InnerShareable,
        regs::CACHE_RAWAWB,
    ));
    gic::enable_lpis();
}

impl Its {
    /// Resets and sets up the ITS as Linux does: disable and wait for
    /// Quiescent, read `GITS_TYPER`, give each `GITS_BASER<n>` of a device
    /// or collection table memory (flat, its reported page size; sized for
    /// `device_bits` DeviceID bits and `collection_bits` ICID bits, capped
    /// by Devbits and CIDbits, rounded up to whole pages), `GITS_CBASER` a
    /// queue of `queue_pages` 4 KiB pages, CWRITER 0, then enable.
    pub fn init(
        mem: &mut Bump,
        device_bits: u32,
        collection_bits: u32,
        queue_pages: u64,
    ) -> Result<Self, ItsError> {
        write32(GITS_CTLR, 0);
        if !cpu::wait_until(CMD_TIMEOUT_US, || read32(GITS_CTLR) & CTLR_QUIESCENT != 0) {
            return Err(ItsError::NotQuiescent);
        }
        let typer = typer();
        let mut device = None;
        let mut collection = None;
        for n in 0..8 {
            let off = GITS_BASER + n as u64 * 8;
            let cur = read64(off);
            let entries = match baser::table_type(cur) {
                baser::TableType::Devices => 1u64 << device_bits.min(typer.dev_bits()),
                baser::TableType::Collections => 1u64 << collection_bits.min(typer.cid_bits()),
                _ => continue,
            };
            let page = baser::page_size(cur);
            let bytes = align_up(entries * baser::entry_size(cur), page);
            let pages = (bytes / page).min(256);
            let base = mem.alloc(pages * page, page).ok_or(ItsError::NoMemory)?;
            let v = baser::encode(
                cur,
                base,
                page,
                pages,
                false,
                Shareability::InnerShareable,
                regs::CACHE_RAWAWB,
            );
            write64(off, v);
            let got = read64(off);
            if got & baser::VALID == 0 {
                return Err(ItsError::TableRejected(v));
            }
            match baser::table_type(cur) {
                baser::TableType::Devices => device = Some((n, got)),
                _ => collection = Some((n, got)),
            }
        }
        let device_baser = device.ok_or(ItsError::NoTable("device"))?;
        let collection_baser = collection.ok_or(ItsError::NoTable("collection"))?;
        let queue_size = queue_pages * 4096;
        let queue = mem.alloc(queue_size, 0x1_0000).ok_or(ItsError::NoMemory)?;
        let cbaser = regs::cbaser(
            queue,
            queue_size,
            Shareability::InnerShareable,
            regs::CACHE_RAWAWB,
        );
        write64(GITS_CBASER, cbaser);
        let got = read64(GITS_CBASER);
        if got & (1 << 63) == 0 {
            return Err(ItsError::TableRejected(cbaser));
        }
        write64(GITS_CWRITER, 0);
        write32(GITS_CTLR, CTLR_ENABLED);
        Ok(Self {
            typer,
            queue,
            queue_size,
            cwriter: 0,
            device_baser,
            collection_baser,
            cbaser: got,
        })
    }

    /// How to name the redistributor of the vCPU with affinity `mpidr` in
    /// commands (`GITS_TYPER.PTA`: its address >> 16, or its processor
    /// number from `GICR_TYPER`).
    pub fn rdbase(&self, mpidr: u64) -> Option<RdBase> {
        let rd = gic::find_redistributor(mpidr)?;
        let processor = (gic::gicr_typer_at(rd) >> 8) & 0xffff;
        Some(RdBase::new(self.typer.pta(), processor, rd))
    }

    /// Writes a raw command at the next slot without telling the ITS
    /// (see [`Its::kick`]).
    pub fn push_raw(&mut self, dw: [u64; 4]) {
        let slot = self.queue + self.cwriter;
        for (i, d) in dw.iter().enumerate() {
            mem_write64(slot + i as u64 * 8, *d);
        }
        self.cwriter = (self.cwriter + CMD_SIZE) % self.queue_size;
    }

    /// Writes a command at the next slot without telling the ITS.
    pub fn push(&mut self, cmd: ItsCommand) {
        self.push_raw(cmd.0);
    }

    /// Free slots before the queue would be full (one slot is always kept
    /// empty so CWRITER == CREADR means empty).
    pub fn free_slots(&self) -> u64 {
        let creadr = read64(GITS_CREADR) & !0x1f;
        (creadr + self.queue_size - self.cwriter - CMD_SIZE) % self.queue_size / CMD_SIZE
    }

    /// Publishes the pushed commands (`GITS_CWRITER`) and waits until the
    /// ITS consumed them.
    pub fn kick(&mut self) -> Result<(), ItsError> {
        barrier();
        write64(GITS_CWRITER, self.cwriter);
        self.wait()
    }

    /// Publishes the pushed commands (`GITS_CWRITER`) without waiting.
    pub fn publish(&mut self) {
        barrier();
        write64(GITS_CWRITER, self.cwriter);
    }

    /// Waits (bounded) until `GITS_CREADR` reaches our CWRITER.
    pub fn wait(&self) -> Result<(), ItsError> {
        self.wait_for(CMD_TIMEOUT_US)
    }

    /// [`Its::kick`] waiting up to `timeout_us`.
    pub fn kick_for(&mut self, timeout_us: u64) -> Result<(), ItsError> {
        barrier();
        write64(GITS_CWRITER, self.cwriter);
        self.wait_for(timeout_us)
    }

    /// [`Its::wait`] up to `timeout_us`.
    pub fn wait_for(&self, timeout_us: u64) -> Result<(), ItsError> {
        let mut creadr = 0;
        let done = cpu::wait_until(timeout_us, || {
            creadr = read64(GITS_CREADR);
            creadr & CREADR_STALLED != 0 || creadr == self.cwriter
        });
        if creadr & CREADR_STALLED != 0 {
            return Err(ItsError::Stalled(creadr));
        }
        if !done {
            return Err(ItsError::Timeout(creadr, self.cwriter));
        }
        Ok(())
    }

    /// Sends one command and waits for it.
    pub fn send(&mut self, cmd: ItsCommand) -> Result<(), ItsError> {
        self.push(cmd);
        self.kick()
    }

    /// Sends commands in order and waits for all of them.
    pub fn send_all(&mut self, cmds: &[ItsCommand]) -> Result<(), ItsError> {
        for c in cmds {
            self.push(*c);
        }
        self.kick()
    }

    /// Disables the ITS and waits for Quiescent.
    pub fn disable(&self) -> Result<(), ItsError> {
        write32(GITS_CTLR, 0);
        if cpu::wait_until(CMD_TIMEOUT_US, || read32(GITS_CTLR) & CTLR_QUIESCENT != 0) {
            Ok(())
        } else {
            Err(ItsError::NotQuiescent)
        }
    }

    /// Enables the ITS again.
    pub fn enable(&self) {
        write32(GITS_CTLR, CTLR_ENABLED);
    }

    /// Bytes one ITT needs for `event_bits` EventID bits (at least one
    /// 256-byte granule, as ITT_addr is 256-byte aligned).
    pub fn itt_bytes(&self, event_bits: u8) -> u64 {
        align_up((1u64 << event_bits) * self.typer.itt_entry_size(), 256)
    }
}
