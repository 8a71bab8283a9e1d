//! Saving and restoring a VM: what a snapshot's state file holds ([`VmSnapshot`], devices keyed
//! by their id), writing a snapshot of a paused VM's parts, putting saved device states back,
//! where a snapshot to restore comes from ([`RestoreSource`]), and merging diff memory files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmm_api::{SnapshotCreateParams, SnapshotType, VmConfig};
use vmm_devices::virtio::mmio::MmioTransportState;
use vmm_devices::SerialDeviceState;
use vmm_memory::snapshot::MemoryFileLayout;
use vmm_memory::GuestMemoryMmap;
use vmm_vcpu::{VcpuState, Vm};

use crate::error::{Error, Result};
use crate::snapshot::SnapshotFile;
use crate::virtio_devices::AttachedDevice;

/// Everything a snapshot's state file holds; guest memory is in the memory file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// The configuration the VM was built from (devices are rebuilt from it on restore).
    pub config: VmConfig,
    /// Every vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// Irqchip, PIT and clock.
    pub vm: vmm_vcpu::KvmVmState,
    /// The virtio transports with their devices, keyed by device id ("blk0", "net0", "vsock",
    /// "rng", "balloon").
    pub devices: BTreeMap<String, MmioTransportState>,
    /// The serial console's UART.
    pub serial: SerialDeviceState,
    /// Where each RAM region is in the memory file.
    pub memory: MemoryFileLayout,
    /// The API's `iface_id` of each `config.net` entry, in order (empty in snapshots taken
    /// before ids were saved: the tap names are the ids then).
    #[serde(default)]
    pub iface_ids: Vec<String>,
    /// The ACPI Generic Event Device (a power button press the guest has not read yet); none
    /// pending in snapshots taken before the GED existed.
    #[serde(default)]
    pub ged: vmm_devices::GedState,
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
    /// Host taps to use instead of the saved ones: (`iface_id`, tap name).
    pub network_overrides: Vec<(String, String)>,
    /// A vsock Unix socket path to use instead of the saved one.
    pub vsock_override: Option<PathBuf>,
}

impl VmSnapshot {
    /// The `iface_id` of each network interface (the tap name where none was saved).
    pub fn iface_ids(&self) -> Vec<String> {
        if self.iface_ids.len() == self.config.net.len() {
            return self.iface_ids.clone();
        }
        self.config.net.iter().map(|n| n.tap.clone()).collect()
    }

    /// The configuration to rebuild the devices from: the saved one with `source`'s tap and
    /// vsock socket overrides, as `PUT /snapshot/load` gives them.
    pub fn config_for(&self, source: &RestoreSource) -> Result<VmConfig> {
        let mut config = VmConfig {
            track_dirty_pages: source.track_dirty_pages,
            ..self.config.clone()
        };
        let ids = self.iface_ids();
        for (iface_id, tap) in &source.network_overrides {
            let index = ids.iter().position(|id| id == iface_id).ok_or_else(|| {
                Error::SnapshotMismatch(format!(
                    "network override for {iface_id:?}: the snapshot has no such interface \
                     (it has {ids:?})"
                ))
            })?;
            config.net[index].tap = tap.clone();
        }
        if let Some(socket) = &source.vsock_override {
            let vsock = config.vsock.as_mut().ok_or_else(|| {
                Error::SnapshotMismatch("vsock override: the snapshot has no vsock device".into())
            })?;
            vsock.socket = socket.clone();
        }
        Ok(config)
    }
}

impl RestoreSource {
    /// Reads and checks the state file.
    pub fn read_state(&self) -> Result<VmSnapshot> {
        Ok(SnapshotFile::read(&self.state)?)
    }
}

/// Whether a snapshot of `kind` can be taken now: a diff needs dirty page tracking, and any
/// snapshot a paused VM.
pub(crate) fn check_snapshot_request(
    kind: SnapshotType,
    tracking: bool,
    paused: bool,
) -> Result<()> {
    if kind == SnapshotType::Diff && !tracking {
        return Err(Error::DirtyTrackingOff);
    }
    if !paused {
        return Err(Error::NotPaused);
    }
    Ok(())
}

/// The device states of `devices`, keyed by id.
pub(crate) fn save_devices(devices: &[AttachedDevice]) -> BTreeMap<String, MmioTransportState> {
    devices
        .iter()
        .map(|d| (d.id.clone(), crate::lock(&d.transport).save_state()))
        .collect()
}

/// Puts each saved state back into the device with its id. Every device needs a state and
/// every state a device: a snapshot for another configuration is refused.
pub(crate) fn restore_devices(
    devices: &[AttachedDevice],
    saved: &BTreeMap<String, MmioTransportState>,
) -> Result<()> {
    if let Some(extra) = saved
        .keys()
        .find(|id| !devices.iter().any(|d| &d.id == *id))
    {
        return Err(Error::SnapshotMismatch(format!(
            "the snapshot has a state for device {extra}, which the configuration lacks"
        )));
    }
    for device in devices {
        let state = saved.get(&device.id).ok_or_else(|| {
            Error::SnapshotMismatch(format!("no state saved for device {}", device.id))
        })?;
        crate::lock(&device.transport)
            .restore_state(state)
            .map_err(|source| Error::DeviceRestore {
                name: device.name.clone(),
                source,
            })?;
    }
    Ok(())
}

/// The pages written since the previous snapshot, one KVM-style bitmap per guest memory region
/// in region order (the order of the memory file's layout): KVM's dirty log (the guest's
/// writes) ∪ the guest memory's own bitmaps (the VMM's writes) ∪ `carried` (the pages of a
/// snapshot that failed). Clears the first two.
pub(crate) fn take_dirty(
    vm: &Vm,
    memory: &GuestMemoryMmap,
    carried: Option<Vec<Vec<u64>>>,
) -> Result<Vec<Vec<u64>>> {
    let kvm = vm.dirty_pages(memory)?;
    let mut dirty = vmm_memory::take_dirty(memory);
    let carried = carried.unwrap_or_default();
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

/// Writes the memory file (all of RAM, or the pages in `dirty` for a diff), then the state
/// file of the snapshot that `state` makes from the memory file's layout.
pub(crate) fn write_snapshot(
    params: &SnapshotCreateParams,
    memory: &GuestMemoryMmap,
    dirty: Option<&[Vec<u64>]>,
    state: impl FnOnce(MemoryFileLayout) -> VmSnapshot,
) -> Result<()> {
    let mem_path = PathBuf::from(&params.mem_file_path);
    let saved = match dirty {
        Some(bitmaps) if params.snapshot_type == SnapshotType::Diff => {
            vmm_memory::snapshot::save_dirty_pages(memory, bitmaps, &mem_path)
        }
        _ => vmm_memory::snapshot::save_memory(memory, &mem_path),
    };
    let snapshot = state(saved.map_err(Error::MemorySnapshot)?);
    SnapshotFile::write(Path::new(&params.snapshot_path), &snapshot)?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_snapshot_without_tracking_is_refused_first() {
        let err = check_snapshot_request(SnapshotType::Diff, false, true).unwrap_err();
        assert!(matches!(err, Error::DirtyTrackingOff));
        assert!(err.to_string().contains("--track-dirty-pages"), "{err}");
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
