//! Split virtqueues, device side (virtio 1.2 §2.7).
//!
//! The driver (a client VM we do not trust) owns three areas in its RAM:
//! the descriptor table, the available ring and the used ring. The device
//! reads the first two and writes the third. Everything read is guest data:
//! each value is read once into a local (the driver may change memory at
//! any moment; decisions are made on the copy), every index is checked
//! against the queue size, every chain is bounded, and no length read from
//! the guest sizes an allocation except an indirect table, itself bounded
//! by [`MAX_INDIRECT_DESCS`].
//!
//! Use: [`SplitQueue::pop`] until it returns `Ok(None)` (with
//! `VIRTIO_F_EVENT_IDX`, that is where the next notification is re-armed),
//! complete each [`Chain`] with [`SplitQueue::push_used`], then ask
//! [`SplitQueue::needs_notify`] whether to interrupt the driver.
//!
//! Memory ordering: [`GuestRam`] is plain memory shared with the driver's
//! CPUs, so the barriers the protocol needs (§2.7.13, §2.7.8, §2.7.10)
//! are issued here as fences around the `GuestRam` accesses.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{fence, Ordering};

use crate::GuestRam;

/// §2.7.5: the buffer continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// §2.7.5: device-writable buffer (otherwise device-readable).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// §2.7.5.3: the buffer is a table of descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// §2.7.7: the driver asks not to be interrupted (ignored with EVENT_IDX).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// §2.7: the largest split queue (`Queue Size` is at most 32768).
pub const MAX_QUEUE_SIZE: u32 = 32768;
/// Largest indirect table accepted, in descriptors. The spec bounds a
/// chain by the queue size (§2.7.5.3.1), but Linux sizes indirect tables
/// by the request's segments, not the ring, so a fixed bound (the same as
/// QEMU's and vhost's 1024) keeps both honest drivers working and the
/// table copy small (16 KiB).
pub const MAX_INDIRECT_DESCS: u32 = 1024;
/// Upper bound of the sum of a chain's buffer lengths. Nothing is
/// allocated from it (a [`Chain`] only records segments); it keeps totals
/// far from overflow and rejects absurd chains early. Device models apply
/// their own, much tighter limits.
pub const MAX_CHAIN_BYTES: u64 = 1 << 34;

const DESC_SIZE: u64 = 16;

/// Which memory an error is about, for logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// The descriptor table (§2.7.5).
    Desc,
    /// The available ring (§2.7.6).
    Avail,
    /// The used ring (§2.7.8).
    Used,
}

/// Why a descriptor chain was refused (§2.7.4, §2.7.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainFault {
    /// `next` is not below the queue size (or the indirect table length).
    NextOutOfRange { next: u16 },
    /// More descriptors than the table holds: the chain loops.
    TooLong { limit: u32 },
    /// `VIRTQ_DESC_F_INDIRECT` without `VIRTIO_F_INDIRECT_DESC`.
    IndirectNotNegotiated,
    /// Indirect table length zero, not a multiple of 16, or over
    /// [`MAX_INDIRECT_DESCS`] entries (§2.7.5.3.1).
    IndirectLen { len: u32 },
    /// `VIRTQ_DESC_F_INDIRECT` together with `VIRTQ_DESC_F_NEXT`
    /// (§2.7.5.3.1).
    IndirectWithNext,
    /// An indirect table entry is itself indirect (§2.7.5.3.1).
    NestedIndirect,
    /// The indirect table is outside the window.
    IndirectOutOfWindow { addr: u64, len: u32 },
    /// A device-readable descriptor after a device-writable one (§2.7.4.2).
    ReadableAfterWritable,
    /// `addr + len` overflows.
    AddrOverflow { addr: u64, len: u32 },
    /// The buffers add up to more than [`MAX_CHAIN_BYTES`].
    TooManyBytes,
}

/// A virtqueue error: what went wrong and where, for rate-limited logging.
/// No memory content makes the queue code panic; it returns one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Queue size not a power of 2 in `1..=32768` (§2.7).
    BadSize { size: u32 },
    /// A ring area misaligned (§2.7, alignment table).
    Misaligned { area: Area, addr: u64 },
    /// A ring area (or part of it) outside the window, or wrapping the
    /// address space.
    AreaOutOfWindow { area: Area, addr: u64, len: u64 },
    /// `avail.idx` moved more than the queue size past what we consumed:
    /// the driver rewrote it or lies.
    AvailIdxJump { avail_idx: u16, last_avail: u16 },
    /// New buffers while `size` chains are already outstanding: a driver
    /// can only have that many (each holds a descriptor), so it reuses
    /// descriptors it has not got back.
    TooManyInFlight { in_flight: u32 },
    /// The avail ring entry names a head not below the queue size. The
    /// entry is consumed; there is nothing to return to the driver.
    HeadOutOfRange { slot: u16, head: u16 },
    /// A malformed chain. The avail entry is consumed; `head` is valid and
    /// may be returned with [`SplitQueue::push_used`] (length 0).
    /// `index` is the descriptor where it was found, in the indirect table
    /// if `indirect`.
    BadChain {
        head: u16,
        index: u16,
        indirect: bool,
        fault: ChainFault,
    },
    /// `push_used` with an id not below the queue size.
    UsedIdOutOfRange { id: u16 },
    /// A buffer access outside the window.
    BufferOutOfWindow { addr: u64, len: u64 },
    /// A buffer access past the end of the segments.
    BufferTooShort { have: u64, want: u64 },
}

impl QueueError {
    /// The queue can no longer be trusted: the device should set
    /// `DEVICE_NEEDS_RESET` (§2.1.2) and stop processing it. Other errors
    /// concern one chain or one buffer.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            QueueError::BadSize { .. }
                | QueueError::Misaligned { .. }
                | QueueError::AreaOutOfWindow { .. }
                | QueueError::AvailIdxJump { .. }
                | QueueError::TooManyInFlight { .. }
        )
    }

    /// The chain head an error leaves outstanding, to be returned to the
    /// driver (used length 0) so that it does not wait for it forever.
    pub fn head(&self) -> Option<u16> {
        match self {
            QueueError::BadChain { head, .. } => Some(*head),
            _ => None,
        }
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::BadSize { size } => {
                write!(f, "queue size {size} not a power of 2 <= 32768")
            }
            QueueError::Misaligned { area, addr } => {
                write!(f, "{area:?} area at {addr:#x} misaligned")
            }
            QueueError::AreaOutOfWindow { area, addr, len } => {
                write!(f, "{area:?} area {addr:#x}+{len:#x} outside guest RAM")
            }
            QueueError::AvailIdxJump {
                avail_idx,
                last_avail,
            } => write!(f, "avail.idx {avail_idx} too far past {last_avail}"),
            QueueError::TooManyInFlight { in_flight } => {
                write!(f, "new buffers with {in_flight} chains outstanding")
            }
            QueueError::HeadOutOfRange { slot, head } => {
                write!(f, "avail.ring[{slot}] = {head} out of range")
            }
            QueueError::BadChain {
                head,
                index,
                indirect,
                fault,
            } => write!(
                f,
                "chain {head}: {}descriptor {index}: {fault:?}",
                if *indirect { "indirect " } else { "" }
            ),
            QueueError::UsedIdOutOfRange { id } => write!(f, "used id {id} out of range"),
            QueueError::BufferOutOfWindow { addr, len } => {
                write!(f, "buffer {addr:#x}+{len:#x} outside guest RAM")
            }
            QueueError::BufferTooShort { have, want } => {
                write!(f, "buffer of {have} bytes, {want} needed")
            }
        }
    }
}

