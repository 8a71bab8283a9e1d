//! Disk images addressed from host memory: the [`ImageFile`] trait that tools (convert, check,
//! import) and tests use, and [`Bounced`], which serves any of them to a guest as a
//! [`DiskImage`].

use vm_memory::GuestMemoryBackend;

use crate::guest::{DiskId, DiskImage, DiskIoError, GuestBuffers, ID_BYTES};
use crate::DiskSeal;

/// Largest host buffer [`Bounced`] moves a request through at once: big requests go in pieces,
/// so a guest cannot make the VMM allocate its whole request size.
pub const BOUNCE_CHUNK: usize = 256 << 10;

/// A disk image read and written at byte offsets from host buffers.
///
/// Every format implements it; a format that can also move data straight between its file and
/// guest memory (raw) implements [`DiskImage`] itself, and any other is served to a guest
/// through [`Bounced`]. Implementations must not panic on any offset or length: a range past
/// [`ImageFile::size`] is an error.
pub trait ImageFile: Send {
    /// The disk's size in bytes.
    fn size(&self) -> u64;

    /// Whether writes (and discards) are refused.
    fn read_only(&self) -> bool;

    /// A stable serial for this disk on this host (see [`DiskImage::id`]); all NUL by default.
    fn id(&self) -> DiskId {
        [0; ID_BYTES]
    }

    /// Fills `buf` with the disk's bytes from `offset`.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskIoError>;

    /// Writes `buf` to the disk from `offset`; later reads see it, durable after
    /// [`ImageFile::flush`].
    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), DiskIoError>;

    /// Makes every write that returned durable.
    fn flush(&mut self) -> Result<(), DiskIoError>;

    /// Whether [`ImageFile::discard`] works.
    fn can_discard(&self) -> bool {
        false
    }

    /// Drops bytes `offset..offset + len`: later reads return zeros.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskIoError> {
        let _ = (offset, len);
        Err(DiskIoError::Unsupported("discard"))
    }

    /// See [`DiskImage::commit_interval`].
    fn commit_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// See [`DiskImage::seal_for_snapshot`].
    fn seal_for_snapshot(&mut self) -> Result<Option<DiskSeal>, DiskIoError> {
        Ok(None)
    }
}

impl<T: ImageFile + ?Sized> ImageFile for Box<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_only(&self) -> bool {
        (**self).read_only()
    }
    fn id(&self) -> DiskId {
        (**self).id()
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskIoError> {
        (**self).read(offset, buf)
    }
    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), DiskIoError> {
        (**self).write(offset, buf)
    }
    fn flush(&mut self) -> Result<(), DiskIoError> {
        (**self).flush()
    }
    fn can_discard(&self) -> bool {
        (**self).can_discard()
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskIoError> {
        (**self).discard(offset, len)
    }
    fn commit_interval(&self) -> Option<std::time::Duration> {
        (**self).commit_interval()
    }
    fn seal_for_snapshot(&mut self) -> Result<Option<DiskSeal>, DiskIoError> {
        (**self).seal_for_snapshot()
    }
}

/// Serves an [`ImageFile`] to a guest as a [`DiskImage`], copying through a host buffer of at
/// most [`BOUNCE_CHUNK`] bytes (vm-memory's copies mark the dirty bitmap).
#[derive(Debug)]
pub struct Bounced<T> {
    image: T,
    buf: Vec<u8>,
}

impl<T: ImageFile> Bounced<T> {
    /// Wraps `image`.
    pub fn new(image: T) -> Bounced<T> {
        Bounced {
            image,
            buf: Vec::new(),
        }
    }

    /// The image.
    pub fn get_ref(&self) -> &T {
        &self.image
    }

    /// The image, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.image
    }

    /// Unwraps the image.
    pub fn into_inner(self) -> T {
        self.image
    }
}

/// Moves a guest request through the host buffer `buf` (grown to at most [`BOUNCE_CHUNK`]) in
/// chunks: `step(image, disk offset, chunk, offset in bufs)` for each. An I/O error says how much
/// of the request was done before it.
pub(crate) fn through_buffer<M: GuestMemoryBackend, T: ?Sized>(
    image: &mut T,
    buf: &mut Vec<u8>,
    offset: u64,
    bufs: &GuestBuffers<'_, M>,
    mut step: impl FnMut(&mut T, u64, &mut [u8], u64) -> Result<(), DiskIoError>,
) -> Result<(), DiskIoError> {
    let total = bufs.len();
    let chunk = usize::try_from(total).map_or(BOUNCE_CHUNK, |t| t.min(BOUNCE_CHUNK));
    if buf.len() < chunk {
        buf.resize(chunk, 0);
    }
    let mut done = 0u64;
    while done < total {
        let n = usize::try_from(total - done).map_or(chunk, |left| left.min(chunk));
        let piece = buf.get_mut(..n).ok_or(DiskIoError::BufferRange {
            at: done,
            len: n as u64,
            total,
        })?;
        step(image, offset + done, piece, done).map_err(|e| match e {
            DiskIoError::Io { source, .. } => DiskIoError::Io { done, source },
            other => other,
        })?;
        done += n as u64;
    }
    Ok(())
}

impl<M: GuestMemoryBackend, T: ImageFile> DiskImage<M> for Bounced<T> {
    fn size(&self) -> u64 {
        self.image.size()
    }

    fn read_only(&self) -> bool {
        self.image.read_only()
    }

    fn id(&self) -> DiskId {
        self.image.id()
    }

    fn read_at(&mut self, offset: u64, bufs: &GuestBuffers<'_, M>) -> Result<(), DiskIoError> {
        through_buffer(
            &mut self.image,
            &mut self.buf,
            offset,
            bufs,
            |image, at, piece, done| {
                image.read(at, piece)?;
                bufs.write_from(done, piece)
            },
        )
    }

    fn write_at(&mut self, offset: u64, bufs: &GuestBuffers<'_, M>) -> Result<(), DiskIoError> {
        through_buffer(
            &mut self.image,
            &mut self.buf,
            offset,
            bufs,
            |image, at, piece, done| {
                bufs.read_into(done, piece)?;
                image.write(at, piece)
            },
        )
    }

    fn flush(&mut self) -> Result<(), DiskIoError> {
        self.image.flush()
    }

    fn can_discard(&self) -> bool {
        self.image.can_discard()
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskIoError> {
        self.image.discard(offset, len)
    }

    fn commit_interval(&self) -> Option<std::time::Duration> {
        self.image.commit_interval()
    }

    fn seal_for_snapshot(&mut self) -> Result<Option<DiskSeal>, DiskIoError> {
        self.image.seal_for_snapshot()
    }
}
