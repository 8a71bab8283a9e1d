//! Tests of the vsock device: a guest driver on hand-built queues ([`GuestDriver`]) and real
//! Unix sockets in a temporary directory.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use vmm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::tempdir::TempDir;

use super::packet::{op, shutdown, PacketHeader, HEADER_LEN, TYPE_SEQPACKET, TYPE_STREAM};
use super::test_driver::{GuestDriver, RxPacket};
use super::*;
use crate::virtio::test_utils::{active_queues, DESC_F_NEXT};

const CID: u64 = 3;

/// The device on the VMM's memory type (dirty bitmap included).
type Vsock = super::Vsock<GuestMemoryMmap>;

struct Env {
    _dir: TempDir,
    uds: PathBuf,
    dev: Vsock,
    drv: GuestDriver,
}

impl Env {
    /// An activated device with 64 rx buffers and 4 event buffers.
    fn new() -> Env {
        let mut env = Env::inactive();
        env.drv.post_rx(64, 4096 + HEADER_LEN as u32);
        env.drv.post_events(4, 4);
        env.drv
            .activate(&mut env.dev, features::RING_EVENT_IDX)
            .unwrap();
        env
    }

    fn inactive() -> Env {
        let dir = TempDir::new_with_prefix("/tmp/vsock-test-").unwrap();
        let uds = dir.as_path().join("v.sock");
        let dev = Vsock::new(VsockConfig {
            guest_cid: CID,
            uds_path: uds.clone(),
        })
        .unwrap();
        Env {
            _dir: dir,
            uds,
            dev,
            drv: GuestDriver::new(CID),
        }
    }

    /// Lets the device handle what its epoll reports.
    fn pump(&mut self) {
        for _ in 0..4 {
            self.dev
                .process_backend(BACKEND_TOKEN, EventSet::IN)
                .unwrap();
        }
    }

    fn recv(&mut self) -> Vec<RxPacket> {
        self.drv.received()
    }

    fn recv_one(&mut self) -> RxPacket {
        let mut p = self.recv();
        assert_eq!(p.len(), 1, "expected one packet, got {p:?}");
        p.remove(0)
    }

    fn send(&mut self, hdr: &PacketHeader, data: &[u8]) {
        self.drv.send(&mut self.dev, hdr, data).unwrap();
    }

    fn send_op(&mut self, src_port: u32, dst_port: u32, code: u16) {
        let hdr = self.drv.header(src_port, dst_port, code);
        self.send(&hdr, &[]);
    }

    fn send_data(&mut self, src_port: u32, dst_port: u32, data: &[u8]) {
        self.drv
            .send_data(&mut self.dev, src_port, dst_port, data)
            .unwrap();
    }

    /// A host program connecting to guest port `port`.
    fn host_connect(&mut self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        writeln!(s, "CONNECT {port}").unwrap();
        self.pump();
        s
    }

    /// A full host-initiated handshake to guest port `guest_port` (guest side port
    /// `guest_port`); returns the host stream and the host port the device chose.
    fn host_to_guest(&mut self, guest_port: u32, guest_buf_alloc: u32) -> (UnixStream, u32) {
        let mut s = self.host_connect(guest_port);
        let req = self.recv_one();
        assert_eq!(req.hdr.op, op::REQUEST);
        let host_port = req.hdr.src_port;
        let mut resp = self.drv.header(guest_port, host_port, op::RESPONSE);
        resp.buf_alloc = guest_buf_alloc;
        self.send(&resp, &[]);
        let line = read_line(&mut s);
        assert_eq!(line, format!("OK {host_port}\n"));
        (s, host_port)
    }

    /// A guest-initiated connection from `guest_port` to host port `port`, accepted by a
    /// listener at `<uds>_<port>`.
    fn guest_to_host(&mut self, guest_port: u32, port: u32) -> (UnixListener, UnixStream) {
        let listener = UnixListener::bind(format!("{}_{port}", self.uds.display())).unwrap();
        self.send_op(guest_port, port, op::REQUEST);
        let resp = self.recv_one();
        assert_eq!(resp.hdr.op, op::RESPONSE);
        assert_eq!((resp.hdr.src_port, resp.hdr.dst_port), (port, guest_port));
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (listener, s)
    }

