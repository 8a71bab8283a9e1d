//! The virtio-blk device: feature bits, config space, activation and the request queue.

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
};
use virtio_queue::Queue;
use vm_memory::GuestMemoryBackend;
use vmm_rate_limiter::{BucketUpdate, RateLimiter};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::persist::BlockState;
use super::request::{process_chain, MAX_CHAIN_DESCRIPTORS};
use super::{
    configured_id, BlockConfig, BlockError, CacheType, DiskInfo, DISCARD_SECTOR_ALIGNMENT,
    MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX,
};
use crate::metrics::BlockMetrics;
use crate::virtio::{
    device_type, drain_queue_limited, features, limiter_fd, read_config_bytes, ActiveQueues,
    BackendFd, Persist, VirtioDevice, VirtioDeviceState, VirtioError, VirtioInterrupt,
};
use vmm_disk::RawFile;
use vmm_disk::{DiskId, DiskImage, DiskIoError, DiskSeal, GuestRange};

/// The token of the rate limiter's descriptor in
/// [`VirtioDevice::backend_fds`](crate::virtio::VirtioDevice::backend_fds).
pub const RATE_LIMITER_TOKEN: u32 = 1;
/// [`VirtioDevice::process_backend`] token of the commit timer ([`DiskImage::commit_interval`]).
pub const COMMIT_TIMER_TOKEN: u32 = 2;

/// Size of the config space (the whole `struct virtio_blk_config`).
const CONFIG_LEN: usize = std::mem::size_of::<virtio_blk_config>();

/// The queue and what it needs, between activation and reset.
struct Active<M> {
    mem: M,
    queue: Queue,
    interrupt: VirtioInterrupt,
}

/// A virtio-blk device over a [`DiskImage`], by default a raw image ([`RawFile`]).
///
/// The capacity is the backend's size divided by 512, rounded down: a trailing partial sector
/// is not exposed to the guest (and never written). The size is read once, when the device is
/// built.
///
/// `M` is the guest memory type the device works on (any vm-memory [`GuestMemoryBackend`]).
pub struct Block<M: GuestMemoryBackend, B: DiskImage<M> = RawFile> {
    backend: B,
    disk: DiskInfo,
    config_space: [u8; CONFIG_LEN],
    active: Option<Active<M>>,
    /// Descriptors of the chain being handled; reused so a request allocates nothing.
    scratch: Vec<GuestRange>,
    /// Requests pass it first; unlimited by default.
    rate_limiter: RateLimiter,
    /// Times the queue stopped because the rate limiter was blocked.
    throttled: u64,
    /// VIRTIO_BLK_F_DISCARD was offered by an earlier backend ([`Block::swap_backend`]): the
    /// feature bits a driver saw never change under it.
    discard_offered: bool,
    /// Flushes the backend [`DiskImage::commit_interval`] after a write the guest did not
    /// flush; polled for every backend (a swapped-in one may want it), armed only for those.
    commit_timer: TimerFd,
    /// The commit timer runs.
    commit_armed: bool,
    /// Writes reached the backend since its last flush.
    unflushed: bool,
    metrics: Arc<BlockMetrics>,
}

impl<M: GuestMemoryBackend, B: DiskImage<M>> fmt::Debug for Block<M, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block")
            .field("capacity_sectors", &self.disk.capacity_sectors)
            .field("read_only", &self.disk.read_only)
            .field("id", &self.disk.id_string())
            .field("activated", &self.active.is_some())
            .field("throttled", &self.throttled)
            .finish_non_exhaustive()
    }
}

impl<M: GuestMemoryBackend> Block<M, RawFile> {
    /// Opens the raw image named by `config` (read-write, or read-only when asked); see
    /// [`RawFile::open`].
    pub fn new(config: BlockConfig) -> Result<Block<M, RawFile>, BlockError> {
        // A bad ID fails before the image is opened.
        let id = config.id.as_deref().map(configured_id).transpose()?;
        let backend = RawFile::open(&config.path, config.read_only)?;
        Block::build(backend, id)
    }
}

impl<M: GuestMemoryBackend, B: DiskImage<M>> Block<M, B> {
    /// A device on `backend`. `id` is the serial the guest reads with GET_ID (at most 20
    /// bytes); `None` takes the backend's [`DiskImage::id`].
    pub fn with_backend(backend: B, id: Option<&str>) -> Result<Block<M, B>, BlockError> {
        let id = id.map(configured_id).transpose()?;
        Block::build(backend, id)
    }

