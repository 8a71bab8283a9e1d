//! [`VerityImage`]: a data image read through the hash tree.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{from_hex, Error, Geometry, Superblock, MAX_DIGEST, SUPERBLOCK_BYTES};
use crate::guest::{DiskId, DiskIoError};
use crate::ImageFile;

/// Verified hash blocks kept by default: 1024 (4 MiB of 4 KiB hash blocks, whose level-0
/// blocks cover 512 MiB of data with sha256).
pub const DEFAULT_CACHE_BLOCKS: usize = 1024;

/// Verification failures logged, one line each; later ones are only counted.
const LOGGED_CORRUPTIONS: u64 = 100;

/// Data bytes read and verified at once by a large read.
const READ_CHUNK: usize = 256 << 10;

/// A read-only disk whose every block is checked against a dm-verity hash tree and a trusted
/// root hash (see [the module](super)).
pub struct VerityImage<T> {
    data: T,
    hash: File,
    superblock: Superblock,
    geometry: Geometry,
    root: Vec<u8>,
    size: u64,
    /// Verified hash blocks by their index in the tree, and the order they came in (the oldest
    /// is dropped first).
    cache: HashMap<u64, Arc<[u8]>>,
    order: VecDeque<u64>,
    cache_blocks: usize,
    corrupt: Arc<AtomicU64>,
    /// Data read from the image before it is verified.
    scratch: Vec<u8>,
}

