//! The port-I/O / MMIO bus: maps guest address ranges to devices.
//!
//! The map is built before the vCPUs start ([`Bus::insert`] takes `&mut self`); afterwards
//! lookups take `&self` and only lock the one device they reach, so vCPU threads and the event
//! loop never contend on a bus-wide lock.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::Error;

/// A device that answers reads and writes in its range of the bus.
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes.
    ///
    /// `offset` is relative to the base the device was inserted at.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data`.
    ///
    /// `offset` is relative to the base the device was inserted at.
    fn write(&mut self, offset: u64, data: &[u8]);
}

struct BusRange {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Maps non-overlapping `[base, base + len)` ranges to devices, each behind its own lock.
///
/// Lookups are O(log n) range queries on a `BTreeMap` keyed by base address.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, BusRange>,
    unclaimed: AtomicU64,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (base, range) in &self.ranges {
            map.entry(
                &format_args!("{base:#x}"),
                &format_args!("len {:#x}", range.len),
            );
        }
        map.finish()
    }
}

/// Locks a device, recovering the guard if a thread panicked while holding it: the device's
/// state is still memory-safe, and a guest must not be able to turn one bug into a crash of
/// every thread that touches the device afterwards.
fn lock(device: &Mutex<dyn BusDevice>) -> MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    ///
    /// Fails with [`Error::ZeroLength`] for `len == 0`, [`Error::Overflow`] when `base + len`
    /// does not fit in a `u64` (so the very last byte of the address space cannot be mapped), and
    /// [`Error::Overlap`] when the range meets one already on the bus (adjacent ranges are fine).
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let end = base.checked_add(len).ok_or(Error::Overflow)?;
        // The closest range starting at or below `base` must end by `base`...
        if let Some((prev_base, prev)) = self.ranges.range(..=base).next_back() {
            // Cannot overflow: every stored range passed the same check.
            if prev_base + prev.len > base {
                return Err(Error::Overlap { base, len });
            }
        }
        // ...and the first range starting above `base` must start at or after `end`.
        if let Some((&next_base, _)) = self.ranges.range(base..).next() {
            if next_base < end {
                return Err(Error::Overlap { base, len });
            }
        }
        self.ranges.insert(base, BusRange { len, device });
        Ok(())
    }

    /// The device whose range holds all of `[addr, addr + size)`, with the offset of `addr`.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&BusRange, u64)> {
        let (base, range) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(u64::try_from(size).ok()?)?;
        (offset < range.len && end <= range.len).then_some((range, offset))
    }

    fn count_unclaimed(&self) {
        self.unclaimed.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `data.len()` bytes at `addr` from the device that claims them.
    ///
    /// Returns false, leaving `data` untouched, when no device claims `addr` or the access
    /// straddles the end of a device's range; the caller then fills all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((range, offset)) => {
                lock(&range.device).read(offset, data);
                true
            }
            None => {
                self.count_unclaimed();
                false
            }
        }
    }

    /// Writes `data` at `addr` to the device that claims it.
    ///
    /// Returns false, doing nothing, when no device claims `addr` or the access straddles the
    /// end of a device's range.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((range, offset)) => {
                lock(&range.device).write(offset, data);
                true
            }
            None => {
                self.count_unclaimed();
                false
            }
        }
    }

    /// How many reads and writes no device claimed so far.
    pub fn unclaimed_accesses(&self) -> u64 {
        self.unclaimed.load(Ordering::Relaxed)
    }

    /// Number of device ranges on the bus.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether no device is on the bus.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access and answers reads with its id and the offset.
    #[derive(Default)]
    struct Probe {
        id: u8,
        last_read: Option<(u64, usize)>,
        last_write: Option<(u64, Vec<u8>)>,
        panic_on_write: bool,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.last_read = Some((offset, data.len()));
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.id.wrapping_add(offset as u8).wrapping_add(i as u8);
            }
        }

        fn write(&mut self, offset: u64, data: &[u8]) {
            if self.panic_on_write {
                panic!("probe told to panic");
            }
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn probe(id: u8) -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe {
            id,
            ..Default::default()
        }))
    }

    #[test]
    fn insert_rejects_zero_length_and_overflow() {
        let mut bus = Bus::new();
        assert!(matches!(
            bus.insert(probe(0), 0x10, 0),
            Err(Error::ZeroLength)
        ));
        assert!(matches!(
            bus.insert(probe(0), u64::MAX, 1),
            Err(Error::Overflow)
        ));
        assert!(matches!(
            bus.insert(probe(0), 1, u64::MAX),
            Err(Error::Overflow)
        ));
        // The largest range that fits.
        bus.insert(probe(0), 0, u64::MAX).unwrap();
        assert_eq!(bus.len(), 1);
    }

    #[test]
    fn insert_rejects_overlaps_and_accepts_adjacent_ranges() {
        let mut bus = Bus::new();
        assert!(bus.is_empty());
        bus.insert(probe(0), 0x100, 0x10).unwrap();
        // Adjacent on both sides.
        bus.insert(probe(1), 0xf0, 0x10).unwrap();
        bus.insert(probe(2), 0x110, 0x10).unwrap();
        for (base, len) in [
            (0x100, 0x10), // identical
            (0x100, 1),    // same base
            (0x105, 2),    // inside
            (0x10f, 1),    // last byte
            (0x80, 0x200), // covers everything
            (0x11f, 0x10), // tail of the last range
            (0xe0, 0x11),  // one byte into the first range
        ] {
            match bus.insert(probe(9), base, len) {
                Err(Error::Overlap { base: b, len: l }) => assert_eq!((b, l), (base, len)),
                other => panic!("{base:#x}+{len:#x}: {other:?}"),
            }
        }
        bus.insert(probe(3), 0x120, 1).unwrap();
        bus.insert(probe(4), 0xef, 1).unwrap();
        assert_eq!(bus.len(), 5);
    }

    #[test]
    fn dispatches_to_the_right_device_with_the_right_offset() {
        let mut bus = Bus::new();
        let a = probe(0x10);
        let b = probe(0x20);
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0x400, 0x100).unwrap();

        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [0x15]);
        assert_eq!(a.lock().unwrap().last_read, Some((5, 1)));
        assert!(b.lock().unwrap().last_read.is_none());

        let mut data = [0u8; 4];
        assert!(bus.read(0x4fc, &mut data));
        assert_eq!(data, [0x1c, 0x1d, 0x1e, 0x1f]); // 0x20 + 0xfc.. wrapping
        assert_eq!(b.lock().unwrap().last_read, Some((0xfc, 4)));

        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(a.lock().unwrap().last_write, Some((0, vec![0x41])));
        assert!(bus.write(0x400, &[1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(b.lock().unwrap().last_write, Some((0, (1..=8).collect())));
        assert_eq!(bus.unclaimed_accesses(), 0);
    }

    #[test]
    fn unclaimed_accesses_return_false_and_are_counted() {
        let mut bus = Bus::new();
        bus.insert(probe(0), 0x3f8, 8).unwrap();
        let mut data = [0xaa; 2];
        assert!(!bus.read(0x3f7, &mut data));
        assert_eq!(data, [0xaa; 2], "an unclaimed read leaves data alone");
        assert!(!bus.read(0x400, &mut data));
        assert!(!bus.read(u64::MAX, &mut data));
        assert!(!bus.write(0, &[1]));
        assert_eq!(bus.unclaimed_accesses(), 4);
        assert!(!Bus::new().read(0, &mut data));
    }

    #[test]
    fn straddling_accesses_are_unclaimed() {
        let mut bus = Bus::new();
        let dev = probe(0);
        bus.insert(dev.clone(), 0x60, 5).unwrap();
        bus.insert(probe(1), 0x65, 5).unwrap();
        let mut data = [0u8; 2];
        assert!(!bus.read(0x64, &mut data));
        assert!(!bus.write(0x64, &[1, 2]));
        assert!(!bus.write(0x5f, &[1, 2]));
        assert!(dev.lock().unwrap().last_read.is_none());
        assert!(dev.lock().unwrap().last_write.is_none());
        assert_eq!(bus.unclaimed_accesses(), 3);
        // Exactly to the end is fine.
        assert!(bus.read(0x63, &mut data));
        assert_eq!(dev.lock().unwrap().last_read, Some((3, 2)));
    }

    #[test]
    fn zero_sized_and_end_of_space_accesses_do_not_panic() {
        let mut bus = Bus::new();
        let dev = probe(0);
        bus.insert(dev.clone(), u64::MAX - 8, 8).unwrap();
        assert!(bus.write(u64::MAX - 1, &[]));
        assert!(bus.read(u64::MAX - 8, &mut [0u8; 8]));
        assert!(!bus.read(u64::MAX - 1, &mut [0u8; 8]));
        assert!(!bus.read(u64::MAX, &mut []));
        assert_eq!(dev.lock().unwrap().last_write, Some((7, vec![])));
    }

    #[test]
    fn a_poisoned_device_does_not_make_the_bus_panic() {
        let mut bus = Bus::new();
        let dev = probe(7);
        dev.lock().unwrap().panic_on_write = true;
        bus.insert(dev.clone(), 0x100, 4).unwrap();
        let bus = Arc::new(bus);

        let b = Arc::clone(&bus);
        let result = std::thread::spawn(move || b.write(0x100, &[1])).join();
        assert!(result.is_err(), "the device panicked in the other thread");
        assert!(dev.is_poisoned());

        let mut data = [0u8; 1];
        assert!(bus.read(0x101, &mut data));
        assert_eq!(data, [8]);
        let mut guard = dev.lock().unwrap_or_else(PoisonError::into_inner);
        guard.panic_on_write = false;
        drop(guard);
        assert!(bus.write(0x102, &[2]));
        assert_eq!(
            dev.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .last_write,
            Some((2, vec![2]))
        );
    }

    #[test]
    fn bus_is_shareable_across_threads() {
        fn assert_sync_send<T: Sync + Send>() {}
        assert_sync_send::<Bus>();
    }
}
