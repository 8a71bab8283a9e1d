use std::io;

use virtio_bindings::virtio_net as vnet;
use vmm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::features::bit;
use super::mac::derived_mac;
use super::tap::offload;
use super::*;
use crate::virtio::test_utils::{
    activate, test_memory, wait_readable, TestQueue, DESC_F_NEXT, DESC_F_WRITE,
};
use crate::virtio::{device_type, features, VirtioDevice, VirtioDeviceState, VirtioError};
use crate::EventFd;

/// The device on the VMM's memory type (dirty bitmap included).
type Net = super::Net<GuestMemoryMmap>;

const RX_RING: u64 = 0;
const TX_RING: u64 = 0x8000;
const DATA: u64 = 0x10000;
const MEM_SIZE: usize = 0x40000;
const ALL: u64 = AVAIL_FEATURES;
const NO_MRG: u64 = AVAIL_FEATURES & !bit(vnet::VIRTIO_NET_F_MRG_RXBUF);

struct Harness {
    net: Net,
    peer: SocketPairBackend,
    mem: GuestMemoryMmap,
    rxq: TestQueue,
    txq: TestQueue,
    irq: EventFd,
}

impl Harness {
    fn new(acked: u64) -> Self {
        let (backend, peer) = SocketPairBackend::pair().unwrap();
        let mut net = Net::new(Box::new(backend), Some([0x02, 0, 0, 0, 0, 1]));
        let mem = test_memory(MEM_SIZE);
        let rxq = TestQueue::new(RX_RING, QUEUE_SIZE);
        let txq = TestQueue::new(TX_RING, QUEUE_SIZE);
        let (_, irq) = activate(&mut net, &mem, [&rxq, &txq], acked).unwrap();
        Harness {
            net,
            peer,
            mem,
            rxq,
            txq,
            irq,
        }
    }

    fn interrupts(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }

    fn peer_frame(&mut self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_BUFFER_LEN + 1];
        match self.peer.read_frame(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("{e}"),
        }
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// Header + frame: a distinct byte pattern of `len` frame bytes after a header whose
/// `num_buffers` is garbage (the device must overwrite it).
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN];
    f[0] = vnet::VIRTIO_NET_HDR_F_DATA_VALID as u8;
    f[10] = 0x55;
    f[11] = 0x55;
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

fn num_buffers(h: &Harness, addr: u64) -> u16 {
    u16::from_le_bytes(h.read(addr + 10, 2).try_into().unwrap())
}

#[test]
fn tx_frame_reaches_the_peer_header_included() {
    let mut h = Harness::new(ALL);
    let f = frame(60, 1);
    h.mem
        .write_slice(&f[..NET_HDR_LEN], GuestAddress(DATA))
        .unwrap();
    h.mem
        .write_slice(&f[NET_HDR_LEN..], GuestAddress(DATA + 0x1000))
        .unwrap();
    let head = h.txq.add_chain(
        &h.mem,
        &[
            (DATA, NET_HDR_LEN as u32, false),
            (DATA + 0x1000, 60, false),
        ],
    );
    h.net.process_queue(TX_QUEUE).unwrap();
    assert_eq!(h.peer_frame().unwrap(), f);
    assert_eq!(h.peer_frame(), None);
    assert_eq!(h.txq.used_idx(&h.mem), 1);
    assert_eq!(h.txq.used_elem(&h.mem, 0), (u32::from(head), 0));
    assert_eq!(h.interrupts(), 1);
    let s = h.net.stats();
    assert_eq!((s.tx_frames, s.tx_bytes, s.tx_dropped), (1, 60, 0));
    let m = h.net.metrics();
    assert_eq!(m.tx_packets_count.get(), 1);
    assert_eq!(m.tx_bytes_count.get(), 60);
    assert_eq!(m.tx_queue_event_count.get(), 1);
}

