//! The service's world in a test: a fake channel function (the real
//! register model, `vigil_virtio::channel::Regs`, with uio's INTx mask), a
//! fake client RAM and a client driver that lays out rings as Linux's
//! virtio_ring does. Every wait is bounded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use vigil_service::{Channel, Disk, Exit, Log, Options, Service, Stats, Storage};
use vigil_virtio::blk::{
    DEVICE_FEATURES, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vigil_virtio::channel::{
    Anomaly, ClientView, ConfigSpace, QueueView, Regs, CMD_BUS_MASTER, CMD_INTX_DISABLE, CMD_MEMORY,
};
use vigil_virtio::queue::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use vigil_virtio::{GuestRam, OutOfRange};

pub const SEC: Duration = Duration::from_secs(1);
pub const RAM_BASE: u64 = 0x4000_0000;
pub const RAM_SIZE: usize = 8 << 20;
/// ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK.
pub const STATUS_LIVE: u32 = 0xf;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `cond`; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        thread::sleep(Duration::from_micros(200));
    }
}

// ---------------------------------------------------------------------
// The channel function
// ---------------------------------------------------------------------

/// What the client shows (status, features, queue 0).
#[derive(Clone, Copy, Debug, Default)]
pub struct Client {
    pub status: u32,
    pub features: u64,
    pub queue: QueueView,
}

impl ClientView for Client {
    fn status(&self) -> u32 {
        self.status
    }
    fn driver_features(&self) -> u64 {
        self.features
    }
    fn queue(&self, index: u32) -> QueueView {
        if index == 0 {
            self.queue
        } else {
            QueueView::default()
        }
    }
}

pub struct FakeState {
    pub regs: Regs,
    pub cfg: ConfigSpace,
    pub client: Client,
    pub closed: bool,
    /// CONTROL writes the model acted on.
    pub used: u64,
    pub needs_reset: u64,
    pub ready: bool,
    /// Accesses the register model refused: the service should make none.
    pub anomalies: Vec<Anomaly>,
    /// INTx deliveries (wait returning).
    pub wakes: u64,
}

/// BAR 0 and the INTx line as uio_pci_generic shows them: `wait` returns
/// once the line is up (an event pending, Interrupt Disable clear) and
/// sets Interrupt Disable, as the kernel's handler does.
pub struct FakeChannel {
    st: Mutex<FakeState>,
    cv: Condvar,
}

impl FakeChannel {
    pub fn new() -> Arc<Self> {
        let mut cfg = ConfigSpace::new(RAM_SIZE as u64);
        cfg.write32(
            0x04,
            u32::from(CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE),
            0xffff,
        );
        Arc::new(FakeChannel {
            st: Mutex::new(FakeState {
                regs: Regs::new(2, (RAM_BASE, RAM_SIZE as u64)),
                cfg,
                client: Client::default(),
                closed: false,
                used: 0,
                needs_reset: 0,
                ready: false,
                anomalies: Vec::new(),
                wakes: 0,
            }),
            cv: Condvar::new(),
        })
    }

    /// Runs `f` on the state, then wakes whoever waits on it.
    pub fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        let r = f(&mut lock(&self.st));
        self.cv.notify_all();
        r
    }

    /// The client notified queue 0.
    pub fn kick(&self) {
        self.with(|s| s.regs.post_notify(0));
    }

    /// The client's driver set queue 0 up and went DRIVER_OK.
    pub fn driver_ok(&self, queue: QueueView, features: u64) {
        self.with(|s| {
            s.client = Client {
                status: STATUS_LIVE,
                features,
                queue,
            };
            s.regs.post_status();
        });
    }

    /// The client reset the device (status 0, queues gone).
    pub fn client_reset(&self) {
        self.with(|s| {
            s.client = Client::default();
            s.regs.post_reset();
        });
    }

    pub fn gone(&self) {
        self.with(|s| s.regs.post_gone());
    }

    /// No interrupt will come any more: ends the doorbell thread.
    pub fn close(&self) {
        self.with(|s| s.closed = true);
    }
}

