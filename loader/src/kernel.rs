//! Kernel image loading: format detection, our own sanity checks, then linux-loader's loaders.
//!
//! linux-loader's `Elf` and `BzImage` do the copying and find the PVH note, but they accept a
//! 32-bit ELF until some later field looks wrong, do not count segments without file contents
//! (pure bss) in `kernel_end`, and for a bzImage report only the compressed payload, not the
//! buffer the kernel decompresses into. So we first parse the headers ourselves (read-only) and
//! reject what cannot boot before anything is written to guest memory.

use std::io::{self, Read, Seek, SeekFrom};

use linux_loader::bootparam::{self, setup_header};
use linux_loader::elf::{
    Elf64_Ehdr, Elf64_Phdr, EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_X86_64, PT_LOAD,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::boot_layout::BootLayout;
use crate::error::{Error, Result};

/// How the vCPU enters the loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// 64-bit Linux boot protocol: long mode, RSI = zero page, at the ELF entry.
    Linux64,
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`, at the PVH note's entry.
    Pvh,
    /// bzImage: 64-bit Linux boot protocol at the loaded image + 0x200, zero page built from the
    /// kernel's own setup header.
    BzImage,
}

/// Which entry point to use for an ELF kernel (bzImages have only one).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ElfEntry {
    /// PVH when the kernel has a PVH note, else the 64-bit Linux entry.
    #[default]
    Auto,
    /// Always the 64-bit Linux entry (`e_entry`).
    Linux64,
    /// Always PVH; an error when the kernel has no PVH note.
    Pvh,
}

/// What [`load_kernel`] put into guest memory, and how to start it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadedKernel {
    /// The boot protocol to use.
    pub protocol: BootProtocol,
    /// Guest physical address of the entry point for `protocol`.
    pub entry: u64,
    /// End (exclusive) of the memory the kernel needs before it reads the memory map: its
    /// segments including bss, or for a bzImage its decompression buffer. The initrd goes above.
    pub kernel_end: u64,
    /// The bzImage's setup header (with `code32_start` set to where it was loaded).
    pub setup_header: Option<setup_header>,
}

/// Where the 64-bit entry point sits in a loaded bzImage payload (Linux boot protocol).
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// bzImage setup header location and magic values (Documentation/arch/x86/boot.rst).
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
const BOOT_FLAG_OFFSET: usize = 0x1fe;
const HDRS_OFFSET: usize = 0x202;
const BOOT_FLAG: [u8; 2] = [0x55, 0xaa];
const HDRS_MAGIC: &[u8; 4] = b"HdrS";
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Oldest boot protocol we accept: 2.06 gives cmdline_size and a trustworthy 32-bit syssize.
const MIN_BOOT_PROTOCOL: u16 = 0x0206;
/// From 2.10 the header has pref_address and init_size; from 2.12 xloadflags.
const PROTOCOL_2_10: u16 = 0x020a;
const PROTOCOL_2_12: u16 = 0x020c;

/// Loads an ELF `vmlinux` or a bzImage into `mem`, detecting the format from its magic bytes.
///
/// The kernel must load at or above `boot.high_ram_start` and end below
/// [`BootLayout::low_ram_end`] (bss and decompression buffer included).
/// Format, truncation and size problems are found before anything is written to guest memory.
/// A missing PVH note or an entry point outside the kernel shows only after the copy, because
/// linux-loader finds the PVH note while loading; the caller discards the VM's memory anyway.
pub fn load_kernel<M: GuestMemoryBackend, F: Read + Seek + ReadVolatile>(
    mem: &M,
    boot: &BootLayout,
    image: &mut F,
    entry: ElfEntry,
) -> Result<LoadedKernel> {
    let size = image.seek(SeekFrom::End(0)).map_err(|source| Error::Io {
        what: "seeking to the end of the kernel image",
        source,
    })?;
    if size == 0 {
        return Err(Error::EmptyKernel);
    }
    let mut head = [0u8; HDRS_OFFSET + HDRS_MAGIC.len()];
    let got = read_at(image, 0, &mut head, "reading the kernel image header")?;
    let head = &head[..got];

    if head.starts_with(ELF_MAGIC) {
        load_elf(mem, boot, image, size, entry)
    } else if head.get(BOOT_FLAG_OFFSET..BOOT_FLAG_OFFSET + 2) == Some(&BOOT_FLAG[..])
        && head.get(HDRS_OFFSET..HDRS_OFFSET + 4) == Some(&HDRS_MAGIC[..])
    {
        load_bzimage(mem, boot, image, size)
    } else {
        Err(Error::NotAKernel {
            size,
            magic: head.iter().take(4).copied().collect(),
        })
    }
}

fn load_elf<M: GuestMemoryBackend, F: Read + Seek + ReadVolatile>(
    mem: &M,
    boot: &BootLayout,
    image: &mut F,
    size: u64,
    entry: ElfEntry,
) -> Result<LoadedKernel> {
    let (ehdr, start, end) = check_elf(image, size, boot.high_ram_start, boot.low_ram_end(mem))?;

    let result = Elf::load(mem, None, image, Some(GuestAddress(boot.high_ram_start)))
        .map_err(|source| Error::ElfLoad { size, source })?;
    // linux-loader keeps the answer of the *last* PT_NOTE segment it parsed; vmlinux has one.
    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
        PvhBootCapability::PvhEntryNotPresent | PvhBootCapability::PvhEntryIgnored => None,
    };
    let (protocol, entry) = match (entry, pvh_entry) {
        (ElfEntry::Auto | ElfEntry::Pvh, Some(addr)) => (BootProtocol::Pvh, addr),
        (ElfEntry::Pvh, None) => return Err(Error::NoPvhNote),
        (ElfEntry::Auto | ElfEntry::Linux64, _) => (BootProtocol::Linux64, ehdr.e_entry),
    };
    if !(start..end).contains(&entry) {
        return Err(Error::EntryOutsideKernel {
            protocol,
            entry,
            start,
            end,
        });
    }
    Ok(LoadedKernel {
        protocol,
        entry,
        kernel_end: end.max(result.kernel_end),
        setup_header: None,
    })
}

/// Validates an ELF image without touching guest memory; returns its header and the guest
/// range its loadable segments cover (bss included), which must lie in `ram_start..ram_end`.
fn check_elf<F: Read + Seek>(
    image: &mut F,
    size: u64,
    ram_start: u64,
    ram_end: u64,
) -> Result<(Elf64_Ehdr, u64, u64)> {
    let ehdr_len = std::mem::size_of::<Elf64_Ehdr>() as u64;
    let truncated = |what, offset, len| Error::ElfTruncated {
        what,
        offset,
        len,
        size,
    };
    if size < ehdr_len {
        return Err(truncated("header", 0, ehdr_len));
    }
    let mut ehdr = Elf64_Ehdr::default();
    read_exact_at(image, 0, ehdr.as_mut_slice(), "reading the ELF header")?;
    if ehdr.e_ident[EI_CLASS] != ELFCLASS64 {
        return Err(Error::ElfClass(ehdr.e_ident[EI_CLASS]));
    }
    if ehdr.e_ident[EI_DATA] != ELFDATA2LSB {
        return Err(Error::ElfEndianness(ehdr.e_ident[EI_DATA]));
    }
    if ehdr.e_machine != EM_X86_64 {
        return Err(Error::ElfMachine(ehdr.e_machine));
    }
    let phdr_len = std::mem::size_of::<Elf64_Phdr>() as u64;
    if u64::from(ehdr.e_phentsize) != phdr_len {
        return Err(Error::ElfHeader {
            field: "e_phentsize",
            value: ehdr.e_phentsize.into(),
        });
    }
    if ehdr.e_phoff < ehdr_len {
        return Err(Error::ElfHeader {
            field: "e_phoff",
            value: ehdr.e_phoff,
        });
    }
    if ehdr.e_phnum == 0 {
        return Err(Error::ElfNoLoadSegment);
    }
    let table_len = u64::from(ehdr.e_phnum) * phdr_len;
    if !fits_in_file(ehdr.e_phoff, table_len, size) {
        return Err(truncated("program header table", ehdr.e_phoff, table_len));
    }

    let mut start = u64::MAX;
    let mut end = 0u64;
    for i in 0..u64::from(ehdr.e_phnum) {
        let mut phdr = Elf64_Phdr::default();
        // Cannot overflow: the whole table was checked to lie inside the file.
        let offset = ehdr.e_phoff + i * phdr_len;
        read_exact_at(
            image,
            offset,
            phdr.as_mut_slice(),
            "reading an ELF program header",
        )?;
        if phdr.p_type != PT_LOAD && phdr.p_type != linux_loader::elf::PT_NOTE {
            continue;
        }
        if !fits_in_file(phdr.p_offset, phdr.p_filesz, size) {
            let what = if phdr.p_type == PT_LOAD {
                "loadable segment"
            } else {
                "note segment"
            };
            return Err(truncated(what, phdr.p_offset, phdr.p_filesz));
        }
        // linux-loader skips PT_LOAD segments without file contents; so do we for the range
        // start, but their memory (bss) still has to exist.
        let mem_len = phdr.p_memsz.max(phdr.p_filesz);
        if phdr.p_type != PT_LOAD || mem_len == 0 {
            continue;
        }
        if phdr.p_paddr < ram_start {
            return Err(Error::SegmentBelowHighRam {
                addr: phdr.p_paddr,
                min: ram_start,
            });
        }
        let seg_end = phdr.p_paddr.saturating_add(mem_len);
        start = start.min(phdr.p_paddr);
        end = end.max(seg_end);
    }
    if end == 0 {
        return Err(Error::ElfNoLoadSegment);
    }
    if end > ram_end {
        return Err(Error::KernelDoesNotFit {
            start,
            end,
            ram_end,
        });
    }
    Ok((ehdr, start, end))
}

fn load_bzimage<M: GuestMemoryBackend, F: Read + Seek + ReadVolatile>(
    mem: &M,
    boot: &BootLayout,
    image: &mut F,
    size: u64,
) -> Result<LoadedKernel> {
    let header_end = SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>() as u64;
    if size < header_end {
        return Err(Error::BzImageTruncated {
            size,
            needed: header_end,
        });
    }
    let mut hdr = setup_header::default();
    read_exact_at(
        image,
        SETUP_HEADER_OFFSET,
        hdr.as_mut_slice(),
        "reading the bzImage setup header",
    )?;
    let version = hdr.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(Error::BzImageTooOld { version });
    }
    if hdr.loadflags & bootparam::LOADED_HIGH == 0 {
        return Err(Error::BzImageNotLoadableHigh {
            loadflags: hdr.loadflags,
        });
    }
    let xloadflags = hdr.xloadflags;
    if version >= PROTOCOL_2_12 && xloadflags & bootparam::XLF_KERNEL_64 == 0 {
        return Err(Error::BzImageNo64BitEntry { xloadflags });
    }
    // The real-mode setup is (setup_sects or 4, if 0) sectors after the boot sector.
    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        u64::from(hdr.setup_sects)
    };
    let setup_len = (setup_sects + 1) * 512;
    let payload_len = size.saturating_sub(setup_len);
    // The payload must at least reach past the 64-bit entry point we jump to.
    let needed = setup_len + (u64::from(hdr.syssize) * 16).max(BZIMAGE_64BIT_ENTRY_OFFSET + 1);
    if size < needed {
        return Err(Error::BzImageTruncated { size, needed });
    }
    let load = u64::from(hdr.code32_start);
    if load < boot.high_ram_start {
        return Err(Error::BzImageLoadAddress {
            addr: load,
            min: boot.high_ram_start,
        });
    }
    let kernel_end = bzimage_end(&hdr, load, payload_len);
    let ram_end = boot.low_ram_end(mem);
    if kernel_end > ram_end {
        return Err(Error::KernelDoesNotFit {
            start: load,
            end: kernel_end,
            ram_end,
        });
    }

    let result = BzImage::load(mem, None, image, Some(GuestAddress(boot.high_ram_start)))
        .map_err(|source| Error::BzImageLoad { size, source })?;
    Ok(LoadedKernel {
        protocol: BootProtocol::BzImage,
        entry: result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        kernel_end: kernel_end.max(result.kernel_end),
        setup_header: result.setup_header,
    })
}

/// End of the memory a bzImage needs before it reads the memory map: the payload as loaded, and
/// from protocol 2.10 the `init_size` bytes the decompressor uses from its run-time address
/// (`pref_address`, or for a relocatable kernel the load address aligned up, never below it).
fn bzimage_end(hdr: &setup_header, load: u64, payload_len: u64) -> u64 {
    let loaded_end = load.saturating_add(payload_len);
    if hdr.version < PROTOCOL_2_10 || hdr.init_size == 0 {
        return loaded_end;
    }
    let pref = hdr.pref_address;
    let run_start = if hdr.relocatable_kernel != 0 {
        let align = u64::from(hdr.kernel_alignment);
        let aligned = if align.is_power_of_two() {
            load.saturating_add(align - 1) & !(align - 1)
        } else {
            load
        };
        aligned.max(pref)
    } else {
        pref
    };
    loaded_end.max(run_start.saturating_add(u64::from(hdr.init_size)))
}

/// Whether `len` bytes at `offset` lie inside a file of `size` bytes.
fn fits_in_file(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

/// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
fn read_at<F: Read + Seek>(
    image: &mut F,
    offset: u64,
    buf: &mut [u8],
    what: &'static str,
) -> Result<usize> {
    image
        .seek(SeekFrom::Start(offset))
        .map_err(|source| Error::Io { what, source })?;
    let mut done = 0;
    while done < buf.len() {
        match image.read(&mut buf[done..]) {
            Ok(0) => break,
            // `min` guards against a reader that claims more than it was given room for.
            Ok(n) => done = done.saturating_add(n).min(buf.len()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(Error::Io { what, source }),
        }
    }
    Ok(done)
}

/// Reads exactly `buf.len()` bytes at `offset` (the caller has checked that they exist).
fn read_exact_at<F: Read + Seek>(
    image: &mut F,
    offset: u64,
    buf: &mut [u8],
    what: &'static str,
) -> Result<()> {
    let got = read_at(image, offset, buf, what)?;
    if got < buf.len() {
        return Err(Error::Io {
            what,
            source: io::ErrorKind::UnexpectedEof.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_elf::ElfBuilder;
    use std::io::Cursor;
    use vm_memory::Bytes;
    use vmm_memory::GuestMemoryMmap;

    fn memory(bytes: u64) -> GuestMemoryMmap {
        vmm_memory::create_guest_memory(bytes, Default::default()).unwrap()
    }

    /// `load_kernel` in the VMM's layout.
    fn load_kernel<F: Read + Seek + ReadVolatile>(
        mem: &GuestMemoryMmap,
        image: &mut F,
        entry: ElfEntry,
    ) -> Result<LoadedKernel> {
        super::load_kernel(mem, &BootLayout::default(), image, entry)
    }

    fn load(bytes: &[u8], entry: ElfEntry) -> Result<LoadedKernel> {
        load_kernel(&memory(64 << 20), &mut Cursor::new(bytes), entry)
    }

    #[test]
    fn elf_without_pvh_note_uses_the_linux_entry() {
        let elf = ElfBuilder::new(0x20_0000).build();
        let mem = memory(64 << 20);
        let k = load_kernel(&mem, &mut Cursor::new(&elf), ElfEntry::Auto).unwrap();
        assert_eq!(k.protocol, BootProtocol::Linux64);
        assert_eq!(k.entry, 0x20_0000);
        assert_eq!(k.setup_header, None);
        let code: [u8; 4] = mem.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_eq!(code, ElfBuilder::CODE[..4]);
        assert!(matches!(load(&elf, ElfEntry::Pvh), Err(Error::NoPvhNote)));
    }

    #[test]
    fn elf_with_pvh_note_prefers_pvh_under_auto() {
        let elf = ElfBuilder::new(0x20_0000).pvh_entry(0x20_0008).build();
        let k = load(&elf, ElfEntry::Auto).unwrap();
        assert_eq!((k.protocol, k.entry), (BootProtocol::Pvh, 0x20_0008));
        let k = load(&elf, ElfEntry::Pvh).unwrap();
        assert_eq!((k.protocol, k.entry), (BootProtocol::Pvh, 0x20_0008));
        let k = load(&elf, ElfEntry::Linux64).unwrap();
        assert_eq!((k.protocol, k.entry), (BootProtocol::Linux64, 0x20_0000));
    }

    #[test]
    fn kernel_end_counts_bss() {
        let elf = ElfBuilder::new(0x20_0000).bss(0x5000).build();
        let k = load(&elf, ElfEntry::Auto).unwrap();
        assert_eq!(
            k.kernel_end,
            0x20_0000 + ElfBuilder::CODE.len() as u64 + 0x5000
        );
    }

    #[test]
    fn rejects_32bit_big_endian_and_foreign_elf() {
        let mut elf = ElfBuilder::new(0x20_0000).build();
        elf[EI_CLASS] = 1;
        assert!(matches!(
            load(&elf, ElfEntry::Auto),
            Err(Error::ElfClass(1))
        ));
        let mut elf = ElfBuilder::new(0x20_0000).build();
        elf[EI_DATA] = 2;
        assert!(matches!(
            load(&elf, ElfEntry::Auto),
            Err(Error::ElfEndianness(2))
        ));
        let mut elf = ElfBuilder::new(0x20_0000).build();
        elf[18] = 183; // EM_AARCH64
        assert!(matches!(
            load(&elf, ElfEntry::Auto),
            Err(Error::ElfMachine(183))
        ));
    }

    #[test]
    fn rejects_truncated_elf() {
        let elf = ElfBuilder::new(0x20_0000).build();
        for len in [4, 63, 64, 100, elf.len() - 1] {
            let err = load(&elf[..len], ElfEntry::Auto).unwrap_err();
            assert!(matches!(err, Error::ElfTruncated { .. }), "{len}: {err}");
        }
    }

    #[test]
    fn rejects_segments_in_the_boot_area_and_entries_outside_the_kernel() {
        let elf = ElfBuilder::new(0x8000).build();
        assert!(matches!(
            load(&elf, ElfEntry::Auto),
            Err(Error::SegmentBelowHighRam { addr: 0x8000, .. })
        ));
        let elf = ElfBuilder::new(0x20_0000).entry(0x30_0000).build();
        assert!(matches!(
            load(&elf, ElfEntry::Auto),
            Err(Error::EntryOutsideKernel {
                entry: 0x30_0000,
                ..
            })
        ));
    }

    #[test]
    fn rejects_a_kernel_beyond_ram() {
        let elf = ElfBuilder::new(0x20_0000).bss(64 << 20).build();
        let err = load(&elf, ElfEntry::Auto).unwrap_err();
        assert!(
            matches!(err, Error::KernelDoesNotFit { end, ram_end, .. }
                if ram_end == 64 << 20 && end > ram_end),
            "{err}"
        );
        // Huge sizes saturate instead of overflowing.
        let elf = ElfBuilder::new(0x20_0000).bss(u64::MAX - 4).build();
        assert!(matches!(
            load(&elf, ElfEntry::Auto),
            Err(Error::KernelDoesNotFit { end: u64::MAX, .. })
        ));
    }

    #[test]
    fn a_foreign_memory_and_layout() {
        // Kernels from 8 MiB, below a gap at 24 MiB, in memory without a dirty bitmap.
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let boot = BootLayout {
            high_ram_start: 8 << 20,
            mmio_gap_start: 24 << 20,
            ..BootLayout::default()
        };
        let elf = ElfBuilder::new(0x20_0000).build();
        assert!(matches!(
            super::load_kernel(&mem, &boot, &mut Cursor::new(&elf), ElfEntry::Auto),
            Err(Error::SegmentBelowHighRam { addr: 0x20_0000, min }) if min == 8 << 20
        ));
        let elf = ElfBuilder::new(8 << 20).bss(16 << 20).build();
        assert!(matches!(
            super::load_kernel(&mem, &boot, &mut Cursor::new(&elf), ElfEntry::Auto),
            Err(Error::KernelDoesNotFit { ram_end, .. }) if ram_end == 24 << 20
        ));
        let elf = ElfBuilder::new(8 << 20).bss(0x1000).build();
        let k = super::load_kernel(&mem, &boot, &mut Cursor::new(&elf), ElfEntry::Auto).unwrap();
        assert_eq!(k.entry, 8 << 20);
        let code: [u8; 4] = mem.read_obj(GuestAddress(8 << 20)).unwrap();
        assert_eq!(code, ElfBuilder::CODE[..4]);
        let img = bzimage(0x020f, bootparam::LOADED_HIGH, bootparam::XLF_KERNEL_64);
        assert!(matches!(
            super::load_kernel(&mem, &boot, &mut Cursor::new(&img), ElfEntry::Auto),
            Err(Error::BzImageLoadAddress { addr: 0x10_0000, min }) if min == 8 << 20
        ));
    }

    #[test]
    fn rejects_empty_and_unknown_images() {
        assert!(matches!(load(b"", ElfEntry::Auto), Err(Error::EmptyKernel)));
        let err = load(b"#!/bin/sh\necho hello\n", ElfEntry::Auto).unwrap_err();
        assert!(matches!(err, Error::NotAKernel { size: 21, .. }), "{err}");
        assert!(err.to_string().contains("not a kernel"), "{err}");
    }

    fn bzimage(version: u16, loadflags: u8, xloadflags: u16) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512 + 0x1000];
        img[0x1f1] = 4; // setup_sects
        img[0x1f4..0x1f8].copy_from_slice(&(0x1000u32 / 16).to_le_bytes()); // syssize
        img[0x1fe..0x200].copy_from_slice(&BOOT_FLAG);
        img[0x202..0x206].copy_from_slice(HDRS_MAGIC);
        img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        img[0x211] = loadflags;
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        img[5 * 512] = 0xe9;
        img
    }

    #[test]
    fn loads_a_minimal_bzimage() {
        let img = bzimage(0x020f, bootparam::LOADED_HIGH, bootparam::XLF_KERNEL_64);
        let mem = memory(64 << 20);
        let k = load_kernel(&mem, &mut Cursor::new(&img), ElfEntry::Pvh).unwrap();
        assert_eq!(k.protocol, BootProtocol::BzImage);
        assert_eq!(k.entry, 0x10_0200);
        assert_eq!(k.kernel_end, 0x10_1000);
        let hdr = k.setup_header.unwrap();
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(), 0xe9);
    }

    #[test]
    fn rejects_old_low_32bit_and_truncated_bzimages() {
        let img = bzimage(0x0205, bootparam::LOADED_HIGH, 0);
        let err = load(&img, ElfEntry::Auto).unwrap_err();
        assert!(matches!(err, Error::BzImageTooOld { version: 0x0205 }));
        assert!(err.to_string().contains("2.05"), "{err}");
        let img = bzimage(0x020f, 0, bootparam::XLF_KERNEL_64);
        assert!(matches!(
            load(&img, ElfEntry::Auto),
            Err(Error::BzImageNotLoadableHigh { loadflags: 0 })
        ));
        let img = bzimage(0x020f, bootparam::LOADED_HIGH, 0);
        assert!(matches!(
            load(&img, ElfEntry::Auto),
            Err(Error::BzImageNo64BitEntry { xloadflags: 0 })
        ));
        let img = bzimage(0x020f, bootparam::LOADED_HIGH, bootparam::XLF_KERNEL_64);
        for len in [0x206, 0x300, 5 * 512, 5 * 512 + 0x200, img.len() - 1] {
            assert!(
                matches!(
                    load(&img[..len], ElfEntry::Auto),
                    Err(Error::BzImageTruncated { .. })
                ),
                "{len}"
            );
        }
    }

    #[test]
    fn bzimage_payload_must_contain_the_entry_point() {
        // Found by fuzzing: syssize 0 and a payload shorter than the 0x200 entry offset.
        let mut img = bzimage(0x020f, bootparam::LOADED_HIGH, bootparam::XLF_KERNEL_64);
        img[0x1f4..0x1f8].fill(0);
        img.truncate(5 * 512 + 42);
        assert!(matches!(
            load(&img, ElfEntry::Auto),
            Err(Error::BzImageTruncated { needed, .. }) if needed == 5 * 512 + 0x201
        ));
        img.resize(5 * 512 + 0x201, 0);
        let k = load(&img, ElfEntry::Auto).unwrap();
        assert!(k.entry < k.kernel_end);
    }

    #[test]
    fn bzimage_end_covers_the_decompression_buffer() {
        let mut hdr = setup_header {
            version: 0x020f,
            pref_address: 0x100_0000,
            init_size: 0x200_0000,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        assert_eq!(bzimage_end(&hdr, 0x10_0000, 0x1000), 0x300_0000);
        hdr.relocatable_kernel = 1;
        assert_eq!(bzimage_end(&hdr, 0x10_0000, 0x1000), 0x300_0000);
        assert_eq!(bzimage_end(&hdr, 0x120_0000, 0x1000), 0x320_0000);
        hdr.kernel_alignment = 3; // not a power of two: ignored, no panic
        assert_eq!(bzimage_end(&hdr, 0x120_0001, 0x1000), 0x320_0001);
        hdr.version = 0x0209;
        assert_eq!(bzimage_end(&hdr, 0x10_0000, 0x1000), 0x10_1000);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mem = memory(16 << 20);
        for len in [1usize, 7, 64, 200, 600, 5000] {
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            assert!(load_kernel(&mem, &mut Cursor::new(&bytes), ElfEntry::Auto).is_err());
            // With each magic in front, the rest random: errors, never panics.
            bytes.splice(0..len.min(4), ELF_MAGIC.iter().copied());
            let _ = load_kernel(&mem, &mut Cursor::new(&bytes), ElfEntry::Auto);
        }
    }
}
