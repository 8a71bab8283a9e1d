//! Everything a KVM VMM writes into x86-64 guest memory before the first vCPU runs.
//!
//! - [`load_kernel`]: an ELF `vmlinux` (64-bit Linux entry or PVH entry) or a bzImage, through
//!   linux-loader, with the checks linux-loader leaves out (ELF class and machine, truncation,
//!   whether the kernel and its bss or decompression buffer fit in guest RAM).
//! - [`load_initrd`]: the initrd, page-aligned at the top of usable low RAM.
//! - [`build_cmdline`]: the kernel command line from the default or the user's, plus additions.
//! - [`configure_boot`]: the command line and the zero page with its e820 map (Linux boot
//!   protocol) or `hvm_start_info` with its memory map and module list (PVH).
//! - [`setup_mptable`]: an Intel MultiProcessor Specification table listing the vCPUs.
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
pub use cmdline::{build_cmdline, DEFAULT_CMDLINE};
pub use error::{Error, Result};
pub use initrd::{load_initrd, InitrdRegion};
pub use kernel::{load_kernel, BootProtocol, ElfEntry, LoadedKernel};
pub use linux_loader::cmdline::Cmdline;
pub use mptable::setup_mptable;
