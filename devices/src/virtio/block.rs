//! virtio-blk (virtio 1.2, 5.2) backed by a raw disk image: a regular file or a host block
//! device, used byte for byte as the guest's disk.
//!
//! One request queue. Each request is a chain holding a 16-byte header (type, reserved,
//! sector) in its first device-readable bytes, the data, and a one-byte status as the very last
//! byte of the chain, which must be device-writable. The layout inside the chain is free
//! (VIRTIO_F_ANY_LAYOUT is implied by VERSION_1): the header may span descriptors and the status
//! may share a descriptor with read data.
//!
//! Requests run synchronously in [`VirtioDevice::process_queue`], with positional I/O
//! (`preadv`/`pwritev`) straight between the file and the guest's buffers, so the device keeps
//! no request in flight and its snapshot state is just the disk's identity. Writes land in the
//! host page cache; a guest FLUSH (`fdatasync`) makes them durable, which is what
//! VIRTIO_BLK_F_FLUSH promises the driver.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_memory::{Bitmap, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{
    device_type, features, notify_used, pop_valid_chain, read_config_bytes, ActiveQueues,
    VirtioDevice, VirtioDeviceState, VirtioError, VirtioInterrupt,
};

/// Size of a virtio-blk sector: capacities and request offsets count in these.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments a request may have (config `seg_max`): the queue size less the header
/// and status descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Length of the device ID string returned by GET_ID (NUL-padded).
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Length of the request header: type (u32), reserved (u32), sector (u64).
const HEADER_LEN: usize = 16;
/// Size of the config space (the whole `struct virtio_blk_config`).
const CONFIG_LEN: usize = std::mem::size_of::<virtio_blk_config>();
/// Descriptors of one chain that are looked at. Without VIRTIO_F_INDIRECT_DESC (not offered) a
/// chain cannot be longer than the queue; a longer one came through an indirect table anyway
/// and is refused, which also bounds the scratch list.
const MAX_CHAIN_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// iovecs handed to one `preadv`/`pwritev` call (kept on the stack).
const IOV_BATCH: usize = 16;

/// How to open a disk image.
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

/// Errors opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// open(2) failed.
    #[error("cannot open disk image {}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// fstat(2) or finding the size failed.
    #[error("cannot read the size and type of disk image {}", path.display())]
    Inspect {
        /// The image.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The path is a directory, socket, FIFO or character device.
    #[error("disk image {} is not a regular file or a block device", path.display())]
    NotFileOrBlockDevice {
        /// The image.
        path: PathBuf,
    },
    /// The image holds less than one whole sector.
    #[error("disk image {} is {bytes} bytes long, less than one 512-byte sector", path.display())]
    TooSmall {
        /// The image.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// The configured ID does not fit the 20 bytes of GET_ID.
    #[error("disk id {id:?} is {len} bytes long, more than the 20 bytes virtio-blk allows")]
    IdTooLong {
        /// The ID.
        id: String,
        /// Its length in bytes.
        len: usize,
    },
}

/// Snapshot state of the block device: the identity of the disk the guest saw.
///
/// Requests complete inside `process_queue`, so nothing is ever in flight.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Whether the disk was read-only (VIRTIO_BLK_F_RO offered).
    pub read_only: bool,
    /// The GET_ID string the guest saw (trailing NULs removed).
    pub id: String,
}

/// The open image and what requests are checked against.
struct Disk {
    file: File,
    capacity_sectors: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
}

/// The queue and what it needs, between activation and reset.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: VirtioInterrupt,
}

/// One descriptor of a chain, as read from the descriptor table (nothing checked yet).
#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: u64,
    len: u32,
    writable: bool,
}

/// Direction of a data transfer between the disk and guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Disk to guest (IN).
    Read,
    /// Guest to disk (OUT).
    Write,
}

/// A virtio-blk device over a raw image.
///
/// The capacity is the image size divided by 512, rounded down: a trailing partial sector is
/// not exposed to the guest (and never written). The size is read once at open; the image is
/// expected not to shrink under the VM.
pub struct Block {
    config: BlockConfig,
    disk: Disk,
    config_space: [u8; CONFIG_LEN],
    active: Option<Active>,
    /// Descriptors of the chain being handled; reused so a request allocates nothing.
    scratch: Vec<Segment>,
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block")
            .field("config", &self.config)
            .field("capacity_sectors", &self.disk.capacity_sectors)
            .field("activated", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Block {
    /// Opens the image named by `config` (read-write, or read-only when asked).
    ///
    /// The file is opened with plain blocking positional I/O: `O_NONBLOCK` means nothing for
    /// regular files and block devices, and each request is bounded by its chain.
    pub fn new(config: BlockConfig) -> Result<Block, BlockError> {
        let mut id = [0u8; ID_BYTES];
        if let Some(custom) = &config.id {
            let bytes = custom.as_bytes();
            let Some(dst) = id.get_mut(..bytes.len()) else {
                return Err(BlockError::IdTooLong {
                    id: custom.clone(),
                    len: bytes.len(),
                });
            };
            dst.copy_from_slice(bytes);
        }

        let path = &config.path;
        let mut file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.clone(),
                source,
            })?;
        let inspect = |source| BlockError::Inspect {
            path: path.clone(),
            source,
        };
        let meta = file.metadata().map_err(inspect)?;
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(BlockError::NotFileOrBlockDevice { path: path.clone() });
        }
        // st_size is 0 for block devices; seeking to the end works for both kinds. Positional
        // I/O never uses the file offset, so leaving it there is harmless.
        let bytes = file.seek(SeekFrom::End(0)).map_err(inspect)?;
        let capacity_sectors = bytes / SECTOR_SIZE;
        if capacity_sectors == 0 {
            return Err(BlockError::TooSmall {
                path: path.clone(),
                bytes,
            });
        }
        if config.id.is_none() {
            id = default_id(meta.dev(), meta.ino());
        }

        let mut config_space = [0u8; CONFIG_LEN];
        write_le(
            &mut config_space,
            std::mem::offset_of!(virtio_blk_config, capacity),
            &capacity_sectors.to_le_bytes(),
        );
        // size_max stays 0: VIRTIO_BLK_F_SIZE_MAX is not offered, segments may be any size.
        write_le(
            &mut config_space,
            std::mem::offset_of!(virtio_blk_config, seg_max),
            &SEG_MAX.to_le_bytes(),
        );

