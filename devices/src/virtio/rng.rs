//! virtio-rng (virtio 1.2, 5.4 "Entropy Device"): the guest hands the device empty buffers on
//! its single request queue and gets them back full of random bytes from the host kernel.
//!
//! Bytes come from getrandom(2) with no flags, the same source as /dev/urandom: once the host's
//! pool is initialised (long before a VMM runs) it never blocks and never runs dry, so a guest
//! cannot starve the host or other guests of entropy by asking for a lot of it.
//!
//! Rate limiting ([`Rng::set_rate_limiter`]): each request costs one operation and the bytes
//! it asks for (its writable length, at most [`MAX_BYTES_PER_CHAIN`]); a refused request stays
//! at the head of the queue until the limiter's timerfd fires.
//!
//! Hostile drivers: only device-writable descriptors are filled, at most
//! [`MAX_BYTES_PER_CHAIN`] bytes per chain; readable descriptors are skipped; a descriptor
//! outside guest memory ends its chain, which is returned with the bytes written before it.

use std::fmt;
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::metrics::EntropyMetrics;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestMemoryBackend};

use vmm_rate_limiter::{BucketUpdate, RateLimiter};
use vmm_sys_util::epoll::EventSet;

use super::{
    consume_request, device_type, drain_queue_limited, features, limiter_fd, ActiveQueues,
    BackendFd, Persist, Served, VirtioDevice, VirtioDeviceState, VirtioError, VirtioInterrupt,
};

/// The token of the rate limiter's descriptor in [`VirtioDevice::backend_fds`].
pub const RATE_LIMITER_TOKEN: u32 = 1;

/// Size of the request queue offered to the driver.
pub const QUEUE_SIZE: u16 = 256;

/// The most random bytes one descriptor chain receives; longer buffers are partly filled
/// (the spec lets the device use less than the whole buffer), which bounds the work and the
/// host memory one request costs.
pub const MAX_BYTES_PER_CHAIN: usize = 64 * 1024;

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

/// Snapshot state of the rng device.
///
/// The device keeps nothing between requests, so there is nothing to save beyond the queue,
/// which the transport saves.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RngState {}

/// What the device holds between DRIVER_OK and reset.
struct Active<M> {
    mem: M,
    queue: Queue,
    interrupt: VirtioInterrupt,
}

/// The virtio entropy device, on guest memory of type `M`.
pub struct Rng<M> {
    active: Option<Active<M>>,
    /// Random bytes are drawn here, then copied to guest memory: keeps getrandom(2) away from
    /// guest mappings and needs no unsafe pointer arithmetic on them.
    scratch: super::LazyBuf,
    metrics: Arc<EntropyMetrics>,
    /// Requests pass it first; unlimited by default.
    rate_limiter: RateLimiter,
    /// Times the queue stopped because the rate limiter was blocked.
    throttled: u64,
}

impl<M> fmt::Debug for Rng<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rng")
            .field("activated", &self.active.is_some())
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl<M: GuestMemoryBackend> Default for Rng<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: GuestMemoryBackend> Rng<M> {
    /// A device waiting for its driver.
    pub fn new() -> Rng<M> {
        Rng {
            active: None,
            scratch: super::LazyBuf::new(MAX_BYTES_PER_CHAIN),
            metrics: Arc::default(),
            rate_limiter: RateLimiter::default(),
            throttled: 0,
        }
    }

    /// Replaces the rate limiter. Call it before the event loop polls the device's
    /// [`VirtioDevice::backend_fds`]; later, use [`Rng::update_rate_limiter`].
    pub fn set_rate_limiter(&mut self, limiter: RateLimiter) {
        self.rate_limiter = limiter;
    }

    /// The rate limiter.
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.rate_limiter
    }

    /// Changes the rate limiter's buckets at run time (see [`RateLimiter::update_buckets`]).
    pub fn update_rate_limiter(
        &mut self,
        bandwidth: BucketUpdate,
        ops: BucketUpdate,
    ) -> Result<(), vmm_rate_limiter::Error> {
        self.rate_limiter.update_buckets(bandwidth, ops)
    }

    /// How many times the queue stopped because the rate limiter was blocked.
    pub fn throttled_count(&self) -> u64 {
        self.throttled
    }

    /// Random bytes handed to the guest since the device was created.
    pub fn bytes_served(&self) -> u64 {
        self.metrics.entropy_bytes.get()
    }

    /// The device's counters (bytes served, requests, failures), shared with whoever reports
    /// them.
    pub fn metrics(&self) -> Arc<EntropyMetrics> {
        self.metrics.clone()
    }

    fn process_requests(&mut self) -> Result<(), VirtioError> {
        let Some(active) = self.active.as_mut() else {
            // A notify before DRIVER_OK or after a reset: nothing to serve.
            return Ok(());
        };
        let mem = &active.mem;
        let scratch = self.scratch.get();
        let metrics = &*self.metrics;
        let limiter = &mut self.rate_limiter;
        let throttled = drain_queue_limited(&mut active.queue, mem, &active.interrupt, |chain| {
            let asked: u64 = chain
                .clone()
                .writable()
                .map(|desc| u64::from(desc.len()))
                .sum();
            if !consume_request(limiter, asked.min(MAX_BYTES_PER_CHAIN as u64)) {
                return Ok(Served::Throttled);
            }
            let written =
                fill_chain(mem, chain, scratch).inspect_err(|_| metrics.host_rng_fails.inc())?;
            metrics.entropy_bytes.add(u64::from(written));
            Ok(Served::Used(written))
        })?;
        if throttled {
            self.throttled += 1;
            metrics.entropy_rate_limiter_throttled.inc();
        }
        Ok(())
    }
}

