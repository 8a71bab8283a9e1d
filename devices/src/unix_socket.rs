//! Socket files a killed process left behind. A Unix listener's file stays when its process
//! ends without removing it (SIGKILL, a crash), and a new listener cannot bind that path until
//! it is gone: a VMM restored after its predecessor was killed would otherwise refuse to start.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Makes `path` free for a new Unix listener. Nothing there: `Ok(false)`. A socket file that
/// nobody listens on (connecting is refused): removed, `Ok(true)`. A socket someone listens
/// on, or anything that is not a socket: [`io::ErrorKind::AlreadyExists`], left alone.
pub fn remove_stale_socket(path: &Path) -> io::Result<bool> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(false);
    };
    let stale = meta.file_type().is_socket()
        && matches!(UnixStream::connect(path), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused);
    if !stale {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists (a socket another process listens on, or not a socket)",
        ));
    }
    std::fs::remove_file(path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn only_a_socket_nobody_listens_on_is_removed() {
        let dir = std::env::temp_dir().join(format!("vmm-stale-socket-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        assert!(!remove_stale_socket(&path).unwrap(), "nothing there");

        let live = UnixListener::bind(&path).unwrap();
        let e = remove_stale_socket(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(path.exists(), "a listened-on socket stays");
        // Dropping a listener closes it but leaves its file: what a killed process leaves.
        drop(live);
        assert!(path.exists());
        assert!(remove_stale_socket(&path).unwrap(), "stale: removed");
        assert!(!path.exists());
        UnixListener::bind(&path).unwrap();

        let file = dir.join("plain");
        std::fs::write(&file, b"not a socket").unwrap();
        let e = remove_stale_socket(&file).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(file.exists(), "not a socket: left alone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
