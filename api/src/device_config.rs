//! Virtio device settings of a VM: `--disk`, `--net`, `--vsock`, `--balloon`.
//!
//! On the command line each is a `key=value[,key=value...]` list; in a JSON config file the same
//! keys form an object (`{"path": "disk.img", "read_only": true}`).

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::memory_size::{MemorySize, MemorySizeError};
use crate::rate_limiter::RateLimiterConfig;
use crate::types::{CacheType, IoEngine};

/// Errors in a device setting.
#[derive(Debug, thiserror::Error)]
pub enum DeviceConfigError {
    /// A `key=value` list that does not parse.
    #[error("invalid {flag} {text:?}: {why}")]
    Syntax {
        /// The flag (`--disk`...).
        flag: &'static str,
        /// What was given.
        text: String,
        /// What is wrong with it.
        why: String,
    },
    /// Two disks with the same id.
    #[error(
        "two disks have the id {0:?}: disk ids must be unique (a disk without one is disk<N>, N its position from 0)"
    )]
    DuplicateDiskId(String),
    /// One file attached twice (it would be written by two devices at once).
    #[error("disk {0:?} is attached twice")]
    DuplicateDiskPath(PathBuf),
    /// Two network devices on the same tap.
    #[error("two network devices use tap {0:?}")]
    DuplicateTap(String),
    /// Two network devices with the same MAC.
    #[error("two network devices have the MAC {0}")]
    DuplicateMac(String),
    /// More devices than the MMIO window and IRQ lines have slots.
    #[error("{count} virtio devices requested, at most {max} fit (one IRQ line each)")]
    TooManyDevices {
        /// Devices requested.
        count: usize,
        /// Slots available.
        max: usize,
    },
    /// A balloon target larger than the guest.
    #[error("balloon target {target} is larger than guest memory {memory}")]
    BalloonTooLarge {
        /// Requested target.
        target: MemorySize,
        /// Guest RAM.
        memory: MemorySize,
    },
}

/// Splits `a=1,b=2` into pairs, refusing unknown and repeated keys and keys without a value.
fn key_values<'a>(
    flag: &'static str,
    text: &'a str,
    allowed: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, DeviceConfigError> {
    let err = |why: String| DeviceConfigError::Syntax {
        flag,
        text: text.to_string(),
        why,
    };
    let mut seen = HashSet::new();
    let mut pairs = Vec::new();
    for item in text.split(',') {
        let Some((key, value)) = item.split_once('=') else {
            return Err(err(format!("{item:?} is not key=value")));
        };
        if !allowed.contains(&key) {
            return Err(err(format!(
                "unknown key {key:?} (known: {})",
                allowed.join(", ")
            )));
        }
        if value.is_empty() {
            return Err(err(format!("{key} has no value")));
        }
        if !seen.insert(key) {
            return Err(err(format!("{key} given twice")));
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn on_off(
    flag: &'static str,
    text: &str,
    key: &str,
    value: &str,
) -> Result<bool, DeviceConfigError> {
    match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(DeviceConfigError::Syntax {
            flag,
            text: text.to_string(),
            why: format!("{key} must be on or off, not {value:?}"),
        }),
    }
}

fn missing(flag: &'static str, text: &str, key: &str) -> DeviceConfigError {
    DeviceConfigError::Syntax {
        flag,
        text: text.to_string(),
        why: format!("{key}= is required"),
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex, any case). Multicast (and broadcast) addresses and the
/// all-zero address are rejected: they cannot name one card.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    if parts.next().is_some() || mac[0] & 1 == 1 || mac == [0; 6] {
        return None;
    }
    Some(mac)
}

/// A disk image format (`--disk format=`, a drive's `format`). Absent, the format is detected
/// from the file's first bytes (its magic), and a file with none is raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// The file is the disk, byte for byte.
    Raw,
    /// QEMU's qcow2 (with a backing file, if it names one).
    Qcow2,
    /// This VMM's layered copy-on-write format (`vmm disk create`).
    Layered,
}

impl DiskFormat {
    /// Every format.
    pub const ALL: [DiskFormat; 3] = [DiskFormat::Raw, DiskFormat::Qcow2, DiskFormat::Layered];

