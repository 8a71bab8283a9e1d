//! What the tier-2 tests share: the VM options with vmm-memory's address map, as vmm-core
//! passes them.

use vmm_memory::layout;
use vmm_vcpu::{GuestLayout, Irqchip, VmOptions};

/// vmm-memory's address map.
pub fn guest_layout() -> GuestLayout {
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

/// A VM with or without the in-kernel irqchip, in vmm-memory's address map.
pub fn options(irqchip: bool) -> VmOptions {
    with_irqchip(if irqchip {
        Irqchip::Kernel
    } else {
        Irqchip::None
    })
}

/// A VM with the given interrupt controllers, in vmm-memory's address map.
pub fn with_irqchip(irqchip: Irqchip) -> VmOptions {
    VmOptions {
        irqchip,
        layout: guest_layout(),
    }
}
