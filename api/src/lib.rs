//! What crosses the boundary of a `vmm` process: the VM's configuration ([`VmConfig`] and its
//! device settings, the same struct for command-line flags, JSON config files and the control
//! API), the Firecracker-style control API's request and response types with their HTTP/1.1
//! parsing, and a client for that API on a Unix socket ([`ApiClient`]).
//!
//! Nothing here knows KVM: a program that only drives `vmm` processes (the fleet manager,
//! an orchestrator, a test) depends on this crate alone.
//!
//! The request layer only turns bytes into typed requests and responses into bytes; it owns no
//! socket and performs no VM action. A server:
//!
//! 1. keeps one [`RequestReader`] per connection and [`RequestReader::push`]es every chunk it
//!    reads; a complete request comes back as an [`ApiRequest`], a bad one as a ready 4xx
//!    [`ApiResponse`]; after either it drains pipelined requests with `push(&[])` until
//!    `Ok(None)` before it reads again;
//! 2. acts on the request: configuration requests go through [`ApiConfig::apply`] (or the
//!    `apply_*` functions on a [`VmConfig`]), the others (actions, pause and
//!    resume, snapshots, instance info) are the VM side's;
//! 3. writes [`ApiResponse::to_http`] and closes the connection when
//!    [`RequestReader::should_close`] says so.
//!
//! Limits: a request head (request line and headers) of at most [`MAX_HEAD_BYTES`], a body of
//! at most [`MAX_BODY_BYTES`], framed by `Content-Length` only (chunked bodies are refused).
//! Nothing in this crate panics on any input.
//!
//! ```
//! use vmm_api::{ApiRequest, RequestReader};
//!
//! let mut reader = RequestReader::new();
//! let raw = b"PATCH /vm HTTP/1.1\r\nContent-Length: 19\r\n\r\n{\"state\": \"Paused\"}";
//! match reader.push(raw) {
//!     Ok(Some(ApiRequest::PatchVm(update))) => println!("pause or resume: {update:?}"),
//!     other => panic!("{other:?}"),
//! }
//! ```

mod apply;
pub mod client;
pub mod config_file;
pub mod device_config;
mod http;
mod memory_size;
mod parse;
pub mod rate_limiter;
mod types;
pub mod vm_config;

#[cfg(test)]
mod tests;

pub use apply::{
    apply_balloon, apply_balloon_update, apply_boot_source, apply_drive, apply_entropy,
    apply_machine_config, apply_machine_config_update, apply_vsock, vm_config_to_firecracker,
    ApiConfig, MAX_DRIVE_ID_BYTES,
};
pub use client::{ApiClient, ClientError, ClientResponse};
pub use config_file::{ConfigFileError, FirecrackerConfigFile};
pub use device_config::{
    parse_mac, BalloonConfig, DeviceConfigError, DiskConfig, DiskFormat, NetConfig, VerityConfig,
    VsockConfig,
};
pub use http::{ApiResponse, RequestReader, CONTINUE_RESPONSE, MAX_BODY_BYTES, MAX_HEAD_BYTES};
pub use parse::{validate_id, MAX_ID_BYTES};
pub use rate_limiter::{RateLimiterConfig, TokenBucketConfig, MAX_REFILL_TIME_MS};
pub use types::{
    ActionType, ApiRequest, Balloon, BalloonStats, BalloonStatsUpdate, BalloonUpdate, BootSource,
    CacheType, Drive, EntropyDevice, Fault, Flavor, FullVmConfig, HugePages, InstanceActionInfo,
    InstanceInfo, InstanceState, IoEngine, LogLevel, Logger, MachineConfig, MachineConfigUpdate,
    MemoryBackend, MemoryBackendType, Metrics, NetworkInterface, NetworkOverride, PartialDrive,
    PartialNetworkInterface, SnapshotCreateParams, SnapshotLoad, SnapshotLoadParams, SnapshotType,
    VersionInfo, VmState, VmStateUpdate, Vsock, VsockOverride, FIRECRACKER_VERSION,
};
pub use vm_config::{
    ConfigError, ElfEntry, Irqchip, MemorySize, MemorySizeError, SerialMode, VmConfig,
    DEFAULT_CMDLINE, DEFAULT_INSTANCE_ID, MAX_INSTANCE_ID_BYTES,
};

