//! Everything a KVM VMM writes into x86-64 guest memory before the first vCPU runs.
//!
//! - [`load_kernel`]: an ELF `vmlinux` (64-bit Linux entry or PVH entry) or a bzImage, through
//!   linux-loader, with the checks linux-loader leaves out (ELF class and machine, truncation,
//!   whether the kernel and its bss or decompression buffer fit in guest RAM).
//! - [`load_initrd`]: the initrd, page-aligned at the top of usable low RAM.
//! - [`build_cmdline`]: the kernel command line from a base text plus additions.
//! - [`configure_boot`]: the command line and the zero page with its e820 map (Linux boot
//!   protocol) or `hvm_start_info` with its memory map and module list (PVH).
//! - [`setup_mptable`]: an Intel MultiProcessor Specification table listing the vCPUs.
//! - [`setup_acpi`]: ACPI tables (MADT, hardware-reduced FADT, DSDT with the legacy and
//!   virtio-mmio devices); [`virtio_mmio_cmdline`] announces the same devices on the command
//!   line for kernels booted with `acpi=off`.
//!
//! Every function that writes guest memory takes any vm-memory guest memory
//! (`M:` [`GuestMemoryBackend`](vm_memory::GuestMemoryBackend), what vm-memory before 0.18
//! called `GuestMemory` and what linux-loader's loaders take) and a [`BootLayout`]: where the
//! boot structures go, the limits of their areas, where kernels may load, the APIC addresses
//! and legacy IRQs. [`BootLayout::default()`] is this workspace's layout,
//! [`vmm_memory::layout`]; a VMM with its own address map fills a `BootLayout` of its own. The
//! memory map the guest is told about is the caller's too (a slice of
//! [`MemoryMapEntry`](vmm_memory::layout::MemoryMapEntry)). This crate knows nothing of KVM:
//! it builds and tests on any Linux machine, and every function returns an [`Error`] instead of
//! panicking on bad input.
//!
//! # Example
//!
//! The whole load flow with this workspace's memory and layout, for a tiny hand-made ELF kernel
//! (a real one is a `File`):
//!
//! ```
//! use std::io::Cursor;
//!
//! use vmm_loader::{
//!     build_cmdline, configure_boot, load_initrd, load_kernel, setup_acpi, setup_mptable,
//!     BootLayout, BootProtocol, ElfEntry,
//! };
//! use vmm_memory::layout;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ram = 64 << 20;
//! let mem = vmm_memory::create_guest_memory(ram, Default::default())?;
//! let boot = BootLayout::default();
//!
//! let kernel = load_kernel(&mem, &boot, &mut Cursor::new(tiny_elf(0x20_0000)), ElfEntry::Auto)?;
//! let initrd_image = vec![0x1f; 4096];
//! let initrd = load_initrd(&mem, &boot, &mut Cursor::new(initrd_image), 4096, &kernel)?;
//! let cmdline = build_cmdline("console=ttyS0 reboot=k", &["quiet"], boot.cmdline_max_size)?;
//! configure_boot(&mem, &boot, &kernel, &cmdline, Some(initrd), &layout::memory_map(ram))?;
//! setup_mptable(&mem, &boot, 2)?;
//! setup_acpi(&mem, &boot, 2, &[])?;
//!
//! // The vCPU starts at kernel.entry in 64-bit mode with RSI = boot.zero_page_start (or, for
//! // BootProtocol::Pvh, in 32-bit protected mode with EBX = boot.pvh_info_start).
//! assert_eq!((kernel.protocol, kernel.entry), (BootProtocol::Linux64, 0x20_0000));
//! assert_eq!(initrd.addr, ram - 4096);
//! # Ok(())
//! # }
//! #
//! # /// An ELF64 x86-64 executable with one 16-byte segment (`hlt; jmp $-1`) at `addr`.
//! # fn tiny_elf(addr: u64) -> Vec<u8> {
//! #     let mut elf = Vec::new();
//! #     elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
//! #     elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
//! #     elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
//! #     elf.extend_from_slice(&1u32.to_le_bytes()); // version
//! #     elf.extend_from_slice(&addr.to_le_bytes()); // e_entry
//! #     elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
//! #     elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
//! #     elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
//! #     for half in [64u16, 56, 1, 64, 0, 0] {
//! #         elf.extend_from_slice(&half.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, ...
//! #     }
//! #     elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
//! #     elf.extend_from_slice(&7u32.to_le_bytes()); // RWX
//! #     for word in [120u64, addr, addr, 16, 16, 8] {
//! #         elf.extend_from_slice(&word.to_le_bytes()); // offset, vaddr, paddr, filesz, memsz, align
//! #     }
//! #     elf.extend_from_slice(&[0xf4, 0xeb, 0xfd, 0x90, 0x90, 0x90, 0x90, 0x90]);
//! #     elf.extend_from_slice(&[0x90; 8]);
//! #     elf
//! # }
//! ```
//!
//! Another VMM passes its own memory (any `GuestMemoryBackend`) and layout:
//!
//! ```
//! # use vm_memory::GuestAddress;
//! let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])?;
//! let boot = vmm_loader::BootLayout {
//!     mptable_start: 0xf_0000,
//!     mptable_max_size: 0x1000,
//!     ..Default::default()
//! };
//! vmm_loader::setup_mptable(&mem, &boot, 4)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod acpi;
mod boot_layout;
mod boot_params;
mod cmdline;
mod error;
mod initrd;
mod kernel;
mod mptable;