#[test]
fn tx_of_a_64k_tso_frame_and_of_a_full_backend() {
    let mut h = Harness::new(ALL);
    let f = frame(MAX_FRAME_LEN, 3);
    h.mem.write_slice(&f, GuestAddress(DATA)).unwrap();
    h.txq.add_chain(&h.mem, &[(DATA, f.len() as u32, false)]);
    h.net.process_queue(TX_QUEUE).unwrap();
    assert_eq!(h.peer_frame().unwrap(), f);
    // Nobody reads the peer: the socket fills, frames are dropped, nothing blocks.
    for _ in 0..32 {
        h.txq.add_chain(&h.mem, &[(DATA, f.len() as u32, false)]);
    }
    h.net.process_queue(TX_QUEUE).unwrap();
    let s = h.net.stats();
    assert_eq!(s.tx_frames + s.tx_dropped, 33);
    assert!(s.tx_dropped > 0);
    assert_eq!(h.txq.used_idx(&h.mem), 33);
}

#[test]
fn tx_oversized_chain_is_dropped_but_returned() {
    let mut h = Harness::new(ALL);
    let head = h.txq.add_chain(
        &h.mem,
        &[(DATA, 40000, false), (DATA + 40000, 40000, false)],
    );
    h.net.process_queue(TX_QUEUE).unwrap();
    assert_eq!(h.peer_frame(), None);
    assert_eq!(h.txq.used_elem(&h.mem, 0), (u32::from(head), 0));
    assert_eq!(h.net.stats().tx_dropped, 1);
}

#[test]
fn tx_descriptor_outside_memory_or_too_short_is_dropped() {
    let mut h = Harness::new(ALL);
    h.txq
        .add_chain(&h.mem, &[(MEM_SIZE as u64 - 8, 100, false)]);
    h.txq.add_chain(&h.mem, &[(u64::MAX - 4, 100, false)]);
    h.txq
        .add_chain(&h.mem, &[(DATA, NET_HDR_LEN as u32, false)]);
    // A writable buffer in a transmit chain is skipped, the rest still goes out.
    let f = frame(20, 9);
    h.mem.write_slice(&f, GuestAddress(DATA)).unwrap();
    h.txq.add_chain(
        &h.mem,
        &[(DATA + 0x2000, 64, true), (DATA, f.len() as u32, false)],
    );
    h.net.process_queue(TX_QUEUE).unwrap();
    assert_eq!(h.txq.used_idx(&h.mem), 4);
    assert_eq!(h.net.stats().tx_dropped, 3);
    assert_eq!(h.peer_frame().unwrap(), f);
    assert_eq!(h.peer_frame(), None);
}

#[test]
fn rx_frame_into_one_chain() {
    let mut h = Harness::new(NO_MRG);
    let head = h.rxq.add_chain(
        &h.mem,
        &[
            (DATA, NET_HDR_LEN as u32, true),
            (DATA + 0x1000, 1514, true),
        ],
    );
    let f = frame(100, 5);
    h.peer.write_frame(&f).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 1);
    assert_eq!(
        h.rxq.used_elem(&h.mem, 0),
        (u32::from(head), f.len() as u32)
    );
    assert_eq!(num_buffers(&h, DATA), 1);
    assert_eq!(h.read(DATA, 10), f[..10]);
    assert_eq!(h.read(DATA + 0x1000, 100), f[NET_HDR_LEN..]);
    assert_eq!(h.interrupts(), 1);
    let s = h.net.stats();
    assert_eq!((s.rx_frames, s.rx_bytes, s.rx_dropped), (1, 100, 0));
}

