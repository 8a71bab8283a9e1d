//! Controlling a running VM: the main thread's loop that waits for the VM's end and answers the
//! control API (pause, resume, Ctrl+Alt+Del, instance info and config, snapshots), and snapshot
//! creation itself.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmm_devices::virtio::mmio::MmioTransportState;
use vmm_devices::{I8042Wrapper, SerialDevice, SerialDeviceState};
use vmm_memory::snapshot::MemoryFileLayout;
use vmm_memory::GuestMemoryMmap;
use vmm_vcpu::{VcpuState, Vm};

use crate::api_server::ApiServer;
use crate::error::{Error, Result};
use crate::snapshot::SnapshotFile;
use crate::vcpu_threads::VcpuThreads;
use crate::virtio_devices::AttachedDevice;
use crate::vm::{BuiltVm, ShutdownReason, VmEvent, TERMINATION_SIGNAL};
use vmm_api::VmConfig;
use vmm_api::{
    ActionType, ApiConfig, ApiRequest, ApiResponse, InstanceInfo, InstanceState,
    SnapshotCreateParams, SnapshotType, VersionInfo, VmState,
};

/// Everything a snapshot's state file holds; guest memory is in the memory file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// The configuration the VM was built from (devices are rebuilt from it on restore).
    pub config: VmConfig,
    /// Every vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// Irqchip, PIT and clock.
    pub vm: vmm_vcpu::KvmVmState,
    /// The virtio transports with their devices, in slot order.
    pub devices: Vec<MmioTransportState>,
    /// The serial console's UART.
    pub serial: SerialDeviceState,
    /// Where each RAM region is in the memory file.
    pub memory: MemoryFileLayout,
}

/// The parts of a running VM that the control loop works on.
pub(crate) struct Session<'a> {
    pub threads: VcpuThreads,
    pub vm: &'a Vm,
    pub memory: &'a GuestMemoryMmap,
    pub virtio: &'a [AttachedDevice],
    pub serial: &'a Arc<Mutex<SerialDevice>>,
    pub i8042: &'a Arc<Mutex<I8042Wrapper>>,
    pub config: ApiConfig,
    /// Dirty pages read for a snapshot that failed, to be part of the next one.
    pub unsaved_dirty: Option<Vec<Vec<u64>>>,
}

/// The instance id `GET /` reports.
const INSTANCE_ID: &str = "vmm";

