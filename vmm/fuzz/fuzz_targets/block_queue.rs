//! virtio-blk request handling over fuzzed descriptor chains
//! (body: `voidbox_vmm::fuzzing::block_queue`, replayed by `vmm/tests/fuzz_corpus.rs`).
#![no_main]

use std::io::Write;
use std::sync::{Arc, OnceLock};

use voidbox_vmm::virtio::block::Disk;

/// A 64 KiB writable disk, made once per process.
fn disk() -> Arc<Disk> {
    static DISK: OnceLock<(tempfile::NamedTempFile, Arc<Disk>)> = OnceLock::new();
    DISK.get_or_init(|| {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0xa5; 64 * 1024]).unwrap();
        let d = Arc::new(Disk::open(f.path(), false, Some("fuzz".into())).unwrap());
        (f, d)
    })
    .1
    .clone()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox_vmm::fuzzing::block_queue(data, disk()));
