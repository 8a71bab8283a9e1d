//! HTTP/1.1 framing: [`RequestReader`] cuts requests out of a connection's byte stream
//! (httparse for the head, `Content-Length` for the body), [`ApiResponse`] writes answers.

use serde::Serialize;

use super::parse::parse_request;
use super::types::{ApiRequest, Fault};
use super::ApiError;

/// Largest request head (request line, headers and the blank line), in bytes.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Largest request body by default, in bytes (Firecracker's default
/// `--http-api-max-payload-size`); [`RequestReader::with_max_body`] sets another.
pub const MAX_BODY_BYTES: usize = 51_200;

/// Most headers in one request.
const MAX_HEADERS: usize = 64;

/// The interim response a server writes when [`RequestReader::take_continue`] says so.
pub const CONTINUE_RESPONSE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the head of the request being read said.
#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    /// `Content-Length`, when given.
    content_length: Option<usize>,
    /// The client wants the connection closed after this request.
    close: bool,
}

/// Reads requests from one connection's bytes as they arrive, any number of bytes at a time,
/// several requests per connection (keep-alive, pipelining).
///
/// [`push`](RequestReader::push) never blocks and never panics; a request that cannot be
/// served comes back as a ready 4xx [`ApiResponse`]. When the error breaks the stream's
/// framing (bad or oversized head, oversized or chunked body, missing `Content-Length`),
/// [`should_close`](RequestReader::should_close) becomes true and the reader takes nothing
/// more: the server writes the response and closes the connection.
///
/// Memory: a reader holds what was pushed and not yet consumed. A server that drains the
/// reader (`push(&[])` until `Ok(None)`) after every read never holds more than one read plus
/// one partial request ([`MAX_HEAD_BYTES`] + [`MAX_BODY_BYTES`]).
#[derive(Debug)]
pub struct RequestReader {
    max_body: usize,
    buf: Vec<u8>,
    /// Where the search for the end of the head resumes.
    scan_from: usize,
    /// The head of the request whose body is being read.
    head: Option<Head>,
    /// No more requests on this connection.
    closed: bool,
    /// A `100 Continue` is owed to the client.
    continue_due: bool,
}

