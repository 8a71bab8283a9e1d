//! The x86-64 guest physical address map, defined once for every crate of the VMM.
//!
//! ```text
//! 0x0000_0000  real-mode IVT/BDA (left zero)
//! 0x0000_0500  boot GDT, then boot IDT
//! 0x0000_6000  PVH start info (hvm_start_info) and its memory map
//! 0x0000_7000  zero page (struct boot_params) for the Linux boot protocol
//! 0x0000_8ff0  boot stack pointer (grows down)
//! 0x0000_9000  identity page tables: PML4, PDPT, PD (first 1 GiB in 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA: MP table (reserved in e820 up to 1 MiB)
//! 0x000a_0000  legacy VGA/ROM hole (not RAM)
//! 0x000e_0000  ACPI tables: RSDP, XSDT, FADT, DSDT, MADT
//! 0x0010_0000  RAM: kernel, initrd (top of low RAM), free memory
//! 0xc000_0000  32-bit MMIO gap: ACPI GED, boot timer, virtio-mmio window, IOAPIC, LAPIC,
//!              KVM's TSS
//! 0x1_0000_0000 RAM above 4 GiB for guests larger than the gap start
//! ```

/// Start of the boot GDT written for long-mode and PVH entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// Number of GDT entries we write (null, code64, data, tss, code32).
pub const BOOT_GDT_MAX: usize = 5;
/// Start of the (empty) boot IDT.
pub const BOOT_IDT_START: u64 = 0x540;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initrd), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map entries, after the module list.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Room for PVH memory map entries (each 24 bytes) before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = (ZERO_PAGE_START - PVH_MEMMAP_START) as usize / 24;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level 4 page table of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory of the boot identity map (512 x 2 MiB = the first 1 GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we pass, including the NUL (x86 Linux's COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area, where the MP table goes. From here to [`HIGH_RAM_START`] the e820 map
/// says reserved; the MP table may run past 640 KiB into the legacy hole for many vCPUs.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory (the VGA/ROM hole follows).
pub const EBDA_END: u64 = 0xa0000;
/// Room for the MP table: from the EBDA to the ACPI tables.
pub const MPTABLE_MAX_SIZE: u64 = ACPI_START - EBDA_START;
/// ACPI tables, RSDP first: where Linux scans for the RSDP (0xE0000..0xFFFFF) when no boot
/// protocol field points at it. Inside the reserved range below 1 MiB.
pub const ACPI_START: u64 = 0xe_0000;
/// Room for the ACPI tables.
pub const ACPI_MAX_SIZE: u64 = HIGH_RAM_START - ACPI_START;
/// First byte of RAM above the legacy hole: kernels and the initrd load at or above it.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap: no RAM between here and 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Where RAM continues above the gap.
pub const RAM_ABOVE_4G_START: u64 = MMIO_GAP_END;
/// The ACPI Generic Event Device's event register (the power button), the page below the boot
/// timer's.
pub const GED_START: u64 = BOOT_TIMER_START - GED_SIZE;
/// Bytes of MMIO space the GED takes.
pub const GED_SIZE: u64 = 0x1000;
/// Firecracker's boot timer (`--boot-timer`): the page just below the virtio-mmio window.
pub const BOOT_TIMER_START: u64 = VIRTIO_MMIO_START - 0x1000;
/// Start of the virtio-mmio device window inside the gap.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Bytes of MMIO space each virtio-mmio device gets.
pub const VIRTIO_MMIO_DEVICE_SIZE: u64 = 0x1000;
/// Size of the whole virtio-mmio window.
pub const VIRTIO_MMIO_WINDOW_SIZE: u64 = 0x1000_0000;
/// The IOAPIC's MMIO base (fixed by the in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Three pages KVM needs for the TSS on Intel hosts (KVM_SET_TSS_ADDR), inside the gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// I/O ports of the ACPI sleep control register (the FADT's `SLEEP_CONTROL_REG`: S5 powers
/// off), the sleep status register (`SLEEP_STATUS_REG`) and the reset register (`RESET_REG`),
/// one byte each, in that order. 0x600 as in Cloud Hypervisor; no legacy device sits there.
pub const ACPI_PM_PORT: u16 = 0x600;
/// How many ports from [`ACPI_PM_PORT`] the ACPI power-management registers take.
pub const ACPI_PM_PORT_LEN: u16 = 3;

/// Legacy IRQ of the i8042 keyboard port.
pub const KEYBOARD_IRQ: u32 = 1;
/// Legacy IRQ of the ACPI Generic Event Device (the power button): COM2's, which no device of
/// this VMM uses (the default command line says `8250.nr_uarts=1`).
pub const GED_IRQ: u32 = 3;
/// Legacy IRQ of the first serial port (COM1).
pub const SERIAL_IRQ: u32 = 4;
/// First and last IOAPIC pins handed to virtio-mmio devices.
pub const VIRTIO_IRQ_FIRST: u32 = 5;
/// Last IOAPIC pin (the in-kernel IOAPIC has 24).
pub const IRQ_LAST: u32 = 23;
/// How many virtio-mmio devices fit: one IOAPIC pin each.
pub const VIRTIO_MMIO_SLOTS: usize = (IRQ_LAST - VIRTIO_IRQ_FIRST + 1) as usize;

/// Smallest guest RAM we accept: the boot structures plus the first MiB of high RAM.
pub const MIN_RAM_BYTES: u64 = 2 << 20;
/// Largest guest RAM we accept (far beyond any host; a guard against typos and overflow).
pub const MAX_RAM_BYTES: u64 = 1 << 46;

// The layout's own invariants, checked at compile time.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);
const _: () = assert!(VIRTIO_MMIO_START + VIRTIO_MMIO_WINDOW_SIZE <= IOAPIC_START);
const _: () = assert!(GED_START >= MMIO_GAP_START && GED_START + GED_SIZE <= BOOT_TIMER_START);
const _: () =
    assert!(GED_IRQ < VIRTIO_IRQ_FIRST && GED_IRQ != SERIAL_IRQ && GED_IRQ != KEYBOARD_IRQ);
const _: () = assert!(KVM_TSS_ADDRESS > LAPIC_START && KVM_TSS_ADDRESS + 3 * 4096 <= MMIO_GAP_END);

/// What an e820 / PVH memory map entry describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM (e820 type 1).
    Ram,
    /// Reserved (e820 type 2).
    Reserved,
}

impl MemoryKind {
    /// The e820 type number, also used by the PVH memory map.
    pub fn e820_type(self) -> u32 {
        match self {
            MemoryKind::Ram => 1,
            MemoryKind::Reserved => 2,
        }
    }
}

/// One entry of the guest's physical memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// First guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Kind of memory.
    pub kind: MemoryKind,
}