    /// Whether the device's epoll has anything ready (the event loop would call it again).
    fn backend_ready(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.dev.backend_fds()[0].fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

fn read_exact(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

/// The stream's peer closed it (EOF or reset).
fn assert_closed(s: &mut UnixStream) {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("stream not closed: {other:?}"),
    }
}

#[test]
fn config_features_and_queues() {
    let env = Env::inactive();
    assert_eq!(env.dev.device_type(), 19);
    assert_eq!(env.dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(
        env.dev.device_features(),
        features::VERSION_1 | features::RING_EVENT_IDX
    );
    let mut cfg = [0xffu8; 12];
    env.dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut hi = [0u8; 4];
    env.dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    let fds = env.dev.backend_fds();
    assert_eq!(fds.len(), 1);
    assert_eq!(fds[0].events, EventSet::IN);
    assert!(!env.dev.is_activated());
}

#[test]
fn new_checks_cid_and_path_and_drop_removes_the_socket() {
    let dir = TempDir::new_with_prefix("/tmp/vsock-test-").unwrap();
    let uds = dir.as_path().join("v.sock");
    let cfg = |cid, p: &std::path::Path| VsockConfig {
        guest_cid: cid,
        uds_path: p.to_path_buf(),
    };
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        let e = Vsock::new(cfg(cid, &uds)).unwrap_err();
        assert!(matches!(e, VsockError::InvalidCid(c) if c == cid), "{e}");
    }
    assert!(matches!(
        Vsock::new(cfg(3, std::path::Path::new(""))),
        Err(VsockError::EmptyPath)
    ));
    let long = dir.as_path().join("x".repeat(120));
    let e = Vsock::new(cfg(3, &long)).unwrap_err();
    assert!(matches!(e, VsockError::PathTooLong { max: 107, .. }), "{e}");
    assert!(e.to_string().contains("xxxx"), "{e}");
    let e = Vsock::new(cfg(3, &dir.as_path().join("no/such/dir/v.sock"))).unwrap_err();
    assert!(matches!(e, VsockError::Bind { .. }), "{e}");

    let dev = Vsock::new(cfg(u64::from(u32::MAX) - 1, &uds)).unwrap();
    assert!(uds.exists());
    let e = Vsock::new(cfg(3, &uds)).unwrap_err();
    assert!(matches!(e, VsockError::PathExists { .. }), "{e}");
    assert!(e.to_string().contains("v.sock"), "{e}");
    drop(dev);
    assert!(!uds.exists());
    // A socket file nobody listens on (what a killed VMM leaves) is cleared and bound again.
    drop(std::os::unix::net::UnixListener::bind(&uds).unwrap());
    assert!(uds.exists());
    let dev = Vsock::new(cfg(3, &uds)).unwrap();
    drop(dev);
    // Not a socket: left alone.
    std::fs::write(&uds, b"data").unwrap();
    let e = Vsock::new(cfg(3, &uds)).unwrap_err();
    assert!(matches!(e, VsockError::PathExists { .. }), "{e}");
    assert_eq!(std::fs::read(&uds).unwrap(), b"data");
}

#[test]
fn wrong_queue_count_is_refused() {
    let mut env = Env::inactive();
    let e = env
        .dev
        .activate(active_queues(
            &env.drv.mem,
            [&env.drv.rx, &env.drv.tx],
            env.drv.interrupt().clone(),
            features::VERSION_1,
        ))
        .unwrap_err();
    assert!(matches!(
        e,
        VirtioError::QueueCount {
            expected: 3,
            got: 2
        }
    ));
    assert!(!env.dev.is_activated());
}

#[test]
fn host_to_guest_handshake_and_data_both_ways() {
    let mut env = Env::new();
    let mut s = env.host_connect(1234);
    let req = env.recv_one();
    assert_eq!(req.hdr.op, op::REQUEST);
    assert_eq!((req.hdr.src_cid, req.hdr.dst_cid), (HOST_CID, CID));
    assert_eq!(req.hdr.dst_port, 1234);
    assert_eq!(req.hdr.type_, TYPE_STREAM);
    assert_eq!(req.hdr.buf_alloc, BUF_ALLOC);
    let hp = req.hdr.src_port;
    assert!(hp >= 1 << 30 && hp != u32::MAX);
    assert_eq!(env.dev.connection_count(), 1);
    assert!(env.drv.interrupt().status() & 1 != 0);

    // Nothing reaches the host before the guest accepts.
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(s.read(&mut b).unwrap_err().kind(), ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();

    env.send_op(1234, hp, op::RESPONSE);
    assert_eq!(read_line(&mut s), format!("OK {hp}\n"));

    s.write_all(b"hello").unwrap();
    env.pump();
    let p = env.recv_one();
    assert_eq!(p.hdr.op, op::RW);
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (hp, 1234));
    assert_eq!(p.hdr.len, 5);
    assert_eq!(p.data, b"hello");

    env.send_data(1234, hp, b"world");
    assert_eq!(read_exact(&mut s, 5), b"world");
    assert!(!env.backend_ready());
    // fwd_cnt counts the guest's bytes only, not the "OK" line.
    env.send_op(1234, hp, op::CREDIT_REQUEST);
    let p = env.recv_one();
    assert_eq!((p.hdr.op, p.hdr.fwd_cnt), (op::CREDIT_UPDATE, 5));
}

#[test]
fn bytes_after_the_connect_line_wait_for_the_guest() {
    let mut env = Env::new();
    let mut s = UnixStream::connect(&env.uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"CONNECT 77\nearly bytes").unwrap();
    env.pump();
    let req = env.recv_one();
    assert_eq!(req.hdr.op, op::REQUEST);
    let hp = req.hdr.src_port;
    env.send_op(77, hp, op::RESPONSE);
    assert_eq!(read_line(&mut s), format!("OK {hp}\n"));
    env.pump();
    let p = env.recv_one();
    assert_eq!(p.data, b"early bytes");
}

#[test]
fn guest_refusing_a_host_connect_closes_the_stream() {
    let mut env = Env::new();
    let mut s = env.host_connect(99);
    let req = env.recv_one();
    env.send_op(99, req.hdr.src_port, op::RST);
    assert_closed(&mut s);
    assert_eq!(env.dev.connection_count(), 0);
    // The guest is not told anything back.
    env.pump();
    assert!(env.recv().is_empty());
}

#[test]
fn unanswered_host_connect_times_out_with_rst() {
    let mut env = Env::new();
    env.dev.muxer.connect_timeout = Duration::from_millis(30);
    let mut s = env.host_connect(99);
    let req = env.recv_one();
    std::thread::sleep(Duration::from_millis(60));
    env.pump();
    assert_closed(&mut s);
    let rst = env.recv_one();
    assert_eq!(rst.hdr.op, op::RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (req.hdr.src_port, 99));
    assert_eq!(env.dev.connection_count(), 0);
    assert!(!env.backend_ready());
}

#[test]
fn bad_connect_lines_are_closed() {
    let mut env = Env::new();
    for line in [
        &b"HELLO 5\n"[..],
        b"CONNECT x\n",
        b"CONNECT 99999999999\n",
        b"CONNECT 5",
        &[b'C'; 40],
    ] {
        let mut s = UnixStream::connect(&env.uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(line).unwrap();
        if line == b"CONNECT 5" {
            // Half a line, then EOF.
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        env.pump();
        assert_closed(&mut s);
    }
    assert_eq!(env.dev.pending_host_streams(), 0);
    assert_eq!(env.dev.connection_count(), 0);
    assert!(env.recv().is_empty());
}

#[test]
fn silent_host_stream_times_out() {
    let mut env = Env::new();
    env.dev.muxer.line_timeout = Duration::from_millis(30);
    let mut s = UnixStream::connect(&env.uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"CONN").unwrap();
    env.pump();
    assert_eq!(env.dev.pending_host_streams(), 1);
    std::thread::sleep(Duration::from_millis(60));
    env.pump();
    assert_eq!(env.dev.pending_host_streams(), 0);
    assert_closed(&mut s);
    assert!(
        !env.backend_ready(),
        "the expired timer must not stay ready"
    );
}

#[test]
fn host_connects_before_activation_are_closed() {
    let mut env = Env::inactive();
    let mut s = UnixStream::connect(&env.uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    env.pump();
    assert_closed(&mut s);
    assert!(!env.backend_ready());
}

#[test]
fn guest_to_host_connect_and_data_both_ways() {
    let mut env = Env::new();
    let (_l, mut s) = env.guest_to_host(1025, 5000);
    assert_eq!(env.dev.connection_count(), 1);

    s.write_all(b"ping").unwrap();
    env.pump();
    let p = env.recv_one();
    assert_eq!(p.hdr.op, op::RW);
    assert_eq!((p.hdr.src_cid, p.hdr.dst_cid), (HOST_CID, CID));
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (5000, 1025));
    assert_eq!(p.data, b"ping");

    env.send_data(1025, 5000, b"pong");
    assert_eq!(read_exact(&mut s, 4), b"pong");

    // The guest closes: the host sees EOF, the guest gets the final RST.
    let mut sd = env.drv.header(1025, 5000, op::SHUTDOWN);
    sd.flags = shutdown::BOTH;
    env.send(&sd, &[]);
    assert_closed(&mut s);
    let rst = env.recv_one();
    assert_eq!(rst.hdr.op, op::RST);
    assert_eq!(env.dev.connection_count(), 0);
}

#[test]
fn guest_connect_to_nobody_gets_rst() {
    let mut env = Env::new();
    env.send_op(1025, 6000, op::REQUEST);
    let rst = env.recv_one();
    assert_eq!(rst.hdr.op, op::RST);
    assert_eq!((rst.hdr.src_cid, rst.hdr.dst_cid), (HOST_CID, CID));
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (6000, 1025));
    assert_eq!(env.dev.connection_count(), 0);
}

#[test]
fn host_eof_and_hangup_become_shutdowns() {
    let mut env = Env::new();
    let (_l, mut s) = env.guest_to_host(1025, 5001);
    s.write_all(b"last words").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    env.pump();
    let p = env.recv();
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].data, b"last words");
    assert_eq!(p[1].hdr.op, op::SHUTDOWN);
    assert_eq!(p[1].hdr.flags, shutdown::SEND);
    // The host still receives.
    env.send_data(1025, 5001, b"reply");
    assert_eq!(read_exact(&mut s, 5), b"reply");
    // Now it closes entirely.
    drop(s);
    env.pump();
    let p = env.recv_one();
    assert_eq!(p.hdr.op, op::SHUTDOWN);
    assert_eq!(p.hdr.flags, shutdown::BOTH);
    assert!(!env.backend_ready());
    // The guest's RST ends it.
    env.send_op(1025, 5001, op::RST);
    assert_eq!(env.dev.connection_count(), 0);
    assert!(env.recv().is_empty());
}

#[test]
fn host_close_without_guest_rst_times_out() {
    let mut env = Env::new();
    env.dev.muxer.close_timeout = Duration::from_millis(30);
    let (_l, s) = env.guest_to_host(1025, 5002);
    drop(s);
    env.pump();
    let p = env.recv_one();
    assert_eq!((p.hdr.op, p.hdr.flags), (op::SHUTDOWN, shutdown::BOTH));
    std::thread::sleep(Duration::from_millis(60));
    env.pump();
    let p = env.recv_one();
    assert_eq!(p.hdr.op, op::RST);
    assert_eq!(env.dev.connection_count(), 0);
}

#[test]
fn host_data_stops_at_the_guests_credit_and_resumes_on_credit_update() {
    let mut env = Env::new();
    let (mut s, hp) = env.host_to_guest(4000, 1000);
    s.write_all(&[7u8; 3000]).unwrap();
    env.pump();
    let got: usize = env.recv().iter().map(|p| p.data.len()).sum();
    assert_eq!(got, 1000);
    // No credit: the stream is not polled (nothing spins) and nothing more is sent.
    assert!(!env.backend_ready());
    env.pump();
    assert!(env.recv().is_empty());

    // The guest consumed 600 bytes.
    let mut cu = env.drv.header(4000, hp, op::CREDIT_UPDATE);
    cu.buf_alloc = 1000;
    cu.fwd_cnt = 600;
    env.send(&cu, &[]);
    let got: usize = env.recv().iter().map(|p| p.data.len()).sum();
    assert_eq!(got, 600);

    // A bigger buffer lets the rest through.
    cu.buf_alloc = 10_000;
    cu.fwd_cnt = 1600;
    env.send(&cu, &[]);
    let got: usize = env.recv().iter().map(|p| p.data.len()).sum();
    assert_eq!(got, 1400);
    assert!(!env.backend_ready());
}

#[test]
fn host_data_waits_for_rx_buffers() {
    let mut env = Env::inactive();
    env.drv.post_rx(1, 4096);
    env.drv.activate(&mut env.dev, 0).unwrap();
    let (_l, mut s) = env.guest_to_host(1025, 5003);
    s.write_all(&[1u8; 100]).unwrap();
    env.pump();
    assert!(env.recv().is_empty(), "no buffer left after the RESPONSE");
    assert!(!env.backend_ready(), "the stream is not polled meanwhile");
    env.drv.post_rx(1, 4096);
    env.drv.kick_rx(&mut env.dev).unwrap();
    let p = env.recv_one();
    assert_eq!(p.data.len(), 100);
}

#[test]
fn packets_are_cut_to_the_rx_buffer_and_64k() {
    let mut env = Env::new();
    let (mut s, _hp) = env.host_to_guest(4001, u32::MAX);
    s.write_all(&[9u8; 5000]).unwrap();
    env.pump();
    let p = env.recv();
    // 4096-byte payload buffers.
    assert_eq!(
        p.iter().map(|p| p.data.len()).collect::<Vec<_>>(),
        vec![4096, 904]
    );
}

#[test]
fn guest_sending_beyond_our_credit_is_reset() {
    let mut env = Env::new();
    let (_l, s) = env.guest_to_host(1025, 5004);
    // The host never reads: the socket buffer fills, then our buffer, then the guest has
    // sent more than it was allowed.
    let chunk = vec![0u8; MAX_PKT_PAYLOAD];
    let mut reset = false;
    for _ in 0..64 {
        env.send_data(1025, 5004, &chunk);
        if env.recv().iter().any(|p| p.hdr.op == op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "credit overrun not detected");
    assert_eq!(env.dev.connection_count(), 0);
    drop(s);
}

#[test]
fn buffered_guest_bytes_reach_the_host_when_it_reads() {
    let mut env = Env::new();
    let (_l, mut s) = env.guest_to_host(1025, 5005);
    let mut sent = Vec::new();
    let mut i = 0u8;
    // Send within our credit (tracking our fwd_cnt from the packets we get).
    let mut fwd = 0u32;
    let mut tx_cnt = 0u32;
    let mut max_buffered = 0;
    while sent.len() < 600_000 {
        max_buffered = max_buffered.max(env.dev.muxer.buffered_for_host());
        let room = BUF_ALLOC - tx_cnt.wrapping_sub(fwd);
        if room < 4096 {
            // Host reads a while, then the device's epoll reports the room.
            let mut buf = vec![0u8; 100_000];
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            buf.truncate(n);
            env.pump();
            for p in env.recv() {
                assert_ne!(p.hdr.op, op::RST);
                fwd = p.hdr.fwd_cnt;
            }
            let _ = buf;
            continue;
        }
        let data: Vec<u8> = (0..4096).map(|k| i.wrapping_add(k as u8)).collect();
        i = i.wrapping_add(1);
        env.send_data(1025, 5005, &data);
        for p in env.recv() {
            assert_ne!(p.hdr.op, op::RST);
            fwd = p.hdr.fwd_cnt;
        }
        tx_cnt = tx_cnt.wrapping_add(4096);
        sent.extend_from_slice(&data);
    }
    assert!(max_buffered > 0, "the host stream never pushed back");
    assert!(max_buffered <= BUF_ALLOC as usize);
    // Close from the guest: the device flushes what it holds, then closes.
    let mut sd = env.drv.header(1025, 5005, op::SHUTDOWN);
    sd.flags = shutdown::BOTH;
    env.send(&sd, &[]);
    let mut got = Vec::new();
    s.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => env.pump(),
            Err(e) => panic!("{e}"),
        }
    }
    // The host must have the tail of what was sent (the head was read above).
    assert!(sent.ends_with(&got), "data lost or reordered");
    assert_eq!(env.dev.connection_count(), 0);
    assert!(env.recv().iter().any(|p| p.hdr.op == op::RST));
}

