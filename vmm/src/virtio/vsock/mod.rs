//! Userspace virtio-vsock (device type 19) with Firecracker's host convention.
//!
//! The host side is one Unix socket at `uds_path`:
//! - host → guest: a host process connects to `uds_path`, writes
//!   `CONNECT <port>\n`, reads `OK <host_port>\n` once the guest accepted,
//!   then bytes flow to guest port `<port>`;
//! - guest → host: a guest connection to CID 2 port `P` is connected to the
//!   Unix socket `<uds_path>_<P>` if something listens there, else reset.
//!
//! Flow control is the virtio credit scheme in both directions, and every
//! table and buffer is bounded (see [`muxer`]).
//!
//! As in Firecracker, the device ([`device`]: queues, interrupt) is split from
//! its host backend ([`backend::VsockBackend`], implemented by [`muxer`] over
//! Unix sockets).

pub mod backend;
pub mod connection;
pub mod device;
pub mod muxer;
pub mod packet;
pub mod unix;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::worker::DeviceThread;
use super::{ActivateContext, Error, VirtioDevice, TYPE_VSOCK, VIRTIO_F_VERSION_1};
use crate::seccomp;

/// Size of each of the three queues (rx, tx, event).
pub const QUEUE_SIZE: u16 = 256;

/// A userspace virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: Arc<UnixListener>,
    config: [u8; 8],
    queue_sizes: [u16; 3],
    thread: DeviceThread,
}

impl Vsock {
    /// Create the device for guest CID `guest_cid`, bind its host socket at
    /// `uds_path` now (so a path in use is reported before the guest boots)
    /// and start its device thread (from the calling thread: see [`crate::seccomp`]).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, Error> {
        // 0-2 are reserved (hypervisor, local, host); u32::MAX is VMADDR_CID_ANY.
        if guest_cid < 3 || guest_cid >= u64::from(u32::MAX) {
            return Err(Error::InvalidCid(guest_cid));
        }
        let thread = DeviceThread::spawn("virtio-vsock", seccomp::Thread::VirtioVsock)?;
        let listener = unix::bind_listener(uds_path)?;
        Ok(Vsock {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener: Arc::new(listener),
            config: guest_cid.to_le_bytes(),
            queue_sizes: [QUEUE_SIZE; 3],
            thread,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Path of the host-side Unix socket.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn avail_features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), Error> {
        self.reset();
        if ctx.queues.len() != 3 {
            return Err(Error::QueueCount {
                expected: 3,
                got: ctx.queues.len(),
            });
        }
        let (guest_cid, listener, uds_path) =
            (self.guest_cid, self.listener.clone(), self.uds_path.clone());
        let interrupt = ctx.interrupt.clone();
        self.thread.start(
            Box::new(move || {
                let backend =
                    muxer::Muxer::new(guest_cid, listener, uds_path).map_err(Error::Epoll)?;
                let worker = device::VsockWorker::new(
                    ctx.mem,
                    ctx.queues,
                    ctx.queue_events,
                    ctx.interrupt,
                    backend,
                )
                .map_err(Error::Epoll)?;
                Ok(Box::new(worker))
            }),
            interrupt,
        )
    }

    fn reset(&mut self) {
        self.thread.stop();
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.reset();
        // The socket file is ours (bound in `new`); leave no stale file behind.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
mod tests;
