//! virtio-blk request handling over fuzzed descriptor chains.
#![no_main]

mod common;

use std::io::Write;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use voidbox_vmm::virtio::block::{BlockWorker, Disk};
use voidbox_vmm::virtio::Interrupt;

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

fuzz_target!(|data: &[u8]| {
    let (mem, mut queues) = common::guest_with_queues(data, 1);
    let queue = queues.remove(0);
    let mut worker = BlockWorker::new(
        mem,
        queue,
        EventFd::new(EFD_NONBLOCK).unwrap(),
        Interrupt::new().unwrap(),
        disk(),
    );
    worker.process_queue();
    worker.process_queue();
});
