//! Building split virtqueues by hand in guest memory (any [`GuestMemoryBackend`]; a real
//! [`TestMemory`] by default), and activating devices on them, for tests, fuzz targets and
//! benchmarks (feature `test-utils`). Rings can be filled with well-formed chains or with raw,
//! hostile descriptors.

use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{ActiveQueues, VirtioDevice, VirtioError, VirtioInterrupt};
use crate::{EventFd, EventFdTrigger, EFD_NONBLOCK};

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub const DESC_F_INDIRECT: u16 = 4;

/// Waits until `fd` is readable (a rate limiter's or a statistics timer that fired), at most
/// 60 s: an upper bound for a stuck test, never a timing assertion.
pub fn wait_readable(fd: std::os::fd::RawFd) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one valid, exclusively borrowed pollfd for at most 60 seconds.
    let n = unsafe { libc::poll(&mut pfd, 1, 60_000) };
    assert_eq!(n, 1, "the descriptor did not become readable within 60 s");
}

/// The guest memory [`test_memory`] builds: mmap-backed with a dirty bitmap, the same type as
/// vmm-memory's `GuestMemoryMmap`.
pub type TestMemory = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// Guest memory of `bytes` bytes starting at guest address 0.
pub fn test_memory(bytes: usize) -> TestMemory {
    TestMemory::from_ranges(&[(GuestAddress(0), bytes)]).expect("test guest memory")
}

/// A fresh interrupt line on a non-blocking EventFd, and a duplicate of that EventFd to read the
/// interrupts the device raised.
pub fn test_interrupt() -> (VirtioInterrupt, EventFd) {
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let line = EventFdTrigger::new(irq.try_clone().expect("eventfd clone"));
    (VirtioInterrupt::new(line), irq)
}

/// What the transport hands a device on DRIVER_OK: `mem`, a ready queue on each of `queues` (in
/// that order), `interrupt` and `acked_features`.
pub fn active_queues<'a, M: Clone>(
    mem: &M,
    queues: impl IntoIterator<Item = &'a TestQueue>,
    interrupt: VirtioInterrupt,
    acked_features: u64,
) -> ActiveQueues<M> {
    ActiveQueues {
        mem: mem.clone(),
        queues: queues.into_iter().map(TestQueue::queue).collect(),
        interrupt,
        acked_features,
    }
}

/// Activates `device` on `queues` in `mem` with `acked_features`, on a fresh
/// [`test_interrupt`]; returns that interrupt and its EventFd.
pub fn activate<'a, M, D>(
    device: &mut D,
    mem: &M,
    queues: impl IntoIterator<Item = &'a TestQueue>,
    acked_features: u64,
) -> Result<(VirtioInterrupt, EventFd), VirtioError>
where
    M: GuestMemoryBackend + Clone,
    D: VirtioDevice<M> + ?Sized,
{
    let (interrupt, irq) = test_interrupt();
    device.activate(active_queues(
        mem,
        queues,
        interrupt.clone(),
        acked_features,
    ))?;
    Ok((interrupt, irq))
}

/// One split virtqueue's rings at fixed addresses, and the driver-side bookkeeping to add chains.
#[derive(Clone, Debug)]
pub struct TestQueue {
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    /// Queue size.
    pub size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl TestQueue {
    /// Rings for a queue of `size` (a power of two, at most 1024) laid out from `base`, which
    /// must leave `0x8000` bytes of room.
    pub fn new(base: u64, size: u16) -> Self {
        TestQueue {
            desc: base,
            avail: base + 0x4000,
            used: base + 0x5000,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// [`TestQueue::new`], with the `0x8000` bytes from `base` zeroed first, as a driver sets up
    /// its rings after a reset (no stale index or entry survives).
    pub fn zeroed<M: GuestMemoryBackend>(mem: &M, base: u64, size: u16) -> Self {
        mem.write_slice(&[0u8; 0x8000], GuestAddress(base))
            .expect("rings in guest memory");
        TestQueue::new(base, size)
    }

    /// A ready `Queue` pointing at these rings (what the transport hands a device).
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("queue size");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Writes descriptor `index` as given (nothing checked: hostile chains welcome).
    pub fn write_desc<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = GuestAddress(self.desc + 16 * u64::from(index % self.size));
        mem.write_obj(addr.to_le(), at).unwrap();
        mem.write_obj(len.to_le(), GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(flags.to_le(), GuestAddress(at.0 + 12))
            .unwrap();
        mem.write_obj(next.to_le(), GuestAddress(at.0 + 14))
            .unwrap();
    }

    /// Publishes `head` in the available ring and bumps its index.
    pub fn push_avail<M: GuestMemoryBackend>(&mut self, mem: &M, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Adds a well-linked chain of `(addr, len, device_writable)` buffers and makes it available.
    /// Returns its head index.
    pub fn add_chain<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        buffers: &[(u64, u32, bool)],
    ) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let index = self.next_desc;
            let next = index.wrapping_add(1) % self.size;
            let mut flags = if writable { DESC_F_WRITE } else { 0 };
            if i + 1 < buffers.len() {
                flags |= DESC_F_NEXT;
            }
            self.write_desc(mem, index, addr, len, flags, next);
            self.next_desc = next;
        }
        self.push_avail(mem, head);
        head
    }

    /// The used ring's index (how many chains the device returned, mod 2^16).
    pub fn used_idx<M: GuestMemoryBackend>(&self, mem: &M) -> u16 {
        u16::from_le(mem.read_obj(GuestAddress(self.used + 2)).unwrap())
    }

    /// Used ring entry `n`: (descriptor head id, bytes written).
    pub fn used_elem<M: GuestMemoryBackend>(&self, mem: &M, n: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(n % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        (u32::from_le(id), u32::from_le(len))
    }
}
