//! `info` (what an image is made of) and `check` (every invariant of every layer).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use super::btree;
use super::error::{Error, Result};
use super::layer::{check_value, read_filter, resolve, Layer};
use super::ondisk::{Parent, Superblock, BLOCK_U64, STORE_BIT, SUPERBLOCKS, TOMBSTONE};
use super::MAX_LAYERS;

/// Random non-members probed to measure a filter's false-positive rate.
const FP_PROBES: u32 = 10_000;

/// One layer as [`info`] reports it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerInfo {
    /// Its file.
    pub path: PathBuf,
    /// Its id (hex).
    pub id: String,
    /// Whether it is sealed (read-only).
    pub sealed: bool,
    /// Guest blocks it maps (tombstones included).
    pub blocks: u64,
    /// Levels of its B+ tree.
    pub tree_depth: u32,
    /// Bits of its Bloom filter (sealed layers).
    pub filter_bits: Option<u64>,
    /// Bytes of its Bloom filter.
    pub filter_bytes: Option<u64>,
    /// The filter's false-positive rate measured with random non-members.
    pub filter_fp_rate: Option<f64>,
    /// Blocks its import saw per block it stored (imported layers).
    pub dedup_ratio: Option<f64>,
}

/// What a layered image is made of.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Info {
    /// The disk's size in bytes.
    pub size: u64,
    /// Layers, top first.
    pub layers: Vec<LayerInfo>,
    /// The raw or qcow2 base, if any.
    pub base: Option<PathBuf>,
}

impl fmt::Display for Info {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "size: {} bytes, {} layers", self.size, self.layers.len())?;
        for (i, l) in self.layers.iter().enumerate() {
            write!(
                f,
                "  {i}: {} id {} {} {} blocks, depth {}",
                l.path.display(),
                l.id,
                if l.sealed { "sealed" } else { "writable" },
                l.blocks,
                l.tree_depth
            )?;
            if let (Some(bits), Some(fp)) = (l.filter_bits, l.filter_fp_rate) {
                write!(
                    f,
                    ", filter {bits} bits, {:.2} % false positives",
                    fp * 100.0
                )?;
            }
            if let Some(r) = l.dedup_ratio {
                write!(f, ", dedup ratio {r:.2}")?;
            }
            writeln!(f)?;
        }
        match &self.base {
            Some(b) => writeln!(f, "  base: {}", b.display()),
            None => writeln!(f, "  base: none (zeros)"),
        }
    }
}

fn layer_blocks(layer: &Layer) -> Result<HashSet<u64>> {
    let mut keys = HashSet::new();
    layer.for_each_block(|k| {
        keys.insert(k);
    })?;
    Ok(keys)
}

/// Describes the image at `path`: its layers top to bottom and its base.
pub fn info(path: &Path) -> Result<Info> {
    let mut layers = Vec::new();
    let mut cur = path.to_path_buf();
    let mut base = None;
    let mut size = None;
    loop {
        let layer = Layer::open(&cur, false)?;
        size.get_or_insert(layer.sb.disk_size);
        let fp = match &layer.filter {
            Some(filter) => {
                let keys = layer_blocks(&layer)?;
                Some(filter.measured_fp_rate(|k| keys.contains(&k), FP_PROBES))
            }
            None => None,
        };
        layers.push(LayerInfo {
            path: cur.clone(),
            id: layer.id_hex(),
            sealed: layer.sb.sealed,
            blocks: layer.sb.block_count,
            tree_depth: layer.sb.depth,
            filter_bits: layer.filter.as_ref().map(|f| f.bits()),
            filter_bytes: layer.filter.as_ref().map(|f| f.bits() / 8),
            filter_fp_rate: fp,
            dedup_ratio: (layer.sb.dedup_stored > 0)
                .then(|| layer.sb.dedup_seen as f64 / layer.sb.dedup_stored as f64),
        });
        match &layer.sb.parent {
            Parent::None => break,
            Parent::Base { path: p, .. } => {
                base = Some(resolve(&cur, p));
                break;
            }
            Parent::Layer { path: p, .. } => {
                if layers.len() >= MAX_LAYERS {
                    return Err(Error::ChainTooLong {
                        path: path.to_path_buf(),
                        max: MAX_LAYERS,
                    });
                }
                cur = resolve(&cur, p);
            }
        }
    }
    Ok(Info {
        size: size.unwrap_or(0),
        layers,
        base,
    })
}

