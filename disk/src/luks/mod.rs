//! Encrypted disks in the LUKS format (LUKS1 and LUKS2, as cryptsetup and `qemu-img` write
//! them): [`LuksImage`] decrypts and encrypts any [`ImageFile`] sector by sector, with the
//! header in the same file or detached (cryptsetup's `--header`); [`luks_format`] creates one.
//!
//! Supported: cipher aes-xts-plain64 with 256- or 512-bit keys, keyslots with PBKDF2
//! (sha1/sha256/sha512) or Argon2i/Argon2id and the LUKS1 AF splitter, LUKS2 encryption
//! sectors of 512 to 4096 bytes. Anything else is refused with [`Error`] when the image is
//! opened. The header is untrusted input: its sizes are bounded before anything is allocated,
//! and key derivation costs are capped by [`KdfLimits`].
//!
//! Why not an existing crate: `luks2` reads LUKS2 only (no LUKS1, no creation), and `luks`
//! treats LUKS1 as a placeholder; we need both versions, detached headers and creation. The
//! header parsing and the AF splitter are therefore ours (from the LUKS1 and LUKS2 on-disk
//! format specifications); every cipher, hash and KDF is RustCrypto's.
//!
//! Key material (the volume key, derived keys, decrypted keyslot material, the passphrase and
//! the AES key schedules) lives only in [`SecretBuf`]/[`secret::Secret`] memory: mlock'ed,
//! excluded from core dumps and zeroed when dropped.

mod crypto;
mod luks1;
mod luks2;
pub mod secret;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use crypto::{Hash, Kdf, KdfLimits};
pub use secret::{SecretAllocError, SecretBuf};

use crate::guest::{DiskId, DiskIoError};
use crate::ImageFile;
use crypto::XtsCipher;
use secret::Secret;

/// The magic of a LUKS header (both versions; LUKS2's secondary header has `SKUL\xba\xbe`).
pub const LUKS_MAGIC: [u8; 6] = *b"LUKS\xba\xbe";

/// The only cipher supported, as LUKS2 names it.
pub const CIPHER: &str = "aes-xts-plain64";

/// Largest key file read ([`read_key_file`]), as cryptsetup's default `--keyfile-size` cap.
pub const MAX_KEY_FILE: u64 = 8 << 20;

/// Bytes moved through the cipher at once.
const CHUNK: usize = 64 << 10;

/// Why a LUKS image could not be opened, created or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the header, keyslots or payload failed.
    #[error("I/O on the LUKS {what} failed")]
    Io {
        /// Which part.
        what: &'static str,
        /// The error.
        #[source]
        source: DiskIoError,
    },
    /// A file (detached header, key file, new image) could not be opened, read or written.
    #[error("{}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The header or the image is shorter than the header says.
    #[error("LUKS {what} truncated: needs {need} bytes, the file has {have}")]
    Truncated {
        /// What does not fit.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes there.
        have: u64,
    },
    /// No LUKS magic.
    #[error("not a LUKS header (no LUKS magic)")]
    NotLuks,
    /// A LUKS version other than 1 and 2.
    #[error("unsupported LUKS version {0}")]
    UnsupportedVersion(u16),
    /// The header contradicts itself or fails its checksum.
    #[error("damaged LUKS header: {0}")]
    Damaged(String),
    /// A cipher other than aes-xts-plain64 with a 256- or 512-bit key.
    #[error("unsupported LUKS cipher {0} (only aes-xts-plain64 with 256- or 512-bit keys)")]
    UnsupportedCipher(String),
    /// Some other feature this implementation lacks.
    #[error("unsupported LUKS feature: {0}")]
    Unsupported(String),
    /// A keyslot asks for more KDF work or memory than [`KdfLimits`] allow.
    #[error("LUKS keyslot KDF cost over the limit: {0}")]
    KdfCost(String),
    /// No keyslot opened with the key.
    #[error("no LUKS keyslot opens with this key ({tried} active keyslots tried)")]
    WrongKey {
        /// Keyslots tried.
        tried: usize,
    },
    /// The key file is larger than [`MAX_KEY_FILE`].
    #[error("key file {} is larger than {MAX_KEY_FILE} bytes", path.display())]
    KeyFileTooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The key is empty.
    #[error("the LUKS key is empty")]
    EmptyKey,
    /// Locked memory for key material could not be mapped.
    #[error(transparent)]
    Secret(#[from] SecretAllocError),
    /// The kernel's random source failed.
    #[error("getrandom failed")]
    Random(#[source] std::io::Error),
    /// Bad [`FormatOptions`] or size.
    #[error("cannot create a LUKS image: {0}")]
    Create(String),
    /// A bug: an invariant this module keeps did not hold.
    #[error("internal LUKS error: {0}")]
    Internal(&'static str),
}

/// Where a header is read from: the image itself or a detached header file.
trait HeaderSource {
    fn len(&self) -> u64;
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error>;
}

struct ImageSource<'a, T: ?Sized>(&'a mut T);

impl<T: ImageFile + ?Sized> HeaderSource for ImageSource<'_, T> {
    fn len(&self) -> u64 {
        self.0.size()
    }
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        check_range(self.len(), offset, buf.len(), "header")?;
        self.0.read(offset, buf).map_err(|source| Error::Io {
            what: "header",
            source,
        })
    }
}

