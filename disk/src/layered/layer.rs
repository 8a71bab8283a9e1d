//! One layer file opened: its header, the newer valid superblock, its filter (sealed) or its
//! exact in-memory block map (the writable top), and the extent store it may point into.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use super::bloom::{bits_for, Bloom, KeyHash};
use super::btree::{self, NodeCache, TreeRef};
use super::error::{Error, Result};
use super::file::{sync_dir, LayerFile};
use super::ondisk::{
    FileKind, Header, LayerId, Superblock, BLOCK, BLOCK_U64, FANOUT, FIRST_FREE, STORE_BIT,
    SUPERBLOCKS, TOMBSTONE,
};

/// The writable top layer's state beyond its superblock.
#[derive(Debug, Default)]
pub struct TopState {
    /// Every block of the layer: guest block → file block (or [`TOMBSTONE`]).
    pub map: BTreeMap<u64, u64>,
    /// The committed tree's leaves: (first key, block).
    pub leaves: Vec<(u64, u64)>,
    /// Keys changed since the last commit.
    pub dirty: BTreeSet<u64>,
    /// Where the next extent or node is appended.
    pub next_block: u64,
    /// Whether data was written since the last fsync.
    pub unsynced: bool,
}

/// An open layer.
#[derive(Debug)]
pub struct Layer {
    /// Its path.
    pub path: PathBuf,
    /// Its file.
    pub file: LayerFile,
    /// Its header.
    pub header: Header,
    /// The newest valid superblock.
    pub sb: Superblock,
    /// Which slot (0 or 1) `sb` came from.
    pub slot: usize,
    /// The Bloom filter of a sealed layer.
    pub filter: Option<Bloom>,
    /// The extent store leaf values with [`STORE_BIT`] point into.
    pub store: Option<LayerFile>,
    /// The top's state, when opened writable.
    pub top: Option<TopState>,
    /// Cached internal nodes.
    pub cache: NodeCache,
}

/// Reads the header and the newer valid superblock of `file`.
pub fn read_meta(file: &LayerFile) -> Result<(Header, Superblock, usize)> {
    let path = file.path();
    let raw = file.read_block(0).map_err(|e| match e {
        Error::Corrupt { .. } => Error::NotLayered {
            path: path.to_path_buf(),
            what: "shorter than a header".into(),
        },
        other => other,
    })?;
    let header = Header::decode(&raw).map_err(|what| Error::NotLayered {
        path: path.to_path_buf(),
        what,
    })?;
    let mut best: Option<(Superblock, usize)> = None;
    let mut why = Vec::new();
    for (slot, &block) in SUPERBLOCKS.iter().enumerate() {
        match file
            .read_block(block)
            .and_then(|raw| Superblock::decode(&raw).map_err(|e| Error::corrupt(path, e)))
        {
            Ok(sb) => {
                if best
                    .as_ref()
                    .is_none_or(|(b, _)| sb.generation > b.generation)
                {
                    best = Some((sb, slot));
                }
            }
            Err(e) => why.push(format!("superblock {slot}: {e}")),
        }
    }
    let (sb, slot) = best.ok_or_else(|| Error::corrupt(path, why.join("; ")))?;
    let len = file.len()?;
    if sb.file_end.saturating_mul(BLOCK_U64) > len {
        return Err(Error::corrupt(
            path,
            format!(
                "truncated: {len} bytes, but the committed state needs {} blocks",
                sb.file_end
            ),
        ));
    }
    if sb.block_count > sb.file_end.saturating_mul(FANOUT as u64) {
        return Err(Error::corrupt(
            path,
            "more blocks mapped than the tree can hold",
        ));
    }
    Ok((header, sb, slot))
}

