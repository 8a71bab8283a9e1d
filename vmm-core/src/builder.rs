//! Building a VM, from its configuration (a fresh boot) or from a snapshot (a restore), in one
//! place: memory, the KVM VM, the legacy and virtio devices on their buses, the kernel and boot
//! structures or the saved states, and the vCPUs. The result, a [`BuiltVm`], runs nothing yet:
//! [`crate::Vmm::start`] runs it.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use vmm_devices::{
    AcpiPmDevice, Bus, EventFdTrigger, Ged, GedState, I8042Wrapper, IoApic, IoApicState,
    SerialDevice,
};
use vmm_loader::{BootLayout, BootProtocol, LoadedKernel};
use vmm_memory::{layout, GuestMemoryMmap, MemoryOptions};
use vmm_sys_util::eventfd::EventFd;
use vmm_vcpu::{BootEntry, GuestLayout, Irqchip, Vcpu, Vm, VmOptions};

use crate::error::{Error, Result};
use crate::exits::BusExitHandler;
use crate::persist::{self, RestoreSource};
use crate::virtio_devices::{self, AttachedDevice};
use vmm_api::{ElfEntry, SerialMode, VmConfig};

// vmm-vcpu's boot GDT fits the room the address map gives it.
const _: () = assert!(layout::BOOT_GDT_MAX == vmm_vcpu::boot::BOOT_GDT_ENTRIES);

/// The KVM VM of the address map in `vmm_memory::layout`: its TSS, and where the boot vCPU's
/// GDT, IDT, identity page tables and stack go.
fn vm_options(irqchip: vmm_api::Irqchip) -> VmOptions {
    let mut options = VmOptions::new(GuestLayout {
        tss: layout::KVM_TSS_ADDRESS,
        gdt: layout::BOOT_GDT_START,
        idt: layout::BOOT_IDT_START,
        pml4: layout::PML4_START,
        pdpt: layout::PDPTE_START,
        pd: layout::PDE_START,
        boot_stack_pointer: layout::BOOT_STACK_POINTER,
    });
    options.irqchip = match irqchip {
        vmm_api::Irqchip::Kernel => Irqchip::Kernel,
        vmm_api::Irqchip::Split => Irqchip::Split,
    };
    options
}

/// Kernels larger than this are ordinary kernels (not tiny test guests): on a PVM host they get
/// a warning before they fail.
const TINY_KERNEL_BYTES: u64 = 1 << 20;

/// A VM built and ready to run: memory, KVM VM, devices on their buses, kernel loaded, vCPUs
/// configured.
pub struct BuiltVm {
    /// Guest RAM (kept alive as long as KVM's memory slots point into it). Not public, nor
    /// are the VM and the vCPUs: code outside this crate could otherwise drop the memory and
    /// run a vCPU (see `machine`).
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
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    pub(crate) i8042: Arc<Mutex<I8042Wrapper>>,
    pub(crate) reset: EventFd,
    /// Raised when the guest powers off through ACPI (S5).
    pub(crate) power_off: EventFd,
    pub(crate) ged: Arc<Mutex<Ged>>,
    /// The split irqchip's IOAPIC; None with the in-kernel irqchip.
    pub(crate) ioapic: Option<Arc<Mutex<IoApic>>>,
    /// The guest's kernel was told `acpi=off`: it has no power button.
    pub(crate) acpi_off: bool,
    pub(crate) exits: Arc<BusExitHandler>,
    pub(crate) config: VmConfig,
    /// The interfaces' API ids, when known (a restored snapshot's); empty otherwise.
    pub(crate) iface_ids: Vec<String>,
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

/// COM1 (IRQ 4), the i8042 (IRQ 1, its reset line ending the VM) and the ACPI sleep and reset
/// registers (S5 ends the VM, as a reset does) on a new port bus.
struct LegacyDevices {
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042Wrapper>>,
    reset: EventFd,
    power_off: EventFd,
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
        let power_off = event_fd()?;
        let acpi_pm = AcpiPmDevice::new(
            EventFdTrigger::new(power_off.try_clone().map_err(Error::EventFd)?),
            EventFdTrigger::new(reset.try_clone().map_err(Error::EventFd)?),
        );
        pio.insert(
            Arc::new(Mutex::new(acpi_pm)),
            u64::from(layout::ACPI_PM_PORT),
            u64::from(layout::ACPI_PM_PORT_LEN),
        )?;
        Ok(LegacyDevices {
            serial,
            i8042,
            reset,
            power_off,
            pio,
        })
    }
}

