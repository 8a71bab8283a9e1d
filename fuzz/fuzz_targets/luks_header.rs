//! Arbitrary bytes as a LUKS1/LUKS2 header (`vmm_disk::luks::probe`): parsing must never
//! panic, and an unlock with a cheap key runs under small KDF caps (the header's own costs are
//! attacker-controlled), so every keyslot is tried quickly or refused as too costly.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_disk::luks::{probe, KdfLimits};

const LIMITS: KdfLimits = KdfLimits {
    max_pbkdf2_iterations: 2000,
    max_argon2_memory_kib: 256,
    max_argon2_time: 4,
    max_argon2_lanes: 2,
};

fuzz_target!(|data: &[u8]| {
    let _ = probe(data, None, &LIMITS);
    let _ = probe(data, Some(b"fuzz"), &LIMITS);
});