impl Channel for FakeChannel {
    fn read(&self, r: u64) -> u32 {
        let mut s = lock(&self.st);
        let FakeState { regs, client, .. } = &mut *s;
        match regs.read(client, r, 4) {
            Ok(v) => v,
            Err(a) => {
                s.anomalies.push(a);
                0
            }
        }
    }

    fn write(&self, r: u64, v: u32) {
        self.with(|s| match s.regs.write(r, 4, v) {
            Ok(a) => {
                s.ready |= a.ready;
                s.used += u64::from(a.used);
                s.needs_reset += u64::from(a.needs_reset);
            }
            Err(a) => s.anomalies.push(a),
        });
    }

    fn unmask(&self) -> io::Result<()> {
        self.with(|s| {
            let cmd = s.cfg.read32(0x04, false) & 0xffff;
            s.cfg
                .write32(0x04, cmd & !u32::from(CMD_INTX_DISABLE), 0xffff);
        });
        Ok(())
    }

    fn wait(&self) -> io::Result<bool> {
        let mut s = lock(&self.st);
        loop {
            if s.closed {
                return Ok(false);
            }
            if s.cfg.intx(s.regs.pending()) {
                let cmd = s.cfg.read32(0x04, false) & 0xffff;
                s.cfg
                    .write32(0x04, cmd | u32::from(CMD_INTX_DISABLE), 0xffff);
                s.wakes += 1;
                return Ok(true);
            }
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

// ---------------------------------------------------------------------
// The client's RAM
// ---------------------------------------------------------------------

/// `[RAM_BASE, RAM_BASE + RAM_SIZE)`. The driver pokes and peeks; device
/// writes (through `GuestRam`) are logged.
pub struct FakeRam {
    bytes: Mutex<Vec<u8>>,
    log: Mutex<Vec<(u64, usize)>>,
    pub bad_writes: AtomicU64,
}

impl FakeRam {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeRam {
            bytes: Mutex::new(vec![0; RAM_SIZE]),
            log: Mutex::new(Vec::new()),
            bad_writes: AtomicU64::new(0),
        })
    }

    fn range(addr: u64, len: usize) -> Result<std::ops::Range<usize>, OutOfRange> {
        let err = OutOfRange {
            addr,
            len: len as u64,
        };
        let off = addr.checked_sub(RAM_BASE).ok_or(err)?;
        let end = off.checked_add(len as u64).ok_or(err)?;
        if end > RAM_SIZE as u64 {
            return Err(err);
        }
        Ok(off as usize..end as usize)
    }

    pub fn poke(&self, addr: u64, data: &[u8]) {
        let r = Self::range(addr, data.len()).expect("poke in RAM");
        lock(&self.bytes)[r].copy_from_slice(data);
    }

    pub fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
        let r = Self::range(addr, len).expect("peek in RAM");
        lock(&self.bytes)[r].to_vec()
    }

    pub fn poke_u16(&self, addr: u64, v: u16) {
        self.poke(addr, &v.to_le_bytes());
    }

