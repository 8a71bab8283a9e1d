//! The control API's socket: a Unix stream listener on its own thread, one thread per
//! connection (at most [`MAX_CONNECTIONS`]). Requests are parsed by [`vmm_api`] and handed
//! to the main thread, which owns the VM, as [`VmEvent::Api`]; the answer comes back on a
//! channel. A slow, silent, malformed or oversized client costs its own thread a timeout and
//! never reaches the VM.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::stoppable::{wait_readable, StoppableThread};

use crate::error::{Error, Result};
use crate::events::VmEvent;
use vmm_api::{ApiRequest, ApiResponse, RequestReader, CONTINUE_RESPONSE};

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection that sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request may wait for the VM's answer (a snapshot of a large guest takes a while).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a response write may wait for a client that does not read.
const WRITE_TIMEOUT_MS: libc::c_int = 5_000;
/// The running API socket; dropping it stops the threads and removes the socket file.
pub struct ApiServer {
    path: PathBuf,
    /// The accept thread; its stop eventfd is polled by every thread beside its socket, so none
    /// wakes up on a timer to look for a stop flag.
    accept: Option<StoppableThread>,
}

impl ApiServer {
    /// Listens on `path` (which must not exist, unless it is a stale socket nobody listens
    /// on) and forwards requests to `events`.
    pub(crate) fn start(path: &Path, events: Sender<VmEvent>) -> Result<ApiServer> {
        let bind_err = |source| Error::ApiSocket {
            path: path.to_path_buf(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            let stale = meta.file_type().is_socket() && UnixStream::connect(path).is_err();
            if !stale {
                return Err(bind_err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the path exists (another VMM's socket, or not a socket): remove it or choose another",
                )));
            }
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let slot_freed = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        let accept = StoppableThread::spawn("vmm-api", move |stop| {
            accept_loop(listener, events, &stop, slot_freed)
        })
        .map_err(|e| Error::Thread("vmm-api", e))?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            accept: Some(accept),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Stopped and joined first: no thread accepts on a socket whose file is gone.
        drop(self.accept.take());
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(
    listener: UnixListener,
    events: Sender<VmEvent>,
    stop: &Arc<EventFd>,
    slot_freed: EventFd,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let slot_freed = Arc::new(slot_freed);
    loop {
        // At the limit, wait for a connection to end instead of accepting.
        let full = active.load(Ordering::SeqCst) >= MAX_CONNECTIONS;
        let watched = if full {
            slot_freed.as_raw_fd()
        } else {
            listener.as_raw_fd()
        };
        let ready = wait_readable(&[stop.as_raw_fd(), watched], None);
        if ready[0] {
            return;
        }
        if full {
            let _ = slot_freed.read();
            continue;
        }
        if !ready[1] {
            continue;
        }
        // Nonblocking: another wake-up may have taken the connection already.
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        active.fetch_add(1, Ordering::SeqCst);
        let (events, stop, count, freed) = (
            events.clone(),
            stop.clone(),
            active.clone(),
            slot_freed.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("vmm-api-conn".into())
            .spawn(move || {
                serve_connection(stream, &events, &stop);
                count.fetch_sub(1, Ordering::SeqCst);
                let _ = freed.write(1);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn serve_connection(mut stream: UnixStream, events: &Sender<VmEvent>, stop: &EventFd) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut reader = RequestReader::new();
    let mut buf = [0u8; 4096];
    let mut last_input = Instant::now();
    // Bytes read and not yet given to the reader; empty pushes drain pipelined requests.
    let mut input: Vec<u8> = Vec::new();
    loop {
        let parsed = reader.push(&input);
        input.clear();
        match parsed {
            Ok(Some(request)) => {
                let response = call(events, request);
                if write_all(&mut stream, &response.to_http()).is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(response) => {
                let _ = write_all(&mut stream, &response.to_http_closing());
                return;
            }
        }
        if reader.take_continue() && write_all(&mut stream, CONTINUE_RESPONSE).is_err() {
            return;
        }
        if reader.should_close() {
            return;
        }
        // Sleeps until the client sends, the server stops, or the client has been idle too long.
        let idle_left = IDLE_TIMEOUT.saturating_sub(last_input.elapsed());
        if idle_left.is_zero() {
            return;
        }
        let ready = wait_readable(&[stop.as_raw_fd(), stream.as_raw_fd()], Some(idle_left));
        if ready[0] {
            return;
        }
        if !ready[1] {
            continue;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                last_input = Instant::now();
                input.extend_from_slice(&buf[..n]);
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Writes all of `bytes` to the nonblocking `stream`, waiting for room (at most the write
/// timeout for each wait).
fn write_all(stream: &mut UnixStream, bytes: &[u8]) -> io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        match stream.write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut poll = libc::pollfd {
                    fd: stream.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: poll reads and writes exactly the one valid pollfd passed with count 1.
                let n = unsafe { libc::poll(&mut poll, 1, WRITE_TIMEOUT_MS) };
                if n == 0 {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Hands one request to the main thread and waits for its answer.
fn call(events: &Sender<VmEvent>, request: ApiRequest) -> ApiResponse {
    let (tx, rx) = channel();
    if events.send(VmEvent::Api(Box::new(request), tx)).is_err() {
        return ApiResponse::fault(503, "the VM is shutting down");
    }
    rx.recv_timeout(ANSWER_TIMEOUT)
        .unwrap_or_else(|_| ApiResponse::internal_error("the VMM did not answer in time"))
}
