//! The vsock header codec, payload checks and the host CONNECT line parser
//! (body: `voidbox_vmm::fuzzing::vsock_packet`, replayed by `vmm/tests/fuzz_corpus.rs`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox_vmm::fuzzing::vsock_packet(data));