#[test]
fn credit_update_when_much_was_forwarded_and_on_request() {
    let mut env = Env::new();
    let (_l, mut s) = env.guest_to_host(1025, 5006);
    env.send_data(1025, 5006, &[1u8; 40_000]);
    assert!(env.recv().is_empty());
    env.send_data(1025, 5006, &[2u8; 40_000]);
    let p = env.recv_one();
    assert_eq!(p.hdr.op, op::CREDIT_UPDATE);
    assert_eq!(p.hdr.fwd_cnt, 80_000);
    assert_eq!(p.hdr.buf_alloc, BUF_ALLOC);
    assert_eq!(read_exact(&mut s, 80_000).len(), 80_000);

    env.send_op(1025, 5006, op::CREDIT_REQUEST);
    let p = env.recv_one();
    assert_eq!((p.hdr.op, p.hdr.fwd_cnt), (op::CREDIT_UPDATE, 80_000));
}

#[test]
fn malformed_packets_are_answered_or_dropped() {
    let mut env = Env::new();
    let (_l, _s) = env.guest_to_host(1025, 5007);
    let used0 = env.drv.tx_used();

    // Short header: returned, nobody to answer.
    let addr = 0x40_0000u64;
    env.drv
        .mem
        .write_slice(&[0u8; 20], GuestAddress(addr))
        .unwrap();
    env.drv.tx.add_chain(&env.drv.mem, &[(addr, 20, false)]);
    env.dev.process_queue(TX_QUEUE).unwrap();
    assert_eq!(env.drv.tx_used(), used0.wrapping_add(1));
    assert!(env.recv().is_empty());

    // Descriptor outside guest memory.
    env.drv.tx.add_chain(&env.drv.mem, &[(1 << 40, 44, false)]);
    env.dev.process_queue(TX_QUEUE).unwrap();
    assert_eq!(env.drv.tx_used(), used0.wrapping_add(2));
    assert!(env.recv().is_empty());

    // A spoofed source CID is dropped.
    let mut h = env.drv.header(1025, 6000, op::REQUEST);
    h.src_cid = 4;
    env.send(&h, &[]);
    assert!(env.recv().is_empty());

    // Another destination CID gets RST, from that CID.
    let mut h = env.drv.header(1025, 6000, op::REQUEST);
    h.dst_cid = 5;
    env.send(&h, &[]);
    let p = env.recv_one();
    assert_eq!((p.hdr.op, p.hdr.src_cid, p.hdr.dst_cid), (op::RST, 5, CID));

    // A socket type other than stream gets RST of that type.
    let mut h = env.drv.header(1025, 6000, op::REQUEST);
    h.type_ = TYPE_SEQPACKET;
    env.send(&h, &[]);
    let p = env.recv_one();
    assert_eq!((p.hdr.op, p.hdr.type_), (op::RST, TYPE_SEQPACKET));

    // Unknown op or data on no connection: RST; an RST on no connection: nothing.
    env.send_op(1025, 6000, 99);
    assert_eq!(env.recv_one().hdr.op, op::RST);
    env.send_data(1025, 6000, b"x");
    assert_eq!(env.recv_one().hdr.op, op::RST);
    env.send_op(1025, 6000, op::RST);
    assert!(env.recv().is_empty());
    assert_eq!(env.dev.connection_count(), 1);

    // An unknown op on the live connection resets it.
    env.send_op(1025, 5007, op::INVALID);
    assert_eq!(env.recv_one().hdr.op, op::RST);
    assert_eq!(env.dev.connection_count(), 0);
}

