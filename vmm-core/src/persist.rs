//! Saving and restoring a VM: what a snapshot's state file holds ([`VmSnapshot`], devices keyed
//! by their id), writing a snapshot of a paused VM's parts, putting saved device states back,
//! where a snapshot to restore comes from ([`RestoreSource`]), and merging diff memory files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmm_api::{SnapshotCreateParams, SnapshotType, VmConfig};
use vmm_devices::virtio::mmio::MmioTransportState;
use vmm_devices::SerialDeviceState;
use vmm_memory::seal::{SealKey, SnapshotId};
use vmm_memory::snapshot::MemoryFileLayout;
use vmm_memory::GuestMemoryMmap;
use vmm_vcpu::{VcpuState, Vm};

use crate::error::{Error, Result};
use crate::snapshot::SnapshotFile;
use crate::virtio_devices::{disk_backend, AttachedDevice, BlockDevice, DiskBackend};
use vmm_devices::virtio::VirtioDevice;
use vmm_disk::{DiskError, DiskSeal, OpenedImage};

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
    /// The user-space IOAPIC of a VM with the split irqchip; None for the in-kernel irqchip
    /// (whose IOAPIC is in `vm`), and in snapshots taken before the split irqchip existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ioapic: Option<vmm_devices::IoApicState>,
    /// The disks sealed at the snapshot ([`DiskImage::seal_for_snapshot`]), keyed by device id
    /// ("blk0"): a restore attaches a fresh clone of each instead of the configured path. Only
    /// formats that keep such a point (the layered format) have one; none in snapshots taken
    /// before disks were sealed, or of VMs with raw and qcow2 disks only.
    ///
    /// [`DiskImage::seal_for_snapshot`]: vmm_devices::virtio::block::DiskImage::seal_for_snapshot
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disk_seals: BTreeMap<String, DiskSeal>,
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
    /// Where the clones of the snapshot's sealed disks go ([`VmSnapshot::disk_seals`]); `None`
    /// puts each next to its sealed layer. Clones are named `<layer file>.clone-<pid>-<n>`.
    pub disk_clone_dir: Option<PathBuf>,
    /// The key file of a sealed snapshot; `None` for an unsealed one (a sealed snapshot is then
    /// refused, as is an unsealed one with a key).
    pub key_file: Option<PathBuf>,
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
    /// Reads and checks the state file (authenticated and decrypted with the key file when
    /// there is one).
    pub fn read_state(&self) -> Result<VmSnapshot> {
        Ok(self.read_state_sealed()?.0)
    }

    /// Reads and checks the state file; for a sealed snapshot also the key and the snapshot
    /// id, which its memory file must have.
    pub(crate) fn read_state_sealed(&self) -> Result<(VmSnapshot, Option<(SealKey, SnapshotId)>)> {
        let Some(key_file) = &self.key_file else {
            return Ok((SnapshotFile::read(&self.state)?, None));
        };
        let key = SealKey::read_file(key_file).map_err(Error::Seal)?;
        let (snapshot, id) = SnapshotFile::read_sealed(&self.state, &key)?;
        Ok((snapshot, Some((key, id))))
    }
}

/// Seals the disk of `device` if it is a block device ([`BlockDevice::seal_backend`]):
/// `Some` for a disk whose format keeps the point (the layered format).
pub(crate) fn seal_disk(
    name: &str,
    device: &mut dyn VirtioDevice<GuestMemoryMmap>,
) -> Result<Option<DiskSeal>> {
    let Some(block) = device.as_any_mut().downcast_mut::<BlockDevice>() else {
        return Ok(None);
    };
    block.seal_backend().map_err(|source| Error::DiskSeal {
        name: name.to_string(),
        source,
    })
}

/// Seals every block device's disk for a snapshot of the paused VM; the seals by device id.
pub(crate) fn seal_disks(devices: &[AttachedDevice]) -> Result<BTreeMap<String, DiskSeal>> {
    let mut seals = BTreeMap::new();
    for device in devices {
        let mut transport = crate::lock(&device.transport);
        if let Some(seal) = seal_disk(&device.name, transport.device_mut())? {
            log::info!(
                "{}: disk state sealed for the snapshot in {} ({})",
                device.name,
                seal.layer.display(),
                seal.format
            );
            seals.insert(device.id.clone(), seal);
        }
    }
    Ok(seals)
}

