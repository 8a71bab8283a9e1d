//! One virtio-blk request: a descriptor chain parsed into header, data and status (every
//! buffer checked before anything moves), then run against the backend and answered.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::metrics::BlockMetrics;
use vmm_rate_limiter::RateLimiter;

use super::{DiskInfo, ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, QUEUE_SIZE, SECTOR_SIZE};
use crate::virtio::{consume_request, Served};
use vmm_disk::{DiskImage, GuestBuffers, GuestRange};

/// Length of the request header: type (u32), reserved (u32), sector (u64).
pub(super) const HEADER_LEN: usize = 16;
/// Descriptors of one chain that are looked at. Without VIRTIO_F_INDIRECT_DESC (not offered) a
/// chain cannot be longer than the queue; a longer one came through an indirect table anyway
/// and is refused, which also bounds the scratch list.
pub(super) const MAX_CHAIN_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// What a request's status byte says, and how many data bytes went into the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Completion {
    status: u32,
    written: u32,
}

const IOERR: Completion = Completion {
    status: VIRTIO_BLK_S_IOERR,
    written: 0,
};

const UNSUPP: Completion = Completion {
    status: VIRTIO_BLK_S_UNSUPP,
    written: 0,
};

/// Length of one discard segment: sector (le64), num_sectors (le32), flags (le32).
pub(super) const DISCARD_SEGMENT_LEN: usize = 16;

/// Why a discard request is refused before anything is discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DiscardRefusal {
    /// A flag bit other than unmap, or unmap itself, which discard must not set (virtio 1.2,
    /// 5.2.6.2): UNSUPP.
    Flags,
    /// Not whole segments, none, too many, too long or outside the disk: IOERR.
    Invalid,
}

/// The byte ranges `(offset, len)` a discard request's segments name, checked against the
/// disk; empty segments are left out. Every segment is checked before any range is returned,
/// so a hostile array discards nothing.
fn discard_ranges<M: GuestMemoryBackend>(
    data: &GuestBuffers<'_, M>,
    capacity_bytes: u64,
    out: &mut [(u64, u64); MAX_DISCARD_SEG as usize],
) -> Result<usize, DiscardRefusal> {
    let len = data.len();
    let segment_len = DISCARD_SEGMENT_LEN as u64;
    if len == 0 || len % segment_len != 0 || len / segment_len > u64::from(MAX_DISCARD_SEG) {
        return Err(DiscardRefusal::Invalid);
    }
    let mut count = 0;
    let mut flags_refused = false;
    for index in 0..len / segment_len {
        let mut segment = [0u8; DISCARD_SEGMENT_LEN];
        data.read_into(index * segment_len, &mut segment)
            .map_err(|_| DiscardRefusal::Invalid)?;
        let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3, f0, f1, f2, f3] = segment;
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let sectors = u32::from_le_bytes([n0, n1, n2, n3]);
        let flags = u32::from_le_bytes([f0, f1, f2, f3]);
        // Unknown bits and the unmap bit are both UNSUPP; the range is still checked, so that
        // a request that is wrong in both ways gets the same answer whatever the order.
        flags_refused |= flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
            || flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        if sectors > MAX_DISCARD_SECTORS {
            return Err(DiscardRefusal::Invalid);
        }
        let offset = sector
            .checked_mul(SECTOR_SIZE)
            .ok_or(DiscardRefusal::Invalid)?;
        let bytes = u64::from(sectors) * SECTOR_SIZE;
        match offset.checked_add(bytes) {
            Some(end) if end <= capacity_bytes => {}
            _ => return Err(DiscardRefusal::Invalid),
        }
        if bytes > 0 {
            let slot = out.get_mut(count).ok_or(DiscardRefusal::Invalid)?;
            *slot = (offset, bytes);
            count += 1;
        }
    }
    if flags_refused {
        return Err(DiscardRefusal::Flags);
    }
    Ok(count)
}

const fn ok(written: u32) -> Completion {
    Completion {
        status: VIRTIO_BLK_S_OK,
        written,
    }
}

/// A chain's descriptors as read from the descriptor table (nothing checked yet): up to
/// [`MAX_CHAIN_DESCRIPTORS`] of them, how many there were, where the device-writable ones
/// start, and the last one.
struct ChainLayout<'s> {
    ranges: &'s [GuestRange],
    count: usize,
    /// Index of the first device-writable descriptor (`ranges.len()` when none).
    first_writable: usize,
    /// Whether a device-readable descriptor follows a device-writable one.
    readable_after_writable: bool,
    last: Option<(GuestRange, bool)>,
}

