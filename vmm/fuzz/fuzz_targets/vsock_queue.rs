//! The vsock device's queue handling: fuzzed TX packets and RX buffers in
//! guest memory, processed synchronously by the real device and Unix backend.
#![no_main]

mod common;

use std::os::unix::net::UnixListener;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use voidbox_vmm::virtio::vsock::backend::VsockBackend;
use voidbox_vmm::virtio::vsock::device::VsockWorker;
use voidbox_vmm::virtio::vsock::muxer::Muxer;
use voidbox_vmm::virtio::Interrupt;

struct Host {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    listener: Arc<UnixListener>,
    _port_listener: UnixListener,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = Arc::new(UnixListener::bind(&path).unwrap());
        listener.set_nonblocking(true).unwrap();
        // Something listens on port 1024 so guest REQUESTs there succeed.
        let port_listener = UnixListener::bind(dir.path().join("v.sock_1024")).unwrap();
        Host {
            _dir: dir,
            path,
            listener,
            _port_listener: port_listener,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let (mem, queues) = common::guest_with_queues(data, 3);
    let events = (0..3)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let h = host();
    let backend = Muxer::new(3, h.listener.clone(), h.path.clone()).unwrap();
    let mut device =
        VsockWorker::new(mem, queues, events, Interrupt::new().unwrap(), backend).unwrap();
    for _ in 0..3 {
        device.process_queues();
    }
    assert!(
        device.backend().connection_count() <= voidbox_vmm::virtio::vsock::muxer::MAX_CONNECTIONS
    );
});
