//! The B+ tree that maps a layer's guest blocks to its extents: 4 KiB nodes of up to
//! [`FANOUT`] entries, leaves at level 0. Lookups and walks check every node they reach
//! (level, key order, key bounds from the parent, pointers inside the committed file, no node
//! reached twice), so a hostile tree is an error, never a loop or a panic.
//!
//! Commits are copy-on-write: the leaves that hold changed keys are written anew, the others
//! reused, and every internal level above is rebuilt; nothing live is ever overwritten. Old
//! nodes are not reused (the file only grows) until `commit` flattens the image.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::error::{Error, Result};
use super::file::LayerFile;
use super::ondisk::{Node, BLOCK_U64, FANOUT, FIRST_FREE, MAX_DEPTH};

/// Where a tree lives: root block, depth, and the committed end of the file.
#[derive(Clone, Copy, Debug)]
pub struct TreeRef {
    /// Root block (0: empty).
    pub root: u64,
    /// Levels (0: empty).
    pub depth: u32,
    /// Blocks below this are the committed file.
    pub file_end: u64,
}

/// Reads and checks the node at `block`, which must be at `level`.
pub fn read_node(file: &LayerFile, tree: TreeRef, block: u64, level: u32) -> Result<Node> {
    let path = file.path();
    if block < FIRST_FREE || block >= tree.file_end {
        return Err(Error::corrupt(
            path,
            format!("tree node pointer {block} outside the file"),
        ));
    }
    let raw = file.read_block(block)?;
    let node =
        Node::decode(&raw).map_err(|e| Error::corrupt(path, format!("node {block}: {e}")))?;
    if u32::from(node.level) != level {
        return Err(Error::corrupt(
            path,
            format!("node {block} is at level {}, expected {level}", node.level),
        ));
    }
    Ok(node)
}

/// Internal nodes of a sealed layer kept in memory between lookups (bounded).
#[derive(Debug, Default)]
pub struct NodeCache {
    nodes: HashMap<u64, Node>,
}

const CACHE_NODES: usize = 4096;

