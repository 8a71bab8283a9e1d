//! Sizes of memory as users write them: "256M", "5G", "1024K", "2T" or a plain number of MiB.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A memory size that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid memory size {0:?}: use a number with an optional K, M, G or T suffix (MiB when none), e.g. 256M or 5G")]
pub struct MemorySizeError(pub String);

/// A size in bytes written as "256M", "5G", "1024K", "2T" or a plain number of MiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemorySize(pub u64);

impl FromStr for MemorySize {
    type Err = MemorySizeError;

    fn from_str(text: &str) -> Result<Self, MemorySizeError> {
        let err = || MemorySizeError(text.to_string());
        let trimmed = text.trim();
        let upper = trimmed.to_ascii_uppercase();
        let upper = upper
            .strip_suffix("IB")
            .or_else(|| upper.strip_suffix('B'))
            .unwrap_or(&upper);
        let (digits, shift) = match upper.char_indices().last() {
            Some((i, 'K')) => (&upper[..i], 10),
            Some((i, 'M')) => (&upper[..i], 20),
            Some((i, 'G')) => (&upper[..i], 30),
            Some((i, 'T')) => (&upper[..i], 40),
            _ => (upper, 20),
        };
        let number: u64 = digits.trim().parse().map_err(|_| err())?;
        number
            .checked_mul(1u64 << shift)
            .map(MemorySize)
            .ok_or_else(err)
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if bytes != 0 && bytes.is_multiple_of(1 << shift) {
                return write!(f, "{}{suffix}", bytes >> shift);
            }
        }
        write!(f, "{}K", bytes as f64 / 1024.0)
    }
}

impl Serialize for MemorySize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MemorySize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Mib(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Mib(mib) => mib
                .checked_mul(1 << 20)
                .map(MemorySize)
                .ok_or_else(|| serde::de::Error::custom(format!("memory of {mib} MiB overflows"))),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}
