//! The kernel side: the virtual CPU, the scheduler, interrupts and time.
//!
//! # The virtual CPU and who holds it
//!
//! There is one virtual CPU. At any moment it is either free or held by one
//! host thread, which is then in *kernel context*:
//! - a task's host thread (a kernel thread, or a host thread inside
//!   [`Kernel::syscall`]), running that task; or
//! - a host thread that called [`Kernel::trigger_irq`] and found the CPU
//!   free: it borrows the CPU for the IRQ, runs the handler, and gives the
//!   CPU back (to the next runnable task, or free).
//!
//! The protocol state — holder, pending IRQs, run queue, shutdown — lives in
//! one host mutex, the *core lock* ([`Core`]). Two rules make the protocol
//! correct, and the model-checking tests explore them over interleavings:
//!
//! - **Pend only to a holder.** A trigger from a host thread that does not
//!   hold the CPU takes the core lock and either takes the free CPU or
//!   records the IRQ as pending. It never looks at any task's flag.
//! - **Never free the CPU with anything pending.** A releasing holder runs
//!   the pending IRQs first, and gives the CPU away only in the same
//!   critical section that checked the pending set. It *frees* the CPU only
//!   if nothing is pending and nothing is runnable. (Under a flood it may,
//!   after a batch, hand the CPU to a runnable task with IRQs still pending:
//!   that task becomes the holder and runs them when it resumes, with IRQs
//!   enabled. See `next_step`.)
//!
//! Together: a pending IRQ always has a holder that will run it, so no
//! trigger is lost and the CPU is never free with work outstanding.
//!
//! # IRQ check points
//!
//! A holder runs pending IRQs (then softirqs) when its context goes to IRQs
//! enabled: at an enabling `irq_restore`/`irq_enable`, when a task resumes
//! from `schedule()` or starts, on entering a syscall, after a handler it
//! triggered itself returns, and when it releases the CPU. It never runs
//! them anywhere else: a task with IRQs enabled that computes for a long
//! time without a check point delays pended IRQs (the runtime is
//! cooperative, like LKL; there is no preemption).
//!
//! # Locks
//!
//! The core lock, the per-CPU lock, the handler tables, the timer list and
//! the wait-queue locks are never nested: each critical section takes
//! exactly one and calls no user code. No lock is held across a semaphore
//! wait or a handler call.
//!
//! Holder-only state (current task, hard-IRQ depth, softirq bits) lives in a
//! second mutex, [`PerCpu`], that only the holder touches, so it is never
//! contended.
//!
//! # Scheduling
//!
//! Cooperative and single-CPU, like LKL: a task runs until it sleeps,
//! yields or ends. Switching from task A to B is `B.sem.up(); A.sem.down()`
//! with the holder field set to B under the core lock beforehand. A task's
//! code therefore only ever runs while its host thread holds the CPU.

use crate::host::{Host, HostError, HostMutex, HostSem, HostTimer, JoinError};
use crate::irq::PendingIrqs;
use crate::task::{Task, TaskKind, TaskState};
use crate::time::{TimerCallback, TimerId, TimerList};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::{String, ToString};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The timer IRQ, reserved by the runtime: the host tick posts it and its
/// handler advances jiffies.
pub const TIMER_IRQ: u32 = 0;
/// The timer softirq, reserved by the runtime: runs expired kernel timers.
pub const TIMER_SOFTIRQ: u32 = 0;
/// Number of softirq vectors.
pub const NR_SOFTIRQS: u32 = 32;

/// An IRQ handler: runs in hard IRQ context with IRQs disabled.
pub type IrqHandler<H> = Arc<dyn Fn(&Kctx<'_, H>, u32) + Send + Sync + 'static>;
/// A softirq handler: runs with IRQs enabled, after hard IRQs.
pub type SoftirqHandler<H> = Arc<dyn Fn(&Kctx<'_, H>) + Send + Sync + 'static>;

/// Boot-time configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Number of IRQ lines, including [`TIMER_IRQ`].
    pub nr_irqs: u32,
    /// Timer frequency: jiffies per second.
    pub hz: u32,
    /// Whether to start the host timer that posts [`TIMER_IRQ`]. Off only for
    /// the model checker, whose host has no real time.
    pub tick: bool,
    /// Pending IRQs a check point or a release runs before it may stop (a
    /// release: before it may hand the CPU to a runnable task with IRQs
    /// still pending). The whole backlog in any normal situation; a bounded
    /// batch under a flood of host-thread triggers, so that tasks are not
    /// starved (see the crate docs on invariant 2). Keep it at least
    /// `nr_irqs`: service is round-robin over lines, so every line pending
    /// at a check point is then served there at least once.
    pub drain_batch: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nr_irqs: 64,
            hz: 1000,
            tick: true,
            drain_batch: 256,
        }
    }
}

/// Errors of the runtime's entry points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The kernel has been shut down (Runtime invariant 6: triggers after
    /// shutdown are refused, not silently dropped).
    ShutDown,
    /// IRQ number out of range, or reserved.
    InvalidIrq(u32),
    /// `request_irq` on a line that already has a handler.
    IrqBusy(u32),
    /// Trigger of a line with no handler.
    NoHandler(u32),
    /// Softirq number out of range, reserved or without handler.
    InvalidSoftirq(u32),
    /// A host operation failed.
    Host(HostError),
    /// Called from kernel context where the caller must be a plain host
    /// thread (e.g. `shutdown`).
    InKernelContext,
    /// `shutdown` gave up waiting for kernel threads to end.
    ShutdownTimeout {
        /// Kernel threads still alive.
        live_kernel_threads: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ShutDown => write!(f, "kernel is shut down"),
            Error::InvalidIrq(n) => write!(f, "invalid IRQ {n}"),
            Error::IrqBusy(n) => write!(f, "IRQ {n} already has a handler"),
            Error::NoHandler(n) => write!(f, "IRQ {n} has no handler"),
            Error::InvalidSoftirq(n) => write!(f, "invalid softirq {n}"),
            Error::Host(e) => write!(f, "{e}"),
            Error::InKernelContext => write!(f, "not allowed in kernel context"),
            Error::ShutdownTimeout {
                live_kernel_threads,
            } => write!(
                f,
                "shutdown timed out with {live_kernel_threads} kernel threads alive"
            ),
        }
    }
}

impl From<HostError> for Error {
    fn from(e: HostError) -> Self {
        Error::Host(e)
    }
}

