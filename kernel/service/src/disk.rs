//! The disk the service serves: a block device (the service VM's own
//! `/dev/vda`) or, in tests, a regular file.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use vigil_virtio::blk::{self, SECTOR_SIZE};

/// Positioned I/O on the disk, called from the I/O thread only. Ranges
/// were checked against the capacity before these are called.
pub trait Storage: Send + 'static {
    fn pread(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn pwrite(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Makes completed writes durable (virtio-blk FLUSH).
    fn sync(&self) -> io::Result<()>;
}

/// pread/pwrite/fdatasync (std retries EINTR and short transfers).
impl Storage for File {
    fn pread(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
    fn pwrite(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(data, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

/// A disk and its size in 512-byte sectors.
#[derive(Debug)]
pub struct Disk<S> {
    pub storage: S,
    pub sectors: u64,
}

impl<S> blk::Backend for Disk<S> {
    fn capacity_sectors(&self) -> u64 {
        self.sectors
    }
}

impl Disk<File> {
    /// Opens `path` read-write. The size is where `lseek(SEEK_END)` lands,
    /// which for a block device is its size (as BLKGETSIZE64 says); a tail
    /// shorter than a sector is not served.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut f = OpenOptions::new().read(true).write(true).open(path)?;
        let len = f.seek(SeekFrom::End(0))?;
        Ok(Disk {
            storage: f,
            sectors: len / SECTOR_SIZE,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_disk_has_its_size_in_whole_sectors() {
        let path = std::env::temp_dir().join(format!("vigil-service-disk-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        f.set_len(10 * 512 + 100).unwrap();
        drop(f);
        let d = Disk::open(&path).unwrap();
        assert_eq!(d.sectors, 10);
        d.storage.pwrite(&[7; 512], 512).unwrap();
        let mut b = [0u8; 512];
        d.storage.pread(&mut b, 512).unwrap();
        assert_eq!(b, [7; 512]);
        assert!(
            d.storage.pread(&mut [0; 1024], 10 * 512).is_err(),
            "past the end"
        );
        d.storage.sync().unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
