//! The nested lane's control channel parsed from an untrusted byte stream
//! (body: `voidbox::fuzzing::lane_frame`, replayed by `tests/fuzz_corpus.rs`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox::fuzzing::lane_frame(data));
