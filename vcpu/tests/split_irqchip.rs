//! Tier 2 (and tier 3): the split irqchip ([`Irqchip::Split`]) with a tiny guest. A 32-bit
//! guest loads an IDT, enables its in-kernel LAPIC and halts with interrupts on; the test
//! raises its vector through an irqfd on a GSI whose route is an MSI
//! ([`MsiRouter::set_routes`]), then directly ([`MsiRouter::signal`]). The guest's handler
//! reports each interrupt on a port and ends it with a LAPIC EOI, which for a level-triggered
//! vector comes back to user space as KVM_EXIT_IOAPIC_EOI ([`ExitHandler::ioapic_eoi`]).
//!
//! PVM delivers interrupts only to guests that use its own event entry, never through an
//! IDT: there the first test checks instead that the irqfd's MSI reached the LAPIC (its IRR).
//! `scripts/e2e.sh` runs this file inside the test host too, where KVM is real, so CI takes
//! both paths.

use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm_memory::{create_guest_memory, MemoryOptions};
use vmm_vcpu::{
    BootEntry, EventFd, ExitHandler, Irqchip, Msi, MsiRouter, VcpuExitReason, VcpuKicker, Vm,
    SPLIT_IOAPIC_PINS,
};

mod common;

const CODE: u64 = 0x10_0000;
/// Where the IDT's pseudo-descriptor (limit, base) and the IDT go (the stack grows down
/// from the IDT's page).
const IDTR: u64 = 0x10_1000;
const IDT: u64 = 0x10_2000;
const VECTOR: u8 = 0x40;
/// The IOAPIC pin (GSI) the test's irqfd raises.
const GSI: u32 = 5;

#[rustfmt::skip]
const GUEST: &[u8] = &[
    0xbc, 0x00, 0x30, 0x10, 0x00,                   // mov esp, 0x103000 (interrupts push)
    0x0f, 0x01, 0x1d, 0x00, 0x10, 0x10, 0x00,       // lidt [0x101000]
    0xc7, 0x05, 0xf0, 0x00, 0xe0, 0xfe,             // mov dword [0xfee000f0], 0x1ff:
    0xff, 0x01, 0x00, 0x00,                         //   LAPIC on (SVR), spurious vector 0xff
    0xe6, 0x80,                                     // out 0x80, al    (ready)
    0xfb,                                           // sti
    0xf4,                                           // idle: hlt
    0xeb, 0xfd,                                     // jmp idle
];
/// The interrupt handler, at `CODE + HANDLER`.
const HANDLER: u64 = 0x20;
#[rustfmt::skip]
const GUEST_HANDLER: &[u8] = &[
    0xb0, 0x42,                                     // mov al, 0x42
    0xe6, 0x81,                                     // out 0x81, al    (interrupted)
    0xc7, 0x05, 0xb0, 0x00, 0xe0, 0xfe,             // mov dword [0xfee000b0], 0: EOI
    0x00, 0x00, 0x00, 0x00,
    0xcf,                                           // iretd
];

/// To APIC id 0, fixed delivery, level-triggered and asserted: its EOI exits to user space.
const LEVEL_MSI: Msi = Msi {
    address: 0xfee0_0000,
    data: VECTOR as u32 | (1 << 14) | (1 << 15),
};

/// What the guest did, in order; raises the interrupts the test asks for.
struct Steps {
    log: Mutex<Vec<String>>,
    irq: EventFd,
    router: MsiRouter,
    kicker: Mutex<Option<VcpuKicker>>,
    done: Sender<()>,
    /// The host is PVM: no interrupt reaches this guest's IDT.
    pvm: bool,
}

impl Steps {
    fn push(&self, step: String) {
        self.log.lock().unwrap().push(step);
    }
}

impl ExitHandler for Steps {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.push(format!("in {port:#x}"));
        data.fill(0xff);
    }
    fn pio_write(&self, port: u16, _data: &[u8]) {
        match port {
            // Ready: the first interrupt through the irqfd.
            0x80 => {
                self.push("ready".into());
                // An irqfd on an MSI route delivers before write() returns.
                self.irq.write(1).unwrap();
                if self.pvm {
                    self.finish();
                }
            }
            0x81 => self.push("interrupt".into()),
            other => self.push(format!("out {other:#x}")),
        }
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.push(format!("mmio-read {addr:#x}"));
        data.fill(0xff);
    }
    fn mmio_write(&self, addr: u64, _data: &[u8]) {
        self.push(format!("mmio-write {addr:#x}"));
    }
    fn ioapic_eoi(&self, vector: u8) {
        self.push(format!("eoi {vector:#x}"));
        let eois = self
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.starts_with("eoi"))
            .count();
        if eois == 1 {
            // The second interrupt straight from user space, as an IOAPIC re-raising a line.
            assert!(
                self.router.signal(LEVEL_MSI).unwrap(),
                "a LAPIC took the MSI"
            );
        } else {
            self.finish();
        }
    }
}

