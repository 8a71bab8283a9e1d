//! Virtio devices over the virtio-mmio transport (virtio 1.x, "modern" register layout).
//!
//! The pieces:
//! - [`VirtioDevice`]: what one device type (block, net, vsock, rng, balloon) implements: its
//!   feature bits, config space, and the work done when the driver notifies a queue or a host
//!   backend (tap, socket) becomes ready.
//! - [`mmio::MmioTransport`]: the register block the guest sees at one MMIO slot; it does feature
//!   negotiation, device status, queue setup and reset, and hands the device its queues on
//!   DRIVER_OK. It is a [`crate::BusDevice`].
//! - [`VirtioInterrupt`]: the interrupt status bits and the irqfd-backed line.
//!
//! Threads: vCPU threads reach the transport through the MMIO bus; the event loop reaches the
//! same transport (same `Mutex`) when a queue's ioeventfd or a backend descriptor fires. Devices
//! never block: backends are non-blocking and a device that cannot make progress (no receive
//! buffers, tap full) waits for the next notification.
//!
//! Hostile drivers: nothing here panics on guest input. Malformed requests get an error status
//! (or are dropped) and the chain is returned to the driver; a broken queue (rings outside guest
//! memory) puts the device into DEVICE_NEEDS_RESET.

pub mod balloon;
pub mod block;
mod lazy_buf;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

pub(crate) use lazy_buf::LazyBuf;

/// The tap backend of virtio-net, at its old path (it lives in [`net::tap`] now).
pub use net::tap;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryBackend;
use vmm_rate_limiter::{RateLimiter, TokenType};
use vmm_sys_util::epoll::EventSet;

use crate::EventFdTrigger;

/// Device IDs (virtio 1.2, 5 "Device Types").
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Traditional memory balloon.
    pub const BALLOON: u32 = 5;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// Feature bits shared by all device types (virtio 1.2, 6 "Reserved Feature Bits").
