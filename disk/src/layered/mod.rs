//! The layered copy-on-write image format.
//!
//! An image is a chain of layer files over an optional raw or qcow2 base. Each layer maps
//! 4 KiB guest blocks to 4 KiB extents in its own file through a B+ tree of 4 KiB nodes
//! (fan-out 255: three levels map 64 GiB). The writable top keeps an exact in-memory map of
//! its blocks; every sealed (read-only) layer carries a Bloom filter of its blocks, so a read
//! walks down the chain and skips each layer whose filter says no. A block in no layer reads
//! from the base, or as zeros.
//!
//! Layout of a layer file (4 KiB blocks): block 0 a header (magic
//! [`LAYERED_MAGIC`](crate::format::LAYERED_MAGIC), version, random layer id) written once;
//! blocks 1 and 2 two alternating CRC-32-checksummed superblocks (generation, size, root,
//! depth, block count, committed end, sealed flag, filter location, the parent's relative
//! path and identity: a parent layer's id, or a base's size, mtime and inode); from block 3
//! on, data extents, tree nodes and (sealed) the filter, appended.
//!
//! Crash safety: a commit writes data, then new tree nodes (copy-on-write, never over a live
//! node), fsyncs, writes the new root into the older superblock and fsyncs again. It runs on
//! every [`ImageFile::flush`] and whenever more than [`AUTO_COMMIT_BLOCKS`] blocks changed. Space
//! is never reused inside a layer (old nodes and overwritten extents stay until
//! [`commit`] flattens the image), except that a block the top already owns is overwritten in
//! place.
//!
//! A snapshot seals the top (filter, sealed flag), renames it to `FILE.layer-<id>` beside it
//! and puts a new empty top at `FILE`, so the user's path keeps naming the live disk; a clone
//! is a new empty top over the sealed layers, O(1). If a crash leaves `FILE` sealed (between
//! the seal and the rename), opening it writable finishes the snapshot.

mod bloom;
mod btree;
mod check;
mod dedup;
mod error;
mod file;
mod layer;
mod ondisk;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use check::{check, info, Info, LayerInfo, Problem};
pub use dedup::{import_dedup_images, DedupReport, HashKind};
pub use error::{Error, Result};

use crate::image_file::through_buffer;
use crate::{DiskId, DiskIoError, DiskSeal, GuestBuffers, ImageFile, ID_BYTES};
use bloom::KeyHash;
use layer::{create_file, relative_to, resolve, Layer};
use ondisk::{FileKind, Parent, Superblock, BLOCK, BLOCK_U64, MAX_DISK_SIZE, STORE_BIT, TOMBSTONE};
use vm_memory::GuestMemoryBackend;

/// Changed blocks after which a write commits by itself, without waiting for a flush: bounds
/// the work a flush does and the memory of the dirty set.
pub const AUTO_COMMIT_BLOCKS: usize = 16 * 1024;
/// How long after a write a VMM commits a layered image the guest did not flush
/// ([`ImageFile::commit_interval`]).
pub const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// Most bytes one write of a run of blocks carries.
const MAX_WRITE_RUN: usize = 1 << 20;
/// Longest chain of layers opened.
pub const MAX_LAYERS: usize = 4096;
/// Block locations [`LayeredImage`] remembers (16 bytes each and the map's overhead: ~2 MiB);
/// the cache starts over when full.
pub const LOCATION_CACHE_BLOCKS: usize = 64 * 1024;
/// The location of a block that no layer holds: the base (or zeros).
const IN_BASE: usize = usize::MAX;

/// Parse functions of the on-disk structures, for the fuzz targets.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::bloom::Bloom;
    pub use super::ondisk::{Header, Node, Superblock, BLOCK};
}

/// Where a guest block's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Location {
    /// Nowhere: zeros (a tombstone, or past the base).
    Zero,
    /// Extent `value` of layer `layer` (a file block, or a block of the dedup store).
    Extent {
        /// Index in the chain, top first.
        layer: usize,
        /// The tree's value: a block of the layer's file, or `STORE_BIT | block` of the store.
        value: u64,
    },
    /// The base, at guest block `.0` (zeros without a base).
    Base(u64),
}

impl Location {
    /// The location of value `value` found in layer `layer`.
    fn of(layer: usize, value: u64) -> Location {
        if value == TOMBSTONE {
            Location::Zero
        } else {
            Location::Extent { layer, value }
        }
    }

