//! The one error type of this crate.
//!
//! The loader never sees file names (the caller opens the files), so each variant names sizes,
//! offsets and guest addresses instead; the caller adds the path when it wraps the error.

use std::io;

use crate::BootProtocol;

/// Errors of kernel, initrd, command line and boot structure setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A virtio-mmio device outside the 32-bit address space cannot be described in the DSDT.
    #[error(
        "virtio-mmio device at {addr:#x} is above 4 GiB: the DSDT describes only 32-bit ranges"
    )]
    VirtioMmioAbove4G {
        /// Its base address.
        addr: u64,
    },
    /// The kernel image has no bytes at all.
    #[error("the kernel image is empty (0 bytes)")]
    EmptyKernel,
    /// Neither ELF nor bzImage magic was found.
    #[error(
        "the kernel image ({size} bytes, starting with bytes {magic:02x?}) is not a kernel: \
         neither an ELF vmlinux (\\x7fELF magic) nor a bzImage (\"HdrS\" at 0x202 and boot flag \
         0xaa55 at 0x1fe)"
    )]
    NotAKernel {
        /// Size of the image in bytes.
        size: u64,
        /// Its first (up to four) bytes.
        magic: Vec<u8>,
    },
    /// An I/O operation on the kernel or initrd image failed.
    #[error("{what} failed")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A 32-bit (or otherwise not 64-bit) ELF file.
    #[error("ELF class {0} is not supported: the kernel must be a 64-bit ELF (class 2)")]
    ElfClass(u8),
    /// A big-endian (or invalid encoding) ELF file.
    #[error(
        "ELF data encoding {0} is not supported: the kernel must be little-endian (encoding 1)"
    )]
    ElfEndianness(u8),
    /// An ELF file for another architecture.
    #[error("ELF machine {0} is not supported: the kernel must be built for x86-64 (machine 62)")]
    ElfMachine(u16),
    /// An ELF header field with a value this loader cannot accept.
    #[error("the ELF header field {field} has the invalid value {value:#x}")]
    ElfHeader {
        /// Name of the field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A part of the ELF file lies (partly) beyond its end.
    #[error(
        "the ELF {what} at file offset {offset:#x} ({len} bytes) runs past the end of the \
         {size}-byte image: the file is truncated or corrupt"
    )]
    ElfTruncated {
        /// Which part: header, program headers, a segment.
        what: &'static str,
        /// Its file offset.
        offset: u64,
        /// Its length in bytes.
        len: u64,
        /// The image size.
        size: u64,
    },
    /// No PT_LOAD segment with contents.
    #[error("the ELF kernel has no loadable segment")]
    ElfNoLoadSegment,
    /// A segment would overwrite the boot structures below 1 MiB.
    #[error("an ELF segment loads at {addr:#x}, below {min:#x} where the boot structures live")]
    SegmentBelowHighRam {
        /// Guest physical address of the segment.
        addr: u64,
        /// Lowest address a kernel may use.
        min: u64,
    },
    /// linux-loader refused the ELF file.
    #[error("the ELF kernel ({size} bytes) could not be loaded")]
    ElfLoad {
        /// Image size.
        size: u64,
        /// The cause.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// `ElfEntry::Pvh` was asked for, but the kernel has no PVH entry.
    #[error(
        "PVH boot was requested but the ELF kernel has no PVH entry note \
         (XEN_ELFNOTE_PHYS32_ENTRY): build it with CONFIG_PVH or use the 64-bit Linux entry"
    )]
    NoPvhNote,
    /// The chosen entry point is not inside what was loaded.
    #[error("the {protocol:?} entry point {entry:#x} lies outside the loaded kernel {start:#x}..{end:#x}")]
    EntryOutsideKernel {
        /// Protocol whose entry it is.
        protocol: BootProtocol,
        /// The entry address.
        entry: u64,
        /// First loaded byte.
        start: u64,
        /// End of the loaded kernel (exclusive).
        end: u64,
    },

    /// The bzImage speaks a boot protocol older than 2.06.
    #[error(
        "the bzImage uses boot protocol {}.{:02}, older than 2.06, the oldest this loader supports",
        .version >> 8,
        .version & 0xff
    )]
    BzImageTooOld {
        /// Protocol version from the setup header (major << 8 | minor).
        version: u16,
    },
    /// The bzImage must be loaded below 1 MiB (a zImage).
    #[error(
        "the bzImage cannot be loaded above 1 MiB (loadflags {loadflags:#04x} lack LOADED_HIGH)"
    )]
    BzImageNotLoadableHigh {
        /// The loadflags of the setup header.
        loadflags: u8,
    },
    /// The bzImage has no 64-bit entry point.
    #[error(
        "the bzImage has no 64-bit entry point (xloadflags {xloadflags:#06x} lack XLF_KERNEL_64)"
    )]
    BzImageNo64BitEntry {
        /// The xloadflags of the setup header.
        xloadflags: u16,
    },
    /// The bzImage wants to be loaded where the boot structures live.
    #[error(
        "the bzImage's code32_start {addr:#x} is below {min:#x} where the boot structures live"
    )]
    BzImageLoadAddress {
        /// code32_start.
        addr: u64,
        /// Lowest address a kernel may use.
        min: u64,
    },
    /// The bzImage file is shorter than its header says.
    #[error(
        "the bzImage is truncated: it has {size} bytes but its setup header describes {needed}"
    )]
    BzImageTruncated {
        /// Image size.
        size: u64,
        /// Setup sectors plus protected-mode code, as the header says.
        needed: u64,
    },
    /// linux-loader refused the bzImage.
    #[error("the bzImage ({size} bytes) could not be loaded")]
    BzImageLoad {
        /// Image size.
        size: u64,
        /// The cause.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The kernel (with its bss or decompression buffer) needs more RAM than the guest has.
    #[error(
        "the kernel needs guest memory {start:#x}..{end:#x}, but RAM below the MMIO gap ends at \
         {ram_end:#x}: give the VM more memory"
    )]
    KernelDoesNotFit {
        /// First byte the kernel uses.
        start: u64,
        /// End (exclusive) of what the kernel needs before it reads the memory map.
        end: u64,
        /// End of usable low RAM.
        ram_end: u64,
    },

    /// The initrd has no bytes.
    #[error("the initrd is empty (0 bytes)")]
    InitrdEmpty,
    /// The initrd does not fit between the kernel and the top of usable RAM.
    #[error(
        "the initrd of {size} bytes does not fit in guest memory: {available} bytes are free \
         between the kernel and the highest address the kernel accepts for it"
    )]
    InitrdDoesNotFit {
        /// Initrd size.
        size: u64,
        /// Bytes available for it (page-aligned).
        available: u64,
    },
    /// The initrd image ended before `size` bytes.
    #[error(
        "the initrd ended after {read} of its {size} bytes (truncated or changed while reading?)"
    )]
    InitrdShortRead {
        /// Bytes read.
        read: u64,
        /// Bytes expected.
        size: u64,
    },
    /// Reading the initrd into guest memory failed.
    #[error("reading the initrd into guest memory at {addr:#x} failed")]
    InitrdRead {
        /// Guest address being filled.
        addr: u64,
        /// The cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },

    /// The command line is longer than the limit.
    #[error("the kernel command line is {len} bytes long, more than the limit of {max} bytes")]
    CmdlineTooLong {
        /// Length without the terminating NUL.
        len: usize,
        /// Largest accepted length without the NUL.
        max: usize,
    },
    /// The command line holds a character the kernel cannot take.
    #[error(
        "the kernel command line has the invalid character {ch:?} at byte {offset}: only \
         printable ASCII (space to '~') is allowed"
    )]
    CmdlineInvalidChar {
        /// The character.
        ch: char,
        /// Its byte offset in the assembled command line.
        offset: usize,
    },
    /// Another command line error from linux-loader's `Cmdline`.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line into guest memory failed.
    #[error("writing the kernel command line to guest memory at {addr:#x} failed")]
    CmdlineWrite {
        /// Guest address.
        addr: u64,
        /// The cause.
        #[source]
        source: linux_loader::loader::Error,
    },

    /// The memory map given to the guest calls RAM what the guest memory does not have.
    #[error(
        "the memory map says {addr:#x}..{end:#x} is RAM, but the guest memory does not cover it",
        end = .addr.saturating_add(*.size)
    )]
    MemoryMapNotBacked {
        /// First address of the map entry.
        addr: u64,
        /// Its length in bytes.
        size: u64,
    },
    /// The memory map does not fit in the boot structure.
    #[error("the memory map has {entries} entries, more than the {max} the {what} can hold")]
    TooManyMemoryMapEntries {
        /// Entries needed.
        entries: usize,
        /// Room.
        max: usize,
        /// Which table.
        what: &'static str,
    },
    /// A bzImage boot without the kernel's setup header.
    #[error("the {0:?} boot protocol needs the kernel's setup header, but none was loaded")]
    MissingSetupHeader(BootProtocol),
    /// linux-loader's configurator failed to write a boot structure.
    #[error("writing the {what} to guest memory at {addr:#x} failed")]
    BootConfig {
        /// Which structure.
        what: &'static str,
        /// Guest address.
        addr: u64,
        /// The cause.
        #[source]
        source: linux_loader::configurator::Error,
    },

    /// The MP table cannot describe this many vCPUs.
    #[error("the MP and ACPI tables cannot describe {num_cpus} vCPUs: 1 to {max} are possible")]
    TooManyCpus {
        /// Requested vCPUs.
        num_cpus: u8,
        /// Largest supported count.
        max: u8,
    },
    /// The MP table would not fit in its reserved area.
    #[error("the MP table of {size} bytes does not fit in the {max} bytes reserved at {addr:#x}")]
    MpTableTooLarge {
        /// Table size.
        size: u64,
        /// Room.
        max: u64,
        /// Where it goes.
        addr: u64,
    },
    /// The ACPI tables would not fit in their reserved area.
    #[error("the ACPI tables ({size} bytes) do not fit in the {max} bytes reserved at {addr:#x}")]
    AcpiTooLarge {
        /// Size of all tables.
        size: u64,
        /// Room.
        max: u64,
        /// Where they go.
        addr: u64,
    },
    /// A [`BootLayout`](crate::BootLayout) address goes into a 32-bit field of a boot structure
    /// but is above 4 GiB.
    #[error(
        "the {what} address {addr:#x} is above 4 GiB, but the boot structure holds it in 32 bits"
    )]
    AddressAbove4G {
        /// Which address, and where it goes.
        what: &'static str,
        /// The address.
        addr: u64,
    },
    /// A plain write to guest memory failed.
    #[error("writing the {what} to guest memory at {addr:#x} failed")]
    GuestWrite {
        /// Which structure.
        what: &'static str,
        /// Guest address.
        addr: u64,
        /// The cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;
