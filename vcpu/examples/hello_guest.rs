//! The smallest use of `vmm-vcpu`: a VM with 2 MiB of RAM, a few bytes of x86-64 machine code
//! that print "Hello, KVM!" on port 0x3f8 and halt, and one vCPU whose port writes go to an
//! [`ExitHandler`] that prints each of them.
//!
//! ```text
//! cargo run -p vmm-vcpu --example hello_guest
//! ```
//!
//! It needs /dev/kvm (PVM works: this code runs through KVM's emulator there). There is no
//! in-kernel irqchip, so the guest's HLT comes back to us and ends the run.

use std::sync::Mutex;

use vm_memory::{Bytes, GuestAddress};
use vmm_memory::{create_guest_memory, layout, GuestMemoryMmap, MemoryOptions};
use vmm_vcpu::{BootEntry, ExitHandler, GuestLayout, Irqchip, VcpuExitReason, Vm, VmOptions};

/// Where the code goes: the first byte above the low 1 MiB (what the boot layout reserves).
const CODE_ADDR: u64 = layout::HIGH_RAM_START;
/// The port the guest writes to (COM1's data register, but nothing here emulates a UART).
const PORT: u16 = 0x3f8;

/// 64-bit code: the vCPU starts in long mode with identity paging (see `BootEntry::Long64`).
#[rustfmt::skip]
const GUEST_CODE: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03,             //  0: mov dx, 0x3f8
    0x48, 0x8d, 0x35, 0x09, 0, 0, 0,    //  4: lea rsi, [rip + 9]     ; the message, at 20
    0xac,                               // 11: lodsb                  ; al = *rsi++
    0x84, 0xc0,                         // 12: test al, al
    0x74, 0x03,                         // 14: jz 19                  ; NUL: done
    0xee,                               // 16: out dx, al             ; a port-write exit
    0xeb, 0xf8,                         // 17: jmp 11
    0xf4,                               // 19: hlt                    ; ends the run
    b'H', b'e', b'l', b'l', b'o', b',', b' ', b'K', b'V', b'M', b'!', b'\n', 0, // 20: the message
];

/// Prints every port write and keeps the bytes written to [`PORT`].
#[derive(Default)]
pub struct PrintingHandler {
    /// What the guest wrote to [`PORT`].
    pub text: Mutex<Vec<u8>>,
}

impl ExitHandler for PrintingHandler {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        println!("guest reads port {port:#x}: answering all ones");
        data.fill(0xff);
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        println!(
            "guest writes port {port:#x}: {data:02x?} {:?}",
            String::from_utf8_lossy(data)
        );
        if port == PORT {
            self.text
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(data);
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        println!("guest reads MMIO {addr:#x}: answering all ones");
        data.fill(0xff);
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        println!("guest writes MMIO {addr:#x}: {data:02x?}");
    }
}

/// Guest RAM with the code in it, and a VM whose memory slots map that RAM.
fn create_vm() -> Result<(Vm, GuestMemoryMmap), Box<dyn std::error::Error>> {
    let mem = create_guest_memory(layout::MIN_RAM_BYTES, MemoryOptions::default())?;
    mem.write_slice(GUEST_CODE, GuestAddress(CODE_ADDR))?;
    // No irqchip: HLT then exits to user space instead of waiting for an interrupt.
    let vm = Vm::new(VmOptions {
        irqchip: Irqchip::None,
        layout: guest_layout(),
    })?;
    // SAFETY: `mem` is one anonymous mapping per region, used only through vm-memory's volatile
    // slices, and it outlives `vm` and its vCPU: the caller keeps both and drops the VM first.
    unsafe { vm.register_memory(&mem) }?;
    Ok((vm, mem))
}

/// Runs the guest until it halts; the handler sees every exit.
pub fn run_guest(handler: &PrintingHandler) -> Result<VcpuExitReason, Box<dyn std::error::Error>> {
    let (vm, mem) = create_vm()?;
    let mut vcpu = vm.create_vcpu(0)?;
    let entry = BootEntry::Long64 {
        rip: CODE_ADDR,
        boot_params: 0, // RSI; the code above sets its own
    };
    // CPUID, MSRs, FPU, then for the boot vCPU: GDT, page tables, long-mode registers.
    vcpu.configure(&vm, &mem, Some(entry), 1)?;
    let reason = vcpu.run(handler)?;
    // The vCPU and the VM go before the memory they point into.
    drop(vcpu);
    drop(vm);
    drop(mem);
    Ok(reason)
}

fn main() {
    let handler = PrintingHandler::default();
    match run_guest(&handler) {
        Ok(reason) => {
            let text = handler.text.lock().unwrap_or_else(|e| e.into_inner());
            println!(
                "vCPU stopped: {reason:?}; the guest said {:?}",
                String::from_utf8_lossy(&text)
            );
        }
        Err(e) => {
            eprintln!("hello_guest: error: {e}");
            std::process::exit(1);
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
