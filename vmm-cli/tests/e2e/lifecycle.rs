//! Tier 3 for the control API: a real guest counting on its console (`guest.test=count-gated`)
//! is paused (its COUNT lines stop), resumed (they go on with no gap and no restart), paused
//! again and snapshotted, its VMM is killed, and a new VMM process restores the snapshot: the
//! count continues where it stopped, to COUNT-DONE and exit code 0. Snapshots of a guest busy
//! writing its file system (full, then a diff over it) restore to a consistent file system.
//!
//! The guests' tests are gated (scripts/guest/tests/gate.sh): they cannot end before the test
//! opens their gate, so no step here depends on how fast the guest or the test host runs.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{guest, path_in, scaled, scratch, Gate, Running, BOOT_TIMEOUT, QUIET};

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

/// The numbers of the `PREFIX<n>` lines seen so far.
fn numbered(vm: &Running, prefix: &str) -> Vec<u32> {
    vm.seen
        .iter()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The numbers of the COUNT lines seen so far.
fn counts(vm: &Running) -> Vec<u32> {
    numbered(vm, "COUNT ")
}

fn assert_consecutive(numbers: &[u32], from: u32, what: &str) {
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(*n, from + i as u32, "{what}: lines {numbers:?}");
    }
}

/// Pauses the VMM at `sock` and collects everything its guest printed before the pause.
fn pause(vm: &mut Running, sock: &str) {
    ok(&["pause", "--api-sock", sock]);
    vm.collect_output();
}

fn snapshot(sock: &str, state: &str, mem: &str, diff: bool) {
    snapshot_keyed(sock, state, mem, diff, None);
}

/// [`snapshot`], sealed with `key_file` when given.
fn snapshot_keyed(sock: &str, state: &str, mem: &str, diff: bool, key_file: Option<&str>) {
    let mut args = vec![
        "snapshot",
        "create",
        "--api-sock",
        sock,
        "--snapshot",
        state,
        "--mem",
        mem,
    ];
    if diff {
        args.push("--diff");
    }
    if let Some(key) = key_file {
        args.extend(["--key-file", key]);
    }
    ok(&args);
}

fn kill(mut vm: Running) {
    vm.kill();
}

