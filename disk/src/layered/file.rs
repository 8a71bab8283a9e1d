//! Positional I/O on one layer file, with a fault-injection hook for the crash tests: after a
//! set number of writes and syncs every further one fails, and (optionally) the writes since
//! each file's last sync are rolled back, as a power cut would lose them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::{Error, Result};
use super::ondisk::{BLOCK, BLOCK_U64};

/// A layer file and its path (for errors).
#[derive(Debug)]
pub struct LayerFile {
    file: File,
    path: PathBuf,
}

impl LayerFile {
    /// The open file, for moving guest data with `pwritev` (the VMM's write path).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Wraps an open file.
    pub fn new(file: File, path: &Path) -> LayerFile {
        LayerFile {
            file,
            path: path.to_path_buf(),
        }
    }

    /// Records that the file was renamed to `path`.
    pub fn set_path(&mut self, path: &Path) {
        self.path = path.to_path_buf();
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length in bytes.
    pub fn len(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Reads `buf.len()` bytes at `offset`; a file that ends first is corrupted (truncated).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::corrupt(&self.path, format!("truncated: nothing at byte {offset}"))
            } else {
                Error::io(&self.path, e)
            }
        })
    }

    /// Reads file block `block`.
    pub fn read_block(&self, block: u64) -> Result<Box<[u8; BLOCK]>> {
        let mut b = Box::new([0u8; BLOCK]);
        let offset = block
            .checked_mul(BLOCK_U64)
            .ok_or_else(|| Error::corrupt(&self.path, "block number overflows"))?;
        self.read_at(offset, &mut b[..])?;
        Ok(b)
    }

    /// Writes `buf` at `offset`.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        #[cfg(test)]
        fault::before_write(&self.file, &self.path, offset, buf.len())?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Makes every write durable (fsync).
    pub fn sync(&self) -> Result<()> {
        #[cfg(test)]
        fault::before_sync(&self.path)?;
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))
    }
}

/// Fsyncs the directory holding `path`, so a rename or creation in it is durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    #[cfg(test)]
    fault::before_sync(dir)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Runs a rename through the fault hook (a rename counts as one write).
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    #[cfg(test)]
    fault::before_rename(from)?;
    std::fs::rename(from, to).map_err(|e| Error::io(from, e))
}

#[cfg(test)]
pub mod fault {
    //! The crash simulator: `arm(k, drop_unsynced)` lets k more writes/syncs/renames through
    //! on this thread, then fails every one.

    use std::cell::RefCell;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};

    use super::{Error, Result};

    struct Undo {
        path: PathBuf,
        file: File,
        offset: u64,
        old: Vec<u8>,
        old_len: u64,
    }

    struct Plan {
        ops_left: u64,
        crashed: bool,
        drop_unsynced: bool,
        undo: Vec<Undo>,
    }

    thread_local! {
        static PLAN: RefCell<Option<Plan>> = const { RefCell::new(None) };
    }

    /// Lets `ops` more operations through, then "crashes".
    pub fn arm(ops: u64, drop_unsynced: bool) {
        PLAN.with(|p| {
            *p.borrow_mut() = Some(Plan {
                ops_left: ops,
                crashed: false,
                drop_unsynced,
                undo: Vec::new(),
            })
        });
    }

    /// Stops injecting; returns whether the crash happened.
    pub fn disarm() -> bool {
        PLAN.with(|p| p.borrow_mut().take().is_some_and(|p| p.crashed))
    }

    fn crash_error(path: &Path) -> Error {
        Error::io(path, std::io::Error::other("injected crash"))
    }

    /// Counts one operation; Err once the budget is spent (rolling back unsynced writes).
    fn tick(path: &Path) -> Result<()> {
        PLAN.with(|p| {
            let mut p = p.borrow_mut();
            let Some(plan) = p.as_mut() else {
                return Ok(());
            };
            if plan.crashed {
                return Err(crash_error(path));
            }
            if plan.ops_left == 0 {
                plan.crashed = true;
                if plan.drop_unsynced {
                    for u in plan.undo.drain(..).rev() {
                        let _ = u.file.write_all_at(&u.old, u.offset);
                        let _ = u.file.set_len(u.old_len);
                    }
                }
                return Err(crash_error(path));
            }
            plan.ops_left -= 1;
            Ok(())
        })
    }

    pub(super) fn before_write(file: &File, path: &Path, offset: u64, len: usize) -> Result<()> {
        tick(path)?;
        PLAN.with(|p| {
            if let Some(plan) = p.borrow_mut().as_mut().filter(|p| p.drop_unsynced) {
                let old_len = file.metadata().map(|m| m.len()).unwrap_or(0);
                let have = old_len.saturating_sub(offset).min(len as u64) as usize;
                let mut old = vec![0u8; have];
                let _ = file.read_exact_at(&mut old, offset);
                if let Ok(file) = file.try_clone() {
                    plan.undo.push(Undo {
                        path: path.to_path_buf(),
                        file,
                        offset,
                        old,
                        old_len,
                    });
                }
            }
        });
        Ok(())
    }

    pub(super) fn before_sync(path: &Path) -> Result<()> {
        tick(path)?;
        PLAN.with(|p| {
            if let Some(plan) = p.borrow_mut().as_mut() {
                plan.undo.retain(|u| u.path != path);
            }
        });
        Ok(())
    }

    pub(super) fn before_rename(path: &Path) -> Result<()> {
        tick(path)
    }
}
