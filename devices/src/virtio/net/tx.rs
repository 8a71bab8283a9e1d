//! The transmit path: one chain from the guest becomes one frame on the backend.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryBackend};

use super::features::{MIN_BUFFER_LEN, NET_HDR_LEN};
use super::NetBackend;
use crate::metrics::NetMetrics;
use crate::virtio::{consume_request, Served};
use vmm_rate_limiter::RateLimiter;

/// Sends the frame in `chain` (header included) to `backend`, through `buf` (at least
/// [`MAX_BUFFER_LEN`](super::MAX_BUFFER_LEN) bytes). A chain that does not hold a frame, and a
/// frame the backend cannot take now, are dropped and counted: the guest's TCP resends. A
/// frame `limiter` refuses (one operation and its length, header included) is not sent:
/// [`Served::Throttled`], and the chain is retried later.
pub(super) fn transmit_chain<M: GuestMemoryBackend>(
    chain: DescriptorChain<&M>,
    mem: &M,
    buf: &mut [u8],
    backend: &mut dyn NetBackend,
    metrics: &NetMetrics,
    limiter: &mut RateLimiter,
) -> Served {
    match gather_readable(chain, mem, buf) {
        Some(len) if len >= MIN_BUFFER_LEN => {
            if !consume_request(limiter, len as u64) {
                return Served::Throttled;
            }
            let frame = buf.get(..len).unwrap_or_default();
            match backend.write_frame(frame) {
                Ok(_) => {
                    metrics.tx_count.inc();
                    metrics.tx_packets_count.inc();
                    metrics.tx_bytes_count.add((len - NET_HDR_LEN) as u64);
                }
                Err(_) => {
                    metrics.tap_write_fails.inc();
                    metrics.tx_fails.inc();
                }
            }
        }
        _ => metrics.tx_malformed_frames.inc(),
    }
    Served::Used(0)
}

/// Copies the device-readable buffers of `chain` into `buf`; `None` when they do not fit in it
/// or one is outside guest memory. Device-writable buffers have no place in a transmit chain
/// and are skipped.
fn gather_readable<M: GuestMemoryBackend>(
    chain: DescriptorChain<&M>,
    mem: &M,
    buf: &mut [u8],
) -> Option<usize> {
    let mut filled = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            continue;
        }
        let len = usize::try_from(desc.len()).ok()?;
        let end = filled.checked_add(len)?;
        let dest = buf.get_mut(filled..end)?;
        mem.read_slice(dest, desc.addr()).ok()?;
        filled = end;
    }
    Some(filled)
}
