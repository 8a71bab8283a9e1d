//! Where the boot vCPU starts ([`BootEntry`]) and where in guest physical memory the VM and vCPU
//! setup put their structures ([`GuestLayout`]). The VMM's address map decides both: this crate
//! writes guest memory only at the addresses it is given.

use crate::error::{Error, Result};

/// Where the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// 64-bit Linux boot protocol: long mode, identity paging, RSI = boot_params.
    Long64 {
        /// Entry point.
        rip: u64,
        /// Guest address of boot_params.
        boot_params: u64,
    },
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Protected32 {
        /// Entry point.
        eip: u64,
        /// Guest address of hvm_start_info.
        start_info: u64,
    },
}

/// Guest physical addresses that VM creation and boot vCPU setup use, as the VMM's address map
/// places them. Nothing here has a default: a VMM with its own layout passes its own.
///
/// [`crate::Vm::new`] checks them with [`GuestLayout::validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    /// Three pages KVM needs for the TSS on Intel hosts (KVM_SET_TSS_ADDR): outside RAM, below
    /// 4 GiB (inside the 32-bit MMIO gap, say).
    pub tss: u64,
    /// The boot GDT: [`BOOT_GDT_ENTRIES`] descriptors of 8 bytes.
    pub gdt: u64,
    /// The (empty) boot IDT: one 8-byte descriptor.
    pub idt: u64,
    /// Level 4 page table of the boot identity map (4 KiB, page aligned; long-mode entry only).
    pub pml4: u64,
    /// Page-directory-pointer table of the boot identity map (4 KiB, page aligned).
    pub pdpt: u64,
    /// Page directory of the boot identity map: 512 x 2 MiB = the first 1 GiB (4 KiB, page
    /// aligned).
    pub pd: u64,
    /// Initial RSP and RBP of the boot vCPU for long-mode entry.
    pub boot_stack_pointer: u64,
}

const PAGE: u64 = 4096;

/// Descriptors in the boot GDT that [`crate::regs::boot_gdt`] builds: null, 64-bit code, data,
/// TSS, 32-bit code.
pub const BOOT_GDT_ENTRIES: usize = 5;

impl GuestLayout {
    /// Checks that the page tables are page aligned, that nothing wraps around the address
    /// space, and that the GDT, the IDT and the three page tables do not overlap.
    pub fn validate(&self) -> Result<()> {
        let invalid = |detail: String| Err(Error::InvalidLayout(detail));
        for (what, addr) in [("PML4", self.pml4), ("PDPT", self.pdpt), ("PD", self.pd)] {
            if addr % PAGE != 0 {
                return invalid(format!("{what} at {addr:#x} is not 4 KiB aligned"));
            }
        }
        let gdt_bytes = 8 * BOOT_GDT_ENTRIES as u64;
        let ranges = [
            ("GDT", self.gdt, gdt_bytes),
            ("IDT", self.idt, 8),
            ("PML4", self.pml4, PAGE),
            ("PDPT", self.pdpt, PAGE),
            ("PD", self.pd, PAGE),
        ];
        for &(what, start, len) in &ranges {
            if start.checked_add(len).is_none() {
                return invalid(format!("{what} at {start:#x} runs past the address space"));
            }
        }
        for (i, &(what, start, len)) in ranges.iter().enumerate() {
            for &(other, other_start, other_len) in &ranges[i + 1..] {
                if start < other_start + other_len && other_start < start + len {
                    return invalid(format!(
                        "{what} at {start:#x} overlaps {other} at {other_start:#x}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// vmm-memory's address map, as vmm-core passes it: for this crate's unit tests.
#[cfg(test)]
pub(crate) fn test_layout() -> GuestLayout {
    use vmm_memory::layout;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> GuestLayout {
        let layout = test_layout();
        assert_eq!(
            (layout.gdt, layout.idt, layout.pdpt),
            (0x500, 0x540, 0xa000)
        );
        layout
    }

    #[test]
    fn a_sound_layout_passes() {
        layout().validate().unwrap();
    }

    #[test]
    fn misaligned_and_overlapping_tables_are_refused() {
        let misaligned = GuestLayout {
            pdpt: 0xa008,
            ..layout()
        };
        let err = misaligned.validate().unwrap_err().to_string();
        assert!(err.contains("PDPT at 0xa008 is not 4 KiB aligned"), "{err}");

        // The GDT has 5 descriptors: 0x500..0x528; an IDT at 0x520 overlaps it.
        let overlapping = GuestLayout {
            idt: 0x520,
            ..layout()
        };
        let err = overlapping.validate().unwrap_err().to_string();
        assert!(err.contains("GDT at 0x500 overlaps IDT at 0x520"), "{err}");

        let same_page = GuestLayout {
            pd: 0x9000,
            ..layout()
        };
        assert!(same_page.validate().is_err());

        let wrapping = GuestLayout {
            pd: !0xfff,
            ..layout()
        };
        assert!(wrapping.validate().is_err());
    }
}
