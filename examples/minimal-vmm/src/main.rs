//! minimal-vmm: a Linux kernel booted by the workspace's library crates alone, without vmm-core:
//! guest RAM (vmm-memory) → kernel, initrd, command line, boot params, MP table and ACPI
//! (vmm-loader) → KVM VM and vCPUs (vmm-vcpu) → COM1 and the i8042 on a port bus (vmm-devices).
//!
//! ```text
//! cargo run -p minimal-vmm -- KERNEL [CMDLINE] [--initrd FILE] [--vcpus N]
//! ```
//!
//! The guest's serial output goes to stdout (there is no serial input). The VM ends when the
//! guest resets through the i8042 (Linux `reboot=k`), triple-faults or shuts down: exit code 0.
//! An error is one line on stderr and exit code 1. vmm-core does all this with more care and
//! more: virtio devices, an event loop, pause, snapshots, the terminal, signals.

use std::error::Error;
use std::fmt::Display;
use std::fs::File;
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};

use vmm_devices::{Bus, EventFd, EventFdTrigger, I8042Wrapper, SerialDevice, EFD_NONBLOCK};
use vmm_devices::{I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
use vmm_loader::{BootLayout, BootProtocol, ElfEntry};
use vmm_memory::{layout, MemoryOptions};
use vmm_vcpu::{BootEntry, ExitHandler, GuestLayout, VcpuExitReason, Vm, VmOptions};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const RAM_BYTES: u64 = 256 << 20;
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";
const USAGE: &str = "usage: minimal-vmm KERNEL [CMDLINE] [--initrd FILE] [--vcpus N]";

/// An error and its causes on one line.
fn chain(error: &dyn Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line += &format!(": {cause}");
        source = cause.source();
    }
    line
}

/// Names what an error is about (the crates' errors name sizes and addresses, not files).
fn about<E: Error>(what: impl Display) -> impl FnOnce(E) -> String {
    move |error| format!("{what}: {}", chain(&error))
}

fn open(what: &str, path: &str) -> Result<(File, u64)> {
    let file = File::open(path).map_err(about(format!("cannot open {what} {path}")))?;
    let meta = file.metadata().map_err(about(format!("{what} {path}")))?;
    if meta.is_dir() {
        return Err(format!("{what} {path} is a directory").into());
    }
    Ok((file, meta.len()))
}

/// Port and MMIO exits go to the buses. Nobody there: reads see all ones, writes are dropped.
struct Buses {
    pio: Bus,
    mmio: Bus,
}

impl ExitHandler for Buses {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.pio.read(u64::from(port), data) {
            data.fill(0xff);
        }
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.pio.write(u64::from(port), data);
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            data.fill(0xff);
        }
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.mmio.write(addr, data);
    }
}

/// What ends the VM: the i8042's reset line, or a vCPU's run loop ending.
enum End {
    Reset,
    Vcpu(u8, vmm_vcpu::Result<VcpuExitReason>),
}

