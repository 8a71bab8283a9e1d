//! Fuzzes the virtio-mmio transport: register reads and writes from a hostile driver, rings
//! in guest memory, queue notifies, pause, and snapshots (faithful and corrupted), against a
//! dummy device defined here. Nothing may panic, and:
//! - DRIVER_OK is set exactly while the device is activated;
//! - once FEATURES_OK is set, the driver's features are offered ones and include VERSION_1;
//! - the device only ever gets valid queues and features it offered, and is never asked to
//!   work while paused, before activation (queues) or while it needs a reset;
//! - a snapshot restores into a fresh transport and saves back identical.
//!
//! Input: a list of operations, each `op` then its arguments:
//! - `op % 11`:
//!   0 read: `off size`, at register `off * 4` (config byte `0x100 + off` when `op & 0x80`),
//!   `size % 10` bytes wide;
//!   1 write: the same, then `size` value bytes;
//!   2 32-bit write of a known register: `reg value[4]`;
//!   3 `process_queue(byte % 4)`; 4 `set_paused(byte & 1)`; 5 save and restore (must work);
//!   6 corrupted restore: `field value[8]`; 7 Linux-like init: `features size_shift`;
//!   8 add a well-formed chain: `queue count (addr[2] len writable)...`;
//!   9 raw guest memory write: `addr[3] len bytes`; 10 reset (Status 0).
//!
//! Backend events are left to the unit tests: naming `EventSet` needs vmm-sys-util, which the
//! fuzz crate does not link.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;

mod common;
use common::Cursor;
use vmm_devices::virtio::mmio::{regs, MmioTransport, MmioTransportState, MAGIC_VALUE};
use vmm_devices::virtio::rng::RngState;
use vmm_devices::virtio::test_utils::{test_memory, TestQueue};
use vmm_devices::virtio::{
    device_type, features, status, ActiveQueues, QueueSnapshot, VirtioDevice, VirtioDeviceState,
    VirtioError, VirtioInterrupt,
};
use vmm_devices::{BusDevice, EventFd, EventFdTrigger, EFD_NONBLOCK};
use vmm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The transport on the VMM's memory type.
type Transport = MmioTransport<GuestMemoryMmap>;

/// Two queues; rings live at `queue * 0x8000`, buffers above 0x10000.
const MAX_SIZES: [u16; 2] = [16, 8];
const MEM_SIZE: usize = 0x1_8000;
/// Acking this offered bit makes the device refuse activation.
const FAIL_ACTIVATE: u64 = 1 << 3;
const OFFERED: u64 = features::VERSION_1
    | features::RING_EVENT_IDX
    | features::RING_INDIRECT_DESC
    | 1
    | FAIL_ACTIVATE;
/// A chain whose head descriptor points here makes `process_queue` fail.
const POISON_ADDR: u64 = 0xdead_0000;

const KNOWN_REGS: [u64; 22] = [
    regs::DEVICE_FEATURES_SEL,
    regs::DRIVER_FEATURES,
    regs::DRIVER_FEATURES_SEL,
    regs::QUEUE_SEL,
    regs::QUEUE_NUM,
    regs::QUEUE_READY,
    regs::QUEUE_NOTIFY,
    regs::INTERRUPT_ACK,
    regs::STATUS,
    regs::STATUS,
    regs::QUEUE_DESC_LOW,
    regs::QUEUE_DESC_HIGH,
    regs::QUEUE_DRIVER_LOW,
    regs::QUEUE_DRIVER_HIGH,
    regs::QUEUE_DEVICE_LOW,
    regs::QUEUE_DEVICE_HIGH,
    regs::SHM_SEL,
    regs::MAGIC_VALUE,
    regs::CONFIG,
    regs::CONFIG + 4,
    regs::CONFIG_GENERATION,
    0x0c0,
];

/// What the device was asked to do; shared with the harness across snapshots.
#[derive(Default)]
struct Calls {
    /// process_queue calls.
    work: u64,
}

/// A device that returns every chain it is given. It works on the rings by hand (the fuzz
/// crate does not link virtio-queue), from the indices the transport handed it.
struct Dummy {
    calls: Arc<Mutex<Calls>>,
    active: Option<(GuestMemoryMmap, Vec<QueueSnapshot>, VirtioInterrupt)>,
    config: [u8; 8],
}

