//! Tasks and their `thread_info`.
//!
//! A task is anything the scheduler can run on the virtual CPU: a kernel
//! thread, or a host thread that entered the kernel through
//! [`crate::Kernel::syscall`]. Each task runs on its own host thread and
//! parks on its own semaphore while another task has the CPU.

use crate::host::{Host, HostSem};
use alloc::string::String;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Per-task state that travels with the task across context switches.
///
/// Runtime invariant 1: the IRQ-enable flag lives here, one per task, and
/// not in a global. A task switched out inside `schedule()` keeps its flag
/// "disabled" (the scheduler runs with IRQs off, as in Linux), and that is
/// harmless: nobody but the task itself ever reads it (invariant 2).
#[derive(Debug)]
pub struct ThreadInfo {
    /// Written only by the task's own host thread while it holds the CPU;
    /// an atomic only because Rust needs `Sync` for the shared `Task`.
    irqs_enabled: AtomicBool,
}

impl ThreadInfo {
    fn new() -> Self {
        ThreadInfo {
            irqs_enabled: AtomicBool::new(true),
        }
    }
    pub(crate) fn irqs_enabled(&self) -> bool {
        self.irqs_enabled.load(Ordering::Relaxed)
    }
    /// Sets the flag, returning the previous value.
    pub(crate) fn set_irqs_enabled(&self, on: bool) -> bool {
        self.irqs_enabled.swap(on, Ordering::Relaxed)
    }
}

/// Scheduling state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Holds (or is being handed) the virtual CPU.
    Running,
    /// On the run queue.
    Runnable,
    /// Asleep until woken; not on the run queue.
    Sleeping,
    /// Finished.
    Dead,
}

impl TaskState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => TaskState::Running,
            1 => TaskState::Runnable,
            2 => TaskState::Sleeping,
            _ => TaskState::Dead,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            TaskState::Running => 0,
            TaskState::Runnable => 1,
            TaskState::Sleeping => 2,
            TaskState::Dead => 3,
        }
    }
}

/// What kind of host thread runs a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Created by [`crate::Kernel::kernel_thread`].
    KernelThread,
    /// A host thread inside [`crate::Kernel::syscall`].
    HostCall,
}

/// A schedulable task. Shared as `Arc<Task<H>>` by the run queue, wait
/// queues and timers; see [`crate::Kctx::wake_up`].
pub struct Task<H: Host> {
    id: u64,
    name: String,
    kind: TaskKind,
    pub(crate) ti: ThreadInfo,
    /// A `TaskState`; written only under the kernel's core lock.
    state: AtomicU8,
    /// Whether the task is executing (not parked on `sem`); written only
    /// under the core lock. A wakeup of a task that is still on the CPU
    /// (between `set_current_state` and `schedule`) must not queue it.
    on_cpu: AtomicBool,
    /// The task's host thread parks here while it does not hold the CPU.
    pub(crate) sem: H::Sem,
}

impl<H: Host> fmt::Debug for Task<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("state", &self.state())
            .field("irqs_enabled", &self.ti.irqs_enabled())
            .finish()
    }
}

impl<H: Host> Task<H> {
    pub(crate) fn new(id: u64, name: String, kind: TaskKind) -> Self {
        Task {
            id,
            name,
            kind,
            ti: ThreadInfo::new(),
            state: AtomicU8::new(TaskState::Runnable.as_u8()),
            on_cpu: AtomicBool::new(false),
            sem: H::Sem::new(0),
        }
    }
    /// Kernel-wide unique id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Name given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Kernel thread or host call.
    pub fn kind(&self) -> TaskKind {
        self.kind
    }
    /// Current scheduling state (a snapshot).
    pub fn state(&self) -> TaskState {
        TaskState::from_u8(self.state.load(Ordering::Acquire))
    }
    /// A snapshot of the task's IRQ-enable flag, for tests and diagnostics
    /// only. The runtime itself never reads another task's flag (Runtime
    /// invariant 2).
    pub fn irqs_enabled_snapshot(&self) -> bool {
        self.ti.irqs_enabled()
    }
    pub(crate) fn set_state(&self, s: TaskState) {
        self.state.store(s.as_u8(), Ordering::Release);
    }
    pub(crate) fn on_cpu(&self) -> bool {
        self.on_cpu.load(Ordering::Acquire)
    }
    pub(crate) fn set_on_cpu(&self, on: bool) {
        self.on_cpu.store(on, Ordering::Release);
    }
}