#[test]
fn rx_mergeable_frame_across_chains_sets_num_buffers() {
    let mut h = Harness::new(ALL);
    let heads: Vec<u16> = (0..4)
        .map(|i| h.rxq.add_chain(&h.mem, &[(DATA + i * 0x1000, 1000, true)]))
        .collect();
    let f = frame(2500, 7);
    h.peer.write_frame(&f).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 3);
    let lens: Vec<(u32, u32)> = (0..3).map(|n| h.rxq.used_elem(&h.mem, n)).collect();
    assert_eq!(
        lens,
        vec![
            (u32::from(heads[0]), 1000),
            (u32::from(heads[1]), 1000),
            (u32::from(heads[2]), 512)
        ]
    );
    assert_eq!(num_buffers(&h, DATA), 3);
    let mut got = h.read(DATA, 1000);
    got.extend(h.read(DATA + 0x1000, 1000));
    got.extend(h.read(DATA + 0x2000, 512));
    assert_eq!(got[..10], f[..10]);
    assert_eq!(got[NET_HDR_LEN..], f[NET_HDR_LEN..]);
    // The fourth chain is still there for the next frame.
    let small = frame(50, 8);
    h.peer.write_frame(&small).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert_eq!(h.rxq.used_elem(&h.mem, 3), (u32::from(heads[3]), 62));
    assert_eq!(num_buffers(&h, DATA + 0x3000), 1);
}

#[test]
fn rx_num_buffers_split_across_descriptors() {
    let mut h = Harness::new(ALL);
    // The header straddles two descriptors (11 + 1 bytes) of the first chain.
    h.rxq.add_chain(
        &h.mem,
        &[
            (DATA, 11, true),
            (DATA + 0x100, 1, true),
            (DATA + 0x200, 20, true),
        ],
    );
    h.rxq.add_chain(&h.mem, &[(DATA + 0x1000, 1000, true)]);
    h.peer.write_frame(&frame(100, 1)).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 2);
    assert_eq!(h.read(DATA + 10, 1), [2]);
    assert_eq!(h.read(DATA + 0x100, 1), [0]);
}

#[test]
fn rx_waits_for_buffers_then_delivers_after_a_notify() {
    let mut h = Harness::new(ALL);
    let f1 = frame(80, 1);
    let f2 = frame(90, 2);
    h.peer.write_frame(&f1).unwrap();
    h.peer.write_frame(&f2).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 0);
    assert_eq!(h.net.stats(), NetStats::default());
    assert_eq!(h.interrupts(), 0);
    // With EVENT_IDX the device asked to be notified at the first new buffer.
    let avail_event: u16 = h
        .mem
        .read_obj(GuestAddress(h.rxq.used + 4 + 8 * u64::from(QUEUE_SIZE)))
        .unwrap();
    assert_eq!(avail_event, 0);
    // Another readable edge changes nothing, and nothing spins.
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 0);

    h.rxq.add_chain(&h.mem, &[(DATA, 2048, true)]);
    h.net.process_queue(RX_QUEUE).unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 1);
    assert_eq!(h.read(DATA + NET_HDR_LEN as u64, 80), f1[NET_HDR_LEN..]);
    let avail_event: u16 = h
        .mem
        .read_obj(GuestAddress(h.rxq.used + 4 + 8 * u64::from(QUEUE_SIZE)))
        .unwrap();
    assert_eq!(avail_event, 1);

    h.rxq.add_chain(&h.mem, &[(DATA + 0x1000, 2048, true)]);
    h.net.process_queue(RX_QUEUE).unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 2);
    assert_eq!(
        h.read(DATA + 0x1000 + NET_HDR_LEN as u64, 90),
        f2[NET_HDR_LEN..]
    );
    assert_eq!(h.net.stats().rx_frames, 2);
}

#[test]
fn rx_mergeable_frame_waits_for_enough_chains() {
    let mut h = Harness::new(ALL);
    h.rxq.add_chain(&h.mem, &[(DATA, 1000, true)]);
    h.peer.write_frame(&frame(1500, 1)).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    // One chain is not enough: it stays available, nothing is used yet.
    assert_eq!(h.rxq.used_idx(&h.mem), 0);
    h.rxq.add_chain(&h.mem, &[(DATA + 0x1000, 1000, true)]);
    h.net.process_queue(RX_QUEUE).unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 2);
    assert_eq!(num_buffers(&h, DATA), 2);
}

