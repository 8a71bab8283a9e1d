//! Initrd placement: as high as the kernel allows, so that the kernel's own early allocations
//! (which grow up from its end) never run into it.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::boot_layout::BootLayout;
use crate::error::{Error, Result};
use crate::kernel::LoadedKernel;

/// Where the initrd was put in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRegion {
    /// Guest physical address of its first byte (page-aligned).
    pub addr: u64,
    /// Its size in bytes.
    pub size: u64,
}

const PAGE_SIZE: u64 = 4096;
/// What the boot protocol says to assume when a kernel leaves `initrd_addr_max` at 0.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Reads the `size`-byte initrd from `image` into the top of usable low RAM
/// ([`BootLayout::low_ram_end`]), page-aligned, below the kernel's `initrd_addr_max` (bzImage)
/// and above `kernel.kernel_end` and `boot.high_ram_start`.
pub fn load_initrd<M: GuestMemoryBackend, F: std::io::Read + ReadVolatile>(
    mem: &M,
    boot: &BootLayout,
    image: &mut F,
    size: u64,
    kernel: &LoadedKernel,
) -> Result<InitrdRegion> {
    if size == 0 {
        return Err(Error::InitrdEmpty);
    }
    let addr = place(
        boot.low_ram_end(mem),
        boot.high_ram_start,
        kernel.kernel_end,
        kernel.setup_header.map(|h| h.initrd_addr_max),
        size,
    )?;

    // Read in a loop: one read may return less (pipes, large files), and only a 0 means the end.
    let mut done = 0u64;
    while done < size {
        let at = GuestAddress(addr).unchecked_add(done);
        let want = usize::try_from(size - done).unwrap_or(usize::MAX);
        let n = mem
            .read_volatile_from(at, image, want)
            .map_err(|source| Error::InitrdRead { addr: at.0, source })?;
        if n == 0 {
            return Err(Error::InitrdShortRead { read: done, size });
        }
        done += n as u64;
    }
    Ok(InitrdRegion { addr, size })
}

