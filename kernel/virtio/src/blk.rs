//! The virtio-blk device model (virtio 1.2 §5.2), for the service program
//! that backs a client VM's disk.
//!
//! The I/O itself is asynchronous in the service (an I/O thread does
//! pread/pwrite/fdatasync), so a request goes through two steps:
//!
//! 1. [`BlkDevice::parse`] checks a popped [`Chain`] and returns either a
//!    [`Request`] for the backend (OUT data already copied out of the
//!    guest, the reply buffers recorded as validated segments) or an
//!    [`Immediate`] answer for a bad one (IOERR / UNSUPP);
//! 2. [`complete`] (or [`complete_immediate`]) writes the reply, the status
//!    byte and the used entry.
//!
//! Between the two the driver may rewrite its descriptors as it likes: the
//! completion writes only to the segments validated by `parse`.
//! [`BlkDevice::process_all`] does both steps synchronously.
//!
//! Message framing is free (§2.7.4): the header may span descriptors, and
//! data may share a descriptor with the header or the status byte. The
//! status byte is the last byte of the last (device-writable) descriptor
//! (§5.2.6).

use alloc::vec::Vec;

use crate::queue::{
    read_segments, total_len, write_segments, Chain, QueueError, Segment, SplitQueue,
};
use crate::GuestRam;

/// §5.2.3 feature bits (bit numbers).
pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// §6: reserved feature bits.
pub const VIRTIO_F_INDIRECT_DESC: u32 = 28;
pub const VIRTIO_F_EVENT_IDX: u32 = 29;
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Features this device offers (§5.2.3). The caller offers these (or a
/// subset) through the transport and passes the negotiated set back.
pub const DEVICE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_BLK_F_FLUSH)
    | (1 << VIRTIO_BLK_F_BLK_SIZE)
    | (1 << VIRTIO_BLK_F_SEG_MAX)
    | (1 << VIRTIO_BLK_F_SIZE_MAX)
    | (1 << VIRTIO_F_EVENT_IDX)
    | (1 << VIRTIO_F_INDIRECT_DESC);

/// §5.2.6 request types.
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// §5.2.6 status values.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// §5.2.6: the protocol's sector, whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;
/// §5.2.6: the GET_ID string length (not NUL-terminated if 20 long).
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// §5.2.6: type, reserved, sector.
pub const HEADER_LEN: u64 = 16;
/// Config space length: capacity through blk_size (§5.2.4). The fields
/// after it belong to features not offered; reads there are the
/// transport's business.
pub const BLK_CONFIG_LEN: usize = 24;
/// Hard cap of one request's data, whatever the limits: keeps lengths in
/// `u32` (used.len) and a request's buffer reasonable.
pub const MAX_REQUEST_BYTES: u64 = 1 << 30;
/// Default `size_max` (§5.2.4): 64 KiB per segment.
pub const DEFAULT_SIZE_MAX: u32 = 1 << 16;
/// Default `seg_max` (§5.2.4): a 128-entry queue less header and status,
/// as QEMU does (a driver without indirect descriptors needs
/// `seg_max + 2 <= queue size`).
pub const DEFAULT_SEG_MAX: u32 = 126;

const fn has(negotiated: u64, bit: u32) -> bool {
    negotiated & (1 << bit) != 0
}

/// `blk_size` (§5.2.4): the logical block size the driver should use.
/// Advisory: the protocol stays in 512-byte sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockSize {
    B512,
    B4096,
}

impl BlockSize {
    pub fn bytes(self) -> u32 {
        match self {
            BlockSize::B512 => 512,
            BlockSize::B4096 => 4096,
        }
    }
}

/// Why a request was refused, for rate-limited logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkError {
    /// The last descriptor is not device-writable or is empty: nowhere to
    /// put the status byte (§5.2.6).
    NoStatus,
    /// The status byte is outside the window.
    StatusOutOfWindow { addr: u64 },
    /// Fewer than 16 device-readable bytes.
    HeaderTooShort { len: u64 },
    /// A buffer outside the window.
    BufferOutOfWindow { addr: u64, len: u64 },
    /// Request type not implemented (UNSUPP).
    Unsupported { ty: u32 },
    /// IN or GET_ID with device-readable data after the header.
    ReadableData { len: u64 },
    /// OUT with device-writable data before the status byte.
    WritableData { len: u64 },
    /// Data length not a multiple of 512.
    Unaligned { len: u64 },
    /// Data longer than [`BlkDevice::max_data_len`].
    TooLong { len: u64 },
    /// More data segments than `seg_max`.
    TooManySegments { count: usize },
    /// A data segment longer than `size_max`.
    SegmentTooLarge { len: u64 },
    /// `sector + len / 512` past the capacity (or overflowing).
    PastCapacity { sector: u64, sectors: u64 },
    /// No memory for the OUT data copy.
    NoMemory { len: u64 },
}

/// What a request asks of the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Read `len` bytes at `sector`; completion carries the data.
    In { sector: u64, len: u32 },
    /// Write `data` (copied from the guest at parse time) at `sector`.
    Out { sector: u64, data: Vec<u8> },
    /// Make earlier completed writes durable.
    Flush,
    /// The device ID string; completion carries up to 20 bytes.
    GetId,
}

/// A valid request, waiting for the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub head: u16,
    pub kind: RequestKind,
    /// Guest address of the status byte (checked in the window).
    pub status_addr: u64,
    /// Where reply data goes: the device-writable bytes before the status
    /// byte (IN, GET_ID), empty otherwise. Validated segments, in window.
    pub reply: Vec<Segment>,
}

/// A request answered without the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Immediate {
    pub head: u16,
    /// `VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP`.
    pub status: u8,
    /// Where the status goes; `None` when the chain has no usable status
    /// byte (the chain is then returned with nothing written).
    pub status_addr: Option<u64>,
    /// The used length: 1 with a status byte, else 0.
    pub written: u32,
    pub error: BlkError,
}

/// The outcome of [`BlkDevice::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Request(Request),
    Immediate(Immediate),
}

impl Parsed {
    pub fn head(&self) -> u16 {
        match self {
            Parsed::Request(r) => r.head,
            Parsed::Immediate(i) => i.head,
        }
    }
}

/// A backend failure; the driver sees `VIRTIO_BLK_S_IOERR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoError;

/// The disk behind the device.
pub trait Backend {
    /// Size in 512-byte sectors.
    fn capacity_sectors(&self) -> u64;
}

/// A backend that does I/O on the spot, for [`BlkDevice::process_all`].
/// Ranges are checked against the capacity before these are called.
pub trait SyncBackend: Backend {
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError>;
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), IoError>;
    fn flush(&mut self) -> Result<(), IoError>;
    /// The GET_ID string, NUL-padded.
    fn id(&self) -> [u8; VIRTIO_BLK_ID_BYTES] {
        [0; VIRTIO_BLK_ID_BYTES]
    }
}

