//! The byte format of a snapshot state file: a fixed header, then the body.
//!
//! ```text
//! offset  size  field (integers little endian)
//!      0     8  magic "VMMSNAP\0"
//!      8     4  format version (FORMAT_VERSION)
//!     12     4  header length (HEADER_LEN)
//!     16     8  body length in bytes
//!     24     4  CRC-32 (IEEE) of the body
//!     28     4  reserved, zero
//!     32    12  CPU vendor (CPUID leaf 0: EBX, EDX, ECX)
//!     44     4  CPU family  (CPUID leaf 1, extended family folded in)
//!     48     4  CPU model   (CPUID leaf 1, extended model folded in)
//!     52     4  CPU stepping
//!     56     4  reserved, zero
//!     60     4  CRC-32 (IEEE) of bytes 0..60
//!     64        body: the state as JSON (serde_json)
//! ```
//!
//! The header has its own checksum, so a damaged length or CPU field is reported as damage and
//! not as a mismatch. The format version is read before anything else that a later version may
//! change.

use std::fmt;

/// The first bytes of every snapshot state file.
pub const MAGIC: [u8; 8] = *b"VMMSNAP\0";
/// The state file format this build writes and reads. 2: devices keyed by id, each device's
/// state as `{kind, state}` (1 had a list in slot order and a closed enum of device states).
pub const FORMAT_VERSION: u32 = 2;
/// Length of the header of [`FORMAT_VERSION`].
pub const HEADER_LEN: usize = 64;
/// Largest body accepted: a state file declaring more is refused before anything is allocated.
pub const MAX_BODY_LEN: u64 = 64 << 20;

/// Why bytes are not a usable snapshot state file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file is a sealed (encrypted) state file.
    #[error(
        "the snapshot state file is sealed (encrypted): restore it with its key file \
         (--key-file, or key_file in PUT /snapshot/load)"
    )]
    Sealed,
    /// The magic bytes are wrong.
    #[error(
        "it is not a snapshot state file: it starts with {found:02x?} instead of {MAGIC:02x?} \
         (\"VMMSNAP\"); was the memory file or another file given?"
    )]
    NotASnapshot {
        /// The first bytes found (up to 8).
        found: Vec<u8>,
    },
    /// Another format version.
    #[error(
        "snapshot state file format version {found} is not supported: this vmm reads version \
         {supported}; restore it with the vmm version that created it"
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// Fewer bytes than a header.
    #[error(
        "the snapshot state file is truncated: its header has {have} of {need} bytes (was it \
         copied or written completely?)"
    )]
    TruncatedHeader {
        /// Bytes present.
        have: usize,
        /// Header length.
        need: usize,
    },
    /// The header length field does not match the version.
    #[error(
        "the snapshot state file is corrupted: its header length is {found}, version \
         {FORMAT_VERSION} has {HEADER_LEN}"
    )]
    HeaderLength {
        /// Length in the file.
        found: u32,
    },
    /// The header's checksum does not match.
    #[error(
        "the snapshot state file is corrupted: header checksum {computed:#010x} does not match \
         the stored {stored:#010x}"
    )]
    HeaderChecksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the header read.
        computed: u32,
    },
    /// The declared body is larger than the limit.
    #[error(
        "the snapshot state file declares a body of {len} bytes, more than the limit of {max} \
         bytes: it is corrupted or not a state file of this vmm"
    )]
    BodyTooLarge {
        /// Declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The body is shorter than declared.
    #[error(
        "the snapshot state file is truncated: its body has {have} of the {declared} bytes its \
         header declares (was it copied or written completely?)"
    )]
    TruncatedBody {
        /// Bytes present.
        have: u64,
        /// Bytes declared.
        declared: u64,
    },
    /// Bytes follow the declared body.
    #[error(
        "the snapshot state file is corrupted: {extra} bytes follow the {declared} bytes of body \
         its header declares"
    )]
    TrailingData {
        /// Bytes after the body.
        extra: u64,
        /// Bytes declared.
        declared: u64,
    },
    /// The body's checksum does not match.
    #[error(
        "the snapshot state file is corrupted: body checksum {computed:#010x} does not match the \
         stored {stored:#010x}"
    )]
    BodyChecksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the body read.
        computed: u32,
    },
    /// The snapshot was taken on another kind of CPU.
    #[error(
        "the snapshot was taken on CPU {snapshot} but this host's CPU is {host}: a snapshot can \
         only be restored on the same CPU vendor, family and model"
    )]
    CpuMismatch {
        /// CPU recorded in the file.
        snapshot: CpuIdentity,
        /// CPU of this host.
        host: CpuIdentity,
    },
    /// The body is not the state expected.
    #[error(
        "the state in the snapshot state file cannot be decoded: it was written by an \
         incompatible vmm build"
    )]
    Body(#[source] serde_json::Error),
}

