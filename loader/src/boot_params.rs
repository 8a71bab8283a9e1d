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
use vm_memory::GuestAddress;
use vmm_memory::layout::{self, MemoryMapEntry};
use vmm_memory::GuestMemoryMmap;

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

// The PVH module list (one entry) must end before the memory map starts.
const _: () = assert!(
    layout::PVH_MODLIST_START + std::mem::size_of::<hvm_modlist_entry>() as u64
        <= layout::PVH_MEMMAP_START
);
const _: () = assert!(
    layout::PVH_INFO_START + std::mem::size_of::<hvm_start_info>() as u64
        <= layout::PVH_MODLIST_START
);

/// Writes the command line at [`layout::CMDLINE_START`], then the zero page (Linux64, BzImage)
/// or the PVH start info (Pvh) describing `ram_bytes` of RAM and the optional initrd.
pub fn configure_boot(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<InitrdRegion>,
    ram_bytes: u64,
) -> Result<()> {
    let mem_bytes = vmm_memory::ram_size(mem);
    if mem_bytes != ram_bytes {
        return Err(Error::RamSizeMismatch {
            ram_bytes,
            mem_bytes,
        });
    }
    // The Cmdline may come from elsewhere with a larger capacity than ours; the area is fixed.
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(Error::Cmdline)?
        .as_bytes()
        .len();
    if cmdline_len >= layout::CMDLINE_MAX_SIZE {
        return Err(Error::CmdlineTooLong {
            len: cmdline_len,
            max: layout::CMDLINE_MAX_SIZE - 1,
        });
    }
    load_cmdline(mem, GuestAddress(layout::CMDLINE_START), cmdline).map_err(|source| {
        Error::CmdlineWrite {
            addr: layout::CMDLINE_START,
            source,
        }
    })?;

    let map = layout::memory_map(ram_bytes);
    match kernel.protocol {
        BootProtocol::Linux64 => write_zero_page(mem, linux64_header(), cmdline_len, initrd, &map),
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
            write_zero_page(mem, hdr, cmdline_len, initrd, &map)
        }
        BootProtocol::Pvh => write_pvh_start_info(mem, initrd, &map),
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

fn write_zero_page(
    mem: &GuestMemoryMmap,
    hdr: setup_header,
    cmdline_len: usize,
    initrd: Option<InitrdRegion>,
    map: &[MemoryMapEntry],
) -> Result<()> {
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    // Both are below 4 GiB by the layout; the casts cannot truncate.
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = (cmdline_len + 1) as u32;
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

    let bp = BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&bp, mem).map_err(|source| Error::BootConfig {
        what: "zero page (boot_params)",
        addr: layout::ZERO_PAGE_START,
        source,
    })
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<InitrdRegion>,
    map: &[MemoryMapEntry],
) -> Result<()> {
    if map.len() > layout::PVH_MEMMAP_MAX_ENTRIES {
        return Err(Error::TooManyMemoryMapEntries {
            entries: map.len(),
            max: layout::PVH_MEMMAP_MAX_ENTRIES,
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
        cmdline_paddr: layout::CMDLINE_START,
        memmap_paddr: layout::PVH_MEMMAP_START,
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
        info.modlist_paddr = layout::PVH_MODLIST_START;
    }

    let mut bp = BootParams::new(&info, GuestAddress(layout::PVH_INFO_START));
    bp.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_START));
    if let Some(module) = module {
        bp.set_modules(&[module], GuestAddress(layout::PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&bp, mem).map_err(|source| Error::BootConfig {
        what: "PVH start info",
        addr: layout::PVH_INFO_START,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    const MIB: u64 = 1 << 20;

    fn kernel(protocol: BootProtocol, setup_header: Option<setup_header>) -> LoadedKernel {
        LoadedKernel {
            protocol,
            entry: 0x100_0000,
            kernel_end: 0x200_0000,
            setup_header,
        }
    }

    fn setup(protocol: BootProtocol, initrd: Option<InitrdRegion>) -> GuestMemoryMmap {
        let mem = vmm_memory::create_guest_memory(64 * MIB, Default::default()).unwrap();
        let cmdline = crate::build_cmdline(crate::tests_cmdline(), &["quiet"]).unwrap();
        configure_boot(&mem, &kernel(protocol, None), &cmdline, initrd, 64 * MIB).unwrap();
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
        let cmdline = crate::build_cmdline("console=ttyS0", &[]).unwrap();
        let k = kernel(BootProtocol::BzImage, Some(hdr));
        configure_boot(&mem, &k, &cmdline, None, 64 * MIB).unwrap();
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
            configure_boot(&mem, &k, &cmdline, None, 64 * MIB),
            Err(Error::CmdlineTooLong { len: 13, max: 5 })
        ));
        let k = kernel(BootProtocol::BzImage, None);
        assert!(matches!(
            configure_boot(&mem, &k, &cmdline, None, 64 * MIB),
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
    fn ram_size_must_match() {
        let mem = vmm_memory::create_guest_memory(64 * MIB, Default::default()).unwrap();
        let cmdline = crate::build_cmdline(crate::tests_cmdline(), &[]).unwrap();
        let k = kernel(BootProtocol::Linux64, None);
        assert!(matches!(
            configure_boot(&mem, &k, &cmdline, None, 128 * MIB),
            Err(Error::RamSizeMismatch { .. })
        ));
    }

    #[test]
    fn a_foreign_oversized_cmdline_is_refused() {
        let mem = vmm_memory::create_guest_memory(64 * MIB, Default::default()).unwrap();
        let mut cmdline = Cmdline::new(10_000).unwrap();
        cmdline.insert_str("x".repeat(3000)).unwrap();
        let k = kernel(BootProtocol::Pvh, None);
        assert!(matches!(
            configure_boot(&mem, &k, &cmdline, None, 64 * MIB),
            Err(Error::CmdlineTooLong {
                len: 3000,
                max: 2047
            })
        ));
    }
}
