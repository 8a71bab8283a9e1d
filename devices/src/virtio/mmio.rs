//! The virtio-mmio transport, "modern" register layout (virtio 1.2, 4.2.2, Version 2).
//!
//! [`MmioTransport`] is the register block a guest finds at one MMIO slot. It owns the
//! negotiation state (device status, feature pages, queue configuration, interrupt status) and
//! hands the [`VirtioDevice`] its queues once the driver sets DRIVER_OK and every queue checks
//! out. Queue notifies reach the device through [`MmioTransport::process_queue`], from a KVM
//! ioeventfd bound at [`NOTIFY_REG_OFFSET`] or from a QueueNotify MMIO write.
//!
//! The guest drives every register, so every write is checked against the spec's ordering
//! rules and out-of-order or malformed writes are ignored; a broken queue or a failing device
//! puts the device into DEVICE_NEEDS_RESET rather than stopping the VMM.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;

use super::{
    device_type, features, interrupt_bits, status, ActiveQueues, BackendFd, QueueSnapshot,
    VirtioDevice, VirtioDeviceState, VirtioError, VirtioInterrupt,
};
use crate::BusDevice;

/// Offset of the QueueNotify register; vmm-core binds a KVM ioeventfd here with the queue index
/// as datamatch.
pub const NOTIFY_REG_OFFSET: u64 = regs::QUEUE_NOTIFY;

/// "virt" in little endian: the MagicValue register.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The Version register: 2 is the virtio 1.x ("modern", non-legacy) layout.
pub const MMIO_VERSION: u32 = 2;
/// The VendorID register ("VRMM").
pub const VENDOR_ID: u32 = 0x4d4d_5652;

/// Register offsets inside a slot (virtio 1.2, 4.2.2). All are 32 bits wide.
pub mod regs {
    /// MagicValue (R).
    pub const MAGIC_VALUE: u64 = 0x000;
    /// Version (R).
    pub const VERSION: u64 = 0x004;
    /// DeviceID (R).
    pub const DEVICE_ID: u64 = 0x008;
    /// VendorID (R).
    pub const VENDOR_ID: u64 = 0x00c;
    /// DeviceFeatures (R): the 32 feature bits selected by DeviceFeaturesSel.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// DeviceFeaturesSel (W).
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// DriverFeatures (W): the 32 feature bits selected by DriverFeaturesSel.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// DriverFeaturesSel (W).
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// QueueSel (W).
    pub const QUEUE_SEL: u64 = 0x030;
    /// QueueNumMax (R).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// QueueNum (W).
    pub const QUEUE_NUM: u64 = 0x038;
    /// QueueReady (RW).
    pub const QUEUE_READY: u64 = 0x044;
    /// QueueNotify (W).
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// InterruptStatus (R).
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// InterruptACK (W).
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Status (RW).
    pub const STATUS: u64 = 0x070;
    /// QueueDescLow (W).
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// QueueDescHigh (W).
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// QueueDriverLow (W): the available ring.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// QueueDriverHigh (W).
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// QueueDeviceLow (W): the used ring.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// QueueDeviceHigh (W).
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// SHMSel (W).
    pub const SHM_SEL: u64 = 0x0ac;
    /// SHMLenLow (R).
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// SHMLenHigh (R).
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// SHMBaseLow (R).
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// SHMBaseHigh (R).
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// ConfigGeneration (R).
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// Status bits a driver may write; DEVICE_NEEDS_RESET belongs to the device.
const DRIVER_STATUS_BITS: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK | status::FAILED;

/// Every status bit that can appear in the register.
const ALL_STATUS_BITS: u32 = DRIVER_STATUS_BITS | status::DEVICE_NEEDS_RESET;

/// Initialization steps in the order the driver must take them (virtio 1.2, 3.1.1), each with
/// the step that has to come before it.
const STATUS_ORDER: [(u32, u32); 4] = [
    (status::ACKNOWLEDGE, 0),
    (status::DRIVER, status::ACKNOWLEDGE),
    (status::FEATURES_OK, status::DRIVER),
    (status::DRIVER_OK, status::FEATURES_OK),
];

/// How much of the configuration space ConfigGeneration watches; more than any device type here
/// has (virtio-blk's, the largest, is 60 bytes).
const CONFIG_WINDOW: usize = 256;

/// Device errors written to stderr per transport; a guest can make a device fail over and over
/// (reset, set up broken rings, DRIVER_OK...), so the log stays bounded.
const MAX_LOGGED_ERRORS: u32 = 8;

/// The name of a device type in log lines (`virtio-net`, ...).
fn type_name(device_type: u32) -> String {
    match device_type {
        device_type::NET => "net".into(),
        device_type::BLOCK => "block".into(),
        device_type::RNG => "rng".into(),
        device_type::BALLOON => "balloon".into(),
        device_type::VSOCK => "vsock".into(),
        other => format!("type{other}"),
    }
}

/// A queue with the device's maximum size, or an unusable one (max size 0, which the driver reads
/// as "not available") when the device reports a size virtio-queue refuses.
fn new_queue(max_size: u16) -> Queue {
    Queue::new(max_size).unwrap_or_default()
}

/// A second `Queue` with the same configuration and indices (`Queue` is not `Clone`).
fn copy_queue(queue: &Queue) -> Result<Queue, VirtioError> {
    Queue::try_from(queue.state()).map_err(VirtioError::Queue)
}

/// Whether a queue may be handed to the device: it has a size, is ready, and its rings lie in
/// guest memory.
fn usable<M: GuestMemoryBackend>(queue: &Queue, mem: &M) -> bool {
    queue.max_size() != 0 && queue.size() != 0 && queue.ready() && queue.is_valid(mem)
}

/// Whether `status` respects the initialization order: each step only after the one before.
fn status_order_ok(status: u32) -> bool {
    STATUS_ORDER
        .iter()
        .all(|&(bit, before)| status & bit == 0 || status & before == before)
}

/// Snapshot of a [`MmioTransport`]: the transport's registers, each queue, and the device's own
/// state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MmioTransportState {
    /// The Status register.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Feature bits the driver wrote (accepted by the device once FEATURES_OK is set).
    pub acked_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// SHMSel.
    pub shm_sel: u32,
    /// One entry per queue of the device, in queue-index order.
    pub queues: Vec<QueueSnapshot>,
    /// The InterruptStatus bits.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// The device-specific part.
    pub device: VirtioDeviceState,
}

/// One virtio device behind the virtio-mmio register layout, on guest memory of type `M`
/// (any vm-memory [`GuestMemoryBackend`]; a VMM names its own, e.g.
/// `type Transport = MmioTransport<GuestMemoryMmap<AtomicBitmap>>`).
pub struct MmioTransport<M: GuestMemoryBackend> {
    mem: M,
    device: Box<dyn VirtioDevice<M>>,
    interrupt: VirtioInterrupt,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    shm_sel: u32,
    /// The driver's queue configuration. After activation the device works on its own copies;
    /// these keep the addresses and sizes for snapshots and reset.
    queues: Vec<Queue>,
    config_generation: u32,
    /// The configuration space when the driver last read ConfigGeneration.
    config_seen: Vec<u8>,
    paused: bool,
    logged_errors: u32,
}

