//! Boot data parsing and validation never panic (see `voidbox_guest_agent::fuzzing`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox_guest_agent::fuzzing::boot_data(data));
