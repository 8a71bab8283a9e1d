//! Fuzzes virtio-balloon: descriptor chains (well-formed and raw), PFN arrays, config space
//! reads and writes, target changes, resets and snapshots, against a real `GuestMemoryMmap`.
//!
//! Invariants checked after every queue notify:
//! - nothing panics;
//! - a page of guest memory either keeps its contents, or reads as zeros (returned to the host
//!   by an inflate), or is a used-ring page; and no more pages turned to zeros than the device
//!   counted as inflated;
//! - the marker region, at a guest address no 32-bit PFN can name, never changes;
//! - every chain returned to the used ring has length 0;
//! - `num_pages` only changes through `set_target_pages`, `actual` is exactly what the driver
//!   wrote into its bytes.
//!
//! Input: a header `flags target(u32)`, then operations `op ...` (see `fuzz_target!` below).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;
use common::{
    memory, snapshot, with_snapshots, Cursor, FAR_BASE, FAR_SIZE, MAIN_SIZE, PAGE, REGIONS,
    SHORT_BASE, SHORT_SIZE,
};
use vmm_devices::virtio::balloon::{Balloon, BalloonConfig, BalloonStats, QUEUE_SIZE};
use vmm_devices::virtio::test_utils::{activate, TestQueue};
use vmm_devices::virtio::{features, VirtioDevice};
use vmm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The far region, above 2^44: a u32 PFN shifted by 12 never reaches it.
const MARKER_BASE: u64 = FAR_BASE;
const MARKER_SIZE: u64 = FAR_SIZE;
const QUEUE_BASES: [u64; 2] = [0, 0x8000];
/// Where chains' buffers and PFN arrays usually go.
const DATA_BASE: u64 = 0x1_0000;
const DATA_SIZE: u64 = 0x1_0000;

/// [`memory`] with the marker region filled.
fn memory_with_marker() -> GuestMemoryMmap {
    let mem = memory();
    mem.write_slice(&[0xa5; MARKER_SIZE as usize], GuestAddress(MARKER_BASE))
        .expect("marker");
    mem
}

/// The regions a PFN can name: the main and the short one.
const PFN_REGIONS: &[(u64, u64)] = &[REGIONS[0], REGIONS[1]];
const SNAPSHOT_SIZE: usize = (MAIN_SIZE + SHORT_SIZE) as usize;

fn used_ring_page(tqs: &[TestQueue; 2], guest_page: u64) -> bool {
    tqs.iter().any(|t| t.used / PAGE == guest_page)
}

struct Model {
    target: u32,
    actual: u32,
}

struct Rig {
    mem: GuestMemoryMmap,
    balloon: Balloon<GuestMemoryMmap>,
    tqs: [TestQueue; 2],
    used_seen: [u16; 2],
    size: u16,
    acked: u64,
}

impl Rig {
    fn activate(&mut self) {
        // Fresh rings: zeroed so no stale index survives a reset.
        self.tqs = QUEUE_BASES.map(|b| TestQueue::zeroed(&self.mem, b, self.size));
        self.used_seen = [0; 2];
        activate(&mut self.balloon, &self.mem, &self.tqs, self.acked).expect("activate");
    }

    fn process(&mut self, index: usize) {
        with_snapshots(SNAPSHOT_SIZE, |before, after| {
            self.process_and_check(index, before, after)
        });
    }

