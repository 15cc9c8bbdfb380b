//! Control messages from an untrusted peer: decoding never panics and
//! whatever decodes re-encodes to something that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voidbox_guest_agent::protocol::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::from_bytes(data) {
        let again = Message::from_bytes(&m.to_bytes()).expect("re-encoded message decodes");
        assert_eq!(again, m);
    }
});