impl Layer {
    /// Opens the layer at `path`; `writable` loads its block map for writing (a sealed layer
    /// is refused).
    pub fn open(path: &Path, writable: bool) -> Result<Layer> {
        let f = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let file = LayerFile::new(f, path);
        let (header, sb, slot) = read_meta(&file)?;
        if header.kind != FileKind::Layer {
            return Err(Error::NotLayered {
                path: path.to_path_buf(),
                what: "a dedup extent store, not a layer".into(),
            });
        }
        if writable && sb.sealed {
            return Err(Error::ReadOnly {
                path: path.to_path_buf(),
            });
        }
        let filter = if sb.sealed {
            Some(read_filter(&file, &sb)?)
        } else {
            None
        };
        let store = match &sb.store {
            Some((spath, sid)) => Some(open_store(path, spath, sid)?),
            None => None,
        };
        let mut layer = Layer {
            path: path.to_path_buf(),
            file,
            header,
            sb,
            slot,
            filter,
            store,
            top: None,
            cache: NodeCache::default(),
        };
        if writable || !layer.sb.sealed {
            // An unsealed layer has no filter: its exact map answers instead.
            let mut top = TopState {
                next_block: layer.sb.file_end,
                ..TopState::default()
            };
            layer.load_map(&mut top)?;
            layer.top = Some(top);
        }
        Ok(layer)
    }

    /// The layer's id in hex.
    pub fn id_hex(&self) -> String {
        hex(&self.header.id)
    }

    /// The committed tree.
    pub fn tree(&self) -> TreeRef {
        TreeRef {
            root: self.sb.root,
            depth: self.sb.depth,
            file_end: self.sb.file_end,
        }
    }

    fn load_map(&self, top: &mut TopState) -> Result<()> {
        let path = self.path.clone();
        let file_end = self.sb.file_end;
        let has_store = self.store.is_some();
        let map = &mut top.map;
        let leaves = &mut top.leaves;
        let count = btree::walk(
            &self.file,
            self.tree(),
            self.sb.block_count,
            &mut |k, v| {
                check_value(&path, k, v, file_end, has_store, self.sb.disk_size)?;
                map.insert(k, v);
                Ok(())
            },
            &mut |first, block| leaves.push((first, block)),
        )?;
        if count != self.sb.block_count {
            return Err(Error::corrupt(
                &self.path,
                format!(
                    "tree holds {count} blocks, superblock says {}",
                    self.sb.block_count
                ),
            ));
        }
        Ok(())
    }

    /// Where guest block `key` lives in this layer: `None` when the layer does not have it.
    pub fn find(&mut self, key: u64) -> Result<Option<u64>> {
        self.find_hashed(key, KeyHash::of(key))
    }

    /// [`Layer::find`] with the key's filter hash computed by the caller, once per chain.
    pub fn find_hashed(&mut self, key: u64, hash: KeyHash) -> Result<Option<u64>> {
        if let Some(top) = &self.top {
            return Ok(top.map.get(&key).copied());
        }
        if let Some(filter) = &self.filter {
            if !filter.may_contain_hashed(hash) {
                return Ok(None);
            }
        }
        let v = btree::lookup(&self.file, self.tree(), key, &mut self.cache)?;
        if let Some(v) = v {
            check_value(
                &self.path,
                key,
                v,
                self.sb.file_end,
                self.store.is_some(),
                self.sb.disk_size,
            )?;
        }
        Ok(v)
    }

    /// Calls `each` with every guest block the layer maps (tombstones included): the top's
    /// in-memory map, or a walk of a sealed layer's tree (which checks it on the way).
    pub fn for_each_block(&self, mut each: impl FnMut(u64)) -> Result<()> {
        if let Some(top) = &self.top {
            top.map.keys().for_each(|&k| each(k));
            return Ok(());
        }
        btree::walk(
            &self.file,
            self.tree(),
            self.sb.block_count,
            &mut |k, _| {
                each(k);
                Ok(())
            },
            &mut |_, _| {},
        )?;
        Ok(())
    }

