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
//! All addresses come from [`vmm_memory::layout`]. This crate knows nothing of KVM: it builds and
//! tests on any Linux machine, and every function returns an [`Error`] instead of panicking on
//! bad input.

mod acpi;
mod boot_params;
mod cmdline;
mod error;
mod initrd;
mod kernel;
mod mptable;

#[cfg(test)]
mod test_elf;

pub use acpi::setup_acpi;
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
