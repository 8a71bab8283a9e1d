//! `VmConfig`: what a VM is made of. The CLI fills it from flags or a JSON file, the control API
//! and job files embed it; it is validated once, here, with errors a person can act on.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::device_config::{BalloonConfig, DeviceConfigError, DiskConfig, NetConfig, VsockConfig};
pub use crate::memory_size::{MemorySize, MemorySizeError};
use crate::rate_limiter::RateLimiterConfig;

/// The kernel command line used when the configuration gives none: serial console, reboot
/// through the i8042, reboot on panic, no PCI probing, one UART, an i8042 without aux port or
/// mux.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off nomodule 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// Default guest RAM.
pub const DEFAULT_MEMORY: &str = "256M";

/// Errors in a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No kernel given.
    #[error("no kernel given (--kernel PATH or \"kernel\" in the config file)")]
    NoKernel,
    /// A memory size that does not parse.
    #[error(transparent)]
    MemorySize(#[from] MemorySizeError),
    /// vCPUs out of range before asking KVM.
    #[error("invalid vCPU count {0}: at least 1 vCPU is needed")]
    Vcpus(u64),
    /// Serial mode that does not parse.
    #[error("invalid serial {0:?}: use stdio, none or file:PATH")]
    Serial(String),
    /// ELF entry that does not parse.
    #[error("invalid ELF entry {0:?}: use auto, linux64 or pvh")]
    ElfEntry(String),
    /// Irqchip mode that does not parse.
    #[error("invalid irqchip {0:?}: use split or kernel")]
    Irqchip(String),
    /// The config file cannot be read.
    #[error("cannot read config file {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A virtio device setting.
    #[error(transparent)]
    Devices(#[from] DeviceConfigError),
    /// An instance id outside Firecracker's rule.
    #[error(
        "invalid instance id {0:?}: use 1 to {MAX_INSTANCE_ID_BYTES} ASCII letters, digits and '-'"
    )]
    InstanceId(String),
    /// The config file is not a valid config.
    #[error("invalid config file {path}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SerialMode {
    /// The VMM's stdin and stdout (the terminal in raw mode when it is one).
    #[default]
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Discarded.
    None,
}

impl FromStr for SerialMode {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        match text {
            "stdio" => Ok(SerialMode::Stdio),
            "none" => Ok(SerialMode::None),
            _ => match text.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(SerialMode::File(PathBuf::from(path))),
                _ => Err(ConfigError::Serial(text.to_string())),
            },
        }
    }
}

impl fmt::Display for SerialMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerialMode::Stdio => f.write_str("stdio"),
            SerialMode::None => f.write_str("none"),
            SerialMode::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// Which entry an ELF kernel boots through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ElfEntry {
    /// PVH when the kernel has the PVH note, else the 64-bit Linux entry.
    #[default]
    Auto,
    /// The 64-bit Linux boot protocol entry (e_entry, boot_params in RSI).
    Linux64,
    /// The PVH entry (32-bit, hvm_start_info in EBX).
    Pvh,
}

impl FromStr for ElfEntry {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        match text {
            "auto" => Ok(ElfEntry::Auto),
            "linux64" => Ok(ElfEntry::Linux64),
            "pvh" => Ok(ElfEntry::Pvh),
            _ => Err(ConfigError::ElfEntry(text.to_string())),
        }
    }
}

impl fmt::Display for ElfEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElfEntry::Auto => "auto",
            ElfEntry::Linux64 => "linux64",
            ElfEntry::Pvh => "pvh",
        })
    }
}

/// Where the interrupt controllers are emulated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Irqchip {
    /// The LAPICs in KVM, the IOAPIC in the VMM; no PIC and no PIT. Enough for every guest
    /// that finds its interrupt routing in ACPI (hardware-reduced ACPI has no PIC or PIT), and
    /// a VM that ends in a fraction of a millisecond instead of tens.
    #[default]
    Split,
    /// Everything in KVM: LAPICs, IOAPIC, both 8259 PICs and the PIT. For guests that need the
    /// PIC or the PIT (old or `acpi=off` kernels that calibrate against the PIT).
    Kernel,
}

impl FromStr for Irqchip {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        match text {
            "split" => Ok(Irqchip::Split),
            "kernel" => Ok(Irqchip::Kernel),
            _ => Err(ConfigError::Irqchip(text.to_string())),
        }
    }
}

impl fmt::Display for Irqchip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Irqchip::Split => "split",
            Irqchip::Kernel => "kernel",
        })
    }
}

macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_via_str!(SerialMode, ElfEntry, Irqchip);