pub mod features {
    /// Indirect descriptors.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// A virtio 1.x ("modern") device; required by this transport.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is set up; the device may be used.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Interrupt status bits (the InterruptStatus register).
pub mod interrupt_bits {
    /// The device used a buffer in at least one queue.
    pub const USED_BUFFER: u32 = 1;
    /// The device's configuration changed.
    pub const CONFIG_CHANGE: u32 = 2;
}

/// Errors of the virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// A queue the driver made ready is not usable (rings outside guest memory, misaligned, bad
    /// size).
    #[error(
        "virtio queue {index} is not valid (rings outside guest memory, misaligned or bad size)"
    )]
    InvalidQueue {
        /// Which queue.
        index: usize,
    },
    /// The driver activated the device with the wrong number of queues.
    #[error("device expects {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device type has.
        expected: usize,
        /// Queues handed over.
        got: usize,
    },
    /// Accessing a queue's rings in guest memory failed.
    #[error("virtio queue access failed: {0:?}")]
    Queue(virtio_queue::Error),
    /// Raising the interrupt failed.
    #[error("failed to raise the virtio interrupt")]
    Interrupt(#[source] io::Error),
    /// A host backend (file, tap, socket) failed in a way the device cannot hide from the guest.
    #[error("device backend failed")]
    Backend(#[source] io::Error),
    /// A saved state does not fit this device (other type, other configuration).
    #[error("saved device state does not match this device: {0}")]
    StateMismatch(String),
}

impl From<virtio_queue::Error> for VirtioError {
    fn from(e: virtio_queue::Error) -> Self {
        VirtioError::Queue(e)
    }
}

/// The interrupt line of one virtio-mmio device and its InterruptStatus bits.
///
/// Clones share both. Signalling sets a status bit and then writes the irqfd (edge), so the
/// driver's interrupt handler always finds the reason in InterruptStatus.
#[derive(Clone, Debug)]
pub struct VirtioInterrupt {
    status: Arc<AtomicU32>,
    line: Arc<EventFdTrigger>,
}

impl VirtioInterrupt {
    /// An interrupt raised through `line` (an EventFd that vmm-core binds with KVM_IRQFD).
    pub fn new(line: EventFdTrigger) -> Self {
        VirtioInterrupt {
            status: Arc::new(AtomicU32::new(0)),
            line: Arc::new(line),
        }
    }

    /// Tells the driver that buffers were used.
    pub fn signal_used_queue(&self) -> Result<(), VirtioError> {
        self.signal(interrupt_bits::USED_BUFFER)
    }

    /// Tells the driver that the configuration space changed.
    pub fn signal_config_change(&self) -> Result<(), VirtioError> {
        self.signal(interrupt_bits::CONFIG_CHANGE)
    }

    fn signal(&self, bit: u32) -> Result<(), VirtioError> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.line
            .event_fd()
            .write(1)
            .map_err(VirtioError::Interrupt)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the given bits.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets the status bits directly (restore from a snapshot).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// The EventFd behind the line (for binding it to a guest IRQ).
    pub fn line(&self) -> &EventFdTrigger {
        &self.line
    }
}

/// What a device gets when the driver sets DRIVER_OK: guest memory (of the transport's memory
/// type `M`), its queues (validated, in queue-index order), the interrupt, and the features both
/// sides agreed on.
pub struct ActiveQueues<M> {
    /// Guest memory, for the rings and the buffers.
    pub mem: M,
    /// One entry per queue of the device type, already checked with `Queue::is_valid`.
    pub queues: Vec<Queue>,
    /// The device's interrupt.
    pub interrupt: VirtioInterrupt,
    /// Features offered by the device and accepted by the driver.
    pub acked_features: u64,
}

impl<M> ActiveQueues<M> {
    /// Splits the activation into guest memory, the device's `N` queues and the interrupt.
    ///
    /// Fails with [`VirtioError::QueueCount`] unless the driver handed over exactly `N` queues;
    /// turns EVENT_IDX on in every queue when [`features::RING_EVENT_IDX`] was negotiated. Read
    /// `acked_features` first when the device keeps them.
    pub fn into_queues<const N: usize>(
        self,
    ) -> Result<(M, [Queue; N], VirtioInterrupt), VirtioError> {
        let ActiveQueues {
            mem,
            queues,
            interrupt,
            acked_features,
        } = self;
        let got = queues.len();
        let Ok(mut queues) = <[Queue; N]>::try_from(queues) else {
            return Err(VirtioError::QueueCount { expected: N, got });
        };
        let event_idx = acked_features & features::RING_EVENT_IDX != 0;
        for queue in &mut queues {
            queue.set_event_idx(event_idx);
        }
        Ok((mem, queues, interrupt))
    }
}

/// A host descriptor a device wants polled by the event loop, with a token the device chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendFd {
    /// The descriptor (tap, listening socket, the device's own epoll fd...).
    pub fd: RawFd,
    /// Readiness to wait for (may include `EventSet::EDGE_TRIGGERED`).
    pub events: EventSet,
    /// Passed back to [`VirtioDevice::process_backend`].
    pub token: u32,
}

/// One virtio device type, independent of the transport, working on guest memory of type `M`
/// (any vm-memory [`GuestMemoryBackend`]; the devices write guest memory only through it, so a
/// dirty bitmap in `M` sees every write).
///
/// Called with the transport's lock held, from a vCPU thread (register accesses, activation,
/// reset, and queue notifies that arrive as MMIO exits) or from the event loop (ioeventfd queue
/// notifies, backend readiness). Methods never block and never panic on guest input.
pub trait VirtioDevice<M: GuestMemoryBackend>: AsAny + Send {
    /// The virtio device ID ([`device_type`]).
    fn device_type(&self) -> u32;

    /// The maximum size of each of the device's queues; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers, [`features::VERSION_1`] included.
    fn device_features(&self) -> u64;

    /// Reads the device-specific configuration space at `offset`. Bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device-specific configuration space; read-only fields ignore the write.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// The driver set DRIVER_OK: start using the queues.
    fn activate(&mut self, active: ActiveQueues<M>) -> Result<(), VirtioError>;

    /// The driver reset the device (status 0): drop the queues and any in-flight state, and be
    /// ready for a new negotiation. Host backends (files, taps, listeners) stay open.
    fn reset(&mut self);

    /// Whether [`VirtioDevice::activate`] happened since the last reset.
    fn is_activated(&self) -> bool;

