//! Opening an image of any format ([`open_image`]), a sealed VM-snapshot disk state
//! ([`open_sealed`]), and importing images of any format with deduplication
//! ([`import_dedup`]): the places that know every format, kept apart from the formats
//! themselves so that none of them depends on the others through here.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::format::{detect, Format};
use crate::{DiskError, DiskSeal, ImageFile, RawFile};

/// How to open an image ([`open_image`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Refuse writes.
    pub read_only: bool,
    /// The format the caller expects; `None` detects it from the file.
    pub format: Option<Format>,
}

/// Opens the image at `path` in its format (detected, or as `options.format` says; a file whose
/// magic names another format than the one asked for is refused, except that any file may be
/// opened as raw on request).
pub fn open_image(path: &Path, options: &OpenOptions) -> Result<OpenedImage, DiskError> {
    let detected = detect(path)?;
    let format = match options.format {
        Some(Format::Raw) | None if detected == Format::Raw => Format::Raw,
        Some(Format::Raw) => Format::Raw,
        Some(asked) if asked != detected => {
            return Err(DiskError::FormatMismatch {
                path: path.to_path_buf(),
                asked,
                found: detected,
            })
        }
        _ => detected,
    };
    match format {
        Format::Raw => Ok(OpenedImage::Raw(RawFile::open(path, options.read_only)?)),
        Format::Qcow2 => Ok(OpenedImage::Other(
            Format::Qcow2,
            Box::new(crate::qcow2::Qcow2Image::open(path, options.read_only)?),
        )),
        Format::Layered => Ok(OpenedImage::Layered(crate::layered::LayeredImage::open(
            path,
            options.read_only,
        )?)),
    }
}

/// An opened image: raw stays its own type (it serves guests without a copy); every other
/// format is an [`ImageFile`].
pub enum OpenedImage {
    /// A raw file or block device.
    Raw(RawFile),
    /// A layered image (it serves whole-block guest writes without a copy).
    Layered(crate::layered::LayeredImage),
    /// Any other format.
    Other(Format, Box<dyn ImageFile>),
}

impl OpenedImage {
    /// The image's format.
    pub fn format(&self) -> Format {
        match self {
            OpenedImage::Raw(_) => Format::Raw,
            OpenedImage::Layered(_) => Format::Layered,
            OpenedImage::Other(format, _) => *format,
        }
    }

    /// The image through the host-side interface, whatever its format.
    pub fn into_image_file(self) -> Box<dyn ImageFile> {
        match self {
            OpenedImage::Raw(raw) => Box::new(raw),
            OpenedImage::Layered(image) => Box::new(image),
            OpenedImage::Other(_, image) => image,
        }
    }

    /// The image as a device serves it to a guest, each format on its best path: raw and
    /// layered straight between their files and guest memory, the others through
    /// [`Bounced`](crate::Bounced).
    pub fn into_disk_image<M: vm_memory::GuestMemoryBackend>(self) -> Box<dyn crate::DiskImage<M>> {
        match self {
            OpenedImage::Raw(raw) => Box::new(raw),
            OpenedImage::Layered(image) => Box::new(image),
            OpenedImage::Other(_, image) => Box::new(crate::Bounced::new(image)),
        }
    }
}

impl fmt::Debug for OpenedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenedImage::Raw(raw) => f.debug_tuple("Raw").field(raw).finish(),
            OpenedImage::Layered(image) => f.debug_tuple("Layered").field(image).finish(),
            OpenedImage::Other(format, _) => f.debug_tuple("Other").field(format).finish(),
        }
    }
}

/// Opens a new writable clone of the disk state `seal` recorded (a VM snapshot's disk), at
/// `clone_path`, which must not exist. The sealed layer itself is never written.
pub fn open_sealed(seal: &DiskSeal, clone_path: &Path) -> Result<OpenedImage, DiskError> {
    let format: Format = seal
        .format
        .parse()
        .map_err(|_| DiskError::FormatUnavailable {
            path: seal.layer.clone(),
            format: Format::Raw,
        })?;
    if format == Format::Layered {
        let image = crate::layered::open_sealed(seal, clone_path)?;
        return Ok(OpenedImage::Layered(image));
    }
    Err(DiskError::FormatUnavailable {
        path: PathBuf::from(&seal.layer),
        format,
    })
}

/// Imports `inputs` (images of any format) as layered images at `outputs` (one each, which must
/// not exist), storing each distinct block once in `<first output>.extents`; see
/// [`layered::import_dedup_images`](crate::layered::import_dedup_images).
pub fn import_dedup(
    inputs: &[PathBuf],
    outputs: &[PathBuf],
    hash: crate::layered::HashKind,
) -> Result<crate::layered::DedupReport, DiskError> {
    let mut images = Vec::with_capacity(inputs.len());
    for input in inputs {
        let options = OpenOptions {
            read_only: true,
            format: None,
        };
        images.push((
            input.clone(),
            open_image(input, &options)?.into_image_file(),
        ));
    }
    Ok(crate::layered::import_dedup_images(images, outputs, hash)?)
}
