//! Firecracker's rate limiter JSON (`RateLimiter` and `TokenBucket` in its API spec), as the
//! `rate_limiter` of a drive or entropy device and the `rx_rate_limiter`/`tx_rate_limiter` of a
//! network interface take it.
//!
//! ```
//! use vmm_api::{RateLimiterConfig, TokenBucketConfig};
//!
//! let limiter: RateLimiterConfig =
//!     serde_json::from_str(r#"{"bandwidth": {"size": 4194304, "refill_time": 1000}}"#).unwrap();
//! assert_eq!(
//!     limiter.bandwidth,
//!     Some(TokenBucketConfig { size: 4194304, one_time_burst: None, refill_time: 1000 })
//! );
//! assert!(limiter.validate().is_ok());
//! assert!(!limiter.is_empty());
//! ```
//!
//! In a PUT, an absent bucket (or `null`, or one with `size` or `refill_time` 0) limits
//! nothing, and `{}` means no rate limiter. In a PATCH, an absent bucket leaves the running
//! bucket as it is, a bucket with `size` or `refill_time` 0 removes it, and any other bucket
//! replaces it with a new, full one.

use serde::{Deserialize, Serialize};

use crate::ApiError;

/// The longest `refill_time` accepted, in milliseconds: the longest whose nanoseconds fit in a
/// `u64` (about 584 years). Firecracker silently turns a longer one into no limit at all, which
/// is never what the client meant, so [`RateLimiterConfig::validate`] refuses it.
pub const MAX_REFILL_TIME_MS: u64 = u64::MAX / 1_000_000;

/// One token bucket (Firecracker's `TokenBucket`): `size` tokens (bytes or operations),
/// refilled continuously in `refill_time` milliseconds, plus `one_time_burst` extra tokens
/// that are spent first and never refilled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// The total number of tokens the bucket can hold; 0: no limit.
    pub size: u64,
    /// Extra initial tokens, spent before the bucket's own and never refilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the whole bucket from empty; 0: no limit.
    pub refill_time: u64,
}

impl TokenBucketConfig {
    /// Whether this bucket limits anything (`size` and `refill_time` both non-zero).
    pub fn is_enabled(&self) -> bool {
        self.size != 0 && self.refill_time != 0
    }

    /// `one_time_burst`, 0 when absent.
    pub fn one_time_burst_or_zero(&self) -> u64 {
        self.one_time_burst.unwrap_or(0)
    }

    /// The sustained rate in tokens per second, `size * 1000 / refill_time` (rounded down,
    /// saturating at `u64::MAX`); `None` for a bucket that limits nothing.
    pub fn tokens_per_second(&self) -> Option<u64> {
        if !self.is_enabled() {
            return None;
        }
        let rate = u128::from(self.size) * 1000 / u128::from(self.refill_time);
        Some(u64::try_from(rate).unwrap_or(u64::MAX))
    }

    fn validate(&self, field: &'static str, bucket: &str) -> Result<(), ApiError> {
        if self.is_enabled() && self.refill_time > MAX_REFILL_TIME_MS {
            return Err(ApiError::InvalidValue {
                field,
                why: format!(
                    "{bucket}.refill_time {} ms is longer than the {MAX_REFILL_TIME_MS} ms allowed",
                    self.refill_time
                ),
            });
        }
        Ok(())
    }
}