#[test]
fn rw_longer_than_the_chain_or_64k_resets_the_connection() {
    let mut env = Env::new();
    let (_l1, mut s1) = env.guest_to_host(1025, 5008);
    let mut h = env.drv.header(1025, 5008, op::RW);
    h.len = 100;
    env.send(&h, &[0u8; 10]);
    assert_eq!(env.recv_one().hdr.op, op::RST);
    assert_closed(&mut s1);

    let (_l2, mut s2) = env.guest_to_host(1026, 5009);
    let mut h = env.drv.header(1026, 5009, op::RW);
    h.len = MAX_PKT_PAYLOAD as u32 + 1;
    env.send(&h, &vec![0u8; MAX_PKT_PAYLOAD + 1]);
    assert_eq!(env.recv_one().hdr.op, op::RST);
    assert_closed(&mut s2);
    assert_eq!(env.dev.connection_count(), 0);
}

#[test]
fn header_split_across_descriptors_is_read() {
    let mut env = Env::new();
    let (_l, mut s) = env.guest_to_host(1025, 5010);
    let mut h = env.drv.header(1025, 5010, op::RW);
    h.len = 6;
    let raw = h.to_bytes();
    let base = 0x50_0000u64;
    env.drv
        .mem
        .write_slice(&raw[..10], GuestAddress(base))
        .unwrap();
    env.drv
        .mem
        .write_slice(&raw[10..], GuestAddress(base + 0x100))
        .unwrap();
    env.drv
        .mem
        .write_slice(b"abcdef", GuestAddress(base + 0x200))
        .unwrap();
    env.drv.tx.add_chain(
        &env.drv.mem,
        &[
            (base, 10, false),
            (base + 0x100, 34, false),
            (base + 0x200, 6, false),
        ],
    );
    env.dev.process_queue(TX_QUEUE).unwrap();
    assert_eq!(read_exact(&mut s, 6), b"abcdef");
}

