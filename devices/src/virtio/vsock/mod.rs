//! virtio-vsock (virtio 1.2, 5.10) with its host side on Unix sockets.
//!
//! The host side follows the convention Firecracker documents, so tools written for it work:
//! - Host to guest: a host program connects to the Unix socket at `uds_path` and writes
//!   `CONNECT <port>\n`. The device asks the guest for a connection to that port; if the guest
//!   accepts, the device answers `OK <host port>\n` on the stream and then forwards bytes both
//!   ways; if the guest refuses (RST), the device closes the stream. A first line that is
//!   malformed, longer than 32 bytes, or not there within a few seconds closes the stream.
//! - Guest to host: a guest connection to CID 2, port `P`, becomes a connection to the Unix
//!   socket `<uds_path>_P`; if nothing listens there the guest gets RST.
//!
//! Only stream sockets are supported. Both directions use the spec's credit flow control: the
//! device never sends the guest more than the guest's advertised buffer has room for, buffers
//! at most [`BUF_ALLOC`] bytes per connection that the host program has not read yet, and resets
//! a guest that sends more than that.
//!
//! All host descriptors live in one epoll owned by the device, which
//! [`VirtioDevice::backend_fds`] hands to the event loop as a single level-triggered
//! descriptor; see `muxer` for how each stream's interest follows the device's state.

mod connection;
mod host;
mod muxer;
pub mod packet;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_driver;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT, Writer};
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::epoll::EventSet;

use crate::metrics::VsockMetrics;
use crate::virtio::{
    device_type, features, notify_used, pop_chain, read_config_bytes, ActiveQueues, BackendFd,
    Persist, VirtioDevice, VirtioDeviceState, VirtioError, VirtioInterrupt,
};
use muxer::Muxer;
use packet::EVENT_TRANSPORT_RESET;

/// The host's context ID (VMADDR_CID_HOST).
pub const HOST_CID: u64 = 2;
/// Index of the receive queue (device to driver).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (driver to device).
pub const TX_QUEUE: usize = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 2;
/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Receive buffer the device advertises per connection: bytes from the guest that the host
/// program has not read yet.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Largest RW payload accepted from the guest or sent to it.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// Most connections at once; more guest REQUESTs get RST, more host connects are closed.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host streams that have not sent their CONNECT line yet.
pub const MAX_PENDING_STREAMS: usize = 64;
/// Longest CONNECT line, newline included.
pub const MAX_CONNECT_LINE: usize = 32;
/// Most connection-less packets (RSTs) waiting for rx buffers; while full, tx waits too.
pub const MAX_CONTROL_PACKETS: usize = 1024;
/// The device sends a CREDIT_UPDATE once this many bytes were forwarded since the guest last
/// heard its `fwd_cnt`.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;
/// Time a host stream has to send its CONNECT line.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(3);
/// Time the guest has to answer a host-initiated connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a closing connection has to flush its buffer, or to get the guest's RST.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The token of the device's one backend descriptor.
pub const BACKEND_TOKEN: u32 = 0;

const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
/// Lowest CID a guest may have (0, 1 and 2 are the hypervisor, local and host).
const MIN_GUEST_CID: u64 = 3;
/// Highest: CIDs are 32 bits on the wire of every guest kernel, and `u32::MAX` is VMADDR_CID_ANY.
const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// Configuration of the vsock device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID, 3 to 2^32 - 2.
    pub guest_cid: u64,
    /// Where the device listens for host connections; guest connections to port `P` go to
    /// `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// Errors creating the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved (0 to 2) or does not fit 32 bits.
    #[error("vsock guest CID {0} is invalid: it must be between 3 and 4294967294")]
    InvalidCid(u64),
    /// No socket path given.
    #[error("vsock socket path is empty")]
    EmptyPath,
    /// The socket path does not fit `sockaddr_un`.
    #[error("vsock socket path {} is {len} bytes long; a Unix socket path has at most {max}", path.display())]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The longest that fits.
        max: usize,
    },
    /// Something is at the socket path: a socket another process listens on, or not a socket
    /// (a socket nobody listens on, a killed VMM's, is removed instead).
    #[error(
        "vsock socket path {} is in use (a socket another process listens on, or not a socket); \
         remove it or choose another",
        path.display()
    )]
    PathExists {
        /// The path.
        path: PathBuf,
    },
    /// Creating, binding or listening on the socket failed.
    #[error("cannot listen on the vsock socket {}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A descriptor the device needs (epoll, timerfd) could not be set up.
    #[error("cannot set up the vsock device's {what}")]
    Setup {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Snapshot state of the vsock device. Connections are not saved: after a restore the device
/// sends the guest a transport reset so it drops its own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest's context ID.
    pub guest_cid: u64,
}

