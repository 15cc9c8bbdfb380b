//! Arbitrary guest port I/O against the platform devices through the port bus
//! (body: `voidbox_vmm::fuzzing::platform_ports`, replayed by `vmm/tests/fuzz_corpus.rs`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox_vmm::fuzzing::platform_ports(data));
