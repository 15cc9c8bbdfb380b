//! The bzImage setup header comes from a downloaded package: locating the payload must
//! never panic or read out of bounds.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = voidbox_guest_image::bzimage::locate_payload(data, std::path::Path::new("fuzz"));
});
