//! A vCPU: its creation ([`Vm::create_vcpu`]), configuration for boot and the run loop, with
//! a kick (signal + immediate_exit) that gets a vCPU out of KVM_RUN from another thread.

use std::cell::Cell;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use kvm_bindings::{
    kvm_run, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemory;
use vmm_sys_util::errno;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::boot::BootEntry;
use crate::caps::StateCaps;
use crate::cpuid;
use crate::error::{kvm_err, Error, Result};
use crate::regs;
use crate::vm::{is_pvm_host, CoalescedMmio, Vm};

/// Receives the exits that the VMM's devices must answer. `vmm-core` implements it with its
/// port and MMIO buses; the run loop never knows which device it talks to.
pub trait ExitHandler: Send + Sync {
    /// A guest IN: fill `data` (1, 2 or 4 bytes).
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// A guest OUT.
    fn pio_write(&self, port: u16, data: &[u8]);
    /// A guest read of unbacked memory: fill `data`.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// A guest write to unbacked memory.
    fn mmio_write(&self, addr: u64, data: &[u8]);
    /// A guest write that KVM buffered in the VM's coalesced MMIO ring instead of exiting
    /// ([`crate::Vm::coalesce_mmio_writes`]), delivered in order before this vCPU's next MMIO
    /// exit (or its stop). Not an exit: the default hands it to [`ExitHandler::mmio_write`];
    /// a handler that counts exits overrides it.
    fn coalesced_mmio_write(&self, addr: u64, data: &[u8]) {
        self.mmio_write(addr, data);
    }
    /// A guest EOI of a level-triggered vector that the split irqchip's user-space IOAPIC
    /// routes (KVM_EXIT_IOAPIC_EOI; only with [`crate::Irqchip::Split`]). Does nothing unless
    /// overridden.
    fn ioapic_eoi(&self, _vector: u8) {}
    /// Any other exit from KVM_RUN, named: for statistics only (the run loop handles it).
    /// Does nothing unless overridden.
    fn other_exit(&self, _kind: OtherExit) {}
}

/// The exits of KVM_RUN that are not port or MMIO accesses, as [`ExitHandler::other_exit`]
/// sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OtherExit {
    /// KVM_EXIT_HLT (only without an in-kernel irqchip).
    Hlt,
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    Shutdown,
    /// KVM_EXIT_SYSTEM_EVENT.
    SystemEvent,
    /// KVM_EXIT_IOAPIC_EOI (only with a split irqchip).
    IoapicEoi,
    /// KVM_EXIT_INTR or EINTR: a signal (a kick) took the vCPU out of the guest.
    Interrupted,
    /// Anything else: an entry failure, an internal error, an exit this loop does not handle.
    Other,
}

impl OtherExit {
    /// Every kind, in a fixed order (the index of each is its position).
    pub const ALL: [OtherExit; 6] = [
        OtherExit::Hlt,
        OtherExit::Shutdown,
        OtherExit::SystemEvent,
        OtherExit::IoapicEoi,
        OtherExit::Interrupted,
        OtherExit::Other,
    ];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            OtherExit::Hlt => "hlt",
            OtherExit::Shutdown => "shutdown",
            OtherExit::SystemEvent => "system-event",
            OtherExit::IoapicEoi => "ioapic-eoi",
            OtherExit::Interrupted => "interrupted",
            OtherExit::Other => "other",
        }
    }
}

/// Why a vCPU's run loop ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuExitReason {
    /// KVM_EXIT_SHUTDOWN: a triple fault, which x86 guests use to reset.
    TripleFault,
    /// KVM_SYSTEM_EVENT_RESET (e.g. a PSCI or ACPI reset).
    SystemReset,
    /// KVM_SYSTEM_EVENT_SHUTDOWN.
    SystemShutdown,
    /// KVM_SYSTEM_EVENT_CRASH.
    SystemCrash,
    /// KVM_EXIT_HLT (only without the in-kernel irqchip, which otherwise handles HLT).
    Halted,
    /// Another thread asked this vCPU to stop (see [`VcpuKicker`]).
    Stopped,
}

thread_local! {
    /// The kvm_run page of the vCPU running on this thread, for the kick signal handler.
    static KVM_RUN_PAGE: Cell<*mut kvm_run> = const { Cell::new(null_mut()) };
}

