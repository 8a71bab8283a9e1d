//! Sealed snapshot files: encrypted and authenticated with AES-256-GCM in independent chunks.
//!
//! A sealed file (a snapshot's state file or its memory file) is a 64-byte header followed by
//! the plaintext cut into chunks of `chunk_size` bytes (the last one shorter, or empty when the
//! plaintext is), each stored as its ciphertext followed by its 16-byte GCM tag:
//!
//! ```text
//! offset  size  field (integers little endian)
//!      0     8  magic "VMMSEAL\0"
//!      8     4  version (SEAL_VERSION)
//!     12     4  header length (SEAL_HEADER_LEN)
//!     16    16  snapshot id: random, the same in the state file and the memory file
//!     32     4  which file: 1 state, 2 memory
//!     36     4  chunk size (a power of two, MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE)
//!     40     8  plaintext length
//!     48    16  key check: HKDF output that tells a wrong key from a damaged file
//!     64        chunk 0: ciphertext, tag; chunk 1: ...
//! ```
//!
//! Keys: the key file's bytes (at least [`MIN_KEY_FILE_LEN`]) are the input key material of
//! HKDF-SHA256 with the snapshot id as salt; each kind of file gets its own AES-256 key (the
//! kind in the HKDF info), so no key ever meets two files. The nonce of chunk `i` is the first
//! four bytes of the snapshot id followed by `i` (64-bit big endian). The associated data of
//! each chunk is the whole header, the chunk index and a "last chunk" flag: a changed header
//! byte, a changed, swapped, dropped or added chunk, a truncated or extended file, or a chunk of
//! another snapshot all fail authentication (and most are caught earlier, with a more precise
//! message, by the length, id and key checks).
//!
//! Key material (the key file's bytes, derived keys) is zeroized when dropped.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The first bytes of every sealed file.
pub const SEAL_MAGIC: [u8; 8] = *b"VMMSEAL\0";
/// The sealed format this build writes and reads.
pub const SEAL_VERSION: u32 = 1;
/// Length of the header.
pub const SEAL_HEADER_LEN: usize = 64;
/// Length of each chunk's GCM tag.
pub const TAG_LEN: usize = 16;
/// Smallest chunk size accepted.
pub const MIN_CHUNK_SIZE: u32 = 64;
/// Largest chunk size accepted (what a reader allocates at most for one chunk).
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// The chunk size snapshots are written with.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Fewest bytes a key file may hold.
pub const MIN_KEY_FILE_LEN: usize = 32;
/// Most bytes a key file may hold.
pub const MAX_KEY_FILE_LEN: usize = 4096;

const KEY_CHECK_LEN: usize = 16;

