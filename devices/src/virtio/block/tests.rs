use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vmm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::HEADER_LEN;
use super::*;
use vmm_disk::default_id;

use crate::virtio::test_utils::{
    activate, test_memory, wait_readable, TestQueue, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE,
};
use crate::virtio::{
    device_type, features, interrupt_bits, VirtioDevice, VirtioDeviceState, VirtioError,
    VirtioInterrupt,
};
use crate::EventFd;
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::epoll::EventSet;

/// The device on the VMM's memory type (dirty bitmap included).
type Block<B = RawFile> = super::Block<GuestMemoryMmap, B>;

const MEM_SIZE: usize = 0x10_0000;
/// Request headers and status bytes: slot `n` has its header at `HDR + 0x100 * n` and its
/// status at `+ 0x80`.
const HDR: u64 = 0x1_0000;
/// Data buffers.
const DATA: u64 = 0x2_0000;
/// Guest memory past this address does not exist.
const OUTSIDE: u64 = MEM_SIZE as u64;

/// An image under the temp dir, removed on drop.
struct TempImage(PathBuf);

impl TempImage {
    fn new(contents: &[u8]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "vmm-devices-block-test-{}-{n}.img",
            std::process::id()
        ));
        std::fs::write(&path, contents).unwrap();
        TempImage(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 512) as u8)
        .collect()
}

fn config(image: &TempImage, read_only: bool, id: Option<&str>) -> BlockConfig {
    BlockConfig {
        path: image.path().to_path_buf(),
        read_only,
        id: id.map(str::to_string),
    }
}

/// An activated device over an image, its guest memory, queue and interrupt line.
struct Rig {
    block: Block,
    mem: GuestMemoryMmap,
    tq: TestQueue,
    irq: EventFd,
    interrupt: VirtioInterrupt,
    image: TempImage,
}

fn rig_with(contents: &[u8], read_only: bool, id: Option<&str>, acked: u64) -> Rig {
    let image = TempImage::new(contents);
    let mut block = Block::new(config(&image, read_only, id)).unwrap();
    let mem = test_memory(MEM_SIZE);
    let tq = TestQueue::new(0, QUEUE_SIZE);
    let acked = block.device_features() & acked;
    let (interrupt, irq) = activate(&mut block, &mem, [&tq], acked).unwrap();
    Rig {
        block,
        mem,
        tq,
        irq,
        interrupt,
        image,
    }
}

fn rig(contents: &[u8]) -> Rig {
    rig_with(contents, false, None, features::VERSION_1)
}

fn hdr(slot: u64) -> u64 {
    HDR + 0x100 * slot
}

fn status_addr(slot: u64) -> u64 {
    hdr(slot) + 0x80
}

impl Rig {
    /// Writes the header of `slot` and poisons its status byte.
    fn header(&self, slot: u64, request_type: u32, sector: u64) {
        let at = hdr(slot);
        self.mem
            .write_obj(request_type.to_le(), GuestAddress(at))
            .unwrap();
        self.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        self.mem
            .write_obj(sector.to_le(), GuestAddress(at + 8))
            .unwrap();
        self.mem
            .write_obj(0xeeu8, GuestAddress(status_addr(slot)))
            .unwrap();
    }

    /// A well-formed chain: header of `slot`, `data`, the status byte of `slot`.
    fn request_in(
        &mut self,
        slot: u64,
        request_type: u32,
        sector: u64,
        data: &[(u64, u32, bool)],
    ) -> u16 {
        self.header(slot, request_type, sector);
        let mut chain = vec![(hdr(slot), HEADER_LEN as u32, false)];
        chain.extend_from_slice(data);
        chain.push((status_addr(slot), 1, true));
        self.tq.add_chain(&self.mem, &chain)
    }

    fn request(&mut self, request_type: u32, sector: u64, data: &[(u64, u32, bool)]) -> u16 {
        self.request_in(0, request_type, sector, data)
    }

    fn run(&mut self) {
        self.block.process_queue(0).unwrap();
    }

    fn status_of(&self, slot: u64) -> u8 {
        self.mem.read_obj(GuestAddress(status_addr(slot))).unwrap()
    }

    fn status(&self) -> u8 {
        self.status_of(0)
    }

    /// The last used element: (head, len).
    fn last_used(&self) -> (u32, u32) {
        let idx = self.tq.used_idx(&self.mem);
        assert_ne!(idx, 0, "nothing was used");
        self.tq.used_elem(&self.mem, idx.wrapping_sub(1))
    }

    fn read_guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn interrupts(&self) -> u64 {
        match self.irq.read() {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("irq read: {e}"),
        }
    }
}

const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn read_two_sectors_into_two_buffers() {
    let disk = pattern(8 * 512);
    let mut r = rig(&disk);
    let head = r.request(
        VIRTIO_BLK_T_IN,
        3,
        &[(DATA, 512, true), (DATA + 0x1000, 512, true)],
    );
    r.run();
    assert_eq!(r.status(), S_OK);
    assert_eq!(r.last_used(), (u32::from(head), 1025));
    assert_eq!(r.read_guest(DATA, 512), disk[3 * 512..4 * 512]);
    assert_eq!(r.read_guest(DATA + 0x1000, 512), disk[4 * 512..5 * 512]);
    assert_eq!(r.interrupts(), 1);
    assert_eq!(r.interrupt.status() & interrupt_bits::USED_BUFFER, 1);
}

#[test]
fn write_lands_in_the_file_and_reads_back() {
    let mut r = rig(&vec![0u8; 16 * 512]);
    let data = pattern(1024);
    r.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    r.request(VIRTIO_BLK_T_OUT, 5, &[(DATA, 1024, false)]);
    r.run();
    assert_eq!(r.status(), S_OK);
    assert_eq!(r.last_used().1, 1, "a write only writes the status byte");
    let file = r.image.contents();
    assert_eq!(file.len(), 16 * 512, "never grown");
    assert_eq!(file[5 * 512..7 * 512], data[..]);
    assert!(file[..5 * 512]
        .iter()
        .chain(&file[7 * 512..])
        .all(|&b| b == 0));

    r.request(VIRTIO_BLK_T_IN, 5, &[(DATA + 0x4000, 1024, true)]);
    r.run();
    assert_eq!(r.status(), S_OK);
    assert_eq!(r.read_guest(DATA + 0x4000, 1024), data);
}

#[test]
fn header_split_and_status_sharing_the_data_descriptor() {
    let disk = pattern(4 * 512);
    let mut r = rig(&disk);
    r.header(0, VIRTIO_BLK_T_IN, 1);
    // Header in two pieces; data and status in one writable descriptor of 513 bytes.
    let head = r.tq.add_chain(
        &r.mem,
        &[
            (hdr(0), 6, false),
            (hdr(0) + 6, 10, false),
            (DATA, 513, true),
        ],
    );
    r.run();
    assert_eq!(r.last_used(), (u32::from(head), 513));
    assert_eq!(r.read_guest(DATA, 512), disk[512..1024]);
    assert_eq!(r.read_guest(DATA + 512, 1), [S_OK]);
}

#[test]
fn large_read_across_many_descriptors() {
    let disk = pattern(256 * 512);
    let mut r = rig(&disk);
    // 40 segments, more than one preadv batch, 64 KiB at an odd-numbered sector.
    let segs: Vec<_> = (0..40u64)
        .map(|i| (DATA + i * 0x800, 512 * 3, true))
        .collect();
    r.request(VIRTIO_BLK_T_IN, 17, &segs);
    r.run();
    assert_eq!(r.status(), S_OK);
    assert_eq!(r.last_used().1, 40 * 1536 + 1);
    for i in 0..40usize {
        let want = &disk[(17 + 3 * i) * 512..(20 + 3 * i) * 512];
        assert_eq!(
            r.read_guest(DATA + i as u64 * 0x800, 1536),
            want,
            "segment {i}"
        );
    }
}