extern "C" fn kick_signal_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only a thread-local read and one byte store: async-signal-safe.
    let page = KVM_RUN_PAGE.with(|p| p.get());
    if !page.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set by `Vcpu::run` while it
        // runs and cleared before the mapping can go away; immediate_exit is a plain byte that
        // KVM reads on entry, so a volatile store is what it needs.
        unsafe { std::ptr::addr_of_mut!((*page).immediate_exit).write_volatile(1) };
    }
}

/// The signal that kicks vCPU threads.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Registers the kick signal's handler, once per process. The outcome of that one attempt is
/// kept: when it failed, every later call reports the same error, as the handler is still
/// missing and a kick would kill the process with the signal's default action.
fn install_kick_handler() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), errno::Error>> = OnceLock::new();
    install_once(&INSTALLED, || {
        register_signal_handler(kick_signal(), kick_signal_handler)
            .inspect_err(|e| log::error!("cannot register the vCPU kick signal handler: {e}"))
    })
}

/// Runs `register` the first time for `outcome` and keeps its result; reports that result every
/// time.
fn install_once(
    outcome: &OnceLock<std::result::Result<(), errno::Error>>,
    register: impl FnOnce() -> std::result::Result<(), errno::Error>,
) -> Result<()> {
    (*outcome.get_or_init(register)).map_err(Error::Signal)
}

/// Stops one vCPU thread from another: sets its stop flag, then signals the thread so that it
/// leaves KVM_RUN (or does not enter it: the handler sets immediate_exit).
#[derive(Clone, Debug)]
pub struct VcpuKicker {
    stop: Arc<AtomicBool>,
    thread: Arc<std::sync::Mutex<Option<libc::pthread_t>>>,
}

