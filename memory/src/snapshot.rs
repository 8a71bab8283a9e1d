//! Guest memory snapshots: a memory file, diff files of dirty pages, and restore by mapping.
//!
//! # The memory file
//!
//! [`save_memory`] writes every region of guest RAM into one file, region after region, at the
//! offsets recorded in a [`MemoryFileLayout`]. The caller keeps that layout (it is serde) in the
//! snapshot's state file. Pages that are all zero are not written: the file is created at its
//! full length and those pages stay holes, so a 1 GiB guest that touched 50 MiB costs about
//! 50 MiB of disk.
//!
//! # Diff files
//!
//! [`save_dirty_pages`] writes only the pages marked in one KVM-style dirty bitmap per region
//! (bit `i` of word `i / 64` is page `i` of that region). The data sits at the same offsets as in
//! the memory file (the other pages are holes), and a trailer after the data records which pages
//! the diff holds, with a checksum. The trailer, not the holes, says which pages are in the diff:
//! a dirty page that became all zero is written as data, and a file system that cannot keep
//! holes still gives the right result.
//!
//! A diff is layered over its base in one of two ways:
//! - at restore, with [`RestoreOptions::diffs`]: the base is mapped and each diff's pages are read
//!   over it, in order (the base file stays untouched, only the dirty pages cost anonymous memory);
//! - or once, with [`merge_diff`], which writes base + diff as a new full memory file.
//!
//! # Restore
//!
//! [`restore_memory`] checks the layout against the file and the guest layout rules, then maps
//! each region from the file with `MAP_PRIVATE`: nothing is read until the guest touches it, and
//! the guest's writes stay in this process, never in the file. Every file here is written to a
//! temporary file beside its destination and renamed over it, so a process that still maps an
//! older memory file at the same path keeps its own, unchanged copy.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionError;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion,
    GuestRegionCollectionError,
};

use crate::{layout, GuestMemoryMmap, GuestRegionMmap};

/// The page size of guest memory files and dirty bitmaps.
pub const PAGE_SIZE: u64 = 4096;

/// Bytes copied per step between guest memory and files.
const CHUNK: usize = 1 << 20;
/// Magic bytes that end a diff file.
const DIFF_MAGIC: [u8; 8] = *b"VMMDIFF\0";
/// Version of the diff trailer.
const DIFF_VERSION: u32 = 1;
/// Size of the diff footer: magic, version, bitmap checksum, page count.
const DIFF_FOOTER_LEN: u64 = 24;

