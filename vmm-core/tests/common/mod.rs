//! What vmm-core's integration tests share: the tiny guest and scratch folders.

#![allow(dead_code)] // Each test file uses its own part.

use std::path::PathBuf;

/// `tiny-pvh.elf` from the shared guest folder (`VMM_GUEST_DIR`, default `../shared/guest`).
pub fn tiny_guest() -> PathBuf {
    let dir = std::env::var_os("VMM_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/guest"));
    let path = dir.join("tiny-pvh.elf");
    assert!(
        path.exists(),
        "{} is missing: set VMM_GUEST_DIR to the guest image folder",
        path.display()
    );
    path
}

/// An empty folder of this test's own.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-core-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