impl<T> std::fmt::Debug for VerityImage<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerityImage")
            .field("superblock", &self.superblock)
            .field("size", &self.size)
            .field("corrupt_blocks", &self.corrupt.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<T: ImageFile> VerityImage<T> {
    /// Opens `data` checked against the hash file at `hash_path` and the root hash in hex.
    pub fn open(data: T, hash_path: &Path, root_hash_hex: &str) -> Result<VerityImage<T>, Error> {
        let root = from_hex(root_hash_hex.trim())
            .ok_or_else(|| Error::RootHashHex(root_hash_hex.to_string()))?;
        let hash = File::open(hash_path).map_err(|source| Error::Io {
            what: "open the verity hash file",
            path: hash_path.to_path_buf(),
            source,
        })?;
        VerityImage::new(data, hash, &root)
    }

    /// Serves `data` checked against the hash file `hash` and the trusted `root_hash`. Refuses a
    /// damaged or unsupported superblock, a hash file for an image of another size, a hash file
    /// shorter than its tree, and a root hash the top of the tree does not hash to.
    pub fn new(data: T, hash: File, root_hash: &[u8]) -> Result<VerityImage<T>, Error> {
        let read_err = |source: std::io::Error| Error::ReadIo {
            what: "hash file",
            source: source.into(),
        };
        let hash_size = hash.metadata().map_err(read_err)?.len();
        let mut head = [0u8; SUPERBLOCK_BYTES];
        let head_len = usize::try_from(hash_size).map_or(SUPERBLOCK_BYTES, |s| s.min(head.len()));
        hash.read_exact_at(&mut head[..head_len], 0)
            .map_err(read_err)?;
        let superblock = Superblock::parse(&head[..head_len])?;
        let geometry = superblock.geometry()?;
        let needed = geometry.hash_file_len();
        if hash_size < needed {
            return Err(Error::HashFileTooShort {
                needed,
                size: hash_size,
            });
        }
        let block_size = u64::from(superblock.data_block_size);
        let image_size = data.size();
        if image_size / block_size != superblock.data_blocks {
            return Err(Error::SizeMismatch {
                data_blocks: superblock.data_blocks,
                block_size: superblock.data_block_size,
                image_size,
            });
        }
        let expected = superblock.algorithm.digest_len();
        if root_hash.len() != expected {
            return Err(Error::RootHashLength {
                algorithm: superblock.algorithm,
                expected,
                got: root_hash.len(),
            });
        }
        let mut image = VerityImage {
            data,
            hash,
            size: superblock.data_blocks * block_size,
            superblock,
            geometry,
            root: root_hash.to_vec(),
            cache: HashMap::new(),
            order: VecDeque::new(),
            cache_blocks: DEFAULT_CACHE_BLOCKS,
            corrupt: Arc::new(AtomicU64::new(0)),
            scratch: Vec::new(),
        };
        image.check_root()?;
        Ok(image)
    }

    /// Keeps at most `blocks` verified hash blocks (at least one).
    pub fn with_cache_blocks(mut self, blocks: usize) -> VerityImage<T> {
        self.cache_blocks = blocks.max(1);
        self
    }

    /// Counts corrupt blocks into `counter` (shared with metrics) instead of a counter of its
    /// own.
    pub fn with_counter(mut self, counter: Arc<AtomicU64>) -> VerityImage<T> {
        self.corrupt = counter;
        self
    }

    /// Reads that failed because a data block (or a hash block above it) did not match.
    pub fn corrupt_blocks(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }

    /// The counter behind [`VerityImage::corrupt_blocks`], for a metrics endpoint.
    pub fn corrupt_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.corrupt)
    }

    /// The hash file's superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    /// The data image.
    pub fn get_ref(&self) -> &T {
        &self.data
    }

    /// The data image, unwrapped.
    pub fn into_inner(self) -> T {
        self.data
    }

    /// Checks the top of the tree (or, with no tree, the one data block) against the root.
    fn check_root(&mut self) -> Result<(), Error> {
        let levels = self.geometry.levels();
        if levels == 0 {
            let mut block = vec![0u8; self.superblock.data_block_size as usize];
            self.data.read(0, &mut block).map_err(data_err)?;
            return match self.check_data_block(0, &block) {
                Ok(()) => Ok(()),
                Err(Error::CorruptBlock { .. }) => Err(Error::WrongRootHash),
                Err(e) => Err(e),
            };
        }
        match self.hash_block(levels - 1, 0, 0) {
            Ok(_) => Ok(()),
            Err(Error::CorruptHashBlock { .. }) => Err(Error::WrongRootHash),
            Err(e) => Err(e),
        }
    }

    /// Block `index` of tree `level`, read and verified up to the root (or found in the
    /// cache). `block` is the data block being read, for errors.
    fn hash_block(&mut self, level: usize, index: u64, block: u64) -> Result<Arc<[u8]>, Error> {
        let g = &self.geometry;
        let key = g.level_start[level] + index;
        if let Some(found) = self.cache.get(&key) {
            return Ok(Arc::clone(found));
        }
        let mut bytes = vec![0u8; g.hash_block as usize];
        self.hash
            .read_exact_at(&mut bytes, g.block_offset(level, index))
            .map_err(|source| Error::ReadIo {
                what: "hash file",
                source: source.into(),
            })?;
        let algorithm = self.superblock.algorithm;
        let digest_len = g.digest;
        let mut digest = [0u8; MAX_DIGEST];
        algorithm.hash(&self.superblock.salt, &bytes, &mut digest);
        let matches = if level + 1 == g.levels() {
            digest[..digest_len] == self.root[..]
        } else {
            let (bits, entry) = (g.bits, g.entry);
            let parent = self.hash_block(level + 1, index >> bits, block)?;
            let at = (index & ((1 << bits) - 1)) as usize * entry;
            parent.get(at..at + digest_len) == Some(&digest[..digest_len])
        };
        if !matches {
            return Err(Error::CorruptHashBlock {
                block,
                level,
                // The superblock takes the hash file's first block.
                hash_block: key + 1,
            });
        }
        let bytes: Arc<[u8]> = bytes.into();
        if self.cache.len() >= self.cache_blocks {
            if let Some(old) = self.order.pop_front() {
                self.cache.remove(&old);
            }
        }
        self.cache.insert(key, Arc::clone(&bytes));
        self.order.push_back(key);
        Ok(bytes)
    }

    /// Checks data block `block` (its bytes in `data`) against the tree.
    fn check_data_block(&mut self, block: u64, data: &[u8]) -> Result<(), Error> {
        let algorithm = self.superblock.algorithm;
        let mut digest = [0u8; MAX_DIGEST];
        algorithm.hash(&self.superblock.salt, data, &mut digest);
        let (digest_len, bits, entry) = (
            self.geometry.digest,
            self.geometry.bits,
            self.geometry.entry,
        );
        let matches = if self.geometry.levels() == 0 {
            digest[..digest_len] == self.root[..]
        } else {
            let hashes = self.hash_block(0, block >> bits, block)?;
            let at = (block & ((1 << bits) - 1)) as usize * entry;
            hashes.get(at..at + digest_len) == Some(&digest[..digest_len])
        };
        if matches {
            Ok(())
        } else {
            Err(Error::CorruptBlock {
                block,
                offset: block * u64::from(self.superblock.data_block_size),
            })
        }
    }

    /// Verifies data block `block` whose bytes are `data` (one data block), as a read does:
    /// a mismatch is logged and counted. Public for benchmarks and tools.
    pub fn verify_block(&mut self, block: u64, data: &[u8]) -> Result<(), Error> {
        if block >= self.superblock.data_blocks
            || data.len() != self.superblock.data_block_size as usize
        {
            return Err(Error::CorruptBlock {
                block,
                offset: block.saturating_mul(u64::from(self.superblock.data_block_size)),
            });
        }
        match self.check_data_block(block, data) {
            Ok(()) => Ok(()),
            Err(e @ (Error::CorruptBlock { .. } | Error::CorruptHashBlock { .. })) => {
                let seen = self.corrupt.fetch_add(1, Ordering::Relaxed);
                // A guest rereading a bad block must not flood the log.
                if seen < LOGGED_CORRUPTIONS {
                    log::error!("{e}");
                } else if seen == LOGGED_CORRUPTIONS {
                    log::error!("{e}; further verity failures are counted, not logged");
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

fn data_err(e: DiskIoError) -> Error {
    Error::ReadIo {
        what: "data image",
        source: Box::new(e),
    }
}

impl<T: ImageFile> ImageFile for VerityImage<T> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        true
    }

    fn id(&self) -> DiskId {
        self.data.id()
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskIoError> {
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(DiskIoError::Io {
                done: 0,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{len} bytes at {offset} run past the end of a {}-byte disk",
                        self.size
                    ),
                ),
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let bs = u64::from(self.superblock.data_block_size);
        let mut scratch = std::mem::take(&mut self.scratch);
        let chunk_blocks = (READ_CHUNK as u64 / bs).max(1);
        let first = offset / bs;
        let last = (offset + len - 1) / bs;
        let mut result = Ok(());
        let mut block = first;
        while block <= last {
            let n = chunk_blocks.min(last - block + 1);
            let bytes = (n * bs) as usize;
            if scratch.len() < bytes {
                scratch.resize(bytes, 0);
            }
            let piece = &mut scratch[..bytes];
            if let Err(e) = self.data.read(block * bs, piece) {
                result = Err(e);
                break;
            }
            if let Err(e) = piece
                .chunks_exact(bs as usize)
                .zip(block..)
                .try_for_each(|(data, b)| self.verify_block(b, data))
            {
                result = Err(DiskIoError::Format(Box::new(e)));
                break;
            }
            // Copy the part of these blocks the caller asked for.
            let start = (block * bs).max(offset);
            let end = ((block + n) * bs).min(offset + len);
            let from = (start - block * bs) as usize;
            let to = (start - offset) as usize;
            let count = (end - start) as usize;
            buf[to..to + count].copy_from_slice(&piece[from..from + count]);
            block += n;
        }
        self.scratch = scratch;
        result
    }

    fn write(&mut self, _offset: u64, _buf: &[u8]) -> Result<(), DiskIoError> {
        Err(DiskIoError::Unsupported(
            "writes to a verity disk (read-only)",
        ))
    }

    fn flush(&mut self) -> Result<(), DiskIoError> {
        Ok(())
    }
}
