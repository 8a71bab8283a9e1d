//! The disk behind a virtio-blk device: the [`BlockBackend`] trait, the guest buffers a request
//! moves its data through ([`GuestBuffers`]), and the backend's errors ([`BlockIoError`]).
//!
//! A backend sees byte offsets into its disk and guest buffers, never the virtqueue: the device
//! has already parsed the request, checked that it is whole sectors inside the disk and that
//! every buffer is guest memory, and it answers the guest from the backend's result. That keeps
//! image formats (raw today; qcow2 and layered formats later) out of the virtio code, and the
//! virtio code out of theirs.

use std::io;

use std::fmt;

use vm_memory::bitmap::MS;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::ID_BYTES;

/// A GET_ID serial: up to 20 bytes, NUL-padded.
pub type DiskId = [u8; ID_BYTES];

/// A piece of guest memory as the host sees it (one guest buffer, or the part of one inside
/// one memory region) in guest memory of type `M`, with the memory's bitmap slice (a dirty
/// bitmap, or `()`): [`GuestBuffers::slices`] yields these for zero-copy I/O.
pub type GuestSlice<'a, M> = VolatileSlice<'a, MS<'a, M>>;

/// Errors of a backend's I/O. The device answers the guest's request with IOERR whatever the
/// variant; the variants and [`BlockIoError::transferred`] are for the host (logs, tests) and
/// for reporting how much of a read reached guest memory.
#[derive(Debug, thiserror::Error)]
pub enum BlockIoError {
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
    /// The backend cannot do this kind of request (e.g. a write to an image format it only
    /// reads).
    #[error("the disk backend does not support {0}")]
    Unsupported(&'static str),
}

impl BlockIoError {
    /// Bytes of the request moved before the failure (on a read: written into guest memory,
    /// from the first buffer on).
    pub fn transferred(&self) -> u64 {
        match self {
            BlockIoError::Io { done, .. } | BlockIoError::GuestMemory { done, .. } => *done,
            BlockIoError::BufferRange { .. } | BlockIoError::Unsupported(_) => 0,
        }
    }
}

/// The host end of a virtio-blk device: a disk of [`BlockBackend::size`] bytes that data moves
/// to and from at byte offsets.
///
/// Object-safe: a device holds its backend either as a concrete type (`Block<RawFile>`, static
/// dispatch) or as a `Box<dyn BlockBackend<M>>` chosen at run time (an image format picked from a
/// file's header). Implementations may block (the device calls them on the event loop, one
/// request at a time, as the raw backend does with positional I/O); they must not panic on any
/// offset or buffer.
///
/// What the device guarantees before calling [`read_at`](BlockBackend::read_at) or
/// [`write_at`](BlockBackend::write_at): `offset` and `bufs.len()` are multiples of 512 and the
/// range lies inside `size()` rounded down to whole sectors, every buffer was checked to be
/// guest memory, and a write never reaches a backend that says it is
/// [`read_only`](BlockBackend::read_only) (nor does a flush).
///
/// The trait is generic over the guest memory type `M` of the device; a backend usually serves
/// any: `impl<M: GuestMemoryBackend> BlockBackend<M> for MyDisk`.
pub trait BlockBackend<M: GuestMemoryBackend>: Send {
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
    fn read_at(&mut self, offset: u64, bufs: &GuestBuffers<'_, M>) -> Result<(), BlockIoError>;

    /// Writes the guest buffers, in order, to the disk from byte `offset`. Once it returns the
    /// data is what later reads see; it is durable after the next [`BlockBackend::flush`].
    fn write_at(&mut self, offset: u64, bufs: &GuestBuffers<'_, M>) -> Result<(), BlockIoError>;

    /// Makes every write that returned durable (VIRTIO_BLK_T_FLUSH).
    fn flush(&mut self) -> Result<(), BlockIoError>;
}

impl<M: GuestMemoryBackend, B: BlockBackend<M> + ?Sized> BlockBackend<M> for Box<B> {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn read_only(&self) -> bool {
        (**self).read_only()
    }

    fn id(&self) -> DiskId {
        (**self).id()
    }

    fn read_at(&mut self, offset: u64, bufs: &GuestBuffers<'_, M>) -> Result<(), BlockIoError> {
        (**self).read_at(offset, bufs)
    }

    fn write_at(&mut self, offset: u64, bufs: &GuestBuffers<'_, M>) -> Result<(), BlockIoError> {
        (**self).write_at(offset, bufs)
    }

    fn flush(&mut self) -> Result<(), BlockIoError> {
        (**self).flush()
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
    pub fn slices(&self) -> impl Iterator<Item = Result<GuestSlice<'a, M>, BlockIoError>> + 'a {
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
                        Some(Err(BlockIoError::GuestMemory { done, addr: addr.0 }))
                    }
                }
            })
    }

