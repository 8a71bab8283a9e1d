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
//!
//! Rate limiting ([`Net::set_rate_limiters`]): each frame costs one operation and its length
//! (header included) on the limiter of its direction. A refused transmit chain stays at the
//! head of the transmit queue; a refused received frame waits in the device. Either is retried
//! when that limiter's timerfd (in [`VirtioDevice::backend_fds`](crate::virtio::VirtioDevice))
//! fires.
//!
//! The pieces: `device` (the [`Net`] device: config space, activation, the two queues),
//! `features` (feature bits, the backend offloads they turn on, header and frame sizes), `rx`
//! and `tx` (the two data paths), `mac` (addresses), `persist` (snapshot state), [`tap`] (the
//! Linux tap backend) and, for tests and benchmarks, `SocketPairBackend` (feature `test-utils`).

mod device;
mod features;
mod mac;
mod persist;
mod rx;
#[cfg(any(test, feature = "test-utils"))]
mod socketpair;
pub mod tap;
mod tx;

#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::AsRawFd;

pub use device::Net;
pub use features::{AVAIL_FEATURES, MAX_BUFFER_LEN, MAX_FRAME_LEN, NET_HDR_LEN};
pub use persist::NetState;
#[cfg(any(test, feature = "test-utils"))]
pub use socketpair::SocketPairBackend;
pub use tap::{Tap, TapError};

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The token of the backend descriptor in
/// [`VirtioDevice::backend_fds`](crate::virtio::VirtioDevice::backend_fds).
pub const BACKEND_TOKEN: u32 = 0;
/// The token of the receive rate limiter's descriptor.
pub const RX_RATE_LIMITER_TOKEN: u32 = 1;
/// The token of the transmit rate limiter's descriptor.
pub const TX_RATE_LIMITER_TOKEN: u32 = 2;

/// The host end of the network card: something that moves whole frames, each starting with
/// the 12-byte virtio-net header, and keeps frame boundaries (a tap, a `SOCK_SEQPACKET`
/// socket). Its descriptor must be non-blocking.
pub trait NetBackend: Send + AsRawFd {
    /// Reads one frame into `buf`; `WouldBlock` when none is waiting. A frame longer than
    /// `buf` may be truncated to `buf.len()` bytes.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes `frame` as one frame; `WouldBlock` (or `ENOBUFS`) when the backend is full.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;

    /// Sets which offloaded frames the backend may hand to the guest ([`tap::offload`] flags).
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