struct FileSource {
    file: File,
    path: PathBuf,
    len: u64,
}

impl HeaderSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        check_range(self.len, offset, buf.len(), "header")?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| Error::File {
                path: self.path.clone(),
                source,
            })
    }
}

/// A byte slice as a header source (the fuzz target and tests).
struct SliceSource<'a>(&'a [u8]);

impl HeaderSource for SliceSource<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        check_range(self.len(), offset, buf.len(), "header")?;
        let start = offset as usize;
        buf.copy_from_slice(&self.0[start..start + buf.len()]);
        Ok(())
    }
}

fn check_range(have: u64, offset: u64, len: usize, what: &'static str) -> Result<(), Error> {
    let need = offset.checked_add(len as u64).ok_or(Error::Truncated {
        what,
        need: u64::MAX,
        have,
    })?;
    if need > have {
        return Err(Error::Truncated { what, need, have });
    }
    Ok(())
}

/// How the volume key of a keyslot is checked.
#[derive(Clone, Debug)]
struct VkDigest {
    hash: Hash,
    iterations: u32,
    salt: Vec<u8>,
    value: Vec<u8>,
}

/// One active keyslot.
#[derive(Clone, Debug)]
struct Keyslot {
    kdf: Kdf,
    /// Key material's byte offset in the header file.
    area_offset: u64,
    /// Bytes reserved for it.
    area_size: u64,
    /// The keyslot cipher's key size (aes-xts-plain64).
    area_key_size: usize,
    stripes: u32,
    af_hash: Hash,
    digest: VkDigest,
}

/// A parsed header, everything checked but the key.
#[derive(Clone, Debug)]
struct Header {
    version: u8,
    key_size: usize,
    /// Payload start in the image, in bytes.
    payload_offset: u64,
    /// Payload length; `None`: to the end of the image.
    payload_size: Option<u64>,
    sector_size: u32,
    /// Added to the payload's 512-byte sector number to make the IV (LUKS2 `iv_tweak`).
    iv_tweak: u64,
    keyslots: Vec<Keyslot>,
}

/// Largest key material one keyslot may have (64-byte key, 4000 stripes is 256000 bytes).
const MAX_KEY_MATERIAL: u64 = 4 << 20;

fn parse_header(src: &mut dyn HeaderSource) -> Result<Header, Error> {
    let mut head = [0u8; 8];
    src.read_exact_at(0, &mut head)?;
    if head[..6] != LUKS_MAGIC {
        return Err(Error::NotLuks);
    }
    match u16::from_be_bytes([head[6], head[7]]) {
        1 => luks1::parse(src),
        2 => luks2::parse(src),
        v => Err(Error::UnsupportedVersion(v)),
    }
}

