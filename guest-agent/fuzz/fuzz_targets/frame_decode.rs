//! Frames from an untrusted peer: the incremental decoder and the stream reader
//! must agree, never panic, and never accept a body above the limit
//! (see `voidbox_guest_agent::fuzzing`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox_guest_agent::fuzzing::frame_decode(data));