fn e2fsck_clean(image: &str, what: &str) {
    let fsck = Command::new("e2fsck")
        .args(["-fn", image])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck after {what}:\n{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn pause_resume_snapshot_kill_restore_continues_the_count() {
    count_goes_on_through_pause_snapshot_kill_and_restore("lifecycle", false);
}

/// The same with a sealed snapshot (`--key-file`): both files are encrypted and authenticated;
/// a restore with another key is refused before anything runs, the right key continues the count.
#[test]
fn sealed_snapshot_of_a_counting_guest_restores_and_continues() {
    count_goes_on_through_pause_snapshot_kill_and_restore("sealed", true);
}

fn count_goes_on_through_pause_snapshot_kill_and_restore(name: &str, sealed: bool) {
    let dir = scratch(name);
    let key = path_in(&dir, "snapshot.key");
    std::fs::write(&key, b"0123456789abcdef0123456789abcdef").unwrap();
    let key_file = sealed.then_some(key.as_str());
    let (sock, sock2) = (path_in(&dir, "api.sock"), path_in(&dir, "api2.sock"));
    let (state, mem) = (path_in(&dir, "snap.state"), path_in(&dir, "snap.mem"));
    let gate = Gate::new(&dir, "gate.img");
    let (kernel, initrd) = (guest("vmlinux"), super::virtio::test_initramfs());
    // The count goes on until the gate opens, whatever the machine's speed.
    let append = format!(
        "{QUIET} guest.test=count-gated guest.count=1 guest.interval_ms={} guest.gate=/dev/vda",
        scaled(200)
    );
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut vm = Running::start(&[
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--memory",
        "128M",
        "--disk",
        &gate.disk(),
        "--api-sock",
        &sock,
        "--append",
        &append,
    ]);
    vm.expect("COUNT 3", deadline);

    // Pause: the count stops. Everything printed before the pause is collected at once; a
    // guest that still ran would print a line every interval.
    pause(&mut vm, &sock);
    let status = vmm(&["status", "--api-sock", &sock]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("\"Paused\""));
    let at_pause = counts(&vm).len();
    std::thread::sleep(Duration::from_millis(10 * scaled(200)));
    vm.collect_output();
    assert_eq!(counts(&vm).len(), at_pause, "COUNT lines while paused");

    // Resume: it goes on from the next number.
    ok(&["resume", "--api-sock", &sock]);
    let next = format!("COUNT {}", at_pause + 2);
    vm.expect(&next, deadline);

    // Pause, snapshot, kill the VMM.
    pause(&mut vm, &sock);
    snapshot_keyed(&sock, &state, &mem, false, key_file);
    let before = counts(&vm);
    assert_consecutive(&before, 1, "first VMM");
    let last = *before.last().unwrap();
    kill(vm);

    // Restore in a new process: the count continues after `last`; once it has gone on for two
    // lines, the gate lets it end.
    let mut restore_args = vec![
        "restore",
        "--snapshot",
        &state,
        "--mem",
        &mem,
        "--api-sock",
        &sock2,
    ];
    if let Some(key) = key_file {
        let wrong = path_in(&dir, "wrong.key");
        std::fs::write(&wrong, b"fedcba9876543210fedcba9876543210").unwrap();
        let mut args = restore_args.clone();
        args.extend(["--key-file", &wrong]);
        let refused = vmm(&args);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        restore_args.extend(["--key-file", key]);
    }
    let mut restored = Running::start_raw(&restore_args);
    restored.expect(&format!("COUNT {}", last + 2), deadline);
    gate.open();
    let done = restored.expect("COUNT-DONE", deadline);
    let after = counts(&restored);
    assert_consecutive(&after, last + 1, "restored VMM");
    assert_eq!(
        done,
        format!("COUNT-DONE {}", after.last().unwrap()),
        "{after:?}"
    );
    restored.expect("GUEST-TEST-DONE", deadline);
    let (code, output) = restored.finish(deadline);
    assert_eq!(code, 0, "{output}");
    assert!(
        !output.contains("GUEST-INIT-OK"),
        "the restored guest booted again:\n{output}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A VM with the API on `sock` whose guest writes files to the ext4 disk `disk` (a `--disk`
/// spec, /dev/vda), cycling over 10 of them until `gate` (/dev/vdb) opens.
pub(crate) fn start_gated_diskwrite(disk: &str, gate: &Gate, sock: &str) -> Running {
    let kernel = guest("vmlinux");
    let initrd = super::virtio::test_initramfs();
    let append = format!(
        "{QUIET} guest.test=diskwrite guest.files=10 guest.interval_ms={} guest.gate=/dev/vdb",
        scaled(100)
    );
    Running::start(&[
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--memory",
        "128M",
        "--disk",
        disk,
        "--disk",
        &gate.disk(),
        "--api-sock",
        sock,
        "--append",
        &append,
    ])
}

#[test]
fn snapshot_mid_write_restores_a_consistent_file_system() {
    let dir = scratch("diskwrite");
    let (sock, sock2) = (path_in(&dir, "api.sock"), path_in(&dir, "api2.sock"));
    let (state, mem, image) = (
        path_in(&dir, "snap.state"),
        path_in(&dir, "snap.mem"),
        path_in(&dir, "disk.ext4"),
    );
    std::fs::copy(guest("rootfs.ext4"), &image).unwrap();
    let disk = format!("path={image}");
    // The gate runs: the guest keeps writing (cycling over 10 files) until the test opens it,
    // so the snapshot is taken while it writes, however fast it writes.
    let gate = Gate::new(&dir, "gate.img");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut vm = start_gated_diskwrite(&disk, &gate, &sock);
    vm.expect("DISKWRITE 5", deadline);
    pause(&mut vm, &sock);
    snapshot(&sock, &state, &mem, false);
    let last = *numbered(&vm, "DISKWRITE ").last().unwrap();
    kill(vm);

    let mut restored = Running::start_raw(&[
        "restore",
        "--snapshot",
        &state,
        "--mem",
        &mem,
        "--api-sock",
        &sock2,
    ]);
    // The restored guest goes on writing (a write after the snapshot), then may finish.
    restored.expect(&format!("DISKWRITE {}", last + 1), deadline);
    gate.open();
    restored.expect("DISKWRITE-OK 10", deadline);
    restored.expect("GUEST-TEST-DONE", deadline);
    let (code, output) = restored.finish(deadline);
    assert_eq!(code, 0, "{output}");
    e2fsck_clean(&image, "snapshot + restore mid-write");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn diff_snapshot_over_a_full_one_restores_mid_write() {
    use std::os::unix::fs::MetadataExt;

    let dir = scratch("diff");
    let (sock, sock2) = (path_in(&dir, "api.sock"), path_in(&dir, "api2.sock"));
    let (base_state, base_mem) = (path_in(&dir, "base.state"), path_in(&dir, "base.mem"));
    let (diff_state, diff_mem) = (path_in(&dir, "diff.state"), path_in(&dir, "diff.mem"));
    let image = path_in(&dir, "disk.ext4");
    std::fs::copy(guest("rootfs.ext4"), &image).unwrap();
    let disk = format!("path={image}");
    // The gate paces the guest: it writes files 1..5, then waits until the test allows more,
    // so what it dirties between the two snapshots is 7 files however fast it runs.
    let gate = Gate::new(&dir, "gate.img");
    gate.allow_up_to(5);
    let kernel = guest("vmlinux");
    let initrd = super::virtio::test_initramfs();
    let append = format!(
        "{QUIET} guest.test=diskwrite guest.files=30 guest.interval_ms={} guest.gate=/dev/vdb",
        scaled(100)
    );
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
        "--disk",
        &gate.disk(),
        "--api-sock",
        &sock,
        "--append",
        &append,
        "--track-dirty-pages",
    ]);
    vm.expect("DISKWRITE 5", deadline);
    pause(&mut vm, &sock);
    snapshot(&sock, &base_state, &base_mem, false);
    gate.allow_up_to(12);
    ok(&["resume", "--api-sock", &sock]);
    vm.expect("DISKWRITE 12", deadline);
    pause(&mut vm, &sock);
    snapshot(&sock, &diff_state, &diff_mem, true);
    kill(vm);

    let blocks = |p: &str| std::fs::metadata(p).unwrap().blocks();
    let (base_blocks, diff_blocks) = (blocks(&base_mem), blocks(&diff_mem));
    eprintln!("base memory file: {base_blocks} blocks, diff: {diff_blocks} blocks");
    assert!(
        diff_blocks * 4 < base_blocks,
        "the diff ({diff_blocks} blocks) is not much smaller than the base ({base_blocks})"
    );

    // The restored guest writes files 13..30, reads all 30 back and stops.
    gate.open();
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
    let numbers = numbered(&restored, "DISKWRITE ");
    assert_eq!(
        numbers,
        (13..=30).collect::<Vec<u32>>(),
        "the restored guest did not continue after DISKWRITE 12"
    );
    let (code, output) = restored.finish(deadline);
    assert_eq!(code, 0, "{output}");
    e2fsck_clean(&image, "diff snapshot + restore mid-write");
    let _ = std::fs::remove_dir_all(&dir);
}