    pub fn peek_u16(&self, addr: u64) -> u16 {
        let b = self.peek(addr, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    pub fn peek_u32(&self, addr: u64) -> u32 {
        let b = self.peek(addr, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Device writes since the last call.
    pub fn take_log(&self) -> Vec<(u64, usize)> {
        std::mem::take(&mut *lock(&self.log))
    }
}

impl GuestRam for FakeRam {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let r = Self::range(addr, buf.len())?;
        buf.copy_from_slice(&lock(&self.bytes)[r]);
        Ok(())
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), OutOfRange> {
        let r = Self::range(addr, buf.len()).inspect_err(|_| {
            self.bad_writes.fetch_add(1, Ordering::SeqCst);
        })?;
        lock(&self.bytes)[r].copy_from_slice(buf);
        lock(&self.log).push((addr, buf.len()));
        Ok(())
    }
}

// ---------------------------------------------------------------------
// The client's driver
// ---------------------------------------------------------------------

/// One buffer: `(addr, len, device-writable)`.
pub type Buf = (u64, u32, bool);

pub fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..].copy_from_slice(&next.to_le_bytes());
    b
}

/// A driver in the shape of Linux's virtio_ring: rings at `at` laid out
/// as vring_init does, descriptors from a free list (returned when the
/// used entry comes back), buffers from a bump allocator; with EVENT_IDX
/// it asks for an interrupt after every completion, as virtio_blk does.
pub struct Driver {
    ram: Arc<FakeRam>,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub avail_idx: u16,
    pub last_used: u16,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    heap_start: u64,
    heap: u64,
    heap_end: u64,
}

/// A request the driver added: where its data and status byte are.
#[derive(Clone, Debug)]
pub struct Req {
    pub head: u16,
    pub data: Vec<(u64, u32)>,
    pub status: u64,
}

impl Driver {
    /// Rings at `at` (4 KiB aligned), buffers in `[heap, heap_end)`.
    pub fn new(ram: &Arc<FakeRam>, at: u64, size: u16, heap_end: u64) -> Driver {
        let n = u64::from(size);
        let desc = at;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n + 3) & !3;
        let heap = (used + 6 + 8 * n + 0xfff) & !0xfff;
        // Fresh rings, as a new driver instance allocates them.
        ram.poke(at, &vec![0; (heap - at) as usize]);
        Driver {
            ram: ram.clone(),
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            last_used: 0,
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
            heap_start: heap,
            heap,
            heap_end,
        }
    }

    pub fn view(&self) -> QueueView {
        QueueView {
            size: u32::from(self.size),
            ready: true,
            desc: self.desc,
            driver: self.avail,
            device: self.used,
        }
    }

