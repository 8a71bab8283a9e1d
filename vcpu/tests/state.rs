//! Tier 2: vCPU and VM state save/restore and the dirty log, with tiny guests written here and
//! run on this machine's /dev/kvm (PVM works too).
//!
//! The counting guest adds one to a counter in memory and to RBX in a loop and reports the
//! counter with `out 0x80, eax` every `STEP` iterations. It is stopped, saved (vCPU, VM, a copy
//! of guest memory), restored into a new VM and run again: the reports must go on from where
//! they stopped, neither restarting nor repeating one.

use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_memory::{create_guest_memory, layout, GuestMemoryMmap, MemoryOptions};
use vmm_vcpu::{
    BootEntry, Error, ExitHandler, KvmVmState, Vcpu, VcpuExitReason, VcpuKicker, VcpuState, Vm,
};

mod common;

const MEM_SIZE: u64 = 16 << 20;
const CODE: u64 = 0x10_0000;
const COUNTER: u64 = 0x20_0000;
/// Iterations between two reports: a power of two (the guest tests the low bits).
const STEP: u32 = 4096;
const REPORT_PORT: u16 = 0x80;

#[rustfmt::skip]
const COUNTING_GUEST: &[u8] = &[
    0xb9, 0x00, 0x00, 0x20, 0x00,   // 0:  mov ecx, COUNTER
    0x48, 0xff, 0x01,               // 5:  loop: inc qword [rcx]
    0x48, 0xff, 0xc3,               // 8:  inc rbx
    0x48, 0x8b, 0x01,               // 11: mov rax, [rcx]
    0xa9, 0xff, 0x0f, 0x00, 0x00,   // 14: test eax, STEP - 1
    0x75, 0xf0,                     // 19: jnz loop
    0xe7, 0x80,                     // 21: out 0x80, eax
    0xeb, 0xec,                     // 23: jmp loop
];
/// Where RIP is right after the OUT.
const AFTER_OUT: u64 = CODE + 23;

/// Records the counter reports and stops the vCPU after `stop_after` of them.
struct Reports {
    values: Mutex<Vec<u32>>,
    stop_after: usize,
    kicker: OnceLock<VcpuKicker>,
}

impl Reports {
    fn new(stop_after: usize) -> Self {
        Reports {
            values: Mutex::new(Vec::new()),
            stop_after,
            kicker: OnceLock::new(),
        }
    }

    fn values(&self) -> Vec<u32> {
        self.values.lock().unwrap().clone()
    }
}

impl ExitHandler for Reports {
    fn pio_read(&self, port: u16, _: &mut [u8]) {
        panic!("unexpected IN from port {port:#x}");
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        assert_eq!(port, REPORT_PORT);
        let value = u32::from_le_bytes(data.try_into().expect("a 32-bit OUT"));
        let mut values = self.values.lock().unwrap();
        values.push(value);
        if values.len() >= self.stop_after {
            if let Some(kicker) = self.kicker.get() {
                kicker.stop();
            }
        }
    }
    fn mmio_read(&self, addr: u64, _: &mut [u8]) {
        panic!("unexpected MMIO read at {addr:#x}");
    }
    fn mmio_write(&self, addr: u64, _: &[u8]) {
        panic!("unexpected MMIO write at {addr:#x}");
    }
}

fn memory() -> GuestMemoryMmap {
    create_guest_memory(MEM_SIZE, MemoryOptions::default()).unwrap()
}

fn vm(irqchip: bool) -> Vm {
    Vm::new(common::options(irqchip)).expect("/dev/kvm must be usable for tier-2 tests")
}

fn long64() -> BootEntry {
    BootEntry::Long64 {
        rip: CODE,
        boot_params: layout::ZERO_PAGE_START,
    }
}

