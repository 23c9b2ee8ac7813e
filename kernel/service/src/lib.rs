//! The service program of Vigil's driver domain.
//!
//! It runs in the userspace of a service VM (Debian's unmodified Linux)
//! and serves a virtio-blk device to a client VM through Vigil's channel
//! function (`vigil_virtio::channel`), which that Linux drives with
//! `uio_pci_generic`: BAR 0 holds the channel registers, BAR 2 is the
//! client's RAM, INTx says "something happened".
//!
//! # Shape
//!
//! The device logic runs as interrupt handlers on the LKL-style runtime
//! (`vigil_lkl`), fed by host threads — the case the runtime was built to
//! make safe (Runtime invariant 2: a host thread's trigger never reads a
//! task's IRQ flag, so no interrupt is parked forever):
//!
//! - the *doorbell* host thread blocks in `read(/dev/uioN)` and triggers
//!   [`CHANNEL_IRQ`] on each wake;
//! - the *I/O* host thread does `pread`/`pwrite`/`fdatasync` on the disk
//!   and triggers [`IO_IRQ`] after each completion;
//! - the [`CHANNEL_IRQ`] handler reads what the client did (EVENTS, status,
//!   NOTIFY), unmasks INTx, pops and parses chains and submits them;
//! - the [`IO_IRQ`] handler writes completions into the client's rings and
//!   signals CONTROL.USED.
//!
//! Handlers never block: the I/O is on the host thread, the log goes
//! through a queue to its own thread ([`Log`]).
//!
//! The hardware is behind a seam ([`Channel`] for BAR 0, the INTx mask and
//! the wait; a `GuestRam` for BAR 2), so everything but [`linux`] is tested
//! on the host against a fake channel and a hostile fake client.
#![deny(unsafe_code)]

/// `say!(log, "...", args)`: one log line, without blocking.
macro_rules! say {
    ($log:expr, $($arg:tt)*) => {
        $log.line(format_args!($($arg)*))
    };
}

pub mod disk;
pub mod linux;
mod log;
mod service;

pub use disk::{Disk, Storage};
pub use log::Log;
pub use service::{
    disk_id, Channel, Exit, Options, Service, Stats, Stopped, CHANNEL_IRQ, IO_IRQ, QUEUE_NUM_MAX,
};
