//! Arbitrary bytes as a dm-verity hash file's superblock: parsing returns an error or a value
//! that encodes back to bytes that parse to the same value, and its tree geometry is computed
//! without a panic (no overflow, whatever the sizes).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_disk::verity::{Superblock, SUPERBLOCK_BYTES};

fuzz_target!(|data: &[u8]| {
    let mut block = [0u8; SUPERBLOCK_BYTES];
    let n = data.len().min(SUPERBLOCK_BYTES);
    block[..n].copy_from_slice(&data[..n]);
    let _ = Superblock::parse(data);
    if let Ok(sb) = Superblock::parse(&block) {
        assert_eq!(Superblock::parse(&sb.to_bytes()).ok(), Some(sb.clone()));
        if let Ok(geometry) = sb.geometry() {
            assert!(geometry.hash_file_len() >= geometry.tree_offset);
            for level in 0..geometry.levels() {
                let _ = geometry.block_offset(level, geometry.level_blocks[level] - 1);
            }
        }
    }
});