#[test]
fn rx_frame_larger_than_the_buffers_is_dropped() {
    let mut h = Harness::new(NO_MRG);
    let head = h.rxq.add_chain(&h.mem, &[(DATA, 200, true)]);
    h.peer.write_frame(&frame(500, 1)).unwrap();
    let small = frame(100, 2);
    h.peer.write_frame(&small).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    // The chain was kept for the next frame, which fits.
    assert_eq!(h.rxq.used_idx(&h.mem), 1);
    assert_eq!(h.rxq.used_elem(&h.mem, 0), (u32::from(head), 112));
    assert_eq!(h.read(DATA + 12, 100), small[12..]);
    let s = h.net.stats();
    assert_eq!((s.rx_frames, s.rx_dropped), (1, 1));

    // With mergeable buffers a frame that no full ring could hold is dropped too.
    let mut h = Harness::new(ALL);
    for i in 0..QUEUE_SIZE {
        h.rxq
            .add_chain(&h.mem, &[(DATA + u64::from(i) * 16, 16, true)]);
    }
    h.peer.write_frame(&frame(8000, 1)).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 0);
    assert_eq!(h.net.stats().rx_dropped, 1);
    // Short frames (no Ethernet header) are dropped as well.
    h.peer.write_frame(&frame(3, 1)).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert_eq!(h.net.stats().rx_dropped, 2);
}

#[test]
fn rx_chain_with_read_only_descriptor_is_returned_empty() {
    let mut h = Harness::new(ALL);
    let bad = h
        .rxq
        .add_chain(&h.mem, &[(DATA, 12, true), (DATA + 0x100, 2000, false)]);
    let outside = h
        .rxq
        .add_chain(&h.mem, &[(MEM_SIZE as u64 - 16, 2000, true)]);
    let good = h.rxq.add_chain(&h.mem, &[(DATA + 0x1000, 2000, true)]);
    let f = frame(100, 4);
    h.peer.write_frame(&f).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 3);
    assert_eq!(h.rxq.used_elem(&h.mem, 0), (u32::from(bad), 0));
    assert_eq!(h.rxq.used_elem(&h.mem, 1), (u32::from(outside), 0));
    assert_eq!(h.rxq.used_elem(&h.mem, 2), (u32::from(good), 112));
    assert_eq!(h.read(DATA + 0x1000 + 12, 100), f[12..]);
    // The read-only buffer was not written.
    assert_eq!(h.read(DATA + 0x100, 100), vec![0; 100]);
}

#[test]
fn rx_hostile_head_index_and_ring_index() {
    let mut h = Harness::new(ALL);
    // A head index past the ring: nothing can be written or returned; the frame waits.
    h.rxq.push_avail(&h.mem, QUEUE_SIZE + 3);
    h.peer.write_frame(&frame(100, 1)).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 0);
    h.rxq.add_chain(&h.mem, &[(DATA, 2000, true)]);
    h.net.process_queue(RX_QUEUE).unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 1);
    assert_eq!(h.net.stats().rx_frames, 1);

    // An available index more than a ring ahead is a broken queue: an error, no spin.
    h.mem
        .write_obj(1000u16, GuestAddress(h.rxq.avail + 2))
        .unwrap();
    h.peer.write_frame(&frame(100, 1)).unwrap();
    assert!(h.net.process_queue(RX_QUEUE).is_err());
    h.mem
        .write_obj(1000u16, GuestAddress(h.txq.avail + 2))
        .unwrap();
    assert!(h.net.process_queue(TX_QUEUE).is_err());
}

#[test]
fn rx_descriptor_loop_is_bounded() {
    let mut h = Harness::new(ALL);
    // Descriptor 0 points at itself.
    h.rxq
        .write_desc(&h.mem, 0, DATA, 4, DESC_F_WRITE | DESC_F_NEXT, 0);
    h.rxq.push_avail(&h.mem, 0);
    h.peer.write_frame(&frame(100, 1)).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    // 256 x 4 bytes fit 112: used once, with the frame.
    assert_eq!(h.rxq.used_elem(&h.mem, 0), (0, 112));
}

