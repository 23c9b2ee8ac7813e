//! The service proper: the channel's two interrupt handlers on the
//! LKL-style runtime, the doorbell and I/O host threads that trigger them,
//! and what they share.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vigil_lkl::{Config, Error as LklError, Kctx, Kernel, StdHost};
use vigil_virtio::blk::{
    self, BlkDevice, BlockSize, IoError, Parsed, Request, RequestKind, VIRTIO_BLK_ID_BYTES,
};
use vigil_virtio::channel::{control, event, reg};
use vigil_virtio::queue::{QueueError, SplitQueue};
use vigil_virtio::GuestRam;

use crate::disk::{Disk, Storage};
use crate::log::Log;

/// The channel function's INTx, as the doorbell thread posts it.
pub const CHANNEL_IRQ: u32 = 1;
/// "The I/O thread finished something", posted by the I/O thread.
pub const IO_IRQ: u32 = 2;
/// The timer line (0) and the two above.
const NR_IRQS: u32 = 3;

/// The queue size offered (QUEUE_NUM_MAX); Linux's virtio_blk uses it all.
pub const QUEUE_NUM_MAX: u32 = 256;

/// virtio §2.1 device status bits.
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FAILED: u32 = 0x80;

/// Refusals logged per queue: a hostile client must not flood the console.
const LOGGED_REFUSALS: u32 = 8;
/// I/O errors logged in all.
const LOGGED_IO_ERRORS: u64 = 8;
/// How long stopping waits for the I/O thread's last requests.
const IO_EXIT_WAIT: Duration = Duration::from_secs(5);

/// The hardware behind BAR 0 and INTx: `UioChannel` on Linux, a fake in
/// tests. Called from handlers (registers, unmask) and from the doorbell
/// thread (wait) at the same time.
pub trait Channel: Send + Sync + 'static {
    /// An aligned 32-bit BAR 0 register.
    fn read(&self, reg: u64) -> u32;
    fn write(&self, reg: u64, value: u32);
    /// Clears PCI Interrupt Disable: an event pending (now or later)
    /// raises INTx again.
    fn unmask(&self) -> io::Result<()>;
    /// Blocks until the function interrupted (it is masked by then).
    /// `Ok(false)`: no interrupt will ever come (a closed fake).
    fn wait(&self) -> io::Result<bool>;

    /// A 64-bit value as a LO/HI register pair.
    fn read64(&self, lo: u64) -> u64 {
        u64::from(self.read(lo)) | u64::from(self.read(lo + 4)) << 32
    }
}

/// Tunables.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The runtime's tick rate: nothing here sleeps on jiffies, so slow is
    /// fine (and cheap for the service VM).
    pub hz: u32,
    /// The GET_ID string (NUL-padded).
    pub id: [u8; VIRTIO_BLK_ID_BYTES],
    /// Data bytes in flight before the service stops taking requests
    /// (each holds a buffer that size): a full queue of the largest
    /// requests would be 256 x 8 MiB, far more than a service VM has.
    pub max_bytes_in_flight: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hz: 100,
            id: disk_id(Path::new("disk")),
            max_bytes_in_flight: 32 << 20,
        }
    }
}

/// "vigil:" and the disk's file name, cut to the 20 bytes of GET_ID.
pub fn disk_id(path: &Path) -> [u8; VIRTIO_BLK_ID_BYTES] {
    let name = path.file_name().map_or_else(
        || path.to_string_lossy().into_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
    for (d, s) in id.iter_mut().zip(b"vigil:".iter().chain(name.as_bytes())) {
        *d = *s;
    }
    id
}

/// Why the service ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The client is gone for good (EVENTS.GONE): exit 0.
    Gone,
    /// The channel cannot be driven any more (INTx wait or unmask failed).
    Failed,
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// What the service did, for the summary and for tests.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            $($(#[$doc])* pub $name: u64,)*
        }

        #[derive(Default)]
        pub(crate) struct Counters {
            $($name: AtomicU64,)*
        }

        impl Counters {
            fn snapshot(&self) -> Stats {
                Stats { $($name: self.$name.load(Ordering::SeqCst),)* }
            }
        }
    };
}