    fn process_and_check(&mut self, index: usize, before: &mut [u8], after: &mut [u8]) {
        snapshot(&self.mem, PFN_REGIONS, before);
        let stats_before = self.balloon.stats();
        // An Err (a broken avail index) is the device asking for a reset: allowed.
        let _ = self.balloon.process_queue(index);
        snapshot(&self.mem, PFN_REGIONS, after);
        let stats = self.balloon.stats();
        check_stats(&stats_before, &stats);

        let mut zeroed = 0u64;
        for (n, (old, new)) in before
            .chunks(PAGE as usize)
            .zip(after.chunks(PAGE as usize))
            .enumerate()
        {
            if old == new {
                continue;
            }
            let offset = n as u64 * PAGE;
            let guest = if offset < MAIN_SIZE {
                offset
            } else {
                SHORT_BASE + (offset - MAIN_SIZE)
            };
            if used_ring_page(&self.tqs, guest / PAGE) {
                continue;
            }
            assert!(
                new.len() == PAGE as usize && new.iter().all(|&b| b == 0),
                "page {guest:#x} changed without being inflated"
            );
            zeroed += 1;
        }
        assert!(
            zeroed <= stats.inflated_pages - stats_before.inflated_pages,
            "{zeroed} pages zeroed, {} inflated",
            stats.inflated_pages - stats_before.inflated_pages
        );

        let mut marker = [0u8; MARKER_SIZE as usize];
        self.mem
            .read_slice(&mut marker, GuestAddress(MARKER_BASE))
            .expect("marker");
        assert!(marker.iter().all(|&b| b == 0xa5), "marker region changed");

        for (q, tq) in self.tqs.iter().enumerate() {
            let used = tq.used_idx(&self.mem);
            let mut n = self.used_seen[q];
            while n != used {
                assert_eq!(tq.used_elem(&self.mem, n).1, 0, "used length of queue {q}");
                n = n.wrapping_add(1);
            }
            self.used_seen[q] = used;
        }
    }
}

