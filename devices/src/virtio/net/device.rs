//! The virtio-net device: config space, activation, and the two queues.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_net as vnet;
use virtio_queue::Queue;
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::epoll::EventSet;

use super::features::{backend_offloads, mergeable_rx, AVAIL_FEATURES, MAX_BUFFER_LEN};
use super::mac::{derived_mac, format_mac};
use super::persist::NetState;
use super::rx::Receiver;
use super::tap::{Tap, TapError};
use super::tx::transmit_chain;
use super::{
    NetBackend, NetStats, BACKEND_TOKEN, QUEUE_SIZE, RX_QUEUE, RX_RATE_LIMITER_TOKEN, TX_QUEUE,
    TX_RATE_LIMITER_TOKEN,
};
use crate::metrics::NetMetrics;
use crate::virtio::{
    device_type, drain_queue_limited, limiter_fd, read_config_bytes, ActiveQueues, BackendFd,
    Persist, VirtioDevice, VirtioDeviceState, VirtioError, VirtioInterrupt,
};
use vmm_rate_limiter::{BucketUpdate, RateLimiter};

const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];

/// What the device holds between DRIVER_OK and reset.
struct Active<M> {
    mem: M,
    rx: Queue,
    tx: Queue,
    interrupt: VirtioInterrupt,
    acked_features: u64,
}

/// A virtio-net device on a [`NetBackend`] (normally a [`Tap`]), on guest memory of type `M`.
pub struct Net<M> {
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
    active: Option<Active<M>>,
    /// The receive side: the frame that waits for buffers, and its scratch.
    pub(super) receiver: Receiver,
    tx_buf: crate::virtio::LazyBuf,
    metrics: Arc<NetMetrics>,
    /// Gates frames into the guest; unlimited by default.
    rx_limiter: RateLimiter,
    /// Gates frames from the guest; unlimited by default.
    tx_limiter: RateLimiter,
    /// Times the transmit queue stopped because its rate limiter was blocked.
    tx_throttled: u64,
}

impl<M> fmt::Debug for Net<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("backend_fd", &self.backend.as_raw_fd())
            .field("mac", &format_mac(&self.mac))
            .field("activated", &self.active.is_some())
            .field("rx_pending", &self.receiver.pending())
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl<M: GuestMemoryBackend> Net<M> {
    /// A device on `backend` with the MAC address `mac`, taken as given; with `None`, a locally
    /// administered address unique within this process.
    pub fn new(backend: Box<dyn NetBackend>, mac: Option<[u8; 6]>) -> Net<M> {
        static DEVICES: AtomicU32 = AtomicU32::new(0);
        let mac = mac.unwrap_or_else(|| {
            derived_mac(&format!("net{}", DEVICES.fetch_add(1, Ordering::Relaxed)))
        });
        Net {
            backend,
            mac,
            active: None,
            receiver: Receiver::new(),
            tx_buf: crate::virtio::LazyBuf::new(MAX_BUFFER_LEN),
            metrics: Arc::default(),
            rx_limiter: RateLimiter::default(),
            tx_limiter: RateLimiter::default(),
            tx_throttled: 0,
        }
    }

    /// Replaces the receive and transmit rate limiters. Call it before the event loop polls
    /// the device's [`VirtioDevice::backend_fds`] (they include the limiters' descriptors);
    /// later, change the buckets with [`Net::update_rate_limiters`].
    pub fn set_rate_limiters(&mut self, rx: RateLimiter, tx: RateLimiter) {
        self.rx_limiter = rx;
        self.tx_limiter = tx;
    }

    /// The receive and transmit rate limiters.
    pub fn rate_limiters(&self) -> (&RateLimiter, &RateLimiter) {
        (&self.rx_limiter, &self.tx_limiter)
    }

    /// Changes the limiters' buckets at run time (Firecracker's PATCH semantics, see
    /// [`RateLimiter::update_buckets`]): `(bandwidth, ops)` for receive, then for transmit.
    pub fn update_rate_limiters(
        &mut self,
        rx: (BucketUpdate, BucketUpdate),
        tx: (BucketUpdate, BucketUpdate),
    ) -> Result<(), vmm_rate_limiter::Error> {
        self.rx_limiter.update_buckets(rx.0, rx.1)?;
        self.tx_limiter.update_buckets(tx.0, tx.1)
    }

    /// How many times receiving and transmitting (in that order) stopped because the rate
    /// limiter was blocked.
    pub fn throttled_counts(&self) -> (u64, u64) {
        (self.receiver.throttled, self.tx_throttled)
    }

    /// A device on the tap `tap_name` (opened or created, see [`Tap::open`]). Without `mac`,
    /// the address is derived from the tap's name and this process's id.
    pub fn with_tap(tap_name: &str, mac: Option<[u8; 6]>) -> Result<Net<M>, TapError> {
        let tap = Tap::open(tap_name)?;
        let mac = mac.unwrap_or_else(|| derived_mac(tap.name()));
        Ok(Net::new(Box::new(tap), Some(mac)))
    }

    /// The card's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Frame counters since the device was built.
    pub fn stats(&self) -> NetStats {
        let m = &self.metrics;
        NetStats {
            tx_frames: m.tx_packets_count.get(),
            tx_bytes: m.tx_bytes_count.get(),
            tx_dropped: m.tx_malformed_frames.get() + m.tx_fails.get(),
            rx_frames: m.rx_packets_count.get(),
            rx_bytes: m.rx_bytes_count.get(),
            rx_dropped: m.rx_fails.get(),
        }
    }

    /// The device's counters (frames and bytes each way, failures), shared with whoever
    /// reports them.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    fn config(&self) -> [u8; 10] {
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&(vnet::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        // max_virtqueue_pairs: one pair.
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config
    }

    /// Sends every chain the driver made available on the transmit queue. Every chain goes
    /// back to the used ring with length 0, sent or dropped.
    fn process_tx(&mut self) -> Result<(), VirtioError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let mem = &active.mem;
        let (buf, backend, metrics) = (self.tx_buf.get(), self.backend.as_mut(), &*self.metrics);
        let limiter = &mut self.tx_limiter;
        let mut sent = 0u64;
        let result = drain_queue_limited(&mut active.tx, mem, &active.interrupt, |chain| {
            sent += 1;
            Ok(transmit_chain(chain, mem, buf, backend, metrics, limiter))
        });
        if sent == 0 {
            metrics.no_tx_avail_buffer.inc();
        }
        if result? {
            self.tx_throttled += 1;
            metrics.tx_rate_limiter_throttled.inc();
        }
        Ok(())
    }

    /// Moves frames from the backend into the receive queue until the backend is empty or the
    /// driver has no buffers left.
    fn process_rx(&mut self) -> Result<(), VirtioError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        self.receiver.receive(
            &active.mem,
            &mut active.rx,
            &active.interrupt,
            mergeable_rx(active.acked_features),
            self.backend.as_mut(),
            &self.metrics,
            &mut self.rx_limiter,
        )
    }
}