counters! {
    /// Chains returned to the client, refused ones included.
    requests,
    /// Chains refused (bad descriptors, bad requests: IOERR/UNSUPP, or
    /// nothing to answer).
    refused,
    /// Requests the disk failed (IOERR).
    io_errors,
    /// FLUSH requests done.
    flushes,
    /// Client resets (EVENTS.RESET).
    resets,
    /// Requests dropped because their queue was reset meanwhile.
    dropped,
    /// Queues set up (client DRIVER_OK).
    queues,
    /// CONTROL.NEEDS_RESET written.
    needs_reset,
    /// CONTROL.USED written.
    used_signals,
    /// Requests handed to the I/O thread.
    submitted,
    /// CHANNEL_IRQ handler runs.
    channel_irqs,
    /// Doorbell-thread triggers of CHANNEL_IRQ the runtime accepted.
    doorbells,
    /// CHANNEL_IRQ re-posted by its handler (budget spent).
    retriggers,
    /// IO_IRQ handler runs.
    io_irqs,
    /// I/O-thread triggers of IO_IRQ the runtime accepted.
    io_triggers,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests ({} refused, {} I/O errors), {} flushes, {} resets ({} requests dropped), {} NEEDS_RESET",
            self.requests,
            self.refused,
            self.io_errors,
            self.flushes,
            self.resets,
            self.dropped,
            self.needs_reset
        )
    }
}

/// A request on its way to the I/O thread, tagged with its queue's
/// generation.
struct Job {
    generation: u64,
    req: Request,
}

/// A request back from the I/O thread.
struct Done {
    generation: u64,
    req: Request,
    result: Result<Vec<u8>, IoError>,
}

/// The queue the client's driver set up, while it lives.
struct Live {
    q: SplitQueue,
    /// Bumped for every queue instance: completions for an older one are
    /// dropped (its rings are void after a reset).
    generation: u64,
    features: u64,
    logged: u32,
    /// Data bytes of the requests with the I/O thread.
    bytes: u64,
}

/// What the handlers share; they run one at a time on the runtime's
/// virtual CPU, the mutex keeps that simple to reason about.
struct State {
    queue: Option<Live>,
    generation: u64,
    /// NEEDS_RESET sent: no queue until the client resets.
    broken: bool,
    gone: bool,
    /// `None` once stopping: ends the I/O thread.
    io: Option<Sender<Job>>,
}

struct Inner<C, M> {
    ch: Arc<C>,
    ram: Arc<M>,
    dev: BlkDevice,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    max_bytes: u64,
    state: Mutex<State>,
    done: Mutex<VecDeque<Done>>,
    /// The live queue's generation, for the I/O thread to skip stale work.
    live: AtomicU64,
    n: Arc<Counters>,
    log: Log,
    exit: Sender<Exit>,
}

/// Locks ignoring poison: a panic elsewhere must not wedge the handlers.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::SeqCst);
}

/// The device configuration as CONFIG words (32-bit little-endian).
fn config_words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks(4).map(|w| {
        let mut b = [0u8; 4];
        b[..w.len()].copy_from_slice(w);
        u32::from_le_bytes(b)
    })
}

