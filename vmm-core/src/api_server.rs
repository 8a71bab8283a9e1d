//! The control API's socket: one thread (`fc_api`, the name Firecracker's API thread has and
//! tools look for) polls the listener and every connection. Requests are parsed by
//! [`vmm_api`] and handed to the main thread, which owns the VM, as [`VmEvent::Api`]; the
//! answer comes back on a channel, so requests are answered one at a time, in arrival order.
//!
//! Connections are kept alive for as long as clients want: an idle one is never closed on a
//! timer. Some clients open a new connection per request and leave the old ones open; at
//! [`MAX_CONNECTIONS`] the least recently used connection is closed to make room, so such a
//! client is never locked out. A malformed or oversized request gets its 4xx answer and the
//! connection is closed; nothing a client sends reaches the VM unparsed.
//!
//! Who may talk to it: the socket file is made with [`DEFAULT_SOCKET_MODE`] (0600, its owner
//! only) unless the caller asks for another mode, and each client's uid is checked on accept
//! (SO_PEERCRED): only root and the VMM's own uid are served. Anyone else's connection is
//! closed at once, with one warning in the log. The check also covers the moment between
//! bind(2) and chmod(2), when the file still has the umask's mode.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};
use crate::events::VmEvent;
use crate::stoppable::StoppableThread;
use vmm_api::{ApiRequest, ApiResponse, RequestReader, CONTINUE_RESPONSE};

/// Connections kept open at once; a new one beyond this closes the least recently used.
pub const MAX_CONNECTIONS: usize = 16;
/// The API thread's name (Firecracker's, which Kata Containers and others look for).
pub const API_THREAD_NAME: &str = crate::thread_names::API;
/// How long a request may wait for the VM's answer (a snapshot of a large guest takes a while).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a response write may wait for a client that does not read.
const WRITE_TIMEOUT_MS: libc::c_int = 5_000;
/// The API socket file's default permissions: read and write for its owner only.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// The running API socket; dropping it stops the thread and removes the socket file.
pub struct ApiServer {
    path: PathBuf,
    /// The API thread; it polls its stop eventfd beside its sockets, so it never wakes up on a
    /// timer to look for a stop flag.
    thread: Option<StoppableThread>,
}

impl ApiServer {
    /// Listens on `path` (which must not exist, unless it is a stale socket nobody listens
    /// on), with the file's permissions set to `mode`, and forwards requests to `events`;
    /// bodies over `max_body` bytes are refused.
    pub(crate) fn start(
        path: &Path,
        events: Sender<VmEvent>,
        max_body: usize,
        mode: u32,
    ) -> Result<ApiServer> {
        let bind_err = |source| Error::ApiSocket {
            path: path.to_path_buf(),
            source,
        };
        // A killed VMM's socket file is cleared; another VMM's live one, or a file, is not.
        vmm_devices::unix_socket::remove_stale_socket(path).map_err(bind_err)?;
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let ready = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .and_then(|()| listener.set_nonblocking(true));
        if let Err(e) = ready {
            let _ = std::fs::remove_file(path);
            return Err(bind_err(e));
        }
        // SAFETY: geteuid has no arguments and cannot fail.
        let own_uid = unsafe { libc::geteuid() };
        let thread = StoppableThread::spawn(API_THREAD_NAME, move |stop| {
            serve(listener, &events, &stop, max_body, own_uid)
        })
        .map_err(|e| {
            let _ = std::fs::remove_file(path);
            Error::Thread(API_THREAD_NAME, e)
        })?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            thread: Some(thread),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Stopped and joined first: no thread accepts on a socket whose file is gone.
        drop(self.thread.take());
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One client connection.
struct Connection {
    stream: UnixStream,
    reader: RequestReader,
    /// When it last sent or got something, on the server's own clock of events.
    last_used: u64,
}

impl Connection {
    /// Reads what the client sent and answers every complete request in it. `false` when the
    /// connection is finished (closed by the client, an error, or `Connection: close`).
    fn serve_input(&mut self, events: &Sender<VmEvent>) -> bool {
        let mut buf = [0u8; 4096];
        let mut input = match self.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => buf[..n].to_vec(),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                return true
            }
            Err(_) => return false,
        };
        // Empty pushes after the first drain pipelined requests.
        loop {
            let parsed = self.reader.push(&input);
            input.clear();
            match parsed {
                Ok(Some(request)) => {
                    let response = call(events, request);
                    if write_all(&mut self.stream, &response.to_http()).is_err() {
                        return false;
                    }
                }
                Ok(None) => break,
                // A bad request's framing was understood: answer and keep the connection.
                Err(response) if !self.reader.should_close() => {
                    if write_all(&mut self.stream, &response.to_http()).is_err() {
                        return false;
                    }
                }
                Err(response) => {
                    let _ = write_all(&mut self.stream, &response.to_http_closing());
                    return false;
                }
            }
        }
        if self.reader.take_continue() && write_all(&mut self.stream, CONTINUE_RESPONSE).is_err() {
            return false;
        }
        !self.reader.should_close()
    }
}