    /// Its name, as `format=` takes it.
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Layered => "layered",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DiskFormat {
    type Err = String;

    /// A format's name; the error says which names there are.
    fn from_str(s: &str) -> Result<DiskFormat, String> {
        DiskFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown disk format {s:?} (raw, qcow2 or layered)"))
    }
}

/// `--disk path=FILE[,read_only=on][,id=NAME][,format=raw|qcow2|layered]
/// [,verity=HASHFILE,root_hash=HEX]`: a virtio-blk device on a disk image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The disk image (a regular file or block device; never created or resized).
    pub path: PathBuf,
    /// The image's format; `None` detects it from the file's magic (no magic: raw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// The guest may not write.
    #[serde(default)]
    pub read_only: bool,
    /// Serial the guest reads with GET_ID (at most 20 bytes).
    #[serde(default)]
    pub id: Option<String>,
    /// A rate limiter on the disk's requests; `None` limits nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// How guest flushes are treated (Firecracker's `cache_type`). `vmm run --disk` and JSON
    /// config files honour flushes (`Writeback`) unless `cache=unsafe` says otherwise; a drive
    /// configured through the API without `cache_type` is `Unsafe`, Firecracker's default.
    #[serde(default = "writeback")]
    pub cache_type: CacheType,
    /// Firecracker's `io_engine`, as configured; `Async` is served by the same synchronous
    /// engine as `Sync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// Serve the image verified against a dm-verity hash file and root hash (read-only
    /// disks only); `None` serves it as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<VerityConfig>,
    /// A LUKS-encrypted disk: the key file, read whole as it is (cryptsetup's `--key-file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// A LUKS-encrypted disk: a file holding the passphrase (one trailing newline is dropped,
    /// as when it is typed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_file: Option<PathBuf>,
    /// The LUKS header in a file of its own (cryptsetup's `--header`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub luks_header: Option<PathBuf>,
}

impl DiskConfig {
    /// The id the disk is known by in the API (a drive's `drive_id`): its id, or `disk<N>` for
    /// one configured without, `index` being its place in the configuration.
    pub fn api_id(&self, index: usize) -> String {
        self.id.clone().unwrap_or_else(|| format!("disk{index}"))
    }

    /// Whether the disk is LUKS-encrypted (a key or passphrase file is given).
    pub fn is_luks(&self) -> bool {
        self.key_file.is_some() || self.passphrase_file.is_some()
    }

    /// Checks the LUKS fields: at most one key source, and a detached header only with one.
    pub fn check_luks(&self) -> Result<(), String> {
        if self.key_file.is_some() && self.passphrase_file.is_some() {
            return Err("key_file and passphrase_file exclude each other".into());
        }
        if self.luks_header.is_some() && !self.is_luks() {
            return Err("luks_header needs key_file or passphrase_file".into());
        }
        Ok(())
    }
}

/// A disk verified block by block against a dm-verity hash tree (`veritysetup format` or
/// `vmm disk verity-format` makes one) and its trusted root hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityConfig {
    /// The hash file (superblock and hash tree).
    pub hash_file: PathBuf,
    /// The root hash, in hex.
    pub root_hash: String,
}

impl VerityConfig {
    /// Checks the root hash is hex of a digest's length (16 to 64 bytes).
    pub fn validate(&self) -> Result<(), String> {
        let hex = &self.root_hash;
        if !(32..=128).contains(&hex.len())
            || !hex.len().is_multiple_of(2)
            || !hex.bytes().all(|c| c.is_ascii_hexdigit())
        {
            return Err(format!("root_hash {hex:?} is not a hex digest"));
        }
        if self.hash_file.as_os_str().is_empty() {
            return Err("the verity hash file path is empty".to_string());
        }
        Ok(())
    }
}

fn writeback() -> CacheType {
    CacheType::Writeback
}

impl FromStr for DiskConfig {
    type Err = DeviceConfigError;