/// The guest RAM regions (start, length) for `ram_bytes` of RAM: below the MMIO gap, then above 4 GiB.
pub fn ram_regions(ram_bytes: u64) -> Vec<(u64, u64)> {
    if ram_bytes <= MMIO_GAP_START {
        vec![(0, ram_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (RAM_ABOVE_4G_START, ram_bytes - MMIO_GAP_START),
        ]
    }
}

/// The end (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(ram_bytes: u64) -> u64 {
    ram_bytes.min(MMIO_GAP_START)
}

/// The memory map the guest sees (e820 for Linux, memmap for PVH), sorted by address.
///
/// Conventional memory stops at the EBDA; from there to 1 MiB (MP table, legacy hole) is reserved;
/// the rest follows [`ram_regions`].
pub fn memory_map(ram_bytes: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: MemoryKind::Ram,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: HIGH_RAM_START - EBDA_START,
            kind: MemoryKind::Reserved,
        },
    ];
    let low_end = low_ram_end(ram_bytes);
    if low_end > HIGH_RAM_START {
        map.push(MemoryMapEntry {
            addr: HIGH_RAM_START,
            size: low_end - HIGH_RAM_START,
            kind: MemoryKind::Ram,
        });
    }
    if ram_bytes > MMIO_GAP_START {
        map.push(MemoryMapEntry {
            addr: RAM_ABOVE_4G_START,
            size: ram_bytes - MMIO_GAP_START,
            kind: MemoryKind::Ram,
        });
    }
    map
}

/// Guest physical address of the virtio-mmio device in slot `index`, if the window has room.
pub fn virtio_mmio_slot(index: u32) -> Option<u64> {
    let offset = u64::from(index).checked_mul(VIRTIO_MMIO_DEVICE_SIZE)?;
    (offset < VIRTIO_MMIO_WINDOW_SIZE).then_some(VIRTIO_MMIO_START + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let five_gib = 5u64 << 30;
        let regions = ram_regions(five_gib);
        assert_eq!(regions, vec![(0, 3 << 30), (4 << 30, 2 << 30)]);
        assert_eq!(regions.iter().map(|r| r.1).sum::<u64>(), five_gib);
    }

    #[test]
    fn memory_map_reserves_ebda_and_skips_the_hole_and_gap() {
        let map = memory_map(5 << 30);
        assert_eq!(map.len(), 4);
        assert_eq!(map[1].kind, MemoryKind::Reserved);
        assert_eq!(map[2].addr, HIGH_RAM_START);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!(map[3].addr, 4 << 30);
        assert_eq!(map[3].size, 2 << 30);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == MemoryKind::Ram)
            .map(|e| e.size)
            .sum();
        // All RAM but the EBDA and the 640 KiB..1 MiB hole is usable.
        assert_eq!(ram, (5 << 30) - (HIGH_RAM_START - EBDA_START));
        assert_eq!(map[1].addr + map[1].size, HIGH_RAM_START);
        for pair in map.windows(2) {
            assert!(
                pair[0].addr + pair[0].size <= pair[1].addr,
                "overlap in {map:?}"
            );
        }
    }

    #[test]
    fn fixed_structures_do_not_overlap() {
        let mut areas = [
            (BOOT_GDT_START, 8 * BOOT_GDT_MAX as u64),
            (BOOT_IDT_START, 8),
            (PVH_INFO_START, ZERO_PAGE_START - PVH_INFO_START),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (EBDA_START, EBDA_END - EBDA_START),
            (ACPI_START, ACPI_MAX_SIZE),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
        }
    }

    #[test]
    fn virtio_slots_stay_in_the_window() {
        assert_eq!(virtio_mmio_slot(0), Some(VIRTIO_MMIO_START));
        assert_eq!(virtio_mmio_slot(1), Some(VIRTIO_MMIO_START + 0x1000));
        assert_eq!(virtio_mmio_slot(u32::MAX), None);
    }
}
