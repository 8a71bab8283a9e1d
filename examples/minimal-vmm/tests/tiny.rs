//! Tier 2: the minimal-vmm binary on this machine's /dev/kvm with the tiny PVH guest
//! (VMM_GUEST_DIR, default ../shared/guest beside the workspace), and its answers to bad input.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn guest_file(name: &str) -> String {
    let dir = std::env::var_os("VMM_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/guest"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: set VMM_GUEST_DIR to the guest image folder",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// Runs minimal-vmm with `args`; kills it after a minute (the tiny guest needs milliseconds).
fn minimal_vmm(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_minimal-vmm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "minimal-vmm {args:?} still ran after 60 s; stdout:\n{}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Exit code 1 and one line on stderr: `minimal-vmm: error: ...` containing `needle`.
fn assert_one_error_line(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line expected, got: {stderr}");
    assert!(lines[0].starts_with("minimal-vmm: error: "), "{stderr}");
    assert!(
        lines[0].contains(needle),
        "expected {needle:?} in: {stderr}"
    );
}

#[test]
fn tiny_pvh_guest_prints_its_marker_and_its_i8042_reset_ends_the_vmm() {
    for vcpus in ["1", "2"] {
        let kernel = guest_file("tiny-pvh.elf");
        let output = minimal_vmm(&[&kernel, "test=1", "--vcpus", vcpus]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stdout.lines().any(|l| l.starts_with("GUEST-INIT-OK")),
            "{stdout}{stderr}"
        );
        assert!(
            stdout.lines().any(|l| l.starts_with("GUEST-TEST-DONE")),
            "{stdout}{stderr}"
        );
        assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
        assert!(
            stderr.contains("the guest reset the VM (i8042)"),
            "{stderr}"
        );
    }
}

#[test]
fn a_missing_kernel_is_one_error_line() {
    let output = minimal_vmm(&["/nonexistent/vmlinux"]);
    assert_one_error_line(&output, "cannot open kernel /nonexistent/vmlinux");
}

#[test]
fn a_file_that_is_no_kernel_is_one_error_line() {
    let path = std::env::temp_dir().join(format!("minimal-vmm-test-{}.txt", std::process::id()));
    std::fs::write(&path, "not a kernel\n").unwrap();
    let output = minimal_vmm(&[path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_one_error_line(&output, "is not a kernel");
}

#[test]
fn bad_arguments_are_one_error_line() {
    let kernel = guest_file("tiny-pvh.elf");
    assert_one_error_line(&minimal_vmm(&[]), "usage: minimal-vmm KERNEL");
    assert_one_error_line(&minimal_vmm(&[&kernel, "--vcpus", "x"]), "--vcpus");
    assert_one_error_line(
        &minimal_vmm(&[&kernel, "--initrd"]),
        "--initrd needs a FILE",
    );
    assert_one_error_line(
        &minimal_vmm(&[&kernel, "--initrd", "/nonexistent/initrd"]),
        "cannot open initrd /nonexistent/initrd",
    );
    assert_one_error_line(
        &minimal_vmm(&[&kernel, "--bogus"]),
        "unknown option --bogus",
    );
}