#[test]
fn descriptor_loop_and_hostile_avail_index_do_not_hang() {
    let mut env = Env::new();
    // A two-descriptor loop.
    let base = 0x50_0000u64;
    env.drv
        .tx
        .write_desc(&env.drv.mem, 10, base, 8, DESC_F_NEXT, 11);
    env.drv
        .tx
        .write_desc(&env.drv.mem, 11, base, 8, DESC_F_NEXT, 10);
    env.drv.tx.push_avail(&env.drv.mem, 10);
    env.dev.process_queue(TX_QUEUE).unwrap();
    assert!(env.recv().is_empty());

    // An available index far ahead of the device: an error (the transport marks the device
    // NEEDS_RESET), not an endless loop.
    env.drv
        .mem
        .write_obj(1000u16.to_le(), GuestAddress(env.drv.tx.avail + 2))
        .unwrap();
    assert!(env.dev.process_queue(TX_QUEUE).is_err());
}

#[test]
fn a_failed_activation_leaves_the_device_inactive() {
    // Activation drains the transmit queue; an available index far ahead of the device fails
    // it. The transport then leaves DRIVER_OK clear, so the device must not stay active.
    let mut env = Env::inactive();
    env.drv
        .mem
        .write_obj(1000u16.to_le(), GuestAddress(env.drv.tx.avail + 2))
        .unwrap();
    assert!(env.drv.activate(&mut env.dev, 0).is_err());
    assert!(!env.dev.is_activated());

    // A driver that resets and sets up sane rings gets a working device.
    env.dev.reset();
    env.drv = GuestDriver::new(CID);
    env.drv.post_rx(4, 4096);
    env.drv.activate(&mut env.dev, 0).unwrap();
    assert!(env.dev.is_activated());
}

