//! One token bucket: the arithmetic, with the clock passed in.

use std::time::{Duration, Instant};

/// Nanoseconds in a millisecond, as the bucket's arithmetic uses it.
const NS_PER_MS: u128 = 1_000_000;

/// The parameters of one token bucket, as Firecracker's API gives them (`TokenBucket`).
///
/// A bucket with `size == 0` or `refill_time_ms == 0` is disabled: it limits nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketParams {
    /// Capacity of the bucket in tokens (bytes or operations). The bucket starts full.
    pub size: u64,
    /// Extra tokens available once, at the start, spent before the bucket's own tokens and
    /// never refilled. 0 for none.
    pub one_time_burst: u64,
    /// Milliseconds to refill the whole bucket from empty. Refill is continuous, at
    /// `size / refill_time_ms` tokens per millisecond.
    pub refill_time_ms: u64,
}

impl BucketParams {
    /// Parameters of a bucket of `size` tokens refilled in `refill_time_ms` milliseconds, with
    /// `one_time_burst` extra initial tokens.
    pub const fn new(size: u64, one_time_burst: u64, refill_time_ms: u64) -> Self {
        BucketParams {
            size,
            one_time_burst,
            refill_time_ms,
        }
    }

    /// Whether these parameters limit anything (`size` and `refill_time_ms` both non-zero).
    pub const fn is_enabled(&self) -> bool {
        self.size != 0 && self.refill_time_ms != 0
    }
}

/// What [`TokenBucket::reduce_at`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// The tokens were taken.
    Success,
    /// Not enough tokens: nothing was taken. Enough tokens for this request exist after `wait`
    /// (if nothing else is taken meanwhile).
    Failure {
        /// Time until the same request would succeed.
        wait: Duration,
    },
    /// The request was larger than the bucket and the bucket was full: the request was let
    /// through, the bucket is empty and in debt by the excess. New tokens pay the debt first;
    /// it is paid after `wait`.
    OverConsumption {
        /// Time until the debt is paid.
        wait: Duration,
    },
}

/// A token bucket with Firecracker's semantics.
///
/// - It starts full (`size` tokens) plus `one_time_burst` extra tokens. A request takes the
///   burst tokens first; the burst is never refilled.
/// - It refills continuously at `size / refill_time_ms` tokens per millisecond, up to `size`.
///   The arithmetic is exact (fractions of a token are carried over), so the long-run rate
///   has no rounding drift.
/// - A request either takes all its tokens or none ([`Reduction::Failure`]).
/// - A request for more tokens than `size` (after the remaining burst) can never fit. It is
///   let through when the bucket is full, leaving the bucket in debt by the excess
///   ([`Reduction::OverConsumption`]); until then it fails with the time until the bucket is
///   full. So an oversized request always passes eventually and the average rate holds: the
///   debt is paid by refill before anything else passes. (Firecracker lets such a request
///   through at any fill level; waiting for a full bucket keeps a stream of oversized requests
///   from starving nothing but themselves.)
///
/// Every method that depends on time has an `_at` form taking the instant, for tests and
/// simulations; the plain forms use [`Instant::now`].
#[derive(Clone, Debug)]
pub struct TokenBucket {
    size: u64,
    refill_time_ms: u64,
    initial_one_time_burst: u64,
    one_time_burst: u64,
    budget: u64,
    /// Tokens taken beyond an empty bucket by an oversized request; refill pays it before
    /// `budget` grows. Non-zero only while `budget` is 0.
    debt: u64,
    /// Refill progress towards the next token, in token-nanoseconds: always below
    /// `refill_ns()`.
    partial: u128,
    last_update: Instant,
}

impl TokenBucket {
    /// A full bucket of `size` tokens, refilled in `refill_time_ms` milliseconds, with
    /// `one_time_burst` extra initial tokens; `None` when `size` or `refill_time_ms` is 0 (no
    /// limit). Any other values work, up to `u64::MAX`: the arithmetic is done in `u128`.
    pub fn new(size: u64, one_time_burst: u64, refill_time_ms: u64) -> Option<TokenBucket> {
        Self::new_at(size, one_time_burst, refill_time_ms, Instant::now())
    }

    /// [`TokenBucket::new`] with the clock's reading `now`.
    pub fn new_at(
        size: u64,
        one_time_burst: u64,
        refill_time_ms: u64,
        now: Instant,
    ) -> Option<TokenBucket> {
        if size == 0 || refill_time_ms == 0 {
            return None;
        }
        Some(TokenBucket {
            size,
            refill_time_ms,
            initial_one_time_burst: one_time_burst,
            one_time_burst,
            budget: size,
            debt: 0,
            partial: 0,
            last_update: now,
        })
    }