/// What [`BlkDevice::process_all`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Processed {
    /// Chains returned to the driver.
    pub completed: u32,
    /// Of those, refused ones (bad chains, IOERR, UNSUPP).
    pub rejected: u32,
    /// Interrupt the driver (§2.7.7, §2.7.10).
    pub notify: bool,
    /// Stopped at the per-call budget (the queue size) with maybe more
    /// available: call again. Only when `false` was the queue seen empty,
    /// which with EVENT_IDX is what re-arms the driver's notifications.
    pub more: bool,
    /// The last refusal, for logging.
    pub last_error: Option<ProcessError>,
}

/// A refusal seen by [`BlkDevice::process_all`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessError {
    Queue(QueueError),
    Blk(BlkError),
}

/// A virtio-blk device: its configuration and limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkDevice {
    capacity: u64,
    blk_size: BlockSize,
    size_max: u32,
    seg_max: u32,
}

impl BlkDevice {
    /// A disk of `capacity_sectors` 512-byte sectors, with the default
    /// limits ([`DEFAULT_SIZE_MAX`], [`DEFAULT_SEG_MAX`]).
    pub fn new(capacity_sectors: u64, blk_size: BlockSize) -> Self {
        BlkDevice {
            capacity: capacity_sectors,
            blk_size,
            size_max: DEFAULT_SIZE_MAX,
            seg_max: DEFAULT_SEG_MAX,
        }
    }

    /// [`Self::new`] with the backend's capacity.
    pub fn for_backend(backend: &impl Backend, blk_size: BlockSize) -> Self {
        Self::new(backend.capacity_sectors(), blk_size)
    }

    /// Sets `size_max` (at least 4096: Linux raises a smaller segment size
    /// to a page anyway) and `seg_max` (at least 1). Without indirect
    /// descriptors `seg_max + 2` should not exceed the queue size.
    pub fn with_limits(mut self, size_max: u32, seg_max: u32) -> Self {
        self.size_max = size_max.max(4096);
        self.seg_max = seg_max.max(1);
        self
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.capacity
    }

    /// The longest data a request may carry: `seg_max * size_max` (what
    /// a driver honouring them can send), capped by [`MAX_REQUEST_BYTES`]
    /// and rounded down to whole sectors. Bounds every allocation made for
    /// a request.
    pub fn max_data_len(&self) -> u32 {
        let n = (u64::from(self.seg_max) * u64::from(self.size_max)).min(MAX_REQUEST_BYTES);
        // <= 2^30.
        (n - n % SECTOR_SIZE) as u32
    }

