//! Tier 3 for disk image formats: a root file system on a qcow2 overlay, on clones in the
//! layered format (one, then two VMs at once on clones of one base), and a VM snapshot with a
//! layered disk restored twice onto two independent clones.
//!
//! The guest writes with the `diskwrite` test (scripts/guest/tests/diskwrite): it mounts the
//! ext4 file system on /dev/vda, writes `guest.files` files, reads them back and unmounts. The
//! host then checks the images with the formats' own tools (`qemu-img check`, `vmm disk check`)
//! and `e2fsck -fn`, and that the base images did not change (SHA-256).
//!
//! These need the qcow2 and layered formats in vmm-disk (and `vmm disk` wired to them).

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{guest, path_in, run_ok, scaled, Gate, Running, BOOT_TIMEOUT, QUIET};

/// A scratch directory for one test, removed when it passes.
fn scratch(test: &str) -> PathBuf {
    super::scratch(&format!("disk-{test}"))
}

/// `vmm ARGS`, which must succeed.
fn vmm_ok(args: &[&str]) -> String {
    run_ok(env!("CARGO_BIN_EXE_vmm"), args)
}

/// The SHA-256 of a file, as sha256sum prints it.
fn sha256(path: &str) -> String {
    run_ok("sha256sum", &[path])
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn e2fsck_clean(image: &str, what: &str) {
    run_ok("e2fsck", &["-fn", image]);
    eprintln!("e2fsck clean: {what}");
}

/// The names in the root directory of the ext4 image `image` (debugfs, read-only).
fn root_files(image: &str) -> Vec<String> {
    run_ok("debugfs", &["-R", "ls -p /", image])
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty())
        .collect()
}

/// The arguments of a VM whose /dev/vda is `disk` (a `--disk` spec) and whose guest writes
/// `files` files there with `diskwrite`, from the test initramfs.
fn diskwrite_args(disk: &str, files: u32) -> (Vec<String>, String) {
    let append = format!(
        "{QUIET} guest.test=diskwrite guest.files={files} guest.interval_ms={}",
        scaled(10)
    );
    let args = vec![
        "--kernel".to_string(),
        guest("vmlinux"),
        "--initrd".to_string(),
        super::virtio::test_initramfs(),
        "--memory".to_string(),
        "128M".to_string(),
        "--disk".to_string(),
        disk.to_string(),
    ];
    (args, append)
}

