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

use libfuzzer_sys::fuzz_target;

mod common;
use common::{
    memory, snapshot, with_snapshots, Cursor, FAR_SIZE, MAIN_SIZE, PAGE, REGIONS, SHORT_SIZE,
};
use vmm_devices::virtio::rng::{Rng, MAX_BYTES_PER_CHAIN, QUEUE_SIZE};
use vmm_devices::virtio::test_utils::{activate, TestQueue};
use vmm_devices::virtio::{features, VirtioDevice};
use vmm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QUEUE_BASE: u64 = 0;
/// Where chains' buffers usually go.
const DATA_BASE: u64 = 0x8000;
const DATA_SIZE: u64 = 0x1_8000;

/// All of guest memory, the far region included (to be sure high addresses work).
const SNAPSHOT_SIZE: usize = (MAIN_SIZE + SHORT_SIZE + FAR_SIZE) as usize;

struct Rig {
    mem: GuestMemoryMmap,
    rng: Rng<GuestMemoryMmap>,
    tq: TestQueue,
    used_seen: u16,
    size: u16,
    acked: u64,
}

impl Rig {
    fn activate(&mut self) {
        self.tq = TestQueue::zeroed(&self.mem, QUEUE_BASE, self.size);
        self.used_seen = 0;
        activate(&mut self.rng, &self.mem, [&self.tq], self.acked).expect("activate");
    }

    fn process(&mut self, index: usize) {
        with_snapshots(SNAPSHOT_SIZE, |before, after| {
            self.process_and_check(index, before, after)
        });
    }

    fn process_and_check(&mut self, index: usize, before: &mut [u8], after: &mut [u8]) {
        snapshot(&self.mem, &REGIONS, before);
        let served_before = self.rng.bytes_served();
        // An Err (a broken avail index) is the device asking for a reset: allowed.
        let _ = self.rng.process_queue(index);
        snapshot(&self.mem, &REGIONS, after);
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
                    let addr = input.buffer_addr(kind, DATA_BASE, DATA_SIZE);
                    let len = match (kind >> 2) % 4 {
                        0 => u32::from(input.byte()),
                        1 => u32::from(input.u16()),
                        2 => u32::from(input.u16()) << 4,
                        _ => input.u32(),
                    };
                    bufs.push((addr, len, kind & 0x10 == 0));
                }
                let mem = rig.mem.clone();
                rig.tq.add_chain(&mem, &bufs);
            }
            // A raw descriptor: `index addr len flags next`.
            1 => {
                let index = input.u16();
                let addr = input.u64();
                let len = input.u32();
                let flags = input.u16();
                let next = input.u16();
                rig.tq.write_desc(&rig.mem, index, addr, len, flags, next);
            }
            // Publish a raw head.
            2 => {
                let head = input.u16();
                let mem = rig.mem.clone();
                rig.tq.push_avail(&mem, head);
            }
            // Notify queue 0, or one the device does not have.
            3 => rig.process(usize::from(input.byte() % 2)),
            // Raw bytes in RAM outside the used ring's page (indirect tables, ring fields):
            // `addr(u32) n bytes..`.
            4 => {
                let addr = u64::from(input.u32()) % MAIN_SIZE;
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
