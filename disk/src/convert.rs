//! Copying a disk image into a new file of another (or the same) format.
//!
//! The input is opened with [`open_image`] (any format this crate reads, backing chains
//! included) and read in [`CHUNK`]-byte pieces; only the [`ZERO_BLOCK`]-byte blocks that hold a
//! non-zero byte are written, so the output stays sparse (a raw file keeps holes, a qcow2 image
//! leaves clusters unallocated). The output must not exist; on failure the partial output is
//! removed.
//!
//! ```no_run
//! use std::path::Path;
//! use vmm_disk::convert::{convert, ConvertOptions};
//! use vmm_disk::Format;
//!
//! let report = convert(
//!     Path::new("disk.qcow2"),
//!     Path::new("disk.raw"),
//!     Format::Raw,
//!     &ConvertOptions::default(),
//! )?;
//! println!("{} of {} bytes held data", report.data_bytes, report.size);
//! # Ok::<(), vmm_disk::DiskError>(())
//! ```

use std::fs;
use std::path::Path;

use crate::qcow2::{create_qcow2, Qcow2Image, DEFAULT_CLUSTER_SIZE};
use crate::{open_image, DiskError, Format, ImageFile, OpenOptions, RawFile};

/// Bytes read from the input at a time.
pub const CHUNK: usize = 1 << 20;
/// Granularity of the zero check: an all-zero block of this size is not written.
pub const ZERO_BLOCK: usize = 64 << 10;

/// How to convert ([`convert`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertOptions {
    /// The input's format; `None` detects it.
    pub input_format: Option<Format>,
    /// Cluster size of a qcow2 output.
    pub cluster_size: u32,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            input_format: None,
            cluster_size: DEFAULT_CLUSTER_SIZE,
        }
    }
}

/// What [`convert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvertReport {
    /// The input's format.
    pub input_format: Format,
    /// The disk size, the same for input and output.
    pub size: u64,
    /// Bytes written to the output (blocks with data).
    pub data_bytes: u64,
    /// Bytes skipped because they were all zero.
    pub zero_bytes: u64,
}

/// Copies the image at `input` into a new image at `output` in `format`; see the module docs.
pub fn convert(
    input: &Path,
    output: &Path,
    format: Format,
    options: &ConvertOptions,
) -> Result<ConvertReport, DiskError> {
    let opened = open_image(
        input,
        &OpenOptions {
            read_only: true,
            format: options.input_format,
        },
    )?;
    let input_format = opened.format();
    let mut src = opened.into_image_file();
    let size = src.size();

    let mut dst: Box<dyn ImageFile> = match format {
        Format::Raw => {
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(output)
                .map_err(|source| DiskError::Open {
                    path: output.to_path_buf(),
                    source,
                })?;
            let sized = file.set_len(size).map_err(|source| DiskError::Inspect {
                path: output.to_path_buf(),
                source,
            });
            drop(file);
            if let Err(e) = sized {
                let _ = fs::remove_file(output);
                return Err(e);
            }
            match RawFile::open(output, false) {
                Ok(raw) => Box::new(raw),
                Err(e) => {
                    let _ = fs::remove_file(output);
                    return Err(e);
                }
            }
        }
        Format::Qcow2 => {
            create_qcow2(output, Some(size), None, options.cluster_size)?;
            match Qcow2Image::open(output, false) {
                Ok(image) => Box::new(image),
                Err(e) => {
                    let _ = fs::remove_file(output);
                    return Err(e.into());
                }
            }
        }
        Format::Layered => {
            crate::layered::create(output, Some(size), None)?;
            match crate::layered::LayeredImage::open(output, false) {
                Ok(image) => Box::new(image),
                Err(e) => {
                    let _ = fs::remove_file(output);
                    return Err(e.into());
                }
            }
        }
    };

    match copy(&mut *src, &mut *dst, input, output) {
        Ok((data_bytes, zero_bytes)) => Ok(ConvertReport {
            input_format,
            size,
            data_bytes,
            zero_bytes,
        }),
        Err(e) => {
            drop(dst);
            let _ = fs::remove_file(output);
            Err(e)
        }
    }
}

/// Copies every non-zero block of `src` to `dst`, then flushes; (data bytes, zero bytes).
fn copy(
    src: &mut dyn ImageFile,
    dst: &mut dyn ImageFile,
    input: &Path,
    output: &Path,
) -> Result<(u64, u64), DiskError> {
    let size = src.size();
    let io_on = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskError::Io { path, source }
    };
    let mut buf = vec![0u8; CHUNK];
    let (mut data, mut zero) = (0u64, 0u64);
    let mut offset = 0u64;
    while offset < size {
        let n = usize::try_from(size - offset).map_or(CHUNK, |left| left.min(CHUNK));
        let chunk = &mut buf[..n];
        src.read(offset, chunk).map_err(io_on(input))?;
        let mut at = 0usize;
        for block in chunk.chunks(ZERO_BLOCK) {
            if block.iter().all(|&b| b == 0) {
                zero += block.len() as u64;
            } else {
                dst.write(offset + at as u64, block)
                    .map_err(io_on(output))?;
                data += block.len() as u64;
            }
            at += block.len();
        }
        offset += n as u64;
    }
    dst.flush().map_err(io_on(output))?;
    Ok((data, zero))
}
