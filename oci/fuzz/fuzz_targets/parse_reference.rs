//! Image references and platforms from arbitrary text: parse or fail cleanly; registry references round-trip.
//! The body is `voidbox_oci::fuzzing::parse_reference`, also replayed by `oci/tests/fuzz_corpus.rs`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox_oci::fuzzing::parse_reference(data));
