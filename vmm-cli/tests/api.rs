//! Tier 2: the control API on this machine's /dev/kvm with the tiny PVH guest (which prints its
//! marker and halts; with the in-kernel irqchip the halted VM keeps running). Every endpoint,
//! good and bad requests, pause/resume, full snapshots and their restore in a new process,
//! configuration through the API before boot, and clients that misbehave.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{fault, guest_file, parse_response, scratch};

/// A `vmm` process serving the API; killed on drop.
struct Vmm {
    child: Child,
    sock: PathBuf,
}

impl Vmm {
    fn start(args: &[&str], sock: &Path) -> Vmm {
        let child = Command::new(env!("CARGO_BIN_EXE_vmm"))
            .args(args)
            .arg("--api-sock")
            .arg(sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let vmm = Vmm {
            child,
            sock: sock.to_path_buf(),
        };
        // Waits for the socket to accept (the VMM binds it before it reads the kernel), or for
        // the VMM to end; the deadline is an upper bound only.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut vmm = vmm;
        while UnixStream::connect(sock).is_err() {
            if let Some(status) = vmm.child.try_wait().unwrap() {
                let mut stderr = String::new();
                if let Some(mut pipe) = vmm.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!("vmm ended ({status}) before its API socket appeared: {stderr}");
            }
            assert!(Instant::now() < deadline, "the API socket never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        vmm
    }

    fn run(kernel_args: &[&str], sock: &Path) -> Vmm {
        let mut args = vec!["run", "--serial", "none"];
        args.extend_from_slice(kernel_args);
        Vmm::start(&args, sock)
    }

    /// One request; returns (status, body).
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let raw = match body {
            Some(b) => format!(
                "{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
            None => format!("{method} {path} HTTP/1.1\r\n\r\n"),
        };
        let responses = self.raw(raw.as_bytes(), 1);
        responses.into_iter().next().unwrap()
    }

    /// Sends raw bytes and reads `count` responses.
    fn raw(&self, bytes: &[u8], count: usize) -> Vec<(u16, String)> {
        let mut stream = UnixStream::connect(&self.sock).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        let mut got = Vec::new();
        let mut buf = Vec::new();
        while got.len() < count {
            if let Some((response, used)) = parse_response(&buf) {
                got.push(response);
                buf.drain(..used);
                continue;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed after {} responses", got.len());
            buf.extend_from_slice(&chunk[..n]);
        }
        got
    }

    fn state(&self) -> String {
        let (status, body) = self.call("GET", "/", None);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["state"].as_str().unwrap().to_string()
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn running_vm_endpoints_pause_resume_and_snapshots() {
    let dir = scratch("running");
    let kernel = guest_file("tiny-pvh.elf");
    let vm = Vmm::run(
        &["--kernel", &kernel, "--memory", "64M", "--id", "tiny-1"],
        &dir.join("api.sock"),
    );
    assert_eq!(vm.state(), "Running");
    let (_, body) = vm.call("GET", "/", None);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["id"], "tiny-1", "{body}");
    let (status, body) = vm.call("GET", "/version", None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = vm.call("GET", "/vm/config", None);
    assert_eq!(status, 200);
    assert!(body.contains("tiny-pvh.elf"), "{body}");
    let (status, body) = vm.call("GET", "/machine-config", None);
    assert_eq!(status, 200);
    assert!(body.contains("\"mem_size_mib\":64"), "{body}");

    // Snapshots need a paused VM.
    let snap = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let create = format!(
        r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        snap("s.state"),
        snap("s.mem")
    );
    let (status, body) = vm.call("PUT", "/snapshot/create", Some(&create));
    assert_eq!(status, 400);
    assert!(fault(&body).contains("pause"), "{body}");

    // Pause and resume, twice; a second pause or resume is harmless.
    for _ in 0..2 {
        assert_eq!(
            vm.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
            204
        );
        assert_eq!(
            vm.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
            204
        );
        assert_eq!(vm.state(), "Paused");
        assert_eq!(
            vm.call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0,
            204
        );
        assert_eq!(vm.state(), "Running");
    }
    assert_eq!(
        vm.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    assert_eq!(vm.call("PUT", "/snapshot/create", Some(&create)).0, 204);
    assert!(dir.join("s.state").exists() && dir.join("s.mem").exists());
    assert_eq!(
        std::fs::metadata(dir.join("s.mem")).unwrap().len(),
        64 << 20,
        "memory file holds all of RAM"
    );

    // Actions and requests that only make sense before boot.
    assert_eq!(
        vm.call(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "FlushMetrics"}"#)
        )
        .0,
        400,
        "no metrics system yet: refused, not a silent 204"
    );
    assert_eq!(
        vm.call(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#)
        )
        .0,
        204
    );
    assert_eq!(
        vm.call(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "PressPowerButton"}"#)
        )
        .0,
        204,
        "the ACPI power button (the tiny guest ignores it)"
    );
    let (status, _) = vm.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 400);
    let (status, body) = vm.call(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/x"}"#),
    );
    assert_eq!(status, 400);
    assert!(fault(&body).contains("before the VM starts"), "{body}");

    // Restore the snapshot in a new process, paused, then resume it.
    let restored = Vmm::start(
        &[
            "restore",
            "--snapshot",
            &snap("s.state"),
            "--mem",
            &snap("s.mem"),
            "--paused",
        ],
        &dir.join("api2.sock"),
    );
    assert_eq!(restored.state(), "Paused");
    assert_eq!(
        restored
            .call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#))
            .0,
        204
    );
    assert_eq!(restored.state(), "Running");
    let (status, body) = restored.call("GET", "/vm/config", None);
    assert_eq!(status, 200);
    assert!(body.contains("tiny-pvh.elf"), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_requests_get_4xx_and_the_vmm_keeps_serving() {
    let dir = scratch("bad");
    let kernel = guest_file("tiny-pvh.elf");
    let vm = Vmm::run(
        &["--kernel", &kernel, "--memory", "64M"],
        &dir.join("api.sock"),
    );
    let (_, body) = vm.call("GET", "/", None);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["id"], "anonymous-instance", "{body}");
    for (method, path, body, want) in [
        ("GET", "/nowhere", None, 400),
        ("DELETE", "/vm", None, 405),
        ("PATCH", "/vm", Some("{not json"), 400),
        ("PATCH", "/vm", Some(r#"{"state": "Sleeping"}"#), 400),
        (
            "PATCH",
            "/vm",
            Some(r#"{"state": "Paused", "extra": 1}"#),
            400,
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "Explode"}"#),
            400,
        ),
        (
            "PUT",
            "/drives/a",
            Some(
                r#"{"drive_id": "b", "path_on_host": "/x", "is_root_device": false, "is_read_only": false}"#,
            ),
            400,
        ),
        (
            "PUT",
            "/snapshot/create",
            Some(r#"{"snapshot_path": "/tmp/x"}"#),
            400,
        ),
    ] {
        let (status, response) = vm.call(method, path, body);
        assert_eq!(status, want, "{method} {path}: {response}");
        assert!(
            !fault(&response).is_empty(),
            "{method} {path}: no fault message"
        );
    }
    // Oversized body and a garbage head: refused, the connection closed, the VMM alive.
    let big = format!("PUT /vm HTTP/1.1\r\nContent-Length: {}\r\n\r\n", 10 << 20);
    let (status, _) = vm.raw(big.as_bytes(), 1)[0].clone();
    assert_eq!(status, 413);
    let (status, _) = vm.raw(b"\x00\x01garbage\r\n\r\n", 1)[0].clone();
    assert_eq!(status, 400);
    // Two pipelined requests on one connection.
    let two = vm.raw(b"GET / HTTP/1.1\r\n\r\nGET /version HTTP/1.1\r\n\r\n", 2);
    assert_eq!((two[0].0, two[1].0), (200, 200));
    // A client that connects and says nothing does not block the others.
    let _silent = UnixStream::connect(dir.join("api.sock")).unwrap();
    assert_eq!(vm.state(), "Running");
    // The CLI client: one line and exit 1 when nobody listens.
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["pause", "--api-sock"])
        .arg(dir.join("nobody.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("vmm: error: cannot connect to the API socket"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn configure_through_the_api_then_start_and_load_snapshots() {
    let dir = scratch("preboot");
    let kernel = guest_file("tiny-pvh.elf");
    let vm = Vmm::start(&["run", "--serial", "none"], &dir.join("api.sock"));
    assert_eq!(vm.state(), "Not started");
    let (status, body) = vm.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!(status, 400, "{body}");
    // InstanceStart without a kernel: refused, still configurable.
    let (status, body) = vm.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 400);
    assert!(fault(&body).contains("kernel"), "{body}");
    let boot = format!(r#"{{"kernel_image_path": "{kernel}", "boot_args": "console=ttyS0"}}"#);
    assert_eq!(vm.call("PUT", "/boot-source", Some(&boot)).0, 204);
    assert_eq!(
        vm.call(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 2, "mem_size_mib": 64}"#)
        )
        .0,
        204
    );
    let disk = dir.join("d.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let drive = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": true}}"#,
        disk.display()
    );
    assert_eq!(vm.call("PUT", "/drives/data", Some(&drive)).0, 204);
    let (status, body) = vm.call("GET", "/vm/config", None);
    assert_eq!(status, 200);
    assert!(
        body.contains("\"vcpu_count\":2") && body.contains("\"drive_id\":\"data\""),
        "{body}"
    );
    assert_eq!(
        vm.call(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#)
        )
        .0,
        204
    );
    assert_eq!(vm.state(), "Running");
    assert_eq!(
        vm.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    let (state, mem) = (dir.join("s.state"), dir.join("s.mem"));
    let create = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        state.display(),
        mem.display()
    );
    assert_eq!(vm.call("PUT", "/snapshot/create", Some(&create)).0, 204);

    // A second VMM waiting for configuration loads it; corrupted and truncated state files are
    // refused first, and it keeps waiting.
    let loader = Vmm::start(&["run", "--serial", "none"], &dir.join("api2.sock"));
    let bad = dir.join("bad.state");
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0xff;
    std::fs::write(&bad, &bytes).unwrap();
    let load = |state: &Path| {
        format!(
            r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": true}}"#,
            state.display(),
            mem.display()
        )
    };
    let (status, body) = loader.call("PUT", "/snapshot/load", Some(&load(&bad)));
    assert_eq!(status, 400);
    assert!(fault(&body).contains("checksum"), "{body}");
    bytes.truncate(40);
    std::fs::write(&bad, &bytes).unwrap();
    let (status, body) = loader.call("PUT", "/snapshot/load", Some(&load(&bad)));
    assert_eq!(status, 400);
    assert!(fault(&body).contains("truncated"), "{body}");
    assert_eq!(loader.state(), "Not started");
    assert_eq!(
        loader.call("PUT", "/snapshot/load", Some(&load(&state))).0,
        204
    );
    assert_eq!(loader.state(), "Running");
    let (_, body) = loader.call("GET", "/machine-config", None);
    assert!(body.contains("\"vcpu_count\":2"), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_guest_booted_with_acpi_off_has_no_power_button() {
    let dir = scratch("acpi-off");
    let kernel = guest_file("tiny-pvh.elf");
    let sock = dir.join("api.sock");
    let vm = Vmm::run(
        &[
            "--kernel", &kernel, "--memory", "64M", "--append", "acpi=off",
        ],
        &sock,
    );
    let (status, body) = vm.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "PressPowerButton"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("acpi=off"), "{body}");
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stop_asks_the_guest_then_forces_and_the_exit_codes_say_which() {
    // The tiny guest handles neither the ACPI power button nor Ctrl+Alt+Del, so the stop is
    // forced after the timeout: `vmm stop` exits 4 and the VMM 128 + SIGTERM.
    let dir = scratch("stop");
    let kernel = guest_file("tiny-pvh.elf");
    let sock = dir.join("api.sock");
    let mut vm = Vmm::run(&["--kernel", &kernel, "--memory", "64M"], &sock);
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["stop", "--timeout", "1", "--api-sock"])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("SIGTERM"));
    let status = vm.child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15));
    assert!(!sock.exists(), "the VMM removes its API socket");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `vmm snapshot create --key-file` seals the snapshot; `vmm restore --key-file` restores it;
/// a flipped byte in either file, the wrong key or no key make `vmm restore` fail with one line
/// and a non-zero exit before the guest runs; `vmm snapshot load --key-file` loads it through
/// the API.
#[test]
fn sealed_snapshots_restore_with_their_key_only() {
    let dir = scratch("sealed");
    let kernel = guest_file("tiny-pvh.elf");
    let key = dir.join("key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, [8u8; 48]).unwrap();
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let vmm = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vmm"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let vm = Vmm::run(
        &["--kernel", &kernel, "--memory", "64M"],
        &dir.join("api.sock"),
    );
    let sock = path("api.sock");
    assert!(vmm(&["pause", "--api-sock", &sock]).status.success());
    let out = vmm(&[
        "snapshot",
        "create",
        "--api-sock",
        &sock,
        "--snapshot",
        &path("s.state"),
        "--mem",
        &path("s.mem"),
        "--key-file",
        &path("key"),
    ]);
    assert!(out.status.success(), "{out:?}");
    drop(vm);

    fn restore<'a>(state: &'a str, mem: &'a str, key: Option<&'a str>) -> Vec<&'a str> {
        let mut args = vec!["restore", "--snapshot", state, "--mem", mem];
        if let Some(key) = key {
            args.extend(["--key-file", key]);
        }
        args
    }
    // The refusals: one line, exit 1, nothing run.
    let refused = |args: &[&str], needle: &str| {
        let out = vmm(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    };
    let (s_state, s_mem, s_key, s_wrong, s_bad) = (
        path("s.state"),
        path("s.mem"),
        path("key"),
        path("wrong"),
        path("bad"),
    );
    let state = std::fs::read(dir.join("s.state")).unwrap();
    let mem = std::fs::read(dir.join("s.mem")).unwrap();
    for (name, bytes, at) in [("s.state", &state, 70), ("s.mem", &mem, mem.len() / 3)] {
        let mut bad = bytes.clone();
        bad[at] ^= 1;
        std::fs::write(dir.join("bad"), &bad).unwrap();
        let args = if name == "s.state" {
            restore(&s_bad, &s_mem, Some(&s_key))
        } else {
            restore(&s_state, &s_bad, Some(&s_key))
        };
        refused(&args, "failed authentication");
    }
    refused(
        &restore(&s_state, &s_mem, Some(&s_wrong)),
        "the key does not match",
    );
    refused(&restore(&s_state, &s_mem, None), "is sealed (encrypted)");

    // The good key: the restored VM runs.
    let args = restore(&s_state, &s_mem, Some(&s_key));
    let restored = Vmm::start(&args, &dir.join("api2.sock"));
    assert_eq!(restored.state(), "Running");
    drop(restored);

    // PUT /snapshot/load with key_file, through `vmm snapshot load`.
    let loader = Vmm::start(&["run", "--serial", "none"], &dir.join("api3.sock"));
    let out = vmm(&[
        "snapshot",
        "load",
        "--api-sock",
        &path("api3.sock"),
        "--snapshot",
        &s_state,
        "--mem",
        &s_mem,
        "--key-file",
        &s_key,
        "--resume",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(loader.state(), "Running");
    let _ = std::fs::remove_dir_all(&dir);
}
