//! virtio-net (virtio 1.2, 5.1) on a tap or any other frame backend.
//!
//! One receive queue (0) and one transmit queue (1), 256 entries each; no control queue and no
//! multiqueue. Every frame on both queues and on the backend starts with the 12-byte virtio 1.x
//! header (`num_buffers` included), which the tap understands too (`IFF_VNET_HDR`): checksum
//! and segmentation offloads pass through untouched in both directions.
//!
//! Transmit: each chain's device-readable buffers (header + frame, at most
//! [`MAX_BUFFER_LEN`] bytes) are copied out and written to the backend as one frame. A chain
//! that is too long, too short or points outside guest memory is dropped; every chain goes back
//! to the used ring (length 0). A backend that cannot take the frame right now (`EAGAIN`,
//! `ENOBUFS`) loses it: the device never waits and never retries in a loop.
//!
//! Receive: the backend's descriptor is polled edge-triggered, so the device reads frames until
//! `EAGAIN` each time it becomes readable or the driver adds receive buffers. With
//! `VIRTIO_NET_F_MRG_RXBUF` a frame may fill several chains (`num_buffers` in the first header
//! says how many); without it, one chain holds one frame. When the driver has no buffers left,
//! the one frame already read waits in the device, the device asks for a notification and stops
//! reading; the next receive-queue notify continues. Frames larger than the buffers the driver
//! gives are dropped, and counted ([`Net::stats`]).

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicU32, Ordering};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_net as vnet;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::tap::{offload, Tap, TapError};
use super::{
    device_type, features, notify_used, pop_chain, read_config_bytes, ActiveQueues, BackendFd,
    VirtioDevice, VirtioDeviceState, VirtioError, VirtioInterrupt,
};

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The virtio 1.x net header (`struct virtio_net_hdr_v1`) before every frame.
pub const NET_HDR_LEN: usize = 12;
/// Largest Ethernet frame, without the header: a 64 KiB segmentation-offload frame plus its
/// Ethernet header.
pub const MAX_FRAME_LEN: usize = 65550;
/// Largest header + frame the device moves in either direction.
pub const MAX_BUFFER_LEN: usize = NET_HDR_LEN + MAX_FRAME_LEN;
/// The token of the backend descriptor in [`VirtioDevice::backend_fds`].
pub const BACKEND_TOKEN: u32 = 0;

/// Ethernet header; a shorter frame is not a frame.
const ETH_HLEN: usize = 14;
/// Shortest header + frame the device passes on.
const MIN_BUFFER_LEN: usize = NET_HDR_LEN + ETH_HLEN;
/// Where `num_buffers` sits in the header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// Receive retries in a row that find too few buffers while the driver keeps adding some; past
/// it the device waits for the next notification (a working driver makes progress long before).
const MAX_RX_RETRIES: u32 = 64;

const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];

const fn bit(n: u32) -> u64 {
    1 << n
}

/// Feature bits the device offers.
pub const AVAIL_FEATURES: u64 = features::VERSION_1
    | features::RING_EVENT_IDX
    | bit(vnet::VIRTIO_NET_F_CSUM)
    | bit(vnet::VIRTIO_NET_F_GUEST_CSUM)
    | bit(vnet::VIRTIO_NET_F_MAC)
    | bit(vnet::VIRTIO_NET_F_GUEST_TSO4)
    | bit(vnet::VIRTIO_NET_F_GUEST_TSO6)
    | bit(vnet::VIRTIO_NET_F_GUEST_ECN)
    | bit(vnet::VIRTIO_NET_F_HOST_TSO4)
    | bit(vnet::VIRTIO_NET_F_HOST_TSO6)
    | bit(vnet::VIRTIO_NET_F_HOST_ECN)
    | bit(vnet::VIRTIO_NET_F_MRG_RXBUF)
    | bit(vnet::VIRTIO_NET_F_STATUS);

/// The host end of the network card: something that moves whole frames, each starting with
/// the 12-byte virtio-net header, and keeps frame boundaries (a tap, a `SOCK_SEQPACKET`
/// socket). Its descriptor must be non-blocking.
pub trait NetBackend: Send + AsRawFd {
    /// Reads one frame into `buf`; `WouldBlock` when none is waiting. A frame longer than
    /// `buf` may be truncated to `buf.len()` bytes.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes `frame` as one frame; `WouldBlock` (or `ENOBUFS`) when the backend is full.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;