    /// Whether `next` is the block right after a run of `len` blocks starting here, so that
    /// one read covers both.
    fn continued_by(self, next: Location, len: u64) -> bool {
        match (self, next) {
            (Location::Zero, Location::Zero) => true,
            (Location::Extent { layer, value }, Location::Extent { layer: l, value: v }) => {
                layer == l && value.checked_add(len) == Some(v)
            }
            (Location::Base(key), Location::Base(k)) => key.checked_add(len) == Some(k),
            _ => false,
        }
    }
}

/// The `len` whole blocks of `buf` from byte `from`.
fn run_slice(buf: &mut [u8], from: usize, len: u64) -> Result<&mut [u8]> {
    let bytes = usize::try_from(len * BLOCK_U64)
        .map_err(|_| Error::Invalid("a read run longer than memory".into()))?;
    buf.get_mut(from..from + bytes)
        .ok_or_else(|| Error::Invalid("a read run past its buffer".into()))
}

/// An open layered image: the chain of layers (top first) and the base.
pub struct LayeredImage {
    path: PathBuf,
    layers: Vec<Layer>,
    /// Where blocks were found below a writable top: sealed layers never change, so a block
    /// once found in layer `i` (or in the base, [`IN_BASE`]) stays there until the chain
    /// changes (a seal clears it). The writable top is always asked first, so its writes and
    /// tombstones shadow these entries. Bounded by [`LOCATION_CACHE_BLOCKS`].
    located: HashMap<u64, (usize, u64)>,
    base: Option<Box<dyn ImageFile>>,
    base_size: u64,
    size: u64,
    read_only: bool,
    id: DiskId,
}

impl std::fmt::Debug for LayeredImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayeredImage")
            .field("path", &self.path)
            .field("layers", &self.layers.len())
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .finish()
    }
}

fn io_err(e: Error) -> DiskIoError {
    DiskIoError::Format(Box::new(e))
}

