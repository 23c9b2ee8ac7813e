//! Rate limiting for warnings a guest can cause at will (bad register
//! accesses, ignored ITS commands): the first 64 are logged, then only the
//! 128th, 256th, 512th... A guest looping on bad accesses must not flood
//! the console every VM and the hypervisor share.

use core::sync::atomic::{AtomicU64, Ordering};

static SEEN: AtomicU64 = AtomicU64::new(0);

/// Whether this guest-caused warning is logged.
pub fn allow() -> bool {
    let n = SEEN.fetch_add(1, Ordering::Relaxed) + 1;
    n <= 64 || n.is_power_of_two()
}

/// Guest-caused warnings so far (logged or not).
pub fn seen() -> u64 {
    SEEN.load(Ordering::Relaxed)
}

/// Log a warning caused by guest behaviour, rate-limited (see
/// [`log_limit`](crate::log_limit)).
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)*) => {
        if $crate::log_limit::allow() {
            $crate::__log::warn!($($arg)*);
        }
    };
}
