//! The VMM core: turns a [`vmm_api::VmConfig`] into a running VM (memory, KVM VM, devices,
//! kernel, vCPUs) and runs it to its end, with one thread per vCPU and one event-loop thread on
//! event-manager.
//!
//! [`BuiltVm::build`] (or [`BuiltVm::restore`] from a snapshot) builds it; [`Vmm::start`] runs
//! it and gives typed operations ([`Vmm::pause`], [`Vmm::resume`], [`Vmm::snapshot`],
//! [`Vmm::set_balloon_target`], [`Vmm::state`], [`Vmm::shutdown`]); the control API maps its
//! requests onto them in one place (`dispatch.rs`), and [`Session`] drives one VM's whole life
//! through those requests, as the API server does, without a socket.
//!
//! The configuration it takes ([`vmm_api::VmConfig`]) and the control API's requests come from
//! `vmm-api`; `vmm-cli` composes the two with `vmm-fleet`.

mod api_server;
mod builder;
mod control;
mod dispatch;
mod error;
mod event_loop;
mod events;
pub mod exit_stats;
mod exits;
mod ioapic;
pub mod logger;
pub mod metrics;
pub mod output_file;
mod persist;
mod pvm;
pub mod seccomp;
mod session;
pub mod snapshot;
mod stoppable;
mod terminal;
pub mod thread_names;
mod vcpu_threads;
mod virtio_devices;
mod vmm;

/// Locks `mutex`, also after a thread panicked while holding it: that is a bug, but the device
/// state behind it is still usable for shutting the VM down.
pub(crate) fn lock<T: ?Sized>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub use api_server::DEFAULT_SOCKET_MODE;
pub use builder::BuiltVm;
pub use control::{restore_vm, run_api_config, run_vm, run_with_api, ApiOptions};
pub use error::{chain as error_chain, Error, Result};
pub use events::{ShutdownReason, CONSOLE_QUIT_EXIT_CODE};
pub use persist::{merge_diff_snapshot, RestoreSource, VmSnapshot};
pub use pvm::{is_pvm_host, PVM_EXPLANATION};
pub use seccomp::{SeccompConfig, SeccompError};
pub use session::Session;
pub use virtio_devices::{disk_format, AttachedDevice};
pub use vmm::{StartMode, Vmm};
