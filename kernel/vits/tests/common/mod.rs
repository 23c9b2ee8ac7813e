//! Shared rig for the vITS host tests: a fake guest RAM and a VM with a
//! vGIC and a vITS set up the way a guest driver does it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vigil_vgic::sim::SimCpu;
use vigil_vgic::sync::Mutex;
use vigil_vgic::{GuestMemory, MemError, RamWindow, Vgic, VgicConfig, GICR_STRIDE};
use vigil_vits::{Command, Vits, VitsConfig};

pub const RAM: u64 = 0x4000_0000;
pub const RAM_SIZE: u64 = 0x10_0000;
pub const CMDQ: u64 = RAM;
pub const CMDQ_PAGES: u64 = 16;
pub const DEV_TABLE: u64 = RAM + 0x1_0000;
pub const COLL_TABLE: u64 = RAM + 0x2_0000;
pub const PROP_TABLE: u64 = RAM + 0x3_0000;
pub const PEND_TABLE: u64 = RAM + 0x5_0000; // + v * 64 KiB
pub const ITT_BASE: u64 = RAM + 0xa_0000; // + dev * 0x1000
pub const L2_PAGE: u64 = RAM + 0xc_0000;
pub const VALID: u64 = 1 << 63;
pub const LPI0: u32 = 8192;

/// Fake guest RAM with a read counter, an optional unreadable hole, and
/// windows (`GuestMemory::window`, as Vigil's VMs give) unless turned off.
/// Its bytes are only ever accessed atomically (`vigil_guestmem`), as a
/// guest's RAM is by Vigil, so a window may read them while a test writes.
pub struct FakeMem {
    data: Box<[AtomicU64]>,
    pub reads: AtomicU64,
    hole: Mutex<Option<(u64, u64)>>,
    windows: AtomicBool,
}

impl FakeMem {
    pub fn new() -> Self {
        Self {
            data: (0..RAM_SIZE / 8).map(|_| AtomicU64::new(0)).collect(),
            reads: AtomicU64::new(0),
            hole: Mutex::new(None),
            windows: AtomicBool::new(true),
        }
    }
    fn at(&self, gpa: u64) -> *mut u8 {
        let base: *const u8 = self.data.as_ptr().cast();
        base.wrapping_add((gpa - RAM) as usize) as *mut u8
    }
    pub fn write(&self, gpa: u64, bytes: &[u8]) {
        assert!(self.is_ram(gpa, bytes.len() as u64), "write outside RAM");
        // SAFETY: inside `data` (checked), only accessed atomically.
        unsafe { vigil_guestmem::write(self.at(gpa), bytes) };
    }
    pub fn write_u64(&self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes());
    }
    pub fn set_hole(&self, h: Option<(u64, u64)>) {
        *self.hole.lock() = h;
    }
    /// Whether `window` gives windows (the readers then fall back to
    /// `read`).
    pub fn set_windows(&self, on: bool) {
        self.windows.store(on, Ordering::Relaxed);
    }
    fn in_hole(&self, gpa: u64, len: u64) -> bool {
        self.hole
            .lock()
            .is_some_and(|(s, l)| gpa < s + l && gpa + len > s)
    }
}

impl GuestMemory for FakeMem {
    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        gpa >= RAM && gpa.checked_add(len).is_some_and(|e| e <= RAM + RAM_SIZE)
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if !self.is_ram(gpa, buf.len() as u64) || self.in_hole(gpa, buf.len() as u64) {
            return Err(MemError::OutOfRam);
        }
        // SAFETY: inside `data` (checked), only accessed atomically.
        unsafe { vigil_guestmem::read(self.at(gpa), buf) };
        Ok(())
    }
    fn window(&self, gpa: u64, len: u64) -> Option<RamWindow<'_>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if !self.windows.load(Ordering::Relaxed) || !self.is_ram(gpa, len) || self.in_hole(gpa, len)
        {
            return None;
        }
        // SAFETY: inside `data` (checked), only accessed atomically, for as
        // long as `self` is borrowed.
        Some(unsafe { RamWindow::new(self.at(gpa), len as usize) })
    }
}

/// A VM: vGIC + vITS + RAM, and the guest driver's command-queue lock.
pub struct Rig {
    pub vgic: Arc<Vgic>,
    pub its: Arc<Vits>,
    pub mem: Arc<FakeMem>,
    submit: Mutex<()>,
}

/// Every test ends with a consistent vGIC: no internal inconsistency was
/// ever detected (a stale list entry, LR state folding into no mapping...).
impl Drop for Rig {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_eq!(self.vgic.lock().anomalies(), 0, "vGIC anomalies");
        }
    }
}

impl Rig {
    /// `n` vCPUs, ITS enabled with flat tables, one collection per vCPU
    /// (ICID v -> vCPU v), LPIs enabled on every redistributor, every LPI
    /// enabled at priority 0xa0 in the property table.
    pub fn new(n: usize) -> Self {
        Self::with(n, VitsConfig::default())
    }

    /// As [`Rig::new`], with a vITS of shape `cfg`.
    pub fn with(n: usize, cfg: VitsConfig) -> Self {
        Self::with_vgic(VgicConfig::simple(n), cfg)
    }

    /// As [`Rig::new`], with a vGIC and a vITS of these shapes.
    pub fn with_vgic(vgic: VgicConfig, cfg: VitsConfig) -> Self {
        let n = vgic.mpidrs.len();
        let r = Self::bare_vgic(vgic, cfg);
        r.setup_tables(false);
        r.enable_lpis();
        for v in 0..n {
            r.cmd(Command::Mapc {
                icid: v as u16,
                rdbase: v as u64,
                valid: true,
            });
        }
        r
    }