/// One buffer of a chain: guest-physical `[addr, addr + len)`, which does
/// not wrap. Not yet checked against the window: accesses through
/// [`read_segments`] / [`write_segments`] are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

/// A validated descriptor chain: indirect tables flattened, readable
/// segments first (§2.7.4.2). A snapshot: the driver rewriting the
/// descriptors afterwards changes nothing here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The head descriptor index, the id to return in the used ring.
    pub head: u16,
    pub segments: Vec<Segment>,
}

impl Chain {
    /// The device-readable segments (all before the writable ones).
    pub fn readable(&self) -> &[Segment] {
        &self.segments[..self.split()]
    }

    /// The device-writable segments.
    pub fn writable(&self) -> &[Segment] {
        &self.segments[self.split()..]
    }

    /// Total length of the device-readable part.
    pub fn readable_len(&self) -> u64 {
        total_len(self.readable())
    }

    /// Total length of the device-writable part.
    pub fn writable_len(&self) -> u64 {
        total_len(self.writable())
    }

    /// Copies `buf.len()` bytes from offset `offset` of the readable part.
    pub fn read_readable(
        &self,
        mem: &impl GuestRam,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), QueueError> {
        read_segments(mem, self.readable(), offset, buf)
    }

    /// Copies `data` to offset `offset` of the writable part.
    pub fn write_writable(
        &self,
        mem: &impl GuestRam,
        offset: u64,
        data: &[u8],
    ) -> Result<(), QueueError> {
        write_segments(mem, self.writable(), offset, data)
    }

    fn split(&self) -> usize {
        self.segments
            .iter()
            .position(|s| s.writable)
            .unwrap_or(self.segments.len())
    }
}

/// Sum of the segment lengths (cannot overflow: at most `u32::MAX` per
/// segment, and chains are bounded).
pub fn total_len(segs: &[Segment]) -> u64 {
    segs.iter()
        .fold(0u64, |acc, s| acc.saturating_add(u64::from(s.len)))
}

/// Walks `segs` from byte `offset` for `want` bytes, calling `f(addr,
/// start, n)` for each piece: `n` bytes at guest `addr`, at `start` in the
/// caller's buffer.
fn for_pieces(
    segs: &[Segment],
    offset: u64,
    want: usize,
    mut f: impl FnMut(u64, usize, usize) -> Result<(), QueueError>,
) -> Result<(), QueueError> {
    let have = total_len(segs);
    let want64 = want as u64;
    if offset.checked_add(want64).is_none_or(|end| end > have) {
        return Err(QueueError::BufferTooShort {
            have,
            want: offset.saturating_add(want64),
        });
    }
    let mut skip = offset;
    let mut done = 0usize;
    for s in segs {
        if done == want {
            break;
        }
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        // Fits in usize: bounded by `want - done`.
        let n = (len - skip).min((want - done) as u64) as usize;
        // No wrap: `addr + len` was checked when the chain was walked.
        let addr = s
            .addr
            .checked_add(skip)
            .ok_or(QueueError::BufferOutOfWindow { addr: s.addr, len })?;
        f(addr, done, n)?;
        done += n;
        skip = 0;
    }
    Ok(())
}

/// Copies `buf.len()` bytes starting at byte `offset` of the concatenated
/// segments into `buf`, one window access per segment piece.
pub fn read_segments(
    mem: &impl GuestRam,
    segs: &[Segment],
    offset: u64,
    buf: &mut [u8],
) -> Result<(), QueueError> {
    let want = buf.len();
    for_pieces(segs, offset, want, |addr, start, n| {
        let piece = buf
            .get_mut(start..start + n)
            .ok_or(QueueError::BufferTooShort {
                have: want as u64,
                want: (start + n) as u64,
            })?;
        mem.read(addr, piece)
            .map_err(|e| QueueError::BufferOutOfWindow {
                addr: e.addr,
                len: e.len,
            })
    })
}

/// Copies `data` to byte `offset` of the concatenated segments.
pub fn write_segments(
    mem: &impl GuestRam,
    segs: &[Segment],
    offset: u64,
    data: &[u8],
) -> Result<(), QueueError> {
    for_pieces(segs, offset, data.len(), |addr, start, n| {
        let piece = data
            .get(start..start + n)
            .ok_or(QueueError::BufferTooShort {
                have: data.len() as u64,
                want: (start + n) as u64,
            })?;
        mem.write(addr, piece)
            .map_err(|e| QueueError::BufferOutOfWindow {
                addr: e.addr,
                len: e.len,
            })
    })
}

/// §2.7.10 `vring_need_event`: whether moving the index from `old` to
/// `new` crossed `event` (the index the other side asked to hear about).
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// One descriptor as read (§2.7.5), a local copy.
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl Desc {
    fn from_bytes(b: &[u8; 16]) -> Desc {
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = *b;
        Desc {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        }
    }
}

/// What the walk accumulates across the direct chain and its indirect
/// table.
struct Walk {
    segments: Vec<Segment>,
    total: u64,
    seen_writable: bool,
}

impl Walk {
    fn add(&mut self, d: &Desc) -> Result<(), ChainFault> {
        if d.addr.checked_add(u64::from(d.len)).is_none() {
            return Err(ChainFault::AddrOverflow {
                addr: d.addr,
                len: d.len,
            });
        }
        let writable = d.flags & VIRTQ_DESC_F_WRITE != 0;
        if !writable && self.seen_writable {
            return Err(ChainFault::ReadableAfterWritable);
        }
        self.seen_writable |= writable;
        self.total = self
            .total
            .checked_add(u64::from(d.len))
            .filter(|&t| t <= MAX_CHAIN_BYTES)
            .ok_or(ChainFault::TooManyBytes)?;
        self.segments.push(Segment {
            addr: d.addr,
            len: d.len,
            writable,
        });
        Ok(())
    }
}