#[test]
fn flush_succeeds() {
    let mut r = rig(&[0u8; 1024]);
    let head = r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.run();
    assert_eq!(r.status(), S_OK);
    assert_eq!(r.last_used(), (u32::from(head), 1));
}

#[test]
fn get_id_custom_default_and_short_buffer() {
    let mut r = rig_with(&[0u8; 512], false, Some("serial-42"), 0);
    r.mem.write_slice(&[0xaa; 32], GuestAddress(DATA)).unwrap();
    r.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 32, true)]);
    r.run();
    assert_eq!(r.status(), S_OK);
    assert_eq!(r.last_used().1, 21);
    let mut want = b"serial-42".to_vec();
    want.resize(20, 0);
    want.extend_from_slice(&[0xaa; 12]);
    assert_eq!(
        r.read_guest(DATA, 32),
        want,
        "20 bytes, NUL-padded, no more"
    );

    r.mem.write_slice(&[0xaa; 8], GuestAddress(DATA)).unwrap();
    r.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 4, true)]);
    r.run();
    assert_eq!(r.status(), S_OK);
    assert_eq!(r.last_used().1, 5);
    assert_eq!(r.read_guest(DATA, 8), b"seri\xaa\xaa\xaa\xaa");

    let mut r = rig(&[0u8; 512]);
    r.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, true)]);
    r.run();
    assert_eq!(r.status(), S_OK);
    let meta = std::fs::metadata(r.image.path()).unwrap();
    let id = r.read_guest(DATA, 20);
    assert_eq!(id, default_id(meta.dev(), meta.ino()));
    let text = format!("{:x}-{:x}", meta.dev(), meta.ino());
    assert!(id.starts_with(text.as_bytes()) || text.len() > 20);
}

#[test]
fn default_id_keeps_the_tail_when_long() {
    let id = default_id(u64::MAX, 0x1234);
    assert_eq!(&id, b"fffffffffffffff-1234", "21 bytes: the first f goes");
    let id = default_id(u64::MAX, u64::MAX);
    let full = format!("{:x}-{:x}", u64::MAX, u64::MAX);
    assert_eq!(&id[..], &full.as_bytes()[full.len() - 20..]);
    assert_eq!(&default_id(0x803, 0x1c)[..6], b"803-1c");
}

#[test]
fn read_only_disk_offers_ro_and_refuses_writes() {
    let disk = pattern(4 * 512);
    let mut r = rig_with(&disk, true, None, 0);
    assert_ne!(r.block.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
    r.mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
    r.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, false)]);
    r.run();
    assert_eq!(r.status(), S_IOERR);
    assert_eq!(r.last_used().1, 1);
    assert_eq!(r.image.contents(), disk);

    r.request(VIRTIO_BLK_T_IN, 2, &[(DATA, 512, true)]);
    r.run();
    assert_eq!(r.status(), S_OK);
    assert_eq!(r.read_guest(DATA, 512), disk[1024..1536]);
    r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.run();
    assert_eq!(r.status(), S_OK);

    let rw = rig(&disk);
    assert_eq!(rw.block.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn features_and_config_space() {
    let r = rig(&vec![0u8; 3 * 512 + 100]);
    let f = r.block.device_features();
    for bit in [features::VERSION_1, features::RING_EVENT_IDX] {
        assert_ne!(f & bit, 0);
    }
    assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_ne!(f & (1 << VIRTIO_BLK_F_SEG_MAX), 0);
    assert_eq!(f & features::RING_INDIRECT_DESC, 0);
    assert_eq!(
        r.block.capacity_sectors(),
        3,
        "the partial sector is not exposed"
    );
    assert_eq!(r.block.device_type(), device_type::BLOCK);
    assert_eq!(r.block.queue_max_sizes(), &[256]);

    let mut cap = [0u8; 8];
    r.block.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 3);
    let mut word = [0xffu8; 4];
    r.block.read_config(8, &mut word);
    assert_eq!(u32::from_le_bytes(word), 0, "size_max");
    r.block.read_config(12, &mut word);
    assert_eq!(u32::from_le_bytes(word), 254, "seg_max");
    // Discard limits (read by a driver only with VIRTIO_BLK_F_DISCARD, offered here: a raw
    // regular file punches holes).
    assert_ne!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    r.block.read_config(36, &mut word);
    assert_eq!(
        u32::from_le_bytes(word),
        MAX_DISCARD_SECTORS,
        "max_discard_sectors"
    );
    r.block.read_config(40, &mut word);
    assert_eq!(u32::from_le_bytes(word), MAX_DISCARD_SEG, "max_discard_seg");
    r.block.read_config(44, &mut word);
    assert_eq!(u32::from_le_bytes(word), 8, "discard_sector_alignment");
    let mut rest = [0xffu8; 96 - 16];
    r.block.read_config(16, &mut rest);
    rest[36 - 16..48 - 16].fill(0);
    assert!(rest.iter().all(|&b| b == 0));
    r.block.read_config(1 << 40, &mut word);
    assert_eq!(word, [0; 4]);
    assert_eq!(r.block.backend().path(), r.image.path());
}

#[test]
fn out_of_range_and_overflowing_sectors_fail() {
    let disk = pattern(8 * 512);
    let mut r = rig(&disk);
    for (sector, len) in [
        (8, 512),                  // starts at the end
        (7, 1024),                 // runs past the end
        (u64::MAX, 512),           // sector * 512 overflows
        (u64::MAX / 512, 512),     // offset + length overflows
        ((u64::MAX / 512) - 1, 0), // far past the end, no data
    ] {
        r.request(VIRTIO_BLK_T_IN, sector, &[(DATA, len, true)]);
        r.request_in(1, VIRTIO_BLK_T_OUT, sector, &[(DATA, len, false)]);
        r.run();
        assert_eq!(r.status(), S_IOERR, "IN sector {sector} len {len}");
        assert_eq!(r.status_of(1), S_IOERR, "OUT sector {sector} len {len}");
        assert_eq!(r.last_used().1, 1);
    }
    // The last sector itself is fine.
    r.request(VIRTIO_BLK_T_IN, 7, &[(DATA, 512, true)]);
    r.run();
    assert_eq!(r.status(), S_OK);
    assert_eq!(r.image.contents(), disk);
}

#[test]
fn length_not_whole_sectors_fails() {
    let disk = pattern(8 * 512);
    let mut r = rig(&disk);
    r.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 511, true)]);
    r.request_in(
        1,
        VIRTIO_BLK_T_OUT,
        0,
        &[(DATA, 512, false), (DATA, 100, false)],
    );
    r.run();
    assert_eq!(r.status(), S_IOERR);
    assert_eq!(r.status_of(1), S_IOERR);
    assert_eq!(r.image.contents(), disk);
}

#[test]
fn unknown_type_is_unsupported() {
    let mut r = rig(&[0u8; 512]);
    // 11 (discard) is known: see the discard tests.
    for t in [2u32, 13, 0x8000_0000, u32::MAX] {
        r.request(t, 0, &[(DATA, 512, true)]);
        r.run();
        assert_eq!(r.status(), S_UNSUPP, "type {t}");
        assert_eq!(r.last_used().1, 1);
    }
}

