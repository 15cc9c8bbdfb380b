//! One vsock stream connection between a guest port and a host Unix stream,
//! with the virtio credit accounting for both directions.
//!
//! Guest → host: we advertise `buf_alloc = CONN_BUF_SIZE`; bytes the host
//! stream cannot take at once wait in `to_host`, which a guest respecting our
//! credit can never grow past `CONN_BUF_SIZE` (one that does is reset).
//! Host → guest: we read from the host stream only as much as the guest's
//! credit allows, so the kernel socket buffer is the only queue on that side.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;

use super::packet::{op, PacketHeader, HOST_CID, SHUTDOWN_SEND, TYPE_STREAM};

/// Receive buffer we advertise per connection: the most guest data we ever hold.
pub const CONN_BUF_SIZE: u32 = 128 * 1024;

/// (host port, guest port).
pub type ConnKey = (u32, u32);

/// Connection lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent (or pending), waiting for the guest's RESPONSE.
    Requesting,
    /// Data may flow.
    Established,
}

/// Control packets waiting for an RX buffer (bit set; at most one of each).
mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const SHUTDOWN: u8 = 4;
    pub const CREDIT_UPDATE: u8 = 8;
    pub const CREDIT_REQUEST: u8 = 16;
    pub const RST: u8 = 32;
}

/// Why a connection must be reset.
#[derive(Debug)]
pub enum ConnError {
    /// The guest sent more than the credit we gave it.
    CreditViolation,
    /// The host stream failed.
    Host(io::Error),
}

/// A connection's state.
pub struct Connection {
    /// The host side.
    pub stream: UnixStream,
    /// Epoll token of `stream`.
    pub token: u64,
    /// Lifecycle state.
    pub state: ConnState,
    /// Host-side port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    to_host: VecDeque<u8>,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_sent: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    tx_cnt: Wrapping<u32>,
    credit_requested: bool,
    /// The guest will send no more data.
    pub peer_no_send: bool,
    /// The guest will receive no more data.
    pub peer_no_recv: bool,
    host_write_shut: bool,
    /// The host stream reached end of file.
    pub host_eof: bool,
    /// Epoll said the host stream has data (cleared on EWOULDBLOCK).
    pub host_readable: bool,
    /// Events currently registered with epoll (None = not registered).
    pub registered: Option<u32>,
    pending: u8,
}

impl Connection {
    /// A guest-initiated connection: the host side is connected, RESPONSE pending.
    pub fn accepted_from_guest(
        stream: UnixStream,
        token: u64,
        key: ConnKey,
        peer: &PacketHeader,
    ) -> Self {
        let mut c = Self::new(stream, token, key, ConnState::Established);
        c.update_peer_credit(peer);
        c.pending = pending::RESPONSE;
        c
    }

    /// A host-initiated connection: REQUEST pending, waiting for RESPONSE.
    pub fn requested_by_host(stream: UnixStream, token: u64, key: ConnKey) -> Self {
        let mut c = Self::new(stream, token, key, ConnState::Requesting);
        c.pending = pending::REQUEST;
        c
    }

    fn new(stream: UnixStream, token: u64, key: ConnKey, state: ConnState) -> Self {
        Connection {
            stream,
            token,
            state,
            local_port: key.0,
            peer_port: key.1,
            to_host: VecDeque::new(),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            credit_requested: false,
            peer_no_send: false,
            peer_no_recv: false,
            host_write_shut: false,
            host_eof: false,
            host_readable: false,
            registered: None,
            pending: 0,
        }
    }

    /// Record the guest's receive window from any packet it sent.
    pub fn update_peer_credit(&mut self, h: &PacketHeader) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes we may still send to the guest.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Bytes of guest data waiting for the host stream.
    pub fn buffered(&self) -> usize {
        self.to_host.len()
    }