#[test]
fn control_packets_wait_for_rx_buffers_and_tx_waits_when_they_pile_up() {
    let mut env = Env::inactive();
    env.drv
        .activate(&mut env.dev, features::RING_EVENT_IDX)
        .unwrap();
    // 1100 refused connects with no rx buffer: answers queue up to the bound, then tx waits.
    let mut port = 0;
    for _ in 0..5 {
        for _ in 0..220 {
            let h = env.drv.header(2000 + port, 7000, op::REQUEST);
            env.drv.queue_tx(&h, &[]);
            port += 1;
        }
        env.dev.process_queue(TX_QUEUE).unwrap();
    }
    assert_eq!(env.drv.tx_used(), MAX_CONTROL_PACKETS as u16);
    assert!(env.recv().is_empty());
    let mut rsts = Vec::new();
    while rsts.len() < 1100 {
        env.drv.post_rx(200, 64);
        env.drv.kick_rx(&mut env.dev).unwrap();
        let got = env.recv();
        assert!(!got.is_empty());
        rsts.extend(got);
    }
    assert_eq!(rsts.len(), 1100);
    assert_eq!(env.drv.tx_used(), 1100);
    for (i, p) in rsts.iter().enumerate() {
        assert_eq!(p.hdr.op, op::RST);
        assert_eq!(p.hdr.dst_port, 2000 + i as u32, "answers stay in order");
    }
    assert_eq!(env.dev.dropped_control_packets(), 0);
}

