//! Files the VMM writes its log and metrics lines to: a regular file or a named pipe, opened
//! so that a missing reader or a full pipe never blocks the thread that writes.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens `path` for appending without ever blocking: a regular file is created if missing; a
/// named pipe is opened read-write, so the open does not wait for a reader and writes fail
/// (instead of blocking) while nobody reads.
pub fn open_nonblocking(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_fifo_without_reader_opens_and_never_blocks() {
        let dir = std::env::temp_dir().join(format!("vmm-logger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("log.fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads one NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let mut file = open_nonblocking(&fifo).unwrap();
        // Fill the pipe: the write that does not fit fails instead of blocking.
        let chunk = vec![b'x'; 1 << 16];
        let mut failed = false;
        for _ in 0..64 {
            if file.write_all(&chunk).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "a full pipe without reader must refuse writes");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
