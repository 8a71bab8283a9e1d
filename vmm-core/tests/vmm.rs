//! Tier 2: a [`Vmm`] driven from Rust with the tiny PVH guest (it prints GUEST-INIT-OK and halts;
//! with `test=` on its command line it resets the VM through the i8042 instead): start, pause,
//! resume, snapshots, the balloon target, and a restore in the same process.

mod common;
use common::{scratch, tiny_guest};

use std::path::Path;

use vmm_api::{
    ApiResponse, BalloonUpdate, InstanceState, Irqchip, MemorySize, SerialMode,
    SnapshotCreateParams, SnapshotType, VmConfig,
};
use vmm_core::{BuiltVm, Error, RestoreSource, ShutdownReason, StartMode, Vmm};

/// The tiny guest with 64 MiB, an entropy device and a balloon, its console in `dir/serial`.
fn config(dir: &Path, cmdline: &str) -> VmConfig {
    VmConfig {
        kernel: Some(tiny_guest()),
        cmdline: Some(cmdline.to_string()),
        memory: MemorySize(64 << 20),
        serial: SerialMode::File(dir.join("serial")),
        rng: true,
        balloon: Some("target=0".parse().unwrap()),
        ..VmConfig::default()
    }
}

fn full_snapshot(dir: &Path) -> SnapshotCreateParams {
    SnapshotCreateParams {
        snapshot_type: SnapshotType::Full,
        snapshot_path: dir.join("vm.state").to_string_lossy().into_owned(),
        mem_file_path: dir.join("vm.mem").to_string_lossy().into_owned(),
        key_file: None,
    }
}

