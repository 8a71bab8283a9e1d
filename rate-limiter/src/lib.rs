//! A token-bucket rate limiter for virtio devices, with the semantics of Firecracker's
//! `RateLimiter` (block `rate_limiter`, net `rx_rate_limiter`/`tx_rate_limiter`, entropy
//! `rate_limiter`).
//!
//! A [`RateLimiter`] has two optional [`TokenBucket`]s: `bandwidth` (tokens are bytes) and
//! `ops` (tokens are operations). A bucket has a `size` (capacity, and its initial content), an
//! optional `one_time_burst` (extra initial tokens, spent first, never refilled) and a
//! `refill_time` in milliseconds (time to refill the whole bucket from empty; the refill is
//! continuous). A bucket with size 0 or refill time 0 limits nothing; a limiter with no bucket
//! never blocks.
//!
//! A device asks [`RateLimiter::consume`] before each request. When the tokens are not there,
//! `consume` returns `false` and the limiter is *blocked*: it arms a timerfd for the time when
//! enough tokens will exist, and every `consume` returns `false` (without busy-waiting or
//! looking at the clock) until the device's event loop sees the limiter's descriptor
//! ([`AsRawFd`]) readable and calls [`RateLimiter::event_handler`]. The device then retries its
//! pending requests. An operation that passed the `ops` bucket but not the `bandwidth` bucket
//! gives its operation back with [`RateLimiter::manual_replenish`].
//!
//! A request larger than a bucket passes once the bucket is full and leaves the bucket in debt
//! (see [`TokenBucket`]); it never deadlocks, and the average rate holds.
//!
//! The buckets can be changed at run time (Firecracker's PATCH) with
//! [`RateLimiter::update_buckets`]: each bucket is left alone ([`BucketUpdate::None`]),
//! removed ([`BucketUpdate::Disabled`]) or replaced by a new, full one
//! ([`BucketUpdate::Update`]).
//!
//! ```
//! use std::os::fd::AsRawFd;
//!
//! use vmm_rate_limiter::{BucketParams, RateLimiter, TokenType};
//! use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // 4 MiB per second, with 1 MiB extra at the start; at most 1000 requests per second.
//! let bandwidth = BucketParams::new(4 << 20, 1 << 20, 1000);
//! let ops = BucketParams::new(1000, 0, 1000);
//! let mut limiter = RateLimiter::new(Some(bandwidth), Some(ops))?;
//!
//! // The device's event loop watches the limiter next to its queues.
//! const LIMITER_TOKEN: u64 = 7;
//! let epoll = Epoll::new()?;
//! epoll.ctl(
//!     ControlOperation::Add,
//!     limiter.as_raw_fd(),
//!     EpollEvent::new(EventSet::IN, LIMITER_TOKEN),
//! )?;
//!
//! // Serving a 64 KiB request: one operation, then its bytes.
//! let len = 64 << 10;
//! if limiter.consume(1, TokenType::Ops) {
//!     if limiter.consume(len, TokenType::Bytes) {
//!         // ... do the I/O ...
//!     } else {
//!         // Blocked on bandwidth: give the operation back, keep the request for later.
//!         limiter.manual_replenish(1, TokenType::Ops);
//!     }
//! }
//!
//! // 5 MiB is more than the bucket and the rest of the burst hold: as the bucket is full, the
//! // request passes, leaves the bucket 64 KiB in debt and blocks the limiter.
//! assert!(limiter.consume(5 << 20, TokenType::Bytes));
//! assert!(limiter.is_blocked());
//! assert!(!limiter.consume(len, TokenType::Bytes));
//! assert!(!limiter.consume(1, TokenType::Ops)); // blocked for both kinds
//!
//! // When epoll reports LIMITER_TOKEN readable (after about 16 ms here, when the debt is paid):
//! fn on_limiter_readable(limiter: &mut RateLimiter) {
//!     if limiter.event_handler().is_ok() {
//!         // unblocked: retry the pending requests
//!     }
//! }
//! # let _ = on_limiter_readable;
//! # Ok(())
//! # }
//! ```
//!
//! The bucket arithmetic takes the clock as an argument ([`TokenBucket::reduce_at`],
//! [`TokenBucket::refill_at`]), so it can be tested and simulated without sleeping.

