//! The API's JSON bodies, with Firecracker's field names and shapes, and [`ApiRequest`], one
//! variant per supported operation.
//!
//! Request bodies refuse unknown fields. Fields Firecracker defines for features this VMM lacks
//! (rate limiters, vhost-user drives, hugetlbfs, balloon statistics...) are accepted by the
//! JSON layer so that a request naming them gets a clear "not supported" answer, not a
//! confusing "unknown field"; absent, `null`, `false` or `0` values of such fields are fine.

use serde::{Deserialize, Deserializer, Serialize};

use crate::rate_limiter::RateLimiterConfig;

/// Firecracker's version whose API and command line this VMM implements in its `firecracker`
/// mode (`--version`, `GET /version`, `GET /`).
pub const FIRECRACKER_VERSION: &str = "1.16.1";

/// An explicit `null` reads as the field's default, as if the field were absent (Firecracker's
/// clients send `null` for unset fields).
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Who this process says it is in `GET /` and `GET /version`: itself (`vmm`), or Firecracker
/// when it was started as the `firecracker` binary, since the tools that spawn it parse
/// Firecracker's answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flavor {
    /// `vmm run`: app `vmm`, this crate's version.
    #[default]
    Vmm,
    /// The `firecracker` name: app `Firecracker`, [`FIRECRACKER_VERSION`].
    Firecracker,
}

impl Flavor {
    /// The `app_name` of `GET /`.
    pub fn app_name(self) -> &'static str {
        match self {
            Flavor::Vmm => "vmm",
            Flavor::Firecracker => "Firecracker",
        }
    }

    /// The version reported by `GET /` and `GET /version`.
    pub fn version(self) -> &'static str {
        match self {
            Flavor::Vmm => env!("CARGO_PKG_VERSION"),
            Flavor::Firecracker => FIRECRACKER_VERSION,
        }
    }
}

/// An error body: `{"fault_message": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What went wrong.
    pub fault_message: String,
}

