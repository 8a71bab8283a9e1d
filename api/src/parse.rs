//! From method, path and body to a validated [`ApiRequest`]: routing, JSON decoding, id checks
//! and the checks of every field this VMM cannot take as given.

use serde::de::DeserializeOwned;

use super::types::*;
use super::ApiError;

/// The longest resource id (`drive_id`, `iface_id`) accepted, in bytes.
pub const MAX_ID_BYTES: usize = 64;

/// Longest Linux network interface name (IFNAMSIZ less the NUL).
const MAX_IFNAME_BYTES: usize = 15;

/// Checks a resource id: 1 to [`MAX_ID_BYTES`] bytes of `[A-Za-z0-9_-]`. `field` names it in
/// the error (`drive_id`, `iface_id`).
pub fn validate_id(field: &'static str, id: &str) -> Result<(), ApiError> {
    let why = if id.is_empty() {
        "it is empty".to_string()
    } else if id.len() > MAX_ID_BYTES {
        format!(
            "it is {} bytes long, at most {MAX_ID_BYTES} are allowed",
            id.len()
        )
    } else if let Some(c) = id
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        format!("{c:?} is not allowed (use letters, digits, '_' and '-')")
    } else {
        return Ok(());
    };
    Err(ApiError::InvalidId {
        field,
        id: id.to_string(),
        why,
    })
}

fn invalid(field: &'static str, why: impl Into<String>) -> ApiError {
    ApiError::InvalidValue {
        field,
        why: why.into(),
    }
}

/// A host path: not empty, no NUL byte (it could not be opened).
fn validate_path(field: &'static str, path: &str) -> Result<(), ApiError> {
    if path.is_empty() {
        return Err(invalid(field, "the path is empty"));
    }
    if path.contains('\0') {
        return Err(invalid(field, "the path contains a NUL character"));
    }
    Ok(())
}

/// A MiB count that fits in bytes.
fn validate_mib(field: &'static str, mib: u64) -> Result<(), ApiError> {
    if mib.checked_mul(1 << 20).is_none() {
        return Err(invalid(field, format!("{mib} MiB overflows a byte count")));
    }
    Ok(())
}

fn validate_tap_name(field: &'static str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_IFNAME_BYTES {
        return Err(invalid(
            field,
            format!("{name:?} must be 1 to {MAX_IFNAME_BYTES} bytes long"),
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || !c.is_ascii_graphic())
    {
        return Err(invalid(
            field,
            format!("{name:?} is not a valid network interface name"),
        ));
    }
    Ok(())
}

fn unsupported_if(condition: bool, what: &str) -> Result<(), ApiError> {
    if condition {
        Err(ApiError::Unsupported(what.to_string()))
    } else {
        Ok(())
    }
}

fn validate_vcpus(vcpus: u64) -> Result<(), ApiError> {
    if vcpus == 0 {
        return Err(invalid("vcpu_count", "at least 1 vCPU is needed"));
    }
    Ok(())
}

fn validate_mem_mib(mib: u64) -> Result<(), ApiError> {
    if mib == 0 {
        return Err(invalid("mem_size_mib", "guest memory cannot be 0 MiB"));
    }
    validate_mib("mem_size_mib", mib)
}

/// Firecracker's CPU templates; only `None` is implemented here.
const CPU_TEMPLATES: [&str; 7] = ["None", "C3", "T2", "T2S", "T2CL", "T2A", "V1N1"];

fn validate_machine_extras(
    huge_pages: Option<HugePages>,
    cpu_template: Option<&str>,
) -> Result<(), ApiError> {
    unsupported_if(
        huge_pages == Some(HugePages::Hugetlbfs2M),
        "hugetlbfs guest memory (huge_pages: \"2M\"; use \"Transparent\")",
    )?;
    match cpu_template {
        None | Some("None") => Ok(()),
        Some(template) if CPU_TEMPLATES.contains(&template) => Err(ApiError::Unsupported(format!(
            "CPU template {template:?} (only \"None\" is implemented)"
        ))),
        Some(template) => Err(invalid(
            "cpu_template",
            format!("{template:?} is not one of {}", CPU_TEMPLATES.join(", ")),
        )),
    }
}

/// With SMT the vCPUs pair up as the two threads of a core: 1 or an even number of them, as
/// Firecracker requires.
fn validate_smt(smt: bool, vcpus: u64) -> Result<(), ApiError> {
    if smt && vcpus > 1 && vcpus % 2 == 1 {
        return Err(invalid(
            "vcpu_count",
            format!("{vcpus} vCPUs with smt: true (1 or an even number are needed)"),
        ));
    }
    Ok(())
}

impl BootSource {
    /// Checks the paths (not empty, no NUL). The files themselves are checked at boot.
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_path("kernel_image_path", &self.kernel_image_path)?;
        if let Some(initrd) = &self.initrd_path {
            validate_path("initrd_path", initrd)?;
        }
        Ok(())
    }
}

