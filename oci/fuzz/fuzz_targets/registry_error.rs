//! Registry error responses (status + body) classified into typed errors.
//! The body is `voidbox_oci::fuzzing::registry_error_body`, also replayed by `oci/tests/fuzz_corpus.rs`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox_oci::fuzzing::registry_error_body(data));
