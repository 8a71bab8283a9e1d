//! Guest RAM for a KVM VMM: the address layout ([`layout`]) and the allocation of guest memory
//! on `vm-memory`, with transparent hugepages, KSM merging and prefaulting as options.
//!
//! [`snapshot`] saves guest memory into a (sparse) memory file or a diff file of dirty pages and
//! restores it by mapping the file `MAP_PRIVATE`.
//!
//! This crate knows nothing of KVM: it can be used and tested on any Linux machine.

pub mod layout;
pub mod seal;
pub mod sealed_memory;
pub mod snapshot;
#[cfg(test)]
mod test_dir;

use std::io;

pub use vm_memory::bitmap::{AtomicBitmap, Bitmap};
pub use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion,
    GuestUsize,
};

use std::num::NonZeroUsize;

/// Guest memory as every crate of the VMM uses it: `vm-memory`'s mmap backend with a dirty
/// bitmap per region. Every write the VMM itself makes through `vm-memory` (device DMA into
/// guest buffers, used rings, the loader) sets the bits of the pages it touches; KVM's dirty
/// log covers the guest's own writes. Together they make diff snapshots.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;
/// One region of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<AtomicBitmap>;
/// The mapping behind a [`GuestRegionMmap`].
pub type MmapRegion = vm_memory::MmapRegion<AtomicBitmap>;
/// The dirty bitmap of a slice of [`GuestMemoryMmap`] (the `B` of `virtio_queue`'s `Reader`
/// and `Writer` over it).
pub type GuestBitmapSlice<'a> = vm_memory::bitmap::BS<'a, AtomicBitmap>;
/// Builds a [`MmapRegion`]; start with [`region_builder`] to get its bitmap.
pub type MmapRegionBuilder = vm_memory::mmap::MmapRegionBuilder<AtomicBitmap>;

/// Granularity of the dirty bitmaps: one bit per 4 KiB page, as KVM's dirty log.
pub const DIRTY_PAGE_SIZE: usize = 4096;

/// A [`MmapRegionBuilder`] for a region of `size` bytes with a dirty bitmap of one bit per
/// [`DIRTY_PAGE_SIZE`] page.
pub fn region_builder(size: usize) -> MmapRegionBuilder {
    let page = NonZeroUsize::new(DIRTY_PAGE_SIZE).unwrap_or(NonZeroUsize::MIN);
    MmapRegionBuilder::new_with_bitmap(size, AtomicBitmap::new(size, page))
}

/// Reads and clears the dirty bitmaps of `mem`'s regions (the pages the VMM wrote through
/// `vm-memory` since the previous call or [`reset_dirty`]): one bitmap per region, in region
/// order, bit `i % 64` of word `i / 64` for page `i` of the region, as KVM's dirty log.
pub fn take_dirty(mem: &GuestMemoryMmap) -> Vec<Vec<u64>> {
    // `**region` is the region's mapping, which holds the whole bitmap.
    mem.iter()
        .map(|region| (**region).bitmap().get_and_reset())
        .collect()
}

/// Clears the dirty bitmaps of `mem`'s regions.
pub fn reset_dirty(mem: &GuestMemoryMmap) {
    for region in mem.iter() {
        (**region).bitmap().reset();
    }
}

