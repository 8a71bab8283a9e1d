//! A disk as a guest-facing device sees it: the [`DiskImage`] trait, the guest buffers a request
//! moves its data through ([`GuestBuffers`]), and the I/O errors ([`DiskIoError`]).
//!
//! A disk image sees byte offsets into its disk and guest buffers, never a virtqueue: the device
//! (virtio-blk in vmm-devices, or any other) has already parsed the request, checked that it is
//! whole sectors inside the disk and that every buffer is guest memory, and it answers the guest
//! from the image's result. That keeps image formats out of the device code, and device code out
//! of the formats.

use std::io;

use std::fmt;

use vm_memory::bitmap::MS;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

use crate::DiskSeal;

/// Length of a disk's serial ([`DiskId`]): virtio-blk's GET_ID string, 20 bytes as in ATA.
pub const ID_BYTES: usize = 20;

/// A disk serial (virtio-blk's GET_ID): up to [`ID_BYTES`] bytes, NUL-padded.
pub type DiskId = [u8; ID_BYTES];

/// A piece of guest memory as the host sees it (one guest buffer, or the part of one inside
/// one memory region) in guest memory of type `M`, with the memory's bitmap slice (a dirty
/// bitmap, or `()`): [`GuestBuffers::slices`] yields these for zero-copy I/O.
pub type GuestSlice<'a, M> = VolatileSlice<'a, MS<'a, M>>;