    /// The device configuration space (§5.2.4), little-endian: capacity,
    /// size_max, seg_max, geometry (zero: not offered), blk_size.
    pub fn config_bytes(&self) -> [u8; BLK_CONFIG_LEN] {
        let mut c = [0u8; BLK_CONFIG_LEN];
        c[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        c[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        c[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        c[20..24].copy_from_slice(&self.blk_size.bytes().to_le_bytes());
        c
    }

    /// Checks a chain and turns it into a [`Request`] or an [`Immediate`]
    /// answer (§5.2.6). `negotiated`: the features the driver accepted;
    /// `size_max` / `seg_max` are enforced per segment only if negotiated
    /// (a driver that did not take them was not told), the total length
    /// always. FLUSH is served even without `VIRTIO_BLK_F_FLUSH`: it is
    /// harmless, and UNSUPP would help no one.
    pub fn parse(&self, chain: &Chain, mem: &impl GuestRam, negotiated: u64) -> Parsed {
        let head = chain.head;
        // The status byte first: every other answer needs it.
        let status_addr = match chain.segments.last() {
            Some(s) if s.writable && s.len > 0 => s.addr.checked_add(u64::from(s.len) - 1),
            _ => None,
        };
        let Some(status_addr) = status_addr else {
            return Parsed::Immediate(Immediate {
                head,
                status: VIRTIO_BLK_S_IOERR,
                status_addr: None,
                written: 0,
                error: BlkError::NoStatus,
            });
        };
        if mem.read(status_addr, &mut [0u8; 1]).is_err() {
            return Parsed::Immediate(Immediate {
                head,
                status: VIRTIO_BLK_S_IOERR,
                status_addr: None,
                written: 0,
                error: BlkError::StatusOutOfWindow { addr: status_addr },
            });
        }
        match self.check(chain, mem, negotiated) {
            Ok((kind, reply)) => Parsed::Request(Request {
                head,
                kind,
                status_addr,
                reply,
            }),
            Err(error) => Parsed::Immediate(Immediate {
                head,
                status: match error {
                    BlkError::Unsupported { .. } => VIRTIO_BLK_S_UNSUPP,
                    _ => VIRTIO_BLK_S_IOERR,
                },
                status_addr: Some(status_addr),
                written: 1,
                error,
            }),
        }
    }

    fn check(
        &self,
        chain: &Chain,
        mem: &impl GuestRam,
        negotiated: u64,
    ) -> Result<(RequestKind, Vec<Segment>), BlkError> {
        let readable = chain.readable();
        let readable_len = total_len(readable);
        if readable_len < HEADER_LEN {
            return Err(BlkError::HeaderTooShort { len: readable_len });
        }
        let mut hdr = [0u8; HEADER_LEN as usize];
        read_segments(mem, readable, 0, &mut hdr).map_err(buffer_error)?;
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = hdr;
        let ty = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        // Device-readable data after the header, device-writable data
        // before the status byte.
        let out_data = sub_segments(readable, HEADER_LEN, 0);
        let in_data = sub_segments(chain.writable(), 0, 1);
        let out_len = total_len(&out_data);
        let in_len = total_len(&in_data);
        match ty {
            VIRTIO_BLK_T_IN => {
                if out_len != 0 {
                    return Err(BlkError::ReadableData { len: out_len });
                }
                let len = self.check_data(&in_data, negotiated, sector)?;
                probe(mem, &in_data)?;
                Ok((RequestKind::In { sector, len }, in_data))
            }
            VIRTIO_BLK_T_OUT => {
                if in_len != 0 {
                    return Err(BlkError::WritableData { len: in_len });
                }
                let len = self.check_data(&out_data, negotiated, sector)?;
                let mut data = Vec::new();
                let n = len as usize;
                data.try_reserve_exact(n).map_err(|_| BlkError::NoMemory {
                    len: u64::from(len),
                })?;
                data.resize(n, 0);
                read_segments(mem, &out_data, 0, &mut data).map_err(buffer_error)?;
                Ok((RequestKind::Out { sector, data }, Vec::new()))
            }
            // Data, if any, is ignored (§5.2.6: none is sent).
            VIRTIO_BLK_T_FLUSH => Ok((RequestKind::Flush, Vec::new())),
            VIRTIO_BLK_T_GET_ID => {
                if out_len != 0 {
                    return Err(BlkError::ReadableData { len: out_len });
                }
                // Only the first 20 bytes are ever written.
                let reply = sub_segments(
                    &in_data,
                    0,
                    in_len.saturating_sub(VIRTIO_BLK_ID_BYTES as u64),
                );
                probe(mem, &reply)?;
                Ok((RequestKind::GetId, reply))
            }
            ty => Err(BlkError::Unsupported { ty }),
        }
    }

    /// Length checks of IN/OUT data (§5.2.6, §5.2.4 limits); returns the
    /// length.
    fn check_data(&self, data: &[Segment], negotiated: u64, sector: u64) -> Result<u32, BlkError> {
        let len = total_len(data);
        if len > u64::from(self.max_data_len()) {
            return Err(BlkError::TooLong { len });
        }
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(BlkError::Unaligned { len });
        }
        if has(negotiated, VIRTIO_BLK_F_SEG_MAX) && data.len() > self.seg_max as usize {
            return Err(BlkError::TooManySegments { count: data.len() });
        }
        if has(negotiated, VIRTIO_BLK_F_SIZE_MAX) {
            if let Some(s) = data.iter().find(|s| s.len > self.size_max) {
                return Err(BlkError::SegmentTooLarge {
                    len: u64::from(s.len),
                });
            }
        }
        let sectors = len / SECTOR_SIZE;
        if sector
            .checked_add(sectors)
            .is_none_or(|end| end > self.capacity)
        {
            return Err(BlkError::PastCapacity { sector, sectors });
        }
        // <= max_data_len.
        Ok(len as u32)
    }

    /// Pops, parses, serves and completes every available request, at most
    /// the queue size per call (a driver that keeps adding cannot keep the
    /// caller here forever). Bad chains are returned with length 0. A fatal
    /// queue error is returned: the caller sets `DEVICE_NEEDS_RESET`.
    pub fn process_all(
        &self,
        queue: &mut SplitQueue,
        mem: &impl GuestRam,
        backend: &mut impl SyncBackend,
        negotiated: u64,
    ) -> Result<Processed, QueueError> {
        let old_used = queue.used_idx();
        let mut p = Processed::default();
        let budget = u32::from(queue.size());
        loop {
            if p.completed >= budget {
                p.more = true;
                break;
            }
            let chain = match queue.pop(mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    p.last_error = Some(ProcessError::Queue(e));
                    if let Some(head) = e.head() {
                        queue.push_used(mem, head, 0)?;
                        p.completed += 1;
                        p.rejected += 1;
                    }
                    continue;
                }
            };
            match self.parse(&chain, mem, negotiated) {
                Parsed::Request(req) => {
                    let result = serve(backend, &req.kind);
                    complete(req, result, mem, queue)?;
                }
                Parsed::Immediate(imm) => {
                    p.last_error = Some(ProcessError::Blk(imm.error));
                    p.rejected += 1;
                    complete_immediate(&imm, mem, queue)?;
                }
            }
            p.completed += 1;
        }
        p.notify = queue.used_idx() != old_used && queue.needs_notify(mem, old_used);
        Ok(p)
    }
}

/// Runs one request on a synchronous backend.
fn serve(backend: &mut impl SyncBackend, kind: &RequestKind) -> Result<Vec<u8>, IoError> {
    match kind {
        RequestKind::In { sector, len } => {
            let mut buf = Vec::new();
            let n = *len as usize;
            buf.try_reserve_exact(n).map_err(|_| IoError)?;
            buf.resize(n, 0);
            backend.read(*sector, &mut buf)?;
            Ok(buf)
        }
        RequestKind::Out { sector, data } => backend.write(*sector, data).map(|()| Vec::new()),
        RequestKind::Flush => backend.flush().map(|()| Vec::new()),
        RequestKind::GetId => Ok(backend.id().to_vec()),
    }
}

/// Completes a request with the backend's `result` (§5.2.6): the data
/// read (IN) or the ID (GET_ID) goes into the validated reply segments,
/// bounded by them; then the status byte; then the used entry, whose
/// length counts the bytes written including the status byte.
pub fn complete(
    req: Request,
    result: Result<Vec<u8>, IoError>,
    mem: &impl GuestRam,
    queue: &mut SplitQueue,
) -> Result<(), QueueError> {
    let room = total_len(&req.reply);
    let (status, written) = match (&req.kind, result) {
        (_, Err(IoError)) => (VIRTIO_BLK_S_IOERR, 0),
        (RequestKind::In { len, .. }, Ok(data)) => {
            let want = (*len as usize).min(room as usize);
            let n = data.len().min(want);
            let short = n < want;
            match write_segments(mem, &req.reply, 0, data.get(..n).unwrap_or(&[])) {
                Ok(()) if !short => (VIRTIO_BLK_S_OK, n),
                // A short read is an error; the bytes that arrived still
                // count as written.
                Ok(()) => (VIRTIO_BLK_S_IOERR, n),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            }
        }
        (RequestKind::GetId, Ok(data)) => {
            let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
            let k = data.len().min(VIRTIO_BLK_ID_BYTES);
            id[..k].copy_from_slice(&data[..k]);
            let n = (room as usize).min(VIRTIO_BLK_ID_BYTES);
            match write_segments(mem, &req.reply, 0, &id[..n]) {
                Ok(()) => (VIRTIO_BLK_S_OK, n),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            }
        }
        (RequestKind::Out { .. } | RequestKind::Flush, Ok(_)) => (VIRTIO_BLK_S_OK, 0),
    };
    // `written` <= max_data_len < 2^31.
    let mut used_len = written as u32;
    if mem.write(req.status_addr, &[status]).is_ok() {
        used_len += 1;
    }
    queue.push_used(mem, req.head, used_len)
}

/// Completes a refused request: the status byte if there is one, then the
/// used entry.
pub fn complete_immediate(
    imm: &Immediate,
    mem: &impl GuestRam,
    queue: &mut SplitQueue,
) -> Result<(), QueueError> {
    let written = match imm.status_addr {
        Some(addr) if mem.write(addr, &[imm.status]).is_ok() => imm.written,
        _ => 0,
    };
    queue.push_used(mem, imm.head, written)
}

fn buffer_error(e: QueueError) -> BlkError {
    match e {
        QueueError::BufferOutOfWindow { addr, len } => BlkError::BufferOutOfWindow { addr, len },
        // Callers check lengths first; report it as a window miss anyway.
        _ => BlkError::BufferOutOfWindow { addr: 0, len: 0 },
    }
}

/// The bytes `[front, total - back)` of `segs` as segments, empty pieces
/// dropped.
fn sub_segments(segs: &[Segment], front: u64, back: u64) -> Vec<Segment> {
    let total = total_len(segs);
    let end = total.saturating_sub(back);
    let mut out = Vec::new();
    let mut pos = 0u64;
    for s in segs {
        let len = u64::from(s.len);
        let next = pos.saturating_add(len);
        let (start, stop) = (pos.max(front), next.min(end));
        if start < stop {
            out.push(Segment {
                // No wrap: `addr + len` was checked by the walk and
                // `start - pos < len`.
                addr: s.addr.saturating_add(start - pos),
                // <= s.len.
                len: (stop - start) as u32,
                writable: s.writable,
            });
        }
        pos = next;
    }
    out
}

/// Checks that each segment lies in the window (its first and last byte:
/// the window is one range), so that completion's writes land.
fn probe(mem: &impl GuestRam, segs: &[Segment]) -> Result<(), BlkError> {
    for s in segs.iter().filter(|s| s.len > 0) {
        let len = u64::from(s.len);
        let err = BlkError::BufferOutOfWindow { addr: s.addr, len };
        let last = s.addr.checked_add(len - 1).ok_or(err)?;
        let mut b = [0u8; 1];
        mem.read(s.addr, &mut b).map_err(|_| err)?;
        mem.read(last, &mut b).map_err(|_| err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::test_support::*;
    use crate::queue::{ChainFault, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
    use alloc::collections::BTreeMap;
    use alloc::vec;
    use proptest::prelude::*;

    const ALL: u64 = DEVICE_FEATURES;

    /// An in-memory disk.
    struct Disk {
        data: Vec<u8>,
        flushes: u32,
        fail: bool,
    }

    impl Disk {
        fn new(sectors: u64) -> Disk {
            Disk {
                data: vec![0; (sectors * SECTOR_SIZE) as usize],
                flushes: 0,
                fail: false,
            }
        }

        fn range(&self, sector: u64, len: usize) -> Result<core::ops::Range<usize>, IoError> {
            let start = (sector * SECTOR_SIZE) as usize;
            if self.fail || start + len > self.data.len() {
                return Err(IoError);
            }
            Ok(start..start + len)
        }
    }

    impl Backend for Disk {
        fn capacity_sectors(&self) -> u64 {
            self.data.len() as u64 / SECTOR_SIZE
        }
    }

    impl SyncBackend for Disk {
        fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
            let r = self.range(sector, buf.len())?;
            buf.copy_from_slice(&self.data[r]);
            Ok(())
        }
        fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), IoError> {
            let r = self.range(sector, data.len())?;
            self.data[r].copy_from_slice(data);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), IoError> {
            if self.fail {
                return Err(IoError);
            }
            self.flushes += 1;
            Ok(())
        }
        fn id(&self) -> [u8; VIRTIO_BLK_ID_BYTES] {
            *b"vigil-disk-0\0\0\0\0\0\0\0\0"
        }
    }

    struct Rig {
        ram: Ram,
        drv: Driver,
        q: SplitQueue,
        dev: BlkDevice,
        disk: Disk,
        negotiated: u64,
        indirect: bool,
    }

    impl Rig {
        fn new(event_idx: bool, indirect: bool) -> Rig {
            let ram = Ram::new(1 << 20);
            let drv = Driver::new(&ram, 16);
            let q = drv.queue(&ram, event_idx, indirect);
            let disk = Disk::new(64);
            let dev = BlkDevice::for_backend(&disk, BlockSize::B512);
            Rig {
                ram,
                drv,
                q,
                dev,
                disk,
                negotiated: ALL,
                indirect,
            }
        }

        fn header(&mut self, ty: u32, sector: u64) -> u64 {
            let h = self.drv.alloc(16);
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&ty.to_le_bytes());
            b[8..].copy_from_slice(&sector.to_le_bytes());
            self.ram.poke(h, &b);
            h
        }

        /// A request shaped as Linux's virtio_blk builds it: header, data,
        /// status. Returns (head, data address, status address).
        fn request(&mut self, ty: u32, sector: u64, len: u32, writable: bool) -> (u16, u64, u64) {
            let h = self.header(ty, sector);
            let data = self.drv.alloc(u64::from(len));
            let st = self.drv.alloc(1);
            self.ram.poke(st, &[0xff]);
            let mut bufs = vec![(h, 16, false)];
            if len > 0 {
                bufs.push((data, len, writable));
            }
            bufs.push((st, 1, true));
            let head = self.add(&bufs);
            (head, data, st)
        }

        fn add(&mut self, bufs: &[Buf]) -> u16 {
            if self.indirect {
                self.drv.add_indirect(&self.ram, bufs)
            } else {
                self.drv.add(&self.ram, bufs)
            }
        }

        fn run(&mut self) -> Processed {
            self.dev
                .process_all(&mut self.q, &self.ram, &mut self.disk, self.negotiated)
                .unwrap()
        }

        /// Runs and returns the one used entry's length.
        fn run_one(&mut self, head: u16) -> u32 {
            let p = self.run();
            assert_eq!(p.completed, 1);
            let used = self.drv.take_used(&self.ram);
            assert_eq!(used.len(), 1);
            assert_eq!(used[0].0, u32::from(head));
            used[0].1
        }

        fn status(&self, st: u64) -> u8 {
            self.ram.peek(st, 1)[0]
        }

        /// Device writes since the last call, outside the used ring.
        fn writes_outside_used(&self) -> Vec<(u64, usize)> {
            let used_end = self.drv.used + 6 + 8 * u64::from(self.drv.size);
            self.ram
                .log
                .borrow_mut()
                .drain(..)
                .filter(|&(a, _)| !(self.drv.used..used_end).contains(&a))
                .collect()
        }
    }

    #[test]
    fn config_space_layout() {
        let dev = BlkDevice::new(0x1_2345_6789, BlockSize::B4096).with_limits(0x2_0000, 30);
        let c = dev.config_bytes();
        assert_eq!(c[0..8], 0x1_2345_6789u64.to_le_bytes());
        assert_eq!(c[8..12], 0x2_0000u32.to_le_bytes());
        assert_eq!(c[12..16], 30u32.to_le_bytes());
        assert_eq!(c[16..20], [0; 4]);
        assert_eq!(c[20..24], 4096u32.to_le_bytes());
        assert_eq!(dev.max_data_len(), 30 * 0x2_0000);
        let tiny = BlkDevice::new(8, BlockSize::B512).with_limits(1, 0);
        assert_eq!(tiny.max_data_len(), 4096);
        let huge = BlkDevice::new(8, BlockSize::B512).with_limits(u32::MAX, u32::MAX);
        assert_eq!(u64::from(huge.max_data_len()), MAX_REQUEST_BYTES);
        assert_eq!(DEVICE_FEATURES, 0x1_3000_0246);
    }

    #[test]
    fn round_trip_in_out_flush_get_id() {
        for (event_idx, indirect) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut r = Rig::new(event_idx, indirect);
            let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
            let (head, data, st) = r.request(VIRTIO_BLK_T_OUT, 3, 1024, false);
            r.ram.poke(data, &pattern);
            assert_eq!(r.run_one(head), 1);
            assert_eq!(r.status(st), VIRTIO_BLK_S_OK);
            assert_eq!(r.disk.data[3 * 512..5 * 512], pattern[..]);

            let (head, _, st) = r.request(VIRTIO_BLK_T_FLUSH, 0, 0, false);
            assert_eq!(r.run_one(head), 1);
            assert_eq!(r.status(st), VIRTIO_BLK_S_OK);
            assert_eq!(r.disk.flushes, 1);

            let (head, data, st) = r.request(VIRTIO_BLK_T_IN, 3, 1024, true);
            assert_eq!(r.run_one(head), 1025);
            assert_eq!(r.status(st), VIRTIO_BLK_S_OK);
            assert_eq!(r.ram.peek(data, 1024), pattern);

            let (head, data, st) = r.request(VIRTIO_BLK_T_GET_ID, 0, 20, true);
            assert_eq!(r.run_one(head), 21);
            assert_eq!(r.status(st), VIRTIO_BLK_S_OK);
            assert_eq!(r.ram.peek(data, 20), b"vigil-disk-0\0\0\0\0\0\0\0\0");

            // The last sector is reachable.
            let (head, _, st) = r.request(VIRTIO_BLK_T_IN, 63, 512, true);
            assert_eq!(r.run_one(head), 513);
            assert_eq!(r.status(st), VIRTIO_BLK_S_OK);
        }
    }

