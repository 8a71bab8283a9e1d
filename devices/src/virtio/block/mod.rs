//! virtio-blk (virtio 1.2, 5.2) on a disk backend: by default a raw disk image, a regular file
//! or a host block device used byte for byte as the guest's disk.
//!
//! One request queue. Each request is a chain holding a 16-byte header (type, reserved,
//! sector) in its first device-readable bytes, the data, and a one-byte status as the very last
//! byte of the chain, which must be device-writable. The layout inside the chain is free
//! (VIRTIO_F_ANY_LAYOUT is implied by VERSION_1): the header may span descriptors and the status
//! may share a descriptor with read data.
//!
//! Requests run synchronously in [`VirtioDevice::process_queue`](super::VirtioDevice), so the
//! device keeps no request in flight and its snapshot state is just the disk's identity. The
//! disk is a [`DiskImage`]: the device parses and checks each request (direction, whole
//! sectors, inside the disk, buffers in guest memory) and hands the backend the guest buffers
//! ([`GuestBuffers`]) to read into or write from. [`RawFile`] is the raw-image backend: it
//! moves data with positional I/O (`preadv`/`pwritev`) straight between the file and guest
//! memory. Its writes land in the host page cache; a guest FLUSH (`fdatasync`) makes them
//! durable, which is what VIRTIO_BLK_F_FLUSH promises the driver.
//!
//! Discard (VIRTIO_BLK_F_DISCARD) is offered when the backend can ([`DiskImage::can_discard`])
//! and the disk is writable. A VIRTIO_BLK_T_DISCARD request carries an array of 16-byte
//! segments (le64 sector, le32 num_sectors, le32 flags); the whole array is checked first (whole
//! segments, at most [`MAX_DISCARD_SEG`], each at most [`MAX_DISCARD_SECTORS`] and inside the
//! disk: IOERR otherwise; any flag, unmap included, which discard must not set: UNSUPP), then
//! each range goes to [`DiskImage::discard`]. A backend that cannot discard answers UNSUPP.
//!
//! The pieces: `device` (the [`Block`] device and its config space), `request` (a chain
//! parsed into a request, and the request run against the backend), `io` (the backend trait,
//! guest buffers and I/O errors), `raw` (raw images), `persist` (snapshot state).
//!
//! ```no_run
//! use vmm_devices::virtio::block::{Block, BlockConfig, RawFile};
//!
//! // The guest memory type the devices work on: any vm-memory `GuestMemoryBackend`.
//! type Memory = vm_memory::GuestMemoryMmap;
//!
//! // A raw image, with the GET_ID serial derived from the file.
//! let disk: Block<Memory> = Block::new(BlockConfig {
//!     path: "disk.img".into(),
//!     read_only: false,
//!     id: None,
//! })?;
//! // The same through the backend: any `DiskImage` fits here.
//! let backend = RawFile::open("disk.img".as_ref(), true)?;
//! let ro: Block<Memory> = Block::with_backend(backend, Some("data-1"))?;
//! assert_eq!(disk.capacity_sectors(), ro.capacity_sectors());
//! # Ok::<(), vmm_devices::virtio::block::BlockError>(())
//! ```

mod device;
mod persist;
mod request;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;

pub use device::{Block, COMMIT_TIMER_TOKEN, RATE_LIMITER_TOKEN};
pub use persist::BlockState;
// The disk side lives in vmm-disk; re-exported so that a device user needs one import.
pub use vmm_disk::{DiskId, DiskImage, DiskIoError, GuestBuffers, GuestRange, GuestSlice, RawFile};

/// Size of a virtio-blk sector: capacities and request offsets count in these.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments a request may have (config `seg_max`): the queue size less the header
/// and status descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most segments one discard request may carry (config `max_discard_seg`).
pub const MAX_DISCARD_SEG: u32 = 32;
/// Most sectors one discard segment may cover (config `max_discard_sectors`): 4 GiB.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 23;
/// The granularity the device suggests for discards (config `discard_sector_alignment`, in
/// sectors): 4 KiB, the host's page and file system block. Requests need not follow it.
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Length of the device ID string returned by GET_ID (NUL-padded).
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
const _: () = assert!(ID_BYTES == vmm_disk::ID_BYTES);

/// How to open a raw disk image ([`Block::new`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// The raw image: a regular file or a block device. It must exist; it is never created,
    /// truncated or grown.
    pub path: PathBuf,
    /// Open it read-only and offer VIRTIO_BLK_F_RO; the guest's writes fail with IOERR.
    pub read_only: bool,
    /// The serial the guest reads with GET_ID (at most 20 bytes). `None` derives one from the
    /// file's device and inode numbers.
    pub id: Option<String>,
}

/// Errors building a block device or opening its disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The disk image could not be opened.
    #[error(transparent)]
    Disk(#[from] vmm_disk::DiskError),
    /// The commit timer's timerfd could not be created.
    #[error("cannot create the disk's commit timer")]
    CommitTimer(#[source] std::io::Error),
    /// The rate limiter's timerfd could not be created.
    #[error("cannot create the disk's rate limiter")]
    RateLimiter(#[source] vmm_rate_limiter::Error),
    /// The configured ID does not fit the 20 bytes of GET_ID.
    #[error("disk id {id:?} is {len} bytes long, more than the 20 bytes virtio-blk allows")]
    IdTooLong {
        /// The ID.
        id: String,
        /// Its length in bytes.
        len: usize,
    },
}

/// What requests are checked against and what the guest saw of the disk: the part of the
/// device a snapshot keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DiskInfo {
    capacity_sectors: u64,
    read_only: bool,
    id: DiskId,
    /// [`CacheType::Writeback`]: flushes reach the backend (and VIRTIO_BLK_F_FLUSH is
    /// offered).
    writeback: bool,
    /// The backend can discard and the disk is writable: VIRTIO_BLK_F_DISCARD is offered and
    /// discard requests reach the backend.
    discard: bool,
}

/// How the device treats the guest's cache flushes (Firecracker's drive `cache_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheType {
    /// VIRTIO_BLK_F_FLUSH is not offered and a FLUSH request is acknowledged without syncing
    /// the backend: writes are durable only when the host's page cache writes them back
    /// (Firecracker's default; fine for disposable disks).
    Unsafe,
    /// VIRTIO_BLK_F_FLUSH is offered and a FLUSH request syncs the backend (`fdatasync` for a
    /// raw image): what the guest flushed survives a host crash. The device's default.
    #[default]
    Writeback,
}

impl DiskInfo {
    /// The capacity in bytes (whole sectors; never overflows, see [`Block::with_backend`]).
    fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors * SECTOR_SIZE
    }

    /// The GET_ID string, trailing NULs removed.
    fn id_string(&self) -> String {
        let end = self.id.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        String::from_utf8_lossy(self.id.get(..end).unwrap_or_default()).into_owned()
    }
}

/// `text` as a GET_ID serial, NUL-padded; `None` when longer than [`ID_BYTES`].
fn id_from_str(text: &str) -> Option<DiskId> {
    let bytes = text.as_bytes();
    let mut id = [0u8; ID_BYTES];
    id.get_mut(..bytes.len())?.copy_from_slice(bytes);
    Some(id)
}

/// [`id_from_str`] for a configured ID.
fn configured_id(text: &str) -> Result<DiskId, BlockError> {
    id_from_str(text).ok_or_else(|| BlockError::IdTooLong {
        id: text.to_string(),
        len: text.len(),
    })
}
