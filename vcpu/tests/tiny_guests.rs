//! Tier 2: tiny guests written here, run on this machine's /dev/kvm (PVM works too). They cover
//! long-mode and PVH entry, port and MMIO exits through the handler, HLT, triple fault, several
//! vCPUs at once, and the kick that stops a vCPU spinning in the guest.

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_memory::{create_guest_memory, layout, GuestMemoryMmap, MemoryOptions};
use vmm_vcpu::{BootEntry, ExitHandler, GuestLayout, Irqchip, VcpuExitReason, Vm, VmOptions};

mod common;
use common::options;

const CODE: u64 = 0x10_0000;
/// Unbacked guest address inside the boot identity map (RAM is 16 MiB): an MMIO exit.
const MMIO_ADDR: u64 = 0x200_0000;

#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<String>>,
}

impl Recorder {
    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl ExitHandler for Recorder {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.fill(0x5a);
        self.log
            .lock()
            .unwrap()
            .push(format!("in {port:#x} {}", data.len()));
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(format!("out {port:#x} {data:02x?}"));
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        data.fill(0xab);
        self.log
            .lock()
            .unwrap()
            .push(format!("mmio-read {addr:#x} {}", data.len()));
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(format!("mmio-write {addr:#x} {data:02x?}"));
    }
    fn coalesced_mmio_write(&self, addr: u64, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(format!("coalesced {addr:#x} {data:02x?}"));
    }
}

/// A VM with `code` at `CODE` in its memory. The caller keeps the memory until its vCPUs have
/// run for the last time (each test holds both until it ends, and joins its vCPU threads).
fn vm_with_code(code: &[u8], irqchip: bool) -> (Vm, GuestMemoryMmap) {
    let vm = Vm::new(options(irqchip)).expect("/dev/kvm must be usable for tier-2 tests");
    let mem = create_guest_memory(16 << 20, MemoryOptions::default()).unwrap();
    mem.write_slice(code, GuestAddress(CODE)).unwrap();
    // SAFETY: `mem` is vm-memory mmap regions, returned to the test together with the VM; each
    // test keeps it until it ends, after the last run of any vCPU of this VM (vCPU threads are
    // joined or scoped).
    unsafe { vm.register_memory(&mem) }.unwrap();
    (vm, mem)
}

fn long64() -> BootEntry {
    BootEntry::Long64 {
        rip: CODE,
        boot_params: layout::ZERO_PAGE_START,
    }
}

#[rustfmt::skip]
const LONG_MODE_IO: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03,             // mov dx, 0x3f8
    0xb0, b'A',                         // mov al, 'A'
    0xee,                               // out dx, al
    0xe4, 0x60,                         // in al, 0x60
    0xe6, 0x80,                         // out 0x80, al   (echo what the handler gave)
    0x48, 0xb8, 0x00, 0x00, 0x00, 0x02, 0, 0, 0, 0, // mov rax, 0x2000000
    0x8b, 0x18,                         // mov ebx, [rax]
    0xc7, 0x00, 0x78, 0x56, 0x34, 0x12, // mov dword [rax], 0x12345678
    0x89, 0xd8,                         // mov eax, ebx
    0xe7, 0x84,                         // out 0x84, eax  (echo the MMIO read)
    0xf4,                               // hlt
];

#[test]
fn long_mode_guest_does_port_and_mmio_exits_then_halts() {
    let (vm, mem) = vm_with_code(LONG_MODE_IO, false);
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.configure(&vm, &mem, Some(long64()), 1).unwrap();
    let handler = Recorder::default();
    assert_eq!(vcpu.run(&handler).unwrap(), VcpuExitReason::Halted);
    assert_eq!(
        handler.lines(),
        vec![
            "out 0x3f8 [41]".to_string(),
            "in 0x60 1".into(),
            "out 0x80 [5a]".into(),
            format!("mmio-read {MMIO_ADDR:#x} 4"),
            format!("mmio-write {MMIO_ADDR:#x} [78, 56, 34, 12]"),
            "out 0x84 [ab, ab, ab, ab]".into(),
        ]
    );
    let regs = vcpu.fd().get_regs().unwrap();
    assert_eq!(
        regs.rip,
        CODE + LONG_MODE_IO.len() as u64,
        "stopped after the HLT"
    );
    let sregs = vcpu.fd().get_sregs().unwrap();
    assert_ne!(sregs.efer & (1 << 10), 0, "long mode active");
}