/// Errors of saving, merging and restoring guest memory files.
#[derive(Debug, thiserror::Error)]
pub enum MemorySnapshotError {
    /// A destination path has no file name (`/`, `..`).
    #[error("{path} cannot be a memory file: it has no file name")]
    InvalidPath {
        /// The path.
        path: PathBuf,
    },
    /// A file could not be opened or created.
    #[error("cannot open {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A path to read is not a regular file.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Reading a file failed (or it ended early).
    #[error("cannot read {len} bytes at offset {offset:#x} of {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Offset in the file.
        offset: u64,
        /// Bytes asked for.
        len: usize,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing, sizing or syncing a file failed.
    #[error("cannot write {path} at offset {offset:#x}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Offset in the file.
        offset: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Renaming the finished temporary file over the destination failed.
    #[error("cannot rename {from} to {to}")]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Guest memory could not be read or written.
    #[error("cannot access {len} bytes of guest memory at {addr:#x}")]
    GuestMemory {
        /// Guest physical address.
        addr: u64,
        /// Length of the access.
        len: usize,
        /// Why.
        #[source]
        source: GuestMemoryError,
    },
    /// The layout has no regions.
    #[error("the memory file layout has no regions")]
    LayoutEmpty,
    /// A region of the layout is empty or not page aligned.
    #[error(
        "memory file layout region {index} (guest {guest_addr:#x}, {size:#x} bytes, file offset \
         {file_offset:#x}) is empty or not aligned to {PAGE_SIZE} bytes"
    )]
    LayoutUnaligned {
        /// Index of the region.
        index: usize,
        /// Guest address of the region.
        guest_addr: u64,
        /// Size of the region.
        size: u64,
        /// Offset of the region in the file.
        file_offset: u64,
    },
    /// A region overlaps the one before or comes before it, in the guest or in the file.
    #[error(
        "memory file layout region {index} (guest {guest_addr:#x}, file offset {file_offset:#x}) \
         overlaps or precedes region {prev} in guest memory or in the file"
    )]
    LayoutOverlap {
        /// Index of the region.
        index: usize,
        /// Index of the region before it.
        prev: usize,
        /// Guest address of the region.
        guest_addr: u64,
        /// Offset of the region in the file.
        file_offset: u64,
    },
    /// A region runs past the end of the 64-bit address space or file offsets.
    #[error("memory file layout region {index} runs past the end of the address space")]
    LayoutOverflow {
        /// Index of the region.
        index: usize,
    },
    /// The regions add up to a RAM size the guest layout does not allow.
    #[error(
        "the memory file layout holds {ram_bytes} bytes of RAM: guest RAM must be {min} to {max} bytes",
        min = layout::MIN_RAM_BYTES,
        max = layout::MAX_RAM_BYTES
    )]
    LayoutRamSize {
        /// Total of the regions.
        ram_bytes: u64,
    },
    /// The regions are not where the guest layout puts RAM of that size.
    #[error(
        "the memory file layout has regions {found:x?} (guest address, size; hex) but {ram_bytes} \
         bytes of guest RAM are laid out as {expected:x?}"
    )]
    LayoutNotGuestRam {
        /// Total of the regions.
        ram_bytes: u64,
        /// The regions of the layout.
        found: Vec<(u64, u64)>,
        /// The regions of `layout::ram_regions(ram_bytes)`.
        expected: Vec<(u64, u64)>,
    },
    /// The memory file is shorter than its layout: it was truncated.
    #[error(
        "memory file {path} is truncated: it has {len} bytes but its layout needs {needed} bytes"
    )]
    FileTooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The end of the last region of the layout.
        needed: u64,
    },
    /// The memory file is longer than its layout: it is another file (a diff file?).
    #[error(
        "memory file {path} has {len} bytes but its layout needs exactly {needed} bytes: it is \
         not the memory file of this snapshot (a diff file or another snapshot's file?)"
    )]
    FileTooLong {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The end of the last region of the layout.
        needed: u64,
    },
    /// The number of dirty bitmaps differs from the number of memory regions.
    #[error("{bitmaps} dirty bitmaps given for {regions} guest memory regions")]
    DirtyBitmapCount {
        /// Regions of guest memory.
        regions: usize,
        /// Bitmaps given.
        bitmaps: usize,
    },
    /// A dirty bitmap does not have one bit per page of its region.
    #[error(
        "the dirty bitmap of region {index} has {words} 64-bit words but the region's {pages} \
         pages need {expected}"
    )]
    DirtyBitmapSize {
        /// Index of the region.
        index: usize,
        /// Pages of the region.
        pages: u64,
        /// Words needed.
        expected: usize,
        /// Words given.
        words: usize,
    },
    /// A diff file does not end with a diff trailer.
    #[error("{path} is not a memory diff file: it does not end with a diff trailer")]
    NotADiff {
        /// The file.
        path: PathBuf,
    },
    /// A diff file's trailer has another version.
    #[error("memory diff file {path} has trailer version {found}; this vmm reads version {DIFF_VERSION}")]
    DiffVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// A diff file was made for memory of another size.
    #[error(
        "memory diff file {path} covers {diff_pages} pages but the layout has {layout_pages}: it \
         belongs to another snapshot"
    )]
    DiffLayoutMismatch {
        /// The file.
        path: PathBuf,
        /// Pages recorded in the diff.
        diff_pages: u64,
        /// Pages of the layout.
        layout_pages: u64,
    },
    /// A diff file's length disagrees with its trailer: it was truncated or extended.
    #[error("memory diff file {path} has {len} bytes but its trailer says {expected}: it is truncated or damaged")]
    DiffSize {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The length the trailer implies.
        expected: u64,
    },
    /// A diff file's page bitmap does not match its checksum.
    #[error(
        "memory diff file {path} is corrupted: the page bitmap's checksum is {computed:#010x}, \
         the trailer says {stored:#010x}"
    )]
    DiffChecksum {
        /// The file.
        path: PathBuf,
        /// Checksum in the trailer.
        stored: u32,
        /// Checksum of the bitmap read.
        computed: u32,
    },
    /// A region is larger than this host's address space.
    #[error("memory region at {addr:#x} of {size:#x} bytes is larger than this host can map")]
    TooLarge {
        /// Guest address.
        addr: u64,
        /// Size.
        size: u64,
    },
    /// Mapping a region of the memory file failed.
    #[error("cannot map {size:#x} bytes of {path} at file offset {file_offset:#x} as guest memory at {addr:#x}")]
    Mmap {
        /// The file.
        path: PathBuf,
        /// Guest address.
        addr: u64,
        /// Size.
        size: u64,
        /// Offset in the file.
        file_offset: u64,
        /// Why.
        #[source]
        source: MmapRegionError,
    },
    /// madvise on the restored memory failed.
    #[error("cannot advise restored guest memory")]
    Advise(#[source] crate::Error),
    /// The restored regions could not be put together.
    #[error("invalid restored guest memory regions")]
    Regions(#[source] GuestRegionCollectionError),
    /// Guest memory for a sealed memory file could not be allocated.
    #[error("cannot allocate guest memory for the sealed memory file")]
    Allocate(#[source] crate::Error),
    /// A sealed memory file is refused (or could not be sealed).
    #[error("sealed memory file {path}")]
    Sealed {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::seal::SealError,
    },
    /// A sealed memory file given to a restore without a key.
    #[error("memory file {path} is sealed (encrypted): restore it with its key file")]
    SealedWithoutKey {
        /// The file.
        path: PathBuf,
    },
    /// Diff files with a sealed snapshot.
    #[error("diff memory files cannot be layered over a sealed snapshot: sealed snapshots are full snapshots only")]
    SealedDiffs,
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, MemorySnapshotError>;

/// One guest RAM region in a memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFileRegion {
    /// Guest physical address of the region's first byte.
    pub guest_addr: u64,
    /// Length of the region in bytes.
    pub size: u64,
    /// Offset of the region's first byte in the memory file.
    pub file_offset: u64,
}

/// Where each guest RAM region lies in a memory file (and in its diff files).
///
/// Kept by the caller in the snapshot's state file and handed back to [`restore_memory`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFileLayout {
    /// The regions, in guest address order.
    pub regions: Vec<MemoryFileRegion>,
}

impl MemoryFileLayout {
    /// The layout of a memory file of `mem`: its regions in guest address order, packed one
    /// after the other from file offset 0.
    pub fn of(mem: &GuestMemoryMmap) -> Self {
        let mut file_offset = 0;
        let regions = mem
            .iter()
            .map(|r| {
                let region = MemoryFileRegion {
                    guest_addr: r.start_addr().0,
                    size: r.len(),
                    file_offset,
                };
                file_offset += r.len();
                region
            })
            .collect();
        MemoryFileLayout { regions }
    }

    /// The layout [`Self::of`] gives for guest RAM of `ram_bytes` laid out by
    /// [`layout::ram_regions`]: what every memory file of this VMM has, so a memory file's
    /// length (its RAM size) tells its layout.
    pub fn packed(ram_bytes: u64) -> Self {
        let mut file_offset = 0;
        let regions = layout::ram_regions(ram_bytes)
            .into_iter()
            .map(|(guest_addr, size)| {
                let region = MemoryFileRegion {
                    guest_addr,
                    size,
                    file_offset,
                };
                file_offset += size;
                region
            })
            .collect();
        MemoryFileLayout { regions }
    }

    /// Total guest RAM of the layout in bytes (saturating: [`Self::validate`] rejects overflow).
    pub fn ram_bytes(&self) -> u64 {
        self.regions
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.size))
    }

    /// Length of the memory file: the end of the region that ends last in the file.
    pub fn file_len(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| r.file_offset.saturating_add(r.size))
            .max()
            .unwrap_or(0)
    }

    /// Checks the layout against the guest layout rules: at least one region; every address,
    /// size and file offset page aligned; regions in order without overlap in the guest and in
    /// the file; a RAM size the guest layout allows; and regions exactly where
    /// [`layout::ram_regions`] puts RAM of that size.
    pub fn validate(&self) -> Result<()> {
        if self.regions.is_empty() {
            return Err(MemorySnapshotError::LayoutEmpty);
        }
        let mut ram_bytes = 0u64;
        for (index, r) in self.regions.iter().enumerate() {
            if r.size == 0
                || r.size % PAGE_SIZE != 0
                || r.guest_addr % PAGE_SIZE != 0
                || r.file_offset % PAGE_SIZE != 0
            {
                return Err(MemorySnapshotError::LayoutUnaligned {
                    index,
                    guest_addr: r.guest_addr,
                    size: r.size,
                    file_offset: r.file_offset,
                });
            }
            let overflow = MemorySnapshotError::LayoutOverflow { index };
            r.guest_addr.checked_add(r.size).ok_or(overflow)?;
            r.file_offset
                .checked_add(r.size)
                .ok_or(MemorySnapshotError::LayoutOverflow { index })?;
            ram_bytes = ram_bytes
                .checked_add(r.size)
                .ok_or(MemorySnapshotError::LayoutOverflow { index })?;
            if index > 0 {
                let prev = &self.regions[index - 1];
                // Both sums were checked when `prev` was.
                if r.guest_addr < prev.guest_addr + prev.size
                    || r.file_offset < prev.file_offset + prev.size
                {
                    return Err(MemorySnapshotError::LayoutOverlap {
                        index,
                        prev: index - 1,
                        guest_addr: r.guest_addr,
                        file_offset: r.file_offset,
                    });
                }
            }
        }
        if !(layout::MIN_RAM_BYTES..=layout::MAX_RAM_BYTES).contains(&ram_bytes) {
            return Err(MemorySnapshotError::LayoutRamSize { ram_bytes });
        }
        let found: Vec<(u64, u64)> = self
            .regions
            .iter()
            .map(|r| (r.guest_addr, r.size))
            .collect();
        let expected = layout::ram_regions(ram_bytes);
        if found != expected {
            return Err(MemorySnapshotError::LayoutNotGuestRam {
                ram_bytes,
                found,
                expected,
            });
        }
        Ok(())
    }

    /// Pages covered by the file (its length in pages).
    fn file_pages(&self) -> u64 {
        self.file_len() / PAGE_SIZE
    }
}

