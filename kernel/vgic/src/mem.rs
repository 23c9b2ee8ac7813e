//! Access to a VM's memory, implemented by the kernel (real stage-2 backed
//! RAM) and by tests (a fake).

pub use vigil_guestmem::Window as RamWindow;

/// Why a guest-memory access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// The range is not (entirely) RAM of this VM.
    OutOfRam,
}

/// A VM's guest-physical memory as seen by the emulated GIC.
///
/// The emulation never accesses an address for which [`GuestMemory::is_ram`]
/// returned `false`: table bases that point outside the VM's RAM are rejected
/// before any read (DESIGN "Bad input from a guest").
pub trait GuestMemory {
    /// Whether `[gpa, gpa + len)` lies entirely inside this VM's RAM.
    fn is_ram(&self, gpa: u64, len: u64) -> bool;

    /// Read `buf.len()` bytes at `gpa`. Implementations must fail (not
    /// panic) on any byte outside the VM's RAM.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;

    /// Read a little-endian u64 at `gpa`.
    fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Read `out.len()` little-endian u64s at `gpa` (an ITS command's four
    /// doublewords). Implementations may read them whole, without the byte
    /// copy of [`GuestMemory::read`].
    fn read_u64s(&self, gpa: u64, out: &mut [u64]) -> Result<(), MemError> {
        for (k, w) in out.iter_mut().enumerate() {
            *w = self.read_u64(gpa + 8 * k as u64)?;
        }
        Ok(())
    }

    /// Read one byte at `gpa`.
    fn read_u8(&self, gpa: u64) -> Result<u8, MemError> {
        let mut b = [0u8; 1];
        self.read(gpa, &mut b)?;
        Ok(b[0])
    }

    /// `[gpa, gpa + len)` as a [`RamWindow`] (one translation for many
    /// reads: the vITS's command queue), if all of it is RAM that stays
    /// mapped while `self` is borrowed. None (also the default): the caller
    /// reads it through the methods above, which fail where it is not RAM.
    fn window(&self, _gpa: u64, _len: u64) -> Option<RamWindow<'_>> {
        None
    }
}

/// A guest memory with no RAM at all (every access fails); useful for MMIO
/// accesses that cannot touch memory.
pub struct NoMemory;

impl GuestMemory for NoMemory {
    fn is_ram(&self, _gpa: u64, _len: u64) -> bool {
        false
    }
    fn read(&self, _gpa: u64, _buf: &mut [u8]) -> Result<(), MemError> {
        Err(MemError::OutOfRam)
    }
}