#[test]
fn chain_without_usable_status_is_returned_untouched() {
    let disk = pattern(2 * 512);
    let mut r = rig(&disk);
    // Status descriptor read-only.
    r.header(0, VIRTIO_BLK_T_IN, 0);
    let head = r.tq.add_chain(
        &r.mem,
        &[
            (hdr(0), 16, false),
            (DATA, 512, true),
            (status_addr(0), 1, false),
        ],
    );
    r.run();
    assert_eq!(r.last_used(), (u32::from(head), 0));
    assert_eq!(r.status(), 0xee);
    // No status at all: header and data only.
    r.mem.write_slice(&[0x11; 512], GuestAddress(DATA)).unwrap();
    let head =
        r.tq.add_chain(&r.mem, &[(hdr(0), 16, false), (DATA, 512, false)]);
    r.run();
    assert_eq!(r.last_used(), (u32::from(head), 0));
    // Zero-length status descriptor, and one outside guest memory.
    for (addr, len) in [(status_addr(0), 0), (OUTSIDE + 0x1000, 1), (u64::MAX, 1)] {
        let head =
            r.tq.add_chain(&r.mem, &[(hdr(0), 16, false), (addr, len, true)]);
        r.run();
        assert_eq!(r.last_used(), (u32::from(head), 0), "status at {addr:#x}");
    }
    assert_eq!(r.status(), 0xee);
    assert_eq!(
        r.read_guest(DATA, 512),
        [0x11; 512],
        "nothing read into the chain"
    );
    // A read-only status descriptor on a write: the disk is untouched too.
    r.mem.write_slice(&[0x22; 512], GuestAddress(DATA)).unwrap();
    r.header(0, VIRTIO_BLK_T_OUT, 0);
    r.tq.add_chain(
        &r.mem,
        &[
            (hdr(0), 16, false),
            (DATA, 512, false),
            (status_addr(0), 1, false),
        ],
    );
    r.run();
    assert_eq!(r.last_used().1, 0);
    assert_eq!(r.image.contents(), disk);
}

#[test]
fn data_outside_guest_memory_fails() {
    let disk = pattern(4 * 512);
    let mut r = rig(&disk);
    for addr in [OUTSIDE, OUTSIDE - 256, u64::MAX - 100] {
        r.request(VIRTIO_BLK_T_IN, 0, &[(addr, 512, true)]);
        r.request_in(1, VIRTIO_BLK_T_OUT, 0, &[(addr, 512, false)]);
        r.run();
        assert_eq!(r.status(), S_IOERR, "IN at {addr:#x}");
        assert_eq!(r.status_of(1), S_IOERR, "OUT at {addr:#x}");
        assert_eq!(r.last_used().1, 1);
    }
    // The header outside guest memory.
    r.mem
        .write_obj(0xeeu8, GuestAddress(status_addr(0)))
        .unwrap();
    r.tq.add_chain(&r.mem, &[(OUTSIDE, 16, false), (status_addr(0), 1, true)]);
    r.run();
    assert_eq!(r.status(), S_IOERR);
    // A header shorter than 16 bytes.
    r.header(0, VIRTIO_BLK_T_FLUSH, 0);
    r.tq.add_chain(&r.mem, &[(hdr(0), 8, false), (status_addr(0), 1, true)]);
    r.run();
    assert_eq!(r.status(), S_IOERR);
    assert_eq!(r.image.contents(), disk);
}

#[test]
fn descriptor_loop_terminates_and_the_queue_goes_on() {
    let disk = pattern(2 * 512);
    let mut r = rig(&disk);
    r.header(0, VIRTIO_BLK_T_IN, 0);
    // 200 -> 201 -> 200 ...: readable descriptors forever.
    r.tq.write_desc(&r.mem, 200, hdr(0), 16, DESC_F_NEXT, 201);
    r.tq.write_desc(&r.mem, 201, DATA, 512, DESC_F_NEXT, 200);
    r.tq.push_avail(&r.mem, 200);
    // 210 -> 211 -> 210: a writable loop, so the chain ends on a usable "status".
    r.tq.write_desc(&r.mem, 210, hdr(0), 16, DESC_F_NEXT, 211);
    r.tq.write_desc(
        &r.mem,
        211,
        status_addr(0),
        1,
        DESC_F_NEXT | DESC_F_WRITE,
        210,
    );
    r.tq.push_avail(&r.mem, 210);
    r.run();
    assert_eq!(r.tq.used_idx(&r.mem), 2);
    assert_eq!(r.tq.used_elem(&r.mem, 0), (200, 0));
    assert_eq!(r.tq.used_elem(&r.mem, 1), (210, 1));
    assert_eq!(r.status(), S_IOERR, "readable after writable");

    let head = r.request(VIRTIO_BLK_T_IN, 1, &[(DATA, 512, true)]);
    r.run();
    assert_eq!(r.last_used(), (u32::from(head), 513));
    assert_eq!(r.read_guest(DATA, 512), disk[512..]);
}

#[test]
fn head_index_past_the_queue_is_dropped() {
    let mut r = rig(&[0u8; 512]);
    r.tq.push_avail(&r.mem, 300);
    r.tq.push_avail(&r.mem, u16::MAX);
    r.run();
    assert_eq!(r.tq.used_idx(&r.mem), 0);
    r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.run();
    assert_eq!(r.tq.used_idx(&r.mem), 1);
    assert_eq!(r.status(), S_OK);
}

#[test]
fn avail_index_too_far_ahead_is_fatal() {
    let mut r = rig(&[0u8; 512]);
    r.mem
        .write_obj(300u16.to_le(), GuestAddress(r.tq.avail + 2))
        .unwrap();
    assert!(matches!(
        r.block.process_queue(0),
        Err(VirtioError::Queue(
            virtio_queue::Error::InvalidAvailRingIndex
        ))
    ));
}

#[test]
fn wrong_directions_fail() {
    let disk = pattern(4 * 512);
    let mut r = rig(&disk);
    // OUT whose data descriptor is device-writable.
    r.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, true)]);
    // IN whose data descriptor is device-readable.
    r.request_in(1, VIRTIO_BLK_T_IN, 0, &[(DATA + 0x1000, 512, false)]);
    r.mem
        .write_slice(&[0x77; 512], GuestAddress(DATA + 0x1000))
        .unwrap();
    r.run();
    assert_eq!(r.status(), S_IOERR);
    assert_eq!(r.status_of(1), S_IOERR);
    assert_eq!(r.read_guest(DATA + 0x1000, 512), [0x77; 512]);
    // A readable descriptor after a writable one.
    r.request(
        VIRTIO_BLK_T_IN,
        0,
        &[(DATA, 512, true), (DATA + 0x1000, 512, false)],
    );
    r.run();
    assert_eq!(r.status(), S_IOERR);
    // The header in a writable descriptor.
    r.header(0, VIRTIO_BLK_T_IN, 0);
    r.tq.add_chain(&r.mem, &[(hdr(0), 16, true), (status_addr(0), 1, true)]);
    r.run();
    assert_eq!(r.status(), S_IOERR);
    assert_eq!(r.image.contents(), disk);
}

#[test]
fn indirect_chain_longer_than_the_queue_fails() {
    let mut r = rig(&pattern(2 * 512));
    r.header(0, VIRTIO_BLK_T_IN, 0);
    let table = 0x8_0000u64;
    let n = 300u16;
    let at = |i: u16| GuestAddress(table + 16 * u64::from(i));
    for i in 0..n {
        let (addr, len, flags) = match i {
            0 => (hdr(0), 16, DESC_F_NEXT),
            _ if i == n - 1 => (status_addr(0), 1, DESC_F_WRITE),
            _ => (DATA, 0, DESC_F_NEXT | DESC_F_WRITE),
        };
        r.mem.write_obj(addr, at(i)).unwrap();
        r.mem
            .write_obj(len as u32, GuestAddress(at(i).0 + 8))
            .unwrap();
        r.mem.write_obj(flags, GuestAddress(at(i).0 + 12)).unwrap();
        r.mem.write_obj(i + 1, GuestAddress(at(i).0 + 14)).unwrap();
    }
    r.tq.write_desc(&r.mem, 100, table, 16 * u32::from(n), DESC_F_INDIRECT, 0);
    r.tq.push_avail(&r.mem, 100);
    r.run();
    assert_eq!(r.last_used(), (100, 1));
    assert_eq!(r.status(), S_IOERR);
}

