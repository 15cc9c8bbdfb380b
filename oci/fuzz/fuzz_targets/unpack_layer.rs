//! Arbitrary bytes as a layer (plain or gzip tar): typed errors only, nothing written outside the staging root.
//! The body is `voidbox_oci::fuzzing::unpack_layer`, also replayed by `oci/tests/fuzz_corpus.rs`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox_oci::fuzzing::unpack_layer(data));