/// What the device holds between activation and reset.
struct Active<M> {
    mem: M,
    rx: Queue,
    tx: Queue,
    event: Queue,
    interrupt: VirtioInterrupt,
}

/// The virtio-vsock device, on guest memory of type `M`.
pub struct Vsock<M> {
    config: VsockConfig,
    /// Device and inode of the socket this device bound, so Drop removes only its own file.
    socket_id: Option<(u64, u64)>,
    muxer: Muxer,
    active: Option<Active<M>>,
    /// A restore happened: the next activation sends a transport reset.
    restored: bool,
    /// A transport reset event waits for an event buffer.
    reset_event_pending: bool,
}

impl<M> std::fmt::Debug for Vsock<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("config", &self.config)
            .field("activated", &self.active.is_some())
            .field("muxer", &self.muxer)
            .finish_non_exhaustive()
    }
}

impl<M: GuestMemoryBackend> Vsock<M> {
    /// Checks `config`, binds and listens on `uds_path` (non-blocking). The socket file is
    /// removed when the device is dropped.
    pub fn new(config: VsockConfig) -> Result<Vsock<M>, VsockError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&config.guest_cid) {
            return Err(VsockError::InvalidCid(config.guest_cid));
        }
        let path = config.uds_path.clone();
        let len = path.as_os_str().len();
        if len == 0 {
            return Err(VsockError::EmptyPath);
        }
        let max = host::SUN_PATH_LEN - 1;
        if len > max {
            return Err(VsockError::PathTooLong { path, len, max });
        }
        // A killed VMM's socket file (a restore after SIGKILL) is cleared; a live one is not.
        match crate::unix_socket::remove_stale_socket(&path) {
            Ok(true) => log::info!("vsock: removed the stale socket {}", path.display()),
            Ok(false) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(VsockError::PathExists { path })
            }
            Err(source) => return Err(VsockError::Bind { path, source }),
        }
        let listener = UnixListener::bind(&path).map_err(|source| VsockError::Bind {
            path: path.clone(),
            source,
        })?;
        let socket_id = path.metadata().ok().map(|m| (m.dev(), m.ino()));
        let remove_on_error = |what, source| {
            if socket_id.is_some() {
                let _ = std::fs::remove_file(&path);
            }
            VsockError::Setup { what, source }
        };
        listener
            .set_nonblocking(true)
            .map_err(|e| remove_on_error("non-blocking listener", e))?;
        let muxer = Muxer::new(config.guest_cid, path.clone(), listener)
            .map_err(|e| remove_on_error("epoll and timer", e))?;
        Ok(Vsock {
            config,
            socket_id,
            muxer,
            active: None,
            restored: false,
            reset_event_pending: false,
        })
    }

    /// The configuration the device was built with.
    pub fn config(&self) -> &VsockConfig {
        &self.config
    }

    /// Connections open now (host-initiated ones waiting for the guest included).
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Host streams that have not sent their CONNECT line yet.
    pub fn pending_host_streams(&self) -> usize {
        self.muxer.pending_stream_count()
    }

    /// The device's counters (packets and bytes each way, connections, failures), shared with
    /// whoever reports them.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.muxer.metrics.clone()
    }

    /// Packets for the guest dropped because their queue was full.
    pub fn dropped_control_packets(&self) -> u64 {
        self.muxer.dropped_control
    }

    /// Drops every connection and tells the guest with a VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
    /// on the event queue (now, or as soon as the driver provides an event buffer).
    pub fn send_transport_reset(&mut self) -> Result<(), VirtioError> {
        self.muxer.drop_connections();
        self.reset_event_pending = true;
        self.deliver_event()
    }

    fn deliver_event(&mut self) -> Result<(), VirtioError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        if !self.reset_event_pending {
            return Ok(());
        }
        let mut used = false;
        loop {
            let Some(chain) = pop_chain(&mut a.event, &a.mem)? else {
                if a.event.enable_notification(&a.mem)? {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let event = EVENT_TRANSPORT_RESET.to_le_bytes();
            // A buffer too small for the event is returned empty.
            let written = Writer::new(&a.mem, chain)
                .ok()
                .filter(|w| w.available_bytes() >= event.len())
                .and_then(|mut w| w.write_all(&event).ok())
                .map_or(0, |()| event.len() as u32);
            a.event.add_used(&a.mem, head, written)?;
            used = true;
            if written > 0 {
                self.reset_event_pending = false;
                break;
            }
        }
        if used {
            notify_used(&mut a.event, &a.mem, &a.interrupt)?;
        }
        Ok(())
    }

    /// Runs the tx queue (when `tx`, or when it waited for room) and fills rx buffers, raises
    /// the interrupt for what was used, then updates the streams' epoll interest.
    fn kick(&mut self, tx: bool) -> Result<(), VirtioError> {
        let result = self.run_queues(tx);
        self.muxer.sync_interest();
        result
    }

    fn run_queues(&mut self, tx: bool) -> Result<(), VirtioError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mut run_tx = tx || self.muxer.tx_stalled;
        let mut tx_used = false;
        let mut rx_used = false;
        loop {
            if run_tx {
                tx_used |= self.muxer.process_tx(&mut a.tx, &a.mem)?;
            }
            rx_used |= self.muxer.process_rx(&mut a.rx, &a.mem)?;
            // tx stopped for want of room for its answers; rx may have made some.
            run_tx = self.muxer.tx_stalled && self.muxer.control_has_room();
            if !run_tx {
                break;
            }
        }
        if tx_used {
            notify_used(&mut a.tx, &a.mem, &a.interrupt)?;
        }
        if rx_used {
            notify_used(&mut a.rx, &a.mem, &a.interrupt)?;
        }
        Ok(())
    }
}

