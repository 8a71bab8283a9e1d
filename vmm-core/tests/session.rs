//! [`Session`]: one VM's control API without a socket, driven with the tiny PVH guest through
//! configuration, `InstanceStart`, pause, snapshot and a load into a fresh session.

mod common;
use common::{scratch, tiny_guest};

use std::path::Path;

use vmm_api::{ApiConfig, ApiRequest, InstanceState, MemorySize, RequestReader, SerialMode};
use vmm_api::{ApiResponse, VmConfig};
use vmm_core::Session;

/// A session as `vmm --api-sock` starts one: nothing configured but a small memory and the
/// console into `dir`.
fn session(dir: &Path) -> Session {
    Session::new(ApiConfig::new(VmConfig {
        memory: MemorySize(8 << 20),
        serial: SerialMode::File(dir.join("serial")),
        ..VmConfig::default()
    }))
}

/// The request `method path body` as the API server reads it from its socket.
fn request(method: &str, path: &str, body: &str) -> ApiRequest {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    match RequestReader::new().push(raw.as_bytes()) {
        Ok(Some(request)) => request,
        other => panic!("{method} {path}: {other:?}"),
    }
}

fn send(session: &mut Session, method: &str, path: &str, body: &str) -> ApiResponse {
    session.handle(request(method, path, body))
}

#[test]
fn a_session_configures_boots_pauses_and_its_snapshot_loads_into_a_fresh_one() {
    let dir = scratch("session");
    let mut vm = session(&dir);
    assert_eq!(vm.state(), Some(InstanceState::NotStarted));
    // Pause, snapshots and actions wait for the VM.
    assert_eq!(
        send(&mut vm, "PATCH", "/vm", r#"{"state": "Paused"}"#).status,
        400
    );
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, tiny_guest().display());
    assert_eq!(send(&mut vm, "PUT", "/boot-source", &boot).status, 204);
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(send(&mut vm, "PUT", "/actions", start).status, 204);
    assert_eq!(vm.state(), Some(InstanceState::Running));
    assert_eq!(send(&mut vm, "PUT", "/actions", start).status, 400);
    let info = send(&mut vm, "GET", "/", "");
    assert!(info.body.unwrap().contains(r#""state":"Running""#));

    let snapshot = pause_and_snapshot(vm, &dir);

    let mut restored = session(&dir);
    let load = snapshot.replace('}', r#", "resume_vm": true}"#);
    assert_eq!(
        send(&mut restored, "PUT", "/snapshot/load", &load).status,
        204
    );
    assert_eq!(restored.state(), Some(InstanceState::Running));
    drop(restored);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by the `api_session` fuzz target: a drive patched to another drive's image ran, and
/// every snapshot of that VM was refused on load ("attached twice").
#[test]
fn a_drive_cannot_be_patched_to_another_drives_image() {
    let dir = scratch("session-drives");
    for name in ["a.img", "b.img"] {
        std::fs::write(dir.join(name), vec![0u8; 4096]).unwrap();
    }
    let mut vm = session(&dir);
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, tiny_guest().display());
    assert_eq!(send(&mut vm, "PUT", "/boot-source", &boot).status, 204);
    for (id, file) in [("rootfs", "a.img"), ("scratch", "b.img")] {
        let drive = format!(
            r#"{{"drive_id": "{id}", "path_on_host": "{}", "is_root_device": {}}}"#,
            dir.join(file).display(),
            id == "rootfs"
        );
        let response = send(&mut vm, "PUT", &format!("/drives/{id}"), &drive);
        assert_eq!(response.status, 204);
    }
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(send(&mut vm, "PUT", "/actions", start).status, 204);

    let patch = format!(
        r#"{{"drive_id": "scratch", "path_on_host": "{}"}}"#,
        dir.join("a.img").display()
    );
    let response = send(&mut vm, "PATCH", "/drives/scratch", &patch);
    assert_eq!(response.status, 400, "{response:?}");
    assert!(response.body.unwrap().contains("attached twice"));
    // The same file under another name too.
    let patch = format!(
        r#"{{"drive_id": "scratch", "path_on_host": "{}"}}"#,
        dir.join(".").join("a.img").display()
    );
    assert_eq!(
        send(&mut vm, "PATCH", "/drives/scratch", &patch).status,
        400
    );
    let config = vm.config().unwrap();
    assert_eq!(config.vm.disk[1].path, dir.join("b.img"));

    // The VM as it is snapshots and loads.
    let snapshot = pause_and_snapshot(vm, &dir);
    let mut restored = session(&dir);
    let response = send(&mut restored, "PUT", "/snapshot/load", &snapshot);
    assert_eq!(response.status, 204, "{response:?}");
    assert_eq!(restored.state(), Some(InstanceState::Paused));
    drop(restored);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_guest_that_powers_off_ends_the_session() {
    let dir = scratch("session-end");
    let mut vm = session(&dir);
    // With test= the tiny guest powers the VM off after its marker.
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0 test=1"}}"#,
        tiny_guest().display()
    );
    assert_eq!(send(&mut vm, "PUT", "/boot-source", &boot).status, 204);
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(send(&mut vm, "PUT", "/actions", start).status, 204);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while vm.ended().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest did not power off"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(vm.ended().unwrap().contains("powered off"));
    assert_eq!(vm.state(), None);
    assert_eq!(send(&mut vm, "GET", "/", "").status, 503);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pauses `vm` through the API (its state must then be Paused), writes a full snapshot into
/// `dir` (vm.state, vm.mem) and shuts the VM down; returns the snapshot request's body, which a
/// load takes as it is.
fn pause_and_snapshot(mut vm: Session, dir: &Path) -> String {
    assert_eq!(
        send(&mut vm, "PATCH", "/vm", r#"{"state": "Paused"}"#).status,
        204
    );
    assert_eq!(vm.state(), Some(InstanceState::Paused));
    let snapshot = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        dir.join("vm.state").display(),
        dir.join("vm.mem").display()
    );
    assert_eq!(
        send(&mut vm, "PUT", "/snapshot/create", &snapshot).status,
        204
    );
    snapshot
}