    /// Sets which offloaded frames the backend may hand to the guest ([`offload`] flags).
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
}

/// Frame counters of one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames written to the backend.
    pub tx_frames: u64,
    /// Bytes of those frames, without the virtio-net header.
    pub tx_bytes: u64,
    /// Transmit chains dropped: malformed, too long, or refused by the backend.
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames, without the virtio-net header.
    pub rx_bytes: u64,
    /// Frames from the backend dropped: too short, or larger than the guest's buffers.
    pub rx_dropped: u64,
}

/// Snapshot state of the net device. A received frame still waiting for guest buffers is not
/// saved (it is dropped, as a real network may drop it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetState {
    /// The MAC address the guest saw.
    pub mac: [u8; 6],
}

/// What the device holds between DRIVER_OK and reset.
struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: VirtioInterrupt,
    acked_features: u64,
}

/// A virtio-net device on a [`NetBackend`] (normally a [`Tap`]).
pub struct Net {
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
    active: Option<Active>,
    /// One byte longer than the largest frame, so a truncated read is recognised.
    rx_buf: Box<[u8]>,
    /// Length of a frame in `rx_buf` that waits for receive buffers.
    rx_pending: Option<usize>,
    tx_buf: Box<[u8]>,
    /// Chains (head, bytes written) that hold the frame being received.
    rx_chains: Vec<(u16, u32)>,
    stats: NetStats,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("backend_fd", &self.backend.as_raw_fd())
            .field("mac", &format_mac(&self.mac))
            .field("activated", &self.active.is_some())
            .field("rx_pending", &self.rx_pending)
            .field("stats", &self.stats)
            .finish()
    }
}

fn is_unicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && *mac != [0; 6]
}

fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// A locally administered unicast MAC, stable for `seed` within this process.
fn derived_mac(seed: &str) -> [u8; 6] {
    let mut hasher = DefaultHasher::new();
    seed.hash(&mut hasher);
    std::process::id().hash(&mut hasher);
    let h = hasher.finish().to_le_bytes();
    // Bit 0 clear: unicast. Bit 1 set: locally administered, so it never collides with a
    // vendor's address.
    [(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]]
}

/// The tap offloads matching what the guest accepted, so the backend hands it only frames it
/// can take. Flags the kernel would refuse (TSO without checksum offload, ECN without TSO) are
/// left out even if a driver acked them against the spec's feature dependencies.
fn backend_offloads(acked: u64) -> u32 {
    let has = |n| acked & bit(n) != 0;
    let mut flags = 0;
    if has(vnet::VIRTIO_NET_F_GUEST_CSUM) {
        flags |= offload::TUN_F_CSUM;
        if has(vnet::VIRTIO_NET_F_GUEST_TSO4) {
            flags |= offload::TUN_F_TSO4;
        }
        if has(vnet::VIRTIO_NET_F_GUEST_TSO6) {
            flags |= offload::TUN_F_TSO6;
        }
        if flags & (offload::TUN_F_TSO4 | offload::TUN_F_TSO6) != 0
            && has(vnet::VIRTIO_NET_F_GUEST_ECN)
        {
            flags |= offload::TUN_F_TSO_ECN;
        }
    }
    flags
}

impl Net {
    /// A device on `backend` with the MAC address `mac`, taken as given; with `None`, a locally
    /// administered address unique within this process.
    pub fn new(backend: Box<dyn NetBackend>, mac: Option<[u8; 6]>) -> Net {
        static DEVICES: AtomicU32 = AtomicU32::new(0);
        let mac = mac.unwrap_or_else(|| {
            derived_mac(&format!("net{}", DEVICES.fetch_add(1, Ordering::Relaxed)))
        });
        Net {
            backend,
            mac,
            active: None,
            rx_buf: vec![0; MAX_BUFFER_LEN + 1].into_boxed_slice(),
            rx_pending: None,
            tx_buf: vec![0; MAX_BUFFER_LEN].into_boxed_slice(),
            rx_chains: Vec::new(),
            stats: NetStats::default(),
        }
    }