impl MachineConfig {
    /// Checks vCPUs >= 1, memory >= 1 MiB, and that no unsupported feature (SMT, hugetlbfs,
    /// CPU templates) is asked for.
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_vcpus(self.vcpu_count)?;
        validate_mem_mib(self.mem_size_mib)?;
        validate_smt(self.smt, self.vcpu_count)?;
        validate_machine_extras(Some(self.huge_pages), self.cpu_template.as_deref())
    }
}

impl MachineConfigUpdate {
    /// Checks the fields given, as [`MachineConfig::validate`] does.
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(vcpus) = self.vcpu_count {
            validate_vcpus(vcpus)?;
        }
        if let Some(mib) = self.mem_size_mib {
            validate_mem_mib(mib)?;
        }
        if let (Some(smt), Some(vcpus)) = (self.smt, self.vcpu_count) {
            validate_smt(smt, vcpus)?;
        }
        validate_machine_extras(self.huge_pages, self.cpu_template.as_deref())
    }
}

impl Drive {
    /// Checks the id, that `path_on_host` is given, the PARTUUID's form, and that no
    /// vhost-user socket or rate limiter is asked for.
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_id("drive_id", &self.drive_id)?;
        unsupported_if(self.socket.is_some(), "vhost-user block (socket)")?;
        if let Some(limiter) = &self.rate_limiter {
            limiter.validate_as("rate_limiter")?;
        }
        for (field, path) in [
            ("key_file", &self.key_file),
            ("passphrase_file", &self.passphrase_file),
            ("luks_header", &self.luks_header),
        ] {
            if let Some(path) = path {
                validate_path(field, path)?;
            }
        }
        if self.key_file.is_some() && self.passphrase_file.is_some() {
            return Err(invalid(
                "passphrase_file",
                "key_file and passphrase_file exclude each other",
            ));
        }
        if self.luks_header.is_some() && self.key_file.is_none() && self.passphrase_file.is_none() {
            return Err(invalid(
                "luks_header",
                "a LUKS header needs key_file or passphrase_file",
            ));
        }
        match &self.path_on_host {
            Some(path) => validate_path("path_on_host", path)?,
            None => {
                return Err(invalid(
                    "path_on_host",
                    "the drive's image path is required",
                ))
            }
        }
        if let Some(partuuid) = &self.partuuid {
            if partuuid.is_empty()
                || partuuid.len() > 64
                || !partuuid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(invalid(
                    "partuuid",
                    format!("{partuuid:?} is not a partition UUID"),
                ));
            }
        }
        if let Some(verity) = self.verity()? {
            verity
                .validate()
                .map_err(|why| invalid("verity_root_hash", why))?;
            if let Some(path) = &self.verity_hash_file {
                validate_path("verity_hash_file", path)?;
            }
            if self.is_read_only != Some(true) {
                return Err(invalid(
                    "is_read_only",
                    "a drive with verity_hash_file must be read-only (is_read_only: true)",
                ));
            }
        }
        Ok(())
    }

    /// The drive's verity settings: none, or both fields.
    pub fn verity(&self) -> Result<Option<crate::VerityConfig>, ApiError> {
        match (&self.verity_hash_file, &self.verity_root_hash) {
            (None, None) => Ok(None),
            (Some(hash_file), Some(root_hash)) => Ok(Some(crate::VerityConfig {
                hash_file: hash_file.into(),
                root_hash: root_hash.clone(),
            })),
            (Some(_), None) => Err(invalid(
                "verity_root_hash",
                "verity_hash_file needs verity_root_hash",
            )),
            (None, Some(_)) => Err(invalid(
                "verity_hash_file",
                "verity_root_hash needs verity_hash_file",
            )),
        }
    }
}

impl NetworkInterface {
    /// Checks the id, the tap name, the MAC (unicast), and that no MTU or rate limiter is
    /// asked for.
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_id("iface_id", &self.iface_id)?;
        validate_tap_name("host_dev_name", &self.host_dev_name)?;
        if let Some(mac) = &self.guest_mac {
            if crate::parse_mac(mac).is_none() {
                return Err(invalid(
                    "guest_mac",
                    format!("{mac:?} is not a unicast MAC like 02:00:00:00:00:01"),
                ));
            }
        }
        unsupported_if(self.mtu.is_some(), "advertising an MTU (mtu)")?;
        if let Some(limiter) = &self.rx_rate_limiter {
            limiter.validate_as("rx_rate_limiter")?;
        }
        if let Some(limiter) = &self.tx_rate_limiter {
            limiter.validate_as("tx_rate_limiter")?;
        }
        Ok(())
    }
}