/// Why a file cannot be sealed or unsealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file cannot be opened or read.
    #[error("cannot read key file {path}")]
    KeyFileRead {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file is not a regular file.
    #[error("key file {path} is not a regular file")]
    KeyFileNotAFile {
        /// The key file.
        path: PathBuf,
    },
    /// The key has too few or too many bytes.
    #[error(
        "the key has {len} bytes: a key file must hold {MIN_KEY_FILE_LEN} to {MAX_KEY_FILE_LEN} \
         bytes (e.g. `head -c 32 /dev/urandom > KEY`)"
    )]
    KeyLength {
        /// Bytes found.
        len: usize,
    },
    /// No random snapshot id could be drawn.
    #[error("cannot draw a random snapshot id: {0}")]
    Random(String),
    /// The file is not sealed (an unsealed snapshot file, or another file).
    #[error(
        "it is not sealed (it starts with {found:02x?}, not \"VMMSEAL\"): an unsealed snapshot \
         is restored without a key"
    )]
    NotSealed {
        /// The first bytes found (up to 8).
        found: Vec<u8>,
    },
    /// Another version of the sealed format.
    #[error(
        "sealed format version {found} is not supported: this vmm reads version {SEAL_VERSION}"
    )]
    Version {
        /// The version found.
        found: u32,
    },
    /// The header is shorter than a header.
    #[error("it is truncated: {have} bytes, less than the {SEAL_HEADER_LEN}-byte sealed header")]
    TruncatedHeader {
        /// Bytes present.
        have: u64,
    },
    /// A header field holds a value no writer writes.
    #[error("its sealed header is corrupted: {0}")]
    Header(&'static str),
    /// The file is a sealed file of the other kind.
    #[error("it is a sealed {found} file, not a sealed {expected} file")]
    WrongKind {
        /// The kind in the header.
        found: SealedKind,
        /// The kind expected.
        expected: SealedKind,
    },
    /// The file is shorter than its header says.
    #[error(
        "it is truncated (or its header damaged): {len} bytes, but its header needs {expected}"
    )]
    Truncated {
        /// The file's length.
        len: u64,
        /// The length the header implies.
        expected: u64,
    },
    /// The file is longer than its header says.
    #[error(
        "it is extended (or its header damaged): {len} bytes, but its header needs {expected}"
    )]
    Extended {
        /// The file's length.
        len: u64,
        /// The length the header implies.
        expected: u64,
    },
    /// The plaintext is larger than the reader accepts.
    #[error("it declares {len} bytes of content, more than the {max} accepted")]
    TooLarge {
        /// Declared plaintext length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The file belongs to another snapshot.
    #[error(
        "it belongs to another snapshot: its snapshot id is {found}, the state file's is {expected}"
    )]
    OtherSnapshot {
        /// The id in the file.
        found: SnapshotId,
        /// The id expected.
        expected: SnapshotId,
    },
    /// The key is not the one the file was sealed with.
    #[error("the key does not match: it is not the key this snapshot was sealed with (or the header is damaged)")]
    WrongKey,
    /// A chunk failed authentication.
    #[error(
        "chunk {index} of {count} failed authentication: the file was modified, its chunks \
         reordered, or it is damaged"
    )]
    Chunk {
        /// Index of the chunk.
        index: u64,
        /// Chunks in the file.
        count: u64,
    },
    /// The plaintext length does not fit what the caller writes.
    #[error("the sealed content is {len} bytes, {expected} expected")]
    Length {
        /// Declared length.
        len: u64,
        /// Expected length.
        expected: u64,
    },
}

/// Result of sealing.
pub type Result<T> = std::result::Result<T, SealError>;

/// Which file of a snapshot a sealed file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealedKind {
    /// The state file.
    State,
    /// The memory file.
    Memory,
}

impl SealedKind {
    fn code(self) -> u32 {
        match self {
            SealedKind::State => 1,
            SealedKind::Memory => 2,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(SealedKind::State),
            2 => Some(SealedKind::Memory),
            _ => None,
        }
    }
}

impl std::fmt::Display for SealedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SealedKind::State => "state",
            SealedKind::Memory => "memory",
        })
    }
}

/// A snapshot's random id: the HKDF salt of its keys, in both of its files' headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotId(pub [u8; 16]);

