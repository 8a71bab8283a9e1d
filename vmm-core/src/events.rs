//! What the main thread hears: the VM's events (vCPU exits, a guest reset, a failed event loop,
//! API requests) on one channel, how a VM ended, and the termination signals.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::OnceLock;

use vmm_sys_util::eventfd::EventFd;

use crate::stoppable::{wait_readable, StoppableThread};

use vmm_vcpu::VcpuExitReason;

/// How a VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// The guest asked the i8042 (Linux `reboot=k`) or the ACPI reset register for a reset.
    GuestReset,
    /// The guest powered off through ACPI (S5 in the sleep control register).
    GuestPowerOff,
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
    /// The user quit on the interactive console (Ctrl-A x).
    ConsoleQuit,
}

/// The exit code of a VM ended from the console with Ctrl-A x.
pub const CONSOLE_QUIT_EXIT_CODE: i32 = 5;

impl ShutdownReason {
    /// The process exit code: 0 when the guest ended itself, non-zero otherwise.
    pub fn exit_code(self) -> i32 {
        match self {
            ShutdownReason::GuestReset
            | ShutdownReason::TripleFault
            | ShutdownReason::GuestPowerOff
            | ShutdownReason::GuestShutdown
            | ShutdownReason::GuestSystemReset
            | ShutdownReason::Halted => 0,
            ShutdownReason::GuestCrash => 3,
            ShutdownReason::ConsoleQuit => CONSOLE_QUIT_EXIT_CODE,
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
            ShutdownReason::GuestReset => f.write_str("guest reset (i8042 or ACPI)"),
            ShutdownReason::GuestPowerOff => f.write_str("guest powered off (ACPI S5)"),
            ShutdownReason::ConsoleQuit => f.write_str("quit from the console (Ctrl-A x)"),
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
    /// The guest entered ACPI S5.
    GuestPowerOff,
    /// Ctrl-A x on the interactive console.
    ConsoleQuit,
    EventLoopFailed(io::Error),
    /// The VMM got a termination signal.
    Signal(i32),
    /// A control API request and where its answer goes.
    Api(
        Box<vmm_api::ApiRequest>,
        std::sync::mpsc::Sender<vmm_api::ApiResponse>,
    ),
}

/// The last termination signal (SIGTERM, SIGINT, SIGHUP) received, 0 when none.
static TERMINATION_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The eventfd the signal handler writes to wake a [`SignalForwarder`], -1 before one exists.
static SIGNAL_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
/// That eventfd, made once per process.
static SIGNAL_EVENT: OnceLock<EventFd> = OnceLock::new();

extern "C" fn on_termination_signal(
    num: libc::c_int,
    _: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
    TERMINATION_SIGNAL.store(num, Ordering::SeqCst);
    // Async-signal-safe: a static (no lazy initialisation) and an atomic add.
    let signals = &crate::metrics::metrics().signals;
    match num {
        libc::SIGTERM => signals.sigterm.inc(),
        libc::SIGINT => signals.sigint.inc(),
        libc::SIGHUP => signals.sighup.inc(),
        _ => {}
    }
    let fd = SIGNAL_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; it reads 8 bytes from a live local into an
        // eventfd this process keeps open for its whole life.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Makes SIGTERM, SIGINT and SIGHUP end the VM cleanly (a [`SignalForwarder`] turns them into
/// [`VmEvent::Signal`]) instead of killing the process.
pub(crate) fn install_termination_handlers() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // A failure leaves the default action (exit), which is still an exit.
        let _ = vmm_sys_util::signal::register_signal_handler(signal, on_termination_signal);
    }
}

/// A thread that sleeps until a termination signal arrives and sends it to the control loop
/// as [`VmEvent::Signal`], so that the loop blocks on its channel alone and never wakes up on
/// a timer to look for signals. Dropping it stops the thread. One at a time per process: a
/// signal goes to whichever forwarder reads it first.
pub(crate) struct SignalForwarder {
    _thread: StoppableThread,
}

impl SignalForwarder {
    /// Installs the handlers and starts forwarding to `events`.
    pub(crate) fn start(events: Sender<VmEvent>) -> io::Result<SignalForwarder> {
        let signal_event = match SIGNAL_EVENT.get() {
            Some(event) => event,
            None => {
                let event = EventFd::new(libc::EFD_NONBLOCK)?;
                let event = SIGNAL_EVENT.get_or_init(|| event);
                SIGNAL_EVENT_FD.store(event.as_raw_fd(), Ordering::SeqCst);
                event
            }
        };
        install_termination_handlers();
        let thread = StoppableThread::spawn(crate::thread_names::SIGNALS, move |stop| loop {
            // A signal that came before this thread polled is in the flag already.
            let signal = TERMINATION_SIGNAL.swap(0, Ordering::SeqCst);
            if signal != 0 && events.send(VmEvent::Signal(signal)).is_err() {
                return;
            }
            let ready = wait_readable(&[signal_event.as_raw_fd(), stop.as_raw_fd()], None);
            if ready[1] {
                return;
            }
            if ready[0] {
                let _ = signal_event.read();
            }
        })?;
        Ok(SignalForwarder { _thread: thread })
    }
}
