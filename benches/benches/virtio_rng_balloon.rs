//! virtio-rng and virtio-balloon request handling, on hand-built queues in real guest memory.
//!
//! - `virtio_rng/request_4KiB`: one chain with a 4 KiB writable buffer, filled from
//!   getrandom(2) and returned to the used ring.
//! - `virtio_balloon/inflate_256_consecutive`: one chain of 256 adjacent PFNs (1 MiB, one
//!   madvise call).
//! - `virtio_balloon/inflate_256_scattered`: 256 PFNs spread over 61 MiB in shuffled order
//!   (256 madvise calls).
//!
//! The balloon pages are written to before every measured run (untimed), so each inflate
//! really frees populated memory instead of advising pages that are already gone.
// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use vmm_devices::virtio::balloon::{Balloon, BalloonConfig, INFLATE_QUEUE};
use vmm_devices::virtio::rng::Rng;
use vmm_devices::virtio::test_utils::{activate, test_memory, TestQueue};
use vmm_devices::virtio::{features, VirtioDevice};
use vmm_memory::{Bytes, GuestAddress};

const MIB: usize = 1 << 20;
const QUEUE_A: u64 = 0x1_0000;
const QUEUE_B: u64 = 0x2_0000;
const PFN_ARRAY: u64 = 0x3_0000;
const BUF: u64 = 0x4_0000;
/// First PFN of the pages the balloon benches inflate (1 MiB).
const FIRST_PFN: u32 = 0x100;
const ACKED: u64 = features::VERSION_1 | features::RING_EVENT_IDX;

fn rng(c: &mut Criterion) {
    let mem = test_memory(MIB);
    let mut tq = TestQueue::new(QUEUE_A, 256);
    let mut rng = Rng::new();
    activate(&mut rng, &mem, [&tq], ACKED).expect("activate rng");
    c.bench_function("virtio_rng/request_4KiB", |b| {
        b.iter(|| {
            tq.add_chain(&mem, &[(BUF, 4096, true)]);
            rng.process_queue(0).expect("rng request");
        })
    });
    black_box(rng.bytes_served());
}

fn inflate(c: &mut Criterion, name: &str, pfns: &[u32]) {
    let mem = test_memory(64 * MIB);
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(PFN_ARRAY))
        .expect("PFN array");
    let mut inflate_q = TestQueue::new(QUEUE_A, 256);
    let deflate_q = TestQueue::new(QUEUE_B, 256);
    let mut balloon = Balloon::new(BalloonConfig {
        target_pages: 0,
        deflate_on_oom: false,
        stats_polling_interval_s: 0,
    });
    activate(&mut balloon, &mem, [&inflate_q, &deflate_q], ACKED).expect("activate balloon");
    let len = bytes.len() as u32;
    c.bench_function(name, |b| {
        b.iter_batched(
            || {
                for &pfn in pfns {
                    mem.write_obj(pfn, GuestAddress(u64::from(pfn) << 12))
                        .expect("touch page");
                }
                inflate_q.add_chain(&mem, &[(PFN_ARRAY, len, false)]);
            },
            |()| balloon.process_queue(INFLATE_QUEUE).expect("inflate"),
            BatchSize::PerIteration,
        )
    });
    let stats = balloon.stats();
    assert_eq!(stats.refused_pages, 0);
    black_box(stats);
}

fn balloon(c: &mut Criterion) {
    let consecutive: Vec<u32> = (0..256).map(|i| FIRST_PFN + i).collect();
    inflate(c, "virtio_balloon/inflate_256_consecutive", &consecutive);
    // i * 97 mod 256 visits every slot once in shuffled order; slots are 61 pages apart.
    let scattered: Vec<u32> = (0..256).map(|i| FIRST_PFN + (i * 97 % 256) * 61).collect();
    inflate(c, "virtio_balloon/inflate_256_scattered", &scattered);
}

criterion_group!(benches, rng, balloon);
criterion_main!(benches);