#[test]
fn event_idx_suppresses_and_raises_interrupts() {
    let disk = pattern(8 * 512);
    let mut r = rig_with(
        &disk,
        false,
        None,
        features::VERSION_1 | features::RING_EVENT_IDX,
    );
    let used_event = GuestAddress(r.tq.avail + 4 + 2 * u64::from(QUEUE_SIZE));
    let avail_event = GuestAddress(r.tq.used + 4 + 8 * u64::from(QUEUE_SIZE));
    let set_used_event = |r: &Rig, v: u16| r.mem.write_obj(v.to_le(), used_event).unwrap();

    // used_event 0: the first used buffer interrupts.
    set_used_event(&r, 0);
    r.request_in(0, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]);
    r.run();
    assert_eq!(r.interrupts(), 1);
    assert_eq!(r.interrupt.status() & interrupt_bits::USED_BUFFER, 1);
    r.interrupt.acknowledge(interrupt_bits::USED_BUFFER);

    // The driver wants to hear at used index 10: three requests stay silent.
    set_used_event(&r, 10);
    for slot in 0..3 {
        r.request_in(
            slot,
            VIRTIO_BLK_T_IN,
            slot,
            &[(DATA + 0x1000 * slot, 512, true)],
        );
    }
    r.run();
    assert_eq!(r.tq.used_idx(&r.mem), 4);
    assert_eq!(r.interrupts(), 0);
    assert_eq!(r.interrupt.status(), 0);
    for slot in 0..3 {
        assert_eq!(r.status_of(slot), S_OK);
        let want = &disk[slot as usize * 512..(slot as usize + 1) * 512];
        assert_eq!(r.read_guest(DATA + 0x1000 * slot, 512), want);
    }
    // The device asks to be kicked at the next available index.
    assert_eq!(u16::from_le(r.mem.read_obj(avail_event).unwrap()), 4);

    // used_event 5 is crossed by the next two: one interrupt for both.
    set_used_event(&r, 5);
    r.request_in(0, VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.request_in(1, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, true)]);
    r.run();
    assert_eq!(r.tq.used_idx(&r.mem), 6);
    assert_eq!(r.interrupts(), 1);
    assert_eq!(r.status_of(0), S_OK);
    assert_eq!(r.status_of(1), S_OK);

    // A notify with nothing available raises nothing.
    r.run();
    assert_eq!(r.interrupts(), 0);
}

#[test]
fn without_event_idx_every_batch_interrupts() {
    let mut r = rig(&[0u8; 2048]);
    r.request_in(0, VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.request_in(1, VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.run();
    assert_eq!(r.interrupts(), 1);
    r.run();
    assert_eq!(r.interrupts(), 0);
}

#[test]
fn open_errors_name_the_problem() {
    let missing = std::env::temp_dir().join(format!(
        "vmm-devices-block-test-{}-missing.img",
        std::process::id()
    ));
    let cfg = |path: &Path, id: Option<&str>| BlockConfig {
        path: path.to_path_buf(),
        read_only: false,
        id: id.map(str::to_string),
    };
    let e = Block::new(cfg(&missing, None)).unwrap_err();
    assert!(
        matches!(&e, BlockError::Disk(vmm_disk::DiskError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound)
    );
    assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
    assert!(!missing.exists(), "never created");

    let dir = std::env::temp_dir();
    let e = Block::new(BlockConfig {
        read_only: true,
        ..cfg(&dir, None)
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            BlockError::Disk(vmm_disk::DiskError::NotFileOrBlockDevice { .. })
        ),
        "{e}"
    );
    // Opening a directory for writing fails in open(2) already.
    let e = Block::new(cfg(&dir, None)).unwrap_err();
    assert!(matches!(
        e,
        BlockError::Disk(
            vmm_disk::DiskError::Open { .. } | vmm_disk::DiskError::NotFileOrBlockDevice { .. }
        )
    ));

    // Shorter than a sector: an empty disk, not an error.
    let image = TempImage::new(&[0u8; 511]);
    assert_eq!(
        Block::new(cfg(image.path(), None))
            .unwrap()
            .capacity_sectors(),
        0
    );

    let image = TempImage::new(&[0u8; 512]);
    let long = "x".repeat(21);
    let e = Block::new(cfg(image.path(), Some(&long))).unwrap_err();
    assert!(matches!(e, BlockError::IdTooLong { len: 21, .. }), "{e}");
    assert!(Block::new(cfg(image.path(), Some(&"x".repeat(20)))).is_ok());
}

#[test]
fn open_never_truncates() {
    let disk = pattern(3 * 512 + 7);
    let image = TempImage::new(&disk);
    let block = Block::new(config(&image, false, None)).unwrap();
    assert_eq!(block.capacity_sectors(), 3);
    drop(block);
    assert_eq!(image.contents(), disk);
}

#[test]
fn activation_needs_one_queue_and_reset_deactivates() {
    let image = TempImage::new(&[0u8; 512]);
    let mut block = Block::new(config(&image, false, None)).unwrap();
    let mem = test_memory(MEM_SIZE);
    let tq = TestQueue::new(0, QUEUE_SIZE);
    for n in [0, 2] {
        let e = activate(&mut block, &mem, vec![&tq; n], features::VERSION_1).unwrap_err();
        assert!(matches!(e, VirtioError::QueueCount { expected: 1, got } if got == n));
        assert!(!block.is_activated());
    }
    assert!(
        block.process_queue(0).is_ok(),
        "a notify before activation is ignored"
    );
    activate(&mut block, &mem, [&tq], features::VERSION_1).unwrap();
    assert!(block.is_activated());
    assert!(block.process_queue(7).is_ok());
    block.reset();
    assert!(!block.is_activated());
}

#[test]
fn state_round_trip_and_mismatch() {
    let image = TempImage::new(&[0u8; 4 * 512]);
    let block = Block::new(config(&image, false, Some("disk-a"))).unwrap();
    let state = block.save_state();
    assert_eq!(
        state,
        VirtioDeviceState::new(
            "virtio-blk",
            &BlockState {
                capacity_sectors: 4,
                read_only: false,
                id: "disk-a".to_string(),
            }
        )
        .unwrap()
    );
    let json = serde_json::to_string(&state).unwrap();
    let back: VirtioDeviceState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);

    // The same image opened again (default id this time) adopts the saved id.
    let mut restored = Block::new(config(&image, false, None)).unwrap();
    restored.restore_state(&back).unwrap();
    assert_eq!(restored.save_state(), state);

    let mut ro = Block::new(config(&image, true, None)).unwrap();
    assert!(matches!(
        ro.restore_state(&state),
        Err(VirtioError::StateMismatch(_))
    ));
    let bigger = TempImage::new(&[0u8; 5 * 512]);
    let mut other = Block::new(config(&bigger, false, None)).unwrap();
    let e = other.restore_state(&state).unwrap_err();
    assert!(e.to_string().contains("5 sectors"), "{e}");
    let long = VirtioDeviceState::new(
        "virtio-blk",
        &BlockState {
            id: "y".repeat(21),
            capacity_sectors: 4,
            read_only: false,
        },
    )
    .unwrap();
    assert!(matches!(
        restored.restore_state(&long),
        Err(VirtioError::StateMismatch(_))
    ));
    let rng =
        VirtioDeviceState::new("virtio-rng", &crate::virtio::rng::RngState::default()).unwrap();
    assert!(matches!(
        restored.restore_state(&rng),
        Err(VirtioError::StateMismatch(_))
    ));
}

#[test]
fn state_saved_by_earlier_versions_still_loads() {
    // Earlier versions wrote the device state as a closed enum; it still loads, and is saved
    // again in the open form (kind + the device's own state) with the same fields.
    let json = r#"{"Block":{"capacity_sectors":4,"read_only":false,"id":"disk-a"}}"#;
    let state: VirtioDeviceState = serde_json::from_str(json).unwrap();
    let image = TempImage::new(&[0u8; 4 * 512]);
    let mut block = Block::new(config(&image, false, None)).unwrap();
    block.restore_state(&state).unwrap();
    assert_eq!(
        serde_json::to_string(&block.save_state()).unwrap(),
        r#"{"kind":"virtio-blk","state":{"capacity_sectors":4,"id":"disk-a","read_only":false}}"#
    );
}

/// A disk in host memory, through the copying half of [`GuestBuffers`] (as an image format
/// that decompresses or zero-fills would be), with a switch to make its I/O fail half-way.
struct MemDisk {
    bytes: Vec<u8>,
    read_only: bool,
    fail_after: Option<u64>,
    flushes: u32,
    /// Whether it says it can discard; `discard_fails` makes every discard fail.
    can_discard: bool,
    discard_fails: bool,
    /// The (offset, len) of every discard it was asked for.
    discards: Vec<(u64, u64)>,
    /// What `seal_for_snapshot` returns.
    seal: Option<vmm_disk::DiskSeal>,
    /// What `commit_interval` returns.
    commit_interval: Option<std::time::Duration>,
}

impl MemDisk {
    fn new(bytes: Vec<u8>) -> Self {
        MemDisk {
            bytes,
            read_only: false,
            fail_after: None,
            flushes: 0,
            can_discard: false,
            discard_fails: false,
            discards: Vec::new(),
            seal: None,
            commit_interval: None,
        }
    }

    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        offset as usize..(offset + len) as usize
    }
}

impl<M: GuestMemoryBackend> DiskImage<M> for MemDisk {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, offset: u64, bufs: &GuestBuffers<'_, M>) -> Result<(), DiskIoError> {
        let len = self.fail_after.unwrap_or(bufs.len()).min(bufs.len());
        bufs.write_from(0, &self.bytes[self.range(offset, len)])?;
        match self.fail_after {
            Some(done) => Err(DiskIoError::Io {
                done,
                source: io::ErrorKind::UnexpectedEof.into(),
            }),
            None => Ok(()),
        }
    }

    fn write_at(&mut self, offset: u64, bufs: &GuestBuffers<'_, M>) -> Result<(), DiskIoError> {
        let range = self.range(offset, bufs.len());
        bufs.read_into(0, &mut self.bytes[range])
    }

    fn flush(&mut self) -> Result<(), DiskIoError> {
        self.flushes += 1;
        Ok(())
    }

    fn can_discard(&self) -> bool {
        self.can_discard
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskIoError> {
        if self.discard_fails {
            return Err(DiskIoError::Io {
                done: 0,
                source: io::ErrorKind::Other.into(),
            });
        }
        self.discards.push((offset, len));
        let range = self.range(offset, len);
        self.bytes[range].fill(0);
        Ok(())
    }

    fn seal_for_snapshot(&mut self) -> Result<Option<vmm_disk::DiskSeal>, DiskIoError> {
        Ok(self.seal.clone())
    }

    fn commit_interval(&self) -> Option<std::time::Duration> {
        self.commit_interval
    }
}

/// A device on `backend`, activated on a queue.
fn backend_rig<B: DiskImage<GuestMemoryMmap> + 'static>(
    backend: B,
    id: Option<&str>,
) -> (Block<B>, GuestMemoryMmap, TestQueue) {
    let mut block = Block::with_backend(backend, id).unwrap();
    let mem = test_memory(MEM_SIZE);
    let tq = TestQueue::new(0, QUEUE_SIZE);
    activate(&mut block, &mem, [&tq], features::VERSION_1).unwrap();
    (block, mem, tq)
}

