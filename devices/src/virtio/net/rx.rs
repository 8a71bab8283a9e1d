//! The receive path: frames from the backend into the guest's receive buffers, one chain per
//! frame or, with mergeable buffers, as many as a frame takes.

use std::io;
use std::sync::atomic::{fence, Ordering};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::features::{MAX_BUFFER_LEN, MIN_BUFFER_LEN, NET_HDR_LEN, NUM_BUFFERS_OFFSET};
use super::NetBackend;
use crate::metrics::NetMetrics;
use crate::virtio::{consume_request, pop_chain, VirtioError, VirtioInterrupt};
use vmm_rate_limiter::RateLimiter;

/// Receive retries in a row that find too few buffers while the driver keeps adding some; past
/// it the device waits for the next notification (a working driver makes progress long before).
const MAX_RX_RETRIES: u32 = 64;

/// The receive side's own state: a frame read from the backend that waits for guest buffers,
/// and the buffers to read it.
pub(super) struct Receiver {
    /// One byte longer than the largest frame, so a truncated read is recognised.
    buf: crate::virtio::LazyBuf,
    /// Length of a frame in `buf` that waits for receive buffers.
    pending: Option<usize>,
    /// Chains (head, bytes written) that hold the frame being received.
    chains: Vec<(u16, u32)>,
    /// The pending frame already passed the receive rate limiter (it is not charged again
    /// when it waits for buffers).
    admitted: bool,
    /// Times receiving stopped because the rate limiter was blocked.
    pub(super) throttled: u64,
}

impl Receiver {
    pub(super) fn new() -> Self {
        Receiver {
            buf: crate::virtio::LazyBuf::new(MAX_BUFFER_LEN + 1),
            pending: None,
            chains: Vec::new(),
            admitted: false,
            throttled: 0,
        }
    }

    /// Length of the frame that waits for receive buffers, if one does.
    pub(super) fn pending(&self) -> Option<usize> {
        self.pending
    }

    /// Drops the frame that waits (reset, restore).
    pub(super) fn drop_pending(&mut self) {
        self.pending = None;
        self.admitted = false;
    }