impl<M: GuestMemoryBackend + Clone + Send + 'static> MmioTransport<M> {
    /// The transport for `device`, using `mem` for the rings and `interrupt` as its line.
    ///
    /// A queue whose maximum size virtio-queue refuses (0, above 32768, not a power of two)
    /// reads as QueueNumMax 0, so the device cannot be activated: a device bug, not a crash.
    pub fn new(mem: M, device: Box<dyn VirtioDevice<M>>, interrupt: VirtioInterrupt) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| new_queue(max))
            .collect();
        let mut config_seen = vec![0; CONFIG_WINDOW];
        device.read_config(0, &mut config_seen);
        MmioTransport {
            mem,
            device,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            queues,
            config_generation: 0,
            config_seen,
            paused: false,
            logged_errors: 0,
        }
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice<M> {
        self.device.as_ref()
    }

    /// The device behind the transport, for host-side changes (e.g. a balloon target).
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice<M> {
        self.device.as_mut()
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &VirtioInterrupt {
        &self.interrupt
    }

    /// The Status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The feature bits the driver has written.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The number of queues of the device.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Whether queue and backend processing is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Host descriptors the event loop polls for the device.
    pub fn backend_fds(&self) -> Vec<BackendFd> {
        self.device.backend_fds()
    }

    /// Whether backend events are processed now (not paused, not in DEVICE_NEEDS_RESET).
    ///
    /// While they are not, the event loop should stop polling the backend descriptors: a
    /// level-triggered one that stays ready would otherwise wake it over and over.
    pub fn backend_events_wanted(&self) -> bool {
        self.may_run()
    }

    /// Whether the device may run: not paused and not waiting for a reset.
    fn may_run(&self) -> bool {
        !self.paused && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// Queue `index` was notified (its ioeventfd fired, or a QueueNotify write).
    ///
    /// Does nothing when the device is not activated, paused or in DEVICE_NEEDS_RESET, or when
    /// `index` is not one of its queues. A device error puts it in DEVICE_NEEDS_RESET.
    pub fn process_queue(&mut self, index: usize) {
        if !self.may_run()
            || self.status & status::DRIVER_OK == 0
            || !self.device.is_activated()
            || index >= self.queues.len()
        {
            return;
        }
        self.run_device(|device| device.process_queue(index));
    }

    /// A backend descriptor of the device became ready.
    ///
    /// Forwarded also before activation (a device may accept host connections any time), but not
    /// while paused or in DEVICE_NEEDS_RESET. A device error puts it in DEVICE_NEEDS_RESET.
    pub fn process_backend(&mut self, token: u32, events: EventSet) {
        if !self.may_run() {
            return;
        }
        self.run_device(|device| device.process_backend(token, events));
    }

    /// Stops (or restarts) queue and backend processing; the registers keep working.
    ///
    /// On unpause every queue of an activated device is processed once, so that notifies that
    /// arrived meanwhile are not lost.
    pub fn set_paused(&mut self, paused: bool) {
        let resumed = self.paused && !paused;
        self.paused = paused;
        if resumed {
            for index in 0..self.queues.len() {
                self.process_queue(index);
            }
        }
    }

    /// Calls into the device; an error is fatal for it.
    fn run_device(
        &mut self,
        call: impl FnOnce(&mut dyn VirtioDevice<M>) -> Result<(), VirtioError>,
    ) {
        if let Err(e) = call(self.device.as_mut()) {
            self.needs_reset(&e);
        }
    }

    /// ConfigGeneration: changes whenever the configuration space changed since the driver last
    /// read it (virtio 1.2, 2.5.1), whoever changed it (the device, a host API, the driver), so
    /// a driver that reads it before and after a multi-field read notices a torn read.
    /// Comparing the bytes catches every change without devices having to report them.
    fn config_generation(&mut self) -> u32 {
        let now = self.config_now();
        if now != self.config_seen {
            self.config_generation = self.config_generation.wrapping_add(1);
            self.config_seen = now;
        }
        self.config_generation
    }

    fn config_now(&self) -> Vec<u8> {
        let mut now = vec![0; CONFIG_WINDOW];
        self.device.read_config(0, &mut now);
        now
    }

    /// Enters DEVICE_NEEDS_RESET (virtio 1.2, 2.1.2): sets the bit and tells the driver with a
    /// configuration change interrupt. Processing stops until the driver resets the device, so
    /// each error is logged once (up to [`MAX_LOGGED_ERRORS`] per transport).
    fn needs_reset(&mut self, error: &VirtioError) {
        self.status |= status::DEVICE_NEEDS_RESET;
        let signalled = self.interrupt.signal_config_change();
        if self.logged_errors < MAX_LOGGED_ERRORS {
            self.logged_errors += 1;
            let name = type_name(self.device.device_type());
            log::error!("virtio-{name}: device needs reset: {error}");
            if let Err(e) = signalled {
                log::error!("virtio-{name}: {e}");
            }
            if self.logged_errors == MAX_LOGGED_ERRORS {
                log::warn!("virtio-{name}: further device errors are not logged");
            }
        }
    }

    /// Status 0: back to the state after power-on, ready for a new negotiation.
    fn reset(&mut self) {
        self.device.reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        self.interrupt.set_status(0);
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    /// Whether the driver's features can be accepted: only offered bits, and VERSION_1 (this
    /// transport has no legacy interface).
    fn features_ok(&self, acked: u64) -> bool {
        acked & !self.device.device_features() == 0 && acked & features::VERSION_1 != 0
    }

    /// Hands the queues to the device, each checked first.
    fn activate(&mut self) -> Result<(), VirtioError> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, queue) in self.queues.iter().enumerate() {
            if !usable(queue, &self.mem) {
                return Err(VirtioError::InvalidQueue { index });
            }
            queues.push(copy_queue(queue)?);
        }
        self.device.activate(ActiveQueues {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        })
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let current = self.status & DRIVER_STATUS_BITS;
        let value = value & DRIVER_STATUS_BITS;
        // Only a reset clears bits.
        if value & current != current {
            return;
        }
        if value & status::FAILED != 0 {
            self.status |= status::FAILED;
        }
        for (bit, before) in STATUS_ORDER {
            if value & bit == 0 || self.status & bit != 0 {
                continue;
            }
            if self.status & before != before {
                return;
            }
            match bit {
                // Not set when refused: the driver reads FEATURES_OK back as cleared.
                status::FEATURES_OK if !self.features_ok(self.acked_features) => return,
                status::DRIVER_OK => {
                    if self.status & status::DEVICE_NEEDS_RESET != 0 {
                        return;
                    }
                    if let Err(e) = self.activate() {
                        self.needs_reset(&e);
                        return;
                    }
                }
                _ => {}
            }
            self.status |= bit;
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(usize::try_from(self.queue_sel).ok()?)
    }

    /// The selected queue while its configuration may change: it exists, is not ready, and the
    /// driver has not set DRIVER_OK.
    fn configurable_queue(&mut self) -> Option<&mut Queue> {
        if self.status & status::DRIVER_OK != 0 {
            return None;
        }
        let queue = self.queues.get_mut(usize::try_from(self.queue_sel).ok()?)?;
        (!queue.ready()).then_some(queue)
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            regs::MAGIC_VALUE => MAGIC_VALUE,
            regs::VERSION => MMIO_VERSION,
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => {
                let features = self.device.device_features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            regs::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            regs::QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            regs::INTERRUPT_STATUS => self.interrupt.status(),
            regs::STATUS => self.status,
            // No shared memory regions: a length of -1 says "no such region".
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH | regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH => {
                u32::MAX
            }
            regs::CONFIG_GENERATION => self.config_generation(),
            // Write-only and unknown registers.
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            regs::DRIVER_FEATURES => {
                // Features are written between DRIVER and FEATURES_OK (virtio 1.2, 3.1.1).
                if self.status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
                    return;
                }
                let value = u64::from(value);
                match self.driver_features_sel {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | value,
                    1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (value << 32),
                    _ => {}
                }
            }
            regs::QUEUE_SEL => self.queue_sel = value,
            regs::QUEUE_NUM => {
                if let (Some(queue), Ok(size)) = (self.configurable_queue(), u16::try_from(value)) {
                    // Refuses sizes that are 0, above QueueNumMax or not a power of two.
                    let _ = queue.try_set_size(size);
                }
            }
            regs::QUEUE_READY => {
                // Before DRIVER_OK the driver may also take a queue back (Linux does on a failed
                // setup and checks that the register reads 0 afterwards).
                if self.status & status::DRIVER_OK != 0 {
                    return;
                }
                let Some(queue) = usize::try_from(self.queue_sel)
                    .ok()
                    .and_then(|i| self.queues.get_mut(i))
                else {
                    return;
                };
                match value {
                    0 => queue.set_ready(false),
                    1 if queue.max_size() != 0 => queue.set_ready(true),
                    _ => {}
                }
            }
            regs::QUEUE_NOTIFY => {
                if let Ok(index) = usize::try_from(value) {
                    self.process_queue(index);
                }
            }
            regs::INTERRUPT_ACK => self.interrupt.acknowledge(value),
            regs::STATUS => self.write_status(value),
            // Misaligned ring addresses are refused by virtio-queue (the old value stays).
            regs::QUEUE_DESC_LOW => {
                self.set_queue_addr(|q| q.set_desc_table_address(Some(value), None))
            }
            regs::QUEUE_DESC_HIGH => {
                self.set_queue_addr(|q| q.set_desc_table_address(None, Some(value)))
            }
            regs::QUEUE_DRIVER_LOW => {
                self.set_queue_addr(|q| q.set_avail_ring_address(Some(value), None))
            }
            regs::QUEUE_DRIVER_HIGH => {
                self.set_queue_addr(|q| q.set_avail_ring_address(None, Some(value)))
            }
            regs::QUEUE_DEVICE_LOW => {
                self.set_queue_addr(|q| q.set_used_ring_address(Some(value), None))
            }
            regs::QUEUE_DEVICE_HIGH => {
                self.set_queue_addr(|q| q.set_used_ring_address(None, Some(value)))
            }
            regs::SHM_SEL => self.shm_sel = value,
            // Read-only and unknown registers.
            _ => {}
        }
    }

    fn set_queue_addr(&mut self, set: impl FnOnce(&mut Queue)) {
        if let Some(queue) = self.configurable_queue() {
            set(queue);
        }
    }

    /// The live state of queue `index`.
    ///
    /// Before activation the transport's copy is it. After activation the device owns the
    /// queue and the trait has no way to ask it for its indices, so they are read back from the
    /// used ring in guest memory (saved along with this state): `next_used` is the used index the
    /// device last published, and `next_avail` restarts there, so that a chain the device had
    /// taken but not yet returned (devices do not save those) is taken again after restore.
    fn queue_snapshot(&self, queue: &Queue) -> QueueSnapshot {
        let mut snapshot = QueueSnapshot::of(queue);
        if self.status & status::DRIVER_OK != 0 {
            snapshot.event_idx_enabled = self.acked_features & features::RING_EVENT_IDX != 0;
            let used_idx = queue.used_ring().checked_add(2).map(GuestAddress);
            if let Some(Ok(idx)) = used_idx.map(|a| self.mem.read_obj::<u16>(a)) {
                snapshot.next_used = u16::from_le(idx);
                snapshot.next_avail = snapshot.next_used;
            }
        }
        snapshot
    }

    /// Captures the transport and the device. Call it with the VM paused.
    pub fn save_state(&self) -> MmioTransportState {
        MmioTransportState {
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            shm_sel: self.shm_sel,
            queues: self.queues.iter().map(|q| self.queue_snapshot(q)).collect(),
            interrupt_status: self.interrupt.status(),
            // What the driver would read now: the restored transport starts from the
            // configuration space as it is then.
            config_generation: if self.config_now() == self.config_seen {
                self.config_generation
            } else {
                self.config_generation.wrapping_add(1)
            },
            device: self.device.save_state(),
        }
    }

    /// Checks a state (an untrusted file) against this device and guest memory, and builds its
    /// queues.
    fn validate(&self, state: &MmioTransportState) -> Result<Vec<Queue>, VirtioError> {
        let mismatch = |what: String| Err(VirtioError::StateMismatch(what));
        if state.status & !ALL_STATUS_BITS != 0 || !status_order_ok(state.status) {
            return mismatch(format!("invalid device status {:#x}", state.status));
        }
        if state.interrupt_status & !(interrupt_bits::USED_BUFFER | interrupt_bits::CONFIG_CHANGE)
            != 0
        {
            return mismatch(format!(
                "invalid interrupt status {:#x}",
                state.interrupt_status
            ));
        }
        // Before FEATURES_OK the driver may have written anything; it was not accepted yet.
        if state.status & status::FEATURES_OK != 0 && !self.features_ok(state.acked_features) {
            return mismatch(format!(
                "acked features {:#x} are not a subset of the offered {:#x} with VERSION_1",
                state.acked_features,
                self.device.device_features()
            ));
        }
        let max_sizes = self.device.queue_max_sizes();
        if state.queues.len() != max_sizes.len() {
            return Err(VirtioError::QueueCount {
                expected: max_sizes.len(),
                got: state.queues.len(),
            });
        }
        let activated = state.status & status::DRIVER_OK != 0;
        let mut queues = Vec::with_capacity(max_sizes.len());
        for (index, (snapshot, &max)) in state.queues.iter().zip(max_sizes).enumerate() {
            if snapshot.max_size != max {
                return mismatch(format!(
                    "queue {index} has max size {}, the device {max}",
                    snapshot.max_size
                ));
            }
            // Checks the size (power of two, at most the max) and ring alignment.
            let queue = snapshot.to_queue()?;
            if activated && !usable(&queue, &self.mem) {
                return Err(VirtioError::InvalidQueue { index });
            }
            queues.push(queue);
        }
        Ok(queues)
    }

    /// Restores [`MmioTransport::save_state`]'s output into a transport built for the same
    /// device over the same guest memory.
    ///
    /// The state is validated first, and a refused state leaves the transport as it was. Then
    /// the device restores its own part and, if the driver had set DRIVER_OK, is activated again
    /// with the restored queues; the rings in guest memory are not touched. Call
    /// [`MmioTransport::set_paused`]`(false)` afterwards to pick up requests the guest queued
    /// meanwhile.
    pub fn restore_state(&mut self, state: &MmioTransportState) -> Result<(), VirtioError> {
        let queues = self.validate(state)?;
        let was_activated = self.device.is_activated();
        if was_activated {
            self.device.reset();
        }
        if let Err(e) = self.device.restore_state(&state.device) {
            if was_activated {
                // The device was stopped above: make the registers say so.
                self.reset();
            }
            return Err(e);
        }
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.acked_features = state.acked_features;
        self.queue_sel = state.queue_sel;
        self.shm_sel = state.shm_sel;
        self.queues = queues;
        self.interrupt.set_status(state.interrupt_status);
        self.config_generation = state.config_generation;
        self.config_seen = self.config_now();
        if state.status & status::DRIVER_OK != 0 {
            if let Err(e) = self.activate() {
                // Do not leave a DRIVER_OK device that is not running.
                self.reset();
                return Err(e);
            }
        }
        // An interrupt pending at the snapshot is raised again: the driver may not have seen
        // it, and a spurious one is harmless (its handler finds the reason in the status).
        if state.interrupt_status != 0 {
            self.interrupt
                .line()
                .event_fd()
                .write(1)
                .map_err(VirtioError::Interrupt)?;
        }
        Ok(())
    }
}