// The ACPI tables (vmm-loader) declare what the devices (vmm-devices) implement.
const _: () = {
    use vmm_devices::acpi as dev;
    use vmm_loader::acpi as tables;
    assert!(dev::S5_SLEEP_CONTROL == tables::S5_SLEEP_CONTROL);
    assert!(dev::RESET_VALUE == tables::RESET_VALUE);
    assert!(dev::GED_POWER_BUTTON == tables::GED_POWER_BUTTON);
    assert!(dev::SLEEP_STATUS_OFFSET == tables::SLEEP_STATUS_OFFSET as u64);
    assert!(dev::RESET_OFFSET == tables::RESET_OFFSET as u64);
    assert!(dev::ACPI_PM_LEN == layout::ACPI_PM_PORT_LEN as u64);
    assert!(dev::GED_LEN == layout::GED_SIZE);
};

/// Whether the kernel command line `config` gives says `acpi=off` (the guest then has no
/// power button: the i8042 and reboot paths remain).
fn acpi_off(config: &VmConfig) -> bool {
    let base = config
        .cmdline
        .as_deref()
        .unwrap_or(vmm_api::DEFAULT_CMDLINE);
    let mut text = base.to_string();
    if let Some(append) = &config.append {
        text.push(' ');
        text.push_str(append);
    }
    vmm_loader::cmdline_disables_acpi(&text)
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
        let opened = virtio_devices::open_devices(config, Default::default())?;
        // Where the loader puts the boot structures: the VMM's own layout, with the PICs only
        // where KVM emulates them.
        let boot = BootLayout {
            legacy_pic: config.irqchip == vmm_api::Irqchip::Kernel,
            ..BootLayout::default()
        };
        let cmdline = {
            let base = config
                .cmdline
                .as_deref()
                .unwrap_or(vmm_api::DEFAULT_CMDLINE);
            let mut append: Vec<String> = config.append.iter().cloned().collect();
            let pieces: Vec<&str> = append.iter().map(String::as_str).collect();
            let text = vmm_loader::build_cmdline(base, &pieces, boot.cmdline_max_size)
                .map_err(Error::Boot)?;
            let text = text
                .as_cstring()
                .map_err(|e| Error::Boot(vmm_loader::Error::Cmdline(e)))?;
            // With ACPI the devices are in the DSDT; a kernel told acpi=off needs them here.
            if vmm_loader::cmdline_disables_acpi(&text.to_string_lossy()) {
                let slots: Vec<_> = (0..opened.len()).filter_map(virtio_devices::slot).collect();
                append.extend(vmm_loader::virtio_mmio_cmdline(&slots));
            }
            let pieces: Vec<&str> = append.iter().map(String::as_str).collect();
            vmm_loader::build_cmdline(base, &pieces, boot.cmdline_max_size).map_err(Error::Boot)?
        };
        // Guest RAM before KVM: its size is checked (once) here, and an unreserved mapping
        // costs microseconds even when KVM then refuses.
        let options = MemoryOptions {
            hugepages: config.hugepages,
            ksm: config.ksm,
            prefault: config.prefault,
        };
        let memory = vmm_memory::create_guest_memory(config.memory.0, options)?;

        // SAFETY: `memory` (vmm-memory mmaps) goes into the `BuiltVm` returned below together
        // with the VM and its vCPUs, and stays mapped until after their last run: see `machine`.
        let machine = unsafe { machine(config, &memory, opened, None, None, None) }?;
        // Machine::new checked the count against KVM's limit, at most 254.
        let vcpu_count = config.vcpus as u8;
        let virtio_slots: Vec<_> = machine.virtio.iter().map(|d| d.slot).collect();
        let vm = &machine.vm;

        // Kernel, initrd, command line, boot structures.
        let elf_entry = match config.elf_entry {
            ElfEntry::Auto => vmm_loader::ElfEntry::Auto,
            ElfEntry::Linux64 => vmm_loader::ElfEntry::Linux64,
            ElfEntry::Pvh => vmm_loader::ElfEntry::Pvh,
        };
        let kernel = vmm_loader::load_kernel(&memory, &boot, &mut kernel_file, elf_entry).map_err(
            |source| Error::Load {
                what: "kernel",
                path: kernel_path.to_path_buf(),
                source,
            },
        )?;
        let initrd = match initrd {
            Some((path, (mut file, size))) => Some(
                vmm_loader::load_initrd(&memory, &boot, &mut file, size, &kernel).map_err(
                    |source| Error::Load {
                        what: "initrd",
                        path: path.clone(),
                        source,
                    },
                )?,
            ),
            None => None,
        };
        let memory_map = layout::memory_map(config.memory.0);
        vmm_loader::configure_boot(&memory, &boot, &kernel, &cmdline, initrd, &memory_map)
            .map_err(Error::Boot)?;
        // CPUs and interrupt routing twice: the MP table for kernels without ACPI (or booted
        // with acpi=off), ACPI for kernels without MP-table support.
        vmm_loader::setup_mptable(&memory, &boot, vcpu_count).map_err(Error::Boot)?;
        vmm_loader::setup_acpi(&memory, &boot, vcpu_count, &virtio_slots).map_err(Error::Boot)?;

        if crate::pvm::is_pvm_host()
            && (kernel_size > TINY_KERNEL_BYTES || kernel.protocol != BootProtocol::Pvh)
        {
            log::warn!("warning: {}", crate::pvm::PVM_EXPLANATION);
        }

        let entry = match kernel.protocol {
            BootProtocol::Pvh => BootEntry::Protected32 {
                eip: kernel.entry,
                start_info: boot.pvh_info_start,
            },
            BootProtocol::Linux64 | BootProtocol::BzImage => BootEntry::Long64 {
                rip: kernel.entry,
                boot_params: boot.zero_page_start,
            },
        };
        let topology = vmm_vcpu::cpuid::CpuTopology {
            vcpus: vcpu_count,
            smt: config.smt,
        };
        let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
        for index in 0..vcpu_count {
            let vcpu = vm.create_vcpu(index)?;
            vcpu.configure(vm, &memory, (index == 0).then_some(entry), topology)?;
            vcpus.push(vcpu);
        }
        let cmdline = cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(machine.into_built(memory, vcpus, Some(kernel), cmdline, config))
    }

    /// Rebuilds the VM of the snapshot `source`: guest memory mapped privately from its memory
    /// file with its diff files (oldest first) layered over it, the KVM VM, devices rebuilt
    /// from the saved configuration and put back in their saved states (by device id), vCPUs
    /// in theirs. The restored VM tracks dirty pages (for diff snapshots of its own) when
    /// `source` says so, whatever the snapshotted VM did. Nothing runs yet.
    pub fn restore(source: &RestoreSource) -> Result<BuiltVm> {
        let gauge = &crate::metrics::metrics().latencies_us.vmm_load_snapshot;
        crate::metrics::timed(gauge, || BuiltVm::restore_from(source))
    }

    fn restore_from(source: &RestoreSource) -> Result<BuiltVm> {
        let (snapshot, sealed) = source.read_state_sealed()?;
        let (mem_path, mem_diffs) = (&source.mem, &source.mem_diffs);
        if sealed.is_some() && !mem_diffs.is_empty() {
            return Err(Error::MemorySnapshot(
                vmm_memory::snapshot::MemorySnapshotError::SealedDiffs,
            ));
        }
        let mut config = snapshot.config_for(source)?;
        // The interrupt controllers the snapshot has state for (snapshots from before the
        // split irqchip existed have the in-kernel one, whatever their configuration says).
        config.irqchip = if snapshot.ioapic.is_some() {
            vmm_api::Irqchip::Split
        } else {
            vmm_api::Irqchip::Kernel
        };
        config.validate()?;
        // Each sealed disk gets its own fresh clone: two restores of one snapshot never write
        // the same file.
        let clones = persist::clone_sealed_disks(
            &mut config,
            &snapshot.disk_seals,
            source.disk_clone_dir.as_deref(),
            vmm_disk::open_sealed,
        )?;
        let config = &config;
        let opened = virtio_devices::open_devices(config, clones)?;
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
        // A sealed memory file is authenticated and decrypted whole into anonymous memory
        // before anything runs; an unsealed one is mapped privately.
        let memory = match &sealed {
            Some((key, id)) => vmm_memory::sealed_memory::restore_memory_sealed(
                mem_path,
                &snapshot.memory,
                key,
                id,
                &options,
            ),
            None => vmm_memory::snapshot::restore_memory(mem_path, &snapshot.memory, &options),
        }
        .map_err(Error::MemorySnapshot)?;
        drop(sealed);

        // SAFETY: `memory` (vmm-memory mmaps) goes into the `BuiltVm` returned below together
        // with the VM and its vCPUs, and stays mapped until after their last run: see `machine`.
        let machine = unsafe {
            machine(
                config,
                &memory,
                opened,
                Some(&snapshot.serial),
                Some(&snapshot.ged),
                snapshot.ioapic.as_ref(),
            )
        }?;
        persist::restore_devices(&machine.virtio, &snapshot.devices)?;
        machine.vm.restore_state(&snapshot.vm)?;
        // A power button press the guest had not read: its edge again, now that the irqchip
        // is back.
        crate::lock(&machine.ged)
            .raise_pending()
            .map_err(Error::PowerButton)?;
        let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
        for state in &snapshot.vcpus {
            let vcpu = machine.vm.create_vcpu(state.index)?;
            vcpu.restore_state(state)?;
            vcpus.push(vcpu);
        }
        let mut built = machine.into_built(memory, vcpus, None, String::new(), config);
        built.iface_ids = snapshot.iface_ids();
        Ok(built)
    }
}