/// A VM running `code` from boot on one configured vCPU. Here and below, the memory a VM is
/// registered with goes back to the test together with the VM and its vCPU, and each test keeps
/// all three until it ends, after the vCPU's last run (a vCPU runs on the test's thread, or on
/// one that the test joins).
fn booted(code: &[u8], irqchip: bool) -> (Vm, GuestMemoryMmap, Vcpu) {
    let vm = vm(irqchip);
    let mem = memory();
    mem.write_slice(code, GuestAddress(CODE)).unwrap();
    // SAFETY: `mem` is vm-memory mmap regions, kept by the test until after the vCPU's last
    // run (see above).
    unsafe { vm.register_memory(&mem) }.unwrap();
    vm.create_irqchip().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    vcpu.configure(&vm, &mem, Some(long64()), 1).unwrap();
    (vm, mem, vcpu)
}

fn copy_memory(from: &GuestMemoryMmap) -> Vec<u8> {
    let mut bytes = Vec::new();
    for region in from.iter() {
        let mut buf = vec![0u8; region.len() as usize];
        from.read_slice(&mut buf, region.start_addr()).unwrap();
        bytes.extend_from_slice(&buf);
    }
    bytes
}

fn memory_from(bytes: &[u8]) -> GuestMemoryMmap {
    let mem = memory();
    let mut at = 0;
    for region in mem.iter() {
        let len = region.len() as usize;
        mem.write_slice(&bytes[at..at + len], region.start_addr())
            .unwrap();
        at += len;
    }
    mem
}

fn counter(mem: &GuestMemoryMmap) -> u64 {
    mem.read_obj(GuestAddress(COUNTER)).unwrap()
}

fn run_until_stopped(vcpu: &mut Vcpu, reports: &Reports) {
    reports.kicker.set(vcpu.kicker()).unwrap();
    assert_eq!(vcpu.run(reports).unwrap(), VcpuExitReason::Stopped);
}

/// A snapshot as the control API will take it: the states through JSON, memory as bytes.
struct Snapshot {
    vcpu: String,
    vm: String,
    memory: Vec<u8>,
}

fn snapshot(vm: &Vm, vcpu: &Vcpu, mem: &GuestMemoryMmap) -> Snapshot {
    Snapshot {
        vcpu: serde_json::to_string(&vcpu.save_state().unwrap()).unwrap(),
        vm: serde_json::to_string(&vm.save_state().unwrap()).unwrap(),
        memory: copy_memory(mem),
    }
}

/// A new VM and vCPU 0 restored from `snap`.
fn restore(snap: &Snapshot) -> (Vm, GuestMemoryMmap, Vcpu) {
    let vcpu_state: VcpuState = serde_json::from_str(&snap.vcpu).unwrap();
    let vm_state: KvmVmState = serde_json::from_str(&snap.vm).unwrap();
    let vm = vm(true);
    let mem = memory_from(&snap.memory);
    // SAFETY: `mem` is vm-memory mmap regions, kept by the test until after the vCPU's last
    // run (see `booted`).
    unsafe { vm.register_memory(&mem) }.unwrap();
    vm.create_irqchip().unwrap();
    vm.restore_state(&vm_state).unwrap();
    let vcpu = vm.create_vcpu(vcpu_state.index).unwrap();
    vcpu.restore_state(&vcpu_state).unwrap();
    (vm, mem, vcpu)
}

fn steps(from: u32, count: u32) -> Vec<u32> {
    (from..from + count).map(|i| i * STEP).collect()
}

#[test]
fn counter_continues_after_restore_into_a_new_vm() {
    let (vm, mem, mut vcpu) = booted(COUNTING_GUEST, true);
    // The handler stops the vCPU right at the fifth report: the stop lands on a port exit, the
    // case where KVM finishes the OUT only on the next KVM_RUN.
    let before = Reports::new(5);
    run_until_stopped(&mut vcpu, &before);
    assert_eq!(before.values(), steps(1, 5));
    let regs = vcpu.fd().get_regs().unwrap();
    assert_eq!(regs.rip, AFTER_OUT, "the OUT was completed before the stop");
    assert_eq!(counter(&mem), u64::from(5 * STEP));
    assert_eq!(regs.rbx, u64::from(5 * STEP));

    let snap = snapshot(&vm, &vcpu, &mem);
    drop((vcpu, vm, mem));

    let (_vm, mem, mut vcpu) = restore(&snap);
    let after = Reports::new(3);
    run_until_stopped(&mut vcpu, &after);
    assert_eq!(
        after.values(),
        steps(6, 3),
        "neither restarted nor repeated"
    );
    assert_eq!(counter(&mem), u64::from(8 * STEP));
    assert_eq!(vcpu.fd().get_regs().unwrap().rbx, u64::from(8 * STEP));
}