#[rustfmt::skip]
const COALESCED_WRITES: &[u8] = &[
    0x48, 0xc7, 0xc0, 0x00, 0x00, 0x00, 0x02,       // mov rax, 0x2000000
    0xc7, 0x00, 0x01, 0x00, 0x00, 0x00,             // mov dword [rax], 1       (coalesced)
    0xc7, 0x00, 0x02, 0x00, 0x00, 0x00,             // mov dword [rax], 2       (coalesced)
    0x8b, 0x58, 0x10,                               // mov ebx, [rax + 0x10]    (exit)
    0xc7, 0x40, 0x10, 0x03, 0x00, 0x00, 0x00,       // mov dword [rax + 0x10], 3 (exit)
    0xc7, 0x00, 0x04, 0x00, 0x00, 0x00,             // mov dword [rax], 4       (coalesced)
    0xf4,                                           // hlt
];

#[test]
fn coalesced_writes_reach_the_handler_in_order_before_the_next_mmio_exit_and_at_the_end() {
    let (vm, mem) = vm_with_code(COALESCED_WRITES, false);
    assert!(
        vm.coalesce_mmio_writes(MMIO_ADDR, 4).unwrap(),
        "KVM has coalesced MMIO"
    );
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.configure(&vm, &mem, Some(long64()), 1).unwrap();
    let handler = Recorder::default();
    assert_eq!(vcpu.run(&handler).unwrap(), VcpuExitReason::Halted);
    let zone = MMIO_ADDR;
    let other = MMIO_ADDR + 0x10;
    assert_eq!(
        handler.lines(),
        vec![
            format!("coalesced {zone:#x} [01, 00, 00, 00]"),
            format!("coalesced {zone:#x} [02, 00, 00, 00]"),
            format!("mmio-read {other:#x} 4"),
            format!("mmio-write {other:#x} [03, 00, 00, 00]"),
            format!("coalesced {zone:#x} [04, 00, 00, 00]"),
        ]
    );
    // The read's value went back to the guest through the kvm_run page.
    assert_eq!(vcpu.fd().get_regs().unwrap().rbx, 0xabab_abab);
}

#[test]
fn pvh_entry_runs_32_bit_code_with_start_info_in_ebx() {
    #[rustfmt::skip]
    let code = [
        0x89, 0xd8,             // mov eax, ebx
        0xe7, 0x88,             // out 0x88, eax
        0xf4,                   // hlt
    ];
    let (vm, mem) = vm_with_code(&code, false);
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let entry = BootEntry::Protected32 {
        eip: CODE,
        start_info: layout::PVH_INFO_START,
    };
    vcpu.configure(&vm, &mem, Some(entry), 1).unwrap();
    let handler = Recorder::default();
    assert_eq!(vcpu.run(&handler).unwrap(), VcpuExitReason::Halted);
    let start = layout::PVH_INFO_START.to_le_bytes();
    assert_eq!(
        handler.lines(),
        vec![format!("out 0x88 {:02x?}", &start[..4])]
    );
}

#[test]
fn undefined_instruction_without_idt_is_a_triple_fault() {
    let (vm, mem) = vm_with_code(&[0x0f, 0x0b], false); // ud2
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.configure(&vm, &mem, Some(long64()), 1).unwrap();
    assert_eq!(
        vcpu.run(&Recorder::default()).unwrap(),
        VcpuExitReason::TripleFault
    );
}

#[test]
fn several_vcpus_run_at_once() {
    const VCPUS: u8 = 4;
    let vm = Vm::new(options(false)).unwrap();
    let mem = create_guest_memory(16 << 20, MemoryOptions::default()).unwrap();
    for i in 0..VCPUS {
        // Each vCPU gets its own entry: out 0x80, <index>; hlt.
        let code = [0xb0, i, 0xe6, 0x80, 0xf4];
        mem.write_slice(&code, GuestAddress(CODE + 0x100 * u64::from(i)))
            .unwrap();
    }
    // SAFETY: `mem` is vm-memory mmap regions that live until the end of the test; the vCPUs
    // run only inside the thread scope below.
    unsafe { vm.register_memory(&mem) }.unwrap();
    let handler = Recorder::default();
    thread::scope(|s| {
        for i in 0..VCPUS {
            let mut vcpu = vm.create_vcpu(i).unwrap();
            let entry = BootEntry::Long64 {
                rip: CODE + 0x100 * u64::from(i),
                boot_params: 0,
            };
            vcpu.configure(&vm, &mem, Some(entry), VCPUS).unwrap();
            let handler = &handler;
            s.spawn(move || assert_eq!(vcpu.run(handler).unwrap(), VcpuExitReason::Halted));
        }
    });
    let mut lines = handler.lines();
    lines.sort();
    let expected: Vec<String> = (0..VCPUS).map(|i| format!("out 0x80 [{i:02x}]")).collect();
    assert_eq!(lines, expected);
}

