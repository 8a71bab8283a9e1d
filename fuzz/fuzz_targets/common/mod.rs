//! Pieces the device fuzz targets share. Not every target uses every piece.
#![allow(dead_code)]

use std::cell::RefCell;

use vmm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory of the virtio-rng and virtio-balloon targets: RAM at 0, a short region whose
/// second 4 KiB page is only half there, and a far region above 2^44 (where no u32 balloon PFN
/// reaches).
pub const MAIN_SIZE: u64 = 0x2_0000;
/// Start of the short region.
pub const SHORT_BASE: u64 = 0x5_0000;
/// Size of the short region: it ends in the middle of a page.
pub const SHORT_SIZE: u64 = 0x1800;
/// Start of the far region.
pub const FAR_BASE: u64 = 1 << 44;
/// Size of the far region.
pub const FAR_SIZE: u64 = 0x1000;
/// The three regions, `(base, size)`, in address order.
pub const REGIONS: [(u64, u64); 3] = [
    (0, MAIN_SIZE),
    (SHORT_BASE, SHORT_SIZE),
    (FAR_BASE, FAR_SIZE),
];
/// A 4 KiB page.
pub const PAGE: u64 = 4096;

/// Guest memory laid out as [`REGIONS`].
pub fn memory() -> GuestMemoryMmap {
    let ranges: Vec<_> = REGIONS
        .iter()
        .map(|&(base, size)| (GuestAddress(base), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).expect("guest memory")
}

/// Copies `regions` of `mem`, in order, into `v`.
pub fn snapshot(mem: &GuestMemoryMmap, regions: &[(u64, u64)], mut v: &mut [u8]) {
    for &(base, size) in regions {
        let (r, rest) = v.split_at_mut(size as usize);
        mem.read_slice(r, GuestAddress(base)).expect("region");
        v = rest;
    }
}

thread_local! {
    /// Before / after copies of guest memory, kept across runs (fresh ones cost page faults).
    static SNAPSHOTS: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Hands `f` the two snapshot buffers, `len` bytes each.
pub fn with_snapshots<R>(len: usize, f: impl FnOnce(&mut [u8], &mut [u8]) -> R) -> R {
    SNAPSHOTS.with(|s| {
        let (before, after) = &mut *s.borrow_mut();
        before.resize(len, 0);
        after.resize(len, 0);
        f(before, after)
    })
}

/// Reads the fuzz input front to back; past the end it yields zeros.
pub struct Cursor<'a>(pub &'a [u8]);

impl Cursor<'_> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut v = [0u8; 8];
        for b in &mut v {
            *b = self.byte();
        }
        u64::from_le_bytes(v)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// A buffer address chosen by `kind % 4`: in `data_base..data_base + data_size` (two
    /// bytes), anywhere (eight bytes), in the short region or in the far region (one byte).
    pub fn buffer_addr(&mut self, kind: u8, data_base: u64, data_size: u64) -> u64 {
        match kind % 4 {
            0 => data_base + (u64::from(self.byte()) << 8 | u64::from(self.byte())) % data_size,
            1 => self.u64(),
            2 => SHORT_BASE + u64::from(self.byte()) * 32,
            _ => FAR_BASE + u64::from(self.byte()) * 16,
        }
    }
}