    /// A device on the tap `tap_name` (opened or created, see [`Tap::open`]). Without `mac`,
    /// the address is derived from the tap's name and this process's id.
    pub fn with_tap(tap_name: &str, mac: Option<[u8; 6]>) -> Result<Net, TapError> {
        let tap = Tap::open(tap_name)?;
        let mac = mac.unwrap_or_else(|| derived_mac(tap.name()));
        Ok(Net::new(Box::new(tap), Some(mac)))
    }

    /// The card's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Frame counters since the device was built.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn config(&self) -> [u8; 10] {
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&(vnet::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        // max_virtqueue_pairs: one pair.
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config
    }

    /// Sends every chain the driver made available on the transmit queue.
    fn process_tx(&mut self) -> Result<(), VirtioError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let mem = &active.mem;
        let tx = &mut active.tx;
        let mut used_any = false;
        let result = loop {
            if let Err(e) = tx.disable_notification(mem) {
                break Err(e.into());
            }
            let drained = loop {
                let chain = match pop_chain(tx, mem) {
                    Ok(Some(chain)) => chain,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                };
                let head = chain.head_index();
                match gather_readable(chain, mem, &mut self.tx_buf) {
                    Some(len) if len >= MIN_BUFFER_LEN => {
                        // A full or failing backend loses the frame; the guest's TCP resends.
                        let frame = self.tx_buf.get(..len).unwrap_or_default();
                        match self.backend.write_frame(frame) {
                            Ok(_) => {
                                self.stats.tx_frames += 1;
                                self.stats.tx_bytes += (len - NET_HDR_LEN) as u64;
                            }
                            Err(_) => self.stats.tx_dropped += 1,
                        }
                    }
                    _ => self.stats.tx_dropped += 1,
                }
                // A head outside the ring cannot be named in the used ring: nothing to return.
                if head < tx.size() {
                    if let Err(e) = tx.add_used(mem, head, 0) {
                        break Err(e.into());
                    }
                    used_any = true;
                }
            };
            if let Err(e) = drained {
                break Err(e);
            }
            match tx.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break Ok(()),
                Err(e) => break Err(e.into()),
            }
        };
        if used_any {
            notify_used(tx, mem, &active.interrupt)?;
        }
        result
    }

    /// Moves frames from the backend into the receive queue until the backend is empty or the
    /// driver has no buffers left.
    fn process_rx(&mut self) -> Result<(), VirtioError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let old_used = active.rx.next_used();
        let mut published = 0u32;
        let result = rx_loop(
            active,
            self.backend.as_mut(),
            &mut self.rx_buf,
            &mut self.rx_pending,
            &mut self.rx_chains,
            &mut self.stats,
            &mut published,
        );
        let notified = if published > 0 && rx_needs_interrupt(active, old_used, published)? {
            active.interrupt.signal_used_queue()
        } else {
            Ok(())
        };
        result.and(notified)
    }
}

/// Copies the device-readable buffers of `chain` into `buf`; `None` when they do not fit in it
/// or one is outside guest memory. Device-writable buffers have no place in a transmit chain
/// and are skipped.
fn gather_readable(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    buf: &mut [u8],
) -> Option<usize> {
    let mut filled = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            continue;
        }
        let len = usize::try_from(desc.len()).ok()?;
        let end = filled.checked_add(len)?;
        let dest = buf.get_mut(filled..end)?;
        mem.read_slice(dest, desc.addr()).ok()?;
        filled = end;
    }
    Some(filled)
}

/// Outcome of placing one received frame.
enum Placed {
    /// In the guest's buffers.
    Delivered,
    /// Larger than every buffer the guest can give: dropped, the buffers stay available.
    TooLarge,
    /// Hit a chain the device cannot write into: it (and the chains taken before it for this
    /// frame) went back empty; try again with the next chains.
    BadChain,
    /// The ring ran out of buffers. Chains from `start` were taken but not used.
    NoBuffers { start: u16 },
}