    /// Reads the extent `value` (not a tombstone) into `buf` (one block).
    pub fn read_extent(&self, value: u64, buf: &mut [u8]) -> Result<()> {
        if value != TOMBSTONE && value & STORE_BIT != 0 {
            let store = self
                .store
                .as_ref()
                .ok_or_else(|| Error::corrupt(&self.path, "store extent without a store"))?;
            return store.read_at((value & !STORE_BIT) * BLOCK_U64, buf);
        }
        self.file.read_at(value * BLOCK_U64, buf)
    }

    /// Writes `sb` into the older superblock slot and syncs: the commit point.
    pub fn write_superblock(&mut self, mut sb: Superblock) -> Result<()> {
        sb.generation = self.sb.generation + 1;
        let raw = sb.encode().ok_or_else(|| {
            Error::Invalid("parent and store paths are too long for a superblock".into())
        })?;
        let slot = 1 - self.slot;
        let block = SUPERBLOCKS.get(slot).copied().unwrap_or(1);
        self.file.write_at(block * BLOCK_U64, &raw[..])?;
        self.file.sync()?;
        self.sb = sb;
        self.slot = slot;
        Ok(())
    }

    /// Commits the top: data and new nodes, fsync, then the superblock, fsync.
    pub fn commit(&mut self) -> Result<()> {
        let Some(top) = self.top.as_mut() else {
            return Ok(());
        };
        if top.dirty.is_empty() {
            if top.unsynced {
                self.file.sync()?;
                top.unsynced = false;
            }
            return Ok(());
        }
        let mut next = top.next_block;
        let (root, depth, leaves) =
            btree::write_tree(&self.file, &top.map, &top.leaves, &top.dirty, &mut next)?;
        top.next_block = next;
        self.file.sync()?;
        let sb = Superblock {
            root,
            depth,
            block_count: top.map.len() as u64,
            file_end: next,
            ..self.sb.clone()
        };
        let top_leaves = leaves;
        self.write_superblock(sb)?;
        if let Some(top) = self.top.as_mut() {
            top.leaves = top_leaves;
            top.dirty.clear();
            top.unsynced = false;
        }
        Ok(())
    }

    /// Seals the committed top: builds and appends its filter, then a sealed superblock.
    pub fn seal(&mut self) -> Result<()> {
        self.commit()?;
        let Some(top) = self.top.take() else {
            return Ok(());
        };
        let mut filter = Bloom::with_capacity(top.map.len() as u64);
        for &k in top.map.keys() {
            filter.insert(k);
        }
        let bytes = filter.to_bytes();
        let filter_block = top.next_block;
        // Padded to whole blocks, so the file reaches its committed end.
        let mut padded = bytes.clone();
        padded.resize(bytes.len().div_ceil(BLOCK) * BLOCK, 0);
        self.file.write_at(filter_block * BLOCK_U64, &padded)?;
        let file_end = filter_block + (bytes.len() as u64).div_ceil(BLOCK_U64);
        self.file.sync()?;
        let sb = Superblock {
            sealed: true,
            file_end,
            filter_block,
            filter_bits: filter.bits(),
            filter_hashes: filter.hashes(),
            filter_crc: crc32fast::hash(&bytes),
            ..self.sb.clone()
        };
        self.write_superblock(sb)?;
        self.filter = Some(filter);
        Ok(())
    }
}

/// Checks a leaf value: a tombstone, a store block (when there is a store) or a block of the
/// committed file.
pub fn check_value(
    path: &Path,
    key: u64,
    v: u64,
    file_end: u64,
    has_store: bool,
    disk_size: u64,
) -> Result<()> {
    if key >= disk_size.div_ceil(BLOCK_U64) {
        return Err(Error::corrupt(
            path,
            format!("block {key} mapped past the disk's end"),
        ));
    }
    let ok = v == TOMBSTONE
        || (v & STORE_BIT != 0 && has_store && v & !STORE_BIT >= FIRST_FREE)
        || (v >= FIRST_FREE && v < file_end);
    if ok {
        Ok(())
    } else {
        Err(Error::corrupt(
            path,
            format!("block {key} points to extent {v:#x} outside the file"),
        ))
    }
}

