//! virtio-blk request processing: what the event loop does for one guest kick carrying one
//! request. Each iteration writes a request header, adds a header / data / status chain to the
//! available ring (as a driver would), and calls `process_queue`, which parses the chain, moves
//! the data with `preadv`/`pwritev` straight into or out of guest memory, writes the status,
//! fills the used ring and raises the interrupt (an eventfd write; EVENT_IDX is not acked, so
//! every request interrupts).
//!
//! `get_id` moves no file data: it is the per-request floor (chain parsing, rings, interrupt).
//!
//! The image is a 64 MiB file in the temp dir (/tmp): it sits in the host page cache, so these
//! numbers are the device's overhead plus a page-cache copy, not storage speed. Successive
//! requests walk through the image so they do not always hit the same pages.
// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::Write;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmm_devices::virtio::block::{Block, BlockConfig, SECTOR_SIZE};
use vmm_devices::virtio::test_utils::{activate, test_memory, TestQueue};
use vmm_devices::virtio::{features, VirtioDevice};
use vmm_devices::EventFd;
use vmm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const IMAGE_BYTES: usize = 64 << 20;
const MEM_BYTES: usize = 4 << 20;
const HDR: u64 = 0x1_0000;
const STATUS: u64 = 0x1_0080;
const DATA: u64 = 0x2_0000;
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// The image, removed when the bench ends.
struct Image(PathBuf);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Rig {
    block: Block<GuestMemoryMmap>,
    mem: GuestMemoryMmap,
    tq: TestQueue,
    /// Sectors the requests start at cycle through the image.
    next_sector: u64,
    _irq: EventFd,
}

impl Rig {
    fn new(image: &Image) -> Rig {
        let mut block = Block::new(BlockConfig {
            path: image.0.clone(),
            read_only: false,
            id: None,
        })
        .expect("open image");
        let mem = test_memory(MEM_BYTES);
        let tq = TestQueue::new(0, 256);
        let (_, irq) = activate(&mut block, &mem, [&tq], features::VERSION_1).expect("activate");
        Rig {
            block,
            mem,
            tq,
            next_sector: 0,
            _irq: irq,
        }
    }

    /// One request of `len` bytes: add it, process it, check its status.
    fn request(&mut self, request_type: u32, len: u32) {
        let sectors = u64::from(len).div_ceil(SECTOR_SIZE);
        if (self.next_sector + sectors) * SECTOR_SIZE > IMAGE_BYTES as u64 {
            self.next_sector = 0;
        }
        let sector = self.next_sector;
        self.next_sector += sectors;

        self.mem
            .write_obj(request_type.to_le(), GuestAddress(HDR))
            .unwrap();
        self.mem
            .write_obj(sector.to_le(), GuestAddress(HDR + 8))
            .unwrap();
        let data_writable = request_type != VIRTIO_BLK_T_OUT;
        self.tq.add_chain(
            &self.mem,
            &[
                (HDR, 16, false),
                (DATA, len, data_writable),
                (STATUS, 1, true),
            ],
        );
        self.block
            .process_queue(black_box(0))
            .expect("process_queue");
        let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        assert_eq!(status, 0, "request failed");
    }
}

fn virtio_block(c: &mut Criterion) {
    let image = Image(
        std::env::temp_dir().join(format!("vmm-bench-virtio-block-{}.img", std::process::id())),
    );
    // Written page by page: one huge write() can leave multi-megabyte page-cache folios on
    // ext4, and then every 4 KiB guest write pays for walking the whole folio in the kernel.
    let mut file = std::fs::File::create(&image.0).expect("create image");
    for page in 0..IMAGE_BYTES / 4096 {
        file.write_all(&[page as u8; 4096]).expect("write image");
    }
    drop(file);

    let mut rig = Rig::new(&image);
    let mut group = c.benchmark_group("virtio_block");
    for (name, request_type, len) in [
        ("read_4k", VIRTIO_BLK_T_IN, 4096u32),
        ("write_4k", VIRTIO_BLK_T_OUT, 4096),
        ("read_64k", VIRTIO_BLK_T_IN, 64 << 10),
        // No file I/O: the per-request cost of the chain, rings and interrupt alone.
        ("get_id", VIRTIO_BLK_T_GET_ID, 20),
    ] {
        group.throughput(Throughput::Bytes(u64::from(len)));
        group.bench_function(name, |b| b.iter(|| rig.request(request_type, len)));
    }
    group.finish();
}

criterion_group!(benches, virtio_block);
criterion_main!(benches);
