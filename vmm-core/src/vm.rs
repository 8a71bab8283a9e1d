//! Building a VM from its config and running it to its end.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};

use vmm_devices::{Bus, EventFdTrigger, I8042Wrapper, SerialDevice};
use vmm_loader::{BootProtocol, LoadedKernel};
use vmm_memory::{layout, GuestMemoryMmap, MemoryOptions};
use vmm_sys_util::eventfd::EventFd;
use vmm_vcpu::{BootEntry, GuestLayout, Vcpu, VcpuExitReason, Vm, VmOptions};

use crate::control::{Session, StartMode, VmSnapshot};
use crate::error::{Error, Result};
use crate::event_loop::{stdin_fd, EventLoop, SerialInput};
use crate::exits::BusExitHandler;
use crate::terminal::RawTerminal;
use crate::vcpu_threads::VcpuThreads;
use crate::virtio_devices::{self, AttachedDevice};
use vmm_api::{ElfEntry, SerialMode, VmConfig};

// vmm-vcpu's boot GDT fits the room the address map gives it.
const _: () = assert!(layout::BOOT_GDT_MAX == vmm_vcpu::boot::BOOT_GDT_ENTRIES);

/// The KVM VM of the address map in `vmm_memory::layout`: its TSS, and where the boot vCPU's
/// GDT, IDT, identity page tables and stack go.
fn vm_options() -> VmOptions {
    VmOptions::new(GuestLayout {
        tss: layout::KVM_TSS_ADDRESS,
        gdt: layout::BOOT_GDT_START,
        idt: layout::BOOT_IDT_START,
        pml4: layout::PML4_START,
        pdpt: layout::PDPTE_START,
        pd: layout::PDE_START,
        boot_stack_pointer: layout::BOOT_STACK_POINTER,
    })
}

/// Kernels larger than this are ordinary kernels (not tiny test guests): on a PVM host they get
/// a warning before they fail.
const TINY_KERNEL_BYTES: u64 = 1 << 20;

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

/// What the main thread hears from the vCPU threads and the event loop.
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

/// A VM built and ready to run: memory, KVM VM, devices on their buses, kernel loaded, vCPUs
/// configured.
pub struct BuiltVm {
    /// Guest RAM (kept alive as long as KVM's memory slots point into it). Not public, nor
    /// are the VM and the vCPUs: code outside this crate could otherwise drop the memory and
    /// run a vCPU (see `register_memory`).
    pub(crate) memory: GuestMemoryMmap,
    /// The KVM VM.
    pub(crate) vm: Vm,
    /// The vCPUs, boot vCPU first.
    pub(crate) vcpus: Vec<Vcpu>,
    /// How the kernel was loaded (`None` for a VM restored from a snapshot).
    pub kernel: Option<LoadedKernel>,
    /// The command line given to the kernel.
    pub cmdline: String,
    /// The virtio-mmio devices, in slot order.
    pub virtio: Vec<AttachedDevice>,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042Wrapper>>,
    serial_mode: SerialMode,
    reset: EventFd,
    exits: Arc<BusExitHandler>,
    config: VmConfig,
}

fn open(what: &'static str, path: &Path) -> Result<(File, u64)> {
    let file = File::open(path).map_err(|source| Error::OpenFile {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| Error::OpenFile {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Err(Error::OpenFile {
            what,
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "is a directory"),
        });
    }
    Ok((file, meta.len()))
}

fn serial_output(mode: &SerialMode) -> Result<Box<dyn Write + Send>> {
    Ok(match mode {
        SerialMode::Stdio => Box::new(io::stdout()),
        SerialMode::None => Box::new(io::sink()),
        SerialMode::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| Error::OpenFile {
                    what: "serial output file",
                    path: path.clone(),
                    source,
                })?,
        ),
    })
}

/// COM1 (IRQ 4) and the i8042 (IRQ 1, its reset line ending the VM) on a new port bus.
struct LegacyDevices {
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042Wrapper>>,
    reset: EventFd,
    pio: Bus,
}