/// Submits a request with one data buffer at DATA and runs the queue; returns (status, used len).
fn submit<M: GuestMemoryBackend>(
    block: &mut impl VirtioDevice<M>,
    mem: &M,
    tq: &mut TestQueue,
    request_type: u32,
    sector: u64,
    data: Option<(u32, bool)>,
) -> (u8, u32) {
    mem.write_obj(request_type.to_le(), GuestAddress(HDR))
        .unwrap();
    mem.write_obj(sector.to_le(), GuestAddress(HDR + 8))
        .unwrap();
    mem.write_obj(0xeeu8, GuestAddress(HDR + 0x80)).unwrap();
    let mut chain = vec![(HDR, HEADER_LEN as u32, false)];
    chain.extend(data.map(|(len, writable)| (DATA, len, writable)));
    chain.push((HDR + 0x80, 1, true));
    tq.add_chain(mem, &chain);
    block.process_queue(0).unwrap();
    let idx = tq.used_idx(mem);
    let status = mem.read_obj(GuestAddress(HDR + 0x80)).unwrap();
    (status, tq.used_elem(mem, idx.wrapping_sub(1)).1)
}

#[test]
fn raw_images_work_on_guest_memory_without_a_bitmap() {
    // Any `GuestMemoryBackend` fits: vm-memory's mmap memory with no dirty bitmap, through the
    // zero-copy path of the raw backend (slices with a `()` bitmap).
    let image = TempImage::new(&vec![0u8; 8 * 512]);
    let mem: vm_memory::GuestMemoryMmap<()> =
        vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut block = super::Block::new(config(&image, false, None)).unwrap();
    let mut tq = TestQueue::new(0, QUEUE_SIZE);
    activate(&mut block, &mem, [&tq], features::VERSION_1).unwrap();

    let data = pattern(1024);
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let out = submit(
        &mut block,
        &mem,
        &mut tq,
        VIRTIO_BLK_T_OUT,
        2,
        Some((1024, false)),
    );
    assert_eq!(out, (S_OK, 1));
    assert_eq!(image.contents()[2 * 512..4 * 512], data[..]);

    mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
    let read = submit(
        &mut block,
        &mem,
        &mut tq,
        VIRTIO_BLK_T_IN,
        2,
        Some((1024, true)),
    );
    assert_eq!(read, (S_OK, 1025));
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, data);
}

#[test]
fn any_backend_serves_requests_through_the_trait() {
    let disk = pattern(4 * 512 + 100);
    // Boxed: a backend chosen at run time.
    let backend: Box<dyn DiskImage<GuestMemoryMmap>> = Box::new(MemDisk::new(disk.clone()));
    let (mut block, mem, mut tq) = backend_rig(backend, None);
    assert_eq!(block.capacity_sectors(), 4);
    assert!(!block.read_only());

    assert_eq!(
        submit(
            &mut block,
            &mem,
            &mut tq,
            VIRTIO_BLK_T_IN,
            1,
            Some((1024, true))
        ),
        (S_OK, 1025)
    );
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, disk[512..1536]);

    mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        submit(
            &mut block,
            &mem,
            &mut tq,
            VIRTIO_BLK_T_OUT,
            3,
            Some((512, false))
        ),
        (S_OK, 1)
    );
    mem.write_slice(&[0; 512], GuestAddress(DATA)).unwrap();
    submit(
        &mut block,
        &mem,
        &mut tq,
        VIRTIO_BLK_T_IN,
        3,
        Some((512, true)),
    );
    mem.read_slice(&mut got[..512], GuestAddress(DATA)).unwrap();
    assert_eq!(got[..512], [0x5a; 512]);

    // Past the end: refused before the backend sees it.
    assert_eq!(
        submit(
            &mut block,
            &mem,
            &mut tq,
            VIRTIO_BLK_T_IN,
            4,
            Some((512, true))
        ),
        (S_IOERR, 1)
    );
    assert_eq!(
        submit(&mut block, &mem, &mut tq, VIRTIO_BLK_T_FLUSH, 0, None),
        (S_OK, 1)
    );
    // No identity of its own: GET_ID answers NULs.
    mem.write_slice(&[0xaa; 20], GuestAddress(DATA)).unwrap();
    assert_eq!(
        submit(
            &mut block,
            &mem,
            &mut tq,
            VIRTIO_BLK_T_GET_ID,
            0,
            Some((20, true))
        ),
        (S_OK, 21)
    );
    mem.read_slice(&mut got[..20], GuestAddress(DATA)).unwrap();
    assert_eq!(got[..20], [0; 20]);
    assert_eq!(
        block.save_state(),
        VirtioDeviceState::new(
            "virtio-blk",
            &BlockState {
                capacity_sectors: 4,
                read_only: false,
                id: String::new(),
            }
        )
        .unwrap()
    );
}