impl Session<'_> {
    /// Waits for the VM to end, answering API requests meanwhile.
    pub(crate) fn wait_for_end(&mut self, events: &Receiver<VmEvent>) -> Result<ShutdownReason> {
        loop {
            let signal = TERMINATION_SIGNAL.swap(0, Ordering::SeqCst);
            if signal != 0 {
                return Ok(ShutdownReason::Signal(signal));
            }
            match events.recv_timeout(Duration::from_millis(50)) {
                Ok(VmEvent::GuestReset) => return Ok(ShutdownReason::GuestReset),
                Ok(VmEvent::Vcpu(Ok(reason))) => {
                    if let Some(reason) = ShutdownReason::from_vcpu(reason) {
                        return Ok(reason);
                    }
                }
                Ok(VmEvent::Vcpu(Err(e))) => return Err(e.into()),
                Ok(VmEvent::VcpuPanicked(index)) => return Err(Error::VcpuPanicked(index)),
                Ok(VmEvent::EventLoopFailed(e)) => return Err(Error::EventLoop(e)),
                Ok(VmEvent::Api(request, reply)) => {
                    let _ = reply.send(self.handle(*request));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(ShutdownReason::Halted),
            }
        }
    }

    fn state(&self) -> InstanceState {
        if self.threads.is_paused() {
            InstanceState::Paused
        } else {
            InstanceState::Running
        }
    }

    /// Answers one API request on the running VM.
    pub(crate) fn handle(&mut self, request: ApiRequest) -> ApiResponse {
        match request {
            ApiRequest::GetInstanceInfo => {
                ApiResponse::ok_json(&InstanceInfo::new(INSTANCE_ID, self.state()))
            }
            ApiRequest::GetVersion => ApiResponse::ok_json(&VersionInfo::default()),
            ApiRequest::GetVmConfig => ApiResponse::ok_json(&self.config.to_firecracker()),
            ApiRequest::GetMachineConfig => ApiResponse::ok_json(&self.config.machine_config()),
            ApiRequest::GetBalloon => match self.config.balloon() {
                Some(balloon) => ApiResponse::ok_json(&balloon),
                None => ApiResponse::bad_request("no balloon device is configured"),
            },
            ApiRequest::PatchVm(update) => {
                let result = match update {
                    VmState::Paused => self.pause(),
                    VmState::Resumed => {
                        self.resume();
                        Ok(())
                    }
                };
                respond(result)
            }
            ApiRequest::Action(ActionType::SendCtrlAltDel) => {
                crate::lock(self.i8042).send_ctrl_alt_del();
                ApiResponse::no_content()
            }
            ApiRequest::Action(ActionType::FlushMetrics) => ApiResponse::no_content(),
            ApiRequest::Action(ActionType::InstanceStart) => {
                ApiResponse::bad_request("the VM is already running")
            }
            ApiRequest::CreateSnapshot(params) => respond(self.create_snapshot(&params)),
            ApiRequest::PatchBalloon(update) => self.set_balloon(&update),
            other if other.pre_boot_only() => ApiResponse::bad_request(
                "this request is only allowed before the VM starts (the VM is running)",
            ),
            _ => ApiResponse::bad_request("request not supported on a running VM"),
        }
    }

    /// `PATCH /balloon` on a running VM: a new target for the balloon device.
    fn set_balloon(&mut self, update: &vmm_api::BalloonUpdate) -> ApiResponse {
        if let Err(e) = self.config.apply(&ApiRequest::PatchBalloon(update.clone())) {
            return ApiResponse::from(e);
        }
        let pages = self
            .config
            .vm
            .balloon
            .as_ref()
            .map_or(0, |b| crate::virtio_devices::balloon_pages(b.target));
        for device in self.virtio {
            let mut transport = crate::lock(&device.transport);
            if let Some(balloon) = transport.device_mut().as_balloon() {
                return match balloon.set_target_pages(pages) {
                    Ok(()) => ApiResponse::no_content(),
                    Err(e) => ApiResponse::internal_error(&crate::error::chain(&e)),
                };
            }
        }
        ApiResponse::bad_request("no balloon device is configured")
    }

    /// Stops every vCPU, then the device queues.
    pub(crate) fn pause(&mut self) -> Result<()> {
        self.threads.pause()?;
        for device in self.virtio {
            device.set_paused(true);
        }
        Ok(())
    }

    /// Restarts the device queues, then the vCPUs.
    pub(crate) fn resume(&mut self) {
        for device in self.virtio {
            device.set_paused(false);
        }
        self.threads.resume();
    }

    fn create_snapshot(&mut self, params: &SnapshotCreateParams) -> Result<()> {
        let diff = params.snapshot_type == SnapshotType::Diff;
        let tracking = self.config.vm.track_dirty_pages;
        check_snapshot_request(params.snapshot_type, tracking, self.threads.is_paused())?;
        let vcpus = self
            .threads
            .with_each(|vcpu| vcpu.save_state())?
            .into_iter()
            .collect::<vmm_vcpu::Result<Vec<_>>>()?;
        let vm = self.vm.save_state()?;
        let devices = self
            .virtio
            .iter()
            .map(|d| crate::lock(&d.transport).save_state())
            .collect();
        let serial = crate::lock(self.serial).save_state();
        let mem_path = PathBuf::from(&params.mem_file_path);
        // Every snapshot, full or diff, starts a new epoch of dirty tracking: reading KVM's log
        // clears it, and the VMM's bitmaps are read and cleared with it. Pages of a snapshot
        // that then fails are kept for the next one.
        let dirty = if tracking {
            Some(self.take_dirty()?)
        } else {
            None
        };
        let saved = match &dirty {
            Some(bitmaps) if diff => {
                vmm_memory::snapshot::save_dirty_pages(self.memory, bitmaps, &mem_path)
            }
            _ => vmm_memory::snapshot::save_memory(self.memory, &mem_path),
        };
        let memory = match saved {
            Ok(layout) => layout,
            Err(e) => {
                self.unsaved_dirty = dirty;
                return Err(Error::MemorySnapshot(e));
            }
        };
        let snapshot = VmSnapshot {
            config: self.config.vm.clone(),
            vcpus,
            vm,
            devices,
            serial,
            memory,
        };
        if let Err(e) = SnapshotFile::write(Path::new(&params.snapshot_path), &snapshot) {
            self.unsaved_dirty = dirty;
            return Err(e.into());
        }
        Ok(())
    }

    /// The pages written since the previous snapshot, one KVM-style bitmap per guest memory
    /// region in region order (the order of the memory file's layout): KVM's dirty log (the
    /// guest's writes) ∪ the guest memory's own bitmaps (the VMM's writes) ∪ the pages of a
    /// snapshot that failed. Clears all three.
    fn take_dirty(&mut self) -> Result<Vec<Vec<u64>>> {
        let kvm = self.vm.dirty_pages(self.memory)?;
        let mut dirty = vmm_memory::take_dirty(self.memory);
        let carried = self.unsaved_dirty.take().unwrap_or_default();
        for (index, words) in dirty.iter_mut().enumerate() {
            let others = kvm
                .get(index)
                .map(|k| k.bits.as_slice())
                .into_iter()
                .chain(carried.get(index).map(Vec::as_slice));
            for other in others {
                for (word, bits) in words.iter_mut().zip(other) {
                    *word |= bits;
                }
            }
        }
        Ok(dirty)
    }
}

