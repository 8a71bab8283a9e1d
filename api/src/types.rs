//! The API's JSON bodies, with Firecracker's field names and shapes, and [`ApiRequest`], one
//! variant per supported operation.
//!
//! Request bodies refuse unknown fields. Fields Firecracker defines for features this VMM lacks
//! (rate limiters, vhost-user drives, hugetlbfs, balloon statistics...) are accepted by the
//! JSON layer so that a request naming them gets a clear "not supported" answer, not a
//! confusing "unknown field"; absent, `null`, `false` or `0` values of such fields are fine.

use serde::{Deserialize, Serialize};

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
    /// Simultaneous multithreading; only `false` is supported.
    #[serde(default)]
    pub smt: bool,
    /// KVM dirty-page tracking, for diff snapshots.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// How guest RAM is backed.
    #[serde(default)]
    pub huge_pages: HugePages,
    /// A CPU template; only `"None"` (or absent) is supported.
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
    /// Simultaneous multithreading; only `false` is supported.
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

/// A drive's host caching strategy. Accepted and reported; this VMM's virtio-blk always
/// makes the guest's flushes durable on the host (fdatasync), as `Writeback` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Firecracker's default.
    Unsafe,
    /// Flushes reach the host's disk.
    Writeback,
}

/// A drive's I/O engine. Accepted and reported; this VMM does synchronous I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// A rate limiter (not supported: must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
    /// A vhost-user socket (not supported: must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
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
    /// A receive rate limiter (not supported: must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<serde_json::Value>,
    /// A transmit rate limiter (not supported: must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<serde_json::Value>,
}

/// `PUT /vsock`: a virtio-vsock device whose host side is a Unix socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest's context id, 3 or more (and within 32 bits).
    pub guest_cid: u64,
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
    /// A rate limiter (not supported: must be absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
}

/// `PUT /balloon`: a virtio-balloon device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    /// Target balloon size in MiB.
    pub amount_mib: u64,
    /// Let the guest take pages back when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Statistics polling interval (not supported: must be absent or 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_polling_interval_s: Option<u64>,
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
    /// Press Ctrl+Alt+Del on the guest's keyboard (i8042), asking it to reboot.
    SendCtrlAltDel,
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
    #[serde(default)]
    pub snapshot_type: SnapshotType,
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
    /// Info for this VMM (app `vmm`, this crate's version) with the given id and state.
    pub fn new(id: &str, state: InstanceState) -> InstanceInfo {
        InstanceInfo {
            app_name: "vmm".to_string(),
            id: id.to_string(),
            state,
            vmm_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// `GET /version` response (Firecracker's field name, this VMM's version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// This VMM's version.
    pub firecracker_version: String,
}

impl Default for VersionInfo {
    fn default() -> VersionInfo {
        VersionInfo {
            firecracker_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
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
}

impl ApiRequest {
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
        )
    }
}
