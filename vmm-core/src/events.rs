//! What the main thread hears: the VM's events (vCPU exits, a guest reset, a failed event loop,
//! API requests) on one channel, how a VM ended, and the termination signals.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_vcpu::VcpuExitReason;

/// How a VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// The guest asked the i8042 for a reset (Linux `reboot=k`).
    GuestReset,
    /// The guest triple-faulted (Linux's last resort for reboot).
    TripleFault,
    /// KVM reported a guest shutdown system event.
    GuestShutdown,
    /// KVM reported a guest reset system event.
    GuestSystemReset,
    /// KVM reported a guest crash.
    GuestCrash,
    /// A vCPU halted with no irqchip to wake it (only VMs built without the irqchip).
    Halted,
    /// The VMM got a termination signal.
    Signal(i32),
}

impl ShutdownReason {
    /// The process exit code: 0 when the guest ended itself, non-zero otherwise.
    pub fn exit_code(self) -> i32 {
        match self {
            ShutdownReason::GuestReset
            | ShutdownReason::TripleFault
            | ShutdownReason::GuestShutdown
            | ShutdownReason::GuestSystemReset
            | ShutdownReason::Halted => 0,
            ShutdownReason::GuestCrash => 3,
            ShutdownReason::Signal(sig) => 128 + sig,
        }
    }

    pub(crate) fn from_vcpu(reason: VcpuExitReason) -> Option<ShutdownReason> {
        Some(match reason {
            VcpuExitReason::TripleFault => ShutdownReason::TripleFault,
            VcpuExitReason::SystemReset => ShutdownReason::GuestSystemReset,
            VcpuExitReason::SystemShutdown => ShutdownReason::GuestShutdown,
            VcpuExitReason::SystemCrash => ShutdownReason::GuestCrash,
            VcpuExitReason::Halted => ShutdownReason::Halted,
            VcpuExitReason::Stopped => return None,
        })
    }
}

impl std::fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShutdownReason::GuestReset => f.write_str("guest reset (i8042)"),
            ShutdownReason::TripleFault => f.write_str("guest reset (triple fault)"),
            ShutdownReason::GuestShutdown => f.write_str("guest shutdown"),
            ShutdownReason::GuestSystemReset => f.write_str("guest reset (system event)"),
            ShutdownReason::GuestCrash => f.write_str("guest crashed"),
            ShutdownReason::Halted => f.write_str("guest halted"),
            ShutdownReason::Signal(sig) => write!(f, "signal {sig}"),
        }
    }
}

/// What the main thread hears from the vCPU threads, the event loop and the API server.
pub(crate) enum VmEvent {
    Vcpu(vmm_vcpu::Result<VcpuExitReason>),
    VcpuPanicked(u8),
    GuestReset,
    EventLoopFailed(io::Error),
    /// A control API request and where its answer goes.
    Api(
        Box<vmm_api::ApiRequest>,
        std::sync::mpsc::Sender<vmm_api::ApiResponse>,
    ),
}

/// The last termination signal (SIGTERM, SIGINT, SIGHUP) received, 0 when none.
pub(crate) static TERMINATION_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_termination_signal(
    num: libc::c_int,
    _: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
    TERMINATION_SIGNAL.store(num, Ordering::SeqCst);
}

/// Makes SIGTERM, SIGINT and SIGHUP end the VM cleanly (the control loop reads
/// [`TERMINATION_SIGNAL`]) instead of killing the process.
pub(crate) fn install_termination_handlers() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // A failure leaves the default action (exit), which is still an exit.
        let _ = vmm_sys_util::signal::register_signal_handler(signal, on_termination_signal);
    }
}
