use std::io;

/// What the error of an emulation failure on a PVM host adds: a fact about the host, for any
/// VMM built on this crate.
const PVM_NOTE: &str = "; this host's /dev/kvm is PVM (kvm_pvm, no VT-x/AMD-V), whose instruction \
emulator cannot run an unmodified guest kernel";

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
    /// More MSI routes than a routing table holds.
    #[error("{0} MSI routes are more than a KVM routing table holds")]
    TooManyRoutes(usize),
    /// Guest memory access failed while setting up boot structures.
    #[error("cannot write boot structure {what} into guest memory")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
    },
    /// Registering the kick signal handler failed (the first attempt in this process; every
    /// later [`crate::Vcpu::run`] reports the same error, as the handler is still missing).
    #[error("cannot register the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The guest layout given to [`crate::Vm::new`] cannot work.
    #[error("invalid guest layout: {0}")]
    InvalidLayout(String),
    /// KVM_EXIT_INTERNAL_ERROR.
    #[error(
        "vCPU {vcpu}: KVM internal error (suberror {suberror}{what}) at guest RIP {rip:#x}{}",
        if *.pvm { PVM_NOTE } else { "" }
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
        /// An emulation failure on a PVM host ([`crate::is_pvm_host`]), which cannot run an
        /// unmodified kernel: the message says so.
        pvm: bool,
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
    /// A vCPU ioctl failed.
    #[error("vCPU {vcpu}: KVM {what} failed")]
    VcpuIoctl {
        /// vCPU index.
        vcpu: u8,
        /// Which ioctl.
        what: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A saved vCPU state belongs to another vCPU.
    #[error("vCPU {vcpu}: the saved state is for vCPU {state}")]
    VcpuIndexMismatch {
        /// The vCPU restored into.
        vcpu: u8,
        /// The index in the state.
        state: u8,
    },
    /// A saved CPUID comes from a CPU of another vendor than this host's.
    #[error("vCPU {vcpu}: the saved CPUID vendor is {state:?}, this host's is {host:?}")]
    CpuidVendorMismatch {
        /// The vCPU restored into.
        vcpu: u8,
        /// Vendor string of the saved CPUID leaf 0.
        state: String,
        /// Vendor string of the host's supported CPUID.
        host: String,
    },
    /// A saved XSAVE area does not fit this host's KVM.
    #[error("vCPU {vcpu}: the saved XSAVE area has {state_bytes} bytes; this host's KVM takes 4096 to {host_bytes}")]
    XsaveSize {
        /// The vCPU restored into.
        vcpu: u8,
        /// Size of the saved area.
        state_bytes: usize,
        /// KVM_CAP_XSAVE2's size here (0: no XSAVE at all).
        host_bytes: usize,
    },
    /// A saved state has an in-kernel irqchip (PICs, IOAPIC, PIT) where the VM has none, or
    /// the other way round; or LAPICs where the VM has none (or none where it has them).
    #[error("the saved state {} an in-kernel irqchip but this VM {}", if *.state { "has" } else { "lacks" }, if *.vm { "has one" } else { "has none" })]
    IrqchipMismatch {
        /// Whether the state has one.
        state: bool,
        /// Whether the VM has one.
        vm: bool,
    },
    /// A part of a saved state is malformed.
    #[error("invalid saved state: {what}: {detail}")]
    InvalidState {
        /// Which part.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// KVM refused to restore a saved MSR.
    #[error("vCPU {vcpu}: KVM refused to restore MSR {index:#x} = {data:#x}")]
    MsrRestoreRefused {
        /// vCPU index.
        vcpu: u8,
        /// The MSR.
        index: u32,
        /// The saved value.
        data: u64,
    },
    /// The dirty log was read before [`crate::Vm::enable_dirty_log`].
    #[error("the dirty log of guest memory is not enabled (call Vm::enable_dirty_log first)")]
    DirtyLogNotEnabled,
    /// KVM_GET_DIRTY_LOG failed for a memory slot.
    #[error("KVM_GET_DIRTY_LOG of memory slot {slot} failed")]
    DirtyLog {
        /// The slot.
        slot: u32,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn internal(pvm: bool) -> String {
        Error::InternalError {
            vcpu: 2,
            suberror: kvm_bindings::KVM_INTERNAL_ERROR_EMULATION,
            what: ", emulation failure",
            rip: 0x1000,
            pvm,
        }
        .to_string()
    }

    #[test]
    fn an_emulation_failure_on_pvm_says_so_without_pointing_anywhere() {
        let plain = internal(false);
        assert_eq!(
            plain,
            "vCPU 2: KVM internal error (suberror 1, emulation failure) at guest RIP 0x1000"
        );
        let pvm = internal(true);
        assert_eq!(pvm, format!("{plain}{PVM_NOTE}"));
        assert!(pvm.contains("PVM") && pvm.contains("unmodified"), "{pvm}");
        assert!(!pvm.contains("../"), "{pvm}");
        assert!(!pvm.contains("testhost"), "{pvm}");
    }
}
