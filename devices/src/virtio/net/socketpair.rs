//! A frame backend on a `socketpair`, for tests and benchmarks (feature `test-utils`).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::NetBackend;

const NO_OFFLOAD_SET: u64 = u64::MAX;

/// A test and benchmark backend (feature `test-utils`): one end of a non-blocking
/// `socketpair(AF_UNIX, SOCK_SEQPACKET)`, which keeps frame boundaries as a tap does, with
/// no privileges and no host interface. The other end plays the network: what it writes
/// the device receives, and it reads what the guest sends (header included).
#[derive(Debug)]
pub struct SocketPairBackend {
    sock: UnixStream,
    offload: Arc<AtomicU64>,
}

impl SocketPairBackend {
    /// Both ends of a new pair: one for the device, one for the test.
    pub fn pair() -> io::Result<(SocketPairBackend, SocketPairBackend)> {
        let mut fds = [-1; 2];
        // SAFETY: socketpair writes two descriptors into the 2-int array it is given, which
        // lives for the call.
        let ret = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        let offload = Arc::new(AtomicU64::new(NO_OFFLOAD_SET));
        let end = |fd: RawFd| {
            // SAFETY: socketpair succeeded, so `fd` is an open descriptor that nothing else
            // owns; the OwnedFd takes it over and closes it once.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            SocketPairBackend {
                sock: UnixStream::from(fd),
                offload: offload.clone(),
            }
        };
        Ok((end(fds[0]), end(fds[1])))
    }

    /// The flags last passed to [`NetBackend::set_offload`] on either end (the ends share
    /// them, so the test's end sees what the device set); `None` before any call.
    pub fn offload(&self) -> Option<u32> {
        u32::try_from(self.offload.load(Ordering::SeqCst)).ok()
    }
}

impl AsRawFd for SocketPairBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl NetBackend for SocketPairBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.sock.write(frame)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.offload.store(u64::from(flags), Ordering::SeqCst);
        Ok(())
    }
}