impl VcpuKicker {
    fn new(stop: Arc<AtomicBool>) -> Self {
        VcpuKicker {
            stop,
            thread: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Asks the vCPU to stop and kicks it out of KVM_RUN.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let thread = *self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(thread) = thread {
            // SAFETY: `thread` is the pthread id of a vCPU thread recorded while it runs its loop
            // and cleared before that loop returns; the signal's handler is installed before
            // any vCPU runs. A thread that already left only gets ESRCH, which is ignored.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }

    /// Withdraws a stop, so that the next [`Vcpu::run`] runs the guest again (resume after a
    /// pause: the vCPU thread calls it before re-entering `run`).
    pub fn clear_stop(&self) {
        self.stop.store(false, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// One KVM vCPU.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    kicker: VcpuKicker,
    state_caps: Arc<StateCaps>,
    coalesced: Arc<CoalescedMmio>,
    /// The VM's coalesced MMIO ring is mapped through this vCPU's fd.
    ring_mapped: bool,
}

impl Vcpu {
    pub(crate) fn new(
        index: u8,
        fd: VcpuFd,
        state_caps: Arc<StateCaps>,
        coalesced: Arc<CoalescedMmio>,
    ) -> Self {
        Vcpu {
            index,
            fd,
            kicker: VcpuKicker::new(Arc::new(AtomicBool::new(false))),
            state_caps,
            coalesced,
            ring_mapped: false,
        }
    }

    /// Hands every write waiting in the VM's coalesced MMIO ring to `handler`, oldest first
    /// (a no-op for a VM without coalesced zones). Called before each MMIO exit is served and
    /// when a run ends (stopped, halted, reset...), so that the guest's accesses reach the devices in the order it
    /// made them, and device state saved after a stop is complete.
    fn drain_coalesced_mmio(&mut self, handler: &dyn ExitHandler) -> Result<()> {
        if !self.coalesced.enabled.load(Ordering::Acquire) {
            return Ok(());
        }
        self.map_coalesced_ring()?;
        let _one_at_a_time = self
            .coalesced
            .drain
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = self
            .fd
            .coalesced_mmio_read()
            .map_err(kvm_err("coalesced MMIO ring"))?
        {
            let len = (entry.len as usize).min(entry.data.len());
            handler.coalesced_mmio_write(entry.phys_addr, &entry.data[..len]);
        }
        Ok(())
    }

    /// Maps the VM's coalesced MMIO ring through this vCPU's fd, once the VM has a zone.
    fn map_coalesced_ring(&mut self) -> Result<()> {
        if self.ring_mapped || !self.coalesced.enabled.load(Ordering::Acquire) {
            return Ok(());
        }
        self.fd
            .map_coalesced_mmio_ring()
            .map_err(kvm_err("mmap of the coalesced MMIO ring"))?;
        self.ring_mapped = true;
        Ok(())
    }

    /// Serves an MMIO exit after draining the coalesced ring: the access leaves the kvm_run
    /// page for a local copy while the ring is drained, and a read's value is put back.
    fn serve_mmio_after_ring(
        &mut self,
        handler: &dyn ExitHandler,
        addr: u64,
        write: Option<&[u8]>,
        len: usize,
    ) -> Result<()> {
        let mut buf = [0u8; 8];
        let len = len.min(buf.len());
        if let Some(data) = write {
            buf[..len].copy_from_slice(&data[..len]);
        }
        self.drain_coalesced_mmio(handler)?;
        if write.is_some() {
            handler.mmio_write(addr, &buf[..len]);
            return Ok(());
        }
        handler.mmio_read(addr, &mut buf[..len]);
        let run = self.fd.get_kvm_run();
        // SAFETY: the last KVM_RUN exited with KVM_EXIT_MMIO (this function serves that exit),
        // so `mmio` is the union member KVM filled in and reads back on the next KVM_RUN.
        unsafe { run.__bindgen_anon_1.mmio.data[..len].copy_from_slice(&buf[..len]) };
        Ok(())
    }

    /// What the host's KVM offers for state save/restore.
    pub(crate) fn state_caps(&self) -> &StateCaps {
        &self.state_caps
    }

    /// This vCPU's index (and APIC id).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The raw vCPU fd, for state save/restore and tests.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// A handle other threads use to stop this vCPU.
    pub fn kicker(&self) -> VcpuKicker {
        self.kicker.clone()
    }

    /// Sets CPUID, MSRs, FPU and LAPIC; for the boot vCPU (`boot` given) also the entry
    /// registers, and the GDT, IDT and page tables in `mem` where the VM's
    /// [`crate::GuestLayout`] places them.
    pub fn configure<M: GuestMemory + ?Sized>(
        &self,
        vm: &Vm,
        mem: &M,
        boot: Option<BootEntry>,
        topology: impl Into<cpuid::CpuTopology>,
    ) -> Result<()> {
        let mut cpuid = vm.supported_cpuid().clone();
        cpuid::normalize(&mut cpuid, self.index, topology);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(kvm_err("KVM_SET_CPUID2"))?;

        let msrs = regs::boot_msrs();
        let written = self.fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if let Some(refused) = msrs.as_slice().get(written) {
            // KVM stops at the first MSR it refuses and reports how many it set.
            return Err(Error::MsrRefused {
                vcpu: self.index,
                index: refused.index,
            });
        }
        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(kvm_err("KVM_SET_FPU"))?;
        if vm.has_lapic() {
            let mut lapic = self.fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
            regs::set_lint_pins(&mut lapic);
            self.fd
                .set_lapic(&lapic)
                .map_err(kvm_err("KVM_SET_LAPIC"))?;
        }
        if let Some(entry) = boot {
            let sregs = self.fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
            let sregs = regs::setup_sregs(mem, vm.layout(), entry, sregs)?;
            self.fd
                .set_sregs(&sregs)
                .map_err(kvm_err("KVM_SET_SREGS"))?;
            self.fd
                .set_regs(&regs::boot_regs(vm.layout(), entry))
                .map_err(kvm_err("KVM_SET_REGS"))?;
        }
        Ok(())
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    /// A triple fault is how some guests reset on purpose, and how a kernel whose exception
    /// handling broke ends without a word: the registers where it happened tell which. On AMD
    /// (SVM) KVM puts the vCPU through INIT before it reports the exit, so there they read as
    /// after a reset and say nothing.
    fn log_triple_fault(&self, vcpu: u8) {
        let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return;
        };
        if r.rip == 0xfff0 && s.cs.selector == 0xf000 {
            log::warn!(
                "vCPU {vcpu} triple fault (its registers were reset by KVM: not known where)"
            );
            return;
        }
        log::warn!(
            "vCPU {vcpu} triple fault: rip {:#x} rsp {:#x} rflags {:#x} cs {:#x} cr0 {:#x} \
             cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} idt {:#x}+{:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            s.cs.selector,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.idt.base,
            s.idt.limit
        );
    }

    /// Runs the vCPU until the guest resets or shuts down, a fatal exit happens, or a
    /// [`VcpuKicker`] stops it. Port and MMIO exits go to `handler`.
    ///
    /// When a stop ends the loop right after a port or MMIO exit, the loop first re-enters
    /// KVM_RUN with immediate_exit set: KVM finishes the access (an IN's data into RAX, RIP past
    /// the instruction) without running the guest further, so the vCPU's state is complete for
    /// [`Vcpu::save_state`] and a later run does not repeat the access.
    pub fn run(&mut self, handler: &dyn ExitHandler) -> Result<VcpuExitReason> {
        install_kick_handler()?;
        let page: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN_PAGE.with(|p| p.set(page));
        // SAFETY: pthread_self has no preconditions.
        *self.kicker.thread.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(unsafe { libc::pthread_self() });
        // Whatever ended the run, the devices get the guest's buffered writes first.
        let result = self
            .run_loop(handler)
            .and_then(|reason| self.drain_coalesced_mmio(handler).map(|()| reason));
        *self.kicker.thread.lock().unwrap_or_else(|e| e.into_inner()) = None;
        KVM_RUN_PAGE.with(|p| p.set(null_mut()));
        result
    }

    fn run_loop(&mut self, handler: &dyn ExitHandler) -> Result<VcpuExitReason> {
        let vcpu = self.index;
        // Whether the last exit was an access that KVM completes on the next KVM_RUN.
        let mut access_pending = false;
        loop {
            if self.kicker.stop_requested() {
                if access_pending {
                    self.complete_pending_access(handler)?;
                }
                return Ok(VcpuExitReason::Stopped);
            }
            access_pending = false;
            let coalescing = self.coalesced.enabled.load(Ordering::Relaxed);
            let fatal = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    handler.pio_read(port, data);
                    access_pending = true;
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    handler.pio_write(port, data);
                    access_pending = true;
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if coalescing {
                        let len = data.len();
                        self.serve_mmio_after_ring(handler, addr, None, len)?;
                    } else {
                        handler.mmio_read(addr, data);
                    }
                    access_pending = true;
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if coalescing {
                        let mut copy = [0u8; 8];
                        let len = data.len().min(copy.len());
                        copy[..len].copy_from_slice(&data[..len]);
                        self.serve_mmio_after_ring(handler, addr, Some(&copy[..len]), len)?;
                    } else {
                        handler.mmio_write(addr, data);
                    }
                    access_pending = true;
                    continue;
                }
                Ok(VcpuExit::IoapicEoi(vector)) => {
                    handler.other_exit(OtherExit::IoapicEoi);
                    handler.ioapic_eoi(vector);
                    continue;
                }
                Ok(VcpuExit::Hlt) => {
                    handler.other_exit(OtherExit::Hlt);
                    return Ok(VcpuExitReason::Halted);
                }
                Ok(VcpuExit::Shutdown) => {
                    handler.other_exit(OtherExit::Shutdown);
                    self.log_triple_fault(vcpu);
                    return Ok(VcpuExitReason::TripleFault);
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    handler.other_exit(OtherExit::SystemEvent);
                    return Ok(match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExitReason::SystemShutdown,
                        KVM_SYSTEM_EVENT_RESET => VcpuExitReason::SystemReset,
                        KVM_SYSTEM_EVENT_CRASH => VcpuExitReason::SystemCrash,
                        other => {
                            let name = format!("SystemEvent({other})");
                            return Err(Error::UnhandledExit {
                                vcpu,
                                name,
                                rip: self.rip(),
                            });
                        }
                    });
                }
                Ok(VcpuExit::Intr) => {
                    handler.other_exit(OtherExit::Interrupted);
                    self.clear_immediate_exit();
                    continue;
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    handler.other_exit(OtherExit::Other);
                    Fatal::FailEntry(reason, cpu)
                }
                Ok(VcpuExit::InternalError) => {
                    handler.other_exit(OtherExit::Other);
                    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // union member KVM filled in.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    Fatal::Internal(suberror)
                }
                Ok(other) => {
                    handler.other_exit(OtherExit::Other);
                    Fatal::Unhandled(exit_name(&other))
                }
                Err(e) if e.errno() == libc::EINTR => {
                    handler.other_exit(OtherExit::Interrupted);
                    self.clear_immediate_exit();
                    continue;
                }
                Err(e) if e.errno() == libc::EAGAIN => continue,
                Err(source) => return Err(Error::Run { vcpu, source }),
            };
            let rip = self.rip();
            return Err(match fatal {
                Fatal::FailEntry(reason, cpu) => Error::FailEntry {
                    vcpu,
                    reason,
                    cpu,
                    rip,
                },
                Fatal::Internal(suberror) => Error::InternalError {
                    vcpu,
                    suberror,
                    what: internal_error_name(suberror),
                    rip,
                    pvm: suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION && is_pvm_host(),
                },
                Fatal::Unhandled(name) => Error::UnhandledExit { vcpu, name, rip },
            });
        }
    }

    fn clear_immediate_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Lets KVM finish the port or MMIO access of the last exit without running the guest:
    /// KVM_RUN with immediate_exit set completes it, then returns EINTR (KVM API, "kvm_run":
    /// userspace must re-enter before saving state). Finishing a string access (`rep outsb`)
    /// can take more port or MMIO exits: they go to `handler` like any other.
    fn complete_pending_access(&mut self, handler: &dyn ExitHandler) -> Result<()> {
        self.fd.set_kvm_immediate_exit(1);
        let result = loop {
            match self.fd.run() {
                Err(e) if e.errno() == libc::EINTR => break Ok(()),
                Err(e) if e.errno() == libc::EAGAIN => continue,
                Err(source) => {
                    break Err(Error::Run {
                        vcpu: self.index,
                        source,
                    })
                }
                Ok(VcpuExit::IoIn(port, data)) => handler.pio_read(port, data),
                Ok(VcpuExit::IoOut(port, data)) => handler.pio_write(port, data),
                Ok(VcpuExit::MmioRead(addr, data)) => handler.mmio_read(addr, data),
                Ok(VcpuExit::MmioWrite(addr, data)) => handler.mmio_write(addr, data),
                // Other exits leave no access half done.
                Ok(_) => break Ok(()),
            }
        };
        self.clear_immediate_exit();
        result
    }
}

impl Vm {
    /// Creates vCPU `index` (its APIC id is the same number).
    pub fn create_vcpu(&self, index: u8) -> Result<Vcpu> {
        // The in-kernel LAPIC must exist before the vCPU does.
        self.create_irqchip()?;
        let fd = self
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let mut vcpu = Vcpu::new(
            index,
            fd,
            self.state_caps().clone(),
            self.coalesced_mmio().clone(),
        );
        // Mapped now rather than at the first drain, which may run under a seccomp filter
        // without mmap.
        vcpu.map_coalesced_ring()?;
        Ok(vcpu)
    }
}

enum Fatal {
    FailEntry(u64, u32),
    Internal(u32),
    Unhandled(String),
}

fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => ", emulation failure",
        kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => ", exception during exception delivery",
        kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => ", event delivery failed",
        kvm_bindings::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => ", unexpected exit reason",
        _ => "",
    }
}

fn exit_name(exit: &VcpuExit) -> String {
    let debug = format!("{exit:?}");
    // "Hypercall(...)" -> "Hypercall": the variant name is what a person needs.
    let name = debug.split(['(', ' ', '{']).next().unwrap_or("Unknown");
    format!("KVM_EXIT {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_kick_handler_registration_is_reported_every_time() {
        let outcome = OnceLock::new();
        let failed = install_once(&outcome, || Err(errno::Error::new(libc::EINVAL)));
        assert!(
            matches!(failed, Err(Error::Signal(e)) if e.errno() == libc::EINVAL),
            "{failed:?}"
        );
        // A later attempt neither registers again nor pretends success.
        let again = install_once(&outcome, || panic!("registered twice"));
        assert!(
            matches!(again, Err(Error::Signal(e)) if e.errno() == libc::EINVAL),
            "{again:?}"
        );
    }

    #[test]
    fn a_successful_registration_happens_once() {
        let outcome = OnceLock::new();
        install_once(&outcome, || Ok(())).unwrap();
        install_once(&outcome, || panic!("registered twice")).unwrap();
    }

    #[test]
    fn the_real_kick_handler_installs() {
        install_kick_handler().unwrap();
        install_kick_handler().unwrap();
    }
}