/// The kind of CPU a snapshot was taken on: vendor and family/model/stepping from CPUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuIdentity {
    /// Vendor string from CPUID leaf 0 ("GenuineIntel", "AuthenticAMD").
    pub vendor: [u8; 12],
    /// Family, with the extended family added when the base family is 0xf.
    pub family: u32,
    /// Model, with the extended model folded in for families 6 and 0xf.
    pub model: u32,
    /// Stepping (recorded, not compared).
    pub stepping: u32,
}

impl CpuIdentity {
    /// The CPU this process runs on.
    #[cfg(target_arch = "x86_64")]
    pub fn host() -> Self {
        use core::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86-64 CPU; leaves 0 and 1 are always defined and
        // reading them has no side effects. (`__cpuid` is a safe function on newer Rust.)
        #[allow(unused_unsafe)]
        let (leaf0, leaf1) = unsafe { (__cpuid(0), __cpuid(1)) };
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
        Self::from_signature(vendor, leaf1.eax)
    }

    /// The CPU this process runs on (not x86-64: no CPUID, an all-zero identity).
    #[cfg(not(target_arch = "x86_64"))]
    pub fn host() -> Self {
        Self::from_signature([0; 12], 0)
    }

    /// Decodes the processor signature (CPUID leaf 1 EAX) of a CPU from `vendor`.
    pub fn from_signature(vendor: [u8; 12], eax: u32) -> Self {
        let stepping = eax & 0xf;
        let base_model = (eax >> 4) & 0xf;
        let base_family = (eax >> 8) & 0xf;
        let ext_model = (eax >> 16) & 0xf;
        let ext_family = (eax >> 20) & 0xff;
        let family = if base_family == 0xf {
            base_family + ext_family
        } else {
            base_family
        };
        let model = if base_family == 0x6 || base_family == 0xf {
            (ext_model << 4) | base_model
        } else {
            base_model
        };
        CpuIdentity {
            vendor,
            family,
            model,
            stepping,
        }
    }

    /// Whether a snapshot taken on `self` may be restored on `host`: same vendor, family and
    /// model (the stepping may differ).
    pub fn compatible_with(&self, host: &CpuIdentity) -> bool {
        self.vendor == host.vendor && self.family == host.family && self.model == host.model
    }
}

impl fmt::Display for CpuIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vendor: String = self
            .vendor
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() {
                    char::from(b)
                } else {
                    '?'
                }
            })
            .collect();
        write!(
            f,
            "{vendor} family {:#x} model {:#x} stepping {}",
            self.family, self.model, self.stepping
        )
    }
}

/// The parsed header of a state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Format version.
    pub version: u32,
    /// Body length in bytes.
    pub body_len: u64,
    /// CRC-32 of the body.
    pub body_crc: u32,
    /// CPU the snapshot was taken on.
    pub cpu: CpuIdentity,
}