/// How [`restore_memory`] maps the memory file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Diff files written by [`save_dirty_pages`], layered over the memory file in this order
    /// (oldest first). Each must have been saved with the same layout.
    pub diffs: Vec<PathBuf>,
    /// Read the whole memory file in at restore (MAP_POPULATE) instead of on first guest touch.
    pub prefault: bool,
    /// Let KSM merge identical guest pages (MADV_MERGEABLE).
    pub ksm: bool,
}

/// Writes all of guest memory into a memory file at `path` and returns its layout.
///
/// All-zero pages are left as holes. The file is written beside `path`, synced, and renamed
/// over it. The guest must not run meanwhile (pause its vCPUs first).
pub fn save_memory(mem: &GuestMemoryMmap, path: &Path) -> Result<MemoryFileLayout> {
    let layout = MemoryFileLayout::of(mem);
    let out = AtomicFile::create(path)?;
    out.set_len(layout.file_len())?;
    let mut buf = vec![0u8; CHUNK];
    let mut pagemap = Pagemap::open();
    for r in &layout.regions {
        let mut done = 0u64;
        while done < r.size {
            let len = chunk_len(r.size - done);
            let addr = r.guest_addr + done;
            // A chunk the guest never touched reads as zeros: skip it without faulting its
            // pages in (scanning them costs a page fault each, ~0.3 s per untouched GiB).
            let untouched = mem
                .get_host_address(GuestAddress(addr))
                .ok()
                .and_then(|host| pagemap.as_mut()?.untouched(host as u64, len as u64))
                .unwrap_or(false);
            if !untouched {
                let chunk = &mut buf[..len];
                read_guest(mem, addr, chunk)?;
                write_nonzero_pages(&out, chunk, r.file_offset + done)?;
            }
            done += len as u64;
        }
    }
    out.commit()?;
    Ok(layout)
}

/// This process's `/proc/self/pagemap`: one 64-bit entry per virtual page, bit 63 "present in
/// RAM", bit 62 "swapped out". A page with neither was never populated, so it reads as zeros.
/// (Readable by the process itself; the PFN bits need privileges, these flags do not.) In a
/// jail without /proc there is none: every chunk is then read (slower for a large guest that
/// touched little of its memory; the file comes out the same).
struct Pagemap {
    file: File,
    entries: Vec<u8>,
}

impl Pagemap {
    fn open() -> Option<Pagemap> {
        File::open("/proc/self/pagemap").ok().map(|file| Pagemap {
            file,
            entries: Vec::new(),
        })
    }

    /// Whether no page of `[host_addr, host_addr + len)` is present or swapped; `None` when
    /// the pagemap cannot tell (then the caller reads the memory).
    fn untouched(&mut self, host_addr: u64, len: u64) -> Option<bool> {
        use std::os::unix::fs::FileExt;
        const PRESENT: u64 = 1 << 63;
        const SWAPPED: u64 = 1 << 62;
        let host_page = 4096u64;
        if !host_addr.is_multiple_of(host_page) {
            return None;
        }
        let pages = usize::try_from(len.div_ceil(host_page)).ok()?;
        self.entries.resize(pages * 8, 0);
        let offset = (host_addr / host_page).checked_mul(8)?;
        self.file.read_exact_at(&mut self.entries, offset).ok()?;
        Some(self.entries.chunks_exact(8).all(|e| {
            let entry = u64::from_le_bytes(e.try_into().unwrap_or([0xff; 8]));
            entry & (PRESENT | SWAPPED) == 0
        }))
    }
}

