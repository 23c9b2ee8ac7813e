//! A handle on a device's memory-mapped register block that can live in
//! statics (the physical GIC and ITS). Not to be confused with `bus`, the
//! emulated devices a guest's MMIO traps reach.

use core::marker::PhantomData;
use core::ops::Deref;

/// A register block of type `T` (a tock-registers struct) at a fixed
/// device address.
pub struct RegBlock<T> {
    addr: usize,
    _regs: PhantomData<*const T>,
}

impl<T> RegBlock<T> {
    /// # Safety
    /// `addr` must be the base of a `T` register block, mapped as device
    /// memory for as long as the handle is used.
    pub const unsafe fn new(addr: u64) -> Self {
        Self {
            addr: addr as usize,
            _regs: PhantomData,
        }
    }
}

impl<T> Deref for RegBlock<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `new`'s contract: a mapped `T` block lives at `addr`.
        unsafe { &*(self.addr as *const T) }
    }
}

// SAFETY: the block is device memory accessed only through volatile
// register accessors; the device serialises concurrent accesses, and
// drivers lock where an access sequence must be atomic.
unsafe impl<T> Sync for RegBlock<T> {}
// SAFETY: as above; the handle is just an address.
unsafe impl<T> Send for RegBlock<T> {}
