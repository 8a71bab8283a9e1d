//! The VM's virtio-mmio devices: opened from the config (before KVM, so a bad `--disk` or
//! `--net` fails first), then attached: one MMIO slot, one IRQ line (irqfd) and one ioeventfd per
//! queue each, and a subscriber on the event loop for the queues and the device's host backend.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_devices::metrics::DeviceMetrics;
use vmm_devices::rate_limiter::{BucketParams, BucketUpdate, RateLimiter};
use vmm_devices::virtio::balloon::{Balloon, BalloonConfig as BalloonDeviceConfig};
use vmm_devices::virtio::block::{Block, CacheType, DiskImage};
use vmm_devices::virtio::mmio::{MmioTransport, NOTIFY_REG_OFFSET};
use vmm_devices::virtio::net::Net;
use vmm_devices::virtio::rng::Rng;
use vmm_devices::virtio::vsock::{Vsock, VsockConfig as VsockDeviceConfig};
use vmm_devices::virtio::{BackendFd, VirtioDevice, VirtioInterrupt};
use vmm_devices::{Bus, EventFdTrigger};
use vmm_disk::{Bounced, DiskError, OpenOptions, OpenedImage, VerityImage};
use vmm_loader::VirtioMmioDevice;
use vmm_memory::{layout, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_vcpu::Vm;

use crate::error::{Error, Result};
use crate::lock;
use vmm_api::VmConfig;

/// The virtio-mmio transport on this VMM's guest memory (vmm-devices is generic over it; ours
/// has the dirty bitmap that diff snapshots read).
pub(crate) type Transport = MmioTransport<GuestMemoryMmap>;

/// A disk backend of any format: raw on its zero-copy path, every other format through a
/// bounce buffer ([`Bounced`]).
pub type DiskBackend = Box<dyn DiskImage<GuestMemoryMmap>>;

/// The block device every drive of this VMM is, whatever its image format.
pub type BlockDevice = Block<GuestMemoryMmap, DiskBackend>;

/// `opened` as a guest-facing backend.
pub fn disk_backend(opened: OpenedImage) -> DiskBackend {
    opened.into_disk_image()
}

/// The image format an API drive names (vmm-api does not depend on vmm-disk).
pub fn disk_format(format: vmm_api::DiskFormat) -> vmm_disk::Format {
    match format {
        vmm_api::DiskFormat::Raw => vmm_disk::Format::Raw,
        vmm_api::DiskFormat::Qcow2 => vmm_disk::Format::Qcow2,
        vmm_api::DiskFormat::Layered => vmm_disk::Format::Layered,
    }
}

/// Opens the disk image at `path` in `format` (`None`: detected from its magic).
pub fn open_disk(
    path: &Path,
    format: Option<vmm_api::DiskFormat>,
    read_only: bool,
) -> std::result::Result<DiskBackend, DiskError> {
    let format = format.map(disk_format);
    let opened = vmm_disk::open_image(path, &OpenOptions { read_only, format })?;
    Ok(disk_backend(opened))
}

/// Opens a drive as its config says: in its format (detected, or `disk.format`), through a
/// LUKS layer when a key or passphrase file is given (read once, into locked memory; never
/// logged), and verified against a dm-verity hash file and root hash when `disk.verity` is
/// given (read-only drives; the tree covers what the guest reads, so over LUKS it is of the
/// plaintext). The counter of blocks that failed verification comes back with a verified disk.
/// Opening a LUKS disk makes the process non-dumpable (`PR_SET_DUMPABLE` 0): no core dump and
/// no ptrace by other processes of the same user, since the volume key lives in its memory.
pub fn open_disk_config(
    disk: &vmm_api::DiskConfig,
) -> std::result::Result<(DiskBackend, Option<Arc<AtomicU64>>), DiskError> {
    if !disk.is_luks() && disk.verity.is_none() {
        return Ok((open_disk(&disk.path, disk.format, disk.read_only)?, None));
    }
    let format = disk.format.map(disk_format);
    let mut image = vmm_disk::open_image(
        &disk.path,
        &OpenOptions {
            read_only: disk.read_only,
            format,
        },
    )?
    .into_image_file();
    let key_path = match (&disk.key_file, &disk.passphrase_file) {
        (Some(_), Some(_)) => {
            return Err(DiskError::Luks(vmm_disk::luks::Error::Create(
                "key_file and passphrase_file exclude each other".into(),
            )))
        }
        (Some(key), None) => Some(key),
        (None, pass) => pass.as_ref(),
    };
    if let Some(key_path) = key_path {
        let mut key = vmm_disk::luks::read_key_file(key_path)?;
        if disk.passphrase_file.is_some() && key.ends_with(b"\n") {
            let len = key.len() - 1;
            key.truncate(len);
        }
        make_non_dumpable();
        let options = vmm_disk::LuksOpenOptions {
            header: disk.luks_header.clone(),
            ..Default::default()
        };
        image = Box::new(vmm_disk::LuksImage::open(image, &key, &options)?);
    }
    let Some(verity) = &disk.verity else {
        return Ok((Box::new(Bounced::new(image)), None));
    };
    if !disk.read_only {
        return Err(vmm_disk::verity::Error::NotReadOnly.into());
    }
    let image = VerityImage::open(image, &verity.hash_file, &verity.root_hash)?;
    let counter = image.corrupt_counter();
    Ok((Box::new(Bounced::new(image)), Some(counter)))
}

/// A verity drive's block counters, and `verity_corrupt_blocks`: reads that failed because a
/// block did not match its hash (in the drive's `block_<id>` object).
#[derive(Debug)]
struct VerityBlockMetrics {
    block: Arc<dyn DeviceMetrics>,
    corrupt_blocks: Arc<AtomicU64>,
}

impl DeviceMetrics for VerityBlockMetrics {
    fn totals(&self) -> Vec<(&'static str, u64)> {
        let mut totals = self.block.totals();
        totals.push((
            "verity_corrupt_blocks",
            self.corrupt_blocks
                .load(std::sync::atomic::Ordering::Relaxed),
        ));
        totals
    }
}

fn make_non_dumpable() {
    // SAFETY: PR_SET_DUMPABLE takes an integer argument and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        log::warn!(
            "cannot make the process non-dumpable: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Virtio-mmio slots: one per IRQ line from `VIRTIO_IRQ_FIRST` to `IRQ_LAST`.
pub(crate) const VIRTIO_SLOTS: usize = layout::VIRTIO_MMIO_SLOTS;

/// Balloon pages are 4 KiB whatever the host page size.
const BALLOON_PAGE: u64 = 4096;

/// A balloon target in the device's 4 KiB pages (saturating).
pub(crate) fn balloon_pages(target: vmm_api::MemorySize) -> u32 {
    u32::try_from(target.0 / BALLOON_PAGE).unwrap_or(u32::MAX)
}

/// Where slot `index` sits and which IRQ it raises.
pub(crate) fn slot(index: usize) -> Option<VirtioMmioDevice> {
    if index >= VIRTIO_SLOTS {
        return None;
    }
    Some(VirtioMmioDevice {
        addr: layout::virtio_mmio_slot(index as u32)?,
        size: layout::VIRTIO_MMIO_DEVICE_SIZE,
        irq: layout::VIRTIO_IRQ_FIRST + index as u32,
    })
}

/// A device opened from the config, not yet attached to a VM.
pub(crate) struct OpenedDevice {
    /// Its id in snapshots (see [`AttachedDevice::id`]).
    pub id: String,
    /// "virtio-blk /path", for messages.
    pub name: String,
    pub device: Box<dyn VirtioDevice<GuestMemoryMmap>>,
    /// Its metrics group ("block", "net", ...) and counters.
    pub metrics: (&'static str, Arc<dyn DeviceMetrics>),
}

/// Opens every device the config names, in slot order: disks, nets, vsock, rng, balloon. A
/// disk whose index is in `opened_disks` gets that backend (a clone of a sealed disk, made by a
/// restore) instead of opening its path.
pub(crate) fn open_devices(
    config: &VmConfig,
    mut opened_disks: BTreeMap<usize, DiskBackend>,
) -> Result<Vec<OpenedDevice>> {
    if config.vsock.is_some() {
        raise_fd_limit();
    }
    let mut devices = Vec::with_capacity(config.virtio_device_count());
    for (index, disk) in config.disk.iter().enumerate() {
        let disk_error = |source| Error::Disk {
            path: disk.path.clone(),
            source,
        };
        let (backend, corrupt_blocks) = match opened_disks.remove(&index) {
            Some(backend) => (backend, None),
            None => open_disk_config(disk).map_err(|e| disk_error(e.into()))?,
        };
        let mut block: BlockDevice =
            Block::with_backend(backend, disk.id.as_deref()).map_err(disk_error)?;
        block.set_cache_type(match disk.cache_type {
            vmm_api::CacheType::Unsafe => CacheType::Unsafe,
            vmm_api::CacheType::Writeback => CacheType::Writeback,
        });
        block.set_rate_limiter(rate_limiter(disk.rate_limiter.as_ref())?);
        if disk.io_engine == Some(vmm_api::IoEngine::Async) {
            static ASYNC_NOTED: std::sync::Once = std::sync::Once::new();
            ASYNC_NOTED.call_once(|| {
                log::info!(
                    "io_engine \"Async\" is served by the synchronous block engine (same results, no io_uring)"
                );
            });
        }
        devices.push(OpenedDevice {
            id: format!("blk{index}"),
            name: format!("virtio-blk {}", disk.path.display()),
            metrics: (
                "block",
                match corrupt_blocks {
                    Some(corrupt_blocks) => Arc::new(VerityBlockMetrics {
                        block: block.metrics(),
                        corrupt_blocks,
                    }),
                    None => block.metrics(),
                },
            ),
            device: Box::new(block),
        });
    }
    for (index, net) in config.net.iter().enumerate() {
        let mut device: Net<GuestMemoryMmap> =
            Net::with_tap(&net.tap, net.mac_bytes()).map_err(|source| Error::Net {
                tap: net.tap.clone(),
                source,
            })?;
        device.set_rate_limiters(
            rate_limiter(net.rx_rate_limiter.as_ref())?,
            rate_limiter(net.tx_rate_limiter.as_ref())?,
        );
        devices.push(OpenedDevice {
            id: format!("net{index}"),
            name: format!("virtio-net {}", net.tap),
            metrics: ("net", device.metrics()),
            device: Box::new(device),
        });
    }
    if let Some(vsock) = &config.vsock {
        let device = Vsock::new(VsockDeviceConfig {
            guest_cid: vsock.cid,
            uds_path: vsock.socket.clone(),
        })
        .map_err(|source| Error::Vsock {
            path: vsock.socket.clone(),
            source,
        })?;
        devices.push(OpenedDevice {
            id: "vsock".into(),
            name: format!("virtio-vsock {}", vsock.socket.display()),
            metrics: ("vsock", device.metrics()),
            device: Box::new(device),
        });
    }
    if config.rng {
        let mut rng = Rng::<GuestMemoryMmap>::new();
        rng.set_rate_limiter(rate_limiter(config.rng_rate_limiter.as_ref())?);
        devices.push(OpenedDevice {
            id: "rng".into(),
            name: "virtio-rng".into(),
            metrics: ("entropy", rng.metrics()),
            device: Box::new(rng),
        });
    }
    if let Some(balloon) = &config.balloon {
        let target_pages = balloon_pages(balloon.target);
        let device = Balloon::new(BalloonDeviceConfig {
            target_pages,
            deflate_on_oom: balloon.deflate_on_oom,
            stats_polling_interval_s: balloon.stats_polling_interval_s,
        });
        devices.push(OpenedDevice {
            id: "balloon".into(),
            name: "virtio-balloon".into(),
            metrics: ("balloon", device.metrics()),
            device: Box::new(device),
        });
    }
    Ok(devices)
}

/// A configured bucket as the limiter's parameters.
fn bucket_params(bucket: &vmm_api::TokenBucketConfig) -> BucketParams {
    BucketParams::new(
        bucket.size,
        bucket.one_time_burst_or_zero(),
        bucket.refill_time,
    )
}

/// The rate limiter a device's configuration asks for (unlimited for `None`).
pub(crate) fn rate_limiter(config: Option<&vmm_api::RateLimiterConfig>) -> Result<RateLimiter> {
    let config = config.copied().unwrap_or_default();
    RateLimiter::new(
        config.bandwidth.as_ref().map(bucket_params),
        config.ops.as_ref().map(bucket_params),
    )
    .map_err(Error::RateLimiter)
}

/// A PATCH body's limiter as updates of the running one's `(bandwidth, ops)` buckets: an
/// absent bucket is left alone, one with size or refill time 0 is removed.
pub(crate) fn bucket_updates(
    config: Option<&vmm_api::RateLimiterConfig>,
) -> (BucketUpdate, BucketUpdate) {
    let update =
        |bucket: Option<&vmm_api::TokenBucketConfig>| BucketUpdate::from(bucket.map(bucket_params));
    match config {
        Some(c) => (update(c.bandwidth.as_ref()), update(c.ops.as_ref())),
        None => (BucketUpdate::None, BucketUpdate::None),
    }
}

/// A device on the VM's MMIO bus.
pub struct AttachedDevice {
    /// The device's id in snapshots: its kind and index among its kind ("blk0", "net1") or
    /// its kind alone for the single ones ("vsock", "rng", "balloon").
    pub id: String,
    /// "virtio-blk /path".
    pub name: String,
    /// Its slot.
    pub slot: VirtioMmioDevice,
    /// The transport (and device) shared by the bus and the event loop.
    pub transport: Arc<Mutex<Transport>>,
    queue_events: Vec<EventFd>,
    /// Wakes the device's subscriber after a resume, to re-poll parked backend fds.
    wake: EventFd,
    /// Its metrics group ("block", "net", ...) and counters.
    pub(crate) metrics: (&'static str, Arc<dyn DeviceMetrics>),
}

impl AttachedDevice {
    /// Stops (or restarts) the device's queue and backend processing.
    pub(crate) fn set_paused(&self, paused: bool) {
        lock(&self.transport).set_paused(paused);
        if !paused {
            let _ = self.wake.write(1);
        }
    }

    /// The event-loop subscriber for this device's queues and backend.
    pub(crate) fn subscriber(&self) -> Result<VirtioSubscriber> {
        let queue_events = self
            .queue_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(Error::EventFd)?;
        let backend = lock(&self.transport).backend_fds();
        Ok(VirtioSubscriber {
            transport: self.transport.clone(),
            queue_events,
            backend,
            backend_parked: false,
            wake: self.wake.try_clone().map_err(Error::EventFd)?,
        })
    }
}

/// Attaches opened devices to `vm`: slot `i` gets MMIO range `slot(i)`, its IRQ through an
/// irqfd and one ioeventfd per queue on its QueueNotify register.
pub(crate) fn attach_devices(
    opened: Vec<OpenedDevice>,
    vm: &Vm,
    memory: &GuestMemoryMmap,
    mmio: &mut Bus,
) -> Result<Vec<AttachedDevice>> {
    let mut attached = Vec::with_capacity(opened.len());
    for (index, opened) in opened.into_iter().enumerate() {
        let OpenedDevice {
            id,
            name,
            device,
            metrics,
        } = opened;
        let slot = slot(index)
            .ok_or(vmm_api::DeviceConfigError::TooManyDevices {
                count: index + 1,
                max: VIRTIO_SLOTS,
            })
            .map_err(|e| Error::Config(e.into()))?;
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        vm.register_irqfd(&irq, slot.irq)?;
        let interrupt = VirtioInterrupt::new(EventFdTrigger::new(irq));
        let transport = Transport::new(memory.clone(), device, interrupt);
        let mut queue_events = Vec::new();
        for queue in 0..transport.queue_count() {
            let event = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
            vm.register_mmio_ioeventfd(&event, slot.addr + NOTIFY_REG_OFFSET, Some(queue as u32))?;
            queue_events.push(event);
        }
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(transport.clone(), slot.addr, slot.size)?;
        attached.push(AttachedDevice {
            id,
            name,
            slot,
            transport,
            queue_events,
            wake: EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?,
            metrics,
        });
    }
    Ok(attached)
}

/// Event-loop tokens: queue `i` is `i`, backend token `t` is `BACKEND | t`, the wake fd `WAKE`.
const BACKEND: u32 = 1 << 31;
const WAKE: u32 = 1 << 30;

/// Runs a device's queues when the guest notifies them (ioeventfd) and its backend when the
/// host side is ready.
pub(crate) struct VirtioSubscriber {
    transport: Arc<Mutex<Transport>>,
    queue_events: Vec<EventFd>,
    backend: Vec<BackendFd>,
    /// The backend fds are off epoll while the transport does not want their events (paused,
    /// or a device waiting for a reset): a level-triggered fd that stays ready would spin.
    backend_parked: bool,
    wake: EventFd,
}

impl VirtioSubscriber {
    fn add_backend(&self, ops: &mut EventOps) {
        for b in &self.backend {
            if let Err(e) = ops.add(Events::with_data_raw(b.fd, BACKEND | b.token, b.events)) {
                log::error!("cannot poll a virtio backend: {e:?}");
            }
        }
    }

    /// Parks or unparks the backend fds to match what the transport wants now.
    fn sync_backend(&mut self, wanted: bool, ops: &mut EventOps) {
        if wanted && self.backend_parked {
            self.add_backend(ops);
            self.backend_parked = false;
        } else if !wanted && !self.backend_parked {
            for b in &self.backend {
                let _ = ops.remove(Events::with_data_raw(b.fd, BACKEND | b.token, b.events));
            }
            self.backend_parked = true;
        }
    }
}

impl MutEventSubscriber for VirtioSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, event) in self.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(event, index as u32, EventSet::IN)) {
                log::error!("cannot poll virtio queue {index}: {e:?}");
            }
        }
        self.add_backend(ops);
        if let Err(e) = ops.add(Events::with_data(&self.wake, WAKE, EventSet::IN)) {
            log::error!("cannot poll a virtio wake event: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        let mut transport = lock(&self.transport);
        if data == WAKE {
            let _ = self.wake.read();
        } else if data & BACKEND != 0 {
            transport.process_backend(data & !BACKEND, events.event_set());
        } else if let Some(event) = self.queue_events.get(data as usize) {
            // Several notifies collapse into one pass over the queue.
            let _ = event.read();
            transport.process_queue(data as usize);
        }
        // A driver that resets a broken device re-initialises it and notifies its queues, which
        // brings us here to unpark the backend.
        let wanted = transport.backend_events_wanted();
        drop(transport);
        self.sync_backend(wanted, ops);
    }
}

/// Raises the soft open-file limit to the hard one: a vsock device holds one host socket per
/// connection (up to its cap of 1024) and the default soft limit is 1024 descriptors in all.
/// Best effort: when it fails, the device refuses connections past the limit cleanly.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid, exclusively borrowed struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct; raising the soft limit up to the hard one
        // needs no privilege and affects only this process.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
}