fn sibling(path: &Path, name: String) -> PathBuf {
    path.with_file_name(name)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn new_superblock(disk_size: u64, parent: Parent) -> Superblock {
    Superblock {
        generation: 1,
        disk_size,
        root: 0,
        depth: 0,
        sealed: false,
        block_count: 0,
        file_end: ondisk::FIRST_FREE,
        filter_block: 0,
        filter_bits: 0,
        filter_hashes: 0,
        filter_crc: 0,
        parent,
        store: None,
        dedup_seen: 0,
        dedup_stored: 0,
    }
}

fn check_size(size: u64) -> Result<()> {
    if size == 0 || size > MAX_DISK_SIZE {
        return Err(Error::Invalid(format!(
            "disk size {size} is not between 1 byte and {MAX_DISK_SIZE} bytes"
        )));
    }
    Ok(())
}

/// A base image's identity as a superblock records it.
fn base_parent(layer_path: &Path, base: &Path) -> Result<Parent> {
    let meta = std::fs::metadata(base).map_err(|e| Error::io(base, e))?;
    Ok(Parent::Base {
        path: relative_to(layer_path, base),
        file_size: meta.len(),
        mtime_ns: mtime_ns(&meta),
        ino: meta.ino(),
    })
}

fn mtime_ns(meta: &std::fs::Metadata) -> u64 {
    (meta.mtime() as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(meta.mtime_nsec() as u64)
}

fn open_base(layer: &Path, parent: &Parent) -> Result<Option<(Box<dyn ImageFile>, PathBuf)>> {
    let Parent::Base {
        path,
        file_size,
        mtime_ns: mtime,
        ino,
    } = parent
    else {
        return Ok(None);
    };
    let full = resolve(layer, path);
    let meta = std::fs::metadata(&full).map_err(|e| Error::MissingParent {
        path: layer.to_path_buf(),
        parent: full.clone(),
        what: "base image",
        source: Box::new(e),
    })?;
    if meta.len() != *file_size || mtime_ns(&meta) != *mtime || meta.ino() != *ino {
        return Err(Error::ParentChanged {
            path: layer.to_path_buf(),
            parent: full,
            what: format!(
                "size {} mtime {} inode {}, recorded {file_size} {mtime} {ino}",
                meta.len(),
                mtime_ns(&meta),
                meta.ino()
            ),
        });
    }
    let base = open_base_image(&full).map_err(|e| Error::Base {
        path: full.clone(),
        source: Box::new(e),
    })?;
    Ok(Some((base, full)))
}

/// A base image, read-only: raw or qcow2 (a layered image below another is chained as layers,
/// never opened as a base).
fn open_base_image(path: &Path) -> std::result::Result<Box<dyn ImageFile>, crate::DiskError> {
    match crate::format::detect(path)? {
        crate::Format::Raw => Ok(Box::new(crate::RawFile::open(path, true)?)),
        crate::Format::Qcow2 => Ok(Box::new(crate::qcow2::Qcow2Image::open(path, true)?)),
        crate::Format::Layered => Err(crate::DiskError::FormatMismatch {
            path: path.to_path_buf(),
            asked: crate::Format::Raw,
            found: crate::Format::Layered,
        }),
    }
}

/// Opens the sealed parent layer `parent` of `child`, checking its identity.
fn open_parent(child: &Path, path: &str, id: &ondisk::LayerId) -> Result<Layer> {
    let full = resolve(child, path);
    let layer = Layer::open(&full, false).map_err(|e| match e {
        Error::Io { source, .. } => Error::MissingParent {
            path: child.to_path_buf(),
            parent: full.clone(),
            what: "parent layer",
            source: Box::new(source),
        },
        other => other,
    })?;
    if layer.header.id != *id {
        return Err(Error::ParentChanged {
            path: child.to_path_buf(),
            parent: full,
            what: format!("its id is {}, recorded {}", layer.id_hex(), layer::hex(id)),
        });
    }
    if !layer.sb.sealed {
        return Err(Error::corrupt(&full, "a parent layer that is not sealed"));
    }
    Ok(layer)
}

/// Layers (top first) and the base.
type Chain = (Vec<Layer>, Option<Box<dyn ImageFile>>);

/// Opens the layers under `top` and the base.
fn open_chain(top: Layer) -> Result<Chain> {
    let top_path = top.path.clone();
    let mut ids = HashSet::from([top.header.id]);
    let mut layers = vec![top];
    loop {
        let Some(last) = layers.last() else {
            return Ok((layers, None));
        };
        match last.sb.parent.clone() {
            Parent::None => return Ok((layers, None)),
            Parent::Base { .. } => {
                let base = open_base(&last.path, &last.sb.parent)?.map(|(b, _)| b);
                return Ok((layers, base));
            }
            Parent::Layer { path, id } => {
                if !ids.insert(id) || layers.len() >= MAX_LAYERS {
                    return Err(Error::ChainTooLong {
                        path: top_path,
                        max: MAX_LAYERS,
                    });
                }
                let parent = open_parent(&last.path, &path, &id)?;
                layers.push(parent);
            }
        }
    }
}

/// Seals the top `layer` whose live path is `live`: the sealed file moves to
/// `FILE.layer-<id>` and a new empty top is created at `live`. Returns the sealed path.
fn seal_and_replace(layer: &mut Layer, live: &Path) -> Result<PathBuf> {
    layer.seal()?;
    let name = file_name(live);
    let sealed = sibling(live, format!("{name}.layer-{}", layer.id_hex()));
    let tmp = sibling(live, format!(".{name}.new-top"));
    // A leftover from a crash between creating and renaming it holds nothing yet.
    let _ = std::fs::remove_file(&tmp);
    let parent = Parent::Layer {
        path: relative_to(live, &sealed),
        id: layer.header.id,
    };
    create_file(
        &tmp,
        FileKind::Layer,
        &new_superblock(layer.sb.disk_size, parent),
    )?;
    file::rename(live, &sealed)?;
    file::rename(&tmp, live)?;
    file::sync_dir(live)?;
    layer.path = sealed.clone();
    layer.file.set_path(&sealed);
    Ok(sealed)
}

impl LayeredImage {
    /// Opens the image at `path` with all its layers and base. Opened writable, a file that
    /// was sealed (a snapshot interrupted by a crash) gets a new top first.
    pub fn open(path: &Path, read_only: bool) -> Result<LayeredImage> {
        let pending = sibling(path, format!(".{}.new-top", file_name(path)));
        if !path.exists() && pending.exists() {
            // A snapshot was cut between its two renames: the new top was complete and synced.
            file::rename(&pending, path)?;
            file::sync_dir(path)?;
        }
        let top = match Layer::open(path, !read_only) {
            Err(Error::ReadOnly { .. }) if !read_only => {
                let mut sealed = Layer::open(path, false)?;
                seal_and_replace(&mut sealed, path)?;
                Layer::open(path, true)?
            }
            other => other?,
        };
        let size = top.sb.disk_size;
        let mut id = [0u8; ID_BYTES];
        let hex = top.id_hex();
        let n = hex.len().min(ID_BYTES);
        id[..n].copy_from_slice(&hex.as_bytes()[..n]);
        let (layers, base) = open_chain(top)?;
        let base_size = base.as_ref().map_or(0, |b| b.size());
        Ok(LayeredImage {
            path: path.to_path_buf(),
            layers,
            located: HashMap::new(),
            base,
            base_size,
            size,
            read_only,
            id,
        })
    }

    /// The path of the top layer (the image's path).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Layers in the chain, top first.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// How many (sealed) layers a lookup of `block` asked their tree after the filter said
    /// maybe, and how many it skipped on the filter's no; for benchmarks.
    pub fn probe_block(&mut self, block: u64) -> Result<(u32, u32)> {
        let (mut asked, mut skipped) = (0, 0);
        for layer in self.layers.iter_mut().skip(1) {
            if layer.filter.as_ref().is_some_and(|f| !f.may_contain(block)) {
                skipped += 1;
                continue;
            }
            asked += 1;
            if layer.find(block)?.is_some() {
                break;
            }
        }
        Ok((asked, skipped))
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(Error::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        Ok(())
    }

    /// Where guest block `key` lives as the chain sees it.
    fn locate(&mut self, key: u64) -> Result<Location> {
        // A writable top is asked first and never cached: it changes.
        let mut first_sealed = 0;
        if let Some(top) = self.layers.first_mut().filter(|l| l.top.is_some()) {
            first_sealed = 1;
            if let Some(v) = top.find(key)? {
                return Ok(Location::of(0, v));
            }
        }
        let (i, v) = match self.located.get(&key) {
            Some(&found) => found,
            None => {
                let hash = KeyHash::of(key);
                let mut found = (IN_BASE, 0);
                for (i, layer) in self.layers.iter_mut().enumerate().skip(first_sealed) {
                    if let Some(v) = layer.find_hashed(key, hash)? {
                        found = (i, v);
                        break;
                    }
                }
                if self.located.len() >= LOCATION_CACHE_BLOCKS {
                    self.located.clear();
                }
                self.located.insert(key, found);
                found
            }
        };
        Ok(if i == IN_BASE {
            Location::Base(key)
        } else {
            Location::of(i, v)
        })
    }

    /// Fills `buf` (whole blocks) with what `run` says: one read for a run of extents that
    /// follow each other in one file, or of base blocks that follow each other.
    fn read_run(&mut self, run: Location, buf: &mut [u8]) -> Result<()> {
        match run {
            Location::Zero => buf.fill(0),
            Location::Extent { layer, value } => match self.layers.get(layer) {
                Some(layer) => layer.read_extent(value, buf)?,
                None => buf.fill(0),
            },
            Location::Base(key) => {
                buf.fill(0);
                let offset = key * BLOCK_U64;
                if let Some(base) = self.base.as_mut() {
                    if offset < self.base_size {
                        let n = usize::try_from(self.base_size - offset)
                            .map_or(buf.len(), |n| n.min(buf.len()));
                        if let Some(part) = buf.get_mut(..n) {
                            base.read(offset, part).map_err(Error::BaseIo)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads guest block `key` as the chain sees it.
    fn read_block(&mut self, key: u64, buf: &mut [u8]) -> Result<()> {
        let location = self.locate(key)?;
        self.read_run(location, buf)
    }

    /// Whether anything below the top could hold data.
    fn has_lower(&self) -> bool {
        self.layers.len() > 1 || self.base.is_some()
    }

    /// Maps guest block `key` in the top for `data` (a whole block) and says which block of
    /// the top's file the data must be written to; `None` when nothing is to be written (zeros
    /// become a tombstone, or nothing). Writes no data: the caller does, in runs.
    fn place_block(&mut self, key: u64, data: &[u8]) -> Result<Option<u64>> {
        let has_lower = self.has_lower();
        let Some(top) = self.layers.first_mut().and_then(|l| l.top.as_mut()) else {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        };
        let current = top.map.get(&key).copied();
        if data.iter().all(|&b| b == 0) {
            // Zeros need no extent: a tombstone reads as zeros over any lower layer.
            if current != Some(TOMBSTONE) && (has_lower || current.is_some()) {
                top.map.insert(key, TOMBSTONE);
                top.dirty.insert(key);
            }
            return Ok(None);
        }
        top.unsynced = true;
        Ok(Some(match current {
            // A block the top owns is rewritten in place.
            Some(v) if v != TOMBSTONE && v & STORE_BIT == 0 => v,
            _ => {
                let v = top.next_block;
                top.next_block += 1;
                top.map.insert(key, v);
                top.dirty.insert(key);
                v
            }
        }))
    }

    /// Maps guest block `key` in the top for data that is not checked for zeros (the guest
    /// path writes from guest memory without copying it): the file block it goes to.
    fn place_data_block(&mut self, key: u64) -> Result<u64> {
        let Some(top) = self.layers.first_mut().and_then(|l| l.top.as_mut()) else {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        };
        top.unsynced = true;
        Ok(match top.map.get(&key).copied() {
            Some(v) if v != TOMBSTONE && v & STORE_BIT == 0 => v,
            _ => {
                let v = top.next_block;
                top.next_block += 1;
                top.map.insert(key, v);
                top.dirty.insert(key);
                v
            }
        })
    }

    /// Writes whole blocks from guest memory: blocks placed on consecutive blocks of the top's
    /// file go out in one `pwritev` straight from the guest's buffers, with no copy.
    fn write_guest<M: GuestMemoryBackend>(
        &mut self,
        offset: u64,
        bufs: &GuestBuffers<'_, M>,
    ) -> std::result::Result<(), DiskIoError> {
        if self.read_only {
            return Err(DiskIoError::Unsupported("writes to a read-only image"));
        }
        self.check_range(offset, bufs.len()).map_err(io_err)?;
        let blocks = bufs.len() / BLOCK_U64;
        let first_key = offset / BLOCK_U64;
        // The run: (its first block in `bufs`, its first file block, its length in blocks).
        let mut run: Option<(u64, u64, u64)> = None;
        for i in 0..blocks {
            let target = self.place_data_block(first_key + i).map_err(io_err)?;
            match &mut run {
                Some((_, start, len)) if *start + *len == target => *len += 1,
                _ => {
                    if let Some(done) = run.take() {
                        self.write_guest_run(bufs, done)?;
                    }
                    run = Some((i, target, 1));
                }
            }
        }
        if let Some(done) = run {
            self.write_guest_run(bufs, done)?;
        }
        self.commit_if_due().map_err(io_err)
    }

    /// One run of [`LayeredImage::write_guest`]: blocks `from..from + len` of `bufs` to file
    /// block `target` on.
    fn write_guest_run<M: GuestMemoryBackend>(
        &self,
        bufs: &GuestBuffers<'_, M>,
        (from, target, len): (u64, u64, u64),
    ) -> std::result::Result<(), DiskIoError> {
        let part =
            bufs.subrange(from * BLOCK_U64, len * BLOCK_U64)
                .ok_or(DiskIoError::BufferRange {
                    at: from * BLOCK_U64,
                    len: len * BLOCK_U64,
                    total: bufs.len(),
                })?;
        let Some(top) = self.layers.first() else {
            return Ok(());
        };
        crate::raw::transfer(
            top.file.file(),
            part.slices(),
            target * BLOCK_U64,
            crate::raw::Direction::Write,
        )
    }

    /// Writes `data` at file block `first` of the top (a run of placed blocks).
    fn write_run(&mut self, first: u64, data: &[u8]) -> Result<()> {
        match self.layers.first() {
            Some(top) if !data.is_empty() => top.file.write_at(first * BLOCK_U64, data),
            _ => Ok(()),
        }
    }

    /// Commits the top when enough blocks changed ([`AUTO_COMMIT_BLOCKS`]); only between runs,
    /// once their data is in the file (data before the nodes that point to it).
    fn commit_if_due(&mut self) -> Result<()> {
        match self.layers.first_mut() {
            Some(top)
                if top
                    .top
                    .as_ref()
                    .is_some_and(|t| t.dirty.len() > AUTO_COMMIT_BLOCKS) =>
            {
                top.commit()
            }
            _ => Ok(()),
        }
    }

    /// Writes `buf` at `offset`, read-modify-write for partial blocks; `None` writes zeros.
    /// Whole blocks that land on consecutive blocks of the top's file (new blocks are appended,
    /// so a sequential first write does) go out in one write.
    fn write_range(&mut self, offset: u64, len: u64, buf: Option<&[u8]>) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.check_range(offset, len)?;
        let mut block = vec![0u8; BLOCK];
        // The run being gathered: its first file block and its data.
        let mut run: (u64, Vec<u8>) = (0, Vec::new());
        let mut done = 0u64;
        while done < len {
            let at = offset + done;
            let key = at / BLOCK_U64;
            let inner = (at % BLOCK_U64) as usize;
            let n = (BLOCK - inner).min(usize::try_from(len - done).unwrap_or(BLOCK));
            if n < BLOCK {
                // The old contents may sit in the run not yet written.
                self.write_run(run.0, &run.1)?;
                run.1.clear();
                self.read_block(key, &mut block)?;
            }
            let src = buf.and_then(|b| b.get(done as usize..done as usize + n));
            if let Some(dst) = block.get_mut(inner..inner + n) {
                match src {
                    Some(src) => dst.copy_from_slice(src),
                    None => dst.fill(0),
                }
            }
            if let Some(target) = self.place_block(key, &block)? {
                let follows = run.0 + (run.1.len() / BLOCK) as u64 == target;
                if !follows || run.1.len() >= MAX_WRITE_RUN {
                    self.write_run(run.0, &run.1)?;
                    run = (target, Vec::with_capacity(MAX_WRITE_RUN));
                }
                run.1.extend_from_slice(&block);
            }
            done += n as u64;
            if run.1.is_empty() {
                self.commit_if_due()?;
            }
        }
        self.write_run(run.0, &run.1)?;
        self.commit_if_due()
    }

    /// Reads `buf.len()` bytes at `offset`. Whole blocks that follow each other in one layer
    /// file (or in the base) are read with one call.
    pub fn read_bytes(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let mut block = vec![0u8; BLOCK];
        let mut done = 0usize;
        // The run being gathered: where it starts, its first byte in `buf`, its blocks.
        let mut run: Option<(Location, usize, u64)> = None;
        while done < buf.len() {
            let at = offset + done as u64;
            let key = at / BLOCK_U64;
            let inner = (at % BLOCK_U64) as usize;
            let n = (BLOCK - inner).min(buf.len() - done);
            if n == BLOCK {
                let here = self.locate(key)?;
                match &mut run {
                    Some((start, _, len)) if start.continued_by(here, *len) => *len += 1,
                    _ => {
                        if let Some((start, from, len)) = run.take() {
                            self.read_run(start, run_slice(buf, from, len)?)?;
                        }
                        run = Some((here, done, 1));
                    }
                }
            } else {
                if let Some((start, from, len)) = run.take() {
                    self.read_run(start, run_slice(buf, from, len)?)?;
                }
                self.read_block(key, &mut block)?;
                if let (Some(dst), Some(src)) =
                    (buf.get_mut(done..done + n), block.get(inner..inner + n))
                {
                    dst.copy_from_slice(src);
                }
            }
            done += n;
        }
        if let Some((start, from, len)) = run {
            self.read_run(start, run_slice(buf, from, len)?)?;
        }
        Ok(())
    }

    /// Commits the top layer (what [`ImageFile::flush`] does).
    pub fn commit_top(&mut self) -> Result<()> {
        match self.layers.first_mut() {
            Some(top) => top.commit(),
            None => Ok(()),
        }
    }

    /// Seals the top layer and continues in a fresh top at the same path; returns the sealed
    /// layer's path and id.
    pub fn seal_top(&mut self) -> Result<(PathBuf, String)> {
        if self.read_only {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        }
        let Some(old) = self.layers.first_mut() else {
            return Err(Error::Invalid("an image without layers".into()));
        };
        let sealed = seal_and_replace(old, &self.path)?;
        let id = old.id_hex();
        let new_top = Layer::open(&self.path, true)?;
        self.layers.insert(0, new_top);
        // Every layer moved down one place.
        self.located.clear();
        Ok((sealed, id))
    }
}

impl Drop for LayeredImage {
    fn drop(&mut self) {
        if !self.read_only {
            if let Err(e) = self.commit_top() {
                log::warn!(
                    "layered image {}: commit on close failed: {e}",
                    self.path.display()
                );
            }
        }
    }
}

impl ImageFile for LayeredImage {
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
        self.read_bytes(offset, buf).map_err(io_err)
    }

    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), DiskIoError> {
        self.write_range(offset, buf.len() as u64, Some(buf))
            .map_err(io_err)
    }

    fn flush(&mut self) -> Result<(), DiskIoError> {
        if self.read_only {
            return Ok(());
        }
        self.commit_top().map_err(io_err)
    }

    fn can_discard(&self) -> bool {
        !self.read_only
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskIoError> {
        self.write_range(offset, len, None).map_err(io_err)
    }

    /// New tree nodes wait in memory until a commit: a guest that never flushes still gets
    /// its writes committed this long after them.
    fn commit_interval(&self) -> Option<std::time::Duration> {
        (!self.read_only).then_some(COMMIT_INTERVAL)
    }

    fn seal_for_snapshot(&mut self) -> Result<Option<DiskSeal>, DiskIoError> {
        let (layer, layer_id) = self.seal_top().map_err(io_err)?;
        Ok(Some(DiskSeal {
            format: "layered".into(),
            layer,
            layer_id,
        }))
    }
}

/// The guest's path: whole-block writes go from guest memory to the top's file without a copy
/// (`LayeredImage::write_guest`); reads and partial-block writes go through a host buffer,
/// as [`Bounced`](crate::Bounced) does. Blocks the guest writes as zeros are stored as data
/// here (only host-side writes turn them into tombstones); a discard is the guest's way to
/// drop blocks.
impl<M: GuestMemoryBackend> crate::DiskImage<M> for LayeredImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn id(&self) -> DiskId {
        self.id
    }

    fn read_at(
        &mut self,
        offset: u64,
        bufs: &GuestBuffers<'_, M>,
    ) -> std::result::Result<(), DiskIoError> {
        through_buffer(
            self,
            &mut Vec::new(),
            offset,
            bufs,
            |image, at, piece, done| {
                image.read_bytes(at, piece).map_err(io_err)?;
                bufs.write_from(done, piece)
            },
        )
    }

    fn write_at(
        &mut self,
        offset: u64,
        bufs: &GuestBuffers<'_, M>,
    ) -> std::result::Result<(), DiskIoError> {
        if offset.is_multiple_of(BLOCK_U64) && bufs.len().is_multiple_of(BLOCK_U64) {
            return self.write_guest(offset, bufs);
        }
        // Not whole blocks: through a host buffer, a bounded piece at a time.
        through_buffer(
            self,
            &mut Vec::new(),
            offset,
            bufs,
            |image, at, piece, done| {
                bufs.read_into(done, piece)?;
                ImageFile::write(image, at, piece)
            },
        )
    }

    fn flush(&mut self) -> std::result::Result<(), DiskIoError> {
        ImageFile::flush(self)
    }

    fn can_discard(&self) -> bool {
        ImageFile::can_discard(self)
    }

    fn discard(&mut self, offset: u64, len: u64) -> std::result::Result<(), DiskIoError> {
        ImageFile::discard(self, offset, len)
    }

    fn commit_interval(&self) -> Option<std::time::Duration> {
        ImageFile::commit_interval(self)
    }

    fn seal_for_snapshot(&mut self) -> std::result::Result<Option<DiskSeal>, DiskIoError> {
        ImageFile::seal_for_snapshot(self)
    }
}

/// Creates a layered image at `path` (which must not exist) of `size` bytes (default: the
/// base's) over `base`: a raw or qcow2 base is recorded with its identity; a layered base is
/// chained onto (its top sealed first if needed). Size 0 is refused.
pub fn create(path: &Path, size: Option<u64>, base: Option<&Path>) -> Result<()> {
    let (parent, base_size) = match base {
        None => (Parent::None, None),
        Some(base) => {
            let format = crate::format::detect(base).map_err(|e| Error::Base {
                path: base.to_path_buf(),
                source: Box::new(e),
            })?;
            if format == crate::Format::Layered {
                let (parent, size) = parent_for_clone(base, path)?;
                (parent, Some(size))
            } else {
                let parent = base_parent(path, base)?;
                let opened = open_base(path, &parent)?;
                (parent, opened.map(|(b, _)| b.size()))
            }
        }
    };
    let size = size
        .or(base_size)
        .ok_or_else(|| Error::Invalid("a disk size is needed without a base".into()))?;
    check_size(size)?;
    create_file(path, FileKind::Layer, &new_superblock(size, parent))?;
    Ok(())
}

/// The parent a new layer at `new` over the layered image `src` gets, and the disk size:
/// `src`'s top sealed (if it has blocks) or its parent shared (if it is empty).
fn parent_for_clone(src: &Path, new: &Path) -> Result<(Parent, u64)> {
    let top = Layer::open(src, false)?;
    let size = top.sb.disk_size;
    if top.sb.sealed {
        return Ok((
            Parent::Layer {
                path: relative_to(new, src),
                id: top.header.id,
            },
            size,
        ));
    }
    if top.sb.block_count == 0 {
        // An empty top adds nothing: share what it stands on.
        let parent = match &top.sb.parent {
            Parent::None => Parent::None,
            Parent::Layer { path, id } => Parent::Layer {
                path: relative_to(new, &resolve(src, path)),
                id: *id,
            },
            Parent::Base {
                path,
                file_size,
                mtime_ns,
                ino,
            } => Parent::Base {
                path: relative_to(new, &resolve(src, path)),
                file_size: *file_size,
                mtime_ns: *mtime_ns,
                ino: *ino,
            },
        };
        return Ok((parent, size));
    }
    drop(top);
    let sealed = snapshot(src)?;
    let layer = Layer::open(&sealed, false)?;
    Ok((
        Parent::Layer {
            path: relative_to(new, &sealed),
            id: layer.header.id,
        },
        size,
    ))
}

/// Makes `new` a clone of the layered image `src`: a new empty top over `src`'s layers, whose
/// top is sealed first if it has blocks. O(1) in the disk's size.
pub fn clone_image(src: &Path, new: &Path) -> Result<()> {
    let (parent, size) = parent_for_clone(src, new)?;
    create_file(new, FileKind::Layer, &new_superblock(size, parent))?;
    Ok(())
}

/// Seals the top layer of the image at `path` (moved to `FILE.layer-<id>`) and starts a new
/// empty top at `path`; returns the sealed layer's path.
pub fn snapshot(path: &Path) -> Result<PathBuf> {
    let mut top = Layer::open(path, false)?;
    if top.sb.sealed {
        return Err(Error::Invalid(format!(
            "{} is a sealed layer already",
            path.display()
        )));
    }
    drop(top);
    top = Layer::open(path, true)?;
    seal_and_replace(&mut top, path)
}

/// Flattens every layer of the image at `path` into one new top (the base stays under it);
/// the sealed layers it used are left in place for other clones that may share them.
pub fn commit(path: &Path) -> Result<()> {
    let mut image = LayeredImage::open(path, true)?;
    let bottom_parent = image
        .layers
        .last()
        .map(|l| (l.path.clone(), l.sb.parent.clone()))
        .unwrap_or((path.to_path_buf(), Parent::None));
    let parent = match bottom_parent.1 {
        Parent::Base { path: p, .. } => base_parent(path, &resolve(&bottom_parent.0, &p))?,
        _ => Parent::None,
    };
    let has_base = image.base.is_some();
    let mut keys = std::collections::BTreeSet::new();
    for layer in &image.layers {
        layer.for_each_block(|k| {
            keys.insert(k);
        })?;
    }
    let name = file_name(path);
    let tmp = sibling(path, format!(".{name}.flatten"));
    let _ = std::fs::remove_file(&tmp);
    create_file(&tmp, FileKind::Layer, &new_superblock(image.size, parent))?;
    let mut out = Layer::open(&tmp, true)?;
    let mut buf = vec![0u8; BLOCK];
    for key in keys {
        image.read_block(key, &mut buf)?;
        let Some(top) = out.top.as_mut() else { break };
        if buf.iter().all(|&b| b == 0) {
            if has_base {
                top.map.insert(key, TOMBSTONE);
                top.dirty.insert(key);
            }
            continue;
        }
        let v = top.next_block;
        out.file.write_at(v * BLOCK_U64, &buf)?;
        top.next_block += 1;
        top.map.insert(key, v);
        top.dirty.insert(key);
    }
    out.commit()?;
    drop(image);
    file::rename(&tmp, path)?;
    file::sync_dir(path)?;
    Ok(())
}

/// Opens a new writable clone at `clone_path` of the disk state a snapshot sealed: checks the
/// sealed layer's id, then creates an empty top over it.
pub fn open_sealed(seal: &DiskSeal, clone_path: &Path) -> Result<LayeredImage> {
    let layer = Layer::open(&seal.layer, false)?;
    if !layer.sb.sealed || layer.id_hex() != seal.layer_id {
        return Err(Error::SealMismatch {
            path: seal.layer.clone(),
            expected: seal.layer_id.clone(),
            found: if layer.sb.sealed {
                layer.id_hex()
            } else {
                format!("{} (not sealed)", layer.id_hex())
            },
        });
    }
    let parent = Parent::Layer {
        path: relative_to(clone_path, &seal.layer),
        id: layer.header.id,
    };
    create_file(
        clone_path,
        FileKind::Layer,
        &new_superblock(layer.sb.disk_size, parent),
    )?;
    LayeredImage::open(clone_path, false)
}