    fn from_str(text: &str) -> Result<Self, DeviceConfigError> {
        const FLAG: &str = "--disk";
        let mut disk = DiskConfig {
            path: PathBuf::new(),
            format: None,
            read_only: false,
            id: None,
            rate_limiter: None,
            cache_type: CacheType::Writeback,
            io_engine: None,
            verity: None,
            key_file: None,
            passphrase_file: None,
            luks_header: None,
        };
        let (mut hash_file, mut root_hash) = (None, None);
        for (key, value) in key_values(
            FLAG,
            text,
            &[
                "path",
                "read_only",
                "id",
                "cache",
                "format",
                "verity",
                "root_hash",
                "key_file",
                "passphrase_file",
                "luks_header",
            ],
        )? {
            match key {
                "path" => disk.path = PathBuf::from(value),
                "verity" => hash_file = Some(PathBuf::from(value)),
                "root_hash" => root_hash = Some(value.to_string()),
                "key_file" => disk.key_file = Some(PathBuf::from(value)),
                "passphrase_file" => disk.passphrase_file = Some(PathBuf::from(value)),
                "luks_header" => disk.luks_header = Some(PathBuf::from(value)),
                "format" => {
                    disk.format = Some(value.parse().map_err(|why| DeviceConfigError::Syntax {
                        flag: FLAG,
                        text: text.to_string(),
                        why,
                    })?)
                }
                "read_only" => disk.read_only = on_off(FLAG, text, key, value)?,
                "cache" => {
                    disk.cache_type = match value {
                        "writeback" => CacheType::Writeback,
                        "unsafe" => CacheType::Unsafe,
                        _ => {
                            return Err(DeviceConfigError::Syntax {
                                flag: FLAG,
                                text: text.to_string(),
                                why: format!("cache must be writeback or unsafe, not {value:?}"),
                            })
                        }
                    }
                }
                _ => disk.id = Some(value.to_string()),
            }
        }
        if disk.path.as_os_str().is_empty() {
            return Err(missing(FLAG, text, "path"));
        }
        let syntax = |why: String| DeviceConfigError::Syntax {
            flag: FLAG,
            text: text.to_string(),
            why,
        };
        disk.verity = match (hash_file, root_hash) {
            (None, None) => None,
            (Some(hash_file), Some(root_hash)) => Some(VerityConfig {
                hash_file,
                root_hash,
            }),
            (Some(_), None) => return Err(syntax("verity= needs root_hash=HEX".into())),
            (None, Some(_)) => return Err(syntax("root_hash= needs verity=HASHFILE".into())),
        };
        if let Some(verity) = &disk.verity {
            verity.validate().map_err(syntax)?;
            if !disk.read_only {
                return Err(syntax(
                    "a verity disk must be read-only: add read_only=on".into(),
                ));
            }
        }
        disk.check_luks().map_err(|why| DeviceConfigError::Syntax {
            flag: FLAG,
            text: text.to_string(),
            why,
        })?;
        Ok(disk)
    }
}

impl fmt::Display for DiskConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path={}", self.path.display())?;
        if self.read_only {
            f.write_str(",read_only=on")?;
        }
        if let Some(id) = &self.id {
            write!(f, ",id={id}")?;
        }
        if self.cache_type == CacheType::Unsafe {
            f.write_str(",cache=unsafe")?;
        }
        if let Some(format) = self.format {
            write!(f, ",format={format}")?;
        }
        if let Some(verity) = &self.verity {
            write!(
                f,
                ",verity={},root_hash={}",
                verity.hash_file.display(),
                verity.root_hash
            )?;
        }
        if let Some(key) = &self.key_file {
            write!(f, ",key_file={}", key.display())?;
        }
        if let Some(key) = &self.passphrase_file {
            write!(f, ",passphrase_file={}", key.display())?;
        }
        if let Some(header) = &self.luks_header {
            write!(f, ",luks_header={}", header.display())?;
        }
        Ok(())
    }
}

/// `--net tap=NAME[,mac=AA:BB:CC:DD:EE:FF]`: a virtio-net device on a tap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Tap device name; attached if it exists, created (for the VM's lifetime) if not.
    pub tap: String,
    /// Guest MAC; derived from the tap name when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// A rate limiter on the frames delivered to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// A rate limiter on the frames the guest sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

impl FromStr for NetConfig {
    type Err = DeviceConfigError;