    /// Nothing configured.
    pub fn bare(n: usize) -> Self {
        Self::bare_with(n, VitsConfig::default())
    }

    /// Nothing configured, a vITS of shape `cfg`.
    pub fn bare_with(n: usize, cfg: VitsConfig) -> Self {
        Self::bare_vgic(VgicConfig::simple(n), cfg)
    }

    fn bare_vgic(vgic: VgicConfig, cfg: VitsConfig) -> Self {
        let vgic = Arc::new(Vgic::new(&vgic));
        let its = Arc::new(Vits::new(vgic.clone(), cfg));
        Self {
            vgic,
            its,
            mem: Arc::new(FakeMem::new()),
            submit: Mutex::new(()),
        }
    }

    pub fn setup_tables(&self, two_level: bool) {
        let m = &*self.mem;
        // 64 KiB pages: PA[47:16] in place; Page_Size is RO.
        let indirect = if two_level { 1 << 62 } else { 0 };
        self.its
            .mmio_write(0x100, 8, VALID | indirect | DEV_TABLE, m);
        self.its.mmio_write(0x108, 8, VALID | COLL_TABLE, m);
        self.its
            .mmio_write(0x80, 8, VALID | CMDQ | (CMDQ_PAGES - 1), m);
        self.its.mmio_write(0, 4, 1, m);
        self.vgic.gicd_write(0, 0, 4, 0b11);
        self.mem.write(PROP_TABLE, &vec![0xa1; 0x1_0000 - 0x2000]);
        self.vgic.gicr_write(0x70, 8, PROP_TABLE | 15, m);
    }

    pub fn enable_lpis(&self) {
        for v in 0..self.vgic.nr_vcpus() as u64 {
            self.vgic.gicr_write(
                v * GICR_STRIDE + 0x78,
                8,
                PEND_TABLE + v * 0x1_0000,
                &*self.mem,
            );
            self.vgic.gicr_write(v * GICR_STRIDE, 4, 1, &*self.mem);
        }
    }

    /// Queue commands and write CWRITER (serialised like a guest driver).
    pub fn cmds(&self, cmds: &[Command]) {
        let _g = self.submit.lock();
        let mut w = self.its.mmio_read(0x88, 8);
        for c in cmds {
            self.mem.write(CMDQ + w, &c.to_bytes());
            w = (w + 32) % (CMDQ_PAGES * 4096);
        }
        self.its.mmio_write(0x88, 8, w, &*self.mem);
    }

    pub fn cmd(&self, c: Command) {
        self.cmds(&[c]);
    }

    /// Raw 32 bytes as a command.
    pub fn raw(&self, dw: [u64; 4]) {
        let _g = self.submit.lock();
        let w = self.its.mmio_read(0x88, 8);
        let mut b = [0u8; 32];
        for (i, d) in dw.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&d.to_le_bytes());
        }
        self.mem.write(CMDQ + w, &b);
        self.its
            .mmio_write(0x88, 8, (w + 32) % (CMDQ_PAGES * 4096), &*self.mem);
    }

    /// Devices 1 and 2 with 2^16 events each, their 512 KiB ITTs filling
    /// the rig's 1 MiB (the vITS keeps its routes itself; an ITT only has
    /// to be guest RAM): room for 2^17 mappings.
    pub fn map_two_full_devices(&self) {
        for (device, itt) in [(1, RAM), (2, RAM + 0x8_0000)] {
            self.cmd(Command::Mapd {
                device,
                size: 15,
                itt_addr: itt,
                valid: true,
            });
        }
    }

    pub fn mapd(&self, device: u32, size: u8) {
        self.cmd(Command::Mapd {
            device,
            size,
            itt_addr: ITT_BASE + u64::from(device % 32) * 0x1000,
            valid: true,
        });
    }

    pub fn mapti(&self, device: u32, event: u32, intid: u32, icid: u16) {
        self.cmd(Command::Mapti {
            device,
            event,
            intid,
            icid,
        });
    }

    pub fn int(&self, device: u32, event: u32) {
        self.cmd(Command::Int { device, event });
    }

    pub fn discard(&self, device: u32, event: u32) {
        self.cmd(Command::Discard { device, event });
    }

    pub fn creadr(&self) -> u64 {
        self.its.mmio_read(0x90, 8)
    }

    /// Take everything deliverable on vCPU `v`.
    pub fn drain(&self, v: usize) -> Vec<u32> {
        SimCpu::new(v, 4).drain(&self.vgic, 64)
    }

    pub fn set_prop(&self, intid: u32, byte: u8) {
        self.mem
            .write(PROP_TABLE + u64::from(intid - LPI0), &[byte]);
    }
}

/// The scheduling hook of `vigil_vgic::sync` for the shuttle tests: inside
/// a shuttle execution, every lock acquisition is a scheduling point (a
/// shuttle atomic access), and spinning on a held lock yields to the
/// holder.
fn shuttle_hook(contended: bool) {
    use shuttle::sync::atomic::{AtomicBool, Ordering};
    if shuttle::current::try_get_current_task().is_none() {
        return;
    }
    if contended {
        shuttle::thread::yield_now();
    } else {
        AtomicBool::new(false).load(Ordering::SeqCst);
    }
}

/// Run `f` under shuttle, `iters` times with the random and with the PCT
/// scheduler.
pub fn explore(iters: usize, f: impl Fn() + Send + Sync + 'static) {
    vigil_vgic::sync::set_yield_hook(shuttle_hook);
    let f = Arc::new(f);
    let g = f.clone();
    shuttle::check_random(move || f(), iters);
    shuttle::check_pct(move || g(), iters, 3);
}