    /// The driver notified queue `index` (an ioeventfd, or a QueueNotify MMIO write).
    /// An `Err` is fatal for the device: the transport sets DEVICE_NEEDS_RESET.
    fn process_queue(&mut self, index: usize) -> Result<(), VirtioError>;

    /// Host descriptors the event loop should poll for this device, registered once at start.
    fn backend_fds(&self) -> Vec<BackendFd> {
        Vec::new()
    }

    /// A descriptor from [`VirtioDevice::backend_fds`] became ready.
    fn process_backend(&mut self, _token: u32, _events: EventSet) -> Result<(), VirtioError> {
        Ok(())
    }

    /// The device-specific part of a snapshot (see [`Persist`] and [`save_state`]).
    fn save_state(&self) -> VirtioDeviceState;

    /// Restores [`VirtioDevice::save_state`]'s output into a device built with the same
    /// configuration, before the transport re-activates it (see [`restore_state`]).
    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), VirtioError>;
}

/// Lets the VMM reach a device's own type through a `dyn VirtioDevice` (e.g. a balloon, to
/// change its target): implemented for every `'static` type.
pub trait AsAny {
    /// `self` as `Any`, for `downcast_mut`.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

impl<T: std::any::Any> AsAny for T {
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// A device's snapshot state: the device kind and the device's own state as JSON, which only
/// that device reads. Open to devices written elsewhere: any type with serde state can be
/// saved and restored through the transport (see [`Persist`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VirtioDeviceState {
    /// Which device wrote it ("virtio-blk", ...; [`Persist::KIND`]).
    pub kind: String,
    /// The device's own state.
    pub state: serde_json::Value,
}

impl<'de> Deserialize<'de> for VirtioDeviceState {
    /// Reads `{"kind": ..., "state": ...}`, and also the closed enum form of earlier versions
    /// (`{"Block": {...}}` and so on for this crate's five devices).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Open {
                kind: String,
                state: serde_json::Value,
            },
            Earlier(std::collections::BTreeMap<String, serde_json::Value>),
        }
        let (kind, state) = match Form::deserialize(d)? {
            Form::Open { kind, state } => (kind, state),
            Form::Earlier(map) if map.len() == 1 => {
                let (variant, state) = map.into_iter().next().expect("one entry");
                let kind = match variant.as_str() {
                    "Block" => "virtio-blk",
                    "Net" => "virtio-net",
                    "Vsock" => "virtio-vsock",
                    "Rng" => "virtio-rng",
                    "Balloon" => "virtio-balloon",
                    other => {
                        return Err(serde::de::Error::custom(format!(
                            "unknown device state {other:?}"
                        )))
                    }
                };
                (kind.to_string(), state)
            }
            Form::Earlier(_) => {
                return Err(serde::de::Error::custom(
                    "a device state is {\"kind\": ..., \"state\": ...}",
                ))
            }
        };
        Ok(VirtioDeviceState { kind, state })
    }
}

impl VirtioDeviceState {
    /// `state` of a device of `kind`.
    pub fn new<S: Serialize>(kind: &str, state: &S) -> Result<VirtioDeviceState, VirtioError> {
        let state = serde_json::to_value(state)
            .map_err(|e| VirtioError::StateMismatch(format!("{kind} state: {e}")))?;
        Ok(VirtioDeviceState {
            kind: kind.to_string(),
            state,
        })
    }

    /// The device kind the state belongs to, for mismatch errors.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The state of a device of `kind`: refused when another kind wrote it or it does not parse
    /// (a snapshot file is untrusted).
    pub fn decode<S: DeserializeOwned>(&self, kind: &str) -> Result<S, VirtioError> {
        if self.kind != kind {
            return Err(VirtioError::StateMismatch(format!(
                "a {} state given to a {kind} device",
                self.kind
            )));
        }
        S::deserialize(&self.state)
            .map_err(|e| VirtioError::StateMismatch(format!("{kind} state: {e}")))
    }
}

/// A device type's snapshot state, typed: what [`VirtioDevice::save_state`] and
/// [`VirtioDevice::restore_state`] carry (through [`save_state`] and [`restore_state`]).
pub trait Persist {
    /// The kind written into [`VirtioDeviceState::kind`].
    const KIND: &'static str;
    /// The device's own state.
    type State: Serialize + DeserializeOwned;
    /// The state now.
    fn save(&self) -> Self::State;
    /// Puts a saved state back (untrusted: check it).
    fn restore(&mut self, state: Self::State) -> Result<(), VirtioError>;
}

