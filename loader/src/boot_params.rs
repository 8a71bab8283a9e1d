//! The structures the kernel reads at boot besides itself: the command line, and either the
//! Linux zero page (`boot_params` with the e820 map) or the PVH `hvm_start_info` with its memory
//! map and module list. linux-loader's configurators do the writing.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::load_cmdline;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_memory::layout::{MemoryKind, MemoryMapEntry};

use crate::boot_layout::{addr32, BootLayout};
use crate::error::{Error, Result};
use crate::initrd::InitrdRegion;
use crate::kernel::{BootProtocol, LoadedKernel};
use crate::Cmdline;

/// "HdrS": the setup header magic.
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature the setup header carries.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// Boot loader id "undefined" (we have no assigned id).
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// The alignment an x86-64 kernel is built for (CONFIG_PHYSICAL_ALIGN's usual value).
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// hvm_start_info version 1 has the memory map fields.
const PVH_START_INFO_VERSION: u32 = 1;

/// Writes the command line at `boot.cmdline_start`, then the zero page at
/// `boot.zero_page_start` (Linux64, BzImage) or the PVH start info at `boot.pvh_info_start`
/// with its module list and memory map (Pvh), describing `memory_map` and the optional initrd.
///
/// `memory_map` is what the guest is told about its physical memory (e820 entries), sorted by
/// address; with this workspace's layout it is
/// [`vmm_memory::layout::memory_map`]`(ram_bytes)`. Every [`MemoryKind::Ram`] entry must lie
/// in `mem`.
pub fn configure_boot<M: GuestMemoryBackend>(
    mem: &M,
    boot: &BootLayout,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<InitrdRegion>,
    memory_map: &[MemoryMapEntry],
) -> Result<()> {
    // The map must not promise RAM the guest does not have.
    for entry in memory_map.iter().filter(|e| e.kind == MemoryKind::Ram) {
        let backed = usize::try_from(entry.size)
            .is_ok_and(|len| mem.check_range(GuestAddress(entry.addr), len));
        if !backed {
            return Err(Error::MemoryMapNotBacked {
                addr: entry.addr,
                size: entry.size,
            });
        }
    }
    // The Cmdline may come from elsewhere with a larger capacity than ours; the area is fixed.
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(Error::Cmdline)?
        .as_bytes()
        .len();
    if cmdline_len >= boot.cmdline_max_size {
        return Err(Error::CmdlineTooLong {
            len: cmdline_len,
            max: boot.cmdline_max_size.saturating_sub(1),
        });
    }
    load_cmdline(mem, GuestAddress(boot.cmdline_start), cmdline).map_err(|source| {
        Error::CmdlineWrite {
            addr: boot.cmdline_start,
            source,
        }
    })?;

    match kernel.protocol {
        BootProtocol::Linux64 => {
            write_zero_page(mem, boot, linux64_header(), cmdline_len, initrd, memory_map)
        }
        BootProtocol::BzImage => {
            let mut hdr = kernel
                .setup_header
                .ok_or(Error::MissingSetupHeader(kernel.protocol))?;
            // From protocol 2.06 the kernel states the longest command line it takes.
            let max = hdr.cmdline_size as usize;
            if max != 0 && cmdline_len > max {
                return Err(Error::CmdlineTooLong {
                    len: cmdline_len,
                    max,
                });
            }
            hdr.type_of_loader = KERNEL_LOADER_OTHER;
            write_zero_page(mem, boot, hdr, cmdline_len, initrd, memory_map)
        }
        BootProtocol::Pvh => write_pvh_start_info(mem, boot, initrd, memory_map),
    }
}

/// The setup header for an ELF kernel entered through the 64-bit Linux boot protocol, which has
/// no header of its own: just what the kernel checks.
fn linux64_header() -> setup_header {
    setup_header {
        boot_flag: KERNEL_BOOT_FLAG_MAGIC,
        header: KERNEL_HDR_MAGIC,
        type_of_loader: KERNEL_LOADER_OTHER,
        kernel_alignment: KERNEL_MIN_ALIGNMENT_BYTES,
        ..Default::default()
    }
}

fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    boot: &BootLayout,
    hdr: setup_header,
    cmdline_len: usize,
    initrd: Option<InitrdRegion>,
    map: &[MemoryMapEntry],
) -> Result<()> {
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.cmd_line_ptr = addr32("command line (zero page)", boot.cmdline_start)?;
    // Shorter than boot.cmdline_max_size, checked by the caller.
    params.hdr.cmdline_size =
        u32::try_from(cmdline_len + 1).map_err(|_| Error::CmdlineTooLong {
            len: cmdline_len,
            max: u32::MAX as usize - 1,
        })?;
    if let Some(initrd) = initrd {
        // The high halves go to the ext_ fields (protocol 2.12); zero below 4 GiB.
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    if map.len() > params.e820_table.len() {
        return Err(Error::TooManyMemoryMapEntries {
            entries: map.len(),
            max: params.e820_table.len(),
            what: "zero page's e820 table",
        });
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind.e820_type(),
        };
    }
    // Checked above against the 128-entry table.
    params.e820_entries = map.len() as u8;

    let bp = BootParams::new(&params, GuestAddress(boot.zero_page_start));
    LinuxBootConfigurator::write_bootparams(&bp, mem).map_err(|source| Error::BootConfig {
        what: "zero page (boot_params)",
        addr: boot.zero_page_start,
        source,
    })
}