impl<M: GuestMemoryBackend + Send + 'static> VirtioDevice<M> for Net<M> {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, active: ActiveQueues<M>) -> Result<(), VirtioError> {
        // AVAIL_FEATURES has RING_EVENT_IDX: the queues see what the driver acked.
        let acked_features = active.acked_features & AVAIL_FEATURES;
        let metrics = self.metrics.clone();
        let failed = move |_: &VirtioError| metrics.activate_fails.inc();
        let (mem, [rx, tx], interrupt) = active.into_queues().inspect_err(&failed)?;
        self.backend
            .set_offload(backend_offloads(acked_features))
            .map_err(VirtioError::Backend)
            .inspect_err(&failed)?;
        self.receiver.drop_pending();
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
            acked_features,
        });
        // Frames that reached the backend before now already raised their edge: take them.
        // If that fails the device stays inactive, as if activation had never happened.
        let taken = self.process_rx();
        if let Err(e) = &taken {
            failed(e);
            self.active = None;
        }
        taken
    }

    fn reset(&mut self) {
        self.active = None;
        self.receiver.drop_pending();
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, index: usize) -> Result<(), VirtioError> {
        let result = match index {
            RX_QUEUE => {
                self.metrics.rx_queue_event_count.inc();
                self.process_rx()
            }
            TX_QUEUE => {
                self.metrics.tx_queue_event_count.inc();
                self.process_tx()
            }
            _ => Ok(()),
        };
        if result.is_err() {
            self.metrics.event_fails.inc();
        }
        result
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        vec![
            BackendFd {
                fd: self.backend.as_raw_fd(),
                events: EventSet::IN | EventSet::EDGE_TRIGGERED,
                token: BACKEND_TOKEN,
            },
            limiter_fd(&self.rx_limiter, RX_RATE_LIMITER_TOKEN),
            limiter_fd(&self.tx_limiter, TX_RATE_LIMITER_TOKEN),
        ]
    }

    fn process_backend(&mut self, token: u32, _events: EventSet) -> Result<(), VirtioError> {
        // A limiter's wake-up that is spurious (not blocked, timer not expired) changes
        // nothing; otherwise its queue is served again.
        let result = match token {
            BACKEND_TOKEN => {
                self.metrics.rx_tap_event_count.inc();
                self.process_rx()
            }
            RX_RATE_LIMITER_TOKEN if self.rx_limiter.event_handler().is_ok() => {
                self.metrics.rx_event_rate_limiter_count.inc();
                self.process_rx()
            }
            TX_RATE_LIMITER_TOKEN if self.tx_limiter.event_handler().is_ok() => {
                self.metrics.tx_rate_limiter_event_count.inc();
                self.process_tx()
            }
            _ => Ok(()),
        };
        result.inspect_err(|_| self.metrics.event_fails.inc())
    }

    fn save_state(&self) -> VirtioDeviceState {
        crate::virtio::save_state(self)
    }

    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), VirtioError> {
        crate::virtio::restore_state(self, state)
    }
}

impl<M> Persist for Net<M> {
    const KIND: &'static str = "virtio-net";
    type State = NetState;

    fn save(&self) -> NetState {
        NetState { mac: self.mac }
    }

    fn restore(&mut self, state: NetState) -> Result<(), VirtioError> {
        self.mac = state.checked_mac()?;
        self.receiver.drop_pending();
        Ok(())
    }
}