    /// [`TokenBucket::new`] from [`BucketParams`].
    pub fn from_params(params: BucketParams) -> Option<TokenBucket> {
        Self::new(params.size, params.one_time_burst, params.refill_time_ms)
    }

    /// The parameters this bucket was made with.
    pub fn params(&self) -> BucketParams {
        BucketParams::new(self.size, self.initial_one_time_burst, self.refill_time_ms)
    }

    /// Capacity in tokens.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Milliseconds to refill the whole bucket.
    pub fn refill_time_ms(&self) -> u64 {
        self.refill_time_ms
    }

    /// Burst tokens not spent yet.
    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }

    /// The burst the bucket started with.
    pub fn initial_one_time_burst(&self) -> u64 {
        self.initial_one_time_burst
    }

    /// Tokens in the bucket at the last update (without the burst); refill since then is not
    /// counted until the next `reduce`.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Tokens owed after an oversized request, at the last update.
    pub fn debt(&self) -> u64 {
        self.debt
    }

    fn refill_ns(&self) -> u128 {
        u128::from(self.refill_time_ms) * NS_PER_MS
    }

    /// Adds the tokens refilled between the last update and `now` (an earlier `now` adds
    /// nothing and leaves the last update where it is).
    pub fn refill_at(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_update);
        if now > self.last_update {
            self.last_update = now;
        }
        if self.debt == 0 && self.budget == self.size {
            self.partial = 0;
            return;
        }
        let refill_ns = self.refill_ns();
        let Some(acc) = elapsed
            .as_nanos()
            .checked_mul(u128::from(self.size))
            .and_then(|a| a.checked_add(self.partial))
        else {
            // So long that any debt is paid and the bucket is full many times over.
            self.debt = 0;
            self.budget = self.size;
            self.partial = 0;
            return;
        };
        let mut new_tokens = acc / refill_ns;
        self.partial = acc % refill_ns;
        let paid = new_tokens.min(u128::from(self.debt));
        // `paid` is at most `debt`, a u64.
        self.debt -= paid as u64;
        new_tokens -= paid;
        let budget = (u128::from(self.budget) + new_tokens).min(u128::from(self.size));
        // At most `size`, a u64.
        self.budget = budget as u64;
        if self.budget == self.size {
            self.partial = 0;
        }
    }

    /// Time for the refill to bring `missing` more tokens, from the current progress.
    fn time_for(&self, missing: u128) -> Duration {
        let size = u128::from(self.size);
        let ns = missing
            .checked_mul(self.refill_ns())
            .map(|token_ns| token_ns.saturating_sub(self.partial).div_ceil(size))
            .unwrap_or(u128::MAX);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Takes `tokens` (burst first, then the bucket) if there are enough at `now`; see the
    /// type's documentation for oversized requests.
    pub fn reduce_at(&mut self, tokens: u64, now: Instant) -> Reduction {
        self.refill_at(now);
        let burst = self.one_time_burst;
        if self.debt == 0 && u128::from(tokens) <= u128::from(burst) + u128::from(self.budget) {
            let from_burst = tokens.min(burst);
            self.one_time_burst -= from_burst;
            self.budget -= tokens - from_burst;
            return Reduction::Success;
        }
        // What the bucket itself must supply.
        let needed = tokens - burst.min(tokens);
        let owed = u128::from(self.debt);
        if needed <= self.size {
            let missing = owed + u128::from(needed) - u128::from(self.budget);
            return Reduction::Failure {
                wait: self.time_for(missing),
            };
        }
        if self.debt == 0 && self.budget == self.size {
            self.one_time_burst = 0;
            self.budget = 0;
            self.debt = needed - self.size;
            self.partial = 0;
            return Reduction::OverConsumption {
                wait: self.time_for(u128::from(self.debt)),
            };
        }
        let missing = owed + u128::from(self.size) - u128::from(self.budget);
        Reduction::Failure {
            wait: self.time_for(missing),
        }
    }

    /// [`TokenBucket::reduce_at`] now.
    pub fn reduce(&mut self, tokens: u64) -> Reduction {
        self.reduce_at(tokens, Instant::now())
    }

    /// Gives back `tokens` taken by a request that did not go ahead: they pay any debt, then
    /// refill the bucket up to its size, then the burst up to its initial value (the reverse
    /// of the order `reduce` takes them in); whatever is left is dropped.
    pub fn replenish(&mut self, tokens: u64) {
        let mut tokens = tokens;
        let paid = tokens.min(self.debt);
        self.debt -= paid;
        tokens -= paid;
        let to_budget = tokens.min(self.size - self.budget);
        self.budget += to_budget;
        tokens -= to_budget;
        if self.budget == self.size {
            self.partial = 0;
        }
        self.one_time_burst = self
            .one_time_burst
            .saturating_add(tokens)
            .min(self.initial_one_time_burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn disabled_buckets() {
        assert!(TokenBucket::new(0, 100, 1000).is_none());
        assert!(TokenBucket::new(100, 100, 0).is_none());
        assert!(TokenBucket::from_params(BucketParams::default()).is_none());
        assert!(!BucketParams::new(0, 5, 5).is_enabled());
        assert!(BucketParams::new(1, 0, 1).is_enabled());
        let b = TokenBucket::new(10, 3, 7).unwrap();
        assert_eq!(b.params(), BucketParams::new(10, 3, 7));
    }

    #[test]
    fn starts_full_then_refills_continuously() {
        let t0 = Instant::now();
        // 1 token per ms.
        let mut b = TokenBucket::new_at(1000, 0, 1000, t0).unwrap();
        assert_eq!(b.reduce_at(1000, t0), Reduction::Success);
        assert_eq!(b.budget(), 0);
        assert_eq!(
            b.reduce_at(1, t0),
            Reduction::Failure {
                wait: Duration::from_millis(1)
            }
        );
        assert_eq!(b.reduce_at(500, t0), Reduction::Failure { wait: ms(500) });
        b.refill_at(t0 + ms(250));
        assert_eq!(b.budget(), 250);
        assert_eq!(
            b.reduce_at(500, t0 + ms(250)),
            Reduction::Failure { wait: ms(250) }
        );
        assert_eq!(b.reduce_at(500, t0 + ms(500)), Reduction::Success);
        assert_eq!(b.budget(), 0);
        // Never above size.
        b.refill_at(t0 + ms(100_000));
        assert_eq!(b.budget(), 1000);
    }

    #[test]
    fn fractions_carry_over_without_drift() {
        let t0 = Instant::now();
        // 3 tokens per 10 ms.
        let mut b = TokenBucket::new_at(3, 0, 10, t0).unwrap();
        assert_eq!(b.reduce_at(3, t0), Reduction::Success);
        // 3 tokens in 10 ms, refilled in 1 ms steps: 0.3 token per step.
        let mut got = Vec::new();
        for i in 1..=10 {
            b.refill_at(t0 + ms(i));
            got.push(b.budget());
        }
        assert_eq!(got, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]);
        // Many tiny steps (1 µs) add up to exactly the same.
        let mut b = TokenBucket::new_at(3, 0, 10, t0).unwrap();
        assert_eq!(b.reduce_at(3, t0), Reduction::Success);
        for i in 1..=10_000u64 {
            b.refill_at(t0 + Duration::from_micros(i));
        }
        assert_eq!(b.budget(), 3);
    }

    #[test]
    fn the_wait_returned_is_exactly_enough() {
        let t0 = Instant::now();
        for &(size, refill, first, second) in &[
            (3u64, 10u64, 3u64, 2u64),
            (4_194_304, 1000, 4_194_304, 4096),
            (7, 3, 5, 7),
            (1, 1_000_000, 1, 1),
            (1_000_000_007, 13, 999_999_999, 1_000_000_000),
        ] {
            let mut b = TokenBucket::new_at(size, 0, refill, t0).unwrap();
            assert_eq!(b.reduce_at(first, t0), Reduction::Success);
            let Reduction::Failure { wait } = b.reduce_at(second, t0) else {
                panic!("{size}/{refill}: {second} tokens should not fit");
            };
            assert!(wait > Duration::ZERO);
            let mut early = b.clone();
            assert!(matches!(
                early.reduce_at(second, t0 + wait - Duration::from_nanos(1)),
                Reduction::Failure { .. }
            ));
            assert_eq!(b.reduce_at(second, t0 + wait), Reduction::Success);
        }
    }

    #[test]
    fn one_time_burst_is_spent_first_and_never_refilled() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new_at(10, 100, 1000, t0).unwrap();
        assert_eq!(b.reduce_at(60, t0), Reduction::Success);
        assert_eq!((b.one_time_burst(), b.budget()), (40, 10));
        // 45 = the last 40 burst tokens + 5 of the bucket.
        assert_eq!(b.reduce_at(45, t0), Reduction::Success);
        assert_eq!((b.one_time_burst(), b.budget()), (0, 5));
        b.refill_at(t0 + ms(1_000_000));
        assert_eq!((b.one_time_burst(), b.budget()), (0, 10));
        assert_eq!(b.initial_one_time_burst(), 100);
    }

    #[test]
    fn a_failed_request_takes_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new_at(10, 5, 1000, t0).unwrap();
        assert_eq!(b.reduce_at(12, t0), Reduction::Success);
        assert_eq!((b.one_time_burst(), b.budget()), (0, 3));
        assert!(matches!(b.reduce_at(4, t0), Reduction::Failure { .. }));
        assert_eq!((b.one_time_burst(), b.budget()), (0, 3));
        let mut b = TokenBucket::new_at(10, 5, 1000, t0).unwrap();
        // 16 - 5 burst tokens = 11 > 10: oversized, and it passes because the bucket is full.
        assert!(matches!(
            b.reduce_at(16, t0),
            Reduction::OverConsumption { .. }
        ));
    }

    #[test]
    fn an_oversized_request_passes_on_a_full_bucket_and_leaves_debt() {
        let t0 = Instant::now();
        // 10 tokens per second.
        let mut b = TokenBucket::new_at(10, 0, 1000, t0).unwrap();
        assert_eq!(b.reduce_at(1, t0), Reduction::Success);
        // Not full: wait until it is (1 token: 100 ms).
        assert_eq!(b.reduce_at(25, t0), Reduction::Failure { wait: ms(100) });
        assert_eq!(
            b.reduce_at(25, t0 + ms(100)),
            Reduction::OverConsumption { wait: ms(1500) }
        );
        assert_eq!((b.budget(), b.debt()), (0, 15));
        // Nothing passes until the debt is paid and the tokens are there.
        assert_eq!(
            b.reduce_at(1, t0 + ms(100)),
            Reduction::Failure { wait: ms(1600) }
        );
        b.refill_at(t0 + ms(600));
        assert_eq!((b.budget(), b.debt()), (0, 10));
        assert!(matches!(
            b.reduce_at(1, t0 + ms(1600)),
            Reduction::Failure { .. }
        ));
        assert_eq!(b.reduce_at(1, t0 + ms(1700)), Reduction::Success);
        // The long-run rate holds: 1 + 25 + 1 tokens in 1.7 s from a full bucket of 10.
        assert_eq!((b.budget(), b.debt()), (0, 0));
    }

    #[test]
    fn an_oversized_request_with_burst_counts_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new_at(10, 4, 1000, t0).unwrap();
        assert_eq!(
            b.reduce_at(20, t0),
            Reduction::OverConsumption { wait: ms(600) }
        );
        assert_eq!((b.one_time_burst(), b.budget(), b.debt()), (0, 0, 6));
    }

    #[test]
    fn replenish_reverses_reduce() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new_at(10, 5, 1000, t0).unwrap();
        assert_eq!(b.reduce_at(12, t0), Reduction::Success);
        b.replenish(12);
        assert_eq!((b.one_time_burst(), b.budget()), (5, 10));
        b.replenish(100);
        assert_eq!((b.one_time_burst(), b.budget()), (5, 10));
        let mut b = TokenBucket::new_at(10, 0, 1000, t0).unwrap();
        assert!(matches!(
            b.reduce_at(30, t0),
            Reduction::OverConsumption { .. }
        ));
        b.replenish(25);
        assert_eq!((b.budget(), b.debt()), (5, 0));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let t0 = Instant::now();
        let max = u64::MAX;
        let mut b = TokenBucket::new_at(max, max, max, t0).unwrap();
        assert_eq!(b.reduce_at(max, t0), Reduction::Success);
        assert_eq!(b.reduce_at(max, t0), Reduction::Success);
        let Reduction::Failure { wait } = b.reduce_at(max, t0) else {
            panic!("empty bucket")
        };
        assert_eq!(wait, Duration::from_nanos(u64::MAX));
        b.refill_at(t0 + Duration::from_secs(1_000_000_000));
        b.refill_at(t0 + Duration::from_secs(1 << 40));
        let mut b = TokenBucket::new_at(max, 0, 1, t0).unwrap();
        assert_eq!(b.reduce_at(max, t0), Reduction::Success);
        b.refill_at(t0 + Duration::from_secs(1_000_000_000));
        assert_eq!(b.budget(), max);
        let mut b = TokenBucket::new_at(1, 0, max, t0).unwrap();
        assert!(matches!(
            b.reduce_at(max, t0),
            Reduction::OverConsumption { .. }
        ));
        assert!(matches!(b.reduce_at(max, t0), Reduction::Failure { .. }));
    }

    #[test]
    fn an_earlier_instant_adds_nothing() {
        let t0 = Instant::now();
        let later = t0 + ms(10);
        let mut b = TokenBucket::new_at(1000, 0, 1000, later).unwrap();
        assert_eq!(b.reduce_at(1000, later), Reduction::Success);
        b.refill_at(t0);
        assert_eq!(b.budget(), 0);
        b.refill_at(later + ms(5));
        assert_eq!(b.budget(), 5);
    }
}