/// One thing [`check`] found wrong.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The layer (or base) file.
    pub path: PathBuf,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.what)
    }
}

fn problem(path: &Path, e: impl fmt::Display) -> Problem {
    Problem {
        path: path.to_path_buf(),
        what: e.to_string(),
    }
}

/// Checks every layer of the image at `path`: both superblocks, the tree's invariants, every
/// extent inside its file, the filter holding every block, parents and base present and
/// unchanged. An empty list means clean; nothing is repaired. Errors only when `path` itself
/// cannot be read.
pub fn check(path: &Path) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mut cur = path.to_path_buf();
    let mut ids = HashSet::new();
    loop {
        let layer = match Layer::open(&cur, false) {
            Ok(l) => l,
            Err(e) => {
                problems.push(problem(&cur, &e));
                break;
            }
        };
        if !ids.insert(layer.header.id) || ids.len() > MAX_LAYERS {
            problems.push(problem(&cur, "the chain of layers loops or is too long"));
            break;
        }
        check_layer(&layer, &mut problems);
        match &layer.sb.parent {
            Parent::None => break,
            Parent::Base { .. } => {
                if let Err(e) = super::open_base(&cur, &layer.sb.parent) {
                    problems.push(problem(&cur, &e));
                }
                break;
            }
            Parent::Layer { path: p, id } => {
                let next = resolve(&cur, p);
                match super::open_parent(&cur, p, id) {
                    Ok(_) => cur = next,
                    Err(e) => {
                        problems.push(problem(&cur, &e));
                        break;
                    }
                }
            }
        }
    }
    Ok(problems)
}

fn check_layer(layer: &Layer, problems: &mut Vec<Problem>) {
    let path = &layer.path;
    for (slot, &block) in SUPERBLOCKS.iter().enumerate() {
        let decoded = layer
            .file
            .read_block(block)
            .map_err(|e| e.to_string())
            .and_then(|raw| Superblock::decode(&raw));
        if let Err(e) = decoded {
            problems.push(problem(path, format!("superblock {slot} is invalid: {e}")));
        }
    }
    let store_len = layer.store.as_ref().and_then(|s| s.len().ok()).unwrap_or(0);
    let mut keys = Vec::new();
    let walked = btree::walk(
        &layer.file,
        layer.tree(),
        layer.sb.block_count,
        &mut |k, v| {
            check_value(
                path,
                k,
                v,
                layer.sb.file_end,
                layer.store.is_some(),
                layer.sb.disk_size,
            )?;
            if v != TOMBSTONE
                && v & STORE_BIT != 0
                && ((v & !STORE_BIT) + 1) * BLOCK_U64 > store_len
            {
                return Err(Error::corrupt(
                    path,
                    format!("block {k} points past the extent store"),
                ));
            }
            keys.push(k);
            Ok(())
        },
        &mut |_, _| {},
    );
    match walked {
        Ok(n) if n != layer.sb.block_count => problems.push(problem(
            path,
            format!(
                "tree holds {n} blocks, superblock says {}",
                layer.sb.block_count
            ),
        )),
        Ok(_) => {}
        Err(e) => problems.push(problem(path, e)),
    }
    if layer.sb.sealed {
        match read_filter(&layer.file, &layer.sb) {
            Ok(filter) => {
                if let Some(k) = keys.iter().find(|&&k| !filter.may_contain(k)) {
                    problems.push(problem(path, format!("filter misses block {k}")));
                }
            }
            Err(e) => problems.push(problem(path, e)),
        }
    }
}