/// Copies `data` (the part of the frame from offset `frame_off`) into the device-writable
/// buffers of `chain`, in order, until either runs out; returns the bytes written, or `None`
/// for a chain the device may not write (a device-readable buffer, a buffer outside guest
/// memory). Records where the frame's `num_buffers` bytes landed in `num_buffers_at`.
fn fill_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    data: &[u8],
    frame_off: usize,
    num_buffers_at: &mut [Option<GuestAddress>; 2],
) -> Option<usize> {
    let mut written = 0usize;
    for desc in chain {
        let rest = data.get(written..)?;
        if rest.is_empty() {
            break;
        }
        if !desc.is_write_only() {
            return None;
        }
        let len = usize::try_from(desc.len()).ok()?.min(rest.len());
        let part = rest.get(..len)?;
        mem.write_slice(part, desc.addr()).ok()?;
        let start = frame_off + written;
        for (i, at) in num_buffers_at.iter_mut().enumerate() {
            let pos = NUM_BUFFERS_OFFSET + i;
            if (start..start + len).contains(&pos) {
                *at = desc.addr().checked_add((pos - start) as u64);
            }
        }
        written += len;
    }
    Some(written)
}

/// Places `frame` (header included) in the receive queue: one chain, or with mergeable buffers
/// as many as it takes. Used entries of one frame are published together, so the driver never
/// sees a first buffer whose `num_buffers` counts entries not yet in the used ring.
fn place_frame(
    active: &mut Active,
    frame: &mut [u8],
    chains: &mut Vec<(u16, u32)>,
    published: &mut u32,
) -> Result<Placed, VirtioError> {
    let mem = &active.mem;
    let rx = &mut active.rx;
    let mergeable = active.acked_features & bit(vnet::VIRTIO_NET_F_MRG_RXBUF) != 0;
    let max_chains = if mergeable { usize::from(rx.size()) } else { 1 };
    // Without mergeable buffers the header still has the field, and it must say 1.
    if let Some(field) = frame.get_mut(NUM_BUFFERS_OFFSET..NET_HDR_LEN) {
        field.copy_from_slice(&1u16.to_le_bytes());
    }

    chains.clear();
    let start = rx.next_avail();
    let mut written = 0usize;
    let mut num_buffers_at = [None, None];
    while written < frame.len() {
        if chains.len() >= max_chains {
            rx.set_next_avail(start);
            return Ok(Placed::TooLarge);
        }
        let Some(chain) = pop_chain(rx, mem)? else {
            return Ok(Placed::NoBuffers { start });
        };
        let head = chain.head_index();
        // The whole header goes in the first chain.
        let min = if chains.is_empty() { NET_HDR_LEN } else { 1 };
        let rest = frame.get(written..).unwrap_or_default();
        match fill_chain(chain, mem, rest, written, &mut num_buffers_at) {
            Some(n) if n >= min && n <= u32::MAX as usize => {
                chains.push((head, n as u32));
                written += n;
            }
            _ => {
                chains.push((head, 0));
                for chain in chains.iter_mut() {
                    chain.1 = 0;
                }
                publish_used(rx, mem, chains, published)?;
                return Ok(Placed::BadChain);
            }
        }
    }
    if chains.len() > 1 {
        // Only with mergeable buffers; `max_chains` is at most the ring size, so it fits.
        let count = u16::try_from(chains.len())
            .unwrap_or(u16::MAX)
            .to_le_bytes();
        for (at, byte) in num_buffers_at.iter().zip(count) {
            if let Some(at) = at {
                mem.write_obj(byte, *at)
                    .map_err(|e| VirtioError::Queue(virtio_queue::Error::GuestMemory(e)))?;
            }
        }
    }
    publish_used(rx, mem, chains, published)?;
    Ok(Placed::Delivered)
}

/// Writes `entries` to the used ring, then moves its index past all of them at once.
fn publish_used(
    rx: &mut Queue,
    mem: &GuestMemoryMmap,
    entries: &[(u16, u32)],
    published: &mut u32,
) -> Result<(), VirtioError> {
    let guest_err = |e| VirtioError::Queue(virtio_queue::Error::GuestMemory(e));
    let size = rx.size();
    let used = GuestAddress(rx.used_ring());
    let mut idx = rx.next_used();
    for &(head, len) in entries {
        // A head outside the ring cannot be named in the used ring.
        if head >= size {
            continue;
        }
        let slot = u64::from(idx % size);
        let at = used
            .checked_add(4 + 8 * slot)
            .ok_or(VirtioError::Queue(virtio_queue::Error::AddressOverflow))?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, at).map_err(guest_err)?;
        idx = idx.wrapping_add(1);
        *published = published.saturating_add(1);
    }
    let idx_at = used
        .checked_add(2)
        .ok_or(VirtioError::Queue(virtio_queue::Error::AddressOverflow))?;
    // Release: the driver that sees the new index sees the entries and the data.
    mem.store(idx.to_le(), idx_at, Ordering::Release)
        .map_err(guest_err)?;
    rx.set_next_used(idx);
    Ok(())
}

