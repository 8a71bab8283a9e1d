//! A Bloom filter over a sealed layer's block numbers: about 10 bits and 7 hash functions per
//! block, so about 1 % false positives and never a false negative. A read skips every layer
//! whose filter says no, instead of walking its tree.

/// Bits per key: 10 bits give about 0.8 % false positives with 7 hashes.
pub const BITS_PER_KEY: u64 = 10;
/// Hash functions (ln 2 × bits per key, rounded).
pub const HASHES: u32 = 7;
/// Most hash functions a stored filter may ask for.
const MAX_HASHES: u32 = 32;

/// A Bloom filter of u64 keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bloom {
    words: Vec<u64>,
    hashes: u32,
}

/// Bits of the filter for `keys` keys: a multiple of 64, at least 64.
pub fn bits_for(keys: u64) -> u64 {
    keys.saturating_mul(BITS_PER_KEY).max(64).div_ceil(64) * 64
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser: every input bit reaches every output bit.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A key's two base hashes; every filter derives its positions from them (double hashing), so
/// a lookup through many layers hashes the key once.
#[derive(Clone, Copy, Debug)]
pub struct KeyHash {
    h1: u64,
    h2: u64,
}

impl KeyHash {
    /// The hashes of `key`.
    pub fn of(key: u64) -> KeyHash {
        KeyHash {
            h1: mix(key ^ 0x9e37_79b9_7f4a_7c15),
            h2: mix(key.wrapping_add(0x632b_e59b_d9b4_e019)) | 1,
        }
    }
}

impl Bloom {
    /// An empty filter sized for `keys` keys.
    pub fn with_capacity(keys: u64) -> Bloom {
        let words = usize::try_from(bits_for(keys) / 64).unwrap_or(1);
        Bloom {
            words: vec![0; words],
            hashes: HASHES,
        }
    }

    /// Bits in the filter.
    pub fn bits(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    /// Hash functions.
    pub fn hashes(&self) -> u32 {
        self.hashes
    }

    fn positions(&self, hash: KeyHash) -> impl Iterator<Item = u64> {
        let bits = self.bits();
        // Lemire's range reduction: the high half of hash * bits is uniform in 0..bits and
        // needs no division (a read through 100 sealed layers probes 700 positions).
        (0..u64::from(self.hashes)).map(move |i| {
            let h = hash.h1.wrapping_add(i.wrapping_mul(hash.h2));
            ((u128::from(h) * u128::from(bits)) >> 64) as u64
        })
    }

    /// Adds `key`.
    pub fn insert(&mut self, key: u64) {
        let positions: Vec<u64> = self.positions(KeyHash::of(key)).collect();
        for p in positions {
            if let Some(w) = self.words.get_mut((p / 64) as usize) {
                *w |= 1 << (p % 64);
            }
        }
    }

    /// Whether `key` may be in the set (false: certainly not).
    pub fn may_contain(&self, key: u64) -> bool {
        self.may_contain_hashed(KeyHash::of(key))
    }

    /// [`Bloom::may_contain`] with the key's hash computed once for every filter of a chain.
    pub fn may_contain_hashed(&self, hash: KeyHash) -> bool {
        self.positions(hash).all(|p| {
            self.words
                .get((p / 64) as usize)
                .is_some_and(|w| w & (1 << (p % 64)) != 0)
        })
    }

    /// The filter's bytes, as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// A filter from its stored bytes; `bits` and `hashes` as the superblock says.
    pub fn from_bytes(bytes: &[u8], bits: u64, hashes: u32) -> Result<Bloom, String> {
        if bits == 0 || !bits.is_multiple_of(64) || bytes.len() as u64 != bits / 8 {
            return Err(format!("filter of {bits} bits in {} bytes", bytes.len()));
        }
        if hashes == 0 || hashes > MAX_HASHES {
            return Err(format!("filter with {hashes} hash functions"));
        }
        let words = bytes
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        Ok(Bloom { words, hashes })
    }

    /// The measured false-positive rate over `probes` keys drawn from a fixed pseudo-random
    /// sequence that are not in `members`.
    pub fn measured_fp_rate(&self, is_member: impl Fn(u64) -> bool, probes: u32) -> f64 {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let (mut tried, mut hits) = (0u32, 0u32);
        while tried < probes {
            seed = mix(seed.wrapping_add(0x9e37_79b9_7f4a_7c15));
            let key = seed >> 8;
            if is_member(key) {
                continue;
            }
            tried += 1;
            if self.may_contain(key) {
                hits += 1;
            }
        }
        if probes == 0 {
            0.0
        } else {
            f64::from(hits) / f64::from(probes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn no_false_negatives(keys in proptest::collection::vec(any::<u64>(), 0..2000)) {
            let mut bloom = Bloom::with_capacity(keys.len() as u64);
            for &k in &keys {
                bloom.insert(k);
            }
            for &k in &keys {
                prop_assert!(bloom.may_contain(k));
            }
            let back = Bloom::from_bytes(&bloom.to_bytes(), bloom.bits(), bloom.hashes()).unwrap();
            prop_assert_eq!(back, bloom);
        }
    }

    #[test]
    fn false_positive_rate_is_about_one_percent() {
        let n = 100_000u64;
        let mut bloom = Bloom::with_capacity(n);
        for k in 0..n {
            bloom.insert(k * 3);
        }
        let rate = bloom.measured_fp_rate(|k| k < 3 * n && k % 3 == 0, 100_000);
        assert!(rate > 0.002 && rate < 0.02, "false-positive rate {rate}");
    }

    #[test]
    fn hostile_filters_are_refused() {
        assert!(Bloom::from_bytes(&[0; 8], 0, 7).is_err());
        assert!(Bloom::from_bytes(&[0; 8], 64, 0).is_err());
        assert!(Bloom::from_bytes(&[0; 8], 64, 1000).is_err());
        assert!(Bloom::from_bytes(&[0; 7], 64, 7).is_err());
        assert!(Bloom::from_bytes(&[0; 8], 128, 7).is_err());
    }
}
