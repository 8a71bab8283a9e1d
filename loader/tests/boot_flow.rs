//! The whole pre-vCPU boot path as the VMM runs it: kernel, initrd, command line, boot
//! structures, MP table; then the structures read back as the guest would.

mod common;

use std::io::Cursor;

use common::{guest_file, memory, open_guest_file, MIB};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress};
use vmm_loader::{
    build_cmdline, configure_boot, load_initrd, load_kernel, setup_acpi, setup_mptable, BootLayout,
    BootProtocol, ElfEntry, Error, InitrdRegion,
};
use vmm_memory::layout;

/// The guest command line of these tests (a VMM passes its own default or the user's).
const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off 8250.nr_uarts=1";

fn initrd_size() -> u64 {
    std::fs::metadata(guest_file("initramfs.cpio.gz"))
        .unwrap()
        .len()
}

fn read_cmdline(mem: &vmm_memory::GuestMemoryMmap, addr: u64) -> String {
    let mut bytes = vec![0u8; BootLayout::default().cmdline_max_size];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    let end = bytes.iter().position(|&b| b == 0).unwrap();
    String::from_utf8(bytes[..end].to_vec()).unwrap()
}

#[test]
fn vmlinux_pvh_with_initrd() {
    let ram = 128 * MIB;
    let mem = memory(ram);
    let boot = BootLayout::default();
    let kernel = load_kernel(&mem, &boot, &mut open_guest_file("vmlinux"), ElfEntry::Auto).unwrap();
    let size = initrd_size();
    let initrd = load_initrd(
        &mem,
        &boot,
        &mut open_guest_file("initramfs.cpio.gz"),
        size,
        &kernel,
    )
    .unwrap();
    assert_eq!(initrd.addr % 4096, 0);
    assert!(initrd.addr >= kernel.kernel_end);
    assert!(initrd.addr + size <= ram && ram - (initrd.addr + size) < 4096);
    // gzip magic at the start of the loaded initrd.
    let magic: [u8; 2] = mem.read_obj(GuestAddress(initrd.addr)).unwrap();
    assert_eq!(magic, [0x1f, 0x8b]);

    let cmdline =
        build_cmdline(CMDLINE, &["quiet", "guest.test=smp"], boot.cmdline_max_size).unwrap();
    configure_boot(
        &mem,
        &boot,
        &kernel,
        &cmdline,
        Some(initrd),
        &layout::memory_map(ram),
    )
    .unwrap();
    setup_mptable(&mem, &boot, 2).unwrap();
    setup_acpi(&mem, &boot, 2, &[]).unwrap();

    let info: hvm_start_info = mem.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
    assert_eq!(info.magic, 0x336e_c578);
    assert_eq!(info.version, 1);
    assert_eq!(
        read_cmdline(&mem, info.cmdline_paddr),
        format!("{} quiet guest.test=smp", CMDLINE)
    );
    assert_eq!(info.nr_modules, 1);
    let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
    assert_eq!((module.paddr, module.size), (initrd.addr, size));
    let map = layout::memory_map(ram);
    assert_eq!(info.memmap_entries as usize, map.len());
    for (i, expected) in map.iter().enumerate() {
        let e: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr + 24 * i as u64))
            .unwrap();
        assert_eq!(e.addr, expected.addr);
        assert_eq!(e.size, expected.size);
        assert_eq!(e.type_, expected.kind.e820_type());
    }
    let fp: [u8; 4] = mem.read_obj(GuestAddress(layout::EBDA_START)).unwrap();
    assert_eq!(&fp, b"_MP_");
    let rsdp: [u8; 8] = mem.read_obj(GuestAddress(layout::ACPI_START)).unwrap();
    assert_eq!(&rsdp, b"RSD PTR ");
}