    fn from_str(text: &str) -> Result<Self, DeviceConfigError> {
        const FLAG: &str = "--net";
        let mut net = NetConfig {
            tap: String::new(),
            mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        for (key, value) in key_values(FLAG, text, &["tap", "mac"])? {
            match key {
                "tap" => net.tap = value.to_string(),
                _ => net.mac = Some(value.to_string()),
            }
        }
        if net.tap.is_empty() {
            return Err(missing(FLAG, text, "tap"));
        }
        net.check(text)?;
        Ok(net)
    }
}

impl NetConfig {
    /// The MAC, parsed; `None` when not given.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        self.mac.as_deref().and_then(parse_mac)
    }

    pub(crate) fn check(&self, text: &str) -> Result<(), DeviceConfigError> {
        if let Some(mac) = &self.mac {
            if parse_mac(mac).is_none() {
                return Err(DeviceConfigError::Syntax {
                    flag: "--net",
                    text: text.to_string(),
                    why: format!("mac {mac:?} is not a unicast MAC like 02:00:00:00:00:01"),
                });
            }
        }
        Ok(())
    }
}

impl fmt::Display for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tap={}", self.tap)?;
        if let Some(mac) = &self.mac {
            write!(f, ",mac={mac}")?;
        }
        Ok(())
    }
}

/// `--vsock cid=N,socket=PATH`: a virtio-vsock device whose host side is a Unix socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub cid: u64,
    /// Unix socket the VMM listens on (`CONNECT <port>` from the host); guest connections to
    /// host port P go to `<socket>_P`.
    pub socket: PathBuf,
}

impl FromStr for VsockConfig {
    type Err = DeviceConfigError;

    fn from_str(text: &str) -> Result<Self, DeviceConfigError> {
        const FLAG: &str = "--vsock";
        let mut cid = None;
        let mut socket = None;
        for (key, value) in key_values(FLAG, text, &["cid", "socket"])? {
            match key {
                "cid" => {
                    cid = Some(
                        value
                            .parse::<u64>()
                            .ok()
                            .filter(|&c| c >= 3)
                            .ok_or_else(|| DeviceConfigError::Syntax {
                                flag: FLAG,
                                text: text.to_string(),
                                why: format!(
                                    "cid {value:?} must be a number >= 3 (0-2 are reserved)"
                                ),
                            })?,
                    )
                }
                _ => socket = Some(PathBuf::from(value)),
            }
        }
        Ok(VsockConfig {
            cid: cid.ok_or_else(|| missing(FLAG, text, "cid"))?,
            socket: socket.ok_or_else(|| missing(FLAG, text, "socket"))?,
        })
    }
}

impl fmt::Display for VsockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cid={},socket={}", self.cid, self.socket.display())
    }
}

/// `--balloon [target=SIZE][,deflate_on_oom=on]`: a virtio-balloon device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// How much guest memory the balloon should hold at start (0: none).
    #[serde(default = "zero_size")]
    pub target: MemorySize,
    /// Let the guest deflate when it runs out of memory.
    #[serde(default)]
    pub deflate_on_oom: bool,
    /// Seconds between two requests for the guest's memory statistics (0: no statistics;
    /// Firecracker's `stats_polling_interval_s`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stats_polling_interval_s: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn zero_size() -> MemorySize {
    MemorySize(0)
}

impl FromStr for BalloonConfig {
    type Err = DeviceConfigError;

    fn from_str(text: &str) -> Result<Self, DeviceConfigError> {
        const FLAG: &str = "--balloon";
        let mut balloon = BalloonConfig::default();
        if text.is_empty() || text == "on" {
            return Ok(balloon);
        }
        for (key, value) in key_values(FLAG, text, &["target", "deflate_on_oom", "stats_s"])? {
            match key {
                "target" => {
                    balloon.target =
                        value
                            .parse()
                            .map_err(|e: MemorySizeError| DeviceConfigError::Syntax {
                                flag: FLAG,
                                text: text.to_string(),
                                why: e.to_string(),
                            })?
                }
                "stats_s" => {
                    balloon.stats_polling_interval_s =
                        value.parse().map_err(|_| DeviceConfigError::Syntax {
                            flag: FLAG,
                            text: text.to_string(),
                            why: format!("stats_s must be a number of seconds, not {value:?}"),
                        })?
                }
                _ => balloon.deflate_on_oom = on_off(FLAG, text, key, value)?,
            }
        }
        Ok(balloon)
    }
}

