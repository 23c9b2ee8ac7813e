//! An LKL-style runtime: a kernel-as-a-library whose IRQ model is safe for
//! host threads.
//!
//! # What it is
//!
//! Like LKL (the Linux Kernel Library), this runs a small kernel inside a
//! host: kernel threads are host threads that take turns on **one virtual
//! CPU**, and host threads — a USB library's event thread, a timer callback —
//! post interrupts into it with [`Kernel::trigger_irq`]. Host threads enter
//! the kernel to run code in kernel context with [`Kernel::syscall`]. On the
//! host it runs on real OS threads ([`StdHost`], feature `std`); later it will
//! run inside a Vigil guest on a paravirtual [`Host`].
//!
//! # The problem it solves
//!
//! LKL keeps a single, global "interrupts enabled" flag. A host thread that
//! posts an IRQ reads whatever the *last* kernel thread left there. Kernel
//! threads are switched out inside `schedule()`, where interrupts are off,
//! so that value is often "disabled": the IRQ is parked as pending, and if
//! no kernel code runs afterwards to enable interrupts again, nothing ever
//! drains it. With a real USB Wi-Fi driver run in-process this hung the
//! kernel: the timer IRQ was parked too, so time stopped advancing and every
//! sleeping kernel thread froze.
//!
//! The fix proposed upstream moved the flag into each thread's
//! `thread_info` and made host-thread triggers deliver regardless of the
//! stale flag. The maintainers objected that sleeping with interrupts
//! disabled is not permitted in Linux — so a design that *relies* on a task
//! sleeping with IRQs off, or silently tolerates it, is wrong too. This
//! crate is right on both counts:
//!
//! - the flag is per task (Runtime invariant 1) and a host thread never reads
//!   anyone's flag (invariant 2): it only asks "is the CPU free?", and if
//!   not, pends the IRQ *for the holder*, who must drain it before releasing
//!   the CPU;
//! - sleeping or scheduling with IRQs disabled is a detected bug, an
//!   assertion with a clear message (invariant 5), never a silent hang.
//!
//! # The runtime invariants (DESIGN.md, "The LKL-style runtime")
//!
//! Each is named in the code where it is enforced ("Runtime invariant N").
//! 1. The IRQ-enable flag belongs to each task's [`ThreadInfo`] and travels
//!    with it across context switches.
//! 2. A host thread never reads another thread's flag. Its trigger runs the
//!    handler now when the CPU is free; when the CPU is held, the IRQ is
//!    pended and runs before the holder releases the CPU. One refinement,
//!    for floods: a release runs at most [`Config::drain_batch`] (256) IRQs
//!    before it may hand the CPU to a *runnable task* with IRQs still
//!    pending; that task is then the holder and runs them as it resumes
//!    (with IRQs enabled, before its own code). Without it, host threads
//!    posting faster than handlers run would keep the holder draining
//!    forever and starve every task, shutdown included. The CPU is never
//!    *freed* with an IRQ pending.
//! 3. A kernel thread that triggers with IRQs disabled pends; the IRQ runs
//!    at its enabling restore.
//! 4. No handler runs while the running context has IRQs disabled; a
//!    trigger from inside a hard IRQ pends.
//! 5. Sleeping or scheduling with IRQs disabled panics with a clear message.
//! 6. No trigger is lost: each is handled exactly once (pending IRQs are
//!    counted, not flagged, and served round-robin across lines so a flood
//!    on one line cannot starve the timer), jiffies keep advancing, and
//!    after [`Kernel::shutdown`] triggers return [`Error::ShutDown`] while
//!    every trigger accepted before it is still handled.
//!
//! # Semantics worth knowing
//!
//! - Scheduling is cooperative on one virtual CPU: a task runs until it
//!   sleeps, yields or ends. Pending IRQs run at *check points* of the
//!   holder (enabling restore, resume, syscall entry, interrupt return,
//!   release), never in the middle of kernel code.
//! - Inside `schedule()` a task's IRQs are off (as in Linux), so a task
//!   switched out carries "disabled" in its `thread_info` — the exact state
//!   that used to strand host-thread IRQs. Here it is inert: while a task
//!   is switched out the CPU runs in a task-less context with its own flag.
//! - Hard IRQs run with IRQs off and never nest; a trigger inside one pends
//!   and runs right after it. Pending hard IRQs run before softirqs;
//!   softirqs run with IRQs on, so a hard IRQ they trigger runs at once.
//! - A panic in a kernel thread (such as the invariant-5 assertion) ends
//!   that thread only: its exit path releases the CPU, and
//!   [`KThread::join`] returns the message. On bare metal, with
//!   `panic = "abort"`, it stops the system instead, which is what a kernel
//!   BUG() should do.
//!
//! # Map
//!
//! - [`host`]: the host-operations trait ([`Host`]) and [`StdHost`].
//! - [`Kernel`]: boot, the virtual CPU protocol, IRQs and softirqs, kernel
//!   threads, syscalls, shutdown. [`Kctx`] is the proof of kernel context
//!   that kernel-only operations take (irq_save/restore, sleeping, waking,
//!   timers).
//! - [`Completion`], [`WaitQueue`]: sleeping and waking.
//! - Time: jiffies advance in the [`TIMER_IRQ`] handler, posted by a
//!   periodic host timer through the ordinary trigger path; kernel timers
//!   run in [`TIMER_SOFTIRQ`].
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "std")] {
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use vigil_lkl::{Config, CpuHolder, Delivery, Kernel, StdHost};
//!
//! let kernel = Kernel::boot(StdHost, Config::default()).unwrap();
//! let hits = Arc::new(AtomicU64::new(0));
//! let h = hits.clone();
//! kernel.request_irq(5, move |_k, _irq| { h.fetch_add(1, Ordering::Relaxed); }).unwrap();
//! // The CPU is free (or held by the tick): handled now, or pended for the holder.
//! let d = kernel.trigger_irq(5).unwrap();
//! assert!(matches!(d, Delivery::Handled | Delivery::Pended));
//! kernel.shutdown(1_000_000_000).unwrap();
//! assert_eq!(hits.load(Ordering::Relaxed), 1);
//! # }
//! ```

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod host;
mod irq;
mod kernel;
#[cfg(feature = "std")]
mod std_host;
mod task;
mod time;
mod wait;

#[cfg(test)]
mod model_check;

pub use host::{Host, HostError, HostMutex, HostSem, HostTimer, JoinError};
pub use kernel::{
    Config, CpuHolder, Delivery, Error, IrqFlags, IrqHandler, KThread, Kctx, Kernel,
    SoftirqHandler, Stats, NR_SOFTIRQS, TIMER_IRQ, TIMER_SOFTIRQ,
};
#[cfg(feature = "std")]
pub use std_host::{StdHost, StdMutex, StdSem, StdTimer};
pub use task::{Task, TaskKind, TaskState, ThreadInfo};
pub use time::{TimerCallback, TimerId};
pub use wait::{Completion, WaitQueue};