/// The instance id `GET /` reports when the configuration names none (Firecracker's default).
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";
/// Longest instance id (Firecracker's limit).
pub const MAX_INSTANCE_ID_BYTES: usize = 64;

/// A whole VM. JSON keys are the CLI's long flag names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct VmConfig {
    /// The instance id `GET /` reports (default [`DEFAULT_INSTANCE_ID`]).
    pub id: Option<String>,
    /// Kernel image: ELF vmlinux or bzImage.
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Replaces the default kernel command line.
    pub cmdline: Option<String>,
    /// Appended to the kernel command line.
    pub append: Option<String>,
    /// vCPU count.
    pub vcpus: u64,
    /// Guest RAM.
    pub memory: MemorySize,
    /// Serial console.
    pub serial: SerialMode,
    /// Transparent hugepages for guest RAM.
    pub hugepages: bool,
    /// KSM merging of guest RAM.
    pub ksm: bool,
    /// Fault guest RAM in before boot.
    pub prefault: bool,
    /// ELF kernel entry.
    pub elf_entry: ElfEntry,
    /// Where the interrupt controllers are emulated (a restored snapshot keeps its own).
    pub irqchip: Irqchip,
    /// virtio-blk devices, in order: the first is /dev/vda.
    pub disk: Vec<DiskConfig>,
    /// virtio-net devices on taps.
    pub net: Vec<NetConfig>,
    /// A virtio-vsock device.
    pub vsock: Option<VsockConfig>,
    /// A virtio-rng device fed from the host's getrandom.
    pub rng: bool,
    /// A rate limiter on the virtio-rng device (Firecracker's entropy `rate_limiter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng_rate_limiter: Option<RateLimiterConfig>,
    /// A virtio-balloon device.
    pub balloon: Option<BalloonConfig>,
    /// Track the guest memory pages written since the last snapshot (KVM's dirty log and the
    /// VMM's own writes), so that diff snapshots can be taken.
    pub track_dirty_pages: bool,
    /// Simultaneous multithreading: the vCPUs pair up as the two threads of a core in the
    /// topology the guest sees (Firecracker's `smt`).
    #[serde(default)]
    pub smt: bool,
    /// Firecracker's boot timer: a device at `layout::BOOT_TIMER_START` to which the guest
    /// writes 123 when it has booted; the VMM logs the time it took.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub boot_timer: bool,
    /// On SIGTERM, SIGINT or SIGHUP, press the ACPI power button and give the guest this many
    /// seconds to power off before the VM ends anyway (a second signal ends it at once); 0
    /// ends it at the first signal.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shutdown_grace_s: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            id: None,
            kernel: None,
            initrd: None,
            cmdline: None,
            append: None,
            vcpus: 1,
            memory: DEFAULT_MEMORY
                .parse()
                .expect("the default memory size parses"),
            serial: SerialMode::Stdio,
            hugepages: false,
            ksm: false,
            prefault: false,
            elf_entry: ElfEntry::Auto,
            irqchip: Irqchip::Split,
            disk: Vec::new(),
            net: Vec::new(),
            vsock: None,
            rng: false,
            rng_rate_limiter: None,
            balloon: None,
            track_dirty_pages: false,
            smt: false,
            boot_timer: false,
            shutdown_grace_s: 0,
        }
    }
}

impl VmConfig {
    /// Reads a JSON config file.
    pub fn from_file(path: &std::path::Path) -> Result<VmConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::ParseFile {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks what can be checked without KVM or the files: a kernel is named, vCPUs > 0.
    /// Memory bounds are checked by vmm-memory, the vCPU limit by KVM, the files when opened.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.is_none() {
            return Err(ConfigError::NoKernel);
        }
        if self.vcpus == 0 {
            return Err(ConfigError::Vcpus(0));
        }
        self.check_instance_id()?;
        validate_devices(self)?;
        Ok(())
    }

    /// Checks the configured instance id against Firecracker's rule (1 to
    /// [`MAX_INSTANCE_ID_BYTES`] ASCII letters, digits and `-`).
    pub fn check_instance_id(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.id {
            let valid = |c: char| c.is_ascii_alphanumeric() || c == '-';
            if id.is_empty() || id.len() > MAX_INSTANCE_ID_BYTES || !id.chars().all(valid) {
                return Err(ConfigError::InstanceId(id.clone()));
            }
        }
        Ok(())
    }

    /// The instance id: the configured one or [`DEFAULT_INSTANCE_ID`].
    pub fn instance_id(&self) -> &str {
        self.id.as_deref().unwrap_or(DEFAULT_INSTANCE_ID)
    }

    /// How many virtio-mmio devices this VM has.
    pub fn virtio_device_count(&self) -> usize {
        self.disk.len()
            + self.net.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.rng)
            + usize::from(self.balloon.is_some())
    }
}