impl<M> Drop for Vsock<M> {
    fn drop(&mut self) {
        let path: &Path = &self.config.uds_path;
        let ours = path.symlink_metadata().ok().map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.socket_id {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl<M: GuestMemoryBackend + Send + 'static> VirtioDevice<M> for Vsock<M> {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, active: ActiveQueues<M>) -> Result<(), VirtioError> {
        let metrics = self.muxer.metrics.clone();
        let (mem, [rx, tx, event], interrupt) = active
            .into_queues()
            .inspect_err(|_| metrics.activate_fails.inc())?;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            event,
            interrupt,
        });
        let mut started = || {
            if std::mem::take(&mut self.restored) {
                self.send_transport_reset()?;
            }
            // The driver may have queued packets before DRIVER_OK.
            self.kick(true)
        };
        let result = started();
        if result.is_err() {
            // The transport leaves DRIVER_OK clear on a failed activation: the device must
            // not stay active behind it (nor keep what it took from the broken rings).
            metrics.activate_fails.inc();
            self.reset();
        }
        result
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset();
        self.reset_event_pending = false;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, index: usize) -> Result<(), VirtioError> {
        let metrics = self.muxer.metrics.clone();
        let (result, fails) = match index {
            RX_QUEUE => {
                metrics.rx_queue_event_count.inc();
                (self.kick(false), &metrics.rx_queue_event_fails)
            }
            TX_QUEUE => {
                metrics.tx_queue_event_count.inc();
                (self.kick(true), &metrics.tx_queue_event_fails)
            }
            EVENT_QUEUE => (self.deliver_event(), &metrics.ev_queue_event_fails),
            _ => return Ok(()),
        };
        if result.is_err() {
            fails.inc();
        }
        result
    }

    fn backend_fds(&self) -> Vec<BackendFd> {
        vec![BackendFd {
            fd: self.muxer.epoll_fd(),
            events: EventSet::IN,
            token: BACKEND_TOKEN,
        }]
    }

    fn process_backend(&mut self, token: u32, _events: EventSet) -> Result<(), VirtioError> {
        if token != BACKEND_TOKEN {
            return Ok(());
        }
        let metrics = self.muxer.metrics.clone();
        self.muxer
            .handle_events(self.active.is_some())
            .and_then(|()| self.kick(false))
            .inspect_err(|_| metrics.muxer_event_fails.inc())
    }

    fn save_state(&self) -> VirtioDeviceState {
        crate::virtio::save_state(self)
    }

    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), VirtioError> {
        crate::virtio::restore_state(self, state)
    }
}

impl<M> Persist for Vsock<M> {
    const KIND: &'static str = "virtio-vsock";
    type State = VsockState;

    fn save(&self) -> VsockState {
        VsockState {
            guest_cid: self.config.guest_cid,
        }
    }

    fn restore(&mut self, s: VsockState) -> Result<(), VirtioError> {
        if s.guest_cid != self.config.guest_cid {
            return Err(VirtioError::StateMismatch(format!(
                "vsock guest CID {} in the snapshot, {} configured",
                s.guest_cid, self.config.guest_cid
            )));
        }
        self.restored = true;
        Ok(())
    }
}