/// What a successful [`Kernel::trigger_irq`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The handler ran on the calling thread before the call returned.
    Handled,
    /// The IRQ was recorded; the current CPU holder runs it before it
    /// releases the CPU with IRQs enabled (or at its enabling restore).
    Pended,
}

/// Saved IRQ state from [`Kctx::irq_save`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "pass the flags to irq_restore"]
pub struct IrqFlags(bool);

impl IrqFlags {
    /// Whether IRQs were enabled when the flags were saved.
    pub fn were_enabled(self) -> bool {
        self.0
    }
}

/// Counters, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Hard IRQ handler invocations (including the timer).
    pub irqs_handled: u64,
    /// Host-thread triggers that found the CPU free and ran at once.
    pub irqs_direct: u64,
    /// Triggers that were pended.
    pub irqs_pended: u64,
    /// Handler invocations of a line whose handler had been freed.
    pub spurious: u64,
    /// Softirq handler invocations.
    pub softirqs_run: u64,
    /// Hand-offs of the CPU from a sleeping or yielding task to another.
    pub context_switches: u64,
    /// Releases that handed the CPU to a task with IRQs still pending (the
    /// flood path: the holder had run its [`Config::drain_batch`]).
    pub handoffs_with_pending: u64,
}

#[derive(Default)]
struct StatCounters {
    irqs_handled: AtomicU64,
    irqs_direct: AtomicU64,
    irqs_pended: AtomicU64,
    spurious: AtomicU64,
    softirqs_run: AtomicU64,
    context_switches: AtomicU64,
    handoffs_with_pending: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Who holds the virtual CPU, as reported by [`Kernel::cpu_holder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuHolder {
    /// Nobody.
    Free,
    /// The task with this id.
    Task(u64),
    /// A host thread running an IRQ on a borrowed CPU.
    Irq,
}

/// Who holds the virtual CPU.
enum Holder<H: Host> {
    /// A task (possibly not yet woken from its semaphore after a hand-off).
    Task(Arc<Task<H>>),
    /// A host thread that borrowed the free CPU to run an IRQ.
    Irq(#[cfg_attr(not(debug_assertions), allow(dead_code))] H::ThreadId),
}

/// The protocol state, under the core lock.
struct Core<H: Host> {
    holder: Option<Holder<H>>,
    pending: PendingIrqs,
    runqueue: VecDeque<Arc<Task<H>>>,
    shutdown: bool,
    /// Fault injection for the model-checking tests: re-create LKL's stale
    /// global flag and check that the checker catches the hang it causes.
    #[cfg(test)]
    fault_stale_global_flag: Option<bool>,
}

impl<H: Host> Core<H> {
    /// The protocol invariant behind Runtime invariants 2 and 6: a free CPU
    /// has nothing pending and nothing runnable.
    fn check(&self) {
        debug_assert!(
            self.holder.is_some() || (self.pending.is_empty() && self.runqueue.is_empty()),
            "vigil-lkl: protocol invariant broken: CPU free with {} IRQs pending and {} tasks runnable",
            self.pending.len(),
            self.runqueue.len()
        );
    }

    /// Makes `t` runnable; hands it the CPU at once if the CPU is free.
    /// Returns whether it got the CPU (the caller then ups its semaphore,
    /// or proceeds if it is the task's own thread).
    fn enqueue(&mut self, t: &Arc<Task<H>>) -> bool {
        if self.holder.is_none() {
            t.set_state(TaskState::Running);
            t.set_on_cpu(true);
            self.holder = Some(Holder::Task(t.clone()));
            true
        } else {
            t.set_state(TaskState::Runnable);
            self.runqueue.push_back(t.clone());
            false
        }
    }
}

/// Holder-only state: touched only by the host thread holding the CPU.
struct PerCpu<H: Host> {
    /// The running task; `None` in a borrowed IRQ context or while a task is
    /// being switched out (the "idle" context).
    current: Option<Arc<Task<H>>>,
    /// The IRQ flag of the task-less context. There is no task to carry it,
    /// so the CPU does; it is reset to enabled whenever the CPU changes hands.
    idle_irqs_enabled: bool,
    /// Hard IRQ nesting depth (0 or 1 in practice: hard IRQs never nest,
    /// invariant 4, but a hard IRQ may interrupt a softirq).
    hardirq: u32,
    in_softirq: bool,
    softirq_pending: u32,
}

impl<H: Host> PerCpu<H> {
    /// Whether the running context may take an interrupt now.
    fn irqs_enabled(&self) -> bool {
        self.hardirq == 0
            && match &self.current {
                Some(t) => t.ti.irqs_enabled(),
                None => self.idle_irqs_enabled,
            }
    }
}

/// What a releasing holder does next.
enum Step<H: Host> {
    Irq(u32),
    Softirq,
    Handoff(Arc<Task<H>>),
    Free,
}

/// Value of the per-kernel TLS slot on the host thread holding the CPU.
const TLS_HOLDER: usize = 1;

/// A kernel instance: one virtual CPU, its tasks, interrupts and time.
pub struct Kernel<H: Host> {
    me: Weak<Kernel<H>>,
    host: H,
    config: Config,
    tick_ns: u64,
    boot_ns: u64,
    core: H::Mutex<Core<H>>,
    cpu: H::Mutex<PerCpu<H>>,
    irq_handlers: H::Mutex<Vec<Option<IrqHandler<H>>>>,
    /// Lock-free "has a handler" bits so that a refused trigger costs no lock.
    irq_registered: Vec<AtomicBool>,
    softirq_handlers: H::Mutex<Vec<Option<SoftirqHandler<H>>>>,
    timers: H::Mutex<TimerList<H>>,
    jiffies: AtomicU64,
    /// Marks the host thread holding the CPU (see [`TLS_HOLDER`]).
    tls: H::TlsKey,
    stopping: AtomicBool,
    kthreads: H::Mutex<Vec<Arc<Task<H>>>>,
    live_kthreads: AtomicUsize,
    exit_sem: H::Sem,
    tick: H::Mutex<Option<H::Timer>>,
    next_task_id: AtomicU64,
    stats: StatCounters,
}

impl<H: Host> fmt::Debug for Kernel<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field("config", &self.config)
            .field("jiffies", &self.jiffies())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Proof of kernel context: a borrowed view of the kernel that only the
/// runtime hands out, to code running on the host thread that holds the
/// virtual CPU (kernel thread bodies, syscalls, IRQ, softirq and timer
/// handlers). It is neither `Send` nor `Sync`, so it cannot leak to another
/// host thread; everything that needs kernel context takes one.
pub struct Kctx<'a, H: Host> {
    k: &'a Kernel<H>,
    _not_send: PhantomData<*const ()>,
}

impl<'a, H: Host> Kctx<'a, H> {
    fn new(k: &'a Kernel<H>) -> Self {
        Kctx {
            k,
            _not_send: PhantomData,
        }
    }
}

impl<H: Host> fmt::Debug for Kctx<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kctx").finish_non_exhaustive()
    }
}

/// Handle of a kernel thread, for joining it from the host.
pub struct KThread<H: Host> {
    task: Arc<Task<H>>,
    thread: Option<H::Thread>,
    kernel: Arc<Kernel<H>>,
}

impl<H: Host> fmt::Debug for KThread<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KThread").field("task", &self.task).finish()
    }
}

impl<H: Host> KThread<H> {
    /// The thread's task (for its state and, in tests, its flag snapshot).
    pub fn task(&self) -> &Arc<Task<H>> {
        &self.task
    }
    /// Waits for the thread's host thread to end. `Err` carries the panic
    /// message when the thread died of one (e.g. a Runtime invariant 5
    /// assertion); the runtime has released the CPU on its behalf.
    pub fn join(mut self) -> Result<(), JoinError> {
        match self.thread.take() {
            Some(t) => self.kernel.host.thread_join(t),
            None => Ok(()),
        }
    }
}

/// Runs a task's exit path even when its body unwinds, so that a panicking
/// task (an invariant-5 assertion) never leaves the CPU held.
struct ExitGuard<'a, H: Host> {
    k: &'a Kernel<H>,
    task: &'a Arc<Task<H>>,
}

impl<H: Host> Drop for ExitGuard<'_, H> {
    fn drop(&mut self) {
        self.k.task_exit(self.task);
    }
}

/// Gives a borrowed CPU back at the end of a host-thread trigger, also
/// when an IRQ handler panics (test assertions in handlers), so a failure
/// is reported instead of leaving the CPU held forever.
struct BorrowGuard<'a, H: Host> {
    k: &'a Kernel<H>,
}

impl<H: Host> Drop for BorrowGuard<'_, H> {
    fn drop(&mut self) {
        self.k.cpu.lock(|c| {
            c.hardirq = 0;
            c.in_softirq = false;
        });
        self.k.release_cpu();
    }
}

impl<H: Host> Kernel<H> {
    /// Boots a kernel on `host`: sets up the IRQ table, the timer IRQ and
    /// softirq, and (if `config.tick`) a periodic host timer that posts
    /// [`TIMER_IRQ`] every jiffy.
    pub fn boot(host: H, config: Config) -> Result<Arc<Self>, Error> {
        if config.nr_irqs < 2 || config.hz == 0 {
            return Err(Error::InvalidIrq(config.nr_irqs));
        }
        let tls = host.tls_key_create()?;
        let boot_ns = host.time_ns();
        let n = config.nr_irqs as usize;
        let k = Arc::new_cyclic(|me| Kernel {
            me: me.clone(),
            tick_ns: 1_000_000_000 / u64::from(config.hz),
            boot_ns,
            config,
            core: H::Mutex::new(Core {
                holder: None,
                pending: PendingIrqs::new(config.nr_irqs),
                runqueue: VecDeque::new(),
                shutdown: false,
                #[cfg(test)]
                fault_stale_global_flag: None,
            }),
            cpu: H::Mutex::new(PerCpu {
                current: None,
                idle_irqs_enabled: true,
                hardirq: 0,
                in_softirq: false,
                softirq_pending: 0,
            }),
            irq_handlers: H::Mutex::new((0..n).map(|_| None).collect()),
            irq_registered: (0..n).map(|_| AtomicBool::new(false)).collect(),
            softirq_handlers: H::Mutex::new((0..NR_SOFTIRQS).map(|_| None).collect()),
            timers: H::Mutex::new(TimerList::new()),
            jiffies: AtomicU64::new(0),
            tls,
            stopping: AtomicBool::new(false),
            kthreads: H::Mutex::new(Vec::new()),
            live_kthreads: AtomicUsize::new(0),
            exit_sem: H::Sem::new(0),
            tick: H::Mutex::new(None),
            next_task_id: AtomicU64::new(1),
            stats: StatCounters::default(),
            host,
        });
        k.install_irq(
            TIMER_IRQ,
            Arc::new(|k: &Kctx<'_, H>, _| k.k.timer_interrupt()),
        )?;
        k.softirq_handlers.lock(|t| {
            t[TIMER_SOFTIRQ as usize] = Some(Arc::new(|k: &Kctx<'_, H>| k.k.run_timers()));
        });
        if config.tick {
            let weak = Arc::downgrade(&k);
            let timer = k.host.timer_create(Arc::new(move || {
                if let Some(k) = weak.upgrade() {
                    // Refused only after shutdown, when the tick is over.
                    let _ = k.trigger_irq(TIMER_IRQ);
                }
            }))?;
            timer.set_periodic(k.tick_ns);
            k.tick.lock(|t| *t = Some(timer));
        }
        Ok(k)
    }

    /// The host operations this kernel runs on.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The boot configuration.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Jiffies since boot. Readable from any thread.
    pub fn jiffies(&self) -> u64 {
        self.jiffies.load(Ordering::Acquire)
    }

    /// Converts milliseconds to jiffies, rounding up.
    pub fn msecs_to_jiffies(&self, ms: u64) -> u64 {
        (ms.saturating_mul(u64::from(self.config.hz))).div_ceil(1000)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let s = &self.stats;
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            irqs_handled: r(&s.irqs_handled),
            irqs_direct: r(&s.irqs_direct),
            irqs_pended: r(&s.irqs_pended),
            spurious: r(&s.spurious),
            softirqs_run: r(&s.softirqs_run),
            context_switches: r(&s.context_switches),
            handoffs_with_pending: r(&s.handoffs_with_pending),
        }
    }

    /// Whether the virtual CPU is free right now (a snapshot, for tests).
    pub fn cpu_is_free(&self) -> bool {
        self.core.lock(|c| c.holder.is_none())
    }

    /// Who holds the virtual CPU right now (a snapshot, for tests).
    pub fn cpu_holder(&self) -> CpuHolder {
        self.core.lock(|c| match &c.holder {
            None => CpuHolder::Free,
            Some(Holder::Task(t)) => CpuHolder::Task(t.id()),
            Some(Holder::Irq(_)) => CpuHolder::Irq,
        })
    }

    /// Number of IRQs pending right now (a snapshot, for tests).
    pub fn pending_irqs(&self) -> u64 {
        self.core.lock(|c| c.pending.len())
    }

    /// Whether the calling host thread holds the virtual CPU (is in kernel
    /// context).
    pub fn in_kernel_context(&self) -> bool {
        self.host.tls_get(self.tls) == TLS_HOLDER
    }

    /// Whether [`Kernel::shutdown`] has begun; kernel threads should end.
    pub fn should_stop(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    // ------------------------------------------------------------------
    // IRQ registration and delivery
    // ------------------------------------------------------------------

    fn install_irq(&self, irq: u32, h: IrqHandler<H>) -> Result<(), Error> {
        if irq >= self.config.nr_irqs {
            return Err(Error::InvalidIrq(irq));
        }
        let installed = self.irq_handlers.lock(|t| {
            let slot = &mut t[irq as usize];
            if slot.is_some() {
                false
            } else {
                *slot = Some(h);
                true
            }
        });
        if !installed {
            return Err(Error::IrqBusy(irq));
        }
        self.irq_registered[irq as usize].store(true, Ordering::Release);
        Ok(())
    }

    /// Registers the handler of line `irq` (1..nr_irqs; 0 is the timer).
    /// Callable from any thread.
    pub fn request_irq(
        &self,
        irq: u32,
        handler: impl Fn(&Kctx<'_, H>, u32) + Send + Sync + 'static,
    ) -> Result<(), Error> {
        if irq == TIMER_IRQ {
            return Err(Error::InvalidIrq(irq));
        }
        self.install_irq(irq, Arc::new(handler))
    }

    /// Removes the handler of `irq`. Triggers already pended for it are
    /// still consumed (counted as spurious), so none is left behind.
    pub fn free_irq(&self, irq: u32) -> Result<(), Error> {
        if irq == TIMER_IRQ || irq >= self.config.nr_irqs {
            return Err(Error::InvalidIrq(irq));
        }
        self.irq_registered[irq as usize].store(false, Ordering::Release);
        self.irq_handlers.lock(|t| t[irq as usize] = None);
        Ok(())
    }

    /// Registers softirq `nr` (1..NR_SOFTIRQS; 0 is the timer softirq).
    pub fn open_softirq(
        &self,
        nr: u32,
        handler: impl Fn(&Kctx<'_, H>) + Send + Sync + 'static,
    ) -> Result<(), Error> {
        if nr == TIMER_SOFTIRQ || nr >= NR_SOFTIRQS {
            return Err(Error::InvalidSoftirq(nr));
        }
        self.softirq_handlers
            .lock(|t| t[nr as usize] = Some(Arc::new(handler)));
        Ok(())
    }

    /// Posts interrupt `irq`. Callable from any host thread, including one
    /// in kernel context (a task, an IRQ or softirq handler).
    ///
    /// - From a host thread not in kernel context (Runtime invariant 2): if
    ///   the CPU is free, the thread takes it, runs the handler (and
    ///   everything pended meanwhile) and returns [`Delivery::Handled`];
    ///   otherwise the IRQ is pended for the holder, who runs it before it
    ///   releases the CPU. No task's flag is consulted.
    /// - From kernel context: runs the handler now if the running context
    ///   has IRQs enabled; otherwise pends it until the enabling restore
    ///   (Runtime invariant 3) or the end of the hard IRQ (invariant 4).
    ///
    /// Returns [`Error::ShutDown`] after [`Kernel::shutdown`]; a trigger that
    /// returned `Ok` is handled exactly once (invariant 6).
    pub fn trigger_irq(&self, irq: u32) -> Result<Delivery, Error> {
        if irq >= self.config.nr_irqs {
            return Err(Error::InvalidIrq(irq));
        }
        if !self.irq_registered[irq as usize].load(Ordering::Acquire) {
            return Err(Error::NoHandler(irq));
        }
        if self.in_kernel_context() {
            return self.trigger_local(irq);
        }
        // Runtime invariant 2: a host thread decides only on "is the CPU
        // free", under the core lock, never on any task's IRQ flag.
        let me = self.host.thread_self();
        let run_now = self.core.lock(|c| {
            if c.shutdown {
                return Err(Error::ShutDown);
            }
            #[cfg(test)]
            if c.holder.is_none() && c.fault_stale_global_flag == Some(false) {
                // The LKL bug, for the model checker to find: obey the flag
                // the last task left behind, and pend with nobody to drain.
                c.pending.push(irq);
                return Ok(false);
            }
            if c.holder.is_none() {
                c.holder = Some(Holder::Irq(me));
                Ok(true)
            } else {
                c.pending.push(irq);
                Ok(false)
            }
        })?;
        if !run_now {
            bump(&self.stats.irqs_pended);
            return Ok(Delivery::Pended);
        }
        bump(&self.stats.irqs_direct);
        self.host.tls_set(self.tls, TLS_HOLDER);
        // We borrowed a free CPU: the task-less context, IRQs enabled. The
        // guard gives it back (draining first) even if a handler panics.
        let _release = BorrowGuard { k: self };
        self.run_hardirq(irq);
        Ok(Delivery::Handled)
    }

    /// A trigger from the holder itself.
    fn trigger_local(&self, irq: u32) -> Result<Delivery, Error> {
        // Own context's flag only: the holder reads its own state.
        let can_run = self.cpu.lock(|c| c.irqs_enabled());
        let shutdown = self.core.lock(|c| {
            if c.shutdown {
                return true;
            }
            if !can_run {
                // Runtime invariant 3 (task with IRQs disabled) and
                // invariant 4 (inside a hard IRQ): pend for later.
                c.pending.push(irq);
            }
            false
        });
        if shutdown {
            return Err(Error::ShutDown);
        }
        if can_run {
            self.run_hardirq(irq);
            // Interrupt return: IRQs the handler pended (invariant 4) run now
            // that the context is back to IRQs enabled.
            self.handle_pending();
            Ok(Delivery::Handled)
        } else {
            bump(&self.stats.irqs_pended);
            Ok(Delivery::Pended)
        }
    }

    /// Runs one hard IRQ on the holder. Softirqs it raises run later, once
    /// no hard IRQ is pending (hard IRQs first, as their priority implies).
    fn run_hardirq(&self, irq: u32) {
        self.cpu.lock(|c| {
            // Runtime invariant 4: no handler runs while the running context
            // has IRQs disabled. Every caller has checked; this proves it.
            assert!(
                c.irqs_enabled(),
                "vigil-lkl: BUG: IRQ {irq} about to run in a context with IRQs disabled (Runtime invariant 4)"
            );
            c.hardirq += 1;
        });
        let h = self.irq_handlers.lock(|t| t[irq as usize].clone());
        match h {
            Some(h) => h(&Kctx::new(self), irq),
            None => bump(&self.stats.spurious),
        }
        bump(&self.stats.irqs_handled);
        self.cpu.lock(|c| c.hardirq -= 1);
    }

    /// Runs pending softirqs unless inside a hard IRQ or a softirq already.
    /// IRQs stay enabled, so a hard IRQ triggered by a softirq runs at once,
    /// nested. Returns whether anything ran.
    fn do_softirq(&self) -> bool {
        let mut ran = false;
        loop {
            let bits = self.cpu.lock(|c| {
                if c.in_softirq || c.hardirq != 0 {
                    return 0;
                }
                let p = c.softirq_pending;
                c.softirq_pending = 0;
                c.in_softirq = p != 0;
                p
            });
            if bits == 0 {
                return ran;
            }
            ran = true;
            for nr in 0..NR_SOFTIRQS {
                if bits & (1 << nr) != 0 {
                    let h = self.softirq_handlers.lock(|t| t[nr as usize].clone());
                    if let Some(h) = h {
                        bump(&self.stats.softirqs_run);
                        h(&Kctx::new(self));
                    }
                }
            }
            self.cpu.lock(|c| c.in_softirq = false);
        }
    }

    /// See [`Config::drain_batch`].
    fn drain_budget(&self) -> u64 {
        u64::from(self.config.drain_batch.max(1))
    }

    /// An IRQ check point of a holder whose context has IRQs enabled (an
    /// enabling restore, a task resuming, an interrupt return): every IRQ
    /// pending at entry, then softirqs.
    fn handle_pending(&self) {
        let budget = self.drain_budget();
        let mut drained = 0;
        loop {
            if drained < budget {
                if let Some(irq) = self.core.lock(|c| c.pending.pop()) {
                    drained += 1;
                    self.run_hardirq(irq);
                    continue;
                }
            }
            if !self.do_softirq() {
                return;
            }
        }
    }

    /// Gives up the CPU from the task-less context (borrowed IRQ, task
    /// exit, syscall exit): drain, then hand to the next task or free it.
    fn release_cpu(&self) {
        self.cpu.lock(|c| {
            debug_assert!(c.current.is_none() && c.hardirq == 0);
            c.idle_irqs_enabled = true;
        });
        if let Some(next) = self.drain_and_pick() {
            next.sem.up();
        }
    }

    /// The releasing half of every hand-over, on the holder in the
    /// task-less context: runs pending IRQs and softirqs, then makes the
    /// next runnable task the holder (returned; the caller wakes it) or
    /// frees the CPU (`None`).
    fn drain_and_pick(&self) -> Option<Arc<Task<H>>> {
        let budget = self.drain_budget();
        let mut drained = 0;
        loop {
            // Holder-only state: cannot change between here and the lock.
            let softirq = self.cpu.lock(|c| c.softirq_pending != 0);
            match self
                .core
                .lock(|c| self.next_step(c, drained >= budget, softirq))
            {
                Step::Irq(irq) => {
                    drained += 1;
                    self.run_hardirq(irq);
                }
                Step::Softirq => {
                    self.do_softirq();
                }
                Step::Handoff(t) => return Some(t),
                Step::Free => return None,
            }
        }
    }

    /// Under the core lock: the releasing holder's next move.
    ///
    /// Runtime invariant 2 (and 6): the holder runs the pending IRQs before
    /// it releases, and the CPU leaves it only in a critical section that
    /// decided so atomically with the pending check, so a trigger that comes
    /// later sees the new holder (or a free CPU). The CPU is never *freed*
    /// with an IRQ pending. Under a flood — more than [`Config::drain_batch`] IRQs
    /// pending, arriving faster than they run — once the holder has run a
    /// batch it may hand the CPU to a runnable task with IRQs still
    /// pending: that task resumes with IRQs enabled and runs a batch before
    /// its own code, so no IRQ is stuck and host threads cannot starve the
    /// tasks (draining "until empty" under a flood never ends).
    fn next_step(&self, c: &mut Core<H>, drained_enough: bool, softirq: bool) -> Step<H> {
        #[cfg(debug_assertions)]
        if let Some(Holder::Irq(owner)) = &c.holder {
            // Like lkl_cpu_put's owner check: only the holder releases.
            let me = self.host.thread_self();
            debug_assert!(
                self.host.thread_equal(*owner, me),
                "vigil-lkl: CPU released by a thread that does not hold it"
            );
        }
        if !c.pending.is_empty() && (!drained_enough || c.runqueue.is_empty()) {
            if let Some(irq) = c.pending.pop() {
                return Step::Irq(irq);
            }
        }
        if softirq {
            return Step::Softirq;
        }
        self.host.tls_set(self.tls, 0);
        let step = match c.runqueue.pop_front() {
            Some(t) => {
                if !c.pending.is_empty() {
                    bump(&self.stats.handoffs_with_pending);
                }
                t.set_state(TaskState::Running);
                t.set_on_cpu(true);
                c.holder = Some(Holder::Task(t.clone()));
                Step::Handoff(t)
            }
            None => {
                c.holder = None;
                Step::Free
            }
        };
        c.check();
        step
    }

    // ------------------------------------------------------------------
    // IRQ state of the running context
    // ------------------------------------------------------------------

    fn irq_save(&self) -> IrqFlags {
        self.cpu.lock(|c| {
            if c.hardirq > 0 {
                return IrqFlags(false);
            }
            match &c.current {
                // Runtime invariant 1: the running task's own flag.
                Some(t) => IrqFlags(t.ti.set_irqs_enabled(false)),
                None => IrqFlags(core::mem::replace(&mut c.idle_irqs_enabled, false)),
            }
        })
    }

    fn irq_restore(&self, flags: IrqFlags) {
        let enabling = self.cpu.lock(|c| {
            if c.hardirq > 0 {
                return false;
            }
            match &c.current {
                Some(t) => {
                    t.ti.set_irqs_enabled(flags.0);
                }
                None => c.idle_irqs_enabled = flags.0,
            }
            flags.0
        });
        if enabling {
            // Runtime invariant 3: what was pended while this context had
            // IRQs disabled runs at its enabling restore.
            self.handle_pending();
        }
    }

    // ------------------------------------------------------------------
    // Tasks and scheduling
    // ------------------------------------------------------------------

    fn new_task(&self, name: String, kind: TaskKind) -> Arc<Task<H>> {
        let id = self.next_task_id.fetch_add(1, Ordering::Relaxed);
        Arc::new(Task::new(id, name, kind))
    }

    /// Binds the calling host thread, which has just been handed the CPU, to
    /// task `t`.
    fn enter_task(&self, t: &Arc<Task<H>>) {
        self.host.tls_set(self.tls, TLS_HOLDER);
        self.cpu.lock(|c| {
            debug_assert!(c.current.is_none() && c.hardirq == 0 && !c.in_softirq);
            c.current = Some(t.clone());
        });
    }

    /// A task's exit path (normal end or unwinding): leave the CPU clean.
    fn task_exit(&self, t: &Arc<Task<H>>) {
        // A task that ends with IRQs disabled has already failed its
        // assertion; fix the state up so the CPU is handed on sanely.
        t.ti.set_irqs_enabled(true);
        self.cpu.lock(|c| {
            c.current = None;
            c.hardirq = 0;
            c.in_softirq = false;
        });
        self.core.lock(|_| {
            t.set_state(TaskState::Dead);
            t.set_on_cpu(false);
        });
        if t.kind() == TaskKind::KernelThread {
            self.kthreads.lock(|v| v.retain(|x| !Arc::ptr_eq(x, t)));
            self.live_kthreads.fetch_sub(1, Ordering::AcqRel);
            self.exit_sem.up();
        }
        self.release_cpu();
    }

    /// Starts a kernel thread running `f` in kernel context. Callable from
    /// any thread; the thread runs when the scheduler reaches it.
    pub fn kernel_thread(
        &self,
        name: &str,
        f: impl FnOnce(&Kctx<'_, H>) + Send + 'static,
    ) -> Result<KThread<H>, Error> {
        let k = self.me.upgrade().ok_or(Error::ShutDown)?;
        if self.core.lock(|c| c.shutdown) {
            return Err(Error::ShutDown);
        }
        let task = self.new_task(name.to_string(), TaskKind::KernelThread);
        let (k2, t2) = (k.clone(), task.clone());
        self.live_kthreads.fetch_add(1, Ordering::AcqRel);
        self.kthreads.lock(|v| v.push(task.clone()));
        let thread = match self
            .host
            .thread_create(name, Box::new(move || k2.kthread_main(&t2, f)))
        {
            Ok(t) => t,
            Err(e) => {
                self.kthreads.lock(|v| v.retain(|x| !Arc::ptr_eq(x, &task)));
                self.live_kthreads.fetch_sub(1, Ordering::AcqRel);
                return Err(e.into());
            }
        };
        if self.core.lock(|c| c.enqueue(&task)) {
            task.sem.up();
        }
        Ok(KThread {
            task,
            thread: Some(thread),
            kernel: k,
        })
    }

    fn kthread_main(&self, t: &Arc<Task<H>>, f: impl FnOnce(&Kctx<'_, H>)) {
        t.sem.down();
        self.enter_task(t);
        let _exit = ExitGuard { k: self, task: t };
        // A task starts with IRQs enabled: run what is pending first.
        self.handle_pending();
        f(&Kctx::new(self));
        assert!(
            t.ti.irqs_enabled(),
            "vigil-lkl: BUG: kernel thread '{}' returned with IRQs disabled",
            t.name()
        );
    }

    /// Runs `f` in kernel context on the calling host thread, as LKL's
    /// syscall entry does: the thread becomes a task for the duration, waits
    /// for the CPU, may sleep inside `f`, and gives the CPU back at the end.
    /// From kernel context it simply calls `f`.
    pub fn syscall<R>(&self, f: impl FnOnce(&Kctx<'_, H>) -> R) -> Result<R, Error> {
        if self.in_kernel_context() {
            return Ok(f(&Kctx::new(self)));
        }
        self.enter_kernel(f, true)
    }

    fn enter_kernel<R>(
        &self,
        f: impl FnOnce(&Kctx<'_, H>) -> R,
        refuse_after_shutdown: bool,
    ) -> Result<R, Error> {
        let task = self.new_task(String::new(), TaskKind::HostCall);
        let direct = self.core.lock(|c| {
            if refuse_after_shutdown && c.shutdown {
                return Err(Error::ShutDown);
            }
            Ok(c.enqueue(&task))
        })?;
        if !direct {
            task.sem.down();
        }
        self.enter_task(&task);
        let _exit = ExitGuard {
            k: self,
            task: &task,
        };
        self.handle_pending();
        let r = f(&Kctx::new(self));
        assert!(
            task.ti.irqs_enabled(),
            "vigil-lkl: BUG: syscall returned to the host with IRQs disabled"
        );
        Ok(r)
    }

    fn current_task(&self, what: &str) -> Arc<Task<H>> {
        match self.cpu.lock(|c| c.current.clone()) {
            Some(t) => t,
            None => panic!("vigil-lkl: BUG: {what} outside a task (IRQ or idle context)"),
        }
    }

    /// Runtime invariant 5: the check every sleeping or scheduling entry
    /// makes first, before touching any state, so that a failing assertion
    /// unwinds cleanly. Sleeping with IRQs disabled is forbidden, as in
    /// Linux; we make it loud instead of letting IRQs sit pending forever.
    fn might_sleep(&self, what: &str) {
        let (hardirq, softirq, task_irqs) = self.cpu.lock(|c| {
            (
                c.hardirq,
                c.in_softirq,
                c.current
                    .as_ref()
                    .map(|t| (t.name().to_string(), t.ti.irqs_enabled())),
            )
        });
        assert!(
            hardirq == 0,
            "vigil-lkl: BUG: {what} in hard IRQ context (Runtime invariant 5: handlers must not sleep)"
        );
        assert!(
            !softirq,
            "vigil-lkl: BUG: {what} in softirq context (Runtime invariant 5: softirqs must not sleep)"
        );
        match task_irqs {
            None => panic!("vigil-lkl: BUG: {what} outside a task (IRQ or idle context)"),
            Some((name, enabled)) => assert!(
                enabled,
                "vigil-lkl: BUG: scheduling while atomic: task '{name}' called {what} with IRQs disabled (Runtime invariant 5: sleeping with IRQs disabled is forbidden)"
            ),
        }
    }

    fn set_current_sleeping(&self) -> Arc<Task<H>> {
        let t = self.current_task("set_current_state");
        self.core.lock(|_| t.set_state(TaskState::Sleeping));
        t
    }

    fn set_current_running(&self, t: &Arc<Task<H>>) {
        self.core.lock(|_| t.set_state(TaskState::Running));
    }

    /// Wakes `t` if it sleeps. Returns whether it was asleep.
    fn wake_up_task(&self, t: &Arc<Task<H>>) -> bool {
        self.core.lock(|c| {
            if t.state() != TaskState::Sleeping {
                return false;
            }
            if t.on_cpu() {
                // Still between set_current_state and schedule: it will
                // see Running and not switch out.
                t.set_state(TaskState::Running);
            } else {
                // The CPU is held (by the waker), so this only queues.
                let direct = c.enqueue(t);
                debug_assert!(!direct);
            }
            true
        })
    }

    /// The scheduler: switch away from the current task if it sleeps, or
    /// yield to the next runnable task if it is running.
    fn schedule(&self) {
        self.might_sleep("schedule()");
        let t = self.current_task("schedule()");
        // Inside the scheduler the task's IRQs are off, as in Linux's
        // __schedule. Runtime invariant 1: this "disabled" stays in the
        // task's thread_info while it is switched out, and is harmless,
        // because nobody else reads it (invariant 2).
        let flags = self.irq_save();
        let switch = self.core.lock(|c| match t.state() {
            TaskState::Running => {
                if c.runqueue.is_empty() {
                    false
                } else {
                    t.set_state(TaskState::Runnable);
                    c.runqueue.push_back(t.clone());
                    t.set_on_cpu(false);
                    true
                }
            }
            TaskState::Sleeping => {
                t.set_on_cpu(false);
                true
            }
            s => unreachable!("vigil-lkl: current task in state {s:?}"),
        });
        if switch {
            self.switch_from(&t);
        }
        self.irq_restore(flags);
    }

    /// Switches the CPU away from `t` (already marked off-CPU) and returns
    /// when `t` holds it again.
    fn switch_from(&self, t: &Arc<Task<H>>) {
        // The CPU is now in the task-less context, IRQs enabled there:
        // pending IRQs are drained before the CPU leaves this host thread,
        // exactly as in release_cpu (and they may wake `t` right back up).
        self.cpu.lock(|c| {
            c.current = None;
            c.idle_irqs_enabled = true;
        });
        #[cfg(test)]
        self.core.lock(|c| {
            if c.fault_stale_global_flag.is_some() {
                c.fault_stale_global_flag = Some(t.ti.irqs_enabled());
            }
        });
        match self.drain_and_pick() {
            Some(next) if Arc::ptr_eq(&next, t) => {}
            Some(next) => {
                bump(&self.stats.context_switches);
                next.sem.up();
                t.sem.down();
            }
            None => t.sem.down(),
        }
        self.enter_task(t);
    }

    fn schedule_timeout(&self, ticks: u64) -> u64 {
        self.might_sleep("schedule_timeout()");
        if self.should_stop() {
            return 0;
        }
        let expires = self.jiffies().saturating_add(ticks);
        let t = self.set_current_sleeping();
        self.sleep_until(&t, expires);
        expires.saturating_sub(self.jiffies())
    }

    /// Sleeps the current task `t`, already marked asleep, until woken or
    /// until jiffy `expires`.
    pub(crate) fn sleep_until(&self, t: &Arc<Task<H>>, expires: u64) {
        let t2 = t.clone();
        let id = self.timers.lock(|l| {
            l.add(
                expires,
                Box::new(move |k: &Kctx<'_, H>| {
                    k.wake_up(&t2);
                }),
            )
        });
        if expires <= self.jiffies() {
            self.raise_softirq(TIMER_SOFTIRQ);
        }
        self.schedule();
        self.timers.lock(|l| l.del(id));
    }

    // ------------------------------------------------------------------
    // Time
    // ------------------------------------------------------------------

    /// The timer IRQ handler: jiffies from the host clock, as the tick code
    /// of a tickless kernel does, so a late tick catches up instead of
    /// losing time.
    fn timer_interrupt(&self) {
        let now = self.host.time_ns().saturating_sub(self.boot_ns) / self.tick_ns;
        let j = self.jiffies.fetch_max(now, Ordering::AcqRel).max(now);
        if self
            .timers
            .lock(|l| l.next_expiry())
            .is_some_and(|e| e <= j)
        {
            self.raise_softirq(TIMER_SOFTIRQ);
        }
    }

    fn run_timers(&self) {
        let now = self.jiffies();
        while let Some(cb) = self.timers.lock(|l| l.pop_expired(now)) {
            cb(&Kctx::new(self));
        }
    }

    fn raise_softirq(&self, nr: u32) {
        self.cpu.lock(|c| c.softirq_pending |= 1 << nr);
    }

    // ------------------------------------------------------------------
    // Shutdown
    // ------------------------------------------------------------------

    /// Stops the kernel, from a host thread not in kernel context:
    /// 1. [`Kernel::should_stop`] turns true and every sleeping kernel
    ///    thread is woken (interruptible sleeps return early);
    /// 2. waits up to `timeout_ns` for all kernel threads to end;
    /// 3. refuses further triggers and syscalls ([`Error::ShutDown`]), stops
    ///    the tick, and drains every IRQ accepted before that, so none is
    ///    lost (Runtime invariant 6).
    pub fn shutdown(&self, timeout_ns: u64) -> Result<Stats, Error> {
        if self.in_kernel_context() {
            return Err(Error::InKernelContext);
        }
        self.stopping.store(true, Ordering::Release);
        // Wake sleepers so they can see should_stop().
        self.enter_kernel(
            |k| {
                for t in k.k.kthreads.lock(|v| v.clone()) {
                    k.k.wake_up_task(&t);
                }
            },
            false,
        )?;
        let deadline = self.host.time_ns().saturating_add(timeout_ns);
        loop {
            let live = self.live_kthreads.load(Ordering::Acquire);
            if live == 0 {
                break;
            }
            let now = self.host.time_ns();
            if now >= deadline || !self.exit_sem.down_timeout(deadline - now) {
                let live = self.live_kthreads.load(Ordering::Acquire);
                if live == 0 {
                    break;
                }
                return Err(Error::ShutdownTimeout {
                    live_kernel_threads: live,
                });
            }
        }
        self.core.lock(|c| c.shutdown = true);
        if let Some(t) = self.tick.lock(|t| t.take()) {
            t.cancel();
            drop(t);
        }
        // Runtime invariant 6: whatever was accepted before the flag runs
        // now (the release at the end of this entry drains it).
        self.enter_kernel(|_| (), false)?;
        let left = self.pending_irqs();
        assert!(left == 0, "vigil-lkl: {left} IRQs left pending at shutdown");
        Ok(self.stats())
    }

    #[cfg(test)]
    pub(crate) fn inject_stale_global_flag_fault(&self) {
        self.core.lock(|c| c.fault_stale_global_flag = Some(true));
    }
}

impl<'a, H: Host> Kctx<'a, H> {
    /// The kernel this context belongs to.
    pub fn kernel(&self) -> &'a Kernel<H> {
        self.k
    }

    /// Jiffies since boot.
    pub fn jiffies(&self) -> u64 {
        self.k.jiffies()
    }

    /// Disables IRQs for the running context and returns the previous
    /// state. In a task this writes the task's own `thread_info` (Runtime
    /// invariant 1). Inside a hard IRQ it is a no-op returning "disabled".
    pub fn irq_save(&self) -> IrqFlags {
        self.k.irq_save()
    }

    /// Restores a state saved by [`Kctx::irq_save`]. Restoring "enabled"
    /// runs every IRQ pended meanwhile, before returning (Runtime
    /// invariant 3).
    pub fn irq_restore(&self, flags: IrqFlags) {
        self.k.irq_restore(flags)
    }

    /// `local_irq_disable`.
    pub fn irq_disable(&self) {
        let _ = self.k.irq_save();
    }

    /// `local_irq_enable`: enables and runs what is pending.
    pub fn irq_enable(&self) {
        self.k.irq_restore(IrqFlags(true))
    }

    /// Whether the running context has IRQs disabled (always true in a hard
    /// IRQ handler).
    pub fn irqs_disabled(&self) -> bool {
        !self.k.cpu.lock(|c| c.irqs_enabled())
    }

    /// Whether this is hard IRQ context.
    pub fn in_irq(&self) -> bool {
        self.k.cpu.lock(|c| c.hardirq > 0)
    }

    /// Whether this is softirq context.
    pub fn in_softirq(&self) -> bool {
        self.k.cpu.lock(|c| c.in_softirq)
    }

    /// The running task, if any (none in a borrowed IRQ context).
    pub fn current(&self) -> Option<Arc<Task<H>>> {
        self.k.cpu.lock(|c| c.current.clone())
    }

    /// [`Kernel::trigger_irq`] from kernel context.
    pub fn trigger_irq(&self, irq: u32) -> Result<Delivery, Error> {
        self.k.trigger_irq(irq)
    }

    /// Marks softirq `nr` pending. It runs at the end of the outermost hard
    /// IRQ, or at the running context's next IRQ check point (enabling
    /// restore, schedule, CPU release).
    pub fn raise_softirq(&self, nr: u32) -> Result<(), Error> {
        if nr >= NR_SOFTIRQS {
            return Err(Error::InvalidSoftirq(nr));
        }
        self.k.raise_softirq(nr);
        Ok(())
    }

    /// Yields the CPU to the next runnable task, if any.
    ///
    /// # Panics
    /// With IRQs disabled or outside a task (Runtime invariant 5).
    pub fn yield_now(&self) {
        self.k.schedule()
    }

    /// Marks the current task asleep; the next [`Kctx::schedule`] switches
    /// away unless a wakeup came in between.
    pub fn set_current_sleeping(&self) -> Arc<Task<H>> {
        self.k.set_current_sleeping()
    }

    /// Marks the current task running again (after a wait that did not
    /// need to sleep).
    pub fn set_current_running(&self) {
        let t = self.k.current_task("set_current_running");
        self.k.set_current_running(&t)
    }

    /// Runs the scheduler: sleeps if the current task is marked asleep,
    /// otherwise yields.
    ///
    /// # Panics
    /// With IRQs disabled, in IRQ or softirq context, or outside a task
    /// (Runtime invariant 5).
    pub fn schedule(&self) {
        self.k.schedule()
    }

    /// Sleeps for up to `ticks` jiffies; returns the jiffies left if woken
    /// early (by a wakeup or [`Kernel::shutdown`]).
    ///
    /// # Panics
    /// As [`Kctx::schedule`].
    pub fn schedule_timeout(&self, ticks: u64) -> u64 {
        self.k.schedule_timeout(ticks)
    }

    /// Sleeps at least `ms` milliseconds (unless shutdown interrupts it).
    ///
    /// # Panics
    /// As [`Kctx::schedule`].
    pub fn msleep(&self, ms: u64) {
        let mut left = self.k.msecs_to_jiffies(ms).max(1);
        while left > 0 && !self.k.should_stop() {
            left = self.k.schedule_timeout(left);
        }
    }

    /// Wakes `t` if it sleeps; returns whether it did.
    pub fn wake_up(&self, t: &Arc<Task<H>>) -> bool {
        self.k.wake_up_task(t)
    }

    /// Starts a kernel thread (see [`Kernel::kernel_thread`]).
    pub fn kernel_thread(
        &self,
        name: &str,
        f: impl FnOnce(&Kctx<'_, H>) + Send + 'static,
    ) -> Result<KThread<H>, Error> {
        self.k.kernel_thread(name, f)
    }

    /// Whether shutdown has begun.
    pub fn should_stop(&self) -> bool {
        self.k.should_stop()
    }

    /// Arms a kernel timer firing at jiffy `expires`, in the timer softirq.
    pub fn add_timer(&self, expires: u64, f: TimerCallback<H>) -> TimerId {
        let id = self.k.timers.lock(|l| l.add(expires, f));
        if expires <= self.k.jiffies() {
            self.k.raise_softirq(TIMER_SOFTIRQ);
        }
        id
    }

    /// Disarms a timer; `false` if it already fired.
    pub fn del_timer(&self, id: TimerId) -> bool {
        self.k.timers.lock(|l| l.del(id))
    }

    /// Panics unless the running context may sleep (Runtime invariant 5).
    /// Every sleeping primitive calls it first.
    pub fn might_sleep(&self, what: &str) {
        self.k.might_sleep(what)
    }
}