    fn build(backend: B, id: Option<DiskId>) -> Result<Block<M, B>, BlockError> {
        // A backend shorter than a sector is an empty disk: every read and write fails.
        let capacity_sectors = backend.size() / SECTOR_SIZE;
        let disk = DiskInfo {
            capacity_sectors,
            read_only: backend.read_only(),
            id: id.unwrap_or_else(|| backend.id()),
            writeback: true,
            discard: backend.can_discard() && !backend.read_only(),
        };

        let mut config_space = [0u8; CONFIG_LEN];
        write_capacity(&mut config_space, capacity_sectors);
        // size_max stays 0: VIRTIO_BLK_F_SIZE_MAX is not offered, segments may be any size.
        write_le(
            &mut config_space,
            std::mem::offset_of!(virtio_blk_config, seg_max),
            &SEG_MAX.to_le_bytes(),
        );
        // The discard limits are read by a driver only when VIRTIO_BLK_F_DISCARD is offered;
        // they are the same for every backend.
        for (offset, value) in [
            (
                std::mem::offset_of!(virtio_blk_config, max_discard_sectors),
                MAX_DISCARD_SECTORS,
            ),
            (
                std::mem::offset_of!(virtio_blk_config, max_discard_seg),
                MAX_DISCARD_SEG,
            ),
            (
                std::mem::offset_of!(virtio_blk_config, discard_sector_alignment),
                DISCARD_SECTOR_ALIGNMENT,
            ),
        ] {
            write_le(&mut config_space, offset, &value.to_le_bytes());
        }

        Ok(Block {
            backend,
            disk,
            config_space,
            active: None,
            scratch: Vec::with_capacity(MAX_CHAIN_DESCRIPTORS),
            rate_limiter: RateLimiter::unlimited().map_err(BlockError::RateLimiter)?,
            throttled: 0,
            discard_offered: false,
            commit_timer: TimerFd::new()
                .map_err(|e| BlockError::CommitTimer(std::io::Error::from(e)))?,
            commit_armed: false,
            unflushed: false,
            metrics: Arc::default(),
        })
    }

    /// Sets how the guest's flushes are treated (before the driver negotiates features: the
    /// choice decides whether VIRTIO_BLK_F_FLUSH is offered). The default is
    /// [`CacheType::Writeback`].
    pub fn set_cache_type(&mut self, cache_type: CacheType) {
        self.disk.writeback = cache_type == CacheType::Writeback;
    }

    /// The cache type ([`Block::set_cache_type`]).
    pub fn cache_type(&self) -> CacheType {
        if self.disk.writeback {
            CacheType::Writeback
        } else {
            CacheType::Unsafe
        }
    }

    /// Replaces the rate limiter. Call it before the event loop polls the device's
    /// [`VirtioDevice::backend_fds`] (they include the limiter's descriptor); later, change
    /// the buckets with [`Block::update_rate_limiter`] instead.
    pub fn set_rate_limiter(&mut self, limiter: RateLimiter) {
        self.rate_limiter = limiter;
    }

    /// The rate limiter.
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.rate_limiter
    }

    /// Changes the rate limiter's buckets at run time (Firecracker's PATCH semantics, see
    /// [`RateLimiter::update_buckets`]); its descriptor stays the same.
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

    /// Serves the disk from `backend` from now on (a drive's `path_on_host` changed): the
    /// capacity becomes the new backend's size (an empty one is fine), the read-only setting,
    /// the GET_ID serial and the features the guest already saw stay (a new backend that
    /// cannot discard answers discards with UNSUPP), and an active driver gets a
    /// config-change interrupt so that it re-reads the capacity. Returns the old backend.
    pub fn swap_backend(&mut self, backend: B) -> Result<B, VirtioError> {
        let old = std::mem::replace(&mut self.backend, backend);
        // Discard stays offered as before (the driver negotiated it); requests reach only a
        // backend that can do them.
        self.discard_offered = self.discard_offered || self.disk.discard;
        self.disk.discard = self.backend.can_discard() && !self.disk.read_only;
        self.disk.capacity_sectors = self.backend.size() / SECTOR_SIZE;
        write_capacity(&mut self.config_space, self.disk.capacity_sectors);
        if let Some(active) = &self.active {
            active.interrupt.signal_config_change()?;
        }
        Ok(old)
    }

    /// Starts the commit timer when the backend wants one and writes wait for a flush.
    fn arm_commit_timer(&mut self) {
        let Some(interval) = self.backend.commit_interval() else {
            return;
        };
        if self.unflushed && !self.commit_armed {
            match self.commit_timer.reset(interval, None) {
                Ok(()) => self.commit_armed = true,
                Err(e) => log::warn!("virtio-blk: cannot arm the commit timer: {e}"),
            }
        }
    }

    /// The commit timer fired: flushes the backend if writes still wait for it. A wake-up
    /// before the expiry (the timer still armed) changes nothing.
    fn commit_timer_expired(&mut self) {
        if !self.commit_armed || self.commit_timer.is_armed().unwrap_or(true) {
            return;
        }
        // Expired: the read returns at once and clears the readiness.
        let _ = self.commit_timer.wait();
        self.commit_armed = false;
        if self.unflushed && !self.disk.read_only {
            match self.backend.flush() {
                Ok(()) => self.unflushed = false,
                Err(e) => {
                    self.metrics.execute_fails.inc();
                    log::error!("virtio-blk: committing the disk after its writes failed: {e}");
                }
            }
        }
    }

    /// The disk's size in 512-byte sectors (the backend's size rounded down).
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors
    }

    /// Whether the disk is read-only (VIRTIO_BLK_F_RO offered).
    pub fn read_only(&self) -> bool {
        self.disk.read_only
    }

    /// The device's counters (bytes and requests served, failures), shared with whoever
    /// reports them.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// The backend the device serves.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Whether the device offers VIRTIO_BLK_F_DISCARD (the backend can discard and the disk
    /// is writable).
    pub fn discard(&self) -> bool {
        self.disk.discard || self.discard_offered
    }

    /// Seals the backend's current contents for a VM snapshot
    /// ([`DiskImage::seal_for_snapshot`]): call it with the VM paused, after the last request
    /// completed (requests complete inside `process_queue`, so any time the event loop is not
    /// in it). `None` for formats that keep no such point (raw, qcow2).
    pub fn seal_backend(&mut self) -> Result<Option<DiskSeal>, DiskIoError> {
        self.backend.seal_for_snapshot()
    }
}