#[test]
fn reset_closes_everything_and_keeps_listening() {
    let mut env = Env::new();
    let (_l, mut s1) = env.guest_to_host(1025, 5011);
    let (mut s2, _) = env.host_to_guest(4002, 65536);
    let mut s3 = UnixStream::connect(&env.uds).unwrap();
    s3.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    env.pump();
    assert_eq!(env.dev.pending_host_streams(), 1);
    env.dev.reset();
    assert!(!env.dev.is_activated());
    assert_eq!(env.dev.connection_count(), 0);
    assert_eq!(env.dev.pending_host_streams(), 0);
    assert_closed(&mut s1);
    assert_closed(&mut s2);
    assert_closed(&mut s3);
    assert!(!env.backend_ready());
    // Queue work after reset is ignored, and the listener still accepts once re-activated.
    env.dev.process_queue(TX_QUEUE).unwrap();
    let mut drv = GuestDriver::new(CID);
    drv.post_rx(8, 4096);
    drv.activate(&mut env.dev, 0).unwrap();
    env.drv = drv;
    let _s = env.host_connect(5);
    assert_eq!(env.recv_one().hdr.op, op::REQUEST);
}

#[test]
fn restore_sends_a_transport_reset_event() {
    let mut env = Env::new();
    let (_l, _s) = env.guest_to_host(1025, 5012);
    let state = env.dev.save_state();
    assert_eq!(
        state,
        VirtioDeviceState::new("virtio-vsock", &VsockState { guest_cid: CID }).unwrap()
    );
    let json = serde_json::to_string(&state).unwrap();
    let state: VirtioDeviceState = serde_json::from_str(&json).unwrap();

    let mut env2 = Env::inactive();
    env2.dev.restore_state(&state).unwrap();
    env2.drv.post_rx(8, 4096);
    env2.drv.post_events(2, 4);
    env2.drv.activate(&mut env2.dev, 0).unwrap();
    assert_eq!(env2.drv.events(), vec![packet::EVENT_TRANSPORT_RESET]);
    // Only once.
    env2.drv.kick_event(&mut env2.dev).unwrap();
    assert!(env2.drv.events().is_empty());

    // Without an event buffer at activation, it goes out when the driver adds one.
    let mut env3 = Env::inactive();
    env3.dev.restore_state(&state).unwrap();
    env3.drv
        .activate(&mut env3.dev, features::RING_EVENT_IDX)
        .unwrap();
    assert!(env3.drv.events().is_empty());
    env3.drv.post_events(1, 2); // too small: returned empty
    env3.drv.post_events(1, 4);
    env3.drv.kick_event(&mut env3.dev).unwrap();
    assert_eq!(env3.drv.events(), vec![0]);

    // A fresh activation without restore sends none.
    assert!(env.drv.events().is_empty());

    // send_transport_reset drops live connections too.
    env.dev.send_transport_reset().unwrap();
    assert_eq!(env.drv.events(), vec![0]);
    assert_eq!(env.dev.connection_count(), 0);
}

