//! QEMU's qcow2 format (versions 2 and 3), through the [imago](https://crates.io/crates/imago)
//! crate's native synchronous build.
//!
//! [`Qcow2Image`] is an [`ImageFile`]: imago does every read, write, allocation, copy-on-write
//! and flush. Before imago sees a file this module parses the header itself ([`Header::parse`])
//! and refuses, with a typed [`Error`], what it will not serve: encrypted images, images with the
//! dirty or corrupt bit, external data files, extended L2 entries, non-zlib compression, unknown
//! incompatible features, tables too large to load, and (read-write only) images with internal
//! snapshots, whose shared clusters and snapshot table imago does not maintain. Compressed
//! clusters read, and a write to one is copied into a new, uncompressed cluster by imago, so
//! compressed images open read-write. Backing files named in an image (relative to its
//! directory) are opened by this module, read-only, each layer checked the same way, up to
//! [`MAX_CHAIN_DEPTH`] layers; a missing one is [`Error::MissingBacking`], naming it. Nothing is
//! opened implicitly by imago (its deny gate is used), so a hostile header cannot make it open
//! files on its own.
//!
//! Sharing between queues: imago's `FormatAccess` is `Send + Sync` and its read, write and flush
//! take `&self`; inside, the L1 table sits behind a read-write lock, L2 tables and refcount
//! blocks in caches with a lock per table, and only cluster allocation goes through one mutex (the
//! allocator), so several queues could share one image through an `Arc` without a global lock,
//! reads in parallel and writes serialised only while they allocate. Discard and resize need
//! `&mut` (they may invalidate mappings a concurrent request holds). [`Qcow2Image`] owns its
//! `FormatAccess` and is used through `&mut self` as the [`ImageFile`] trait asks; sharing it
//! between queues would take an `ImageFile` variant with `&self` methods, not a change here.
//!
//! ```no_run
//! use std::path::Path;
//! use vmm_disk::qcow2::{create_qcow2, Qcow2Image, DEFAULT_CLUSTER_SIZE};
//! use vmm_disk::ImageFile;
//!
//! let path = Path::new("/tmp/disk.qcow2");
//! create_qcow2(path, Some(1 << 30), None, DEFAULT_CLUSTER_SIZE)?;
//! let mut disk = Qcow2Image::open(path, false)?;
//! disk.write(1 << 20, &[0xab; 4096])?;
//! let mut back = [0u8; 4096];
//! disk.read(1 << 20, &mut back)?;
//! assert_eq!(back, [0xab; 4096]);
//! disk.flush()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use imago::file::File;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder, Storage,
    StorageCreateOptions, StorageOpenOptions,
};

use crate::format::QCOW2_MAGIC;
use crate::guest::{DiskId, DiskIoError};
use crate::{default_id, DiskError, ImageFile};

/// Most layers a backing chain may have, the top image included.
pub const MAX_CHAIN_DEPTH: usize = 16;
/// The cluster size [`create_qcow2`] callers usually want (qemu-img's default).
pub const DEFAULT_CLUSTER_SIZE: u32 = 64 << 10;
/// Smallest cluster size qcow2 allows (2^9).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster size qcow2 allows (2^21, 2 MiB).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest L1 table loaded, in bytes (QEMU's limit too).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table loaded, in bytes (QEMU's limit too).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;

/// Size of a version 2 header; version 3 headers are at least [`V3_HEADER_LEN`].
pub const V2_HEADER_LEN: usize = 72;
/// Smallest version 3 header.
pub const V3_HEADER_LEN: usize = 104;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_NAME_TABLE: u32 = 0x6803_f857;
/// Bytes per feature name table entry: type, bit number, 46-byte name.
const FEATURE_NAME_ENTRY: u32 = 48;

