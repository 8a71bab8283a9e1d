//! Command lines as fuzz input: words separated by NUL bytes, as in `/proc/PID/cmdline` (a
//! real argv cannot hold a NUL, everything else goes: line breaks, non-UTF-8 bytes). The
//! dictionaries give the flag names and typical values.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// `program` followed by the NUL-separated words of `bytes` (at most 64), each with `@S`
/// replaced by `scratch`.
pub fn argv(program: &str, bytes: &[u8], scratch: &str) -> Vec<OsString> {
    let words = bytes.split(|&b| b == 0).take(64).map(|word| {
        let mut out = Vec::with_capacity(word.len());
        let mut rest = word;
        while let Some(i) = rest.windows(2).position(|w| w == b"@S") {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(scratch.as_bytes());
            rest = &rest[i + 2..];
        }
        out.extend_from_slice(rest);
        OsString::from_vec(out)
    });
    std::iter::once(OsString::from(program))
        .chain(words)
        .collect()
}

/// Checks a clap refusal: the first line, which is all the front ends print, says something.
pub fn check_clap_error(error: &clap::Error) {
    let text = error.to_string();
    if error.use_stderr() {
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.len() > "error: ".len(),
            "a clap error without a first line: {text:?}"
        );
    }
}
