//! `vigil-service --disk PATH [--channel N]`: serves PATH (a disk of the
//! service VM's own) to a client VM as its virtio-blk device, through the
//! Nth channel function (default 0, in PCI address order: one per client)
//! bound to uio_pci_generic. Exits 0 once the client is gone, 1 on an
//! error, 2 on a usage error.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vigil_service::linux::{self, UioChannel, Window};
use vigil_service::{disk_id, Channel, Disk, Exit, Log, Options, Service};
use vigil_virtio::channel::{self, reg};

const SYSFS_PCI: &str = "/sys/bus/pci/devices";
const USAGE: &str = "usage: vigil-service --disk PATH [--channel N]";
/// virtio-blk's device ID (virtio §5).
const VIRTIO_BLK: u32 = 2;

enum Args {
    Run { disk: PathBuf, channel: usize },
    Help,
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    let mut args = args.into_iter();
    let mut disk = None;
    let mut channel = 0;
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--channel") => {
                channel = args
                    .next()
                    .and_then(|n| n.to_str().and_then(|n| n.parse().ok()))
                    .ok_or("--channel needs a number")?
            }
            Some("--disk") => disk = Some(args.next().ok_or("--disk needs a path")?.into()),
            Some("-h" | "--help") => return Ok(Args::Help),
            Some(s) if s.starts_with("--disk=") => {
                disk = s.strip_prefix("--disk=").map(PathBuf::from)
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    let disk = disk.ok_or("--disk is required")?;
    Ok(Args::Run { disk, channel })
}

fn run(log: &Log, disk_path: &Path, nth: usize) -> Result<i32, String> {
    let disk =
        Disk::open(disk_path).map_err(|e| format!("opening {}: {e}", disk_path.display()))?;
    let found = linux::find_channel(Path::new(SYSFS_PCI), nth).map_err(|e| e.to_string())?;
    let ch = UioChannel::open(&found).map_err(|e| e.to_string())?;
    let (magic, version, ty) = (
        ch.read(reg::MAGIC),
        ch.read(reg::VERSION),
        ch.read(reg::DEVICE_TYPE),
    );
    if magic != channel::MAGIC || version != channel::VERSION || ty != VIRTIO_BLK {
        return Err(format!(
            "{}: magic {magic:#x}, version {version}, device type {ty}: not a virtio-blk channel",
            found.dir.display()
        ));
    }
    let base = ch.read64(reg::CLIENT_RAM_BASE_LO);
    let size = ch.read64(reg::CLIENT_RAM_SIZE_LO);
    let bar2 = found.dir.join("resource2_wc");
    let window = Window::map(&bar2, base, size).map_err(|e| format!("{}: {e}", bar2.display()))?;
    say(
        log,
        format_args!(
            "found the channel at {} ({}): client RAM {base:#x}+{size:#x}; disk {}",
            found.dir.display(),
            found.uio.display(),
            disk_path.display()
        ),
    );
    let opts = Options {
        id: disk_id(disk_path),
        ..Options::default()
    };
    let svc = Service::start(Arc::new(ch), Arc::new(window), disk, opts, log.clone())
        .map_err(|e| e.to_string())?;
    let exit = svc.wait();
    // The doorbell thread stays blocked in read(/dev/uioN): exit ends it.
    let _ = svc.stop();
    Ok(match exit {
        Exit::Gone => 0,
        Exit::Failed => 1,
    })
}

fn say(log: &Log, args: std::fmt::Arguments<'_>) {
    log.line(args);
}

fn main() {
    let log = match Log::stderr() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vigil-service: error: no log thread: {e}");
            std::process::exit(1);
        }
    };
    let code = match parse_args(std::env::args_os().skip(1)) {
        Ok(Args::Help) => {
            println!("{USAGE}");
            0
        }
        Err(e) => {
            say(&log, format_args!("{e}\n{USAGE}"));
            2
        }
        Ok(Args::Run { disk, channel }) => match run(&log, &disk, channel) {
            Ok(code) => code,
            Err(e) => {
                say(&log, format_args!("error: {e}"));
                1
            }
        },
    };
    log.flush();
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Args, String> {
        parse_args(a.iter().map(OsString::from))
    }

    #[test]
    fn arguments() {
        assert!(
            matches!(args(&["--disk", "/dev/vda"]), Ok(Args::Run { disk, channel: 0 }) if disk == Path::new("/dev/vda"))
        );
        assert!(
            matches!(args(&["--disk=/x"]), Ok(Args::Run { disk, .. }) if disk == Path::new("/x"))
        );
        assert!(matches!(
            args(&["--disk", "/x", "--channel", "2"]),
            Ok(Args::Run { channel: 2, .. })
        ));
        assert!(args(&["--disk", "/x", "--channel", "two"]).is_err());
        assert!(matches!(args(&["--help"]), Ok(Args::Help)));
        assert!(args(&[]).is_err());
        assert!(args(&["--disk"]).is_err());
        assert!(args(&["--disk", "a", "--bogus"]).is_err());
    }
}