        Ok(Block {
            disk: Disk {
                file,
                capacity_sectors,
                read_only: config.read_only,
                id,
            },
            config,
            config_space,
            active: None,
            scratch: Vec::with_capacity(MAX_CHAIN_DESCRIPTORS),
        })
    }

    /// The disk's size in 512-byte sectors (the image size rounded down).
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors
    }

    /// The configuration the device was opened with.
    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    fn id_string(&self) -> String {
        let end = self
            .disk
            .id
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i + 1);
        String::from_utf8_lossy(self.disk.id.get(..end).unwrap_or_default()).into_owned()
    }
}

/// The GET_ID string when none is configured: the image's device and inode numbers in hex,
/// stable for one file on one host. When longer than 20 bytes the end (the inode's low
/// digits, the part that tells files apart) is kept.
fn default_id(dev: u64, ino: u64) -> [u8; ID_BYTES] {
    let text = format!("{dev:x}-{ino:x}");
    let bytes = text.as_bytes();
    let tail = bytes
        .get(bytes.len().saturating_sub(ID_BYTES)..)
        .unwrap_or(bytes);
    let mut id = [0u8; ID_BYTES];
    if let Some(dst) = id.get_mut(..tail.len()) {
        dst.copy_from_slice(tail);
    }
    id
}

/// Writes `bytes` at `offset` of the config space (offsets are from `virtio_blk_config`).
fn write_le(space: &mut [u8; CONFIG_LEN], offset: usize, bytes: &[u8]) {
    if let Some(dst) = space.get_mut(offset..offset + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// The bytes `skip..skip + len` of a run of descriptors, as guest address ranges. Addresses
/// wrap instead of failing: callers check every descriptor against guest memory first.
fn pieces(
    segs: &[Segment],
    skip: u64,
    len: u64,
) -> impl Iterator<Item = (GuestAddress, usize)> + '_ {
    let mut skip = skip;
    let mut left = len;
    segs.iter().filter_map(move |s| {
        let seg_len = u64::from(s.len);
        if skip >= seg_len {
            skip -= seg_len;
            return None;
        }
        let start = skip;
        skip = 0;
        let take = (seg_len - start).min(left);
        if take == 0 {
            return None;
        }
        left -= take;
        // `take` is at most a descriptor's u32 length, which fits usize on every Linux host.
        Some((GuestAddress(s.addr.wrapping_add(start)), take as usize))
    })
}

fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Handles one chain and returns the used length to report (bytes written into the chain).
fn process_chain(
    disk: &Disk,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    scratch: &mut Vec<Segment>,
) -> u32 {
    scratch.clear();
    let mut count = 0usize;
    let mut last = None;
    // The iterator itself stops at loops (its TTL), at indexes past the table and at 4 GiB of
    // total length; what it yields is kept up to MAX_CHAIN_DESCRIPTORS.
    for desc in chain {
        let seg = Segment {
            addr: desc.addr().0,
            len: desc.len(),
            writable: desc.is_write_only(),
        };
        count += 1;
        if scratch.len() < MAX_CHAIN_DESCRIPTORS {
            scratch.push(seg);
        }
        last = Some(seg);
    }

    // The status is the chain's last byte; without a writable one in guest memory there is
    // nowhere to answer, so the chain goes back untouched.
    let Some(last) = last else { return 0 };
    if !last.writable || last.len == 0 {
        return 0;
    }
    let Some(status_addr) = last.addr.checked_add(u64::from(last.len - 1)) else {
        return 0;
    };
    let status_addr = GuestAddress(status_addr);
    if !GuestMemoryBackend::check_range(mem, status_addr, 1) {
        return 0;
    }

    let (status, written) = if count > MAX_CHAIN_DESCRIPTORS {
        (VIRTIO_BLK_S_IOERR, 0)
    } else {
        execute(disk, mem, scratch)
    };
    // The status byte is in guest memory (checked above); a failure here cannot happen, but if
    // it did, claiming nothing was written is the honest answer.
    match mem.write_obj(status as u8, status_addr) {
        Ok(()) => written.saturating_add(1),
        Err(_) => 0,
    }
}

/// Runs the request described by `segs` (the whole chain; its last byte is the status, already
/// checked). Returns the status and the number of data bytes written into the chain.
fn execute(disk: &Disk, mem: &GuestMemoryMmap, segs: &[Segment]) -> (u32, u32) {
    const IOERR: (u32, u32) = (VIRTIO_BLK_S_IOERR, 0);

    // Device-readable descriptors come first, then device-writable ones (2.7.4.2).
    let first_writable = segs.iter().position(|s| s.writable).unwrap_or(segs.len());
    let (readable, writable) = segs.split_at(first_writable.min(segs.len()));
    if writable.iter().any(|s| !s.writable) {
        return IOERR;
    }
    // Every buffer must be guest memory before anything moves.
    if !segs
        .iter()
        .all(|s| GuestMemoryBackend::check_range(mem, GuestAddress(s.addr), s.len as usize))
    {
        return IOERR;
    }

    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    for (addr, len) in pieces(readable, 0, HEADER_LEN as u64) {
        let Some(dst) = header.get_mut(filled..filled + len) else {
            return IOERR;
        };
        if mem.read_slice(dst, addr).is_err() {
            return IOERR;
        }
        filled += len;
    }
    if filled != HEADER_LEN {
        return IOERR;
    }
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
    let request_type = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);

    // Bytes after the header, and writable bytes before the status.
    let readable_data = total_len(readable) - HEADER_LEN as u64;
    let writable_data = total_len(writable).saturating_sub(1);

    match request_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let (direction, data, skip, len, stray) = if request_type == VIRTIO_BLK_T_IN {
                (Direction::Read, writable, 0, writable_data, readable_data)
            } else {
                (
                    Direction::Write,
                    readable,
                    HEADER_LEN as u64,
                    readable_data,
                    writable_data,
                )
            };
            // Data in the wrong direction, a write to a read-only disk, a length that is not
            // whole sectors, or a range past the end (or past u64) all fail the same way.
            if stray != 0 || (direction == Direction::Write && disk.read_only) {
                return IOERR;
            }
            if len % SECTOR_SIZE != 0 {
                return IOERR;
            }
            let capacity_bytes = disk.capacity_sectors * SECTOR_SIZE;
            let Some(offset) = sector.checked_mul(SECTOR_SIZE) else {
                return IOERR;
            };
            match offset.checked_add(len) {
                Some(end) if end <= capacity_bytes => {}
                _ => return IOERR,
            }
            let (done, result) =
                transfer(&disk.file, mem, pieces(data, skip, len), offset, direction);
            let written = if direction == Direction::Read {
                u32::try_from(done).unwrap_or(u32::MAX)
            } else {
                0
            };
            match result {
                Ok(()) => (VIRTIO_BLK_S_OK, written),
                Err(_) => (VIRTIO_BLK_S_IOERR, written),
            }
        }
        VIRTIO_BLK_T_FLUSH => {
            // Nothing of ours to make durable on a read-only disk.
            if disk.read_only {
                return (VIRTIO_BLK_S_OK, 0);
            }
            match disk.file.sync_data() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(_) => IOERR,
            }
        }
        VIRTIO_BLK_T_GET_ID => {
            // A buffer shorter than 20 bytes gets the start of the ID.
            let mut written = 0usize;
            for (addr, len) in pieces(writable, 0, writable_data.min(ID_BYTES as u64)) {
                let Some(src) = disk.id.get(written..written + len) else {
                    return IOERR;
                };
                if mem.write_slice(src, addr).is_err() {
                    return (VIRTIO_BLK_S_IOERR, written as u32);
                }
                written += len;
            }
            // At most 20.
            (VIRTIO_BLK_S_OK, written as u32)
        }
        _ => (VIRTIO_BLK_S_UNSUPP, 0),
    }
}