/// Writes the capacity (in sectors) into the config space.
fn write_capacity(space: &mut [u8; CONFIG_LEN], capacity_sectors: u64) {
    write_le(
        space,
        std::mem::offset_of!(virtio_blk_config, capacity),
        &capacity_sectors.to_le_bytes(),
    );
}

/// Writes `bytes` at `offset` of the config space (offsets are from `virtio_blk_config`).
fn write_le(space: &mut [u8; CONFIG_LEN], offset: usize, bytes: &[u8]) {
    if let Some(dst) = space.get_mut(offset..offset + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Serves every request available on the queue, up to the first one the rate limiter refuses;
/// `Ok(true)` when it stopped there. Not generic over the backend (only over the memory type):
/// the request path is compiled once, here, whatever backend a user plugs in.
fn serve_queue<M: GuestMemoryBackend>(
    active: &mut Active<M>,
    disk: &DiskInfo,
    backend: &mut dyn DiskImage<M>,
    scratch: &mut Vec<GuestRange>,
    limiter: &mut RateLimiter,
    metrics: &BlockMetrics,
) -> Result<bool, VirtioError> {
    let Active {
        mem,
        queue,
        interrupt,
    } = active;
    // A broken available index is fatal (the transport sets DEVICE_NEEDS_RESET); heads past
    // the table are dropped.
    let mut handled = 0u64;
    let result = drain_queue_limited(queue, mem, interrupt, |chain| {
        handled += 1;
        Ok(process_chain(
            disk, backend, mem, chain, scratch, limiter, metrics,
        ))
    });
    if handled == 0 {
        metrics.no_avail_buffer.inc();
    }
    if result.is_err() {
        metrics.event_fails.inc();
    }
    result
}

impl<M, B> VirtioDevice<M> for Block<M, B>
where
    M: GuestMemoryBackend + Send + 'static,
    B: DiskImage<M> + 'static,
{
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        let mut f = features::VERSION_1 | features::RING_EVENT_IDX | (1 << VIRTIO_BLK_F_SEG_MAX);
        if self.disk.writeback {
            f |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        if self.disk.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        if self.discard() {
            f |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
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
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        if index != 0 {
            return Ok(());
        }
        self.metrics.queue_event_count.inc();
        let (writes, flushes) = (
            self.metrics.write_count.get(),
            self.metrics.flush_count.get(),
        );
        let throttled = serve_queue(
            active,
            &self.disk,
            &mut self.backend,
            &mut self.scratch,
            &mut self.rate_limiter,
            &self.metrics,
        )?;
        if throttled {
            self.throttled += 1;
        }
        if self.metrics.flush_count.get() != flushes && self.disk.writeback {
            self.unflushed = false;
        }
        // A write after the flush in the same batch is not flushed: count writes last.
        if self.metrics.write_count.get() != writes {
            self.unflushed = true;
        }
        self.arm_commit_timer();
        Ok(())
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        vec![
            limiter_fd(&self.rate_limiter, RATE_LIMITER_TOKEN),
            BackendFd {
                fd: self.commit_timer.as_raw_fd(),
                events: EventSet::IN,
                token: COMMIT_TIMER_TOKEN,
            },
        ]
    }

    fn process_backend(&mut self, token: u32, _events: EventSet) -> Result<(), VirtioError> {
        // A spurious wake-up (the limiter is not blocked, or its timer has not expired) changes
        // nothing; otherwise the blocked period is over and the queue is served again.
        if token == RATE_LIMITER_TOKEN && self.rate_limiter.event_handler().is_ok() {
            self.metrics.rate_limiter_event_count.inc();
            return self.process_queue(0);
        }
        if token == COMMIT_TIMER_TOKEN {
            self.commit_timer_expired();
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

impl<M: GuestMemoryBackend, B: DiskImage<M>> Persist for Block<M, B> {
    const KIND: &'static str = "virtio-blk";
    type State = BlockState;

    fn save(&self) -> BlockState {
        BlockState::of(&self.disk)
    }

    fn restore(&mut self, state: BlockState) -> Result<(), VirtioError> {
        state.restore_into(&mut self.disk)
    }
}
