//! Registry documents (manifests, indexes, configs) from arbitrary bytes: typed errors only.
//! The body is `voidbox_oci::fuzzing::parse_manifest_bytes`, also replayed by `oci/tests/fuzz_corpus.rs`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox_oci::fuzzing::parse_manifest_bytes(data));