impl Steps {
    /// Ends the run: the vCPU stops at its next entry.
    fn finish(&self) {
        self.kicker.lock().unwrap().take().unwrap().stop();
        let _ = self.done.send(());
    }
}

#[test]
fn an_irqfd_on_an_msi_route_and_a_signalled_msi_reach_the_guest_and_eois_come_back() {
    let vm = Vm::new(common::with_irqchip(Irqchip::Split)).expect("split irqchip VM");
    assert!(vm.has_lapic());
    let mem = create_guest_memory(16 << 20, MemoryOptions::default()).unwrap();
    mem.write_slice(GUEST, GuestAddress(CODE)).unwrap();
    mem.write_slice(GUEST_HANDLER, GuestAddress(CODE + HANDLER))
        .unwrap();
    // SAFETY: `mem` is vm-memory mmap regions that live until the end of the test; the vCPU
    // runs on a thread joined before the test ends.
    unsafe { vm.register_memory(&mem) }.unwrap();
    vm.create_irqchip().unwrap();

    let router = vm.msi_router().expect("a split irqchip VM routes MSIs");
    router.set_routes(&[(GSI, LEVEL_MSI)]).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vm.register_irqfd(&irq, GSI).unwrap();

    let mut vcpu = vm.create_vcpu(0).unwrap();
    let entry = BootEntry::Protected32 {
        eip: CODE,
        start_info: 0,
    };
    vcpu.configure(&vm, &mem, Some(entry), 1).unwrap();
    // A 32-bit interrupt gate for VECTOR in the boot code segment, and the IDTR.
    let cs = vcpu.fd().get_sregs().unwrap().cs.selector;
    let handler = CODE + HANDLER;
    let gate = (handler & 0xffff) | (u64::from(cs) << 16) | (0x8e << 40) | ((handler >> 16) << 48);
    mem.write_obj(gate, GuestAddress(IDT + 8 * u64::from(VECTOR)))
        .unwrap();
    mem.write_obj(0x7ffu16, GuestAddress(IDTR)).unwrap();
    mem.write_obj(IDT as u32, GuestAddress(IDTR + 2)).unwrap();

    let (done, finished) = channel();
    let steps = Steps {
        log: Mutex::new(Vec::new()),
        irq,
        router,
        kicker: Mutex::new(Some(vcpu.kicker())),
        done,
        pvm: vmm_vcpu::is_pvm_host(),
    };
    let watchdog = vcpu.kicker();
    let reason = thread::scope(|s| {
        let runner = s.spawn(|| vcpu.run(&steps));
        // Not a speed bound: an interrupt that never arrives would leave the guest halted for
        // ever; this turns it into a failure below instead of a hung test.
        if finished.recv_timeout(Duration::from_secs(120)).is_err() {
            watchdog.stop();
        }
        runner.join().unwrap()
    });
    assert_eq!(reason.unwrap(), VcpuExitReason::Stopped);
    let log = steps.log.lock().unwrap().clone();
    if steps.pvm {
        assert_eq!(log, ["ready"], "what the guest did");
        // The vector waits in the LAPIC's IRR (eight 32-bit words from 0x200, 16 bytes apart).
        let lapic = vcpu.fd().get_lapic().unwrap();
        let at = 0x200 + 0x10 * usize::from(VECTOR / 32);
        let word = u32::from_le_bytes(std::array::from_fn(|i| lapic.regs[at + i] as u8));
        assert_ne!(word & (1 << (VECTOR % 32)), 0, "vector {VECTOR:#x} pending");
        return;
    }
    assert_eq!(
        log,
        ["ready", "interrupt", "eoi 0x40", "interrupt", "eoi 0x40"],
        "what the guest did"
    );
}

#[test]
fn routes_beyond_a_table_and_the_pin_count_are_what_kvm_says() {
    let vm = Vm::new(common::with_irqchip(Irqchip::Split)).unwrap();
    vm.create_irqchip().unwrap();
    let router = vm.msi_router().unwrap();
    // Every IOAPIC pin at once, then none.
    let all: Vec<(u32, Msi)> = (0..SPLIT_IOAPIC_PINS).map(|g| (g, LEVEL_MSI)).collect();
    router.set_routes(&all).unwrap();
    router.set_routes(&[]).unwrap();
    // The in-kernel irqchip has no MSI router for a user-space IOAPIC.
    let kernel = Vm::new(common::options(true)).unwrap();
    assert!(kernel.msi_router().is_none());
    assert_eq!(kernel.irqchip(), Irqchip::Kernel);
}
