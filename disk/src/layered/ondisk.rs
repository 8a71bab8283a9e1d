//! The on-disk structures of a layer file, each one 4 KiB block, little-endian, checksummed
//! with CRC-32: the header (block 0, written once), two alternating superblocks (blocks 1 and
//! 2) and B+ tree nodes. Decoding checks everything a hostile file could get wrong and never
//! panics.

use crate::format::LAYERED_MAGIC;

/// Size of a guest block, a data extent, a tree node and a metadata block.
pub const BLOCK: usize = 4096;
/// [`BLOCK`] as a u64.
pub const BLOCK_U64: u64 = BLOCK as u64;
/// File blocks of the two superblocks.
pub const SUPERBLOCKS: [u64; 2] = [1, 2];
/// The first file block that data and nodes are appended from.
pub const FIRST_FREE: u64 = 3;
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Most entries in one tree node: 16-byte header, 16-byte entries.
pub const FANOUT: usize = (BLOCK - NODE_HEADER) / 16;
/// Deepest tree accepted: 255^8 blocks is far past any disk.
pub const MAX_DEPTH: u32 = 8;
/// A leaf value: the block was discarded or written with zeros (reads zeros, hides lower layers).
pub const TOMBSTONE: u64 = u64::MAX;
/// A leaf value with this bit names a block of the layer's dedup extent store, not of its own
/// file.
pub const STORE_BIT: u64 = 1 << 62;

const SUPER_MAGIC: [u8; 8] = *b"VMLSUPER";
const NODE_MAGIC: [u8; 4] = *b"LNOD";
const NODE_HEADER: usize = 16;
const CRC_AT: usize = BLOCK - 4;
const PATHS_AT: usize = 168;
/// Longest parent path plus store path a superblock holds.
pub const MAX_PATHS: usize = CRC_AT - PATHS_AT;

/// A 16-byte layer identity, random at creation.
pub type LayerId = [u8; 16];

/// What a layer file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A layer of a disk.
    Layer,
    /// A dedup extent store: blocks only, pointed into by imported layers.
    Store,
}

/// The fixed header at block 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The file's kind.
    pub kind: FileKind,
    /// The layer's identity.
    pub id: LayerId,
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(dst) = b.get_mut(at..at + v.len()) {
        dst.copy_from_slice(v);
    }
}

fn get_id(b: &[u8], at: usize) -> LayerId {
    b.get(at..at + 16)
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; 16])
}

fn block_crc(b: &[u8; BLOCK]) -> u32 {
    crc32fast::hash(&b[..CRC_AT])
}

impl Header {
    /// Encodes the header block.
    pub fn encode(&self) -> Box<[u8; BLOCK]> {
        let mut b = Box::new([0u8; BLOCK]);
        put(&mut b[..], 0, &LAYERED_MAGIC);
        put(&mut b[..], 8, &VERSION.to_le_bytes());
        let kind: u32 = match self.kind {
            FileKind::Layer => 0,
            FileKind::Store => 1,
        };
        put(&mut b[..], 12, &kind.to_le_bytes());
        put(&mut b[..], 16, &self.id);
        let crc = block_crc(&b);
        put(&mut b[..], CRC_AT, &crc.to_le_bytes());
        b
    }

    /// Decodes a header block.
    pub fn decode(b: &[u8; BLOCK]) -> Result<Header, String> {
        if b[..8] != LAYERED_MAGIC {
            return Err("bad magic".into());
        }
        if get_u32(b, CRC_AT) != block_crc(b) {
            return Err("header checksum mismatch".into());
        }
        let version = get_u32(b, 8);
        if version != VERSION {
            return Err(format!("unsupported version {version}"));
        }
        let kind = match get_u32(b, 12) {
            0 => FileKind::Layer,
            1 => FileKind::Store,
            k => return Err(format!("unknown file kind {k}")),
        };
        Ok(Header {
            kind,
            id: get_id(b, 16),
        })
    }
}

/// What a layer is stacked on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parent {
    /// Nothing: blocks in no layer read as zeros.
    None,
    /// A sealed layer, by path and identity.
    Layer {
        /// Its path, relative to this layer's directory when it was made so.
        path: String,
        /// Its id.
        id: LayerId,
    },
    /// A raw or qcow2 base image, by path and what identifies its state.
    Base {
        /// Its path, relative to this layer's directory when it was made so.
        path: String,
        /// Its size in bytes (the file's, not the disk's).
        file_size: u64,
        /// Its modification time, in ns since the epoch.
        mtime_ns: u64,
        /// Its inode number.
        ino: u64,
    },
}