#[test]
fn counter_continues_after_a_kick_at_any_point() {
    let (vm, mem, mut vcpu) = booted(COUNTING_GUEST, true);
    let before = Reports::new(usize::MAX);
    let kicker = vcpu.kicker();
    thread::scope(|s| {
        let runner = s.spawn(|| vcpu.run(&before));
        let start = Instant::now();
        while before.values().len() < 2 && start.elapsed() < Duration::from_secs(30) {
            thread::sleep(Duration::from_millis(5));
        }
        // Somewhere in the loop, most likely not at the OUT.
        thread::sleep(Duration::from_millis(3));
        kicker.stop();
        assert_eq!(runner.join().unwrap().unwrap(), VcpuExitReason::Stopped);
    });
    let reported = before.values();
    assert!(reported.len() >= 2, "the guest reported {reported:?}");
    assert_eq!(reported, steps(1, reported.len() as u32));
    let last = *reported.last().unwrap();
    let count = counter(&mem);
    let rbx = vcpu.fd().get_regs().unwrap().rbx;
    // At most the increment that precedes the next report's OUT may have happened.
    assert!(count >= u64::from(last) && count <= u64::from(last + STEP));
    // The stop may fall between the two increments.
    assert!(count - rbx <= 1, "counter {count}, rbx {rbx}");

    let snap = snapshot(&vm, &vcpu, &mem);
    drop((vcpu, vm, mem));

    let (_vm, mem, mut vcpu) = restore(&snap);
    let after = Reports::new(2);
    run_until_stopped(&mut vcpu, &after);
    assert_eq!(after.values(), vec![last + STEP, last + 2 * STEP]);
    assert_eq!(counter(&mem), u64::from(last + 2 * STEP));
}

/// Answers the guest's reads with fixed values, records its writes, and stops the vCPU at
/// the first read.
struct StopAtRead {
    value: u32,
    log: Mutex<Vec<String>>,
    kicker: OnceLock<VcpuKicker>,
}

impl StopAtRead {
    fn new(value: u32, vcpu: &Vcpu) -> Self {
        let kicker = OnceLock::new();
        kicker.set(vcpu.kicker()).unwrap();
        StopAtRead {
            value,
            log: Mutex::new(Vec::new()),
            kicker,
        }
    }