fn write_pvh_start_info<M: GuestMemoryBackend>(
    mem: &M,
    boot: &BootLayout,
    initrd: Option<InitrdRegion>,
    map: &[MemoryMapEntry],
) -> Result<()> {
    if map.len() > boot.pvh_memmap_max_entries {
        return Err(Error::TooManyMemoryMapEntries {
            entries: map.len(),
            max: boot.pvh_memmap_max_entries,
            what: "PVH memory map area",
        });
    }
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind.e820_type(),
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: PVH_START_INFO_VERSION,
        cmdline_paddr: boot.cmdline_start,
        memmap_paddr: boot.pvh_memmap_start,
        memmap_entries: memmap.len() as u32,
        // No ACPI tables: the kernel finds the CPUs in the MP table.
        rsdp_paddr: 0,
        ..Default::default()
    };
    let module = initrd.map(|initrd| hvm_modlist_entry {
        paddr: initrd.addr,
        size: initrd.size,
        cmdline_paddr: 0,
        reserved: 0,
    });
    if module.is_some() {
        info.nr_modules = 1;
        info.modlist_paddr = boot.pvh_modlist_start;
    }

    let mut bp = BootParams::new(&info, GuestAddress(boot.pvh_info_start));
    bp.set_sections(&memmap, GuestAddress(boot.pvh_memmap_start));
    if let Some(module) = module {
        bp.set_modules(&[module], GuestAddress(boot.pvh_modlist_start));
    }
    PvhBootConfigurator::write_bootparams(&bp, mem).map_err(|source| Error::BootConfig {
        what: "PVH start info",
        addr: boot.pvh_info_start,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;
    use vmm_memory::{layout, GuestMemoryMmap};

    const MIB: u64 = 1 << 20;

    fn kernel(protocol: BootProtocol, setup_header: Option<setup_header>) -> LoadedKernel {
        LoadedKernel {
            protocol,
            entry: 0x100_0000,
            kernel_end: 0x200_0000,
            setup_header,
        }
    }

    /// `configure_boot` as the VMM calls it: its own layout, the memory map of `ram_bytes`.
    fn boot(
        mem: &GuestMemoryMmap,
        kernel: &LoadedKernel,
        cmdline: &Cmdline,
        initrd: Option<InitrdRegion>,
        ram_bytes: u64,
    ) -> Result<()> {
        let map = layout::memory_map(ram_bytes);
        configure_boot(mem, &BootLayout::default(), kernel, cmdline, initrd, &map)
    }

    fn cmdline(base: &str, append: &[&str]) -> Cmdline {
        crate::build_cmdline(base, append, layout::CMDLINE_MAX_SIZE).unwrap()
    }

    fn setup(protocol: BootProtocol, initrd: Option<InitrdRegion>) -> GuestMemoryMmap {
        let mem = vmm_memory::create_guest_memory(64 * MIB, Default::default()).unwrap();
        let cmdline = cmdline(crate::tests_cmdline(), &["quiet"]);
        boot(&mem, &kernel(protocol, None), &cmdline, initrd, 64 * MIB).unwrap();
        mem
    }

    #[test]
    fn linux64_zero_page() {
        let initrd = InitrdRegion {
            addr: 0x300_0000,
            size: 12345,
        };
        let mem = setup(BootProtocol::Linux64, Some(initrd));
        let p: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(p.hdr.type_of_loader, 0xff);
        assert_eq!({ p.hdr.kernel_alignment }, 0x100_0000);
        assert_eq!({ p.hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        let expected_cmdline = format!("{} quiet", crate::tests_cmdline());
        assert_eq!({ p.hdr.cmdline_size } as usize, expected_cmdline.len() + 1);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 12345);
        let map = layout::memory_map(64 * MIB);
        assert_eq!(p.e820_entries as usize, map.len());
        for (e, m) in p.e820_table.iter().zip(&map) {
            assert_eq!(
                ({ e.addr }, { e.size }, { e.r#type }),
                (m.addr, m.size, m.kind.e820_type())
            );
        }
        let mut line = vec![0u8; expected_cmdline.len() + 1];
        mem.read_slice(&mut line, GuestAddress(layout::CMDLINE_START))
            .unwrap();
        assert_eq!(&line[..expected_cmdline.len()], expected_cmdline.as_bytes());
        assert_eq!(line[expected_cmdline.len()], 0);
    }

    #[test]
    fn bzimage_keeps_the_kernel_header() {
        let mem = vmm_memory::create_guest_memory(64 * MIB, Default::default()).unwrap();
        let hdr = setup_header {
            header: KERNEL_HDR_MAGIC,
            version: 0x020f,
            code32_start: 0x10_0000,
            init_size: 0x123_4000,
            cmdline_size: 2047,
            ..Default::default()
        };
        let cmdline = cmdline("console=ttyS0", &[]);
        let k = kernel(BootProtocol::BzImage, Some(hdr));
        boot(&mem, &k, &cmdline, None, 64 * MIB).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.init_size }, 0x123_4000);
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!(p.hdr.type_of_loader, 0xff);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        assert_eq!({ p.hdr.cmdline_size }, 14);

        // The kernel's own command line limit applies.
        let short = setup_header {
            cmdline_size: 5,
            ..hdr
        };
        let k = kernel(BootProtocol::BzImage, Some(short));
        assert!(matches!(
            boot(&mem, &k, &cmdline, None, 64 * MIB),
            Err(Error::CmdlineTooLong { len: 13, max: 5 })
        ));
        let k = kernel(BootProtocol::BzImage, None);
        assert!(matches!(
            boot(&mem, &k, &cmdline, None, 64 * MIB),
            Err(Error::MissingSetupHeader(BootProtocol::BzImage))
        ));
    }

    #[test]
    fn pvh_start_info() {
        let initrd = InitrdRegion {
            addr: 0x300_0000,
            size: 4096,
        };
        let mem = setup(BootProtocol::Pvh, Some(initrd));
        let info: hvm_start_info = mem.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, layout::CMDLINE_START);
        assert_eq!(info.rsdp_paddr, 0);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, layout::PVH_MODLIST_START);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 4096));
        let map = layout::memory_map(64 * MIB);
        assert_eq!(info.memmap_entries as usize, map.len());
        assert_eq!(info.memmap_paddr, layout::PVH_MEMMAP_START);
        for (i, m) in map.iter().enumerate() {
            let e: hvm_memmap_table_entry = mem
                .read_obj(GuestAddress(info.memmap_paddr + 24 * i as u64))
                .unwrap();
            assert_eq!(
                (e.addr, e.size, e.type_),
                (m.addr, m.size, m.kind.e820_type())
            );
        }
        // Nothing Linux-specific is written for PVH.
        let p: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.header }, 0);

        let mem = setup(BootProtocol::Pvh, None);
        let info: hvm_start_info = mem.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }

    #[test]
    fn memory_map_ram_must_be_in_guest_memory() {
        let mem = vmm_memory::create_guest_memory(64 * MIB, Default::default()).unwrap();
        let cmdline = cmdline(crate::tests_cmdline(), &[]);
        let k = kernel(BootProtocol::Linux64, None);
        let err = boot(&mem, &k, &cmdline, None, 128 * MIB).unwrap_err();
        assert!(
            matches!(err, Error::MemoryMapNotBacked { addr, size }
                if addr == layout::HIGH_RAM_START && size == 127 * MIB),
            "{err}"
        );
        assert!(err.to_string().contains("0x100000..0x8000000"), "{err}");
        // Less RAM than the memory has is the caller's choice.
        boot(&mem, &k, &cmdline, None, 32 * MIB).unwrap();
    }

    /// Another memory type (no dirty bitmap) and another layout: everything lands where the
    /// layout says.
    #[test]
    fn a_foreign_memory_and_layout() {
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0xa_0000),
            (GuestAddress(0x10_0000), 0xf0_0000),
        ])
        .unwrap();
        let custom = BootLayout {
            cmdline_start: 0x4_0000,
            cmdline_max_size: 512,
            zero_page_start: 0x1_0000,
            pvh_info_start: 0x2_0000,
            pvh_modlist_start: 0x2_1000,
            pvh_memmap_start: 0x2_2000,
            pvh_memmap_max_entries: 2,
            ..BootLayout::default()
        };
        let map = [
            MemoryMapEntry {
                addr: 0,
                size: 0xa_0000,
                kind: MemoryKind::Ram,
            },
            MemoryMapEntry {
                addr: 0x10_0000,
                size: 0xf0_0000,
                kind: MemoryKind::Ram,
            },
        ];
        let cmdline = cmdline("console=ttyS0", &[]);
        let initrd = InitrdRegion {
            addr: 0x80_0000,
            size: 100,
        };
        let k = kernel(BootProtocol::Linux64, None);
        configure_boot(&mem, &custom, &k, &cmdline, Some(initrd), &map).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(0x1_0000)).unwrap();
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x4_0000);
        assert_eq!({ p.hdr.ramdisk_image }, 0x80_0000);
        assert_eq!(p.e820_entries, 2);
        assert_eq!(
            ({ p.e820_table[1].addr }, { p.e820_table[1].size }),
            (0x10_0000, 0xf0_0000)
        );
        let text: [u8; 13] = mem.read_obj(GuestAddress(0x4_0000)).unwrap();
        assert_eq!(&text, b"console=ttyS0");

        let k = kernel(BootProtocol::Pvh, None);
        configure_boot(&mem, &custom, &k, &cmdline, Some(initrd), &map).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(0x2_0000)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(
            (info.cmdline_paddr, info.modlist_paddr, info.memmap_paddr),
            (0x4_0000, 0x2_1000, 0x2_2000)
        );
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(0x2_1000)).unwrap();
        assert_eq!((module.paddr, module.size), (0x80_0000, 100));
        let last: hvm_memmap_table_entry = mem.read_obj(GuestAddress(0x2_2000 + 24)).unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (0x10_0000, 0xf0_0000, 1)
        );

        // The layout's limits apply.
        let three = [map[0], map[1], map[1]];
        assert!(matches!(
            configure_boot(&mem, &custom, &k, &cmdline, None, &three),
            Err(Error::TooManyMemoryMapEntries {
                entries: 3,
                max: 2,
                ..
            })
        ));
        let long = self::cmdline(&"x".repeat(600), &[]);
        assert!(matches!(
            configure_boot(&mem, &custom, &k, &long, None, &map),
            Err(Error::CmdlineTooLong { len: 600, max: 511 })
        ));
        // The zero page holds the command line's address in 32 bits.
        let high = BootLayout {
            cmdline_start: 1 << 32,
            ..custom
        };
        let mem = vmm_memory::create_guest_memory(5 << 30, Default::default()).unwrap();
        let k = kernel(BootProtocol::Linux64, None);
        assert!(matches!(
            configure_boot(&mem, &high, &k, &cmdline, None, &map),
            Err(Error::AddressAbove4G { addr, .. }) if addr == 1 << 32
        ));
    }

    #[test]
    fn a_foreign_oversized_cmdline_is_refused() {
        let mem = vmm_memory::create_guest_memory(64 * MIB, Default::default()).unwrap();
        let mut cmdline = Cmdline::new(10_000).unwrap();
        cmdline.insert_str("x".repeat(3000)).unwrap();
        let k = kernel(BootProtocol::Pvh, None);
        assert!(matches!(
            boot(&mem, &k, &cmdline, None, 64 * MIB),
            Err(Error::CmdlineTooLong {
                len: 3000,
                max: 2047
            })
        ));
    }
}
