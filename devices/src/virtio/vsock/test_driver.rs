//! An in-process stand-in for the guest's vsock driver, on hand-built queues in real guest
//! memory (feature `test-utils`): posts rx and event buffers, sends packets on the tx queue and
//! reads back what the device used. For the device's tests, fuzz target and benchmarks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::tempdir::TempDir;

use super::packet::{op, PacketHeader, HEADER_LEN, TYPE_STREAM};
use super::{
    Vsock, VsockConfig, BACKEND_TOKEN, EVENT_QUEUE, HOST_CID, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use crate::virtio::test_utils::{
    active_queues, test_interrupt, test_memory, TestMemory, TestQueue,
};
use crate::virtio::{features, VirtioDevice, VirtioError, VirtioInterrupt};

const RX_RINGS: u64 = 0x0;
const TX_RINGS: u64 = 0x1_0000;
const EVENT_RINGS: u64 = 0x2_0000;
const EVENT_BUFS: u64 = 0x3_0000;
const RX_BUFS: u64 = 0x10_0000;
/// Room for one rx buffer per descriptor.
pub const RX_SLOT: u32 = 0x2000;
const TX_BUFS: u64 = 0x40_0000;
/// Room for one tx packet (header and payload) per descriptor.
pub const TX_SLOT: u32 = 0x1_1000;
/// Guest memory the driver uses.
pub const MEMORY_SIZE: usize = 0x180_0000;

/// A packet the device put in an rx buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxPacket {
    /// Its header.
    pub hdr: PacketHeader,
    /// The payload bytes (as many as the used length says, past the header).
    pub data: Vec<u8>,
}

/// The guest side of one vsock device.
pub struct GuestDriver {
    /// Guest memory holding the rings and buffers.
    pub mem: TestMemory,
    /// Receive queue.
    pub rx: TestQueue,
    /// Transmit queue.
    pub tx: TestQueue,
    /// Event queue.
    pub event: TestQueue,
    /// The guest's CID.
    pub cid: u64,
    interrupt: VirtioInterrupt,
    rx_bufs: HashMap<u16, u64>,
    event_bufs: HashMap<u16, u64>,
    rx_posted: u16,
    tx_posted: u16,
    events_posted: u16,
    rx_seen: u16,
    event_seen: u16,
}

impl GuestDriver {
    /// A driver for a guest with CID `cid`, with empty queues.
    pub fn new(cid: u64) -> Self {
        GuestDriver {
            mem: test_memory(MEMORY_SIZE),
            rx: TestQueue::new(RX_RINGS, QUEUE_SIZE),
            tx: TestQueue::new(TX_RINGS, QUEUE_SIZE),
            event: TestQueue::new(EVENT_RINGS, QUEUE_SIZE),
            cid,
            interrupt: test_interrupt().0,
            rx_bufs: HashMap::new(),
            event_bufs: HashMap::new(),
            rx_posted: 0,
            tx_posted: 0,
            events_posted: 0,
            rx_seen: 0,
            event_seen: 0,
        }
    }

    /// Activates `dev` on these queues with `acked_features` (VERSION_1 is added).
    pub fn activate(
        &self,
        dev: &mut Vsock<TestMemory>,
        acked_features: u64,
    ) -> Result<(), VirtioError> {
        dev.activate(active_queues(
            &self.mem,
            [&self.rx, &self.tx, &self.event],
            self.interrupt.clone(),
            acked_features | features::VERSION_1,
        ))
    }

    /// The interrupt the device raises.
    pub fn interrupt(&self) -> &VirtioInterrupt {
        &self.interrupt
    }

    /// Makes `count` rx buffers of `len` bytes (at most [`RX_SLOT`]) available, without
    /// notifying the device. At most [`QUEUE_SIZE`] may be outstanding.
    pub fn post_rx(&mut self, count: usize, len: u32) {
        for _ in 0..count {
            let slot = u64::from(self.rx_posted % QUEUE_SIZE);
            self.rx_posted = self.rx_posted.wrapping_add(1);
            let addr = RX_BUFS + slot * u64::from(RX_SLOT);
            let head = self
                .rx
                .add_chain(&self.mem, &[(addr, len.min(RX_SLOT), true)]);
            self.rx_bufs.insert(head, addr);
        }
    }

    /// Makes `count` event buffers of `len` bytes (at most 16) available.
    pub fn post_events(&mut self, count: usize, len: u32) {
        for _ in 0..count {
            let slot = u64::from(self.events_posted % QUEUE_SIZE);
            self.events_posted = self.events_posted.wrapping_add(1);
            let addr = EVENT_BUFS + slot * 16;
            let head = self
                .event
                .add_chain(&self.mem, &[(addr, len.min(16), true)]);
            self.event_bufs.insert(head, addr);
        }
    }

    /// A stream header from the guest's `src_port` to host port `dst_port`, advertising
    /// `buf_alloc` and `fwd_cnt`.
    pub fn header(&self, src_port: u32, dst_port: u32, op: u16) -> PacketHeader {
        PacketHeader {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 256 * 1024,
            fwd_cnt: 0,
        }
    }