impl LegacyDevices {
    /// Creates them for `vm`, the UART in `serial_state` when restoring a snapshot.
    fn attach(
        vm: &Vm,
        config: &VmConfig,
        serial_state: Option<&vmm_devices::SerialDeviceState>,
    ) -> Result<LegacyDevices> {
        let serial_irq = event_fd()?;
        vm.register_irqfd(&serial_irq, layout::SERIAL_IRQ)?;
        let trigger = EventFdTrigger::new(serial_irq);
        let output = serial_output(&config.serial)?;
        let serial = Arc::new(Mutex::new(match serial_state {
            Some(state) => SerialDevice::from_state(state, trigger, output)?,
            None => SerialDevice::new(trigger, output),
        }));
        let reset = event_fd()?;
        let reset_trigger = EventFdTrigger::new(reset.try_clone().map_err(Error::EventFd)?);
        let keyboard_irq = event_fd()?;
        vm.register_irqfd(&keyboard_irq, layout::KEYBOARD_IRQ)?;
        let i8042 = Arc::new(Mutex::new(
            I8042Wrapper::new(reset_trigger)
                .with_keyboard_interrupt(EventFdTrigger::new(keyboard_irq)),
        ));
        let mut pio = Bus::new();
        pio.insert(
            serial.clone(),
            vmm_devices::SERIAL_PORT_BASE,
            vmm_devices::SERIAL_PORT_LEN,
        )?;
        pio.insert(
            i8042.clone(),
            vmm_devices::I8042_PORT_BASE,
            vmm_devices::I8042_PORT_LEN,
        )?;
        Ok(LegacyDevices {
            serial,
            i8042,
            reset,
            pio,
        })
    }
}

fn event_fd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)
}

