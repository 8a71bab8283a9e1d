//! Arbitrary bytes as a layered image's B+ tree node: an error or a node with sorted keys that
//! round-trips, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_disk::layered::fuzzing::{Node, BLOCK};

fuzz_target!(|data: &[u8]| {
    let mut block = [0u8; BLOCK];
    let n = data.len().min(BLOCK);
    block[..n].copy_from_slice(&data[..n]);
    if let Ok(node) = Node::decode(&block) {
        assert!(node.entries.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(Node::decode(&node.encode()), Ok(node));
    }
});
