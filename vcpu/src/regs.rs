//! Boot-time register state: GDT, identity page tables, segment and control registers for
//! long-mode and 32-bit PVH entry, general registers, FPU, MSRs and LAPIC LINT pins.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::boot::{BootEntry, GuestLayout, BOOT_GDT_ENTRIES};
use crate::error::{Error, Result};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_PS_2M: u64 = 0x80;

/// GDT selectors (index * 8).
const SEL_CODE64: u16 = 1 << 3;
const SEL_DATA: u16 = 2 << 3;
const SEL_TSS: u16 = 3 << 3;
const SEL_CODE32: u16 = 4 << 3;

/// Builds a GDT descriptor from flags (access byte in 7:0, flags nibble in 15:12), base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = u64::from(flags);
    let base = u64::from(base);
    let limit = u64::from(limit);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// Decodes a GDT descriptor into the segment KVM wants for selector `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let limit_raw = ((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff);
    let granularity = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        // With 4 KiB granularity the limit counts pages; KVM wants bytes.
        limit: if granularity == 1 {
            ((limit_raw << 12) | 0xfff) as u32
        } else {
            limit_raw as u32
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

/// The boot GDT: null, 64-bit code, data, TSS, 32-bit code.
pub fn boot_gdt() -> [u64; BOOT_GDT_ENTRIES] {
    [
        gdt_entry(0, 0, 0),
        gdt_entry(0xa09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
        gdt_entry(0xc09b, 0, 0xfffff),
    ]
}

fn write<M: GuestMemory + ?Sized, T: vm_memory::ByteValued>(
    mem: &M,
    value: T,
    addr: u64,
    what: &'static str,
) -> Result<()> {
    mem.write_obj(value, GuestAddress(addr))
        .map_err(|_| Error::GuestMemory { what })
}

/// Writes the GDT and the empty IDT (and for long-mode entry the identity page tables) where
/// `layout` places them, and returns the special registers for `entry`.
pub fn setup_sregs<M: GuestMemory + ?Sized>(
    mem: &M,
    layout: &GuestLayout,
    entry: BootEntry,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs> {
    let gdt = boot_gdt();
    for (i, descriptor) in gdt.iter().enumerate() {
        write(mem, *descriptor, layout.gdt + 8 * i as u64, "GDT")?;
    }
    write(mem, 0u64, layout.idt, "IDT")?;
    sregs.gdt.base = layout.gdt;
    sregs.gdt.limit = (8 * gdt.len() - 1) as u16;
    sregs.idt.base = layout.idt;
    sregs.idt.limit = 7;

    let data = segment_from_gdt(gdt[2], SEL_DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], SEL_TSS);

    match entry {
        BootEntry::Long64 { .. } => {
            setup_page_tables(mem, layout)?;
            sregs.cs = segment_from_gdt(gdt[1], SEL_CODE64);
            sregs.cr3 = layout.pml4;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootEntry::Protected32 { .. } => {
            sregs.cs = segment_from_gdt(gdt[4], SEL_CODE32);
            sregs.cr0 = (sregs.cr0 | X86_CR0_PE | X86_CR0_ET) & !X86_CR0_PG;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(sregs)
}

/// Identity-maps the first 1 GiB with 2 MiB pages: enough for the kernel's own early page tables.
fn setup_page_tables<M: GuestMemory + ?Sized>(mem: &M, layout: &GuestLayout) -> Result<()> {
    write(mem, layout.pdpt | PAGE_PRESENT_RW, layout.pml4, "PML4")?;
    write(mem, layout.pd | PAGE_PRESENT_RW, layout.pdpt, "PDPT")?;
    for i in 0..512u64 {
        write(
            mem,
            (i << 21) | PAGE_PRESENT_RW | PAGE_PS_2M,
            layout.pd + i * 8,
            "PD",
        )?;
    }
    Ok(())
}

/// General registers for the boot vCPU (the stack from `layout` for long-mode entry).
pub fn boot_regs(layout: &GuestLayout, entry: BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and always set
        ..Default::default()
    };
    match entry {
        BootEntry::Long64 { rip, boot_params } => {
            regs.rip = rip;
            regs.rsp = layout.boot_stack_pointer;
            regs.rbp = layout.boot_stack_pointer;
            regs.rsi = boot_params;
        }
        BootEntry::Protected32 { eip, start_info } => {
            regs.rip = eip;
            regs.rbx = start_info;
        }
    }
    regs
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSR numbers set at boot.
pub mod msr {
    /// IA32_SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// IA32_MISC_ENABLE.
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// IA32_MTRR_DEF_TYPE.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// STAR.
    pub const STAR: u32 = 0xc000_0081;
    /// LSTAR.
    pub const LSTAR: u32 = 0xc000_0082;
    /// CSTAR.
    pub const CSTAR: u32 = 0xc000_0083;
    /// SFMASK.
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// KERNEL_GS_BASE.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// IA32_TSC.
    pub const TSC: u32 = 0x10;
}

/// Boot MSRs: syscall/sysenter cleared, fast strings on, MTRRs on with write-back default (else
/// the guest maps all RAM uncached).
pub fn boot_msrs() -> Msrs {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_TYPE_WB: u64 = 6;
    Msrs::from_entries(&[
        entry(msr::SYSENTER_CS, 0),
        entry(msr::SYSENTER_ESP, 0),
        entry(msr::SYSENTER_EIP, 0),
        entry(msr::STAR, 0),
        entry(msr::CSTAR, 0),
        entry(msr::KERNEL_GS_BASE, 0),
        entry(msr::SYSCALL_MASK, 0),
        entry(msr::LSTAR, 0),
        entry(msr::TSC, 0),
        entry(msr::MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(msr::MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WB),
    ])
    .expect("11 entries fit the MSR array")
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as _;
    }
}

/// Routes LINT0 to ExtINT (the legacy PIC) and LINT1 to NMI, as a BIOS leaves them.
pub fn set_lint_pins(lapic: &mut kvm_lapic_state) {
    let set_mode = |reg: u32, mode: u32| (reg & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, set_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, set_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::test_layout as guest_layout;
    use vmm_memory::{create_guest_memory, layout, MemoryOptions};

    #[test]
    fn gdt_entries_round_trip_through_segments() {
        let gdt = boot_gdt();
        let code = segment_from_gdt(gdt[1], SEL_CODE64);
        assert_eq!(
            (code.l, code.db, code.present, code.s, code.type_),
            (1, 0, 1, 1, 0xb)
        );
        assert_eq!(code.limit, 0xffff_ffff);
        let code32 = segment_from_gdt(gdt[4], SEL_CODE32);
        assert_eq!((code32.l, code32.db), (0, 1));
        let data = segment_from_gdt(gdt[2], SEL_DATA);
        assert_eq!((data.type_, data.db, data.g, data.base), (0x3, 1, 1, 0));
        assert_eq!(segment_from_gdt(gdt[0], 0).unusable, 1);
        assert_eq!(gdt_entry(0x808b, 0x1234_5678, 0x67) >> 56, 0x12);
    }

    #[test]
    fn long_mode_sregs_and_page_tables() {
        let mem = create_guest_memory(16 << 20, MemoryOptions::default()).unwrap();
        let entry = BootEntry::Long64 {
            rip: 0x100_0000,
            boot_params: layout::ZERO_PAGE_START,
        };
        let sregs = setup_sregs(&mem, &guest_layout(), entry, kvm_sregs::default()).unwrap();
        assert_eq!(sregs.cr3, layout::PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        assert_eq!(sregs.cs.selector, SEL_CODE64);
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, layout::PDPTE_START);
        let last_pde: u64 = mem
            .read_obj(GuestAddress(layout::PDE_START + 511 * 8))
            .unwrap();
        assert_eq!(last_pde & !0xfff, 511 << 21);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(layout::BOOT_GDT_START + 8))
                .unwrap(),
            boot_gdt()[1]
        );
        let regs = boot_regs(&guest_layout(), entry);
        assert_eq!(
            (regs.rip, regs.rsi, regs.rflags),
            (0x100_0000, layout::ZERO_PAGE_START, 2)
        );
    }

    #[test]
    fn pvh_entry_is_flat_protected_mode_without_paging() {
        let mem = create_guest_memory(16 << 20, MemoryOptions::default()).unwrap();
        let entry = BootEntry::Protected32 {
            eip: 0x10_0000,
            start_info: layout::PVH_INFO_START,
        };
        let sregs = setup_sregs(&mem, &guest_layout(), entry, kvm_sregs::default()).unwrap();
        assert_eq!(sregs.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE);
        assert_eq!((sregs.cr4, sregs.efer), (0, 0));
        assert_eq!(
            (sregs.cs.db, sregs.cs.l, sregs.cs.limit),
            (1, 0, 0xffff_ffff)
        );
        assert_eq!(
            boot_regs(&guest_layout(), entry).rbx,
            layout::PVH_INFO_START
        );
    }

    #[test]
    fn lint_pins() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x0001_0000);
        set_lint_pins(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT1), 0x400);
    }

    #[test]
    fn boot_msrs_enable_write_back_mtrrs() {
        let msrs = boot_msrs();
        let mtrr = msrs
            .as_slice()
            .iter()
            .find(|e| e.index == msr::MTRR_DEF_TYPE)
            .unwrap();
        assert_eq!(mtrr.data, (1 << 11) | 6);
    }
}
