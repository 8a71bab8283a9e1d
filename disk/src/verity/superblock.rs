//! The dm-verity superblock (512 bytes at the start of a hash file, as `veritysetup format`
//! writes it) and the hash tree's geometry that follows from it.
//!
//! Layout (little-endian): signature `"verity\0\0"` (8), version (u32, 1), hash type (u32, 1:
//! `H(salt || block)` with every hash padded to a power of two), uuid (16), algorithm name
//! (32, NUL-padded), data block size (u32), hash block size (u32), data blocks (u64), salt size
//! (u16), 6 bytes of padding, salt (256), 168 bytes of padding.

use super::{Algorithm, Error};

/// Size of the superblock.
pub const SUPERBLOCK_BYTES: usize = 512;
/// The superblock's first bytes.
pub const SIGNATURE: [u8; 8] = *b"verity\0\0";
/// Longest salt the superblock holds.
pub const MAX_SALT: usize = 256;
/// Smallest data or hash block accepted.
pub const MIN_BLOCK: u32 = 512;
/// Largest data or hash block accepted.
pub const MAX_BLOCK: u32 = 4096;

/// A parsed superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// The hash device's UUID (informational).
    pub uuid: [u8; 16],
    /// The hash algorithm.
    pub algorithm: Algorithm,
    /// Bytes per data block.
    pub data_block_size: u32,
    /// Bytes per hash block.
    pub hash_block_size: u32,
    /// Data blocks the tree covers.
    pub data_blocks: u64,
    /// The salt hashed before every block (may be empty).
    pub salt: Vec<u8>,
}