    #[test]
    fn free_framing() {
        // §2.7.4: header split over two descriptors, data and status in one.
        let mut r = Rig::new(false, false);
        r.disk.data[512..1024].fill(0xab);
        let h = r.header(VIRTIO_BLK_T_IN, 1);
        let buf = r.drv.alloc(513);
        let head = r.add(&[(h, 8, false), (h + 8, 8, false), (buf, 513, true)]);
        assert_eq!(r.run_one(head), 513);
        assert_eq!(r.ram.peek(buf, 512), [0xab; 512]);
        assert_eq!(r.status(buf + 512), VIRTIO_BLK_S_OK);
        // Header and data in one readable descriptor; data split 100/412.
        let out = r.drv.alloc(16 + 512);
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        hdr[8..].copy_from_slice(&5u64.to_le_bytes());
        r.ram.poke(out, &hdr);
        r.ram.poke(out + 16, &[0x5a; 512]);
        let st = r.drv.alloc(1);
        let head = r.add(&[(out, 116, false), (out + 116, 412, false), (st, 1, true)]);
        assert_eq!(r.run_one(head), 1);
        assert_eq!(r.status(st), VIRTIO_BLK_S_OK);
        assert_eq!(r.disk.data[5 * 512..6 * 512], [0x5a; 512]);
        // GET_ID into a short buffer: what fits.
        let h = r.header(VIRTIO_BLK_T_GET_ID, 0);
        let id = r.drv.alloc(6);
        let head = r.add(&[(h, 16, false), (id, 6, true)]);
        assert_eq!(r.run_one(head), 6);
        assert_eq!(r.ram.peek(id, 6), b"vigil\0");
    }

