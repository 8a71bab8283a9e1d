//! Fuzzes virtio-net over the socketpair backend: transmit and receive chains (well linked or
//! raw descriptors, in or out of guest memory, either direction), frames of any length sent by
//! the peer, queue and backend events, ring corruption, reset and state restore. Nothing may
//! panic; the peer only ever receives frames of a legal size; transmit chains come back with
//! length 0 and receive chains never claim more than the largest frame.
//!
//! Input: `shift features(8)` then operations `op args...`:
//! - the queue size is `1 << (shift % 9)` (1..=256); `features & AVAIL_FEATURES | VERSION_1`
//!   are acked;
//! - `op % 10`: 0 rx chain, 1 tx chain: `n` then `n % 4 + 1` buffers `sel addr len [k data]`
//!   (`sel & 0x80`: 8-byte address, else one byte, `DATA + b * 0x400`; `sel & 0x40`: 8-byte
//!   length, else `b * 64`; `sel & 0x20`: the wrong direction; readable buffers get `k` data
//!   bytes); 2 raw descriptor `q index addr(8) len(8) flags next push head`; 3 peer frame
//!   `len(2) k data... process`; 4 process_queue `q`; 5 process_backend `token`; 6 drain the
//!   peer; 7 reset and re-activate `features(8)`; 8 corrupt a ring `q off(2) k data...`;
//!   9 save and restore the state.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;
use common::Cursor;
use vmm_devices::virtio::net::{
    Net, NetBackend, SocketPairBackend, AVAIL_FEATURES, BACKEND_TOKEN, MAX_BUFFER_LEN, NET_HDR_LEN,
};
use vmm_devices::virtio::test_utils::{self, test_memory, TestQueue};
use vmm_devices::virtio::{features, VirtioDevice};
use vmm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 0x40000;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x8000;
const DATA: u64 = 0x10000;
/// Descriptor table and available ring of a TestQueue; the used ring (device-written) is
/// left alone so the checks below read what the device wrote.
const DRIVER_RINGS_LEN: u64 = 0x5000;
/// Shortest frame the device sends to the backend: header plus an Ethernet header.
const MIN_SENT: usize = NET_HDR_LEN + 14;

struct Rings {
    rx: TestQueue,
    tx: TestQueue,
    rx_seen: u16,
    tx_seen: u16,
    /// Some descriptor may point into the rings (or an indirect table may): the device then
    /// legally overwrites used entries with frame data, so they are not checked.
    exposed: bool,
}

impl Rings {
    fn new(mem: &GuestMemoryMmap, size: u16) -> Self {
        // Fresh rings, as a driver sets them up after a reset.
        Rings {
            rx: TestQueue::zeroed(mem, RX_RING, size),
            tx: TestQueue::zeroed(mem, TX_RING, size),
            rx_seen: 0,
            tx_seen: 0,
            exposed: false,
        }
    }

    /// Checks the used entries the device added since the last call.
    fn check_used(&mut self, mem: &GuestMemoryMmap) {
        if self.exposed {
            return;
        }
        let size = self.rx.size;
        let idx = self.rx.used_idx(mem);
        let new = idx.wrapping_sub(self.rx_seen).min(size);
        for n in 0..new {
            let (_, len) = self.rx.used_elem(mem, idx.wrapping_sub(1).wrapping_sub(n));
            assert!(len as usize <= MAX_BUFFER_LEN, "rx used len {len}");
        }
        self.rx_seen = idx;
        let idx = self.tx.used_idx(mem);
        let new = idx.wrapping_sub(self.tx_seen).min(size);
        for n in 0..new {
            let (_, len) = self.tx.used_elem(mem, idx.wrapping_sub(1).wrapping_sub(n));
            assert_eq!(len, 0, "tx chains are returned with length 0");
        }
        self.tx_seen = idx;
    }
}

fn activate(
    net: &mut Net<GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    rings: &Rings,
    acked: u64,
) -> bool {
    let acked = acked & AVAIL_FEATURES | features::VERSION_1;
    test_utils::activate(net, mem, [&rings.rx, &rings.tx], acked).is_ok()
}