/// The value stored for `key`, if any.
pub fn lookup(
    file: &LayerFile,
    tree: TreeRef,
    key: u64,
    cache: &mut NodeCache,
) -> Result<Option<u64>> {
    if tree.depth == 0 {
        return Ok(None);
    }
    let mut block = tree.root;
    for level in (0..tree.depth).rev() {
        let cached = level > 0 && cache.nodes.contains_key(&block);
        if !cached {
            let node = read_node(file, tree, block, level)?;
            if level == 0 {
                return Ok(find(&node, key, true));
            }
            if cache.nodes.len() >= CACHE_NODES {
                cache.nodes.clear();
            }
            cache.nodes.insert(block, node);
        }
        let Some(node) = cache.nodes.get(&block) else {
            return Ok(None);
        };
        match find(node, key, false) {
            Some(child) => block = child,
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// In a leaf the value of `key`; in an internal node the child whose range holds it.
fn find(node: &Node, key: u64, exact: bool) -> Option<u64> {
    let i = node.entries.partition_point(|&(k, _)| k <= key);
    let (k, v) = *node.entries.get(i.checked_sub(1)?)?;
    (!exact || k == key).then_some(v)
}

/// Visits every leaf entry in key order after checking the whole tree's invariants;
/// `leaf(first_key, block)` is called for every leaf in order. Stops with an error if the
/// tree holds more than `max_entries` entries.
pub fn walk(
    file: &LayerFile,
    tree: TreeRef,
    max_entries: u64,
    entry: &mut dyn FnMut(u64, u64) -> Result<()>,
    leaf: &mut dyn FnMut(u64, u64),
) -> Result<u64> {
    if tree.depth == 0 {
        return Ok(0);
    }
    if tree.depth > MAX_DEPTH {
        return Err(Error::corrupt(file.path(), "tree too deep"));
    }
    let mut seen = HashSet::new();
    let mut count = 0u64;
    walk_node(
        file,
        tree,
        tree.root,
        tree.depth - 1,
        (0, None),
        &mut seen,
        &mut count,
        max_entries,
        entry,
        leaf,
    )?;
    Ok(count)
}

#[allow(clippy::too_many_arguments)]
fn walk_node(
    file: &LayerFile,
    tree: TreeRef,
    block: u64,
    level: u32,
    (lo, hi): (u64, Option<u64>),
    seen: &mut HashSet<u64>,
    count: &mut u64,
    max_entries: u64,
    entry: &mut dyn FnMut(u64, u64) -> Result<()>,
    leaf: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let path = file.path();
    if !seen.insert(block) {
        return Err(Error::corrupt(
            path,
            format!("node {block} is reached twice"),
        ));
    }
    let node = read_node(file, tree, block, level)?;
    let in_bounds = |k: u64| k >= lo && hi.is_none_or(|h| k < h);
    let first = node.entries.first().map_or(lo, |e| e.0);
    let last = node.entries.last().map_or(lo, |e| e.0);
    if !in_bounds(first) || !in_bounds(last) {
        return Err(Error::corrupt(
            path,
            format!("node {block} holds keys outside its parent's range"),
        ));
    }
    if level == 0 {
        *count += node.entries.len() as u64;
        if *count > max_entries {
            return Err(Error::corrupt(path, "tree holds more entries than it says"));
        }
        leaf(first, block);
        for &(k, v) in &node.entries {
            entry(k, v)?;
        }
        return Ok(());
    }
    for (i, &(k, child)) in node.entries.iter().enumerate() {
        let next = node.entries.get(i + 1).map(|e| e.0).or(hi);
        walk_node(
            file,
            tree,
            child,
            level - 1,
            (k, next),
            seen,
            count,
            max_entries,
            entry,
            leaf,
        )?;
    }
    Ok(())
}

/// A written tree: root block, depth and its leaves (first key, block).
pub type NewTree = (u64, u32, Vec<(u64, u64)>);

/// Splits `n` items into chunks of at most [`FANOUT`], as even as can be.
fn chunk_sizes(n: usize) -> impl Iterator<Item = usize> {
    let chunks = n.div_ceil(FANOUT).max(1);
    (0..chunks).map(move |i| n / chunks + usize::from(i < n % chunks))
}

/// Writes the tree of `map` copy-on-write: leaves (first key, block) of the committed tree
/// that hold no key of `dirty` are reused, the rest written anew, then every internal level.
/// Nodes are appended from `*next_block`. Returns the new root, depth and leaf list.
pub fn write_tree(
    file: &LayerFile,
    map: &BTreeMap<u64, u64>,
    old_leaves: &[(u64, u64)],
    dirty: &BTreeSet<u64>,
    next_block: &mut u64,
) -> Result<NewTree> {
    if map.is_empty() {
        return Ok((0, 0, Vec::new()));
    }
    // Which old leaves hold a changed key (leaf i covers keys from its first to the next's).
    let mut touched = vec![false; old_leaves.len()];
    for &key in dirty {
        let i = old_leaves.partition_point(|&(first, _)| first <= key);
        if let Some(t) = touched.get_mut(i.saturating_sub(1)) {
            *t = true;
        }
    }
    let mut leaves: Vec<(u64, u64)> = Vec::new();
    let write_node = |node: Node, next_block: &mut u64| -> Result<u64> {
        let block = *next_block;
        file.write_at(block * BLOCK_U64, &node.encode()[..])?;
        *next_block += 1;
        Ok(block)
    };
    let rewrite = |lo: u64, hi: Option<u64>, leaves: &mut Vec<(u64, u64)>, nb: &mut u64| {
        let entries: Vec<(u64, u64)> = match hi {
            Some(h) => map.range(lo..h).map(|(k, v)| (*k, *v)).collect(),
            None => map.range(lo..).map(|(k, v)| (*k, *v)).collect(),
        };
        let mut rest = entries.as_slice();
        if rest.is_empty() {
            return Ok::<(), Error>(());
        }
        for size in chunk_sizes(rest.len()) {
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            rest = tail;
            let first = chunk.first().map_or(lo, |e| e.0);
            let block = write_node(
                Node {
                    level: 0,
                    entries: chunk.to_vec(),
                },
                nb,
            )?;
            leaves.push((first, block));
        }
        Ok(())
    };
    if old_leaves.is_empty() {
        rewrite(0, None, &mut leaves, next_block)?;
    } else {
        let mut i = 0;
        while i < old_leaves.len() {
            if !touched.get(i).copied().unwrap_or(false) {
                if let Some(&l) = old_leaves.get(i) {
                    leaves.push(l);
                }
                i += 1;
                continue;
            }
            let mut j = i;
            while touched.get(j).copied().unwrap_or(false) {
                j += 1;
            }
            let lo = if i == 0 {
                0
            } else {
                old_leaves.get(i).map_or(0, |l| l.0)
            };
            let hi = old_leaves.get(j).map(|l| l.0);
            rewrite(lo, hi, &mut leaves, next_block)?;
            i = j;
        }
    }
    let mut level_nodes = leaves.clone();
    let mut level = 0u8;
    while level_nodes.len() > 1 {
        level += 1;
        let mut upper = Vec::new();
        let mut rest = level_nodes.as_slice();
        for size in chunk_sizes(rest.len()) {
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            rest = tail;
            let first = chunk.first().map_or(0, |e| e.0);
            let block = write_node(
                Node {
                    level,
                    entries: chunk.to_vec(),
                },
                next_block,
            )?;
            upper.push((first, block));
        }
        level_nodes = upper;
    }
    let root = level_nodes.first().map_or(0, |e| e.1);
    Ok((root, u32::from(level) + 1, leaves))
}
