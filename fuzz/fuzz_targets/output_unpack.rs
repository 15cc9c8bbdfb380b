//! A guest's output archive (untrusted tar bytes) unpacked on the host
//! (body: `voidbox::fuzzing::output_unpack`, replayed by `tests/fuzz_corpus.rs`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox::fuzzing::output_unpack(data));
