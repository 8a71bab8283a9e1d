//! Fuzzes virtio-rng: well-formed and raw descriptor chains (loops, indirect tables, huge
//! lengths, buffers outside or straddling guest memory), resets and snapshots, against a real
//! `GuestMemoryMmap`.
//!
//! Invariants checked after every queue notify:
//! - nothing panics;
//! - no more bytes of guest memory changed (outside the used ring's page) than the device says
//!   it served, and it never serves more than 64 KiB per chain it returned;
//! - config space reads are all zeros.
//!
//! Input: a header `flags`, then operations `op ...` (see `fuzz_target!` below).
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;

mod common;
use common::Cursor;
use vmm_devices::virtio::rng::{Rng, MAX_BYTES_PER_CHAIN, QUEUE_SIZE};
use vmm_devices::virtio::test_utils::TestQueue;
use vmm_devices::virtio::{features, ActiveQueues, VirtioDevice, VirtioInterrupt};
use vmm_devices::{EventFd, EventFdTrigger, EFD_NONBLOCK};
use vmm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MAIN_SIZE: u64 = 0x2_0000;
/// A region that ends in the middle of a page, away from the main one.
const SHORT_BASE: u64 = 0x5_0000;
const SHORT_SIZE: u64 = 0x1800;
/// A region far up, to be sure high addresses work.
const HIGH_BASE: u64 = 1 << 44;
const HIGH_SIZE: u64 = 0x1000;
const QUEUE_BASE: u64 = 0;
/// Where chains' buffers usually go.
const DATA_BASE: u64 = 0x8000;
const DATA_SIZE: u64 = 0x1_8000;
const PAGE: u64 = 4096;

const REGIONS: [(u64, u64); 3] = [
    (0, MAIN_SIZE),
    (SHORT_BASE, SHORT_SIZE),
    (HIGH_BASE, HIGH_SIZE),
];