mod bucket;

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

pub use bucket::{BucketParams, Reduction, TokenBucket};

/// The shortest time the limiter's timer is armed for. A shorter wait is rounded up to this,
/// which costs no throughput: the bucket keeps refilling meanwhile, and even the fastest
/// bucket (`refill_time` 1 ms) holds 1 ms of tokens.
pub const MIN_TIMER_WAIT: Duration = Duration::from_micros(100);

/// Errors of a [`RateLimiter`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The timerfd could not be created.
    #[error("cannot create the rate limiter's timerfd: {0}")]
    CreateTimer(#[source] std::io::Error),
    /// The timerfd could not be armed, read or queried.
    #[error("rate limiter timerfd: {0}")]
    Timer(#[source] std::io::Error),
    /// [`RateLimiter::event_handler`] was called while the limiter was not blocked, or before
    /// its timer expired. Nothing changed.
    #[error(
        "spurious rate limiter event: the limiter is not blocked or its timer has not expired"
    )]
    SpuriousEvent,
}

/// Which bucket a [`RateLimiter::consume`] draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// Bytes: the `bandwidth` bucket.
    Bytes,
    /// Operations (requests): the `ops` bucket.
    Ops,
}

/// A change to one bucket of a running [`RateLimiter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BucketUpdate {
    /// Leave the bucket as it is.
    #[default]
    None,
    /// Remove the bucket: no limit.
    Disabled,
    /// Replace the bucket with a new, full one with these parameters (parameters with size 0
    /// or refill time 0 remove it, like [`BucketUpdate::Disabled`]).
    Update(BucketParams),
}

impl From<Option<BucketParams>> for BucketUpdate {
    /// A PATCH body's bucket: absent leaves the bucket alone, present replaces it (or removes
    /// it when its size or refill time is 0).
    fn from(params: Option<BucketParams>) -> Self {
        match params {
            None => BucketUpdate::None,
            Some(p) if !p.is_enabled() => BucketUpdate::Disabled,
            Some(p) => BucketUpdate::Update(p),
        }
    }
}

/// A rate limiter: an optional bandwidth bucket, an optional ops bucket and the timerfd that
/// ends a blocked period. See the [crate documentation](crate).
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    /// Whether the timer is armed for a blocked period that `event_handler` has not ended.
    blocked: bool,
}

impl RateLimiter {
    /// A limiter with the given buckets (`None`, or parameters with size 0 or refill time 0:
    /// no limit for that kind). Fails only when the timerfd cannot be created.
    pub fn new(
        bandwidth: Option<BucketParams>,
        ops: Option<BucketParams>,
    ) -> Result<RateLimiter, Error> {
        Ok(RateLimiter {
            bandwidth: bandwidth.and_then(TokenBucket::from_params),
            ops: ops.and_then(TokenBucket::from_params),
            timer: TimerFd::new().map_err(|e| Error::CreateTimer(e.into()))?,
            blocked: false,
        })
    }

    /// A limiter that limits nothing and never blocks; its descriptor can still be registered
    /// (it never becomes readable unless buckets are added with
    /// [`RateLimiter::update_buckets`]).
    pub fn unlimited() -> Result<RateLimiter, Error> {
        Self::new(None, None)
    }

    /// The bandwidth bucket, if any.
    pub fn bandwidth(&self) -> Option<&TokenBucket> {
        self.bandwidth.as_ref()
    }

    /// The ops bucket, if any.
    pub fn ops(&self) -> Option<&TokenBucket> {
        self.ops.as_ref()
    }