impl BuiltVm {
    /// Builds the VM `config` describes. Nothing runs yet.
    pub fn build(config: &VmConfig) -> Result<BuiltVm> {
        config.validate()?;
        let kernel_path = config
            .kernel
            .as_deref()
            .ok_or(vmm_api::ConfigError::NoKernel)?;
        // Files first: a typo should not wait for KVM or memory.
        let (mut kernel_file, kernel_size) = open("kernel", kernel_path)?;
        let initrd = match &config.initrd {
            Some(path) => Some((path, open("initrd", path)?)),
            None => None,
        };
        // Virtio backends too (disk images, taps, the vsock socket).
        let opened = virtio_devices::open_devices(config)?;
        let cmdline = {
            let base = config
                .cmdline
                .as_deref()
                .unwrap_or(vmm_api::DEFAULT_CMDLINE);
            let mut append: Vec<String> = config.append.iter().cloned().collect();
            let pieces: Vec<&str> = append.iter().map(String::as_str).collect();
            let text = vmm_loader::build_cmdline(base, &pieces).map_err(Error::Boot)?;
            let text = text
                .as_cstring()
                .map_err(|e| Error::Boot(vmm_loader::Error::Cmdline(e)))?;
            // With ACPI the devices are in the DSDT; a kernel told acpi=off needs them here.
            if vmm_loader::cmdline_disables_acpi(&text.to_string_lossy()) {
                let slots: Vec<_> = (0..opened.len()).filter_map(virtio_devices::slot).collect();
                append.extend(vmm_loader::virtio_mmio_cmdline(&slots));
            }
            let pieces: Vec<&str> = append.iter().map(String::as_str).collect();
            vmm_loader::build_cmdline(base, &pieces).map_err(Error::Boot)?
        };
        // Guest RAM before KVM: its size is checked (once) here, and an unreserved mapping
        // costs microseconds even when KVM then refuses.
        let options = MemoryOptions {
            hugepages: config.hugepages,
            ksm: config.ksm,
            prefault: config.prefault,
        };
        let memory = vmm_memory::create_guest_memory(config.memory.0, options)?;

        let vm = Vm::new(vm_options())?;
        vm.check_vcpu_count(config.vcpus)?;
        // check_vcpu_count caps the count at 254.
        let vcpu_count = config.vcpus as u8;
        // SAFETY: `memory` (vmm-memory mmaps) goes into the `BuiltVm` returned below together
        // with the VM and its vCPUs, and stays mapped until after their last run: see
        // `register_memory`.
        unsafe { register_memory(&vm, &memory, config.track_dirty_pages) }?;
        // After the memory slots, which are much slower to add once an irqchip exists.
        vm.create_irqchip()?;

        // Devices: COM1 with its IRQ through an irqfd, the i8042 (IRQ 1) whose reset ends the VM.
        let legacy = LegacyDevices::attach(&vm, config, None)?;
        let LegacyDevices {
            serial,
            i8042,
            reset,
            pio,
        } = legacy;
        let mut mmio = Bus::new();
        let virtio = virtio_devices::attach_devices(opened, &vm, &memory, &mut mmio)?;
        let virtio_slots: Vec<_> = virtio.iter().map(|d| d.slot).collect();
        let exits = Arc::new(BusExitHandler { pio, mmio });

        // Kernel, initrd, command line, boot structures.
        let elf_entry = match config.elf_entry {
            ElfEntry::Auto => vmm_loader::ElfEntry::Auto,
            ElfEntry::Linux64 => vmm_loader::ElfEntry::Linux64,
            ElfEntry::Pvh => vmm_loader::ElfEntry::Pvh,
        };
        let kernel =
            vmm_loader::load_kernel(&memory, &mut kernel_file, elf_entry).map_err(|source| {
                Error::Load {
                    what: "kernel",
                    path: kernel_path.to_path_buf(),
                    source,
                }
            })?;
        let initrd = match initrd {
            Some((path, (mut file, size))) => Some(
                vmm_loader::load_initrd(&memory, &mut file, size, &kernel).map_err(|source| {
                    Error::Load {
                        what: "initrd",
                        path: path.clone(),
                        source,
                    }
                })?,
            ),
            None => None,
        };
        vmm_loader::configure_boot(&memory, &kernel, &cmdline, initrd, config.memory.0)
            .map_err(Error::Boot)?;
        // CPUs and interrupt routing twice: the MP table for kernels without ACPI (or booted
        // with acpi=off), ACPI for kernels without MP-table support.
        vmm_loader::setup_mptable(&memory, vcpu_count).map_err(Error::Boot)?;
        vmm_loader::setup_acpi(&memory, vcpu_count, &virtio_slots).map_err(Error::Boot)?;

        if crate::pvm::is_pvm_host()
            && (kernel_size > TINY_KERNEL_BYTES || kernel.protocol != BootProtocol::Pvh)
        {
            eprintln!("vmm: warning: {}", crate::pvm::PVM_EXPLANATION);
        }

        let entry = match kernel.protocol {
            BootProtocol::Pvh => BootEntry::Protected32 {
                eip: kernel.entry,
                start_info: layout::PVH_INFO_START,
            },
            BootProtocol::Linux64 | BootProtocol::BzImage => BootEntry::Long64 {
                rip: kernel.entry,
                boot_params: layout::ZERO_PAGE_START,
            },
        };
        let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
        for index in 0..vcpu_count {
            let vcpu = vm.create_vcpu(index)?;
            vcpu.configure(&vm, &memory, (index == 0).then_some(entry), vcpu_count)?;
            vcpus.push(vcpu);
        }
        let cmdline = cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(BuiltVm {
            memory,
            vm,
            vcpus,
            kernel: Some(kernel),
            cmdline,
            virtio,
            serial,
            i8042,
            serial_mode: config.serial.clone(),
            reset,
            exits,
            config: config.clone(),
        })
    }