/// Whether a snapshot of `kind` can be taken now: a diff needs dirty page tracking, and any
/// snapshot a paused VM.
fn check_snapshot_request(kind: SnapshotType, tracking: bool, paused: bool) -> Result<()> {
    if kind == SnapshotType::Diff && !tracking {
        return Err(Error::DirtyTrackingOff);
    }
    if !paused {
        return Err(Error::NotPaused);
    }
    Ok(())
}

fn respond(result: Result<()>) -> ApiResponse {
    match result {
        Ok(()) => ApiResponse::no_content(),
        Err(e @ (Error::NotPaused | Error::DirtyTrackingOff)) => {
            ApiResponse::bad_request(&crate::error::chain(&e))
        }
        Err(e) => ApiResponse::internal_error(&crate::error::chain(&e)),
    }
}

/// How a VM starts running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartMode {
    /// The guest runs at once.
    Running,
    /// vCPUs and devices parked until a resume.
    Paused,
    /// Parked, then resumed at once: a restored VM, whose device queues get one pass on resume.
    PausedThenResumed,
}

/// What ended the wait for configuration.
enum Start {
    Boot(Box<BuiltVm>),
    Restored(Box<BuiltVm>, bool),
    Signal(i32),
}

/// Runs a VM with the control API on `api_sock`. With a kernel in `config` it boots at once;
/// otherwise it waits for configuration requests and `InstanceStart`, or a `PUT
/// /snapshot/load`.
pub fn run_with_api(config: VmConfig, api_sock: &Path) -> Result<ShutdownReason> {
    let (events_tx, events_rx) = channel();
    let _server = ApiServer::start(api_sock, events_tx.clone())?;
    let mut api = ApiConfig::new(config);
    let (built, mode) = if api.vm.kernel.is_some() {
        (BuiltVm::build(&api.vm)?, StartMode::Running)
    } else {
        crate::vm::install_termination_handlers();
        match wait_for_configuration(&mut api, &events_rx) {
            Start::Boot(built) => (*built, StartMode::Running),
            Start::Restored(built, true) => (*built, StartMode::PausedThenResumed),
            Start::Restored(built, false) => (*built, StartMode::Paused),
            Start::Signal(signal) => return Ok(ShutdownReason::Signal(signal)),
        }
    };
    built.run_controlled(events_tx, events_rx, mode)
}

/// A snapshot to restore: its state file and memory files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreSource {
    /// The state file.
    pub state: PathBuf,
    /// The full memory file.
    pub mem: PathBuf,
    /// Diff memory files layered over `mem`, oldest first.
    pub mem_diffs: Vec<PathBuf>,
    /// Track dirty pages in the restored VM (for diff snapshots of it).
    pub track_dirty_pages: bool,
}

/// Restores the snapshot `source` in this process and runs it (paused unless `resume`), with
/// the control API on `api_sock` when given.
pub fn restore_vm(
    source: &RestoreSource,
    api_sock: Option<&Path>,
    resume: bool,
) -> Result<ShutdownReason> {
    let (events_tx, events_rx) = channel();
    let _server = api_sock
        .map(|path| ApiServer::start(path, events_tx.clone()))
        .transpose()?;
    let built = load_snapshot(source)?;
    let mode = if resume {
        StartMode::PausedThenResumed
    } else {
        StartMode::Paused
    };
    built.run_controlled(events_tx, events_rx, mode)
}

/// Merges the diff memory file `diff` into the full memory file `base`, writing a full memory
/// file at `out` (which may be `base`). The memory layout comes from the state file `snapshot`
/// when given, otherwise from the length of `base` (every memory file of this VMM packs the
/// RAM regions of its size in guest address order).
pub fn merge_diff_snapshot(
    snapshot: Option<&Path>,
    base: &Path,
    diff: &Path,
    out: &Path,
) -> Result<()> {
    let layout = match snapshot {
        Some(path) => SnapshotFile::read::<VmSnapshot>(path)?.memory,
        None => {
            let len = std::fs::metadata(base)
                .map_err(|source| Error::OpenFile {
                    what: "memory file",
                    path: base.to_path_buf(),
                    source,
                })?
                .len();
            MemoryFileLayout::packed(len)
        }
    };
    vmm_memory::snapshot::merge_diff(base, diff, &layout, out).map_err(Error::MemorySnapshot)
}