    fn read(&self, what: String, data: &mut [u8]) {
        data.copy_from_slice(&self.value.to_le_bytes()[..data.len()]);
        self.log.lock().unwrap().push(what);
        self.kicker.get().unwrap().stop();
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl ExitHandler for StopAtRead {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.read(format!("in {port:#x}"), data);
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(format!("out {port:#x} {data:02x?}"));
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.read(format!("mmio-read {addr:#x}"), data);
    }
    fn mmio_write(&self, addr: u64, _: &[u8]) {
        panic!("unexpected MMIO write at {addr:#x}");
    }
}

/// Save after `vcpu` stopped, restore into a new VM without irqchip, return the new vCPU.
fn save_and_restore_without_irqchip(
    vm: &Vm,
    vcpu: &Vcpu,
    mem: &GuestMemoryMmap,
) -> (Vm, GuestMemoryMmap, Vcpu) {
    let vcpu_state = vcpu.save_state().unwrap();
    let vm_state = vm.save_state().unwrap();
    assert!(vcpu_state.lapic.is_none() && vm_state.irqchip.is_none() && vm_state.pit.is_none());
    let new_vm = self::vm(false);
    let new_mem = memory_from(&copy_memory(mem));
    // SAFETY: `new_mem` is vm-memory mmap regions, kept by the test until after the vCPU's
    // last run (see `booted`).
    unsafe { new_vm.register_memory(&new_mem) }.unwrap();
    new_vm.restore_state(&vm_state).unwrap();
    let new_vcpu = new_vm.create_vcpu(0).unwrap();
    new_vcpu.restore_state(&vcpu_state).unwrap();
    (new_vm, new_mem, new_vcpu)
}

#[test]
fn a_stop_at_a_port_or_mmio_read_completes_the_read_before_the_save() {
    #[rustfmt::skip]
    let code = [
        0xe5, 0x81,                     // in eax, 0x81
        0xe7, 0x82,                     // out 0x82, eax
        0x48, 0xb8, 0x00, 0x00, 0x00, 0x02, 0, 0, 0, 0, // mov rax, 0x2000000 (unbacked)
        0x8b, 0x00,                     // mov eax, [rax]
        0xe7, 0x84,                     // out 0x84, eax
        0xf4,                           // hlt
    ];
    let (vm, mem, mut vcpu) = booted(&code, false);
    let first = StopAtRead::new(0x1111_1111, &vcpu);
    assert_eq!(vcpu.run(&first).unwrap(), VcpuExitReason::Stopped);
    assert_eq!(first.log(), ["in 0x81"]);
    let regs = vcpu.fd().get_regs().unwrap();
    assert_eq!(
        (regs.rip, regs.rax),
        (CODE + 2, 0x1111_1111),
        "IN completed"
    );

    // The restored guest goes on after the IN: it reports the first VM's value and does not
    // read the port again. Then it stops at the MMIO read.
    let (vm2, mem2, mut vcpu2) = save_and_restore_without_irqchip(&vm, &vcpu, &mem);
    let second = StopAtRead::new(0x2222_2222, &vcpu2);
    assert_eq!(vcpu2.run(&second).unwrap(), VcpuExitReason::Stopped);
    assert_eq!(
        second.log(),
        ["out 0x82 [11, 11, 11, 11]", "mmio-read 0x2000000"]
    );
    let regs = vcpu2.fd().get_regs().unwrap();
    assert_eq!(
        (regs.rip, regs.rax),
        (CODE + 16, 0x2222_2222),
        "MMIO read completed"
    );

    let (_vm3, _mem3, mut vcpu3) = save_and_restore_without_irqchip(&vm2, &vcpu2, &mem2);
    let third = StopAtRead::new(0xbad, &vcpu3);
    assert_eq!(vcpu3.run(&third).unwrap(), VcpuExitReason::Halted);
    assert_eq!(third.log(), ["out 0x84 [22, 22, 22, 22]"]);
}

#[test]
fn states_survive_a_json_round_trip() {
    let (vm, mem, mut vcpu) = booted(COUNTING_GUEST, true);
    run_until_stopped(&mut vcpu, &Reports::new(1));
    let vcpu_state = vcpu.save_state().unwrap();
    let vm_state = vm.save_state().unwrap();

    let json = serde_json::to_string(&vcpu_state).unwrap();
    let back: VcpuState = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    assert_eq!(back.index, 0);
    assert_eq!(back.regs.rip, AFTER_OUT);
    assert_eq!(back.regs.rbx, u64::from(STEP));
    assert_eq!(back.sregs.cr3, vcpu_state.sregs.cr3);
    assert_eq!(back.cpuid, vcpu_state.cpuid);
    assert_eq!(back.msrs, vcpu_state.msrs);
    assert_eq!(back.xsave, vcpu_state.xsave);
    assert_eq!(back.lapic, vcpu_state.lapic);
    assert!(!back.msrs.is_empty(), "KVM reported readable MSRs");
    assert!(
        back.msrs.iter().any(|m| m.index == 0x10),
        "IA32_TSC is saved"
    );
    assert!(back.lapic.is_some(), "the in-kernel LAPIC is saved");

    let json = serde_json::to_string(&vm_state).unwrap();
    let back: KvmVmState = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    let chips = back.irqchip.expect("the irqchip is saved");
    assert_eq!(
        (
            chips.pic_master.chip_id,
            chips.pic_slave.chip_id,
            chips.ioapic.chip_id
        ),
        (0, 1, 2)
    );
    assert_eq!(back.pit, vm_state.pit);
    assert_eq!(back.clock.clock, vm_state.clock.clock);
    drop(mem);
}

#[test]
fn restore_refuses_a_state_for_another_vcpu() {
    let (_vm, _mem, vcpu) = booted(COUNTING_GUEST, true);
    let state = vcpu.save_state().unwrap();
    let other = vm(true);
    other.create_irqchip().unwrap();
    let vcpu1 = other.create_vcpu(1).unwrap();
    let err = vcpu1.restore_state(&state).unwrap_err();
    assert!(
        matches!(err, Error::VcpuIndexMismatch { vcpu: 1, state: 0 }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "vCPU 1: the saved state is for vCPU 0");
}

#[test]
fn restore_refuses_a_cpuid_of_another_vendor() {
    let (_vm, _mem, vcpu) = booted(COUNTING_GUEST, true);
    let mut state = vcpu.save_state().unwrap();
    let leaf0 = state.cpuid.iter_mut().find(|e| e.function == 0).unwrap();
    let host = [leaf0.ebx, leaf0.edx, leaf0.ecx];
    let foreign = if host[0] == u32::from_le_bytes(*b"Genu") {
        *b"HygonGenuine"
    } else {
        *b"GenuineIntel"
    };
    let word = |i: usize| u32::from_le_bytes(foreign[i * 4..i * 4 + 4].try_into().unwrap());
    (leaf0.ebx, leaf0.edx, leaf0.ecx) = (word(0), word(1), word(2));

    let other = vm(true);
    let fresh = other.create_vcpu(0).unwrap();
    let err = fresh.restore_state(&state).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, Error::CpuidVendorMismatch { vcpu: 0, .. }),
        "{err:?}"
    );
    assert!(
        message.contains(std::str::from_utf8(&foreign).unwrap()),
        "{message}"
    );

