//! Arbitrary bytes as a sealed layer's Bloom filter (the first 12 bytes give the bit count and
//! hash functions a superblock would): an error or a filter that answers any key, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_disk::layered::fuzzing::Bloom;

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let bits = u64::from_le_bytes(data[..8].try_into().unwrap());
    let hashes = u32::from_le_bytes(data[8..12].try_into().unwrap());
    if let Ok(filter) = Bloom::from_bytes(&data[12..], bits, hashes) {
        for key in 0..64u64 {
            let _ = filter.may_contain(key);
        }
    }
});
