//! The channel function as Linux's `uio_pci_generic` shows it to
//! userspace: the PCI device's sysfs directory (BARs as mmappable
//! `resourceN` files, the configuration space as `config`) and its
//! `/dev/uioN`, whose blocking read returns once per interrupt.
#![allow(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use vigil_virtio::channel::{self, CMD_INTX_DISABLE, REGS_SIZE};
use vigil_virtio::{GuestRam, OutOfRange};

use crate::service::Channel;

/// The channel function, found in sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// `/sys/bus/pci/devices/<address>`.
    pub dir: PathBuf,
    /// `/dev/uioN`.
    pub uio: PathBuf,
}

/// A sysfs ID file: "0x1b36\n".
fn read_id(path: &Path) -> Option<u16> {
    let s = fs::read_to_string(path).ok()?;
    u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// The `nth` PCI device (in address order) under `root`
/// (`/sys/bus/pci/devices`) with the channel's vendor and device IDs — a
/// service VM has one channel per client — and its uio node (the single
/// entry of `<dev>/uio/`, there once uio_pci_generic is bound).
pub fn find_channel(root: &Path, nth: usize) -> io::Result<Found> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    dirs.sort();
    let dir = dirs
        .into_iter()
        .filter(|d| {
            read_id(&d.join("vendor")) == Some(channel::VENDOR_ID)
                && read_id(&d.join("device")) == Some(channel::DEVICE_ID)
        })
        .nth(nth)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no PCI device {:04x}:{:04x} number {nth} under {}",
                    channel::VENDOR_ID,
                    channel::DEVICE_ID,
                    root.display()
                ),
            )
        })?;
    let not_bound = || {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: not bound to uio_pci_generic", dir.display()),
        )
    };
    let names: Vec<_> = fs::read_dir(dir.join("uio"))
        .map_err(|_| not_bound())?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    let [name] = names.as_slice() else {
        return Err(not_bound());
    };
    let uio = Path::new("/dev").join(name);
    Ok(Found { dir, uio })
}