/// `PUT /boot-source`: the kernel, its command line and an initrd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Host path of the kernel image (ELF vmlinux or bzImage).
    pub kernel_image_path: String,
    /// The kernel command line; replaces the VMM's default one when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of an initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// Guest RAM backing (`huge_pages` of `/machine-config`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Ordinary 4 KiB pages.
    #[default]
    None,
    /// Transparent hugepages (madvise MADV_HUGEPAGE).
    Transparent,
    /// Explicit 2 MiB hugetlbfs pages (not supported by this VMM).
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PUT /machine-config` (and the `machine-config` of `GET /vm/config`). Optional fields that
/// are absent take their defaults, as a PUT replaces the whole machine configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPU count, 1 or more.
    pub vcpu_count: u64,
    /// Guest RAM in MiB, 1 or more.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading: two threads per core in the topology the guest sees
    /// (needs 1 or an even number of vCPUs).
    #[serde(default, deserialize_with = "null_as_default")]
    pub smt: bool,
    /// KVM dirty-page tracking, for diff snapshots.
    #[serde(default, deserialize_with = "null_as_default")]
    pub track_dirty_pages: bool,
    /// How guest RAM is backed.
    #[serde(default, deserialize_with = "null_as_default")]
    pub huge_pages: HugePages,
    /// A CPU template (`None`, `C3`, `T2`, `T2S`, `T2CL`, `T2A`, `V1N1`); only `None` (or
    /// absent) is implemented, the others are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

/// `PATCH /machine-config`: only the fields given change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// New vCPU count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u64>,
    /// New guest RAM in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u64>,
    /// Simultaneous multithreading: two threads per core in the topology the guest sees
    /// (needs 1 or an even number of vCPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// KVM dirty-page tracking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// How guest RAM is backed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
    /// A CPU template; only `"None"` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

/// A drive's host caching strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CacheType {
    /// Firecracker's default: VIRTIO_BLK_F_FLUSH is not offered and the guest's flushes are
    /// acknowledged without syncing the image.
    #[default]
    Unsafe,
    /// VIRTIO_BLK_F_FLUSH is offered and the guest's flushes reach the host's disk
    /// (fdatasync).
    Writeback,
}

/// A drive's I/O engine. Accepted and reported; this VMM does synchronous I/O for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking reads and writes.
    Sync,
    /// io_uring in Firecracker.
    Async,
}

/// `PUT /drives/{drive_id}`: a virtio-blk device on a raw image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's id; must equal the path's.
    pub drive_id: String,
    /// Host path of the raw image; required (vhost-user drives are not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// Whether the guest boots from this drive (`root=` on the command line).
    pub is_root_device: bool,
    /// Whether the guest may not write; `false` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// The root partition's PARTUUID; used only with `is_root_device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Host caching strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// I/O engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// A rate limiter on the drive's requests (bytes and operations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// A vhost-user socket (not supported: must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// The image's format (not a Firecracker field): `raw`, `qcow2` or `layered`; absent or
    /// null detects it from the file's magic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<crate::DiskFormat>,
    /// A dm-verity hash file to verify every read against (not a Firecracker field); needs
    /// `verity_root_hash` and `is_read_only: true`. Absent: the image is served as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity_hash_file: Option<String>,
    /// The trusted root hash of `verity_hash_file`, in hex (not a Firecracker field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity_root_hash: Option<String>,
    /// A LUKS-encrypted image's key file (not a Firecracker field; see `DiskConfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// A LUKS-encrypted image's passphrase file (not a Firecracker field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_file: Option<String>,
    /// A detached LUKS header (not a Firecracker field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub luks_header: Option<String>,
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net device on a host tap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's id; must equal the path's.
    pub iface_id: String,
    /// The host tap device (attached if it exists, created if not).
    pub host_dev_name: String,
    /// The guest's MAC (unicast, `02:00:00:00:00:01` style); derived from the tap when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// An MTU to advertise (not supported: must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// A rate limiter on the frames delivered to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// A rate limiter on the frames the guest sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /vsock`: a virtio-vsock device whose host side is a Unix socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest's context id: any 32-bit number, as Firecracker takes it (0 to 2 are the
    /// reserved any/hypervisor/host ids, which a guest cannot use).
    pub guest_cid: u32,
    /// The Unix socket the VMM listens on; guest connections to host port P go to
    /// `<uds_path>_P`.
    pub uds_path: String,
    /// Deprecated in Firecracker; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `PUT /entropy`: a virtio-rng device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    /// A rate limiter on the random bytes (and requests) the guest gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /balloon`: a virtio-balloon device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    /// Target balloon size in MiB.
    pub amount_mib: u64,
    /// Let the guest take pages back when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Seconds between requests for the guest's memory statistics; 0 or absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_polling_interval_s: Option<u32>,
    /// Free page hinting (not supported: must be absent or false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_page_hinting: Option<bool>,
    /// Free page reporting (not supported: must be absent or false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_page_reporting: Option<bool>,
}

/// `PATCH /balloon`: a new target size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// Target balloon size in MiB.
    pub amount_mib: u64,
}

/// The action of `PUT /actions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured VM.
    InstanceStart,
    /// Press Ctrl+Alt+Del on the guest's keyboard (i8042), asking it to reboot. The
    /// `firecracker` front end presses the ACPI power button as well (Firecracker's guests are
    /// often built without the keyboard handler, CONFIG_VT).
    SendCtrlAltDel,
    /// Press the ACPI power button (a Generic Event Device notifying a `PNP0C0C` button),
    /// asking the guest to power off. Not in Firecracker's API.
    PressPowerButton,
    /// Write the metrics out now.
    FlushMetrics,
}

/// `PUT /actions` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// The action.
    pub action_type: ActionType,
}