#[test]
fn bzimage_zero_page_with_initrd() {
    let ram = 256 * MIB;
    let mem = memory(ram);
    let boot = BootLayout::default();
    let kernel = load_kernel(&mem, &boot, &mut open_guest_file("bzImage"), ElfEntry::Auto).unwrap();
    assert_eq!(kernel.protocol, BootProtocol::BzImage);
    let size = initrd_size();
    let initrd = load_initrd(
        &mem,
        &boot,
        &mut open_guest_file("initramfs.cpio.gz"),
        size,
        &kernel,
    )
    .unwrap();
    let cmdline = build_cmdline(
        "console=ttyS0 panic=1",
        &["root=/dev/vda"],
        boot.cmdline_max_size,
    )
    .unwrap();
    configure_boot(
        &mem,
        &boot,
        &kernel,
        &cmdline,
        Some(initrd),
        &layout::memory_map(ram),
    )
    .unwrap();

    let p: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
    let hdr = p.hdr;
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!({ hdr.version }, 0x020f);
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!({ hdr.cmd_line_ptr } as u64, layout::CMDLINE_START);
    assert_eq!(
        read_cmdline(&mem, layout::CMDLINE_START),
        "console=ttyS0 panic=1 root=/dev/vda"
    );
    assert_eq!({ hdr.ramdisk_image } as u64, initrd.addr);
    assert_eq!({ hdr.ramdisk_size } as u64, size);
    assert!(initrd.addr + size - 1 <= u64::from(hdr.initrd_addr_max));
    let map = layout::memory_map(ram);
    assert_eq!(p.e820_entries as usize, map.len());
    let table = p.e820_table;
    for (e, expected) in table.iter().zip(&map) {
        assert_eq!({ e.addr }, expected.addr);
        assert_eq!({ e.size }, expected.size);
        assert_eq!({ e.r#type }, expected.kind.e820_type());
    }
}

#[test]
fn linux64_e820_above_4g() {
    let ram = 5 << 30;
    let mem = memory(ram);
    let boot = BootLayout::default();
    let kernel = load_kernel(
        &mem,
        &boot,
        &mut open_guest_file("vmlinux"),
        ElfEntry::Linux64,
    )
    .unwrap();
    let cmdline = build_cmdline(CMDLINE, &[], boot.cmdline_max_size).unwrap();
    configure_boot(
        &mem,
        &boot,
        &kernel,
        &cmdline,
        None,
        &layout::memory_map(ram),
    )
    .unwrap();
    let p: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
    let map = layout::memory_map(ram);
    assert_eq!(p.e820_entries as usize, map.len());
    let table = p.e820_table;
    let last = table[map.len() - 1];
    assert_eq!({ last.addr }, layout::RAM_ABOVE_4G_START);
    assert_eq!({ last.size }, ram - layout::MMIO_GAP_START);
    assert_eq!({ last.r#type }, 1);
    assert_eq!({ p.hdr.ramdisk_image }, 0);
    assert_eq!({ p.hdr.ramdisk_size }, 0);

    // The initrd stays below the MMIO gap even with RAM above 4 GiB.
    let initrd = load_initrd(
        &mem,
        &boot,
        &mut Cursor::new(vec![1u8; 8192]),
        8192,
        &kernel,
    )
    .unwrap();
    assert_eq!(initrd.addr, layout::MMIO_GAP_START - 8192);
}

#[test]
fn initrd_errors() {
    let ram = 64 * MIB;
    let mem = memory(ram);
    let boot = BootLayout::default();
    let kernel = load_kernel(&mem, &boot, &mut open_guest_file("vmlinux"), ElfEntry::Auto).unwrap();
    // 64 MiB minus the kernel's 0x2016000 leaves less than 32 MiB.
    let big = 32 * MIB;
    let err = load_initrd(&mem, &boot, &mut Cursor::new(vec![0u8; 16]), big, &kernel).unwrap_err();
    assert!(
        matches!(err, Error::InitrdDoesNotFit { size, available } if size == big && available == ram - 0x201_6000),
        "{err}"
    );
    let err = load_initrd(&mem, &boot, &mut Cursor::new(vec![0u8; 16]), 4096, &kernel).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InitrdShortRead {
                read: 16,
                size: 4096
            }
        ),
        "{err}"
    );
    let region: InitrdRegion =
        load_initrd(&mem, &boot, &mut Cursor::new(vec![9u8; 100]), 100, &kernel).unwrap();
    assert_eq!(region.addr, ram - 4096);
}