/// What build and restore set up alike around guest memory: the KVM VM with `memory` as its
/// slots (and KVM's dirty log when the configuration tracks dirty pages) and the irqchip, COM1
/// (its UART in `serial_state` when restoring) and the i8042 on the port bus, and the opened
/// virtio devices on the MMIO bus.
struct Machine {
    vm: Vm,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042Wrapper>>,
    reset: EventFd,
    power_off: EventFd,
    ged: Arc<Mutex<Ged>>,
    ioapic: Option<Arc<Mutex<IoApic>>>,
    virtio: Vec<AttachedDevice>,
    exits: Arc<BusExitHandler>,
}

/// Sets up the [`Machine`] of `config` around `memory`.
///
/// # Safety
///
/// The contract of [`Vm::register_memory`] for `memory`.
///
/// Both callers, [`BuiltVm::build`] and [`BuiltVm::restore`], uphold it the same way: `memory`
/// is a `vmm_memory::GuestMemoryMmap` (one mmap per region, accessed through volatile slices),
/// created just before the VM and moved into the same `BuiltVm` as the VM and its vCPUs (on an
/// error before that, the VM is dropped first, as the caller declared `memory` before it, and
/// no vCPU has run). Those three fields are private to this crate, and no vCPU runs outside a
/// [`crate::Vmm`], which joins every vCPU thread (`VcpuThreads::stop`) before it drops the
/// vCPUs, then the VM, then the memory; a `BuiltVm` dropped without running drops
/// vCPUs that never ran. A panic that unwinds past a `Vmm` runs its `Drop`, which also joins the
/// vCPU threads before the VM and the memory go.
unsafe fn machine(
    config: &VmConfig,
    memory: &GuestMemoryMmap,
    opened: Vec<virtio_devices::OpenedDevice>,
    serial_state: Option<&vmm_devices::SerialDeviceState>,
    ged_state: Option<&GedState>,
    ioapic_state: Option<&IoApicState>,
) -> Result<Machine> {
    let vm = Vm::new(vm_options(config.irqchip))?;
    vm.check_vcpu_count(config.vcpus)?;
    // SAFETY: this function's contract is register_memory's.
    unsafe { vm.register_memory(memory) }?;
    if config.track_dirty_pages {
        // SAFETY: the same memory, under the same contract.
        unsafe { vm.enable_dirty_log(memory) }?;
    }
    // After the memory slots, which are much slower to add once an irqchip exists.
    vm.create_irqchip()?;
    // COM1 with its IRQ through an irqfd, the i8042 (IRQ 1) whose reset ends the VM.
    let LegacyDevices {
        serial,
        i8042,
        reset,
        power_off,
        pio,
    } = LegacyDevices::attach(&vm, config, serial_state)?;
    let mut mmio = Bus::new();
    // A split irqchip's IOAPIC first: its routes carry the irqfds below.
    let ioapic = crate::ioapic::attach(&vm, config.vcpus, ioapic_state, &mut mmio)?;
    // The ACPI power button: a GED whose interrupt is an irqfd.
    let ged_irq = event_fd()?;
    vm.register_irqfd(&ged_irq, layout::GED_IRQ)?;
    let mut ged = Ged::new(EventFdTrigger::new(ged_irq));
    if let Some(state) = ged_state {
        ged.restore_state(state);
    }
    let ged = Arc::new(Mutex::new(ged));
    mmio.insert(ged.clone(), layout::GED_START, layout::GED_SIZE)?;
    if config.boot_timer {
        let timer = Arc::new(Mutex::new(vmm_devices::BootTimer::new()));
        mmio.insert(
            timer,
            vmm_memory::layout::BOOT_TIMER_START,
            vmm_devices::boot_timer::BOOT_TIMER_LEN,
        )?;
    }
    let virtio = virtio_devices::attach_devices(opened, &vm, memory, &mut mmio)?;
    if let Some(ioapic) = &ioapic {
        crate::ioapic::connect_lines(ioapic, &virtio);
    }
    Ok(Machine {
        vm,
        serial,
        i8042,
        reset,
        power_off,
        ged,
        virtio,
        exits: Arc::new(BusExitHandler {
            pio,
            mmio,
            stats: crate::exit_stats::get(),
            ioapic: ioapic.clone(),
        }),
        ioapic,
    })
}

impl Machine {
    /// The built VM: this machine with its memory, vCPUs and what was loaded.
    fn into_built(
        self,
        memory: GuestMemoryMmap,
        vcpus: Vec<Vcpu>,
        kernel: Option<LoadedKernel>,
        cmdline: String,
        config: &VmConfig,
    ) -> BuiltVm {
        BuiltVm {
            memory,
            vm: self.vm,
            vcpus,
            kernel,
            cmdline,
            virtio: self.virtio,
            serial: self.serial,
            i8042: self.i8042,
            reset: self.reset,
            power_off: self.power_off,
            ged: self.ged,
            ioapic: self.ioapic,
            acpi_off: acpi_off(config),
            exits: self.exits,
            config: config.clone(),
            iface_ids: Vec::new(),
        }
    }
}