impl Dummy {
    fn new(calls: &Arc<Mutex<Calls>>) -> Self {
        Dummy {
            calls: calls.clone(),
            active: None,
            config: [0; 8],
        }
    }
}

/// Whether a queue's rings lie in `mem` (what `Queue::is_valid` checks).
fn rings_in_memory(q: &QueueSnapshot, mem: &GuestMemoryMmap) -> bool {
    let size = usize::from(q.size);
    mem.check_range(GuestAddress(q.desc_table), 16 * size)
        && mem.check_range(GuestAddress(q.avail_ring), 6 + 2 * size)
        && mem.check_range(GuestAddress(q.used_ring), 6 + 8 * size)
}

/// Returns every available chain of `q` with length 0; fails on a poisoned head descriptor and
/// on an available index more than a ring ahead (as virtio-queue does).
fn return_chains(
    q: &mut QueueSnapshot,
    mem: &GuestMemoryMmap,
    index: usize,
) -> Result<bool, VirtioError> {
    let err = |_| VirtioError::InvalidQueue { index };
    let avail_idx = u16::from_le(mem.read_obj(GuestAddress(q.avail_ring + 2)).map_err(err)?);
    let pending = avail_idx.wrapping_sub(q.next_avail);
    if pending > q.size {
        return Err(VirtioError::InvalidQueue { index });
    }
    for _ in 0..pending {
        let slot = u64::from(q.next_avail % q.size);
        let head: u16 = mem
            .read_obj(GuestAddress(q.avail_ring + 4 + 2 * slot))
            .map_err(err)?;
        let head = u16::from_le(head) % q.size;
        let addr: u64 = mem
            .read_obj(GuestAddress(q.desc_table + 16 * u64::from(head)))
            .map_err(err)?;
        if u64::from_le(addr) == POISON_ADDR {
            return Err(VirtioError::InvalidQueue { index });
        }
        let used = q.used_ring + 4 + 8 * u64::from(q.next_used % q.size);
        mem.write_obj(u32::from(head).to_le(), GuestAddress(used))
            .map_err(err)?;
        mem.write_obj(0u32, GuestAddress(used + 4)).map_err(err)?;
        q.next_avail = q.next_avail.wrapping_add(1);
        q.next_used = q.next_used.wrapping_add(1);
        mem.write_obj(q.next_used.to_le(), GuestAddress(q.used_ring + 2))
            .map_err(err)?;
    }
    Ok(pending != 0)
}

impl VirtioDevice<GuestMemoryMmap> for Dummy {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &MAX_SIZES
    }

    fn device_features(&self) -> u64 {
        OFFERED
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        vmm_devices::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The second half is writable.
        for (i, &b) in data.iter().enumerate() {
            if let Some(slot) = offset
                .checked_add(i as u64)
                .filter(|&o| (4..8).contains(&o))
                .and_then(|o| self.config.get_mut(o as usize))
            {
                *slot = b;
            }
        }
    }

    fn activate(&mut self, active: ActiveQueues<GuestMemoryMmap>) -> Result<(), VirtioError> {
        assert!(self.active.is_none(), "activated twice without a reset");
        assert_eq!(active.acked_features & !OFFERED, 0, "unoffered features");
        assert_ne!(active.acked_features & features::VERSION_1, 0);
        assert_eq!(active.queues.len(), MAX_SIZES.len());
        let queues: Vec<QueueSnapshot> = active.queues.iter().map(QueueSnapshot::of).collect();
        for (q, max) in queues.iter().zip(MAX_SIZES) {
            assert!(
                q.ready && rings_in_memory(q, &active.mem),
                "invalid queue: {q:?}"
            );
            assert!(q.size != 0 && q.size <= max && q.size.is_power_of_two());
            assert_eq!(q.max_size, max);
        }
        if active.acked_features & FAIL_ACTIVATE != 0 {
            return Err(VirtioError::StateMismatch("told to fail".into()));
        }
        self.active = Some((active.mem, queues, active.interrupt));
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, index: usize) -> Result<(), VirtioError> {
        self.calls.lock().unwrap().work += 1;
        let (mem, queues, interrupt) = self
            .active
            .as_mut()
            .expect("process_queue before activation");
        let q = queues.get_mut(index).expect("queue index in range");
        if return_chains(q, mem, index)? {
            interrupt.signal_used_queue()?;
        }
        Ok(())
    }

    fn save_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::new("virtio-rng", &RngState {}).unwrap()
    }

    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), VirtioError> {
        match state.kind() {
            "virtio-rng" => Ok(()),
            _ => Err(VirtioError::StateMismatch("not an rng state".into())),
        }
    }
}