    /// Whether the limiter has no bucket at all.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Whether the limiter is blocked: every [`RateLimiter::consume`] returns `false` until
    /// [`RateLimiter::event_handler`] ends the blocked period.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    fn bucket_mut(&mut self, token_type: TokenType) -> Option<&mut TokenBucket> {
        match token_type {
            TokenType::Bytes => self.bandwidth.as_mut(),
            TokenType::Ops => self.ops.as_mut(),
        }
    }

    /// Takes `tokens` of `token_type`: `true` when the request may go ahead. `false` when the
    /// limiter is blocked, or when the tokens are not there; then the limiter becomes blocked
    /// and its timer is armed for when they will be (the device keeps the request and retries
    /// it after [`RateLimiter::event_handler`]). A request larger than the bucket passes once
    /// the bucket is full, and blocks the limiter until the debt it leaves is paid.
    pub fn consume(&mut self, tokens: u64, token_type: TokenType) -> bool {
        if self.blocked {
            return false;
        }
        if self.bucket_mut(token_type).is_none() {
            // No limit for this kind: no need to read the clock.
            return true;
        }
        self.consume_at(tokens, token_type, Instant::now())
    }

    fn consume_at(&mut self, tokens: u64, token_type: TokenType, now: Instant) -> bool {
        if self.blocked {
            return false;
        }
        let Some(bucket) = self.bucket_mut(token_type) else {
            return true;
        };
        match bucket.reduce_at(tokens, now) {
            Reduction::Success => true,
            Reduction::Failure { wait } => {
                self.block_for(wait);
                false
            }
            Reduction::OverConsumption { wait } => {
                self.block_for(wait);
                true
            }
        }
    }

    /// Arms the timer for `wait` (at least [`MIN_TIMER_WAIT`]) and blocks. If the timer cannot
    /// be armed, the limiter stays unblocked (a blocked limiter with no timer would never
    /// wake up); the device then retries on its next event.
    fn block_for(&mut self, wait: Duration) {
        match self.timer.reset(wait.max(MIN_TIMER_WAIT), None) {
            Ok(()) => self.blocked = true,
            Err(e) => log::error!("rate limiter: cannot arm the timerfd: {e}"),
        }
    }

    /// Gives back `tokens` of `token_type` taken by a request that then did not go ahead (an
    /// operation that passed the ops bucket but was refused by the bandwidth bucket). It does
    /// not end a blocked period.
    pub fn manual_replenish(&mut self, tokens: u64, token_type: TokenType) {
        if let Some(bucket) = self.bucket_mut(token_type) {
            bucket.replenish(tokens);
        }
    }

    /// Call when the limiter's descriptor is readable: reads the timerfd and ends the blocked
    /// period, after which the device retries its pending requests. Never blocks:
    /// [`Error::SpuriousEvent`] (and no change) when the limiter is not blocked or its timer has
    /// not expired yet.
    pub fn event_handler(&mut self) -> Result<(), Error> {
        if !self.blocked {
            return Err(Error::SpuriousEvent);
        }
        // A one-shot timer that has expired reads as disarmed; then the read below returns
        // the expiration count at once. One that has not expired yet would block the read.
        if self.timer.is_armed().map_err(|e| Error::Timer(e.into()))? {
            return Err(Error::SpuriousEvent);
        }
        self.timer.wait().map_err(|e| Error::Timer(e.into()))?;
        self.blocked = false;
        Ok(())
    }

    /// Changes the buckets at run time. A replaced bucket starts full, with its burst. When
    /// the limiter is blocked, its timer is re-armed to expire at once ([`MIN_TIMER_WAIT`]) so
    /// that the device retries its pending requests under the new limits.
    pub fn update_buckets(
        &mut self,
        bandwidth: BucketUpdate,
        ops: BucketUpdate,
    ) -> Result<(), Error> {
        fn apply(bucket: &mut Option<TokenBucket>, update: BucketUpdate) {
            match update {
                BucketUpdate::None => {}
                BucketUpdate::Disabled => *bucket = None,
                BucketUpdate::Update(params) => *bucket = TokenBucket::from_params(params),
            }
        }
        let changed = bandwidth != BucketUpdate::None || ops != BucketUpdate::None;
        apply(&mut self.bandwidth, bandwidth);
        apply(&mut self.ops, ops);
        if changed && self.blocked {
            self.timer
                .reset(MIN_TIMER_WAIT, None)
                .map_err(|e| Error::Timer(e.into()))?;
        }
        Ok(())
    }
}

