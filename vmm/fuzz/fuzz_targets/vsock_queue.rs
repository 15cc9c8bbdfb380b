//! The vsock device's queue handling: fuzzed TX packets and RX buffers in guest memory,
//! processed synchronously by the real device and Unix backend
//! (body: `voidbox_vmm::fuzzing::vsock_queue`, replayed by `vmm/tests/fuzz_corpus.rs`).
#![no_main]

use std::os::unix::net::UnixListener;
use std::sync::{Arc, OnceLock};

use voidbox_vmm::fuzzing::VsockHost;

/// The host socket (and a listener on port 1024), made once per process.
fn host() -> &'static VsockHost {
    static HOST: OnceLock<(tempfile::TempDir, UnixListener, VsockHost)> = OnceLock::new();
    &HOST
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("v.sock");
            let listener = Arc::new(UnixListener::bind(&path).unwrap());
            listener.set_nonblocking(true).unwrap();
            let port = UnixListener::bind(dir.path().join("v.sock_1024")).unwrap();
            (dir, port, VsockHost { listener, path })
        })
        .2
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| voidbox_vmm::fuzzing::vsock_queue(data, host()));