impl SnapshotHeader {
    /// A header for `body`, taken on `cpu`.
    pub fn for_body(body: &[u8], cpu: CpuIdentity) -> Self {
        SnapshotHeader {
            version: FORMAT_VERSION,
            body_len: body.len() as u64,
            body_crc: crc32fast::hash(body),
            cpu,
        }
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.body_len.to_le_bytes());
        h[24..28].copy_from_slice(&self.body_crc.to_le_bytes());
        h[32..44].copy_from_slice(&self.cpu.vendor);
        h[44..48].copy_from_slice(&self.cpu.family.to_le_bytes());
        h[48..52].copy_from_slice(&self.cpu.model.to_le_bytes());
        h[52..56].copy_from_slice(&self.cpu.stepping.to_le_bytes());
        let crc = crc32fast::hash(&h[..HEADER_LEN - 4]);
        h[HEADER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses the header at the start of `bytes` (which may hold more than the header).
    ///
    /// Checks, in order: the magic, the version, the header length, the header checksum and the
    /// declared body length against [`MAX_BODY_LEN`]. It does not look at the body or the CPU.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.starts_with(&vmm_memory::seal::SEAL_MAGIC) {
            return Err(FormatError::Sealed);
        }
        let magic_len = bytes.len().min(MAGIC.len());
        if bytes[..magic_len] != MAGIC[..magic_len] {
            return Err(FormatError::NotASnapshot {
                found: bytes[..magic_len].to_vec(),
            });
        }
        let truncated = FormatError::TruncatedHeader {
            have: bytes.len(),
            need: HEADER_LEN,
        };
        let Some(version) = le_u32(bytes, 8) else {
            return Err(truncated);
        };
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let Some(header_len) = le_u32(bytes, 12) else {
            return Err(truncated);
        };
        if header_len as usize != HEADER_LEN {
            return Err(FormatError::HeaderLength { found: header_len });
        }
        let Some(h) = bytes.get(..HEADER_LEN) else {
            return Err(truncated);
        };
        let stored = le_u32(h, HEADER_LEN - 4).unwrap_or_default();
        let computed = crc32fast::hash(&h[..HEADER_LEN - 4]);
        if stored != computed {
            return Err(FormatError::HeaderChecksum { stored, computed });
        }
        let body_len = le_u64(h, 16).unwrap_or_default();
        if body_len > MAX_BODY_LEN {
            return Err(FormatError::BodyTooLarge {
                len: body_len,
                max: MAX_BODY_LEN,
            });
        }
        let mut vendor = [0u8; 12];
        vendor.copy_from_slice(&h[32..44]);
        Ok(SnapshotHeader {
            version,
            body_len,
            body_crc: le_u32(h, 24).unwrap_or_default(),
            cpu: CpuIdentity {
                vendor,
                family: le_u32(h, 44).unwrap_or_default(),
                model: le_u32(h, 48).unwrap_or_default(),
                stepping: le_u32(h, 52).unwrap_or_default(),
            },
        })
    }

    /// Checks that `available` bytes follow the header, as declared.
    pub fn check_body_len(&self, available: u64) -> Result<(), FormatError> {
        if available < self.body_len {
            return Err(FormatError::TruncatedBody {
                have: available,
                declared: self.body_len,
            });
        }
        if available > self.body_len {
            return Err(FormatError::TrailingData {
                extra: available - self.body_len,
                declared: self.body_len,
            });
        }
        Ok(())
    }

    /// Checks the body against the header's checksum, then the header's CPU against `host`.
    pub fn check_body(&self, body: &[u8], host: &CpuIdentity) -> Result<(), FormatError> {
        self.check_body_len(body.len() as u64)?;
        let computed = crc32fast::hash(body);
        if computed != self.body_crc {
            return Err(FormatError::BodyChecksum {
                stored: self.body_crc,
                computed,
            });
        }
        if !self.cpu.compatible_with(host) {
            return Err(FormatError::CpuMismatch {
                snapshot: self.cpu,
                host: *host,
            });
        }
        Ok(())
    }
}

/// Checks a whole state file in `bytes` against the `host` CPU and returns its body.
pub fn checked_body<'a>(bytes: &'a [u8], host: &CpuIdentity) -> Result<&'a [u8], FormatError> {
    let header = SnapshotHeader::parse(bytes)?;
    let body = bytes.get(HEADER_LEN..).unwrap_or_default();
    header.check_body(body, host)?;
    Ok(body)
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}