/// Whether the driver wants an interrupt for the `published` entries added to the receive
/// queue since `old_used` (EVENT_IDX's `used_event`, as in virtio 1.2, 2.7.10).
fn rx_needs_interrupt(active: &Active, old_used: u16, published: u32) -> Result<bool, VirtioError> {
    let rx = &active.rx;
    if !rx.event_idx_enabled() {
        return Ok(true);
    }
    // The 16-bit window cannot tell a full wrap from no progress; be safe and interrupt.
    if published >= u32::from(u16::MAX) {
        return Ok(true);
    }
    // Order the used-ring writes before reading what the driver asked for.
    fence(Ordering::SeqCst);
    let used_event_at = GuestAddress(rx.avail_ring())
        .checked_add(4 + 2 * u64::from(rx.size()))
        .ok_or(VirtioError::Queue(virtio_queue::Error::AddressOverflow))?;
    let used_event = u16::from_le(
        active
            .mem
            .load(used_event_at, Ordering::Relaxed)
            .map_err(|e| VirtioError::Queue(virtio_queue::Error::GuestMemory(e)))?,
    );
    let new = rx.next_used();
    Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old_used))
}

/// The receive loop of [`Net::process_rx`]: the pending frame first, then the backend until
/// `EAGAIN` (the descriptor is edge-triggered), stopping when the guest has no buffers.
fn rx_loop(
    active: &mut Active,
    backend: &mut dyn NetBackend,
    rx_buf: &mut [u8],
    rx_pending: &mut Option<usize>,
    chains: &mut Vec<(u16, u32)>,
    stats: &mut NetStats,
    published: &mut u32,
) -> Result<(), VirtioError> {
    active.rx.disable_notification(&active.mem)?;
    let mut retries = 0u32;
    loop {
        let len = match *rx_pending {
            Some(len) => len,
            None => match backend.read_frame(rx_buf) {
                // An empty read: end of stream (a socket backend's peer is gone); a tap
                // never returns one. Nothing more to read now.
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VirtioError::Backend(e)),
            },
        };
        // A read that filled the whole buffer may have been cut short.
        let Some(frame) = rx_buf.get_mut(..len).filter(|_| len <= MAX_BUFFER_LEN) else {
            *rx_pending = None;
            stats.rx_dropped += 1;
            continue;
        };
        if len < MIN_BUFFER_LEN {
            *rx_pending = None;
            stats.rx_dropped += 1;
            continue;
        }
        *rx_pending = Some(len);
        match place_frame(active, frame, chains, published)? {
            Placed::Delivered => {
                *rx_pending = None;
                retries = 0;
                stats.rx_frames += 1;
                stats.rx_bytes += (len - NET_HDR_LEN) as u64;
            }
            Placed::TooLarge => {
                *rx_pending = None;
                stats.rx_dropped += 1;
            }
            Placed::BadChain => {}
            Placed::NoBuffers { start } => {
                // Ask for a notify once the driver adds a buffer past those seen (with
                // EVENT_IDX that is `avail_event` = where the ring ran dry), then give the
                // chains taken back. If buffers came meanwhile, try again now.
                let more = active.rx.enable_notification(&active.mem);
                active.rx.set_next_avail(start);
                retries += 1;
                if !more? || retries > MAX_RX_RETRIES {
                    return Ok(());
                }
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) -> Result<(), VirtioError> {
        // AVAIL_FEATURES has RING_EVENT_IDX: the queues see what the driver acked.
        let acked_features = active.acked_features & AVAIL_FEATURES;
        let (mem, [rx, tx], interrupt) = active.into_queues()?;
        self.backend
            .set_offload(backend_offloads(acked_features))
            .map_err(VirtioError::Backend)?;
        self.rx_pending = None;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
            acked_features,
        });
        // Frames that reached the backend before now already raised their edge: take them.
        // If that fails the device stays inactive, as if activation had never happened.
        let taken = self.process_rx();
        if taken.is_err() {
            self.active = None;
        }
        taken
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_pending = None;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, index: usize) -> Result<(), VirtioError> {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => Ok(()),
        }
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        vec![BackendFd {
            fd: self.backend.as_raw_fd(),
            events: EventSet::IN | EventSet::EDGE_TRIGGERED,
            token: BACKEND_TOKEN,
        }]
    }

    fn process_backend(&mut self, token: u32, _events: EventSet) -> Result<(), VirtioError> {
        if token != BACKEND_TOKEN {
            return Ok(());
        }
        self.process_rx()
    }

    fn save_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Net(NetState { mac: self.mac })
    }

    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), VirtioError> {
        let VirtioDeviceState::Net(state) = state else {
            return Err(VirtioError::StateMismatch(
                "not a virtio-net device state".to_string(),
            ));
        };
        if !is_unicast(&state.mac) {
            return Err(VirtioError::StateMismatch(format!(
                "virtio-net MAC {} is not a unicast address",
                format_mac(&state.mac)
            )));
        }
        self.mac = state.mac;
        self.rx_pending = None;
        Ok(())
    }
}