#[cfg(test)]
mod test_elf;

pub use acpi::setup_acpi;
pub use boot_layout::{BootLayout, GedLayout};
pub use boot_params::configure_boot;
pub use cmdline::build_cmdline;
pub use error::{Error, Result};
pub use initrd::{load_initrd, InitrdRegion};
pub use kernel::{load_kernel, BootProtocol, ElfEntry, LoadedKernel};
pub use linux_loader::cmdline::Cmdline;
pub use mptable::setup_mptable;

/// Where one virtio-mmio device sits, as the guest must be told (DSDT or command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// Guest physical base of its register block.
    pub addr: u64,
    /// Size of the register block in bytes.
    pub size: u64,
    /// Its IOAPIC pin (GSI).
    pub irq: u32,
}

/// The `virtio_mmio.device=<size>@<base>:<irq>` command line entries for `devices`, which Linux
/// (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) uses when it does not read the DSDT (`acpi=off`).
///
/// With ACPI they must not be given as well: the same device would be probed twice.
pub fn virtio_mmio_cmdline(devices: &[VirtioMmioDevice]) -> Vec<String> {
    devices
        .iter()
        .map(|d| {
            let size = if d.size % 1024 == 0 {
                format!("{}K", d.size / 1024)
            } else {
                d.size.to_string()
            };
            format!("virtio_mmio.device={size}@{:#x}:{}", d.addr, d.irq)
        })
        .collect()
}

/// Whether `cmdline` turns ACPI off (`acpi=off`), so devices must be announced on it instead.
pub fn cmdline_disables_acpi(cmdline: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|w| w == "acpi=off")
}

/// A typical microVM command line for the unit tests.
#[cfg(test)]
pub(crate) fn tests_cmdline() -> &'static str {
    "console=ttyS0 reboot=k panic=1 pci=off 8250.nr_uarts=1"
}

#[cfg(test)]
mod virtio_cmdline_tests {
    use super::*;

    #[test]
    fn entries_have_linux_syntax() {
        let devs = [
            VirtioMmioDevice {
                addr: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            VirtioMmioDevice {
                addr: 0xd000_1000,
                size: 0x200,
                irq: 6,
            },
        ];
        assert_eq!(
            virtio_mmio_cmdline(&devs),
            vec![
                "virtio_mmio.device=4K@0xd0000000:5".to_string(),
                "virtio_mmio.device=512@0xd0001000:6".to_string()
            ]
        );
        assert!(cmdline_disables_acpi("console=ttyS0 acpi=off quiet"));
        assert!(!cmdline_disables_acpi("console=ttyS0 xacpi=off acpi=force"));
    }
}
