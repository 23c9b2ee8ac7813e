//! `blk-service`: this VM is the backend of another VM's virtio-blk device
//! (`vigil,virtio-blk` naming it), serving a RAM disk through Vigil's
//! channel function exactly as the service program in a Linux VM's
//! userspace does through uio_pci_generic: the channel bridge's
//! configuration space (BARs, Memory Space, Interrupt Disable as the INTx
//! mask), BAR 0's registers, BAR 2's window onto the client's RAM, and the
//! virtio-blk device model of `vigil-virtio`. It tests the hypervisor's
//! half of the driver domain without the service program.
//!
//! Bootargs: `blk.sectors=N` (the disk's size, default 64 MiB). It powers
//! off once its client has stopped (EVENTS.GONE).

use buddy_system_allocator::Heap;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};

use vigil_guest::{fail, gic, mmio, println, report, BootInfo};
use vigil_virtio::blk::{self, BlkDevice, BlockSize, IoError, SyncBackend};
use vigil_virtio::channel::{self, event, reg, CMD_BUS_MASTER, CMD_INTX_DISABLE, CMD_MEMORY};
use vigil_virtio::queue::SplitQueue;
use vigil_virtio::{GuestRam, OutOfRange};

const NAME: &str = "blk-service";

#[global_allocator]
static HEAP: GuestHeap = GuestHeap(spin::Mutex::new(Heap::empty()));

/// The buddy heap behind the workspace's `spin` (the crate's own
/// `LockedHeap` would bring in a second, older `spin`).
struct GuestHeap(spin::Mutex<Heap<32>>);

