//! Arbitrary register access sequences against the virtio-mmio transport
//! (body: `voidbox_vmm::fuzzing::mmio_registers`, replayed by `vmm/tests/fuzz_corpus.rs`).
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

/// A 4 KiB disk image, made once per process.
fn image() -> &'static tempfile::NamedTempFile {
    static IMAGE: OnceLock<tempfile::NamedTempFile> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0; 4096]).unwrap();
        f
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    voidbox_vmm::fuzzing::mmio_registers(data, image().path())
});
