//! A small client for the control API socket, for `vmm pause`, `vmm status` and friends: one
//! HTTP/1.1 request per connection, the response parsed with `httparse`.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors talking to a VMM's API socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens there.
    #[error("cannot connect to the API socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("the API connection on {path} failed")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not HTTP.
    #[error("the VMM on {path} sent a malformed response")]
    Malformed {
        /// The socket.
        path: PathBuf,
    },
    /// The VMM refused the request.
    #[error("the VMM refused: {message} (HTTP {status})")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its fault message.
        message: String,
    },
}

/// A VMM's API socket.
#[derive(Clone, Debug)]
pub struct ApiClient {
    path: PathBuf,
    timeout: Duration,
}

/// A successful answer: status and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    /// HTTP status (2xx).
    pub status: u16,
    /// The body (JSON), empty for 204.
    pub body: String,
}

impl ApiClient {
    /// A client for the socket at `path`; each request waits at most `timeout`.
    pub fn new(path: &Path, timeout: Duration) -> ApiClient {
        ApiClient {
            path: path.to_path_buf(),
            timeout,
        }
    }

    fn io(&self) -> impl Fn(std::io::Error) -> ClientError + '_ {
        move |source| ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The pid of the process serving the socket (SO_PEERCRED).
    pub fn server_pid(&self) -> Result<i32, ClientError> {
        let stream = self.connect()?;
        peer_credentials(&stream)
            .map(|cred| cred.pid)
            .map_err(self.io())
    }

    fn connect(&self) -> Result<UnixStream, ClientError> {
        UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
            path: self.path.clone(),
            source,
        })
    }

    /// Sends `method path` with an optional JSON body; a non-2xx answer is
    /// [`ClientError::Refused`] with the VMM's fault message.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<ClientResponse, ClientError> {
        let mut stream = self.connect()?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(self.io())?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(self.io())?;
        let body = body.unwrap_or("");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).map_err(self.io())?;
        stream.write_all(body.as_bytes()).map_err(self.io())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(self.io())?;
        let malformed = || ClientError::Malformed {
            path: self.path.clone(),
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(&raw) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return Err(malformed()),
        };
        let status = response.code.ok_or_else(malformed)?;
        let body = String::from_utf8_lossy(&raw[head_len..]).into_owned();
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("fault_message")
                        .and_then(|m| m.as_str())
                        .map(String::from)
                })
                .unwrap_or(body);
            return Err(ClientError::Refused { status, message });
        }
        Ok(ClientResponse { status, body })
    }

    /// Asks the guest to shut itself down: presses its ACPI power button, or, for a guest
    /// without one (`acpi=off`: the VMM refuses the press with 400), sends Ctrl+Alt+Del.
    /// Never both: a kernel whose init does not take Ctrl+Alt+Del over reboots at once on it,
    /// without syncing its disks, while the power button's handler may be shutting down.
    pub fn ask_guest_to_stop(&self) -> Result<ClientResponse, ClientError> {
        let action = |name: &str| {
            let body = format!(r#"{{"action_type": "{name}"}}"#);
            self.request("PUT", "/actions", Some(&body))
        };
        match action("PressPowerButton") {
            Err(ClientError::Refused { status: 400, .. }) => action("SendCtrlAltDel"),
            other => other,
        }
    }
}

/// The pid, uid and gid of the process at the other end of `stream`, as they were when it
/// connected (SO_PEERCRED). The API server checks clients with it, clients the server.
pub fn peer_credentials(stream: &UnixStream) -> std::io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the valid, exclusively borrowed `cred`
    // of exactly that size, and updates `len`; the descriptor is `stream`'s, open for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(std::io::Error::other("SO_PEERCRED answered a short ucred"));
    }
    Ok(cred)
}
