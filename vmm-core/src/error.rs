use std::path::PathBuf;

/// Errors of building or running a VM. Each wraps the failing crate's own error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error("invalid configuration")]
    Config(#[from] crate::config::ConfigError),
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
        source: vmm_devices::virtio::tap::TapError,
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
    /// The event loop.
    #[error("event loop")]
    EventLoop(#[source] std::io::Error),
    /// A thread could not be started.
    #[error("cannot start thread {0}")]
    Thread(&'static str, #[source] std::io::Error),
    /// A vCPU thread panicked (a bug; reported, not propagated).
    #[error("vCPU {0} thread panicked")]
    VcpuPanicked(u8),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;