fn check_stats(before: &BalloonStats, after: &BalloonStats) {
    assert!(after.inflated_pages >= before.inflated_pages);
    assert!(after.bytes_returned.is_multiple_of(PAGE));
    assert!(after.bytes_returned <= after.inflated_pages * PAGE);
    assert!(
        after.madvise_calls - before.madvise_calls
            <= after.inflated_pages - before.inflated_pages + after.refused_pages
                - before.refused_pages
    );
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let flags = input.byte();
    let deflate_on_oom = flags & 1 != 0;
    let mut acked = features::VERSION_1;
    if flags & 2 != 0 {
        acked |= features::RING_EVENT_IDX;
    }
    let size = 1u16 << ((flags >> 2) % 9);
    assert!(size <= QUEUE_SIZE);
    let target = input.u32();
    let mut model = Model { target, actual: 0 };

    let mut rig = Rig {
        mem: memory_with_marker(),
        balloon: Balloon::new(BalloonConfig {
            target_pages: target,
            deflate_on_oom,
            stats_polling_interval_s: 0,
        }),
        tqs: QUEUE_BASES.map(|b| TestQueue::new(b, size)),
        used_seen: [0; 2],
        size,
        acked,
    };
    rig.activate();
    let mut last_pfn = 0u32;

    while !input.is_empty() {
        match input.byte() % 10 {
            // A well-linked chain: `q n (kind addr.. len)*`.
            0 => {
                let q = usize::from(input.byte() & 1);
                let n = 1 + usize::from(input.byte() % 4);
                let mut bufs = Vec::with_capacity(n);
                for _ in 0..n {
                    let kind = input.byte();
                    let addr = input.buffer_addr(kind, DATA_BASE, DATA_SIZE);
                    let len = if kind & 4 != 0 {
                        input.u32()
                    } else {
                        u32::from(input.byte()) * 4 + u32::from(kind >> 6)
                    };
                    bufs.push((addr, len, kind & 8 != 0));
                }
                let mem = rig.mem.clone();
                rig.tqs[q].add_chain(&mem, &bufs);
            }
            // A PFN array in the data area: `at(u16) count (sel pfn..)*`.
            1 => {
                let at = DATA_BASE + u64::from(input.u16()) % DATA_SIZE;
                let count = usize::from(input.byte() % 64);
                let mut bytes = Vec::with_capacity(count * 4);
                for _ in 0..count {
                    let sel = input.byte();
                    let pfn = match sel % 4 {
                        // A page of RAM.
                        0 => u32::from(input.byte()) % (MAIN_SIZE / PAGE) as u32,
                        // Next to the previous PFN (runs).
                        1 => {
                            if sel & 0x80 != 0 {
                                last_pfn.wrapping_sub(1)
                            } else {
                                last_pfn.wrapping_add(1)
                            }
                        }
                        // The short region, whole page or straddling its end.
                        2 => (SHORT_BASE / PAGE) as u32 + u32::from(sel >> 7),
                        _ => input.u32(),
                    };
                    last_pfn = pfn;
                    bytes.extend_from_slice(&pfn.to_le_bytes());
                }
                // Whatever fits in memory; the rest is dropped.
                let _ = rig.mem.write(&bytes, GuestAddress(at));
            }
            // A raw descriptor: `q index addr len flags next`.
            2 => {
                let q = usize::from(input.byte() & 1);
                let index = input.u16();
                let addr = input.u64();
                let len = input.u32();
                let flags = input.u16();
                let next = input.u16();
                rig.tqs[q].write_desc(&rig.mem, index, addr, len, flags, next);
            }
            // Publish a raw head: `q head`.
            3 => {
                let q = usize::from(input.byte() & 1);
                let head = input.u16();
                let mem = rig.mem.clone();
                rig.tqs[q].push_avail(&mem, head);
            }
            // Notify: inflate, deflate, or a queue the device does not have.
            4 => rig.process(usize::from(input.byte() % 3)),
            // Config write: `offset size bytes..`.
            5 => {
                let offset = u64::from(input.byte() % 12);
                let size = usize::from(input.byte() % 9);
                let bytes = input.bytes(size);
                rig.balloon.write_config(offset, &bytes);
                let mut actual = model.actual.to_le_bytes();
                for (i, &b) in bytes.iter().enumerate() {
                    let pos = offset as usize + i;
                    if (4..8).contains(&pos) {
                        actual[pos - 4] = b;
                    }
                }
                model.actual = u32::from_le_bytes(actual);
                assert_eq!(rig.balloon.actual_pages(), model.actual);
                assert_eq!(rig.balloon.target_pages(), model.target);
            }
            // Config read: `offset size`, `offset` may be huge.
            6 => {
                let offset = if input.byte() & 1 != 0 {
                    input.u64()
                } else {
                    u64::from(input.byte() % 12)
                };
                let mut buf = vec![0xeeu8; usize::from(input.byte() % 9)];
                rig.balloon.read_config(offset, &mut buf);
                let mut config = model.target.to_le_bytes().to_vec();
                config.extend_from_slice(&model.actual.to_le_bytes());
                for (i, &b) in buf.iter().enumerate() {
                    let expected = usize::try_from(offset)
                        .ok()
                        .and_then(|o| o.checked_add(i))
                        .and_then(|p| config.get(p).copied())
                        .unwrap_or(0);
                    assert_eq!(b, expected, "config byte {i} at offset {offset:#x}");
                }
            }
            7 => {
                model.target = input.u32();
                rig.balloon
                    .set_target_pages(model.target)
                    .expect("set_target_pages");
                assert_eq!(rig.balloon.target_pages(), model.target);
            }
            // Raw bytes anywhere in RAM except the used rings: `addr(u32) n bytes..`.
            8 => {
                let addr = u64::from(input.u32()) % MAIN_SIZE;
                let n = usize::from(input.byte() % 16);
                let bytes = input.bytes(n);
                let end = addr + bytes.len() as u64;
                let hits_used = rig.tqs.iter().any(|t| {
                    let used_page = t.used / PAGE * PAGE;
                    addr < used_page + PAGE && end > used_page
                });
                if !hits_used {
                    let _ = rig.mem.write(&bytes, GuestAddress(addr));
                }
            }
            // Reset (and maybe snapshot into a new device), then activate again.
            _ => {
                let snapshot = input.byte() & 1 != 0;
                rig.balloon.reset();
                model.actual = 0;
                assert_eq!(rig.balloon.actual_pages(), 0);
                if snapshot {
                    let state = rig.balloon.save_state();
                    let mut fresh = Balloon::new(BalloonConfig {
                        target_pages: 0,
                        deflate_on_oom,
                        stats_polling_interval_s: 0,
                    });
                    fresh.restore_state(&state).expect("restore");
                    assert_eq!(fresh.save_state(), state);
                    rig.balloon = fresh;
                }
                rig.activate();
            }
        }
    }
});
