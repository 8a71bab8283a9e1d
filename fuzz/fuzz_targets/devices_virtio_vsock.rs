//! Fuzzes virtio-vsock: guest packets (well-formed headers with fuzzed fields, raw bytes, raw
//! and hostile descriptors), rx buffers of any shape, and a host side that connects, writes,
//! reads and hangs up on real Unix sockets, mixed with resets and restores. Nothing may panic
//! or hang, the connection and pending-stream bounds hold, and (while the rx ring has only
//! well-formed buffers) every RW packet carries the bytes its header announces, at most 64 KiB.
//!
//! Input: a list of operations, each `op` byte followed by its arguments:
//! - `op % 14`: 0 packet from fuzzed header fields, 1 raw packet bytes, 2 raw tx descriptor
//!   chain, 3 post rx buffers, 4 raw rx descriptor, 5 host connect line, 6 host write,
//!   7 host read, 8 host close or half-close, 9 event loop pump, 10 host accepts the device's
//!   connections, 11 device reset and re-activation, 12 save/restore and re-activation,
//!   13 rx/event queue notify.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use libfuzzer_sys::fuzz_target;

mod common;
use common::Cursor;
use vmm_devices::virtio::test_utils::{DESC_F_NEXT, DESC_F_WRITE};
use vmm_devices::virtio::vsock::packet::op;
use vmm_devices::virtio::vsock::test_driver::{device_in_socket_dir, GuestDriver};
use vmm_devices::virtio::vsock::{
    Vsock, MAX_CONNECTIONS, MAX_PENDING_STREAMS, MAX_PKT_PAYLOAD, RX_QUEUE, TX_QUEUE,
};
use vmm_devices::virtio::{features, VirtioDevice};
use vmm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const CID: u64 = 3;
/// Host ports with a listener behind them (`<uds>_5000`, `<uds>_5001`).
const HOST_PORTS: [u32; 3] = [5000, 5001, 5002];
const GUEST_PORTS: [u32; 3] = [1025, 1026, 1027];
const MAX_HOST_CONNECTS: usize = 48;
/// Raw descriptors point here (and sometimes anywhere).
const RAW_AREA: u64 = 0x160_0000;

fn port(input: &mut Cursor, known: &[(u32, u32)], host: bool) -> u32 {
    let sel = input.byte();
    match sel % 4 {
        0 | 1 => {
            let set = if host { &HOST_PORTS } else { &GUEST_PORTS };
            set[usize::from(sel / 4) % set.len()]
        }
        2 if !known.is_empty() => {
            let (h, g) = known[usize::from(sel / 4) % known.len()];
            if host {
                h
            } else {
                g
            }
        }
        _ => input.u64() as u32,
    }
}