#[test]
fn a_failing_backend_is_ioerr_with_what_it_read() {
    let mut backend = MemDisk::new(pattern(8 * 512));
    backend.fail_after = Some(512);
    let (mut block, mem, mut tq) = backend_rig(backend, Some("mem"));
    assert_eq!(
        submit(
            &mut block,
            &mem,
            &mut tq,
            VIRTIO_BLK_T_IN,
            0,
            Some((2048, true))
        ),
        (S_IOERR, 513),
        "the 512 bytes that reached guest memory are reported"
    );
    mem.write_slice(&[0xaa; 20], GuestAddress(DATA)).unwrap();
    submit(
        &mut block,
        &mem,
        &mut tq,
        VIRTIO_BLK_T_GET_ID,
        0,
        Some((20, true)),
    );
    let mut id = [0u8; 4];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"mem\0");
}

#[test]
fn read_only_backends_see_no_writes_or_flushes() {
    let mut backend = MemDisk::new(vec![7; 1024]);
    backend.read_only = true;
    let (mut block, mem, mut tq) = backend_rig(backend, None);
    assert!(block.read_only());
    assert_ne!(block.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(
        submit(
            &mut block,
            &mem,
            &mut tq,
            VIRTIO_BLK_T_OUT,
            0,
            Some((512, false))
        ),
        (S_IOERR, 1)
    );
    assert_eq!(
        submit(&mut block, &mem, &mut tq, VIRTIO_BLK_T_FLUSH, 0, None),
        (S_OK, 1)
    );
    assert_eq!(block.backend().bytes, [7; 1024]);
    assert_eq!(block.backend().flushes, 0);
}

#[test]
fn backend_smaller_than_a_sector_is_empty_and_a_bad_id_is_refused() {
    let block = Block::with_backend(MemDisk::new(vec![0; 511]), None).unwrap();
    assert_eq!(block.capacity_sectors(), 0);
    let e = Block::with_backend(MemDisk::new(vec![0; 512]), Some(&"z".repeat(21))).unwrap_err();
    assert!(matches!(e, BlockError::IdTooLong { len: 21, .. }), "{e}");
}

/// A bucket that never refills within a test.
const HOUR_MS: u64 = 3_600_000;

fn limiter(
    bandwidth: Option<(u64, u64)>,
    ops: Option<(u64, u64)>,
) -> crate::rate_limiter::RateLimiter {
    use crate::rate_limiter::{BucketParams, RateLimiter};
    let params = |(size, refill)| BucketParams::new(size, 0, refill);
    RateLimiter::new(bandwidth.map(params), ops.map(params)).unwrap()
}

/// The limiter's descriptor, through the device's backend fds.
fn limiter_fd_of<B: DiskImage<GuestMemoryMmap> + 'static>(block: &Block<B>) -> std::os::fd::RawFd {
    let fds = block.backend_fds();
    let fd = fds.iter().find(|b| b.token == RATE_LIMITER_TOKEN).unwrap();
    assert_eq!(fd.fd, std::os::fd::AsRawFd::as_raw_fd(block.rate_limiter()));
    fd.fd
}

#[test]
fn a_throttled_queue_serves_nothing_until_the_timer_fires_and_keeps_the_order() {
    use crate::rate_limiter::BucketUpdate;
    let disk = pattern(8 * 512);
    let mut r = rig(&disk);
    // One operation, never refilled within the test.
    r.block.set_rate_limiter(limiter(None, Some((1, HOUR_MS))));
    let fd = limiter_fd_of(&r.block);
    let heads: Vec<u16> = (0..4)
        .map(|slot| {
            r.request_in(
                slot,
                VIRTIO_BLK_T_IN,
                slot,
                &[(DATA + 0x1000 * slot, 512, true)],
            )
        })
        .collect();
    r.run();
    assert_eq!(r.tq.used_idx(&r.mem), 1, "only the first request passes");
    assert_eq!(r.status_of(0), S_OK);
    assert!(r.block.rate_limiter().is_blocked());
    assert_eq!(r.block.throttled_count(), 1);
    // Blocked: neither a notify nor a spurious limiter event serves anything.
    r.run();
    r.block
        .process_backend(RATE_LIMITER_TOKEN, vmm_sys_util::epoll::EventSet::IN)
        .unwrap();
    assert_eq!(r.tq.used_idx(&r.mem), 1);
    assert_eq!(r.status_of(1), 0xee, "untouched while throttled");

    // A PATCH that lifts the limit re-arms the timer; when it fires, the rest is served.
    r.block
        .update_rate_limiter(BucketUpdate::None, BucketUpdate::Disabled)
        .unwrap();
    wait_readable(fd);
    r.block
        .process_backend(RATE_LIMITER_TOKEN, vmm_sys_util::epoll::EventSet::IN)
        .unwrap();
    assert_eq!(r.tq.used_idx(&r.mem), 4);
    for (i, head) in heads.iter().enumerate() {
        assert_eq!(
            r.tq.used_elem(&r.mem, i as u16).0,
            u32::from(*head),
            "in order"
        );
        assert_eq!(r.status_of(i as u64), S_OK);
        let slot = i as u64;
        assert_eq!(
            r.read_guest(DATA + 0x1000 * slot, 512),
            disk[i * 512..(i + 1) * 512]
        );
    }
    assert!(!r.block.rate_limiter().is_blocked());
}

#[test]
fn a_refilling_limiter_eventually_serves_everything_in_order() {
    let disk = pattern(8 * 512);
    let mut r = rig(&disk);
    // 512 bytes per 10 ms: every read after the first waits for the refill.
    r.block.set_rate_limiter(limiter(Some((512, 10)), None));
    let fd = limiter_fd_of(&r.block);
    let heads: Vec<u16> = (0..6)
        .map(|slot| {
            r.request_in(
                slot,
                VIRTIO_BLK_T_IN,
                slot,
                &[(DATA + 0x1000 * slot, 512, true)],
            )
        })
        .collect();
    r.run();
    let mut wakeups = 0;
    while r.tq.used_idx(&r.mem) < 6 {
        assert!(
            r.block.rate_limiter().is_blocked(),
            "stopped only when throttled"
        );
        wait_readable(fd);
        r.block
            .process_backend(RATE_LIMITER_TOKEN, vmm_sys_util::epoll::EventSet::IN)
            .unwrap();
        wakeups += 1;
        assert!(wakeups <= 6, "each wake-up serves at least one request");
    }
    for (i, head) in heads.iter().enumerate() {
        assert_eq!(r.tq.used_elem(&r.mem, i as u16).0, u32::from(*head));
        assert_eq!(r.status_of(i as u64), S_OK);
    }
}