/// Moves the guest ranges `ranges` to or from the disk at byte `offset`, in batches of
/// `preadv`/`pwritev`. Returns the bytes moved and whether all of them were.
fn transfer(
    file: &File,
    mem: &GuestMemoryMmap,
    ranges: impl Iterator<Item = (GuestAddress, usize)>,
    offset: u64,
    direction: Direction,
) -> (u64, io::Result<()>) {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iovs = [empty; IOV_BATCH];
    let mut used = 0usize;
    let mut pos = offset;
    let mut done = 0u64;
    for (addr, len) in ranges {
        // A range may cross from one guest memory region into the next.
        for slice in mem.get_slices(addr, len) {
            let slice = match slice {
                Ok(s) => s,
                Err(e) => return (done, Err(io::Error::other(e))),
            };
            if slice.is_empty() {
                continue;
            }
            // For the mmap backend the guard is the plain host address of the mapping, valid as
            // long as `mem` is borrowed. The kernel's writes through it bypass vm-memory, so a
            // read marks its pages in the dirty bitmap (for diff snapshots) itself.
            let ptr = match direction {
                Direction::Read => {
                    slice.bitmap().mark_dirty(0, slice.len());
                    slice.ptr_guard_mut().as_ptr()
                }
                Direction::Write => slice.ptr_guard().as_ptr().cast_mut(),
            };
            if used == IOV_BATCH {
                let (n, result) = rw_all(file, &mut iovs, &mut pos, direction);
                done += n;
                if result.is_err() {
                    return (done, result);
                }
                used = 0;
            }
            if let Some(slot) = iovs.get_mut(used) {
                *slot = libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: slice.len(),
                };
                used += 1;
            }
        }
    }
    let (n, result) = rw_all(
        file,
        iovs.get_mut(..used).unwrap_or_default(),
        &mut pos,
        direction,
    );
    (done + n, result)
}