/// The state asked for by `PATCH /vm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stop every vCPU and device queue and hold them.
    Paused,
    /// Continue a paused VM.
    Resumed,
}

/// `PATCH /vm` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateUpdate {
    /// The state.
    pub state: VmState,
}

/// Full or diff snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// Only the pages dirtied since the last snapshot (needs dirty-page tracking).
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Where the VM state file goes.
    pub snapshot_path: String,
    /// Where guest memory goes.
    pub mem_file_path: String,
    /// Full (the default) or diff.
    #[serde(default, deserialize_with = "null_as_default")]
    pub snapshot_type: SnapshotType,
    /// Extension (not in Firecracker): seal (encrypt and authenticate) the state and memory
    /// files with the key in this file. Absent: unsealed. Full snapshots only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// How guest memory is loaded on restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// Mapped from a file.
    File,
    /// Served by a userfaultfd handler (not supported).
    Uffd,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    /// File (supported) or Uffd.
    pub backend_type: MemoryBackendType,
    /// The memory file.
    pub backend_path: String,
}

/// A new host tap for one network interface on restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface.
    pub iface_id: String,
    /// Its new host tap.
    pub host_dev_name: String,
}

/// A new host socket for the vsock device on restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The new Unix socket path.
    pub uds_path: String,
}

/// `PUT /snapshot/load` body as it comes on the wire; [`SnapshotLoad`] is what it means.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The VM state file.
    pub snapshot_path: String,
    /// The memory file (older form; exactly one of this and `mem_backend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<String>,
    /// The memory backend (newer form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Deprecated name of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Track dirty pages after the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Resume the VM once loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// New host taps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// A new vsock socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance the guest clock by the wall time since the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
    /// Extension (not in Firecracker): the key file of a sealed snapshot. Absent: the snapshot
    /// must be unsealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// A validated `PUT /snapshot/load`: one memory file, flags resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotLoad {
    /// The VM state file.
    pub snapshot_path: String,
    /// The memory file (from `mem_file_path` or a `File` `mem_backend`).
    pub mem_file_path: String,
    /// Track dirty pages after the restore (`track_dirty_pages` or `enable_diff_snapshots`).
    pub track_dirty_pages: bool,
    /// Resume the VM once loaded.
    pub resume_vm: bool,
    /// New host taps, by interface id (ids validated). The VM side applies or refuses them.
    pub network_overrides: Vec<NetworkOverride>,
    /// A new vsock socket path. The VM side applies or refuses it.
    pub vsock_override: Option<String>,
    /// Advance the guest clock by the wall time since the snapshot. The VM side applies or
    /// refuses it.
    pub clock_realtime: bool,
    /// The key file of a sealed snapshot (`None`: unsealed).
    pub key_file: Option<String>,
}

/// The instance's state in [`InstanceInfo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configured (or being configured), not booted.
    #[serde(rename = "Not started")]
    NotStarted,
    /// Running.
    Running,
    /// Paused.
    Paused,
}

/// `GET /` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The application: `"vmm"`.
    pub app_name: String,
    /// The instance's id.
    pub id: String,
    /// Its state.
    pub state: InstanceState,
    /// This VMM's version.
    pub vmm_version: String,
}

impl InstanceInfo {
    /// Info for this VMM as `flavor` names it, with the given id and state.
    pub fn new(id: &str, state: InstanceState, flavor: Flavor) -> InstanceInfo {
        InstanceInfo {
            app_name: flavor.app_name().to_string(),
            id: id.to_string(),
            state,
            vmm_version: flavor.version().to_string(),
        }
    }
}

/// `GET /version` response (Firecracker's field name, this VMM's version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// This VMM's version.
    pub firecracker_version: String,
}

impl VersionInfo {
    /// The version `flavor` reports.
    pub fn new(flavor: Flavor) -> VersionInfo {
        VersionInfo {
            firecracker_version: flavor.version().to_string(),
        }
    }
}