#[test]
fn offloads_follow_the_guest_features() {
    let h = Harness::new(ALL);
    assert_eq!(
        h.peer.offload(),
        Some(
            offload::TUN_F_CSUM
                | offload::TUN_F_TSO4
                | offload::TUN_F_TSO6
                | offload::TUN_F_TSO_ECN
        )
    );
    let h = Harness::new(features::VERSION_1 | bit(vnet::VIRTIO_NET_F_GUEST_CSUM));
    assert_eq!(h.peer.offload(), Some(offload::TUN_F_CSUM));
    // TSO without checksum offload breaks the spec's dependencies: the tap gets neither.
    let h = Harness::new(features::VERSION_1 | bit(vnet::VIRTIO_NET_F_GUEST_TSO4));
    assert_eq!(h.peer.offload(), Some(0));
    let h = Harness::new(features::VERSION_1);
    assert_eq!(h.peer.offload(), Some(0));
}

#[test]
fn config_space_and_features() {
    let (backend, _peer) = SocketPairBackend::pair().unwrap();
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    let net = Net::new(Box::new(backend), Some(mac));
    assert_eq!(net.device_type(), device_type::NET);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    let mut data = [0xffu8; 6];
    net.read_config(0, &mut data);
    assert_eq!(data, mac);
    let mut status = [0u8; 2];
    net.read_config(6, &mut status);
    assert_eq!(u16::from_le_bytes(status), 1, "link up");
    net.read_config(8, &mut status);
    assert_eq!(u16::from_le_bytes(status), 1, "one queue pair");
    let mut past = [0xffu8; 4];
    net.read_config(10, &mut past);
    assert_eq!(past, [0; 4]);
    let f = net.device_features();
    for b in [
        vnet::VIRTIO_NET_F_MAC,
        vnet::VIRTIO_NET_F_STATUS,
        vnet::VIRTIO_NET_F_MRG_RXBUF,
        vnet::VIRTIO_NET_F_CSUM,
        vnet::VIRTIO_NET_F_HOST_TSO4,
        vnet::VIRTIO_NET_F_GUEST_TSO6,
    ] {
        assert_ne!(f & bit(b), 0, "feature {b}");
    }
    assert_ne!(f & features::VERSION_1, 0);
    assert_ne!(f & features::RING_EVENT_IDX, 0);
    assert_eq!(f & bit(vnet::VIRTIO_NET_F_CTRL_VQ), 0);
    assert_eq!(f & bit(vnet::VIRTIO_NET_F_MQ), 0);
    let fds = net.backend_fds();
    assert_eq!(fds.len(), 3, "the backend and the two rate limiters");
    assert_eq!(fds[0].events, EventSet::IN | EventSet::EDGE_TRIGGERED);
    assert_eq!(fds[0].token, BACKEND_TOKEN);
    assert_eq!(
        (fds[1].token, fds[2].token),
        (RX_RATE_LIMITER_TOKEN, TX_RATE_LIMITER_TOKEN)
    );
}

#[test]
fn generated_macs_are_local_unicast_and_distinct() {
    let a = Net::new(Box::new(SocketPairBackend::pair().unwrap().0), None).mac();
    let b = Net::new(Box::new(SocketPairBackend::pair().unwrap().0), None).mac();
    assert_ne!(a, b);
    for mac in [a, b, derived_mac("tap0")] {
        assert_eq!(mac[0] & 0b11, 0b10, "{mac:?}");
    }
    assert_eq!(derived_mac("tap0"), derived_mac("tap0"));
}

