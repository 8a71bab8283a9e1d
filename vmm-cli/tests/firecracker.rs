//! Tier 2: the binary under the name `firecracker`, driven as the engines that spawn
//! Firecracker drive it (firecracker-go-sdk, Kata Containers), on this machine's /dev/kvm with
//! the tiny PVH guest (it prints its marker and halts; the VM keeps running).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{fault, guest_file, no_content, scratch, wait_for_state, Connection};

/// A path to this build's `vmm` under the name `firecracker` (a symbolic link, as an
/// installer's link or copy would be).
fn firecracker_bin(dir: &Path) -> PathBuf {
    let link = dir.join("firecracker");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vmm"), &link).unwrap();
    }
    link
}

/// A `firecracker` process; killed on drop.
struct Firecracker {
    child: Child,
    sock: PathBuf,
}

impl Firecracker {
    fn spawn(dir: &Path, args: &[&str]) -> Firecracker {
        let sock = dir.join("fc.sock");
        let child = Command::new(firecracker_bin(dir))
            .arg("--api-sock")
            .arg(&sock)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Firecracker { child, sock }
    }

    /// A connection, once the socket is there; fails at once if the process ended first.
    fn connect(&mut self) -> Connection {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.sock.exists() {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!("firecracker ended ({status}) before its socket appeared: {stderr}");
            }
            assert!(Instant::now() < deadline, "the API socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        Connection::open(&self.sock)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The names of the process's threads.
    fn thread_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .unwrap()
            .filter_map(|task| {
                let comm = task.ok()?.path().join("comm");
                Some(std::fs::read_to_string(comm).ok()?.trim_end().to_string())
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for Firecracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn image(dir: &Path, name: &str, bytes: usize) -> String {
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; bytes]).unwrap();
    path.to_string_lossy().into_owned()
}

/// The last complete JSON line of a metrics file.
fn last_metrics_line(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().last().expect("no metrics line was written");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn version_help_and_unknown_flags() {
    let dir = scratch("fc-flags");
    let out = Command::new(firecracker_bin(&dir))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().next(),
        Some("Firecracker v1.16.1"),
        "{stdout}"
    );
    // `vmm firecracker ARGS...` is the same front end.
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["firecracker", "--version"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().lines().next(),
        Some("Firecracker v1.16.1")
    );
    for bad in [
        &["--frobnicate"][..],
        &["--no-api"],
        &["--level", "loud"],
        &["--api-sock"],
    ] {
        let out = Command::new(firecracker_bin(&dir))
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{bad:?}: {stderr}");
        assert!(stderr.starts_with("firecracker: "), "{stderr}");
    }
    let out = Command::new(firecracker_bin(&dir))
        .args(["--id", "bad id!"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("firecracker: error: --id: ") && stderr.lines().count() == 1,
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The requests firecracker-go-sdk sends for a VM with two drives, a tap, vsock and
/// metrics, over ONE kept-alive connection, then the checks its users make.
#[test]
fn go_sdk_sequence_on_one_connection() {
    let dir = scratch("fc-gosdk");
    let kernel = guest_file("tiny-pvh.elf");
    let root = image(&dir, "root.ext4", 1 << 20);
    let data = image(&dir, "data.img", 64 << 10);
    let log = dir.join("fc.log");
    let metrics = dir.join("fc.metrics");
    let vsock = dir.join("v.sock");
    let tap = format!("fcgo{}", std::process::id() % 100_000);
    let mut fc = Firecracker::spawn(&dir, &["--id", "gosdk-vm-1"]);
    let mut conn = fc.connect();

    // go-sdk polls this until the socket answers.
    let r = conn.call("GET", "/machine-config", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let info = wait_for_state(&mut conn, "Not started");
    assert_eq!(info["app_name"], "Firecracker");
    assert_eq!(info["id"], "gosdk-vm-1");
    assert_eq!(info["vmm_version"], "1.16.1");
    let r = conn.call("GET", "/version", None);
    assert_eq!(r.body, r#"{"firecracker_version":"1.16.1"}"#);

    let steps: Vec<(&str, String, String)> = vec![
        (
            "PUT",
            "/logger".into(),
            format!(
                r#"{{"log_path": "{}", "level": "Debug", "show_level": true, "show_log_origin": false}}"#,
                log.display()
            ),
        ),
        (
            "PUT",
            "/metrics".into(),
            format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
        ),
        (
            "PUT",
            "/machine-config".into(),
            r#"{"vcpu_count": 2, "mem_size_mib": 128, "smt": false, "track_dirty_pages": false, "cpu_template": null}"#.into(),
        ),
        (
            "PUT",
            "/boot-source".into(),
            format!(
                r#"{{"kernel_image_path": "{kernel}", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off", "initrd_path": null}}"#
            ),
        ),
        (
            "PUT",
            "/drives/root_drive".into(),
            format!(
                r#"{{"drive_id": "root_drive", "path_on_host": "{root}", "is_root_device": true, "is_read_only": false, "partuuid": null, "cache_type": "Unsafe", "io_engine": "Sync", "rate_limiter": null}}"#
            ),
        ),
        (
            "PUT",
            "/drives/1".into(),
            format!(
                r#"{{"drive_id": "1", "path_on_host": "{data}", "is_root_device": false, "is_read_only": true, "rate_limiter": {{}}}}"#
            ),
        ),
        (
            "PUT",
            "/network-interfaces/1".into(),
            format!(
                r#"{{"iface_id": "1", "host_dev_name": "{tap}", "guest_mac": "06:00:ac:10:00:02", "rx_rate_limiter": null, "tx_rate_limiter": {{}}}}"#
            ),
        ),
        (
            "PUT",
            "/vsock".into(),
            format!(
                r#"{{"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "{}"}}"#,
                vsock.display()
            ),
        ),
        (
            "PUT",
            "/balloon".into(),
            r#"{"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1}"#.into(),
        ),
        (
            "PUT",
            "/actions".into(),
            r#"{"action_type": "InstanceStart"}"#.into(),
        ),
    ];
    for (method, path, body) in &steps {
        no_content(
            conn.call(method, path, Some(body)),
            &format!("{method} {path}"),
        );
    }
    let info = wait_for_state(&mut conn, "Running");
    assert_eq!(info["app_name"], "Firecracker");

    // Kata places vCPU threads in cgroups by these names. A new thread names itself once it
    // runs, so the names are awaited (an upper bound only).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let names = fc.thread_names();
        let missing: Vec<&str> = ["fc_vcpu 0", "fc_vcpu 1", "fc_api"]
            .into_iter()
            .filter(|want| !names.iter().any(|n| n == want))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{missing:?} not in {names:?}");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The configuration reads back in Firecracker's shape, ids kept.
    let r = conn.call("GET", "/vm/config", None);
    assert_eq!(r.status, 200);
    let config: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(config["drives"][0]["drive_id"], "root_drive");
    assert_eq!(config["drives"][1]["drive_id"], "1");
    assert_eq!(config["network-interfaces"][0]["iface_id"], "1");
    assert_eq!(config["machine-config"]["vcpu_count"], 2);

    no_content(
        conn.call(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "FlushMetrics"}"#),
        ),
        "FlushMetrics",
    );
    let line = last_metrics_line(&metrics);
    for key in ["utc_timestamp_ms", "api_server", "signals", "logger"] {
        assert!(line.get(key).is_some(), "{key} missing from {line}");
    }
    // The log file got Firecracker-format lines from the API thread.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("[gosdk-vm-1:fc_api:INFO] The API server received a PUT /actions")),
        "{text}"
    );
    // The balloon's statistics (the tiny guest has no balloon driver: sizes only).
    let r = conn.call("GET", "/balloon/statistics", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let stats: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(stats["target_pages"], 0);
    assert_eq!(stats["actual_mib"], 0);
    no_content(
        conn.call(
            "PATCH",
            "/balloon/statistics",
            Some(r#"{"stats_polling_interval_s": 5}"#),
        ),
        "PATCH /balloon/statistics",
    );
    let r = conn.call("GET", "/balloon", None);
    assert!(
        r.body.contains(r#""stats_polling_interval_s":5"#),
        "{}",
        r.body
    );
    // Pause and resume stay 204 on the same connection.
    no_content(
        conn.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)),
        "pause",
    );
    wait_for_state(&mut conn, "Paused");
    no_content(
        conn.call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)),
        "resume",
    );
    wait_for_state(&mut conn, "Running");
    drop(fc);
    let _ = std::fs::remove_dir_all(dir);
}

/// Every request body shape Firecracker's spec defines for the configuration phase, answered
/// with the status Firecracker gives (or a clear 400 for what this VMM refuses).
#[test]
fn spec_request_shapes_before_boot() {
    let dir = scratch("fc-shapes");
    let kernel = guest_file("tiny-pvh.elf");
    let disk = image(&dir, "disk.img", 1 << 20);
    let mut fc = Firecracker::spawn(&dir, &[]);
    let mut conn = fc.connect();
    let metrics = dir.join("m.json");
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("GET", "/", String::new(), 200, ""),
        ("GET", "/version", String::new(), 200, ""),
        ("GET", "/machine-config", String::new(), 200, ""),
        ("GET", "/vm/config", String::new(), 200, ""),
        ("PUT", "/boot-source", format!(r#"{{"kernel_image_path": "{kernel}", "boot_args": "console=ttyS0"}}"#), 204, ""),
        ("PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": true, "track_dirty_pages": true, "huge_pages": "None"}"#.into(), 204, ""),
        ("PATCH", "/machine-config", r#"{"vcpu_count": 1}"#.into(), 204, ""),
        ("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"}"#.into(), 400, "CPU template"),
        ("PUT", "/machine-config", r#"{"vcpu_count": 3, "mem_size_mib": 128, "smt": true}"#.into(), 400, "even"),
        ("PUT", "/drives/rootfs", format!(r#"{{"drive_id": "rootfs", "path_on_host": "{disk}", "is_root_device": true, "is_read_only": false, "partuuid": "0eaa91a0-01", "cache_type": "Writeback", "io_engine": "Async", "rate_limiter": {{"bandwidth": {{"size": 1048576, "one_time_burst": 0, "refill_time": 1000}}, "ops": {{"size": 100, "refill_time": 1000}}}}}}"#), 204, ""),
        ("PUT", "/drives/vhost", r#"{"drive_id": "vhost", "is_root_device": false, "socket": "/s"}"#.into(), 400, "vhost-user"),
        ("PUT", "/network-interfaces/eth0", r#"{"iface_id": "eth0", "host_dev_name": "fcshape0", "guest_mac": "AA:FC:00:00:00:01", "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}, "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}"#.into(), 204, ""),
        ("PUT", "/vsock", format!(r#"{{"guest_cid": 3, "uds_path": "{}"}}"#, dir.join("v.sock").display()), 204, ""),
        ("PUT", "/entropy", r#"{"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#.into(), 204, ""),
        ("PUT", "/balloon", r#"{"amount_mib": 16, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#.into(), 204, ""),
        ("PATCH", "/balloon", r#"{"amount_mib": 8}"#.into(), 204, ""),
        ("GET", "/balloon", String::new(), 200, ""),
        ("PUT", "/logger", r#"{"level": "Warning", "show_level": false, "show_log_origin": false}"#.into(), 204, ""),
        ("PUT", "/logger", r#"{"level": "Loud"}"#.into(), 400, "log level"),
        ("PUT", "/metrics", format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()), 204, ""),
        ("PUT", "/mmds", r#"{"latest": {}}"#.into(), 400, "MMDS"),
        ("PUT", "/mmds/config", r#"{"network_interfaces": ["eth0"]}"#.into(), 400, "metadata"),
        ("PATCH", "/vm", r#"{"state": "Paused"}"#.into(), 400, "not started"),
        ("PUT", "/snapshot/create", r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#.into(), 400, "not started"),
        ("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#.into(), 204, ""),
        ("PATCH", "/drives/rootfs", r#"{"drive_id": "rootfs", "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#.into(), 400, ""),
        ("GET", "/balloon/statistics", String::new(), 400, ""),
        ("PUT", "/cpu-config", r#"{}"#.into(), 400, "no such endpoint"),
    ];
    for (method, path, body, status, needle) in cases {
        let body = (!body.is_empty()).then_some(body.as_str());
        let r = conn.call(method, path, body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        if status == 204 {
            assert!(r.body.is_empty());
        } else if status >= 400 {
            let message = fault(&r.body);
            assert!(
                message.to_lowercase().contains(&needle.to_lowercase()),
                "{method} {path}: {message:?} lacks {needle:?}"
            );
        }
    }
    // The metrics file got FlushMetrics' line even before boot.
    assert!(last_metrics_line(&metrics)
        .get("utc_timestamp_ms")
        .is_some());
    drop(fc);
    let _ = std::fs::remove_dir_all(dir);
}

/// Clients that open a connection per request and never close the old ones are never locked
/// out: the least recently used connection makes room.
#[test]
fn idle_connections_stay_open_and_the_oldest_makes_room() {
    let dir = scratch("fc-lru");
    let mut fc = Firecracker::spawn(&dir, &[]);
    let mut connections: Vec<Connection> = (0..20)
        .map(|_| {
            let mut conn = fc.connect();
            assert_eq!(conn.call("GET", "/", None).status, 200);
            conn
        })
        .collect();
    // 16 are kept: the four oldest were closed to let the newest in.
    for conn in &mut connections[..4] {
        assert!(conn.is_closed_by_server());
    }
    // Every kept connection still answers, the oldest kept one included.
    for conn in &mut connections[4..] {
        assert_eq!(conn.call("GET", "/machine-config", None).status, 200);
    }
    // A half-sent request is not what gets closed first when room is needed.
    let mut partial = UnixStream::connect(&fc.sock).unwrap();
    std::io::Write::write_all(
        &mut partial,
        b"PUT /logger HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
    )
    .unwrap();
    let mut newest = fc.connect();
    assert_eq!(newest.call("GET", "/", None).status, 200);
    assert!(connections[4].is_closed_by_server());
    std::io::Write::write_all(&mut partial, b"{}").unwrap();
    let mut reader = BufReader::new(partial);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 204"), "{status}");
    drop(fc);
    let _ = std::fs::remove_dir_all(dir);
}

/// `--no-api --config-file`: the VM boots from the file alone; SIGTERM flushes the metrics and
/// ends the process.
#[test]
fn no_api_config_file_boots_and_sigterm_flushes_metrics() {
    let dir = scratch("fc-noapi");
    let kernel = guest_file("tiny-pvh.elf");
    let metrics = dir.join("m.json");
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{kernel}", "boot_args": "console=ttyS0"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}},
                "metrics": {{"metrics_path": "{}"}}}}"#,
            metrics.display()
        ),
    )
    .unwrap();
    let mut fc = Firecracker::spawn(
        &dir,
        &["--no-api", "--config-file", config.to_str().unwrap()],
    );
    // The guest's marker arrives on stdout (the serial console).
    let mut stdout = BufReader::new(fc.child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "stdout ended before the marker: {seen}");
        seen.push_str(&line);
        if line.contains("GUEST-INIT-OK") {
            break;
        }
    }
    assert!(!fc.sock.exists(), "--no-api serves no socket");
    // SAFETY: kill sends a signal to our own child.
    assert_eq!(unsafe { libc::kill(fc.pid() as i32, libc::SIGTERM) }, 0);
    let status = fc.child.wait().unwrap();
    assert!(
        status.code().is_some(),
        "ended by the signal, not cleanly: {status}"
    );
    let line = last_metrics_line(&metrics);
    assert_eq!(line["signals"]["sigterm"], 1, "{line}");
    let mut stderr = String::new();
    fc.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Kata's sequence: the VM boots from a config file with eight zero-length placeholder
/// drives, then a container's image replaces one of them at run time.
#[test]
fn kata_placeholder_drives_are_patched_at_run_time() {
    let dir = scratch("fc-kata");
    let kernel = guest_file("tiny-pvh.elf");
    let drives: Vec<String> = (0..8)
        .map(|i| {
            let path = image(&dir, &format!("drive_{i}"), 0);
            format!(
                r#"{{"drive_id": "drive_{i}", "path_on_host": "{path}", "is_root_device": false, "is_read_only": false}}"#
            )
        })
        .collect();
    let config = dir.join("kata.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{kernel}"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}},
                "drives": [{}]}}"#,
            drives.join(",")
        ),
    )
    .unwrap();
    let mut fc = Firecracker::spawn(&dir, &["--config-file", config.to_str().unwrap()]);
    let mut conn = fc.connect();
    wait_for_state(&mut conn, "Running");
    let real = image(&dir, "container.img", 64 << 20);
    no_content(
        conn.call(
            "PATCH",
            "/drives/drive_0",
            Some(&format!(
                r#"{{"drive_id": "drive_0", "path_on_host": "{real}"}}"#
            )),
        ),
        "PATCH /drives/drive_0",
    );
    let r = conn.call("GET", "/vm/config", None);
    let config: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let ids: Vec<&str> = config["drives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["drive_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        (0..8).map(|i| format!("drive_{i}")).collect::<Vec<_>>(),
        "drives keep their configuration order"
    );
    assert_eq!(config["drives"][0]["path_on_host"], real.as_str());
    let r = conn.call(
        "PATCH",
        "/drives/nope",
        Some(r#"{"drive_id": "nope", "path_on_host": "/x"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    drop(fc);
    let _ = std::fs::remove_dir_all(dir);
}