    /// Rebuilds a VM from a snapshot: guest memory mapped privately from `mem_path` with the
    /// diff files `mem_diffs` (oldest first) layered over it, the KVM VM, devices rebuilt from
    /// the saved configuration and put back in their saved state, vCPUs in theirs. The restored
    /// VM tracks dirty pages (for diff snapshots of its own) when `track_dirty_pages` says so,
    /// whatever the snapshotted VM did. Nothing runs yet.
    pub fn restore(
        snapshot: &VmSnapshot,
        mem_path: &Path,
        mem_diffs: &[PathBuf],
        track_dirty_pages: bool,
    ) -> Result<BuiltVm> {
        let config = &VmConfig {
            track_dirty_pages,
            ..snapshot.config.clone()
        };
        config.validate()?;
        let opened = virtio_devices::open_devices(config)?;
        if opened.len() != snapshot.devices.len() {
            return Err(Error::SnapshotMismatch(format!(
                "{} virtio devices configured, {} saved",
                opened.len(),
                snapshot.devices.len()
            )));
        }
        let vcpu_count = u8::try_from(snapshot.vcpus.len())
            .ok()
            .filter(|&n| n > 0 && u64::from(n) == config.vcpus)
            .ok_or_else(|| {
                Error::SnapshotMismatch(format!(
                    "{} vCPU states saved for {} vCPUs",
                    snapshot.vcpus.len(),
                    config.vcpus
                ))
            })?;
        if snapshot.memory.ram_bytes() != config.memory.0 {
            return Err(Error::SnapshotMismatch(format!(
                "memory file layout holds {} bytes of RAM, the configuration {}",
                snapshot.memory.ram_bytes(),
                config.memory.0
            )));
        }
        let options = vmm_memory::snapshot::RestoreOptions {
            diffs: mem_diffs.to_vec(),
            prefault: config.prefault,
            ksm: config.ksm,
        };
        let memory = vmm_memory::snapshot::restore_memory(mem_path, &snapshot.memory, &options)
            .map_err(Error::MemorySnapshot)?;

        let vm = Vm::new(vm_options())?;
        vm.check_vcpu_count(config.vcpus)?;
        // SAFETY: `memory` (vmm-memory mmaps) goes into the `BuiltVm` returned below together
        // with the VM and its vCPUs, and stays mapped until after their last run: see
        // `register_memory`.
        unsafe { register_memory(&vm, &memory, config.track_dirty_pages) }?;
        vm.create_irqchip()?;

        let LegacyDevices {
            serial,
            i8042,
            reset,
            pio,
        } = LegacyDevices::attach(&vm, config, Some(&snapshot.serial))?;
        let mut mmio = Bus::new();
        let virtio = virtio_devices::attach_devices(opened, &vm, &memory, &mut mmio)?;
        for (device, state) in virtio.iter().zip(&snapshot.devices) {
            crate::lock(&device.transport)
                .restore_state(state)
                .map_err(|source| Error::DeviceRestore {
                    name: device.name.clone(),
                    source,
                })?;
        }
        let exits = Arc::new(BusExitHandler { pio, mmio });

        vm.restore_state(&snapshot.vm)?;
        let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
        for state in &snapshot.vcpus {
            let vcpu = vm.create_vcpu(state.index)?;
            vcpu.restore_state(state)?;
            vcpus.push(vcpu);
        }
        Ok(BuiltVm {
            memory,
            vm,
            vcpus,
            kernel: None,
            cmdline: String::new(),
            virtio,
            serial,
            i8042,
            serial_mode: config.serial.clone(),
            reset,
            exits,
            config: config.clone(),
        })
    }

    /// Runs the VM until the guest ends it, a vCPU fails, or the VMM gets SIGTERM/SIGINT/SIGHUP.
    pub fn run(self) -> Result<ShutdownReason> {
        let (events_tx, events_rx) = channel();
        self.run_controlled(events_tx, events_rx, StartMode::Running)
    }

