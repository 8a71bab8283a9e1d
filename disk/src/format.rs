//! Which format an image file is: the formats' names and magic numbers, and detection (a leaf:
//! it knows no format's code; opening them is `open.rs`'s).
//!
//! Formats are told apart by their first bytes ([`detect`]); a user can name one instead
//! (`--disk format=`), and then a file whose magic says otherwise is refused rather than served
//! as raw (a raw disk whose first bytes happen to look like a qcow2 header stays raw only when
//! asked for explicitly).

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use crate::DiskError;

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
