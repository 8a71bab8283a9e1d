//! Errors opening, creating and inspecting disk images.

use std::path::PathBuf;

/// Errors of this crate's image operations (opening, creating, converting, checking). The I/O of
/// a running disk fails with [`DiskIoError`](crate::DiskIoError) instead, which says how much of
/// a request was done.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// open(2) failed.
    #[error("cannot open disk image {}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// fstat(2) or finding the size failed.
    #[error("cannot read the size and type of disk image {}", path.display())]
    Inspect {
        /// The image.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The path is a directory, socket, FIFO or character device.
    #[error("disk image {} is not a regular file or a block device", path.display())]
    NotFileOrBlockDevice {
        /// The image.
        path: PathBuf,
    },
    /// Reading or writing an image's bytes failed.
    #[error("I/O on disk image {} failed", path.display())]
    Io {
        /// The image.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: crate::DiskIoError,
    },
    /// A byte range outside the image.
    #[error("{len} bytes at offset {offset} run past the end of a {size}-byte disk")]
    OutOfRange {
        /// Start of the range.
        offset: u64,
        /// Its length.
        len: u64,
        /// The disk's size.
        size: u64,
    },
    /// A write to an image opened read-only.
    #[error("disk image is read-only")]
    ReadOnly,
    /// The file's magic names another format than the one asked for.
    #[error("disk image {} is {found}, not {asked}", path.display())]
    FormatMismatch {
        /// The image.
        path: PathBuf,
        /// The format asked for.
        asked: crate::Format,
        /// The format its first bytes say.
        found: crate::Format,
    },
    /// The format cannot be opened by this build.
    #[error("disk image {}: the {format} format is not available", path.display())]
    FormatUnavailable {
        /// The image.
        path: PathBuf,
        /// Its format.
        format: crate::Format,
    },
    /// A qcow2 image refused, or imago failed on it.
    #[error(transparent)]
    Qcow2(#[from] crate::qcow2::Error),
    /// The layered format failed.
    #[error(transparent)]
    Layered(#[from] crate::layered::Error),
    /// A verity hash file or root hash refused.
    #[error(transparent)]
    Verity(#[from] crate::verity::Error),
    /// A LUKS image refused or failed.
    #[error(transparent)]
    Luks(#[from] crate::luks::Error),
}
