//! The Unix-socket backend of the vsock device: routes guest packets to host
//! Unix streams and back, and owns the (bounded) connection table. It never
//! touches a virtio queue (see [`super::device`]).
//!
//! Bounds that keep a hostile guest from growing host memory:
//! at most [`MAX_CONNECTIONS`] connections (including host clients still
//! sending their CONNECT line), at most `CONN_BUF_SIZE` buffered bytes per
//! connection, at most [`MAX_PENDING_RST`] queued resets for unknown
//! connections, and one 64 KiB bounce buffer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::{Reader, Writer};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::backend::VsockBackend;
use super::connection::{ConnError, ConnKey, ConnState, Connection};
use super::packet::{op, PacketHeader, HOST_CID, MAX_PKT_LEN, TYPE_STREAM};
use super::unix::{self, ConnectLine, MAX_CONNECT_LINE};

mod rx;

/// Most simultaneous connections (host clients in handshake included).
pub const MAX_CONNECTIONS: usize = 64;
/// Most queued resets for packets that match no connection.
pub const MAX_PENDING_RST: usize = 128;
/// First port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const TOKEN_LISTENER: u64 = 1;
const FIRST_CONN_TOKEN: u64 = 16;

/// A host client that has not finished its `CONNECT <port>\n` line.
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
}

enum TokenTarget {
    Pending,
    Conn(ConnKey),
}

/// The Unix-socket backend state.
pub struct Muxer {
    guest_cid: u64,
    listener: Arc<UnixListener>,
    uds_path: PathBuf,
    /// Host-side events: the listener and every host stream that needs watching.
    epoll: Epoll,
    /// Ordered, so RX can serve connections round robin.
    conns: BTreeMap<ConnKey, Connection>,
    pending_host: HashMap<u64, PendingHost>,
    tokens: HashMap<u64, TokenTarget>,
    rst_queue: VecDeque<PacketHeader>,
    next_token: u64,
    next_local_port: u32,
    /// The connection that filled the last RX buffer; the next search starts after it.
    rx_cursor: Option<ConnKey>,
    bounce: Vec<u8>,
}