    /// [`GuestBuffers::slices`] for a backend that writes guest memory through the slices' host
    /// addresses (the kernel's `preadv`, say): each slice's pages are marked dirty in the
    /// memory's bitmap as it is handed out, since such writes bypass vm-memory and diff
    /// snapshots must still see them.
    pub fn slices_mut(&self) -> impl Iterator<Item = Result<GuestSlice<'a, M>, BlockIoError>> + 'a {
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
    pub fn write_from(&self, at: u64, src: &[u8]) -> Result<(), BlockIoError> {
        let mut copied = 0usize;
        for (addr, len) in self.window(at, src.len())?.ranges() {
            let part = src
                .get(copied..copied + len)
                .ok_or(BlockIoError::GuestMemory {
                    done: copied as u64,
                    addr: addr.0,
                })?;
            self.mem
                .write_slice(part, addr)
                .map_err(|_| BlockIoError::GuestMemory {
                    done: copied as u64,
                    addr: addr.0,
                })?;
            copied += len;
        }
        Ok(())
    }

    /// Copies bytes from byte `at` of this view into `dst`, filling it.
    pub fn read_into(&self, at: u64, dst: &mut [u8]) -> Result<(), BlockIoError> {
        let mut copied = 0usize;
        let want = dst.len();
        for (addr, len) in self.window(at, want)?.ranges() {
            let fail = BlockIoError::GuestMemory {
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
    fn window(&self, at: u64, len: usize) -> Result<Self, BlockIoError> {
        self.subrange(at, len as u64)
            .ok_or(BlockIoError::BufferRange {
                at,
                len: len as u64,
                total: self.len,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::test_memory;
    use vmm_memory::GuestMemoryMmap;

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
            Err(BlockIoError::BufferRange {
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
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x2000),
            (GuestAddress(0x2000), 0x2000),
        ])
        .unwrap();
        let ranges = [range(0x1800, 0x1000)];
        let bufs = GuestBuffers::new(&mem, &ranges).unwrap();
        let lens: Vec<_> = bufs.slices().map(|s| s.unwrap().len()).collect();
        assert_eq!(lens, [0x800, 0x800]);
        let dirty = vmm_memory::take_dirty(&mem);
        assert!(
            dirty.iter().flatten().all(|&w| w == 0),
            "slices() marks nothing"
        );
        assert_eq!(bufs.slices_mut().count(), 2);
        let dirty = vmm_memory::take_dirty(&mem);
        assert_eq!(dirty, [vec![0b10], vec![0b01]]);
    }

    #[test]
    fn errors_say_how_much_was_moved() {
        let e = BlockIoError::Io {
            done: 4096,
            source: io::ErrorKind::UnexpectedEof.into(),
        };
        assert_eq!(e.transferred(), 4096);
        assert_eq!(
            e.to_string(),
            "disk I/O failed after 4096 bytes of the request"
        );
        assert_eq!(BlockIoError::Unsupported("writes").transferred(), 0);
    }
}
