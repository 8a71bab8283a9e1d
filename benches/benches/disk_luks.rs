//! LUKS sector encryption per core: `LuksImage` reads (decrypt) and writes (encrypt) of 64 KiB
//! over an in-memory image, aes-xts-plain64 with a 512-bit key (cryptsetup's default), 512-byte
//! sectors. Throughput is printed by criterion in MiB/s (bytes of plaintext).
// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmm_disk::luks::{luks_format, FormatOptions, LuksImage, LuksOpenOptions};
use vmm_disk::{DiskIoError, ImageFile};

/// An image in memory, so that only the cipher and copies are measured.
struct MemImage(Vec<u8>);

impl ImageFile for MemImage {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskIoError> {
        let at = offset as usize;
        buf.copy_from_slice(&self.0[at..at + buf.len()]);
        Ok(())
    }
    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), DiskIoError> {
        let at = offset as usize;
        self.0[at..at + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DiskIoError> {
        Ok(())
    }
}

const IO: usize = 64 << 10;

fn luks(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("vmm-bench-luks-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    luks_format(&dir, b"bench", Some(4 << 20), &FormatOptions::cheap()).expect("luks_format");
    let bytes = std::fs::read(&dir).expect("read image");
    let _ = std::fs::remove_file(&dir);
    let mut image =
        LuksImage::open(MemImage(bytes), b"bench", &LuksOpenOptions::default()).expect("open");
    let mut buf = vec![0x5au8; IO];
    let mut group = c.benchmark_group("disk_luks");
    group.throughput(Throughput::Bytes(IO as u64));
    let mut at = 0u64;
    group.bench_function("aes_xts_512_decrypt_64KiB", |b| {
        b.iter(|| {
            at = (at + IO as u64) % (4 << 20);
            image.read(at, black_box(&mut buf)).expect("read");
        })
    });
    group.bench_function("aes_xts_512_encrypt_64KiB", |b| {
        b.iter(|| {
            at = (at + IO as u64) % (4 << 20);
            image.write(at, black_box(&buf)).expect("write");
        })
    });
    group.finish();
}

criterion_group!(benches, luks);
criterion_main!(benches);