impl<M: GuestMemoryBackend + Clone + Send + 'static> BusDevice for MmioTransport<M> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.read_config(offset - regs::CONFIG, data);
            } else {
                data.fill(0);
            }
            return;
        }
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= regs::CONFIG {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.write_config(offset - regs::CONFIG, data);
            }
            return;
        }
        if let Ok(word) = <[u8; 4]>::try_from(data) {
            if offset.is_multiple_of(4) {
                self.write_reg(offset, u32::from_le_bytes(word));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::virtio::rng::RngState;
    use crate::virtio::test_utils::{test_memory, TestQueue};
    use crate::{EventFd, EventFdTrigger, EFD_NONBLOCK};
    use vmm_memory::GuestMemoryMmap;

    /// The transport on the VMM's memory type (dirty bitmap included).
    type MmioTransport = super::MmioTransport<GuestMemoryMmap>;

    const FEATURES: u64 = features::VERSION_1 | features::RING_EVENT_IDX | 1 << 5;
    const MAX_SIZES: [u16; 2] = [16, 8];
    const MEM_SIZE: usize = 0x4_0000;

    /// What the dummy device saw, and its configuration space; shared with the test.
    #[derive(Debug, Default)]
    struct Calls {
        config: Vec<u8>,
        activations: Vec<(u64, Vec<QueueSnapshot>)>,
        resets: usize,
        notified: Vec<usize>,
        backend: Vec<u32>,
        config_writes: Vec<(u64, Vec<u8>)>,
        restores: usize,
    }

    /// A device with two queues that returns every chain it is given, and fails on request.
    struct Dummy {
        calls: Arc<Mutex<Calls>>,
        active: Option<ActiveQueues<GuestMemoryMmap>>,
        fail_activate: bool,
        fail_queue: bool,
        fail_backend: bool,
    }

    impl Dummy {
        fn new() -> (Self, Arc<Mutex<Calls>>) {
            let calls = Arc::new(Mutex::new(Calls {
                config: (0x10..0x20).collect(),
                ..Calls::default()
            }));
            let dummy = Dummy {
                calls: calls.clone(),
                active: None,
                fail_activate: false,
                fail_queue: false,
                fail_backend: false,
            };
            (dummy, calls)
        }
    }

    impl VirtioDevice<GuestMemoryMmap> for Dummy {
        fn device_type(&self) -> u32 {
            device_type::RNG
        }

        fn queue_max_sizes(&self) -> &[u16] {
            &MAX_SIZES
        }

        fn device_features(&self) -> u64 {
            FEATURES
        }

        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::virtio::read_config_bytes(&self.calls.lock().unwrap().config, offset, data);
        }

        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let mut calls = self.calls.lock().unwrap();
            calls.config_writes.push((offset, data.to_vec()));
            // Byte 15 is the one writable field.
            if let (15, &[b]) = (offset, data) {
                calls.config[15] = b;
            }
        }

        fn activate(&mut self, active: ActiveQueues<GuestMemoryMmap>) -> Result<(), VirtioError> {
            if self.fail_activate {
                return Err(VirtioError::Backend(std::io::Error::other("refused")));
            }
            let queues = active.queues.iter().map(QueueSnapshot::of).collect();
            self.calls
                .lock()
                .unwrap()
                .activations
                .push((active.acked_features, queues));
            self.active = Some(active);
            Ok(())
        }

        fn reset(&mut self) {
            self.active = None;
            self.calls.lock().unwrap().resets += 1;
        }

        fn is_activated(&self) -> bool {
            self.active.is_some()
        }

        fn process_queue(&mut self, index: usize) -> Result<(), VirtioError> {
            self.calls.lock().unwrap().notified.push(index);
            if self.fail_queue {
                return Err(VirtioError::InvalidQueue { index });
            }
            let Some(active) = self.active.as_mut() else {
                return Ok(());
            };
            let queue = &mut active.queues[index];
            while let Some(chain) = queue.pop_descriptor_chain(&active.mem) {
                queue.add_used(&active.mem, chain.head_index(), 0)?;
            }
            crate::virtio::notify_used(queue, &active.mem, &active.interrupt)
        }

        fn process_backend(&mut self, token: u32, _events: EventSet) -> Result<(), VirtioError> {
            self.calls.lock().unwrap().backend.push(token);
            if self.fail_backend {
                return Err(VirtioError::Backend(std::io::Error::other("gone")));
            }
            Ok(())
        }

        fn save_state(&self) -> VirtioDeviceState {
            VirtioDeviceState::new("virtio-rng", &RngState {}).unwrap()
        }

        fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), VirtioError> {
            match state.kind() {
                "virtio-rng" => {
                    self.calls.lock().unwrap().restores += 1;
                    Ok(())
                }
                other => Err(VirtioError::StateMismatch(format!("not rng: {other}"))),
            }
        }
    }

    fn interrupt() -> VirtioInterrupt {
        VirtioInterrupt::new(EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap()))
    }

    fn transport_with(dummy: Dummy, mem: &GuestMemoryMmap) -> MmioTransport {
        MmioTransport::new(mem.clone(), Box::new(dummy), interrupt())
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Calls>>, GuestMemoryMmap) {
        let mem = test_memory(MEM_SIZE);
        let (dummy, calls) = Dummy::new();
        (transport_with(dummy, &mem), calls, mem)
    }

    fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0xa5u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// Adds `bit` to the status the way Linux does (read, or, write).
    fn add_status(t: &mut MmioTransport, bit: u32) {
        let s = rd(t, regs::STATUS);
        wr(t, regs::STATUS, s | bit);
    }

    fn test_queues() -> Vec<TestQueue> {
        MAX_SIZES
            .iter()
            .enumerate()
            .map(|(i, &max)| TestQueue::new(0x1_0000 * i as u64, max))
            .collect()
    }

    fn write_features(t: &mut MmioTransport, features: u64) {
        wr(t, regs::DRIVER_FEATURES_SEL, 1);
        wr(t, regs::DRIVER_FEATURES, (features >> 32) as u32);
        wr(t, regs::DRIVER_FEATURES_SEL, 0);
        wr(t, regs::DRIVER_FEATURES, features as u32);
    }

    fn setup_queue(t: &mut MmioTransport, index: u32, q: &TestQueue) {
        wr(t, regs::QUEUE_SEL, index);
        assert_eq!(rd(t, regs::QUEUE_READY), 0);
        assert_ne!(rd(t, regs::QUEUE_NUM_MAX), 0);
        wr(t, regs::QUEUE_NUM, q.size.into());
        for (low, addr) in [
            (regs::QUEUE_DESC_LOW, q.desc),
            (regs::QUEUE_DRIVER_LOW, q.avail),
            (regs::QUEUE_DEVICE_LOW, q.used),
        ] {
            wr(t, low, addr as u32);
            wr(t, low + 4, (addr >> 32) as u32);
        }
        wr(t, regs::QUEUE_READY, 1);
    }

    /// Linux's virtio_mmio probe and virtio core, up to FEATURES_OK.
    fn negotiate(t: &mut MmioTransport, features: u64) -> bool {
        assert_eq!(rd(t, regs::MAGIC_VALUE), MAGIC_VALUE);
        assert_eq!(rd(t, regs::VERSION), 2);
        assert_eq!(rd(t, regs::DEVICE_ID), device_type::RNG);
        assert_eq!(rd(t, regs::VENDOR_ID), VENDOR_ID);
        wr(t, regs::STATUS, 0);
        add_status(t, status::ACKNOWLEDGE);
        add_status(t, status::DRIVER);
        wr(t, regs::DEVICE_FEATURES_SEL, 1);
        let high = rd(t, regs::DEVICE_FEATURES);
        wr(t, regs::DEVICE_FEATURES_SEL, 0);
        let offered = u64::from(high) << 32 | u64::from(rd(t, regs::DEVICE_FEATURES));
        assert_eq!(offered, FEATURES);
        write_features(t, features);
        add_status(t, status::FEATURES_OK);
        rd(t, regs::STATUS) & status::FEATURES_OK != 0
    }

    /// The whole driver init sequence; returns the rings.
    fn activate(t: &mut MmioTransport) -> Vec<TestQueue> {
        assert!(negotiate(t, FEATURES));
        let queues = test_queues();
        for (i, q) in queues.iter().enumerate() {
            setup_queue(t, i as u32, q);
        }
        add_status(t, status::DRIVER_OK);
        queues
    }

    const ALL_OK: u32 =
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn linux_init_sequence_activates_the_device() {
        let (mut t, calls, _mem) = transport();
        assert_eq!(t.queue_count(), 2);
        let queues = activate(&mut t);
        assert_eq!(t.status(), ALL_OK);
        assert!(t.device().is_activated());
        assert_eq!(t.acked_features(), FEATURES);
        let calls = calls.lock().unwrap();
        assert_eq!(calls.activations.len(), 1);
        let (acked, got) = &calls.activations[0];
        assert_eq!(*acked, FEATURES);
        assert_eq!(got.len(), 2);
        for (snapshot, q) in got.iter().zip(&queues) {
            assert!(snapshot.ready);
            assert_eq!(snapshot.size, q.size);
            assert_eq!(
                (snapshot.desc_table, snapshot.avail_ring, snapshot.used_ring),
                (q.desc, q.avail, q.used)
            );
        }
    }

    #[test]
    fn smaller_queue_sizes_and_high_addresses_are_accepted() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1_0000_0000), 0x2_0000)]).unwrap();
        let (dummy, calls) = Dummy::new();
        let mut t = transport_with(dummy, &mem);
        assert!(negotiate(&mut t, features::VERSION_1));
        setup_queue(&mut t, 0, &TestQueue::new(0x1_0000_0000, 4));
        setup_queue(&mut t, 1, &TestQueue::new(0x1_0000_8000, 8));
        add_status(&mut t, status::DRIVER_OK);
        assert_eq!(t.status(), ALL_OK);
        let calls = calls.lock().unwrap();
        let (_, got) = &calls.activations[0];
        assert_eq!((got[0].size, got[0].desc_table), (4, 0x1_0000_0000));
        assert_eq!(got[1].used_ring, 0x1_0000_d000);
    }

    #[test]
    fn feature_negotiation_refuses_unoffered_bits_and_a_missing_version_1() {
        for bad in [FEATURES | 1, FEATURES | 1 << 40, 1 << 5, 0] {
            let (mut t, calls, _mem) = transport();
            assert!(!negotiate(&mut t, bad), "{bad:#x}");
            assert_eq!(t.status(), status::ACKNOWLEDGE | status::DRIVER);
            // DRIVER_OK cannot follow.
            add_status(&mut t, status::FEATURES_OK | status::DRIVER_OK);
            assert_eq!(t.status(), status::ACKNOWLEDGE | status::DRIVER);
            // The driver may fix its choice and try again.
            write_features(&mut t, features::VERSION_1);
            add_status(&mut t, status::FEATURES_OK);
            assert_ne!(t.status() & status::FEATURES_OK, 0);
            assert!(calls.lock().unwrap().activations.is_empty());
        }
    }

    #[test]
    fn driver_features_are_only_written_between_driver_and_features_ok() {
        let (mut t, _calls, _mem) = transport();
        write_features(&mut t, FEATURES);
        assert_eq!(t.acked_features(), 0, "before ACKNOWLEDGE");
        add_status(&mut t, status::ACKNOWLEDGE);
        write_features(&mut t, FEATURES);
        assert_eq!(t.acked_features(), 0, "before DRIVER");
        add_status(&mut t, status::DRIVER);
        write_features(&mut t, features::VERSION_1);
        // Pages past 1 do not exist.
        wr(&mut t, regs::DRIVER_FEATURES_SEL, 2);
        wr(&mut t, regs::DRIVER_FEATURES, u32::MAX);
        assert_eq!(t.acked_features(), features::VERSION_1);
        add_status(&mut t, status::FEATURES_OK);
        write_features(&mut t, FEATURES);
        assert_eq!(t.acked_features(), features::VERSION_1, "after FEATURES_OK");
        // DeviceFeatures pages past 1 read 0.
        wr(&mut t, regs::DEVICE_FEATURES_SEL, 7);
        assert_eq!(rd(&mut t, regs::DEVICE_FEATURES), 0);
    }

    #[test]
    fn status_bits_only_in_order_and_never_cleared_but_by_reset() {
        let (mut t, _calls, _mem) = transport();
        wr(&mut t, regs::STATUS, status::DRIVER);
        assert_eq!(t.status(), 0, "DRIVER before ACKNOWLEDGE");
        wr(
            &mut t,
            regs::STATUS,
            status::ACKNOWLEDGE | status::FEATURES_OK,
        );
        assert_eq!(t.status(), status::ACKNOWLEDGE, "FEATURES_OK skips DRIVER");
        wr(
            &mut t,
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER_OK,
        );
        assert_eq!(t.status(), status::ACKNOWLEDGE);
        wr(
            &mut t,
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | 0x30,
        );
        assert_eq!(
            t.status(),
            status::ACKNOWLEDGE | status::DRIVER,
            "unknown bits"
        );
        wr(&mut t, regs::STATUS, status::DRIVER);
        assert_eq!(
            t.status(),
            status::ACKNOWLEDGE | status::DRIVER,
            "clearing ACKNOWLEDGE"
        );
        wr(
            &mut t,
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DEVICE_NEEDS_RESET,
        );
        assert_eq!(t.status() & status::DEVICE_NEEDS_RESET, 0, "device's bit");
        add_status(&mut t, status::FAILED);
        assert_eq!(
            t.status(),
            status::ACKNOWLEDGE | status::DRIVER | status::FAILED
        );
        let (mut t, _calls, _mem) = transport();
        wr(&mut t, regs::STATUS, status::FAILED);
        assert_eq!(t.status(), status::FAILED, "FAILED any time");
    }

    #[test]
    fn bad_queue_sizes_are_ignored() {
        let (mut t, _calls, _mem) = transport();
        assert!(negotiate(&mut t, FEATURES));
        wr(&mut t, regs::QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, regs::QUEUE_NUM_MAX), 8);
        for bad in [0, 3, 6, 16, 0x1_0004, u32::MAX] {
            wr(&mut t, regs::QUEUE_NUM, bad);
            assert_eq!(t.save_state().queues[1].size, 8, "{bad:#x}");
        }
        wr(&mut t, regs::QUEUE_NUM, 2);
        assert_eq!(t.save_state().queues[1].size, 2);
    }

    #[test]
    fn queue_writes_after_ready_or_driver_ok_are_ignored() {
        let (mut t, calls, _mem) = transport();
        assert!(negotiate(&mut t, FEATURES));
        let queues = test_queues();
        setup_queue(&mut t, 0, &queues[0]);
        wr(&mut t, regs::QUEUE_SEL, 0);
        assert_eq!(rd(&mut t, regs::QUEUE_READY), 1);
        wr(&mut t, regs::QUEUE_NUM, 4);
        wr(&mut t, regs::QUEUE_DESC_LOW, 0x8000);
        wr(&mut t, regs::QUEUE_DEVICE_HIGH, 1);
        let q = t.save_state().queues[0];
        assert_eq!(
            (q.size, q.desc_table, q.used_ring),
            (16, queues[0].desc, queues[0].used)
        );

        // Before DRIVER_OK the driver may take the queue back, and set it up again.
        wr(&mut t, regs::QUEUE_READY, 0);
        assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);
        wr(&mut t, regs::QUEUE_NUM, 4);
        assert_eq!(t.save_state().queues[0].size, 4);
        setup_queue(&mut t, 0, &queues[0]);
        setup_queue(&mut t, 1, &queues[1]);
        add_status(&mut t, status::DRIVER_OK);
        assert_eq!(t.status(), ALL_OK);

        wr(&mut t, regs::QUEUE_SEL, 1);
        wr(&mut t, regs::QUEUE_READY, 0);
        assert_eq!(
            rd(&mut t, regs::QUEUE_READY),
            1,
            "no queue reset after DRIVER_OK"
        );
        assert_eq!(calls.lock().unwrap().activations[0].1[0].size, 16);
    }

    #[test]
    fn queue_sel_past_the_queues_reads_zero_and_ignores_writes() {
        let (mut t, _calls, _mem) = transport();
        assert!(negotiate(&mut t, FEATURES));
        let before = t.save_state();
        for sel in [2, 0x1_0000, u32::MAX] {
            wr(&mut t, regs::QUEUE_SEL, sel);
            assert_eq!(rd(&mut t, regs::QUEUE_NUM_MAX), 0);
            wr(&mut t, regs::QUEUE_NUM, 4);
            wr(&mut t, regs::QUEUE_DESC_LOW, 0x1000);
            wr(&mut t, regs::QUEUE_READY, 1);
            assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);
        }
        assert_eq!(t.save_state().queues, before.queues);
    }

    #[test]
    fn invalid_rings_put_the_device_in_needs_reset_without_activation() {
        // Rings outside guest memory, and a queue left not ready.
        let outside = TestQueue::new(MEM_SIZE as u64 - 0x100, 16);
        let cases: [&dyn Fn(&mut MmioTransport); 2] = [
            &|t| {
                setup_queue(t, 0, &outside);
                setup_queue(t, 1, &test_queues()[1]);
            },
            &|t| setup_queue(t, 0, &test_queues()[0]),
        ];
        for setup in cases {
            let (mut t, calls, _mem) = transport();
            assert!(negotiate(&mut t, FEATURES));
            setup(&mut t);
            add_status(&mut t, status::DRIVER_OK);
            let s = t.status();
            assert_eq!(s & status::DRIVER_OK, 0);
            assert_ne!(s & status::DEVICE_NEEDS_RESET, 0);
            assert_eq!(
                rd(&mut t, regs::INTERRUPT_STATUS),
                interrupt_bits::CONFIG_CHANGE
            );
            assert_eq!(t.interrupt().line().event_fd().read().unwrap(), 1);
            assert!(!t.device().is_activated());
            // Another DRIVER_OK does not retry until a reset.
            add_status(&mut t, status::DRIVER_OK);
            assert_eq!(t.status(), s);
            wr(&mut t, regs::QUEUE_NOTIFY, 0);
            assert!(calls.lock().unwrap().activations.is_empty());
            assert!(calls.lock().unwrap().notified.is_empty());
            // A reset clears it and a good setup activates.
            activate(&mut t);
            assert_eq!(t.status(), ALL_OK);
        }
    }

    #[test]
    fn a_failing_activation_means_needs_reset() {
        let mem = test_memory(MEM_SIZE);
        let (mut dummy, calls) = Dummy::new();
        dummy.fail_activate = true;
        let mut t = transport_with(dummy, &mem);
        activate(&mut t);
        assert_eq!(t.status() & status::DRIVER_OK, 0);
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
        assert!(calls.lock().unwrap().activations.is_empty());
    }

    #[test]
    fn queue_notify_reaches_the_activated_device() {
        let (mut t, calls, mem) = transport();
        wr(&mut t, regs::QUEUE_NOTIFY, 0);
        assert!(calls.lock().unwrap().notified.is_empty(), "not activated");
        let mut queues = activate(&mut t);
        queues[1].add_chain(&mem, &[(0x3_0000, 64, true)]);
        wr(&mut t, NOTIFY_REG_OFFSET, 1);
        assert_eq!(calls.lock().unwrap().notified, [1]);
        assert_eq!(queues[1].used_idx(&mem), 1);
        assert_eq!(
            rd(&mut t, regs::INTERRUPT_STATUS),
            interrupt_bits::USED_BUFFER
        );
        wr(&mut t, regs::INTERRUPT_ACK, interrupt_bits::USED_BUFFER);
        assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);
        // Indices past the queues never reach the device.
        wr(&mut t, NOTIFY_REG_OFFSET, 2);
        wr(&mut t, NOTIFY_REG_OFFSET, u32::MAX);
        t.process_queue(usize::MAX);
        t.process_queue(0);
        assert_eq!(calls.lock().unwrap().notified, [1, 0]);
    }

    #[test]
    fn a_device_error_means_needs_reset_and_no_more_processing() {
        let mem = test_memory(MEM_SIZE);
        let (mut dummy, calls) = Dummy::new();
        dummy.fail_queue = true;
        let mut t = transport_with(dummy, &mem);
        activate(&mut t);
        t.process_queue(0);
        assert_eq!(t.status(), ALL_OK | status::DEVICE_NEEDS_RESET);
        assert_eq!(
            rd(&mut t, regs::INTERRUPT_STATUS),
            interrupt_bits::CONFIG_CHANGE
        );
        t.process_queue(0);
        t.process_backend(1, EventSet::IN);
        wr(&mut t, regs::QUEUE_NOTIFY, 1);
        assert_eq!(calls.lock().unwrap().notified, [0]);
        assert!(calls.lock().unwrap().backend.is_empty());
        // The driver's next status write keeps the device's bit.
        add_status(&mut t, status::FAILED);
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
        wr(&mut t, regs::STATUS, 0);
        assert_eq!(t.status(), 0);
    }

    #[test]
    fn backend_events_are_forwarded_before_activation_but_not_while_paused() {
        let mem = test_memory(MEM_SIZE);
        let (mut dummy, calls) = Dummy::new();
        dummy.fail_backend = true;
        let mut t = transport_with(dummy, &mem);
        t.set_paused(true);
        t.process_backend(3, EventSet::IN);
        assert!(calls.lock().unwrap().backend.is_empty());
        t.set_paused(false);
        t.process_backend(4, EventSet::IN);
        assert_eq!(calls.lock().unwrap().backend, [4]);
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
        assert!(t.backend_fds().is_empty());
    }

    #[test]
    fn pause_holds_notifies_and_unpause_processes_every_queue() {
        let (mut t, calls, mem) = transport();
        let mut queues = activate(&mut t);
        t.set_paused(true);
        assert!(t.is_paused());
        queues[0].add_chain(&mem, &[(0x3_0000, 16, false)]);
        wr(&mut t, NOTIFY_REG_OFFSET, 0);
        t.process_queue(1);
        assert!(calls.lock().unwrap().notified.is_empty());
        assert_eq!(queues[0].used_idx(&mem), 0);
        // Registers still work while paused.
        assert_eq!(rd(&mut t, regs::MAGIC_VALUE), MAGIC_VALUE);
        t.set_paused(true);
        assert!(calls.lock().unwrap().notified.is_empty());
        t.set_paused(false);
        assert_eq!(calls.lock().unwrap().notified, [0, 1]);
        assert_eq!(queues[0].used_idx(&mem), 1);
        // Unpausing an unpaused or not activated device processes nothing.
        t.set_paused(false);
        wr(&mut t, regs::STATUS, 0);
        t.set_paused(true);
        t.set_paused(false);
        assert_eq!(calls.lock().unwrap().notified, [0, 1]);
    }

    #[test]
    fn reset_returns_to_power_on_state() {
        let (mut t, calls, _mem) = transport();
        activate(&mut t);
        t.interrupt().signal_used_queue().unwrap();
        wr(&mut t, regs::QUEUE_SEL, 1);
        wr(&mut t, regs::DEVICE_FEATURES_SEL, 1);
        let generation = rd(&mut t, regs::CONFIG_GENERATION);
        let resets = calls.lock().unwrap().resets;
        wr(&mut t, regs::STATUS, 0);
        assert_eq!(calls.lock().unwrap().resets, resets + 1);
        assert!(!t.device().is_activated());
        assert_eq!(t.status(), 0);
        assert_eq!(t.acked_features(), 0);
        assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);
        assert_ne!(rd(&mut t, regs::CONFIG_GENERATION), generation);
        let state = t.save_state();
        assert_eq!((state.queue_sel, state.device_features_sel), (0, 0));
        for (q, max) in state.queues.iter().zip(MAX_SIZES) {
            assert!(!q.ready);
            assert_eq!((q.size, q.desc_table, q.next_avail), (max, 0, 0));
        }
        // And the driver can start over.
        activate(&mut t);
        assert_eq!(t.status(), ALL_OK);
        assert_eq!(calls.lock().unwrap().activations.len(), 2);
    }

    #[test]
    fn registers_take_only_aligned_32_bit_accesses() {
        let (mut t, _calls, _mem) = transport();
        for (offset, len) in [(0, 2), (0, 1), (0, 8), (2, 4), (1, 4), (0, 3), (0, 0)] {
            let mut data = vec![0xa5; len];
            t.read(offset, &mut data);
            assert!(data.iter().all(|&b| b == 0), "{offset:#x} {len}");
        }
        t.write(regs::STATUS, &[status::ACKNOWLEDGE as u8]);
        t.write(regs::STATUS, &u64::from(status::ACKNOWLEDGE).to_le_bytes());
        t.write(regs::STATUS + 2, &status::ACKNOWLEDGE.to_le_bytes());
        t.write(regs::STATUS, &[]);
        assert_eq!(t.status(), 0);
        wr(&mut t, regs::STATUS, status::ACKNOWLEDGE);
        assert_eq!(t.status(), status::ACKNOWLEDGE);
        // Unknown and write-only registers read 0; writes to read-only ones do nothing.
        for offset in [0x018, 0x020, 0x038, 0x040, 0x0c0, 0x0f8] {
            assert_eq!(rd(&mut t, offset), 0, "{offset:#x}");
        }
        wr(&mut t, regs::MAGIC_VALUE, 0);
        wr(&mut t, 0x0f8, 1);
        assert_eq!(rd(&mut t, regs::MAGIC_VALUE), MAGIC_VALUE);
    }

    #[test]
    fn config_space_reads_and_writes_reach_the_device_at_any_width() {
        let (mut t, calls, _mem) = transport();
        let mut b = [0u8; 1];
        t.read(regs::CONFIG + 3, &mut b);
        assert_eq!(b, [0x13]);
        let mut w = [0u8; 2];
        t.read(regs::CONFIG + 1, &mut w);
        assert_eq!(w, [0x11, 0x12]);
        assert_eq!(rd(&mut t, regs::CONFIG + 4), 0x1716_1514);
        let mut q = [0u8; 8];
        t.read(regs::CONFIG + 12, &mut q);
        assert_eq!(
            q,
            [0x1c, 0x1d, 0x1e, 0x1f, 0, 0, 0, 0],
            "past the end reads 0"
        );
        t.read(u64::MAX - 7, &mut q);
        assert_eq!(q, [0; 8]);
        let mut odd = [0xa5u8; 3];
        t.read(regs::CONFIG, &mut odd);
        assert_eq!(odd, [0; 3]);

        t.write(regs::CONFIG + 2, &[1]);
        t.write(regs::CONFIG + 4, &[1, 2]);
        wr(&mut t, regs::CONFIG + 8, 0x0403_0201);
        t.write(regs::CONFIG, &[9; 8]);
        t.write(regs::CONFIG, &[9; 3]);
        t.write(regs::CONFIG, &[]);
        assert_eq!(
            calls.lock().unwrap().config_writes,
            [
                (2, vec![1]),
                (4, vec![1, 2]),
                (8, vec![1, 2, 3, 4]),
                (0, vec![9; 8])
            ]
        );
    }

    #[test]
    fn no_shared_memory_regions() {
        let (mut t, _calls, _mem) = transport();
        for sel in [0, 1, u32::MAX] {
            wr(&mut t, regs::SHM_SEL, sel);
            for reg in [
                regs::SHM_LEN_LOW,
                regs::SHM_LEN_HIGH,
                regs::SHM_BASE_LOW,
                regs::SHM_BASE_HIGH,
            ] {
                assert_eq!(rd(&mut t, reg), u32::MAX);
            }
        }
    }

    #[test]
    fn config_generation_changes_with_the_configuration_space() {
        let (mut t, calls, mem) = transport();
        let g = rd(&mut t, regs::CONFIG_GENERATION);
        assert_eq!(
            rd(&mut t, regs::CONFIG_GENERATION),
            g,
            "stable while nothing changes"
        );
        // A host-side change (a device's own, or through a host API).
        calls.lock().unwrap().config[3] ^= 0xff;
        assert_eq!(rd(&mut t, regs::CONFIG_GENERATION), g.wrapping_add(1));
        assert_eq!(rd(&mut t, regs::CONFIG_GENERATION), g.wrapping_add(1));
        // A driver write to a writable field; read-only ones change nothing.
        t.write(regs::CONFIG + 15, &[0xaa]);
        t.write(regs::CONFIG + 2, &[0xaa]);
        assert_eq!(rd(&mut t, regs::CONFIG_GENERATION), g.wrapping_add(2));
        // A reset.
        wr(&mut t, regs::STATUS, 0);
        assert_eq!(rd(&mut t, regs::CONFIG_GENERATION), g.wrapping_add(3));
        // A change not yet seen by the driver is in the snapshot.
        calls.lock().unwrap().config[0] ^= 1;
        let state = t.save_state();
        assert_eq!(state.config_generation, g.wrapping_add(4));
        let (dummy, restored_calls) = Dummy::new();
        restored_calls.lock().unwrap().config = calls.lock().unwrap().config.clone();
        let mut restored = transport_with(dummy, &mem);
        restored.restore_state(&state).unwrap();
        assert_eq!(
            rd(&mut restored, regs::CONFIG_GENERATION),
            g.wrapping_add(4)
        );
    }

    #[test]
    fn save_and_restore_into_a_fresh_transport_activates_again() {
        let (mut t, _calls, mem) = transport();
        let mut queues = activate(&mut t);
        for _ in 0..3 {
            queues[0].add_chain(&mem, &[(0x3_0000, 16, true)]);
        }
        t.process_queue(0);
        assert_eq!(queues[0].used_idx(&mem), 3);
        wr(&mut t, regs::QUEUE_SEL, 1);
        let state = t.save_state();
        assert_eq!(state.status, ALL_OK);
        assert_eq!(
            (state.queues[0].next_avail, state.queues[0].next_used),
            (3, 3)
        );
        assert!(state.queues[0].event_idx_enabled);
        assert_eq!(state.interrupt_status, interrupt_bits::USED_BUFFER);

        // Through the serialized form, as a snapshot file would carry it.
        let json = serde_json::to_string(&state).unwrap();
        let state: MmioTransportState = serde_json::from_str(&json).unwrap();

        let (dummy, calls) = Dummy::new();
        let mut restored = transport_with(dummy, &mem);
        restored.restore_state(&state).unwrap();
        assert_eq!(restored.status(), ALL_OK);
        assert!(restored.device().is_activated());
        assert_eq!(
            rd(&mut restored, regs::QUEUE_NUM_MAX),
            8,
            "QueueSel restored"
        );
        assert_eq!(
            rd(&mut restored, regs::INTERRUPT_STATUS),
            interrupt_bits::USED_BUFFER
        );
        // The pending interrupt is raised again on the new line.
        assert_eq!(restored.interrupt().line().event_fd().read().unwrap(), 1);
        {
            let calls = calls.lock().unwrap();
            assert_eq!(calls.restores, 1);
            let (acked, got) = &calls.activations[0];
            assert_eq!(*acked, FEATURES);
            assert_eq!(got[..], state.queues[..]);
        }
        assert_eq!(restored.save_state(), state);

        // The restored device goes on where the old one stopped.
        queues[0].add_chain(&mem, &[(0x3_0000, 16, true)]);
        restored.set_paused(true);
        restored.set_paused(false);
        assert_eq!(queues[0].used_idx(&mem), 4);
        assert_eq!(queues[0].used_elem(&mem, 3).0, 3);
    }

    #[test]
    fn restore_of_a_device_not_yet_activated_keeps_the_setup() {
        let (mut t, _calls, mem) = transport();
        assert!(negotiate(&mut t, FEATURES));
        setup_queue(&mut t, 0, &test_queues()[0]);
        wr(&mut t, regs::QUEUE_SEL, 1);
        wr(&mut t, regs::QUEUE_NUM, 4);
        let state = t.save_state();

        let (dummy, calls) = Dummy::new();
        let mut restored = transport_with(dummy, &mem);
        restored.restore_state(&state).unwrap();
        assert!(!restored.device().is_activated());
        assert!(calls.lock().unwrap().activations.is_empty());
        assert_eq!(restored.save_state(), state);
        // The driver finishes the setup.
        setup_queue(&mut restored, 1, &test_queues()[1]);
        add_status(&mut restored, status::DRIVER_OK);
        assert_eq!(restored.status(), ALL_OK);
    }

    #[test]
    fn restore_into_an_activated_transport_restarts_the_device() {
        let (mut t, calls, _mem) = transport();
        activate(&mut t);
        let state = t.save_state();
        t.restore_state(&state).unwrap();
        let calls = calls.lock().unwrap();
        assert_eq!(calls.activations.len(), 2);
        assert!(calls.resets >= 2, "once by negotiate, once by restore");
    }

    #[test]
    fn corrupted_states_are_refused_and_change_nothing() {
        let (mut t, _calls, _mem) = transport();
        activate(&mut t);
        let good = t.save_state();
        type Corruption = (&'static str, fn(&mut MmioTransportState));
        let corruptions: [Corruption; 15] = [
            ("one queue too few", |s| s.queues.truncate(1)),
            ("one queue too many", |s| s.queues.push(s.queues[0])),
            ("size not a power of two", |s| s.queues[0].size = 12),
            ("size above max", |s| s.queues[1].size = 16),
            ("size zero", |s| s.queues[1].size = 0),
            ("max size changed", |s| s.queues[1].max_size = 16),
            ("misaligned ring", |s| s.queues[0].used_ring += 2),
            ("ring outside memory", |s| {
                s.queues[0].desc_table = MEM_SIZE as u64 - 0x10
            }),
            ("queue not ready", |s| s.queues[1].ready = false),
            ("unoffered feature", |s| s.acked_features |= 1 << 7),
            ("no VERSION_1", |s| s.acked_features = 0),
            ("unknown status bit", |s| s.status |= 0x10),
            ("DRIVER_OK without FEATURES_OK", |s| {
                s.status &= !status::FEATURES_OK
            }),
            ("unknown interrupt bit", |s| s.interrupt_status |= 4),
            ("other device", |s| {
                s.device = VirtioDeviceState::new(
                    "virtio-blk",
                    &crate::virtio::block::BlockState::default(),
                )
                .unwrap()
            }),
        ];
        for (what, corrupt) in corruptions {
            let mut state = good.clone();
            corrupt(&mut state);
            let (dummy, calls) = Dummy::new();
            let mem = test_memory(MEM_SIZE);
            let mut fresh = transport_with(dummy, &mem);
            let before = fresh.save_state();
            assert!(fresh.restore_state(&state).is_err(), "{what}");
            assert_eq!(fresh.save_state(), before, "{what}");
            assert!(calls.lock().unwrap().activations.is_empty(), "{what}");
        }
    }

    #[test]
    fn unacked_feature_bits_before_features_ok_do_not_block_a_snapshot() {
        let (mut t, _calls, mem) = transport();
        add_status(&mut t, status::ACKNOWLEDGE);
        add_status(&mut t, status::DRIVER);
        write_features(&mut t, u64::MAX);
        let state = t.save_state();
        let (dummy, _calls) = Dummy::new();
        let mut restored = transport_with(dummy, &mem);
        restored.restore_state(&state).unwrap();
        add_status(&mut restored, status::FEATURES_OK);
        assert_eq!(restored.status() & status::FEATURES_OK, 0);
    }

    #[test]
    fn a_device_with_an_impossible_queue_size_cannot_be_activated() {
        struct Broken(Dummy);
        impl VirtioDevice<GuestMemoryMmap> for Broken {
            fn device_type(&self) -> u32 {
                self.0.device_type()
            }
            fn queue_max_sizes(&self) -> &[u16] {
                &[16, 0]
            }
            fn device_features(&self) -> u64 {
                FEATURES
            }
            fn read_config(&self, offset: u64, data: &mut [u8]) {
                self.0.read_config(offset, data)
            }
            fn activate(
                &mut self,
                active: ActiveQueues<GuestMemoryMmap>,
            ) -> Result<(), VirtioError> {
                self.0.activate(active)
            }
            fn reset(&mut self) {
                self.0.reset()
            }
            fn is_activated(&self) -> bool {
                self.0.is_activated()
            }
            fn process_queue(&mut self, index: usize) -> Result<(), VirtioError> {
                self.0.process_queue(index)
            }
            fn save_state(&self) -> VirtioDeviceState {
                self.0.save_state()
            }
            fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), VirtioError> {
                self.0.restore_state(state)
            }
        }
        let mem = test_memory(MEM_SIZE);
        let (dummy, calls) = Dummy::new();
        let mut t = MmioTransport::new(mem, Box::new(Broken(dummy)), interrupt());
        assert!(negotiate(&mut t, FEATURES));
        setup_queue(&mut t, 0, &test_queues()[0]);
        wr(&mut t, regs::QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, regs::QUEUE_NUM_MAX), 0);
        wr(&mut t, regs::QUEUE_READY, 1);
        assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);
        add_status(&mut t, status::DRIVER_OK);
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
        assert!(calls.lock().unwrap().activations.is_empty());
    }

    #[test]
    fn device_type_names_for_log_lines() {
        assert_eq!(type_name(device_type::NET), "net");
        assert_eq!(type_name(device_type::VSOCK), "vsock");
        assert_eq!(type_name(42), "type42");
    }
}
