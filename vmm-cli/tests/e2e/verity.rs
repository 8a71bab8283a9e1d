//! Tier 3 for verity disks: a guest reads every file of a copy of rootfs.ext4 served as a
//! read-only data disk verified against a dm-verity hash file (`vmm disk verity-format`); then
//! the same with one byte of one file's data flipped: only that file fails to read in the
//! guest (an I/O error), and the VMM's log names the data block.
//!
//! The guest runs `verityread` (scripts/guest/tests/verityread) from the test initramfs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{guest, path_in, run_ok, Running, BOOT_TIMEOUT, QUIET};

/// A scratch directory for one test, removed when it passes.
fn scratch(test: &str) -> PathBuf {
    super::scratch(&format!("verity-{test}"))
}

/// A copy of rootfs.ext4 in `dir` with its hash file; returns (image, hash file, root hash).
fn verified_rootfs(dir: &Path) -> (String, String, String) {
    let image = path_in(dir, "rootfs.raw");
    std::fs::copy(guest("rootfs.ext4"), &image).unwrap();
    let hash = path_in(dir, "rootfs.hash");
    let root = run_ok(
        env!("CARGO_BIN_EXE_vmm"),
        &["disk", "verity-format", &image, &hash],
    )
    .trim()
    .to_string();
    // veritysetup agrees with the hash file.
    run_ok("veritysetup", &["verify", &image, &hash, &root]);
    (image, hash, root)
}

/// Boots a guest that reads every file on the verity disk; returns the VMM's whole output.
fn read_all_files(image: &str, hash: &str, root: &str) -> String {
    let disk = format!("path={image},read_only=on,verity={hash},root_hash={root}");
    let append = format!("{QUIET} guest.test=verityread");
    let kernel = guest("vmlinux");
    let initrd = super::virtio::test_initramfs();
    let mut vm = Running::start(&[
        "--kernel", &kernel, "--initrd", &initrd, "--memory", "128M", "--disk", &disk, "--append",
        &append,
    ]);
    let deadline = Instant::now() + BOOT_TIMEOUT;
    vm.expect("GUEST-INIT-OK", deadline);
    vm.expect("VERITYREAD-OK", deadline);
    vm.expect("GUEST-TEST-DONE", deadline);
    let (code, output) = vm.finish(deadline);
    assert_eq!(code, 0, "{output}");
    output
}

/// `VERITYREAD-OK <files> <bad>` from the output.
fn counts(output: &str) -> (u32, u32) {
    let line = output
        .lines()
        .find_map(|l| l.split("VERITYREAD-OK ").nth(1))
        .unwrap_or_else(|| panic!("no VERITYREAD-OK line: {output}"));
    let mut words = line.split_whitespace().map(|w| w.parse::<u32>().unwrap());
    (words.next().unwrap(), words.next().unwrap())
}

#[test]
fn verity_disk_reads_every_file() {
    let dir = scratch("clean");
    let (image, hash, root) = verified_rootfs(&dir);
    let output = read_all_files(&image, &hash, &root);
    let (files, bad) = counts(&output);
    assert!(files > 10, "{output}");
    assert_eq!(bad, 0, "{output}");
    assert!(!output.contains("does not match"), "{output}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn verity_disk_fails_only_the_tampered_file() {
    let dir = scratch("tampered");
    let (image, hash, root) = verified_rootfs(&dir);
    // The ext4 block of /init (one 4 KiB block: the file system's and verity's blocks agree).
    let blocks = run_ok("debugfs", &["-R", "blocks /init", &image]);
    let block: u64 = blocks
        .split_whitespace()
        .next()
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no block for /init: {blocks:?}"));
    let mut bytes = std::fs::read(&image).unwrap();
    let at = usize::try_from(block * 4096 + 100).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(&image, &bytes).unwrap();

    let output = read_all_files(&image, &hash, &root);
    let (files, bad) = counts(&output);
    assert!(files > 10, "{output}");
    assert_eq!(bad, 1, "{output}");
    let bad_line = output
        .lines()
        .find(|l| l.contains("VERITYREAD-BAD"))
        .unwrap_or_default();
    assert!(bad_line.contains("/mnt/init "), "{bad_line}");
    assert!(bad_line.contains("Input/output error"), "{bad_line}");
    assert!(
        output.contains(&format!("data block {block} ")),
        "the VMM's log names data block {block}: {output}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guest boots from the verified disk itself: `root=/dev/vda ro` on the rootfs copy, no
/// initrd; its /init (from the verified disk) runs the smp test and reaches its markers.
#[test]
fn guest_boots_from_a_verified_root_disk() {
    let dir = scratch("root");
    let (image, hash, root) = verified_rootfs(&dir);
    let disk = format!("path={image},read_only=on,verity={hash},root_hash={root}");
    let kernel = guest("vmlinux");
    let output = super::boot_and_test(
        &[
            "--kernel",
            &kernel,
            "--disk",
            &disk,
            "--append",
            "root=/dev/vda ro",
        ],
        "smp",
        &["SMP-OK 1"],
    );
    assert!(!output.contains("does not match"), "{output}");
    let _ = std::fs::remove_dir_all(&dir);
}