/// The page-aligned address for `size` bytes as high as possible below `low_ram_end` and below
/// `initrd_addr_max` (the highest address the initrd's last byte may have), and at or above the
/// page-aligned `kernel_end` and `high_ram_start`.
fn place(
    low_ram_end: u64,
    high_ram_start: u64,
    kernel_end: u64,
    initrd_addr_max: Option<u32>,
    size: u64,
) -> Result<u64> {
    let mut top = low_ram_end;
    if let Some(max) = initrd_addr_max {
        let max = if max == 0 {
            DEFAULT_INITRD_ADDR_MAX
        } else {
            u64::from(max)
        };
        top = top.min(max + 1);
    }
    let top = top & !(PAGE_SIZE - 1);
    let bottom = kernel_end.max(high_ram_start).saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
    let available = top.saturating_sub(bottom);
    match top.checked_sub(size) {
        Some(addr) if addr & !(PAGE_SIZE - 1) >= bottom => Ok(addr & !(PAGE_SIZE - 1)),
        _ => Err(Error::InitrdDoesNotFit { size, available }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::BootProtocol;
    use std::io::Cursor;
    use vmm_memory::layout;

    /// `place` in the VMM's layout with `ram_bytes` of RAM.
    fn place(
        ram_bytes: u64,
        kernel_end: u64,
        initrd_addr_max: Option<u32>,
        size: u64,
    ) -> Result<u64> {
        super::place(
            layout::low_ram_end(ram_bytes),
            layout::HIGH_RAM_START,
            kernel_end,
            initrd_addr_max,
            size,
        )
    }

    fn load_initrd<F: std::io::Read + ReadVolatile>(
        mem: &vmm_memory::GuestMemoryMmap,
        image: &mut F,
        size: u64,
        kernel: &LoadedKernel,
    ) -> Result<InitrdRegion> {
        super::load_initrd(mem, &BootLayout::default(), image, size, kernel)
    }

    const MIB: u64 = 1 << 20;

    fn kernel(kernel_end: u64) -> LoadedKernel {
        LoadedKernel {
            protocol: BootProtocol::Linux64,
            entry: 0x100_0000,
            kernel_end,
            setup_header: None,
        }
    }

    #[test]
    fn goes_to_the_top_page_aligned() {
        assert_eq!(
            place(64 * MIB, 32 * MIB, None, 4096).unwrap(),
            64 * MIB - 4096
        );
        assert_eq!(
            place(64 * MIB, 32 * MIB, None, 4097).unwrap(),
            64 * MIB - 8192
        );
        assert_eq!(place(64 * MIB, 32 * MIB, None, 1).unwrap(), 64 * MIB - 4096);
        // RAM above 4 GiB does not count: the initrd stays below the MMIO gap.
        assert_eq!(
            place(8 << 30, 32 * MIB, None, MIB).unwrap(),
            layout::MMIO_GAP_START - MIB
        );
    }

    #[test]
    fn respects_initrd_addr_max() {
        let addr = place(2 << 30, 32 * MIB, Some(0x3fff_ffff), MIB).unwrap();
        assert_eq!(addr, 0x4000_0000 - MIB);
        // 0 means the protocol's default.
        let addr = place(2 << 30, 32 * MIB, Some(0), MIB).unwrap();
        assert_eq!(addr, 0x3800_0000 - MIB);
        // An odd maximum still gives a page-aligned initrd below it.
        let addr = place(2 << 30, 32 * MIB, Some(0x3fff_f123), 10).unwrap();
        assert_eq!(addr, 0x3fff_e000);
    }

    #[test]
    fn too_big_says_how_much_room_there_is() {
        let err = place(64 * MIB, 32 * MIB, None, 32 * MIB + 1).unwrap_err();
        assert!(matches!(
            err,
            Error::InitrdDoesNotFit { size, available } if size == 32 * MIB + 1 && available == 32 * MIB
        ));
        assert!(place(64 * MIB, 32 * MIB, None, 32 * MIB).is_ok());
        assert!(matches!(
            place(64 * MIB, 80 * MIB, None, 1),
            Err(Error::InitrdDoesNotFit { available: 0, .. })
        ));
        assert!(matches!(
            place(64 * MIB, 0, None, u64::MAX),
            Err(Error::InitrdDoesNotFit { .. })
        ));
    }

    #[test]
    fn loads_the_bytes() {
        let mem = vmm_memory::create_guest_memory(64 * MIB, Default::default()).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let region = load_initrd(&mem, &mut Cursor::new(&data), 10_000, &kernel(32 * MIB)).unwrap();
        assert_eq!(region.size, 10_000);
        assert_eq!(region.addr % 4096, 0);
        assert_eq!(region.addr, 64 * MIB - 3 * 4096);
        let mut back = vec![0u8; 10_000];
        mem.read_slice(&mut back, GuestAddress(region.addr))
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn a_foreign_memory_and_layout() {
        // RAM in two pieces with a hole at 16 MiB; kernels from 2 MiB, and a gap at 12 MiB.
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 16 << 20),
            (GuestAddress(32 << 20), 16 << 20),
        ])
        .unwrap();
        let boot = BootLayout {
            high_ram_start: 2 << 20,
            mmio_gap_start: 12 << 20,
            ..BootLayout::default()
        };
        let data = vec![3u8; 100];
        let region =
            super::load_initrd(&mem, &boot, &mut Cursor::new(&data), 100, &kernel(0)).unwrap();
        assert_eq!(region.addr, (12 << 20) - 4096);
        let boot = BootLayout {
            mmio_gap_start: 64 << 20,
            ..boot
        };
        let region =
            super::load_initrd(&mem, &boot, &mut Cursor::new(&data), 100, &kernel(0)).unwrap();
        assert_eq!(region.addr, (16 << 20) - 4096);
        // Not below high_ram_start.
        assert!(matches!(
            super::load_initrd(&mem, &boot, &mut Cursor::new(&data), (14 << 20) + 1, &kernel(0)),
            Err(Error::InitrdDoesNotFit { available, .. }) if available == 14 << 20
        ));
    }

    #[test]
    fn short_and_empty_files_fail() {
        let mem = vmm_memory::create_guest_memory(64 * MIB, Default::default()).unwrap();
        let data = vec![7u8; 100];
        assert!(matches!(
            load_initrd(&mem, &mut Cursor::new(&data), 200, &kernel(32 * MIB)),
            Err(Error::InitrdShortRead {
                read: 100,
                size: 200
            })
        ));
        assert!(matches!(
            load_initrd(&mem, &mut Cursor::new(&data), 0, &kernel(32 * MIB)),
            Err(Error::InitrdEmpty)
        ));
    }
}