impl<'s> ChainLayout<'s> {
    fn read<M: GuestMemoryBackend>(
        chain: DescriptorChain<&M>,
        scratch: &'s mut Vec<GuestRange>,
    ) -> Self {
        scratch.clear();
        let mut count = 0usize;
        let mut first_writable = None;
        let mut readable_after_writable = false;
        let mut last = None;
        // The iterator itself stops at loops (its TTL), at indexes past the table and at 4 GiB
        // of total length; what it yields is kept up to MAX_CHAIN_DESCRIPTORS.
        for desc in chain {
            let range = GuestRange {
                addr: desc.addr(),
                len: desc.len(),
            };
            let writable = desc.is_write_only();
            if scratch.len() < MAX_CHAIN_DESCRIPTORS {
                if writable && first_writable.is_none() {
                    first_writable = Some(scratch.len());
                }
                readable_after_writable |= !writable && first_writable.is_some();
                scratch.push(range);
            }
            count += 1;
            last = Some((range, writable));
        }
        ChainLayout {
            first_writable: first_writable.unwrap_or(scratch.len()),
            ranges: scratch,
            count,
            readable_after_writable,
            last,
        }
    }

    /// Where the status byte goes: the chain's last byte, if it is device-writable guest
    /// memory.
    fn status_addr<M: GuestMemoryBackend>(&self, mem: &M) -> Option<GuestAddress> {
        let (last, writable) = self.last?;
        if !writable || last.len == 0 {
            return None;
        }
        let addr = GuestAddress(last.addr.0.checked_add(u64::from(last.len - 1))?);
        GuestMemoryBackend::check_range(mem, addr, 1).then_some(addr)
    }
}

/// A well-formed request: its header fields and its data buffers.
struct Request<'a, M> {
    request_type: u32,
    sector: u64,
    /// Device-readable bytes after the header.
    readable: GuestBuffers<'a, M>,
    /// Device-writable bytes before the status byte.
    writable: GuestBuffers<'a, M>,
}

impl<'a, M: GuestMemoryBackend> Request<'a, M> {
    /// The request `layout` describes; `None` (IOERR) when the chain is too long, readable and
    /// writable buffers are mixed, a buffer is outside guest memory or the header is short.
    fn parse(layout: &ChainLayout<'a>, mem: &'a M) -> Option<Self> {
        if layout.count > MAX_CHAIN_DESCRIPTORS || layout.readable_after_writable {
            return None;
        }
        // Device-readable descriptors come first, then device-writable ones (2.7.4.2).
        let (readable, writable) = layout.ranges.split_at(layout.first_writable);
        // Every buffer must be guest memory before anything moves.
        let readable = GuestBuffers::new(mem, readable)?;
        let writable = GuestBuffers::new(mem, writable)?;
        let mut header = [0u8; HEADER_LEN];
        readable.read_into(0, &mut header).ok()?;
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
        Some(Request {
            request_type: u32::from_le_bytes([t0, t1, t2, t3]),
            sector: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            readable: readable.subrange(HEADER_LEN as u64, readable.len() - HEADER_LEN as u64)?,
            // The status byte is the last writable byte (there is one: `status_addr`).
            writable: writable.subrange(0, writable.len().saturating_sub(1))?,
        })
    }

    /// The data bytes the request moves (what a rate limiter's bandwidth bucket is charged):
    /// the data of a read or a write, 0 for the other types.
    fn data_bytes(&self) -> u64 {
        match self.request_type {
            VIRTIO_BLK_T_IN => self.writable.len(),
            VIRTIO_BLK_T_OUT => self.readable.len(),
            _ => 0,
        }
    }