/// One superblock: the state of a layer as of one commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Bumped on every commit; the newer valid superblock wins.
    pub generation: u64,
    /// The disk's size in bytes.
    pub disk_size: u64,
    /// File block of the tree's root (0 when empty).
    pub root: u64,
    /// Levels in the tree (0 when empty, 1 when the root is a leaf).
    pub depth: u32,
    /// Whether the layer is read-only for good.
    pub sealed: bool,
    /// Entries in the tree.
    pub block_count: u64,
    /// File blocks in use: everything the tree points to lies below.
    pub file_end: u64,
    /// File block where the Bloom filter starts (sealed layers).
    pub filter_block: u64,
    /// Bits in the Bloom filter.
    pub filter_bits: u64,
    /// Hash functions of the Bloom filter.
    pub filter_hashes: u32,
    /// CRC-32 of the filter's bytes.
    pub filter_crc: u32,
    /// What the layer is stacked on.
    pub parent: Parent,
    /// The dedup extent store leaf values with `STORE_BIT` point into: path and id.
    pub store: Option<(String, LayerId)>,
    /// Blocks seen by the import that made this layer (dedup statistics; 0 if none).
    pub dedup_seen: u64,
    /// Blocks the import stored for them.
    pub dedup_stored: u64,
}

impl Superblock {
    /// Encodes a superblock; `None` if the paths do not fit.
    pub fn encode(&self) -> Option<Box<[u8; BLOCK]>> {
        let mut b = Box::new([0u8; BLOCK]);
        let w = &mut b[..];
        put(w, 0, &SUPER_MAGIC);
        put(w, 8, &self.generation.to_le_bytes());
        put(w, 16, &self.disk_size.to_le_bytes());
        put(w, 24, &self.root.to_le_bytes());
        put(w, 32, &self.depth.to_le_bytes());
        put(w, 36, &u32::from(self.sealed).to_le_bytes());
        put(w, 40, &self.block_count.to_le_bytes());
        put(w, 48, &self.file_end.to_le_bytes());
        put(w, 56, &self.filter_block.to_le_bytes());
        put(w, 64, &self.filter_bits.to_le_bytes());
        put(w, 72, &self.filter_hashes.to_le_bytes());
        put(w, 76, &self.filter_crc.to_le_bytes());
        let (kind, id, size, mtime, ino, ppath): (u32, LayerId, u64, u64, u64, &str) =
            match &self.parent {
                Parent::None => (0, [0; 16], 0, 0, 0, ""),
                Parent::Layer { path, id } => (1, *id, 0, 0, 0, path),
                Parent::Base {
                    path,
                    file_size,
                    mtime_ns,
                    ino,
                } => (2, [0; 16], *file_size, *mtime_ns, *ino, path),
            };
        put(w, 80, &kind.to_le_bytes());
        put(w, 88, &id);
        put(w, 104, &size.to_le_bytes());
        put(w, 112, &mtime.to_le_bytes());
        put(w, 120, &ino.to_le_bytes());
        let (spath, sid) = match &self.store {
            Some((p, id)) => (p.as_str(), *id),
            None => ("", [0; 16]),
        };
        put(w, 128, &sid);
        put(w, 144, &self.dedup_seen.to_le_bytes());
        put(w, 152, &self.dedup_stored.to_le_bytes());
        if ppath.len() + spath.len() > MAX_PATHS {
            return None;
        }
        put(w, 160, &(ppath.len() as u32).to_le_bytes());
        put(w, 164, &(spath.len() as u32).to_le_bytes());
        put(w, PATHS_AT, ppath.as_bytes());
        put(w, PATHS_AT + ppath.len(), spath.as_bytes());
        let crc = block_crc(&b);
        put(&mut b[..], CRC_AT, &crc.to_le_bytes());
        Some(b)
    }