/// Reads and checks a sealed layer's filter.
pub fn read_filter(file: &LayerFile, sb: &Superblock) -> Result<Bloom> {
    let path = file.path();
    if sb.filter_bits != bits_for(sb.block_count) {
        return Err(Error::corrupt(
            path,
            format!(
                "filter of {} bits for {} blocks",
                sb.filter_bits, sb.block_count
            ),
        ));
    }
    let bytes = sb.filter_bits / 8;
    let end_block = sb.filter_block.saturating_add(bytes.div_ceil(BLOCK_U64));
    if sb.filter_block < FIRST_FREE || end_block > sb.file_end {
        return Err(Error::corrupt(path, "filter outside the file"));
    }
    let mut buf =
        vec![0u8; usize::try_from(bytes).map_err(|_| Error::corrupt(path, "filter too big"))?];
    file.read_at(sb.filter_block * BLOCK_U64, &mut buf)?;
    if crc32fast::hash(&buf) != sb.filter_crc {
        return Err(Error::corrupt(path, "filter checksum mismatch"));
    }
    Bloom::from_bytes(&buf, sb.filter_bits, sb.filter_hashes).map_err(|e| Error::corrupt(path, e))
}

/// Opens the extent store `spath` (relative to `layer`'s directory) and checks its id.
pub fn open_store(layer: &Path, spath: &str, sid: &LayerId) -> Result<LayerFile> {
    let full = resolve(layer, spath);
    let f = std::fs::File::open(&full).map_err(|e| Error::MissingParent {
        path: layer.to_path_buf(),
        parent: full.clone(),
        what: "dedup extent store",
        source: Box::new(e),
    })?;
    let file = LayerFile::new(f, &full);
    let (header, _, _) = read_meta(&file)?;
    if header.kind != FileKind::Store || header.id != *sid {
        return Err(Error::ParentChanged {
            path: layer.to_path_buf(),
            parent: full,
            what: "not the extent store it was imported into".into(),
        });
    }
    Ok(file)
}

/// `rel` as seen from the directory of `layer`.
pub fn resolve(layer: &Path, rel: &str) -> PathBuf {
    let rel = Path::new(rel);
    if rel.is_absolute() {
        return rel.to_path_buf();
    }
    match layer.parent() {
        Some(dir) => dir.join(rel),
        None => rel.to_path_buf(),
    }
}

/// `target` relative to the directory of `layer` when both are in one directory tree reachable
/// without `..`, else absolute.
pub fn relative_to(layer: &Path, target: &Path) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let target = abs(target);
    let dir = abs(layer)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    match target.strip_prefix(&dir) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => target.to_string_lossy().into_owned(),
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random layer id.
pub fn new_id() -> LayerId {
    let mut id = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id))
        .is_ok();
    if !ok {
        // No urandom (a bare chroot): hash what makes this call unique.
        use sha2::Digest;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let d = sha2::Sha256::digest(format!("{now}-{}-{:p}", std::process::id(), &id));
        id.copy_from_slice(&d[..16]);
    }
    id
}

/// Creates a new layer (or store) file at `path` (which must not exist) with header and two
/// superblocks, synced with its directory.
pub fn create_file(path: &Path, kind: FileKind, sb: &Superblock) -> Result<LayerId> {
    let id = new_id();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let file = LayerFile::new(f, path);
    let header = Header { kind, id };
    let raw = sb.encode().ok_or_else(|| {
        Error::Invalid("parent and store paths are too long for a superblock".into())
    })?;
    let mut first = Vec::with_capacity(3 * BLOCK);
    first.extend_from_slice(&header.encode()[..]);
    first.extend_from_slice(&raw[..]);
    first.extend_from_slice(&raw[..]);
    file.write_at(0, &first)?;
    file.sync()?;
    sync_dir(path)?;
    Ok(id)
}