#[test]
fn state_round_trip_and_mismatch() {
    let h = Harness::new(ALL);
    let state = h.net.save_state();
    let json = serde_json::to_string(&state).unwrap();
    let back: VirtioDeviceState = serde_json::from_str(&json).unwrap();
    let (backend, _peer) = SocketPairBackend::pair().unwrap();
    let mut other = Net::new(Box::new(backend), None);
    other.restore_state(&back).unwrap();
    assert_eq!(other.mac(), [0x02, 0, 0, 0, 0, 1]);
    let bad = VirtioDeviceState::new(
        "virtio-net",
        &NetState {
            mac: [1, 2, 3, 4, 5, 6],
        },
    )
    .unwrap();
    assert!(matches!(
        other.restore_state(&bad),
        Err(VirtioError::StateMismatch(_))
    ));
}

#[test]
fn reset_drops_the_pending_frame_and_stops_the_device() {
    let mut h = Harness::new(ALL);
    h.peer.write_frame(&frame(100, 1)).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert!(h.net.receiver.pending().is_some());
    h.net.reset();
    assert!(!h.net.is_activated());
    assert!(h.net.receiver.pending().is_none());
    // Not active: queue notifies and backend events do nothing.
    h.peer.write_frame(&frame(100, 2)).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    h.net.process_queue(TX_QUEUE).unwrap();
    assert_eq!(h.net.stats(), NetStats::default());
    // Wrong queue count on activation.
    let e = activate(&mut h.net, &h.mem, [&h.rxq], ALL).unwrap_err();
    assert!(matches!(
        e,
        VirtioError::QueueCount {
            expected: 2,
            got: 1
        }
    ));
}

#[test]
fn activation_takes_frames_that_arrived_before() {
    let (backend, mut peer) = SocketPairBackend::pair().unwrap();
    let mut net = Net::new(Box::new(backend), None);
    let mem = test_memory(MEM_SIZE);
    let mut rxq = TestQueue::new(RX_RING, QUEUE_SIZE);
    let txq = TestQueue::new(TX_RING, QUEUE_SIZE);
    rxq.add_chain(&mem, &[(DATA, 2048, true)]);
    peer.write_frame(&frame(100, 1)).unwrap();
    let (_, irq) = activate(&mut net, &mem, [&rxq, &txq], ALL).unwrap();
    assert_eq!(rxq.used_idx(&mem), 1);
    assert_eq!(irq.read().unwrap(), 1);
}

#[test]
fn event_idx_suppresses_rx_interrupts_the_driver_did_not_ask_for() {
    let mut h = Harness::new(ALL);
    for i in 0..3 {
        h.rxq.add_chain(&h.mem, &[(DATA + i * 0x1000, 2048, true)]);
    }
    // used_event = 1: interrupt once the entry at index 1 is used.
    h.mem
        .write_obj(
            1u16,
            GuestAddress(h.rxq.avail + 4 + 2 * u64::from(QUEUE_SIZE)),
        )
        .unwrap();
    h.peer.write_frame(&frame(100, 1)).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert_eq!(h.interrupts(), 0);
    h.peer.write_frame(&frame(100, 1)).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert_eq!(h.interrupts(), 1);
    h.peer.write_frame(&frame(100, 1)).unwrap();
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert_eq!(h.interrupts(), 0);
}

#[test]
fn state_saved_by_earlier_versions_still_loads() {
    // Earlier versions wrote the device state as a closed enum; it still loads.
    let json = r#"{"Net":{"mac":[2,0,0,0,0,9]}}"#;
    let state: VirtioDeviceState = serde_json::from_str(json).unwrap();
    let (backend, _peer) = SocketPairBackend::pair().unwrap();
    let mut net = Net::new(Box::new(backend), None);
    net.restore_state(&state).unwrap();
    assert_eq!(net.mac(), [2, 0, 0, 0, 0, 9]);
    assert_eq!(
        serde_json::to_string(&net.save_state()).unwrap(),
        r#"{"kind":"virtio-net","state":{"mac":[2,0,0,0,0,9]}}"#
    );
}

/// A limiter of `ops` operations that does not refill within a test.
fn ops_limiter(ops: u64) -> crate::rate_limiter::RateLimiter {
    use crate::rate_limiter::{BucketParams, RateLimiter};
    RateLimiter::new(None, Some(BucketParams::new(ops, 0, 3_600_000))).unwrap()
}

