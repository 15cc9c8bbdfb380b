//! A docker-archive (docker save) file from arbitrary bytes imported into a temporary store.
//! The body is `voidbox_oci::fuzzing::docker_archive_import`, also replayed by `oci/tests/fuzz_corpus.rs`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox_oci::fuzzing::docker_archive_import(data));
