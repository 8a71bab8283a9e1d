//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;

use vmm_memory::GuestMemoryMmap;

pub const MIB: u64 = 1 << 20;

/// The shared guest artifacts: `$VMM_GUEST_DIR` (relative paths from the workspace root), else
/// `../shared/guest` from the workspace root.
pub fn guest_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    match std::env::var_os("VMM_GUEST_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("../shared/guest"),
    }
}

/// Path of a guest artifact; fails the test (never skips it) when it is missing.
pub fn guest_file(name: &str) -> PathBuf {
    let dir = guest_dir();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "guest artifact {name} not found in {}: these tests need the shared guest files; set \
         VMM_GUEST_DIR to the folder holding vmlinux, bzImage, debian-cloud-vmlinuz, \
         tiny-pvh.elf and initramfs.cpio.gz",
        dir.display()
    );
    path
}

pub fn open_guest_file(name: &str) -> File {
    let path = guest_file(name);
    File::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

pub fn memory(bytes: u64) -> GuestMemoryMmap {
    vmm_memory::create_guest_memory(bytes, Default::default()).unwrap()
}

/// A file in the temp dir with `contents`, removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "vmm-loader-test-{}-{tag}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }

    pub fn open(&self) -> File {
        File::open(&self.0).unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
