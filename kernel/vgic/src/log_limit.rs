//! Rate limiting for warnings a guest can cause at will (bad register
//! accesses, ignored ITS commands, unknown system registers): per VM, the
//! first 64 are logged, then only the 128th, 256th, 512th... A guest
//! looping on bad accesses must not flood the console every VM and the
//! hypervisor share, nor use up another VM's allowance.
//!
//! The warning is charged to the VM whose trap is being handled: the
//! kernel names it through [`set_context`]. Without one (host tests, or a
//! path outside any trap) a shared allowance is used.

use core::sync::atomic::{AtomicU64, Ordering};

/// One VM's allowance of guest-caused warnings.
pub struct LogLimit {
    seen: AtomicU64,
}

impl LogLimit {
    pub const fn new() -> Self {
        Self {
            seen: AtomicU64::new(0),
        }
    }

    /// Whether the next warning is logged.
    pub fn allow(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        n <= 64 || n.is_power_of_two()
    }

    /// Warnings so far, logged or not.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// The VM a warning is charged to: its name and allowance.
pub type Context = (&'static str, &'static LogLimit);

static SHARED: LogLimit = LogLimit::new();
static CONTEXT: spin::Once<fn() -> Option<Context>> = spin::Once::new();

/// Install the function that names the VM whose trap runs on this CPU
/// (first caller wins).
pub fn set_context(f: fn() -> Option<Context>) {
    CONTEXT.call_once(|| f);
}

fn context() -> Option<Context> {
    CONTEXT.get().and_then(|f| f())
}

/// Whether this guest-caused warning is logged; if so, the name of the VM
/// it is charged to ("" when none is known).
pub fn allow() -> Option<&'static str> {
    match context() {
        Some((name, limit)) => limit.allow().then_some(name),
        None => SHARED.allow().then_some(""),
    }
}

/// Guest-caused warnings charged to no VM so far (logged or not).
pub fn seen() -> u64 {
    SHARED.seen()
}

/// Log a warning caused by guest behaviour, rate-limited per VM and
/// prefixed with its name (see [`log_limit`](crate::log_limit)).
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)*) => {
        if let Some(vm) = $crate::log_limit::allow() {
            if vm.is_empty() {
                $crate::__log::warn!($($arg)*);
            } else {
                $crate::__log::warn!("vm {}: {}", vm, format_args!($($arg)*));
            }
        }
    };
}
