//! Disk images for virtual machine monitors, with no KVM and no virtio in them.
//!
//! A device model (virtio-blk in `vmm-devices`, or one of yours) serves a guest from a
//! [`DiskImage`]: byte offsets into the disk and the guest's buffers ([`GuestBuffers`]),
//! generic over vm-memory's `GuestMemoryBackend`. Every format is also an [`ImageFile`],
//! addressed from host buffers, which is what tools (convert, check, import) and tests use;
//! [`Bounced`] serves any `ImageFile` to a guest.
//!
//! - [`RawFile`]: a regular file or block device byte for byte; data moves between the file
//!   and guest memory with `preadv`/`pwritev`, no copy in between.
//!
//! ```
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
//! use vmm_disk::{DiskImage, GuestBuffers, GuestRange, ImageFile, RawFile};
//!
//! let path = std::env::temp_dir().join(format!("vmm-disk-doc-{}.img", std::process::id()));
//! std::fs::write(&path, vec![0u8; 1 << 20])?;
//! let mut disk = RawFile::open(&path, false)?;
//!
//! // Host side: write a sector through the byte interface.
//! disk.write(4096, &[0xab; 512])?;
//!
//! // Guest side: read it into guest memory at 0x1000, as a virtio-blk request would.
//! let mem: GuestMemoryMmap<()> = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)])?;
//! let ranges = [GuestRange { addr: GuestAddress(0x1000), len: 512 }];
//! let bufs = GuestBuffers::new(&mem, &ranges).expect("inside guest memory");
//! DiskImage::read_at(&mut disk, 4096, &bufs)?;
//! assert_eq!(mem.read_obj::<u8>(GuestAddress(0x11ff))?, 0xab);
//! # std::fs::remove_file(&path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod convert;
mod error;
pub mod format;
mod guest;
mod image_file;
pub mod layered;
pub mod luks;
pub mod open;
pub mod qcow2;
mod raw;
pub mod verity;

use std::path::PathBuf;

pub use error::DiskError;
pub use format::{detect, Format};
pub use guest::{DiskId, DiskImage, DiskIoError, GuestBuffers, GuestRange, GuestSlice, ID_BYTES};
pub use image_file::{Bounced, ImageFile, BOUNCE_CHUNK};
pub use luks::{luks_format, LuksImage, LuksOpenOptions};
pub use open::{import_dedup, open_image, open_sealed, OpenOptions, OpenedImage};
pub use qcow2::{create_qcow2, Qcow2Image};
pub use raw::{default_id, RawFile};
pub use verity::VerityImage;

/// What a VM's state file records of a disk sealed for a snapshot
/// ([`DiskImage::seal_for_snapshot`]): enough to open exactly that disk state again.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskSeal {
    /// The image format that sealed it (its name in `--disk format=`).
    pub format: String,
    /// The sealed, read-only layer the state lives in.
    pub layer: PathBuf,
    /// The layer's identity, checked when it is opened again (a file replaced since is refused).
    pub layer_id: String,
}
