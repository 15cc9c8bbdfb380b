//! Entry point of the fuzz target in `specs/fuzz/`, shared with the ordinary test that
//! replays its committed corpus (`tests/fuzz_corpus.rs`).

use std::path::Path;

use crate::{parse_str, SpecError};

/// Spec text (YAML or JSON, possibly hostile): parsing and validation never panic, and
/// every diagnostic has a real position.
pub fn spec_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(SpecError::Invalid(d)) = parse_str(text, "fuzz.yaml", Path::new("/")) {
        for item in &d.items {
            assert!(item.pos.line >= 1 && item.pos.col >= 1, "{item:?}");
        }
    }
}
