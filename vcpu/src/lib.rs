//! KVM VM and vCPU setup for x86-64 guests on `kvm-ioctls`: opening /dev/kvm with clear errors,
//! the in-kernel irqchip and PIT or the split irqchip (MSI routes for a user-space IOAPIC),
//! memory slots, irqfd/ioeventfd, per-vCPU CPUID normalization,
//! boot MSRs, long-mode and 32-bit (PVH) entry registers, FPU, LAPIC, and the run loop that
//! hands port and MMIO exits to an [`ExitHandler`]; vCPU and VM state for snapshots ([`state`])
//! and KVM's dirty log of guest memory.
//!
//! This crate knows KVM but no devices: `vmm-core` implements [`ExitHandler`] with its buses.
//! Nor does it know a VMM's address map or memory type: guest memory is any vm-memory
//! `GuestMemory` (`GuestMemoryBackend` where KVM needs the regions' host addresses), and the
//! addresses it writes to come from the [`GuestLayout`] the VM is created with. It logs
//! through the `log` crate.
//!
//! # Examples
//!
//! `examples/hello_guest.rs` (in this crate's folder) uses this crate on its own: guest memory
//! from `vmm-memory` with a few bytes of x86-64 code in it, a [`Vm`] without an irqchip, one
//! [`Vcpu`] configured for long mode, and an [`ExitHandler`] that prints each port write until
//! the guest halts. Run it with `cargo run -p vmm-vcpu --example hello_guest` (it needs
//! /dev/kvm; PVM's is enough). `examples/minimal-vmm/` at the workspace root boots a whole Linux
//! kernel with this crate, `vmm-memory`, `vmm-loader` and `vmm-devices`, without `vmm-core`.

pub mod boot;
mod caps;
pub mod cpuid;
mod error;
pub mod regs;
pub mod run;
pub mod state;
pub mod vm;

pub use boot::{BootEntry, GuestLayout};
pub use error::{Error, Result};
pub use run::{ExitHandler, OtherExit, Vcpu, VcpuExitReason, VcpuKicker};
pub use state::{CpuidEntry, FpuState, IrqchipState, KvmVmState, MsrEntry, VcpuState};
pub use vm::{is_pvm_host, DirtyBitmap, Irqchip, Msi, MsiRouter, Vm, VmOptions, SPLIT_IOAPIC_PINS};
pub use vmm_sys_util::eventfd::EventFd;
