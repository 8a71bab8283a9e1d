//! virtio-vsock data path: one 4 KiB RW packet per iteration over an established connection,
//! with a real Unix stream on the host side.
//!
//! - `guest_to_host_4k`: the driver writes a header and 4 KiB into a tx buffer and kicks; the
//!   device parses the packet, copies the payload out of guest memory and sends it on the host
//!   stream; the host program reads it.
//! - `host_to_guest_4k`: the host program writes 4 KiB; the event loop's call into the device
//!   (`process_backend`: inner `epoll_wait`, read from the stream, header and payload into an
//!   rx buffer, used ring, interrupt); the driver reads the packet and gives the buffer back.
//!
//! EVENT_IDX is not acked, so every used buffer raises the interrupt (an eventfd write).
// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmm_devices::virtio::test_utils::TestMemory;
use vmm_devices::virtio::vsock::packet::{op, HEADER_LEN};
use vmm_devices::virtio::vsock::test_driver::{device_in_socket_dir, GuestDriver, SocketDir};
use vmm_devices::virtio::vsock::{Vsock, BUF_ALLOC};

const CID: u64 = 3;
const GUEST_PORT: u32 = 1025;
const HOST_PORT: u32 = 5000;
const PAYLOAD: usize = 4096;
const RX_BUF: u32 = (PAYLOAD + HEADER_LEN) as u32;

struct Setup {
    dev: Vsock<TestMemory>,
    drv: GuestDriver,
    host: UnixStream,
    _listener: UnixListener,
    _dir: SocketDir,
}

/// A guest-initiated connection from `GUEST_PORT` to `HOST_PORT`, accepted by the host.
fn connected() -> Setup {
    let (dir, uds, mut dev) = device_in_socket_dir(CID);
    let listener =
        UnixListener::bind(format!("{}_{HOST_PORT}", uds.display())).expect("host listener");
    let mut drv = GuestDriver::new(CID);
    drv.post_rx(128, RX_BUF);
    drv.activate(&mut dev, 0).expect("activate");
    let mut req = drv.header(GUEST_PORT, HOST_PORT, op::REQUEST);
    // The guest can always take more; the host->guest bench also acks what it read.
    req.buf_alloc = BUF_ALLOC;
    drv.send(&mut dev, &req, &[]).expect("request");
    let resp = drv.received();
    assert_eq!(resp.len(), 1);
    assert_eq!(resp[0].hdr.op, op::RESPONSE);
    drv.post_rx(1, RX_BUF);
    let (host, _) = listener.accept().expect("accept");
    Setup {
        dev,
        drv,
        host,
        _listener: listener,
        _dir: dir,
    }
}

fn vsock(c: &mut Criterion) {
    let mut group = c.benchmark_group("virtio_vsock");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));

    group.bench_function("guest_to_host_4k", |b| {
        let mut s = connected();
        let payload = vec![0xa5u8; PAYLOAD];
        let mut sink = vec![0u8; PAYLOAD];
        b.iter(|| {
            s.drv
                .send_data(&mut s.dev, GUEST_PORT, HOST_PORT, black_box(&payload))
                .expect("send");
            s.host.read_exact(&mut sink).expect("host read");
            // CREDIT_UPDATEs the device sends now and then: the driver takes them and gives
            // the buffers back.
            let n = s.drv.received().len();
            if n > 0 {
                s.drv.post_rx(n, RX_BUF);
            }
            black_box(sink[0])
        })
    });

    group.bench_function("host_to_guest_4k", |b| {
        let mut s = connected();
        let payload = vec![0x5au8; PAYLOAD];
        let mut consumed = 0u32;
        let mut since_update = 0u32;
        b.iter(|| {
            s.host.write_all(black_box(&payload)).expect("host write");
            GuestDriver::pump(&mut s.dev).expect("process_backend");
            let got = s.drv.received();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].data.len(), PAYLOAD);
            s.drv.post_rx(1, RX_BUF);
            consumed = consumed.wrapping_add(PAYLOAD as u32);
            since_update += PAYLOAD as u32;
            // The guest tells the device what it consumed, as Linux does, before the
            // credit runs out.
            if since_update >= BUF_ALLOC / 2 {
                since_update = 0;
                let mut cu = s.drv.header(GUEST_PORT, HOST_PORT, op::CREDIT_UPDATE);
                cu.buf_alloc = BUF_ALLOC;
                cu.fwd_cnt = consumed;
                s.drv.send(&mut s.dev, &cu, &[]).expect("credit update");
            }
            black_box(got)
        })
    });

    group.finish();
}

criterion_group!(benches, vsock);
criterion_main!(benches);
