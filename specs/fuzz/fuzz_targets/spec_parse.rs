//! Spec text (YAML or JSON, possibly hostile): parsing and validation never
//! panic, and every diagnostic has a real position.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(voidbox_spec::SpecError::Invalid(d)) =
            voidbox_spec::parse_str(text, "fuzz.yaml", std::path::Path::new("/"))
        {
            for item in &d.items {
                assert!(item.pos.line >= 1 && item.pos.col >= 1);
            }
        }
    }
});