impl fmt::Display for BalloonConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "target={}", self.target)?;
        if self.deflate_on_oom {
            f.write_str(",deflate_on_oom=on")?;
        }
        if self.stats_polling_interval_s > 0 {
            write!(f, ",stats_s={}", self.stats_polling_interval_s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_mac_accepts_unicast_only() {
        assert_eq!(
            parse_mac("aa:BB:cc:0d:0e:0f"),
            Some([0xaa, 0xbb, 0xcc, 0x0d, 0x0e, 0x0f])
        );
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(
            parse_mac("02:Ab:cD:eF:00:01"),
            Some([2, 0xab, 0xcd, 0xef, 0, 1])
        );
        for bad in [
            "",
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52-54-00-12-34-56",
            "52:54:00:12:34:+5",
            "52:54:00:12:34:5g",
            " 52:54:00:12:34:56",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn disk_verity_flags() {
        let root = "ab".repeat(32);
        let text = format!("path=/x.img,read_only=on,verity=/x.hash,root_hash={root}");
        let d: DiskConfig = text.parse().unwrap();
        let v = d.verity.as_ref().unwrap();
        assert_eq!(
            (v.hash_file.to_str(), v.root_hash.as_str()),
            (Some("/x.hash"), &*root)
        );
        assert_eq!(d.to_string().parse::<DiskConfig>().unwrap(), d);
        for bad in [
            format!("path=/x.img,verity=/x.hash,root_hash={root}"),
            "path=/x.img,read_only=on,verity=/x.hash".to_string(),
            format!("path=/x.img,read_only=on,root_hash={root}"),
            "path=/x.img,read_only=on,verity=/x.hash,root_hash=xyz".to_string(),
            format!("path=/x.img,read_only=on,verity=,root_hash={root}"),
        ] {
            let err = bad.parse::<DiskConfig>().unwrap_err();
            assert!(
                matches!(err, DeviceConfigError::Syntax { .. }),
                "{bad}: {err}"
            );
        }
        let json: DiskConfig = serde_json::from_str(&format!(
            r#"{{"path": "/x", "read_only": true, "verity": {{"hash_file": "/h", "root_hash": "{root}"}}}}"#
        ))
        .unwrap();
        assert!(json.verity.is_some());
    }

    #[test]
    fn disk_flags() {
        let d: DiskConfig = "path=/x.img,read_only=on,id=root".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("/x.img"));
        assert!(d.read_only);
        assert_eq!(d.id.as_deref(), Some("root"));
        assert_eq!(d.to_string().parse::<DiskConfig>().unwrap(), d);
        for bad in [
            "",
            "/x.img",
            "path=",
            "read_only=on",
            "path=/x,read_only=maybe",
            "path=/x,size=1G",
            "path=/x,path=/y",
        ] {
            let e = bad.parse::<DiskConfig>().unwrap_err().to_string();
            assert!(e.starts_with("invalid --disk"), "{bad}: {e}");
        }
    }

    #[test]
    fn net_vsock_balloon_flags() {
        let n: NetConfig = "tap=tap0,mac=02:00:00:00:00:01".parse().unwrap();
        assert_eq!(n.mac_bytes(), Some([2, 0, 0, 0, 0, 1]));
        assert!("tap=tap0,mac=01:00:00:00:00:01"
            .parse::<NetConfig>()
            .is_err());
        assert!("mac=02:00:00:00:00:01".parse::<NetConfig>().is_err());
        let v: VsockConfig = "cid=3,socket=/tmp/v.sock".parse().unwrap();
        assert_eq!(v.cid, 3);
        assert_eq!(v.to_string().parse::<VsockConfig>().unwrap(), v);
        for bad in ["cid=2,socket=/s", "cid=x,socket=/s", "cid=3", "socket=/s"] {
            assert!(bad.parse::<VsockConfig>().is_err(), "{bad}");
        }
        let b: BalloonConfig = "target=64M,deflate_on_oom=on".parse().unwrap();
        assert_eq!(b.target, MemorySize(64 << 20));
        assert!(b.deflate_on_oom);
        assert_eq!(
            "".parse::<BalloonConfig>().unwrap(),
            BalloonConfig::default()
        );
        assert!("target=lots".parse::<BalloonConfig>().is_err());
    }
}
