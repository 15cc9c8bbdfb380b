//! Boot data parsing and validation never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voidbox_guest_agent::BootData;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = BootData::from_json(data) {
        let _ = d.to_newc_archive();
        let _ = d.secret();
    }
});