impl<C: Channel, M: GuestRam + Send + Sync + 'static> Inner<C, M> {
    /// CHANNEL_IRQ: the client did something.
    fn on_channel(&self, k: &Kctx<'_, StdHost>) {
        bump(&self.n.channel_irqs);
        let mut st = lock(&self.state);
        let events = self.ch.read(reg::EVENTS);
        if events & event::RESET != 0 {
            bump(&self.n.resets);
            let in_flight = self.drop_queue(&mut st);
            st.broken = false;
            say!(
                self.log,
                "client reset the device ({in_flight} requests in flight dropped)"
            );
        }
        if events & event::GONE != 0 && !st.gone {
            st.gone = true;
            self.drop_queue(&mut st);
            say!(self.log, "client gone");
            let _ = self.exit.send(Exit::Gone);
        }
        if st.gone {
            return;
        }
        let status = self.ch.read(reg::CLIENT_STATUS);
        if st.queue.is_none()
            && !st.broken
            && status & STATUS_DRIVER_OK != 0
            && status & STATUS_FAILED == 0
        {
            self.set_up_queue(&mut st);
        }
        // Every wake polls the queue, so NOTIFY only needs clearing.
        let _ = self.ch.read(reg::NOTIFY);
        // After EVENTS was read: whatever comes next raises INTx again.
        if let Err(e) = self.ch.unmask() {
            say!(self.log, "error: unmasking INTx: {e}");
            let _ = self.exit.send(Exit::Failed);
        }
        self.run_queue(k, &mut st, Vec::new());
    }

    /// IO_IRQ: the I/O thread finished something.
    fn on_io(&self, k: &Kctx<'_, StdHost>) {
        bump(&self.n.io_irqs);
        let mut st = lock(&self.state);
        let done: Vec<Done> = lock(&self.done).drain(..).collect();
        self.run_queue(k, &mut st, done);
    }

    /// Forgets the queue (its rings are void); returns the chains it had
    /// outstanding.
    fn drop_queue(&self, st: &mut State) -> u32 {
        st.generation += 1;
        self.live.store(st.generation, Ordering::SeqCst);
        st.queue.take().map_or(0, |l| l.q.in_flight())
    }

    /// virtio §2.1.2: the queue cannot be trusted; the client must reset.
    fn needs_reset(&self, st: &mut State) {
        self.ch.write(reg::CONTROL, control::NEEDS_RESET);
        bump(&self.n.needs_reset);
        self.drop_queue(st);
        st.broken = true;
    }

    /// Client DRIVER_OK: queue 0 as its driver configured it.
    fn set_up_queue(&self, st: &mut State) {
        self.ch.write(reg::QUEUE_SEL, 0);
        if self.ch.read(reg::QUEUE_READY) != 1 {
            return;
        }
        let features = self.ch.read64(reg::DRIVER_FEATURES_LO) & blk::DEVICE_FEATURES;
        let has = |bit: u32| features & (1 << bit) != 0;
        let q = SplitQueue::new(
            self.ch.read(reg::QUEUE_SIZE),
            self.ch.read64(reg::QUEUE_DESC_LO),
            self.ch.read64(reg::QUEUE_DRIVER_LO),
            self.ch.read64(reg::QUEUE_DEVICE_LO),
            has(blk::VIRTIO_F_EVENT_IDX),
            &*self.ram,
        );
        match q {
            Ok(q) => {
                st.generation += 1;
                self.live.store(st.generation, Ordering::SeqCst);
                bump(&self.n.queues);
                say!(
                    self.log,
                    "client DRIVER_OK: queue 0 of {} entries, features {features:#x}",
                    q.size()
                );
                st.queue = Some(Live {
                    q: q.with_indirect(has(blk::VIRTIO_F_INDIRECT_DESC)),
                    generation: st.generation,
                    features,
                    logged: 0,
                    bytes: 0,
                });
            }
            Err(e) => {
                say!(self.log, "error: queue 0 unusable: {e}; NEEDS_RESET");
                self.needs_reset(st);
            }
        }
    }

    /// Completes `done`, then takes every available chain; signals USED if
    /// the driver wants it. A queue error here is fatal for the queue.
    fn run_queue(&self, k: &Kctx<'_, StdHost>, st: &mut State, done: Vec<Done>) {
        let State { queue, io, .. } = st;
        let Some(live) = queue.as_mut() else {
            self.n
                .dropped
                .fetch_add(done.len() as u64, Ordering::SeqCst);
            return;
        };
        let old = live.q.used_idx();
        let result = self
            .complete_all(live, done)
            .and_then(|()| self.pop_all(k, live, io.as_ref()));
        match result {
            Ok(()) => {
                if live.q.used_idx() != old && live.q.needs_notify(&*self.ram, old) {
                    self.ch.write(reg::CONTROL, control::USED);
                    bump(&self.n.used_signals);
                }
            }
            Err(e) => {
                say!(self.log, "error: queue 0 broken: {e}; NEEDS_RESET");
                self.needs_reset(st);
            }
        }
    }

    fn complete_all(&self, live: &mut Live, done: Vec<Done>) -> Result<(), QueueError> {
        for d in done {
            if d.generation != live.generation {
                bump(&self.n.dropped);
                continue;
            }
            live.bytes = live.bytes.saturating_sub(data_bytes(&d.req.kind));
            match (&d.req.kind, &d.result) {
                (_, Err(IoError)) => bump(&self.n.io_errors),
                (RequestKind::Flush, Ok(_)) => bump(&self.n.flushes),
                _ => {}
            }
            blk::complete(d.req, d.result, &*self.ram, &mut live.q)?;
            bump(&self.n.requests);
        }
        Ok(())
    }

    /// Pops and parses what the driver made available: bad chains are
    /// answered now, GET_ID too, the rest goes to the I/O thread. At most
    /// the queue size in flight (a driver cannot have more) and about
    /// `max_bytes` of data (completions pop the rest), and at most the
    /// queue size popped per run: a driver that keeps adding bad chains
    /// gets the rest after the other lines had their turn.
    fn pop_all(
        &self,
        k: &Kctx<'_, StdHost>,
        live: &mut Live,
        io: Option<&Sender<Job>>,
    ) -> Result<(), QueueError> {
        let ram = &*self.ram;
        let size = u32::from(live.q.size());
        let mut popped = 0;
        while live.q.in_flight() < size && live.bytes < self.max_bytes {
            if popped == size {
                if k.trigger_irq(CHANNEL_IRQ).is_ok() {
                    bump(&self.n.retriggers);
                }
                break;
            }
            popped += 1;
            let chain = match live.q.pop(ram) {
                Ok(None) => break,
                Ok(Some(chain)) => chain,
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    self.refused(live, format_args!("{e}"));
                    if let Some(head) = e.head() {
                        live.q.push_used(ram, head, 0)?;
                        bump(&self.n.requests);
                    }
                    continue;
                }
            };
            match self.dev.parse(&chain, ram, live.features) {
                Parsed::Immediate(imm) => {
                    self.refused(live, format_args!("chain {}: {:?}", imm.head, imm.error));
                    blk::complete_immediate(&imm, ram, &mut live.q)?;
                    bump(&self.n.requests);
                }
                Parsed::Request(req) if req.kind == RequestKind::GetId => {
                    blk::complete(req, Ok(self.id.to_vec()), ram, &mut live.q)?;
                    bump(&self.n.requests);
                }
                Parsed::Request(req) => {
                    let bytes = data_bytes(&req.kind);
                    let job = Job {
                        generation: live.generation,
                        req,
                    };
                    let refused = match io {
                        Some(tx) => tx.send(job).err().map(|e| e.0),
                        None => Some(job),
                    };
                    match refused {
                        None => {
                            live.bytes += bytes;
                            bump(&self.n.submitted);
                        }
                        // Only while stopping: the I/O thread is gone.
                        Some(job) => {
                            blk::complete(job.req, Err(IoError), ram, &mut live.q)?;
                            bump(&self.n.io_errors);
                            bump(&self.n.requests);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn refused(&self, live: &mut Live, what: fmt::Arguments<'_>) {
        bump(&self.n.refused);
        if live.logged < LOGGED_REFUSALS {
            live.logged += 1;
            say!(self.log, "refused: {what}");
            if live.logged == LOGGED_REFUSALS {
                say!(self.log, "further refusals on this queue are not logged");
            }
        }
    }
}

/// The I/O host thread: one request at a time, in submission order (so a
/// FLUSH follows every write submitted before it).
fn io_loop<C: Channel, M: GuestRam + Send + Sync + 'static, S: Storage>(
    disk: Disk<S>,
    jobs: Receiver<Job>,
    inner: Arc<Inner<C, M>>,
    kernel: Arc<Kernel<StdHost>>,
) {
    let mut errors = 0u64;
    for job in jobs {
        // Reset since it was submitted: nobody waits for it.
        if job.generation != inner.live.load(Ordering::SeqCst) {
            bump(&inner.n.dropped);
            continue;
        }
        let result = serve(&disk.storage, &job.req.kind).map_err(|e| {
            errors += 1;
            if errors <= LOGGED_IO_ERRORS {
                say!(
                    inner.log,
                    "error: disk I/O: {}: {e}",
                    describe(&job.req.kind)
                );
            }
            IoError
        });
        lock(&inner.done).push_back(Done {
            generation: job.generation,
            req: job.req,
            result,
        });
        // Refused only after shutdown, when nobody is listening.
        if kernel.trigger_irq(IO_IRQ).is_ok() {
            bump(&inner.n.io_triggers);
        }
    }
    if let Err(e) = disk.storage.sync() {
        say!(inner.log, "error: final fdatasync: {e}");
    }
}

/// A request for a log line (not its data).
fn describe(kind: &RequestKind) -> String {
    match kind {
        RequestKind::In { sector, len } => format!("read of {len} bytes at sector {sector}"),
        RequestKind::Out { sector, data } => {
            format!("write of {} bytes at sector {sector}", data.len())
        }
        RequestKind::Flush => "flush".into(),
        RequestKind::GetId => "get-id".into(),
    }
}

/// The buffer a request holds while it is with the I/O thread.
fn data_bytes(kind: &RequestKind) -> u64 {
    match kind {
        RequestKind::In { len, .. } => u64::from(*len),
        RequestKind::Out { data, .. } => data.len() as u64,
        RequestKind::Flush | RequestKind::GetId => 0,
    }
}

fn serve(storage: &impl Storage, kind: &RequestKind) -> io::Result<Vec<u8>> {
    // Ranges were checked against the capacity by `BlkDevice::parse`.
    match kind {
        RequestKind::In { sector, len } => {
            let mut buf = Vec::new();
            buf.try_reserve_exact(*len as usize)
                .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
            buf.resize(*len as usize, 0);
            storage.pread(&mut buf, sector * blk::SECTOR_SIZE)?;
            Ok(buf)
        }
        RequestKind::Out { sector, data } => storage
            .pwrite(data, sector * blk::SECTOR_SIZE)
            .map(|()| Vec::new()),
        RequestKind::Flush => storage.sync().map(|()| Vec::new()),
        // Answered by the handler; harmless here.
        RequestKind::GetId => Ok(Vec::new()),
    }
}

/// The doorbell host thread: every INTx becomes a CHANNEL_IRQ. It never
/// runs through the runtime's scheduler (Runtime invariant 2's case).
fn doorbell_loop<C: Channel, M: GuestRam + Send + Sync + 'static>(
    inner: Arc<Inner<C, M>>,
    kernel: Arc<Kernel<StdHost>>,
) {
    loop {
        match inner.ch.wait() {
            Ok(true) => match kernel.trigger_irq(CHANNEL_IRQ) {
                Ok(_) => bump(&inner.n.doorbells),
                Err(LklError::ShutDown) => return,
                Err(e) => {
                    say!(inner.log, "error: posting the channel IRQ: {e}");
                    let _ = inner.exit.send(Exit::Failed);
                    return;
                }
            },
            Ok(false) => return,
            Err(e) => {
                say!(inner.log, "error: waiting for the channel's INTx: {e}");
                let _ = inner.exit.send(Exit::Failed);
                return;
            }
        }
    }
}

/// A running service.
pub struct Service<C: Channel, M: GuestRam + Send + Sync + 'static> {
    kernel: Arc<Kernel<StdHost>>,
    inner: Arc<Inner<C, M>>,
    exit: Receiver<Exit>,
    io: Option<JoinHandle<()>>,
    doorbell: JoinHandle<()>,
}

/// What [`Service::stop`] leaves.
pub struct Stopped {
    /// The counters when the runtime was down.
    pub stats: Stats,
    /// The runtime's own, `None` if its shutdown failed.
    pub kernel: Option<vigil_lkl::Stats>,
    /// Still blocked in the INTx wait on real hardware (it ends with the
    /// process); a fake's `wait` returning `Ok(false)` ends it.
    pub doorbell: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Stopped {
    /// The counters now (the doorbell thread may have counted a last
    /// trigger since).
    pub fn stats_now(&self) -> Stats {
        self.counters.snapshot()
    }
}

impl<C: Channel, M: GuestRam + Send + Sync + 'static> Service<C, M> {
    /// Configures the device the client will see (one queue of up to
    /// [`QUEUE_NUM_MAX`], virtio-blk's features and configuration), boots
    /// the runtime, starts the threads, unmasks INTx and goes READY: the
    /// client boots now. `ram` is BAR 2, the client's RAM.
    pub fn start<S: Storage>(
        ch: Arc<C>,
        ram: Arc<M>,
        disk: Disk<S>,
        opts: Options,
        log: Log,
    ) -> io::Result<Self> {
        let dev = BlkDevice::for_backend(&disk, BlockSize::B512);
        ch.write(reg::NUM_QUEUES, 1);
        ch.write(reg::QUEUE_NUM_MAX, QUEUE_NUM_MAX);
        ch.write(reg::DEVICE_FEATURES_LO, blk::DEVICE_FEATURES as u32);
        ch.write(reg::DEVICE_FEATURES_HI, (blk::DEVICE_FEATURES >> 32) as u32);
        let config = dev.config_bytes();
        ch.write(reg::CONFIG_LEN, config.len() as u32);
        for (i, w) in config_words(&config).enumerate() {
            ch.write(reg::CONFIG + 4 * i as u64, w);
        }
        // Before the first wait. Nothing is pending before READY anyway.
        ch.unmask()?;

        let kernel = Kernel::boot(
            StdHost,
            Config {
                nr_irqs: NR_IRQS,
                hz: opts.hz,
                ..Config::default()
            },
        )
        .map_err(|e| io::Error::other(format!("booting the runtime: {e}")))?;
        let (io_tx, io_rx) = mpsc::channel();
        let (exit_tx, exit_rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            ch,
            ram,
            dev,
            id: opts.id,
            max_bytes: opts.max_bytes_in_flight.max(1),
            state: Mutex::new(State {
                queue: None,
                generation: 0,
                broken: false,
                gone: false,
                io: Some(io_tx),
            }),
            done: Mutex::new(VecDeque::new()),
            live: AtomicU64::new(0),
            n: Arc::default(),
            log,
            exit: exit_tx,
        });
        let fail = |e: String, kernel: &Kernel<StdHost>| {
            let _ = kernel.shutdown(1_000_000_000);
            io::Error::other(e)
        };
        for (irq, on_channel) in [(CHANNEL_IRQ, true), (IO_IRQ, false)] {
            let i = inner.clone();
            kernel
                .request_irq(irq, move |k, _| {
                    if on_channel {
                        i.on_channel(k)
                    } else {
                        i.on_io(k)
                    }
                })
                .map_err(|e| fail(format!("IRQ {irq}: {e}"), &kernel))?;
        }
        let (i, k) = (inner.clone(), kernel.clone());
        let io = thread::Builder::new()
            .name("vigil-io".into())
            .spawn(move || io_loop(disk, io_rx, i, k))
            .map_err(|e| fail(format!("I/O thread: {e}"), &kernel))?;
        let (i, k) = (inner.clone(), kernel.clone());
        let doorbell = thread::Builder::new()
            .name("vigil-doorbell".into())
            .spawn(move || doorbell_loop(i, k))
            .map_err(|e| fail(format!("doorbell thread: {e}"), &kernel))?;

        inner.ch.write(reg::CONTROL, control::READY);
        say!(
            inner.log,
            "READY: {} sectors ({} MiB), queue size up to {QUEUE_NUM_MAX}, features {:#x}",
            dev.capacity_sectors(),
            dev.capacity_sectors() >> 11,
            blk::DEVICE_FEATURES
        );
        Ok(Service {
            kernel,
            inner,
            exit: exit_rx,
            io: Some(io),
            doorbell,
        })
    }

    /// Blocks until the service should end.
    pub fn wait(&self) -> Exit {
        self.exit.recv().unwrap_or(Exit::Failed)
    }

    /// [`Self::wait`], at most `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Exit> {
        self.exit.recv_timeout(timeout).ok()
    }

    /// The runtime (tests post IRQs into it).
    pub fn kernel(&self) -> &Arc<Kernel<StdHost>> {
        &self.kernel
    }

    pub fn stats(&self) -> Stats {
        self.inner.n.snapshot()
    }

    /// Shuts the runtime down (every IRQ accepted before is still
    /// handled), lets the I/O thread finish and fdatasync, logs the
    /// summary.
    pub fn stop(mut self) -> Stopped {
        let kernel = match self.kernel.shutdown(5_000_000_000) {
            Ok(s) => Some(s),
            Err(e) => {
                say!(self.inner.log, "error: runtime shutdown: {e}");
                None
            }
        };
        lock(&self.inner.state).io = None;
        if let Some(t) = self.io.take() {
            // A disk stuck in I/O must not keep the service from exiting.
            let deadline = Instant::now() + IO_EXIT_WAIT;
            while !t.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                say!(
                    self.inner.log,
                    "error: the disk is still busy; not waiting for it"
                );
            }
        }
        let stats = self.inner.n.snapshot();
        say!(self.inner.log, "summary: {stats}");
        Stopped {
            stats,
            kernel,
            doorbell: Some(self.doorbell),
            counters: self.inner.n.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_words_are_little_endian_and_padded() {
        let w: Vec<u32> = config_words(&[1, 2, 3, 4, 5]).collect();
        assert_eq!(w, [0x0403_0201, 5]);
        let dev = BlkDevice::new(0x1_0000_0002, BlockSize::B512);
        let w: Vec<u32> = config_words(&dev.config_bytes()).collect();
        assert_eq!(w.len(), 6);
        assert_eq!((w[0], w[1]), (2, 1), "capacity LO, HI");
        assert_eq!(w[5], 512, "blk_size");
    }

    #[test]
    fn the_id_names_the_disk() {
        assert_eq!(&disk_id(Path::new("/dev/vda"))[..9], b"vigil:vda");
        assert_eq!(disk_id(Path::new("/dev/vda"))[9], 0);
        let long = disk_id(Path::new("a-very-long-disk-image-name.img"));
        assert_eq!(&long, b"vigil:a-very-long-di");
    }
}