fn serve(
    listener: UnixListener,
    events: &Sender<VmEvent>,
    stop: &EventFd,
    max_body: usize,
    own_uid: libc::uid_t,
) {
    let mut connections: Vec<Connection> = Vec::new();
    let mut clock = 0u64;
    loop {
        let mut polls: Vec<libc::pollfd> = [stop.as_raw_fd(), listener.as_raw_fd()]
            .into_iter()
            .chain(connections.iter().map(|c| c.stream.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `polls` is a valid array of polls.len() pollfd structs for the whole call.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue; // EINTR
        }
        if polls[0].revents != 0 {
            return;
        }
        // Connections first, newest answers before new clients; `retain` keeps the order.
        let ready: Vec<bool> = polls[2..].iter().map(|p| p.revents != 0).collect();
        let mut index = 0;
        connections.retain_mut(|connection| {
            let keep = !ready[index] || {
                clock += 1;
                connection.last_used = clock;
                connection.serve_input(events)
            };
            index += 1;
            keep
        });
        if polls[1].revents != 0 {
            // Nonblocking: take every client waiting in the backlog.
            while let Ok((stream, _)) = listener.accept() {
                if let Err(why) = check_peer(&stream, own_uid) {
                    log::warn!("API connection refused: {why}");
                    continue; // Dropping the stream closes it.
                }
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if connections.len() >= MAX_CONNECTIONS {
                    evict_least_recently_used(&mut connections);
                }
                clock += 1;
                connections.push(Connection {
                    stream,
                    reader: RequestReader::with_max_body(max_body),
                    last_used: clock,
                });
            }
        }
    }
}

/// Whether the client on `stream` may use the API: its uid (SO_PEERCRED, as it was when it
/// connected) is root or `own_uid`, the VMM's. Otherwise, or when the kernel cannot say, why not.
fn check_peer(stream: &UnixStream, own_uid: libc::uid_t) -> std::result::Result<(), String> {
    let cred = vmm_api::client::peer_credentials(stream)
        .map_err(|e| format!("the client's credentials are unknown (SO_PEERCRED: {e})"))?;
    if cred.uid == 0 || cred.uid == own_uid {
        return Ok(());
    }
    Err(format!(
        "the client (pid {}, uid {}) is neither root nor this VMM's uid {own_uid}",
        cred.pid, cred.uid
    ))
}

/// Closes the connection used longest ago, preferring one without a half-received request.
fn evict_least_recently_used(connections: &mut Vec<Connection>) {
    let oldest = connections
        .iter()
        .enumerate()
        .min_by_key(|(_, c)| (c.reader.buffered() > 0, c.last_used))
        .map(|(i, _)| i);
    if let Some(index) = oldest {
        let connection = connections.remove(index);
        let _ = connection.stream.shutdown(std::net::Shutdown::Both);
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
    log::info!("The API server received a {} request.", request.name());
    let (tx, rx) = channel();
    if events.send(VmEvent::Api(Box::new(request), tx)).is_err() {
        return ApiResponse::fault(503, "the VM is shutting down");
    }
    await_answer(&rx, ANSWER_TIMEOUT)
}

/// The main thread's answer to a request, waited for at most `timeout`. A request it dropped
/// unanswered (it is ending: a failed restore drops the requests that came meanwhile) gets
/// 503 at once, so the API thread is free to be joined.
fn await_answer(rx: &Receiver<ApiResponse>, timeout: Duration) -> ApiResponse {
    match rx.recv_timeout(timeout) {
        Ok(answer) => answer,
        Err(RecvTimeoutError::Disconnected) => ApiResponse::fault(503, "the VMM is ending"),
        Err(RecvTimeoutError::Timeout) => {
            ApiResponse::internal_error("the VMM did not answer in time")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_dropped_unanswered_gets_503_at_once() {
        let (tx, rx) = channel();
        drop(tx);
        // A timeout far beyond the test: only the disconnection can end the wait.
        let answer = await_answer(&rx, Duration::from_secs(3600));
        assert_eq!(answer.status, 503);
        let body = answer.body.unwrap_or_default();
        assert!(body.contains("ending"), "{body}");
        let (tx, rx) = channel();
        tx.send(ApiResponse::no_content()).unwrap();
        assert_eq!(await_answer(&rx, Duration::from_secs(3600)).status, 204);
    }
}
