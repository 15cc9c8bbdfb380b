//! Control messages from an untrusted peer: decoding never panics and whatever decodes
//! re-encodes to the same value (see `voidbox_guest_agent::fuzzing`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox_guest_agent::fuzzing::message_decode(data));
