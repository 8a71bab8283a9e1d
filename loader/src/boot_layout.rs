//! Where the loader puts things in guest memory: one struct of addresses and limits, passed to
//! every function that writes guest memory, so that a VMM with another address map can use the
//! loader unchanged.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_memory::layout;

use crate::error::{Error, Result};

/// The guest addresses and limits the loader needs.
///
/// [`BootLayout::default()`] takes them from [`vmm_memory::layout`], the layout of this
/// workspace's VMM; a VMM with its own address map fills the fields itself, typically starting
/// from the default:
///
/// ```
/// let boot = vmm_loader::BootLayout {
///     cmdline_start: 0x1_0000,
///     acpi_start: 0xf_0000,
///     acpi_max_size: 0x1_0000,
///     ..Default::default()
/// };
/// # assert_eq!(boot.zero_page_start, vmm_memory::layout::ZERO_PAGE_START);
/// ```
///
/// The loader checks what it writes against the limits here (and against the guest memory),
/// and refuses an address that a boot structure stores in 32 bits when it is above 4 GiB; it does
/// not check that the areas of a hand-made layout stay apart from each other or from the
/// kernel. The default's areas do, checked at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootLayout {
    /// The kernel command line (NUL-terminated). The Linux boot protocols store it in 32 bits.
    pub cmdline_start: u64,
    /// Bytes reserved for the command line, NUL included: the longest command line is one less.
    /// Give it to [`build_cmdline`](crate::build_cmdline) as its capacity.
    pub cmdline_max_size: usize,
    /// The Linux zero page (`struct boot_params`, 4 KiB), whose address the vCPU gets in RSI.
    pub zero_page_start: u64,
    /// The PVH `hvm_start_info`, whose address the vCPU gets in EBX.
    pub pvh_info_start: u64,
    /// The PVH module list (one 32-byte entry: the initrd).
    pub pvh_modlist_start: u64,
    /// The PVH memory map (24-byte entries).
    pub pvh_memmap_start: u64,
    /// How many memory map entries fit at [`pvh_memmap_start`](Self::pvh_memmap_start).
    pub pvh_memmap_max_entries: usize,
    /// The MP table (floating pointer first). Linux scans for the floating pointer in the first
    /// KiB of the EBDA, the last KiB of base memory and 0xf0000..0x100000; the table stores
    /// addresses in 32 bits.
    pub mptable_start: u64,
    /// Bytes reserved for the MP table.
    pub mptable_max_size: u64,
    /// The ACPI tables, RSDP first: 16-byte aligned, and in 0xe0000..0x100000 where Linux scans
    /// for the RSDP (no boot structure points at it).
    pub acpi_start: u64,
    /// Bytes reserved for the ACPI tables.
    pub acpi_max_size: u64,
    /// The local APIC's MMIO base, announced in the MP table and the MADT (32 bits).
    pub lapic_addr: u64,
    /// The IOAPIC's MMIO base, announced in the MP table and the MADT (32 bits).
    pub ioapic_addr: u64,
    /// The last IOAPIC pin the MP table routes: ISA IRQs and the pins up to this one, which
    /// virtio-mmio devices announced on the command line use.
    pub ioapic_last_pin: u8,
    /// Whether the machine has the dual 8259 PICs (KVM's in-kernel irqchip has them, a split
    /// irqchip has none): the MADT's PCAT_COMPAT flag, without which Linux does not expect a
    /// PIC to answer.
    pub legacy_pic: bool,
    /// COM1's IRQ, declared in the DSDT.
    pub serial_irq: u32,
    /// The i8042's IRQ, declared in the DSDT.
    pub keyboard_irq: u32,
    /// The first of the three I/O ports of the ACPI sleep control, sleep status and reset
    /// registers, declared in the FADT (with `_S5_` in the DSDT, so that Linux powers off
    /// through it). `None`: no such registers, and a guest's power-off becomes a halt (its
    /// init then usually reboots instead).
    pub acpi_pm_port: Option<u16>,
    /// The ACPI Generic Event Device (`ACPI0013`) with its power button (`PNP0C0C`), declared
    /// in the DSDT. `None`: no power button.
    pub ged: Option<GedLayout>,
    /// Lowest address a kernel or the initrd may use: the boot structures live below.
    pub high_ram_start: u64,
    /// Start of the 32-bit MMIO gap: the kernel and the initrd stay below it (the initrd goes to
    /// the top of the RAM there, see [`low_ram_end`](Self::low_ram_end)).
    pub mmio_gap_start: u64,
}

/// Where the ACPI Generic Event Device is: a one-byte event register (bit 0: the power button
/// was pressed; the guest's `_EVT` method reads it, which clears it) and its interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GedLayout {
    /// Guest physical address of the event register (32 bits).
    pub addr: u64,
    /// Its interrupt (GSI), edge-triggered, active high.
    pub irq: u32,
}

