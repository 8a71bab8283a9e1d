//! The layered copy-on-write format (vmm-disk's `layered`): what its design promises, measured.
//!
//! - `clone`: `vmm disk clone` of a 1 GiB and a 64 GiB image whose top is sealed already: a new
//!   empty top over the shared layers, whatever the size (target: <= 5 ms).
//! - `read_4k`: random 4 KiB reads of blocks that live in the bottom layer, through 1 and through
//!   100 sealed layers above it (each holding other blocks): the Bloom filters let a read skip
//!   the layers that do not hold its block (target: 100 layers within 10 % of 1). The filters'
//!   skip rate and the memory per opened clone are printed before the groups.
//! - `import_dedup`: importing two 16 MiB images that share 90 % of their blocks; the dedup
//!   ratio is printed.
//!
//! Files go to the temp dir (page cache): these are the format's own costs, not storage speed.
// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vmm_disk::layered::{self, HashKind, LayeredImage};
use vmm_disk::ImageFile;

const BLOCK: u64 = 4096;

/// A scratch directory, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("vmm-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small deterministic generator (xorshift64), so every run reads the same blocks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A layered image of `size` bytes at `path` whose bottom layer holds `bottom` blocks (every
/// `stride`-th block from 0) and `sealed_above` more sealed layers each holding 16 other blocks.
/// Its top is empty. Returns the bottom layer's blocks.
fn layered_chain(path: &Path, size: u64, bottom: u64, stride: u64, sealed_above: u64) -> Vec<u64> {
    layered::create(path, Some(size), None).expect("create");
    let blocks: Vec<u64> = (0..bottom).map(|i| i * stride).collect();
    let data = vec![0xa5u8; BLOCK as usize];
    {
        let mut image = LayeredImage::open(path, false).expect("open");
        for &b in &blocks {
            image.write(b * BLOCK, &data).expect("write");
        }
        image.flush().expect("flush");
    }
    layered::snapshot(path).expect("seal the bottom");
    for layer in 0..sealed_above {
        let mut image = LayeredImage::open(path, false).expect("open");
        for i in 0..16 {
            // Blocks between the bottom layer's, different in every layer.
            let b = (layer * 16 + i) * stride + 1;
            image.write(b * BLOCK, &data).expect("write");
        }
        image.flush().expect("flush");
        drop(image);
        layered::snapshot(path).expect("seal");
    }
    blocks
}

fn clone_time(c: &mut Criterion) {
    let scratch = Scratch::new("clone");
    let mut group = c.benchmark_group("disk_layers/clone");
    for gib in [1u64, 64] {
        let src = scratch.path(&format!("src-{gib}g.layered"));
        layered_chain(&src, gib << 30, 64, 1024, 0);
        let mut n = 0u64;
        group.bench_function(BenchmarkId::from_parameter(format!("{gib}GiB")), |b| {
            b.iter(|| {
                n += 1;
                let new = scratch.path(&format!("clone-{gib}-{n}.layered"));
                layered::clone_image(&src, &new).expect("clone");
                let _ = std::fs::remove_file(&new);
            })
        });
    }
    group.finish();
}

/// Resident set size of this process, from /proc/self/statm, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn read_through_layers(c: &mut Criterion) {
    let scratch = Scratch::new("layers");
    let mut group = c.benchmark_group("disk_layers/read_4k");
    group.throughput(Throughput::Bytes(BLOCK));
    for above in [0u64, 99] {
        let path = scratch.path(&format!("chain-{above}.layered"));
        let blocks = layered_chain(&path, 1 << 30, 4096, 8, above);
        let mut image = LayeredImage::open(&path, true).expect("open");
        let layers = image.layer_count();
        // How the filters did: sealed layers asked per lookup, and skipped.
        let (mut asked, mut skipped) = (0u64, 0u64);
        for &b in blocks.iter().take(1000) {
            let (a, s) = image.probe_block(b).expect("probe");
            asked += u64::from(a);
            skipped += u64::from(s);
        }
        println!(
            "disk_layers: {layers} layers (top + {} sealed): per read of a bottom-layer block, \
             {:.2} trees asked, {:.2} layers skipped by their filter ({:.1} % of the layers above it)",
            layers - 1,
            asked as f64 / 1000.0,
            skipped as f64 / 1000.0,
            if layers > 2 { 100.0 * skipped as f64 / (1000.0 * (layers - 2) as f64) } else { 100.0 }
        );
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut buf = vec![0u8; BLOCK as usize];
        group.bench_function(
            BenchmarkId::from_parameter(format!("{layers}_layers")),
            |b| {
                b.iter(|| {
                    let block = blocks[(rng.next() % blocks.len() as u64) as usize];
                    image.read(block * BLOCK, &mut buf).expect("read");
                    black_box(&buf);
                })
            },
        );
    }
    group.finish();

    // Memory per clone: 50 clones of the 100-layer image opened at once.
    let base = scratch.path("chain-99.layered");
    let before = rss_bytes();
    let mut open = Vec::new();
    for i in 0..50 {
        let new = scratch.path(&format!("mem-clone-{i}.layered"));
        layered::clone_image(&base, &new).expect("clone");
        open.push(LayeredImage::open(&new, false).expect("open clone"));
    }
    let per_clone = rss_bytes().saturating_sub(before) / 50;
    println!(
        "disk_layers: memory per opened clone of a 101-layer image: {} KiB (RSS growth over 50 clones)",
        per_clone / 1024
    );
    drop(open);
}

fn dedup_import(c: &mut Criterion) {
    let scratch = Scratch::new("dedup");
    let blocks = 4096u64; // 16 MiB
    let mut a = Vec::with_capacity((blocks * BLOCK) as usize);
    for i in 0..blocks {
        a.extend(
            std::iter::repeat_n((i % 251) as u8 + 1, 8).chain(
                (i as u32)
                    .to_le_bytes()
                    .into_iter()
                    .cycle()
                    .take(BLOCK as usize - 8),
            ),
        );
    }
    let mut b = a.clone();
    // 10 % of the second image's blocks differ.
    for i in (0..blocks).step_by(10) {
        let at = (i * BLOCK) as usize;
        b[at..at + 8].copy_from_slice(&(u64::MAX - i).to_le_bytes());
    }
    let (ra, rb) = (scratch.path("a.raw"), scratch.path("b.raw"));
    std::fs::write(&ra, &a).expect("a");
    std::fs::write(&rb, &b).expect("b");
    let mut group = c.benchmark_group("disk_layers/import_dedup");
    group.throughput(Throughput::Bytes(2 * blocks * BLOCK));
    group.sample_size(10);
    let mut n = 0u64;
    let mut ratio = 0.0;
    group.bench_function("two_16MiB_images_90pct_shared", |bench| {
        bench.iter(|| {
            n += 1;
            let outs = [
                scratch.path(&format!("a-{n}.layered")),
                scratch.path(&format!("b-{n}.layered")),
            ];
            let report = vmm_disk::import_dedup(&[ra.clone(), rb.clone()], &outs, HashKind::Sha256)
                .expect("import");
            ratio = report.ratio;
            for entry in std::fs::read_dir(&scratch.0).expect("dir").flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("a-{n}.")) || name.starts_with(&format!("b-{n}.")) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        })
    });
    group.finish();
    println!("disk_layers: dedup ratio of two images sharing 90 % of their blocks: {ratio:.2} (ideal 1.82)");
}

criterion_group!(benches, clone_time, read_through_layers, dedup_import);
criterion_main!(benches);