    /// Queues a packet on the tx queue as one descriptor (header and payload together, as
    /// recent Linux does) without notifying. `data` is cut at [`TX_SLOT`] minus the header.
    pub fn queue_tx(&mut self, hdr: &PacketHeader, data: &[u8]) -> u16 {
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(&data[..data.len().min(TX_SLOT as usize - HEADER_LEN)]);
        self.queue_raw_tx(&bytes)
    }

    /// Queues `bytes` (cut at [`TX_SLOT`]) as one tx descriptor, whatever they hold.
    pub fn queue_raw_tx(&mut self, bytes: &[u8]) -> u16 {
        let slot = u64::from(self.tx_posted % QUEUE_SIZE);
        self.tx_posted = self.tx_posted.wrapping_add(1);
        let addr = TX_BUFS + slot * u64::from(TX_SLOT);
        let bytes = &bytes[..bytes.len().min(TX_SLOT as usize)];
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("tx buffer");
        self.tx
            .add_chain(&self.mem, &[(addr, bytes.len() as u32, false)])
    }

    /// Queues a packet and notifies the tx queue.
    pub fn send(
        &mut self,
        dev: &mut Vsock<TestMemory>,
        hdr: &PacketHeader,
        data: &[u8],
    ) -> Result<(), VirtioError> {
        self.queue_tx(hdr, data);
        dev.process_queue(TX_QUEUE)
    }

    /// Sends an RW packet with `data`, its `len` set to match.
    pub fn send_data(
        &mut self,
        dev: &mut Vsock<TestMemory>,
        src_port: u32,
        dst_port: u32,
        data: &[u8],
    ) -> Result<(), VirtioError> {
        let mut hdr = self.header(src_port, dst_port, op::RW);
        hdr.len = data.len() as u32;
        self.send(dev, &hdr, data)
    }

    /// Notifies the rx queue (after posting buffers).
    pub fn kick_rx(&self, dev: &mut Vsock<TestMemory>) -> Result<(), VirtioError> {
        dev.process_queue(RX_QUEUE)
    }

    /// Notifies the event queue.
    pub fn kick_event(&self, dev: &mut Vsock<TestMemory>) -> Result<(), VirtioError> {
        dev.process_queue(EVENT_QUEUE)
    }

    /// The packets the device used since the last call, in order. A used length shorter than
    /// a header gives a default header and no data.
    pub fn received(&mut self) -> Vec<RxPacket> {
        let used = self.rx.used_idx(&self.mem);
        let mut out = Vec::new();
        while self.rx_seen != used {
            let (id, len) = self.rx.used_elem(&self.mem, self.rx_seen);
            // A hostile test may have let the device scribble over the rings.
            let len = len.min(RX_SLOT);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let Some(&addr) = self.rx_bufs.get(&(id as u16)) else {
                continue;
            };
            let mut raw = [0u8; HEADER_LEN];
            if (len as usize) < HEADER_LEN {
                out.push(RxPacket {
                    hdr: PacketHeader::default(),
                    data: Vec::new(),
                });
                continue;
            }
            self.mem
                .read_slice(&mut raw, GuestAddress(addr))
                .expect("rx header");
            let mut data = vec![0u8; len as usize - HEADER_LEN];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + HEADER_LEN as u64))
                .expect("rx data");
            out.push(RxPacket {
                hdr: PacketHeader::from_bytes(&raw),
                data,
            });
        }
        out
    }

    /// Event ids the device used since the last call.
    pub fn events(&mut self) -> Vec<u32> {
        let used = self.event.used_idx(&self.mem);
        let mut out = Vec::new();
        while self.event_seen != used {
            let (id, len) = self.event.used_elem(&self.mem, self.event_seen);
            self.event_seen = self.event_seen.wrapping_add(1);
            let Some(&addr) = self.event_bufs.get(&(id as u16)) else {
                continue;
            };
            if len >= 4 {
                let v: u32 = self.mem.read_obj(GuestAddress(addr)).expect("event");
                out.push(u32::from_le(v));
            }
        }
        out
    }

    /// Lets the device handle what its epoll reports, as the event loop would.
    pub fn pump(dev: &mut Vsock<TestMemory>) -> Result<(), VirtioError> {
        dev.process_backend(BACKEND_TOKEN, EventSet::IN)
    }

    /// Chains the device returned on the tx queue so far (mod 2^16).
    pub fn tx_used(&self) -> u16 {
        self.tx.used_idx(&self.mem)
    }
}

/// A temporary directory under /tmp for a device's sockets, removed on drop.
pub struct SocketDir(TempDir);

impl SocketDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.as_path()
    }
}

/// A new [`SocketDir`].
pub fn socket_dir() -> SocketDir {
    SocketDir(TempDir::new_with_prefix("/tmp/vsock-").expect("temporary directory"))
}

/// A device for the guest `cid`, listening on `v.sock` in a new [`SocketDir`]. Returns the
/// directory, the socket's path and the device, in the order to bind them so that the device
/// is dropped first.
pub fn device_in_socket_dir(cid: u64) -> (SocketDir, PathBuf, Vsock<TestMemory>) {
    let dir = socket_dir();
    let uds = dir.path().join("v.sock");
    let dev = Vsock::new(VsockConfig {
        guest_cid: cid,
        uds_path: uds.clone(),
    })
    .expect("vsock device");
    (dir, uds, dev)
}
