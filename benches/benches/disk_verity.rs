//! dm-verity block verification on one core: each iteration checks one 4 KiB data block
//! against its hash tree with the hash blocks already verified and cached (a warm cache, as a
//! guest streaming through a disk sees it after the first block of each hash block), so the
//! cost is one `H(salt || block)` plus a cache lookup. Throughput is reported per 4 KiB block
//! verified (MiB/s); `read_4k` adds reading the block through `VerityImage::read` from a raw
//! image in the page cache, and `read_256k` a large read of 64 blocks.
// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmm_disk::verity::{self, Algorithm, FormatOptions, VerityImage};
use vmm_disk::{ImageFile, RawFile};

const BLOCK: usize = 4096;
const BLOCKS: u64 = 4096; // a 16 MiB image

fn disk_verity(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("vmm-bench-verity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let data = dir.join("data.img");
    let hash = dir.join("data.hash");
    let bytes: Vec<u8> = (0..BLOCKS as usize * BLOCK)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&data, &bytes).expect("write image");

    let mut group = c.benchmark_group("disk_verity");
    for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
        let options = FormatOptions {
            algorithm,
            ..FormatOptions::default()
        };
        let root = verity::format(&data, &hash, &options).expect("format");
        let mut image = VerityImage::open(RawFile::open(&data, true).expect("open"), &hash, &root)
            .expect("verity open");
        // Warm the hash cache: every hash block verified once.
        let mut all = vec![0u8; bytes.len()];
        image.read(0, &mut all).expect("warm read");

        group.throughput(Throughput::Bytes(BLOCK as u64));
        let mut block = 0u64;
        group.bench_function(format!("verify_4k_{}", algorithm.name()), |b| {
            b.iter(|| {
                let at = block as usize * BLOCK;
                image
                    .verify_block(block, black_box(&bytes[at..at + BLOCK]))
                    .expect("verified");
                block = (block + 1) % BLOCKS;
            })
        });
        let mut buf = vec![0u8; BLOCK];
        group.bench_function(format!("read_4k_{}", algorithm.name()), |b| {
            b.iter(|| {
                image
                    .read(block * BLOCK as u64, black_box(&mut buf))
                    .expect("read");
                block = (block + 1) % BLOCKS;
            })
        });
        group.throughput(Throughput::Bytes(256 << 10));
        let mut big = vec![0u8; 256 << 10];
        let mut at = 0u64;
        group.bench_function(format!("read_256k_{}", algorithm.name()), |b| {
            b.iter(|| {
                image.read(at, black_box(&mut big)).expect("read");
                at = (at + (256 << 10)) % (BLOCKS * BLOCK as u64);
            })
        });
        assert_eq!(image.corrupt_blocks(), 0);
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, disk_verity);
criterion_main!(benches);
