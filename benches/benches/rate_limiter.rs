//! The token-bucket rate limiter: the cost of a decision, and how close a limited stream comes
//! to the configured rate.
//!
//! - `rate_limiter/consume_unlimited`: `consume` on a limiter with no bucket.
//! - `rate_limiter/consume_4KiB`: `consume(4096, Bytes)` on a bucket too large to ever refuse
//!   (the clock read, the refill and the take).
//! - `rate_limiter/consume_ops_then_bytes`: one operation and 4 KiB, as a block request does.
//! - `token_bucket/reduce_at_4KiB`: the bucket arithmetic alone, with the instant passed in.
//! - `rate_limiter/accuracy_4MiBps` (printed, not timed by criterion): a consumer takes 4 KiB
//!   chunks as fast as it can from a 4 MiB/s bandwidth bucket for about 2 s, waiting on the
//!   limiter's timerfd (epoll) whenever it is blocked, and prints the achieved rate over the
//!   configured one. The bucket's initial content is drained before the clock starts, so the
//!   ratio is the sustained rate (ideally 1.000).
// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use vmm_rate_limiter::{BucketParams, RateLimiter, TokenBucket, TokenType};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

const CHUNK: u64 = 4096;
/// 4 MiB/s: 512 KiB refilled every 125 ms.
const RATE_BYTES_PER_S: f64 = (4u64 << 20) as f64;
const ACCURACY_BUCKET: BucketParams = BucketParams::new(512 << 10, 0, 125);
const ACCURACY_RUN: Duration = Duration::from_secs(2);

/// A bucket that never refuses a 4 KiB request: it is refilled a million times faster than
/// the benchmark can drain it.
const HUGE: BucketParams = BucketParams::new(u64::MAX, 0, 1);

fn consume(c: &mut Criterion) {
    let mut unlimited = RateLimiter::unlimited().expect("timerfd");
    c.bench_function("rate_limiter/consume_unlimited", |b| {
        b.iter(|| black_box(unlimited.consume(black_box(CHUNK), TokenType::Bytes)))
    });

    let mut limiter = RateLimiter::new(Some(HUGE), Some(HUGE)).expect("timerfd");
    c.bench_function("rate_limiter/consume_4KiB", |b| {
        b.iter(|| assert!(limiter.consume(black_box(CHUNK), TokenType::Bytes)))
    });
    c.bench_function("rate_limiter/consume_ops_then_bytes", |b| {
        b.iter(|| {
            assert!(limiter.consume(1, TokenType::Ops));
            assert!(limiter.consume(black_box(CHUNK), TokenType::Bytes));
        })
    });
    assert!(!limiter.is_blocked());

    let t0 = Instant::now();
    let mut bucket = TokenBucket::new_at(HUGE.size, 0, HUGE.refill_time_ms, t0).expect("enabled");
    let mut now = t0;
    c.bench_function("token_bucket/reduce_at_4KiB", |b| {
        b.iter(|| {
            now += Duration::from_nanos(100);
            black_box(bucket.reduce_at(black_box(CHUNK), now))
        })
    });
}

/// Waits until the limiter's timerfd is readable and ends the blocked period.
fn wait_unblocked(epoll: &Epoll, limiter: &mut RateLimiter) {
    let mut events = [EpollEvent::default(); 1];
    while limiter.is_blocked() {
        match epoll.wait(1000, &mut events) {
            Ok(1) => {
                // Ok, or spurious (the timer was already read): either way loop on is_blocked.
                let _ = limiter.event_handler();
            }
            Ok(_) => panic!("the rate limiter's timer did not fire within 1 s"),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("epoll_wait: {e}"),
        }
    }
}

fn accuracy(_c: &mut Criterion) {
    let mut limiter = RateLimiter::new(Some(ACCURACY_BUCKET), None).expect("timerfd");
    let epoll = Epoll::new().expect("epoll");
    epoll
        .ctl(
            ControlOperation::Add,
            limiter.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )
        .expect("register the timerfd");

    // Drain the full bucket: from here on, only refilled tokens pass.
    while limiter.consume(CHUNK, TokenType::Bytes) {}
    wait_unblocked(&epoll, &mut limiter);

    let start = Instant::now();
    let mut bytes = 0u64;
    let mut refusals = 0u64;
    let mut elapsed = Duration::ZERO;
    while elapsed < ACCURACY_RUN {
        if limiter.consume(CHUNK, TokenType::Bytes) {
            bytes += CHUNK;
        } else {
            refusals += 1;
            wait_unblocked(&epoll, &mut limiter);
        }
        elapsed = start.elapsed();
    }
    let achieved = bytes as f64 / elapsed.as_secs_f64();
    println!(
        "rate_limiter/accuracy_4MiBps: {bytes} bytes in {:.3} s = {:.0} B/s, configured {:.0} B/s, \
         ratio {:.4} ({refusals} blocked periods)",
        elapsed.as_secs_f64(),
        achieved,
        RATE_BYTES_PER_S,
        achieved / RATE_BYTES_PER_S,
    );
}

criterion_group!(benches, consume, accuracy);
criterion_main!(benches);