    state.cpuid.retain(|e| e.function != 0);
    let err = fresh.restore_state(&state).unwrap_err();
    assert!(
        matches!(err, Error::InvalidState { what: "CPUID", .. }),
        "{err:?}"
    );
}

#[test]
fn restore_refuses_malformed_parts() {
    let (vm_with_chip, _mem, vcpu) = booted(COUNTING_GUEST, true);
    let state = vcpu.save_state().unwrap();
    let other = vm(true);
    let fresh = other.create_vcpu(0).unwrap();

    if let Some(words) = &state.xsave {
        let mut huge = state.clone();
        huge.xsave = Some(vec![0; words.len() + 64 * 1024]);
        let err = fresh.restore_state(&huge).unwrap_err();
        assert!(matches!(err, Error::XsaveSize { .. }), "{err:?}");
        let mut short = state.clone();
        short.xsave = Some(vec![0; 16]);
        let err = fresh.restore_state(&short).unwrap_err();
        assert!(
            matches!(
                err,
                Error::XsaveSize {
                    state_bytes: 64,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    let mut no_lapic = state.clone();
    no_lapic.lapic = None;
    let err = fresh.restore_state(&no_lapic).unwrap_err();
    assert!(
        matches!(
            err,
            Error::IrqchipMismatch {
                state: false,
                vm: true
            }
        ),
        "{err:?}"
    );

    // An MSR value KVM refuses (a reserved bit in IA32_APIC_BASE) is named in the error.
    let mut bad_msr = state.clone();
    bad_msr.msrs.push(vmm_vcpu::MsrEntry {
        index: 0x1b,
        data: 1 << 63,
    });
    let err = fresh.restore_state(&bad_msr).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MsrRestoreRefused {
                vcpu: 0,
                index: 0x1b,
                data: 0x8000_0000_0000_0000
            }
        ),
        "{err:?}"
    );

    // VM state: an irqchip into a VM without one, and chips under the wrong id.
    let vm_state = vm_with_chip.save_state().unwrap();
    let err = vm(false).restore_state(&vm_state).unwrap_err();
    assert!(
        matches!(
            err,
            Error::IrqchipMismatch {
                state: true,
                vm: false
            }
        ),
        "{err:?}"
    );
    let mut swapped = vm_state.clone();
    let chips = swapped.irqchip.as_mut().unwrap();
    std::mem::swap(&mut chips.pic_master, &mut chips.ioapic);
    let err = other.restore_state(&swapped).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidState {
                what: "irqchip",
                ..
            }
        ),
        "{err:?}"
    );
    other.restore_state(&vm_state).unwrap();
}

