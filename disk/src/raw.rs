//! Raw disk images: a regular file or a host block device used byte for byte as the disk, with
//! positional I/O (`preadv`/`pwritev`) straight between the file and guest memory.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{GuestMemoryBackend, VolatileSlice};

use crate::guest::{DiskId, DiskImage, DiskIoError, GuestBuffers, ID_BYTES};
use crate::{DiskError, ImageFile};

/// iovecs handed to one `preadv`/`pwritev` call (kept on the stack).
const IOV_BATCH: usize = 16;

/// A raw image: the zero-copy [`DiskImage`], data moved by the kernel between the file and guest
/// memory.
///
/// The file is opened with plain blocking positional I/O: `O_NONBLOCK` means nothing for
/// regular files and block devices, and each request is bounded by its chain. Its size is read
/// once at open; the image is expected not to shrink under the VM (a read or write that meets
/// the end of the file fails).
#[derive(Debug)]
pub struct RawFile {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    id: DiskId,
}

impl RawFile {
    /// Opens the image at `path`, read-write or read-only. It must exist (it is never created,
    /// truncated or grown) and be a regular file or a block device; it may be empty.
    pub fn open(path: &Path, read_only: bool) -> Result<RawFile, DiskError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let inspect = |source| DiskError::Inspect {
            path: path.to_path_buf(),
            source,
        };
        let meta = file.metadata().map_err(inspect)?;
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(DiskError::NotFileOrBlockDevice {
                path: path.to_path_buf(),
            });
        }
        // st_size is 0 for block devices; seeking to the end works for both kinds. Positional
        // I/O never uses the file offset, so leaving it there is harmless.
        // Any size is fine: an image shorter than a sector is an empty disk (capacity 0), as
        // the zero-length placeholder drives some orchestrators configure are.
        let size = file.seek(SeekFrom::End(0)).map_err(inspect)?;
        Ok(RawFile {
            file,
            path: path.to_path_buf(),
            size,
            read_only,
            id: default_id(meta.dev(), meta.ino()),
        })
    }

    /// The image's path, as given to [`RawFile::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the image is a regular file (holes can be punched into it).
    fn punches_holes(&self) -> bool {
        !self.read_only && self.file.metadata().is_ok_and(|m| m.file_type().is_file())
    }

    /// Frees `offset..offset + len` of the file; the range then reads as zeros.
    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), DiskIoError> {
        let io = |source| DiskIoError::Io { done: 0, source };
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io(io::Error::from_raw_os_error(libc::EINVAL)));
        };
        // SAFETY: fallocate on an fd this struct owns; no memory is passed.
        let ret = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(io(io::Error::last_os_error()))
        }
    }
}

impl ImageFile for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn id(&self) -> DiskId {
        self.id
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskIoError> {
        check_range(offset, buf.len(), self.size)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| DiskIoError::Io { done: 0, source })
    }

    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), DiskIoError> {
        if self.read_only {
            return Err(DiskIoError::Unsupported("writes to a read-only image"));
        }
        check_range(offset, buf.len(), self.size)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|source| DiskIoError::Io { done: 0, source })
    }

    fn flush(&mut self) -> Result<(), DiskIoError> {
        self.file
            .sync_data()
            .map_err(|source| DiskIoError::Io { done: 0, source })
    }

    fn can_discard(&self) -> bool {
        self.punches_holes()
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskIoError> {
        check_range(
            offset,
            usize::try_from(len).unwrap_or(usize::MAX),
            self.size,
        )?;
        self.punch_hole(offset, len)
    }
}

/// An error unless `len` bytes from `offset` lie inside a disk of `size` bytes.
fn check_range(offset: u64, len: usize, size: u64) -> Result<(), DiskIoError> {
    let end = offset.checked_add(len as u64);
    if end.is_some_and(|end| end <= size) {
        Ok(())
    } else {
        Err(DiskIoError::Io {
            done: 0,
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{len} bytes at {offset} run past the end of the {size}-byte disk"),
            ),
        })
    }
}

impl<M: GuestMemoryBackend> DiskImage<M> for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    /// The image's device and inode numbers in hex, stable for one file on one host.
    fn id(&self) -> DiskId {
        self.id
    }

    fn read_at(&mut self, offset: u64, bufs: &GuestBuffers<'_, M>) -> Result<(), DiskIoError> {
        transfer(&self.file, bufs.slices_mut(), offset, Direction::Read)
    }

    fn write_at(&mut self, offset: u64, bufs: &GuestBuffers<'_, M>) -> Result<(), DiskIoError> {
        transfer(&self.file, bufs.slices(), offset, Direction::Write)
    }

    fn flush(&mut self) -> Result<(), DiskIoError> {
        ImageFile::flush(self)
    }

    fn can_discard(&self) -> bool {
        self.punches_holes()
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskIoError> {
        ImageFile::discard(self, offset, len)
    }
}

/// The GET_ID string of a raw image: its device and inode numbers in hex. When longer than 20
/// bytes the end (the inode's low digits, the part that tells files apart) is kept.
pub fn default_id(dev: u64, ino: u64) -> DiskId {
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

/// Direction of a data transfer between the file and guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// File to guest (IN).
    Read,
    /// Guest to file (OUT).
    Write,
}

/// Moves the guest memory `slices` to or from the file at byte `offset`, in batches of
/// `preadv`/`pwritev`. A failure says how many bytes moved before it.
pub(crate) fn transfer<'a, B: BitmapSlice>(
    file: &File,
    slices: impl Iterator<Item = Result<VolatileSlice<'a, B>, DiskIoError>>,
    offset: u64,
    direction: Direction,
) -> Result<(), DiskIoError> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iovs = [empty; IOV_BATCH];
    let mut used = 0usize;
    let mut pos = offset;
    let mut done = 0u64;
    let failed = |done, source| DiskIoError::Io { done, source };
    for slice in slices {
        let slice = match slice {
            Ok(s) => s,
            // Cannot happen for buffers the device checked; what is still in the batch stays
            // unmoved, so `done` is what reached the file or guest memory.
            Err(DiskIoError::GuestMemory { addr, .. }) => {
                return Err(DiskIoError::GuestMemory { done, addr })
            }
            Err(e) => return Err(e),
        };
        if slice.is_empty() {
            continue;
        }
        // For the mmap backend the guard is the plain host address of the mapping, valid as
        // long as guest memory is borrowed (by `slices`). The kernel's writes through it
        // bypass vm-memory; `GuestBuffers::slices_mut` marked the pages dirty for reads.
        let ptr = match direction {
            Direction::Read => slice.ptr_guard_mut().as_ptr(),
            Direction::Write => slice.ptr_guard().as_ptr().cast_mut(),
        };
        if used == IOV_BATCH {
            let (n, result) = rw_all(file, &mut iovs, &mut pos, direction);
            done += n;
            result.map_err(|source| failed(done, source))?;
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
    let (n, result) = rw_all(
        file,
        iovs.get_mut(..used).unwrap_or_default(),
        &mut pos,
        direction,
    );
    result.map_err(|source| failed(done + n, source))
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
            // SAFETY: every iovec points into guest memory that the caller's `GuestBuffers`
            // keeps mapped for the whole call (it borrows the guest memory), over a range
            // inside one region; the kernel writes at most `iov_len` bytes to each. Guest
            // memory is shared with the guest anyway, so no Rust reference aliases it.
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