/// Starts a VM on `disk` writing `files` files.
fn start_writer(disk: &str, files: u32) -> Running {
    let (mut args, append) = diskwrite_args(disk, files);
    args.extend(["--append".to_string(), append]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Running::start(&args)
}

/// Waits for the writer to finish its files and the VM to end with 0.
fn finish_writer(mut vm: Running, files: u32, deadline: Instant) {
    vm.expect("GUEST-INIT-OK", deadline);
    vm.expect(&format!("DISKWRITE-OK {files}"), deadline);
    vm.expect("GUEST-TEST-DONE", deadline);
    let (code, output) = vm.finish(deadline);
    assert_eq!(code, 0, "{output}");
    assert!(!output.contains("vmm: error"), "{output}");
}

/// A copy of the shared rootfs.ext4 in `dir`, as raw.
fn rootfs_copy(dir: &Path) -> String {
    let base = path_in(dir, "rootfs.raw");
    std::fs::copy(guest("rootfs.ext4"), &base).unwrap();
    base
}

#[test]
fn qcow2_overlay_over_a_raw_base() {
    let dir = scratch("qcow2");
    let base = rootfs_copy(&dir);
    let before = sha256(&base);
    let overlay = path_in(&dir, "overlay.qcow2");
    run_ok(
        "qemu-img",
        &["create", "-f", "qcow2", "-b", &base, "-F", "raw", &overlay],
    );
    let deadline = Instant::now() + BOOT_TIMEOUT;
    // Detected by its magic; format= says the same.
    finish_writer(
        start_writer(&format!("path={overlay},format=qcow2"), 3),
        3,
        deadline,
    );
    run_ok("qemu-img", &["check", &overlay]);
    assert_eq!(sha256(&base), before, "the raw base is never written");
    // The overlay holds the guest's files: flattened to raw, the file system is clean and has
    // them.
    let flat = path_in(&dir, "flat.raw");
    run_ok("qemu-img", &["convert", "-O", "raw", &overlay, &flat]);
    e2fsck_clean(&flat, "the qcow2 overlay, flattened");
    let files = root_files(&flat);
    assert!(files.iter().any(|f| f == "dw-3"), "{files:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A layered base over a copy of rootfs, and a clone of it.
fn layered_base(dir: &Path) -> (String, String) {
    let raw = rootfs_copy(dir);
    let base = path_in(dir, "base.layered");
    vmm_ok(&["disk", "create", &base, "--base", &raw]);
    (raw, base)
}

#[test]
fn layered_clone_as_the_disk() {
    let dir = scratch("layered");
    let (raw, base) = layered_base(&dir);
    let (raw_hash, base_hash) = (sha256(&raw), sha256(&base));
    let clone = path_in(&dir, "vm.layered");
    vmm_ok(&["disk", "clone", &base, &clone]);
    let deadline = Instant::now() + BOOT_TIMEOUT;
    finish_writer(start_writer(&format!("path={clone}"), 3), 3, deadline);
    vmm_ok(&["disk", "check", &clone]);
    assert_eq!(
        sha256(&raw),
        raw_hash,
        "the raw image under the base is never written"
    );
    assert_eq!(
        sha256(&base),
        base_hash,
        "the base a clone was made of is never written"
    );
    let flat = path_in(&dir, "vm.raw");
    vmm_ok(&["disk", "convert", &clone, &flat, "--format", "raw"]);
    e2fsck_clean(&flat, "the layered clone, converted to raw");
    assert!(root_files(&flat).iter().any(|f| f == "dw-3"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_vms_at_once_on_two_clones_of_one_base() {
    let dir = scratch("two-clones");
    let (raw, base) = layered_base(&dir);
    let (raw_hash, base_hash) = (sha256(&raw), sha256(&base));
    let (a, b) = (path_in(&dir, "a.layered"), path_in(&dir, "b.layered"));
    vmm_ok(&["disk", "clone", &base, &a]);
    vmm_ok(&["disk", "clone", &base, &b]);
    // Two vmm processes at once; A writes 2 files, B 4.
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let vm_a = start_writer(&format!("path={a}"), 2);
    let vm_b = start_writer(&format!("path={b}"), 4);
    finish_writer(vm_a, 2, deadline);
    finish_writer(vm_b, 4, deadline);
    assert_eq!(sha256(&raw), raw_hash);
    assert_eq!(sha256(&base), base_hash, "clones never write their base");
    for (clone, files) in [(&a, 2), (&b, 4)] {
        vmm_ok(&["disk", "check", clone]);
        let flat = format!("{clone}.raw");
        vmm_ok(&["disk", "convert", clone, &flat, "--format", "raw"]);
        e2fsck_clean(&flat, clone);
        let names = root_files(&flat);
        for n in 1..=4 {
            let has = names.iter().any(|f| *f == format!("dw-{n}"));
            assert_eq!(has, n <= files, "{clone}: dw-{n} in {names:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vm_snapshot_with_a_layered_disk_restores_twice_onto_two_clones() {
    let dir = scratch("snapshot-twice");
    let (_raw, base) = layered_base(&dir);
    let disk_image = path_in(&dir, "vm.layered");
    vmm_ok(&["disk", "clone", &base, &disk_image]);
    let (sock, state, mem) = (
        path_in(&dir, "api.sock"),
        path_in(&dir, "vm.state"),
        path_in(&dir, "vm.mem"),
    );
    // The gate runs: the guest keeps writing until the test opens it.
    let gate = Gate::new(&dir, "gate.img");
    let disk = format!("path={disk_image}");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut vm = super::lifecycle::start_gated_diskwrite(&disk, &gate, &sock);
    vm.expect("DISKWRITE 3", deadline);
    vmm_ok(&["pause", "--api-sock", &sock]);
    vm.collect_output();
    vmm_ok(&[
        "snapshot",
        "create",
        "--api-sock",
        &sock,
        "--snapshot",
        &state,
        "--mem",
        &mem,
    ]);
    let last = vm
        .seen
        .iter()
        .filter_map(|l| l.strip_prefix("DISKWRITE "))
        .filter_map(|n| n.trim().parse::<u32>().ok())
        .max()
        .unwrap();
    vm.kill();
    // The VM's own image went on (a new top layer) after the seal; the sealed layer is what
    // the restores clone, and it never changes.
    let sealed: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains("vm.layered") && p.to_string_lossy() != disk_image)
        .collect();
    let sealed_hashes: Vec<String> = sealed
        .iter()
        .map(|p| sha256(&p.to_string_lossy()))
        .collect();

    // Two restores, each on its own clone (in its own directory), each writing on from the
    // snapshot's point.
    let mut clones = Vec::new();
    for name in ["one", "two"] {
        let clone_dir = dir.join(format!("clones-{name}"));
        std::fs::create_dir_all(&clone_dir).unwrap();
        let clone_dir = clone_dir.to_string_lossy().into_owned();
        let sock = path_in(&dir, &format!("api-{name}.sock"));
        let mut restored = Running::start_raw(&[
            "restore",
            "--snapshot",
            &state,
            "--mem",
            &mem,
            "--api-sock",
            &sock,
            "--disk-clone-dir",
            &clone_dir,
        ]);
        restored.expect(&format!("DISKWRITE {}", last + 1), deadline);
        if name == "two" {
            gate.open();
        } else {
            gate.open_at(last as usize + 1);
        }
        restored.expect("DISKWRITE-OK 10", deadline);
        restored.expect("GUEST-TEST-DONE", deadline);
        let (code, output) = restored.finish(deadline);
        assert_eq!(code, 0, "{output}");
        let made: Vec<PathBuf> = std::fs::read_dir(&clone_dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        assert_eq!(made.len(), 1, "one clone per restore: {made:?}");
        clones.push(made[0].to_string_lossy().into_owned());
        // Put the gate back to running (as new) for the next restore.
        std::fs::write(gate.path(), vec![0u8; 4096]).unwrap();
    }
    assert_ne!(clones[0], clones[1]);
    let after: Vec<String> = sealed
        .iter()
        .map(|p| sha256(&p.to_string_lossy()))
        .collect();
    assert_eq!(after, sealed_hashes, "the sealed layers are never written");
    for clone in &clones {
        vmm_ok(&["disk", "check", clone]);
        let flat = format!("{clone}.raw");
        vmm_ok(&["disk", "convert", clone, &flat, "--format", "raw"]);
        e2fsck_clean(&flat, clone);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guest's discard reaches the image: on a raw file it punches a hole (the range reads as
/// zeros and no longer takes space); on a layered clone it leaves a tombstone over the base's data,
/// on a qcow2 overlay zero clusters; the base keeps its bytes.
#[test]
fn guest_discard_punches_raw_holes_and_hides_base_blocks_in_layered_and_qcow2() {
    use std::os::unix::fs::MetadataExt;
    let dir = scratch("discard");
    let (kernel, initrd) = (guest("vmlinux"), super::virtio::test_initramfs());

    // Raw: a non-sparse 4 MiB file of ones.
    let raw = path_in(&dir, "disk.raw");
    std::fs::write(&raw, vec![1u8; 4 << 20]).unwrap();
    let disk = format!("path={raw}");
    let output = super::boot_and_test(
        &["--kernel", &kernel, "--initrd", &initrd, "--disk", &disk],
        "discard",
        &["DISCARD-OK"],
    );
    assert!(output.contains("DISCARD-OK"), "{output}");
    let bytes = std::fs::read(&raw).unwrap();
    assert_eq!(bytes.len(), 4 << 20, "the image keeps its size");
    assert!(
        bytes[..1 << 20].iter().all(|&b| b == 0),
        "discarded range reads zeros"
    );
    assert!(
        bytes[1 << 20..].iter().all(|&b| b == 1),
        "the rest is untouched"
    );
    let allocated = std::fs::metadata(&raw).unwrap().blocks() * 512;
    assert!(
        allocated <= 3 << 20,
        "the hole was punched: {allocated} bytes still allocated"
    );

    // Layered: a clone over a raw base of ones.
    let base = path_in(&dir, "base.raw");
    std::fs::write(&base, vec![1u8; 4 << 20]).unwrap();
    let before = sha256(&base);
    let top = path_in(&dir, "top.layered");
    vmm_ok(&["disk", "create", &top, "--base", &base]);
    let disk = format!("path={top}");
    super::boot_and_test(
        &["--kernel", &kernel, "--initrd", &initrd, "--disk", &disk],
        "discard",
        &["DISCARD-OK"],
    );
    vmm_ok(&["disk", "check", &top]);
    let flat = path_in(&dir, "flat.raw");
    vmm_ok(&["disk", "convert", &top, &flat, "--format", "raw"]);
    let bytes = std::fs::read(&flat).unwrap();
    assert!(
        bytes[..1 << 20].iter().all(|&b| b == 0),
        "the tombstone reads zeros"
    );
    assert!(
        bytes[1 << 20..].iter().all(|&b| b == 1),
        "the base shows through elsewhere"
    );
    assert_eq!(sha256(&base), before, "the base is never written");

    // qcow2 over the same base (imago discards the clusters, or zeroes them).
    let overlay = path_in(&dir, "top.qcow2");
    run_ok(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", &base, "-F", "raw", &overlay,
        ],
    );
    let disk = format!("path={overlay}");
    super::boot_and_test(
        &["--kernel", &kernel, "--initrd", &initrd, "--disk", &disk],
        "discard",
        &["DISCARD-OK"],
    );
    run_ok("qemu-img", &["check", &overlay]);
    let flat = path_in(&dir, "flat-qcow2.raw");
    vmm_ok(&["disk", "convert", &overlay, &flat, "--format", "raw"]);
    let bytes = std::fs::read(&flat).unwrap();
    assert!(
        bytes[..1 << 20].iter().all(|&b| b == 0),
        "discarded clusters read zeros"
    );
    assert!(
        bytes[1 << 20..].iter().all(|&b| b == 1),
        "the base shows through elsewhere"
    );
    assert_eq!(sha256(&base), before, "the base is never written");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The disk benchmark's I/O (sequential 1 MiB and shuffled 4 KiB O_DIRECT reads and writes,
/// scripts/guest/tests/diskbench) on a layered clone over a raw base, with the seccomp filters
/// on: commits of thousands of blocks run on the event loop (a glibc arena shrinking there once
/// opened a file the filter forbids), and the image checks clean afterwards.
#[test]
fn layered_disk_under_the_benchmark_load_with_seccomp() {
    let dir = scratch("bench-load");
    let (kernel, initrd) = (guest("vmlinux"), super::virtio::test_initramfs());
    let base = path_in(&dir, "base.raw");
    std::fs::write(&base, vec![3u8; 16 << 20]).unwrap();
    let top = path_in(&dir, "top.layered");
    vmm_ok(&["disk", "create", &top, "--base", &base]);
    let disk = format!("path={top}");
    let append = format!("{QUIET} guest.test=diskbench guest.benchmib=16");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut vm = Running::start(&[
        "--kernel", &kernel, "--initrd", &initrd, "--disk", &disk, "--append", &append,
    ]);
    vm.expect("GUEST-INIT-OK", deadline);
    vm.expect("DISKBENCH ", deadline);
    vm.expect("GUEST-TEST-DONE", deadline);
    let (code, output) = vm.finish(deadline);
    assert_eq!(code, 0, "{output}");
    vmm_ok(&["disk", "check", &top]);
    let _ = std::fs::remove_dir_all(&dir);
}
