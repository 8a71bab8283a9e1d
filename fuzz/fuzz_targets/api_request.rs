//! Arbitrary bytes, in arbitrary chunks, into the control API's `RequestReader`: it must never
//! panic, every refusal must be a 4xx response with a fault message that serializes, the
//! reader must hold no more than one request's limits, and the chunking must not change what
//! comes out (the same stream pushed whole gives the same requests and errors). Every request
//! that comes out is applied to a configuration, which is then written as `GET /vm/config`.
//!
//! Input format: a sequence of chunks, each one length byte followed by that many bytes (the
//! last chunk may be short); a length of 0 is an empty push.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_api::{ApiConfig, ApiRequest, ApiResponse, RequestReader, MAX_BODY_BYTES, MAX_HEAD_BYTES};

/// What one push (or drain) gave.
#[derive(Debug, PartialEq)]
enum Outcome {
    Request(ApiRequest),
    Refused(u16, Option<String>),
}

fn check_refusal(response: &ApiResponse) {
    assert!(
        (400..500).contains(&response.status),
        "not a 4xx: {response:?}"
    );
    assert!(response.fault_message().is_some(), "no fault: {response:?}");
    let bytes = response.to_http();
    assert!(bytes.starts_with(b"HTTP/1.1 4"));
    assert!(response.to_http_closing().len() > bytes.len());
}

/// Pushes `chunk`, then drains buffered requests; records every outcome.
fn push_and_drain(
    reader: &mut RequestReader,
    chunk: &[u8],
    config: &mut ApiConfig,
    outcomes: &mut Vec<Outcome>,
) {
    let mut result = reader.push(chunk);
    loop {
        match result {
            Ok(None) => break,
            Ok(Some(request)) => {
                // Whatever the request, applying it must not panic; errors are 4xx too.
                if let Err(e) = config.apply(&request) {
                    check_refusal(&ApiResponse::from(e));
                }
                outcomes.push(Outcome::Request(request));
            }
            Err(response) => {
                check_refusal(&response);
                outcomes.push(Outcome::Refused(response.status, response.body));
            }
        }
        result = reader.push(&[]);
    }
    assert!(reader.buffered() <= MAX_HEAD_BYTES.max(MAX_BODY_BYTES));
    if reader.should_close() {
        assert_eq!(reader.buffered(), 0);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut chunks = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        chunks.push(&tail[..n]);
        rest = &tail[n..];
    }

    let mut reader = RequestReader::new();
    let mut config = ApiConfig::default();
    let mut chunked = Vec::new();
    for chunk in &chunks {
        push_and_drain(&mut reader, chunk, &mut config, &mut chunked);
        let _ = reader.take_continue();
    }
    let answer = ApiResponse::ok_json(&config.to_firecracker());
    assert_eq!(answer.status, 200);

    let whole: Vec<u8> = chunks.concat();
    let mut reader = RequestReader::new();
    let mut config = ApiConfig::default();
    let mut at_once = Vec::new();
    push_and_drain(&mut reader, &whole, &mut config, &mut at_once);
    assert_eq!(chunked, at_once, "chunking changed the outcome");
});