/// Tries every keyslot of `header` with `key`; the volume key on success.
fn unlock(
    header: &Header,
    src: &mut dyn HeaderSource,
    key: &[u8],
    limits: &KdfLimits,
) -> Result<SecretBuf, Error> {
    let mut first_error = None;
    for slot in &header.keyslots {
        match try_keyslot(header, slot, src, key, limits) {
            Ok(Some(vk)) => return Ok(vk),
            Ok(None) => {}
            Err(e @ (Error::KdfCost(_) | Error::Truncated { .. })) => {
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(first_error.unwrap_or(Error::WrongKey {
        tried: header.keyslots.len(),
    }))
}

fn try_keyslot(
    header: &Header,
    slot: &Keyslot,
    src: &mut dyn HeaderSource,
    key: &[u8],
    limits: &KdfLimits,
) -> Result<Option<SecretBuf>, Error> {
    let material_len = (header.key_size as u64)
        .checked_mul(u64::from(slot.stripes))
        .filter(|n| *n <= MAX_KEY_MATERIAL)
        .ok_or_else(|| Error::Damaged("keyslot key material too large".into()))?;
    let sectors_len = material_len.div_ceil(512) * 512;
    if sectors_len > slot.area_size {
        return Err(Error::Damaged(format!(
            "keyslot material ({sectors_len} bytes) larger than its area ({} bytes)",
            slot.area_size
        )));
    }
    check_range(
        src.len(),
        slot.area_offset,
        sectors_len as usize,
        "keyslot area",
    )?;
    let mut slot_key = SecretBuf::zeroed(slot.area_key_size)?;
    slot.kdf.derive(key, &mut slot_key, limits)?;
    let mut material = SecretBuf::zeroed(sectors_len as usize)?;
    src.read_exact_at(slot.area_offset, &mut material)?;
    let cipher = XtsCipher::new(&slot_key)?;
    cipher.decrypt(&mut material, 512, 0);
    let mut vk = SecretBuf::zeroed(header.key_size)?;
    crypto::af_merge(&material, slot.stripes as usize, slot.af_hash, &mut vk);
    let d = &slot.digest;
    if d.iterations > limits.max_pbkdf2_iterations {
        return Err(Error::KdfCost(format!(
            "digest iterations {}",
            d.iterations
        )));
    }
    let mut check = SecretBuf::zeroed(d.value.len())?;
    d.hash.pbkdf2(&vk, &d.salt, d.iterations, &mut check);
    Ok(crypto::ct_eq(&check, &d.value).then_some(vk))
}

/// What a header says, for `info` and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LuksInfo {
    /// 1 or 2.
    pub version: u8,
    /// Volume key bytes (32 or 64).
    pub key_size: usize,
    /// Payload offset in the image, in bytes.
    pub payload_offset: u64,
    /// Encryption sector size.
    pub sector_size: u32,
    /// Active keyslots.
    pub keyslots: usize,
}

impl Header {
    fn info(&self) -> LuksInfo {
        LuksInfo {
            version: self.version,
            key_size: self.key_size,
            payload_offset: self.payload_offset,
            sector_size: self.sector_size,
            keyslots: self.keyslots.len(),
        }
    }
}

/// Parses `bytes` as a LUKS header (and, with `key`, unlocks it under `limits`): the fuzz
/// target's entry point. Never panics.
pub fn probe(bytes: &[u8], key: Option<&[u8]>, limits: &KdfLimits) -> Result<LuksInfo, Error> {
    let mut src = SliceSource(bytes);
    let header = parse_header(&mut src)?;
    if let Some(key) = key {
        unlock(&header, &mut src, key, limits)?;
    }
    Ok(header.info())
}

/// How to open a LUKS image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LuksOpenOptions {
    /// A detached header file (cryptsetup's `--header`); `None`: the header is in the image.
    pub header: Option<PathBuf>,
    /// Caps on the keyslots' KDF costs.
    pub limits: KdfLimits,
}

/// An encrypted disk: the payload of a LUKS image, decrypted on reads and encrypted on writes.
pub struct LuksImage<T> {
    inner: T,
    cipher: Secret<XtsCipher>,
    info: LuksInfo,
    payload_offset: u64,
    size: u64,
    sector_size: u64,
    iv_tweak: u64,
    buf: Vec<u8>,
}

impl<T> std::fmt::Debug for LuksImage<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuksImage")
            .field("info", &self.info)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<T: ImageFile> LuksImage<T> {
    /// Opens the LUKS image `inner` (its header inside, or in `options.header`) with `key`
    /// (a passphrase or key file's bytes, as they are).
    pub fn open(
        mut inner: T,
        key: &[u8],
        options: &LuksOpenOptions,
    ) -> Result<LuksImage<T>, Error> {
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        let (header, vk) = match &options.header {
            Some(path) => {
                let file = File::open(path).map_err(|source| Error::File {
                    path: path.clone(),
                    source,
                })?;
                let len = file
                    .metadata()
                    .map_err(|source| Error::File {
                        path: path.clone(),
                        source,
                    })?
                    .len();
                let mut src = FileSource {
                    file,
                    path: path.clone(),
                    len,
                };
                let header = parse_header(&mut src)?;
                let vk = unlock(&header, &mut src, key, &options.limits)?;
                (header, vk)
            }
            None => {
                let mut src = ImageSource(&mut inner);
                let header = parse_header(&mut src)?;
                let vk = unlock(&header, &mut src, key, &options.limits)?;
                (header, vk)
            }
        };
        let cipher = XtsCipher::new(&vk)?;
        drop(vk);
        let sector_size = u64::from(header.sector_size);
        let have = inner.size();
        let end = match header.payload_size {
            Some(size) => header
                .payload_offset
                .checked_add(size)
                .ok_or_else(|| Error::Damaged("payload offset plus size overflows".into()))?,
            None => have,
        };
        if end > have || end < header.payload_offset {
            return Err(Error::Truncated {
                what: "payload",
                need: end.max(header.payload_offset),
                have,
            });
        }
        let size = (end - header.payload_offset) / sector_size * sector_size;
        Ok(LuksImage {
            inner,
            cipher,
            info: header.info(),
            payload_offset: header.payload_offset,
            size,
            sector_size,
            iv_tweak: header.iv_tweak,
            buf: Vec::new(),
        })
    }

    /// What the header says.
    pub fn info(&self) -> &LuksInfo {
        &self.info
    }

    /// The encrypted image.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Unwraps the encrypted image.
    pub fn into_inner(self) -> T {
        self.inner
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), DiskIoError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(DiskIoError::Io {
                done: 0,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{len} bytes at {offset} run past the end of a {}-byte disk",
                        self.size
                    ),
                ),
            }),
        }
    }

    fn iv(&self, payload_byte: u64) -> u64 {
        (payload_byte >> 9).wrapping_add(self.iv_tweak)
    }

    /// Reads and decrypts whole sectors `start..start + len` of the payload into `self.buf`.
    fn load(&mut self, start: u64, len: usize) -> Result<(), DiskIoError> {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let buf = &mut self.buf[..len];
        self.inner.read(self.payload_offset + start, buf)?;
        let iv = (start >> 9).wrapping_add(self.iv_tweak);
        self.cipher.decrypt(buf, self.sector_size as usize, iv);
        Ok(())
    }
}

