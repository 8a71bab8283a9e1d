use std::io;

/// Errors of VM and vCPU setup and of the run loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm is not there.
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel or kvm_amd, or run on a machine with hardware virtualization)")]
    NoKvmDevice,
    /// /dev/kvm exists but this user may not open it.
    #[error("no permission to open /dev/kvm (run as root or add the user to the kvm group)")]
    KvmPermission,
    /// Opening /dev/kvm failed otherwise.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] io::Error),
    /// The KVM API version is not the stable one (12).
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    /// A KVM capability we need is missing.
    #[error("KVM lacks the capability {0}")]
    MissingCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM refused to set a boot MSR.
    #[error("vCPU {vcpu}: KVM refused to set MSR {index:#x}")]
    MsrRefused {
        /// vCPU index.
        vcpu: u8,
        /// The MSR.
        index: u32,
    },
    /// Too many or zero vCPUs.
    #[error("{requested} vCPUs requested: this host's KVM allows 1 to {max}")]
    VcpuCount {
        /// Requested count.
        requested: u64,
        /// KVM's (and our MP table's) limit.
        max: u64,
    },
    /// Guest memory has more regions than KVM has slots.
    #[error("guest memory needs {0} memory slots, more than KVM offers")]
    TooManyMemorySlots(usize),
    /// Guest memory access failed while setting up boot structures.
    #[error("cannot write boot structure {what} into guest memory")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
    },
    /// Registering the kick signal handler failed.
    #[error("cannot register the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// KVM_EXIT_INTERNAL_ERROR.
    #[error(
        "vCPU {vcpu}: KVM internal error (suberror {suberror}{what}) at guest RIP {rip:#x}{pvm}"
    )]
    InternalError {
        /// vCPU index.
        vcpu: u8,
        /// kvm_run.internal.suberror.
        suberror: u32,
        /// A name for the suberror.
        what: &'static str,
        /// Guest instruction pointer.
        rip: u64,
        /// An explanation when the host is PVM.
        pvm: String,
    },
    /// KVM_EXIT_FAIL_ENTRY.
    #[error("vCPU {vcpu}: VM entry failed (hardware reason {reason:#x} on host CPU {cpu}) at guest RIP {rip:#x}")]
    FailEntry {
        /// vCPU index.
        vcpu: u8,
        /// hardware_entry_failure_reason.
        reason: u64,
        /// Host CPU.
        cpu: u32,
        /// Guest instruction pointer.
        rip: u64,
    },
    /// An exit reason the VMM does not handle.
    #[error("vCPU {vcpu}: unhandled KVM exit {name} at guest RIP {rip:#x}")]
    UnhandledExit {
        /// vCPU index.
        vcpu: u8,
        /// The exit's name.
        name: String,
        /// Guest instruction pointer.
        rip: u64,
    },
    /// KVM_RUN returned an error.
    #[error("vCPU {vcpu}: KVM_RUN failed")]
    Run {
        /// vCPU index.
        vcpu: u8,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}
