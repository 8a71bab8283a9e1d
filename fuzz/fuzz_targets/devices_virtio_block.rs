//! Fuzzes virtio-blk request handling: a `Block` over a 1 MiB image, activated on a hand-built
//! queue in 256 KiB of guest memory, fed well-formed requests with fuzzed fields, raw hostile
//! descriptors, avail ring entries and raw memory writes. Nothing may panic, the image never
//! changes size, and a read-only device never changes a byte of it.
//!
//! The images live in /dev/shm (so FLUSH's fdatasync costs nothing) and are unlinked at once:
//! the device opens them again through /proc/self/fd, and nothing is left behind.
//!
//! Input: one setup byte, then operations, each `op` and its operands:
//! - setup: bit 0 read-only, bit 1 EVENT_IDX acked, bits 2-3 queue size (256, 16, 2, 1);
//! - `op % 8`: 0 a request (type, sector, up to 4 data buffers, the status descriptor), 1 a raw
//!   descriptor, 2 an avail ring entry, 3 process the queue, 4 raw bytes into guest memory
//!   (rings included), 5 reset and re-activate, 6 save and restore the state, 7 a config read.
#![no_main]

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

mod common;
use common::Cursor;
use vmm_devices::virtio::block::{Block, BlockConfig};
use vmm_devices::virtio::test_utils::{activate, test_memory, TestQueue};
use vmm_devices::virtio::{features, VirtioDevice};
use vmm_memory::{Bytes, GuestAddress};

const DISK_BYTES: usize = 1 << 20;
const MEM_BYTES: u64 = 0x4_0000;
/// Rings at 0..0x8000; headers and status bytes in the next page; data above.
const HDR: u64 = 0x8000;
const STATUS: u64 = 0x8800;
const DATA: u64 = 0x1_0000;
const QUEUE_SIZES: [u16; 4] = [256, 16, 2, 1];

/// An unlinked image kept open; the device reaches it through /proc/self/fd.
struct Image {
    file: File,
    contents: Vec<u8>,
}

impl Image {
    fn new(name: &str) -> Image {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!("vmm-fuzz-block-{}-{name}.img", std::process::id()));
        let contents: Vec<u8> = (0..DISK_BYTES).map(|i| (i * 31 + i / 512) as u8).collect();
        std::fs::write(&path, &contents).expect("write image");
        let file = File::open(&path).expect("open image");
        std::fs::remove_file(&path).expect("unlink image");
        Image { file, contents }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    fn read_all(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(DISK_BYTES);
        File::open(self.path())
            .and_then(|mut f| f.read_to_end(&mut v))
            .expect("read image");
        v
    }
}

fn images() -> &'static (Image, Image) {
    static IMAGES: OnceLock<(Image, Image)> = OnceLock::new();
    IMAGES.get_or_init(|| (Image::new("rw"), Image::new("ro")))
}

/// A buffer address: mostly in the data area, sometimes at the edge of or outside guest memory.
fn addr(c: &mut Cursor) -> u64 {
    match c.byte() % 8 {
        0 => MEM_BYTES - u64::from(c.byte()),
        1 => MEM_BYTES + u64::from(c.byte()) * 0x100,
        2 => c.u64(),
        3 => HDR + u64::from(c.byte()),
        _ => DATA + u64::from(c.byte()) * 0x200,
    }
}

fn len(c: &mut Cursor) -> u32 {
    match c.byte() % 4 {
        0 => u32::from(c.byte()),
        1 => u32::from(c.byte() % 129) * 512,
        2 => c.u64() as u32,
        _ => 512 * u32::from(c.byte() % 9),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor(data);
    let setup = c.byte();
    let read_only = setup & 1 != 0;
    let (rw, ro) = images();
    let image = if read_only { ro } else { rw };
    let mut block = Block::new(BlockConfig {
        path: image.path(),
        read_only,
        id: None,
    })
    .expect("open image");
    assert_eq!(block.capacity_sectors(), (DISK_BYTES / 512) as u64);

    let mut acked = features::VERSION_1;
    if setup & 2 != 0 {
        acked |= features::RING_EVENT_IDX;
    }
    let mem = test_memory(MEM_BYTES as usize);
    let mut tq = TestQueue::new(0, QUEUE_SIZES[usize::from(setup >> 2) % 4]);
    activate(&mut block, &mem, [&tq], acked).expect("activate with one queue");

    let mut ops = 0;
    while !c.is_empty() && ops < 64 {
        ops += 1;
        match c.byte() % 8 {
            0 => {
                let slot = u64::from(c.byte() % 8);
                let request_type = match c.byte() % 6 {
                    0 | 5 => 0u32, // IN
                    1 => 1,        // OUT
                    2 => 4,        // FLUSH
                    3 => 8,        // GET_ID
                    _ => c.u64() as u32,
                };
                let sector = if c.byte() & 1 == 0 {
                    u64::from(c.byte()) | u64::from(c.byte()) << 8
                } else {
                    c.u64()
                };
                let hdr = HDR + 0x10 * slot;
                let _ = mem.write_obj(request_type.to_le(), GuestAddress(hdr));
                let _ = mem.write_obj(0u32, GuestAddress(hdr + 4));
                let _ = mem.write_obj(sector.to_le(), GuestAddress(hdr + 8));
                let mut chain = vec![(hdr, 16, false)];
                for _ in 0..c.byte() % 5 {
                    let writable = c.byte() & 1 != 0;
                    chain.push((addr(&mut c), len(&mut c), writable));
                }
                let status = match c.byte() % 8 {
                    0 => (STATUS + slot, 1, false),
                    1 => (addr(&mut c), len(&mut c), true),
                    _ => (STATUS + slot, 1, true),
                };
                chain.push(status);
                tq.add_chain(&mem, &chain);
            }
            1 => {
                let index = u16::from(c.byte());
                let (a, l) = (addr(&mut c), len(&mut c));
                let flags = u16::from(c.byte() % 8);
                let next = u16::from(c.byte());
                tq.write_desc(&mem, index, a, l, flags, next);
            }
            2 => {
                let head = u16::from(c.byte()) | if c.byte() & 0x80 != 0 { 0x100 } else { 0 };
                tq.push_avail(&mem, head);
            }
            3 => {
                // An Err means DEVICE_NEEDS_RESET at the transport: allowed, never a panic.
                let _ = block.process_queue(usize::from(c.byte() % 2));
            }
            4 => {
                let at = u64::from(c.byte()) | u64::from(c.byte()) << 8;
                let n = usize::from(c.byte() % 16);
                let bytes = c.bytes(n);
                let _ = mem.write_slice(&bytes, GuestAddress(at));
            }
            5 => {
                block.reset();
                assert!(!block.is_activated());
                tq = TestQueue::new(0, tq.size);
                activate(&mut block, &mem, [&tq], acked).expect("activate with one queue");
            }
            6 => {
                let state = block.save_state();
                block.restore_state(&state).expect("restore own state");
                assert_eq!(block.save_state(), state);
            }
            _ => {
                let offset = u64::from(c.byte());
                let mut buf = vec![0u8; usize::from(c.byte() % 16)];
                block.read_config(offset, &mut buf);
            }
        }
    }
    let _ = block.process_queue(0);

    let size = image.file.metadata().expect("stat image").len();
    assert_eq!(size, DISK_BYTES as u64, "the image changed size");
    if read_only {
        assert!(
            image.read_all() == image.contents,
            "a read-only image changed"
        );
    }
});
