//! The kernel loader (ELF vmlinux / bzImage parsing into guest memory) on arbitrary files
//! (body: `voidbox_vmm::fuzzing::load_kernel`, replayed by `vmm/tests/fuzz_corpus.rs`).
#![no_main]

use std::sync::OnceLock;

/// A scratch file path for the kernel, in a directory made once per process.
fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    voidbox_vmm::fuzzing::load_kernel(data, &scratch().join("kernel"))
});
