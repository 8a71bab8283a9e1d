//! The VMM core: turns a [`VmConfig`] into a running VM (memory, KVM VM, devices, kernel, vCPUs)
//! and runs it to its end, with one thread per vCPU and one event-loop thread on event-manager.
//!
//! The configuration it takes ([`vmm_api::VmConfig`]) and the control API's requests come from
//! `vmm-api`; `vmm-cli` composes the two with `vmm-fleet`.

mod api_server;
mod control;
mod error;
mod event_loop;
mod exits;
mod pvm;
pub mod snapshot;
mod terminal;
mod vcpu_threads;
mod virtio_devices;
mod vm;

/// Locks `mutex`, also after a thread panicked while holding it: that is a bug, but the device
/// state behind it is still usable for shutting the VM down.
pub(crate) fn lock<T: ?Sized>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub use control::{merge_diff_snapshot, restore_vm, run_with_api, RestoreSource, VmSnapshot};
pub use error::{chain as error_chain, Error, Result};
pub use pvm::{is_pvm_host, PVM_EXPLANATION};
pub use virtio_devices::AttachedDevice;
pub use vm::{run_vm, BuiltVm, ShutdownReason};