impl SnapshotId {
    /// A fresh random id (getrandom).
    pub fn random() -> Result<Self> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| SealError::Random(e.to_string()))?;
        Ok(SnapshotId(id))
    }
}

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The key of sealed snapshots: the bytes of a key file (zeroized on drop).
pub struct SealKey {
    material: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// A key from `bytes` ([`MIN_KEY_FILE_LEN`] to [`MAX_KEY_FILE_LEN`] of them).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if !(MIN_KEY_FILE_LEN..=MAX_KEY_FILE_LEN).contains(&bytes.len()) {
            return Err(SealError::KeyLength { len: bytes.len() });
        }
        Ok(SealKey {
            material: Zeroizing::new(bytes.to_vec()),
        })
    }

    /// Reads the key file at `path`: all of its bytes are the key material.
    pub fn read_file(path: &Path) -> Result<Self> {
        let read_error = |source| SealError::KeyFileRead {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(read_error)?;
        if !file.metadata().map_err(read_error)?.is_file() {
            return Err(SealError::KeyFileNotAFile {
                path: path.to_path_buf(),
            });
        }
        // The capacity is never exceeded, so the buffer is never moved and leaves no copy.
        let mut material = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN + 1));
        (&file)
            .take(MAX_KEY_FILE_LEN as u64 + 1)
            .read_to_end(&mut material)
            .map_err(read_error)?;
        if !(MIN_KEY_FILE_LEN..=MAX_KEY_FILE_LEN).contains(&material.len()) {
            return Err(SealError::KeyLength {
                len: material.len(),
            });
        }
        Ok(SealKey { material })
    }

    /// The cipher and key check of the file of `kind` of snapshot `id`.
    fn file_cipher(&self, id: &SnapshotId, kind: SealedKind) -> (Aes256Gcm, [u8; KEY_CHECK_LEN]) {
        let hk = Hkdf::<Sha256>::new(Some(&id.0), &self.material);
        let mut key = Zeroizing::new([0u8; 32]);
        let mut info = *b"vmm sealed snapshot v1 key \0";
        info[info.len() - 1] = kind.code() as u8;
        // 32 and 16 bytes are far below HKDF-SHA256's limit of 255 * 32: never an error.
        let _ = hk.expand(&info, key.as_mut());
        let mut check = [0u8; KEY_CHECK_LEN];
        let mut info = *b"vmm sealed snapshot v1 check \0";
        info[info.len() - 1] = kind.code() as u8;
        let _ = hk.expand(&info, &mut check);
        let cipher = Aes256Gcm::new(key.as_ref().into());
        (cipher, check)
    }
}

/// The length of a sealed file of `len` plaintext bytes in chunks of `chunk_size`; `None` on
/// overflow.
pub fn sealed_len(len: u64, chunk_size: u32) -> Option<u64> {
    let chunks = chunk_count(len, chunk_size);
    (SEAL_HEADER_LEN as u64)
        .checked_add(len)?
        .checked_add(chunks.checked_mul(TAG_LEN as u64)?)
}

/// Chunks of a sealed file of `len` plaintext bytes: at least one (an empty one for nothing).
fn chunk_count(len: u64, chunk_size: u32) -> u64 {
    len.div_ceil(u64::from(chunk_size)).max(1)
}

/// A parsed sealed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealHeader {
    /// The snapshot id.
    pub id: SnapshotId,
    /// Which file.
    pub kind: SealedKind,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Plaintext length.
    pub len: u64,
    key_check: [u8; KEY_CHECK_LEN],
}

impl SealHeader {
    fn to_bytes(self) -> [u8; SEAL_HEADER_LEN] {
        let mut h = [0u8; SEAL_HEADER_LEN];
        h[0..8].copy_from_slice(&SEAL_MAGIC);
        h[8..12].copy_from_slice(&SEAL_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(SEAL_HEADER_LEN as u32).to_le_bytes());
        h[16..32].copy_from_slice(&self.id.0);
        h[32..36].copy_from_slice(&self.kind.code().to_le_bytes());
        h[36..40].copy_from_slice(&self.chunk_size.to_le_bytes());
        h[40..48].copy_from_slice(&self.len.to_le_bytes());
        h[48..64].copy_from_slice(&self.key_check);
        h
    }

    /// Parses a header from the first bytes of a file (`bytes` may be shorter than a header).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let magic_len = bytes.len().min(SEAL_MAGIC.len());
        if bytes[..magic_len] != SEAL_MAGIC[..magic_len] || bytes.is_empty() {
            return Err(SealError::NotSealed {
                found: bytes[..magic_len].to_vec(),
            });
        }
        let Some(h) = bytes.get(..SEAL_HEADER_LEN) else {
            return Err(SealError::TruncatedHeader {
                have: bytes.len() as u64,
            });
        };
        let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let version = u32_at(8);
        if version != SEAL_VERSION {
            return Err(SealError::Version { found: version });
        }
        if u32_at(12) as usize != SEAL_HEADER_LEN {
            return Err(SealError::Header("wrong header length"));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&h[16..32]);
        let kind =
            SealedKind::from_code(u32_at(32)).ok_or(SealError::Header("unknown file kind"))?;
        let chunk_size = u32_at(36);
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            return Err(SealError::Header("invalid chunk size"));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&h[40..48]);
        let mut key_check = [0u8; KEY_CHECK_LEN];
        key_check.copy_from_slice(&h[48..64]);
        Ok(SealHeader {
            id: SnapshotId(id),
            kind,
            chunk_size,
            len: u64::from_le_bytes(len),
            key_check,
        })
    }
}