/// A rate limiter (Firecracker's `RateLimiter`): an optional bandwidth bucket (bytes) and an
/// optional ops bucket (operations). Explicit `null` is the same as absent; `{}` limits
/// nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Token bucket with bytes as tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Token bucket with operations as tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// Whether this limits nothing at all: no bucket, or only buckets with `size` or
    /// `refill_time` 0. (In a PATCH, an empty config may still remove running buckets; see the
    /// [module documentation](self).)
    pub fn is_empty(&self) -> bool {
        !self.bandwidth.is_some_and(|b| b.is_enabled()) && !self.ops.is_some_and(|b| b.is_enabled())
    }

    /// Refuses what cannot be honoured: a `refill_time` above [`MAX_REFILL_TIME_MS`] in a
    /// bucket that limits something. Any `size` and `one_time_burst` is fine. The error names
    /// the field `rate_limiter`; [`RateLimiterConfig::validate_as`] names another.
    pub fn validate(&self) -> Result<(), ApiError> {
        self.validate_as("rate_limiter")
    }

    /// [`RateLimiterConfig::validate`] for the limiter in `field` (e.g. `rx_rate_limiter`).
    pub fn validate_as(&self, field: &'static str) -> Result<(), ApiError> {
        if let Some(bucket) = &self.bandwidth {
            bucket.validate(field, "bandwidth")?;
        }
        if let Some(bucket) = &self.ops {
            bucket.validate(field, "ops")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<RateLimiterConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    fn bucket(size: u64, one_time_burst: Option<u64>, refill_time: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst,
            refill_time,
        }
    }

    #[test]
    fn firecracker_examples() {
        let l = parse(r#"{"bandwidth": {"size": 4194304, "refill_time": 1000}}"#).unwrap();
        assert_eq!(l.bandwidth, Some(bucket(4194304, None, 1000)));
        assert_eq!(l.ops, None);
        assert!(!l.is_empty());
        assert_eq!(l.bandwidth.unwrap().tokens_per_second(), Some(4194304));
        l.validate().unwrap();

        let l = parse(
            r#"{"bandwidth": {"size": 100000, "one_time_burst": 50000000, "refill_time": 100},
                "ops": {"size": 1000, "refill_time": 1000, "one_time_burst": null}}"#,
        )
        .unwrap();
        assert_eq!(l.bandwidth, Some(bucket(100000, Some(50000000), 100)));
        assert_eq!(l.bandwidth.unwrap().one_time_burst_or_zero(), 50000000);
        assert_eq!(l.bandwidth.unwrap().tokens_per_second(), Some(1000000));
        assert_eq!(l.ops, Some(bucket(1000, None, 1000)));
        assert_eq!(l.ops.unwrap().one_time_burst_or_zero(), 0);
        l.validate().unwrap();
    }

    #[test]
    fn empty_and_null_mean_no_limit() {
        for json in [
            "{}",
            r#"{"ops": null}"#,
            r#"{"bandwidth": null, "ops": null}"#,
            r#"{"bandwidth": {"size": 0, "refill_time": 1000}}"#,
            r#"{"ops": {"size": 10, "refill_time": 0, "one_time_burst": 5}}"#,
        ] {
            let l = parse(json).unwrap();
            assert!(l.is_empty(), "{json}");
            l.validate().unwrap();
        }
        assert_eq!(
            parse(r#"{"ops": null}"#).unwrap(),
            RateLimiterConfig::default()
        );
        assert_eq!(bucket(0, None, 10).tokens_per_second(), None);
    }

    #[test]
    fn refuses_what_firecracker_refuses() {
        for json in [
            r#"{"bandwidth": {"size": 1, "refill_time": 1, "extra": 1}}"#,
            r#"{"iops": {"size": 1, "refill_time": 1}}"#,
            r#"{"bandwidth": {"refill_time": 1}}"#,
            r#"{"bandwidth": {"size": 1}}"#,
            r#"{"bandwidth": {"size": -1, "refill_time": 1}}"#,
            r#"{"bandwidth": {"size": 1.5, "refill_time": 1}}"#,
            r#"{"bandwidth": {"size": 18446744073709551616, "refill_time": 1}}"#,
            r#"{"bandwidth": {"size": "1", "refill_time": 1}}"#,
            r#"{"bandwidth": {"size": null, "refill_time": 1}}"#,
            r#"{"ops": {"size": 1, "refill_time": 1, "one_time_burst": -1}}"#,
            r#"{"ops": 5}"#,
            "null",
        ] {
            assert!(parse(json).is_err(), "{json}");
        }
    }

    #[test]
    fn validate_refuses_refill_times_that_overflow() {
        let max = MAX_REFILL_TIME_MS;
        let ok = RateLimiterConfig {
            bandwidth: Some(bucket(u64::MAX, Some(u64::MAX), max)),
            ops: Some(bucket(1, None, max)),
        };
        ok.validate().unwrap();
        assert_eq!(
            ok.bandwidth.unwrap().tokens_per_second(),
            Some(1_000_000_000)
        );
        let too_long = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(1, None, max + 1)),
        };
        let err = too_long.validate_as("tx_rate_limiter").unwrap_err();
        assert_eq!(err.status(), 400);
        let text = err.to_string();
        assert!(
            text.contains("tx_rate_limiter") && text.contains("ops.refill_time"),
            "{text}"
        );
        // A disabled bucket limits nothing, whatever its refill time.
        let disabled = RateLimiterConfig {
            bandwidth: Some(bucket(0, None, u64::MAX)),
            ops: None,
        };
        disabled.validate().unwrap();
        // The fastest possible rate saturates instead of overflowing.
        assert_eq!(
            bucket(u64::MAX, None, 1).tokens_per_second(),
            Some(u64::MAX)
        );
    }

    #[test]
    fn serializes_like_firecracker() {
        let l = RateLimiterConfig {
            bandwidth: Some(bucket(4194304, None, 1000)),
            ops: Some(bucket(100, Some(10), 1000)),
        };
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(
            json,
            r#"{"bandwidth":{"size":4194304,"refill_time":1000},"ops":{"size":100,"one_time_burst":10,"refill_time":1000}}"#
        );
        assert_eq!(parse(&json).unwrap(), l);
        assert_eq!(
            serde_json::to_string(&RateLimiterConfig::default()).unwrap(),
            "{}"
        );
    }
}