/// Where the clone of a disk sealed in `layer` goes: `<layer>.clone-<pid>-<n>` next to it, or
/// the same name in `dir`, with the first `n` (counted in this process) that names no file.
pub fn sealed_clone_path(layer: &Path, dir: Option<&Path>) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let base = match (dir, layer.file_name()) {
        (Some(dir), Some(name)) => dir.join(name),
        (Some(dir), None) => dir.join("disk"),
        (None, _) => layer.to_path_buf(),
    };
    let pid = std::process::id();
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name = base.clone().into_os_string();
        name.push(format!(".clone-{pid}-{n}"));
        let candidate = PathBuf::from(name);
        // A name taken by another file is skipped; a clone is never made over a file.
        if std::fs::symlink_metadata(&candidate).is_err() || n == u64::MAX {
            return candidate;
        }
    }
}

/// Makes a writable clone of each sealed disk of a snapshot with `open_sealed`
/// ([`vmm_disk::open_sealed`] outside tests), for restoring it with `config`: the
/// disks' paths in `config` become the clones' (so that a later snapshot or `GET
/// /vm/config` names them), and the opened clones come back by disk index for
/// [`open_devices`](crate::virtio_devices::open_devices).
pub(crate) fn clone_sealed_disks(
    config: &mut VmConfig,
    seals: &BTreeMap<String, DiskSeal>,
    dir: Option<&Path>,
    mut open_sealed: impl FnMut(&DiskSeal, &Path) -> std::result::Result<OpenedImage, DiskError>,
) -> Result<BTreeMap<usize, DiskBackend>> {
    let mut opened = BTreeMap::new();
    for (id, seal) in seals {
        let index = id
            .strip_prefix("blk")
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|&i| i < config.disk.len())
            .ok_or_else(|| {
                Error::SnapshotMismatch(format!(
                    "the snapshot has a sealed disk for device {id}, which the configuration lacks"
                ))
            })?;
        let clone = sealed_clone_path(&seal.layer, dir);
        let image = open_sealed(seal, &clone).map_err(|source| Error::DiskClone {
            id: id.clone(),
            layer: seal.layer.clone(),
            clone: clone.clone(),
            source: Box::new(source),
        })?;
        log::info!(
            "{id}: the snapshot's disk (sealed in {}) restored onto a new clone, {}",
            seal.layer.display(),
            clone.display()
        );
        let disk = &mut config.disk[index];
        disk.path = clone;
        disk.format = None;
        opened.insert(index, disk_backend(image));
    }
    Ok(opened)
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

/// The key of a sealed snapshot request (`key_file`), read before anything is saved; `None`
/// for an unsealed one. A sealed Diff is refused.
pub(crate) fn snapshot_key(params: &SnapshotCreateParams) -> Result<Option<SealKey>> {
    let Some(key_file) = &params.key_file else {
        return Ok(None);
    };
    if params.snapshot_type == SnapshotType::Diff {
        return Err(Error::SealedDiff);
    }
    SealKey::read_file(Path::new(key_file))
        .map(Some)
        .map_err(Error::Seal)
}