/// [`VirtioDevice::save_state`] for a [`Persist`] device.
pub fn save_state<P: Persist>(device: &P) -> VirtioDeviceState {
    VirtioDeviceState {
        kind: P::KIND.to_string(),
        // Plain serde structs without maps keyed by non-strings: serializing cannot fail.
        state: serde_json::to_value(device.save()).unwrap_or(serde_json::Value::Null),
    }
}

/// [`VirtioDevice::restore_state`] for a [`Persist`] device.
pub fn restore_state<P: Persist>(
    device: &mut P,
    state: &VirtioDeviceState,
) -> Result<(), VirtioError> {
    device.restore(state.decode(P::KIND)?)
}

/// Serializable form of one queue's state (virtio-queue's `QueueState`, which has no serde).
///
/// Not rust-vmm's `virtio-queue-ser`: its newest release (0.14) is built on virtio-queue 0.17,
/// whose `QueueState` is another type than the 0.18 one these devices use (0.18 splits a
/// descriptor that crosses guest memory regions instead of failing it), and it brings
/// `versionize` (unmaintained, on syn 1 and bincode 1) for a nine-field struct. When a release
/// on virtio-queue 0.18 appears, this type can become a thin `From` over it: the fields are
/// the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Maximum size offered by the device.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// Ready bit.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available (driver) ring address.
    pub avail_ring: u64,
    /// Used (device) ring address.
    pub used_ring: u64,
    /// Next available index the device will read.
    pub next_avail: u16,
    /// Next used index the device will write.
    pub next_used: u16,
    /// Whether EVENT_IDX was negotiated.
    pub event_idx_enabled: bool,
}

impl QueueSnapshot {
    /// Captures `queue`.
    pub fn of(queue: &Queue) -> Self {
        let s = queue.state();
        QueueSnapshot {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
        }
    }

    /// Rebuilds a queue; untrusted input (a state file), so every field is validated.
    pub fn to_queue(&self) -> Result<Queue, VirtioError> {
        let state = virtio_queue::QueueState {
            max_size: self.max_size,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
        };
        Queue::try_from(state).map_err(VirtioError::Queue)
    }
}

/// The next chain the driver made available on `queue`, or `None` when it published no more.
///
/// The one guard every device uses against a hostile available index: `pop_descriptor_chain`
/// hides an index more than a queue size ahead as "no chain" while `enable_notification` keeps
/// seeing work, so a device's notification loop would spin forever. Here it is an error
/// (`InvalidAvailRingIndex`), fatal for the device: the transport sets DEVICE_NEEDS_RESET.
///
/// The chain's head may be past the descriptor table; see [`pop_valid_chain`].
pub fn pop_chain<'m, M: GuestMemoryBackend>(
    queue: &mut Queue,
    mem: &'m M,
) -> Result<Option<DescriptorChain<&'m M>>, VirtioError> {
    Ok(queue.iter(mem)?.next())
}

/// [`pop_chain`], dropping the entries whose head index is past the descriptor table: such a
/// head names no descriptor and cannot be returned to the used ring (`add_used` refuses it).
pub fn pop_valid_chain<'m, M: GuestMemoryBackend>(
    queue: &mut Queue,
    mem: &'m M,
) -> Result<Option<DescriptorChain<&'m M>>, VirtioError> {
    while let Some(chain) = pop_chain(queue, mem)? {
        if chain.head_index() < queue.size() {
            return Ok(Some(chain));
        }
    }
    Ok(None)
}

