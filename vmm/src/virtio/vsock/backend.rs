//! The seam between the vsock device (virtio queues, interrupts) and a host
//! backend (where guest connections go), as in Firecracker's `VsockBackend`:
//! the device hands the backend each TX packet and asks it to fill each RX
//! buffer; it never sees connections.

use std::os::unix::io::RawFd;

use virtio_queue::{Reader, Writer};

use super::packet::PacketHeader;

/// A host backend for the vsock device.
pub trait VsockBackend: Send + 'static {
    /// A packet the guest sent, its header checked (`h.len` payload bytes of an
    /// RW packet are readable from `payload`).
    fn send_pkt(&mut self, h: &PacketHeader, payload: &mut Reader);

    /// Write the next packet for the guest into `buf`, which has room for at
    /// least a header. Returns the bytes written, or `None` when there is nothing
    /// to send: the device then hands the buffer back to the ring unused. A
    /// backend commits a packet's effects (credit told, control packet sent)
    /// only when it returns `Some`, so nothing is lost when the ring is empty.
    fn recv_pkt(&mut self, buf: &mut Writer) -> Option<u32>;

    /// An fd that is readable while host-side events wait (an epoll fd).
    fn as_raw_fd(&self) -> RawFd;

    /// Handle the host-side events that made [`VsockBackend::as_raw_fd`] readable.
    fn notify(&mut self);

    /// End of a device pass: apply what the pass changed (which host events to
    /// watch next).
    fn settle(&mut self);

    /// Live connections, handshakes included (diagnostics and tests).
    fn connection_count(&self) -> usize;
}