    /// The guest accepted our REQUEST.
    pub fn establish(&mut self) -> io::Result<()> {
        self.state = ConnState::Established;
        // A fresh socket's send buffer is empty, so this short line cannot block.
        let line = format!("OK {}\n", self.local_port);
        let n = send_nosignal(&self.stream, line.as_bytes())?;
        if n != line.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write of OK line",
            ));
        }
        Ok(())
    }

    /// Take `len` payload bytes from the guest, writing what the host takes now
    /// and buffering the rest (within the credit we advertised).
    pub fn recv_from_guest(
        &mut self,
        reader: &mut impl Read,
        len: usize,
        bounce: &mut [u8],
    ) -> Result<(), ConnError> {
        if self.to_host.len() + len > CONN_BUF_SIZE as usize {
            return Err(ConnError::CreditViolation);
        }
        let mut left = len;
        while left > 0 {
            let n = left.min(bounce.len());
            reader
                .read_exact(&mut bounce[..n])
                .map_err(ConnError::Host)?;
            left -= n;
            self.rx_cnt += Wrapping(n as u32);
            let mut written = 0;
            if self.to_host.is_empty() && !self.host_write_shut {
                written = match send_nosignal(&self.stream, &bounce[..n]) {
                    Ok(w) => w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Err(ConnError::Host(e)),
                };
                self.fwd_cnt += Wrapping(written as u32);
            }
            self.to_host.extend(&bounce[written..n]);
        }
        self.after_forward();
        Ok(())
    }

    /// Write buffered guest data to the host stream until it would block.
    pub fn flush_to_host(&mut self) -> Result<(), ConnError> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match send_nosignal(&self.stream, front) {
                Ok(0) => return Err(ConnError::Host(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Host(e)),
            }
        }
        self.after_forward();
        Ok(())
    }

    fn after_forward(&mut self) {
        if self.to_host.is_empty() {
            if self.to_host.capacity() > 16 * 1024 {
                self.to_host = VecDeque::new();
            }
            if self.peer_no_send && !self.host_write_shut {
                self.host_write_shut = true;
                let _ = self.stream.shutdown(Shutdown::Write);
            }
            if self.peer_no_send && self.peer_no_recv {
                // The guest closed both ways and all its data reached the host.
                self.pending |= pending::RST;
            }
        }
    }

    /// Whether the guest must hear about freed space: its view of our window
    /// (from the last `fwd_cnt` it was *delivered*) is at least half used and
    /// we have forwarded more since. Computed afresh on every pass rather than
    /// latched on one edge, so an update that could not be delivered (no RX
    /// buffer) is offered again: Linux guests never send CREDIT_REQUEST, so a
    /// lost update would leave a sender that used its window asleep forever.
    fn credit_update_due(&self) -> bool {
        let guest_view_used = (self.rx_cnt - self.last_fwd_sent).0;
        self.fwd_cnt != self.last_fwd_sent && guest_view_used >= CONN_BUF_SIZE / 2
    }

    /// The guest shut down one or both directions.
    pub fn peer_shutdown(&mut self, flags: u32) {
        if flags & super::packet::SHUTDOWN_RCV != 0 {
            self.peer_no_recv = true;
        }
        if flags & SHUTDOWN_SEND != 0 {
            self.peer_no_send = true;
        }
        self.after_forward();
    }

    /// The guest asked for our credit.
    pub fn request_credit_update(&mut self) {
        self.pending |= pending::CREDIT_UPDATE;
    }

    /// Schedule a RST (the connection is removed once it is sent).
    pub fn schedule_rst(&mut self) {
        self.pending |= pending::RST;
    }

    /// Whether a RST is scheduled (the connection is going away).
    pub fn closing(&self) -> bool {
        self.pending & pending::RST != 0
    }

    /// The host stream hit end of file: tell the guest we send no more.
    pub fn host_closed(&mut self) {
        self.host_eof = true;
        self.pending |= pending::SHUTDOWN;
    }

    /// Should we read host data for the guest now?
    pub fn can_send_data(&self) -> bool {
        self.state == ConnState::Established
            && !self.closing()
            && !self.peer_no_recv
            && !self.host_eof
            && self.host_readable
            && self.peer_credit() > 0
    }

    /// Should epoll watch the stream for input?
    pub fn wants_host_input(&self) -> bool {
        self.state == ConnState::Established
            && !self.closing()
            && !self.peer_no_recv
            && !self.host_eof
            && !self.host_readable
    }

    /// The next control packet to send, if any: (op, flags).
    pub fn next_control(&mut self) -> Option<(u16, u32)> {
        if self.can_request_credit() {
            self.credit_requested = true;
            self.pending |= pending::CREDIT_REQUEST;
        }
        if self.credit_update_due() {
            self.pending |= pending::CREDIT_UPDATE;
        }
        let order = [
            (pending::RST, op::RST, 0),
            (pending::REQUEST, op::REQUEST, 0),
            (pending::RESPONSE, op::RESPONSE, 0),
            (pending::SHUTDOWN, op::SHUTDOWN, SHUTDOWN_SEND),
            (pending::CREDIT_UPDATE, op::CREDIT_UPDATE, 0),
            (pending::CREDIT_REQUEST, op::CREDIT_REQUEST, 0),
        ];
        order
            .iter()
            .find(|(bit, _, _)| self.pending & bit != 0)
            .map(|&(_, op, flags)| (op, flags))
    }

    fn can_request_credit(&self) -> bool {
        self.state == ConnState::Established
            && !self.credit_requested
            && self.host_readable
            && !self.host_eof
            && !self.peer_no_recv
            && self.peer_credit() == 0
    }

    /// A packet built by [`Connection::header`] reached the guest (it is in a
    /// used RX buffer): only now does the guest know the credit it carries.
    pub fn packet_delivered(&mut self, h: &PacketHeader) {
        self.last_fwd_sent = Wrapping(h.fwd_cnt);
        // Any packet carries our credit, so no separate update is needed now.
        self.pending &= !pending::CREDIT_UPDATE;
        self.control_sent(h.op);
    }

    /// The control packet `op` went out.
    fn control_sent(&mut self, op: u16) {
        let bit = match op {
            op::RST => pending::RST,
            op::REQUEST => pending::REQUEST,
            op::RESPONSE => pending::RESPONSE,
            op::SHUTDOWN => pending::SHUTDOWN,
            op::CREDIT_UPDATE => pending::CREDIT_UPDATE,
            op::CREDIT_REQUEST => pending::CREDIT_REQUEST,
            _ => 0,
        };
        self.pending &= !bit;
    }

    /// A header for a packet to the guest, carrying our current credit. It has
    /// no effect on the connection until [`Connection::packet_delivered`].
    pub fn header(&self, guest_cid: u64, op: u16, flags: u32, len: u32) -> PacketHeader {
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Count `n` payload bytes sent to the guest.
    pub fn sent_to_guest(&mut self, n: u32) {
        self.tx_cnt += Wrapping(n);
    }

    /// Epoll events this connection needs now.
    pub fn desired_events(&self) -> u32 {
        let mut ev = 0;
        if self.wants_host_input() {
            ev |= libc::EPOLLIN as u32;
        }
        if !self.to_host.is_empty() && !self.closing() {
            ev |= libc::EPOLLOUT as u32;
        }
        ev
    }
}

