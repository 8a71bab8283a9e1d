//! Arbitrary bytes as a layered image's header and superblock: decoding returns an error or a
//! value that encodes back to a block that decodes to the same value, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_disk::layered::fuzzing::{Header, Superblock, BLOCK};

fuzz_target!(|data: &[u8]| {
    let mut block = [0u8; BLOCK];
    let n = data.len().min(BLOCK);
    block[..n].copy_from_slice(&data[..n]);
    let _ = Header::decode(&block);
    if let Ok(sb) = Superblock::decode(&block) {
        let again = sb.encode().expect("a decoded superblock fits");
        assert_eq!(Superblock::decode(&again), Ok(sb));
    }
});
