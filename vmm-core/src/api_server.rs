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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::events::VmEvent;
use vmm_api::{ApiRequest, ApiResponse, RequestReader, CONTINUE_RESPONSE};

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection that sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request may wait for the VM's answer (a snapshot of a large guest takes a while).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);
/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// The running API socket; dropping it stops the threads and removes the socket file.
pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
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
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vmm-api".into())
            .spawn(move || accept_loop(listener, events, flag))
            .map_err(|e| Error::Thread("vmm-api", e))?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, events: Sender<VmEvent>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            std::thread::sleep(POLL);
            continue;
        }
        // Wait for a connection without sleeping past it (a restored VM's first client should
        // not wait for a tick); the timeout only bounds how late the stop flag is seen.
        let mut poll = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes exactly the one valid pollfd passed with count 1.
        let ready = unsafe { libc::poll(&mut poll, 1, POLL.as_millis() as libc::c_int) };
        if ready <= 0 {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                active.fetch_add(1, Ordering::SeqCst);
                let (events, stop, count) = (events.clone(), stop.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("vmm-api-conn".into())
                    .spawn(move || {
                        serve_connection(stream, &events, &stop);
                        count.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn serve_connection(mut stream: UnixStream, events: &Sender<VmEvent>, stop: &AtomicBool) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(POLL)).is_err()
        || stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .is_err()
    {
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
                if stream.write_all(&response.to_http()).is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(response) => {
                let _ = stream.write_all(&response.to_http_closing());
                return;
            }
        }
        if reader.take_continue() && stream.write_all(CONTINUE_RESPONSE).is_err() {
            return;
        }
        if reader.should_close() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                last_input = Instant::now();
                input.extend_from_slice(&buf[..n]);
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                if stop.load(Ordering::SeqCst) || last_input.elapsed() > IDLE_TIMEOUT {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
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