/// Seals or opens the chunks of one file.
pub(crate) struct Chunks {
    cipher: Aes256Gcm,
    header: SealHeader,
    pub(crate) header_bytes: [u8; SEAL_HEADER_LEN],
    pub(crate) count: u64,
}

impl Chunks {
    pub(crate) fn new(
        key: &SealKey,
        id: SnapshotId,
        kind: SealedKind,
        chunk_size: u32,
        len: u64,
    ) -> Self {
        let (cipher, key_check) = key.file_cipher(&id, kind);
        let header = SealHeader {
            id,
            kind,
            chunk_size,
            len,
            key_check,
        };
        Chunks {
            cipher,
            header,
            header_bytes: header.to_bytes(),
            count: chunk_count(len, chunk_size),
        }
    }

    /// Checks a parsed header against what the reader expects and the file's length, then the
    /// key against the header's key check.
    pub(crate) fn open(
        key: &SealKey,
        header: SealHeader,
        expected_kind: SealedKind,
        expected_id: Option<&SnapshotId>,
        file_len: u64,
        max_len: u64,
    ) -> Result<Self> {
        if header.kind != expected_kind {
            return Err(SealError::WrongKind {
                found: header.kind,
                expected: expected_kind,
            });
        }
        let expected = sealed_len(header.len, header.chunk_size)
            .ok_or(SealError::Header("impossible length"))?;
        if file_len < expected {
            return Err(SealError::Truncated {
                len: file_len,
                expected,
            });
        }
        if file_len > expected {
            return Err(SealError::Extended {
                len: file_len,
                expected,
            });
        }
        if header.len > max_len {
            return Err(SealError::TooLarge {
                len: header.len,
                max: max_len,
            });
        }
        if let Some(expected) = expected_id {
            if header.id != *expected {
                return Err(SealError::OtherSnapshot {
                    found: header.id,
                    expected: *expected,
                });
            }
        }
        let chunks = Chunks::new(key, header.id, header.kind, header.chunk_size, header.len);
        // Not secret: a mismatch only says the key is another one.
        if chunks.header.key_check != header.key_check {
            return Err(SealError::WrongKey);
        }
        Ok(chunks)
    }

    /// Plaintext offset and length of chunk `index`.
    pub(crate) fn span(&self, index: u64) -> (u64, usize) {
        let size = u64::from(self.header.chunk_size);
        let start = index * size;
        (start, (self.header.len - start).min(size) as usize)
    }

    /// File offset of chunk `index`.
    pub(crate) fn file_offset(&self, index: u64) -> u64 {
        SEAL_HEADER_LEN as u64 + index * (u64::from(self.header.chunk_size) + TAG_LEN as u64)
    }

