//! What the targets that boot a real VM need before their first input: /dev/kvm, the tiny test
//! guest, and a scratch folder of their own.

use std::path::PathBuf;

/// The tiny PVH guest (`$VMM_GUEST_DIR/tiny-pvh.elf`, default ../shared/guest), canonical, and
/// a new empty folder `vmm-fuzz-<name>-<pid>` in the temporary directory. Panics with a clear
/// message when /dev/kvm cannot be opened or the guest is missing: such a run must fail loudly,
/// not pass without booting anything.
pub fn tiny_guest_and_scratch(name: &str) -> (PathBuf, PathBuf) {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("{name} needs /dev/kvm to boot its guest, and it cannot be opened: {e}");
    }
    let dir = std::env::var_os("VMM_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/guest"));
    let guest = dir.join("tiny-pvh.elf");
    assert!(
        guest.exists(),
        "{} is missing: set VMM_GUEST_DIR to the guest image folder",
        guest.display()
    );
    let guest = guest.canonicalize().expect("the guest's path");
    let scratch = std::env::temp_dir().join(format!("vmm-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("the fuzzer's folder");
    (guest, scratch)
}