/// Fills the writable descriptors of `chain` with random bytes; returns how many were written.
fn fill_chain<M: GuestMemoryBackend>(
    mem: &M,
    chain: DescriptorChain<&M>,
    scratch: &mut [u8],
) -> Result<u32, VirtioError> {
    let cap = scratch.len().min(MAX_BYTES_PER_CHAIN);
    let mut written = 0usize;
    for desc in chain.writable() {
        let room = cap.saturating_sub(written);
        if room == 0 {
            break;
        }
        let want = usize::try_from(desc.len()).unwrap_or(usize::MAX).min(room);
        if want == 0 {
            continue;
        }
        let Some(buf) = scratch.get_mut(..want) else {
            break;
        };
        fill_random(buf).map_err(VirtioError::Backend)?;
        match mem.write(buf, desc.addr()) {
            Ok(n) => {
                written = written.saturating_add(n);
                if n < want {
                    // The buffer runs off the end of guest memory: keep what fit, stop here.
                    break;
                }
            }
            Err(_) => break,
        }
    }
    // `written` never exceeds MAX_BYTES_PER_CHAIN, so it fits.
    Ok(u32::try_from(written).unwrap_or(u32::MAX))
}

/// Fills `buf` from getrandom(2), retrying on EINTR and short reads.
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0usize;
    while let Some(rest) = buf.get_mut(done..) {
        if rest.is_empty() {
            break;
        }
        // SAFETY: `rest` is a live, exclusively borrowed byte buffer of `rest.len()` bytes; the
        // kernel writes at most that many bytes into it.
        let rc = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if rc == 0 {
            // Never happens for a non-empty buffer; an error beats spinning.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "getrandom returned no bytes",
            ));
        }
        // rc is positive and at most rest.len().
        done = done.saturating_add(rc.unsigned_abs());
    }
    Ok(())
}

impl<M: GuestMemoryBackend + Send + 'static> VirtioDevice<M> for Rng<M> {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // No configuration space.
        super::read_config_bytes(&[], offset, data);
    }

    fn activate(&mut self, active: ActiveQueues<M>) -> Result<(), VirtioError> {
        let (mem, [queue], interrupt) = active
            .into_queues()
            .inspect_err(|_| self.metrics.activate_fails.inc())?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, index: usize) -> Result<(), VirtioError> {
        if index != 0 {
            return Ok(());
        }
        self.metrics.entropy_event_count.inc();
        self.process_requests()
            .inspect_err(|_| self.metrics.entropy_event_fails.inc())
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        vec![limiter_fd(&self.rate_limiter, RATE_LIMITER_TOKEN)]
    }

    fn process_backend(&mut self, token: u32, _events: EventSet) -> Result<(), VirtioError> {
        if token == RATE_LIMITER_TOKEN && self.rate_limiter.event_handler().is_ok() {
            self.metrics.rate_limiter_event_count.inc();
            return self.process_requests();
        }
        Ok(())
    }

    fn save_state(&self) -> VirtioDeviceState {
        crate::virtio::save_state(self)
    }

    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), VirtioError> {
        crate::virtio::restore_state(self, state)
    }
}

impl<M> Persist for Rng<M> {
    const KIND: &'static str = "virtio-rng";
    type State = RngState;

    fn save(&self) -> RngState {
        RngState {}
    }