fn run() -> Result<()> {
    let (mut positional, mut initrd_path, mut vcpus) = (Vec::new(), None, 1u8);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--initrd" => initrd_path = Some(args.next().ok_or("--initrd needs a FILE")?),
            "--vcpus" => {
                let n = args.next().unwrap_or_default();
                vcpus = n
                    .parse()
                    .map_err(|_| format!("--vcpus {n:?}: not 1 to 255"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            flag if flag.starts_with('-') => {
                return Err(format!("unknown option {flag}; {USAGE}").into())
            }
            _ => positional.push(arg),
        }
    }
    let (kernel_path, cmdline) = match positional.as_slice() {
        [kernel] => (kernel, DEFAULT_CMDLINE),
        [kernel, cmdline] => (kernel, cmdline.as_str()),
        _ => return Err(USAGE.into()),
    };
    // Files first: a typo should not wait for KVM.
    let (mut kernel_file, kernel_size) = open("kernel", kernel_path)?;
    let initrd_file = match &initrd_path {
        Some(path) => Some((path, open("initrd", path)?)),
        None => None,
    };
    // Where the boot structures go: this VMM's usual layout (vmm-memory's), without the ACPI
    // power-management registers and power button this example has no devices for (its
    // guests reboot through the i8042 instead of powering off).
    let boot = BootLayout {
        acpi_pm_port: None,
        ged: None,
        ..BootLayout::default()
    };
    let cmdline = vmm_loader::build_cmdline(cmdline, &[], boot.cmdline_max_size)?;

    // Guest RAM and a VM whose memory slots map it (`mem` is dropped after `vm`: declared first).
    let mem = vmm_memory::create_guest_memory(RAM_BYTES, MemoryOptions::default())?;
    let vm = Vm::new(VmOptions::new(guest_layout()))?;
    vm.check_vcpu_count(u64::from(vcpus))?;
    // SAFETY: `mem` is one anonymous mapping per region, used only through vm-memory's volatile
    // slices; it is declared before `vm`, so it is dropped after it, and every vCPU thread is
    // joined below before either goes.
    unsafe { vm.register_memory(&mem) }?;
    vm.create_irqchip()?; // after the memory slots, which are slower to add once it exists

    // COM1 (IRQ 4, output to stdout) and the i8042 (IRQ 1), whose reset line ends the VM.
    let irq_line = |gsi: u32| -> Result<EventFdTrigger> {
        let fd = EventFd::new(EFD_NONBLOCK)?;
        vm.register_irqfd(&fd, gsi)?; // KVM_IRQFD: a write to `fd` raises `gsi`
        Ok(EventFdTrigger::new(fd))
    };
    let serial = SerialDevice::new(irq_line(layout::SERIAL_IRQ)?, Box::new(std::io::stdout()));
    let reset = EventFd::new(0)?; // blocking: a thread waits on it
    let i8042 = I8042Wrapper::new(EventFdTrigger::new(reset.try_clone()?))
        .with_keyboard_interrupt(irq_line(layout::KEYBOARD_IRQ)?);
    let mut pio = Bus::new();
    pio.insert(
        Arc::new(Mutex::new(serial)),
        SERIAL_PORT_BASE,
        SERIAL_PORT_LEN,
    )?;
    pio.insert(Arc::new(Mutex::new(i8042)), I8042_PORT_BASE, I8042_PORT_LEN)?;
    let mmio = Bus::new(); // virtio-mmio devices would go here
    let buses = Arc::new(Buses { pio, mmio });

    // Kernel (ELF: PVH entry if it has one; or bzImage), initrd, command line and zero page (or
    // PVH start info) with the memory map, then the CPUs in an MP table and in ACPI tables.
    let kernel = vmm_loader::load_kernel(&mem, &boot, &mut kernel_file, ElfEntry::Auto)
        .map_err(about(format!("kernel {kernel_path}")))?;
    let initrd = match initrd_file {
        Some((path, (mut file, size))) => Some(
            vmm_loader::load_initrd(&mem, &boot, &mut file, size, &kernel)
                .map_err(about(format!("initrd {path}")))?,
        ),
        None => None,
    };
    let memory_map = layout::memory_map(RAM_BYTES);
    vmm_loader::configure_boot(&mem, &boot, &kernel, &cmdline, initrd, &memory_map)?;
    vmm_loader::setup_mptable(&mem, &boot, vcpus)?;
    vmm_loader::setup_acpi(&mem, &boot, vcpus, &[])?;
    if vmm_vcpu::is_pvm_host() && kernel_size > 1 << 20 {
        eprintln!(
            "minimal-vmm: warning: this host's /dev/kvm is PVM, which cannot run an unmodified \
             Linux kernel: use a host with VT-x/AMD-V"
        );
    }

    // vCPUs, one thread each: vCPU 0 starts at the kernel's entry, the others wait for a SIPI.
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
    let (ends, end) = mpsc::channel();
    // Every vCPU made before any runs: no early return may leave a vCPU thread running.
    let mut ready = Vec::new();
    for index in 0..vcpus {
        let vcpu = vm.create_vcpu(index)?;
        vcpu.configure(&vm, &mem, (index == 0).then_some(entry), vcpus)?;
        ready.push(vcpu);
    }
    let mut threads = Vec::new();
    for mut vcpu in ready {
        let index = vcpu.index();
        let (kicker, buses, ends) = (vcpu.kicker(), buses.clone(), ends.clone());
        let thread = std::thread::spawn(move || {
            let _ = ends.send(End::Vcpu(index, vcpu.run(buses.as_ref())));
        });
        threads.push((kicker, thread));
    }
    std::thread::spawn(move || {
        if reset.read().is_ok() {
            let _ = ends.send(End::Reset);
        }
    });

    // Run until the first end, then stop every vCPU: a kick gets it out of KVM_RUN.
    let end = end.recv();
    for (kicker, _) in &threads {
        kicker.stop();
    }
    for (_, thread) in threads {
        let _ = thread.join();
    }
    match end? {
        End::Reset => eprintln!("minimal-vmm: the guest reset the VM (i8042)"),
        End::Vcpu(_, Ok(VcpuExitReason::SystemCrash)) => return Err("the guest crashed".into()),
        End::Vcpu(index, Ok(reason)) => eprintln!("minimal-vmm: vCPU {index} ended: {reason:?}"),
        End::Vcpu(_, Err(error)) => return Err(error.into()), // it names the vCPU
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("minimal-vmm: error: {}", chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Where vmm-vcpu puts the boot GDT, IDT, page tables and stack in guest memory, and KVM's TSS:
/// this VMM's usual places (vmm-memory's layout).
fn guest_layout() -> GuestLayout {
    GuestLayout {
        tss: layout::KVM_TSS_ADDRESS,
        gdt: layout::BOOT_GDT_START,
        idt: layout::BOOT_IDT_START,
        pml4: layout::PML4_START,
        pdpt: layout::PDPTE_START,
        pd: layout::PDE_START,
        boot_stack_pointer: layout::BOOT_STACK_POINTER,
    }
}