    /// `len` bytes of driver memory, 16-aligned.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let a = self.heap;
        self.heap = (self.heap + len.max(1) + 15) & !15;
        assert!(self.heap <= self.heap_end, "test driver out of memory");
        a
    }

    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.ram.poke(
            self.desc + 16 * u64::from(i),
            &desc_bytes(addr, len, flags, next),
        );
    }

    pub fn free_descs(&self) -> usize {
        self.free.len()
    }

    /// Buffer memory can be reused: nothing is outstanding.
    pub fn recycle(&mut self) {
        assert!(self.chains.is_empty(), "requests outstanding");
        self.heap = self.heap_start;
    }

    /// `n` free descriptors for a chain the test writes by hand; they come
    /// back with the used entry of the first.
    pub fn claim(&mut self, n: usize) -> Vec<u16> {
        let d: Vec<u16> = (0..n).map(|_| self.free.pop().expect("free")).collect();
        self.chains.insert(d[0], d.clone());
        d
    }

    /// Chains `bufs` (directly, or through one indirect table) and makes
    /// it available (§2.7.13: ring entry, then idx).
    pub fn add(&mut self, bufs: &[Buf], indirect: bool) -> u16 {
        let head = if indirect {
            let table = self.alloc(16 * bufs.len() as u64);
            for (k, &(addr, len, w)) in bufs.iter().enumerate() {
                let mut flags = if w { VIRTQ_DESC_F_WRITE } else { 0 };
                if k + 1 < bufs.len() {
                    flags |= VIRTQ_DESC_F_NEXT;
                }
                self.ram.poke(
                    table + 16 * k as u64,
                    &desc_bytes(addr, len, flags, (k + 1) as u16),
                );
            }
            let i = self.free.pop().expect("a free descriptor");
            self.set_desc(i, table, 16 * bufs.len() as u32, VIRTQ_DESC_F_INDIRECT, 0);
            self.chains.insert(i, vec![i]);
            i
        } else {
            assert!(self.free.len() >= bufs.len(), "free descriptors");
            let idx: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().unwrap()).collect();
            for (k, &(addr, len, w)) in bufs.iter().enumerate() {
                let mut flags = if w { VIRTQ_DESC_F_WRITE } else { 0 };
                let next = if k + 1 < bufs.len() {
                    flags |= VIRTQ_DESC_F_NEXT;
                    idx[k + 1]
                } else {
                    0
                };
                self.set_desc(idx[k], addr, len, flags, next);
            }
            self.chains.insert(idx[0], idx.clone());
            idx[0]
        };
        self.publish(head);
        head
    }

    /// Puts `head` in the avail ring and bumps avail.idx.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.ram.poke_u16(self.avail + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.ram.poke_u16(self.avail + 2, self.avail_idx);
    }

    /// Used entries `(id, len)` since the last call; their descriptors
    /// are free again.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx = self.ram.peek_u16(self.used + 2);
        let mut out = Vec::new();
        while self.last_used != idx {
            let e = self.used + 4 + 8 * u64::from(self.last_used % self.size);
            let (id, len) = (self.ram.peek_u32(e), self.ram.peek_u32(e + 4));
            out.push((id, len));
            if let Some(d) = self.chains.remove(&(id as u16)) {
                self.free.extend(d);
            }
            self.last_used = self.last_used.wrapping_add(1);
        }
        // used_event (§2.7.10): interrupt me after the next one.
        self.ram
            .poke_u16(self.avail + 4 + 2 * u64::from(self.size), self.last_used);
        out
    }

    fn header(&mut self, ty: u32, sector: u64) -> u64 {
        let h = self.alloc(16);
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&ty.to_le_bytes());
        b[8..].copy_from_slice(&sector.to_le_bytes());
        self.ram.poke(h, &b);
        h
    }

    /// A request as virtio_blk builds it: header, data in `pieces`
    /// segments, status byte (0xff until the device writes it).
    pub fn request(&mut self, ty: u32, sector: u64, len: u32, pieces: u32, indirect: bool) -> Req {
        let h = self.header(ty, sector);
        let mut bufs: Vec<Buf> = vec![(h, 16, false)];
        let mut data = Vec::new();
        if len > 0 {
            let d = self.alloc(u64::from(len));
            let step = len / pieces;
            for k in 0..pieces {
                let n = if k + 1 == pieces {
                    len - step * k
                } else {
                    step
                };
                let a = d + u64::from(step * k);
                bufs.push((a, n, ty != VIRTIO_BLK_T_OUT));
                data.push((a, n));
            }
        }
        let st = self.alloc(1);
        self.ram.poke(st, &[0xff]);
        bufs.push((st, 1, true));
        let head = self.add(&bufs, indirect);
        Req {
            head,
            data,
            status: st,
        }
    }

    /// Reads the bytes of a request's data segments.
    pub fn data(&self, r: &Req) -> Vec<u8> {
        let mut out = Vec::new();
        for &(a, n) in &r.data {
            out.extend(self.ram.peek(a, n as usize));
        }
        out
    }

    pub fn status(&self, r: &Req) -> u8 {
        self.ram.peek(r.status, 1)[0]
    }
}

/// A pattern that names its sector and a seed.
pub fn pattern(sector: u64, len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (sector as u8).wrapping_mul(31) ^ (i as u8).wrapping_mul(7) ^ seed)
        .collect()
}

// ---------------------------------------------------------------------
// Disks and the rig
// ---------------------------------------------------------------------

/// A sparse temporary file, removed on drop.
pub struct TempDisk {
    pub path: PathBuf,
}

impl TempDisk {
    pub fn new(sectors: u64) -> TempDisk {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vigil-service-test-{}-{}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        File::create(&path).unwrap().set_len(sectors * 512).unwrap();
        TempDisk { path }
    }