impl Default for VersionInfo {
    fn default() -> VersionInfo {
        VersionInfo::new(Flavor::Vmm)
    }
}

/// A log level of `PUT /logger` (case-insensitive; `Warn` is taken for `Warning`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum LogLevel {
    /// Nothing is logged.
    Off,
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warning,
    /// Also informational messages (Firecracker's default).
    #[default]
    Info,
    /// Also debugging messages.
    Debug,
    /// Everything.
    Trace,
}

impl std::str::FromStr for LogLevel {
    type Err = String;

    fn from_str(text: &str) -> Result<LogLevel, String> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "off" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warning" | "warn" => LogLevel::Warning,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => {
                return Err(format!(
                    "unknown log level {text:?} (Error, Warning, Info, Debug, Trace or Off)"
                ))
            }
        })
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LogLevel, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `PUT /logger`: where the human-readable log goes and what it shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// The file or named pipe written to (opened for appending, non-blocking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// The most detailed level written (default `Info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Each line names its level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Each line names the source file and line it comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only records whose module path starts with this are written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`: where the metrics are flushed, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// The file or named pipe written to (opened for appending, non-blocking).
    pub metrics_path: String,
}

/// `PATCH /drives/{drive_id}` on a running VM: a new backing file and/or rate limiter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// The drive.
    pub drive_id: String,
    /// A new image: reopened, its size becomes the disk's capacity, and the guest is told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// New token buckets; a bucket left out keeps its settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /network-interfaces/{iface_id}` on a running VM: new rate limiters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    /// The interface.
    pub iface_id: String,
    /// New receive buckets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// New transmit buckets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /balloon/statistics`: a new polling interval (statistics cannot be switched on or
/// off after boot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    /// Seconds between two statistics requests to the guest.
    pub stats_polling_interval_s: u32,
}

/// `GET /balloon/statistics` response: the balloon's size and the guest's latest memory
/// statistics (absent ones are left out).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStats {
    /// Pages the balloon should hold.
    pub target_pages: u32,
    /// Pages it holds.
    pub actual_pages: u32,
    /// `target_pages` in MiB.
    pub target_mib: u32,
    /// `actual_pages` in MiB.
    pub actual_mib: u32,
    /// Bytes swapped in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    /// Bytes swapped out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    /// Major page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    /// Minor page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    /// Bytes not used for anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    /// Bytes of memory the guest has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    /// Bytes available to new programs without swapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    /// Bytes of page cache that can be dropped at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    /// Successful hugetlb allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    /// Failed hugetlb allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    /// OOM killer runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    /// Allocation stalls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    /// Memory scanned asynchronously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    /// Memory scanned directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    /// Memory reclaimed asynchronously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    /// Memory reclaimed directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

/// `GET /vm/config` response: the whole configuration in Firecracker's shape. Absent devices
/// are `null` (or empty lists), as Firecracker writes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullVmConfig {
    /// The balloon.
    pub balloon: Option<Balloon>,
    /// Block devices, `/dev/vda` first.
    pub drives: Vec<Drive>,
    /// Kernel, command line and initrd; `null` while no kernel is set.
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config")]
    pub machine_config: MachineConfig,
    /// Network devices.
    #[serde(rename = "network-interfaces")]
    pub network_interfaces: Vec<NetworkInterface>,
    /// The vsock device.
    pub vsock: Option<Vsock>,
    /// The entropy device.
    pub entropy: Option<EntropyDevice>,
}