/// Checks the device list as a whole: unique disk ids, paths, taps and MACs, and room for all.
fn validate_devices(config: &VmConfig) -> Result<(), DeviceConfigError> {
    let mut ids = HashSet::new();
    let mut paths = HashSet::new();
    for (index, disk) in config.disk.iter().enumerate() {
        // The API knows a disk without an id as `disk<N>`: an explicit id may not take the
        // name of another disk either, or two drives would answer to one drive_id.
        let id = disk.api_id(index);
        if ids.contains(&id) {
            return Err(DeviceConfigError::DuplicateDiskId(id));
        }
        ids.insert(id);
        // Canonical paths catch the same file under two names; a missing file is reported
        // when it is opened.
        let key = std::fs::canonicalize(&disk.path).unwrap_or_else(|_| disk.path.clone());
        if !paths.insert(key) {
            return Err(DeviceConfigError::DuplicateDiskPath(disk.path.clone()));
        }
    }
    let mut taps = HashSet::new();
    let mut macs = HashSet::new();
    for net in &config.net {
        net.check(&net.to_string())?;
        if !taps.insert(net.tap.as_str()) {
            return Err(DeviceConfigError::DuplicateTap(net.tap.clone()));
        }
        if let Some(mac) = net.mac_bytes() {
            if !macs.insert(mac) {
                return Err(DeviceConfigError::DuplicateMac(
                    net.mac.clone().unwrap_or_default(),
                ));
            }
        }
    }
    let count = config.virtio_device_count();
    let max = vmm_memory::layout::VIRTIO_MMIO_SLOTS;
    if count > max {
        return Err(DeviceConfigError::TooManyDevices { count, max });
    }
    if let Some(balloon) = &config.balloon {
        if balloon.target.0 > config.memory.0 {
            return Err(DeviceConfigError::BalloonTooLarge {
                target: balloon.target,
                memory: config.memory,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_follow_firecrackers_rule() {
        let with = |id: &str| VmConfig {
            id: Some(id.to_string()),
            ..VmConfig::default()
        };
        assert_eq!(VmConfig::default().instance_id(), DEFAULT_INSTANCE_ID);
        assert_eq!(with("vm-7").instance_id(), "vm-7");
        for good in ["a", "vm-7", "ABC-123", &"x".repeat(MAX_INSTANCE_ID_BYTES)] {
            assert!(with(good).check_instance_id().is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "vm_7",
            "vm 7",
            "vm/7",
            "é",
            &"x".repeat(MAX_INSTANCE_ID_BYTES + 1),
        ] {
            let err = with(bad).check_instance_id().unwrap_err();
            assert!(matches!(err, ConfigError::InstanceId(_)), "{bad:?}");
            assert!(err.to_string().contains("invalid instance id"), "{err}");
        }
        let json: VmConfig = serde_json::from_str(r#"{"id": "from-file"}"#).unwrap();
        assert_eq!(json.instance_id(), "from-file");
    }

    #[test]
    fn memory_sizes() {
        let parse = |s: &str| s.parse::<MemorySize>().map(|m| m.0);
        assert_eq!(parse("256M").unwrap(), 256 << 20);
        assert_eq!(parse("256").unwrap(), 256 << 20);
        assert_eq!(parse("5G").unwrap(), 5 << 30);
        assert_eq!(parse("5GiB").unwrap(), 5 << 30);
        assert_eq!(parse("1024k").unwrap(), 1 << 20);
        assert_eq!(parse("0").unwrap(), 0);
        for bad in ["", "M", "-1G", "1.5G", "12X", "99999999999T"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(MemorySize(5 << 30).to_string(), "5G");
        assert_eq!(MemorySize(256 << 20).to_string(), "256M");
    }

    #[test]
    fn json_uses_the_flag_names() {
        let config: VmConfig = serde_json::from_str(
            r#"{"kernel": "/k", "initrd": "/i", "vcpus": 2, "memory": "256M", "append": "quiet",
                "serial": "file:/tmp/out", "elf-entry": "linux64", "hugepages": true}"#,
        )
        .unwrap();
        assert_eq!(config.kernel.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(config.vcpus, 2);
        assert_eq!(config.memory, MemorySize(256 << 20));
        assert_eq!(config.serial, SerialMode::File("/tmp/out".into()));
        assert_eq!(config.elf_entry, ElfEntry::Linux64);
        assert!(config.hugepages && !config.ksm);
        let back: VmConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        let numeric: VmConfig = serde_json::from_str(r#"{"memory": 512}"#).unwrap();
        assert_eq!(numeric.memory, MemorySize(512 << 20));
    }

    #[test]
    fn bad_json_is_refused() {
        for bad in [
            r#"{"kernal": "/k"}"#,
            r#"{"vcpus": -1}"#,
            r#"{"memory": "lots"}"#,
            r#"{"serial": "tcp:1"}"#,
            r#"{"vcpus": "two"}"#,
        ] {
            assert!(serde_json::from_str::<VmConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation() {
        assert!(matches!(
            VmConfig::default().validate(),
            Err(ConfigError::NoKernel)
        ));
        let config = VmConfig {
            kernel: Some("/k".into()),
            vcpus: 0,
            ..Default::default()
        };
        assert!(matches!(config.validate(), Err(ConfigError::Vcpus(0))));
    }

    #[test]
    fn serial_modes() {
        assert_eq!("stdio".parse::<SerialMode>().unwrap(), SerialMode::Stdio);
        assert_eq!("none".parse::<SerialMode>().unwrap(), SerialMode::None);
        assert_eq!(
            "file:/x".parse::<SerialMode>().unwrap(),
            SerialMode::File("/x".into())
        );
        assert!("file:".parse::<SerialMode>().is_err());
        assert!("pty".parse::<SerialMode>().is_err());
    }

    #[test]
    fn device_list_is_checked_as_a_whole() {
        let base = VmConfig {
            kernel: Some("/k".into()),
            ..Default::default()
        };
        let mut c = base.clone();
        c.disk = vec![
            "path=/a,id=x".parse().unwrap(),
            "path=/b,id=x".parse().unwrap(),
        ];
        assert!(matches!(
            validate_devices(&c),
            Err(DeviceConfigError::DuplicateDiskId(_))
        ));
        // An explicit id equal to the `disk<N>` name of a disk without one.
        c.disk = vec![
            "path=/a,id=disk1".parse().unwrap(),
            "path=/b".parse().unwrap(),
        ];
        assert!(matches!(
            validate_devices(&c),
            Err(DeviceConfigError::DuplicateDiskId(id)) if id == "disk1"
        ));
        c.disk = vec!["path=/a".parse().unwrap(), "path=/a".parse().unwrap()];
        assert!(matches!(
            validate_devices(&c),
            Err(DeviceConfigError::DuplicateDiskPath(_))
        ));
        // A path with a line break still gives a one-line message.
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel": "/k", "disk": [{"path": "a\nb"}, {"path": "a\nb"}]}"#,
        )
        .unwrap();
        let message = c.validate().unwrap_err().to_string();
        assert!(
            message.contains("attached twice") && !message.contains('\n'),
            "{message}"
        );
        let mut c = base.clone();
        c.net = vec!["tap=t0".parse().unwrap(), "tap=t0".parse().unwrap()];
        assert!(matches!(
            validate_devices(&c),
            Err(DeviceConfigError::DuplicateTap(_))
        ));
        let mut c = base.clone();
        c.disk = (0..30)
            .map(|i| format!("path=/d{i}").parse().unwrap())
            .collect();
        assert!(matches!(
            validate_devices(&c),
            Err(DeviceConfigError::TooManyDevices { count: 30, .. })
        ));
        let mut c = base;
        c.balloon = Some("target=1G".parse().unwrap());
        assert!(matches!(
            validate_devices(&c),
            Err(DeviceConfigError::BalloonTooLarge { .. })
        ));
    }

    #[test]
    fn json_objects_use_the_flag_keys() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel": "/k", "disk": [{"path": "/a", "read_only": true}],
                "net": [{"tap": "t0"}], "vsock": {"cid": 3, "socket": "/v"}, "rng": true,
                "balloon": {"target": "16M"}}"#,
        )
        .unwrap();
        assert!(c.disk[0].read_only);
        assert_eq!(c.net[0].tap, "t0");
        assert_eq!(c.vsock.as_ref().unwrap().cid, 3);
        assert!(c.rng);
        assert_eq!(c.balloon.as_ref().unwrap().target, MemorySize(16 << 20));
        assert_eq!(c.virtio_device_count(), 5);
        assert!(
            serde_json::from_str::<VmConfig>(r#"{"disk": [{"path": "/a", "ro": 1}]}"#).is_err()
        );
    }
}