/// Why a request was refused. Every variant is a client error: [`ApiError::status`] is a 4xx
/// code, and the `Display` text becomes the response's `fault_message`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request line and headers exceed [`MAX_HEAD_BYTES`] (or the header count limit).
    #[error("request head is larger than {max} bytes or has more than {max_headers} headers")]
    HeadTooLarge {
        /// The byte limit.
        max: usize,
        /// The header count limit.
        max_headers: usize,
    },
    /// The request head is not valid HTTP/1.x.
    #[error("malformed HTTP request: {0}")]
    MalformedHead(String),
    /// A body larger than [`MAX_BODY_BYTES`].
    #[error("request body of {len} bytes is larger than the {max} bytes allowed")]
    BodyTooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A `Transfer-Encoding` header (chunked or any other coding).
    #[error("Transfer-Encoding {0:?} is not supported: send the body with a Content-Length")]
    TransferEncoding(String),
    /// A `Content-Length` that is not one decimal number (or two that disagree).
    #[error("invalid Content-Length {0:?}")]
    BadContentLength(String),
    /// A PUT or PATCH without `Content-Length`.
    #[error("{method} {path} needs a JSON body with a Content-Length header")]
    LengthRequired {
        /// The method.
        method: String,
        /// The path.
        path: String,
    },
    /// An `Expect` header other than `100-continue`.
    #[error("unsupported Expect {0:?}: only 100-continue is supported")]
    Expectation(String),
    /// No endpoint at this path.
    #[error("invalid request path {0:?}: no such endpoint")]
    UnknownPath(String),
    /// The endpoint exists but not with this method.
    #[error("method {method} is not allowed on {path} (allowed: {allowed})")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
        /// The methods the path accepts, comma separated.
        allowed: String,
    },
    /// A GET with a body.
    #[error("{method} {path} takes no body")]
    UnexpectedBody {
        /// The method.
        method: String,
        /// The path.
        path: String,
    },
    /// A PUT or PATCH with an empty body.
    #[error("{method} {path} needs a JSON body")]
    EmptyBody {
        /// The method.
        method: String,
        /// The path.
        path: String,
    },
    /// The body is not the JSON this endpoint takes (syntax, types, missing or unknown fields).
    #[error("invalid body for {endpoint}: {error}")]
    InvalidJson {
        /// The endpoint, e.g. `PUT /drives`.
        endpoint: String,
        /// serde_json's explanation.
        error: serde_json::Error,
    },
    /// A resource id that is empty, too long or has characters outside `[A-Za-z0-9_-]`.
    #[error("invalid {field} {id:?}: {why}")]
    InvalidId {
        /// Which id (`drive_id`...).
        field: &'static str,
        /// What was given.
        id: String,
        /// What is wrong with it.
        why: String,
    },
    /// The id in the path differs from the id in the body.
    #[error(
        "the {field} in the path ({path_id:?}) differs from the one in the body ({body_id:?})"
    )]
    IdMismatch {
        /// Which id.
        field: &'static str,
        /// The id in the path.
        path_id: String,
        /// The id in the body.
        body_id: String,
    },
    /// A field with a value this VMM cannot use.
    #[error("invalid {field}: {why}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// Why.
        why: String,
    },
    /// A Firecracker feature this VMM does not have.
    #[error("{0} is not supported by this VMM")]
    Unsupported(String),
    /// A second root drive.
    #[error("drive {existing:?} is already the root device; only one drive can be root")]
    RootDriveExists {
        /// The current root drive.
        existing: String,
    },
    /// A host tap device or guest MAC that another network interface already uses.
    #[error("{what} {value:?} is already used by network interface {other:?}")]
    NetworkConflict {
        /// `host_dev_name` or `guest_mac`.
        what: &'static str,
        /// The value.
        value: String,
        /// The interface that has it.
        other: String,
    },
    /// PATCH /balloon before PUT /balloon.
    #[error("no balloon device is configured: PUT /balloon first")]
    BalloonNotConfigured,
}

impl ApiError {
    /// The HTTP status code of the response for this error (always 4xx).
    pub fn status(&self) -> u16 {
        match self {
            ApiError::HeadTooLarge { .. } => 431,
            ApiError::BodyTooLarge { .. } => 413,
            ApiError::TransferEncoding(_) | ApiError::LengthRequired { .. } => 411,
            ApiError::Expectation(_) => 417,
            ApiError::MethodNotAllowed { .. } => 405,
            _ => 400,
        }
    }

    /// Whether the connection cannot go on after this error: the request's framing is lost
    /// (the end of its body is unknown) or the client asked for something it would then wait on.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ApiError::HeadTooLarge { .. }
                | ApiError::MalformedHead(_)
                | ApiError::BodyTooLarge { .. }
                | ApiError::TransferEncoding(_)
                | ApiError::BadContentLength(_)
                | ApiError::LengthRequired { .. }
                | ApiError::Expectation(_)
        )
    }
}

impl From<ApiError> for ApiResponse {
    fn from(error: ApiError) -> ApiResponse {
        ApiResponse::fault(error.status(), &error.to_string())
    }
}