/// One API request, parsed and validated (ids, required fields, supported features).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /`: instance information ([`InstanceInfo`]).
    GetInstanceInfo,
    /// `GET /version` ([`VersionInfo`]).
    GetVersion,
    /// `GET /vm/config` ([`FullVmConfig`]).
    GetVmConfig,
    /// `GET /machine-config` ([`MachineConfig`]).
    GetMachineConfig,
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /drives/{drive_id}` (path and body ids equal).
    PutDrive(Drive),
    /// `PUT /network-interfaces/{iface_id}` (path and body ids equal).
    PutNetworkInterface(NetworkInterface),
    /// `PUT /vsock`.
    PutVsock(Vsock),
    /// `PUT /entropy`.
    PutEntropy(EntropyDevice),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`: pause or resume.
    PatchVm(VmState),
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoad),
    /// `GET /balloon` ([`Balloon`], or 400 when none is configured).
    GetBalloon,
    /// `PUT /balloon`.
    PutBalloon(Balloon),
    /// `PATCH /balloon`: a new target, before or after boot.
    PatchBalloon(BalloonUpdate),
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /metrics`.
    PutMetrics(Metrics),
    /// `PATCH /drives/{drive_id}`.
    PatchDrive(PartialDrive),
    /// `PATCH /network-interfaces/{iface_id}`.
    PatchNetworkInterface(PartialNetworkInterface),
    /// `GET /balloon/statistics`.
    GetBalloonStats,
    /// `PATCH /balloon/statistics`.
    PatchBalloonStats(BalloonStatsUpdate),
}

impl ApiRequest {
    /// The method and endpoint, for logs and metrics (`"PUT /drives"`).
    pub fn name(&self) -> &'static str {
        match self {
            ApiRequest::GetInstanceInfo => "GET /",
            ApiRequest::GetVersion => "GET /version",
            ApiRequest::GetVmConfig => "GET /vm/config",
            ApiRequest::GetMachineConfig => "GET /machine-config",
            ApiRequest::PutBootSource(_) => "PUT /boot-source",
            ApiRequest::PutMachineConfig(_) => "PUT /machine-config",
            ApiRequest::PatchMachineConfig(_) => "PATCH /machine-config",
            ApiRequest::PutDrive(_) => "PUT /drives",
            ApiRequest::PutNetworkInterface(_) => "PUT /network-interfaces",
            ApiRequest::PutVsock(_) => "PUT /vsock",
            ApiRequest::PutEntropy(_) => "PUT /entropy",
            ApiRequest::Action(_) => "PUT /actions",
            ApiRequest::PatchVm(_) => "PATCH /vm",
            ApiRequest::CreateSnapshot(_) => "PUT /snapshot/create",
            ApiRequest::LoadSnapshot(_) => "PUT /snapshot/load",
            ApiRequest::GetBalloon => "GET /balloon",
            ApiRequest::PutBalloon(_) => "PUT /balloon",
            ApiRequest::PatchBalloon(_) => "PATCH /balloon",
            ApiRequest::PutLogger(_) => "PUT /logger",
            ApiRequest::PutMetrics(_) => "PUT /metrics",
            ApiRequest::PatchDrive(_) => "PATCH /drives",
            ApiRequest::PatchNetworkInterface(_) => "PATCH /network-interfaces",
            ApiRequest::GetBalloonStats => "GET /balloon/statistics",
            ApiRequest::PatchBalloonStats(_) => "PATCH /balloon/statistics",
        }
    }

    /// Whether Firecracker accepts this request only before the VM starts: the configuration
    /// requests (`PATCH /balloon` excepted) and `PUT /snapshot/load`. A server answers them
    /// with 400 once the VM runs.
    pub fn pre_boot_only(&self) -> bool {
        matches!(
            self,
            ApiRequest::PutBootSource(_)
                | ApiRequest::PutMachineConfig(_)
                | ApiRequest::PatchMachineConfig(_)
                | ApiRequest::PutDrive(_)
                | ApiRequest::PutNetworkInterface(_)
                | ApiRequest::PutVsock(_)
                | ApiRequest::PutEntropy(_)
                | ApiRequest::PutBalloon(_)
                | ApiRequest::LoadSnapshot(_)
                | ApiRequest::PutLogger(_)
                | ApiRequest::PutMetrics(_)
        )
    }
}