/// One `preadv`/`pwritev` batch to the end, through short transfers and EINTR. A transfer of 0
/// bytes (end of file inside the capacity: the image shrank) is an error.
fn rw_all(
    file: &File,
    iovs: &mut [libc::iovec],
    pos: &mut u64,
    direction: Direction,
) -> (u64, io::Result<()>) {
    let mut done = 0u64;
    let mut first = 0usize;
    loop {
        while iovs.get(first).is_some_and(|v| v.iov_len == 0) {
            first += 1;
        }
        let rest = iovs.get(first..).unwrap_or_default();
        if rest.is_empty() {
            return (done, Ok(()));
        }
        let Ok(off) = libc::off_t::try_from(*pos) else {
            return (done, Err(io::Error::from_raw_os_error(libc::EINVAL)));
        };
        // `rest` has at most IOV_BATCH entries.
        let count = rest.len() as libc::c_int;
        let ret = match direction {
            // SAFETY: every iovec points into guest memory that `transfer`'s `mem` keeps mapped
            // for the whole call, over a range checked to lie inside one region; the kernel
            // writes at most `iov_len` bytes to each. Guest memory is shared with the guest
            // anyway, so no Rust reference aliases it.
            Direction::Read => unsafe { libc::preadv(file.as_raw_fd(), rest.as_ptr(), count, off) },
            // SAFETY: as above; the kernel only reads the buffers.
            Direction::Write => unsafe {
                libc::pwritev(file.as_raw_fd(), rest.as_ptr(), count, off)
            },
        };
        let moved = match usize::try_from(ret) {
            Ok(0) => {
                let kind = match direction {
                    Direction::Read => io::ErrorKind::UnexpectedEof,
                    Direction::Write => io::ErrorKind::WriteZero,
                };
                return (done, Err(kind.into()));
            }
            Ok(n) => n,
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return (done, Err(e));
            }
        };
        done += moved as u64;
        *pos += moved as u64;
        // Skip what the kernel moved: whole iovecs, then part of one.
        let mut left = moved;
        for iov in iovs.iter_mut().skip(first) {
            if left == 0 {
                break;
            }
            let take = left.min(iov.iov_len);
            iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(take).cast();
            iov.iov_len -= take;
            left -= take;
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        let mut f = features::VERSION_1
            | features::RING_EVENT_IDX
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX);
        if self.disk.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), VirtioError> {
        let (mem, [queue], interrupt) = active.into_queues()?;
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
        let Active {
            mem,
            queue,
            interrupt,
        } = active;
        let mut used_any = false;
        let mut idle_passes = 0;
        loop {
            queue.disable_notification(mem)?;
            let mut handled = 0u32;
            // A broken available index is fatal (the transport sets DEVICE_NEEDS_RESET); heads
            // past the table are dropped.
            while let Some(chain) = pop_valid_chain(queue, mem)? {
                let head = chain.head_index();
                let len = process_chain(&self.disk, mem, chain, &mut self.scratch);
                queue.add_used(mem, head, len)?;
                used_any = true;
                handled += 1;
            }
            if !queue.enable_notification(mem)? {
                break;
            }
            // More work announced but none found twice in a row: the ring cannot be read
            // (never for a validated queue); stop rather than spin.
            idle_passes = if handled == 0 { idle_passes + 1 } else { 0 };
            if idle_passes >= 2 {
                break;
            }
        }
        if used_any {
            notify_used(queue, mem, interrupt)?;
        }
        Ok(())
    }

    fn save_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Block(BlockState {
            capacity_sectors: self.disk.capacity_sectors,
            read_only: self.disk.read_only,
            id: self.id_string(),
        })
    }

    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), VirtioError> {
        let VirtioDeviceState::Block(state) = state else {
            return Err(VirtioError::StateMismatch(
                "not a virtio-blk state".to_string(),
            ));
        };
        if state.capacity_sectors != self.disk.capacity_sectors {
            return Err(VirtioError::StateMismatch(format!(
                "disk {} has {} sectors, the saved disk had {}",
                self.config.path.display(),
                self.disk.capacity_sectors,
                state.capacity_sectors
            )));
        }
        if state.read_only != self.disk.read_only {
            return Err(VirtioError::StateMismatch(format!(
                "disk {} is {}, the saved disk was {}",
                self.config.path.display(),
                if self.disk.read_only {
                    "read-only"
                } else {
                    "read-write"
                },
                if state.read_only {
                    "read-only"
                } else {
                    "read-write"
                },
            )));
        }
        // The guest already read the ID (udev names /dev/disk/by-id from it): keep the saved one
        // even if the image now sits on another inode.
        let bytes = state.id.as_bytes();
        let mut id = [0u8; ID_BYTES];
        let Some(dst) = id.get_mut(..bytes.len()) else {
            return Err(VirtioError::StateMismatch(format!(
                "saved disk id {:?} is longer than 20 bytes",
                state.id
            )));
        };
        dst.copy_from_slice(bytes);
        self.disk.id = id;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::atomic::AtomicU32;

    use crate::virtio::test_utils::{
        activate, test_memory, TestQueue, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE,
    };
    use crate::virtio::{interrupt_bits, VirtioInterrupt};
    use crate::EventFd;

    const MEM_SIZE: usize = 0x10_0000;
    /// Request headers and status bytes: slot `n` has its header at `HDR + 0x100 * n` and its
    /// status at `+ 0x80`.
    const HDR: u64 = 0x1_0000;
    /// Data buffers.
    const DATA: u64 = 0x2_0000;
    /// Guest memory past this address does not exist.
    const OUTSIDE: u64 = MEM_SIZE as u64;

    /// An image under the temp dir, removed on drop.
    struct TempImage(PathBuf);

    impl TempImage {
        fn new(contents: &[u8]) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "vmm-devices-block-test-{}-{n}.img",
                std::process::id()
            ));
            std::fs::write(&path, contents).unwrap();
            TempImage(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }

        fn contents(&self) -> Vec<u8> {
            std::fs::read(&self.0).unwrap()
        }
    }

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 512) as u8)
            .collect()
    }

    fn config(image: &TempImage, read_only: bool, id: Option<&str>) -> BlockConfig {
        BlockConfig {
            path: image.path().to_path_buf(),
            read_only,
            id: id.map(str::to_string),
        }
    }

    /// An activated device over an image, its guest memory, queue and interrupt line.
    struct Rig {
        block: Block,
        mem: GuestMemoryMmap,
        tq: TestQueue,
        irq: EventFd,
        interrupt: VirtioInterrupt,
        image: TempImage,
    }

    fn rig_with(contents: &[u8], read_only: bool, id: Option<&str>, acked: u64) -> Rig {
        let image = TempImage::new(contents);
        let mut block = Block::new(config(&image, read_only, id)).unwrap();
        let mem = test_memory(MEM_SIZE);
        let tq = TestQueue::new(0, QUEUE_SIZE);
        let acked = block.device_features() & acked;
        let (interrupt, irq) = activate(&mut block, &mem, [&tq], acked).unwrap();
        Rig {
            block,
            mem,
            tq,
            irq,
            interrupt,
            image,
        }
    }

    fn rig(contents: &[u8]) -> Rig {
        rig_with(contents, false, None, features::VERSION_1)
    }

    fn hdr(slot: u64) -> u64 {
        HDR + 0x100 * slot
    }

    fn status_addr(slot: u64) -> u64 {
        hdr(slot) + 0x80
    }

    impl Rig {
        /// Writes the header of `slot` and poisons its status byte.
        fn header(&self, slot: u64, request_type: u32, sector: u64) {
            let at = hdr(slot);
            self.mem
                .write_obj(request_type.to_le(), GuestAddress(at))
                .unwrap();
            self.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
            self.mem
                .write_obj(sector.to_le(), GuestAddress(at + 8))
                .unwrap();
            self.mem
                .write_obj(0xeeu8, GuestAddress(status_addr(slot)))
                .unwrap();
        }

        /// A well-formed chain: header of `slot`, `data`, the status byte of `slot`.
        fn request_in(
            &mut self,
            slot: u64,
            request_type: u32,
            sector: u64,
            data: &[(u64, u32, bool)],
        ) -> u16 {
            self.header(slot, request_type, sector);
            let mut chain = vec![(hdr(slot), HEADER_LEN as u32, false)];
            chain.extend_from_slice(data);
            chain.push((status_addr(slot), 1, true));
            self.tq.add_chain(&self.mem, &chain)
        }

        fn request(&mut self, request_type: u32, sector: u64, data: &[(u64, u32, bool)]) -> u16 {
            self.request_in(0, request_type, sector, data)
        }

        fn run(&mut self) {
            self.block.process_queue(0).unwrap();
        }

        fn status_of(&self, slot: u64) -> u8 {
            self.mem.read_obj(GuestAddress(status_addr(slot))).unwrap()
        }

        fn status(&self) -> u8 {
            self.status_of(0)
        }

        /// The last used element: (head, len).
        fn last_used(&self) -> (u32, u32) {
            let idx = self.tq.used_idx(&self.mem);
            assert_ne!(idx, 0, "nothing was used");
            self.tq.used_elem(&self.mem, idx.wrapping_sub(1))
        }

        fn read_guest(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        }

        fn interrupts(&self) -> u64 {
            match self.irq.read() {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => panic!("irq read: {e}"),
            }
        }
    }

    const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
    const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

    #[test]
    fn read_two_sectors_into_two_buffers() {
        let disk = pattern(8 * 512);
        let mut r = rig(&disk);
        let head = r.request(
            VIRTIO_BLK_T_IN,
            3,
            &[(DATA, 512, true), (DATA + 0x1000, 512, true)],
        );
        r.run();
        assert_eq!(r.status(), S_OK);
        assert_eq!(r.last_used(), (u32::from(head), 1025));
        assert_eq!(r.read_guest(DATA, 512), disk[3 * 512..4 * 512]);
        assert_eq!(r.read_guest(DATA + 0x1000, 512), disk[4 * 512..5 * 512]);
        assert_eq!(r.interrupts(), 1);
        assert_eq!(r.interrupt.status() & interrupt_bits::USED_BUFFER, 1);
    }

    #[test]
    fn write_lands_in_the_file_and_reads_back() {
        let mut r = rig(&vec![0u8; 16 * 512]);
        let data = pattern(1024);
        r.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        r.request(VIRTIO_BLK_T_OUT, 5, &[(DATA, 1024, false)]);
        r.run();
        assert_eq!(r.status(), S_OK);
        assert_eq!(r.last_used().1, 1, "a write only writes the status byte");
        let file = r.image.contents();
        assert_eq!(file.len(), 16 * 512, "never grown");
        assert_eq!(file[5 * 512..7 * 512], data[..]);
        assert!(file[..5 * 512]
            .iter()
            .chain(&file[7 * 512..])
            .all(|&b| b == 0));

        r.request(VIRTIO_BLK_T_IN, 5, &[(DATA + 0x4000, 1024, true)]);
        r.run();
        assert_eq!(r.status(), S_OK);
        assert_eq!(r.read_guest(DATA + 0x4000, 1024), data);
    }

    #[test]
    fn header_split_and_status_sharing_the_data_descriptor() {
        let disk = pattern(4 * 512);
        let mut r = rig(&disk);
        r.header(0, VIRTIO_BLK_T_IN, 1);
        // Header in two pieces; data and status in one writable descriptor of 513 bytes.
        let head = r.tq.add_chain(
            &r.mem,
            &[
                (hdr(0), 6, false),
                (hdr(0) + 6, 10, false),
                (DATA, 513, true),
            ],
        );
        r.run();
        assert_eq!(r.last_used(), (u32::from(head), 513));
        assert_eq!(r.read_guest(DATA, 512), disk[512..1024]);
        assert_eq!(r.read_guest(DATA + 512, 1), [S_OK]);
    }

    #[test]
    fn large_read_across_many_descriptors() {
        let disk = pattern(256 * 512);
        let mut r = rig(&disk);
        // 40 segments, more than one preadv batch, 64 KiB at an odd-numbered sector.
        let segs: Vec<_> = (0..40u64)
            .map(|i| (DATA + i * 0x800, 512 * 3, true))
            .collect();
        r.request(VIRTIO_BLK_T_IN, 17, &segs);
        r.run();
        assert_eq!(r.status(), S_OK);
        assert_eq!(r.last_used().1, 40 * 1536 + 1);
        for i in 0..40usize {
            let want = &disk[(17 + 3 * i) * 512..(20 + 3 * i) * 512];
            assert_eq!(
                r.read_guest(DATA + i as u64 * 0x800, 1536),
                want,
                "segment {i}"
            );
        }
    }

    #[test]
    fn flush_succeeds() {
        let mut r = rig(&[0u8; 1024]);
        let head = r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
        r.run();
        assert_eq!(r.status(), S_OK);
        assert_eq!(r.last_used(), (u32::from(head), 1));
    }

    #[test]
    fn get_id_custom_default_and_short_buffer() {
        let mut r = rig_with(&[0u8; 512], false, Some("serial-42"), 0);
        r.mem.write_slice(&[0xaa; 32], GuestAddress(DATA)).unwrap();
        r.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 32, true)]);
        r.run();
        assert_eq!(r.status(), S_OK);
        assert_eq!(r.last_used().1, 21);
        let mut want = b"serial-42".to_vec();
        want.resize(20, 0);
        want.extend_from_slice(&[0xaa; 12]);
        assert_eq!(
            r.read_guest(DATA, 32),
            want,
            "20 bytes, NUL-padded, no more"
        );

        r.mem.write_slice(&[0xaa; 8], GuestAddress(DATA)).unwrap();
        r.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 4, true)]);
        r.run();
        assert_eq!(r.status(), S_OK);
        assert_eq!(r.last_used().1, 5);
        assert_eq!(r.read_guest(DATA, 8), b"seri\xaa\xaa\xaa\xaa");

        let mut r = rig(&[0u8; 512]);
        r.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, true)]);
        r.run();
        assert_eq!(r.status(), S_OK);
        let meta = std::fs::metadata(r.image.path()).unwrap();
        let id = r.read_guest(DATA, 20);
        assert_eq!(id, default_id(meta.dev(), meta.ino()));
        let text = format!("{:x}-{:x}", meta.dev(), meta.ino());
        assert!(id.starts_with(text.as_bytes()) || text.len() > 20);
    }

    #[test]
    fn default_id_keeps_the_tail_when_long() {
        let id = default_id(u64::MAX, 0x1234);
        assert_eq!(&id, b"fffffffffffffff-1234", "21 bytes: the first f goes");
        let id = default_id(u64::MAX, u64::MAX);
        let full = format!("{:x}-{:x}", u64::MAX, u64::MAX);
        assert_eq!(&id[..], &full.as_bytes()[full.len() - 20..]);
        assert_eq!(&default_id(0x803, 0x1c)[..6], b"803-1c");
    }

    #[test]
    fn read_only_disk_offers_ro_and_refuses_writes() {
        let disk = pattern(4 * 512);
        let mut r = rig_with(&disk, true, None, 0);
        assert_ne!(r.block.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
        r.mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
        r.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, false)]);
        r.run();
        assert_eq!(r.status(), S_IOERR);
        assert_eq!(r.last_used().1, 1);
        assert_eq!(r.image.contents(), disk);

        r.request(VIRTIO_BLK_T_IN, 2, &[(DATA, 512, true)]);
        r.run();
        assert_eq!(r.status(), S_OK);
        assert_eq!(r.read_guest(DATA, 512), disk[1024..1536]);
        r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
        r.run();
        assert_eq!(r.status(), S_OK);

        let rw = rig(&disk);
        assert_eq!(rw.block.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn features_and_config_space() {
        let r = rig(&vec![0u8; 3 * 512 + 100]);
        let f = r.block.device_features();
        for bit in [features::VERSION_1, features::RING_EVENT_IDX] {
            assert_ne!(f & bit, 0);
        }
        assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_SEG_MAX), 0);
        assert_eq!(f & features::RING_INDIRECT_DESC, 0);
        assert_eq!(
            r.block.capacity_sectors(),
            3,
            "the partial sector is not exposed"
        );
        assert_eq!(r.block.device_type(), device_type::BLOCK);
        assert_eq!(r.block.queue_max_sizes(), &[256]);

        let mut cap = [0u8; 8];
        r.block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 3);
        let mut word = [0xffu8; 4];
        r.block.read_config(8, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0, "size_max");
        r.block.read_config(12, &mut word);
        assert_eq!(u32::from_le_bytes(word), 254, "seg_max");
        let mut rest = [0xffu8; 96 - 16];
        r.block.read_config(16, &mut rest);
        assert!(rest.iter().all(|&b| b == 0));
        r.block.read_config(1 << 40, &mut word);
        assert_eq!(word, [0; 4]);
        assert_eq!(r.block.config().path, r.image.path());
    }

    #[test]
    fn out_of_range_and_overflowing_sectors_fail() {
        let disk = pattern(8 * 512);
        let mut r = rig(&disk);
        for (sector, len) in [
            (8, 512),                  // starts at the end
            (7, 1024),                 // runs past the end
            (u64::MAX, 512),           // sector * 512 overflows
            (u64::MAX / 512, 512),     // offset + length overflows
            ((u64::MAX / 512) - 1, 0), // far past the end, no data
        ] {
            r.request(VIRTIO_BLK_T_IN, sector, &[(DATA, len, true)]);
            r.request_in(1, VIRTIO_BLK_T_OUT, sector, &[(DATA, len, false)]);
            r.run();
            assert_eq!(r.status(), S_IOERR, "IN sector {sector} len {len}");
            assert_eq!(r.status_of(1), S_IOERR, "OUT sector {sector} len {len}");
            assert_eq!(r.last_used().1, 1);
        }
        // The last sector itself is fine.
        r.request(VIRTIO_BLK_T_IN, 7, &[(DATA, 512, true)]);
        r.run();
        assert_eq!(r.status(), S_OK);
        assert_eq!(r.image.contents(), disk);
    }

    #[test]
    fn length_not_whole_sectors_fails() {
        let disk = pattern(8 * 512);
        let mut r = rig(&disk);
        r.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 511, true)]);
        r.request_in(
            1,
            VIRTIO_BLK_T_OUT,
            0,
            &[(DATA, 512, false), (DATA, 100, false)],
        );
        r.run();
        assert_eq!(r.status(), S_IOERR);
        assert_eq!(r.status_of(1), S_IOERR);
        assert_eq!(r.image.contents(), disk);
    }

    #[test]
    fn unknown_type_is_unsupported() {
        let mut r = rig(&[0u8; 512]);
        for t in [2u32, 11, 13, 0x8000_0000, u32::MAX] {
            r.request(t, 0, &[(DATA, 512, true)]);
            r.run();
            assert_eq!(r.status(), S_UNSUPP, "type {t}");
            assert_eq!(r.last_used().1, 1);
        }
    }

    #[test]
    fn chain_without_usable_status_is_returned_untouched() {
        let disk = pattern(2 * 512);
        let mut r = rig(&disk);
        // Status descriptor read-only.
        r.header(0, VIRTIO_BLK_T_IN, 0);
        let head = r.tq.add_chain(
            &r.mem,
            &[
                (hdr(0), 16, false),
                (DATA, 512, true),
                (status_addr(0), 1, false),
            ],
        );
        r.run();
        assert_eq!(r.last_used(), (u32::from(head), 0));
        assert_eq!(r.status(), 0xee);
        // No status at all: header and data only.
        r.mem.write_slice(&[0x11; 512], GuestAddress(DATA)).unwrap();
        let head =
            r.tq.add_chain(&r.mem, &[(hdr(0), 16, false), (DATA, 512, false)]);
        r.run();
        assert_eq!(r.last_used(), (u32::from(head), 0));
        // Zero-length status descriptor, and one outside guest memory.
        for (addr, len) in [(status_addr(0), 0), (OUTSIDE + 0x1000, 1), (u64::MAX, 1)] {
            let head =
                r.tq.add_chain(&r.mem, &[(hdr(0), 16, false), (addr, len, true)]);
            r.run();
            assert_eq!(r.last_used(), (u32::from(head), 0), "status at {addr:#x}");
        }
        assert_eq!(r.status(), 0xee);
        assert_eq!(
            r.read_guest(DATA, 512),
            [0x11; 512],
            "nothing read into the chain"
        );
        // A read-only status descriptor on a write: the disk is untouched too.
        r.mem.write_slice(&[0x22; 512], GuestAddress(DATA)).unwrap();
        r.header(0, VIRTIO_BLK_T_OUT, 0);
        r.tq.add_chain(
            &r.mem,
            &[
                (hdr(0), 16, false),
                (DATA, 512, false),
                (status_addr(0), 1, false),
            ],
        );
        r.run();
        assert_eq!(r.last_used().1, 0);
        assert_eq!(r.image.contents(), disk);
    }

    #[test]
    fn data_outside_guest_memory_fails() {
        let disk = pattern(4 * 512);
        let mut r = rig(&disk);
        for addr in [OUTSIDE, OUTSIDE - 256, u64::MAX - 100] {
            r.request(VIRTIO_BLK_T_IN, 0, &[(addr, 512, true)]);
            r.request_in(1, VIRTIO_BLK_T_OUT, 0, &[(addr, 512, false)]);
            r.run();
            assert_eq!(r.status(), S_IOERR, "IN at {addr:#x}");
            assert_eq!(r.status_of(1), S_IOERR, "OUT at {addr:#x}");
            assert_eq!(r.last_used().1, 1);
        }
        // The header outside guest memory.
        r.mem
            .write_obj(0xeeu8, GuestAddress(status_addr(0)))
            .unwrap();
        r.tq.add_chain(&r.mem, &[(OUTSIDE, 16, false), (status_addr(0), 1, true)]);
        r.run();
        assert_eq!(r.status(), S_IOERR);
        // A header shorter than 16 bytes.
        r.header(0, VIRTIO_BLK_T_FLUSH, 0);
        r.tq.add_chain(&r.mem, &[(hdr(0), 8, false), (status_addr(0), 1, true)]);
        r.run();
        assert_eq!(r.status(), S_IOERR);
        assert_eq!(r.image.contents(), disk);
    }

    #[test]
    fn descriptor_loop_terminates_and_the_queue_goes_on() {
        let disk = pattern(2 * 512);
        let mut r = rig(&disk);
        r.header(0, VIRTIO_BLK_T_IN, 0);
        // 200 -> 201 -> 200 ...: readable descriptors forever.
        r.tq.write_desc(&r.mem, 200, hdr(0), 16, DESC_F_NEXT, 201);
        r.tq.write_desc(&r.mem, 201, DATA, 512, DESC_F_NEXT, 200);
        r.tq.push_avail(&r.mem, 200);
        // 210 -> 211 -> 210: a writable loop, so the chain ends on a usable "status".
        r.tq.write_desc(&r.mem, 210, hdr(0), 16, DESC_F_NEXT, 211);
        r.tq.write_desc(
            &r.mem,
            211,
            status_addr(0),
            1,
            DESC_F_NEXT | DESC_F_WRITE,
            210,
        );
        r.tq.push_avail(&r.mem, 210);
        r.run();
        assert_eq!(r.tq.used_idx(&r.mem), 2);
        assert_eq!(r.tq.used_elem(&r.mem, 0), (200, 0));
        assert_eq!(r.tq.used_elem(&r.mem, 1), (210, 1));
        assert_eq!(r.status(), S_IOERR, "readable after writable");

        let head = r.request(VIRTIO_BLK_T_IN, 1, &[(DATA, 512, true)]);
        r.run();
        assert_eq!(r.last_used(), (u32::from(head), 513));
        assert_eq!(r.read_guest(DATA, 512), disk[512..]);
    }

    #[test]
    fn head_index_past_the_queue_is_dropped() {
        let mut r = rig(&[0u8; 512]);
        r.tq.push_avail(&r.mem, 300);
        r.tq.push_avail(&r.mem, u16::MAX);
        r.run();
        assert_eq!(r.tq.used_idx(&r.mem), 0);
        r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
        r.run();
        assert_eq!(r.tq.used_idx(&r.mem), 1);
        assert_eq!(r.status(), S_OK);
    }

    #[test]
    fn avail_index_too_far_ahead_is_fatal() {
        let mut r = rig(&[0u8; 512]);
        r.mem
            .write_obj(300u16.to_le(), GuestAddress(r.tq.avail + 2))
            .unwrap();
        assert!(matches!(
            r.block.process_queue(0),
            Err(VirtioError::Queue(
                virtio_queue::Error::InvalidAvailRingIndex
            ))
        ));
    }

    #[test]
    fn wrong_directions_fail() {
        let disk = pattern(4 * 512);
        let mut r = rig(&disk);
        // OUT whose data descriptor is device-writable.
        r.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, true)]);
        // IN whose data descriptor is device-readable.
        r.request_in(1, VIRTIO_BLK_T_IN, 0, &[(DATA + 0x1000, 512, false)]);
        r.mem
            .write_slice(&[0x77; 512], GuestAddress(DATA + 0x1000))
            .unwrap();
        r.run();
        assert_eq!(r.status(), S_IOERR);
        assert_eq!(r.status_of(1), S_IOERR);
        assert_eq!(r.read_guest(DATA + 0x1000, 512), [0x77; 512]);
        // A readable descriptor after a writable one.
        r.request(
            VIRTIO_BLK_T_IN,
            0,
            &[(DATA, 512, true), (DATA + 0x1000, 512, false)],
        );
        r.run();
        assert_eq!(r.status(), S_IOERR);
        // The header in a writable descriptor.
        r.header(0, VIRTIO_BLK_T_IN, 0);
        r.tq.add_chain(&r.mem, &[(hdr(0), 16, true), (status_addr(0), 1, true)]);
        r.run();
        assert_eq!(r.status(), S_IOERR);
        assert_eq!(r.image.contents(), disk);
    }

    #[test]
    fn indirect_chain_longer_than_the_queue_fails() {
        let mut r = rig(&pattern(2 * 512));
        r.header(0, VIRTIO_BLK_T_IN, 0);
        let table = 0x8_0000u64;
        let n = 300u16;
        let at = |i: u16| GuestAddress(table + 16 * u64::from(i));
        for i in 0..n {
            let (addr, len, flags) = match i {
                0 => (hdr(0), 16, DESC_F_NEXT),
                _ if i == n - 1 => (status_addr(0), 1, DESC_F_WRITE),
                _ => (DATA, 0, DESC_F_NEXT | DESC_F_WRITE),
            };
            r.mem.write_obj(addr, at(i)).unwrap();
            r.mem
                .write_obj(len as u32, GuestAddress(at(i).0 + 8))
                .unwrap();
            r.mem.write_obj(flags, GuestAddress(at(i).0 + 12)).unwrap();
            r.mem.write_obj(i + 1, GuestAddress(at(i).0 + 14)).unwrap();
        }
        r.tq.write_desc(&r.mem, 100, table, 16 * u32::from(n), DESC_F_INDIRECT, 0);
        r.tq.push_avail(&r.mem, 100);
        r.run();
        assert_eq!(r.last_used(), (100, 1));
        assert_eq!(r.status(), S_IOERR);
    }

    #[test]
    fn event_idx_suppresses_and_raises_interrupts() {
        let disk = pattern(8 * 512);
        let mut r = rig_with(
            &disk,
            false,
            None,
            features::VERSION_1 | features::RING_EVENT_IDX,
        );
        let used_event = GuestAddress(r.tq.avail + 4 + 2 * u64::from(QUEUE_SIZE));
        let avail_event = GuestAddress(r.tq.used + 4 + 8 * u64::from(QUEUE_SIZE));
        let set_used_event = |r: &Rig, v: u16| r.mem.write_obj(v.to_le(), used_event).unwrap();

        // used_event 0: the first used buffer interrupts.
        set_used_event(&r, 0);
        r.request_in(0, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]);
        r.run();
        assert_eq!(r.interrupts(), 1);
        assert_eq!(r.interrupt.status() & interrupt_bits::USED_BUFFER, 1);
        r.interrupt.acknowledge(interrupt_bits::USED_BUFFER);

        // The driver wants to hear at used index 10: three requests stay silent.
        set_used_event(&r, 10);
        for slot in 0..3 {
            r.request_in(
                slot,
                VIRTIO_BLK_T_IN,
                slot,
                &[(DATA + 0x1000 * slot, 512, true)],
            );
        }
        r.run();
        assert_eq!(r.tq.used_idx(&r.mem), 4);
        assert_eq!(r.interrupts(), 0);
        assert_eq!(r.interrupt.status(), 0);
        for slot in 0..3 {
            assert_eq!(r.status_of(slot), S_OK);
            let want = &disk[slot as usize * 512..(slot as usize + 1) * 512];
            assert_eq!(r.read_guest(DATA + 0x1000 * slot, 512), want);
        }
        // The device asks to be kicked at the next available index.
        assert_eq!(u16::from_le(r.mem.read_obj(avail_event).unwrap()), 4);

        // used_event 5 is crossed by the next two: one interrupt for both.
        set_used_event(&r, 5);
        r.request_in(0, VIRTIO_BLK_T_FLUSH, 0, &[]);
        r.request_in(1, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, true)]);
        r.run();
        assert_eq!(r.tq.used_idx(&r.mem), 6);
        assert_eq!(r.interrupts(), 1);
        assert_eq!(r.status_of(0), S_OK);
        assert_eq!(r.status_of(1), S_OK);

        // A notify with nothing available raises nothing.
        r.run();
        assert_eq!(r.interrupts(), 0);
    }

    #[test]
    fn without_event_idx_every_batch_interrupts() {
        let mut r = rig(&[0u8; 2048]);
        r.request_in(0, VIRTIO_BLK_T_FLUSH, 0, &[]);
        r.request_in(1, VIRTIO_BLK_T_FLUSH, 0, &[]);
        r.run();
        assert_eq!(r.interrupts(), 1);
        r.run();
        assert_eq!(r.interrupts(), 0);
    }

    #[test]
    fn open_errors_name_the_problem() {
        let missing = std::env::temp_dir().join(format!(
            "vmm-devices-block-test-{}-missing.img",
            std::process::id()
        ));
        let cfg = |path: &Path, id: Option<&str>| BlockConfig {
            path: path.to_path_buf(),
            read_only: false,
            id: id.map(str::to_string),
        };
        let e = Block::new(cfg(&missing, None)).unwrap_err();
        assert!(
            matches!(&e, BlockError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
        assert!(!missing.exists(), "never created");

        let dir = std::env::temp_dir();
        let e = Block::new(BlockConfig {
            read_only: true,
            ..cfg(&dir, None)
        })
        .unwrap_err();
        assert!(matches!(e, BlockError::NotFileOrBlockDevice { .. }), "{e}");
        // Opening a directory for writing fails in open(2) already.
        let e = Block::new(cfg(&dir, None)).unwrap_err();
        assert!(matches!(
            e,
            BlockError::Open { .. } | BlockError::NotFileOrBlockDevice { .. }
        ));

        let image = TempImage::new(&[0u8; 511]);
        let e = Block::new(cfg(image.path(), None)).unwrap_err();
        assert!(matches!(e, BlockError::TooSmall { bytes: 511, .. }), "{e}");

        let image = TempImage::new(&[0u8; 512]);
        let long = "x".repeat(21);
        let e = Block::new(cfg(image.path(), Some(&long))).unwrap_err();
        assert!(matches!(e, BlockError::IdTooLong { len: 21, .. }), "{e}");
        assert!(Block::new(cfg(image.path(), Some(&"x".repeat(20)))).is_ok());
    }

    #[test]
    fn open_never_truncates() {
        let disk = pattern(3 * 512 + 7);
        let image = TempImage::new(&disk);
        let block = Block::new(config(&image, false, None)).unwrap();
        assert_eq!(block.capacity_sectors(), 3);
        drop(block);
        assert_eq!(image.contents(), disk);
    }

    #[test]
    fn activation_needs_one_queue_and_reset_deactivates() {
        let image = TempImage::new(&[0u8; 512]);
        let mut block = Block::new(config(&image, false, None)).unwrap();
        let mem = test_memory(MEM_SIZE);
        let tq = TestQueue::new(0, QUEUE_SIZE);
        for n in [0, 2] {
            let e = activate(&mut block, &mem, vec![&tq; n], features::VERSION_1).unwrap_err();
            assert!(matches!(e, VirtioError::QueueCount { expected: 1, got } if got == n));
            assert!(!block.is_activated());
        }
        assert!(
            block.process_queue(0).is_ok(),
            "a notify before activation is ignored"
        );
        activate(&mut block, &mem, [&tq], features::VERSION_1).unwrap();
        assert!(block.is_activated());
        assert!(block.process_queue(7).is_ok());
        block.reset();
        assert!(!block.is_activated());
    }

    #[test]
    fn state_round_trip_and_mismatch() {
        let image = TempImage::new(&[0u8; 4 * 512]);
        let block = Block::new(config(&image, false, Some("disk-a"))).unwrap();
        let state = block.save_state();
        assert_eq!(
            state,
            VirtioDeviceState::Block(BlockState {
                capacity_sectors: 4,
                read_only: false,
                id: "disk-a".to_string(),
            })
        );
        let json = serde_json::to_string(&state).unwrap();
        let back: VirtioDeviceState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);

        // The same image opened again (default id this time) adopts the saved id.
        let mut restored = Block::new(config(&image, false, None)).unwrap();
        restored.restore_state(&back).unwrap();
        assert_eq!(restored.save_state(), state);

        let mut ro = Block::new(config(&image, true, None)).unwrap();
        assert!(matches!(
            ro.restore_state(&state),
            Err(VirtioError::StateMismatch(_))
        ));
        let bigger = TempImage::new(&[0u8; 5 * 512]);
        let mut other = Block::new(config(&bigger, false, None)).unwrap();
        let e = other.restore_state(&state).unwrap_err();
        assert!(e.to_string().contains("5 sectors"), "{e}");
        let long = VirtioDeviceState::Block(BlockState {
            id: "y".repeat(21),
            capacity_sectors: 4,
            read_only: false,
        });
        assert!(matches!(
            restored.restore_state(&long),
            Err(VirtioError::StateMismatch(_))
        ));
        let rng = VirtioDeviceState::Rng(Default::default());
        assert!(matches!(
            restored.restore_state(&rng),
            Err(VirtioError::StateMismatch(_))
        ));
    }
}
