//! The CLI prints an error and its causes joined on one line (`vmm: error: a: b: c`), and the API
//! puts them in one `fault_message`: no part of the chain may hold a line break.
//!
//! Not checked: serde_json's own messages, which quote an unknown key as it was written (a key
//! holding `\n` gives a two-line "unknown field" message). That text is serde's; making the
//! printed line safe for it is the printer's job (`vmm_core::error_chain`), outside these crates.

/// Panics when the `Display` of `error` or of any of its sources (up to a serde_json error) holds
/// a line break, or is empty (which would print as a dangling `: `).
pub fn assert_one_line(error: &(dyn std::error::Error + 'static)) {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<serde_json::Error>().is_some() {
            return;
        }
        let mut text = e.to_string();
        // A wrapper that repeats serde's message (`{0}`, `invalid body: {error}`).
        if let Some(json) = e
            .source()
            .and_then(|s| s.downcast_ref::<serde_json::Error>())
        {
            text = text.replace(&json.to_string(), "<serde_json>");
        }
        assert!(
            !text.contains(['\n', '\r']),
            "an error over several lines: {text:?} ({e:?})"
        );
        assert!(!text.is_empty(), "an empty error message: {e:?}");
        next = e.source();
    }
}