    /// Moves frames from `backend` into the receive queue `rx` until the backend is empty or
    /// the driver has no buffers left, then raises the interrupt if the driver wants one.
    /// Each frame passes `limiter` first (one operation and its length, header included);
    /// when it refuses, the frame waits in the device until the limiter's timer fires.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn receive<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        rx: &mut Queue,
        interrupt: &VirtioInterrupt,
        mergeable: bool,
        backend: &mut dyn NetBackend,
        metrics: &NetMetrics,
        limiter: &mut RateLimiter,
    ) -> Result<(), VirtioError> {
        let old_used = rx.next_used();
        let mut published = 0u32;
        let result = self.receive_frames(
            mem,
            rx,
            mergeable,
            backend,
            metrics,
            limiter,
            &mut published,
        );
        let notified = if published > 0 && rx_needs_interrupt(mem, rx, old_used, published)? {
            interrupt.signal_used_queue()
        } else {
            Ok(())
        };
        result.and(notified)
    }

    /// The receive loop: the pending frame first, then the backend until `EAGAIN` (the
    /// descriptor is edge-triggered), stopping when the guest has no buffers or the rate
    /// limiter is blocked.
    #[allow(clippy::too_many_arguments)]
    fn receive_frames<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        rx: &mut Queue,
        mergeable: bool,
        backend: &mut dyn NetBackend,
        metrics: &NetMetrics,
        limiter: &mut RateLimiter,
        published: &mut u32,
    ) -> Result<(), VirtioError> {
        let Receiver {
            buf: rx_buf,
            pending: rx_pending,
            chains,
            admitted,
            throttled,
        } = self;
        let rx_buf = rx_buf.get();
        rx.disable_notification(mem)?;
        let mut retries = 0u32;
        loop {
            let len = match *rx_pending {
                Some(len) => len,
                None => match backend.read_frame(rx_buf) {
                    // An empty read: end of stream (a socket backend's peer is gone); a tap
                    // never returns one. Nothing more to read now.
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        metrics.tap_read_fails.inc();
                        return Err(VirtioError::Backend(e));
                    }
                },
            };
            // A read that filled the whole buffer may have been cut short.
            let Some(frame) = rx_buf.get_mut(..len).filter(|_| len <= MAX_BUFFER_LEN) else {
                *rx_pending = None;
                metrics.rx_fails.inc();
                continue;
            };
            if len < MIN_BUFFER_LEN {
                *rx_pending = None;
                metrics.rx_fails.inc();
                continue;
            }
            *rx_pending = Some(len);
            if !*admitted {
                if !consume_request(limiter, len as u64) {
                    // The frame waits here; the limiter's timer brings the device back.
                    *throttled += 1;
                    return Ok(());
                }
                *admitted = true;
            }
            match place_frame(mem, rx, mergeable, frame, chains, published)? {
                Placed::Delivered => {
                    *rx_pending = None;
                    *admitted = false;
                    retries = 0;
                    metrics.rx_count.inc();
                    metrics.rx_packets_count.inc();
                    metrics.rx_bytes_count.add((len - NET_HDR_LEN) as u64);
                }
                Placed::TooLarge => {
                    *rx_pending = None;
                    *admitted = false;
                    metrics.rx_fails.inc();
                }
                Placed::BadChain => {}
                Placed::NoBuffers { start } => {
                    metrics.no_rx_avail_buffer.inc();
                    // Ask for a notify once the driver adds a buffer past those seen (with
                    // EVENT_IDX that is `avail_event` = where the ring ran dry), then give the
                    // chains taken back. If buffers came meanwhile, try again now.
                    let more = rx.enable_notification(mem);
                    rx.set_next_avail(start);
                    retries += 1;
                    if !more? || retries > MAX_RX_RETRIES {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Outcome of placing one received frame.
enum Placed {
    /// In the guest's buffers.
    Delivered,
    /// Larger than every buffer the guest can give: dropped, the buffers stay available.
    TooLarge,
    /// Hit a chain the device cannot write into: it (and the chains taken before it for this
    /// frame) went back empty; try again with the next chains.
    BadChain,
    /// The ring ran out of buffers. Chains from `start` were taken but not used.
    NoBuffers { start: u16 },
}

/// Copies `data` (the part of the frame from offset `frame_off`) into the device-writable
/// buffers of `chain`, in order, until either runs out; returns the bytes written, or `None`
/// for a chain the device may not write (a device-readable buffer, a buffer outside guest
/// memory). Records where the frame's `num_buffers` bytes landed in `num_buffers_at`.
fn fill_chain<M: GuestMemoryBackend>(
    chain: DescriptorChain<&M>,
    mem: &M,
    data: &[u8],
    frame_off: usize,
    num_buffers_at: &mut [Option<GuestAddress>; 2],
) -> Option<usize> {
    let mut written = 0usize;
    for desc in chain {
        let rest = data.get(written..)?;
        if rest.is_empty() {
            break;
        }
        if !desc.is_write_only() {
            return None;
        }
        let len = usize::try_from(desc.len()).ok()?.min(rest.len());
        let part = rest.get(..len)?;
        mem.write_slice(part, desc.addr()).ok()?;
        let start = frame_off + written;
        for (i, at) in num_buffers_at.iter_mut().enumerate() {
            let pos = NUM_BUFFERS_OFFSET + i;
            if (start..start + len).contains(&pos) {
                *at = desc.addr().checked_add((pos - start) as u64);
            }
        }
        written += len;
    }
    Some(written)
}

/// Places `frame` (header included) in the receive queue: one chain, or with mergeable buffers
/// as many as it takes. Used entries of one frame are published together, so the driver never
/// sees a first buffer whose `num_buffers` counts entries not yet in the used ring.
fn place_frame<M: GuestMemoryBackend>(
    mem: &M,
    rx: &mut Queue,
    mergeable: bool,
    frame: &mut [u8],
    chains: &mut Vec<(u16, u32)>,
    published: &mut u32,
) -> Result<Placed, VirtioError> {
    let max_chains = if mergeable { usize::from(rx.size()) } else { 1 };
    // Without mergeable buffers the header still has the field, and it must say 1.
    if let Some(field) = frame.get_mut(NUM_BUFFERS_OFFSET..NET_HDR_LEN) {
        field.copy_from_slice(&1u16.to_le_bytes());
    }

    chains.clear();
    let start = rx.next_avail();
    let mut written = 0usize;
    let mut num_buffers_at = [None, None];
    while written < frame.len() {
        if chains.len() >= max_chains {
            rx.set_next_avail(start);
            return Ok(Placed::TooLarge);
        }
        let Some(chain) = pop_chain(rx, mem)? else {
            return Ok(Placed::NoBuffers { start });
        };
        let head = chain.head_index();
        // The whole header goes in the first chain.
        let min = if chains.is_empty() { NET_HDR_LEN } else { 1 };
        let rest = frame.get(written..).unwrap_or_default();
        match fill_chain(chain, mem, rest, written, &mut num_buffers_at) {
            Some(n) if n >= min && n <= u32::MAX as usize => {
                chains.push((head, n as u32));
                written += n;
            }
            _ => {
                chains.push((head, 0));
                for chain in chains.iter_mut() {
                    chain.1 = 0;
                }
                publish_used(rx, mem, chains, published)?;
                return Ok(Placed::BadChain);
            }
        }
    }
    if chains.len() > 1 {
        // Only with mergeable buffers; `max_chains` is at most the ring size, so it fits.
        let count = u16::try_from(chains.len())
            .unwrap_or(u16::MAX)
            .to_le_bytes();
        for (at, byte) in num_buffers_at.iter().zip(count) {
            if let Some(at) = at {
                mem.write_obj(byte, *at)
                    .map_err(|e| VirtioError::Queue(virtio_queue::Error::GuestMemory(e)))?;
            }
        }
    }
    publish_used(rx, mem, chains, published)?;
    Ok(Placed::Delivered)
}

/// Writes `entries` to the used ring, then moves its index past all of them at once.
fn publish_used<M: GuestMemoryBackend>(
    rx: &mut Queue,
    mem: &M,
    entries: &[(u16, u32)],
    published: &mut u32,
) -> Result<(), VirtioError> {
    let guest_err = |e| VirtioError::Queue(virtio_queue::Error::GuestMemory(e));
    let size = rx.size();
    let used = GuestAddress(rx.used_ring());
    let mut idx = rx.next_used();
    for &(head, len) in entries {
        // A head outside the ring cannot be named in the used ring.
        if head >= size {
            continue;
        }
        let slot = u64::from(idx % size);
        let at = used
            .checked_add(4 + 8 * slot)
            .ok_or(VirtioError::Queue(virtio_queue::Error::AddressOverflow))?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, at).map_err(guest_err)?;
        idx = idx.wrapping_add(1);
        *published = published.saturating_add(1);
    }
    let idx_at = used
        .checked_add(2)
        .ok_or(VirtioError::Queue(virtio_queue::Error::AddressOverflow))?;
    // Release: the driver that sees the new index sees the entries and the data.
    mem.store(idx.to_le(), idx_at, Ordering::Release)
        .map_err(guest_err)?;
    rx.set_next_used(idx);
    Ok(())
}

/// Whether the driver wants an interrupt for the `published` entries added to the receive
/// queue since `old_used` (EVENT_IDX's `used_event`, as in virtio 1.2, 2.7.10).
fn rx_needs_interrupt<M: GuestMemoryBackend>(
    mem: &M,
    rx: &Queue,
    old_used: u16,
    published: u32,
) -> Result<bool, VirtioError> {
    if !rx.event_idx_enabled() {
        return Ok(true);
    }
    // The 16-bit window cannot tell a full wrap from no progress; be safe and interrupt.
    if published >= u32::from(u16::MAX) {
        return Ok(true);
    }
    // Order the used-ring writes before reading what the driver asked for.
    fence(Ordering::SeqCst);
    let used_event_at = GuestAddress(rx.avail_ring())
        .checked_add(4 + 2 * u64::from(rx.size()))
        .ok_or(VirtioError::Queue(virtio_queue::Error::AddressOverflow))?;
    let used_event = u16::from_le(
        mem.load(used_event_at, Ordering::Relaxed)
            .map_err(|e| VirtioError::Queue(virtio_queue::Error::GuestMemory(e)))?,
    );
    let new = rx.next_used();
    Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old_used))
}
