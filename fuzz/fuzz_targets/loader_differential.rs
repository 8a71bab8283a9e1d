//! Differential: arbitrary bytes as a kernel image through our loader (`vmm_loader::load_kernel`,
//! each ELF entry preference) and through linux-loader 0.14's `Elf` and `BzImage` loaders alone,
//! both into one 32 MiB guest memory, with the same high-memory start (1 MiB) and no load offset.
//! Seeds are the heads of real kernels (bzImage, vmlinux) and a whole tiny PVH ELF.
//!
//! Checked:
//! - what we accept, linux-loader accepts too (the loader of the format we detected);
//! - where both accept they agree: an ELF's 64-bit entry is linux-loader's `kernel_load`
//!   (`e_entry`), its PVH entry is linux-loader's PVH note, `Auto` picks PVH exactly when
//!   linux-loader found the note; a bzImage's entry is linux-loader's `kernel_load + 0x200`
//!   and the setup headers are equal; our `kernel_end` is never below linux-loader's;
//! - a header check both make refuses in both: an ELF that is big-endian, has a wrong
//!   `e_phentsize` or a program header table inside the ELF header.
//!
//! Intended differences (we refuse, linux-loader may accept), each encoded in
//! [`stricter_check`]: empty or unrecognized images; a 32-bit ELF or another machine than
//! x86-64; no loadable segment; a program header table or segment past the end of the file
//! (linux-loader only fails if it reads past the end); a segment below high RAM or a kernel
//! (bss or the bzImage's `init_size` decompression buffer included) that does not fit below the
//! 32-bit MMIO gap; an ELF entry point outside the kernel's segments; no PVH note with
//! `ElfEntry::Pvh`; a bzImage older than boot protocol 2.06, without `LOADED_HIGH`, without a
//! 64-bit entry (2.12+), loaded below high RAM, or shorter than its `syssize` (or the 64-bit
//! entry).

#![no_main]

use std::io::Cursor;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use vm_memory::GuestAddress;
use vmm_loader::{load_kernel, BootLayout, BootProtocol, ElfEntry, Error};
use vmm_memory::GuestMemoryMmap;

const RAM: u64 = 32 << 20;
/// Where a bzImage's 64-bit entry is in its loaded payload (Linux boot protocol).
const BZIMAGE_64BIT_ENTRY: u64 = 0x200;

/// One guest memory for all runs, as in `loader_kernel`: 32 MiB per input would dominate.
static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let mem = MEM.get_or_init(|| {
        vmm_memory::create_guest_memory(RAM, Default::default()).expect("32 MiB of guest memory")
    });
    let boot = BootLayout::default();
    let high = Some(GuestAddress(boot.high_ram_start));
    let elf = Elf::load(mem, None, &mut Cursor::new(data), high);
    let bz = BzImage::load(mem, None, &mut Cursor::new(data), high);
    for entry in [ElfEntry::Auto, ElfEntry::Linux64, ElfEntry::Pvh] {
        let ours = load_kernel(mem, &boot, &mut Cursor::new(data), entry);
        match ours {
            Ok(kernel) => {
                let theirs = match kernel.protocol {
                    BootProtocol::BzImage => &bz,
                    BootProtocol::Linux64 | BootProtocol::Pvh => &elf,
                };
                let theirs = theirs.as_ref().unwrap_or_else(|e| {
                    panic!("{entry:?}: we load {kernel:?}, linux-loader refuses: {e}")
                });
                agree(entry, &kernel, theirs);
            }
            Err(error) => {
                if let Err(why) = stricter_check(&error) {
                    panic!("{entry:?}: we refuse with {error} ({why})");
                }
                if shared_check(&error) {
                    assert!(
                        elf.is_err(),
                        "{entry:?}: we refuse with {error}, linux-loader loads"
                    );
                }
                let same_format_ok = match error {
                    Error::ElfLoad { .. } => elf.is_ok(),
                    Error::BzImageLoad { .. } => bz.is_ok(),
                    _ => false,
                };
                assert!(
                    !same_format_ok,
                    "{entry:?}: linux-loader fails inside our loader ({error}) but not alone"
                );
            }
        }
    }
});

/// Where both accepted: the same entry point and setup header, and our end covers theirs.
fn agree(entry: ElfEntry, kernel: &vmm_loader::LoadedKernel, theirs: &KernelLoaderResult) {
    assert!(
        kernel.kernel_end >= theirs.kernel_end,
        "{entry:?}: our end {:#x} is below linux-loader's {:#x}",
        kernel.kernel_end,
        theirs.kernel_end
    );
    let pvh = match theirs.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
        _ => None,
    };
    match kernel.protocol {
        BootProtocol::BzImage => {
            assert_eq!(kernel.entry, theirs.kernel_load.0 + BZIMAGE_64BIT_ENTRY);
            assert_eq!(kernel.setup_header, theirs.setup_header);
        }
        BootProtocol::Linux64 => {
            assert_ne!(entry, ElfEntry::Pvh);
            assert_eq!(kernel.entry, theirs.kernel_load.0, "e_entry");
            if entry == ElfEntry::Auto {
                assert_eq!(pvh, None, "Auto must take the PVH entry linux-loader found");
            }
        }
        BootProtocol::Pvh => {
            assert_ne!(entry, ElfEntry::Linux64);
            assert_eq!(Some(kernel.entry), pvh, "the PVH note's entry");
        }
    }
}

/// `Ok` for a refusal that is one of our intended extra checks (or a failure of linux-loader
/// itself), `Err` with why for one that is not expected from `load_kernel`.
fn stricter_check(error: &Error) -> Result<(), &'static str> {
    match error {
        Error::EmptyKernel
        | Error::NotAKernel { .. }
        | Error::ElfClass(_)
        | Error::ElfEndianness(_)
        | Error::ElfMachine(_)
        | Error::ElfHeader { .. }
        | Error::ElfTruncated { .. }
        | Error::ElfNoLoadSegment
        | Error::SegmentBelowHighRam { .. }
        | Error::ElfLoad { .. }
        | Error::NoPvhNote
        | Error::EntryOutsideKernel { .. }
        | Error::BzImageTooOld { .. }
        | Error::BzImageNotLoadableHigh { .. }
        | Error::BzImageNo64BitEntry { .. }
        | Error::BzImageLoadAddress { .. }
        | Error::BzImageTruncated { .. }
        | Error::BzImageLoad { .. }
        | Error::KernelDoesNotFit { .. } => Ok(()),
        // Reading from memory cannot fail; anything else belongs to later boot steps.
        Error::Io { .. } => Err("an I/O error reading a byte slice"),
        _ => Err("not a kernel loading error"),
    }
}

/// Whether this refusal is a check linux-loader's ELF loader makes as well.
fn shared_check(error: &Error) -> bool {
    matches!(
        error,
        Error::ElfEndianness(_)
            | Error::ElfHeader {
                field: "e_phentsize" | "e_phoff",
                ..
            }
    )
}
