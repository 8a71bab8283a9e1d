//! Verified read-only disks in the dm-verity format: a data image (any format) checked block by
//! block against a Merkle tree of hashes in a separate hash file, up to a root hash the user
//! supplies (as `veritysetup` and the kernel's dm-verity do).
//!
//! The hash file is what `veritysetup format DATA HASHFILE` writes: a 512-byte superblock
//! ([`Superblock`]) in the first hash block, then the hash tree, top level first. Every hash is
//! `H(salt || block)` (hash type 1), each padded to a power of two in its hash block. Hash files
//! made with `--no-superblock` are not supported (their parameters would all have to be given
//! by hand), nor is hash type 0 (Chrome OS) or a hash area at an offset (`--hash-offset`).
//!
//! [`VerityImage`] serves the data: every data block a read touches is hashed and checked up
//! the tree (hash blocks are cached once verified, in a bounded cache), and a block that does
//! not match fails that read with [`Error::CorruptBlock`] naming it (inside
//! [`DiskIoError::Format`](crate::DiskIoError::Format)), is logged, and counts in [`VerityImage::corrupt_blocks`]; every
//! other block stays readable. [`format()`] writes a hash file for an image and returns its root
//! hash.
//!
//! ```
//! use vmm_disk::verity::{self, FormatOptions, VerityImage};
//! use vmm_disk::{ImageFile, RawFile};
//!
//! let dir = std::env::temp_dir().join(format!("vmm-verity-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let (data, hash) = (dir.join("data.img"), dir.join("data.hash"));
//! std::fs::write(&data, vec![0x5a; 1 << 20])?;
//! let root = verity::format(&data, &hash, &FormatOptions::default())?;
//!
//! let mut disk = VerityImage::open(RawFile::open(&data, true)?, &hash, &root)?;
//! let mut buf = [0u8; 512];
//! disk.read(8192, &mut buf)?;
//! assert_eq!(buf, [0x5a; 512]);
//! assert_eq!(disk.corrupt_blocks(), 0);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod create;
mod image;
mod superblock;

use sha2::Digest;

pub use create::{format, FormatOptions};
pub use image::{VerityImage, DEFAULT_CACHE_BLOCKS};
pub use superblock::{Geometry, Superblock, MAX_BLOCK, MAX_SALT, MIN_BLOCK, SUPERBLOCK_BYTES};

/// Longest digest of any supported algorithm.
pub const MAX_DIGEST: usize = 64;

