//! Untrusted file names into the ext4 writer's debugfs script: no name can add or split a command.
//! The body is `voidbox_oci::fuzzing::debugfs_script`, also replayed by `oci/tests/fuzz_corpus.rs`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox_oci::fuzzing::debugfs_script(data));