    /// [`BuiltVm::run`], answering control API requests that arrive on `events_rx` (the API
    /// server holds a clone of `events_tx`); `start_paused` parks the vCPUs and devices before
    /// the guest runs (a restored VM waiting for a resume).
    pub(crate) fn run_controlled(
        self,
        events_tx: std::sync::mpsc::Sender<VmEvent>,
        events_rx: Receiver<VmEvent>,
        mode: StartMode,
    ) -> Result<ShutdownReason> {
        let start_paused = mode != StartMode::Running;
        install_termination_handlers();
        let BuiltVm {
            memory,
            vm,
            vcpus,
            virtio,
            serial,
            i8042,
            serial_mode,
            reset,
            exits,
            config,
            ..
        } = self;
        let interactive = serial_mode == SerialMode::Stdio;
        let input = interactive.then(|| SerialInput::new(stdin_fd(), serial.clone()));
        let _terminal = interactive.then(RawTerminal::enter);
        if start_paused {
            for device in &virtio {
                device.set_paused(true);
            }
        }
        let subscribers = virtio
            .iter()
            .map(AttachedDevice::subscriber)
            .collect::<Result<Vec<_>>>()?;
        let event_loop = EventLoop::start(input, reset, subscribers, events_tx.clone())
            .map_err(Error::EventLoop)?;

        let threads = VcpuThreads::spawn(vcpus, exits, events_tx.clone(), start_paused);
        drop(events_tx);
        let (outcome, vcpus) = match threads {
            Ok(threads) => {
                let mut session = Session {
                    threads,
                    vm: &vm,
                    memory: &memory,
                    virtio: &virtio,
                    serial: &serial,
                    i8042: &i8042,
                    config: vmm_api::ApiConfig::new(config),
                    unsaved_dirty: None,
                };
                if mode == StartMode::PausedThenResumed {
                    session.resume();
                }
                let outcome = session.wait_for_end(&events_rx);
                (outcome, session.threads.stop())
            }
            Err(e) => (Err(e), Vec::new()),
        };
        event_loop.stop();
        if let Ok(ShutdownReason::Signal(_)) = outcome {
            // Where each vCPU was tells whether a stuck guest was idle or spinning.
            for vcpu in &vcpus {
                if let Ok(regs) = vcpu.fd().get_regs() {
                    eprintln!("vmm: vCPU {} stopped at RIP {:#x}", vcpu.index(), regs.rip);
                }
            }
        }
        drop(vcpus);
        drop(virtio);
        // The memory outlives the vCPUs: KVM's slots point into it until the VM fd closes.
        drop(vm);
        drop(memory);
        outcome
    }
}

pub(crate) static TERMINATION_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_termination_signal(
    num: libc::c_int,
    _: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
    TERMINATION_SIGNAL.store(num, Ordering::SeqCst);
}

pub(crate) fn install_termination_handlers() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // A failure leaves the default action (exit), which is still an exit.
        let _ = vmm_sys_util::signal::register_signal_handler(signal, on_termination_signal);
    }
}

/// Registers `memory` as the KVM memory slots of `vm`, with KVM's dirty log when `dirty_log`.
///
/// # Safety
///
/// The contract of [`Vm::register_memory`] for `memory`.
///
/// Both callers, [`BuiltVm::build`] and [`BuiltVm::restore`], uphold it the same way: `memory`
/// is a `vmm_memory::GuestMemoryMmap` (one mmap per region, accessed through volatile slices),
/// created just before the VM and moved into the same `BuiltVm` as the VM and its vCPUs (on an
/// error before that, the VM is dropped first, as it was declared after `memory`, and no vCPU
/// has run). Those three fields are private to this crate, and no vCPU runs outside
/// `BuiltVm::run_controlled`, which joins every vCPU thread (`VcpuThreads::stop`) before it
/// drops the vCPUs, then the VM, then the memory; a `BuiltVm` dropped without running drops
/// vCPUs that never ran. (Not covered: a panic of the main thread between spawning and joining
/// the vCPU threads, a bug, would unwind past `VcpuThreads`, which does not join on drop, and
/// unmap the memory while vCPUs may still run.)
unsafe fn register_memory(vm: &Vm, memory: &GuestMemoryMmap, dirty_log: bool) -> Result<()> {
    // SAFETY: this function's contract is register_memory's.
    unsafe { vm.register_memory(memory) }?;
    if dirty_log {
        // SAFETY: the same memory, under the same contract.
        unsafe { vm.enable_dirty_log(memory) }?;
    }
    Ok(())
}

/// Builds and runs the VM `config` describes, returning how it ended.
pub fn run_vm(config: &VmConfig) -> Result<ShutdownReason> {
    BuiltVm::build(config)?.run()
}