/// Writes the pages marked dirty in `bitmaps` into a diff file at `path` and returns the layout
/// (the same as [`save_memory`]'s for this memory).
///
/// `bitmaps` holds one KVM-style dirty bitmap per region of `mem`, in `mem`'s region order:
/// bit `i % 64` of word `i / 64` marks page `i` of the region, and each bitmap has exactly
/// enough words for its region's pages. Dirty pages are written even when they are all zero.
pub fn save_dirty_pages(
    mem: &GuestMemoryMmap,
    bitmaps: &[Vec<u64>],
    path: &Path,
) -> Result<MemoryFileLayout> {
    let layout = MemoryFileLayout::of(mem);
    if bitmaps.len() != layout.regions.len() {
        return Err(MemorySnapshotError::DirtyBitmapCount {
            regions: layout.regions.len(),
            bitmaps: bitmaps.len(),
        });
    }
    for (index, (r, bitmap)) in layout.regions.iter().zip(bitmaps).enumerate() {
        let pages = r.size / PAGE_SIZE;
        let expected = words_for(pages);
        if bitmap.len() != expected {
            return Err(MemorySnapshotError::DirtyBitmapSize {
                index,
                pages,
                expected,
                words: bitmap.len(),
            });
        }
    }

    let file_pages = layout.file_pages();
    let mut file_bitmap = vec![0u64; words_for(file_pages)];
    let out = AtomicFile::create(path)?;
    out.set_len(layout.file_len())?;
    let mut buf = vec![0u8; CHUNK];
    for (r, bitmap) in layout.regions.iter().zip(bitmaps) {
        let first_file_page = r.file_offset / PAGE_SIZE;
        for (start, count) in runs(bitmap, 0, r.size / PAGE_SIZE) {
            for page in start..start + count {
                set_bit(&mut file_bitmap, first_file_page + page);
            }
            let mut done = 0u64;
            let run_bytes = count * PAGE_SIZE;
            while done < run_bytes {
                let len = chunk_len(run_bytes - done);
                let offset = start * PAGE_SIZE + done;
                let chunk = &mut buf[..len];
                read_guest(mem, r.guest_addr + offset, chunk)?;
                out.write_at(chunk, r.file_offset + offset)?;
                done += len as u64;
            }
        }
    }

    let mut trailer = Vec::with_capacity(file_bitmap.len() * 8 + DIFF_FOOTER_LEN as usize);
    for word in &file_bitmap {
        trailer.extend_from_slice(&word.to_le_bytes());
    }
    let checksum = crc32(&trailer);
    trailer.extend_from_slice(&DIFF_MAGIC);
    trailer.extend_from_slice(&DIFF_VERSION.to_le_bytes());
    trailer.extend_from_slice(&checksum.to_le_bytes());
    trailer.extend_from_slice(&file_pages.to_le_bytes());
    out.write_at(&trailer, layout.file_len())?;
    out.commit()?;
    Ok(layout)
}

/// Writes `base` with the pages of `diff` layered over it into a new full memory file at
/// `out`, with the same layout. `out` may be `base` itself: the result is renamed over it, so a
/// process that maps the old base keeps seeing the old contents.
pub fn merge_diff(base: &Path, diff: &Path, layout: &MemoryFileLayout, out: &Path) -> Result<()> {
    layout.validate()?;
    let base_file = open_memory_file(base, layout)?;
    let diff_file = open_regular(diff)?;
    let bitmap = read_diff_bitmap(diff, &diff_file, layout)?;
    let merged = AtomicFile::create(out)?;
    merged.set_len(layout.file_len())?;
    let mut buf = vec![0u8; CHUNK];
    for r in &layout.regions {
        let first_file_page = r.file_offset / PAGE_SIZE;
        let mut done = 0u64;
        while done < r.size {
            let len = chunk_len(r.size - done);
            let chunk = &mut buf[..len];
            let offset = r.file_offset + done;
            read_file_at(base, &base_file, chunk, offset)?;
            let page0 = first_file_page + done / PAGE_SIZE;
            for (start, count) in runs(&bitmap, page0, page0 + len as u64 / PAGE_SIZE) {
                let at = ((start - page0) * PAGE_SIZE) as usize;
                let part = &mut chunk[at..at + (count * PAGE_SIZE) as usize];
                read_file_at(diff, &diff_file, part, start * PAGE_SIZE)?;
            }
            write_nonzero_pages(&merged, chunk, offset)?;
            done += len as u64;
        }
    }
    merged.commit()
}