    fn nonce_aad(&self, index: u64) -> ([u8; 12], [u8; SEAL_HEADER_LEN + 9]) {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&self.header.id.0[..4]);
        nonce[4..].copy_from_slice(&index.to_be_bytes());
        let mut aad = [0u8; SEAL_HEADER_LEN + 9];
        aad[..SEAL_HEADER_LEN].copy_from_slice(&self.header_bytes);
        aad[SEAL_HEADER_LEN..SEAL_HEADER_LEN + 8].copy_from_slice(&index.to_le_bytes());
        aad[SEAL_HEADER_LEN + 8] = u8::from(index + 1 == self.count);
        (nonce, aad)
    }

    /// Encrypts chunk `index` in place and appends its tag (`buf` ends `TAG_LEN` bytes longer
    /// than the plaintext: the caller gives plaintext in `buf[..len]` of a buffer of
    /// `len + TAG_LEN`).
    pub(crate) fn seal(&self, index: u64, buf: &mut [u8]) {
        let (nonce, aad) = self.nonce_aad(index);
        let (data, tag_out) = buf.split_at_mut(buf.len() - TAG_LEN);
        // Encryption only fails for plaintexts over GCM's limit of 64 GiB; chunks are at most
        // MAX_CHUNK_SIZE.
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, data)
            .unwrap_or_default();
        tag_out.copy_from_slice(&tag);
    }

    /// Authenticates and decrypts chunk `index` in place: `buf` is ciphertext then tag; the
    /// plaintext is `buf[..buf.len() - TAG_LEN]`.
    pub(crate) fn open_chunk(&self, index: u64, buf: &mut [u8]) -> Result<()> {
        let (nonce, aad) = self.nonce_aad(index);
        let (data, tag) = buf.split_at_mut(buf.len() - TAG_LEN);
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, data, Tag::from_slice(tag))
            .map_err(|_| SealError::Chunk {
                index,
                count: self.count,
            })
    }
}

/// Seals `plaintext` as a file of `kind` of snapshot `id`: the whole sealed file's bytes.
pub fn seal_bytes(
    key: &SealKey,
    id: SnapshotId,
    kind: SealedKind,
    chunk_size: u32,
    plaintext: &[u8],
) -> Vec<u8> {
    let chunk_size = chunk_size
        .clamp(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
        .next_power_of_two();
    let chunks = Chunks::new(key, id, kind, chunk_size, plaintext.len() as u64);
    let total = sealed_len(plaintext.len() as u64, chunk_size).unwrap_or_default() as usize;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&chunks.header_bytes);
    for index in 0..chunks.count {
        let (start, len) = chunks.span(index);
        let at = out.len();
        out.extend_from_slice(&plaintext[start as usize..start as usize + len]);
        out.extend_from_slice(&[0; TAG_LEN]);
        chunks.seal(index, &mut out[at..]);
    }
    out
}

/// Opens a whole sealed file of `kind` in `sealed`: checks its header (and its snapshot id
/// against `expected_id`, when given), its length, the key, and every chunk. Returns the
/// snapshot id and the plaintext, at most `max_len` bytes (checked before allocating).
pub fn open_bytes(
    key: &SealKey,
    kind: SealedKind,
    expected_id: Option<&SnapshotId>,
    sealed: &[u8],
    max_len: u64,
) -> Result<(SnapshotId, Vec<u8>)> {
    let header = SealHeader::parse(sealed)?;
    let chunks = Chunks::open(key, header, kind, expected_id, sealed.len() as u64, max_len)?;
    // Bounded by the file's length, checked above.
    let mut plaintext = Vec::with_capacity(header.len as usize);
    let mut buf = Zeroizing::new(vec![0u8; chunks.header.chunk_size as usize + TAG_LEN]);
    for index in 0..chunks.count {
        let (_, len) = chunks.span(index);
        let at = chunks.file_offset(index) as usize;
        let cell = &mut buf[..len + TAG_LEN];
        cell.copy_from_slice(&sealed[at..at + len + TAG_LEN]);
        chunks.open_chunk(index, cell)?;
        plaintext.extend_from_slice(&cell[..len]);
    }
    Ok((header.id, plaintext))
}

