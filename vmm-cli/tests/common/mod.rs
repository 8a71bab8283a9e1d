//! What the tier-2 API tests share: the guest images, scratch folders, and an HTTP/1.1
//! client connection on a Unix socket that keeps its connection (as go-sdk's client does).

#![allow(dead_code)] // Each test file uses its own part.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A file of the shared guest folder (`VMM_GUEST_DIR`, default `../shared/guest`).
pub fn guest_file(name: &str) -> String {
    let dir = std::env::var_os("VMM_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/guest"));
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path.to_string_lossy().into_owned()
}

/// An empty folder of this test's own.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-api-tests-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One parsed response: status, headers (lower-case names) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one HTTP response from the front of `buf`: (response, bytes used).
pub fn parse_response_full(buf: &[u8]) -> Option<(Response, usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if buf.len() < head_end + len {
        return None;
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
    Some((
        Response {
            status,
            headers,
            body,
        },
        head_end + len,
    ))
}

/// Parses one HTTP response from the front of `buf`: ((status, body), bytes used).
pub fn parse_response(buf: &[u8]) -> Option<((u16, String), usize)> {
    parse_response_full(buf).map(|(r, used)| ((r.status, r.body), used))
}

/// The `fault_message` of an error body.
pub fn fault(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["fault_message"].as_str().unwrap_or_default().to_string()
}

/// One kept-alive client connection.
pub struct Connection {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Connection {
    /// Connects to `sock`, retrying until it accepts (the deadline is an upper bound only).
    pub fn open(sock: &Path) -> Connection {
        let deadline = Instant::now() + Duration::from_secs(120);
        let stream = loop {
            match UnixStream::connect(sock) {
                Ok(stream) => break stream,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{}: {e}", sock.display());
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Connection {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends one request with go-sdk's headers and reads its response. `None` when the
    /// server closed the connection.
    pub fn try_call(&mut self, method: &str, path: &str, body: Option<&str>) -> Option<Response> {
        let raw = match body {
            Some(b) => format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Go-http-client/1.1\r\n\
                 Accept: application/json\r\nContent-Type: application/json\r\n\
                 Accept-Encoding: gzip\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
            None => format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
                 Accept-Encoding: gzip\r\n\r\n"
            ),
        };
        self.stream.write_all(raw.as_bytes()).ok()?;
        self.read_response()
    }

    /// [`Connection::try_call`] that must be answered.
    pub fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> Response {
        self.try_call(method, path, body)
            .unwrap_or_else(|| panic!("{method} {path}: the connection was closed"))
    }

    /// Reads one response; `None` at end of stream.
    pub fn read_response(&mut self) -> Option<Response> {
        loop {
            if let Some((response, used)) = parse_response_full(&self.buf) {
                self.buf.drain(..used);
                return Some(response);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Whether the server has closed this connection (waits until it did or data came).
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 1];
        matches!(self.stream.read(&mut chunk), Ok(0) | Err(_))
    }
}

/// A PUT or PATCH that must succeed the way go-sdk's generated client requires: exactly 204,
/// no body.
pub fn no_content(response: Response, what: &str) {
    assert_eq!(response.status, 204, "{what}: {}", response.body);
    assert!(response.body.is_empty(), "{what}: 204 with a body");
}

/// Polls `GET /` on `conn` until the state is `want` (an upper-bound deadline only); returns
/// the instance info.
pub fn wait_for_state(conn: &mut Connection, want: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = conn.call("GET", "/", None);
        assert_eq!(r.status, 200, "{}", r.body);
        let info: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        if info["state"] == want {
            return info;
        }
        assert!(Instant::now() < deadline, "never {want}: {info}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