fn len_from(input: &mut Cursor, wide: bool) -> u32 {
    if wide {
        input.u64() as u32
    } else {
        u32::from(input.byte()) * 64
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let size = 1u16 << (input.byte() % 9);
    let mut acked = input.u64();
    let (backend, mut peer) = SocketPairBackend::pair().expect("socketpair");
    let mut net = Net::new(Box::new(backend), Some([0x02, 0, 0, 0, 0, 1]));
    let events = net.backend_fds()[0].events;
    let mem = test_memory(MEM_SIZE);
    let mut rings = Rings::new(&mem, size);
    let mut active = activate(&mut net, &mem, &rings, acked);
    let mut out = vec![0u8; MAX_BUFFER_LEN + 1];

    while !input.is_empty() {
        let op = input.byte() % 10;
        let mut result = Ok(());
        match op {
            0 | 1 => {
                let rx = op == 0;
                let n = usize::from(input.byte() % 4) + 1;
                let mut buffers = Vec::with_capacity(n);
                for _ in 0..n {
                    let sel = input.byte();
                    let addr = if sel & 0x80 != 0 {
                        input.u64()
                    } else {
                        DATA + u64::from(input.byte()) * 0x400
                    };
                    let len = len_from(&mut input, sel & 0x40 != 0);
                    let writable = rx != (sel & 0x20 != 0);
                    if !writable {
                        let k = usize::from(input.byte());
                        // Out of memory is fine: the device must cope with it.
                        let _ = mem.write_slice(&input.bytes(k), GuestAddress(addr));
                    }
                    rings.exposed |= addr < DATA;
                    buffers.push((addr, len, writable));
                }
                let q = if rx { &mut rings.rx } else { &mut rings.tx };
                q.add_chain(&mem, &buffers);
            }
            2 => {
                let rx = input.byte() & 1 == 0;
                let index = u16::from(input.byte());
                let addr = input.u64();
                let len = input.u64() as u32;
                let flags = u16::from(input.byte() & 7);
                let next = u16::from(input.byte());
                let push = input.byte();
                let head = u16::from(input.byte());
                rings.exposed |= addr < DATA || flags & 4 != 0;
                let q = if rx { &mut rings.rx } else { &mut rings.tx };
                q.write_desc(&mem, index, addr, len, flags, next);
                if push & 1 != 0 {
                    q.push_avail(&mem, head);
                }
            }
            3 => {
                let len = usize::from(u16::from_le_bytes([input.byte(), input.byte()]))
                    .min(MAX_BUFFER_LEN + 16);
                let k = usize::from(input.byte());
                let mut frame = input.bytes(k.min(len));
                frame.resize(len, 0x5a);
                // A full socket refuses the frame: the network dropped it.
                let _ = peer.write_frame(&frame);
                if input.byte() & 1 != 0 {
                    result = net.process_backend(BACKEND_TOKEN, events);
                }
            }
            4 => result = net.process_queue(usize::from(input.byte() % 3)),
            5 => result = net.process_backend(u32::from(input.byte() % 2), events),
            6 => {
                while let Ok(n) = peer.read_frame(&mut out) {
                    assert!((MIN_SENT..=MAX_BUFFER_LEN).contains(&n), "sent {n} bytes");
                }
            }
            7 => {
                net.reset();
                assert!(!net.is_activated());
                acked = input.u64();
                rings = Rings::new(&mem, size);
                active = activate(&mut net, &mem, &rings, acked);
            }
            8 => {
                let base = if input.byte() & 1 == 0 {
                    RX_RING
                } else {
                    TX_RING
                };
                let off =
                    u64::from(u16::from_le_bytes([input.byte(), input.byte()])) % DRIVER_RINGS_LEN;
                let k = usize::from(input.byte() % 16);
                rings.exposed = true;
                let _ = mem.write_slice(&input.bytes(k), GuestAddress(base + off));
            }
            _ => {
                let state = net.save_state();
                net.restore_state(&state).expect("own state restores");
                assert!(net.mac() == [0x02, 0, 0, 0, 0, 1]);
            }
        }
        if result.is_err() {
            // The transport would set DEVICE_NEEDS_RESET; the driver resets and starts over.
            net.reset();
            rings = Rings::new(&mem, size);
            active = activate(&mut net, &mem, &rings, acked);
        } else if active {
            rings.check_used(&mem);
        }
        if !active {
            active = activate(&mut net, &mem, &rings, acked);
        }
        let stats = net.stats();
        assert!(stats.tx_bytes <= stats.tx_frames * MAX_BUFFER_LEN as u64);
        assert!(stats.rx_bytes <= stats.rx_frames * MAX_BUFFER_LEN as u64);
    }
});
