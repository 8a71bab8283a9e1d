//! Loading the real shared guest kernels, and broken images derived from them.

mod common;
#[path = "../src/test_elf.rs"]
mod test_elf;

use std::io::{Cursor, Read};

use common::{memory, open_guest_file, TempFile, MIB};
use test_elf::ElfBuilder;
use vm_memory::{Bytes, GuestAddress};
use vmm_loader::{load_kernel, BootLayout, BootProtocol, ElfEntry, Error};

fn guest_bytes(name: &str, limit: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    open_guest_file(name)
        .take(limit as u64)
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

#[test]
fn vmlinux_boots_pvh_under_auto() {
    let mem = memory(64 * MIB);
    let k = load_kernel(
        &mem,
        &BootLayout::default(),
        &mut open_guest_file("vmlinux"),
        ElfEntry::Auto,
    )
    .unwrap();
    assert_eq!(k.protocol, BootProtocol::Pvh);
    assert_eq!(k.entry, 0x100_0500);
    // Four segments from 0x1000000 to 0x2016000, the last with bss.
    assert_eq!(k.kernel_end, 0x201_6000);
    assert_eq!(k.setup_header, None);
    // The first kernel bytes arrived (ELF segment 0 starts at file offset 0x200000).
    let file = guest_bytes("vmlinux", 0x20_0010);
    let mut loaded = [0u8; 16];
    mem.read_slice(&mut loaded, GuestAddress(0x100_0000))
        .unwrap();
    assert_eq!(loaded, file[0x20_0000..0x20_0010]);
}

#[test]
fn vmlinux_linux64_and_explicit_pvh() {
    let mem = memory(64 * MIB);
    let k = load_kernel(
        &mem,
        &BootLayout::default(),
        &mut open_guest_file("vmlinux"),
        ElfEntry::Linux64,
    )
    .unwrap();
    assert_eq!((k.protocol, k.entry), (BootProtocol::Linux64, 0x100_0000));
    let k = load_kernel(
        &mem,
        &BootLayout::default(),
        &mut open_guest_file("vmlinux"),
        ElfEntry::Pvh,
    )
    .unwrap();
    assert_eq!((k.protocol, k.entry), (BootProtocol::Pvh, 0x100_0500));
}

#[test]
fn bzimage_loads_with_its_setup_header() {
    let mem = memory(64 * MIB);
    let k = load_kernel(
        &mem,
        &BootLayout::default(),
        &mut open_guest_file("bzImage"),
        ElfEntry::Auto,
    )
    .unwrap();
    assert_eq!(k.protocol, BootProtocol::BzImage);
    assert_eq!(k.entry, 0x10_0200);
    let hdr = k.setup_header.expect("bzImage setup header");
    assert_eq!({ hdr.version }, 0x020f);
    assert_eq!({ hdr.code32_start }, 0x10_0000);
    // Not relocatable: decompresses at pref_address 0x1000000, init_size 0x13de000.
    assert_eq!(k.kernel_end, 0x100_0000 + 0x13d_e000);
    // The protected-mode payload follows (setup_sects + 1) * 512 = 16 KiB of setup.
    let file = guest_bytes("bzImage", 0x4010);
    let mut loaded = [0u8; 16];
    mem.read_slice(&mut loaded, GuestAddress(0x10_0000))
        .unwrap();
    assert_eq!(loaded, file[0x4000..0x4010]);
}

#[test]
fn debian_cloud_kernel_is_a_bzimage() {
    let mem = memory(128 * MIB);
    let k = load_kernel(
        &mem,
        &BootLayout::default(),
        &mut open_guest_file("debian-cloud-vmlinuz"),
        ElfEntry::Auto,
    )
    .unwrap();
    assert_eq!(k.protocol, BootProtocol::BzImage);
    assert_eq!(k.entry, 0x10_0200);
    // Relocatable, but never below pref_address: 0x1000000 + init_size 0x3378000.
    assert_eq!(k.kernel_end, 0x437_8000);

    // Its decompression buffer does not fit in 64 MiB: refused before anything is written.
    let mem = memory(64 * MIB);
    let err = load_kernel(
        &mem,
        &BootLayout::default(),
        &mut open_guest_file("debian-cloud-vmlinuz"),
        ElfEntry::Auto,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::KernelDoesNotFit { end: 0x437_8000, ram_end, .. } if ram_end == 64 * MIB),
        "{err}"
    );
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0x10_0000)).unwrap(), 0);
}

