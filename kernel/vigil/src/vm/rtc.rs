//! Each VM's real-time clock: the PL031 model of `vigil_vm::pl031` on the
//! VM's bus, counting from the host's PL031 (QEMU's, which follows the
//! host's clock), which Vigil owns and no VM sees.

use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;
use vigil_vgic::Kick;
use vigil_vm::pl031::Pl031;

use crate::bus::{MmioCtx, MmioDevice};

/// The host PL031's registers (0: none; the VMs' clocks then start at 0).
static HOST: AtomicU64 = AtomicU64::new(0);

/// Use the host's PL031 at `base` (mapped as device memory).
pub fn set_host(base: u64) {
    HOST.store(base, Ordering::Relaxed);
}

fn host_secs() -> u32 {
    match HOST.load(Ordering::Relaxed) {
        0 => (crate::arch::counter() / crate::arch::counter_freq().max(1)) as u32,
        // SAFETY: the host PL031's data register, from the device tree,
        // in the hypervisor's device mapping; reading it has no effect.
        base => unsafe { core::ptr::read_volatile(base as *const u32) },
    }
}

pub struct Rtc(Mutex<Pl031>);

impl Rtc {
    pub const fn new() -> Self {
        Self(Mutex::new(Pl031::new()))
    }
}

impl MmioDevice for Rtc {
    fn read(&self, _ctx: &MmioCtx<'_>, offset: u64, width: u8) -> u64 {
        if width != 4 {
            return 0;
        }
        u64::from(self.0.lock().read(offset, host_secs()))
    }

    fn write(&self, _ctx: &MmioCtx<'_>, offset: u64, width: u8, value: u64) -> Kick {
        if width == 4 {
            self.0.lock().write(offset, value as u32, host_secs());
        }
        Kick::default()
    }
}