impl Default for RateLimiter {
    /// [`RateLimiter::unlimited`].
    ///
    /// # Panics
    ///
    /// When the process cannot create a timerfd (out of file descriptors); use
    /// [`RateLimiter::unlimited`] to get the error instead.
    fn default() -> Self {
        RateLimiter::unlimited().expect("cannot create the rate limiter's timerfd")
    }
}

impl AsRawFd for RateLimiter {
    /// The timerfd: readable when a blocked period ends; then call
    /// [`RateLimiter::event_handler`].
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

    /// A bucket that refills so slowly that no test ever sees a refill.
    const SLOW_MS: u64 = 1_000_000_000;

    #[test]
    fn unlimited_never_blocks() {
        let mut l = RateLimiter::default();
        assert!(l.is_unlimited());
        for _ in 0..1000 {
            assert!(l.consume(u64::MAX, TokenType::Bytes));
            assert!(l.consume(u64::MAX, TokenType::Ops));
        }
        assert!(!l.is_blocked());
        assert!(l.as_raw_fd() >= 0);
        assert!(matches!(l.event_handler(), Err(Error::SpuriousEvent)));
        let l = RateLimiter::new(
            Some(BucketParams::new(0, 10, 10)),
            Some(BucketParams::new(10, 0, 0)),
        )
        .unwrap();
        assert!(l.is_unlimited());
    }

    #[test]
    fn a_missing_bucket_does_not_limit_its_kind() {
        let mut l = RateLimiter::new(None, Some(BucketParams::new(2, 0, SLOW_MS))).unwrap();
        assert!(l.consume(1 << 40, TokenType::Bytes));
        assert!(l.consume(2, TokenType::Ops));
        assert!(l.consume(1 << 40, TokenType::Bytes));
        assert!(!l.consume(1, TokenType::Ops));
        // Blocked: both kinds wait, like Firecracker.
        assert!(l.is_blocked());
        assert!(!l.consume(1, TokenType::Bytes));
    }

    #[test]
    fn blocked_until_the_event_and_never_busy() {
        let mut l = RateLimiter::new(Some(BucketParams::new(100, 0, SLOW_MS)), None).unwrap();
        assert!(l.consume(60, TokenType::Bytes));
        assert!(!l.consume(60, TokenType::Bytes));
        assert!(l.is_blocked());
        assert!(!l.consume(1, TokenType::Bytes));
        // The timer is far away: the handler neither blocks nor unblocks.
        assert!(matches!(l.event_handler(), Err(Error::SpuriousEvent)));
        assert!(l.is_blocked());
        // The failed request took nothing.
        assert_eq!(l.bandwidth().unwrap().budget(), 40);
    }

