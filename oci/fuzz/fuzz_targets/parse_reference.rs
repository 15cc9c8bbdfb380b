//! Image references and platforms from arbitrary text: parse or fail cleanly, and a parsed
//! registry reference round-trips through its canonical name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voidbox_oci::{ImageSource, Platform};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Platform::parse(text);
    if let Ok(source) = ImageSource::parse(text) {
        let name = source.canonical_name();
        if let ImageSource::Registry(_) = source {
            let again = ImageSource::parse(&name).expect("canonical name parses");
            assert_eq!(again.canonical_name(), name);
        }
    }
});