    fn restore(&mut self, _: RngState) -> Result<(), VirtioError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{activate, test_memory, TestQueue, DESC_F_NEXT, DESC_F_WRITE};
    use crate::virtio::{interrupt_bits, VirtioDeviceState};
    use vmm_memory::{GuestAddress, GuestMemoryMmap};

    /// The device on the VMM's memory type (dirty bitmap included).
    type Rng = super::Rng<GuestMemoryMmap>;

    const MEM_SIZE: usize = 0x10_0000;
    const QUEUE_BASE: u64 = 0x1000;
    const BUF: u64 = 0x1_0000;

    struct Harness {
        mem: GuestMemoryMmap,
        tq: TestQueue,
        rng: Rng,
        interrupt: VirtioInterrupt,
    }

    fn harness(acked_features: u64) -> Harness {
        let mem = test_memory(MEM_SIZE);
        let tq = TestQueue::new(QUEUE_BASE, QUEUE_SIZE);
        let mut rng = Rng::new();
        let (interrupt, _) = activate(&mut rng, &mem, [&tq], acked_features).unwrap();
        Harness {
            mem,
            tq,
            rng,
            interrupt,
        }
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn nonzero(bytes: &[u8]) -> bool {
        bytes.iter().any(|&b| b != 0)
    }

    #[test]
    fn offers_one_queue_event_idx_and_no_config() {
        let rng = Rng::new();
        assert_eq!(rng.device_type(), device_type::RNG);
        assert_eq!(rng.queue_max_sizes(), &[256]);
        assert_eq!(
            rng.device_features(),
            features::VERSION_1 | features::RING_EVENT_IDX
        );
        let mut data = [0xffu8; 8];
        rng.read_config(0, &mut data);
        assert_eq!(data, [0; 8]);
        assert!(!rng.is_activated());
    }

    #[test]
    fn fills_every_writable_descriptor_and_skips_readable_ones() {
        let mut h = harness(features::VERSION_1);
        let readable = [0x5au8; 64];
        h.mem.write_slice(&readable, GuestAddress(BUF)).unwrap();
        let head = h.tq.add_chain(
            &h.mem,
            &[
                (BUF, 64, false),
                (BUF + 0x1000, 100, true),
                (BUF + 0x2000, 0, true),
                (BUF + 0x3000, 300, true),
            ],
        );
        h.rng.process_queue(0).unwrap();
        assert_eq!(h.tq.used_idx(&h.mem), 1);
        assert_eq!(h.tq.used_elem(&h.mem, 0), (u32::from(head), 400));
        assert_eq!(read(&h.mem, BUF, 64), readable, "readable buffer untouched");
        assert!(nonzero(&read(&h.mem, BUF + 0x1000, 100)));
        assert!(nonzero(&read(&h.mem, BUF + 0x3000, 300)));
        // Nothing past the descriptors' ends.
        assert!(!nonzero(&read(&h.mem, BUF + 0x1000 + 100, 0x1000 - 100)));
        assert!(!nonzero(&read(&h.mem, BUF + 0x3000 + 300, 0x100)));
        assert_eq!(h.rng.bytes_served(), 400);
        assert_eq!(h.interrupt.status(), interrupt_bits::USED_BUFFER);
    }

    #[test]
    fn works_on_guest_memory_without_a_bitmap() {
        // Any `GuestMemoryBackend` fits: here vm-memory's mmap memory with no dirty bitmap.
        let mem: vm_memory::GuestMemoryMmap<()> =
            vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut tq = TestQueue::new(QUEUE_BASE, QUEUE_SIZE);
        let mut rng = super::Rng::new();
        let (interrupt, _) = activate(&mut rng, &mem, [&tq], features::VERSION_1).unwrap();
        let head = tq.add_chain(&mem, &[(BUF, 64, false), (BUF + 0x1000, 128, true)]);
        rng.process_queue(0).unwrap();
        assert_eq!(tq.used_idx(&mem), 1);
        assert_eq!(tq.used_elem(&mem, 0), (u32::from(head), 128));
        let mut got = [0u8; 128];
        mem.read_slice(&mut got, GuestAddress(BUF + 0x1000))
            .unwrap();
        assert!(nonzero(&got));
        assert_eq!(rng.bytes_served(), 128);
        assert_eq!(interrupt.status(), interrupt_bits::USED_BUFFER);
        assert_eq!(
            rng.save_state(),
            VirtioDeviceState::new("virtio-rng", &RngState {}).unwrap()
        );
    }

    #[test]
    fn two_reads_differ() {
        let mut h = harness(features::VERSION_1);
        h.tq.add_chain(&h.mem, &[(BUF, 64, true)]);
        h.tq.add_chain(&h.mem, &[(BUF + 64, 64, true)]);
        h.rng.process_queue(0).unwrap();
        assert_eq!(h.tq.used_idx(&h.mem), 2);
        let (a, b) = (read(&h.mem, BUF, 64), read(&h.mem, BUF + 64, 64));
        assert!(nonzero(&a) && nonzero(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn caps_each_chain_at_64_kib() {
        let mut h = harness(features::VERSION_1);
        // 40 KiB + 40 KiB: the second descriptor only gets the 24 KiB left.
        h.tq.add_chain(
            &h.mem,
            &[(BUF, 40 << 10, true), (BUF + (40 << 10), 40 << 10, true)],
        );
        h.rng.process_queue(0).unwrap();
        assert_eq!(h.tq.used_elem(&h.mem, 0).1, 64 << 10);
        let tail = read(&h.mem, BUF + (64 << 10), 16 << 10);
        assert!(!nonzero(&tail), "bytes past the cap stay untouched");
        assert!(nonzero(&read(&h.mem, BUF + (64 << 10) - 32, 32)));

        // One huge descriptor (u32::MAX bytes, most of it outside memory) is capped too.
        h.tq.add_chain(&h.mem, &[(BUF, u32::MAX, true)]);
        h.rng.process_queue(0).unwrap();
        assert_eq!(h.tq.used_elem(&h.mem, 1).1, 64 << 10);
    }

    #[test]
    fn a_descriptor_outside_memory_ends_the_chain() {
        let mut h = harness(features::VERSION_1);
        let outside = MEM_SIZE as u64 + 0x1000;
        h.tq.add_chain(
            &h.mem,
            &[
                (BUF, 32, true),
                (outside, 32, true),
                (BUF + 0x1000, 32, true),
            ],
        );
        h.rng.process_queue(0).unwrap();
        assert_eq!(h.tq.used_elem(&h.mem, 0).1, 32);
        assert!(!nonzero(&read(&h.mem, BUF + 0x1000, 32)));

        // Straddling the end of memory: the part inside is written and counted.
        let near_end = MEM_SIZE as u64 - 16;
        h.tq.add_chain(&h.mem, &[(near_end, 64, true), (BUF + 0x2000, 32, true)]);
        h.rng.process_queue(0).unwrap();
        assert_eq!(h.tq.used_elem(&h.mem, 1).1, 16);
        assert!(!nonzero(&read(&h.mem, BUF + 0x2000, 32)));
    }

    #[test]
    fn hostile_chains_are_returned_or_dropped_without_panic() {
        let mut h = harness(features::VERSION_1 | features::RING_EVENT_IDX);
        // A loop: 0 -> 1 -> 0, both writable.
        h.tq.write_desc(&h.mem, 0, BUF, 16, DESC_F_WRITE | DESC_F_NEXT, 1);
        h.tq.write_desc(&h.mem, 1, BUF + 16, 16, DESC_F_WRITE | DESC_F_NEXT, 0);
        h.tq.push_avail(&h.mem, 0);
        // A head past the table.
        h.tq.push_avail(&h.mem, 999);
        // A chain whose next points past the table.
        h.tq.write_desc(&h.mem, 2, BUF + 64, 16, DESC_F_WRITE | DESC_F_NEXT, 4000);
        h.tq.push_avail(&h.mem, 2);
        h.rng.process_queue(0).unwrap();
        assert_eq!(h.tq.used_idx(&h.mem), 2, "the bad head is dropped");
        // The loop is cut by the chain's length limit (queue size descriptors).
        let (id, len) = h.tq.used_elem(&h.mem, 0);
        assert_eq!(id, 0);
        assert!(len <= 16 * u32::from(QUEUE_SIZE));
        assert_eq!(h.tq.used_elem(&h.mem, 1), (2, 16));
    }

    #[test]
    fn a_broken_avail_index_is_an_error_not_a_hang() {
        let mut h = harness(features::VERSION_1 | features::RING_EVENT_IDX);
        // The driver claims 1000 new entries in a 256-entry ring.
        h.mem
            .write_obj(1000u16.to_le(), GuestAddress(h.tq.avail + 2))
            .unwrap();
        assert!(matches!(
            h.rng.process_queue(0),
            Err(VirtioError::Queue(
                virtio_queue::Error::InvalidAvailRingIndex
            ))
        ));
    }

    #[test]
    fn event_idx_suppresses_the_interrupt_until_used_event() {
        let mut h = harness(features::VERSION_1 | features::RING_EVENT_IDX);
        // used_event (after the avail ring entries) = 1: interrupt once two chains are used.
        let used_event = GuestAddress(h.tq.avail + 4 + 2 * u64::from(QUEUE_SIZE));
        h.mem.write_obj(1u16.to_le(), used_event).unwrap();
        h.tq.add_chain(&h.mem, &[(BUF, 8, true)]);
        h.rng.process_queue(0).unwrap();
        assert_eq!(h.interrupt.status(), 0);
        h.tq.add_chain(&h.mem, &[(BUF, 8, true)]);
        h.rng.process_queue(0).unwrap();
        assert_eq!(h.interrupt.status(), interrupt_bits::USED_BUFFER);
    }

    #[test]
    fn notifies_before_activation_and_on_other_queues_are_ignored() {
        let mut rng = Rng::new();
        rng.process_queue(0).unwrap();
        let mut h = harness(features::VERSION_1);
        h.tq.add_chain(&h.mem, &[(BUF, 8, true)]);
        h.rng.process_queue(1).unwrap();
        assert_eq!(h.tq.used_idx(&h.mem), 0);
        h.rng.reset();
        assert!(!h.rng.is_activated());
        h.rng.process_queue(0).unwrap();
        assert_eq!(h.tq.used_idx(&h.mem), 0);
    }

    #[test]
    fn activation_needs_exactly_one_queue() {
        let mem = test_memory(MEM_SIZE);
        let tq = TestQueue::new(QUEUE_BASE, QUEUE_SIZE);
        let mut rng = Rng::new();
        let err = activate(&mut rng, &mem, [&tq, &tq], features::VERSION_1).unwrap_err();
        assert!(matches!(
            err,
            VirtioError::QueueCount {
                expected: 1,
                got: 2
            }
        ));
        assert!(!rng.is_activated());
    }

    #[test]
    fn state_round_trip_and_mismatch() {
        let rng = Rng::new();
        let state = rng.save_state();
        let json = serde_json::to_string(&state).unwrap();
        let back: VirtioDeviceState = serde_json::from_str(&json).unwrap();
        let mut other = Rng::new();
        other.restore_state(&back).unwrap();
        let wrong = VirtioDeviceState::new(
            "virtio-balloon",
            &crate::virtio::balloon::BalloonState::default(),
        )
        .unwrap();
        let err = other.restore_state(&wrong).unwrap_err();
        assert!(err.to_string().contains("virtio-balloon"), "{err}");
    }

    #[test]
    fn a_byte_limit_serves_the_requests_that_fit_then_the_rest_after_the_timer() {
        use crate::rate_limiter::{BucketParams, BucketUpdate, RateLimiter};
        let mut h = harness(features::VERSION_1);
        // 1000 bytes per hour: requests of 600 and 400 bytes fit, the next 100 do not.
        let limiter = RateLimiter::new(Some(BucketParams::new(1000, 0, 3_600_000)), None).unwrap();
        h.rng.set_rate_limiter(limiter);
        let fd = h.rng.backend_fds()[0].fd;
        let heads: Vec<u16> = [(0u64, 600u32), (1, 400), (2, 100), (3, 100)]
            .iter()
            .map(|&(i, len)| h.tq.add_chain(&h.mem, &[(BUF + 0x1000 * i, len, true)]))
            .collect();
        h.rng.process_queue(0).unwrap();
        assert_eq!(h.tq.used_idx(&h.mem), 2);
        assert_eq!(h.rng.bytes_served(), 1000);
        assert!(!nonzero(&read(&h.mem, BUF + 0x2000, 100)), "not served");
        assert_eq!(h.rng.throttled_count(), 1);

        h.rng
            .update_rate_limiter(BucketUpdate::Disabled, BucketUpdate::None)
            .unwrap();
        crate::virtio::test_utils::wait_readable(fd);
        h.rng
            .process_backend(RATE_LIMITER_TOKEN, EventSet::IN)
            .unwrap();
        assert_eq!(h.tq.used_idx(&h.mem), 4);
        for (i, head) in heads.iter().enumerate() {
            assert_eq!(h.tq.used_elem(&h.mem, i as u16).0, u32::from(*head));
        }
        assert_eq!(h.rng.bytes_served(), 1200);
    }
}