/// Serves every chain available on `queue`: `handle` does the device's work on one chain and
/// returns the used length (bytes written into it), the chain goes back to the used ring, and
/// the queue is drained again whenever re-enabling notifications shows that the driver added
/// more meanwhile (EVENT_IDX). Heads past the table are dropped ([`pop_valid_chain`]). At the
/// end the interrupt is raised if anything was used and the driver wants it ([`notify_used`]).
///
/// This is the one queue loop of the devices whose requests complete at once (block, rng,
/// balloon, net's transmit queue). It never spins: when re-enabling notifications announces
/// more work twice in a row but no chain comes out of the ring, it stops (that cannot happen
/// with a queue that passed `Queue::is_valid`; it is a guard, not a path).
///
/// An error from `handle` or from the rings ends the call at once, with no interrupt.
pub fn drain_queue<M, F>(
    queue: &mut Queue,
    mem: &M,
    interrupt: &VirtioInterrupt,
    mut handle: F,
) -> Result<(), VirtioError>
where
    M: GuestMemoryBackend,
    F: FnMut(DescriptorChain<&M>) -> Result<u32, VirtioError>,
{
    drain_queue_limited(queue, mem, interrupt, |chain| {
        handle(chain).map(Served::Used)
    })
    .map(|_| ())
}

/// What a [`drain_queue_limited`] handler did with one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Served: the chain goes to the used ring with this length (bytes written into it).
    Used(u32),
    /// Not served now (a rate limiter is blocked): the chain goes back to the available ring,
    /// where it is the next one popped, and the queue is left alone until the device retries.
    Throttled,
}

/// [`drain_queue`] for a device that may have to stop: when `handle` answers
/// [`Served::Throttled`], the chain is put back (`go_to_previous_position`, so no request is
/// lost or reordered), the loop stops and `Ok(true)` is returned; the device retries when its
/// rate limiter's timer fires. Chains used before that still raise the interrupt.
pub fn drain_queue_limited<M, F>(
    queue: &mut Queue,
    mem: &M,
    interrupt: &VirtioInterrupt,
    mut handle: F,
) -> Result<bool, VirtioError>
where
    M: GuestMemoryBackend,
    F: FnMut(DescriptorChain<&M>) -> Result<Served, VirtioError>,
{
    let mut used_any = false;
    let mut idle_passes = 0;
    let mut throttled = false;
    'outer: loop {
        queue.disable_notification(mem)?;
        let mut handled_any = false;
        while let Some(chain) = pop_valid_chain(queue, mem)? {
            let head = chain.head_index();
            match handle(chain)? {
                Served::Used(len) => queue.add_used(mem, head, len)?,
                Served::Throttled => {
                    queue.go_to_previous_position();
                    throttled = true;
                    break 'outer;
                }
            }
            used_any = true;
            handled_any = true;
        }
        if !queue.enable_notification(mem)? {
            break;
        }
        idle_passes = if handled_any { 0 } else { idle_passes + 1 };
        if idle_passes >= 2 {
            break;
        }
    }
    if used_any {
        notify_used(queue, mem, interrupt)?;
    }
    Ok(throttled)
}

/// Takes one operation and `bytes` bytes from `limiter` for one request: `false` (nothing
/// taken, the limiter blocked until its timer fires) when either is not there. An operation
/// refused its bytes is given back.
pub fn consume_request(limiter: &mut RateLimiter, bytes: u64) -> bool {
    if !limiter.consume(1, TokenType::Ops) {
        return false;
    }
    if !limiter.consume(bytes, TokenType::Bytes) {
        limiter.manual_replenish(1, TokenType::Ops);
        return false;
    }
    true
}

/// The rate limiter's descriptor as a [`BackendFd`] with `token`: readable when a blocked
/// period ends (call [`RateLimiter::event_handler`], then retry the queue).
pub fn limiter_fd(limiter: &RateLimiter, token: u32) -> BackendFd {
    BackendFd {
        fd: limiter.as_raw_fd(),
        events: EventSet::IN,
        token,
    }
}

/// After a device used buffers of `queue`: raises the interrupt unless the driver suppressed it
/// (EVENT_IDX `used_event`, or the no-interrupt flag).
pub fn notify_used<M: GuestMemoryBackend>(
    queue: &mut Queue,
    mem: &M,
    interrupt: &VirtioInterrupt,
) -> Result<(), VirtioError> {
    if queue.needs_notification(mem)? {
        interrupt.signal_used_queue()?;
    }
    Ok(())
}

/// Copies `data` into the config-space read `data_out` at `offset`, zero-filling past the end.
/// Shared by every device's `read_config`.
pub fn read_config_bytes(config: &[u8], offset: u64, data_out: &mut [u8]) {
    data_out.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data_out.len().min(config.len() - start);
    data_out[..n].copy_from_slice(&config[start..start + n]);
}

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