#[test]
fn a_bandwidth_limit_lets_exactly_the_requests_that_fit_through() {
    let mut r = rig(&pattern(16 * 512));
    // 2 KiB per hour: reads of 1024, 512 and 512 bytes fit, the next 512 does not.
    r.block
        .set_rate_limiter(limiter(Some((2048, HOUR_MS)), None));
    for (slot, len) in [(0u64, 1024u32), (1, 512), (2, 512), (3, 512), (4, 512)] {
        r.request_in(
            slot,
            VIRTIO_BLK_T_IN,
            0,
            &[(DATA + 0x1000 * slot, len, true)],
        );
    }
    r.run();
    assert_eq!(r.tq.used_idx(&r.mem), 3);
    assert_eq!(r.status_of(3), 0xee);
    // The refused request's operation was given back: an ops bucket sees only three.
    let mut r = rig(&pattern(16 * 512));
    r.block
        .set_rate_limiter(limiter(Some((1024, HOUR_MS)), Some((3, HOUR_MS))));
    for slot in 0..3 {
        r.request_in(
            slot,
            VIRTIO_BLK_T_IN,
            0,
            &[(DATA + 0x1000 * slot, 512, true)],
        );
    }
    r.run();
    assert_eq!(r.tq.used_idx(&r.mem), 2);
    let ops = r.block.rate_limiter().ops().unwrap();
    assert_eq!(ops.budget(), 1, "the refused read gave its operation back");
}

#[test]
fn swapping_the_backend_updates_the_capacity_and_tells_the_driver() {
    let mut r = rig(&pattern(8 * 512));
    assert_eq!(r.block.capacity_sectors(), 8);
    let bigger = TempImage::new(&pattern(32 * 512));
    let backend = RawFile::open(bigger.path(), false).unwrap();
    let old = r.block.swap_backend(backend).unwrap();
    assert_eq!(old.path(), r.image.path());
    assert_eq!(r.block.capacity_sectors(), 32);
    let mut cap = [0u8; 8];
    r.block.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 32);
    assert_ne!(r.interrupt.status() & interrupt_bits::CONFIG_CHANGE, 0);
    assert_eq!(r.interrupts(), 1);
    // Reads now come from the new image, past the old end too.
    r.request(VIRTIO_BLK_T_IN, 20, &[(DATA, 512, true)]);
    r.run();
    assert_eq!(r.status(), S_OK);
    assert_eq!(
        r.read_guest(DATA, 512),
        pattern(32 * 512)[20 * 512..21 * 512]
    );

    // Swapping to an empty image: capacity 0, reads fail cleanly.
    let empty = TempImage::new(&[]);
    r.block
        .swap_backend(RawFile::open(empty.path(), false).unwrap())
        .unwrap();
    assert_eq!(r.block.capacity_sectors(), 0);
    r.block.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 0);
    r.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]);
    r.run();
    assert_eq!(r.status(), S_IOERR);
}

#[test]
fn a_zero_length_image_is_an_empty_disk() {
    let mut r = rig(&[]);
    assert_eq!(r.block.capacity_sectors(), 0);
    let mut cap = [0xffu8; 8];
    r.block.read_config(0, &mut cap);
    assert_eq!(cap, [0; 8]);
    r.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]);
    r.run();
    assert_eq!(r.status(), S_IOERR);
    r.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, false)]);
    r.run();
    assert_eq!(r.status(), S_IOERR);
    assert!(r.image.contents().is_empty(), "never grown");
    r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.run();
    assert_eq!(r.status(), S_OK);
    // Its state round-trips.
    let state = r.block.save_state();
    r.block.restore_state(&state).unwrap();
}

#[test]
fn unsafe_cache_type_offers_no_flush_and_does_not_sync() {
    let mut block = Block::with_backend(MemDisk::new(vec![0; 1024]), None).unwrap();
    assert_eq!(block.cache_type(), CacheType::Writeback);
    assert_ne!(block.device_features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
    block.set_cache_type(CacheType::Unsafe);
    assert_eq!(block.device_features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
    let mem = test_memory(MEM_SIZE);
    let mut tq = TestQueue::new(0, QUEUE_SIZE);
    activate(&mut block, &mem, [&tq], features::VERSION_1).unwrap();
    assert_eq!(
        submit(&mut block, &mem, &mut tq, VIRTIO_BLK_T_FLUSH, 0, None),
        (S_OK, 1)
    );
    assert_eq!(block.backend().flushes, 0, "acknowledged without syncing");
}

#[test]
fn metrics_count_exactly_the_bytes_and_requests_served() {
    let disk = pattern(8 * 512);
    let mut r = rig(&disk);
    let m = r.block.metrics();
    r.request(
        VIRTIO_BLK_T_IN,
        3,
        &[(DATA, 512, true), (DATA + 0x1000, 1024, true)],
    );
    r.run();
    assert_eq!(r.status(), S_OK);
    assert_eq!(m.read_bytes.get(), 1536);
    assert_eq!(m.read_count.get(), 1);
    assert_eq!(m.queue_event_count.get(), 1);

    r.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 1024, false)]);
    r.run();
    r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.run();
    // Past the end: invalid, nothing moved.
    r.request(VIRTIO_BLK_T_IN, 8, &[(DATA, 512, true)]);
    r.run();
    assert_eq!(r.status(), S_IOERR);
    r.request(0xff, 0, &[]);
    r.run();
    // A notification with nothing on the queue.
    r.run();

    assert_eq!(m.read_bytes.get(), 1536, "a failed read reads nothing");
    assert_eq!(m.read_count.get(), 1);
    assert_eq!(m.write_bytes.get(), 1024);
    assert_eq!(m.write_count.get(), 1);
    assert_eq!(m.flush_count.get(), 1);
    assert_eq!(m.invalid_reqs_count.get(), 2);
    assert_eq!(m.execute_fails.get(), 0);
    assert_eq!(m.queue_event_count.get(), 6);
    assert_eq!(m.no_avail_buffer.get(), 1);
    assert_eq!(m.activate_fails.get(), 0);
}

/// Writes discard segments `(sector, num_sectors, flags)` to guest memory at `addr`; returns
/// their length in bytes.
fn write_segments(mem: &GuestMemoryMmap, addr: u64, segments: &[(u64, u32, u32)]) -> u32 {
    let mut at = addr;
    for &(sector, sectors, flags) in segments {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&sector.to_le_bytes());
        bytes[8..12].copy_from_slice(&sectors.to_le_bytes());
        bytes[12..].copy_from_slice(&flags.to_le_bytes());
        mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        at += 16;
    }
    (segments.len() * 16) as u32
}

#[test]
fn discard_zeroes_the_ranges_of_a_raw_image() {
    let disk = pattern(8 * 512);
    let mut r = rig_with(
        &disk,
        false,
        None,
        features::VERSION_1 | 1 << VIRTIO_BLK_F_DISCARD,
    );
    assert!(r.block.discard());
    let len = write_segments(&r.mem, DATA, &[(1, 2, 0), (6, 1, 0), (7, 0, 0)]);
    // The array split across two descriptors, in the middle of a segment.
    r.request(
        VIRTIO_BLK_T_DISCARD,
        0,
        &[(DATA, 10, false), (DATA + 10, len - 10, false)],
    );
    r.run();
    assert_eq!(r.status(), S_OK);
    assert_eq!(r.last_used().1, 1, "only the status is written");
    let mut want = disk.clone();
    want[512..3 * 512].fill(0);
    want[6 * 512..7 * 512].fill(0);
    assert_eq!(r.image.contents(), want);
}