// SAFETY: blocks come from the buddy allocator, which satisfies size and
// alignment, and go back to it with their layout, under the one lock.
unsafe impl GlobalAlloc for GuestHeap {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        self.0
            .lock()
            .alloc(l)
            .map_or(ptr::null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` is a block of this heap with layout `l` (GlobalAlloc).
        unsafe { self.0.lock().dealloc(NonNull::new_unchecked(p), l) }
    }
}

static IRQ: AtomicBool = AtomicBool::new(false);
static mut CONFIG_SPACE: u64 = 0;

fn cfg_read(off: u64) -> u32 {
    // SAFETY: the channel function's ECAM page, found in the device tree.
    unsafe { mmio::read32(config_space() + off) }
}

fn cfg_write(off: u64, v: u32) {
    // SAFETY: as `cfg_read`.
    unsafe { mmio::write32(config_space() + off, v) }
}

fn config_space() -> u64 {
    // SAFETY: written once before the interrupt is enabled, then only read.
    unsafe { core::ptr::addr_of!(CONFIG_SPACE).read() }
}

/// The INTx handler does what uio_pci_generic's does: mask the function
/// with Interrupt Disable (the line is level: it stays high until EVENTS
/// is read) and wake the loop.
fn on_intx(_intid: u32) {
    let cmd = cfg_read(0x04) & 0xffff;
    cfg_write(0x04, cmd | u32::from(CMD_INTX_DISABLE));
    IRQ.store(true, Ordering::Release);
}

struct Channel {
    regs: u64,
}

impl Channel {
    fn read(&self, r: u64) -> u32 {
        // SAFETY: BAR 0, placed and enabled by `run`.
        unsafe { mmio::read32(self.regs + r) }
    }
    fn write(&self, r: u64, v: u32) {
        // SAFETY: as `read`.
        unsafe { mmio::write32(self.regs + r, v) }
    }
    fn read64(&self, lo: u64) -> u64 {
        u64::from(self.read(lo)) | u64::from(self.read(lo + 4)) << 32
    }
}

/// The client's RAM through BAR 2.
struct Window {
    bar: u64,
    base: u64,
    size: u64,
}

impl Window {
    fn at(&self, addr: u64, len: usize) -> Result<u64, OutOfRange> {
        let oor = OutOfRange {
            addr,
            len: len as u64,
        };
        let off = addr.checked_sub(self.base).ok_or(oor)?;
        let end = off.checked_add(len as u64).ok_or(oor)?;
        if end > self.size {
            return Err(oor);
        }
        Ok(self.bar + off)
    }
}

impl GuestRam for Window {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let src = self.at(addr, buf.len())?;
        // SAFETY: inside BAR 2, which maps the client's RAM; the client may
        // change it at any time, which the device model tolerates.
        unsafe { core::ptr::copy_nonoverlapping(src as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), OutOfRange> {
        let dst = self.at(addr, buf.len())?;
        // SAFETY: as `read`.
        unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), dst as *mut u8, buf.len()) };
        Ok(())
    }
}

/// A disk in this VM's RAM.
struct RamDisk {
    base: u64,
    sectors: u64,
    flushes: u64,
}

impl blk::Backend for RamDisk {
    fn capacity_sectors(&self) -> u64 {
        self.sectors
    }
}

impl SyncBackend for RamDisk {
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        // SAFETY: the model checked sector + len against the capacity; the
        // disk is this VM's own RAM, reserved for it in `run`.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (self.base + sector * 512) as *const u8,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), IoError> {
        // SAFETY: as `read`.
        unsafe {
            core::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.base + sector * 512) as *mut u8,
                data.len(),
            )
        };
        Ok(())
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.flushes += 1;
        Ok(())
    }
    fn id(&self) -> [u8; blk::VIRTIO_BLK_ID_BYTES] {
        let mut id = [0u8; blk::VIRTIO_BLK_ID_BYTES];
        id[..12].copy_from_slice(b"vigil-ramdsk");
        id
    }
}

fn cells(raw: &[u8]) -> impl Iterator<Item = u32> + '_ {
    raw.chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

pub fn run(boot: &'static BootInfo) -> ! {
    // The heap and the disk in this VM's RAM, clear of the image and the
    // device tree at the top.
    let sectors = boot
        .bootarg("blk.sectors")
        .and_then(|s| s.parse().ok())
        .unwrap_or(131072u64);
    let heap = boot.ram.start + (4 << 20);
    let disk = heap + (4 << 20);
    if disk + sectors * 512 + (4 << 20) > boot.ram.end {
        fail!(
            NAME,
            "a {sectors}-sector disk does not fit in this VM's RAM"
        );
    }
    // SAFETY: [heap, heap + 4 MiB) is this VM's RAM and nothing else uses it.
    unsafe { HEAP.0.lock().init(heap as usize, 4 << 20) };
    // The channel bridge: its ECAM, its two windows and its INTA's SPI.
    let Some(node) = boot.fdt.find_compatible(&["pci-host-ecam-generic"]) else {
        fail!(NAME, "no channel bridge in the device tree")
    };
    let ecam = node
        .reg()
        .and_then(|mut r| r.next())
        .map_or(0, |r| r.starting_address as u64);
    let ranges: alloc::vec::Vec<u32> = node
        .property("ranges")
        .map_or(alloc::vec::Vec::new(), |p| cells(p.value).collect());
    let imap: alloc::vec::Vec<u32> = node
        .property("interrupt-map")
        .map_or(alloc::vec::Vec::new(), |p| cells(p.value).collect());
    if ranges.len() != 14 || imap.len() != 10 {
        fail!(
            NAME,
            "channel bridge: ranges {} cells, interrupt-map {} cells",
            ranges.len(),
            imap.len()
        );
    }
    let mmio32 = u64::from(ranges[3]) << 32 | u64::from(ranges[4]);
    let mmio64 = u64::from(ranges[10]) << 32 | u64::from(ranges[11]);
    let intid = 32 + imap[8];
    // SAFETY: set before anything reads it.
    unsafe { core::ptr::addr_of_mut!(CONFIG_SPACE).write(ecam) };
    let id = cfg_read(0);
    if id != u32::from(channel::VENDOR_ID) | u32::from(channel::DEVICE_ID) << 16 {
        fail!(NAME, "bus 0 device 0 is {id:#x}, not the channel function");
    }
    // BAR sizing as firmware or Linux does it (PCI 3.0 §6.2.5.1).
    cfg_write(0x10, !0);
    let bar0_size = !(cfg_read(0x10) & !0xf) + 1;
    cfg_write(0x10, mmio32 as u32);
    cfg_write(0x18, mmio64 as u32);
    cfg_write(0x1c, (mmio64 >> 32) as u32);
    cfg_write(
        0x04,
        u32::from(CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE),
    );
    let ch = Channel { regs: mmio32 };
    if ch.read(reg::MAGIC) != channel::MAGIC || ch.read(reg::DEVICE_TYPE) != 2 {
        fail!(
            NAME,
            "channel BAR 0: magic {:#x}, device type {}",
            ch.read(reg::MAGIC),
            ch.read(reg::DEVICE_TYPE)
        );
    }
    let window = Window {
        bar: mmio64,
        base: ch.read64(reg::CLIENT_RAM_BASE_LO),
        size: ch.read64(reg::CLIENT_RAM_SIZE_LO),
    };
    println!(
        "blk-service: channel at {ecam:#x}, BAR 0 ({bar0_size} bytes) at {mmio32:#x}, BAR 2 at {mmio64:#x}: the client's RAM {:#x}+{:#x}; INTx = INTID {intid}",
        window.base, window.size
    );

    let mut backend = RamDisk {
        base: disk,
        sectors,
        flushes: 0,
    };
    let dev = BlkDevice::for_backend(&backend, BlockSize::B512);

    // The device the client sees, then READY (the client boots now).
    ch.write(reg::NUM_QUEUES, 1);
    ch.write(reg::QUEUE_NUM_MAX, 256);
    ch.write(reg::DEVICE_FEATURES_LO, blk::DEVICE_FEATURES as u32);
    ch.write(reg::DEVICE_FEATURES_HI, (blk::DEVICE_FEATURES >> 32) as u32);
    let config = dev.config_bytes();
    ch.write(reg::CONFIG_LEN, config.len() as u32);
    for (i, w) in config.chunks(4).enumerate() {
        let mut b = [0u8; 4];
        b[..w.len()].copy_from_slice(w);
        ch.write(reg::CONFIG + 4 * i as u64, u32::from_le_bytes(b));
    }
    gic::init_distributor();
    gic::init_cpu();
    gic::set_handler(intid, on_intx);
    gic::configure(intid, gic::Trigger::Level);
    gic::route_spi(intid, vigil_guest::cpu::mpidr());
    gic::set_priority(intid, 0x80);
    gic::enable(intid);
    gic::irq_enable();
    // Unmask INTx, then go ready.
    cfg_write(0x04, u32::from(CMD_MEMORY | CMD_BUS_MASTER));
    ch.write(reg::CONTROL, channel::control::READY);
    println!(
        "blk-service: READY: {sectors} sectors, features {:#x}",
        blk::DEVICE_FEATURES
    );

    let mut queue: Option<SplitQueue> = None;
    let (mut requests, mut rejected, mut resets) = (0u64, 0u64, 0u64);
    loop {
        while !IRQ.swap(false, Ordering::AcqRel) {
            gic::wait_for_interrupt();
        }
        let events = ch.read(reg::EVENTS);
        if events & event::RESET != 0 {
            queue = None;
            resets += 1;
        }
        if events & event::GONE != 0 {
            println!(
                "blk-service: client gone after {requests} requests ({rejected} refused), {resets} resets, {} flushes",
                backend.flushes
            );
            report::pass(NAME);
        }
        let status = ch.read(reg::CLIENT_STATUS);
        // DRIVER_OK (virtio §2.1): the queues are live.
        if queue.is_none() && status & 4 != 0 {
            ch.write(reg::QUEUE_SEL, 0);
            if ch.read(reg::QUEUE_READY) == 1 {
                let negotiated = ch.read64(reg::DRIVER_FEATURES_LO);
                let q = SplitQueue::new(
                    ch.read(reg::QUEUE_SIZE),
                    ch.read64(reg::QUEUE_DESC_LO),
                    ch.read64(reg::QUEUE_DRIVER_LO),
                    ch.read64(reg::QUEUE_DEVICE_LO),
                    negotiated & (1 << blk::VIRTIO_F_EVENT_IDX) != 0,
                    &window,
                );
                match q {
                    Ok(q) => {
                        println!("blk-service: client DRIVER_OK, queue 0 of {} entries, features {negotiated:#x}", q.size());
                        queue = Some(
                            q.with_indirect(negotiated & (1 << blk::VIRTIO_F_INDIRECT_DESC) != 0),
                        );
                    }
                    Err(e) => {
                        println!("blk-service: queue 0 unusable: {e}");
                        ch.write(reg::CONTROL, channel::control::NEEDS_RESET);
                    }
                }
            }
        }
        let notified = ch.read(reg::NOTIFY);
        if let Some(q) = queue
            .as_mut()
            .filter(|_| notified & 1 != 0 || events & event::STATUS != 0)
        {
            let negotiated = ch.read64(reg::DRIVER_FEATURES_LO);
            loop {
                match dev.process_all(q, &window, &mut backend, negotiated) {
                    Ok(p) => {
                        requests += u64::from(p.completed);
                        rejected += u64::from(p.rejected);
                        if p.notify {
                            ch.write(reg::CONTROL, channel::control::USED);
                        }
                        if !p.more {
                            break;
                        }
                    }
                    Err(e) => {
                        println!("blk-service: queue 0 broken: {e}");
                        ch.write(reg::CONTROL, channel::control::NEEDS_RESET);
                        queue = None;
                        break;
                    }
                }
            }
        }
        // Unmask: a new event since EVENTS was read raises the line again.
        cfg_write(0x04, u32::from(CMD_MEMORY | CMD_BUS_MASTER));
    }
}