#[test]
fn kick_stops_a_spinning_vcpu_promptly() {
    let (vm, mem) = vm_with_code(&[0xeb, 0xfe], true); // jmp $
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.configure(&vm, &mem, Some(long64()), 1).unwrap();
    let kicker = vcpu.kicker();
    let runner = thread::spawn(move || vcpu.run(&Recorder::default()));
    // Most likely inside KVM_RUN by then; a kick before KVM_RUN is the next test's case.
    thread::sleep(Duration::from_millis(100));
    let asked = Instant::now();
    kicker.stop();
    let reason = runner.join().unwrap().unwrap();
    let latency = asked.elapsed();
    assert_eq!(reason, VcpuExitReason::Stopped);
    // Not a speed target: a kick that did not work would leave the vCPU spinning for ever, and
    // this bound turns that into a failure instead of a hung test.
    assert!(latency < Duration::from_secs(120), "stop took {latency:?}");
}

#[test]
fn kick_before_run_stops_immediately() {
    let (vm, mem) = vm_with_code(&[0xeb, 0xfe], true);
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.configure(&vm, &mem, Some(long64()), 1).unwrap();
    vcpu.kicker().stop();
    assert_eq!(
        vcpu.run(&Recorder::default()).unwrap(),
        VcpuExitReason::Stopped
    );
}

#[test]
fn vcpu_count_limits() {
    let vm = Vm::new(options(true)).unwrap();
    assert!(vm.check_vcpu_count(0).is_err());
    assert!(vm.check_vcpu_count(1).is_ok());
    let max = vm.max_vcpus();
    assert!(vm.check_vcpu_count(max).is_ok());
    let err = vm.check_vcpu_count(max + 1).unwrap_err().to_string();
    assert!(err.contains(&format!("1 to {max}")), "{err}");
}

#[test]
fn configured_cpuid_carries_the_apic_id() {
    let (vm, mem) = vm_with_code(&[0xf4], true);
    for i in 0..3u8 {
        let vcpu = vm.create_vcpu(i).unwrap();
        vcpu.configure(&vm, &mem, (i == 0).then(long64), 3).unwrap();
        let cpuid = vcpu
            .fd()
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(leaf1.ebx >> 24, u32::from(i));
        assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor bit");
    }
}

/// A VMM with its own memory type and address map: plain vm-memory `GuestMemoryMmap<()>` (no
/// dirty bitmap) and boot structures elsewhere than vmm-memory puts them.
#[test]
fn own_memory_type_and_layout() {
    let layout = GuestLayout {
        tss: 0xfffb_d000,
        gdt: 0x1000,
        idt: 0x1100,
        pml4: 0x2000,
        pdpt: 0x3000,
        pd: 0x4000,
        boot_stack_pointer: 0x5ff0,
    };
    // No irqchip: the HLT at the end exits to user space.
    let vm = Vm::new(VmOptions {
        irqchip: Irqchip::None,
        layout,
    })
    .unwrap();
    assert_eq!(vm.layout(), &layout);
    let mem =
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    mem.write_slice(LONG_MODE_IO, GuestAddress(CODE)).unwrap();
    // SAFETY: `mem` is vm-memory mmap regions that live until the end of the test, after the
    // vCPU's last run.
    unsafe { vm.register_memory(&mem) }.unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.configure(&vm, &mem, Some(long64()), 1).unwrap();
    let sregs = vcpu.fd().get_sregs().unwrap();
    assert_eq!(
        (sregs.gdt.base, sregs.idt.base, sregs.cr3),
        (0x1000, 0x1100, 0x2000)
    );
    assert_eq!(vcpu.fd().get_regs().unwrap().rsp, 0x5ff0);
    let pml4: u64 = mem.read_obj(GuestAddress(0x2000)).unwrap();
    assert_eq!(pml4 & !0xfff, 0x3000);
    // Nothing at vmm-memory's places.
    let untouched: u64 = mem.read_obj(GuestAddress(layout::PML4_START)).unwrap();
    assert_eq!(untouched, 0);
    let handler = Recorder::default();
    assert_eq!(vcpu.run(&handler).unwrap(), VcpuExitReason::Halted);
    assert_eq!(handler.lines().len(), 6, "{:?}", handler.lines());
}

#[test]
fn an_invalid_layout_is_refused_before_kvm() {
    let layout = GuestLayout {
        pml4: 0x9100,
        ..common::guest_layout()
    };
    let err = Vm::new(VmOptions::new(layout)).err().unwrap().to_string();
    assert!(
        err.contains("invalid guest layout: PML4 at 0x9100"),
        "{err}"
    );
}
