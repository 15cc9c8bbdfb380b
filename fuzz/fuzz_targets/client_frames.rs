//! The host client (handshake, frame mux, exec/get/stat/ping) against a hostile agent's
//! bytes (body: `voidbox::fuzzing::agent_stream`, replayed by `tests/fuzz_corpus.rs`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox::fuzzing::agent_stream(data));