fn load_snapshot(source: &RestoreSource) -> Result<BuiltVm> {
    let snapshot: VmSnapshot = SnapshotFile::read(&source.state)?;
    BuiltVm::restore(
        &snapshot,
        &source.mem,
        &source.mem_diffs,
        source.track_dirty_pages,
    )
}

fn wait_for_configuration(api: &mut ApiConfig, events: &Receiver<VmEvent>) -> Start {
    loop {
        let signal = TERMINATION_SIGNAL.swap(0, Ordering::SeqCst);
        if signal != 0 {
            return Start::Signal(signal);
        }
        let (request, reply) = match events.recv_timeout(Duration::from_millis(50)) {
            Ok(VmEvent::Api(request, reply)) => (*request, reply),
            Ok(_) | Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Start::Signal(libc::SIGTERM),
        };
        let not_started = || ApiResponse::bad_request("the VM is not started yet");
        let response = match request {
            ApiRequest::GetInstanceInfo => {
                ApiResponse::ok_json(&InstanceInfo::new(INSTANCE_ID, InstanceState::NotStarted))
            }
            ApiRequest::GetVersion => ApiResponse::ok_json(&VersionInfo::default()),
            ApiRequest::GetVmConfig => ApiResponse::ok_json(&api.to_firecracker()),
            ApiRequest::GetMachineConfig => ApiResponse::ok_json(&api.machine_config()),
            ApiRequest::GetBalloon => match api.balloon() {
                Some(balloon) => ApiResponse::ok_json(&balloon),
                None => ApiResponse::bad_request("no balloon device is configured"),
            },
            ApiRequest::Action(ActionType::InstanceStart) => match BuiltVm::build(&api.vm) {
                Ok(built) => {
                    let _ = reply.send(ApiResponse::no_content());
                    return Start::Boot(Box::new(built));
                }
                Err(e) => ApiResponse::bad_request(&crate::error::chain(&e)),
            },
            ApiRequest::LoadSnapshot(load) => {
                if !load.network_overrides.is_empty() || load.vsock_override.is_some() {
                    ApiResponse::bad_request(
                        "network and vsock overrides on snapshot load are not supported yet",
                    )
                } else {
                    let source = RestoreSource {
                        state: PathBuf::from(&load.snapshot_path),
                        mem: PathBuf::from(&load.mem_file_path),
                        mem_diffs: Vec::new(),
                        track_dirty_pages: load.track_dirty_pages,
                    };
                    match load_snapshot(&source) {
                        Ok(built) => {
                            let _ = reply.send(ApiResponse::no_content());
                            return Start::Restored(Box::new(built), load.resume_vm);
                        }
                        Err(e) => ApiResponse::bad_request(&crate::error::chain(&e)),
                    }
                }
            }
            ApiRequest::Action(_) | ApiRequest::PatchVm(_) | ApiRequest::CreateSnapshot(_) => {
                not_started()
            }
            other => match api.apply(&other) {
                Ok(true) => ApiResponse::no_content(),
                Ok(false) => not_started(),
                Err(e) => ApiResponse::from(e),
            },
        };
        let _ = reply.send(response);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_snapshot_without_tracking_is_a_bad_request() {
        let err = check_snapshot_request(SnapshotType::Diff, false, true).unwrap_err();
        assert!(matches!(err, Error::DirtyTrackingOff));
        assert!(err.to_string().contains("--track-dirty-pages"), "{err}");
        let response = respond(Err(err));
        assert_eq!(response.status, 400);
        let body = response.body.unwrap_or_default();
        assert!(body.contains("track_dirty_pages"), "{body}");
        // Tracking off is said before "not paused".
        assert!(matches!(
            check_snapshot_request(SnapshotType::Diff, false, false),
            Err(Error::DirtyTrackingOff)
        ));
    }

    #[test]
    fn snapshots_need_a_paused_vm() {
        assert!(check_snapshot_request(SnapshotType::Full, false, true).is_ok());
        assert!(check_snapshot_request(SnapshotType::Diff, true, true).is_ok());
        for kind in [SnapshotType::Full, SnapshotType::Diff] {
            assert!(matches!(
                check_snapshot_request(kind, true, false),
                Err(Error::NotPaused)
            ));
        }
    }
}