/// Errors of a backend's I/O. The device answers the guest's request with IOERR whatever the
/// variant; the variants and [`DiskIoError::transferred`] are for the host (logs, tests) and
/// for reporting how much of a read reached guest memory.
#[derive(Debug, thiserror::Error)]
pub enum DiskIoError {
    /// The host I/O failed, or ended early (the image shrank under the VM).
    #[error("disk I/O failed after {done} bytes of the request")]
    Io {
        /// Bytes of the request moved before the failure, from its start.
        done: u64,
        /// The OS error (`UnexpectedEof`/`WriteZero` for an early end).
        #[source]
        source: io::Error,
    },
    /// A guest buffer turned out not to be guest memory. The device checks every buffer before
    /// a backend sees it, so only buffers built by hand get here.
    #[error("guest buffer at {addr:#x} is not guest memory, after {done} bytes of the request")]
    GuestMemory {
        /// Bytes of the request moved before the failure, from its start.
        done: u64,
        /// Where the offending piece starts.
        addr: u64,
    },
    /// A copy to or from the guest buffers ([`GuestBuffers::write_from`],
    /// [`GuestBuffers::read_into`]) that runs past their end: a bug in the backend.
    #[error("{len} bytes at byte {at} run past the end of {total} bytes of guest buffers")]
    BufferRange {
        /// Where the copy starts in the buffers.
        at: u64,
        /// Its length.
        len: u64,
        /// Length of the buffers.
        total: u64,
    },
    /// The image format's own machinery failed: corrupted metadata found on the way, a layer
    /// or base that went missing, an error from the qcow2 engine.
    #[error("the disk image format failed")]
    Format(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend cannot do this kind of request (e.g. a write to an image format it only
    /// reads).
    #[error("the disk backend does not support {0}")]
    Unsupported(&'static str),
}

impl DiskIoError {
    /// Bytes of the request moved before the failure (on a read: written into guest memory,
    /// from the first buffer on).
    pub fn transferred(&self) -> u64 {
        match self {
            DiskIoError::Io { done, .. } | DiskIoError::GuestMemory { done, .. } => *done,
            DiskIoError::BufferRange { .. }
            | DiskIoError::Format(_)
            | DiskIoError::Unsupported(_) => 0,
        }
    }
}

/// A disk as a device serves it to a guest: [`DiskImage::size`] bytes that data moves to and
/// from at byte offsets, straight between the image and guest memory where the format allows
/// (raw), through a host buffer where it does not ([`Bounced`](crate::Bounced) does that for
/// any [`ImageFile`](crate::ImageFile)).
///
/// Object-safe: a device holds its backend either as a concrete type (`Block<RawFile>`, static
/// dispatch) or as a `Box<dyn DiskImage<M>>` chosen at run time (an image format picked from a
/// file's header). Implementations may block (the device calls them on the event loop, one
/// request at a time, as the raw backend does with positional I/O); they must not panic on any
/// offset or buffer.
///
/// What the device guarantees before calling [`read_at`](DiskImage::read_at) or
/// [`write_at`](DiskImage::write_at): `offset` and `bufs.len()` are multiples of 512 and the
/// range lies inside `size()` rounded down to whole sectors, every buffer was checked to be
/// guest memory, and a write never reaches a backend that says it is
/// [`read_only`](DiskImage::read_only) (nor does a flush).
///
/// The trait is generic over the guest memory type `M` of the device; a backend usually serves
/// any: `impl<M: GuestMemoryBackend> DiskImage<M> for MyDisk`.
pub trait DiskImage<M: GuestMemoryBackend>: Send {
    /// The disk's size in bytes, read once when the device is built: the guest sees it rounded
    /// down to 512-byte sectors. It must not shrink while the device uses the backend.
    fn size(&self) -> u64;

    /// Whether the disk refuses writes: the device then offers VIRTIO_BLK_F_RO and fails the
    /// guest's writes itself.
    fn read_only(&self) -> bool;

    /// The serial the guest reads with GET_ID when the user configured none: stable for this
    /// disk on this host (udev names `/dev/disk/by-id` after it). All NUL (the default) for a
    /// backend with no identity of its own.
    fn id(&self) -> DiskId {
        [0; ID_BYTES]
    }

    /// Reads `bufs.len()` bytes of the disk from byte `offset` into the guest buffers, in order.
    ///
    /// A backend that writes guest memory through the host addresses of
    /// [`GuestBuffers::slices`] marks the pages dirty itself ([`GuestBuffers::slices_mut`] does);
    /// one that copies with [`GuestBuffers::write_from`] gets that done by vm-memory.
    fn read_at(&mut self, offset: u64, bufs: &GuestBuffers<'_, M>) -> Result<(), DiskIoError>;

    /// Writes the guest buffers, in order, to the disk from byte `offset`. Once it returns the
    /// data is what later reads see; it is durable after the next [`DiskImage::flush`].
    fn write_at(&mut self, offset: u64, bufs: &GuestBuffers<'_, M>) -> Result<(), DiskIoError>;

    /// Makes every write that returned durable (VIRTIO_BLK_T_FLUSH).
    fn flush(&mut self) -> Result<(), DiskIoError>;

    /// Whether [`DiskImage::discard`] works: a device offers discard to the guest only then.
    fn can_discard(&self) -> bool {
        false
    }

    /// The guest no longer needs bytes `offset..offset + len`: the image may free their space,
    /// and later reads of the range return zeros. Same guarantees as a write (whole sectors,
    /// inside the disk, never on a read-only image).
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskIoError> {
        let _ = (offset, len);
        Err(DiskIoError::Unsupported("discard"))
    }

    /// How long after a write the image wants a [`DiskImage::flush`] when the guest sends
    /// none: a format that keeps new metadata in memory until a commit (layered) bounds what a
    /// host crash can lose to that. `None` (the default): the guest's flushes only.
    fn commit_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// The VM-snapshot hook: makes the disk's current contents a point that can be reopened
    /// later, and returns what a VM's state file records to find it again. `None` (the
    /// default) for formats that keep no such point (raw, qcow2): their contents at restore
    /// are whatever the file holds then, as in Firecracker.
    fn seal_for_snapshot(&mut self) -> Result<Option<DiskSeal>, DiskIoError> {
        Ok(None)
    }
}

impl<M: GuestMemoryBackend, B: DiskImage<M> + ?Sized> DiskImage<M> for Box<B> {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn read_only(&self) -> bool {
        (**self).read_only()
    }

    fn id(&self) -> DiskId {
        (**self).id()
    }

    fn read_at(&mut self, offset: u64, bufs: &GuestBuffers<'_, M>) -> Result<(), DiskIoError> {
        (**self).read_at(offset, bufs)
    }

    fn write_at(&mut self, offset: u64, bufs: &GuestBuffers<'_, M>) -> Result<(), DiskIoError> {
        (**self).write_at(offset, bufs)
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

/// One guest buffer: where a descriptor points and how long it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    /// Guest physical address of the first byte.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// The data of one request: bytes `skip..skip + len` of a run of guest buffers, all of them
/// guest memory of type `M`. Copying it is cheap (a few references and numbers); nothing is
/// allocated.
pub struct GuestBuffers<'a, M> {
    mem: &'a M,
    ranges: &'a [GuestRange],
    skip: u64,
    len: u64,
}

impl<M> Clone for GuestBuffers<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for GuestBuffers<'_, M> {}

impl<M> fmt::Debug for GuestBuffers<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestBuffers")
            .field("ranges", &self.ranges)
            .field("skip", &self.skip)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<'a, M: GuestMemoryBackend> GuestBuffers<'a, M> {
    /// All of `ranges`, in order; `None` when one of them is not entirely guest memory.
    pub fn new(mem: &'a M, ranges: &'a [GuestRange]) -> Option<Self> {
        let in_memory = ranges.iter().all(|r| {
            usize::try_from(r.len)
                .is_ok_and(|len| GuestMemoryBackend::check_range(mem, r.addr, len))
        });
        in_memory.then(|| GuestBuffers {
            mem,
            ranges,
            skip: 0,
            len: ranges.iter().map(|r| u64::from(r.len)).sum(),
        })
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there are no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `len` bytes from byte `start` (a backend splitting a request at cluster boundaries
    /// takes one subrange per cluster); `None` when they run past the end.
    pub fn subrange(&self, start: u64, len: u64) -> Option<Self> {
        let end = start.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(GuestBuffers {
            skip: self.skip + start,
            len,
            ..*self
        })
    }

    /// The buffers as guest address ranges, in order, lengths trimmed to this view. Addresses
    /// wrap instead of failing: [`GuestBuffers::new`] checked every range first.
    pub fn ranges(&self) -> impl Iterator<Item = (GuestAddress, usize)> + 'a {
        let mut skip = self.skip;
        let mut left = self.len;
        self.ranges.iter().filter_map(move |r| {
            let range_len = u64::from(r.len);
            if skip >= range_len {
                skip -= range_len;
                return None;
            }
            let start = skip;
            skip = 0;
            let take = (range_len - start).min(left);
            if take == 0 {
                return None;
            }
            left -= take;
            // `take` is at most a descriptor's u32 length, which fits usize on every Linux host.
            Some((GuestAddress(r.addr.0.wrapping_add(start)), take as usize))
        })
    }

    /// The buffers as host memory, in order, split where a buffer crosses from one guest memory
    /// region into the next: what a backend hands the kernel (iovecs) for zero-copy I/O. For
    /// the device to *read* into, use [`GuestBuffers::slices_mut`], which keeps the dirty
    /// bitmap right.
    pub fn slices(&self) -> impl Iterator<Item = Result<GuestSlice<'a, M>, DiskIoError>> + 'a {
        let mem = self.mem;
        let mut done = 0u64;
        let mut failed = false;
        self.ranges()
            .flat_map(move |(addr, len)| {
                GuestMemoryBackend::get_slices(mem, addr, len).map(move |s| (addr, s))
            })
            .map_while(move |(addr, slice)| {
                if failed {
                    return None;
                }
                match slice {
                    Ok(slice) => {
                        done += slice.len() as u64;
                        Some(Ok(slice))
                    }
                    Err(_) => {
                        failed = true;
                        Some(Err(DiskIoError::GuestMemory { done, addr: addr.0 }))
                    }
                }
            })
    }

    /// [`GuestBuffers::slices`] for a backend that writes guest memory through the slices' host
    /// addresses (the kernel's `preadv`, say): each slice's pages are marked dirty in the
    /// memory's bitmap as it is handed out, since such writes bypass vm-memory and diff
    /// snapshots must still see them.
    pub fn slices_mut(&self) -> impl Iterator<Item = Result<GuestSlice<'a, M>, DiskIoError>> + 'a {
        use vm_memory::bitmap::Bitmap;
        self.slices().inspect(|slice| {
            if let Ok(slice) = slice {
                slice.bitmap().mark_dirty(0, slice.len());
            }
        })
    }

    /// Copies `src` into the buffers from byte `at` of this view (through vm-memory, so the
    /// dirty bitmap follows): a backend that has the data in host memory (a decompressed
    /// cluster, zeros for a hole) fills the guest's buffers with it.
    pub fn write_from(&self, at: u64, src: &[u8]) -> Result<(), DiskIoError> {
        let mut copied = 0usize;
        for (addr, len) in self.window(at, src.len())?.ranges() {
            let part = src
                .get(copied..copied + len)
                .ok_or(DiskIoError::GuestMemory {
                    done: copied as u64,
                    addr: addr.0,
                })?;
            self.mem
                .write_slice(part, addr)
                .map_err(|_| DiskIoError::GuestMemory {
                    done: copied as u64,
                    addr: addr.0,
                })?;
            copied += len;
        }
        Ok(())
    }

    /// Copies bytes from byte `at` of this view into `dst`, filling it.
    pub fn read_into(&self, at: u64, dst: &mut [u8]) -> Result<(), DiskIoError> {
        let mut copied = 0usize;
        let want = dst.len();
        for (addr, len) in self.window(at, want)?.ranges() {
            let fail = DiskIoError::GuestMemory {
                done: copied as u64,
                addr: addr.0,
            };
            let Some(part) = dst.get_mut(copied..copied + len) else {
                return Err(fail);
            };
            self.mem.read_slice(part, addr).map_err(|_| fail)?;
            copied += len;
        }
        Ok(())
    }

    /// The `len` bytes from `at`, or an error naming where the view ends.
    fn window(&self, at: u64, len: usize) -> Result<Self, DiskIoError> {
        self.subrange(at, len as u64)
            .ok_or(DiskIoError::BufferRange {
                at,
                len: len as u64,
                total: self.len,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::bitmap::{AtomicBitmap, Bitmap};
    use vm_memory::{GuestMemoryMmap, GuestMemoryRegion};

    fn test_memory(bytes: usize) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes)]).unwrap()
    }

    /// Each region's dirty pages as a bit mask.
    fn dirty(mem: &GuestMemoryMmap<AtomicBitmap>) -> Vec<u64> {
        mem.iter()
            .map(|region| {
                let pages = (region.len() / 4096) as usize;
                (0..pages)
                    .filter(|&p| region.bitmap().dirty_at(p * 4096))
                    .fold(0u64, |m, p| m | 1 << p)
            })
            .collect()
    }

    fn range(addr: u64, len: u32) -> GuestRange {
        GuestRange {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn buffers_outside_guest_memory_are_refused() {
        let mem = test_memory(0x1_0000);
        assert!(GuestBuffers::new(&mem, &[range(0x1000, 16), range(0xfff0, 16)]).is_some());
        for bad in [
            range(0xfff0, 17),
            range(0x1_0000, 1),
            range(u64::MAX, 1),
            range(u64::MAX - 3, 8),
        ] {
            assert!(
                GuestBuffers::new(&mem, &[range(0, 4), bad]).is_none(),
                "{bad:?}"
            );
        }
        let empty = GuestBuffers::new(&mem, &[]).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.slices().count(), 0);
    }

    #[test]
    fn subranges_ranges_and_copies() {
        let mem = test_memory(0x1_0000);
        let ranges = [range(0x1000, 4), range(0x2000, 0), range(0x3000, 6)];
        let bufs = GuestBuffers::new(&mem, &ranges).unwrap();
        assert_eq!(bufs.len(), 10);
        let got: Vec<_> = bufs.ranges().collect();
        assert_eq!(got, [(GuestAddress(0x1000), 4), (GuestAddress(0x3000), 6)]);

        let mid = bufs.subrange(2, 5).unwrap();
        let got: Vec<_> = mid.ranges().collect();
        assert_eq!(got, [(GuestAddress(0x1002), 2), (GuestAddress(0x3000), 3)]);
        assert!(bufs.subrange(6, 5).is_none());
        assert!(bufs.subrange(u64::MAX, 2).is_none());
        assert_eq!(mid.subrange(1, 3).unwrap().ranges().count(), 2);

        mid.write_from(0, b"abcde").unwrap();
        let mut all = [0u8; 10];
        bufs.read_into(0, &mut all).unwrap();
        assert_eq!(&all, b"\0\0abcde\0\0\0");
        let mut two = [0u8; 2];
        mid.read_into(3, &mut two).unwrap();
        assert_eq!(&two, b"de");
        assert!(matches!(
            mid.read_into(4, &mut two),
            Err(DiskIoError::BufferRange {
                at: 4,
                len: 2,
                total: 5
            })
        ));
        assert!(mid.write_from(1, b"12345").is_err());
        bufs.read_into(0, &mut all).unwrap();
        assert_eq!(
            &all, b"\0\0abcde\0\0\0",
            "a copy past the end copies nothing"
        );

        let lens: Vec<_> = bufs.slices().map(|s| s.unwrap().len()).collect();
        assert_eq!(lens, [4, 6]);
    }

    #[test]
    fn slices_split_where_guest_regions_meet_and_mark_dirty() {
        // Two regions with a dirty bitmap each, one bit per 4 KiB page.
        let mem = GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[
            (GuestAddress(0), 0x2000),
            (GuestAddress(0x2000), 0x2000),
        ])
        .unwrap();
        let ranges = [range(0x1800, 0x1000)];
        let bufs = GuestBuffers::new(&mem, &ranges).unwrap();
        let lens: Vec<_> = bufs.slices().map(|s| s.unwrap().len()).collect();
        assert_eq!(lens, [0x800, 0x800]);
        assert_eq!(dirty(&mem), [0, 0], "slices() marks nothing");
        assert_eq!(bufs.slices_mut().count(), 2);
        assert_eq!(dirty(&mem), [0b10, 0b01]);
    }

    #[test]
    fn errors_say_how_much_was_moved() {
        let e = DiskIoError::Io {
            done: 4096,
            source: io::ErrorKind::UnexpectedEof.into(),
        };
        assert_eq!(e.transferred(), 4096);
        assert_eq!(
            e.to_string(),
            "disk I/O failed after 4096 bytes of the request"
        );
        assert_eq!(DiskIoError::Unsupported("writes").transferred(), 0);
    }
}