/// Why a qcow2 image was refused or could not be opened or created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file ends inside the header.
    #[error("qcow2 image {}: the file ends inside the header ({len} bytes)", path.display())]
    Truncated {
        /// The image.
        path: PathBuf,
        /// The file's length.
        len: u64,
    },
    /// A header field is out of range or inconsistent.
    #[error("qcow2 image {}: invalid header: {what}", path.display())]
    BadHeader {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A qcow2 version other than 2 or 3.
    #[error("qcow2 image {}: version {version} is not supported (2 and 3 are)", path.display())]
    Version {
        /// The image.
        path: PathBuf,
        /// The header's version.
        version: u32,
    },
    /// The image is encrypted (`crypt_method` 1 is AES, 2 LUKS).
    #[error("qcow2 image {}: encrypted images are not supported (crypt_method {method})", path.display())]
    Encrypted {
        /// The image.
        path: PathBuf,
        /// The header's crypt_method.
        method: u32,
    },
    /// The dirty bit is set: a writer stopped without writing its refcounts.
    #[error(
        "qcow2 image {} has the dirty bit set (it was not closed cleanly); \
         `qemu-img check -r all` repairs it", path.display()
    )]
    Dirty {
        /// The image.
        path: PathBuf,
    },
    /// The corrupt bit is set.
    #[error("qcow2 image {} is marked corrupt; `qemu-img check -r all` may repair it", path.display())]
    Corrupt {
        /// The image.
        path: PathBuf,
    },
    /// The image keeps its data in an external data file.
    #[error("qcow2 image {}: external data files are not supported", path.display())]
    ExternalDataFile {
        /// The image.
        path: PathBuf,
    },
    /// Compressed clusters use another compression than zlib.
    #[error("qcow2 image {}: compression type {kind} is not supported (only zlib)", path.display())]
    CompressionType {
        /// The image.
        path: PathBuf,
        /// The header's compression_type.
        kind: u8,
    },
    /// Extended L2 entries (subclusters).
    #[error("qcow2 image {}: extended L2 entries (subclusters) are not supported", path.display())]
    ExtendedL2 {
        /// The image.
        path: PathBuf,
    },
    /// Incompatible feature bits this implementation does not know.
    #[error("qcow2 image {}: unknown incompatible features {bits:#x}", path.display())]
    UnknownFeatures {
        /// The image.
        path: PathBuf,
        /// The unknown bits.
        bits: u64,
    },
    /// Internal snapshots, in an image opened read-write.
    #[error(
        "qcow2 image {} has {count} internal snapshot(s): it opens read-only only \
         (`qemu-img snapshot -d` removes them)", path.display()
    )]
    InternalSnapshots {
        /// The image.
        path: PathBuf,
        /// How many.
        count: u32,
    },
    /// The backing file named in the image does not exist.
    #[error("qcow2 image {}: its backing file {} is missing", image.display(), backing.display())]
    MissingBacking {
        /// The image naming it.
        image: PathBuf,
        /// The backing file, resolved against the image's directory.
        backing: PathBuf,
    },
    /// The backing format named in the image is neither raw nor qcow2.
    #[error("qcow2 image {}: backing format {format:?} is not supported (raw or qcow2)", path.display())]
    BackingFormat {
        /// The image.
        path: PathBuf,
        /// The format named.
        format: String,
    },
    /// The backing chain is longer than [`MAX_CHAIN_DEPTH`] or comes back to an image in it.
    #[error("qcow2 image {}: backing chain loops or is deeper than {MAX_CHAIN_DEPTH}", path.display())]
    ChainTooDeep {
        /// The image where the chain was cut.
        path: PathBuf,
    },
    /// A cluster size [`create_qcow2`] cannot make.
    #[error("cluster size {0} is not a power of two from 512 to 2 MiB")]
    ClusterSize(u32),
    /// Neither a size nor a backing file to take it from.
    #[error("a new qcow2 image needs a size or a backing file")]
    NoSize,
    /// Reading the header or its backing file name failed.
    #[error("cannot read qcow2 image {}", path.display())]
    Read {
        /// The image.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// imago refused the image or failed on it.
    #[error("qcow2 image {}: {source}", path.display())]
    Imago {
        /// The image.
        path: PathBuf,
        /// imago's error.
        #[source]
        source: io::Error,
    },
}