#[test]
fn tiny_pvh_elf() {
    let mem = memory(64 * MIB);
    let k = load_kernel(
        &mem,
        &BootLayout::default(),
        &mut open_guest_file("tiny-pvh.elf"),
        ElfEntry::Auto,
    )
    .unwrap();
    assert_eq!((k.protocol, k.entry), (BootProtocol::Pvh, 0x10_0000));
    assert_eq!(k.kernel_end, 0x10_0090);
}

#[test]
fn kernels_that_do_not_fit_in_8_mib() {
    for (name, entry) in [
        ("vmlinux", ElfEntry::Auto),
        ("vmlinux", ElfEntry::Linux64),
        ("bzImage", ElfEntry::Auto),
        ("debian-cloud-vmlinuz", ElfEntry::Auto),
    ] {
        let mem = memory(8 * MIB);
        let err = load_kernel(
            &mem,
            &BootLayout::default(),
            &mut open_guest_file(name),
            entry,
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::KernelDoesNotFit { ram_end, .. } if ram_end == 8 * MIB),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("more memory"), "{err}");
    }
}

#[test]
fn truncated_real_kernels() {
    let mem = memory(64 * MIB);
    let head = guest_bytes("vmlinux", 100);
    let err = load_kernel(
        &mem,
        &BootLayout::default(),
        &mut Cursor::new(&head),
        ElfEntry::Auto,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ElfTruncated {
                what: "program header table",
                size: 100,
                ..
            }
        ),
        "{err}"
    );
    // Cut inside the first segment.
    let head = guest_bytes("vmlinux", 0x30_0000);
    let err = load_kernel(
        &mem,
        &BootLayout::default(),
        &mut Cursor::new(&head),
        ElfEntry::Auto,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ElfTruncated {
                what: "loadable segment",
                ..
            }
        ),
        "{err}"
    );

    let head = guest_bytes("bzImage", 4096);
    let err = load_kernel(
        &mem,
        &BootLayout::default(),
        &mut Cursor::new(&head),
        ElfEntry::Auto,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BzImageTruncated {
                size: 4096,
                needed: 3_535_872
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_files() {
    let mem = memory(16 * MIB);
    let empty = TempFile::new("empty", b"");
    assert!(matches!(
        load_kernel(
            &mem,
            &BootLayout::default(),
            &mut empty.open(),
            ElfEntry::Auto
        ),
        Err(Error::EmptyKernel)
    ));

    let text = TempFile::new(
        "text",
        b"this is a README, not a kernel\n".repeat(40).as_slice(),
    );
    let err = load_kernel(
        &mem,
        &BootLayout::default(),
        &mut text.open(),
        ElfEntry::Auto,
    )
    .unwrap_err();
    assert!(matches!(err, Error::NotAKernel { size: 1240, .. }), "{err}");

    let mut state = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let random = TempFile::new("random", &random);
    assert!(matches!(
        load_kernel(
            &mem,
            &BootLayout::default(),
            &mut random.open(),
            ElfEntry::Auto
        ),
        Err(Error::NotAKernel { .. })
    ));

    // A hand-made ELF cut at every length: always an error, never a panic.
    let elf = ElfBuilder::new(0x20_0000).pvh_entry(0x20_0004).build();
    for len in 1..elf.len() {
        let result = load_kernel(
            &mem,
            &BootLayout::default(),
            &mut Cursor::new(&elf[..len]),
            ElfEntry::Auto,
        );
        assert!(result.is_err(), "{len}");
    }
    let truncated = TempFile::new("elf", &elf[..100]);
    assert!(matches!(
        load_kernel(
            &mem,
            &BootLayout::default(),
            &mut truncated.open(),
            ElfEntry::Auto
        ),
        Err(Error::ElfTruncated { .. })
    ));
}