#[test]
fn restore_of_another_cid_or_device_is_refused() {
    let mut env = Env::inactive();
    let e = env
        .dev
        .restore_state(
            &VirtioDeviceState::new("virtio-vsock", &VsockState { guest_cid: 9 }).unwrap(),
        )
        .unwrap_err();
    assert!(matches!(e, VirtioError::StateMismatch(_)));
    assert!(e.to_string().contains('9'));
}

#[test]
fn duplicate_request_resets_the_connection() {
    let mut env = Env::new();
    let (_l, mut s) = env.guest_to_host(1025, 5013);
    env.send_op(1025, 5013, op::REQUEST);
    assert_eq!(env.recv_one().hdr.op, op::RST);
    assert_closed(&mut s);
    assert_eq!(env.dev.connection_count(), 0);
}

#[test]
fn guest_half_close_shuts_the_host_write_side() {
    let mut env = Env::new();
    let (_l, mut s) = env.guest_to_host(1025, 5014);
    env.send_data(1025, 5014, b"bye");
    let mut sd = env.drv.header(1025, 5014, op::SHUTDOWN);
    sd.flags = shutdown::SEND;
    env.send(&sd, &[]);
    assert_eq!(read_exact(&mut s, 3), b"bye");
    assert_closed(&mut s); // EOF for the host's reads
                           // The host can still send.
    s.write_all(b"still here").unwrap();
    env.pump();
    let p = env.recv_one();
    assert_eq!(p.data, b"still here");
    // Data after SHUTDOWN(SEND) is a protocol error.
    env.send_data(1025, 5014, b"late");
    assert_eq!(env.recv_one().hdr.op, op::RST);
}

#[test]
fn connection_limit_refuses_more() {
    let mut env = Env::new();
    let _l = UnixListener::bind(format!("{}_7100", env.uds.display())).unwrap();
    let mut refused = 0;
    for i in 0..(MAX_CONNECTIONS as u32 + 3) {
        env.send_op(10_000 + i, 7100, op::REQUEST);
        let got = env.recv();
        refused += got.iter().filter(|p| p.hdr.op == op::RST).count();
        // Give back as many buffers as were used.
        env.drv.post_rx(got.len(), 64);
    }
    assert_eq!(env.dev.connection_count(), MAX_CONNECTIONS);
    assert_eq!(refused, 3);
}

#[test]
fn host_hangup_while_the_guest_has_no_credit_does_not_spin() {
    let mut env = Env::new();
    let (mut s, hp) = env.host_to_guest(4003, 10);
    s.write_all(&[5u8; 100]).unwrap();
    drop(s);
    env.pump();
    let p = env.recv_one();
    assert_eq!(p.data.len(), 10);
    assert!(
        !env.backend_ready(),
        "a hung-up stream must leave the epoll"
    );
    // Credit comes back: the rest of the data, then SHUTDOWN both ways.
    let mut cu = env.drv.header(4003, hp, op::CREDIT_UPDATE);
    cu.buf_alloc = 1000;
    cu.fwd_cnt = 10;
    env.send(&cu, &[]);
    let p = env.recv();
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].data.len(), 90);
    assert_eq!(
        (p[1].hdr.op, p[1].hdr.flags),
        (op::SHUTDOWN, shutdown::BOTH)
    );
    env.send_op(4003, hp, op::RST);
    assert_eq!(env.dev.connection_count(), 0);
}

#[test]
fn paused_listener_is_not_polled_and_comes_back() {
    let mut env = Env::new();
    // What an accept failure (EMFILE) does.
    env.dev.muxer.pause_listener();
    let mut s = UnixStream::connect(&env.uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(
        !env.backend_ready(),
        "a paused listener must not be reported"
    );
    std::thread::sleep(LISTENER_RETRY_FOR_TEST);
    writeln!(s, "CONNECT 8").unwrap();
    env.pump();
    assert_eq!(env.recv_one().hdr.op, op::REQUEST);
}

const LISTENER_RETRY_FOR_TEST: Duration = Duration::from_millis(150);