fn transport(mem: &GuestMemoryMmap, calls: &Arc<Mutex<Calls>>) -> Transport {
    let line = EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    Transport::new(
        mem.clone(),
        Box::new(Dummy::new(calls)),
        VirtioInterrupt::new(line),
    )
}

fn rd(t: &mut Transport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn wr(t: &mut Transport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn check(t: &mut Transport) {
    let s = t.status();
    assert_eq!(
        s & status::DRIVER_OK != 0,
        t.device().is_activated(),
        "status {s:#x}"
    );
    if s & status::FEATURES_OK != 0 {
        assert_eq!(t.acked_features() & !OFFERED, 0);
        assert_ne!(t.acked_features() & features::VERSION_1, 0);
    }
    if s & status::DRIVER_OK != 0 {
        assert_ne!(s & status::FEATURES_OK, 0);
    }
    assert_eq!(t.interrupt().status() & !3, 0);
    assert_eq!(rd(t, regs::MAGIC_VALUE), MAGIC_VALUE);
    assert_eq!(rd(t, regs::STATUS), s);
}

/// The driver side of Linux's probe, with `features` and queue sizes shrunk by `shift`.
fn init(t: &mut Transport, mem: &GuestMemoryMmap, features: u64, shift: u8) -> Vec<TestQueue> {
    wr(t, regs::STATUS, 0);
    wr(t, regs::STATUS, status::ACKNOWLEDGE);
    wr(t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, regs::DRIVER_FEATURES_SEL, 1);
    wr(t, regs::DRIVER_FEATURES, (features >> 32) as u32);
    wr(t, regs::DRIVER_FEATURES_SEL, 0);
    wr(t, regs::DRIVER_FEATURES, features as u32);
    wr(
        t,
        regs::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    let mut queues = Vec::new();
    for (i, max) in MAX_SIZES.iter().enumerate() {
        let q = TestQueue::new(0x8000 * i as u64, max >> (shift % 3));
        // A fresh driver starts from zeroed rings.
        mem.write_slice(&[0u8; 0x6000], GuestAddress(q.desc))
            .expect("rings in memory");
        wr(t, regs::QUEUE_SEL, i as u32);
        wr(t, regs::QUEUE_NUM, q.size.into());
        wr(t, regs::QUEUE_DESC_LOW, q.desc as u32);
        wr(t, regs::QUEUE_DRIVER_LOW, q.avail as u32);
        wr(t, regs::QUEUE_DEVICE_LOW, q.used as u32);
        wr(t, regs::QUEUE_READY, 1);
        queues.push(q);
    }
    let s = rd(t, regs::STATUS);
    wr(t, regs::STATUS, s | status::DRIVER_OK);
    queues
}

/// Damages one field of a state (an untrusted snapshot file).
fn corrupt(state: &mut MmioTransportState, field: u8, v: u64) {
    let q = (v as usize) % 2;
    match field % 16 {
        0 => state.status = v as u32,
        1 => state.acked_features = v,
        2 => state.queue_sel = v as u32,
        3 => state.queues.truncate(1),
        4 => state.queues.push(Default::default()),
        5 => state.queues[q].size = (v >> 8) as u16,
        6 => state.queues[q].max_size = (v >> 8) as u16,
        7 => state.queues[q].desc_table = v >> 1,
        8 => state.queues[q].avail_ring = v >> 1,
        9 => state.queues[q].used_ring = v >> 1,
        10 => state.queues[q].ready ^= true,
        11 => state.queues[q].next_avail = (v >> 8) as u16,
        12 => state.interrupt_status = v as u32,
        13 => state.config_generation = v as u32,
        14 => {
            state.device = VirtioDeviceState::new(
                "virtio-blk",
                &vmm_devices::virtio::block::BlockState::default(),
            )
            .unwrap()
        }
        _ => state.queues[q].event_idx_enabled ^= true,
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = test_memory(MEM_SIZE);
    let calls = Arc::new(Mutex::new(Calls::default()));
    let mut t = transport(&mem, &calls);
    let mut paused = false;
    let mut queues: Vec<TestQueue> = MAX_SIZES
        .iter()
        .enumerate()
        .map(|(i, &max)| TestQueue::new(0x8000 * i as u64, max))
        .collect();

    let mut input = Cursor(data);
    while !input.is_empty() {
        let op = input.byte();
        let work_before = calls.lock().unwrap().work;
        let stuck_before = t.status() & status::DEVICE_NEEDS_RESET != 0;
        match op % 11 {
            0 | 1 => {
                let off = u64::from(input.byte());
                let offset = if op & 0x80 != 0 {
                    regs::CONFIG + off
                } else {
                    off * 4
                };
                let size = usize::from(input.byte() % 10);
                if op % 11 == 0 {
                    let mut value = vec![0xa5; size];
                    t.read(offset, &mut value);
                    if offset < regs::CONFIG && size != 4 {
                        assert!(value.iter().all(|&b| b == 0));
                    }
                } else {
                    let value = input.bytes(size);
                    t.write(offset, &value);
                }
            }
            2 => {
                let reg = KNOWN_REGS[usize::from(input.byte()) % KNOWN_REGS.len()];
                let v = input.bytes(4);
                wr(&mut t, reg, u32::from_le_bytes([v[0], v[1], v[2], v[3]]));
            }
            3 => t.process_queue(usize::from(input.byte() % 4)),
            4 => {
                paused = input.byte() & 1 == 1;
                t.set_paused(paused);
            }
            5 => {
                let state = t.save_state();
                let mut fresh = transport(&mem, &calls);
                fresh.set_paused(paused);
                fresh
                    .restore_state(&state)
                    .expect("a faithful snapshot restores");
                assert_eq!(fresh.save_state(), state);
                t = fresh;
            }
            6 => {
                let mut state = t.save_state();
                let field = input.byte();
                corrupt(&mut state, field, input.u64());
                let mut fresh = transport(&mem, &calls);
                fresh.set_paused(paused);
                if fresh.restore_state(&state).is_ok() {
                    t = fresh;
                } else {
                    assert_eq!(fresh.status(), 0, "a refused state leaves a reset device");
                    assert!(!fresh.device().is_activated());
                }
            }
            7 => {
                // Byte bit n asks for features n and 28 + n (the offered ones among them).
                let wanted = u64::from(input.byte());
                let features = (OFFERED & (wanted | wanted.rotate_left(28)))
                    | (features::VERSION_1 * u64::from(input.byte() & 1));
                queues = init(&mut t, &mem, features, input.byte());
            }
            8 => {
                let q = &mut queues[usize::from(input.byte()) % 2];
                let count = 1 + usize::from(input.byte()) % usize::from(q.size.min(4));
                let buffers: Vec<(u64, u32, bool)> = (0..count)
                    .map(|_| {
                        let addr = u64::from(u16::from_le_bytes([input.byte(), input.byte()]));
                        let len = u32::from(input.byte()) * 16;
                        let writable = input.byte() & 1 == 1;
                        (0x1_0000 + addr % 0x8000, len, writable)
                    })
                    .collect();
                q.add_chain(&mem, &buffers);
            }
            9 => {
                let addr = u32::from_le_bytes([input.byte(), input.byte(), input.byte(), 0]);
                let len = usize::from(input.byte() % 64);
                let bytes = input.bytes(len);
                // Past the end of memory is simply refused.
                let _ = mem.write_slice(&bytes, GuestAddress(u64::from(addr) % MEM_SIZE as u64));
            }
            _ => wr(&mut t, regs::STATUS, 0),
        }
        check(&mut t);
        let worked = calls.lock().unwrap().work != work_before;
        // Unpausing catches up on every queue; nothing else runs the device while paused.
        if paused {
            assert!(!worked, "device ran while paused (op {op})");
        }
        if stuck_before && t.status() & status::DEVICE_NEEDS_RESET != 0 && op % 11 != 6 {
            assert!(!worked, "device ran while it needed a reset (op {op})");
        }
    }
});