/// The header fields this module checks, parsed by hand from an image's first cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Guest disk size in bytes.
    pub size: u64,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// The backing file name, as written in the image.
    pub backing_file: Option<String>,
    /// The backing format from the header extension, when there is one.
    pub backing_format: Option<String>,
    /// Where the refcount table starts in the file.
    pub reftable_offset: u64,
    /// Its length in clusters.
    pub reftable_clusters: u32,
    /// log2 of the refcount width in bits (4 in version 2).
    pub refcount_order: u32,
}

impl Header {
    /// Parses and checks `head`, the image's first bytes (its whole first cluster, or the
    /// whole file when shorter); `path` only names the image in errors. `writable` refuses
    /// internal snapshots too.
    pub fn parse(head: &[u8], path: &Path, writable: bool) -> Result<Header, Error> {
        let bad = |what: String| Error::BadHeader {
            path: path.to_path_buf(),
            what,
        };
        let truncated = || Error::Truncated {
            path: path.to_path_buf(),
            len: head.len() as u64,
        };
        if head.len() < 8 {
            return Err(truncated());
        }
        if head[..4] != QCOW2_MAGIC {
            return Err(bad("no qcow2 magic".into()));
        }
        let version = be32(head, 4).ok_or_else(truncated)?;
        if version != 2 && version != 3 {
            return Err(Error::Version {
                path: path.to_path_buf(),
                version,
            });
        }
        let min_len = if version == 2 {
            V2_HEADER_LEN
        } else {
            V3_HEADER_LEN
        };
        if head.len() < min_len {
            return Err(truncated());
        }
        // Every field below lies inside min_len bytes, which head has.
        let field32 = |at| be32(head, at).ok_or_else(truncated);
        let field64 = |at| be64(head, at).ok_or_else(truncated);
        let backing_offset = field64(8)?;
        let backing_len = field32(16)?;
        let cluster_bits = field32(20)?;
        let size = field64(24)?;
        let crypt_method = field32(32)?;
        let l1_size = field32(36)?;
        let l1_offset = field64(40)?;
        let reftable_offset = field64(48)?;
        let reftable_clusters = field32(56)?;
        let nb_snapshots = field32(60)?;

        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(bad(format!(
                "cluster_bits {cluster_bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        if crypt_method != 0 {
            return Err(Error::Encrypted {
                path: path.to_path_buf(),
                method: crypt_method,
            });
        }

        let mut refcount_order = 4;
        let header_len = if version == 3 {
            let incompatible = field64(72)?;
            refcount_order = field32(96)?;
            let header_len = field32(100)?;
            check_incompatible(incompatible, head, header_len, path)?;
            if refcount_order > 6 {
                return Err(bad(format!("refcount_order {refcount_order} is above 6")));
            }
            if (header_len as usize) < V3_HEADER_LEN || u64::from(header_len) > cluster_size {
                return Err(bad(format!(
                    "header_length {header_len} is outside {V3_HEADER_LEN}..={cluster_size}"
                )));
            }
            u64::from(header_len)
        } else {
            V2_HEADER_LEN as u64
        };

        if nb_snapshots != 0 && writable {
            return Err(Error::InternalSnapshots {
                path: path.to_path_buf(),
                count: nb_snapshots,
            });
        }
        if l1_offset % cluster_size != 0 || reftable_offset % cluster_size != 0 {
            return Err(bad("L1 or refcount table not cluster-aligned".into()));
        }
        if u64::from(l1_size) * 8 > MAX_L1_BYTES {
            return Err(bad(format!("L1 table of {l1_size} entries is too large")));
        }
        if u64::from(reftable_clusters) * cluster_size > MAX_REFTABLE_BYTES {
            return Err(bad(format!(
                "refcount table of {reftable_clusters} clusters is too large"
            )));
        }
        // Each L1 entry maps one L2 table: cluster_size / 8 clusters.
        let per_l1 = 1u64 << (2 * cluster_bits - 3);
        if size.div_ceil(per_l1) > u64::from(l1_size) {
            return Err(bad(format!(
                "disk size {size} needs a larger L1 table than {l1_size} entries"
            )));
        }

        let backing_file = if backing_offset != 0 {
            let end = backing_offset
                .checked_add(u64::from(backing_len))
                .filter(|&end| backing_len <= 1023 && end <= cluster_size)
                .ok_or_else(|| bad("backing file name outside the first cluster".into()))?;
            if backing_offset < header_len {
                return Err(bad("backing file name overlaps the header".into()));
            }
            let name = head
                .get(backing_offset as usize..end as usize)
                .ok_or_else(truncated)?;
            let name = std::str::from_utf8(name)
                .map_err(|_| bad("backing file name is not UTF-8".into()))?;
            if name.is_empty() || name.contains('\0') {
                return Err(bad("backing file name is empty or has a NUL".into()));
            }
            Some(name.to_string())
        } else {
            None
        };

        let backing_format = if version == 3 {
            backing_format_ext(head, header_len, cluster_size, path)?
        } else {
            None
        };

        Ok(Header {
            version,
            cluster_bits,
            size,
            nb_snapshots,
            backing_file,
            backing_format,
            reftable_offset,
            reftable_clusters,
            refcount_order,
        })
    }

    /// Checks, before imago allocates in the image, that the refcount table has a refcount
    /// block, inside the file, for every cluster the file holds: imago 0.2.6's allocator recurses
    /// without bound (a stack overflow, which no caller can catch) on an image whose refcount
    /// structures do not cover its own clusters. `file_len` is the image file's length;
    /// `read_at(offset, buf)` reads the file.
    pub fn check_refcounts(
        &self,
        path: &Path,
        file_len: u64,
        read_at: impl Fn(u64, &mut [u8]) -> io::Result<()>,
    ) -> Result<(), Error> {
        let bad = |what: String| Error::BadHeader {
            path: path.to_path_buf(),
            what,
        };
        let cluster_bits = self.cluster_bits;
        let cluster_size = 1u64 << cluster_bits;
        // One refcount block covers cluster_size * 8 / 2^refcount_order clusters.
        let covered_bits = (cluster_bits + 3)
            .checked_sub(self.refcount_order)
            .map(|b| b + cluster_bits)
            .filter(|&b| b < 64)
            .ok_or_else(|| bad("refcount_order too large for the cluster size".into()))?;
        let needed = file_len.div_ceil(1u64 << covered_bits).max(1);
        let entries = u64::from(self.reftable_clusters) * cluster_size / 8;
        if needed > entries {
            return Err(bad(format!(
                "the refcount table ({entries} entries) does not cover the {file_len}-byte file"
            )));
        }
        let table_len = needed * 8;
        if self
            .reftable_offset
            .checked_add(table_len)
            .is_none_or(|end| end > file_len)
        {
            return Err(bad(
                "the refcount table lies past the end of the file".into()
            ));
        }
        let mut table = vec![0u8; table_len as usize];
        read_at(self.reftable_offset, &mut table).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        for (i, entry) in table.chunks_exact(8).enumerate() {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(entry);
            let block = u64::from_be_bytes(raw);
            if block == 0
                || block % cluster_size != 0
                || block
                    .checked_add(cluster_size)
                    .is_none_or(|end| end > file_len)
            {
                return Err(bad(format!(
                    "refcount table entry {i} ({block:#x}) is not a refcount block in the file"
                )));
            }
        }
        Ok(())
    }
}

fn check_incompatible(
    incompatible: u64,
    head: &[u8],
    header_len: u32,
    path: &Path,
) -> Result<(), Error> {
    let path = path.to_path_buf();
    if incompatible & INCOMPAT_DIRTY != 0 {
        return Err(Error::Dirty { path });
    }
    if incompatible & INCOMPAT_CORRUPT != 0 {
        return Err(Error::Corrupt { path });
    }
    if incompatible & INCOMPAT_DATA_FILE != 0 {
        return Err(Error::ExternalDataFile { path });
    }
    if incompatible & INCOMPAT_COMPRESSION != 0 {
        let kind = if header_len > 104 {
            head.get(104).copied().unwrap_or(0)
        } else {
            0
        };
        if kind != 0 {
            return Err(Error::CompressionType { path, kind });
        }
        // The bit with zlib (0) is legal but imago refuses any bit it does not know.
        return Err(Error::UnknownFeatures {
            path,
            bits: INCOMPAT_COMPRESSION,
        });
    }
    if incompatible & INCOMPAT_EXTL2 != 0 {
        return Err(Error::ExtendedL2 { path });
    }
    if incompatible != 0 {
        return Err(Error::UnknownFeatures {
            path,
            bits: incompatible,
        });
    }
    Ok(())
}

/// The backing format header extension, walking the extensions after the header (inside the
/// first cluster, each 8-byte aligned) and refusing malformed ones imago would trip over.
fn backing_format_ext(
    head: &[u8],
    header_len: u64,
    cluster_size: u64,
    path: &Path,
) -> Result<Option<String>, Error> {
    let bad = |what: &str| Error::BadHeader {
        path: path.to_path_buf(),
        what: what.to_string(),
    };
    let mut at = header_len;
    let mut found = None;
    loop {
        if at + 8 > cluster_size {
            return Err(bad("header extensions run past the first cluster"));
        }
        let Some(kind) = usize::try_from(at).ok().and_then(|a| be32(head, a)) else {
            // The file ends before the extension area: no extensions.
            return Ok(found);
        };
        let len = be32(head, at as usize + 4).ok_or_else(|| bad("truncated extension"))?;
        if kind == EXT_END {
            return Ok(found);
        }
        let start = at + 8;
        let end = start + u64::from(len);
        if end > cluster_size {
            return Err(bad("header extensions run past the first cluster"));
        }
        if kind == EXT_FEATURE_NAME_TABLE && len % FEATURE_NAME_ENTRY != 0 {
            // imago 0.2.6 indexes every entry as a whole one: a short last entry panics it
            // (found by the qcow2_header fuzz target).
            return Err(bad("feature name table is not made of 48-byte entries"));
        }
        if kind == EXT_BACKING_FORMAT {
            let data = head
                .get(start as usize..end as usize)
                .ok_or_else(|| bad("truncated backing format extension"))?;
            let name = std::str::from_utf8(data)
                .map_err(|_| bad("backing format is not UTF-8"))?
                .trim_end_matches('\0');
            found = Some(name.to_string());
        }
        at = end.next_multiple_of(8);
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    let bytes = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Reads the first cluster of `path` (at most 2 MiB, less when the file is shorter).
fn read_head(path: &Path) -> Result<Vec<u8>, Error> {
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let mut head = Vec::new();
    file.take(1 << MAX_CLUSTER_BITS)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    Ok(head)
}

/// `name` from the header of `image`, resolved against the image's directory.
fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let name = Path::new(name);
    if name.is_absolute() {
        name.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(name)
    }
}

fn imago_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Imago {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens `path` as an imago storage object.
fn open_storage(path: &Path, writable: bool) -> Result<File, Error> {
    File::open(StorageOpenOptions::new().filename(path).write(writable)).map_err(imago_err(path))
}

/// Opens `path` as a qcow2 layer with its backing chain below it; `seen` holds the layers above.
fn open_layer(
    path: &Path,
    writable: bool,
    seen: &mut HashSet<PathBuf>,
) -> Result<(FormatAccess<File>, Header), Error> {
    let canonical = fs::canonicalize(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if seen.len() >= MAX_CHAIN_DEPTH || !seen.insert(canonical) {
        return Err(Error::ChainTooDeep {
            path: path.to_path_buf(),
        });
    }
    let head = read_head(path)?;
    let header = Header::parse(&head, path, writable)?;
    if writable {
        let read_err = |source| Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = fs::File::open(path).map_err(read_err)?;
        let len = file.metadata().map_err(read_err)?.len();
        header.check_refcounts(path, len, |at, buf| file.read_exact_at(buf, at))?;
    }

    let backing = match &header.backing_file {
        None => None,
        Some(name) => {
            let backing_path = resolve_backing(path, name);
            if !backing_path.exists() {
                return Err(Error::MissingBacking {
                    image: path.to_path_buf(),
                    backing: backing_path,
                });
            }
            let format = match header.backing_format.as_deref() {
                Some(f) => f.to_string(),
                None => {
                    // No format recorded: qcow2 by magic, else raw (as QEMU probes).
                    let head = read_head(&backing_path)?;
                    if head.starts_with(&QCOW2_MAGIC) {
                        "qcow2".into()
                    } else {
                        "raw".into()
                    }
                }
            };
            Some(match format.as_str() {
                "qcow2" => open_layer(&backing_path, false, seen)?.0,
                "raw" | "file" => {
                    let raw = Raw::<File>::builder(open_storage(&backing_path, false)?)
                        .write(false)
                        .open(DenyImplicitOpenGate::default())
                        .map_err(imago_err(&backing_path))?;
                    FormatAccess::new(raw)
                }
                _ => {
                    return Err(Error::BackingFormat {
                        path: path.to_path_buf(),
                        format,
                    })
                }
            })
        }
    };

    // The file is opened here: imago's gate denies every open it would do itself.
    let qcow2 = Qcow2::<File>::builder(open_storage(path, writable)?)
        .write(writable)
        .storage_open_options(StorageOpenOptions::new())
        .backing(backing)
        .data_file(None)
        .open(DenyImplicitOpenGate::default())
        .map_err(imago_err(path))?;
    Ok((FormatAccess::new(qcow2), header))
}

/// A qcow2 image and its backing chain, opened through imago.
pub struct Qcow2Image {
    access: FormatAccess<File>,
    path: PathBuf,
    size: u64,
    read_only: bool,
    id: DiskId,
}

impl fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Qcow2Image {
    /// Opens the qcow2 image at `path` and its backing chain (always read-only), after checking
    /// every layer's header (see the module docs for what is refused).
    pub fn open(path: &Path, read_only: bool) -> Result<Qcow2Image, Error> {
        let meta = fs::metadata(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut seen = HashSet::new();
        let (access, header) = open_layer(path, !read_only, &mut seen)?;
        Ok(Qcow2Image {
            size: header.size,
            access,
            path: path.to_path_buf(),
            read_only,
            id: default_id(meta.dev(), meta.ino()),
        })
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), DiskIoError> {
        if offset.checked_add(len).is_some_and(|end| end <= self.size) {
            Ok(())
        } else {
            Err(DiskIoError::Io {
                done: 0,
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{len} bytes at {offset} run past the end of a {}-byte disk",
                        self.size
                    ),
                ),
            })
        }
    }
}

/// imago's errors: an OS error stays one, anything else is the format's.
fn io_err(e: io::Error) -> DiskIoError {
    if e.raw_os_error().is_some() {
        DiskIoError::Io { done: 0, source: e }
    } else {
        DiskIoError::Format(Box::new(e))
    }
}

impl ImageFile for Qcow2Image {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn id(&self) -> DiskId {
        self.id
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskIoError> {
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.access.read(buf, offset).map_err(io_err)
    }

    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), DiskIoError> {
        if self.read_only {
            return Err(DiskIoError::Unsupported("writes to a read-only image"));
        }
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.access.write(buf, offset).map_err(io_err)
    }

    fn flush(&mut self) -> Result<(), DiskIoError> {
        if self.read_only {
            return Ok(());
        }
        self.access.flush().map_err(io_err)?;
        self.access.sync().map_err(io_err)
    }

    fn can_discard(&self) -> bool {
        !self.read_only
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskIoError> {
        if self.read_only {
            return Err(DiskIoError::Unsupported("discard on a read-only image"));
        }
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.access.discard_to_zero(offset, len).map_err(io_err)
    }
}

/// Creates a qcow2 v3 image at `path` (which must not exist) through imago: `size` bytes, or
/// the backing file's size when `None`; `backing` is written into the header as given (a
/// relative name is relative to the new image's directory) with its format (raw or qcow2, by
/// its magic); `cluster_size` is a power of two from 512 to 2 MiB.
pub fn create_qcow2(
    path: &Path,
    size: Option<u64>,
    backing: Option<&Path>,
    cluster_size: u32,
) -> Result<(), DiskError> {
    if !cluster_size.is_power_of_two()
        || !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_size.trailing_zeros())
    {
        return Err(Error::ClusterSize(cluster_size).into());
    }
    let backing = match backing {
        None => None,
        Some(name) => {
            let resolved = match name.to_str() {
                Some(s) => resolve_backing(path, s),
                None => {
                    return Err(Error::BadHeader {
                        path: name.to_path_buf(),
                        what: "backing file name is not UTF-8".into(),
                    }
                    .into())
                }
            };
            if !resolved.exists() {
                return Err(Error::MissingBacking {
                    image: path.to_path_buf(),
                    backing: resolved,
                }
                .into());
            }
            let format = crate::detect(&resolved)?;
            let (format_name, backing_size) = match format {
                crate::Format::Qcow2 => ("qcow2", Qcow2Image::open(&resolved, true)?.size()),
                crate::Format::Raw => ("raw", crate::RawFile::open(&resolved, true)?.size()),
                other => {
                    return Err(Error::BackingFormat {
                        path: path.to_path_buf(),
                        format: other.name().to_string(),
                    }
                    .into())
                }
            };
            Some((
                name.to_string_lossy().into_owned(),
                format_name,
                backing_size,
            ))
        }
    };
    let size = match (size, &backing) {
        (Some(size), _) => size,
        (None, Some((_, _, backing_size))) => *backing_size,
        (None, None) => return Err(Error::NoSize.into()),
    };
    let file = File::create_open(StorageCreateOptions::new().filename(path).overwrite(false))
        .map_err(|source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let mut builder = Qcow2::<File>::create_builder(file)
        .size(size)
        .cluster_size(cluster_size as usize);
    if let Some((name, format, _)) = backing {
        builder = builder.backing(name, format.to_string());
    }
    builder.create().map_err(imago_err(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid v3 header with `size` bytes, 64 KiB clusters, L1 big enough, no backing.
    fn v3(size: u64) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[..4].copy_from_slice(&QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[36..40].copy_from_slice(&1u32.to_be_bytes());
        h[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        h[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes());
        h[56..60].copy_from_slice(&1u32.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        h
    }

    fn parse(h: &[u8]) -> Result<Header, Error> {
        Header::parse(h, Path::new("t.qcow2"), true)
    }

    #[test]
    fn valid_header_parses() {
        let h = parse(&v3(1 << 20)).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.size, 1 << 20);
        assert_eq!(h.backing_file, None);
    }

    #[test]
    fn short_and_garbage_headers_are_refused() {
        let h = v3(1 << 20);
        for len in [0, 3, 7, 50, 103] {
            assert!(
                matches!(parse(&h[..len]), Err(Error::Truncated { .. })),
                "{len}"
            );
        }
        let mut g = h.clone();
        g[4..8].copy_from_slice(&7u32.to_be_bytes());
        assert!(matches!(parse(&g), Err(Error::Version { version: 7, .. })));
        let mut g = h.clone();
        g[20..24].copy_from_slice(&40u32.to_be_bytes());
        assert!(matches!(parse(&g), Err(Error::BadHeader { .. })));
        let mut g = h.clone();
        g[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(parse(&g), Err(Error::BadHeader { .. })));
        let mut g = h.clone();
        g[24..32].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(parse(&g), Err(Error::BadHeader { .. })));
    }

    #[test]
    fn feature_bits_are_refused_by_name() {
        let with = |bits: u64| {
            let mut h = v3(1 << 20);
            h[72..80].copy_from_slice(&bits.to_be_bytes());
            parse(&h)
        };
        let dirty = with(1).unwrap_err();
        assert!(matches!(dirty, Error::Dirty { .. }));
        assert!(dirty.to_string().contains("qemu-img check -r all"));
        assert!(matches!(with(2), Err(Error::Corrupt { .. })));
        assert!(matches!(with(4), Err(Error::ExternalDataFile { .. })));
        assert!(matches!(with(16), Err(Error::ExtendedL2 { .. })));
        assert!(matches!(
            with(1 << 40),
            Err(Error::UnknownFeatures { bits, .. }) if bits == 1 << 40
        ));
    }

    #[test]
    fn encryption_and_snapshots_are_refused() {
        let mut h = v3(1 << 20);
        h[32..36].copy_from_slice(&2u32.to_be_bytes());
        assert!(matches!(parse(&h), Err(Error::Encrypted { method: 2, .. })));
        let mut h = v3(1 << 20);
        h[60..64].copy_from_slice(&1u32.to_be_bytes());
        assert!(matches!(
            parse(&h),
            Err(Error::InternalSnapshots { count: 1, .. })
        ));
        assert!(Header::parse(&h, Path::new("t"), false).is_ok());
    }

    #[test]
    fn backing_name_and_format_are_read() {
        let mut h = v3(1 << 20);
        // Backing format extension at 104, then the end marker, then the name.
        h[104..108].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        h[108..112].copy_from_slice(&3u32.to_be_bytes());
        h[112..115].copy_from_slice(b"raw");
        h[200..208].copy_from_slice(b"base.img");
        h[8..16].copy_from_slice(&200u64.to_be_bytes());
        h[16..20].copy_from_slice(&8u32.to_be_bytes());
        let p = parse(&h).unwrap();
        assert_eq!(p.backing_file.as_deref(), Some("base.img"));
        assert_eq!(p.backing_format.as_deref(), Some("raw"));

        // A name past the first cluster, or one that overlaps the header.
        h[8..16].copy_from_slice(&(1u64 << 16).to_be_bytes());
        assert!(matches!(parse(&h), Err(Error::BadHeader { .. })));
        h[8..16].copy_from_slice(&10u64.to_be_bytes());
        assert!(matches!(parse(&h), Err(Error::BadHeader { .. })));
    }

    #[test]
    fn a_feature_name_table_of_partial_entries_is_refused() {
        let mut h = v3(1 << 20);
        h[104..108].copy_from_slice(&EXT_FEATURE_NAME_TABLE.to_be_bytes());
        h[108..112].copy_from_slice(&49u32.to_be_bytes());
        assert!(matches!(parse(&h), Err(Error::BadHeader { .. })));
        // Whole entries are fine (then the end marker at 8-aligned 160).
        h[108..112].copy_from_slice(&48u32.to_be_bytes());
        assert!(parse(&h).is_ok());
    }

    #[test]
    fn extension_walk_is_bounded() {
        let mut h = v3(1 << 20);
        h[104..108].copy_from_slice(&0x1234u32.to_be_bytes());
        h[108..112].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(parse(&h), Err(Error::BadHeader { .. })));
    }
}
