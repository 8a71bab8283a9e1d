//! Snapshot state files: the vCPU, VM and device state of a snapshot in one versioned,
//! checksummed file, tied to the kind of CPU it was taken on.
//!
//! A state file is a fixed 64-byte header (magic, format version, body length, CRC-32 of the
//! body, the CPU's vendor/family/model/stepping, a CRC-32 of the header; see [`mod@format`]) followed
//! by the body: the caller's state serialized as JSON with serde_json. Guest memory is not in it:
//! it goes to a memory file (`vmm_memory::snapshot`), whose layout the caller keeps in the body.
//!
//! [`SnapshotFile::read`] refuses, with its own [`FormatError`], a file that is not a state file,
//! has another format version, is truncated, fails a checksum, declares a body over
//! [`MAX_BODY_LEN`] (before allocating it), or was taken on another CPU vendor, family or model.
//! [`SnapshotFile::write`] writes a temporary file beside the destination, syncs it and renames
//! it over the destination, so a crash never leaves a half-written state file under its name.

pub mod format;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use vmm_memory::seal::{self, SealError, SealKey, SealedKind, SnapshotId};

pub use format::{
    CpuIdentity, FormatError, SnapshotHeader, FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_BODY_LEN,
};

/// Errors of reading and writing snapshot state files.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file cannot be opened or created.
    #[error("cannot open snapshot state file {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The path is not a regular file.
    #[error("snapshot state file {path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The destination path has no file name.
    #[error("{path} cannot be a snapshot state file: it has no file name")]
    InvalidPath {
        /// The path.
        path: PathBuf,
    },
    /// Reading the file failed.
    #[error("cannot read snapshot state file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing, syncing or renaming the file failed.
    #[error("cannot write snapshot state file {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file was read but is refused; the source says why.
    #[error("snapshot state file {path} cannot be restored")]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: FormatError,
    },
    /// A sealed state file is refused (wrong key, damaged, truncated...).
    #[error("sealed snapshot state file {path} cannot be restored")]
    Sealed {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: SealError,
    },
    /// Bytes given directly (not from a file) are refused.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The state to save cannot be serialized.
    #[error("cannot serialize the snapshot state")]
    Encode(#[source] serde_json::Error),
    /// The state to save serializes to more than a state file may hold.
    #[error(
        "the snapshot state is {len} bytes, more than the limit of {max} bytes of a state file"
    )]
    TooLarge {
        /// Serialized length.
        len: u64,
        /// The limit.
        max: u64,
    },
}

impl SnapshotError {
    /// The format problem behind this error, if the content (not the I/O) was refused.
    pub fn format_error(&self) -> Option<&FormatError> {
        match self {
            SnapshotError::Refused { source, .. } | SnapshotError::Format(source) => Some(source),
            _ => None,
        }
    }
}

/// Reads and writes snapshot state files.
#[derive(Debug)]
pub struct SnapshotFile;

impl SnapshotFile {
    /// Serializes `body` into the bytes of a state file taken on this host's CPU.
    pub fn encode(body: &impl Serialize) -> Result<Vec<u8>, SnapshotError> {
        Self::encode_for_cpu(body, CpuIdentity::host())
    }

    /// Serializes `body` into the bytes of a state file recording `cpu` as the CPU it was taken
    /// on (for tests and tools; [`Self::encode`] records the host's).
    pub fn encode_for_cpu(
        body: &impl Serialize,
        cpu: CpuIdentity,
    ) -> Result<Vec<u8>, SnapshotError> {
        encode_limited(body, cpu, MAX_BODY_LEN)
    }

    /// Writes `body` as a state file at `path`, atomically: into a temporary file beside it,
    /// synced, then renamed over `path` (and the directory synced).
    pub fn write(path: &Path, body: &impl Serialize) -> Result<(), SnapshotError> {
        let bytes = Self::encode(body)?;
        write_atomically(path, &bytes)
    }

    /// Writes `body` as a sealed state file of snapshot `id` at `path`, atomically: the bytes
    /// of an unsealed state file (header and body), sealed with `key`
    /// ([`vmm_memory::seal`]).
    pub fn write_sealed(
        path: &Path,
        body: &impl Serialize,
        key: &SealKey,
        id: SnapshotId,
    ) -> Result<(), SnapshotError> {
        let bytes = Self::encode(body)?;
        let sealed = seal::seal_bytes(key, id, SealedKind::State, seal::DEFAULT_CHUNK_SIZE, &bytes);
        write_atomically(path, &sealed)
    }

