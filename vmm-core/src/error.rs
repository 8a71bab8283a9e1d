use std::path::PathBuf;

/// Errors of building or running a VM. Each wraps the failing crate's own error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error("invalid configuration")]
    Config(#[from] vmm_api::ConfigError),
    /// A file named by the configuration cannot be opened.
    #[error("cannot open {what} {path}")]
    OpenFile {
        /// "kernel", "initrd", "serial output file".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Guest memory.
    #[error("guest memory")]
    Memory(#[from] vmm_memory::Error),
    /// KVM, vCPUs, the run loop.
    #[error("vCPU")]
    Vcpu(#[from] vmm_vcpu::Error),
    /// Loading the kernel, initrd, boot structures.
    #[error("cannot load {what} {path}")]
    Load {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: vmm_loader::Error,
    },
    /// Boot structures (command line, zero page, MP table).
    #[error("boot setup")]
    Boot(#[source] vmm_loader::Error),
    /// A `--disk` image.
    #[error("cannot attach disk")]
    Disk {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: vmm_devices::virtio::block::BlockError,
    },
    /// A `--net` tap.
    #[error("cannot attach network device")]
    Net {
        /// The tap name.
        tap: String,
        /// Why.
        #[source]
        source: vmm_devices::virtio::net::TapError,
    },
    /// The `--vsock` socket.
    #[error("cannot set up vsock")]
    Vsock {
        /// The Unix socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: vmm_devices::virtio::vsock::VsockError,
    },
    /// Devices.
    #[error("devices")]
    Devices(#[from] vmm_devices::Error),
    /// An eventfd for an interrupt or notification.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// A saved user-space IOAPIC is refused, or its routes cannot be installed.
    #[error("IOAPIC")]
    IoApic(#[source] vmm_devices::ioapic::IoApicError),
    /// The power button's interrupt could not be raised.
    #[error("cannot raise the power button's interrupt")]
    PowerButton(#[source] std::io::Error),
    /// The guest was booted with `acpi=off`: no power button to press.
    #[error(
        "the guest was booted with acpi=off: it has no ACPI power button (use SendCtrlAltDel)"
    )]
    NoPowerButton,
    /// The event loop.
    #[error("event loop")]
    EventLoop(#[source] std::io::Error),
    /// A thread could not be started.
    #[error("cannot start thread {0}")]
    Thread(&'static str, #[source] std::io::Error),
    /// Every sender of the VM's event channel is gone: the threads that report the VM's end
    /// (vCPUs, event loop, API server) all ended without a word. A bug, never a guest's doing.
    #[error("the VM's event channel closed without an exit reason")]
    EventChannelLost,
    /// The control API socket.
    #[error("cannot serve the control API on {path}")]
    ApiSocket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A diff snapshot of a VM that does not track dirty pages.
    #[error(
        "a Diff snapshot needs dirty page tracking: start the VM with --track-dirty-pages \
         (machine-config track_dirty_pages, or track_dirty_pages on snapshot load)"
    )]
    DirtyTrackingOff,
    /// Writing or mapping guest memory for a snapshot.
    #[error("snapshot memory")]
    MemorySnapshot(#[source] vmm_memory::snapshot::MemorySnapshotError),
    /// The key of a sealed snapshot cannot be used (or no snapshot id could be drawn).
    #[error("sealed snapshot")]
    Seal(#[source] vmm_memory::seal::SealError),
    /// A sealed diff snapshot was asked for.
    #[error(
        "a Diff snapshot cannot be sealed: sealed snapshots (key_file) are Full snapshots only"
    )]
    SealedDiff,
    /// The snapshot state file.
    #[error("snapshot state")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// Sealing a disk for a VM snapshot failed.
    #[error("cannot seal {name} for the snapshot")]
    DiskSeal {
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: vmm_disk::DiskIoError,
    },
    /// Making a writable clone of a snapshot's sealed disk failed.
    #[error("cannot clone the snapshot's disk {id} (sealed in {}) to {}", layer.display(), clone.display())]
    DiskClone {
        /// The device id ("blk0").
        id: String,
        /// The sealed layer.
        layer: PathBuf,
        /// Where the clone was to go.
        clone: PathBuf,
        /// Why.
        #[source]
        source: Box<vmm_disk::DiskError>,
    },
    /// A snapshot that does not fit the VM rebuilt from its own configuration.
    #[error("snapshot does not match its configuration: {0}")]
    SnapshotMismatch(String),
    /// Restoring a device.
    #[error("cannot restore {name}")]
    DeviceRestore {
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: vmm_devices::virtio::VirtioError,
    },
    /// A pause did not stop every vCPU in time.
    #[error("vCPU {vcpu} did not stop within {waited:?}; the VM keeps running")]
    PauseTimeout {
        /// The first vCPU that did not stop.
        vcpu: u8,
        /// How long the pause waited.
        waited: std::time::Duration,
    },
    /// An operation that needs a paused VM.
    #[error("the VM is running: pause it first")]
    NotPaused,
    /// A vCPU thread ended while the VM was paused.
    #[error("vCPU {0} thread is gone")]
    VcpuGone(u8),
    /// A vCPU thread panicked (a bug; reported, not propagated).
    #[error("vCPU {0} thread panicked")]
    VcpuPanicked(u8),
    /// A balloon operation on a VM without a balloon device.
    #[error("no balloon device is configured")]
    NoBalloon,
    /// Balloon statistics asked for, and no statistics interval configured (they cannot be
    /// switched on or off after boot).
    #[error("balloon statistics are not enabled (set stats_polling_interval_s before boot)")]
    BalloonStatsOff,
    /// Telling the balloon device its new target.
    #[error("balloon device")]
    Balloon(#[source] vmm_devices::virtio::VirtioError),
    /// A PATCH names a drive or network interface the VM does not have.
    #[error("no {kind} with id {id:?} is configured")]
    UnknownDevice {
        /// "drive" or "network interface".
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// Telling the guest that a drive's image changed (its config-change interrupt).
    #[error("cannot signal the drive's new size to the guest")]
    DriveSwap(#[source] vmm_devices::virtio::VirtioError),
    /// A device's rate limiter could not be created or changed.
    #[error("rate limiter")]
    RateLimiter(#[source] vmm_devices::rate_limiter::Error),
    /// A request whose settings the configuration refuses (e.g. a balloon larger than RAM).
    #[error(transparent)]
    Request(vmm_api::ApiError),
}

/// `error` and all its causes on one line, joined by ": ". Where one of them is a vCPU's
/// emulation failure on a PVM host, the line ends with what to do about it.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut pvm = crate::pvm::is_pvm_failure(error);
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        pvm |= crate::pvm::is_pvm_failure(cause);
        source = cause.source();
    }
    if pvm {
        line.push_str("; ");
        line.push_str(crate::pvm::PVM_ADVICE);
    }
    // A message may quote hostile input as it came (serde_json names an unknown key verbatim):
    // escaped, a line break in it cannot split the line.
    if line.contains(['\n', '\r']) {
        line = line.replace('\n', "\\n").replace('\r', "\\r");
    }
    line
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::chain;

    #[test]
    fn a_line_break_quoted_from_input_stays_on_one_line() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Config {
            vcpus: u8,
        }
        let error = serde_json::from_str::<Config>("{\"a\\nb\\rc\": 1}").unwrap_err();
        assert!(error.to_string().contains('\n'), "{error}");
        let line = chain(&error);
        assert!(!line.contains(['\n', '\r']), "{line}");
        assert!(line.contains("a\\nb\\rc"), "{line}");
    }
}