/// The VMM's own layout, from [`vmm_memory::layout`].
const VMM_LAYOUT: BootLayout = BootLayout {
    cmdline_start: layout::CMDLINE_START,
    cmdline_max_size: layout::CMDLINE_MAX_SIZE,
    zero_page_start: layout::ZERO_PAGE_START,
    pvh_info_start: layout::PVH_INFO_START,
    pvh_modlist_start: layout::PVH_MODLIST_START,
    pvh_memmap_start: layout::PVH_MEMMAP_START,
    pvh_memmap_max_entries: layout::PVH_MEMMAP_MAX_ENTRIES,
    mptable_start: layout::EBDA_START,
    mptable_max_size: layout::MPTABLE_MAX_SIZE,
    acpi_start: layout::ACPI_START,
    acpi_max_size: layout::ACPI_MAX_SIZE,
    lapic_addr: layout::LAPIC_START,
    ioapic_addr: layout::IOAPIC_START,
    ioapic_last_pin: layout::IRQ_LAST as u8,
    legacy_pic: true,
    serial_irq: layout::SERIAL_IRQ,
    keyboard_irq: layout::KEYBOARD_IRQ,
    acpi_pm_port: Some(layout::ACPI_PM_PORT),
    ged: Some(GedLayout {
        addr: layout::GED_START,
        irq: layout::GED_IRQ,
    }),
    high_ram_start: layout::HIGH_RAM_START,
    mmio_gap_start: layout::MMIO_GAP_START,
};

// What the loader writes in the default layout stays apart and fits its 32-bit fields.
const _: () = assert!(layout::IRQ_LAST <= u8::MAX as u32);
const _: () = {
    use linux_loader::loader::elf::start_info::{hvm_modlist_entry, hvm_start_info};
    let l = VMM_LAYOUT;
    assert!(l.pvh_info_start + std::mem::size_of::<hvm_start_info>() as u64 <= l.pvh_modlist_start);
    // One module: the initrd.
    assert!(
        l.pvh_modlist_start + std::mem::size_of::<hvm_modlist_entry>() as u64 <= l.pvh_memmap_start
    );
    assert!(l.pvh_memmap_start + 24 * l.pvh_memmap_max_entries as u64 <= l.zero_page_start);
    assert!(l.acpi_start & 15 == 0);
    assert!(l.cmdline_start + (l.cmdline_max_size as u64) <= u32::MAX as u64);
    assert!(l.mptable_start + l.mptable_max_size <= l.acpi_start);
    assert!(l.acpi_start + l.acpi_max_size <= l.high_ram_start);
    assert!(l.lapic_addr <= u32::MAX as u64 && l.ioapic_addr <= u32::MAX as u64);
};

impl Default for BootLayout {
    /// The layout of this workspace's VMM, [`vmm_memory::layout`]: command line at
    /// [`CMDLINE_START`](layout::CMDLINE_START), zero page at
    /// [`ZERO_PAGE_START`](layout::ZERO_PAGE_START), PVH structures from
    /// [`PVH_INFO_START`](layout::PVH_INFO_START), MP table at the
    /// [`EBDA_START`](layout::EBDA_START), ACPI at [`ACPI_START`](layout::ACPI_START), kernels
    /// from [`HIGH_RAM_START`](layout::HIGH_RAM_START) up to the
    /// [`MMIO_GAP_START`](layout::MMIO_GAP_START), the in-kernel irqchip's APIC addresses and
    /// 24 IOAPIC pins, COM1 on IRQ 4 and the i8042 on IRQ 1.
    fn default() -> Self {
        VMM_LAYOUT
    }
}

impl BootLayout {
    /// End (exclusive) of the RAM a kernel and the initrd may use in `mem`: the guest memory
    /// that continues without a hole from [`high_ram_start`](Self::high_ram_start), cut at the
    /// [`mmio_gap_start`](Self::mmio_gap_start). [`high_ram_start`](Self::high_ram_start) itself
    /// when there is no memory there.
    pub fn low_ram_end<M: GuestMemoryBackend>(&self, mem: &M) -> u64 {
        let mut end = self.high_ram_start;
        while end < self.mmio_gap_start {
            let Some(region) = mem.find_region(GuestAddress(end)) else {
                break;
            };
            match region.last_addr().0.checked_add(1) {
                Some(next) => end = next,
                None => return self.mmio_gap_start,
            }
        }
        end.min(self.mmio_gap_start)
    }
}

/// `addr` for a 32-bit field of a boot structure, or the error naming `what` it is.
pub(crate) fn addr32(what: &'static str, addr: u64) -> Result<u32> {
    u32::try_from(addr).map_err(|_| Error::AddressAbove4G { what, addr })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;

    #[test]
    fn low_ram_end_follows_contiguous_memory_up_to_the_gap() {
        let boot = BootLayout::default();
        for (ram, end) in [
            (64 * MIB, 64 * MIB),
            (3 << 30, layout::MMIO_GAP_START),
            (5 << 30, layout::MMIO_GAP_START),
        ] {
            let mem = vmm_memory::create_guest_memory(ram, Default::default()).unwrap();
            assert_eq!(boot.low_ram_end(&mem), end, "{ram:#x}");
            assert_eq!(
                boot.low_ram_end(&mem),
                layout::low_ram_end(vmm_memory::ram_size(&mem))
            );
        }
        // Adjacent regions count as one; a hole ends the RAM; none at all gives the start.
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 2 * MIB as usize),
            (GuestAddress(2 * MIB), 2 * MIB as usize),
            (GuestAddress(8 * MIB), MIB as usize),
        ])
        .unwrap();
        assert_eq!(boot.low_ram_end(&mem), 4 * MIB);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert_eq!(boot.low_ram_end(&mem), layout::HIGH_RAM_START);
    }

    #[test]
    fn addresses_above_4g_are_named() {
        assert_eq!(addr32("LAPIC", 0xfee0_0000).unwrap(), 0xfee0_0000);
        assert!(matches!(
            addr32("LAPIC", 1 << 32),
            Err(Error::AddressAbove4G { what: "LAPIC", addr }) if addr == 1 << 32
        ));
    }
}