/// Writes the memory file (all of RAM, or the pages in `dirty` for a diff), then the state
/// file of the snapshot that `state` makes from the memory file's layout. With `key`, both
/// files are sealed under a fresh random snapshot id (full snapshots only).
pub(crate) fn write_snapshot(
    params: &SnapshotCreateParams,
    memory: &GuestMemoryMmap,
    dirty: Option<&[Vec<u64>]>,
    key: Option<&SealKey>,
    state: impl FnOnce(MemoryFileLayout) -> VmSnapshot,
) -> Result<()> {
    let mem_path = PathBuf::from(&params.mem_file_path);
    if let Some(key) = key {
        if params.snapshot_type == SnapshotType::Diff {
            return Err(Error::SealedDiff);
        }
        let id = SnapshotId::random().map_err(Error::Seal)?;
        let layout = vmm_memory::sealed_memory::save_memory_sealed(
            memory,
            &mem_path,
            key,
            id,
            vmm_memory::seal::DEFAULT_CHUNK_SIZE,
        )
        .map_err(Error::MemorySnapshot)?;
        let snapshot = state(layout);
        SnapshotFile::write_sealed(Path::new(&params.snapshot_path), &snapshot, key, id)?;
        return Ok(());
    }
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
    use vmm_devices::virtio::block::{Block, DiskIoError, GuestBuffers};

    /// A disk that seals itself into a made-up layer (as the layered format does) and serves
    /// zeros.
    struct SealingDisk(Option<DiskSeal>);

    impl<M: vmm_memory::GuestMemoryBackend> vmm_devices::virtio::block::DiskImage<M> for SealingDisk {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(
            &mut self,
            _: u64,
            bufs: &GuestBuffers<'_, M>,
        ) -> std::result::Result<(), DiskIoError> {
            bufs.write_from(0, &vec![0; bufs.len() as usize])
        }
        fn write_at(
            &mut self,
            _: u64,
            _: &GuestBuffers<'_, M>,
        ) -> std::result::Result<(), DiskIoError> {
            Ok(())
        }
        fn flush(&mut self) -> std::result::Result<(), DiskIoError> {
            Ok(())
        }
        fn seal_for_snapshot(&mut self) -> std::result::Result<Option<DiskSeal>, DiskIoError> {
            Ok(self.0.clone())
        }
    }

    fn seal(layer: &str) -> DiskSeal {
        DiskSeal {
            format: "layered".into(),
            layer: layer.into(),
            layer_id: "id-1".into(),
        }
    }

    #[test]
    fn block_devices_are_sealed_and_other_devices_skipped() {
        let backend: DiskBackend = Box::new(SealingDisk(Some(seal("/img/a.layered.3"))));
        let mut block: BlockDevice = Block::with_backend(backend, None).unwrap();
        assert_eq!(
            seal_disk("virtio-blk a", &mut block).unwrap(),
            Some(seal("/img/a.layered.3"))
        );
        let backend: DiskBackend = Box::new(SealingDisk(None));
        let mut raw_like: BlockDevice = Block::with_backend(backend, None).unwrap();
        assert_eq!(seal_disk("virtio-blk b", &mut raw_like).unwrap(), None);
        let mut rng = vmm_devices::virtio::rng::Rng::<GuestMemoryMmap>::new();
        assert_eq!(seal_disk("virtio-rng", &mut rng).unwrap(), None);
    }

    #[test]
    fn old_state_files_have_no_seals_and_new_ones_keep_them() {
        #[derive(Deserialize, Serialize)]
        struct Part {
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            disk_seals: BTreeMap<String, DiskSeal>,
        }
        let old: Part = serde_json::from_str("{}").unwrap();
        assert!(old.disk_seals.is_empty());
        let mut seals = BTreeMap::new();
        seals.insert("blk0".to_string(), seal("/img/a"));
        let json = serde_json::to_string(&Part {
            disk_seals: seals.clone(),
        })
        .unwrap();
        let back: Part = serde_json::from_str(&json).unwrap();
        assert_eq!(back.disk_seals, seals);
    }

    #[test]
    fn sealed_disks_are_cloned_next_to_their_layer_or_in_the_given_dir() {
        let dir = std::env::temp_dir().join(format!("vmm-core-clone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.img");
        std::fs::write(&base, vec![0u8; 4096]).unwrap();
        let mut config = VmConfig {
            disk: vec![
                "path=/img/root,format=layered".parse().unwrap(),
                "path=/img/data".parse().unwrap(),
            ],
            ..VmConfig::default()
        };
        let mut seals = BTreeMap::new();
        seals.insert("blk1".to_string(), seal("/img/data.sealed"));
        let mut calls = Vec::new();
        let clones = clone_sealed_disks(&mut config, &seals, None, |s, clone| {
            calls.push((s.clone(), clone.to_path_buf()));
            // A stand-in for the clone: any image opens as raw.
            Ok(OpenedImage::Raw(vmm_disk::RawFile::open(&base, false)?))
        })
        .unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, seal("/img/data.sealed"));
        let clone = calls[0].1.clone();
        let name = clone.to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("/img/data.sealed.clone-{}-", std::process::id())),
            "{name}"
        );
        assert_eq!(config.disk[1].path, clone, "the config names the clone");
        assert_eq!(
            config.disk[0].path,
            Path::new("/img/root"),
            "unsealed disks stay"
        );
        assert_eq!(clones.keys().copied().collect::<Vec<_>>(), [1]);

        // Two restores in one process get two clones; a directory given holds them.
        let mut config2 = config.clone();
        let mut second = Vec::new();
        clone_sealed_disks(&mut config2, &seals, Some(&dir), |_, clone| {
            second.push(clone.to_path_buf());
            Ok(OpenedImage::Raw(vmm_disk::RawFile::open(&base, false)?))
        })
        .unwrap();
        assert_eq!(second[0].parent(), Some(dir.as_path()));
        assert_ne!(second[0], clone);

        // The opener's failure names the disk, the layer and the clone.
        let err = clone_sealed_disks(&mut config.clone(), &seals, None, vmm_disk::open_sealed)
            .err()
            .unwrap();
        assert!(matches!(err, Error::DiskClone { .. }), "{err}");
        let text = crate::error::chain(&err);
        assert!(
            text.contains("blk1") && text.contains("/img/data.sealed"),
            "{text}"
        );

        // A seal for a disk the configuration lacks is a mismatch.
        let mut stray = BTreeMap::new();
        stray.insert("blk7".to_string(), seal("/img/x"));
        let err = clone_sealed_disks(&mut config, &stray, None, |_, _| unreachable!())
            .err()
            .unwrap();
        assert!(matches!(err, Error::SnapshotMismatch(_)), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

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