impl Vsock {
    /// Checks the socket path. The CID is any 32-bit number, as Firecracker takes it (the JSON
    /// layer refuses the rest).
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_path("uds_path", &self.uds_path)
    }
}

impl EntropyDevice {
    /// Checks the rate limiter.
    pub fn validate(&self) -> Result<(), ApiError> {
        match &self.rate_limiter {
            Some(limiter) => limiter.validate_as("rate_limiter"),
            None => Ok(()),
        }
    }
}

impl Balloon {
    /// Checks the size and that no hinting or reporting is asked for.
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_mib("amount_mib", self.amount_mib)?;
        unsupported_if(
            self.free_page_hinting == Some(true),
            "free page hinting (free_page_hinting)",
        )?;
        unsupported_if(
            self.free_page_reporting == Some(true),
            "free page reporting (free_page_reporting)",
        )
    }
}

impl BalloonUpdate {
    /// Checks the size.
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_mib("amount_mib", self.amount_mib)
    }
}

impl SnapshotCreateParams {
    /// Checks the paths.
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_path("snapshot_path", &self.snapshot_path)?;
        validate_path("mem_file_path", &self.mem_file_path)?;
        if let Some(key_file) = &self.key_file {
            validate_path("key_file", key_file)?;
        }
        Ok(())
    }
}

impl SnapshotLoadParams {
    /// Checks the body and resolves it: exactly one memory file (`mem_file_path` or a `File`
    /// `mem_backend`), dirty-page tracking from either of its two names, override ids.
    pub fn resolve(self) -> Result<SnapshotLoad, ApiError> {
        validate_path("snapshot_path", &self.snapshot_path)?;
        let mem_file_path = match (self.mem_file_path, self.mem_backend) {
            (Some(path), None) => path,
            (None, Some(backend)) => {
                unsupported_if(
                    backend.backend_type == MemoryBackendType::Uffd,
                    "a userfaultfd memory backend (backend_type: Uffd)",
                )?;
                backend.backend_path
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "mem_backend",
                    "give either mem_file_path or mem_backend, not both",
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "mem_backend",
                    "a memory file is required (mem_backend or mem_file_path)",
                ))
            }
        };
        validate_path("mem_file_path", &mem_file_path)?;
        let network_overrides = self.network_overrides.unwrap_or_default();
        for o in &network_overrides {
            validate_id("iface_id", &o.iface_id)?;
            validate_tap_name("host_dev_name", &o.host_dev_name)?;
        }
        let vsock_override = self.vsock_override.map(|v| v.uds_path);
        if let Some(path) = &vsock_override {
            validate_path("uds_path", path)?;
        }
        if let Some(key_file) = &self.key_file {
            validate_path("key_file", key_file)?;
        }
        Ok(SnapshotLoad {
            key_file: self.key_file,
            snapshot_path: self.snapshot_path,
            mem_file_path,
            track_dirty_pages: self.track_dirty_pages.unwrap_or(false)
                || self.enable_diff_snapshots.unwrap_or(false),
            resume_vm: self.resume_vm.unwrap_or(false),
            network_overrides,
            vsock_override,
            clock_realtime: self.clock_realtime.unwrap_or(false),
        })
    }
}

/// The endpoints, by path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Root,
    Version,
    VmConfig,
    Vm,
    MachineConfig,
    BootSource,
    Drive(&'a str),
    NetworkInterface(&'a str),
    Vsock,
    Entropy,
    Actions,
    SnapshotCreate,
    SnapshotLoad,
    Balloon,
    BalloonStatistics,
    Logger,
    Metrics,
    /// `/mmds` and `/mmds/config`: known, and refused (no metadata service here).
    Mmds,
}

impl Endpoint<'_> {
    /// The methods the endpoint takes.
    fn methods(self) -> &'static [&'static str] {
        match self {
            Endpoint::Root | Endpoint::Version | Endpoint::VmConfig => &["GET"],
            Endpoint::Vm => &["PATCH"],
            Endpoint::MachineConfig | Endpoint::Balloon => &["GET", "PUT", "PATCH"],
            Endpoint::BalloonStatistics => &["GET", "PATCH"],
            Endpoint::Drive(_) | Endpoint::NetworkInterface(_) => &["PUT", "PATCH"],
            Endpoint::Mmds => &["GET", "PUT", "PATCH"],
            Endpoint::BootSource
            | Endpoint::Logger
            | Endpoint::Metrics
            | Endpoint::Vsock
            | Endpoint::Entropy
            | Endpoint::Actions
            | Endpoint::SnapshotCreate
            | Endpoint::SnapshotLoad => &["PUT"],
        }
    }
}