    /// Reads the sealed state file at `path` with `key`: authenticates and decrypts it, then
    /// checks and decodes the state file inside as [`Self::read`] does. Returns the state and
    /// the snapshot id (which the memory file must have too). At most the largest sealed state
    /// file is read.
    pub fn read_sealed<T: DeserializeOwned>(
        path: &Path,
        key: &SealKey,
    ) -> Result<(T, SnapshotId), SnapshotError> {
        let max_plain = MAX_BODY_LEN + HEADER_LEN as u64;
        let max_sealed = seal::sealed_len(max_plain, seal::MIN_CHUNK_SIZE).unwrap_or(u64::MAX);
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| SnapshotError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let read_error = |source| SnapshotError::Read {
            path: path.to_path_buf(),
            source,
        };
        if !file.metadata().map_err(read_error)?.is_file() {
            return Err(SnapshotError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let mut bytes = Vec::new();
        (&file)
            .take(max_sealed + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        let (id, plain) = seal::open_bytes(key, SealedKind::State, None, &bytes, max_plain)
            .map_err(|source| SnapshotError::Sealed {
                path: path.to_path_buf(),
                source,
            })?;
        let body = Self::read_from(&plain).map_err(|e| match e {
            SnapshotError::Format(source) => SnapshotError::Refused {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })?;
        Ok((body, id))
    }

    /// Reads the state file at `path`, checks it against this host (see [`Self::read_from`]) and
    /// decodes its body.
    ///
    /// Only the header is read before the declared body length is checked against
    /// [`MAX_BODY_LEN`] and the file's length; then exactly the body is read.
    pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, SnapshotError> {
        let refused = |source| SnapshotError::Refused {
            path: path.to_path_buf(),
            source,
        };
        let read_error = |source| SnapshotError::Read {
            path: path.to_path_buf(),
            source,
        };
        // O_NONBLOCK: a FIFO given by mistake must not block the open; it is refused below.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| SnapshotError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let meta = file.metadata().map_err(read_error)?;
        if !meta.is_file() {
            return Err(SnapshotError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let mut head = Vec::with_capacity(HEADER_LEN);
        (&file)
            .take(HEADER_LEN as u64)
            .read_to_end(&mut head)
            .map_err(read_error)?;
        let header = SnapshotHeader::parse(&head).map_err(refused)?;
        // The header was read whole, so the file holds at least HEADER_LEN bytes.
        let available = meta.len().saturating_sub(HEADER_LEN as u64);
        header.check_body_len(available).map_err(refused)?;
        // At most MAX_BODY_LEN, checked by `parse`.
        let mut body = Vec::with_capacity(header.body_len as usize);
        (&file)
            .take(header.body_len)
            .read_to_end(&mut body)
            .map_err(read_error)?;
        header
            .check_body(&body, &CpuIdentity::host())
            .map_err(refused)?;
        serde_json::from_slice(&body).map_err(|e| refused(FormatError::Body(e)))
    }

    /// Checks the bytes of a whole state file and decodes its body: magic, version, lengths,
    /// both checksums, and that it was taken on this host's CPU vendor, family and model.
    /// Never panics, and allocates nothing beyond what decoding the body needs.
    pub fn read_from<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SnapshotError> {
        Ok(Self::read_from_for_cpu(bytes, &CpuIdentity::host())?)
    }

    /// As [`Self::read_from`], but checks the snapshot's CPU against `host`.
    pub fn read_from_for_cpu<T: DeserializeOwned>(
        bytes: &[u8],
        host: &CpuIdentity,
    ) -> Result<T, FormatError> {
        let body = format::checked_body(bytes, host)?;
        serde_json::from_slice(body).map_err(FormatError::Body)
    }
}

/// Serializes `body` for `cpu`, refusing a body over `max` bytes.
fn encode_limited(
    body: &impl Serialize,
    cpu: CpuIdentity,
    max: u64,
) -> Result<Vec<u8>, SnapshotError> {
    let json = serde_json::to_vec(body).map_err(SnapshotError::Encode)?;
    if json.len() as u64 > max {
        return Err(SnapshotError::TooLarge {
            len: json.len() as u64,
            max,
        });
    }
    let header = SnapshotHeader::for_body(&json, cpu);
    let mut bytes = Vec::with_capacity(HEADER_LEN + json.len());
    bytes.extend_from_slice(&header.to_bytes());
    bytes.extend_from_slice(&json);
    Ok(bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, renames it over `path` and syncs
/// the directory. The temporary file is removed on failure.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let name = path.file_name().ok_or_else(|| SnapshotError::InvalidPath {
        path: path.to_path_buf(),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|source| SnapshotError::Open {
                path: tmp.clone(),
                source,
            })?;
        let write_error = |source| SnapshotError::Write {
            path: tmp.clone(),
            source,
        };
        file.write_all(bytes).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        std::fs::rename(&tmp, path).map_err(|source| SnapshotError::Write {
            path: path.to_path_buf(),
            source,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SnapshotError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        name: String,
        regs: Vec<u64>,
        nested: Option<Box<State>>,
    }

    fn state() -> State {
        State {
            name: "vcpu0".into(),
            regs: vec![0, 1, u64::MAX, 0xdead_beef],
            nested: Some(Box::new(State {
                name: "lapic".into(),
                regs: vec![7; 64],
                nested: None,
            })),
        }
    }

    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("vmm-core-snapshot-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TestDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Reads `bytes` as a state file through the file reader and the bytes reader; both must
    /// refuse it the same way. Returns the file reader's error.
    fn refuse(dir: &TestDir, bytes: &[u8]) -> SnapshotError {
        let path = dir.path("state");
        std::fs::write(&path, bytes).unwrap();
        let from_file = SnapshotFile::read::<State>(&path).unwrap_err();
        let from_bytes = SnapshotFile::read_from::<State>(bytes).unwrap_err();
        assert_eq!(
            from_file.format_error().map(|e| e.to_string()),
            from_bytes.format_error().map(|e| e.to_string()),
        );
        assert!(
            from_file.to_string().contains("state"),
            "the path is named: {from_file}"
        );
        from_file
    }

    fn with_header(bytes: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut bytes = bytes.to_vec();
        edit(&mut bytes[..HEADER_LEN]);
        let crc = crc32fast::hash(&bytes[..HEADER_LEN - 4]);
        bytes[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn other_cpu(host: CpuIdentity) -> CpuIdentity {
        CpuIdentity {
            model: host.model ^ 1,
            ..host
        }
    }

    #[test]
    fn round_trip() {
        let dir = TestDir::new("round-trip");
        let path = dir.path("state.snap");
        SnapshotFile::write(&path, &state()).unwrap();
        assert_eq!(SnapshotFile::read::<State>(&path).unwrap(), state());
        // Overwrites in place, and leaves no temporary file.
        SnapshotFile::write(&path, &"second").unwrap();
        assert_eq!(SnapshotFile::read::<String>(&path).unwrap(), "second");
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);

        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], &MAGIC);
        assert_eq!(bytes.len(), HEADER_LEN + "\"second\"".len());
        assert_eq!(SnapshotFile::read_from::<String>(&bytes).unwrap(), "second");
        let header = SnapshotHeader::parse(&bytes).unwrap();
        assert_eq!(header.version, FORMAT_VERSION);
        assert_eq!(header.cpu, CpuIdentity::host());
        assert_eq!(header.body_len, 8);
    }

    #[test]
    fn refuses_what_is_not_a_snapshot() {
        let dir = TestDir::new("magic");
        let err = refuse(
            &dir,
            b"{\"name\": \"vcpu0\"} and some more bytes than a header has, surely enough",
        );
        assert!(
            matches!(err.format_error(), Some(FormatError::NotASnapshot { .. })),
            "{err}"
        );
        let err = refuse(&dir, b"ELF");
        assert!(
            matches!(err.format_error(), Some(FormatError::NotASnapshot { found }) if found == b"ELF"),
            "{err}"
        );
    }

    #[test]
    fn refuses_truncated_files() {
        let dir = TestDir::new("truncated");
        let good = SnapshotFile::encode(&state()).unwrap();
        for len in [0, 4, 8, 12, 20, HEADER_LEN - 1] {
            let err = refuse(&dir, &good[..len]);
            assert!(
                matches!(err.format_error(), Some(FormatError::TruncatedHeader { have, need: HEADER_LEN }) if *have == len),
                "{len}: {err}"
            );
        }
        for len in [HEADER_LEN, HEADER_LEN + 1, good.len() - 1] {
            let err = refuse(&dir, &good[..len]);
            assert!(
                matches!(err.format_error(), Some(FormatError::TruncatedBody { .. })),
                "{len}: {err}"
            );
            assert!(err
                .format_error()
                .unwrap()
                .to_string()
                .contains("truncated"));
        }
        let mut longer = good.clone();
        longer.push(b' ');
        let err = refuse(&dir, &longer);
        assert!(
            matches!(
                err.format_error(),
                Some(FormatError::TrailingData { extra: 1, .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_other_versions() {
        let dir = TestDir::new("version");
        let good = SnapshotFile::encode(&state()).unwrap();
        for version in [0u32, 1, 3, u32::MAX] {
            // With and without a header checksum that matches: the version is reported first.
            let mut raw = good.clone();
            raw[8..12].copy_from_slice(&version.to_le_bytes());
            let fixed = with_header(&good, |h| h[8..12].copy_from_slice(&version.to_le_bytes()));
            for bytes in [raw, fixed] {
                let err = refuse(&dir, &bytes);
                assert!(
                    matches!(err.format_error(), Some(FormatError::UnsupportedVersion { found, supported: FORMAT_VERSION }) if *found == version),
                    "{err}"
                );
            }
        }
        let err = refuse(
            &dir,
            &with_header(&good, |h| h[12..16].copy_from_slice(&32u32.to_le_bytes())),
        );
        assert!(
            matches!(
                err.format_error(),
                Some(FormatError::HeaderLength { found: 32 })
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_corruption() {
        let dir = TestDir::new("corrupt");
        let good = SnapshotFile::encode(&state()).unwrap();
        // Any flipped bit of the header past the version and length fields.
        for byte in [16, 24, 33, 45, 50, 57, HEADER_LEN - 1] {
            let mut bad = good.clone();
            bad[byte] ^= 0x10;
            let err = refuse(&dir, &bad);
            assert!(
                matches!(err.format_error(), Some(FormatError::HeaderChecksum { .. })),
                "byte {byte}: {err}"
            );
        }
        // Any flipped bit of the body.
        for byte in [HEADER_LEN, HEADER_LEN + 10, good.len() - 1] {
            let mut bad = good.clone();
            bad[byte] ^= 0x01;
            let err = refuse(&dir, &bad);
            assert!(
                matches!(err.format_error(), Some(FormatError::BodyChecksum { .. })),
                "byte {byte}: {err}"
            );
            assert!(err
                .format_error()
                .unwrap()
                .to_string()
                .contains("corrupted"));
        }
    }

    #[test]
    fn refuses_huge_bodies_before_allocating() {
        let dir = TestDir::new("huge");
        let good = SnapshotFile::encode(&state()).unwrap();
        for len in [MAX_BODY_LEN + 1, 1 << 40, u64::MAX] {
            let bad = with_header(&good, |h| h[16..24].copy_from_slice(&len.to_le_bytes()));
            let err = refuse(&dir, &bad);
            assert!(
                matches!(err.format_error(), Some(FormatError::BodyTooLarge { len: l, max: MAX_BODY_LEN }) if *l == len),
                "{err}"
            );
        }
        // A body of exactly the limit is declared fine but missing here.
        let bad = with_header(&good, |h| {
            h[16..24].copy_from_slice(&MAX_BODY_LEN.to_le_bytes())
        });
        let err = refuse(&dir, &bad);
        assert!(
            matches!(err.format_error(), Some(FormatError::TruncatedBody { .. })),
            "{err}"
        );
    }

    #[test]
    fn refuses_another_cpu() {
        let dir = TestDir::new("cpu");
        let host = CpuIdentity::host();
        let other = other_cpu(host);
        let bytes = SnapshotFile::encode_for_cpu(&state(), other).unwrap();
        let err = refuse(&dir, &bytes);
        assert!(
            matches!(err.format_error(), Some(FormatError::CpuMismatch { snapshot, host: h }) if *snapshot == other && *h == host),
            "{err}"
        );
        let message = err.format_error().unwrap().to_string();
        assert!(message.contains(&other.to_string()), "{message}");
        assert!(message.contains(&host.to_string()), "{message}");

        let mut vendor = host;
        vendor.vendor = *b"AuthenticAMD";
        if vendor.vendor == host.vendor {
            vendor.vendor = *b"GenuineIntel";
        }
        let bytes = SnapshotFile::encode_for_cpu(&state(), vendor).unwrap();
        let err = refuse(&dir, &bytes);
        assert!(
            matches!(err.format_error(), Some(FormatError::CpuMismatch { .. })),
            "{err}"
        );

        // Another stepping of the same model is accepted.
        let stepping = CpuIdentity {
            stepping: host.stepping ^ 1,
            ..host
        };
        let bytes = SnapshotFile::encode_for_cpu(&state(), stepping).unwrap();
        assert_eq!(SnapshotFile::read_from::<State>(&bytes).unwrap(), state());
        // And the check follows the CPU given.
        assert!(SnapshotFile::read_from_for_cpu::<State>(&bytes, &other).is_err());
    }

    #[test]
    fn refuses_a_body_of_another_type() {
        let dir = TestDir::new("type");
        let bytes = SnapshotFile::encode(&vec![1u8, 2, 3]).unwrap();
        let err = refuse(&dir, &bytes);
        assert!(
            matches!(err.format_error(), Some(FormatError::Body(_))),
            "{err}"
        );
    }

    #[test]
    fn file_errors_name_the_path() {
        let dir = TestDir::new("files");
        let missing = dir.path("missing.snap");
        let err = SnapshotFile::read::<State>(&missing).unwrap_err();
        assert!(matches!(err, SnapshotError::Open { .. }), "{err}");
        assert!(err.to_string().contains("missing.snap"), "{err}");

        let err = SnapshotFile::read::<State>(&dir.0).unwrap_err();
        assert!(matches!(err, SnapshotError::NotAFile { .. }), "{err}");

        let fifo = dir.path("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
        let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        let err = SnapshotFile::read::<State>(&fifo).unwrap_err();
        assert!(matches!(err, SnapshotError::NotAFile { .. }), "{err}");

        let err = SnapshotFile::write(&dir.path("no/such/dir/state"), &state()).unwrap_err();
        assert!(matches!(err, SnapshotError::Open { .. }), "{err}");
        let err = SnapshotFile::write(Path::new("/"), &state()).unwrap_err();
        assert!(matches!(err, SnapshotError::InvalidPath { .. }), "{err}");
    }

    #[test]
    fn too_large_state_is_refused() {
        // The limit applies at writing too (checked here with a small one: a 64 MiB body is slow
        // to build in a debug build).
        let err = encode_limited(&"twenty bytes of text", CpuIdentity::host(), 16).unwrap_err();
        assert!(
            matches!(err, SnapshotError::TooLarge { len: 22, max: 16 }),
            "{err}"
        );
        encode_limited(&"fits", CpuIdentity::host(), 16).unwrap();
    }

    #[test]
    fn cpu_signatures_decode() {
        // Intel Skylake-SP: family 6, extended model 5, model 5, stepping 4.
        let intel = CpuIdentity::from_signature(*b"GenuineIntel", 0x0005_0654);
        assert_eq!((intel.family, intel.model, intel.stepping), (6, 0x55, 4));
        assert_eq!(
            intel.to_string(),
            "GenuineIntel family 0x6 model 0x55 stepping 4"
        );
        // AMD Zen 2: base family 0xf + extended family 8, model 0x31.
        let amd = CpuIdentity::from_signature(*b"AuthenticAMD", 0x0083_0f10);
        assert_eq!((amd.family, amd.model, amd.stepping), (0x17, 0x31, 0));
        // Other families ignore the extended model.
        let old = CpuIdentity::from_signature(*b"GenuineIntel", 0x0001_0521);
        assert_eq!((old.family, old.model), (5, 2));
        assert!(!intel.compatible_with(&amd));

        let host = CpuIdentity::host();
        #[cfg(target_arch = "x86_64")]
        assert!(host.family > 0 && host.vendor != [0; 12], "{host}");
        assert!(host.compatible_with(&host));
    }
}