/// A shared mapping of a sysfs resource file (or any file).
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory (device registers or another
// VM's RAM); every access goes through bounds-checked volatile reads and
// writes or copies, none of which relies on exclusive access.
unsafe impl Send for Mapping {}
// SAFETY: as for Send.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// mmap(MAP_SHARED) of the first `len` bytes of `file`.
    fn new(file: &File, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL), so it
        // aliases nothing of ours; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Mapping { ptr, len })
    }

    /// The aligned word at `off`; all ones outside the mapping.
    fn read32(&self, off: u64) -> u32 {
        match self.word(off) {
            // SAFETY: in the mapping and 4-aligned (`word`); volatile, as
            // device registers need (one 32-bit load, never merged).
            Some(p) => u32::from_le(unsafe { p.read_volatile() }),
            None => u32::MAX,
        }
    }

    fn write32(&self, off: u64, v: u32) {
        if let Some(p) = self.word(off) {
            // SAFETY: as `read32`.
            unsafe { p.write_volatile(v.to_le()) }
        }
    }

    fn word(&self, off: u64) -> Option<*mut u32> {
        let off = usize::try_from(off).ok()?;
        if !off.is_multiple_of(4) || off.checked_add(4)? > self.len {
            return None;
        }
        // SAFETY: `off + 4 <= len`: inside the mapping. The mapping is
        // page-aligned, so the word is 4-aligned.
        Some(unsafe { self.ptr.as_ptr().add(off) }.cast::<u32>())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, of this length, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// An error naming the file it is about.
fn ctx(p: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

/// BAR 0 (`resource0`), the configuration space (`config`, for the INTx
/// mask) and the uio node (for the wait).
#[derive(Debug)]
pub struct UioChannel {
    bar0: Mapping,
    config: File,
    uio: File,
}

impl UioChannel {
    pub fn open(found: &Found) -> io::Result<Self> {
        Self::open_paths(
            &found.dir.join("resource0"),
            &found.dir.join("config"),
            &found.uio,
        )
    }

    /// From explicit paths (tests use plain files).
    pub fn open_paths(resource0: &Path, config: &Path, uio: &Path) -> io::Result<Self> {
        let bar0 = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open(resource0)
            .map_err(ctx(resource0))?;
        let len = bar0.metadata().map_err(ctx(resource0))?.len();
        if len < REGS_SIZE {
            return Err(io::Error::other(format!(
                "{}: {len} bytes, BAR 0 is {REGS_SIZE}",
                resource0.display()
            )));
        }
        let bar0 = Mapping::new(&bar0, REGS_SIZE as usize).map_err(ctx(resource0))?;
        let config = OpenOptions::new()
            .read(true)
            .write(true)
            .open(config)
            .map_err(ctx(config))?;
        let uio = File::open(uio).map_err(ctx(uio))?;
        Ok(UioChannel { bar0, config, uio })
    }
}

impl Channel for UioChannel {
    fn read(&self, reg: u64) -> u32 {
        self.bar0.read32(reg)
    }

    fn write(&self, reg: u64, value: u32) {
        self.bar0.write32(reg, value)
    }

    /// uio_pci_generic's handler masked the function with the command
    /// register's Interrupt Disable (bit 10); clear it the same way.
    fn unmask(&self) -> io::Result<()> {
        let mut b = [0u8; 2];
        self.config.read_exact_at(&mut b, 4)?;
        let cmd = u16::from_le_bytes(b) & !CMD_INTX_DISABLE;
        self.config.write_all_at(&cmd.to_le_bytes(), 4)
    }

    /// uio: a 4-byte read returns the interrupt count once it changed.
    fn wait(&self) -> io::Result<bool> {
        let mut count = [0u8; 4];
        (&self.uio).read_exact(&mut count)?;
        Ok(true)
    }
}

/// BAR 2 (`resource2_wc`: prefetchable, so a write-combining Normal
/// mapping on which plain copies work): the client's RAM at client IPA
/// `base`, `size` bytes of it.
#[derive(Debug)]
pub struct Window {
    map: Mapping,
    base: u64,
    size: u64,
}

impl Window {
    /// Maps the whole file at `path`; the client's RAM must fit in it.
    pub fn map(path: &Path, base: u64, size: u64) -> io::Result<Self> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        let len = f.metadata()?.len();
        if size == 0 || size > len || base.checked_add(size).is_none() {
            return Err(io::Error::other(format!(
                "{}: client RAM {base:#x}+{size:#x} does not fit its {len:#x} bytes",
                path.display()
            )));
        }
        let len = usize::try_from(len).map_err(io::Error::other)?;
        Ok(Window {
            map: Mapping::new(&f, len)?,
            base,
            size,
        })
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The mapping's address of client `[addr, addr + len)`, if it is in
    /// the client's RAM.
    fn at(&self, addr: u64, len: usize) -> Result<*mut u8, OutOfRange> {
        let oor = OutOfRange {
            addr,
            len: len as u64,
        };
        let off = addr.checked_sub(self.base).ok_or(oor)?;
        let end = off.checked_add(len as u64).ok_or(oor)?;
        if end > self.size {
            return Err(oor);
        }
        // SAFETY: `off + len <= size <= map.len`: inside the mapping.
        Ok(unsafe { self.map.ptr.as_ptr().add(off as usize) })
    }
}

impl GuestRam for Window {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let src = self.at(addr, buf.len())?;
        // SAFETY: `at` checked the range is in the mapping, which is not
        // Rust memory, so it cannot overlap `buf`, and is accessed only
        // through vigil_guestmem here. The client may change it meanwhile
        // (which is why the copy is atomic): the device model copies once
        // and decides on the copy, and the queue code orders these
        // accesses with fences.
        unsafe { vigil_guestmem::read(src, buf) };
        Ok(())
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), OutOfRange> {
        let dst = self.at(addr, buf.len())?;
        // SAFETY: as `read`.
        unsafe { vigil_guestmem::write(dst, buf) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use vigil_virtio::channel::reg;

    fn tmp(name: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!(
            "vigil-service-linux-{}-{n}-{name}",
            std::process::id()
        ))
    }

    #[test]
    fn finds_the_channel_and_its_uio_node() {
        let root = tmp("sysfs");
        let dev = |addr: &str, vendor: &str, device: &str, uio: Option<&str>| {
            let d = root.join(addr);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
            fs::write(d.join("device"), format!("{device}\n")).unwrap();
            if let Some(u) = uio {
                fs::create_dir_all(d.join("uio").join(u)).unwrap();
            }
        };
        dev("0000:00:00.0", "0x1b36", "0x0008", None);
        dev("0000:00:01.0", "0x1af4", "0x1042", None);
        assert!(find_channel(&root, 0).is_err(), "no channel yet");
        dev("0000:00:02.0", "0x1b36", "0x10f0", None);
        let e = find_channel(&root, 0).unwrap_err();
        assert!(e.to_string().contains("not bound"), "{e}");
        fs::create_dir_all(root.join("0000:00:02.0/uio/uio3")).unwrap();
        assert_eq!(
            find_channel(&root, 0).unwrap(),
            Found {
                dir: root.join("0000:00:02.0"),
                uio: PathBuf::from("/dev/uio3")
            }
        );
        // The second channel (another client) is picked by number.
        dev("0001:00:00.0", "0x1b36", "0x10f0", Some("uio5"));
        assert_eq!(
            find_channel(&root, 1).unwrap().uio,
            PathBuf::from("/dev/uio5")
        );
        assert!(find_channel(&root, 2).is_err());
        fs::remove_dir_all(&root).unwrap();
    }

    /// The same code on plain files: a file mapping is what sysfs gives.
    #[test]
    fn registers_mask_and_window_over_files() {
        let (r0, cfg, uio, r2) = (
            tmp("resource0"),
            tmp("config"),
            tmp("uio"),
            tmp("resource2"),
        );
        let mut regs = vec![0u8; REGS_SIZE as usize];
        regs[..4].copy_from_slice(&channel::MAGIC.to_le_bytes());
        fs::write(&r0, &regs).unwrap();
        let mut config = vec![0u8; 64];
        config[4..6].copy_from_slice(&(0x0406u16).to_le_bytes());
        fs::write(&cfg, &config).unwrap();
        fs::write(&uio, [1, 0, 0, 0]).unwrap();
        let ch = UioChannel::open_paths(&r0, &cfg, &uio).unwrap();
        assert_eq!(ch.read(reg::MAGIC), channel::MAGIC);
        ch.write(reg::NUM_QUEUES, 0x1234_5678);
        assert_eq!(ch.read(reg::NUM_QUEUES), 0x1234_5678);
        assert_eq!(ch.read(2), u32::MAX, "misaligned");
        assert_eq!(ch.read(REGS_SIZE), u32::MAX, "outside BAR 0");
        ch.write(REGS_SIZE, 1);
        ch.unmask().unwrap();
        let c = fs::read(&cfg).unwrap();
        assert_eq!(
            u16::from_le_bytes([c[4], c[5]]),
            0x0006,
            "bit 10 cleared only"
        );
        assert!(ch.wait().unwrap());
        assert!(ch.wait().is_err(), "EOF: no more interrupts");
        drop(ch);
        let on_disk = fs::read(&r0).unwrap();
        assert_eq!(
            &on_disk[reg::NUM_QUEUES as usize..][..4],
            &0x1234_5678u32.to_le_bytes()
        );

        fs::write(&r2, vec![0u8; 0x4000]).unwrap();
        assert!(
            Window::map(&r2, 0x4000_0000, 0x8000).is_err(),
            "bigger than BAR 2"
        );
        let w = Window::map(&r2, 0x4000_0000, 0x3000).unwrap();
        w.write(0x4000_0ffe, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        w.read(0x4000_0ffe, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(w.read(0x3fff_ffff, &mut b).is_err());
        assert!(
            w.read(0x4000_2ffd, &mut b).is_err(),
            "past the client's RAM"
        );
        assert!(w.write(u64::MAX - 1, &b).is_err());
        w.read(0x4000_2ffc, &mut b).unwrap();
        drop(w);
        assert_eq!(&fs::read(&r2).unwrap()[0xffe..0x1002], &[1, 2, 3, 4]);
        for p in [r0, cfg, uio, r2] {
            fs::remove_file(p).unwrap();
        }
    }
}