/// Splits `offset..offset + len` into sector-aligned chunks of at most [`CHUNK`] bytes:
/// `(chunk start, chunk length, offset in the request, bytes of the request in it, offset of
/// those in the chunk)`.
fn chunks(
    offset: u64,
    len: usize,
    sector: u64,
) -> impl Iterator<Item = (u64, usize, usize, usize, usize)> {
    let chunk = (CHUNK as u64).max(sector);
    let mut pos = offset;
    let end = offset + len as u64;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let start = pos / sector * sector;
        let chunk_end = (start + chunk).min(end.div_ceil(sector) * sector);
        let take = (chunk_end.min(end) - pos) as usize;
        let item = (
            start,
            (chunk_end - start) as usize,
            (pos - offset) as usize,
            take,
            (pos - start) as usize,
        );
        pos += take as u64;
        Some(item)
    })
}

impl<T: ImageFile> ImageFile for LuksImage<T> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    fn id(&self) -> DiskId {
        self.inner.id()
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskIoError> {
        self.check(offset, buf.len())?;
        for (start, len, at, take, skip) in chunks(offset, buf.len(), self.sector_size) {
            self.load(start, len)?;
            buf[at..at + take].copy_from_slice(&self.buf[skip..skip + take]);
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), DiskIoError> {
        self.check(offset, buf.len())?;
        if self.inner.read_only() {
            return Err(DiskIoError::Unsupported("writes to a read-only image"));
        }
        for (start, len, at, take, skip) in chunks(offset, buf.len(), self.sector_size) {
            if take == len {
                if self.buf.len() < len {
                    self.buf.resize(len, 0);
                }
            } else {
                self.load(start, len)?;
            }
            self.buf[skip..skip + take].copy_from_slice(&buf[at..at + take]);
            let iv = self.iv(start);
            let data = &mut self.buf[..len];
            self.cipher.encrypt(data, self.sector_size as usize, iv);
            self.inner.write(self.payload_offset + start, data)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DiskIoError> {
        self.inner.flush()
    }
}

/// Reads a key file whole, as it is (no newline is stripped, as cryptsetup's `--key-file`),
/// into locked memory.
pub fn read_key_file(path: &Path) -> Result<SecretBuf, Error> {
    use std::io::Read;
    let err = |source| Error::File {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    if len > MAX_KEY_FILE {
        return Err(Error::KeyFileTooLarge {
            path: path.to_path_buf(),
        });
    }
    // One byte more than the size: a file that grew is caught below.
    let mut buf = SecretBuf::zeroed(len as usize + 1)?;
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
    if got > len as usize {
        return Err(Error::KeyFileTooLarge {
            path: path.to_path_buf(),
        });
    }
    buf.truncate(got);
    if got == 0 {
        return Err(Error::EmptyKey);
    }
    Ok(buf)
}

/// Which LUKS version [`luks_format`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LuksVersion {
    /// LUKS1: what `qemu-img` (its luks driver) and every cryptsetup read.
    Luks1,
    /// LUKS2: cryptsetup's default.
    #[default]
    Luks2,
}

/// The keyslot KDF [`luks_format`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatKdf {
    /// PBKDF2-HMAC-SHA256 with this many iterations (at least 1000).
    Pbkdf2 {
        /// Iterations.
        iterations: u32,
    },
    /// Argon2id (LUKS2 only).
    Argon2id {
        /// Passes (at least 4, cryptsetup's minimum).
        time: u32,
        /// Memory in KiB (at least 32).
        memory_kib: u32,
        /// Lanes.
        lanes: u32,
    },
}

/// How [`luks_format`] creates an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatOptions {
    /// LUKS1 or LUKS2.
    pub version: LuksVersion,
    /// Volume key bits: 256 or 512 (aes-xts-plain64 with AES-128 or AES-256).
    pub key_bits: u32,
    /// The keyslot's KDF.
    pub kdf: FormatKdf,
    /// Write the header to this file instead (cryptsetup's `--header`); the payload starts at
    /// the image's first byte.
    pub header: Option<PathBuf>,
    /// Fill the payload with encrypted zeros; otherwise it is left as it is (reads return
    /// garbage until written).
    pub zero_payload: bool,
}

impl Default for FormatOptions {
    fn default() -> FormatOptions {
        FormatOptions {
            version: LuksVersion::Luks2,
            key_bits: 512,
            kdf: FormatKdf::Argon2id {
                time: 4,
                memory_kib: 256 << 10,
                lanes: 1,
            },
            header: None,
            zero_payload: false,
        }
    }
}

impl FormatOptions {
    /// Cheap key derivation, for tests: PBKDF2 with 1000 iterations.
    pub fn cheap() -> FormatOptions {
        FormatOptions {
            kdf: FormatKdf::Pbkdf2 { iterations: 1000 },
            ..FormatOptions::default()
        }
    }
}

/// A header ready to write: its bytes (header and keyslot areas) and where the payload starts.
struct BuiltHeader {
    bytes: Vec<u8>,
    payload_offset: u64,
    vk: SecretBuf,
}

/// Creates a LUKS image at `image` with one keyslot that `key` opens: a new file with a
/// `size`-byte payload, or, with `size` `None`, an existing file whose bytes after the header
/// become the payload. Returns what the header says.
pub fn luks_format(
    image: &Path,
    key: &[u8],
    size: Option<u64>,
    options: &FormatOptions,
) -> Result<LuksInfo, Error> {
    if key.is_empty() {
        return Err(Error::EmptyKey);
    }
    let key_size = match options.key_bits {
        256 => 32,
        512 => 64,
        bits => {
            return Err(Error::UnsupportedCipher(format!(
                "aes-xts-plain64 with a {bits}-bit key"
            )))
        }
    };
    if let FormatKdf::Pbkdf2 { iterations } = options.kdf {
        if iterations < 1000 {
            return Err(Error::Create(
                "pbkdf2 needs at least 1000 iterations".into(),
            ));
        }
    }
    if let FormatKdf::Argon2id {
        time,
        memory_kib,
        lanes,
    } = options.kdf
    {
        if options.version == LuksVersion::Luks1 {
            return Err(Error::Create("LUKS1 keyslots use pbkdf2 only".into()));
        }
        if time < 4 || memory_kib < 32 || lanes == 0 || lanes > 16 {
            return Err(Error::Create(
                "argon2id needs time >= 4, memory >= 32 KiB and 1 to 16 lanes".into(),
            ));
        }
    }
    let detached = options.header.is_some();
    let built = match options.version {
        LuksVersion::Luks1 => luks1::build(key, key_size, options.kdf, detached)?,
        LuksVersion::Luks2 => luks2::build(key, key_size, options.kdf, detached)?,
    };
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::File { path, source }
    };
    let image_file = match size {
        Some(size) => {
            if size == 0 || size % 512 != 0 {
                return Err(Error::Create(format!(
                    "payload size {size} is not a positive multiple of 512"
                )));
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(image)
                .map_err(file_err(image))?;
            let total = built
                .payload_offset
                .checked_add(size)
                .ok_or_else(|| Error::Create(format!("payload size {size} too large")))?;
            file.set_len(total).map_err(file_err(image))?;
            file
        }
        None => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(image)
                .map_err(file_err(image))?;
            let len = file.metadata().map_err(file_err(image))?.len();
            if len < built.payload_offset + 512 {
                return Err(Error::Create(format!(
                    "{} has {len} bytes, too few for a {}-byte LUKS header and a payload",
                    image.display(),
                    built.payload_offset
                )));
            }
            file
        }
    };
    match &options.header {
        Some(path) => {
            std::fs::write(path, &built.bytes).map_err(file_err(path))?;
        }
        None => image_file
            .write_all_at(&built.bytes, 0)
            .map_err(file_err(image))?,
    }
    let len = image_file.metadata().map_err(file_err(image))?.len();
    let payload_len = (len - built.payload_offset) / 512 * 512;
    if options.zero_payload {
        let cipher = XtsCipher::new(&built.vk)?;
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0u64;
        while done < payload_len {
            let n = (payload_len - done).min(CHUNK as u64) as usize;
            let piece = &mut buf[..n];
            piece.fill(0);
            cipher.encrypt(piece, 512, done >> 9);
            image_file
                .write_all_at(piece, built.payload_offset + done)
                .map_err(file_err(image))?;
            done += n as u64;
        }
    }
    image_file.sync_all().map_err(file_err(image))?;
    Ok(LuksInfo {
        version: match options.version {
            LuksVersion::Luks1 => 1,
            LuksVersion::Luks2 => 2,
        },
        key_size,
        payload_offset: built.payload_offset,
        sector_size: 512,
        keyslots: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_requests() {
        for sector in [512u64, 4096] {
            for (offset, len) in [
                (0u64, 512usize),
                (100, 10),
                (511, 2),
                (4000, 200_000),
                (0, CHUNK * 2),
            ] {
                let mut covered = 0;
                for (start, clen, at, take, skip) in chunks(offset, len, sector) {
                    assert_eq!(start % sector, 0);
                    assert_eq!(clen as u64 % sector, 0);
                    assert!(clen <= CHUNK.max(sector as usize));
                    assert_eq!(at, covered);
                    assert!(skip + take <= clen);
                    assert_eq!(start + skip as u64, offset + at as u64);
                    covered += take;
                }
                assert_eq!(covered, len);
            }
        }
    }

    #[test]
    fn probe_refuses_garbage() {
        let limits = KdfLimits::default();
        assert!(matches!(
            probe(b"", None, &limits),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            probe(&[0u8; 4096], None, &limits),
            Err(Error::NotLuks)
        ));
        let mut v3 = vec![0u8; 4096];
        v3[..6].copy_from_slice(&LUKS_MAGIC);
        v3[7] = 3;
        assert!(matches!(
            probe(&v3, None, &limits),
            Err(Error::UnsupportedVersion(3))
        ));
    }
}
