//! The names of the VMM's threads, in one place: tools outside the VMM find threads by them
//! (Kata Containers moves `fc_vcpu N` into the vCPU cgroup and reads `fc_api`; both are
//! Firecracker's names), and the seccomp filters are chosen by them.

/// The API thread (Firecracker's name).
pub const API: &str = "fc_api";
/// The event loop (devices, backends, timers).
pub const EVENTS: &str = "vmm-events";
/// The thread that turns termination signals into events.
pub const SIGNALS: &str = "vmm-signals";
/// The thread that flushes the metrics every minute.
pub const METRICS: &str = "vmm-metrics";

/// The name of vCPU thread `index` (Firecracker's `fc_vcpu N`).
pub fn vcpu(index: u8) -> String {
    format!("fc_vcpu {index}")
}
