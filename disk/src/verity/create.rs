//! [`format()`]: writing a hash file (superblock and tree) for an image, as
//! `veritysetup format` does.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{to_hex, Algorithm, Error, Geometry, Superblock, MAX_DIGEST, MAX_SALT};
use crate::{open_image, ImageFile, OpenOptions};

/// How [`format()`] builds the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatOptions {
    /// Bytes per data block (a power of two from 512 to 4096).
    pub data_block_size: u32,
    /// Bytes per hash block (a power of two from 512 to 4096).
    pub hash_block_size: u32,
    /// The hash algorithm.
    pub algorithm: Algorithm,
    /// The salt; `None` makes a random 32-byte one (as veritysetup does), `Some(vec![])` none.
    pub salt: Option<Vec<u8>>,
}

impl Default for FormatOptions {
    fn default() -> FormatOptions {
        FormatOptions {
            data_block_size: 4096,
            hash_block_size: 4096,
            algorithm: Algorithm::Sha256,
            salt: None,
        }
    }
}

fn random(buf: &mut [u8]) -> Result<(), Error> {
    let path = Path::new("/dev/urandom");
    let io = |source| Error::Io {
        what: "read",
        path: path.to_path_buf(),
        source,
    };
    File::open(path).map_err(io)?.read_exact(buf).map_err(io)
}

/// Writes a hash file for the image at `data` (any format; its size must be a whole number of
/// data blocks' worth, a tail past the last whole block is not covered) to `hash_file`
/// (created or truncated), and returns the root hash in hex.
pub fn format(data: &Path, hash_file: &Path, options: &FormatOptions) -> Result<String, Error> {
    let salt = match &options.salt {
        Some(salt) if salt.len() > MAX_SALT => return Err(Error::SaltSize(salt.len())),
        Some(salt) => salt.clone(),
        None => {
            let mut salt = vec![0u8; 32];
            random(&mut salt)?;
            salt
        }
    };
    let opened = open_image(
        data,
        &OpenOptions {
            read_only: true,
            format: None,
        },
    )
    .map_err(|e| Error::Data(Box::new(e)))?;
    let mut image = opened.into_image_file();
    let data_blocks = image.size() / u64::from(options.data_block_size.max(1));
    if data_blocks == 0 {
        return Err(Error::Options(format!(
            "{} is smaller than one {}-byte data block",
            data.display(),
            options.data_block_size
        )));
    }
    let geometry = Geometry::new(
        options.algorithm,
        options.data_block_size,
        options.hash_block_size,
        data_blocks,
    )?;
    let mut uuid = [0u8; 16];
    random(&mut uuid)?;
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    let superblock = Superblock {
        uuid,
        algorithm: options.algorithm,
        data_block_size: options.data_block_size,
        hash_block_size: options.hash_block_size,
        data_blocks,
        salt,
    };
    let io = |what| {
        move |source| Error::Io {
            what,
            path: hash_file.to_path_buf(),
            source,
        }
    };
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(hash_file)
        .map_err(io("create"))?;
    out.set_len(geometry.hash_file_len()).map_err(io("size"))?;
    out.write_all_at(&superblock.to_bytes(), 0)
        .map_err(io("write"))?;

    let mut writer = LevelWriter::new(&superblock, &geometry);
    let mut root = [0u8; MAX_DIGEST];
    if geometry.levels() == 0 {
        let mut block = vec![0u8; options.data_block_size as usize];
        image.read(0, &mut block).map_err(data_err)?;
        options.algorithm.hash(&superblock.salt, &block, &mut root);
    } else {
        // Level 0 from the data, in chunks.
        let bs = u64::from(options.data_block_size);
        let chunk_blocks = ((1u64 << 20) / bs).max(1);
        let mut buf = vec![0u8; (chunk_blocks * bs) as usize];
        let mut block = 0u64;
        writer.start(0);
        while block < data_blocks {
            let n = chunk_blocks.min(data_blocks - block);
            let piece = &mut buf[..(n * bs) as usize];
            image.read(block * bs, piece).map_err(data_err)?;
            for data in piece.chunks_exact(bs as usize) {
                writer.push(data, &out).map_err(io("write"))?;
            }
            block += n;
        }
        writer.finish(&out).map_err(io("write"))?;
        // Each level above from the one below, read back from the hash file.
        let mut below = vec![0u8; geometry.hash_block as usize];
        for level in 1..geometry.levels() {
            writer.start(level);
            for index in 0..geometry.level_blocks[level - 1] {
                out.read_exact_at(&mut below, geometry.block_offset(level - 1, index))
                    .map_err(io("read back"))?;
                writer.push(&below, &out).map_err(io("write"))?;
            }
            writer.finish(&out).map_err(io("write"))?;
        }
        let top = geometry.levels() - 1;
        out.read_exact_at(&mut below, geometry.block_offset(top, 0))
            .map_err(io("read back"))?;
        options.algorithm.hash(&superblock.salt, &below, &mut root);
    }
    out.sync_all().map_err(io("sync"))?;
    Ok(to_hex(&root[..geometry.digest]))
}

fn data_err(e: crate::DiskIoError) -> Error {
    Error::ReadIo {
        what: "data image",
        source: Box::new(e),
    }
}

/// Fills the hash blocks of one level, one entry per block hashed.
struct LevelWriter<'a> {
    superblock: &'a Superblock,
    geometry: &'a Geometry,
    level: usize,
    index: u64,
    block: Vec<u8>,
    used: usize,
}

impl<'a> LevelWriter<'a> {
    fn new(superblock: &'a Superblock, geometry: &'a Geometry) -> LevelWriter<'a> {
        LevelWriter {
            superblock,
            geometry,
            level: 0,
            index: 0,
            block: vec![0u8; geometry.hash_block as usize],
            used: 0,
        }
    }

    fn start(&mut self, level: usize) {
        self.level = level;
        self.index = 0;
        self.used = 0;
        self.block.fill(0);
    }

    fn push(&mut self, data: &[u8], out: &File) -> std::io::Result<()> {
        let mut digest = [0u8; MAX_DIGEST];
        self.superblock
            .algorithm
            .hash(&self.superblock.salt, data, &mut digest);
        let d = self.geometry.digest;
        self.block[self.used..self.used + d].copy_from_slice(&digest[..d]);
        self.used += self.geometry.entry;
        if self.used == self.block.len() {
            self.flush(out)?;
        }
        Ok(())
    }

    fn flush(&mut self, out: &File) -> std::io::Result<()> {
        out.write_all_at(
            &self.block,
            self.geometry.block_offset(self.level, self.index),
        )?;
        self.index += 1;
        self.used = 0;
        self.block.fill(0);
        Ok(())
    }

    fn finish(&mut self, out: &File) -> std::io::Result<()> {
        if self.used > 0 {
            self.flush(out)?;
        }
        Ok(())
    }
}
