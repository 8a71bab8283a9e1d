//! Which format an image file is, and opening any of them.
//!
//! Formats are told apart by their first bytes ([`detect`]); a user can name one instead
//! (`--disk format=`), and then a file whose magic says otherwise is refused rather than served
//! as raw (a raw disk whose first bytes happen to look like a qcow2 header stays raw only when
//! asked for explicitly).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::{DiskError, DiskSeal, ImageFile, RawFile};

/// First bytes of a qcow2 image (`QFI\xfb`).
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// First bytes of an image in this crate's layered copy-on-write format: a fixed header at
/// offset 0 that is written once, when the file is created, and never rewritten.
pub const LAYERED_MAGIC: [u8; 8] = *b"VMMLAYER";

/// An image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The disk byte for byte.
    Raw,
    /// QEMU's qcow2 (versions 2 and 3), through the imago crate.
    Qcow2,
    /// This crate's layered copy-on-write format.
    Layered,
}

impl Format {
    /// Every format, in the order `--help` lists them.
    pub const ALL: [Format; 3] = [Format::Raw, Format::Qcow2, Format::Layered];

    /// The name `--disk format=` takes.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Layered => "layered",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A format name no format has.
#[derive(Debug, thiserror::Error)]
#[error("unknown disk format {0:?} (raw, qcow2 or layered)")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Format, UnknownFormat> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFormat(s.to_string()))
    }
}

/// The format `head` (the first bytes of a file, as many as it has up to 16) says it is: raw
/// when no magic matches.
pub fn detect_bytes(head: &[u8]) -> Format {
    if head.starts_with(&QCOW2_MAGIC) {
        Format::Qcow2
    } else if head.starts_with(&LAYERED_MAGIC) {
        Format::Layered
    } else {
        Format::Raw
    }
}

/// The format of the file at `path`, from its first bytes.
pub fn detect(path: &Path) -> Result<Format, DiskError> {
    let mut file = std::fs::File::open(path).map_err(|source| DiskError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(DiskError::Inspect {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(detect_bytes(&head[..got]))
}

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
        Format::Layered => Ok(OpenedImage::Other(
            Format::Layered,
            Box::new(crate::layered::LayeredImage::open(path, options.read_only)?),
        )),
    }
}

/// An opened image: raw stays its own type (it serves guests without a copy); every other
/// format is an [`ImageFile`].
pub enum OpenedImage {
    /// A raw file or block device.
    Raw(RawFile),
    /// Any other format.
    Other(Format, Box<dyn ImageFile>),
}

impl OpenedImage {
    /// The image's format.
    pub fn format(&self) -> Format {
        match self {
            OpenedImage::Raw(_) => Format::Raw,
            OpenedImage::Other(format, _) => *format,
        }
    }

    /// The image through the host-side interface, whatever its format.
    pub fn into_image_file(self) -> Box<dyn ImageFile> {
        match self {
            OpenedImage::Raw(raw) => Box::new(raw),
            OpenedImage::Other(_, image) => image,
        }
    }
}

impl fmt::Debug for OpenedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenedImage::Raw(raw) => f.debug_tuple("Raw").field(raw).finish(),
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
        return Ok(OpenedImage::Other(Format::Layered, Box::new(image)));
    }
    Err(DiskError::FormatUnavailable {
        path: PathBuf::from(&seal.layer),
        format,
    })
}