    pub fn open(&self) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .unwrap()
    }

    pub fn bytes(&self, sector: u64, len: usize) -> Vec<u8> {
        let all = std::fs::read(&self.path).unwrap();
        all[(sector * 512) as usize..][..len].to_vec()
    }
}

impl Drop for TempDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Holds writes at a gate the test opens.
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    /// Writes that reached the gate.
    pub arrived: AtomicU64,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate {
            open: Mutex::new(true),
            cv: Condvar::new(),
            arrived: AtomicU64::new(0),
        })
    }
    pub fn set(&self, open: bool) {
        *lock(&self.open) = open;
        self.cv.notify_all();
    }
    fn pass(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let mut o = lock(&self.open);
        while !*o {
            o = self.cv.wait(o).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A file whose writes wait at a gate.
pub struct Gated {
    pub file: File,
    pub gate: Arc<Gate>,
}

impl Storage for Gated {
    fn pread(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.pread(buf, offset)
    }
    fn pwrite(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.gate.pass();
        self.file.pwrite(data, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync()
    }
}

/// A service on a fake channel and a fake client RAM.
pub struct Rig {
    pub ch: Arc<FakeChannel>,
    pub ram: Arc<FakeRam>,
    pub svc: Option<Service<FakeChannel, FakeRam>>,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub disk: TempDisk,
    log: Log,
    gone: bool,
}

impl Rig {
    pub fn start(sectors: u64, hz: u32) -> Rig {
        let disk = TempDisk::new(sectors);
        let file = disk.open();
        Self::start_with(disk, file, hz)
    }

    pub fn start_with<S: Storage>(disk: TempDisk, storage: S, hz: u32) -> Rig {
        Self::start_opts(disk, storage, hz, 32 << 20)
    }

    pub fn start_opts<S: Storage>(disk: TempDisk, storage: S, hz: u32, max_bytes: u64) -> Rig {
        let ch = FakeChannel::new();
        let ram = FakeRam::new();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let l = logs.clone();
        let log = Log::new(move |line| {
            eprintln!("vigil-service: {line}");
            lock(&l).push(line.to_string());
        })
        .unwrap();
        let sectors = std::fs::metadata(&disk.path).unwrap().len() / 512;
        let svc = Service::start(
            ch.clone(),
            ram.clone(),
            Disk { storage, sectors },
            Options {
                hz,
                id: *b"vigil-test-disk\0\0\0\0\0",
                max_bytes_in_flight: max_bytes,
            },
            log.clone(),
        )
        .expect("service starts");
        assert!(ch.with(|s| s.ready), "READY written");
        Rig {
            ch,
            ram,
            svc: Some(svc),
            logs,
            disk,
            log,
            gone: false,
        }
    }

    pub fn svc(&self) -> &Service<FakeChannel, FakeRam> {
        self.svc.as_ref().unwrap()
    }

    pub fn stats(&self) -> Stats {
        self.svc().stats()
    }

    /// A driver with its rings at `at`, DRIVER_OK, and the service's queue
    /// built from it.
    pub fn driver_ok(&self, at: u64, size: u16, features: u64, heap: u64) -> Driver {
        let queues = self.stats().queues;
        let drv = Driver::new(&self.ram, at, size, heap);
        self.ch.driver_ok(drv.view(), features);
        wait_until(5 * SEC, "the service sets the queue up", || {
            self.stats().queues > queues
        });
        drv
    }

    /// Kicks and waits until `n` used entries came back.
    pub fn complete(&self, drv: &mut Driver, n: usize) -> Vec<(u32, u32)> {
        self.ch.kick();
        let mut got = Vec::new();
        wait_until(10 * SEC, &format!("{n} used entries"), || {
            got.extend(drv.take_used());
            got.len() >= n
        });
        assert_eq!(got.len(), n, "more used entries than requests");
        got
    }

    /// Writes `data` at `sector` and waits for it (status OK).
    pub fn write(&self, drv: &mut Driver, sector: u64, data: &[u8], pieces: u32, ind: bool) {
        let r = write_request(drv, &self.ram, sector, data, pieces, ind);
        let used = self.complete(drv, 1);
        assert_eq!(used, [(u32::from(r.head), 1)]);
        assert_eq!(drv.status(&r), 0, "write status");
    }

    /// Reads `len` bytes at `sector` (status OK).
    pub fn read(&self, drv: &mut Driver, sector: u64, len: u32, pieces: u32, ind: bool) -> Vec<u8> {
        let r = drv.request(VIRTIO_BLK_T_IN, sector, len, pieces, ind);
        let used = self.complete(drv, 1);
        assert_eq!(used, [(u32::from(r.head), len + 1)]);
        assert_eq!(drv.status(&r), 0, "read status");
        drv.data(&r)
    }

    pub fn flush(&self, drv: &mut Driver) {
        let r = drv.request(VIRTIO_BLK_T_FLUSH, 0, 0, 1, false);
        assert_eq!(self.complete(drv, 1), [(u32::from(r.head), 1)]);
        assert_eq!(drv.status(&r), 0, "flush status");
    }

    pub fn get_id(&self, drv: &mut Driver) -> Vec<u8> {
        let r = drv.request(VIRTIO_BLK_T_GET_ID, 0, 20, 1, false);
        assert_eq!(self.complete(drv, 1), [(u32::from(r.head), 21)]);
        assert_eq!(drv.status(&r), 0, "GET_ID status");
        drv.data(&r)
    }

    /// Whether a line logged so far contains `what`.
    pub fn logged(&self, what: &str) -> bool {
        self.log.flush();
        lock(&self.logs).iter().any(|l| l.contains(what))
    }

    /// GONE, and the service says it is to end.
    pub fn gone(&mut self) {
        self.ch.gone();
        assert_eq!(self.svc().wait_timeout(10 * SEC), Some(Exit::Gone));
        self.gone = true;
    }

    /// GONE (unless already): the service stops, its doorbell thread ends.
    pub fn finish(mut self) -> (Stats, vigil_lkl::Stats) {
        if !self.gone {
            self.gone();
        }
        let svc = self.svc.take().unwrap();
        let mut stopped = svc.stop();
        self.ch.close();
        let doorbell = stopped.doorbell.take().expect("doorbell thread");
        doorbell.join().expect("doorbell thread");
        assert!(self.logged("client gone"));
        assert!(self.logged("summary: "));
        let anomalies = self.ch.with(|s| s.anomalies.clone());
        assert!(
            anomalies.is_empty(),
            "register accesses refused: {anomalies:?}"
        );
        assert_eq!(self.ram.bad_writes.load(Ordering::SeqCst), 0);
        (stopped.stats_now(), stopped.kernel.expect("clean shutdown"))
    }
}

/// An OUT request carrying `data` (copied into driver memory first).
pub fn write_request(
    drv: &mut Driver,
    ram: &FakeRam,
    sector: u64,
    data: &[u8],
    pieces: u32,
    indirect: bool,
) -> Req {
    let h = drv.header(VIRTIO_BLK_T_OUT, sector);
    let d = drv.alloc(data.len() as u64);
    ram.poke(d, data);
    let len = data.len() as u32;
    let step = len / pieces;
    let mut bufs: Vec<Buf> = vec![(h, 16, false)];
    let mut segs = Vec::new();
    for k in 0..pieces {
        let n = if k + 1 == pieces {
            len - step * k
        } else {
            step
        };
        let a = d + u64::from(step * k);
        bufs.push((a, n, false));
        segs.push((a, n));
    }
    let st = drv.alloc(1);
    ram.poke(st, &[0xff]);
    bufs.push((st, 1, true));
    let head = drv.add(&bufs, indirect);
    Req {
        head,
        data: segs,
        status: st,
    }
}

pub const ALL_FEATURES: u64 = DEVICE_FEATURES;