/// The path of a request target: the query and fragment dropped, and an absolute form's
/// scheme and authority (`http://localhost/vm`) too.
fn target_path(target: &str) -> &str {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let target = &target[..end];
    for scheme in ["http://", "https://"] {
        if target.len() >= scheme.len()
            && target.is_char_boundary(scheme.len())
            && target[..scheme.len()].eq_ignore_ascii_case(scheme)
        {
            let rest = &target[scheme.len()..];
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    target
}

fn route(path: &str) -> Option<Endpoint<'_>> {
    let rest = path.strip_prefix('/')?;
    let segments: Vec<&str> = rest.split('/').collect();
    Some(match segments.as_slice() {
        [""] => Endpoint::Root,
        ["version"] => Endpoint::Version,
        ["vm", "config"] => Endpoint::VmConfig,
        ["vm"] => Endpoint::Vm,
        ["machine-config"] => Endpoint::MachineConfig,
        ["boot-source"] => Endpoint::BootSource,
        ["drives", id] => Endpoint::Drive(id),
        ["network-interfaces", id] => Endpoint::NetworkInterface(id),
        ["vsock"] => Endpoint::Vsock,
        ["entropy"] => Endpoint::Entropy,
        ["actions"] => Endpoint::Actions,
        ["snapshot", "create"] => Endpoint::SnapshotCreate,
        ["snapshot", "load"] => Endpoint::SnapshotLoad,
        ["balloon"] => Endpoint::Balloon,
        ["balloon", "statistics"] => Endpoint::BalloonStatistics,
        ["logger"] => Endpoint::Logger,
        ["metrics"] => Endpoint::Metrics,
        ["mmds"] | ["mmds", "config"] => Endpoint::Mmds,
        _ => return None,
    })
}

/// Decodes a JSON body, naming the endpoint in the error.
fn json<T: DeserializeOwned>(endpoint: &str, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| ApiError::InvalidJson {
        endpoint: endpoint.to_string(),
        error,
    })
}

fn check_ids(field: &'static str, path_id: &str, body_id: &str) -> Result<(), ApiError> {
    validate_id(field, path_id)?;
    if path_id != body_id {
        return Err(ApiError::IdMismatch {
            field,
            path_id: path_id.to_string(),
            body_id: body_id.to_string(),
        });
    }
    Ok(())
}

