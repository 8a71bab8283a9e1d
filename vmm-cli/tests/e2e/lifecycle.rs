//! Tier 3 for the control API: a real guest counting on its console (`guest.test=count`) is
//! paused (its COUNT lines stop), resumed (they go on with no gap and no restart), paused again
//! and snapshotted, its VMM is killed, and a new VMM process restores the snapshot: the count
//! continues where it stopped, to COUNT-DONE and exit code 0.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{guest, Running, BOOT_TIMEOUT, QUIET};

fn vmm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("run vmm")
}

fn ok(args: &[&str]) {
    let out = vmm(args);
    assert!(
        out.status.success(),
        "vmm {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The numbers of the COUNT lines seen so far.
fn counts(vm: &Running) -> Vec<u32> {
    vm.seen
        .iter()
        .filter_map(|l| l.strip_prefix("COUNT "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Reads output for `how_long`.
fn drain(vm: &mut Running, how_long: Duration) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        if let Ok(line) = vm.lines.recv_timeout(Duration::from_millis(50)) {
            vm.seen.push(line);
        }
    }
}

fn assert_consecutive(numbers: &[u32], from: u32, what: &str) {
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(*n, from + i as u32, "{what}: COUNT lines {numbers:?}");
    }
}

#[test]
fn pause_resume_snapshot_kill_restore_continues_the_count() {
    let dir = std::env::temp_dir().join(format!("vmm-e2e-lifecycle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| -> String { dir.join(name).to_string_lossy().into_owned() };
    let (sock, sock2) = (path("api.sock"), path("api2.sock"));
    let (state, mem) = (path("snap.state"), path("snap.mem"));
    let (kernel, initrd) = (guest("vmlinux"), guest("initramfs.cpio.gz"));
    let append = format!("{QUIET} guest.test=count guest.count=30 guest.interval_ms=200");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut vm = Running::start(&[
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--memory",
        "128M",
        "--api-sock",
        &sock,
        "--append",
        &append,
    ]);
    vm.expect("COUNT 3", deadline);

    // Pause: the count stops.
    ok(&["pause", "--api-sock", &sock]);
    let status = vmm(&["status", "--api-sock", &sock]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("\"Paused\""));
    drain(&mut vm, Duration::from_millis(300)); // a line already on its way may still arrive
    let at_pause = counts(&vm).len();
    drain(&mut vm, Duration::from_secs(2));
    assert_eq!(counts(&vm).len(), at_pause, "COUNT lines while paused");

    // Resume: it goes on from the next number.
    ok(&["resume", "--api-sock", &sock]);
    let next = format!("COUNT {}", at_pause + 2);
    vm.expect(&next, deadline);

    // Pause, snapshot, kill the VMM.
    ok(&["pause", "--api-sock", &sock]);
    drain(&mut vm, Duration::from_millis(300));
    ok(&[
        "snapshot",
        "create",
        "--api-sock",
        &sock,
        "--snapshot",
        &state,
        "--mem",
        &mem,
    ]);
    let before = counts(&vm);
    assert_consecutive(&before, 1, "first VMM");
    let last = *before.last().unwrap();
    vm.child.kill().unwrap();
    let _ = vm.child.wait();

    // Restore in a new process: the count continues after `last`.
    let mut restored = Running::start_raw(&[
        "restore",
        "--snapshot",
        &state,
        "--mem",
        &mem,
        "--api-sock",
        &sock2,
    ]);
    restored.expect("COUNT-DONE 30", deadline);
    let after = counts(&restored);
    assert!(!after.is_empty(), "no COUNT after restore");
    assert_consecutive(&after, last + 1, "restored VMM");
    restored.expect("GUEST-TEST-DONE", deadline);
    let (code, output) = restored.finish(deadline);
    assert_eq!(code, 0, "{output}");
    let _ = std::fs::remove_dir_all(PathBuf::from(&dir));
}

#[test]
fn snapshot_mid_write_restores_a_consistent_file_system() {
    let dir = std::env::temp_dir().join(format!("vmm-e2e-diskwrite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| -> String { dir.join(name).to_string_lossy().into_owned() };
    let (sock, sock2) = (path("api.sock"), path("api2.sock"));
    let (state, mem, image) = (path("snap.state"), path("snap.mem"), path("disk.ext4"));
    std::fs::copy(guest("rootfs.ext4"), &image).unwrap();
    let disk = format!("path={image}");
    let kernel = guest("vmlinux");
    let initrd = super::virtio::test_initramfs();
    let append = format!("{QUIET} guest.test=diskwrite guest.files=30");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut vm = Running::start(&[
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--memory",
        "128M",
        "--disk",
        &disk,
        "--api-sock",
        &sock,
        "--append",
        &append,
    ]);
    vm.expect("DISKWRITE 5", deadline);
    ok(&["pause", "--api-sock", &sock]);
    ok(&[
        "snapshot",
        "create",
        "--api-sock",
        &sock,
        "--snapshot",
        &state,
        "--mem",
        &mem,
    ]);
    vm.child.kill().unwrap();
    let _ = vm.child.wait();

    let mut restored = Running::start_raw(&[
        "restore",
        "--snapshot",
        &state,
        "--mem",
        &mem,
        "--api-sock",
        &sock2,
    ]);
    restored.expect("DISKWRITE-OK 30", deadline);
    restored.expect("GUEST-TEST-DONE", deadline);
    let (code, output) = restored.finish(deadline);
    assert_eq!(code, 0, "{output}");
    let fsck = Command::new("e2fsck")
        .args(["-fn", &image])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck after snapshot + restore mid-write:\n{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn diff_snapshot_over_a_full_one_restores_mid_write() {
    use std::os::unix::fs::MetadataExt;

    let dir = std::env::temp_dir().join(format!("vmm-e2e-diff-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| -> String { dir.join(name).to_string_lossy().into_owned() };
    let (sock, sock2) = (path("api.sock"), path("api2.sock"));
    let (base_state, base_mem) = (path("base.state"), path("base.mem"));
    let (diff_state, diff_mem) = (path("diff.state"), path("diff.mem"));
    let image = path("disk.ext4");
    std::fs::copy(guest("rootfs.ext4"), &image).unwrap();
    let disk = format!("path={image}");
    let kernel = guest("vmlinux");
    let initrd = super::virtio::test_initramfs();
    let append = format!("{QUIET} guest.test=diskwrite guest.files=30");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut vm = Running::start(&[
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--memory",
        "128M",
        "--disk",
        &disk,
        "--api-sock",
        &sock,
        "--append",
        &append,
        "--track-dirty-pages",
    ]);
    vm.expect("DISKWRITE 5", deadline);
    ok(&["pause", "--api-sock", &sock]);
    ok(&[
        "snapshot",
        "create",
        "--api-sock",
        &sock,
        "--snapshot",
        &base_state,
        "--mem",
        &base_mem,
    ]);
    ok(&["resume", "--api-sock", &sock]);
    vm.expect("DISKWRITE 12", deadline);
    ok(&["pause", "--api-sock", &sock]);
    ok(&[
        "snapshot",
        "create",
        "--api-sock",
        &sock,
        "--snapshot",
        &diff_state,
        "--mem",
        &diff_mem,
        "--diff",
    ]);
    vm.child.kill().unwrap();
    let _ = vm.child.wait();

    let blocks = |p: &str| std::fs::metadata(p).unwrap().blocks();
    let (base_blocks, diff_blocks) = (blocks(&base_mem), blocks(&diff_mem));
    eprintln!("base memory file: {base_blocks} blocks, diff: {diff_blocks} blocks");
    assert!(
        diff_blocks * 4 < base_blocks,
        "the diff ({diff_blocks} blocks) is not much smaller than the base ({base_blocks})"
    );

    let mut restored = Running::start_raw(&[
        "restore",
        "--snapshot",
        &diff_state,
        "--mem",
        &base_mem,
        "--mem-diff",
        &diff_mem,
        "--api-sock",
        &sock2,
    ]);
    restored.expect("DISKWRITE-OK 30", deadline);
    restored.expect("GUEST-TEST-DONE", deadline);
    let numbers: Vec<u32> = restored
        .seen
        .iter()
        .filter_map(|l| l.strip_prefix("DISKWRITE "))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    assert!(
        numbers.first().is_some_and(|&n| n > 12),
        "the restored guest did not continue after DISKWRITE 12: {numbers:?}"
    );
    let (code, output) = restored.finish(deadline);
    assert_eq!(code, 0, "{output}");
    let fsck = Command::new("e2fsck")
        .args(["-fn", &image])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck after diff snapshot + restore mid-write:\n{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