/// A hash algorithm of the tree, by its kernel crypto name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-224.
    Sha224,
    /// SHA-256 (veritysetup's default).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Sha224,
        Algorithm::Sha256,
        Algorithm::Sha384,
        Algorithm::Sha512,
    ];

    /// The name in the superblock and on veritysetup's command line.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha224 => "sha224",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// The algorithm called `name` (case-insensitive), if supported.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// Bytes of a digest.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha224 => 28,
            Algorithm::Sha256 => 32,
            Algorithm::Sha384 => 48,
            Algorithm::Sha512 => 64,
        }
    }

    /// `H(salt || block)` into `out[..digest_len()]`.
    pub fn hash(self, salt: &[u8], block: &[u8], out: &mut [u8; MAX_DIGEST]) {
        fn run<D: Digest>(salt: &[u8], block: &[u8], out: &mut [u8]) {
            let d = D::new().chain_update(salt).chain_update(block).finalize();
            out[..d.len()].copy_from_slice(&d);
        }
        match self {
            Algorithm::Sha224 => run::<sha2::Sha224>(salt, block, out),
            Algorithm::Sha256 => run::<sha2::Sha256>(salt, block, out),
            Algorithm::Sha384 => run::<sha2::Sha384>(salt, block, out),
            Algorithm::Sha512 => run::<sha2::Sha512>(salt, block, out),
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of verity disks: refusing a hash file or root hash at open, and a block that fails
/// verification on a read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("cannot {what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The data image failed.
    #[error("the data image failed")]
    Data(#[source] Box<crate::DiskError>),
    /// Reading the data image or hash file failed during a read.
    #[error("reading the {what} failed")]
    ReadIo {
        /// "data image" or "hash file".
        what: &'static str,
        /// The error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The hash file is shorter than a superblock.
    #[error("verity superblock: the hash file has only {len} bytes, a superblock is 512")]
    ShortSuperblock {
        /// Bytes there were.
        len: usize,
    },
    /// No "verity" signature (or a hash file made with `--no-superblock`, not supported).
    #[error("not a verity hash file: no \"verity\" superblock (hash files made with --no-superblock are not supported)")]
    BadSignature,
    /// A superblock version other than 1.
    #[error("verity superblock version {0} is not supported (only 1)")]
    Version(u32),
    /// A hash type other than 1.
    #[error("verity hash type {0} is not supported (only 1, the normal one)")]
    HashType(u32),
    /// An unknown or unsupported hash algorithm.
    #[error("verity hash algorithm {0:?} is not supported (sha256, sha224, sha384 or sha512)")]
    Algorithm(String),
    /// A block size that is not a power of two from 512 to 4096.
    #[error("verity {which} block size {size} is not supported (a power of two from 512 to 4096)")]
    BlockSize {
        /// "data" or "hash".
        which: &'static str,
        /// The size.
        size: u32,
    },
    /// A tree over no data.
    #[error("the verity hash file covers no data blocks")]
    NoDataBlocks,
    /// A salt longer than the superblock holds.
    #[error("verity salt of {0} bytes is longer than 256")]
    SaltSize(usize),
    /// Sizes that overflow.
    #[error("the verity hash file's sizes are absurd (they overflow)")]
    TooLarge,
    /// The hash file ends before its tree does.
    #[error("the verity hash file has {size} bytes, its tree needs {needed}")]
    HashFileTooShort {
        /// Bytes the superblock and tree take.
        needed: u64,
        /// Bytes there are.
        size: u64,
    },
    /// The hash file is for an image of another size.
    #[error("the verity hash file is for {data_blocks} blocks of {block_size} bytes, but the data image has {image_size} bytes (a hash file for another image?)")]
    SizeMismatch {
        /// Data blocks the hash file covers.
        data_blocks: u64,
        /// Bytes per data block.
        block_size: u32,
        /// The data image's size.
        image_size: u64,
    },
    /// A root hash that is not hex.
    #[error("the verity root hash is not hexadecimal: {0:?}")]
    RootHashHex(String),
    /// A root hash of the wrong length for the algorithm.
    #[error("the verity root hash has {got} bytes, {algorithm} hashes have {expected}")]
    RootHashLength {
        /// The algorithm.
        algorithm: Algorithm,
        /// Bytes it should have.
        expected: usize,
        /// Bytes it has.
        got: usize,
    },
    /// The top of the tree does not hash to the root hash given.
    #[error("the verity root hash does not match the hash file (wrong root hash, or a damaged hash file)")]
    WrongRootHash,
    /// A data block that does not match its hash.
    #[error("verity: data block {block} (bytes {offset}..) does not match its hash")]
    CorruptBlock {
        /// The data block.
        block: u64,
        /// Its first byte in the data image.
        offset: u64,
    },
    /// A hash block on the way up from a data block does not match its parent.
    #[error("verity: hash block {hash_block} (level {level}) covering data block {block} does not match its hash")]
    CorruptHashBlock {
        /// The data block being read.
        block: u64,
        /// The tree level (0: the hashes of the data blocks).
        level: usize,
        /// The hash block's index in the hash file (the superblock's block is 0).
        hash_block: u64,
    },
    /// A verity disk asked for without read-only.
    #[error("a verity disk must be opened read-only")]
    NotReadOnly,
    /// A new image for a running verity disk (its hash file and root hash are for the old).
    #[error("a verity disk's image cannot be replaced while the VM runs")]
    SwapRefused,
    /// A format option out of range.
    #[error("verity format: {0}")]
    Options(String),
}

/// `bytes` in lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The bytes hex `text` spells (either case), or `None`.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    text.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(to_hex(&[0, 0xab, 0x5f]), "00ab5f");
        assert_eq!(from_hex("00AB5f"), Some(vec![0, 0xab, 0x5f]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("é1"), None);
    }

    #[test]
    fn algorithm_names() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(a.name()), Some(a));
        }
        assert_eq!(Algorithm::from_name("sha1"), None);
    }
}
