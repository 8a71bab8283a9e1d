//! Tier 3 for LUKS-encrypted disks: a guest writes a known 1 MiB pattern (`blkwrite`) to an
//! encrypted data disk made by `vmm disk luks-format`; after the VM ends the host decrypts the
//! image with `qemu-img convert` (its luks driver) and finds the pattern.

use super::boot_and_test;
use super::virtio::{test_initramfs, Scratch};
use super::{guest, run_ok};

#[test]
fn luks_data_disk_written_by_guest_decrypts_with_qemu_img() {
    let scratch = Scratch::new("luks");
    let vda = scratch.zeros("vda.img", 4 << 20);
    let key = scratch.path("key");
    std::fs::write(&key, b"e2e luks key\n").unwrap();
    let (key, enc, out) = (
        key.to_string_lossy().into_owned(),
        scratch.path("vdb.luks").to_string_lossy().into_owned(),
        scratch.path("vdb.raw").to_string_lossy().into_owned(),
    );
    // LUKS1 so that qemu-img reads it back.
    run_ok(
        env!("CARGO_BIN_EXE_vmm"),
        &[
            "disk",
            "luks-format",
            &enc,
            "--key-file",
            &key,
            "--size",
            "4M",
            "--type",
            "luks1",
            "--pbkdf2-iterations",
            "1000",
            "--zero",
        ],
    );
    let (kernel, initrd) = (guest("vmlinux"), test_initramfs());
    let vdb = format!("path={enc},key_file={key}");
    boot_and_test(
        &[
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--disk",
            &format!("path={vda}"),
            "--disk",
            &vdb,
        ],
        "blkwrite",
        &["BLKWRITE-OK"],
    );
    let raw = std::fs::read(&enc).unwrap();
    let line = b"vmm durable write pattern 0123456789\n";
    assert!(
        !raw.windows(line.len()).any(|w| w == line),
        "plaintext in the encrypted image"
    );
    let secret = format!("secret,id=s0,file={key}");
    let opts = format!("driver=luks,key-secret=s0,file.filename={enc}");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "--object",
            &secret,
            "--image-opts",
            &opts,
            "-O",
            "raw",
            &out,
        ],
    );
    let got = std::fs::read(&out).unwrap();
    let want: Vec<u8> = line.iter().copied().cycle().take(1 << 20).collect();
    assert_eq!(got.len(), 4 << 20);
    assert!(
        got[..1 << 20] == want[..],
        "the decrypted disk holds the guest's pattern"
    );
    assert!(
        got[1 << 20..].iter().all(|&b| b == 0),
        "the rest stays zero"
    );
}