fn limiter_fd(h: &Harness, token: u32) -> std::os::fd::RawFd {
    h.net
        .backend_fds()
        .iter()
        .find(|b| b.token == token)
        .expect("the limiter's descriptor is polled")
        .fd
}

#[test]
fn tx_throttled_chains_wait_in_the_queue_and_leave_in_order() {
    use crate::rate_limiter::BucketUpdate;
    let mut h = Harness::new(ALL);
    h.net.set_rate_limiters(ops_limiter(1000), ops_limiter(2));
    let fd = limiter_fd(&h, TX_RATE_LIMITER_TOKEN);
    let frames: Vec<Vec<u8>> = (0..4).map(|i| frame(60, i)).collect();
    for (i, f) in frames.iter().enumerate() {
        let at = DATA + 0x1000 * i as u64;
        h.mem.write_slice(f, GuestAddress(at)).unwrap();
        h.txq.add_chain(&h.mem, &[(at, f.len() as u32, false)]);
    }
    h.net.process_queue(TX_QUEUE).unwrap();
    assert_eq!(h.txq.used_idx(&h.mem), 2);
    assert_eq!(h.peer_frame().unwrap(), frames[0]);
    assert_eq!(h.peer_frame().unwrap(), frames[1]);
    assert_eq!(h.peer_frame(), None);
    assert_eq!(h.net.throttled_counts(), (0, 1));
    h.net.process_queue(TX_QUEUE).unwrap();
    assert_eq!(h.txq.used_idx(&h.mem), 2, "nothing while blocked");

    h.net
        .update_rate_limiters(
            (BucketUpdate::None, BucketUpdate::None),
            (BucketUpdate::None, BucketUpdate::Disabled),
        )
        .unwrap();
    wait_readable(fd);
    h.net
        .process_backend(TX_RATE_LIMITER_TOKEN, EventSet::IN)
        .unwrap();
    assert_eq!(h.txq.used_idx(&h.mem), 4);
    assert_eq!(h.peer_frame().unwrap(), frames[2]);
    assert_eq!(h.peer_frame().unwrap(), frames[3]);
    assert_eq!(h.net.stats().tx_frames, 4);
}

#[test]
fn rx_throttled_frames_wait_in_the_device_and_arrive_in_order() {
    use crate::rate_limiter::BucketUpdate;
    let mut h = Harness::new(NO_MRG);
    h.net.set_rate_limiters(ops_limiter(1), ops_limiter(1000));
    let fd = limiter_fd(&h, RX_RATE_LIMITER_TOKEN);
    for i in 0..3u64 {
        h.rxq.add_chain(
            &h.mem,
            &[(DATA + 0x1000 * i, (NET_HDR_LEN + 1514) as u32, true)],
        );
    }
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(100, 10 + i)).collect();
    for f in &frames {
        h.peer.write_frame(f).unwrap();
    }
    h.net.process_backend(BACKEND_TOKEN, EventSet::IN).unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 1);
    assert_eq!(h.net.throttled_counts(), (1, 0));
    // A receive-queue notify does not get past the limiter either.
    h.net.process_queue(RX_QUEUE).unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 1);

    h.net
        .update_rate_limiters(
            (BucketUpdate::None, BucketUpdate::Disabled),
            (BucketUpdate::None, BucketUpdate::None),
        )
        .unwrap();
    wait_readable(fd);
    h.net
        .process_backend(RX_RATE_LIMITER_TOKEN, EventSet::IN)
        .unwrap();
    assert_eq!(h.rxq.used_idx(&h.mem), 3);
    for (i, f) in frames.iter().enumerate() {
        let at = DATA + 0x1000 * i as u64;
        assert_eq!(h.read(at + NET_HDR_LEN as u64, 100), f[NET_HDR_LEN..]);
    }
    let s = h.net.stats();
    assert_eq!((s.rx_frames, s.rx_dropped), (3, 0));
}