/// Errors of guest memory creation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested size is below what the boot layout needs.
    #[error("guest memory of {0} bytes is too small: at least {min} MiB are needed", min = layout::MIN_RAM_BYTES >> 20)]
    TooSmall(u64),
    /// The requested size is not a whole number of 4 KiB pages.
    #[error("guest memory of {0} bytes is not a multiple of 4 KiB")]
    NotPageAligned(u64),
    /// The requested size exceeds what the host has.
    #[error("guest memory of {requested} MiB is more than the host's {host} MiB of RAM and swap")]
    BeyondHost {
        /// Requested MiB.
        requested: u64,
        /// Host MemTotal + SwapTotal in MiB.
        host: u64,
    },
    /// mmap of a region failed.
    #[error("cannot map {size} bytes of guest memory at {addr:#x}")]
    Mmap {
        /// Guest address of the region.
        addr: u64,
        /// Length of the region.
        size: u64,
        /// The cause.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// madvise on guest memory failed.
    #[error("madvise({advice}) on guest memory failed")]
    Madvise {
        /// Which advice.
        advice: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The regions could not be put together (overlap; a bug in the layout).
    #[error("invalid guest memory regions")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// How guest RAM is backed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryOptions {
    /// Ask for transparent hugepages (MADV_HUGEPAGE) on guest RAM.
    pub hugepages: bool,
    /// Let KSM merge identical guest pages (MADV_MERGEABLE).
    pub ksm: bool,
    /// Fault every page in at creation (MAP_POPULATE) instead of on first guest touch.
    pub prefault: bool,
}

/// Checks a guest RAM size against the layout and the host, without allocating.
pub fn validate_size(ram_bytes: u64) -> Result<()> {
    if ram_bytes < layout::MIN_RAM_BYTES {
        return Err(Error::TooSmall(ram_bytes));
    }
    if !ram_bytes.is_multiple_of(4096) {
        return Err(Error::NotPageAligned(ram_bytes));
    }
    let host = host_memory_bytes().unwrap_or(layout::MAX_RAM_BYTES);
    if ram_bytes > host.min(layout::MAX_RAM_BYTES) {
        return Err(Error::BeyondHost {
            requested: ram_bytes >> 20,
            host: host >> 20,
        });
    }
    Ok(())
}

/// The host's RAM plus swap in bytes, from sysinfo(2); `None` if it cannot be read.
///
/// sysinfo(2) rather than /proc/meminfo: the VMM may run in a jail without /proc, and the
/// system call gives the same totals (MemTotal and SwapTotal) without any file.
pub fn host_memory_bytes() -> Option<u64> {
    // SAFETY: an all-zero `sysinfo` is a valid value of this plain C struct.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: sysinfo writes one struct sysinfo, which `info` is, and keeps no pointer to it.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    let unit = u64::from(info.mem_unit.max(1));
    let total = info.totalram.checked_add(info.totalswap)?;
    total.checked_mul(unit)
}

/// Creates guest RAM of `ram_bytes` laid out by [`layout::ram_regions`].
///
/// Memory is private anonymous and not reserved against overcommit (MAP_NORESERVE): a guest only
/// costs the host what it touches, as users of a VMM expect.
pub fn create_guest_memory(ram_bytes: u64, options: MemoryOptions) -> Result<GuestMemoryMmap> {
    validate_size(ram_bytes)?;
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    if options.prefault {
        flags |= libc::MAP_POPULATE;
    }
    let mut regions = Vec::new();
    for (addr, size) in layout::ram_regions(ram_bytes) {
        let mapping = map_huge_aligned(size as usize, flags).map_err(|source| Error::Mmap {
            addr,
            size,
            source,
        })?;
        if options.hugepages {
            advise(&mapping, libc::MADV_HUGEPAGE, "MADV_HUGEPAGE")?;
        }
        if options.ksm {
            advise(&mapping, libc::MADV_MERGEABLE, "MADV_MERGEABLE")?;
        }
        // Only fails when the region would wrap the address space, which the layout excludes.
        let region = GuestRegionMmap::new(mapping, GuestAddress(addr)).ok_or(Error::Mmap {
            addr,
            size,
            source: vm_memory::mmap::MmapRegionError::InvalidPointer,
        })?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(Error::Regions)
}

/// The host alignment guest RAM needs for KVM to map it with 2 MiB pages: a guest-physical
/// 2 MiB page can be one host huge page only when its host address has the same offset within
/// 2 MiB (every RAM region of the layout starts on a 2 MiB guest-physical boundary).
pub const HUGE_PAGE_ALIGN: usize = 2 << 20;

/// Maps `size` bytes of anonymous guest RAM (`flags`) read-write, at a [`HUGE_PAGE_ALIGN`]ed
/// host address where it can. Kernels from 6.7 align large anonymous mappings themselves;
/// older ones (Debian 12's 6.1) put them anywhere, and then KVM maps each 4 KiB of guest RAM on
/// its own even where transparent hugepages back it: inside the test host (6.1) a guest filling
/// 744 MiB took about three times as long as under QEMU, which aligns (README, "Restoring a
/// Linux guest"). Anything that keeps the region from its aligned place leaves it where it
/// landed, as before.
fn map_huge_aligned(
    size: usize,
    flags: libc::c_int,
) -> std::result::Result<MmapRegion, vm_memory::mmap::MmapRegionError> {
    let build = || {
        region_builder(size)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .build()
    };
    let first = build()?;
    if size < HUGE_PAGE_ALIGN || (first.as_ptr() as usize).is_multiple_of(HUGE_PAGE_ALIGN) {
        return Ok(first);
    }
    drop(first);
    steer_into_aligned_hole(size, build)
}

/// Runs `build` (an mmap of `size` bytes at an address of the kernel's choosing: vm-memory
/// takes no address) with the kernel steered to a [`HUGE_PAGE_ALIGN`]ed one. Its top-down
/// search returns the top of the highest free range that fits; so `size + HUGE_PAGE_ALIGN` bytes
/// are reserved, the part above the aligned end kept as a guard while the rest is freed, and
/// `build` fills the hole below the guard. A higher free range that fits, or another thread
/// mapping meanwhile, puts it elsewhere (unaligned, as without this).
fn steer_into_aligned_hole<T>(size: usize, build: impl FnOnce() -> T) -> T {
    let span = size + HUGE_PAGE_ALIGN;
    // SAFETY: a new PROT_NONE reservation at an address the kernel picks; nothing refers to it.
    let reserved = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if reserved == libc::MAP_FAILED {
        return build();
    }
    let start = reserved as usize;
    let guard = (start.next_multiple_of(HUGE_PAGE_ALIGN)) + size;
    // SAFETY: unmaps the part of this function's own reservation below the guard.
    unsafe { libc::munmap(reserved, guard - start) };
    let built = build();
    // SAFETY: unmaps the guard, the rest of this function's reservation, which nothing uses.
    unsafe { libc::munmap(guard as *mut libc::c_void, start + span - guard) };
    built
}

fn advise(mapping: &MmapRegion, advice: libc::c_int, name: &'static str) -> Result<()> {
    // SAFETY: the range is exactly one mapping owned by `mapping`, alive for this call; the
    // advices used here (hugepage, mergeable) never change the contents of the memory.
    let rc = unsafe { libc::madvise(mapping.as_ptr().cast(), mapping.size(), advice) };
    if rc != 0 {
        return Err(Error::Madvise {
            advice: name,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Total guest RAM in bytes.
pub fn ram_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_is_mapped_huge_page_aligned() {
        let mem = create_guest_memory(256 << 20, MemoryOptions::default()).unwrap();
        for region in mem.iter() {
            let host = region.as_ptr() as usize;
            assert_eq!(host % HUGE_PAGE_ALIGN, 0, "{host:#x}");
        }
        // The steering on its own (this kernel may align by itself): a region built into the
        // hole lands on a 2 MiB boundary, and the reservation around it is gone.
        let size = 64 << 20;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        for _ in 0..4 {
            let region = steer_into_aligned_hole(size, || {
                region_builder(size)
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(flags)
                    .build()
                    .unwrap()
            });
            let host = region.as_ptr() as usize;
            assert_eq!(host % HUGE_PAGE_ALIGN, 0, "{host:#x}");
            // Writable all through: the region is a real mapping, not the reservation.
            // SAFETY: both bytes lie inside the region's own read-write mapping.
            unsafe {
                region.as_ptr().write(1);
                region.as_ptr().add(size - 1).write(1);
            }
        }
    }

    #[test]
    fn rejects_zero_small_and_unaligned() {
        assert!(matches!(validate_size(0), Err(Error::TooSmall(0))));
        assert!(matches!(validate_size(1 << 20), Err(Error::TooSmall(_))));
        assert!(matches!(
            validate_size((64 << 20) + 1),
            Err(Error::NotPageAligned(_))
        ));
    }

    #[test]
    fn rejects_more_than_the_host_has() {
        let err = validate_size(1 << 45).unwrap_err();
        assert!(matches!(err, Error::BeyondHost { .. }), "{err}");
        assert!(err.to_string().contains("MiB"));
    }

    /// sysinfo(2) gives the totals /proc/meminfo shows (where the test can read it).
    #[test]
    fn host_memory_matches_proc_meminfo() {
        let host = host_memory_bytes().expect("sysinfo");
        let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
            return;
        };
        let kib = |name: &str| -> u64 {
            let line = meminfo.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        // The kernel fills both from the same counters; allow one page of rounding.
        let expected = (kib("MemTotal:") + kib("SwapTotal:")) * 1024;
        assert!(host.abs_diff(expected) <= 4096, "{host} vs {expected}");
    }

    #[test]
    fn creates_small_memory_that_reads_and_writes() {
        let mem = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(ram_size(&mem), 64 << 20);
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert!(mem.read_obj::<u8>(GuestAddress(64 << 20)).is_err());
    }

    #[test]
    fn writes_through_vm_memory_mark_pages_dirty() {
        let mem = create_guest_memory(5 << 30, MemoryOptions::default()).unwrap();
        let dirty = take_dirty(&mem);
        assert_eq!(dirty.len(), 2);
        assert!(dirty.iter().flatten().all(|&w| w == 0));
        // Two bytes either side of a page boundary in the low region; one page above 4 GiB.
        mem.write_slice(&[1, 2, 3, 4], GuestAddress(0x5000 - 2))
            .unwrap();
        mem.write_obj(7u64, GuestAddress((4 << 30) + 3 * 4096 + 8))
            .unwrap();
        let region = mem.find_region(GuestAddress(0x4000)).unwrap();
        assert!(region.bitmap().dirty_at(0x4000) && region.bitmap().dirty_at(0x5000));
        assert!(!region.bitmap().dirty_at(0x6000));
        let dirty = take_dirty(&mem);
        assert_eq!(dirty[0][0], 0b11 << 4);
        assert!(dirty[0][1..].iter().all(|&w| w == 0));
        assert_eq!(dirty[1][0], 1 << 3);
        // Reading resets; so does reset_dirty.
        assert!(take_dirty(&mem).iter().flatten().all(|&w| w == 0));
        mem.write_obj(1u8, GuestAddress(0)).unwrap();
        reset_dirty(&mem);
        assert!(take_dirty(&mem).iter().flatten().all(|&w| w == 0));
        // Reads mark nothing.
        let _: u64 = mem.read_obj(GuestAddress(0x9000)).unwrap();
        assert!(take_dirty(&mem).iter().flatten().all(|&w| w == 0));
    }

    #[test]
    fn creates_memory_above_the_gap_lazily() {
        // 5 GiB of address space; MAP_NORESERVE means nothing is committed until touched.
        let mem = create_guest_memory(5 << 30, MemoryOptions::default()).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert_eq!(ram_size(&mem), 5 << 30);
        let top = GuestAddress((6 << 30) - 8);
        mem.write_obj(7u64, top).unwrap();
        assert_eq!(mem.read_obj::<u64>(top).unwrap(), 7);
        assert!(mem
            .read_obj::<u8>(GuestAddress(layout::MMIO_GAP_START))
            .is_err());
    }

    #[test]
    fn options_apply() {
        let options = MemoryOptions {
            hugepages: true,
            ksm: true,
            prefault: true,
        };
        // THP and KSM may be compiled out of a host kernel; then madvise says EINVAL.
        match create_guest_memory(4 << 20, options) {
            Ok(mem) => assert_eq!(ram_size(&mem), 4 << 20),
            Err(Error::Madvise { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL))
            }
            Err(e) => panic!("{e}"),
        }
    }
}