    /// Runs the request on `backend`.
    fn execute(
        &self,
        disk: &DiskInfo,
        backend: &mut dyn DiskImage<M>,
        metrics: &BlockMetrics,
    ) -> Completion {
        let invalid = || {
            metrics.invalid_reqs_count.inc();
            IOERR
        };
        match self.request_type {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let write = self.request_type == VIRTIO_BLK_T_OUT;
                let (data, stray) = if write {
                    (&self.readable, &self.writable)
                } else {
                    (&self.writable, &self.readable)
                };
                // Data in the wrong direction, a write to a read-only disk, a length that is
                // not whole sectors, or a range past the end (or past u64) all fail the same
                // way.
                if !stray.is_empty() || (write && disk.read_only) {
                    return invalid();
                }
                if data.len() % SECTOR_SIZE != 0 {
                    return invalid();
                }
                let Some(offset) = self.sector.checked_mul(SECTOR_SIZE) else {
                    return invalid();
                };
                match offset.checked_add(data.len()) {
                    Some(end) if end <= disk.capacity_bytes() => {}
                    _ => return invalid(),
                }
                if write {
                    match backend.write_at(offset, data) {
                        Ok(()) => {
                            metrics.write_count.inc();
                            metrics.write_bytes.add(data.len());
                            ok(0)
                        }
                        Err(_) => {
                            metrics.execute_fails.inc();
                            IOERR
                        }
                    }
                } else {
                    let done = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
                    match backend.read_at(offset, data) {
                        Ok(()) => {
                            metrics.read_count.inc();
                            metrics.read_bytes.add(data.len());
                            ok(done(data.len()))
                        }
                        Err(e) => {
                            metrics.execute_fails.inc();
                            Completion {
                                status: VIRTIO_BLK_S_IOERR,
                                written: done(e.transferred()),
                            }
                        }
                    }
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                metrics.flush_count.inc();
                // Nothing of ours to make durable on a read-only disk; with the `Unsafe` cache
                // type flushes are acknowledged without syncing (Firecracker's default).
                if disk.read_only || !disk.writeback {
                    return ok(0);
                }
                match backend.flush() {
                    Ok(()) => ok(0),
                    Err(_) => {
                        metrics.execute_fails.inc();
                        IOERR
                    }
                }
            }
            VIRTIO_BLK_T_DISCARD => {
                // Not offered (the backend cannot, or the disk is read-only): UNSUPP, as for
                // any type the device does not know.
                if !disk.discard {
                    metrics.invalid_reqs_count.inc();
                    return UNSUPP;
                }
                // The segments are device-readable data; nothing is written back but the status.
                if !self.writable.is_empty() {
                    return invalid();
                }
                let mut ranges = [(0u64, 0u64); MAX_DISCARD_SEG as usize];
                let count = match discard_ranges(&self.readable, disk.capacity_bytes(), &mut ranges)
                {
                    Ok(count) => count,
                    Err(DiscardRefusal::Flags) => {
                        metrics.invalid_reqs_count.inc();
                        return UNSUPP;
                    }
                    Err(DiscardRefusal::Invalid) => return invalid(),
                };
                for &(offset, len) in ranges.get(..count).unwrap_or_default() {
                    if backend.discard(offset, len).is_err() {
                        metrics.execute_fails.inc();
                        return IOERR;
                    }
                }
                ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                // A buffer shorter than 20 bytes gets the start of the ID.
                let n = self.writable.len().min(ID_BYTES as u64) as usize;
                match self
                    .writable
                    .write_from(0, disk.id.get(..n).unwrap_or_default())
                {
                    // At most 20.
                    Ok(()) => ok(n as u32),
                    Err(_) => IOERR,
                }
            }
            _ => {
                metrics.invalid_reqs_count.inc();
                UNSUPP
            }
        }
    }
}

/// Handles one chain on `backend` and returns the used length to report (bytes written into
/// the chain), or [`Served::Throttled`] when `limiter` refuses the request (one operation and
/// its data bytes): then nothing was done and the chain is to be retried later. Malformed
/// chains are answered without being charged. `scratch` holds the chain's descriptors; reusing
/// it, a request allocates nothing.
pub(super) fn process_chain<M: GuestMemoryBackend>(
    disk: &DiskInfo,
    backend: &mut dyn DiskImage<M>,
    mem: &M,
    chain: DescriptorChain<&M>,
    scratch: &mut Vec<GuestRange>,
    limiter: &mut RateLimiter,
    metrics: &BlockMetrics,
) -> Served {
    let layout = ChainLayout::read(chain, scratch);
    // The status is the chain's last byte; without a writable one in guest memory there is
    // nowhere to answer, so the chain goes back untouched.
    let Some(status_addr) = layout.status_addr(mem) else {
        metrics.invalid_reqs_count.inc();
        return Served::Used(0);
    };
    let done = match Request::parse(&layout, mem) {
        Some(request) => {
            if !consume_request(limiter, request.data_bytes()) {
                metrics.rate_limiter_throttled_events.inc();
                return Served::Throttled;
            }
            request.execute(disk, backend, metrics)
        }
        None => {
            metrics.invalid_reqs_count.inc();
            IOERR
        }
    };
    // The status byte is in guest memory (checked above); a failure here cannot happen, but if
    // it did, claiming nothing was written is the honest answer.
    Served::Used(match mem.write_obj(done.status as u8, status_addr) {
        Ok(()) => done.written.saturating_add(1),
        Err(_) => 0,
    })
}