impl Muxer {
    /// A backend for guest `guest_cid`, serving host clients on `listener`
    /// (bound at `uds_path`) and guest connections to `<uds_path>_<port>`.
    pub fn new(guest_cid: u64, listener: Arc<UnixListener>, uds_path: PathBuf) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        Ok(Muxer {
            guest_cid,
            listener,
            uds_path,
            epoll,
            conns: BTreeMap::new(),
            pending_host: HashMap::new(),
            tokens: HashMap::new(),
            rst_queue: VecDeque::new(),
            next_token: FIRST_CONN_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            rx_cursor: None,
            bounce: vec![0; MAX_PKT_LEN as usize],
        })
    }

    fn alloc_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(FIRST_CONN_TOKEN);
        t
    }

    fn accept_host_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("vsock: accept failed: {e}");
                    return;
                }
            };
            if self.connection_count() >= MAX_CONNECTIONS {
                tracing::warn!("vsock: connection table full; refusing host client");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.alloc_token();
            let ev = EpollEvent::new(EventSet::IN, token);
            if let Err(e) = self
                .epoll
                .ctl(ControlOperation::Add, stream.as_raw_fd(), ev)
            {
                tracing::warn!("vsock: cannot watch host client: {e}");
                continue;
            }
            self.tokens.insert(token, TokenTarget::Pending);
            self.pending_host.insert(
                token,
                PendingHost {
                    stream,
                    line: Vec::new(),
                },
            );
        }
    }

    fn host_event(&mut self, token: u64, events: u32) {
        match self.tokens.get(&token) {
            Some(TokenTarget::Pending) => self.read_connect_line(token),
            Some(TokenTarget::Conn(key)) => {
                let key = *key;
                let Some(conn) = self.conns.get_mut(&key) else {
                    return;
                };
                let readable = (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32;
                if events & readable != 0 {
                    conn.host_readable = true;
                }
                if events & (libc::EPOLLOUT | libc::EPOLLERR) as u32 != 0 {
                    if let Err(e) = conn.flush_to_host() {
                        tracing::debug!("vsock: host stream of port {} failed: {e:?}", key.0);
                        conn.schedule_rst();
                    }
                }
            }
            None => {}
        }
    }

    fn drop_pending(&mut self, token: u64) {
        self.tokens.remove(&token);
        if let Some(p) = self.pending_host.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                p.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn read_connect_line(&mut self, token: u64) {
        let Some(p) = self.pending_host.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        // Read byte-wise up to the newline so no payload after it is consumed.
        let parsed = loop {
            let room = MAX_CONNECT_LINE - p.line.len();
            if room == 0 {
                break ConnectLine::Invalid;
            }
            match p.stream.read(&mut buf[..1]) {
                Ok(0) => break ConnectLine::Invalid,
                Ok(_) => {
                    p.line.push(buf[0]);
                    match unix::parse_connect_line(&p.line) {
                        ConnectLine::Incomplete => continue,
                        done => break done,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break ConnectLine::Invalid,
            }
        };
        let port = match parsed {
            ConnectLine::Port(port) => port,
            _ => {
                tracing::debug!("vsock: host client sent a bad CONNECT line; closing it");
                self.drop_pending(token);
                return;
            }
        };
        let Some(p) = self.pending_host.remove(&token) else {
            return;
        };
        let local = self.alloc_local_port(port);
        let key = (local, port);
        let conn = Connection::requested_by_host(p.stream, token, key);
        self.tokens.insert(token, TokenTarget::Conn(key));
        // Stays registered for IN until the handshake ends; update_interests fixes it.
        self.conns.insert(key, conn);
        if let Some(c) = self.conns.get_mut(&key) {
            c.registered = Some(libc::EPOLLIN as u32);
        }
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer_port)) {
                return p;
            }
        }
    }

    fn handle_tx_packet(&mut self, h: PacketHeader, reader: &mut Reader) {
        if h.src_cid != self.guest_cid {
            tracing::debug!(
                "vsock: dropping packet with spoofed source CID {}",
                h.src_cid
            );
            return;
        }
        if h.dst_cid != HOST_CID || h.type_ != TYPE_STREAM {
            self.queue_rst(&h);
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.op == op::REQUEST {
            self.guest_connect(&h);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.queue_rst(&h);
            return;
        };
        conn.update_peer_credit(&h);
        match h.op {
            op::RESPONSE if conn.state == ConnState::Requesting => {
                if let Err(e) = conn.establish() {
                    tracing::debug!("vsock: host client vanished during handshake: {e}");
                    conn.schedule_rst();
                }
            }
            op::RW if conn.state == ConnState::Established && !conn.closing() => {
                let len = h.len as usize;
                if let Err(e) = conn.recv_from_guest(reader, len, &mut self.bounce) {
                    match e {
                        ConnError::CreditViolation => crate::guest_warn!(
                            "vsock: guest port {} exceeded its credit; resetting",
                            h.src_port
                        ),
                        ConnError::Host(e) => tracing::debug!("vsock: host stream failed: {e}"),
                    }
                    conn.schedule_rst();
                }
            }
            op::RW => {}
            op::SHUTDOWN => conn.peer_shutdown(h.flags),
            op::CREDIT_REQUEST => conn.request_credit_update(),
            op::CREDIT_UPDATE => {}
            op::RST => self.remove_conn(key),
            _ => conn.schedule_rst(),
        }
    }

    fn guest_connect(&mut self, h: &PacketHeader) {
        let key = (h.dst_port, h.src_port);
        if self.conns.contains_key(&key) || self.connection_count() >= MAX_CONNECTIONS {
            tracing::debug!("vsock: refusing guest connection to port {}", h.dst_port);
            self.queue_rst(h);
            return;
        }
        let path = unix::port_path(&self.uds_path, h.dst_port);
        let stream = match unix::connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("vsock: guest connect to {}: {e}", path.display());
                self.queue_rst(h);
                return;
            }
        };
        let token = self.alloc_token();
        let conn = Connection::accepted_from_guest(stream, token, key, h);
        self.tokens.insert(token, TokenTarget::Conn(key));
        self.conns.insert(key, conn);
    }

    fn queue_rst(&mut self, h: &PacketHeader) {
        if h.op == op::RST {
            return;
        }
        if self.rst_queue.len() >= MAX_PENDING_RST {
            tracing::debug!("vsock: reset queue full; dropping a reset");
            return;
        }
        self.rst_queue.push_back(PacketHeader {
            src_cid: h.dst_cid,
            dst_cid: h.src_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op::RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            self.tokens.remove(&conn.token);
            if conn.registered.is_some() {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    conn.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
    }

    /// Register each host stream for exactly the events it needs; streams that
    /// need none leave the epoll set (so a hung-up peer cannot cause a spin).
    fn update_interests(&mut self) {
        for conn in self.conns.values_mut() {
            let want = conn.desired_events();
            let fd = conn.stream.as_raw_fd();
            let ev = EpollEvent::new(EventSet::from_bits_truncate(want), conn.token);
            let res = match (conn.registered, want) {
                (None, 0) => Ok(()),
                (None, _) => self.epoll.ctl(ControlOperation::Add, fd, ev),
                (Some(_), 0) => self.epoll.ctl(ControlOperation::Delete, fd, ev),
                (Some(cur), _) if cur == want => Ok(()),
                (Some(_), _) => self.epoll.ctl(ControlOperation::Modify, fd, ev),
            };
            match res {
                Ok(()) => conn.registered = (want != 0).then_some(want),
                Err(e) => {
                    tracing::warn!("vsock: epoll update failed: {e}");
                    conn.schedule_rst();
                }
            }
        }
    }
}

impl VsockBackend for Muxer {
    fn send_pkt(&mut self, h: &PacketHeader, payload: &mut Reader) {
        self.handle_tx_packet(*h, payload);
    }

    fn recv_pkt(&mut self, buf: &mut Writer) -> Option<u32> {
        self.fill_buffer(buf)
    }

    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn notify(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("vsock: host event poll failed: {e}");
                return;
            }
        };
        // Level-triggered: events beyond this batch keep our fd readable.
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_LISTENER => self.accept_host_clients(),
                token => self.host_event(token, ev.events()),
            }
        }
    }

    fn settle(&mut self) {
        self.update_interests();
    }

    fn connection_count(&self) -> usize {
        self.conns.len() + self.pending_host.len()
    }
}