/// The snapshot id in the header of the sealed file `bytes` starts with, if it is one.
pub fn peek_id(bytes: &[u8]) -> Option<SnapshotId> {
    SealHeader::parse(bytes).ok().map(|h| h.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;

    fn key(seed: u8) -> SealKey {
        SealKey::from_bytes(&[seed; 32]).unwrap()
    }

    fn id(seed: u8) -> SnapshotId {
        SnapshotId([seed; 16])
    }

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    fn open(sealed: &[u8], kind: SealedKind) -> Result<Vec<u8>> {
        open_bytes(&key(1), kind, Some(&id(9)), sealed, u64::MAX).map(|(_, p)| p)
    }

    #[test]
    fn round_trip() {
        for kind in [SealedKind::State, SealedKind::Memory] {
            for len in [0, 1, 63, 64, 65, 128, 300, 1000] {
                let data = plaintext(len);
                let sealed = seal_bytes(&key(1), id(9), kind, 64, &data);
                assert_eq!(sealed.len() as u64, sealed_len(len as u64, 64).unwrap());
                assert_eq!(&sealed[..8], &SEAL_MAGIC);
                assert_eq!(open(&sealed, kind).unwrap(), data, "{kind} {len}");
                assert_eq!(peek_id(&sealed), Some(id(9)));
                // The plaintext does not appear in the file.
                if len >= 64 {
                    assert!(!sealed.windows(32).any(|w| w == &data[..32]));
                }
            }
        }
        // Without an expected id the file's own is returned.
        let sealed = seal_bytes(&key(1), id(4), SealedKind::State, 64, b"x");
        let (found, data) = open_bytes(&key(1), SealedKind::State, None, &sealed, 10).unwrap();
        assert_eq!((found, data.as_slice()), (id(4), &b"x"[..]));
    }

    /// Every single-byte change anywhere in a small sealed file of each kind is refused.
    #[test]
    fn every_flipped_byte_is_refused() {
        for kind in [SealedKind::State, SealedKind::Memory] {
            let sealed = seal_bytes(&key(1), id(9), kind, 64, &plaintext(300));
            for at in 0..sealed.len() {
                for bit in [0x01, 0x80] {
                    let mut bad = sealed.clone();
                    bad[at] ^= bit;
                    assert!(open(&bad, kind).is_err(), "{kind}: byte {at} ^ {bit:#x}");
                }
            }
        }
    }

    #[test]
    fn reordered_dropped_and_foreign_chunks_are_refused() {
        let size = 64 + TAG_LEN;
        let sealed = seal_bytes(&key(1), id(9), SealedKind::State, 64, &plaintext(64 * 4));
        let chunk = |i: usize| SEAL_HEADER_LEN + i * size..SEAL_HEADER_LEN + (i + 1) * size;
        // Chunks 1 and 2 swapped.
        let mut swapped = sealed.clone();
        swapped[chunk(1)].copy_from_slice(&sealed[chunk(2)]);
        swapped[chunk(2)].copy_from_slice(&sealed[chunk(1)]);
        let err = open(&swapped, SealedKind::State).unwrap_err();
        assert!(
            matches!(err, SealError::Chunk { index: 1, count: 4 }),
            "{err}"
        );
        // The last chunk dropped (a whole chunk: the length check says truncated).
        let err = open(&sealed[..chunk(3).start], SealedKind::State).unwrap_err();
        assert!(matches!(err, SealError::Truncated { .. }), "{err}");
        // A middle chunk dropped and the last one duplicated: the length is right.
        let mut dropped = sealed[..chunk(1).start].to_vec();
        dropped.extend_from_slice(&sealed[chunk(2)]);
        dropped.extend_from_slice(&sealed[chunk(3)]);
        dropped.extend_from_slice(&sealed[chunk(3)]);
        let err = open(&dropped, SealedKind::State).unwrap_err();
        assert!(matches!(err, SealError::Chunk { index: 1, .. }), "{err}");
        // The last chunk moved earlier: its "last" flag does not fit.
        let mut moved = sealed.clone();
        moved[chunk(2)].copy_from_slice(&sealed[chunk(3)]);
        assert!(open(&moved, SealedKind::State).is_err());
        // A chunk of another snapshot sealed with the same key, at the same index.
        let other = seal_bytes(&key(1), id(8), SealedKind::State, 64, &plaintext(64 * 4));
        let mut mixed = sealed.clone();
        mixed[chunk(2)].copy_from_slice(&other[chunk(2)]);
        let err = open(&mixed, SealedKind::State).unwrap_err();
        assert!(matches!(err, SealError::Chunk { index: 2, .. }), "{err}");
    }

    #[test]
    fn truncated_and_extended_files_are_refused() {
        let sealed = seal_bytes(&key(1), id(9), SealedKind::Memory, 64, &plaintext(200));
        for len in 0..sealed.len() {
            let err = open(&sealed[..len], SealedKind::Memory).unwrap_err();
            assert!(
                matches!(
                    err,
                    SealError::Truncated { .. }
                        | SealError::TruncatedHeader { .. }
                        | SealError::NotSealed { .. }
                ),
                "{len}: {err}"
            );
        }
        for extra in [1, TAG_LEN, 64 + TAG_LEN] {
            let mut longer = sealed.clone();
            longer.extend(std::iter::repeat_n(0u8, extra));
            let err = open(&longer, SealedKind::Memory).unwrap_err();
            assert!(matches!(err, SealError::Extended { .. }), "{extra}: {err}");
        }
    }

    #[test]
    fn wrong_key_kind_snapshot_and_unsealed_files_are_refused() {
        let sealed = seal_bytes(&key(1), id(9), SealedKind::State, 64, &plaintext(100));
        let err = open_bytes(&key(2), SealedKind::State, None, &sealed, u64::MAX).unwrap_err();
        assert!(matches!(err, SealError::WrongKey), "{err}");
        assert!(err.to_string().contains("key"), "{err}");
        // The key check is per kind too: a state file is never opened as a memory file.
        let err = open(&sealed, SealedKind::Memory).unwrap_err();
        assert!(
            matches!(
                err,
                SealError::WrongKind {
                    found: SealedKind::State,
                    expected: SealedKind::Memory
                }
            ),
            "{err}"
        );
        let err =
            open_bytes(&key(1), SealedKind::State, Some(&id(3)), &sealed, u64::MAX).unwrap_err();
        assert!(matches!(err, SealError::OtherSnapshot { .. }), "{err}");
        assert!(err.to_string().contains(&id(3).to_string()), "{err}");
        let err = open_bytes(&key(1), SealedKind::State, None, &sealed, 99).unwrap_err();
        assert!(
            matches!(err, SealError::TooLarge { len: 100, max: 99 }),
            "{err}"
        );
        let err = open(b"VMMSNAP\0 an unsealed state file", SealedKind::State).unwrap_err();
        assert!(matches!(err, SealError::NotSealed { .. }), "{err}");
        assert!(err.to_string().contains("without a key"), "{err}");
        let err = open(b"", SealedKind::State).unwrap_err();
        assert!(matches!(err, SealError::NotSealed { .. }), "{err}");
    }

    #[test]
    fn key_files() {
        let dir = TestDir::new("keys");
        let path = dir.path("key");
        std::fs::write(&path, [5u8; 32]).unwrap();
        let from_file = SealKey::read_file(&path).unwrap();
        let sealed = seal_bytes(&from_file, id(1), SealedKind::State, 64, b"abc");
        let (_, data) = open_bytes(&key(5), SealedKind::State, None, &sealed, 10).unwrap();
        assert_eq!(data, b"abc");
        assert_eq!(format!("{from_file:?}"), "SealKey(..)");
        for len in [0, 31, MAX_KEY_FILE_LEN + 1] {
            std::fs::write(&path, vec![1u8; len]).unwrap();
            let err = SealKey::read_file(&path).unwrap_err();
            assert!(matches!(err, SealError::KeyLength { .. }), "{len}: {err}");
        }
        let err = SealKey::read_file(&dir.path("missing")).unwrap_err();
        assert!(matches!(err, SealError::KeyFileRead { .. }), "{err}");
        let err = SealKey::read_file(&dir.0).unwrap_err();
        assert!(matches!(err, SealError::KeyFileNotAFile { .. }), "{err}");
        assert_ne!(SnapshotId::random().unwrap(), SnapshotId::random().unwrap());
    }
}