fn u32_at(b: &[u8; SUPERBLOCK_BYTES], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn check_block_size(which: &'static str, size: u32) -> Result<(), Error> {
    if size.is_power_of_two() && (MIN_BLOCK..=MAX_BLOCK).contains(&size) {
        Ok(())
    } else {
        Err(Error::BlockSize { which, size })
    }
}

impl Superblock {
    /// Parses the first bytes of a hash file; anything short, damaged or unsupported is an
    /// error.
    pub fn parse(bytes: &[u8]) -> Result<Superblock, Error> {
        let b: &[u8; SUPERBLOCK_BYTES] = bytes
            .get(..SUPERBLOCK_BYTES)
            .and_then(|b| b.try_into().ok())
            .ok_or(Error::ShortSuperblock { len: bytes.len() })?;
        if b[..8] != SIGNATURE {
            return Err(Error::BadSignature);
        }
        let version = u32_at(b, 8);
        if version != 1 {
            return Err(Error::Version(version));
        }
        let hash_type = u32_at(b, 12);
        if hash_type != 1 {
            return Err(Error::HashType(hash_type));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let name = &b[32..64];
        let name_len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        let name = String::from_utf8_lossy(&name[..name_len]).into_owned();
        let algorithm = Algorithm::from_name(&name).ok_or(Error::Algorithm(name))?;
        let data_block_size = u32_at(b, 64);
        let hash_block_size = u32_at(b, 68);
        check_block_size("data", data_block_size)?;
        check_block_size("hash", hash_block_size)?;
        let mut blocks = [0u8; 8];
        blocks.copy_from_slice(&b[72..80]);
        let data_blocks = u64::from_le_bytes(blocks);
        if data_blocks == 0 {
            return Err(Error::NoDataBlocks);
        }
        if data_blocks
            .checked_mul(u64::from(data_block_size))
            .is_none()
        {
            return Err(Error::TooLarge);
        }
        let salt_size = usize::from(u16::from_le_bytes([b[80], b[81]]));
        if salt_size > MAX_SALT {
            return Err(Error::SaltSize(salt_size));
        }
        let salt = b[88..88 + salt_size].to_vec();
        Ok(Superblock {
            uuid,
            algorithm,
            data_block_size,
            hash_block_size,
            data_blocks,
            salt,
        })
    }

    /// The superblock's bytes.
    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_BYTES] {
        let mut b = [0u8; SUPERBLOCK_BYTES];
        b[..8].copy_from_slice(&SIGNATURE);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        let name = self.algorithm.name().as_bytes();
        b[32..32 + name.len()].copy_from_slice(name);
        b[64..68].copy_from_slice(&self.data_block_size.to_le_bytes());
        b[68..72].copy_from_slice(&self.hash_block_size.to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        let salt = &self.salt[..self.salt.len().min(MAX_SALT)];
        b[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        b[88..88 + salt.len()].copy_from_slice(salt);
        b
    }

    /// The hash tree's shape.
    pub fn geometry(&self) -> Result<Geometry, Error> {
        Geometry::new(
            self.algorithm,
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
        )
    }
}

/// Where each level of the hash tree lies in the hash file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes of a digest.
    pub digest: usize,
    /// Bytes of one entry in a hash block: the digest padded to a power of two.
    pub entry: usize,
    /// log2 of the entries per hash block.
    pub bits: u32,
    /// Bytes per hash block.
    pub hash_block: u64,
    /// Byte offset of the tree in the hash file (the first hash block after the superblock).
    pub tree_offset: u64,
    /// First block (counted from `tree_offset`) of each level, level 0 (the hashes of the data
    /// blocks) first; the top level is stored first in the file and is one block.
    pub level_start: Vec<u64>,
    /// Blocks of each level.
    pub level_blocks: Vec<u64>,
    /// Blocks of the whole tree.
    pub tree_blocks: u64,
}

impl Geometry {
    /// The tree over `data_blocks` blocks (`data_blocks` > 0, block sizes checked).
    pub fn new(
        algorithm: Algorithm,
        data_block_size: u32,
        hash_block_size: u32,
        data_blocks: u64,
    ) -> Result<Geometry, Error> {
        check_block_size("data", data_block_size)?;
        check_block_size("hash", hash_block_size)?;
        if data_blocks == 0 {
            return Err(Error::NoDataBlocks);
        }
        let digest = algorithm.digest_len();
        let entry = digest.next_power_of_two();
        let per_block = hash_block_size as usize / entry;
        if per_block < 2 {
            return Err(Error::BlockSize {
                which: "hash",
                size: hash_block_size,
            });
        }
        let bits = per_block.trailing_zeros();
        let mut levels = 0u32;
        while bits * levels < 64 && (data_blocks - 1) >> (bits * levels) != 0 {
            levels += 1;
        }
        let blocks_at = |level: u32| -> u64 {
            let shift = (level + 1) * bits;
            if shift >= 64 {
                1
            } else {
                ((data_blocks - 1) >> shift) + 1
            }
        };
        let level_blocks: Vec<u64> = (0..levels).map(blocks_at).collect();
        let mut level_start = vec![0u64; levels as usize];
        let mut position = 0u64;
        for level in (0..levels as usize).rev() {
            level_start[level] = position;
            position = position
                .checked_add(level_blocks[level])
                .ok_or(Error::TooLarge)?;
        }
        let hash_block = u64::from(hash_block_size);
        // The superblock takes the first hash block (512 bytes rounded up to a hash block).
        let tree_offset = hash_block.max(SUPERBLOCK_BYTES as u64);
        position
            .checked_mul(hash_block)
            .and_then(|b| b.checked_add(tree_offset))
            .ok_or(Error::TooLarge)?;
        Ok(Geometry {
            digest,
            entry,
            bits,
            hash_block,
            tree_offset,
            level_start,
            level_blocks,
            tree_blocks: position,
        })
    }

    /// Levels of the tree (0: the data is one block, whose hash is the root hash).
    pub fn levels(&self) -> usize {
        self.level_start.len()
    }

    /// Byte offset in the hash file of block `index` of `level`.
    pub fn block_offset(&self, level: usize, index: u64) -> u64 {
        self.tree_offset + (self.level_start[level] + index) * self.hash_block
    }

    /// Bytes of the hash file the superblock and tree take.
    pub fn hash_file_len(&self) -> u64 {
        self.tree_offset + self.tree_blocks * self.hash_block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            uuid: [7; 16],
            algorithm: Algorithm::Sha256,
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 256,
            salt: vec![1, 2, 3],
        }
    }

    #[test]
    fn round_trips() {
        let sb = sample();
        assert_eq!(Superblock::parse(&sb.to_bytes()).unwrap(), sb);
    }

    #[test]
    fn geometry_matches_veritysetup() {
        // veritysetup: 256 blocks of 4 KiB, sha256 -> 3 hash blocks; one block -> none.
        let g = sample().geometry().unwrap();
        assert_eq!((g.levels(), g.tree_blocks), (2, 3));
        assert_eq!(g.level_start, vec![1, 0]);
        assert_eq!(g.hash_file_len(), 16384);
        let one = Geometry::new(Algorithm::Sha256, 4096, 4096, 1).unwrap();
        assert_eq!((one.levels(), one.hash_file_len()), (0, 4096));
    }

    #[test]
    fn hostile_superblocks_are_errors() {
        let good = sample().to_bytes();
        assert!(matches!(
            Superblock::parse(&good[..100]),
            Err(Error::ShortSuperblock { len: 100 })
        ));
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(Superblock::parse(&b), Err(Error::BadSignature)));
        let mut b = good;
        b[8] = 2;
        assert!(matches!(Superblock::parse(&b), Err(Error::Version(2))));
        let mut b = good;
        b[12] = 0;
        assert!(matches!(Superblock::parse(&b), Err(Error::HashType(0))));
        let mut b = good;
        b[32..64].copy_from_slice(&[b'x'; 32]);
        assert!(matches!(Superblock::parse(&b), Err(Error::Algorithm(_))));
        let mut b = good;
        b[64..68].copy_from_slice(&3000u32.to_le_bytes());
        assert!(matches!(
            Superblock::parse(&b),
            Err(Error::BlockSize { .. })
        ));
        let mut b = good;
        b[68..72].copy_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(matches!(
            Superblock::parse(&b),
            Err(Error::BlockSize { .. })
        ));
        let mut b = good;
        b[72..80].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(Superblock::parse(&b), Err(Error::TooLarge)));
        let mut b = good;
        b[72..80].copy_from_slice(&0u64.to_le_bytes());
        assert!(matches!(Superblock::parse(&b), Err(Error::NoDataBlocks)));
        let mut b = good;
        b[80..82].copy_from_slice(&300u16.to_le_bytes());
        assert!(matches!(Superblock::parse(&b), Err(Error::SaltSize(300))));
    }

    #[test]
    fn huge_trees_do_not_overflow() {
        for blocks in [u64::MAX >> 12, u64::MAX >> 9, 1 << 40, 2, 129] {
            for (d, h) in [(512, 512), (4096, 4096), (512, 4096)] {
                for a in Algorithm::ALL {
                    let _ = Geometry::new(a, d, h, blocks);
                }
            }
        }
    }
}
