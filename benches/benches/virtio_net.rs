//! The virtio-net data path: what the event loop does for one frame, through
//! `process_queue` (transmit) and `process_backend` (receive), on the socketpair backend.
//!
//! Each transmit iteration makes one chain available, processes the transmit queue (copy out of
//! guest memory, one `send`) and reads the frame back on the peer; each receive iteration makes
//! one buffer available, sends one frame from the peer, and processes the backend event (one
//! `recv` until `EAGAIN`, copy into guest memory, used ring). All features are negotiated, as a
//! Linux guest does; EVENT_IDX keeps interrupts off the path most of the time.
// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmm_devices::virtio::net::{
    Net, NetBackend, SocketPairBackend, AVAIL_FEATURES, BACKEND_TOKEN, MAX_BUFFER_LEN, NET_HDR_LEN,
    QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use vmm_devices::virtio::test_utils::{activate, test_memory, TestQueue};
use vmm_devices::virtio::VirtioDevice;
use vmm_devices::EventFd;
use vmm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const RX_RING: u64 = 0;
const TX_RING: u64 = 0x8000;
const DATA: u64 = 0x10000;
const MEM_SIZE: usize = 0x40000;
/// A standard Ethernet frame (1500-byte MTU plus the Ethernet header).
const MTU_FRAME: usize = 1514;
/// A TCP segmentation-offload frame as Linux sends it: 64 KiB.
const TSO_FRAME: usize = 65536;
/// Linux puts large frames in page-sized buffers.
const PAGE: usize = 4096;

struct Setup {
    net: Net<GuestMemoryMmap>,
    peer: SocketPairBackend,
    mem: GuestMemoryMmap,
    rxq: TestQueue,
    txq: TestQueue,
    _irq: EventFd,
}

fn setup() -> Setup {
    let (backend, peer) = SocketPairBackend::pair().expect("socketpair");
    let mut net = Net::new(Box::new(backend), None);
    let mem = test_memory(MEM_SIZE);
    let rxq = TestQueue::new(RX_RING, QUEUE_SIZE);
    let txq = TestQueue::new(TX_RING, QUEUE_SIZE);
    let (_, irq) = activate(&mut net, &mem, [&rxq, &txq], AVAIL_FEATURES).expect("activate");
    Setup {
        net,
        peer,
        mem,
        rxq,
        txq,
        _irq: irq,
    }
}

/// Header + `len` frame bytes.
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN];
    f.extend((0..len).map(|i| i as u8));
    f
}

fn bench_tx(c: &mut Criterion, name: &str, frame_len: usize) {
    let mut s = setup();
    let f = frame(frame_len);
    s.mem.write_slice(&f, GuestAddress(DATA)).expect("frame");
    // Page-sized buffers, as the guest's scatter-gather list gives them.
    let buffers: Vec<(u64, u32, bool)> = (0..f.len())
        .step_by(PAGE)
        .map(|off| {
            let len = PAGE.min(f.len() - off);
            (DATA + off as u64, len as u32, false)
        })
        .collect();
    let mut out = vec![0u8; MAX_BUFFER_LEN + 1];
    let mut group = c.benchmark_group("virtio_net");
    group.throughput(Throughput::Bytes(frame_len as u64));
    group.bench_function(name, |b| {
        b.iter(|| {
            s.txq.add_chain(&s.mem, &buffers);
            s.net.process_queue(TX_QUEUE).expect("tx");
            let n = s.peer.read_frame(&mut out).expect("frame at the peer");
            assert_eq!(n, f.len());
            black_box(n)
        })
    });
    group.finish();
    assert_eq!(s.net.stats().tx_dropped, 0);
}

fn tx_1500(c: &mut Criterion) {
    bench_tx(c, "tx_1500", MTU_FRAME);
}

fn tx_64k_tso(c: &mut Criterion) {
    bench_tx(c, "tx_64k_tso", TSO_FRAME);
}

fn rx_1500(c: &mut Criterion) {
    let mut s = setup();
    let f = frame(MTU_FRAME);
    // IN | EDGE_TRIGGERED, what the event loop reports (this crate has no vmm-sys-util).
    let events = s.net.backend_fds()[0].events;
    let mut group = c.benchmark_group("virtio_net");
    group.throughput(Throughput::Bytes(MTU_FRAME as u64));
    group.bench_function("rx_1500", |b| {
        b.iter(|| {
            // A mergeable buffer of the size Linux posts for a 1500 MTU.
            s.rxq.add_chain(&s.mem, &[(DATA, 1536, true)]);
            s.peer.write_frame(&f).expect("send");
            s.net.process_backend(BACKEND_TOKEN, events).expect("rx");
        })
    });
    group.finish();
    let stats = s.net.stats();
    assert_eq!(stats.rx_dropped, 0);
    assert_eq!(
        u64::from(s.rxq.used_idx(&s.mem)),
        stats.rx_frames % 65536,
        "every frame delivered"
    );
    // A receive-queue notify with nothing waiting is one `recv` that finds `EAGAIN`.
    s.net.process_queue(RX_QUEUE).expect("rx notify");
}

criterion_group!(benches, tx_1500, rx_1500, tx_64k_tso);
criterion_main!(benches);