    /// Decodes a superblock, checking its checksum and the plausibility of every field that
    /// does not need the file (the caller checks pointers against the file's length).
    pub fn decode(b: &[u8; BLOCK]) -> Result<Superblock, String> {
        if b[..8] != SUPER_MAGIC {
            return Err("bad superblock magic".into());
        }
        if get_u32(b, CRC_AT) != block_crc(b) {
            return Err("superblock checksum mismatch".into());
        }
        let depth = get_u32(b, 32);
        if depth > MAX_DEPTH {
            return Err(format!("tree depth {depth} is more than {MAX_DEPTH}"));
        }
        let sealed = match get_u32(b, 36) {
            0 => false,
            1 => true,
            v => return Err(format!("bad sealed flag {v}")),
        };
        let plen = get_u32(b, 160) as usize;
        let slen = get_u32(b, 164) as usize;
        if plen.saturating_add(slen) > MAX_PATHS {
            return Err("parent and store paths overflow the superblock".into());
        }
        let text = |at: usize, len: usize| -> Result<String, String> {
            let bytes = b.get(at..at + len).ok_or("path out of the superblock")?;
            String::from_utf8(bytes.to_vec()).map_err(|_| "path is not UTF-8".to_string())
        };
        let ppath = text(PATHS_AT, plen)?;
        let spath = text(PATHS_AT + plen, slen)?;
        let parent = match get_u32(b, 80) {
            0 if ppath.is_empty() => Parent::None,
            1 if !ppath.is_empty() => Parent::Layer {
                path: ppath,
                id: get_id(b, 88),
            },
            2 if !ppath.is_empty() => Parent::Base {
                path: ppath,
                file_size: get_u64(b, 104),
                mtime_ns: get_u64(b, 112),
                ino: get_u64(b, 120),
            },
            k => return Err(format!("bad parent kind {k} or path")),
        };
        let store = (!spath.is_empty()).then(|| (spath, get_id(b, 128)));
        let sb = Superblock {
            generation: get_u64(b, 8),
            disk_size: get_u64(b, 16),
            root: get_u64(b, 24),
            depth,
            sealed,
            block_count: get_u64(b, 40),
            file_end: get_u64(b, 48),
            filter_block: get_u64(b, 56),
            filter_bits: get_u64(b, 64),
            filter_hashes: get_u32(b, 72),
            filter_crc: get_u32(b, 76),
            parent,
            store,
            dedup_seen: get_u64(b, 144),
            dedup_stored: get_u64(b, 152),
        };
        if sb.disk_size == 0 || sb.disk_size > MAX_DISK_SIZE {
            return Err(format!("absurd disk size {}", sb.disk_size));
        }
        if sb.file_end < FIRST_FREE || sb.file_end > MAX_DISK_SIZE / BLOCK_U64 * 4 {
            return Err(format!("absurd file end {}", sb.file_end));
        }
        if (sb.depth == 0) != (sb.root == 0) || (sb.depth == 0) != (sb.block_count == 0) {
            return Err("root, depth and block count disagree".into());
        }
        if sb.root != 0 && (sb.root < FIRST_FREE || sb.root >= sb.file_end) {
            return Err(format!("root block {} outside the file", sb.root));
        }
        if sb.block_count > sb.disk_size.div_ceil(BLOCK_U64) {
            return Err(format!(
                "{} blocks mapped in a {}-byte disk",
                sb.block_count, sb.disk_size
            ));
        }
        Ok(sb)
    }
}

/// Largest disk accepted: 2^56 bytes (64 PiB), so block arithmetic never overflows.
pub const MAX_DISK_SIZE: u64 = 1 << 56;

/// A decoded tree node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// 0 for a leaf; an internal node's children are one level lower.
    pub level: u8,
    /// Sorted keys (guest block numbers) and values (leaf: file block, `TOMBSTONE` or a
    /// store block with `STORE_BIT`; internal: the child's file block, its key the
    /// smallest key under it).
    pub entries: Vec<(u64, u64)>,
}

impl Node {
    /// Encodes a node of at most [`FANOUT`] entries.
    pub fn encode(&self) -> Box<[u8; BLOCK]> {
        let mut b = Box::new([0u8; BLOCK]);
        put(&mut b[..], 0, &NODE_MAGIC);
        b[8] = self.level;
        let count = self.entries.len().min(FANOUT);
        put(&mut b[..], 10, &(count as u16).to_le_bytes());
        for (i, (k, v)) in self.entries.iter().take(count).enumerate() {
            put(&mut b[..], NODE_HEADER + i * 16, &k.to_le_bytes());
            put(&mut b[..], NODE_HEADER + i * 16 + 8, &v.to_le_bytes());
        }
        let crc = node_crc(&b);
        put(&mut b[..], 4, &crc.to_le_bytes());
        b
    }

    /// Decodes a node, checking magic, checksum, count and key order.
    pub fn decode(b: &[u8; BLOCK]) -> Result<Node, String> {
        if b[..4] != NODE_MAGIC {
            return Err("bad node magic".into());
        }
        if get_u32(b, 4) != node_crc(b) {
            return Err("node checksum mismatch".into());
        }
        let level = b[8];
        let count = usize::from(u16::from_le_bytes([b[10], b[11]]));
        if count == 0 || count > FANOUT {
            return Err(format!("node has {count} entries"));
        }
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            let k = get_u64(b, NODE_HEADER + i * 16);
            let v = get_u64(b, NODE_HEADER + i * 16 + 8);
            if let Some(&(prev, _)) = entries.last() {
                if k <= prev {
                    return Err("node keys out of order".into());
                }
            }
            entries.push((k, v));
        }
        Ok(Node { level, entries })
    }
}

fn node_crc(b: &[u8; BLOCK]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..4]);
    h.update(&b[8..]);
    h.finalize()
}