/// Waits until the guest's console file holds `marker` (an upper bound only: the tiny guest
/// prints it at once).
fn wait_for_marker(dir: &Path, marker: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(dir.join("serial")).unwrap_or_default();
        if text.contains(marker) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {marker} on the console: {text:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn no_api(_: &mut Vmm, _: vmm_api::ApiRequest) -> ApiResponse {
    ApiResponse::bad_request("no API here")
}

#[test]
fn a_vmm_pauses_resumes_snapshots_and_its_snapshot_restores_split_irqchip() {
    pause_resume_snapshot_restore(Irqchip::Split);
}

#[test]
fn a_vmm_pauses_resumes_snapshots_and_its_snapshot_restores_kernel_irqchip() {
    pause_resume_snapshot_restore(Irqchip::Kernel);
}

fn pause_resume_snapshot_restore(irqchip: Irqchip) {
    let dir = scratch(&format!("lifecycle-{irqchip}"));
    let built = BuiltVm::build(&VmConfig {
        irqchip,
        ..config(&dir, "console=ttyS0")
    })
    .unwrap();
    let mut vmm = Vmm::start(built, StartMode::Running).unwrap();
    assert_eq!(vmm.state(), InstanceState::Running);
    assert_eq!(vmm.config().vm.instance_id(), "anonymous-instance");
    // Snapshot a guest that has run: it printed its marker and halted.
    wait_for_marker(&dir, "GUEST-INIT-OK");

    // A snapshot needs a paused VM.
    assert!(matches!(
        vmm.snapshot(&full_snapshot(&dir)),
        Err(Error::NotPaused)
    ));
    vmm.pause().unwrap();
    vmm.pause().unwrap();
    assert_eq!(vmm.state(), InstanceState::Paused);
    // A diff needs dirty page tracking, which this VM does not have.
    let diff = SnapshotCreateParams {
        snapshot_type: SnapshotType::Diff,
        ..full_snapshot(&dir)
    };
    assert!(matches!(vmm.snapshot(&diff), Err(Error::DirtyTrackingOff)));
    vmm.snapshot(&full_snapshot(&dir)).unwrap();
    vmm.resume().unwrap();
    assert_eq!(vmm.state(), InstanceState::Running);

    // The balloon takes a new target; one larger than RAM is the client's mistake.
    vmm.set_balloon_target(&BalloonUpdate { amount_mib: 16 })
        .unwrap();
    assert_eq!(
        vmm.config().vm.balloon.as_ref().unwrap().target,
        MemorySize(16 << 20)
    );
    assert!(matches!(
        vmm.set_balloon_target(&BalloonUpdate { amount_mib: 4096 }),
        Err(Error::Request(_))
    ));
    vmm.shutdown();

    // The state file keys the devices by id; the restored VM starts paused.
    let source = RestoreSource {
        state: dir.join("vm.state"),
        mem: dir.join("vm.mem"),
        ..RestoreSource::default()
    };
    let saved = source.read_state().unwrap();
    let ids: Vec<&str> = saved.devices.keys().map(String::as_str).collect();
    assert_eq!(ids, ["balloon", "rng"]);
    // The interrupt controllers' state is where the mode keeps it: the user-space IOAPIC, or
    // KVM's chips and PIT.
    assert_eq!(saved.ioapic.is_some(), irqchip == Irqchip::Split);
    assert_eq!(saved.vm.irqchip.is_some(), irqchip == Irqchip::Kernel);
    assert_eq!(saved.vm.pit.is_some(), irqchip == Irqchip::Kernel);
    let mut restored = Vmm::start(BuiltVm::restore(&source).unwrap(), StartMode::Paused).unwrap();
    assert_eq!(restored.state(), InstanceState::Paused);
    assert_eq!(restored.config().vm.irqchip, irqchip);
    restored.resume().unwrap();
    assert_eq!(restored.state(), InstanceState::Running);
    let stopped_at = restored.shutdown();
    assert_eq!(stopped_at.len(), 1, "one vCPU: {stopped_at:?}");
    // The restored guest went on from its halt: it did not boot again.
    let serial = std::fs::read_to_string(dir.join("serial")).unwrap();
    assert_eq!(serial.matches("GUEST-INIT-OK").count(), 1, "{serial:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wait_for_end_returns_the_guests_power_off() {
    let dir = scratch("reset");
    // With test= the tiny guest powers the VM off after its marker: ACPI S5 in the sleep
    // control register (port 0x600 <- 0x34), which comes before its i8042 reset.
    let built = BuiltVm::build(&config(&dir, "console=ttyS0 test=1")).unwrap();
    let mut vmm = Vmm::start(built, StartMode::Running).unwrap();
    assert_eq!(
        vmm.wait_for_end(no_api).unwrap(),
        ShutdownReason::GuestPowerOff
    );
    vmm.shutdown();
    let serial = std::fs::read_to_string(dir.join("serial")).unwrap();
    assert!(serial.contains("GUEST-TEST-DONE"), "{serial:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A full snapshot in `dir` of the test VM that never ran (built paused, default irqchip).
fn snapshot_of_a_paused_vm(dir: &Path) -> RestoreSource {
    let built = BuiltVm::build(&config(dir, "console=ttyS0")).unwrap();
    let mut vmm = Vmm::start(built, StartMode::Paused).unwrap();
    vmm.snapshot(&full_snapshot(dir)).unwrap();
    vmm.shutdown();
    RestoreSource {
        state: dir.join("vm.state"),
        mem: dir.join("vm.mem"),
        ..RestoreSource::default()
    }
}

#[test]
fn a_snapshot_for_another_device_set_is_refused() {
    let dir = scratch("mismatch");
    let source = snapshot_of_a_paused_vm(&dir);
    // Rewrite the state with one device renamed: the restore must say which one is missing.
    let mut saved = source.read_state().unwrap();
    let rng = saved.devices.remove("rng").unwrap();
    saved.devices.insert("rng7".to_string(), rng);
    vmm_core::snapshot::SnapshotFile::write(&source.state, &saved).unwrap();
    let err = BuiltVm::restore(&source).err().expect("a mismatch");
    let text = vmm_core::error_chain(&err);
    assert!(text.contains("rng7"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_split_irqchip_state_without_its_ioapic_or_with_a_bad_one_is_refused() {
    let dir = scratch("ioapic-state");
    let source = snapshot_of_a_paused_vm(&dir);
    let saved = source.read_state().unwrap();
    // Without its IOAPIC the state reads as an in-kernel irqchip's, which it lacks.
    let mut without = saved.clone();
    without.ioapic = None;
    vmm_core::snapshot::SnapshotFile::write(&source.state, &without).unwrap();
    let err = BuiltVm::restore(&source).err().expect("a mismatch");
    let text = vmm_core::error_chain(&err);
    assert!(text.contains("in-kernel irqchip"), "{text}");
    // A redirection table of the wrong size.
    let mut short = saved.clone();
    short.ioapic.as_mut().unwrap().entries.truncate(3);
    vmm_core::snapshot::SnapshotFile::write(&source.state, &short).unwrap();
    let err = BuiltVm::restore(&source).err().expect("a bad IOAPIC");
    let text = vmm_core::error_chain(&err);
    assert!(text.contains("3 redirection entries"), "{text}");
    // The state as saved still restores.
    vmm_core::snapshot::SnapshotFile::write(&source.state, &saved).unwrap();
    let restored = Vmm::start(BuiltVm::restore(&source).unwrap(), StartMode::Paused).unwrap();
    assert_eq!(restored.config().vm.irqchip, Irqchip::Split);
    drop(restored);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn update_drive_swaps_the_image_and_the_limits_and_the_snapshot_follows() {
    let dir = scratch("update-drive");
    // Zero-length placeholders (as Kata configures them) are valid, empty drives.
    let empty = dir.join("drive_0");
    std::fs::write(&empty, b"").unwrap();
    let empty1 = dir.join("drive_1");
    std::fs::write(&empty1, b"").unwrap();
    let image = dir.join("data.img");
    std::fs::write(&image, vec![0u8; 16 * 512]).unwrap();
    let mut config = config(&dir, "console=ttyS0");
    config.disk = vec![
        format!("path={},id=drive_0", empty.display())
            .parse()
            .unwrap(),
        format!("path={},id=drive_1,read_only=on", empty1.display())
            .parse()
            .unwrap(),
    ];
    let limiter: vmm_api::RateLimiterConfig =
        serde_json::from_str(r#"{"bandwidth": {"size": 1048576, "refill_time": 100}}"#).unwrap();
    config.rng_rate_limiter = Some(limiter);
    let built = BuiltVm::build(&config).unwrap();
    let mut vmm = Vmm::start(built, StartMode::Paused).unwrap();

    let patch: vmm_api::PartialDrive = serde_json::from_str(&format!(
        r#"{{"drive_id": "drive_0", "path_on_host": "{}",
            "rate_limiter": {{"ops": {{"size": 100, "refill_time": 1000}}}}}}"#,
        image.display()
    ))
    .unwrap();
    vmm.update_drive(&patch).unwrap();
    let disk = &vmm.config().vm.disk[0];
    assert_eq!(disk.path, image);
    assert_eq!(
        disk.rate_limiter.and_then(|l| l.ops).map(|b| b.size),
        Some(100)
    );
    let shown = serde_json::to_value(vmm.config().to_firecracker()).unwrap();
    assert_eq!(
        shown["drives"][0]["path_on_host"],
        image.to_string_lossy().as_ref()
    );
    // A bucket of size 0 removes it; a bucket left out stays.
    let patch: vmm_api::PartialDrive = serde_json::from_str(
        r#"{"drive_id": "drive_0", "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}"#,
    )
    .unwrap();
    vmm.update_drive(&patch).unwrap();
    assert_eq!(vmm.config().vm.disk[0].rate_limiter, None);

    // Unknown drives and missing files are refused, and change nothing.
    let unknown: vmm_api::PartialDrive =
        serde_json::from_str(r#"{"drive_id": "nope", "path_on_host": "/x"}"#).unwrap();
    assert!(matches!(
        vmm.update_drive(&unknown),
        Err(Error::UnknownDevice { .. })
    ));
    let missing: vmm_api::PartialDrive = serde_json::from_str(&format!(
        r#"{{"drive_id": "drive_1", "path_on_host": "{}"}}"#,
        dir.join("missing.img").display()
    ))
    .unwrap();
    assert!(matches!(
        vmm.update_drive(&missing),
        Err(Error::Disk { .. })
    ));
    assert_eq!(vmm.config().vm.disk[1].path, empty1);
    let iface: vmm_api::PartialNetworkInterface =
        serde_json::from_str(r#"{"iface_id": "eth9"}"#).unwrap();
    assert!(matches!(
        vmm.update_network_interface(&iface),
        Err(Error::UnknownDevice { .. })
    ));

    // The snapshot holds the new image, so the restore finds the capacity the guest saw.
    vmm.snapshot(&full_snapshot(&dir)).unwrap();
    vmm.shutdown();
    let source = RestoreSource {
        state: dir.join("vm.state"),
        mem: dir.join("vm.mem"),
        ..RestoreSource::default()
    };
    let restored = BuiltVm::restore(&source).unwrap();
    let vmm = Vmm::start(restored, StartMode::Paused).unwrap();
    assert_eq!(vmm.config().vm.disk[0].path, image);
    vmm.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `PUT /snapshot/load`'s overrides: the restored VM's vsock listens on the new socket, and an
/// override naming an interface the snapshot lacks is refused with its name.
#[test]
fn snapshot_load_overrides_the_vsock_socket_and_checks_interface_ids() {
    let dir = scratch("overrides");
    let first = dir.join("v1.sock");
    let moved = dir.join("v2.sock");
    let mut config = config(&dir, "console=ttyS0");
    config.vsock = Some(vmm_api::VsockConfig {
        cid: 3,
        socket: first.clone(),
    });
    let mut vmm = Vmm::start(BuiltVm::build(&config).unwrap(), StartMode::Running).unwrap();
    wait_for_marker(&dir, "GUEST-INIT-OK");
    vmm.pause().unwrap();
    vmm.snapshot(&full_snapshot(&dir)).unwrap();
    vmm.shutdown();
    let _ = std::fs::remove_file(&first);

    let base = RestoreSource {
        state: dir.join("vm.state"),
        mem: dir.join("vm.mem"),
        ..RestoreSource::default()
    };
    let unknown = RestoreSource {
        network_overrides: vec![("eth9".into(), "tap9".into())],
        ..base.clone()
    };
    let err = BuiltVm::restore(&unknown)
        .err()
        .expect("an unknown iface_id");
    assert!(vmm_core::error_chain(&err).contains("eth9"), "{err}");

    let moved_source = RestoreSource {
        vsock_override: Some(moved.clone()),
        ..base
    };
    let restored = Vmm::start(BuiltVm::restore(&moved_source).unwrap(), StartMode::Paused).unwrap();
    assert!(moved.exists(), "the vsock device listens on the override");
    assert!(!first.exists(), "and not on the saved path");
    assert_eq!(
        restored.config().vm.vsock.as_ref().unwrap().socket,
        moved,
        "the API's view follows the override"
    );
    restored.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

/// Snapshots record the disks' seals, and a restore clones each sealed disk through
/// `vmm_disk::open_sealed` instead of opening the configured path. Raw disks keep no
/// seal; a seal put into the state file by hand makes the restore call `open_sealed`, which
/// (until a format that seals is built in) refuses, naming the disk and the clone it was to
/// make.
#[test]
fn snapshots_record_disk_seals_and_restores_clone_sealed_disks() {
    let dir = scratch("disk-seals");
    let image = dir.join("data.img");
    std::fs::write(&image, vec![0u8; 16 * 512]).unwrap();
    let mut config = config(&dir, "console=ttyS0");
    config.disk = vec![format!("path={}", image.display()).parse().unwrap()];
    let mut vmm = Vmm::start(BuiltVm::build(&config).unwrap(), StartMode::Paused).unwrap();
    vmm.snapshot(&full_snapshot(&dir)).unwrap();
    vmm.shutdown();
    let state = dir.join("vm.state");
    let mut saved: vmm_core::VmSnapshot = vmm_core::snapshot::SnapshotFile::read(&state).unwrap();
    assert!(saved.disk_seals.is_empty(), "a raw disk keeps no seal");

    let layer = dir.join("data.layered.1");
    saved.disk_seals.insert(
        "blk0".into(),
        vmm_disk::DiskSeal {
            format: "layered".into(),
            layer: layer.clone(),
            layer_id: "0123".into(),
        },
    );
    vmm_core::snapshot::SnapshotFile::write(&state, &saved).unwrap();
    let clones = dir.join("clones");
    std::fs::create_dir_all(&clones).unwrap();
    let source = RestoreSource {
        state,
        mem: dir.join("vm.mem"),
        disk_clone_dir: Some(clones.clone()),
        ..RestoreSource::default()
    };
    let err = BuiltVm::restore(&source)
        .err()
        .expect("open_sealed refuses");
    let Error::DiskClone {
        id,
        layer: l,
        clone,
        ..
    } = &err
    else {
        panic!("not a clone error: {}", vmm_core::error_chain(&err));
    };
    assert_eq!((id.as_str(), l), ("blk0", &layer));
    assert_eq!(clone.parent(), Some(clones.as_path()));
    assert!(clone
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("data.layered.1.clone-"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sealed snapshots (`key_file`): both files encrypted and authenticated; the restore goes on
/// from the snapshot; a changed byte in either file, the wrong key, a memory file of another
/// snapshot, and a sealed/unsealed mix-up are refused before anything runs.
#[test]
fn a_sealed_snapshot_restores_and_changed_or_foreign_files_are_refused() {
    let dir = scratch("sealed");
    let key = dir.join("key");
    std::fs::write(&key, [0x5a; 32]).unwrap();
    let other_key = dir.join("other-key");
    std::fs::write(&other_key, [0xa5; 32]).unwrap();
    let mut vm_config = config(&dir, "console=ttyS0");
    vm_config.track_dirty_pages = true;
    let mut vmm = Vmm::start(BuiltVm::build(&vm_config).unwrap(), StartMode::Running).unwrap();
    wait_for_marker(&dir, "GUEST-INIT-OK");
    vmm.pause().unwrap();
    let sealed = SnapshotCreateParams {
        key_file: Some(key.to_string_lossy().into_owned()),
        ..full_snapshot(&dir)
    };
    let diff = SnapshotCreateParams {
        snapshot_type: SnapshotType::Diff,
        ..sealed.clone()
    };
    assert!(matches!(vmm.snapshot(&diff), Err(Error::SealedDiff)));
    vmm.snapshot(&sealed).unwrap();
    vmm.shutdown();
    let state = std::fs::read(dir.join("vm.state")).unwrap();
    let mem = std::fs::read(dir.join("vm.mem")).unwrap();
    assert_eq!(&state[..8], b"VMMSEAL\0");
    assert_eq!(&mem[..8], b"VMMSEAL\0");
    // Nothing of the state is readable: the kernel path is in the configuration it holds.
    assert!(!state.windows(12).any(|w| w == b"tiny-pvh.elf"));
    // The memory file is the same for each snapshot id: the header binds both files.
    assert_eq!(&state[16..32], &mem[16..32]);

    let source = RestoreSource {
        state: dir.join("vm.state"),
        mem: dir.join("vm.mem"),
        key_file: Some(key.clone()),
        ..RestoreSource::default()
    };
    let mut restored = Vmm::start(BuiltVm::restore(&source).unwrap(), StartMode::Paused).unwrap();
    restored.resume().unwrap();
    assert_eq!(restored.state(), InstanceState::Running);
    // A second sealed snapshot (another id) of the restored VM, for the mix-up below.
    let other_dir = dir.join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    restored.pause().unwrap();
    restored
        .snapshot(&SnapshotCreateParams {
            key_file: Some(key.to_string_lossy().into_owned()),
            ..full_snapshot(&other_dir)
        })
        .unwrap();
    restored.shutdown();
    let serial = std::fs::read_to_string(dir.join("serial")).unwrap();
    assert_eq!(serial.matches("GUEST-INIT-OK").count(), 1, "{serial:?}");

    let refused = |source: &RestoreSource, needle: &str| {
        let err = BuiltVm::restore(source).err().expect("refused");
        let text = vmm_core::error_chain(&err);
        assert!(text.contains(needle), "{needle:?} not in: {text}");
        assert_eq!(text.lines().count(), 1, "{text}");
    };
    refused(
        &RestoreSource {
            key_file: Some(other_key),
            ..source.clone()
        },
        "the key does not match",
    );
    refused(
        &RestoreSource {
            key_file: None,
            ..source.clone()
        },
        "sealed",
    );
    refused(
        &RestoreSource {
            mem: other_dir.join("vm.mem"),
            ..source.clone()
        },
        "belongs to another snapshot",
    );
    for (file, bytes) in [("vm.state", &state), ("vm.mem", &mem)] {
        for at in [20, 100, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            let path = dir.join(format!("bad-{file}"));
            std::fs::write(&path, &bad).unwrap();
            let bad_source = if file == "vm.state" {
                RestoreSource {
                    state: path,
                    ..source.clone()
                }
            } else {
                RestoreSource {
                    mem: path,
                    ..source.clone()
                }
            };
            let err = BuiltVm::restore(&bad_source).err().expect("refused");
            let text = vmm_core::error_chain(&err);
            assert!(text.contains("sealed"), "{file} byte {at}: {text}");
        }
    }
    // A keyed restore of an unsealed snapshot.
    let plain_dir = dir.join("plain");
    std::fs::create_dir_all(&plain_dir).unwrap();
    let mut vmm = Vmm::start(BuiltVm::build(&vm_config).unwrap(), StartMode::Paused).unwrap();
    vmm.snapshot(&full_snapshot(&plain_dir)).unwrap();
    vmm.shutdown();
    refused(
        &RestoreSource {
            state: plain_dir.join("vm.state"),
            mem: plain_dir.join("vm.mem"),
            key_file: Some(key),
            ..RestoreSource::default()
        },
        "not sealed",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