    /// A request expected to be refused with `status` (and used length 1),
    /// touching nothing but the status byte and the used ring.
    fn refused(r: &mut Rig, head: u16, st: u64, status: u8) {
        r.writes_outside_used();
        assert_eq!(r.run_one(head), 1);
        assert_eq!(r.status(st), status);
        assert_eq!(r.writes_outside_used(), [(st, 1)]);
    }

    #[test]
    fn bad_requests_get_ioerr_or_unsupp() {
        let mut r = Rig::new(false, false);
        for ty in [2, 3, 11, 13, 0xffff_ffff] {
            let (head, _, st) = r.request(ty, 0, 512, true);
            refused(&mut r, head, st, VIRTIO_BLK_S_UNSUPP);
        }
        let ioerr = [
            (VIRTIO_BLK_T_IN, 63, 1024, true),            // past the end
            (VIRTIO_BLK_T_IN, 64, 512, true),             // at the end
            (VIRTIO_BLK_T_OUT, u64::MAX, 512, false),     // sector + n overflows
            (VIRTIO_BLK_T_IN, u64::MAX / 512, 512, true), // sector * 512 would
            (VIRTIO_BLK_T_IN, 0, 100, true),              // not whole sectors
            (VIRTIO_BLK_T_OUT, 0, 513, false),
            (VIRTIO_BLK_T_IN, 0, 512, false), // IN with readable data
            (VIRTIO_BLK_T_GET_ID, 0, 20, false),
            (VIRTIO_BLK_T_OUT, 0, 512, true), // OUT with writable data
        ];
        for (ty, sector, len, w) in ioerr {
            let (head, _, st) = r.request(ty, sector, len, w);
            refused(&mut r, head, st, VIRTIO_BLK_S_IOERR);
        }
        assert!(r.disk.data.iter().all(|&b| b == 0));
        // Header too short.
        let h = r.header(VIRTIO_BLK_T_IN, 0);
        let st = r.drv.alloc(1);
        let head = r.add(&[(h, 15, false), (st, 1, true)]);
        refused(&mut r, head, st, VIRTIO_BLK_S_IOERR);
        // Only writable descriptors.
        let head = r.add(&[(h, 16, true), (st, 1, true)]);
        refused(&mut r, head, st, VIRTIO_BLK_S_IOERR);
        // Backend failures.
        r.disk.fail = true;
        for ty in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_FLUSH] {
            let (head, _, st) = r.request(ty, 0, 512, true);
            refused(&mut r, head, st, VIRTIO_BLK_S_IOERR);
        }
        let (head, _, st) = r.request(VIRTIO_BLK_T_OUT, 0, 512, false);
        refused(&mut r, head, st, VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn no_usable_status_byte() {
        let mut r = Rig::new(false, false);
        let h = r.header(VIRTIO_BLK_T_IN, 0);
        let data = r.drv.alloc(512);
        let st = r.drv.alloc(1);
        let chains: [&[Buf]; 5] = [
            // Missing.
            &[(h, 16, false)],
            &[(h, 16, false), (data, 512, false)],
            // Read-only: no writable descriptor.
            &[(h, 16, false), (st, 1, false)],
            // Empty.
            &[(h, 16, false), (data, 512, true), (st, 0, true)],
            // Outside the window.
            &[(h, 16, false), (r.ram.end(), 1, true)],
        ];
        for bufs in chains {
            r.writes_outside_used();
            let head = r.add(bufs);
            assert_eq!(r.run_one(head), 0);
            assert_eq!(r.writes_outside_used(), []);
        }
        // Status read-only after writable data: the chain itself is bad.
        let head = r.add(&[(h, 16, false), (data, 512, true), (st, 1, false)]);
        let p = r.run();
        assert_eq!((p.completed, p.rejected), (1, 1));
        assert!(matches!(
            p.last_error,
            Some(ProcessError::Queue(QueueError::BadChain {
                fault: ChainFault::ReadableAfterWritable,
                ..
            }))
        ));
        assert_eq!(r.drv.take_used(&r.ram), [(u32::from(head), 0)]);
        assert_eq!(r.writes_outside_used(), []);
    }

    #[test]
    fn huge_and_out_of_window_buffers() {
        let mut r = Rig::new(false, false);
        let end = r.ram.end();
        for (ty, w) in [(VIRTIO_BLK_T_IN, true), (VIRTIO_BLK_T_OUT, false)] {
            for (addr, len) in [
                (BASE, u32::MAX),       // 4 GiB
                (BASE, u32::MAX - 511), // 4 GiB of whole sectors
                (BASE - 0x1000, 512),   // starts outside
                (end - 512, 1024),      // straddles the end
                (end, 512),             // just past it
                (u64::MAX - 511, 511),  // top of the address space
                (0, 512),
            ] {
                let h = r.header(ty, 0);
                let st = r.drv.alloc(1);
                let head = r.add(&[(h, 16, false), (addr, len, w), (st, 1, true)]);
                refused(&mut r, head, st, VIRTIO_BLK_S_IOERR);
            }
        }
        // A 4 GiB status descriptor: its last byte is outside.
        let h = r.header(VIRTIO_BLK_T_FLUSH, 0);
        let head = r.add(&[(h, 16, false), (BASE, u32::MAX, true)]);
        assert_eq!(r.run_one(head), 0);
        assert_eq!(r.writes_outside_used(), []);
        // Data ending on the window's last byte is fine.
        let h = r.header(VIRTIO_BLK_T_IN, 0);
        let st = r.drv.alloc(1);
        let head = r.add(&[(h, 16, false), (end - 512, 512, true), (st, 1, true)]);
        assert_eq!(r.run_one(head), 513);
        assert_eq!(r.status(st), VIRTIO_BLK_S_OK);
    }

    #[test]
    fn seg_max_and_size_max() {
        let mut r = Rig::new(false, false);
        r.dev = r.dev.with_limits(4096, 2);
        let h = r.header(VIRTIO_BLK_T_IN, 0);
        let d = r.drv.alloc(8192);
        let st = r.drv.alloc(1);
        let three: &[Buf] = &[
            (h, 16, false),
            (d, 512, true),
            (d + 512, 512, true),
            (d + 1024, 512, true),
            (st, 1, true),
        ];
        let big: &[Buf] = &[(h, 16, false), (d, 8192, true), (st, 1, true)];
        for bufs in [three, big] {
            r.negotiated = ALL;
            let head = r.add(bufs);
            refused(&mut r, head, st, VIRTIO_BLK_S_IOERR);
            // A driver that did not take the limits was not told them.
            r.negotiated = ALL & !(1 << VIRTIO_BLK_F_SEG_MAX) & !(1 << VIRTIO_BLK_F_SIZE_MAX);
            let head = r.add(bufs);
            r.run_one(head);
            assert_eq!(r.status(st), VIRTIO_BLK_S_OK);
        }
        // The total stays bounded either way: 2 * 4096.
        let h = r.header(VIRTIO_BLK_T_OUT, 0);
        let d = r.drv.alloc(8704);
        let head = r.add(&[(h, 16, false), (d, 8704, false), (st, 1, true)]);
        refused(&mut r, head, st, VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn hostile_rings_through_the_device() {
        let mut r = Rig::new(false, true);
        let h = r.header(VIRTIO_BLK_T_IN, 0);
        // A loop: returned with nothing written.
        r.drv.set_desc(&r.ram, 0, h, 16, VIRTQ_DESC_F_NEXT, 1);
        r.drv.set_desc(&r.ram, 1, h, 16, VIRTQ_DESC_F_NEXT, 0);
        r.drv.publish(&r.ram, 0);
        // A nested indirect table.
        let t = r.drv.alloc(32);
        r.ram.poke(t, &desc_bytes(t, 16, VIRTQ_DESC_F_INDIRECT, 0));
        r.drv.set_desc(&r.ram, 2, t, 16, VIRTQ_DESC_F_INDIRECT, 0);
        r.drv.publish(&r.ram, 2);
        // A head out of range: dropped.
        r.drv.publish(&r.ram, 99);
        r.writes_outside_used();
        let p = r.run();
        assert_eq!((p.completed, p.rejected), (2, 2));
        assert_eq!(r.drv.take_used(&r.ram), [(0, 0), (2, 0)]);
        assert_eq!(r.writes_outside_used(), []);
        // avail.idx jumping: fatal, reported.
        r.ram
            .poke_u16(r.drv.avail + 2, r.drv.avail_idx.wrapping_add(17));
        let e = r
            .dev
            .process_all(&mut r.q, &r.ram, &mut r.disk, ALL)
            .unwrap_err();
        assert!(e.is_fatal());
        // Writable status before readable data with the descriptors in an
        // indirect table.
        let mut r = Rig::new(false, true);
        let st = r.drv.alloc(1);
        let w_first = [
            desc_bytes(st, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1),
            desc_bytes(h, 16, 0, 0),
        ];
        let t = r.drv.alloc(32);
        r.ram.poke(t, &w_first[0]);
        r.ram.poke(t + 16, &w_first[1]);
        r.drv.set_desc(&r.ram, 0, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
        r.drv.publish(&r.ram, 0);
        let p = r.run();
        assert_eq!(p.rejected, 1);
        assert_eq!(r.drv.take_used(&r.ram), [(0, 0)]);
    }

    #[test]
    fn completion_writes_only_what_was_validated() {
        let mut r = Rig::new(false, false);
        r.disk.data[..512].fill(0x11);
        let (head, data, st) = r.request(VIRTIO_BLK_T_IN, 0, 512, true);
        let chain = r.q.pop(&r.ram).unwrap().unwrap();
        let Parsed::Request(req) = r.dev.parse(&chain, &r.ram, ALL) else {
            panic!("valid request");
        };
        // The driver redirects data and status, and makes them huge.
        let elsewhere = r.drv.alloc(4096);
        r.drv.set_desc(
            &r.ram,
            head + 1,
            elsewhere,
            u32::MAX,
            VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
            head + 2,
        );
        r.drv
            .set_desc(&r.ram, head + 2, elsewhere, 4096, VIRTQ_DESC_F_WRITE, 0);
        r.writes_outside_used();
        complete(req, Ok(vec![0x11; 512]), &r.ram, &mut r.q).unwrap();
        assert_eq!(r.writes_outside_used(), [(data, 512), (st, 1)]);
        assert_eq!(r.ram.peek(elsewhere, 4096), [0; 4096]);
        assert_eq!(r.drv.take_used(&r.ram), [(u32::from(head), 513)]);

        // OUT data is copied at parse time.
        let (_, data, _) = r.request(VIRTIO_BLK_T_OUT, 2, 512, false);
        r.ram.poke(data, &[0x22; 512]);
        let chain = r.q.pop(&r.ram).unwrap().unwrap();
        let parsed = r.dev.parse(&chain, &r.ram, ALL);
        r.ram.poke(data, &[0x33; 512]);
        let Parsed::Request(req) = parsed else {
            panic!("valid request");
        };
        assert_eq!(
            req.kind,
            RequestKind::Out {
                sector: 2,
                data: vec![0x22; 512]
            }
        );

        // A backend answering with too much or too little.
        let (_, data, st) = r.request(VIRTIO_BLK_T_IN, 0, 512, true);
        let chain = r.q.pop(&r.ram).unwrap().unwrap();
        let Parsed::Request(req) = r.dev.parse(&chain, &r.ram, ALL) else {
            panic!("valid request");
        };
        r.writes_outside_used();
        complete(req, Ok(vec![0x44; 100_000]), &r.ram, &mut r.q).unwrap();
        assert_eq!(r.writes_outside_used(), [(data, 512), (st, 1)]);
        assert_eq!(r.status(st), VIRTIO_BLK_S_OK);
        let (_, data, st) = r.request(VIRTIO_BLK_T_IN, 0, 512, true);
        let chain = r.q.pop(&r.ram).unwrap().unwrap();
        let Parsed::Request(req) = r.dev.parse(&chain, &r.ram, ALL) else {
            panic!("valid request");
        };
        complete(req, Ok(vec![0x55; 10]), &r.ram, &mut r.q).unwrap();
        assert_eq!(r.status(st), VIRTIO_BLK_S_IOERR);
        assert_eq!(
            r.ram.peek(data, 11),
            [0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0]
        );
        let used = r.drv.take_used(&r.ram);
        assert_eq!(used[used.len() - 1].1, 11);
    }

    #[test]
    fn budget_and_notification() {
        let mut r = Rig::new(true, false);
        let used_event = r.drv.avail + 4 + 2 * 16;
        for _ in 0..20 {
            r.request(VIRTIO_BLK_T_FLUSH, 0, 0, false);
            // The ring holds 16: complete as we go.
            if r.drv.avail_idx.is_multiple_of(8) {
                // The driver wants to hear after the 10th.
                r.ram.poke_u16(used_event, 9);
                let p = r.run();
                assert!(!p.more);
                assert_eq!(p.notify, r.drv.avail_idx == 16);
            }
        }
        for _ in 0..16 {
            r.request(VIRTIO_BLK_T_FLUSH, 0, 0, false);
        }
        // No ring slots were left: 4 pending + 16 new is over size, but
        // the driver overwrote its own unconsumed entries; we see 20
        // pending, which is a jump.
        assert!(r
            .dev
            .process_all(&mut r.q, &r.ram, &mut r.disk, ALL)
            .is_err());

        let mut r = Rig::new(false, false);
        for _ in 0..16 {
            r.request(VIRTIO_BLK_T_FLUSH, 0, 0, false);
        }
        let p = r.run();
        assert_eq!((p.completed, p.more, p.notify), (16, true, true));
        let p = r.run();
        assert_eq!((p.completed, p.more, p.notify), (0, false, false));
    }

    /// xorshift64*: the proptest picks the seed, this the bytes.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    const SOUP: usize = 0x4000;

    /// 16 bytes that look like a descriptor, a request header or noise.
    fn record(rng: &mut Rng, size: u16) -> [u8; 16] {
        let mut b = [0u8; 16];
        match rng.below(3) {
            0 => {
                let addr = match rng.below(8) {
                    0 => rng.next(),
                    1 => BASE + SOUP as u64 - rng.below(64),
                    _ => BASE + rng.below(SOUP as u64),
                };
                let len = match rng.below(8) {
                    0 => u32::MAX,
                    1 => rng.next() as u32,
                    2 => 512 * rng.below(4) as u32,
                    3 => 16 * rng.below(8) as u32,
                    _ => rng.below(600) as u32,
                };
                let flags = rng.below(8) as u16;
                let next = rng.below(u64::from(size) + 1) as u16;
                b = desc_bytes(addr, len, flags, next);
            }
            1 => {
                let ty = [0, 1, 4, 8, 2, rng.next() as u32][rng.below(6) as usize];
                b[..4].copy_from_slice(&ty.to_le_bytes());
                let sector = if rng.below(8) == 0 {
                    rng.next()
                } else {
                    rng.below(20)
                };
                b[8..].copy_from_slice(&sector.to_le_bytes());
            }
            _ => b.iter_mut().for_each(|x| *x = rng.next() as u8),
        }
        b
    }

    /// The driver's half of the fuzz: adds a request shaped as Linux
    /// does (buffers anywhere in the window, descriptors at random
    /// indices, sometimes through an indirect table) for the scribbles to
    /// corrupt.
    fn add_request(ram: &Ram, drv: &Driver, rng: &mut Rng, avail_idx: &mut u16) {
        let size = drv.size;
        let spot = |rng: &mut Rng, len: u64| {
            let room = (SOUP as u64).saturating_sub(len).max(1);
            BASE + (rng.below(room) & !15)
        };
        let ty = [0, 1, 4, 8, 3][rng.below(5) as usize];
        let sector = rng.below(20);
        let len = match rng.below(6) {
            0 => rng.below(600),
            5 => 20,
            n => 512 * n,
        } as u32;
        let h = spot(rng, 16);
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&(ty as u32).to_le_bytes());
        hdr[8..].copy_from_slice(&sector.to_le_bytes());
        ram.poke(h, &hdr);
        let mut bufs: Vec<Buf> = vec![(h, 16, false)];
        let writable = ty != 1;
        let pieces = 1 + rng.below(3) as u32;
        if len > 0 {
            let d = spot(rng, u64::from(len));
            let step = len / pieces;
            for k in 0..pieces {
                let n = if k + 1 == pieces {
                    len - step * k
                } else {
                    step
                };
                bufs.push((d + u64::from(step * k), n, writable));
            }
        }
        bufs.push((spot(rng, 1), 1, true));
        let link = |k: usize, n: usize, w: bool, next: u16| {
            let mut f = if w { VIRTQ_DESC_F_WRITE } else { 0 };
            if k + 1 < n {
                f |= VIRTQ_DESC_F_NEXT;
            }
            (f, next)
        };
        let head;
        if rng.below(3) == 0 {
            let t = spot(rng, 16 * bufs.len() as u64);
            for (k, &(a, l, w)) in bufs.iter().enumerate() {
                let (f, next) = link(k, bufs.len(), w, (k + 1) as u16);
                ram.poke(t + 16 * k as u64, &desc_bytes(a, l, f, next));
            }
            head = rng.below(u64::from(size)) as u16;
            drv.set_desc(
                ram,
                head,
                t,
                16 * bufs.len() as u32,
                VIRTQ_DESC_F_INDIRECT,
                0,
            );
        } else {
            let idx: Vec<u16> = (0..bufs.len())
                .map(|_| rng.below(u64::from(size)) as u16)
                .collect();
            for (k, &(a, l, w)) in bufs.iter().enumerate() {
                let (f, next) = link(k, bufs.len(), w, idx.get(k + 1).copied().unwrap_or(0));
                drv.set_desc(ram, idx[k], a, l, f, next);
            }
            head = idx[0];
        }
        ram.poke_u16(drv.avail + 4 + 2 * u64::from(*avail_idx % size), head);
        *avail_idx = avail_idx.wrapping_add(1);
        ram.poke_u16(drv.avail + 2, *avail_idx);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// A window full of hostile bytes, changing under the device:
        /// pop/parse/complete never panic, never write outside the used
        /// ring and the writable buffers of chains popped, and every used
        /// id is a head that was popped and not yet returned.
        #[test]
        fn hostile_window(
            seed in any::<u64>(),
            size_log in 0u32..=6,
            event_idx in any::<bool>(),
            indirect in any::<bool>(),
            features in any::<u64>(),
            steps in 1usize..400,
        ) {
            let mut rng = Rng(seed | 1);
            let ram = Ram::new(SOUP);
            let size = 1u16 << size_log;
            let drv = Driver::new(&ram, size);
            for k in 0..SOUP / 16 {
                ram.poke(BASE + 16 * k as u64, &record(&mut rng, size));
            }
            let mut q = drv.queue(&ram, event_idx, indirect);
            // Mostly a believable avail.idx (as many entries as we add),
            // sometimes anything.
            let mut avail_idx = rng.below(u64::from(size) + 1) as u16;
            ram.poke_u16(drv.avail + 2, avail_idx);
            let dev = BlkDevice::new(16, BlockSize::B512).with_limits(4096, 4);
            let negotiated = features & DEVICE_FEATURES;
            let used_area = (drv.used, drv.used + 6 + 8 * u64::from(size));
            let mut allowed: Vec<(u64, u64)> = vec![used_area];
            let mut outstanding: BTreeMap<u16, u32> = BTreeMap::new();
            let mut pending: Vec<Request> = Vec::new();

            // After each push: the entry just written names an outstanding head.
            let check_push = |q: &SplitQueue, ram: &Ram, outstanding: &mut BTreeMap<u16, u32>| {
                let slot = q.used_idx().wrapping_sub(1) & (size - 1);
                let id = ram.peek_u32(drv.used + 4 + 8 * u64::from(slot));
                let n = outstanding.get_mut(&(id as u16)).filter(|_| id < u32::from(size));
                assert!(n.as_ref().is_some_and(|n| **n > 0), "used id {id} never popped");
                *n.unwrap() -= 1;
            };

            for _ in 0..steps {
                match rng.below(10) {
                    0..=3 => match q.pop(&ram) {
                        Ok(Some(chain)) => {
                            *outstanding.entry(chain.head).or_default() += 1;
                            for s in chain.writable() {
                                allowed.push((s.addr, s.addr.saturating_add(u64::from(s.len))));
                            }
                            match dev.parse(&chain, &ram, negotiated) {
                                Parsed::Request(req) => pending.push(req),
                                Parsed::Immediate(imm) => {
                                    complete_immediate(&imm, &ram, &mut q).unwrap();
                                    check_push(&q, &ram, &mut outstanding);
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            if let Some(head) = e.head() {
                                *outstanding.entry(head).or_default() += 1;
                                q.push_used(&ram, head, 0).unwrap();
                                check_push(&q, &ram, &mut outstanding);
                            }
                            if e.is_fatal() {
                                // What a reset would do: start over.
                                avail_idx = q.last_avail();
                                ram.poke_u16(drv.avail + 2, avail_idx);
                            }
                        }
                    },
                    4 | 5 if !pending.is_empty() => {
                        let req = pending.swap_remove(rng.below(pending.len() as u64) as usize);
                        let result = match rng.below(4) {
                            0 => Err(IoError),
                            _ => Ok(vec![0xee; rng.below(5000) as usize]),
                        };
                        complete(req, result, &ram, &mut q).unwrap();
                        check_push(&q, &ram, &mut outstanding);
                    }
                    6 => {
                        // The driver scribbles anywhere, rings included.
                        for _ in 0..rng.below(4) {
                            let at = BASE + 16 * rng.below(SOUP as u64 / 16);
                            ram.poke(at, &record(&mut rng, size));
                        }
                    }
                    7 => {
                        // avail.idx anywhere.
                        avail_idx = rng.next() as u16;
                        ram.poke_u16(drv.avail + 2, avail_idx);
                    }
                    _ => add_request(&ram, &drv, &mut rng, &mut avail_idx),
                }
            }
            for req in pending.drain(..) {
                complete(req, Ok(Vec::new()), &ram, &mut q).unwrap();
                check_push(&q, &ram, &mut outstanding);
            }
            prop_assert_eq!(ram.bad_writes.get(), 0);
            for &(addr, len) in ram.log.borrow().iter() {
                let end = addr + len as u64;
                prop_assert!(
                    allowed.iter().any(|&(a, b)| a <= addr && end <= b),
                    "device wrote {:#x}+{} outside what it may", addr, len
                );
            }
        }
    }
}
