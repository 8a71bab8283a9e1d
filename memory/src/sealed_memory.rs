//! Guest memory saved to and restored from a sealed memory file: the memory file's layout
//! ([`MemoryFileLayout`], as `snapshot.rs` writes it) inside the sealed container format of
//! `seal.rs`, every byte encrypted (no holes). Kept apart from both so that neither the
//! container nor the plain memory file depends on the other.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::{Bytes, GuestAddress};
use zeroize::{Zeroize, Zeroizing};

use crate::seal::{
    Chunks, SealError, SealHeader, SealKey, SealedKind, SnapshotId, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
    SEAL_HEADER_LEN, TAG_LEN,
};
use crate::snapshot::{MemoryFileLayout, MemorySnapshotError, RestoreOptions};
use crate::GuestMemoryMmap;

/// Copies the memory-file bytes at `offset` of `layout` from guest memory into `buf`; bytes in
/// no region (none in the layouts of this VMM) are zero.
fn read_plaintext(
    mem: &GuestMemoryMmap,
    layout: &MemoryFileLayout,
    offset: u64,
    buf: &mut [u8],
) -> std::result::Result<(), MemorySnapshotError> {
    buf.fill(0);
    for_regions(layout, offset, buf.len(), |addr, at, len| {
        mem.read_slice(&mut buf[at..at + len], GuestAddress(addr))
            .map_err(|source| MemorySnapshotError::GuestMemory { addr, len, source })
    })
}

/// Copies `buf`, the memory-file bytes at `offset` of `layout`, into guest memory.
fn write_plaintext(
    mem: &GuestMemoryMmap,
    layout: &MemoryFileLayout,
    offset: u64,
    buf: &[u8],
) -> std::result::Result<(), MemorySnapshotError> {
    for_regions(layout, offset, buf.len(), |addr, at, len| {
        mem.write_slice(&buf[at..at + len], GuestAddress(addr))
            .map_err(|source| MemorySnapshotError::GuestMemory { addr, len, source })
    })
}

/// Calls `f(guest address, offset in the span, length)` for each part of the file span
/// `offset..offset + len` that lies in a region of `layout`.
fn for_regions(
    layout: &MemoryFileLayout,
    offset: u64,
    len: usize,
    mut f: impl FnMut(u64, usize, usize) -> std::result::Result<(), MemorySnapshotError>,
) -> std::result::Result<(), MemorySnapshotError> {
    let end = offset + len as u64;
    for r in &layout.regions {
        let r_end = r.file_offset + r.size;
        let start = offset.max(r.file_offset);
        let stop = end.min(r_end);
        if start < stop {
            f(
                r.guest_addr + (start - r.file_offset),
                (start - offset) as usize,
                (stop - start) as usize,
            )?;
        }
    }
    Ok(())
}

