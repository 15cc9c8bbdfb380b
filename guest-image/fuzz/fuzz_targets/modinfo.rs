//! Module files come from a downloaded package: the .modinfo reader must never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = voidbox_guest_image::modules::modinfo(data);
});