fn memory() -> GuestMemoryMmap {
    let ranges: Vec<_> = REGIONS
        .iter()
        .map(|&(base, size)| (GuestAddress(base), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).expect("guest memory")
}

const SNAPSHOT_SIZE: usize = (MAIN_SIZE + SHORT_SIZE + HIGH_SIZE) as usize;

thread_local! {
    /// Before / after copies of guest memory, kept across runs (fresh ones cost page faults).
    static SNAPSHOTS: RefCell<(Vec<u8>, Vec<u8>)> =
        RefCell::new((vec![0; SNAPSHOT_SIZE], vec![0; SNAPSHOT_SIZE]));
}

/// Copies every region, in order, into `v`.
fn snapshot(mem: &GuestMemoryMmap, mut v: &mut [u8]) {
    for (base, size) in REGIONS {
        let (r, rest) = v.split_at_mut(size as usize);
        mem.read_slice(r, GuestAddress(base)).expect("region");
        v = rest;
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    rng: Rng,
    tq: TestQueue,
    used_seen: u16,
    size: u16,
    acked: u64,
}

impl Rig {
    fn activate(&mut self) {
        self.mem
            .write_slice(&[0u8; 0x8000], GuestAddress(QUEUE_BASE))
            .expect("clear rings");
        self.tq = TestQueue::new(QUEUE_BASE, self.size);
        self.used_seen = 0;
        let interrupt = VirtioInterrupt::new(EventFdTrigger::new(
            EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        ));
        self.rng
            .activate(ActiveQueues {
                mem: self.mem.clone(),
                queues: vec![self.tq.queue()],
                interrupt,
                acked_features: self.acked,
            })
            .expect("activate");
    }

    fn process(&mut self, index: usize) {
        SNAPSHOTS.with(|s| {
            let (before, after) = &mut *s.borrow_mut();
            self.process_and_check(index, before, after);
        });
    }

    fn process_and_check(&mut self, index: usize, before: &mut [u8], after: &mut [u8]) {
        snapshot(&self.mem, before);
        let served_before = self.rng.bytes_served();
        // An Err (a broken avail index) is the device asking for a reset: allowed.
        let _ = self.rng.process_queue(index);
        snapshot(&self.mem, after);
        let served = self.rng.bytes_served() - served_before;

        // The used ring's page (index, entries, avail_event) is the device's to write.
        let used_page = self.tq.used / PAGE * PAGE;
        let mut changed = 0u64;
        for (n, (old, new)) in before
            .chunks(PAGE as usize)
            .zip(after.chunks(PAGE as usize))
            .enumerate()
        {
            if old == new || n as u64 * PAGE == used_page {
                continue;
            }
            changed += old.iter().zip(new).filter(|(a, b)| a != b).count() as u64;
        }
        assert!(
            changed <= served,
            "{changed} bytes of guest memory changed, {served} served"
        );

        // The used index only moves through add_used, which the device does last for every
        // chain, so it is the number of chains returned.
        let used = self.tq.used_idx(&self.mem);
        let chains = u64::from(used.wrapping_sub(self.used_seen));
        self.used_seen = used;
        assert!(
            served <= chains * MAX_BYTES_PER_CHAIN as u64,
            "{served} bytes served for {chains} chains"
        );
    }
}

fn buffer_addr(input: &mut Cursor, kind: u8) -> u64 {
    match kind % 4 {
        0 => DATA_BASE + (u64::from(input.byte()) << 8 | u64::from(input.byte())) % DATA_SIZE,
        1 => input.u64(),
        2 => SHORT_BASE + u64::from(input.byte()) * 32,
        _ => HIGH_BASE + u64::from(input.byte()) * 16,
    }
}

fn u16_of(input: &mut Cursor) -> u16 {
    u16::from_le_bytes([input.byte(), input.byte()])
}

fn u32_of(input: &mut Cursor) -> u32 {
    u32::from_le_bytes([input.byte(), input.byte(), input.byte(), input.byte()])
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let flags = input.byte();
    let mut acked = features::VERSION_1;
    if flags & 1 != 0 {
        acked |= features::RING_EVENT_IDX;
    }
    let size = 1u16 << ((flags >> 1) % 9);
    assert!(size <= QUEUE_SIZE);

    let mut rig = Rig {
        mem: memory(),
        rng: Rng::new(),
        tq: TestQueue::new(QUEUE_BASE, size),
        used_seen: 0,
        size,
        acked,
    };
    rig.activate();

    while !input.is_empty() {
        match input.byte() % 7 {
            // A well-linked chain: `n (kind addr.. len)*`.
            0 => {
                let n = 1 + usize::from(input.byte() % 4);
                let mut bufs = Vec::with_capacity(n);
                for _ in 0..n {
                    let kind = input.byte();
                    let addr = buffer_addr(&mut input, kind);
                    let len = match (kind >> 2) % 4 {
                        0 => u32::from(input.byte()),
                        1 => u32::from(u16_of(&mut input)),
                        2 => u32::from(u16_of(&mut input)) << 4,
                        _ => u32_of(&mut input),
                    };
                    bufs.push((addr, len, kind & 0x10 == 0));
                }
                let mem = rig.mem.clone();
                rig.tq.add_chain(&mem, &bufs);
            }
            // A raw descriptor: `index addr len flags next`.
            1 => {
                let index = u16_of(&mut input);
                let addr = input.u64();
                let len = u32_of(&mut input);
                let flags = u16_of(&mut input);
                let next = u16_of(&mut input);
                rig.tq.write_desc(&rig.mem, index, addr, len, flags, next);
            }
            // Publish a raw head.
            2 => {
                let head = u16_of(&mut input);
                let mem = rig.mem.clone();
                rig.tq.push_avail(&mem, head);
            }
            // Notify queue 0, or one the device does not have.
            3 => rig.process(usize::from(input.byte() % 2)),
            // Raw bytes in RAM outside the used ring's page (indirect tables, ring fields):
            // `addr(u32) n bytes..`.
            4 => {
                let addr = u64::from(u32_of(&mut input)) % MAIN_SIZE;
                let n = usize::from(input.byte() % 16);
                let bytes = input.bytes(n);
                let end = addr + bytes.len() as u64;
                let used_page = rig.tq.used / PAGE * PAGE;
                if addr >= used_page + PAGE || end <= used_page {
                    let _ = rig.mem.write(&bytes, GuestAddress(addr));
                }
            }
            // Config space: none, reads as zeros.
            5 => {
                let offset = input.u64();
                let mut buf = vec![0xeeu8; usize::from(input.byte() % 9)];
                rig.rng.read_config(offset, &mut buf);
                assert!(buf.iter().all(|&b| b == 0));
                rig.rng.write_config(offset, &buf);
            }
            // Reset (and maybe snapshot into a new device), then activate again.
            _ => {
                let snapshot = input.byte() & 1 != 0;
                rig.rng.reset();
                assert!(!rig.rng.is_activated());
                if snapshot {
                    let state = rig.rng.save_state();
                    let mut fresh = Rng::new();
                    fresh.restore_state(&state).expect("restore");
                    rig.rng = fresh;
                }
                rig.activate();
            }
        }
    }
});