/// Sets the accessed bit in the PML4 and PDPT entries and accessed + dirty in the 2 MiB
/// entries of the boot identity map.
fn set_accessed_dirty(mem: &GuestMemoryMmap) {
    const ACCESSED: u64 = 1 << 5;
    const DIRTY: u64 = 1 << 6;
    let update = |addr: u64, bits: u64| {
        let entry: u64 = mem.read_obj(GuestAddress(addr)).unwrap();
        mem.write_obj(entry | bits, GuestAddress(addr)).unwrap();
    };
    update(layout::PML4_START, ACCESSED);
    update(layout::PDPTE_START, ACCESSED);
    for i in 0..512 {
        update(layout::PDE_START + 8 * i, ACCESSED | DIRTY);
    }
}

#[test]
fn dirty_log_marks_only_the_page_the_guest_wrote() {
    const TARGET: u64 = 0x30_0000;
    #[rustfmt::skip]
    let code = [
        0xb8, 0x10, 0x00, 0x30, 0x00,   // mov eax, TARGET + 0x10
        0xc6, 0x00, 0x42,               // mov byte [rax], 0x42
        0xf4,                           // hlt
    ];
    let vm = vm(false);
    let mem = memory();
    mem.write_slice(&code, GuestAddress(CODE)).unwrap();
    // SAFETY: `mem` is vm-memory mmap regions that live until the end of the test, after the
    // vCPU's last run; the dirty log calls below re-register this same memory.
    unsafe { vm.register_memory(&mem) }.unwrap();
    let err = vm.dirty_pages(&mem).unwrap_err();
    assert!(matches!(err, Error::DirtyLogNotEnabled), "{err:?}");

    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.configure(&vm, &mem, Some(long64()), 1).unwrap();
    // Accessed and dirty bits set in advance in the boot page tables: the CPU's page walk
    // then writes nothing there, and the guest's store is its only write.
    set_accessed_dirty(&mem);
    // SAFETY: the memory registered above, under the same contract.
    unsafe { vm.enable_dirty_log(&mem) }.unwrap();
    // Writes by the VMM through its own mapping are not the guest's: not in the log.
    mem.write_obj(7u64, GuestAddress(0x40_0000)).unwrap();

    assert_eq!(
        vcpu.run(&Reports::new(usize::MAX)).unwrap(),
        VcpuExitReason::Halted
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(TARGET + 0x10)).unwrap(),
        0x42
    );

    let maps = vm.dirty_pages(&mem).unwrap();
    assert_eq!(maps.len(), mem.num_regions());
    let map = &maps[0];
    assert_eq!((map.slot, map.guest_addr, map.size), (0, 0, MEM_SIZE));
    let page = TARGET / 4096;
    assert!(map.is_dirty(page), "the written page is dirty");
    assert!(!map.is_dirty(page - 1) && !map.is_dirty(page + 1));
    assert!(!map.is_dirty(CODE / 4096), "code is only read");
    assert!(!map.is_dirty(0x40_0000 / 4096), "VMM writes are not logged");
    assert_eq!(map.dirty_pages().collect::<Vec<_>>(), [TARGET]);
    assert_eq!(map.dirty_count(), 1);
    assert!(maps[1..].iter().all(|m| m.dirty_count() == 0));

    // Reading clears the log.
    let again = vm.dirty_pages(&mem).unwrap();
    assert_eq!(again[0].dirty_count(), 0);
    // SAFETY: the memory registered above, under the same contract.
    unsafe { vm.disable_dirty_log(&mem) }.unwrap();
    assert!(matches!(
        vm.dirty_pages(&mem).unwrap_err(),
        Error::DirtyLogNotEnabled
    ));
}
