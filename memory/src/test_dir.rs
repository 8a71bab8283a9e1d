//! A scratch directory for this crate's unit tests.

use std::path::PathBuf;

/// A directory of its own under the system's temporary directory, removed on drop.
pub(crate) struct TestDir(pub(crate) PathBuf);

impl TestDir {
    /// `vmm-memory-<pid>-<name>`, empty; `name` must be unique among the crate's tests.
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmm-memory-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    /// `name` inside the directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