/// Maps a memory file written by [`save_memory`] (or [`merge_diff`]) as guest memory.
///
/// The layout is validated first, and the file must be exactly as long as the layout says. Each
/// region is mapped `MAP_PRIVATE`, so pages are read from the file only when first touched and
/// the guest's writes never reach the file. Then the diffs of `options` are read over it.
pub fn restore_memory(
    path: &Path,
    layout: &MemoryFileLayout,
    options: &RestoreOptions,
) -> Result<GuestMemoryMmap> {
    layout.validate()?;
    let file = Arc::new(open_memory_file(path, layout)?);
    // Diffs are opened and checked before anything is mapped.
    let mut diffs = Vec::with_capacity(options.diffs.len());
    for diff in &options.diffs {
        let diff_file = open_regular(diff)?;
        let bitmap = read_diff_bitmap(diff, &diff_file, layout)?;
        diffs.push((diff.as_path(), diff_file, bitmap));
    }

    let mut flags = libc::MAP_PRIVATE | libc::MAP_NORESERVE;
    if options.prefault {
        flags |= libc::MAP_POPULATE;
    }
    let mut regions = Vec::with_capacity(layout.regions.len());
    for r in &layout.regions {
        let too_large = || MemorySnapshotError::TooLarge {
            addr: r.guest_addr,
            size: r.size,
        };
        let size = usize::try_from(r.size).map_err(|_| too_large())?;
        let mapping = crate::region_builder(size)
            .with_file_offset(FileOffset::from_arc(file.clone(), r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .build()
            .map_err(|source| MemorySnapshotError::Mmap {
                path: path.to_path_buf(),
                addr: r.guest_addr,
                size: r.size,
                file_offset: r.file_offset,
                source,
            })?;
        if options.ksm {
            crate::advise(&mapping, libc::MADV_MERGEABLE, "MADV_MERGEABLE")
                .map_err(MemorySnapshotError::Advise)?;
        }
        let region =
            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr)).ok_or_else(too_large)?;
        regions.push(region);
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(MemorySnapshotError::Regions)?;

    let mut buf = vec![0u8; CHUNK];
    for (diff, diff_file, bitmap) in &diffs {
        for r in &layout.regions {
            let first = r.file_offset / PAGE_SIZE;
            for (start, count) in runs(bitmap, first, first + r.size / PAGE_SIZE) {
                let run_bytes = count * PAGE_SIZE;
                let mut done = 0u64;
                while done < run_bytes {
                    let len = chunk_len(run_bytes - done);
                    let chunk = &mut buf[..len];
                    let file_at = start * PAGE_SIZE + done;
                    read_file_at(diff, diff_file, chunk, file_at)?;
                    let addr = r.guest_addr + (file_at - r.file_offset);
                    mem.write_slice(chunk, GuestAddress(addr))
                        .map_err(|source| MemorySnapshotError::GuestMemory { addr, len, source })?;
                    done += len as u64;
                }
            }
        }
    }
    // Layering the diffs is not a change since the snapshot: the restored VM starts clean.
    crate::reset_dirty(&mem);
    Ok(mem)
}

/// Opens a file for reading; refuses anything but a regular file (without blocking on a FIFO).
pub(crate) fn open_regular(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| MemorySnapshotError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let meta = file
        .metadata()
        .map_err(|source| MemorySnapshotError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    if !meta.is_file() {
        return Err(MemorySnapshotError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// Opens a memory file and checks that its length is exactly what `layout` needs.
fn open_memory_file(path: &Path, layout: &MemoryFileLayout) -> Result<File> {
    let file = open_regular(path)?;
    let len = file_len(path, &file)?;
    let mut magic = [0u8; 8];
    if file.read_exact_at(&mut magic, 0).is_ok() && magic == crate::seal::SEAL_MAGIC {
        return Err(MemorySnapshotError::SealedWithoutKey {
            path: path.to_path_buf(),
        });
    }
    let needed = layout.file_len();
    if len < needed {
        return Err(MemorySnapshotError::FileTooShort {
            path: path.to_path_buf(),
            len,
            needed,
        });
    }
    if len > needed {
        return Err(MemorySnapshotError::FileTooLong {
            path: path.to_path_buf(),
            len,
            needed,
        });
    }
    Ok(file)
}

pub(crate) fn file_len(path: &Path, file: &File) -> Result<u64> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|source| MemorySnapshotError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads and checks the page bitmap of a diff file made for `layout`.
fn read_diff_bitmap(path: &Path, file: &File, layout: &MemoryFileLayout) -> Result<Vec<u64>> {
    let len = file_len(path, file)?;
    if len < DIFF_FOOTER_LEN {
        return Err(MemorySnapshotError::NotADiff {
            path: path.to_path_buf(),
        });
    }
    let mut footer = [0u8; DIFF_FOOTER_LEN as usize];
    read_file_at(path, file, &mut footer, len - DIFF_FOOTER_LEN)?;
    let (magic, rest) = footer.split_at(8);
    if magic != DIFF_MAGIC {
        return Err(MemorySnapshotError::NotADiff {
            path: path.to_path_buf(),
        });
    }
    let word = |at: usize| u32::from_le_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
    let version = word(0);
    if version != DIFF_VERSION {
        return Err(MemorySnapshotError::DiffVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let stored = word(4);
    let mut pages = [0u8; 8];
    pages.copy_from_slice(&rest[8..16]);
    let diff_pages = u64::from_le_bytes(pages);
    let layout_pages = layout.file_pages();
    if diff_pages != layout_pages {
        return Err(MemorySnapshotError::DiffLayoutMismatch {
            path: path.to_path_buf(),
            diff_pages,
            layout_pages,
        });
    }
    let words = words_for(layout_pages);
    // Bounded by a validated layout: at most MAX_RAM_BYTES / 4096 / 8 bytes.
    let bitmap_len = words as u64 * 8;
    let expected = layout.file_len() + bitmap_len + DIFF_FOOTER_LEN;
    if len != expected {
        return Err(MemorySnapshotError::DiffSize {
            path: path.to_path_buf(),
            len,
            expected,
        });
    }
    let mut bytes = vec![0u8; bitmap_len as usize];
    read_file_at(path, file, &mut bytes, layout.file_len())?;
    let computed = crc32(&bytes);
    if computed != stored {
        return Err(MemorySnapshotError::DiffChecksum {
            path: path.to_path_buf(),
            stored,
            computed,
        });
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
        .collect())
}

fn read_file_at(path: &Path, file: &File, buf: &mut [u8], offset: u64) -> Result<()> {
    file.read_exact_at(buf, offset)
        .map_err(|source| MemorySnapshotError::Read {
            path: path.to_path_buf(),
            offset,
            len: buf.len(),
            source,
        })
}

fn read_guest(mem: &GuestMemoryMmap, addr: u64, buf: &mut [u8]) -> Result<()> {
    mem.read_slice(buf, GuestAddress(addr))
        .map_err(|source| MemorySnapshotError::GuestMemory {
            addr,
            len: buf.len(),
            source,
        })
}

/// Writes the pages of `buf` that are not all zero at `offset`, one write per run of them.
fn write_nonzero_pages(out: &AtomicFile, buf: &[u8], offset: u64) -> Result<()> {
    const ZERO: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
    let page = PAGE_SIZE as usize;
    let mut run_start: Option<usize> = None;
    let mut at = 0;
    while at < buf.len() {
        let end = (at + page).min(buf.len());
        // Slice equality of bytes is a memcmp: fast even in unoptimized builds.
        let zero = buf[at..end] == ZERO[..end - at];
        match (zero, run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                out.write_at(&buf[start..at], offset + start as u64)?;
                run_start = None;
            }
            _ => {}
        }
        at = end;
    }
    if let Some(start) = run_start {
        out.write_at(&buf[start..], offset + start as u64)?;
    }
    Ok(())
}

/// The runs of set bits in `bitmap` between bit `from` and bit `to` (exclusive), as
/// (first bit, count). Bits past the bitmap's end count as clear.
fn runs(bitmap: &[u64], from: u64, to: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    let bit = move |i: u64| {
        usize::try_from(i / 64)
            .ok()
            .and_then(|w| bitmap.get(w))
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    };
    let mut i = from;
    std::iter::from_fn(move || {
        while i < to {
            // Skip whole clear words quickly.
            if i.is_multiple_of(64) && to - i >= 64 {
                let clear = usize::try_from(i / 64)
                    .ok()
                    .and_then(|w| bitmap.get(w))
                    .is_none_or(|w| *w == 0);
                if clear {
                    i += 64;
                    continue;
                }
            }
            if bit(i) {
                let start = i;
                while i < to && bit(i) {
                    i += 1;
                }
                return Some((start, i - start));
            }
            i += 1;
        }
        None
    })
}

fn set_bit(bitmap: &mut [u64], i: u64) {
    if let Some(w) = bitmap.get_mut((i / 64) as usize) {
        *w |= 1 << (i % 64);
    }
}

fn words_for(pages: u64) -> usize {
    pages.div_ceil(64) as usize
}

fn chunk_len(left: u64) -> usize {
    left.min(CHUNK as u64) as usize
}

fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// A file written beside its destination and renamed over it once complete and synced; removed
/// if dropped before [`AtomicFile::commit`].
pub(crate) struct AtomicFile {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl AtomicFile {
    pub(crate) fn create(dest: &Path) -> Result<Self> {
        let name = dest
            .file_name()
            .ok_or_else(|| MemorySnapshotError::InvalidPath {
                path: dest.to_path_buf(),
            })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = dest.with_file_name(tmp_name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|source| MemorySnapshotError::Open {
                path: tmp.clone(),
                source,
            })?;
        Ok(AtomicFile {
            file,
            tmp,
            dest: dest.to_path_buf(),
            done: false,
        })
    }

    fn set_len(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|source| self.write_error(len, source))
    }

    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|source| self.write_error(offset, source))
    }

    fn write_error(&self, offset: u64, source: io::Error) -> MemorySnapshotError {
        MemorySnapshotError::Write {
            path: self.tmp.clone(),
            offset,
            source,
        }
    }

    pub(crate) fn commit(mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|source| self.write_error(0, source))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|source| MemorySnapshotError::Rename {
            from: self.tmp.clone(),
            to: self.dest.clone(),
            source,
        })?;
        self.done = true;
        // Make the rename itself durable.
        let dir = match self.dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| MemorySnapshotError::Write {
                path: dir.to_path_buf(),
                offset: 0,
                source,
            })
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;
    use crate::{create_guest_memory, MemoryOptions};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn packed_layout_is_the_layout_of_guest_memory() {
        for ram in [64u64 << 20, 5 << 30] {
            let mem = create_guest_memory(ram, MemoryOptions::default()).unwrap();
            let layout = MemoryFileLayout::packed(ram);
            assert_eq!(layout, MemoryFileLayout::of(&mem));
            assert_eq!(layout.file_len(), ram);
            layout.validate().unwrap();
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn saving_does_not_fault_in_pages_the_guest_never_touched() {
        let dir = TestDir::new("untouched");
        let mem = guest(64 * MIB);
        pattern(&mem, 3 * MIB, 4096, 7);
        let host = |addr: u64| mem.get_host_address(GuestAddress(addr)).unwrap() as u64;
        let mut pagemap = Pagemap::open().expect("/proc/self/pagemap");
        assert_eq!(pagemap.untouched(host(40 * MIB), MIB), Some(true));
        assert_eq!(pagemap.untouched(host(3 * MIB), MIB), Some(false));
        let layout = save_memory(&mem, &dir.path("mem")).unwrap();
        // Still never populated after the save, and the written page is in the file.
        assert_eq!(pagemap.untouched(host(40 * MIB), MIB), Some(true));
        let restored =
            restore_memory(&dir.path("mem"), &layout, &RestoreOptions::default()).unwrap();
        assert_eq!(contents(&restored), contents(&mem));
    }

    fn guest(bytes: u64) -> GuestMemoryMmap {
        create_guest_memory(bytes, MemoryOptions::default()).unwrap()
    }

    /// Writes a recognizable pattern of `len` bytes at `addr`.
    fn pattern(mem: &GuestMemoryMmap, addr: u64, len: usize, seed: u8) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect();
        mem.write_slice(&data, GuestAddress(addr)).unwrap();
    }

    fn contents(mem: &GuestMemoryMmap) -> Vec<Vec<u8>> {
        mem.iter()
            .map(|r| {
                let mut buf = vec![0u8; r.len() as usize];
                mem.read_slice(&mut buf, r.start_addr()).unwrap();
                buf
            })
            .collect()
    }

    fn dirty_bitmaps(mem: &GuestMemoryMmap, dirty: &[u64]) -> Vec<Vec<u64>> {
        mem.iter()
            .map(|r| {
                let pages = r.len() / PAGE_SIZE;
                let mut bitmap = vec![0u64; words_for(pages)];
                for &addr in dirty {
                    if addr >= r.start_addr().0 && addr < r.start_addr().0 + r.len() {
                        set_bit(&mut bitmap, (addr - r.start_addr().0) / PAGE_SIZE);
                    }
                }
                bitmap
            })
            .collect()
    }

    #[test]
    fn round_trip_is_sparse_and_exact() {
        let dir = TestDir::new("round-trip");
        let mem = guest(64 * MIB);
        let addrs = [
            0x1000,
            0x7000,
            0x10_0000 - 100,
            13 * MIB + 4095,
            64 * MIB - 4096,
        ];
        for (i, &addr) in addrs.iter().enumerate() {
            pattern(&mem, addr, 200, i as u8);
        }
        let path = dir.path("mem");
        let layout = save_memory(&mem, &path).unwrap();
        assert_eq!(layout, MemoryFileLayout::of(&mem));
        assert_eq!(layout.file_len(), 64 * MIB);

        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 * MIB);
        // Six pages hold data; allow for file system metadata blocks.
        assert!(
            meta.blocks() * 512 <= 64 * 1024,
            "{} bytes allocated for 6 pages of data",
            meta.blocks() * 512
        );
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);

        let json = serde_json::to_string(&layout).unwrap();
        let layout: MemoryFileLayout = serde_json::from_str(&json).unwrap();
        let restored = restore_memory(&path, &layout, &RestoreOptions::default()).unwrap();
        assert_eq!(contents(&restored), contents(&mem));
    }

    #[test]
    fn round_trip_across_the_mmio_gap() {
        // 5 GiB of address space, touched in a few pages: MAP_NORESERVE and holes keep it cheap.
        let dir = TestDir::new("gap");
        let mem = guest(5 << 30);
        let addrs = [
            0x2000,
            layout::MMIO_GAP_START - 4096,
            4 << 30,
            (6 << 30) - 4096,
        ];
        for (i, &addr) in addrs.iter().enumerate() {
            pattern(&mem, addr, 4096, i as u8);
        }
        let path = dir.path("mem");
        let layout = save_memory(&mem, &path).unwrap();
        assert_eq!(layout.regions.len(), 2);
        assert_eq!(layout.regions[1].file_offset, layout::MMIO_GAP_START);
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 <= MIB);

        let restored = restore_memory(&path, &layout, &RestoreOptions::default()).unwrap();
        for (i, &addr) in addrs.iter().enumerate() {
            let mut want = vec![0u8; 4096];
            let mut got = vec![0u8; 4096];
            mem.read_slice(&mut want, GuestAddress(addr)).unwrap();
            restored.read_slice(&mut got, GuestAddress(addr)).unwrap();
            assert_eq!(got, want, "page {i} at {addr:#x}");
        }
        assert_eq!(restored.read_obj::<u64>(GuestAddress(5 << 30)).unwrap(), 0);
        assert!(restored
            .read_obj::<u8>(GuestAddress(layout::MMIO_GAP_START))
            .is_err());
    }

    #[test]
    fn restored_memory_is_private() {
        let dir = TestDir::new("private");
        let mem = guest(4 * MIB);
        pattern(&mem, 0x3000, 4096, 7);
        let path = dir.path("mem");
        let layout = save_memory(&mem, &path).unwrap();
        let before = std::fs::read(&path).unwrap();

        let restored = restore_memory(&path, &layout, &RestoreOptions::default()).unwrap();
        restored
            .write_obj(0xfeed_u64, GuestAddress(0x3000))
            .unwrap();
        restored
            .write_obj(0xbeef_u64, GuestAddress(0x20_0000))
            .unwrap();
        assert_eq!(
            restored.read_obj::<u64>(GuestAddress(0x3000)).unwrap(),
            0xfeed
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);

        // A second restore of the same file sees the saved contents, not the first one's writes.
        let again = restore_memory(&path, &layout, &RestoreOptions::default()).unwrap();
        assert_eq!(contents(&again), contents(&mem));
    }

    #[test]
    fn saving_over_a_mapped_file_leaves_the_mapping_alone() {
        let dir = TestDir::new("replace");
        let mem = guest(4 * MIB);
        pattern(&mem, 0x5000, 64, 1);
        let path = dir.path("mem");
        let layout = save_memory(&mem, &path).unwrap();
        let restored = restore_memory(&path, &layout, &RestoreOptions::default()).unwrap();
        let before = contents(&restored);
        pattern(&mem, 0x5000, 64, 99);
        save_memory(&mem, &path).unwrap();
        assert_eq!(contents(&restored), before);
    }

    #[test]
    fn diff_layers_over_the_base() {
        let dir = TestDir::new("diff");
        let mem = guest(16 * MIB);
        pattern(&mem, 0x1000, 3 * 4096, 1);
        pattern(&mem, 8 * MIB, 4096, 2);
        let base = dir.path("base");
        let layout = save_memory(&mem, &base).unwrap();

        // Change a page, zero a page that had data, write a run crossing a bitmap word.
        pattern(&mem, 0x2000, 10, 3);
        mem.write_slice(&[0u8; 4096], GuestAddress(8 * MIB))
            .unwrap();
        pattern(&mem, 62 * 4096, 4 * 4096, 4);
        pattern(&mem, 16 * MIB - 4096, 4096, 5);
        let mut dirty = vec![0x2000, 8 * MIB, 16 * MIB - 4096];
        dirty.extend((62..66).map(|p| p * 4096));
        let bitmaps = dirty_bitmaps(&mem, &dirty);
        let diff = dir.path("diff");
        assert_eq!(save_dirty_pages(&mem, &bitmaps, &diff).unwrap(), layout);
        let diff_meta = std::fs::metadata(&diff).unwrap();
        assert!(diff_meta.blocks() * 512 <= 128 * 1024);

        let options = RestoreOptions {
            diffs: vec![diff.clone()],
            ..RestoreOptions::default()
        };
        let layered = restore_memory(&base, &layout, &options).unwrap();
        assert_eq!(contents(&layered), contents(&mem));

        let merged = dir.path("merged");
        merge_diff(&base, &diff, &layout, &merged).unwrap();
        let restored = restore_memory(&merged, &layout, &RestoreOptions::default()).unwrap();
        assert_eq!(contents(&restored), contents(&mem));
        assert!(std::fs::metadata(&merged).unwrap().blocks() * 512 <= 128 * 1024);

        // Merging in place replaces the base.
        merge_diff(&base, &diff, &layout, &base).unwrap();
        assert_eq!(
            std::fs::read(&base).unwrap(),
            std::fs::read(&merged).unwrap()
        );

        // Two diffs in a row: the later one wins.
        pattern(&mem, 0x2000, 10, 6);
        let diff2 = dir.path("diff2");
        save_dirty_pages(&mem, &dirty_bitmaps(&mem, &[0x2000]), &diff2).unwrap();
        let options = RestoreOptions {
            diffs: vec![diff, diff2],
            ..RestoreOptions::default()
        };
        let layered = restore_memory(&merged, &layout, &options).unwrap();
        assert_eq!(contents(&layered), contents(&mem));
    }

    #[test]
    fn bad_dirty_bitmaps_are_refused() {
        let dir = TestDir::new("bitmaps");
        let mem = guest(4 * MIB);
        let path = dir.path("diff");
        let err = save_dirty_pages(&mem, &[], &path).unwrap_err();
        assert!(
            matches!(
                err,
                MemorySnapshotError::DirtyBitmapCount {
                    regions: 1,
                    bitmaps: 0
                }
            ),
            "{err}"
        );
        let err = save_dirty_pages(&mem, &[vec![0; 3]], &path).unwrap_err();
        assert!(
            matches!(
                err,
                MemorySnapshotError::DirtyBitmapSize {
                    expected: 16,
                    words: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!path.exists());
    }

    #[test]
    fn truncated_and_foreign_files_are_refused() {
        let dir = TestDir::new("truncated");
        let mem = guest(4 * MIB);
        pattern(&mem, 0x1000, 100, 1);
        let path = dir.path("mem");
        let layout = save_memory(&mem, &path).unwrap();
        let opts = RestoreOptions::default();

        let short = dir.path("short");
        std::fs::copy(&path, &short).unwrap();
        File::options()
            .write(true)
            .open(&short)
            .unwrap()
            .set_len(4 * MIB - 4096)
            .unwrap();
        let err = restore_memory(&short, &layout, &opts).unwrap_err();
        assert!(
            matches!(err, MemorySnapshotError::FileTooShort { len, needed, .. }
                if len == 4 * MIB - 4096 && needed == 4 * MIB),
            "{err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(err.to_string().contains("short"), "{err}");

        let diff = dir.path("diff");
        save_dirty_pages(&mem, &dirty_bitmaps(&mem, &[0x1000]), &diff).unwrap();
        let err = restore_memory(&diff, &layout, &opts).unwrap_err();
        assert!(
            matches!(err, MemorySnapshotError::FileTooLong { .. }),
            "{err}"
        );

        let err = restore_memory(&dir.path("missing"), &layout, &opts).unwrap_err();
        assert!(matches!(err, MemorySnapshotError::Open { .. }), "{err}");
        let err = restore_memory(&dir.0, &layout, &opts).unwrap_err();
        assert!(matches!(err, MemorySnapshotError::NotAFile { .. }), "{err}");

        // A memory file given as a diff, a damaged diff, a truncated diff.
        let with = |d: &Path| RestoreOptions {
            diffs: vec![d.to_path_buf()],
            ..RestoreOptions::default()
        };
        let err = restore_memory(&path, &layout, &with(&path)).unwrap_err();
        assert!(matches!(err, MemorySnapshotError::NotADiff { .. }), "{err}");

        let bad = dir.path("bad-diff");
        let mut bytes = std::fs::read(&diff).unwrap();
        let at = 4 * MIB as usize; // first byte of the page bitmap
        bytes[at] ^= 0x80;
        std::fs::write(&bad, &bytes).unwrap();
        let err = restore_memory(&path, &layout, &with(&bad)).unwrap_err();
        assert!(
            matches!(err, MemorySnapshotError::DiffChecksum { .. }),
            "{err}"
        );
        let err = merge_diff(&path, &bad, &layout, &dir.path("out")).unwrap_err();
        assert!(
            matches!(err, MemorySnapshotError::DiffChecksum { .. }),
            "{err}"
        );
        assert!(!dir.path("out").exists());

        bytes[at] ^= 0x80;
        bytes.drain(at - 4096..at);
        std::fs::write(&bad, &bytes).unwrap();
        let err = restore_memory(&path, &layout, &with(&bad)).unwrap_err();
        assert!(matches!(err, MemorySnapshotError::DiffSize { .. }), "{err}");

        // A diff of a guest of another size.
        let other = guest(8 * MIB);
        let other_diff = dir.path("other-diff");
        save_dirty_pages(&other, &dirty_bitmaps(&other, &[]), &other_diff).unwrap();
        let err = restore_memory(&path, &layout, &with(&other_diff)).unwrap_err();
        assert!(
            matches!(
                err,
                MemorySnapshotError::DiffLayoutMismatch {
                    diff_pages: 2048,
                    layout_pages: 1024,
                    ..
                }
            ),
            "{err}"
        );
    }

    fn region(guest_addr: u64, size: u64, file_offset: u64) -> MemoryFileRegion {
        MemoryFileRegion {
            guest_addr,
            size,
            file_offset,
        }
    }

    #[test]
    fn bad_layouts_are_refused() {
        let layout = |regions: Vec<MemoryFileRegion>| MemoryFileLayout { regions };
        let check = |l: MemoryFileLayout| l.validate().unwrap_err();

        assert!(matches!(
            check(layout(vec![])),
            MemorySnapshotError::LayoutEmpty
        ));
        assert!(matches!(
            check(layout(vec![region(0, 4 * MIB + 1, 0)])),
            MemorySnapshotError::LayoutUnaligned { index: 0, .. }
        ));
        assert!(matches!(
            check(layout(vec![region(0, 4 * MIB, 512)])),
            MemorySnapshotError::LayoutUnaligned { .. }
        ));
        assert!(matches!(
            check(layout(vec![region(0, 0, 0)])),
            MemorySnapshotError::LayoutUnaligned { .. }
        ));
        assert!(matches!(
            check(layout(vec![region(u64::MAX - 4095, 8192, 0)])),
            MemorySnapshotError::LayoutUnaligned { .. }
                | MemorySnapshotError::LayoutOverflow { .. }
        ));
        assert!(matches!(
            check(layout(vec![region(0, 4096, 0)])),
            MemorySnapshotError::LayoutRamSize { ram_bytes: 4096 }
        ));
        // Guest RAM must start at 0.
        let err = check(layout(vec![region(MIB, 4 * MIB, 0)]));
        assert!(
            matches!(err, MemorySnapshotError::LayoutNotGuestRam { .. }),
            "{err}"
        );
        // Overlap in the guest, and in the file.
        let err = check(layout(vec![
            region(0, 3 << 30, 0),
            region((3 << 30) - 4096, 1 << 30, 3 << 30),
        ]));
        assert!(
            matches!(err, MemorySnapshotError::LayoutOverlap { index: 1, .. }),
            "{err}"
        );
        let err = check(layout(vec![
            region(0, 3 << 30, 0),
            region(4 << 30, 1 << 30, 1 << 30),
        ]));
        assert!(
            matches!(err, MemorySnapshotError::LayoutOverlap { index: 1, .. }),
            "{err}"
        );
        // RAM inside the MMIO gap.
        let err = check(layout(vec![
            region(0, 3 << 30, 0),
            region(3 << 30, 1 << 30, 3 << 30),
        ]));
        assert!(
            matches!(err, MemorySnapshotError::LayoutNotGuestRam { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("(c0000000, 40000000)"), "{err}");

        // Good layouts: one region; two regions around the gap with a gap in the file too.
        layout(vec![region(0, 64 * MIB, 0)]).validate().unwrap();
        layout(vec![
            region(0, 3 << 30, 0),
            region(4 << 30, 1 << 30, 4 << 30),
        ])
        .validate()
        .unwrap();

        // A layout that does not fit the file is refused before mapping.
        let dir = TestDir::new("layout");
        let mem = guest(4 * MIB);
        let path = dir.path("mem");
        save_memory(&mem, &path).unwrap();
        let err = restore_memory(
            &path,
            &layout(vec![region(0, 8 * MIB, 0)]),
            &RestoreOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, MemorySnapshotError::FileTooShort { .. }),
            "{err}"
        );
        let err = restore_memory(
            &path,
            &layout(vec![region(0, 4 * MIB, 4096)]),
            &RestoreOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, MemorySnapshotError::FileTooShort { .. }),
            "{err}"
        );
    }

    #[test]
    fn runs_finds_every_run() {
        let bitmap = [0b1011_0000u64, 1 << 63, u64::MAX, 0, 1];
        let found: Vec<_> = runs(&bitmap, 0, 5 * 64).collect();
        assert_eq!(found, vec![(4, 2), (7, 1), (127, 65), (256, 1)]);
        assert_eq!(
            runs(&bitmap, 5, 130).collect::<Vec<_>>(),
            vec![(5, 1), (7, 1), (127, 3)]
        );
        assert_eq!(runs(&bitmap, 0, 1000).last(), Some((256, 1)));
        assert_eq!(runs(&[], 0, 100).count(), 0);
    }

    #[test]
    fn crc32_is_the_ieee_crc() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn restore_options_apply() {
        let dir = TestDir::new("options");
        let mem = guest(4 * MIB);
        pattern(&mem, 0, 4096, 9);
        let path = dir.path("mem");
        let layout = save_memory(&mem, &path).unwrap();
        let options = RestoreOptions {
            prefault: true,
            ksm: true,
            ..RestoreOptions::default()
        };
        match restore_memory(&path, &layout, &options) {
            Ok(restored) => assert_eq!(contents(&restored), contents(&mem)),
            // KSM may be compiled out of the host kernel.
            Err(MemorySnapshotError::Advise(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