/// Parses one request: `method` and `target` from the request line, `body` the bytes of its
/// body (`None` when the request had no `Content-Length`).
///
/// Unknown paths are [`ApiError::UnknownPath`] (400), known paths with another method
/// [`ApiError::MethodNotAllowed`] (405). GET takes no body; PUT and PATCH need one.
pub(crate) fn parse_request(
    method: &str,
    target: &str,
    body: Option<&[u8]>,
) -> Result<ApiRequest, ApiError> {
    let path = target_path(target);
    let endpoint = route(path).ok_or_else(|| ApiError::UnknownPath(path.to_string()))?;
    let allowed = endpoint.methods();
    if !allowed.contains(&method) {
        return Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_string(),
            allowed: allowed.join(", "),
        });
    }
    let body = if method == "GET" {
        if body.is_some_and(|b| !b.is_empty()) {
            return Err(ApiError::UnexpectedBody {
                method: method.to_string(),
                path: path.to_string(),
            });
        }
        &[][..]
    } else {
        match body {
            None => {
                return Err(ApiError::LengthRequired {
                    method: method.to_string(),
                    path: path.to_string(),
                })
            }
            Some(b) if b.iter().all(u8::is_ascii_whitespace) => {
                return Err(ApiError::EmptyBody {
                    method: method.to_string(),
                    path: path.to_string(),
                })
            }
            Some(b) => b,
        }
    };
    let name = |what: &str| format!("{method} {what}");
    let request = match (endpoint, method) {
        (Endpoint::Mmds, _) => {
            return Err(ApiError::Unsupported(format!(
                "the microVM metadata service ({path})"
            )))
        }
        (Endpoint::BalloonStatistics, "GET") => ApiRequest::GetBalloonStats,
        (Endpoint::BalloonStatistics, _) => {
            ApiRequest::PatchBalloonStats(json(&name("/balloon/statistics"), body)?)
        }
        (Endpoint::Logger, _) => {
            let logger: Logger = json(&name("/logger"), body)?;
            if let Some(path) = &logger.log_path {
                validate_path("log_path", path)?;
            }
            ApiRequest::PutLogger(logger)
        }
        (Endpoint::Metrics, _) => {
            let metrics: Metrics = json(&name("/metrics"), body)?;
            validate_path("metrics_path", &metrics.metrics_path)?;
            ApiRequest::PutMetrics(metrics)
        }
        (Endpoint::Drive(id), "PATCH") => {
            validate_id("drive_id", id)?;
            let drive: PartialDrive = json(&name("/drives"), body)?;
            check_ids("drive_id", id, &drive.drive_id)?;
            if let Some(path) = &drive.path_on_host {
                validate_path("path_on_host", path)?;
            }
            if let Some(limiter) = &drive.rate_limiter {
                limiter.validate_as("rate_limiter")?;
            }
            ApiRequest::PatchDrive(drive)
        }
        (Endpoint::NetworkInterface(id), "PATCH") => {
            validate_id("iface_id", id)?;
            let iface: PartialNetworkInterface = json(&name("/network-interfaces"), body)?;
            check_ids("iface_id", id, &iface.iface_id)?;
            for limiter in [&iface.rx_rate_limiter, &iface.tx_rate_limiter]
                .into_iter()
                .flatten()
            {
                limiter.validate_as("rate_limiter")?;
            }
            ApiRequest::PatchNetworkInterface(iface)
        }
        (Endpoint::Root, _) => ApiRequest::GetInstanceInfo,
        (Endpoint::Version, _) => ApiRequest::GetVersion,
        (Endpoint::VmConfig, _) => ApiRequest::GetVmConfig,
        (Endpoint::MachineConfig, "GET") => ApiRequest::GetMachineConfig,
        (Endpoint::Balloon, "GET") => ApiRequest::GetBalloon,
        (Endpoint::Vm, _) => {
            let update: VmStateUpdate = json(&name("/vm"), body)?;
            ApiRequest::PatchVm(update.state)
        }
        (Endpoint::MachineConfig, "PUT") => {
            let config: MachineConfig = json(&name("/machine-config"), body)?;
            config.validate()?;
            ApiRequest::PutMachineConfig(config)
        }
        (Endpoint::MachineConfig, _) => {
            let update: MachineConfigUpdate = json(&name("/machine-config"), body)?;
            update.validate()?;
            ApiRequest::PatchMachineConfig(update)
        }
        (Endpoint::BootSource, _) => {
            let boot: BootSource = json(&name("/boot-source"), body)?;
            boot.validate()?;
            ApiRequest::PutBootSource(boot)
        }
        (Endpoint::Drive(id), _) => {
            validate_id("drive_id", id)?;
            let drive: Drive = json(&name("/drives"), body)?;
            check_ids("drive_id", id, &drive.drive_id)?;
            drive.validate()?;
            ApiRequest::PutDrive(drive)
        }
        (Endpoint::NetworkInterface(id), _) => {
            validate_id("iface_id", id)?;
            let iface: NetworkInterface = json(&name("/network-interfaces"), body)?;
            check_ids("iface_id", id, &iface.iface_id)?;
            iface.validate()?;
            ApiRequest::PutNetworkInterface(iface)
        }
        (Endpoint::Vsock, _) => {
            let vsock: Vsock = json(&name("/vsock"), body)?;
            vsock.validate()?;
            ApiRequest::PutVsock(vsock)
        }
        (Endpoint::Entropy, _) => {
            let entropy: EntropyDevice = json(&name("/entropy"), body)?;
            entropy.validate()?;
            ApiRequest::PutEntropy(entropy)
        }
        (Endpoint::Actions, _) => {
            let action: InstanceActionInfo = json(&name("/actions"), body)?;
            ApiRequest::Action(action.action_type)
        }
        (Endpoint::SnapshotCreate, _) => {
            let params: SnapshotCreateParams = json(&name("/snapshot/create"), body)?;
            params.validate()?;
            ApiRequest::CreateSnapshot(params)
        }
        (Endpoint::SnapshotLoad, _) => {
            let params: SnapshotLoadParams = json(&name("/snapshot/load"), body)?;
            ApiRequest::LoadSnapshot(params.resolve()?)
        }
        (Endpoint::Balloon, "PUT") => {
            let balloon: Balloon = json(&name("/balloon"), body)?;
            balloon.validate()?;
            ApiRequest::PutBalloon(balloon)
        }
        (Endpoint::Balloon, _) => {
            let update: BalloonUpdate = json(&name("/balloon"), body)?;
            update.validate()?;
            ApiRequest::PatchBalloon(update)
        }
    };
    Ok(request)
}