/// A split virtqueue as the device drives it (§2.7).
#[derive(Clone, Debug)]
pub struct SplitQueue {
    /// Power of 2, 1..=32768.
    size: u16,
    /// `size - 1`: ring slots are free-running indices masked by it.
    mask: u16,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
    indirect: bool,
    /// Next avail ring entry to consume (free-running, §2.7.6).
    last_avail: u16,
    /// Next used ring entry to fill, also the value published in used.idx.
    used_idx: u16,
    /// Chains popped (or refused with a head) and not yet pushed back.
    in_flight: u32,
}

impl SplitQueue {
    /// A queue of `size` entries at the given guest-physical areas, as the
    /// driver configured them (§4.2.2: QueueNum, QueueDesc, QueueDriver,
    /// QueueDevice). `event_idx`: `VIRTIO_F_EVENT_IDX` negotiated.
    ///
    /// Checks the size (§2.7: a power of 2, at most 32768), the alignment
    /// (§2.7 table: 16, 2, 4) and that each area lies in the window (probe
    /// reads of its first and last byte; later accesses are still checked).
    /// Indirect descriptors are refused until [`Self::with_indirect`].
    pub fn new(
        size: u32,
        desc_addr: u64,
        avail_addr: u64,
        used_addr: u64,
        event_idx: bool,
        mem: &impl GuestRam,
    ) -> Result<Self, QueueError> {
        if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
            return Err(QueueError::BadSize { size });
        }
        let n = u64::from(size);
        let ev = if event_idx { 2 } else { 0 };
        let areas = [
            (Area::Desc, desc_addr, 16, DESC_SIZE * n),
            (Area::Avail, avail_addr, 2, 4 + 2 * n + ev),
            (Area::Used, used_addr, 4, 4 + 8 * n + ev),
        ];
        for (area, addr, align, len) in areas {
            if !addr.is_multiple_of(align) {
                return Err(QueueError::Misaligned { area, addr });
            }
            let out = QueueError::AreaOutOfWindow { area, addr, len };
            let last = addr.checked_add(len - 1).ok_or(out)?;
            let mut b = [0u8; 1];
            mem.read(addr, &mut b).map_err(|_| out)?;
            mem.read(last, &mut b).map_err(|_| out)?;
        }
        // `size` <= 32768 fits u16.
        let size = size as u16;
        Ok(SplitQueue {
            size,
            mask: size - 1,
            desc: desc_addr,
            avail: avail_addr,
            used: used_addr,
            event_idx,
            indirect: false,
            last_avail: 0,
            used_idx: 0,
            in_flight: 0,
        })
    }

    /// Accept `VIRTQ_DESC_F_INDIRECT` (`VIRTIO_F_INDIRECT_DESC`
    /// negotiated, §2.7.5.3).
    pub fn with_indirect(mut self, indirect: bool) -> Self {
        self.indirect = indirect;
        self
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// The used index published so far: pass it (taken before a batch of
    /// [`Self::push_used`]) to [`Self::needs_notify`].
    pub fn used_idx(&self) -> u16 {
        self.used_idx
    }

    /// The next avail ring entry to consume.
    pub fn last_avail(&self) -> u16 {
        self.last_avail
    }

    /// Chains handed out and not yet returned.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Takes the next available chain, walked and checked, or `None` if
    /// the driver has not made one available.
    ///
    /// After a fatal error ([`QueueError::is_fatal`]) the queue is not to
    /// be used again (a corrupt avail ring consumes nothing and repeats).
    /// Other errors consume the avail entry, so a bad chain cannot stall
    /// the queue; a [`QueueError::BadChain`] leaves its head outstanding.
    pub fn pop(&mut self, mem: &impl GuestRam) -> Result<Option<Chain>, QueueError> {
        let mut avail_idx = self.read_u16(mem, Area::Avail, self.avail, 2)?;
        if avail_idx == self.last_avail {
            if !self.event_idx {
                return Ok(None);
            }
            // §2.7.10: ask for a notification at the next entry, then look
            // again: the store must be visible before the load (full
            // barrier; the driver has one between its idx store and its
            // avail_event load), or a buffer added in between would get
            // neither a kick nor our attention.
            let at = 4 + 8 * u64::from(self.size);
            self.write_u16(mem, Area::Used, self.used, at, self.last_avail)?;
            fence(Ordering::SeqCst);
            avail_idx = self.read_u16(mem, Area::Avail, self.avail, 2)?;
            if avail_idx == self.last_avail {
                return Ok(None);
            }
        }
        if avail_idx.wrapping_sub(self.last_avail) > self.size {
            return Err(QueueError::AvailIdxJump {
                avail_idx,
                last_avail: self.last_avail,
            });
        }
        if self.in_flight >= u32::from(self.size) {
            return Err(QueueError::TooManyInFlight {
                in_flight: self.in_flight,
            });
        }
        // The driver writes the ring entry and descriptors before avail.idx
        // (§2.7.13): read them only after the idx.
        fence(Ordering::Acquire);
        let slot = self.last_avail & self.mask;
        let head = self.read_u16(mem, Area::Avail, self.avail, 4 + 2 * u64::from(slot))?;
        self.last_avail = self.last_avail.wrapping_add(1);
        if head >= self.size {
            return Err(QueueError::HeadOutOfRange { slot, head });
        }
        self.in_flight += 1;
        self.walk(mem, head).map(Some)
    }

    /// Walks the chain at `head` (§2.7.5), flattening one indirect table.
    fn walk(&self, mem: &impl GuestRam, head: u16) -> Result<Chain, QueueError> {
        let bad = |index: u16, indirect: bool, fault: ChainFault| QueueError::BadChain {
            head,
            index,
            indirect,
            fault,
        };
        let mut w = Walk {
            segments: Vec::new(),
            total: 0,
            seen_writable: false,
        };
        let mut index = head;
        let mut count: u32 = 0;
        loop {
            // A chain visits each descriptor at most once, so more than
            // `size` of them means a loop.
            count += 1;
            if count > u32::from(self.size) {
                return Err(bad(
                    index,
                    false,
                    ChainFault::TooLong {
                        limit: u32::from(self.size),
                    },
                ));
            }
            let d = self.read_desc(mem, index)?;
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if !self.indirect {
                    return Err(bad(index, false, ChainFault::IndirectNotNegotiated));
                }
                if d.flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(bad(index, false, ChainFault::IndirectWithNext));
                }
                self.walk_indirect(mem, &d, &mut w)
                    .map_err(|(i, fault)| bad(i, true, fault))?;
                break;
            }
            w.add(&d).map_err(|fault| bad(index, false, fault))?;
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            if d.next >= self.size {
                return Err(bad(
                    index,
                    false,
                    ChainFault::NextOutOfRange { next: d.next },
                ));
            }
            index = d.next;
        }
        Ok(Chain {
            head,
            segments: w.segments,
        })
    }

    /// §2.7.5.3: the table is copied in one read (bounded by
    /// [`MAX_INDIRECT_DESCS`]) and walked from entry 0 in the copy.
    /// The WRITE flag of the descriptor naming the table is ignored
    /// (§2.7.5.3.2).
    fn walk_indirect(
        &self,
        mem: &impl GuestRam,
        d: &Desc,
        w: &mut Walk,
    ) -> Result<(), (u16, ChainFault)> {
        let bad_len = (0, ChainFault::IndirectLen { len: d.len });
        if d.len == 0 || !u64::from(d.len).is_multiple_of(DESC_SIZE) {
            return Err(bad_len);
        }
        let entries = d.len / 16;
        if entries > MAX_INDIRECT_DESCS {
            return Err(bad_len);
        }
        // At most 16 KiB.
        let mut table = vec![0u8; d.len as usize];
        mem.read(d.addr, &mut table).map_err(|_| {
            (
                0,
                ChainFault::IndirectOutOfWindow {
                    addr: d.addr,
                    len: d.len,
                },
            )
        })?;
        let mut index: u16 = 0;
        let mut count: u32 = 0;
        loop {
            count += 1;
            if count > entries {
                return Err((index, ChainFault::TooLong { limit: entries }));
            }
            // `index` < `entries` (entry 0 exists, `next` checked below).
            let at = usize::from(index) * 16;
            let entry = table
                .get(at..at + 16)
                .and_then(|c| <&[u8; 16]>::try_from(c).ok())
                .ok_or((index, ChainFault::NextOutOfRange { next: index }))?;
            let e = Desc::from_bytes(entry);
            if e.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                return Err((index, ChainFault::NestedIndirect));
            }
            w.add(&e).map_err(|fault| (index, fault))?;
            if e.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(());
            }
            if u32::from(e.next) >= entries {
                return Err((index, ChainFault::NextOutOfRange { next: e.next }));
            }
            index = e.next;
        }
    }

    /// Returns chain `head` to the driver with `written_len` bytes written
    /// into its device-writable buffers (§2.7.8).
    pub fn push_used(
        &mut self,
        mem: &impl GuestRam,
        head: u16,
        written_len: u32,
    ) -> Result<(), QueueError> {
        if head >= self.size {
            return Err(QueueError::UsedIdOutOfRange { id: head });
        }
        let slot = self.used_idx & self.mask;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&written_len.to_le_bytes());
        let at = 4 + 8 * u64::from(slot);
        self.write_at(mem, Area::Used, self.used, at, &elem)?;
        // §2.7.8.2: the ring entry (with its len) must be visible before the
        // idx that publishes it.
        fence(Ordering::Release);
        let next = self.used_idx.wrapping_add(1);
        self.write_u16(mem, Area::Used, self.used, 2, next)?;
        self.used_idx = next;
        self.in_flight = self.in_flight.saturating_sub(1);
        Ok(())
    }

    /// Whether the driver wants an interrupt for the used entries published
    /// since `old_used_idx` (§2.7.7, §2.7.10). A failed read answers `true`:
    /// a spurious interrupt is harmless, a missing one hangs the driver.
    pub fn needs_notify(&self, mem: &impl GuestRam, old_used_idx: u16) -> bool {
        // The used.idx store must be visible before we read the driver's
        // suppression state, which it writes before re-reading used.idx.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let at = 4 + 2 * u64::from(self.size);
            match self.read_u16(mem, Area::Avail, self.avail, at) {
                Ok(used_event) => vring_need_event(used_event, self.used_idx, old_used_idx),
                Err(_) => true,
            }
        } else {
            match self.read_u16(mem, Area::Avail, self.avail, 0) {
                Ok(flags) => flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0,
                Err(_) => true,
            }
        }
    }

    fn read_desc(&self, mem: &impl GuestRam, index: u16) -> Result<Desc, QueueError> {
        let mut b = [0u8; 16];
        self.read_at(
            mem,
            Area::Desc,
            self.desc,
            DESC_SIZE * u64::from(index),
            &mut b,
        )?;
        Ok(Desc::from_bytes(&b))
    }

    fn read_u16(
        &self,
        mem: &impl GuestRam,
        area: Area,
        base: u64,
        off: u64,
    ) -> Result<u16, QueueError> {
        let mut b = [0u8; 2];
        self.read_at(mem, area, base, off, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn write_u16(
        &self,
        mem: &impl GuestRam,
        area: Area,
        base: u64,
        off: u64,
        v: u16,
    ) -> Result<(), QueueError> {
        self.write_at(mem, area, base, off, &v.to_le_bytes())
    }

    fn read_at(
        &self,
        mem: &impl GuestRam,
        area: Area,
        base: u64,
        off: u64,
        buf: &mut [u8],
    ) -> Result<(), QueueError> {
        let out = QueueError::AreaOutOfWindow {
            area,
            addr: base,
            len: off.saturating_add(buf.len() as u64),
        };
        // In range by construction (`new` checked the whole area), but a
        // checked add costs nothing and keeps this panic-free regardless.
        let addr = base.checked_add(off).ok_or(out)?;
        mem.read(addr, buf).map_err(|_| out)
    }

    fn write_at(
        &self,
        mem: &impl GuestRam,
        area: Area,
        base: u64,
        off: u64,
        buf: &[u8],
    ) -> Result<(), QueueError> {
        let out = QueueError::AreaOutOfWindow {
            area,
            addr: base,
            len: off.saturating_add(buf.len() as u64),
        };
        let addr = base.checked_add(off).ok_or(out)?;
        mem.write(addr, buf).map_err(|_| out)
    }
}

/// A guest RAM model and a driver that lays out rings as Linux's
/// virtio_ring does, shared by the queue and blk tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::OutOfRange;
    use core::cell::{Cell, RefCell};

    pub const BASE: u64 = 0x4000_0000;

    /// The client's RAM: `[BASE, BASE + len)`. Device writes (through
    /// `GuestRam`) are logged; the driver uses `poke`/`peek`.
    pub struct Ram {
        pub base: u64,
        pub bytes: RefCell<Vec<u8>>,
        pub log: RefCell<Vec<(u64, usize)>>,
        pub bad_writes: Cell<u32>,
    }

    impl Ram {
        pub fn new(len: usize) -> Ram {
            Ram {
                base: BASE,
                bytes: RefCell::new(vec![0; len]),
                log: RefCell::new(Vec::new()),
                bad_writes: Cell::new(0),
            }
        }

        pub fn end(&self) -> u64 {
            self.base + self.bytes.borrow().len() as u64
        }

        fn range(&self, addr: u64, len: usize) -> Result<core::ops::Range<usize>, OutOfRange> {
            let err = OutOfRange {
                addr,
                len: len as u64,
            };
            let off = addr.checked_sub(self.base).ok_or(err)?;
            let end = off.checked_add(len as u64).ok_or(err)?;
            if end > self.bytes.borrow().len() as u64 {
                return Err(err);
            }
            Ok(off as usize..end as usize)
        }

        pub fn poke(&self, addr: u64, data: &[u8]) {
            let r = self.range(addr, data.len()).expect("poke in window");
            self.bytes.borrow_mut()[r].copy_from_slice(data);
        }

        pub fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
            let r = self.range(addr, len).expect("peek in window");
            self.bytes.borrow()[r].to_vec()
        }

        pub fn poke_u16(&self, addr: u64, v: u16) {
            self.poke(addr, &v.to_le_bytes());
        }

        pub fn peek_u16(&self, addr: u64) -> u16 {
            let b = self.peek(addr, 2);
            u16::from_le_bytes([b[0], b[1]])
        }

        pub fn peek_u32(&self, addr: u64) -> u32 {
            let b = self.peek(addr, 4);
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    }

    impl GuestRam for Ram {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
            let r = self.range(addr, buf.len())?;
            buf.copy_from_slice(&self.bytes.borrow()[r]);
            Ok(())
        }

        fn write(&self, addr: u64, buf: &[u8]) -> Result<(), OutOfRange> {
            let r = self.range(addr, buf.len()).inspect_err(|_| {
                self.bad_writes.set(self.bad_writes.get() + 1);
            })?;
            self.bytes.borrow_mut()[r].copy_from_slice(buf);
            self.log.borrow_mut().push((addr, buf.len()));
            Ok(())
        }
    }

    /// One buffer the driver adds: `(addr, len, device-writable)`.
    pub type Buf = (u64, u32, bool);

    /// The driver side: rings at the start of the window (desc, then
    /// avail, then used at 4-byte alignment, as `vring_init` lays them),
    /// descriptors allocated round-robin, data from a bump allocator.
    pub struct Driver {
        pub size: u16,
        pub desc: u64,
        pub avail: u64,
        pub used: u64,
        pub avail_idx: u16,
        pub last_used: u16,
        next_desc: u16,
        heap: u64,
    }

    impl Driver {
        pub fn new(ram: &Ram, size: u16) -> Driver {
            let n = u64::from(size);
            let desc = ram.base;
            let avail = desc + 16 * n;
            let used = (avail + 6 + 2 * n + 3) & !3;
            let heap = (used + 6 + 8 * n + 0xfff) & !0xfff;
            Driver {
                size,
                desc,
                avail,
                used,
                avail_idx: 0,
                last_used: 0,
                next_desc: 0,
                heap,
            }
        }

        pub fn queue(&self, ram: &Ram, event_idx: bool, indirect: bool) -> SplitQueue {
            SplitQueue::new(
                u32::from(self.size),
                self.desc,
                self.avail,
                self.used,
                event_idx,
                ram,
            )
            .expect("queue")
            .with_indirect(indirect)
        }

        /// `len` bytes of driver memory, 16-byte aligned.
        pub fn alloc(&mut self, len: u64) -> u64 {
            let a = self.heap;
            self.heap = (self.heap + len + 15) & !15;
            a
        }

        pub fn set_desc(&self, ram: &Ram, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            ram.poke(
                self.desc + 16 * u64::from(i),
                &desc_bytes(addr, len, flags, next),
            );
        }

        /// Writes a chain of descriptors for `bufs` (NEXT-linked) and
        /// returns its head, without making it available.
        pub fn write_chain(&mut self, ram: &Ram, bufs: &[Buf]) -> u16 {
            let idx: Vec<u16> = (0..bufs.len())
                .map(|_| {
                    let i = self.next_desc;
                    self.next_desc = (self.next_desc + 1) % self.size;
                    i
                })
                .collect();
            for (k, &(addr, len, w)) in bufs.iter().enumerate() {
                let mut flags = if w { VIRTQ_DESC_F_WRITE } else { 0 };
                let next = if k + 1 < bufs.len() {
                    flags |= VIRTQ_DESC_F_NEXT;
                    idx[k + 1]
                } else {
                    0
                };
                self.set_desc(ram, idx[k], addr, len, flags, next);
            }
            idx[0]
        }

        /// Makes `head` available (§2.7.13): ring entry, then idx.
        pub fn publish(&mut self, ram: &Ram, head: u16) {
            let slot = u64::from(self.avail_idx % self.size);
            ram.poke_u16(self.avail + 4 + 2 * slot, head);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            ram.poke_u16(self.avail + 2, self.avail_idx);
        }

        pub fn add(&mut self, ram: &Ram, bufs: &[Buf]) -> u16 {
            let head = self.write_chain(ram, bufs);
            self.publish(ram, head);
            head
        }

        /// One descriptor naming an indirect table for `bufs` (§2.7.5.3).
        pub fn add_indirect(&mut self, ram: &Ram, bufs: &[Buf]) -> u16 {
            let table = self.alloc(16 * bufs.len() as u64);
            for (k, &(addr, len, w)) in bufs.iter().enumerate() {
                let mut flags = if w { VIRTQ_DESC_F_WRITE } else { 0 };
                if k + 1 < bufs.len() {
                    flags |= VIRTQ_DESC_F_NEXT;
                }
                ram.poke(
                    table + 16 * k as u64,
                    &desc_bytes(addr, len, flags, (k + 1) as u16),
                );
            }
            let head = self.write_chain(ram, &[(table, 16 * bufs.len() as u32, false)]);
            self.set_desc(
                ram,
                head,
                table,
                16 * bufs.len() as u32,
                VIRTQ_DESC_F_INDIRECT,
                0,
            );
            self.publish(ram, head);
            head
        }

        /// Used entries `(id, len)` since the last call.
        pub fn take_used(&mut self, ram: &Ram) -> Vec<(u32, u32)> {
            let idx = ram.peek_u16(self.used + 2);
            let mut out = Vec::new();
            while self.last_used != idx {
                let e = self.used + 4 + 8 * u64::from(self.last_used % self.size);
                out.push((ram.peek_u32(e), ram.peek_u32(e + 4)));
                self.last_used = self.last_used.wrapping_add(1);
            }
            out
        }
    }

    pub fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..].copy_from_slice(&next.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    fn bad(r: Result<Option<Chain>, QueueError>) -> (u16, bool, ChainFault) {
        match r {
            Err(QueueError::BadChain {
                index,
                indirect,
                fault,
                ..
            }) => (index, indirect, fault),
            other => panic!("expected a bad chain, got {other:?}"),
        }
    }

    #[test]
    fn size_must_be_power_of_two() {
        let ram = Ram::new(1 << 20);
        for size in [0, 3, 6, 100, 32769, 65536, u32::MAX] {
            assert_eq!(
                SplitQueue::new(size, BASE, BASE + 0x8_0000, BASE + 0x9_0000, false, &ram).err(),
                Some(QueueError::BadSize { size }),
            );
        }
        for size in [1, 2, 256, 32768] {
            SplitQueue::new(size, BASE, BASE + 0x8_0000, BASE + 0x9_0000, true, &ram).unwrap();
        }
    }

    #[test]
    fn areas_aligned_and_in_window() {
        let ram = Ram::new(0x10000);
        let new = |d, a, u| SplitQueue::new(16, d, a, u, true, &ram).err();
        let (d, a, u) = (BASE, BASE + 0x1000, BASE + 0x2000);
        assert_eq!(new(d, a, u), None);
        assert!(matches!(
            new(d + 8, a, u),
            Some(QueueError::Misaligned {
                area: Area::Desc,
                ..
            })
        ));
        assert!(matches!(
            new(d, a + 1, u),
            Some(QueueError::Misaligned {
                area: Area::Avail,
                ..
            })
        ));
        assert!(matches!(
            new(d, a, u + 2),
            Some(QueueError::Misaligned {
                area: Area::Used,
                ..
            })
        ));
        // Start outside, straddling the end, wrapping the address space.
        let out = |r: Option<QueueError>, want: Area| {
            assert!(
                matches!(r, Some(QueueError::AreaOutOfWindow { area, .. }) if area == want),
                "{r:?}"
            );
        };
        out(new(BASE - 0x1000, a, u), Area::Desc);
        out(new(d, ram.end(), u), Area::Avail);
        out(new(d, a, ram.end() - 8 * 16), Area::Used);
        out(new(u64::MAX - 15, a, u), Area::Desc);
        // The used ring's avail_event only exists with EVENT_IDX.
        let edge = ram.end() - (4 + 8 * 16);
        assert!(SplitQueue::new(16, d, a, edge, false, &ram).is_ok());
        out(
            SplitQueue::new(16, d, a, edge, true, &ram).err(),
            Area::Used,
        );
    }

    #[test]
    fn pop_and_push_round_trip() {
        let ram = Ram::new(1 << 20);
        let mut drv = Driver::new(&ram, 8);
        let mut q = drv.queue(&ram, false, false);
        assert_eq!(q.pop(&ram), Ok(None));
        let (r, w) = (drv.alloc(64), drv.alloc(64));
        let head = drv.add(&ram, &[(r, 16, false), (r + 16, 48, false), (w, 64, true)]);
        let c = q.pop(&ram).unwrap().unwrap();
        assert_eq!(c.head, head);
        assert_eq!(c.readable_len(), 64);
        assert_eq!(c.writable_len(), 64);
        assert_eq!(c.readable().len(), 2);
        assert_eq!(q.pop(&ram), Ok(None));
        ram.poke(r + 10, b"abcdefghij");
        let mut buf = [0u8; 10];
        c.read_readable(&ram, 10, &mut buf).unwrap();
        assert_eq!(&buf, b"abcdefghij");
        assert!(matches!(
            c.read_readable(&ram, 60, &mut buf),
            Err(QueueError::BufferTooShort { have: 64, want: 70 })
        ));
        c.write_writable(&ram, 60, b"wxyz").unwrap();
        assert_eq!(ram.peek(w + 60, 4), b"wxyz");
        assert!(c.write_writable(&ram, 61, b"wxyz").is_err());
        assert_eq!(q.in_flight(), 1);
        q.push_used(&ram, c.head, 64).unwrap();
        assert_eq!(q.in_flight(), 0);
        assert_eq!(drv.take_used(&ram), [(u32::from(head), 64)]);
        assert_eq!(
            q.push_used(&ram, 8, 0),
            Err(QueueError::UsedIdOutOfRange { id: 8 })
        );
    }

    #[test]
    fn indices_wrap_past_65535() {
        let ram = Ram::new(1 << 16);
        let mut drv = Driver::new(&ram, 2);
        let mut q = drv.queue(&ram, true, false);
        let b = drv.alloc(16);
        for i in 0..70_000u32 {
            let head = drv.add(&ram, &[(b, 16, true)]);
            let c = q.pop(&ram).unwrap().unwrap();
            assert_eq!(c.head, head);
            q.push_used(&ram, head, i).unwrap();
            assert_eq!(drv.take_used(&ram), [(u32::from(head), i)]);
        }
        assert_eq!(q.used_idx(), (70_000 % 65536) as u16);
        assert_eq!(q.pop(&ram), Ok(None));
    }

    #[test]
    fn descriptor_loops_are_caught() {
        let ram = Ram::new(1 << 20);
        let mut drv = Driver::new(&ram, 16);
        let mut q = drv.queue(&ram, false, false);
        let b = drv.alloc(16);
        // Self loop.
        drv.set_desc(&ram, 0, b, 16, VIRTQ_DESC_F_NEXT, 0);
        drv.publish(&ram, 0);
        assert_eq!(bad(q.pop(&ram)).2, ChainFault::TooLong { limit: 16 });
        // 2-cycle.
        drv.set_desc(&ram, 1, b, 16, VIRTQ_DESC_F_NEXT, 2);
        drv.set_desc(&ram, 2, b, 16, VIRTQ_DESC_F_NEXT, 1);
        drv.publish(&ram, 1);
        assert_eq!(bad(q.pop(&ram)).2, ChainFault::TooLong { limit: 16 });
        // A cycle through every descriptor.
        for i in 0..16 {
            drv.set_desc(&ram, i, b, 16, VIRTQ_DESC_F_NEXT, (i + 1) % 16);
        }
        drv.publish(&ram, 5);
        let e = q.pop(&ram).unwrap_err();
        assert_eq!(e.head(), Some(5));
        assert!(!e.is_fatal());
        // The longest legal chain: all 16.
        drv.set_desc(&ram, 4, b, 16, 0, 0);
        drv.publish(&ram, 5);
        assert_eq!(q.pop(&ram).unwrap().unwrap().segments.len(), 16);
        // Each bad chain consumed its entry: nothing left.
        assert_eq!(q.pop(&ram), Ok(None));
    }

    #[test]
    fn bad_indices_and_addresses() {
        let ram = Ram::new(1 << 20);
        let mut drv = Driver::new(&ram, 16);
        let mut q = drv.queue(&ram, false, false);
        let b = drv.alloc(16);
        drv.set_desc(&ram, 0, b, 16, VIRTQ_DESC_F_NEXT, 16);
        drv.publish(&ram, 0);
        assert_eq!(
            bad(q.pop(&ram)),
            (0, false, ChainFault::NextOutOfRange { next: 16 })
        );
        drv.set_desc(&ram, 0, b, 16, VIRTQ_DESC_F_NEXT, u16::MAX);
        drv.publish(&ram, 0);
        assert_eq!(
            bad(q.pop(&ram)).2,
            ChainFault::NextOutOfRange { next: u16::MAX }
        );
        // A head out of range: consumed, nothing to give back.
        drv.publish(&ram, 16);
        assert_eq!(
            q.pop(&ram),
            Err(QueueError::HeadOutOfRange { slot: 2, head: 16 })
        );
        assert_eq!(q.in_flight(), 2);
        // addr + len wraps.
        drv.set_desc(&ram, 3, u64::MAX - 10, 100, 0, 0);
        drv.publish(&ram, 3);
        assert_eq!(
            bad(q.pop(&ram)).2,
            ChainFault::AddrOverflow {
                addr: u64::MAX - 10,
                len: 100
            }
        );
        // Buffers outside the window are recorded; accesses fail.
        drv.set_desc(&ram, 4, ram.end() - 8, 16, VIRTQ_DESC_F_WRITE, 0);
        drv.publish(&ram, 4);
        let c = q.pop(&ram).unwrap().unwrap();
        assert!(matches!(
            c.write_writable(&ram, 0, &[1; 16]),
            Err(QueueError::BufferOutOfWindow { .. })
        ));
        // A 4 GiB length allocates nothing.
        drv.set_desc(&ram, 5, b, u32::MAX, VIRTQ_DESC_F_WRITE, 0);
        drv.publish(&ram, 5);
        assert_eq!(
            q.pop(&ram).unwrap().unwrap().writable_len(),
            u64::from(u32::MAX)
        );
        // Too many bytes in total: 5 descriptors of 4 GiB.
        for i in 6..10 {
            drv.set_desc(&ram, i, b, u32::MAX, VIRTQ_DESC_F_NEXT, i + 1);
        }
        drv.set_desc(&ram, 10, b, u32::MAX, 0, 0);
        drv.publish(&ram, 6);
        assert_eq!(bad(q.pop(&ram)), (10, false, ChainFault::TooManyBytes));
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let ram = Ram::new(1 << 20);
        let mut drv = Driver::new(&ram, 8);
        let mut q = drv.queue(&ram, false, false);
        let b = drv.alloc(64);
        let head = drv.add(&ram, &[(b, 16, false), (b, 16, true), (b, 16, false)]);
        let (index, _, fault) = bad(q.pop(&ram));
        assert_eq!(fault, ChainFault::ReadableAfterWritable);
        assert_eq!(index, head + 2);
    }

    #[test]
    fn avail_idx_jump_is_fatal_and_sticks() {
        let ram = Ram::new(1 << 20);
        let drv = Driver::new(&ram, 8);
        let mut q = drv.queue(&ram, false, false);
        ram.poke_u16(drv.avail + 2, 9);
        let e = q.pop(&ram).unwrap_err();
        assert_eq!(
            e,
            QueueError::AvailIdxJump {
                avail_idx: 9,
                last_avail: 0
            }
        );
        assert!(e.is_fatal());
        assert_eq!(alloc::format!("{e}"), "avail.idx 9 too far past 0");
        assert_eq!(q.pop(&ram), Err(e));
        assert_eq!(q.last_avail(), 0);
        // Exactly `size` pending is fine (all heads are descriptor 0 here).
        ram.poke_u16(drv.avail + 2, 8);
        assert!(q.pop(&ram).unwrap().is_some());
        // Going backwards looks like a jump of nearly 65536.
        ram.poke_u16(drv.avail + 2, 0);
        assert!(matches!(q.pop(&ram), Err(QueueError::AvailIdxJump { .. })));
    }

    #[test]
    fn outstanding_chains_bounded_by_size() {
        let ram = Ram::new(1 << 20);
        let mut drv = Driver::new(&ram, 4);
        let mut q = drv.queue(&ram, false, false);
        let b = drv.alloc(16);
        for _ in 0..4 {
            drv.add(&ram, &[(b, 16, true)]);
        }
        for _ in 0..4 {
            assert!(q.pop(&ram).unwrap().is_some());
        }
        // The driver reuses descriptors it has not got back.
        drv.add(&ram, &[(b, 16, true)]);
        assert_eq!(
            q.pop(&ram),
            Err(QueueError::TooManyInFlight { in_flight: 4 })
        );
        q.push_used(&ram, 0, 0).unwrap();
        assert!(q.pop(&ram).unwrap().is_some());
    }

    #[test]
    fn indirect_tables() {
        let ram = Ram::new(1 << 20);
        let mut drv = Driver::new(&ram, 32);
        let b = drv.alloc(64);
        // Refused unless negotiated.
        let mut q = drv.queue(&ram, false, false);
        drv.add_indirect(&ram, &[(b, 16, false), (b, 1, true)]);
        assert_eq!(bad(q.pop(&ram)).2, ChainFault::IndirectNotNegotiated);

        let mut q = drv.queue(&ram, false, true);
        let mut drv = Driver::new(&ram, 32);
        let head = drv.add_indirect(&ram, &[(b, 16, false), (b + 16, 32, false), (b, 1, true)]);
        let c = q.pop(&ram).unwrap().unwrap();
        assert_eq!(c.head, head);
        assert_eq!(
            c.segments,
            [
                Segment {
                    addr: b,
                    len: 16,
                    writable: false
                },
                Segment {
                    addr: b + 16,
                    len: 32,
                    writable: false
                },
                Segment {
                    addr: b,
                    len: 1,
                    writable: true
                },
            ]
        );
        // Direct descriptors before the table are kept.
        let t = drv.alloc(16);
        ram.poke(t, &desc_bytes(b, 8, VIRTQ_DESC_F_WRITE, 0));
        drv.set_desc(&ram, 6, b, 16, VIRTQ_DESC_F_NEXT, 7);
        drv.set_desc(
            &ram,
            7,
            t,
            16,
            VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE,
            0,
        );
        drv.publish(&ram, 6);
        assert_eq!(q.pop(&ram).unwrap().unwrap().segments.len(), 2);

        let mut try_table = |len: u32, flags: u16, entries: &[[u8; 16]]| {
            for (k, e) in entries.iter().enumerate() {
                ram.poke(t + 16 * k as u64, e);
            }
            drv.set_desc(&ram, 0, t, len, VIRTQ_DESC_F_INDIRECT | flags, 1);
            drv.publish(&ram, 0);
            bad(q.pop(&ram))
        };
        let plain = desc_bytes(b, 16, 0, 0);
        for len in [0, 8, 17, 16 * (MAX_INDIRECT_DESCS + 1)] {
            assert_eq!(
                try_table(len, 0, &[plain]),
                (0, true, ChainFault::IndirectLen { len })
            );
        }
        assert_eq!(
            try_table(16, VIRTQ_DESC_F_NEXT, &[plain]).2,
            ChainFault::IndirectWithNext
        );
        let nested = desc_bytes(t, 16, VIRTQ_DESC_F_INDIRECT, 0);
        assert_eq!(
            try_table(32, 0, &[plain_next(b), nested]),
            (1, true, ChainFault::NestedIndirect)
        );
        let self_loop = desc_bytes(b, 16, VIRTQ_DESC_F_NEXT, 1);
        assert_eq!(
            try_table(32, 0, &[plain_next(b), self_loop]),
            (1, true, ChainFault::TooLong { limit: 2 })
        );
        let past = desc_bytes(b, 16, VIRTQ_DESC_F_NEXT, 2);
        assert_eq!(
            try_table(32, 0, &[plain_next(b), past]),
            (1, true, ChainFault::NextOutOfRange { next: 2 })
        );
        let w_then_r = [
            desc_bytes(b, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1),
            plain,
        ];
        assert_eq!(
            try_table(32, 0, &w_then_r).2,
            ChainFault::ReadableAfterWritable
        );

        // The table itself outside the window, or straddling its end.
        for addr in [BASE - 0x100, ram.end() - 16] {
            drv.set_desc(&ram, 0, addr, 32, VIRTQ_DESC_F_INDIRECT, 0);
            drv.publish(&ram, 0);
            assert_eq!(
                bad(q.pop(&ram)).2,
                ChainFault::IndirectOutOfWindow { addr, len: 32 }
            );
        }
    }

    fn plain_next(b: u64) -> [u8; 16] {
        desc_bytes(b, 16, VIRTQ_DESC_F_NEXT, 1)
    }

    #[test]
    fn descriptors_read_once() {
        // The chain is a snapshot: rewriting descriptors after pop changes
        // nothing the device holds.
        let ram = Ram::new(1 << 20);
        let mut drv = Driver::new(&ram, 8);
        let mut q = drv.queue(&ram, false, false);
        let b = drv.alloc(64);
        let head = drv.add(&ram, &[(b, 16, false), (b + 16, 16, true)]);
        let c = q.pop(&ram).unwrap().unwrap();
        drv.set_desc(&ram, head, 0, u32::MAX, VIRTQ_DESC_F_NEXT, head);
        drv.set_desc(&ram, head + 1, 0, u32::MAX, VIRTQ_DESC_F_WRITE, 0);
        assert_eq!(
            c.segments[1],
            Segment {
                addr: b + 16,
                len: 16,
                writable: true
            }
        );
    }

    #[test]
    fn notification_suppression_without_event_idx() {
        let ram = Ram::new(1 << 20);
        let mut drv = Driver::new(&ram, 8);
        let mut q = drv.queue(&ram, false, false);
        let b = drv.alloc(16);
        let head = drv.add(&ram, &[(b, 16, true)]);
        q.pop(&ram).unwrap().unwrap();
        let old = q.used_idx();
        q.push_used(&ram, head, 0).unwrap();
        assert!(q.needs_notify(&ram, old));
        ram.poke_u16(drv.avail, VIRTQ_AVAIL_F_NO_INTERRUPT);
        assert!(!q.needs_notify(&ram, old));
    }

    #[test]
    fn event_idx() {
        let ram = Ram::new(1 << 20);
        let mut drv = Driver::new(&ram, 8);
        let mut q = drv.queue(&ram, true, false);
        let avail_event = drv.used + 4 + 8 * 8;
        let used_event = drv.avail + 4 + 2 * 8;
        let b = drv.alloc(16);
        ram.poke_u16(avail_event, 0xdead);
        for _ in 0..3 {
            drv.add(&ram, &[(b, 16, true)]);
        }
        let mut heads = Vec::new();
        while let Some(c) = q.pop(&ram).unwrap() {
            heads.push(c.head);
        }
        assert_eq!(heads.len(), 3);
        // Empty: the next kick wanted is for entry 3 (§2.7.10).
        assert_eq!(ram.peek_u16(avail_event), 3);
        // The driver wants an interrupt once entry 1 is used (used_event 1:
        // idx going past 1, i.e. to 2).
        ram.poke_u16(used_event, 1);
        let old = q.used_idx();
        q.push_used(&ram, heads[0], 0).unwrap();
        assert!(!q.needs_notify(&ram, old));
        let old = q.used_idx();
        q.push_used(&ram, heads[1], 0).unwrap();
        assert!(q.needs_notify(&ram, old));
        // avail.flags is ignored with EVENT_IDX.
        ram.poke_u16(drv.avail, VIRTQ_AVAIL_F_NO_INTERRUPT);
        assert!(q.needs_notify(&ram, old));
        assert!(vring_need_event(0xffff, 0, 0xfffe));
        assert!(!vring_need_event(5, 5, 4));
    }

    #[test]
    fn segment_pieces() {
        let ram = Ram::new(1 << 16);
        let segs = [
            Segment {
                addr: BASE,
                len: 3,
                writable: true,
            },
            Segment {
                addr: BASE + 100,
                len: 0,
                writable: true,
            },
            Segment {
                addr: BASE + 200,
                len: 5,
                writable: true,
            },
        ];
        write_segments(&ram, &segs, 1, b"abcdef").unwrap();
        assert_eq!(ram.peek(BASE, 3), b"\0ab");
        assert_eq!(ram.peek(BASE + 200, 5), b"cdef\0");
        let mut buf = [0u8; 8];
        read_segments(&ram, &segs, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"\0abcdef\0");
        assert!(read_segments(&ram, &segs, u64::MAX, &mut buf).is_err());
        assert!(write_segments(&ram, &segs, 8, b"x").is_err());
        write_segments(&ram, &segs, 8, b"").unwrap();
    }
}
