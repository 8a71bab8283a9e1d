//! Errors of the layered format.

use std::path::PathBuf;

/// Errors of the layered copy-on-write format: opening, creating, sealing, checking and
/// importing images. A corrupted file is always reported, never repaired silently.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host I/O call on a layer file failed.
    #[error("I/O on {} failed", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a layered image (wrong magic or version).
    #[error("{} is not a layered image layer: {what}", path.display())]
    NotLayered {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// The file's metadata is corrupted: a bad checksum, a pointer out of the file, a tree that
    /// breaks its invariants, an absurd size.
    #[error("layer {} is corrupted: {what}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was found.
        what: String,
    },
    /// A parent layer or base that the image needs is missing.
    #[error("layer {} needs {} ({what}), which cannot be opened", path.display(), parent.display())]
    MissingParent {
        /// The layer that points to it.
        path: PathBuf,
        /// The parent or base it points to.
        parent: PathBuf,
        /// Which kind of parent.
        what: &'static str,
        /// Why it cannot be opened.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A parent layer or base exists but is not the one the layer was made over (it was
    /// replaced or modified since).
    #[error("layer {} was made over {}, which has changed since: {what}", path.display(), parent.display())]
    ParentChanged {
        /// The layer that points to it.
        path: PathBuf,
        /// The parent or base.
        parent: PathBuf,
        /// What differs.
        what: String,
    },
    /// Opening the base image failed.
    #[error("cannot open base image {}", path.display())]
    Base {
        /// The base.
        path: PathBuf,
        /// The error from its format.
        #[source]
        source: Box<crate::DiskError>,
    },
    /// A write to an image opened read-only, or to a sealed layer.
    #[error("layered image {} is read-only", path.display())]
    ReadOnly {
        /// The image.
        path: PathBuf,
    },
    /// A byte range outside the disk.
    #[error("{len} bytes at offset {offset} run past the end of a {size}-byte disk")]
    OutOfRange {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// The disk's size.
        size: u64,
    },
    /// An invalid request: size 0, a size that is not known, an existing target file.
    #[error("{0}")]
    Invalid(String),
    /// A sealed layer's identity is not the one recorded in a snapshot.
    #[error("layer {} has id {found}, but the snapshot recorded {expected}", path.display())]
    SealMismatch {
        /// The layer.
        path: PathBuf,
        /// The id recorded in the seal.
        expected: String,
        /// The id the file has.
        found: String,
    },
    /// The chain of layers is longer than this implementation opens (or loops).
    #[error("the chain of layers under {} is longer than {max} layers or loops", path.display())]
    ChainTooLong {
        /// The top layer.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// I/O of the base image failed.
    #[error("I/O on the base image failed")]
    BaseIo(#[source] crate::DiskIoError),
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &std::path::Path, what: impl Into<String>) -> Error {
        Error::Corrupt {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}

/// Result of this module's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