/// Finds the end of a head (the byte after its blank line), searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1..) {
                Some([b'\n', ..]) => return Some(i + 2),
                Some([b'\r', b'\n', ..]) => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Whether a comma-separated header value has `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses a complete head (`bytes` ends with its blank line).
fn parse_head(bytes: &[u8], max_body: usize) -> Result<(Head, bool), ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(ApiError::MalformedHead("incomplete request head".into()))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ApiError::HeadTooLarge {
                max: MAX_HEAD_BYTES,
                max_headers: MAX_HEADERS,
            })
        }
        Err(e) => return Err(ApiError::MalformedHead(e.to_string())),
    }
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(ApiError::MalformedHead("incomplete request line".into()));
    };
    // HTTP/1.1 keeps the connection by default, HTTP/1.0 closes it.
    let mut close = version == 0;
    let mut content_length: Option<usize> = None;
    let mut expect_continue = false;
    for header in request.headers.iter() {
        let value = header.value;
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let text = String::from_utf8_lossy(value).into_owned();
            let trimmed = text.trim();
            let len = if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
                trimmed.parse::<u64>().ok()
            } else {
                None
            };
            let Some(len) = len else {
                return Err(ApiError::BadContentLength(text));
            };
            if len > max_body as u64 {
                return Err(ApiError::BodyTooLarge { len, max: max_body });
            }
            // Bounded by max_body just above.
            let len = len as usize;
            if content_length.is_some_and(|l| l != len) {
                return Err(ApiError::BadContentLength(text));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ApiError::TransferEncoding(
                String::from_utf8_lossy(value).into_owned(),
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            if has_token(value, "close") {
                close = true;
            } else if has_token(value, "keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(ApiError::Expectation(
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
        }
    }
    if content_length.is_none() && (method == "PUT" || method == "PATCH") {
        // Without a length the end of a body cannot be known: whatever follows would be read
        // as the next request.
        return Err(ApiError::LengthRequired {
            method: method.to_string(),
            path: target.to_string(),
        });
    }
    let head = Head {
        method: method.to_string(),
        target: target.to_string(),
        content_length,
        close,
    };
    Ok((head, expect_continue))
}

impl Default for RequestReader {
    fn default() -> RequestReader {
        RequestReader::new()
    }
}

impl RequestReader {
    /// A reader for a new connection, with the default body limit [`MAX_BODY_BYTES`].
    pub fn new() -> RequestReader {
        RequestReader::with_max_body(MAX_BODY_BYTES)
    }

    /// A reader that refuses bodies over `max_body` bytes with 413 (and closes).
    pub fn with_max_body(max_body: usize) -> RequestReader {
        RequestReader {
            max_body,
            buf: Vec::new(),
            scan_from: 0,
            head: None,
            closed: false,
            continue_due: false,
        }
    }

    /// Takes `bytes` read from the connection (possibly none, to look for a further pipelined
    /// request) and returns the next complete request, if there is one yet.
    ///
    /// - `Ok(Some(request))`: a request to act on; more may be buffered, so call
    ///   `push(&[])` again after answering it, until `Ok(None)`.
    /// - `Ok(None)`: more bytes are needed (or the connection is done, see
    ///   [`should_close`](RequestReader::should_close)).
    /// - `Err(response)`: the request was refused; write the 4xx response. The connection
    ///   goes on unless `should_close()` is now true.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<ApiRequest>, ApiResponse> {
        self.next(bytes).map_err(|e| {
            if e.closes_connection() {
                self.close_now();
            }
            ApiResponse::from(e)
        })
    }

    /// Whether the server should close the connection once it has written its response: the
    /// client asked for it (`Connection: close`, or HTTP/1.0 without keep-alive) or the
    /// stream's framing is lost. Once true, `push` takes nothing more.
    pub fn should_close(&self) -> bool {
        self.closed
    }

    /// Whether the client waits for a `100 Continue` before sending the body it announced
    /// (`Expect: 100-continue`). True once per such request; the server then writes
    /// [`CONTINUE_RESPONSE`].
    pub fn take_continue(&mut self) -> bool {
        std::mem::take(&mut self.continue_due)
    }

    /// Bytes held and not yet part of a returned request.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn close_now(&mut self) {
        self.closed = true;
        self.head = None;
        self.continue_due = false;
        self.buf = Vec::new();
        self.scan_from = 0;
    }

    fn next(&mut self, bytes: &[u8]) -> Result<Option<ApiRequest>, ApiError> {
        if self.closed {
            return Ok(None);
        }
        self.buf.extend_from_slice(bytes);
        if self.head.is_none() && !self.read_head()? {
            return Ok(None);
        }
        let Some(head) = &self.head else {
            return Ok(None);
        };
        let len = head.content_length.unwrap_or(0);
        if self.buf.len() < len {
            return Ok(None);
        }
        let Some(head) = self.head.take() else {
            return Ok(None);
        };
        self.continue_due = false;
        let body: Vec<u8> = self.buf.drain(..len).collect();
        if head.close {
            self.close_now();
        }
        let body = head.content_length.map(|_| body.as_slice());
        parse_request(&head.method, &head.target, body).map(Some)
    }

    /// Looks for a complete head in the buffer; when there is one, parses it, removes it from
    /// the buffer and keeps it in `self.head`. Returns whether it did.
    fn read_head(&mut self) -> Result<bool, ApiError> {
        if self.scan_from == 0 {
            // Empty lines before a request line are ignored (some clients send one after a
            // body).
            let blank = self
                .buf
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            self.buf.drain(..blank);
        }
        let too_large = || ApiError::HeadTooLarge {
            max: MAX_HEAD_BYTES,
            max_headers: MAX_HEADERS,
        };
        let Some(end) = find_head_end(&self.buf, self.scan_from) else {
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(too_large());
            }
            // The end marker is at most 3 bytes and starts with '\n': resume 2 bytes back.
            self.scan_from = self.buf.len().saturating_sub(2);
            return Ok(false);
        };
        if end > MAX_HEAD_BYTES {
            return Err(too_large());
        }
        let (head, expect_continue) = parse_head(&self.buf[..end], self.max_body)?;
        self.buf.drain(..end);
        self.scan_from = 0;
        let len = head.content_length.unwrap_or(0);
        self.continue_due = expect_continue && len > self.buf.len();
        self.head = Some(head);
        Ok(true)
    }
}

/// A response: a status code and an optional JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResponse {
    /// HTTP status code.
    pub status: u16,
    /// JSON body, if any.
    pub body: Option<String>,
}

fn reason(status: u16) -> &'static str {
    let known = match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    };
    match (known, status / 100) {
        ("", 2) => "Success",
        ("", 4) => "Client Error",
        ("", 5) => "Server Error",
        ("", _) => "Unknown",
        (text, _) => text,
    }
}

impl ApiResponse {
    /// 200 with `value` as JSON (500 in the unlikely case it does not serialize).
    pub fn ok_json<T: Serialize + ?Sized>(value: &T) -> ApiResponse {
        match serde_json::to_string(value) {
            Ok(body) => ApiResponse {
                status: 200,
                body: Some(body),
            },
            Err(e) => ApiResponse::internal_error(&format!("cannot serialize the response: {e}")),
        }
    }

    /// 204 No Content: a successful PUT or PATCH.
    pub fn no_content() -> ApiResponse {
        ApiResponse {
            status: 204,
            body: None,
        }
    }

    /// An error with Firecracker's body `{"fault_message": message}`.
    pub fn fault(status: u16, message: &str) -> ApiResponse {
        let fault = Fault {
            fault_message: message.to_string(),
        };
        ApiResponse {
            status,
            // A struct of one string always serializes.
            body: Some(serde_json::to_string(&fault).unwrap_or_default()),
        }
    }

    /// 400 Bad Request with a fault message: bad input, or an operation the VM's state does
    /// not allow (Firecracker answers both with 400).
    pub fn bad_request(message: &str) -> ApiResponse {
        ApiResponse::fault(400, message)
    }

    /// 404 Not Found with a fault message.
    pub fn not_found(message: &str) -> ApiResponse {
        ApiResponse::fault(404, message)
    }

    /// 405 Method Not Allowed with a fault message.
    pub fn method_not_allowed(message: &str) -> ApiResponse {
        ApiResponse::fault(405, message)
    }

    /// 500 Internal Server Error with a fault message: the VMM failed at something it should
    /// have been able to do.
    pub fn internal_error(message: &str) -> ApiResponse {
        ApiResponse::fault(500, message)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The fault message of an error response, if its body is one.
    pub fn fault_message(&self) -> Option<String> {
        let body = self.body.as_deref()?;
        serde_json::from_str::<Fault>(body)
            .ok()
            .map(|f| f.fault_message)
    }

    /// The response as HTTP/1.1 bytes. A body goes with `Content-Type: application/json`
    /// and its `Content-Length`; a response without one has `Content-Length: 0`, except 204
    /// (and 1xx), which carry neither body nor length, as HTTP requires.
    pub fn to_http(&self) -> Vec<u8> {
        self.encode(false)
    }

    /// As [`to_http`](ApiResponse::to_http), with `Connection: close`: for the last response
    /// on a connection ([`RequestReader::should_close`]).
    pub fn to_http_closing(&self) -> Vec<u8> {
        self.encode(true)
    }

    fn encode(&self, close: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: vmm/{}\r\n",
            self.status,
            reason(self.status),
            env!("CARGO_PKG_VERSION")
        );
        if close {
            out.push_str("Connection: close\r\n");
        }
        let bodiless = self.status == 204 || (100..200).contains(&self.status);
        match (&self.body, bodiless) {
            (_, true) => {}
            (Some(body), false) => {
                out.push_str("Content-Type: application/json\r\n");
                out.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            (None, false) => out.push_str("Content-Length: 0\r\n"),
        }
        out.push_str("\r\n");
        if let (Some(body), false) = (&self.body, bodiless) {
            out.push_str(body);
        }
        out.into_bytes()
    }
}