/// Writes all of guest memory as a sealed memory file at `path` (beside it, synced, renamed
/// over it) and returns its layout. Unlike [`crate::snapshot::save_memory`] it has no holes:
/// every byte of the layout is encrypted. The guest must not run meanwhile.
pub fn save_memory_sealed(
    mem: &GuestMemoryMmap,
    path: &Path,
    key: &SealKey,
    id: SnapshotId,
    chunk_size: u32,
) -> std::result::Result<MemoryFileLayout, MemorySnapshotError> {
    let layout = MemoryFileLayout::of(mem);
    let chunk_size = chunk_size
        .clamp(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
        .next_power_of_two();
    let len = layout.file_len();
    let chunks = Chunks::new(key, id, SealedKind::Memory, chunk_size, len);
    let out = crate::snapshot::AtomicFile::create(path)?;
    out.write_at(&chunks.header_bytes, 0)?;
    let mut buf = Zeroizing::new(vec![0u8; chunk_size as usize + TAG_LEN]);
    for index in 0..chunks.count {
        let (start, len) = chunks.span(index);
        let cell = &mut buf[..len + TAG_LEN];
        read_plaintext(mem, &layout, start, &mut cell[..len])?;
        chunks.seal(index, cell);
        out.write_at(cell, chunks.file_offset(index))?;
    }
    out.commit()?;
    Ok(layout)
}

/// Restores guest memory from the sealed memory file at `path` of the snapshot `id`: checks
/// its header, length, id and key, then decrypts every chunk into fresh anonymous guest memory
/// (no file mapping: the plaintext exists only in this process). Any failure refuses the whole
/// file before the memory is returned. Diff files cannot be layered over it (refused).
pub fn restore_memory_sealed(
    path: &Path,
    layout: &MemoryFileLayout,
    key: &SealKey,
    id: &SnapshotId,
    options: &RestoreOptions,
) -> std::result::Result<GuestMemoryMmap, MemorySnapshotError> {
    let sealed = |source| MemorySnapshotError::Sealed {
        path: path.to_path_buf(),
        source,
    };
    if !options.diffs.is_empty() {
        return Err(MemorySnapshotError::SealedDiffs);
    }
    layout.validate()?;
    let file = crate::snapshot::open_regular(path)?;
    let file_len = crate::snapshot::file_len(path, &file)?;
    let mut head = [0u8; SEAL_HEADER_LEN];
    let have = (file_len as usize).min(SEAL_HEADER_LEN);
    read_at(path, &file, &mut head[..have], 0)?;
    let header = SealHeader::parse(&head[..have]).map_err(sealed)?;
    let chunks = Chunks::open(
        key,
        header,
        SealedKind::Memory,
        Some(id),
        file_len,
        u64::MAX,
    )
    .map_err(sealed)?;
    if header.len != layout.file_len() {
        return Err(sealed(SealError::Length {
            len: header.len,
            expected: layout.file_len(),
        }));
    }
    let mem = crate::create_guest_memory(
        layout.ram_bytes(),
        crate::MemoryOptions {
            hugepages: false,
            ksm: options.ksm,
            prefault: options.prefault,
        },
    )
    .map_err(MemorySnapshotError::Allocate)?;
    let mut buf = Zeroizing::new(vec![0u8; header.chunk_size as usize + TAG_LEN]);
    for index in 0..chunks.count {
        let (start, len) = chunks.span(index);
        let cell = &mut buf[..len + TAG_LEN];
        read_at(path, &file, cell, chunks.file_offset(index))?;
        chunks.open_chunk(index, cell).map_err(sealed)?;
        write_plaintext(&mem, layout, start, &cell[..len])?;
    }
    buf.zeroize();
    crate::reset_dirty(&mem);
    Ok(mem)
}

fn read_at(
    path: &Path,
    file: &File,
    buf: &mut [u8],
    offset: u64,
) -> std::result::Result<(), MemorySnapshotError> {
    file.read_exact_at(buf, offset)
        .map_err(|source| MemorySnapshotError::Read {
            path: path.to_path_buf(),
            offset,
            len: buf.len(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::sealed_len;
    use crate::test_dir::TestDir;
    use crate::{create_guest_memory, GuestMemoryBackend, GuestMemoryRegion, MemoryOptions};

    const MIB: u64 = 1 << 20;

    fn key(seed: u8) -> SealKey {
        SealKey::from_bytes(&[seed; 32]).unwrap()
    }

    fn id(seed: u8) -> SnapshotId {
        SnapshotId([seed; 16])
    }

    fn guest_with_data() -> GuestMemoryMmap {
        let mem = create_guest_memory(4 * MIB, MemoryOptions::default()).unwrap();
        for (i, addr) in [0x1000u64, 0x10_0003, 4 * MIB - 100]
            .into_iter()
            .enumerate()
        {
            let data: Vec<u8> = (0..100).map(|b| (b as u8) ^ (i as u8 + 1)).collect();
            mem.write_slice(&data, GuestAddress(addr)).unwrap();
        }
        mem
    }

    fn contents(mem: &GuestMemoryMmap) -> Vec<u8> {
        let mut all = Vec::new();
        for r in mem.iter() {
            let mut buf = vec![0u8; r.len() as usize];
            mem.read_slice(&mut buf, r.start_addr()).unwrap();
            all.extend(buf);
        }
        all
    }

    #[test]
    fn memory_files_round_trip_and_refuse_every_change() {
        let dir = TestDir::new("memory");
        let mem = guest_with_data();
        let path = dir.path("mem");
        let chunk = 256 * 1024;
        let layout = save_memory_sealed(&mem, &path, &key(1), id(9), chunk).unwrap();
        let options = RestoreOptions::default();
        let restored = restore_memory_sealed(&path, &layout, &key(1), &id(9), &options).unwrap();
        assert_eq!(contents(&restored), contents(&mem));
        let good = std::fs::read(&path).unwrap();
        assert_eq!(good.len() as u64, sealed_len(4 * MIB, chunk).unwrap());

        let bad = dir.path("bad");
        let refuse = |bytes: &[u8]| {
            std::fs::write(&bad, bytes).unwrap();
            restore_memory_sealed(&bad, &layout, &key(1), &id(9), &options).expect_err("refused")
        };
        // Every header byte, and the first, a middle and the last byte (the tag's) of each
        // chunk.
        let cell = chunk as usize + TAG_LEN;
        let mut offsets: Vec<usize> = (0..SEAL_HEADER_LEN).collect();
        for i in 0..16 {
            let start = SEAL_HEADER_LEN + i * cell;
            offsets.extend([start, start + cell / 2, start + cell - 1]);
        }
        for at in offsets {
            let mut bytes = good.clone();
            bytes[at] ^= 0x04;
            let err = refuse(&bytes);
            assert!(
                matches!(err, MemorySnapshotError::Sealed { .. }),
                "byte {at}: {err}"
            );
        }
        // Two chunks swapped.
        let mut bytes = good.clone();
        let (a, b) = (SEAL_HEADER_LEN + cell, SEAL_HEADER_LEN + 2 * cell);
        bytes[a..a + cell].copy_from_slice(&good[b..b + cell]);
        bytes[b..b + cell].copy_from_slice(&good[a..a + cell]);
        let err = refuse(&bytes);
        assert!(
            matches!(
                err,
                MemorySnapshotError::Sealed {
                    source: SealError::Chunk { index: 1, .. },
                    ..
                }
            ),
            "{err}"
        );
        // Truncated, extended.
        let err = refuse(&good[..good.len() - 1]);
        assert!(err.to_string().contains("sealed memory file"), "{err}");
        let mut longer = good.clone();
        longer.push(0);
        refuse(&longer);
        // Wrong key, another snapshot's memory file.
        let err = restore_memory_sealed(&path, &layout, &key(2), &id(9), &options)
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                MemorySnapshotError::Sealed {
                    source: SealError::WrongKey,
                    ..
                }
            ),
            "{err}"
        );
        let other = dir.path("other");
        save_memory_sealed(&mem, &other, &key(1), id(8), chunk).unwrap();
        let err = restore_memory_sealed(&other, &layout, &key(1), &id(9), &options)
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                MemorySnapshotError::Sealed {
                    source: SealError::OtherSnapshot { .. },
                    ..
                }
            ),
            "{err}"
        );
        // A sealed file without its key, an unsealed file with a key, diffs.
        let err = crate::snapshot::restore_memory(&path, &layout, &options)
            .err()
            .unwrap();
        assert!(
            matches!(err, MemorySnapshotError::SealedWithoutKey { .. }),
            "{err}"
        );
        let plain = dir.path("plain");
        crate::snapshot::save_memory(&mem, &plain).unwrap();
        let err = restore_memory_sealed(&plain, &layout, &key(1), &id(9), &options)
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                MemorySnapshotError::Sealed {
                    source: SealError::NotSealed { .. },
                    ..
                }
            ),
            "{err}"
        );
        let with_diff = RestoreOptions {
            diffs: vec![plain],
            ..RestoreOptions::default()
        };
        let err = restore_memory_sealed(&path, &layout, &key(1), &id(9), &with_diff)
            .err()
            .unwrap();
        assert!(matches!(err, MemorySnapshotError::SealedDiffs), "{err}");
    }
}