fn activate(drv: &mut GuestDriver, dev: &mut Vsock<GuestMemoryMmap>, input: &mut Cursor) {
    drv.post_rx(
        usize::from(input.byte() % 32),
        64 + u32::from(input.byte()) * 32,
    );
    drv.post_events(usize::from(input.byte() % 3), 4);
    let feats = if input.byte() & 1 != 0 {
        features::RING_EVENT_IDX
    } else {
        0
    };
    drv.activate(dev, feats).expect("activation");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let (_dir, uds, mut dev) = device_in_socket_dir(CID);
    let servers: Vec<UnixListener> = HOST_PORTS[..2]
        .iter()
        .map(|p| {
            let l = UnixListener::bind(format!("{}_{p}", uds.display())).expect("server");
            l.set_nonblocking(true).expect("non-blocking server");
            l
        })
        .collect();
    let mut drv = GuestDriver::new(CID);
    activate(&mut drv, &mut dev, &mut input);
    let mut raw_rx = false;
    let mut host: Vec<UnixStream> = Vec::new();
    let mut host_connects = 0;
    let mut known: Vec<(u32, u32)> = Vec::new();

    while !input.is_empty() {
        let op = input.byte();
        let result = match op % 14 {
            0 => {
                let mut hdr = drv.header(
                    port(&mut input, &known, false),
                    port(&mut input, &known, true),
                    u16::from(input.byte() % 9),
                );
                let f = input.byte();
                if f & 1 != 0 {
                    hdr.src_cid = u64::from(input.byte());
                }
                if f & 2 != 0 {
                    hdr.dst_cid = u64::from(input.byte());
                }
                if f & 4 != 0 {
                    hdr.type_ = u16::from(input.byte() % 4);
                }
                hdr.flags = u32::from(input.byte() % 4);
                hdr.buf_alloc = if f & 8 != 0 {
                    input.u64() as u32
                } else {
                    1 << 18
                };
                hdr.fwd_cnt = if f & 16 != 0 { input.u64() as u32 } else { 0 };
                let n = usize::from(input.byte()) * 16 + usize::from(f & 0x20 != 0) * 60000;
                let payload = vec![input.byte(); n.min(MAX_PKT_PAYLOAD + 16)];
                hdr.len = if f & 0x40 != 0 {
                    input.u64() as u32
                } else {
                    payload.len() as u32
                };
                drv.send(&mut dev, &hdr, &payload)
            }
            1 => {
                let n = usize::from(input.byte());
                let mut raw = input.bytes(n);
                // Keep a valid source most of the time, so the packet gets past the first check.
                if n & 1 == 0 && raw.len() >= 8 {
                    raw[..8].copy_from_slice(&CID.to_le_bytes());
                }
                drv.queue_raw_tx(&raw);
                dev.process_queue(TX_QUEUE)
            }
            2 => {
                let count = 1 + input.byte() % 4;
                let head = u16::from(input.byte());
                for i in 0..count {
                    let index = head.wrapping_add(u16::from(i));
                    let addr = if input.byte() & 0x80 != 0 {
                        input.u64()
                    } else {
                        RAW_AREA + u64::from(input.byte()) * 64
                    };
                    let len = u32::from(input.byte()) * 4 + input.byte() as u32 % 4;
                    let flags = u16::from(input.byte()) & (DESC_F_NEXT | DESC_F_WRITE | 4);
                    let next = u16::from(input.byte());
                    drv.tx.write_desc(&drv.mem, index, addr, len, flags, next);
                }
                // Header-looking bytes where the raw descriptors usually point.
                let hdr = drv.header(1025, 5000, u16::from(input.byte() % 8));
                let _ = drv.mem.write_slice(
                    &hdr.to_bytes(),
                    GuestAddress(RAW_AREA + u64::from(input.byte()) * 64),
                );
                drv.tx.push_avail(&drv.mem, head);
                dev.process_queue(TX_QUEUE)
            }
            3 => {
                drv.post_rx(usize::from(input.byte() % 16), u32::from(input.byte()) * 40);
                dev.process_queue(RX_QUEUE)
            }
            4 => {
                raw_rx = true;
                let head = u16::from(input.byte());
                let addr = if input.byte() & 1 != 0 {
                    input.u64()
                } else {
                    RAW_AREA + u64::from(input.byte()) * 64
                };
                let len = u32::from(input.byte()) * 64;
                let flags = u16::from(input.byte()) & (DESC_F_NEXT | DESC_F_WRITE | 4);
                let next = u16::from(input.byte());
                drv.rx.write_desc(&drv.mem, head, addr, len, flags, next);
                drv.rx.push_avail(&drv.mem, head);
                dev.process_queue(RX_QUEUE)
            }
            5 => {
                let line = match input.byte() % 4 {
                    0 => Vec::new(),
                    1 => {
                        let n = usize::from(input.byte() % 48);
                        input.bytes(n)
                    }
                    _ => format!("CONNECT {}\n", port(&mut input, &known, false)).into_bytes(),
                };
                if host_connects < MAX_HOST_CONNECTS {
                    host_connects += 1;
                    if let Ok(mut s) = UnixStream::connect(&uds) {
                        let _ = s.set_nonblocking(true);
                        let _ = s.write_all(&line);
                        host.push(s);
                    }
                }
                GuestDriver::pump(&mut dev)
            }
            6 => {
                let i = usize::from(input.byte());
                let n = usize::from(input.byte()) * 64;
                if !host.is_empty() {
                    let len = host.len();
                    let _ = host[i % len].write(&vec![0x5a; n]);
                }
                GuestDriver::pump(&mut dev)
            }
            7 => {
                let mut buf = vec![0u8; 1 << 16];
                for s in &mut host {
                    let _ = s.read(&mut buf);
                }
                GuestDriver::pump(&mut dev)
            }
            8 => {
                let i = usize::from(input.byte());
                if !host.is_empty() {
                    let len = host.len();
                    if i & 1 == 0 {
                        host.swap_remove(i % len);
                    } else {
                        let _ = host[i % len].shutdown(std::net::Shutdown::Write);
                    }
                }
                GuestDriver::pump(&mut dev)
            }
            9 => GuestDriver::pump(&mut dev),
            10 => {
                for l in &servers {
                    while let Ok((s, _)) = l.accept() {
                        let _ = s.set_nonblocking(true);
                        host.push(s);
                    }
                }
                GuestDriver::pump(&mut dev)
            }
            11 => {
                dev.reset();
                drv = GuestDriver::new(CID);
                raw_rx = false;
                activate(&mut drv, &mut dev, &mut input);
                Ok(())
            }
            12 => {
                let state = dev.save_state();
                dev.reset();
                dev.restore_state(&state).expect("restore");
                drv = GuestDriver::new(CID);
                raw_rx = false;
                activate(&mut drv, &mut dev, &mut input);
                Ok(())
            }
            _ => {
                drv.post_events(usize::from(input.byte() % 2), u32::from(input.byte() % 8));
                if input.byte() & 1 != 0 {
                    drv.kick_rx(&mut dev)
                } else {
                    drv.kick_event(&mut dev)
                }
            }
        };
        // An error is a broken queue (the transport would set NEEDS_RESET); carrying on
        // still must not panic.
        let _ = result;
        assert!(dev.connection_count() <= MAX_CONNECTIONS);
        assert!(dev.pending_host_streams() <= MAX_PENDING_STREAMS);
        for p in drv.received() {
            if !raw_rx && p.hdr.op == op::RW {
                assert_eq!(p.data.len(), p.hdr.len as usize, "{p:?}");
                assert!(p.data.len() <= MAX_PKT_PAYLOAD);
            }
            if p.hdr.src_cid == 2 {
                let pair = (p.hdr.src_port, p.hdr.dst_port);
                if !known.contains(&pair) && known.len() < 16 {
                    known.push(pair);
                }
            }
        }
    }
});