#[cfg(any(test, feature = "test-utils"))]
pub use socketpair::SocketPairBackend;

#[cfg(any(test, feature = "test-utils"))]
mod socketpair {
    use std::io::{self, Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::NetBackend;

    const NO_OFFLOAD_SET: u64 = u64::MAX;

    /// A test and benchmark backend (feature `test-utils`): one end of a non-blocking
    /// `socketpair(AF_UNIX, SOCK_SEQPACKET)`, which keeps frame boundaries as a tap does, with
    /// no privileges and no host interface. The other end plays the network: what it writes
    /// the device receives, and it reads what the guest sends (header included).
    #[derive(Debug)]
    pub struct SocketPairBackend {
        sock: UnixStream,
        offload: Arc<AtomicU64>,
    }

    impl SocketPairBackend {
        /// Both ends of a new pair: one for the device, one for the test.
        pub fn pair() -> io::Result<(SocketPairBackend, SocketPairBackend)> {
            let mut fds = [-1; 2];
            // SAFETY: socketpair writes two descriptors into the 2-int array it is given, which
            // lives for the call.
            let ret = unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                    fds.as_mut_ptr(),
                )
            };
            if ret != 0 {
                return Err(io::Error::last_os_error());
            }
            let offload = Arc::new(AtomicU64::new(NO_OFFLOAD_SET));
            let end = |fd: RawFd| {
                // SAFETY: socketpair succeeded, so `fd` is an open descriptor that nothing else
                // owns; the OwnedFd takes it over and closes it once.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                SocketPairBackend {
                    sock: UnixStream::from(fd),
                    offload: offload.clone(),
                }
            };
            Ok((end(fds[0]), end(fds[1])))
        }

        /// The flags last passed to [`NetBackend::set_offload`] on either end (the ends share
        /// them, so the test's end sees what the device set); `None` before any call.
        pub fn offload(&self) -> Option<u32> {
            u32::try_from(self.offload.load(Ordering::SeqCst)).ok()
        }
    }

    impl AsRawFd for SocketPairBackend {
        fn as_raw_fd(&self) -> RawFd {
            self.sock.as_raw_fd()
        }
    }

    impl NetBackend for SocketPairBackend {
        fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.sock.read(buf)
        }

        fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
            self.sock.write(frame)
        }

        fn set_offload(&mut self, flags: u32) -> io::Result<()> {
            self.offload.store(u64::from(flags), Ordering::SeqCst);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{activate, test_memory, TestQueue, DESC_F_NEXT, DESC_F_WRITE};
    use crate::EventFd;

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
        assert_eq!(fds.len(), 1);
        assert_eq!(fds[0].events, EventSet::IN | EventSet::EDGE_TRIGGERED);
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
        let bad = VirtioDeviceState::Net(NetState {
            mac: [1, 2, 3, 4, 5, 6],
        });
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
        assert!(h.net.rx_pending.is_some());
        h.net.reset();
        assert!(!h.net.is_activated());
        assert!(h.net.rx_pending.is_none());
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
}
