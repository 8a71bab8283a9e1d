//! Importing images with deduplication: every non-zero 4 KiB block is hashed, and a content
//! index (a Bloom filter in front of a hash map) answers "seen before?", so identical blocks
//! across all the imported images are stored once, in a shared extent store file. Each
//! imported image becomes a sealed layer whose leaves point into the store, under a new empty
//! top at the output path. All-zero blocks are not stored at all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::bloom::Bloom;
use super::error::{Error, Result};
use super::file::LayerFile;
use super::layer::{create_file, relative_to, Layer};
use super::ondisk::{FileKind, Parent, BLOCK, BLOCK_U64, FIRST_FREE, STORE_BIT};
use super::{check_size, file_name, new_superblock, sibling};

/// The block hash used to find duplicates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum HashKind {
    /// SHA-256 (a hit is also compared byte for byte, so a collision cannot alias blocks).
    #[default]
    Sha256,
}

/// What [`import_dedup_images`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DedupReport {
    /// The shared extent store.
    pub store: PathBuf,
    /// Non-zero blocks read from all inputs.
    pub blocks_seen: u64,
    /// All-zero blocks, not stored.
    pub zero_blocks: u64,
    /// Blocks written to the store.
    pub blocks_stored: u64,
    /// `blocks_seen / blocks_stored` (1 when nothing was stored).
    pub ratio: f64,
}

/// Most keys the content index's Bloom filter is sized for.
const INDEX_FILTER_KEYS: u64 = 1 << 26;

/// Imports `inputs` (opened images of any format, with their paths) as layered images at
/// `outputs` (one each, which must not exist), storing each distinct block once in
/// `<first output>.extents`. [`crate::import_dedup`] opens the inputs from paths.
pub fn import_dedup_images(
    inputs: Vec<(PathBuf, Box<dyn crate::ImageFile>)>,
    outputs: &[PathBuf],
    hash: HashKind,
) -> Result<DedupReport> {
    let HashKind::Sha256 = hash;
    if inputs.is_empty() || inputs.len() != outputs.len() {
        return Err(Error::Invalid(
            "import needs as many outputs as inputs, at least one".into(),
        ));
    }
    let first = outputs
        .first()
        .map(PathBuf::as_path)
        .unwrap_or(Path::new("out"));
    let store_path = sibling(first, format!("{}.extents", file_name(first)));
    let mut opened = Vec::new();
    let mut total_blocks = 0u64;
    for (_, image) in inputs {
        check_size(image.size())?;
        total_blocks = total_blocks.saturating_add(image.size().div_ceil(BLOCK_U64));
        opened.push(image);
    }
    let store_id = create_file(
        &store_path,
        FileKind::Store,
        &new_superblock(1, Parent::None),
    )?;
    let store_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&store_path)
        .map_err(|e| Error::io(&store_path, e))?;
    let store = LayerFile::new(store_file, &store_path);
    let mut next_store = FIRST_FREE;
    let mut filter = Bloom::with_capacity(total_blocks.min(INDEX_FILTER_KEYS));
    let mut index: HashMap<[u8; 32], u64> = HashMap::new();
    let mut report = DedupReport {
        store: store_path.clone(),
        blocks_seen: 0,
        zero_blocks: 0,
        blocks_stored: 0,
        ratio: 1.0,
    };
    let mut buf = vec![0u8; BLOCK];
    let mut stored_copy = vec![0u8; BLOCK];
    for (mut image, out) in opened.into_iter().zip(outputs) {
        let size = image.size();
        let imported = sibling(out, format!("{}.imported", file_name(out)));
        let mut sb = new_superblock(size, Parent::None);
        sb.store = Some((relative_to(&imported, &store_path), store_id));
        create_file(&imported, FileKind::Layer, &sb)?;
        let mut layer = Layer::open(&imported, true)?;
        let (mut seen, mut stored) = (0u64, 0u64);
        for key in 0..size.div_ceil(BLOCK_U64) {
            let offset = key * BLOCK_U64;
            let n = usize::try_from(size - offset).map_or(BLOCK, |n| n.min(BLOCK));
            buf.fill(0);
            if let Some(part) = buf.get_mut(..n) {
                image.read(offset, part).map_err(Error::BaseIo)?;
            }
            if buf.iter().all(|&b| b == 0) {
                report.zero_blocks += 1;
                continue;
            }
            seen += 1;
            let digest: [u8; 32] = Sha256::digest(&buf).into();
            let short = u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]));
            let mut found = None;
            if filter.may_contain(short) {
                if let Some(&at) = index.get(&digest) {
                    store.read_at(at * BLOCK_U64, &mut stored_copy)?;
                    if stored_copy == buf {
                        found = Some(at);
                    }
                }
            }
            let at = match found {
                Some(at) => at,
                None => {
                    let at = next_store;
                    store.write_at(at * BLOCK_U64, &buf)?;
                    next_store += 1;
                    stored += 1;
                    filter.insert(short);
                    index.insert(digest, at);
                    at
                }
            };
            if let Some(top) = layer.top.as_mut() {
                top.map.insert(key, at | STORE_BIT);
                top.dirty.insert(key);
            }
        }
        // The store's blocks are durable before any layer points to them.
        store.sync()?;
        layer.seal()?;
        let sb = super::ondisk::Superblock {
            dedup_seen: seen,
            dedup_stored: stored,
            ..layer.sb.clone()
        };
        layer.write_superblock(sb)?;
        report.blocks_seen += seen;
        report.blocks_stored += stored;
        let parent = Parent::Layer {
            path: relative_to(out, &imported),
            id: layer.header.id,
        };
        create_file(out, FileKind::Layer, &new_superblock(size, parent))?;
    }
    // Record the store's end (its superblock is informational: layers check its id).
    let store_meta = {
        let mut sb = new_superblock(1, Parent::None);
        sb.generation = 2;
        sb.file_end = next_store;
        sb.dedup_seen = report.blocks_seen;
        sb.dedup_stored = report.blocks_stored;
        sb
    };
    if let Some(raw) = store_meta.encode() {
        store.write_at(2 * BLOCK_U64, &raw[..])?;
        store.sync()?;
    }
    report.ratio = report.blocks_seen as f64 / report.blocks_stored.max(1) as f64;
    if report.blocks_stored == 0 {
        report.ratio = 1.0;
    }
    Ok(report)
}
