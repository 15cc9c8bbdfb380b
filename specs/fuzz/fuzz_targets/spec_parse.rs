//! Spec text (YAML or JSON, possibly hostile): parsing and validation never
//! panic, and every diagnostic has a real position (see `voidbox_spec::fuzzing`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox_spec::fuzzing::spec_parse(data));