/// Write to a host stream without raising SIGPIPE when the host end is gone
/// (the error comes back as EPIPE instead, whatever the process's signal setup).
fn send_nosignal(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid slice for `buf.len()` bytes and the fd is open
    // for the lifetime of `stream`.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn established() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let peer = PacketHeader {
            buf_alloc: 1 << 20,
            ..Default::default()
        };
        (
            Connection::accepted_from_guest(ours, 99, (5000, 4000), &peer),
            theirs,
        )
    }

    #[test]
    fn guest_data_buffered_within_credit_only() {
        let (mut c, _host) = established();
        let chunk = vec![7u8; 64 * 1024];
        let mut bounce = vec![0u8; 64 * 1024];
        let mut accepted = 0usize;
        let err = loop {
            match c.recv_from_guest(&mut &chunk[..], chunk.len(), &mut bounce) {
                Ok(()) => accepted += chunk.len(),
                Err(e) => break e,
            }
            // Never more than our advertised window is held in user space.
            assert!(c.buffered() <= CONN_BUF_SIZE as usize);
            assert!(accepted < 64 << 20, "flood never refused");
        };
        assert!(matches!(err, ConnError::CreditViolation));
        assert!(c.buffered() <= CONN_BUF_SIZE as usize);
    }

    #[test]
    fn credit_accounting() {
        let (mut c, mut host) = established();
        assert_eq!(c.next_control(), Some((op::RESPONSE, 0)));
        let h = c.header(3, op::RESPONSE, 0, 0);
        c.packet_delivered(&h);
        assert_eq!((h.buf_alloc, h.fwd_cnt), (CONN_BUF_SIZE, 0));
        // Host -> guest: credit is the guest's window minus bytes in flight.
        c.sent_to_guest(1000);
        assert_eq!(c.peer_credit(), (1 << 20) - 1000);
        c.update_peer_credit(&PacketHeader {
            buf_alloc: 1000,
            fwd_cnt: 0,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 0);
        // Guest -> host: forwarded bytes raise fwd_cnt; a half-used window
        // schedules a credit update.
        let data = vec![1u8; (CONN_BUF_SIZE / 2) as usize];
        let mut bounce = vec![0u8; 64 * 1024];
        c.recv_from_guest(&mut &data[..], data.len(), &mut bounce)
            .unwrap();
        let mut got = vec![0u8; data.len()];
        std::io::Read::read_exact(&mut host, &mut got).unwrap();
        assert_eq!(c.next_control(), Some((op::CREDIT_UPDATE, 0)));
        let h = c.header(3, op::CREDIT_UPDATE, 0, 0);
        assert_eq!(h.fwd_cnt, CONN_BUF_SIZE / 2);
        c.packet_delivered(&h);
        assert_eq!(c.next_control(), None);
    }

    #[test]
    fn undelivered_credit_update_is_offered_again() {
        let (mut c, mut host) = established();
        let h = c.header(3, op::RESPONSE, 0, 0);
        c.packet_delivered(&h);
        // The guest uses its whole window; the host takes everything.
        let data = vec![2u8; CONN_BUF_SIZE as usize];
        let mut bounce = vec![0u8; 64 * 1024];
        c.recv_from_guest(&mut &data[..], data.len(), &mut bounce)
            .unwrap();
        let mut got = vec![0u8; data.len()];
        std::io::Read::read_exact(&mut host, &mut got).unwrap();
        // The muxer builds the update but finds no RX buffer: nothing delivered.
        assert_eq!(c.next_control(), Some((op::CREDIT_UPDATE, 0)));
        let _ = c.header(3, op::CREDIT_UPDATE, 0, 0);
        // Next pass: still due, with the full forwarded count.
        assert_eq!(c.next_control(), Some((op::CREDIT_UPDATE, 0)));
        let h = c.header(3, op::CREDIT_UPDATE, 0, 0);
        assert_eq!(h.fwd_cnt, CONN_BUF_SIZE);
        c.packet_delivered(&h);
        assert_eq!(c.next_control(), None);
    }
}