#[test]
fn hostile_discard_arrays_discard_nothing() {
    let disk = pattern(8 * 512);
    let mut r = rig(&disk);
    let too_many: Vec<(u64, u32, u32)> = (0..=MAX_DISCARD_SEG as u64)
        .map(|s| (s % 8, 0, 0))
        .collect();
    type Segments = Vec<(u64, u32, u32)>;
    let cases: Vec<(&str, Segments, Option<u32>, u8)> = vec![
        ("past the end", vec![(8, 1, 0)], None, S_IOERR),
        ("runs past the end", vec![(7, 2, 0)], None, S_IOERR),
        ("sector overflows", vec![(u64::MAX, 1, 0)], None, S_IOERR),
        (
            "end overflows",
            vec![(u64::MAX / 512, u32::MAX, 0)],
            None,
            S_IOERR,
        ),
        (
            "longer than max_discard_sectors",
            vec![(0, MAX_DISCARD_SECTORS + 1, 0)],
            None,
            S_IOERR,
        ),
        (
            "a good one, then a bad one",
            vec![(0, 1, 0), (9, 1, 0)],
            None,
            S_IOERR,
        ),
        ("too many segments", too_many, None, S_IOERR),
        ("partial segment", vec![(0, 1, 0)], Some(15), S_IOERR),
        (
            "a segment and a half",
            vec![(0, 1, 0), (1, 1, 0)],
            Some(24),
            S_IOERR,
        ),
        ("no segments", vec![], None, S_IOERR),
        ("unmap set", vec![(0, 1, 1)], None, S_UNSUPP),
        ("unknown flag", vec![(0, 1, 2)], None, S_UNSUPP),
        (
            "high flag after a good one",
            vec![(0, 1, 0), (1, 1, 0x8000_0000)],
            None,
            S_UNSUPP,
        ),
    ];
    for (what, segments, len, want) in cases {
        let full = write_segments(&r.mem, DATA, &segments);
        let len = len.unwrap_or(full);
        let data: Vec<(u64, u32, bool)> = if len == 0 {
            vec![]
        } else {
            vec![(DATA, len, false)]
        };
        r.request(VIRTIO_BLK_T_DISCARD, 0, &data);
        r.run();
        assert_eq!(r.status(), want, "{what}");
        assert_eq!(r.last_used().1, 1, "{what}");
        assert_eq!(r.image.contents(), disk, "{what}: nothing discarded");
    }
    // Segments in a device-writable buffer, or a writable buffer besides them.
    let len = write_segments(&r.mem, DATA, &[(0, 1, 0)]);
    r.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, len, true)]);
    r.request_in(
        1,
        VIRTIO_BLK_T_DISCARD,
        0,
        &[(DATA, len, false), (DATA + 0x1000, 512, true)],
    );
    r.run();
    assert_eq!(r.status(), S_IOERR);
    assert_eq!(r.status_of(1), S_IOERR);
    // Segments outside guest memory.
    r.request(VIRTIO_BLK_T_DISCARD, 0, &[(OUTSIDE - 8, 16, false)]);
    r.run();
    assert_eq!(r.status(), S_IOERR);
    assert_eq!(r.image.contents(), disk);
}

#[test]
fn discard_is_unsupported_on_read_only_disks_and_backends_that_cannot() {
    let disk = pattern(8 * 512);
    let mut r = rig_with(&disk, true, None, features::VERSION_1);
    assert_eq!(r.block.device_features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
    let len = write_segments(&r.mem, DATA, &[(0, 1, 0)]);
    r.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, len, false)]);
    r.run();
    assert_eq!(r.status(), S_UNSUPP);
    assert_eq!(r.image.contents(), disk);

    let (mut block, mem, mut tq) = backend_rig(MemDisk::new(pattern(4 * 512)), None);
    assert!(!block.discard());
    assert_eq!(block.device_features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
    write_segments(&mem, DATA, &[(0, 1, 0)]);
    let got = submit(
        &mut block,
        &mem,
        &mut tq,
        VIRTIO_BLK_T_DISCARD,
        0,
        Some((16, false)),
    );
    assert_eq!(got, (S_UNSUPP, 1));
    assert!(block.backend().discards.is_empty());
}

#[test]
fn discard_reaches_the_backend_in_bytes_and_failures_are_ioerr() {
    let mut backend = MemDisk::new(pattern(16 * 512));
    backend.can_discard = true;
    let (mut block, mem, mut tq) = backend_rig(backend, None);
    assert_ne!(block.device_features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
    let len = write_segments(&mem, DATA, &[(2, 3, 0), (10, 0, 0), (15, 1, 0)]);
    let got = submit(
        &mut block,
        &mem,
        &mut tq,
        VIRTIO_BLK_T_DISCARD,
        0,
        Some((len, false)),
    );
    assert_eq!(got, (S_OK, 1));
    assert_eq!(
        block.backend().discards,
        [(2 * 512, 3 * 512), (15 * 512, 512)],
        "empty segments are skipped"
    );

    let mut failing = MemDisk::new(pattern(16 * 512));
    failing.can_discard = true;
    failing.discard_fails = true;
    let (mut block, mem, mut tq) = backend_rig(failing, None);
    let len = write_segments(&mem, DATA, &[(0, 1, 0)]);
    let got = submit(
        &mut block,
        &mem,
        &mut tq,
        VIRTIO_BLK_T_DISCARD,
        0,
        Some((len, false)),
    );
    assert_eq!(got, (S_IOERR, 1));
    assert_eq!(block.metrics().execute_fails.get(), 1);
}

#[test]
fn seal_backend_returns_the_backends_seal() {
    let mut backend = MemDisk::new(pattern(4 * 512));
    let seal = vmm_disk::DiskSeal {
        format: "layered".into(),
        layer: "/images/vm.layered.1".into(),
        layer_id: "abc".into(),
    };
    backend.seal = Some(seal.clone());
    let (mut block, _mem, _tq) = backend_rig(backend, None);
    assert_eq!(block.seal_backend().unwrap(), Some(seal));
    let r = rig(&[0u8; 512]);
    let mut raw = r.block;
    assert_eq!(raw.seal_backend().unwrap(), None, "raw images keep no seal");
}

#[test]
fn a_backend_that_wants_commits_is_flushed_after_unflushed_writes_only() {
    let mut backend = MemDisk::new(vec![0; 4096]);
    backend.commit_interval = Some(std::time::Duration::from_millis(1));
    let (mut block, mem, mut tq) = backend_rig(backend, None);
    let timer = block
        .backend_fds()
        .iter()
        .find(|b| b.token == COMMIT_TIMER_TOKEN)
        .expect("the commit timer is polled")
        .fd;

    // A read arms nothing; a spurious wake-up flushes nothing.
    submit(
        &mut block,
        &mem,
        &mut tq,
        VIRTIO_BLK_T_IN,
        0,
        Some((512, true)),
    );
    block
        .process_backend(COMMIT_TIMER_TOKEN, EventSet::IN)
        .unwrap();
    assert_eq!(block.backend().flushes, 0);

    // A write arms the timer; when it fires the backend is flushed once.
    submit(
        &mut block,
        &mem,
        &mut tq,
        VIRTIO_BLK_T_OUT,
        0,
        Some((512, false)),
    );
    wait_readable(timer);
    block
        .process_backend(COMMIT_TIMER_TOKEN, EventSet::IN)
        .unwrap();
    assert_eq!(block.backend().flushes, 1);
    block
        .process_backend(COMMIT_TIMER_TOKEN, EventSet::IN)
        .unwrap();
    assert_eq!(block.backend().flushes, 1, "nothing left to commit");

    // A write the guest flushed itself needs no commit when the timer fires.
    submit(
        &mut block,
        &mem,
        &mut tq,
        VIRTIO_BLK_T_OUT,
        1,
        Some((512, false)),
    );
    submit(&mut block, &mem, &mut tq, VIRTIO_BLK_T_FLUSH, 0, None);
    assert_eq!(block.backend().flushes, 2);
    wait_readable(timer);
    block
        .process_backend(COMMIT_TIMER_TOKEN, EventSet::IN)
        .unwrap();
    assert_eq!(block.backend().flushes, 2);

    // A backend without an interval (raw) never arms it.
    let (mut raw, mem, mut tq) = backend_rig(MemDisk::new(vec![0; 4096]), None);
    submit(
        &mut raw,
        &mem,
        &mut tq,
        VIRTIO_BLK_T_OUT,
        0,
        Some((512, false)),
    );
    raw.process_backend(COMMIT_TIMER_TOKEN, EventSet::IN)
        .unwrap();
    assert_eq!(raw.backend().flushes, 0, "never armed, nothing flushed");
}
