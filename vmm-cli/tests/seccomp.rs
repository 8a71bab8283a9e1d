//! Tier 2: every thread of a running `vmm` is confined by a seccomp filter, and a thread that
//! makes a syscall outside its list kills the process by SIGSYS with a line naming it. The
//! violation hook (`VMM_SECCOMP_TEST_VIOLATION`) exists only in builds with vmm-core's
//! `seccomp-test-hooks` feature, which this package's tests turn on.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{guest_file, scratch};

/// Waits for `ready` (at most a generous deadline).
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn vmm() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmm"));
    command.env_remove("VMM_SECCOMP_TEST_VIOLATION");
    command
}

/// The field `name` of a /proc status file.
fn status_field(status: &str, name: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
}

#[test]
fn every_thread_of_a_running_vmm_is_filtered() {
    let dir = scratch("seccomp-threads");
    let sock = dir.join("api.sock");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut child = vmm()
        .args(["run", "--serial", "none", "--memory", "64M", "--rng"])
        .args(["--kernel", &guest_file("tiny-pvh.elf")])
        .args(["--balloon", "stats_s=1"])
        .arg("--disk")
        .arg(format!("path={}", disk.display()))
        .arg("--vsock")
        .arg(format!("cid=3,socket={}", dir.join("v.sock").display()))
        .arg("--api-sock")
        .arg(&sock)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let task_dir = format!("/proc/{pid}/task");
    let names = || -> Vec<String> {
        std::fs::read_dir(&task_dir)
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
                    .map(|s| s.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    // Every thread started, and the main thread confined (it is last, once the VM runs).
    wait_until("the VMM's threads", || {
        let n = names();
        ["fc_api", "fc_vcpu 0", "vmm-events", "vmm-signals"]
            .iter()
            .all(|t| n.iter().any(|m| m == t))
            && std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| status_field(&s, "Seccomp:").as_deref() == Some("2"))
    });
    for entry in std::fs::read_dir(&task_dir).unwrap() {
        let path = entry.unwrap().path();
        let Ok(status) = std::fs::read_to_string(path.join("status")) else {
            continue; // A thread that ended meanwhile.
        };
        let name = status_field(&status, "Name:").unwrap_or_default();
        assert_eq!(
            status_field(&status, "Seccomp:").as_deref(),
            Some("2"),
            "thread {name}"
        );
        assert_eq!(
            status_field(&status, "NoNewPrivs:").as_deref(),
            Some("1"),
            "thread {name}"
        );
    }
    // Still answering: pause, a snapshot, resume.
    for args in [
        vec!["pause"],
        vec!["snapshot", "create"],
        vec!["resume"],
        vec!["status"],
    ] {
        let mut command = vmm();
        command.args(&args).arg("--api-sock").arg(&sock);
        if args[0] == "snapshot" {
            command
                .arg("--snapshot")
                .arg(dir.join("s.state"))
                .arg("--mem")
                .arg(dir.join("s.mem"));
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_ne!(status.signal(), Some(libc::SIGSYS));
    let _ = std::fs::remove_dir_all(dir);
}

/// Makes `kind`'s thread break its filter and checks how the process ends.
fn violation(kind: &str, thread: &str, extra: &[&str]) {
    let dir = scratch(&format!("seccomp-violation-{kind}"));
    let out = vmm()
        .args(["run", "--serial", "none", "--memory", "64M"])
        .args(["--kernel", &guest_file("tiny-pvh.elf")])
        .args(["--cmdline", "test=1"])
        .args(extra)
        .arg("--api-sock")
        .arg(dir.join("api.sock"))
        .env("VMM_SECCOMP_TEST_VIOLATION", kind)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{kind}: {:?} {stderr}",
        out.status
    );
    let expected = format!(
        "vmm: seccomp: thread '{thread}' ({kind} filter) made forbidden syscall {}",
        libc::SYS_socket
    );
    assert!(stderr.contains(&expected), "{kind}: {stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_forbidden_syscall_kills_the_process_by_sigsys_naming_the_thread() {
    violation("vcpu", "fc_vcpu 0", &[]);
    violation("api", "fc_api", &[]);
    violation("events", "vmm-events", &[]);
    violation("signals", "vmm-signals", &[]);
    violation("vmm", "main", &[]);
}

#[test]
fn the_metrics_thread_is_filtered_too() {
    let dir = scratch("seccomp-violation-metrics-file");
    let metrics = dir.join("metrics.json");
    std::fs::write(&metrics, b"").unwrap();
    // The firecracker front end starts the metrics thread when it has a metrics file.
    let out = vmm()
        .args(["firecracker", "--no-api", "--metrics-path"])
        .arg(&metrics)
        .arg("--config-file")
        .arg(write_fc_config(&dir))
        .env("VMM_SECCOMP_TEST_VIOLATION", "metrics")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{stderr}");
    assert!(
        stderr.contains("thread 'vmm-metrics' (metrics filter) made forbidden syscall"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn write_fc_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("vm.json");
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": guest_file("tiny-pvh.elf"), "boot_args": "test=1"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
    });
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

#[test]
fn no_seccomp_and_custom_filters() {
    let dir = scratch("seccomp-flags");
    // --no-seccomp: the hook's syscall is harmless and the guest runs to its end.
    let out = vmm()
        .args(["run", "--serial", "none", "--memory", "64M", "--no-seccomp"])
        .args([
            "--kernel",
            &guest_file("tiny-pvh.elf"),
            "--cmdline",
            "test=1",
        ])
        .env("VMM_SECCOMP_TEST_VIOLATION", "vcpu")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // A filter file that lets the vCPU thread write and exit, nothing else.
    let file = dir.join("filters.json");
    let allow_all = r#"{"mismatch_action": "allow", "match_action": "trap", "filter": [{"syscall": "kexec_load"}]}"#;
    let strict = r#"{"mismatch_action": "trap", "match_action": "allow", "filter": [{"syscall": "write"}, {"syscall": "exit_group"}]}"#;
    std::fs::write(
        &file,
        format!(r#"{{"vmm": {allow_all}, "api": {allow_all}, "vcpu": {strict}}}"#),
    )
    .unwrap();
    let out = vmm()
        .args([
            "run",
            "--serial",
            "none",
            "--memory",
            "64M",
            "--seccomp-filter",
        ])
        .arg(&file)
        .args([
            "--kernel",
            &guest_file("tiny-pvh.elf"),
            "--cmdline",
            "test=1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{stderr}");
    assert!(
        stderr.contains("thread 'fc_vcpu 0' (vcpu filter) made forbidden syscall"),
        "{stderr}"
    );
    // A broken file is refused before anything runs.
    std::fs::write(&file, "{").unwrap();
    let out = vmm()
        .args(["run", "--seccomp-filter"])
        .arg(&file)
        .args(["--kernel", &guest_file("tiny-pvh.elf")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot compile the seccomp filters"));
    let _ = std::fs::remove_dir_all(dir);
}