    #[test]
    fn consume_with_injected_clock() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(Some(BucketParams::new(1000, 0, 1000)), None).unwrap();
        assert!(l.consume_at(1000, TokenType::Bytes, t0));
        // Injected instants are only for the buckets; once blocked, only the event unblocks.
        assert!(!l.consume_at(1, TokenType::Bytes, t0));
        assert!(!l.consume_at(1, TokenType::Bytes, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn oversized_request_passes_and_blocks() {
        let mut l = RateLimiter::new(Some(BucketParams::new(10, 0, SLOW_MS)), None).unwrap();
        assert!(l.consume(25, TokenType::Bytes));
        assert!(l.is_blocked());
        assert_eq!(l.bandwidth().unwrap().debt(), 15);
        assert!(!l.consume(1, TokenType::Bytes));
    }

    #[test]
    fn manual_replenish_gives_tokens_back() {
        let mut l = RateLimiter::new(
            Some(BucketParams::new(100, 0, SLOW_MS)),
            Some(BucketParams::new(5, 2, SLOW_MS)),
        )
        .unwrap();
        assert!(l.consume(3, TokenType::Ops));
        assert_eq!(l.ops().unwrap().one_time_burst(), 0);
        assert_eq!(l.ops().unwrap().budget(), 4);
        l.manual_replenish(3, TokenType::Ops);
        assert_eq!(l.ops().unwrap().budget(), 5);
        assert_eq!(l.ops().unwrap().one_time_burst(), 2);
        // No bucket: nothing to do.
        let mut u = RateLimiter::unlimited().unwrap();
        u.manual_replenish(3, TokenType::Bytes);
    }

    #[test]
    fn update_buckets() {
        let bw = BucketParams::new(100, 0, SLOW_MS);
        let ops = BucketParams::new(10, 5, SLOW_MS);
        let mut l = RateLimiter::new(Some(bw), Some(ops)).unwrap();
        assert!(l.consume(50, TokenType::Bytes));
        l.update_buckets(BucketUpdate::None, BucketUpdate::None)
            .unwrap();
        assert_eq!(l.bandwidth().unwrap().budget(), 50);
        assert_eq!(l.ops().unwrap().params(), ops);
        let bigger = BucketParams::new(1000, 0, SLOW_MS);
        l.update_buckets(BucketUpdate::Update(bigger), BucketUpdate::Disabled)
            .unwrap();
        assert_eq!(l.bandwidth().unwrap().params(), bigger);
        assert_eq!(l.bandwidth().unwrap().budget(), 1000);
        assert!(l.ops().is_none());
        l.update_buckets(
            BucketUpdate::Update(BucketParams::new(0, 0, 10)),
            BucketUpdate::Update(ops),
        )
        .unwrap();
        assert!(l.bandwidth().is_none());
        assert_eq!(l.ops().unwrap().params(), ops);

        assert_eq!(BucketUpdate::from(None), BucketUpdate::None);
        assert_eq!(
            BucketUpdate::from(Some(BucketParams::new(0, 1, 1))),
            BucketUpdate::Disabled
        );
        assert_eq!(BucketUpdate::from(Some(ops)), BucketUpdate::Update(ops));
    }

    fn wait_readable(epoll: &Epoll) -> bool {
        let mut events = [EpollEvent::default(); 1];
        // A generous deadline: the only timing assumption in these tests.
        matches!(epoll.wait(10_000, &mut events), Ok(1))
    }

    /// The one test that waits for the timerfd: a blocked limiter's descriptor becomes
    /// readable, the handler unblocks it and the request then passes. A PATCH while blocked
    /// re-arms the timer so that the device retries under the new limits.
    #[test]
    fn timerfd_ends_the_blocked_period() {
        // 1 MiB per second. An oversized request on the full bucket passes and blocks for the
        // ~1 ms its 1 KiB of debt takes to pay (no assumption on how fast this test runs).
        let mut l = RateLimiter::new(Some(BucketParams::new(1 << 20, 0, 1000)), None).unwrap();
        let epoll = Epoll::new().unwrap();
        epoll
            .ctl(
                ControlOperation::Add,
                l.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 1),
            )
            .unwrap();
        assert!(l.consume((1 << 20) + 1024, TokenType::Bytes));
        assert!(l.is_blocked());
        assert!(!l.consume(1, TokenType::Bytes));
        assert!(wait_readable(&epoll));
        l.event_handler().unwrap();
        assert!(!l.is_blocked());
        // The timer fired no earlier than the debt was paid.
        assert!(l.consume(0, TokenType::Bytes));
        assert!(!l.is_blocked());
        assert_eq!(l.bandwidth().unwrap().debt(), 0);
        // Read: not readable any more, and a second call is spurious.
        assert!(matches!(l.event_handler(), Err(Error::SpuriousEvent)));

        // Blocked for ~17 minutes; a PATCH lifts the limit and the timer fires at once.
        let mut l = RateLimiter::new(Some(BucketParams::new(10, 0, SLOW_MS)), None).unwrap();
        epoll
            .ctl(
                ControlOperation::Add,
                l.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 2),
            )
            .unwrap();
        assert!(l.consume(10, TokenType::Bytes));
        assert!(!l.consume(10, TokenType::Bytes));
        l.update_buckets(BucketUpdate::Disabled, BucketUpdate::None)
            .unwrap();
        assert!(l.is_blocked());
        assert!(wait_readable(&epoll));
        l.event_handler().unwrap();
        assert!(l.consume(10, TokenType::Bytes));
    }
}
