//! virtio-vsock driven like a guest driver would (MMIO registers + real rings),
//! against real Unix sockets on the host side.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::connection::CONN_BUF_SIZE;
use super::muxer::{MAX_CONNECTIONS, MAX_PENDING_RST};
use super::packet::{
    op, PacketHeader, HEADER_SIZE, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::*;
use crate::virtio::status;
use crate::virtio::test_driver::TestDriver;

const CID: u64 = 42;
const RX_BUF: u32 = 4096;
const RX_CHAINS: usize = 32;

struct Guest {
    drv: TestDriver,
    /// rx head index -> (header addr, data addr)
    rx_bufs: HashMap<u16, (u64, u64)>,
    tx_hdr: u64,
    tx_data: u64,
    _dir: tempfile::TempDir,
    uds: PathBuf,
}

impl Guest {
    fn new() -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let dev = Vsock::new(CID, &uds).unwrap();
        let mut drv = TestDriver::new(Box::new(dev));
        assert_eq!(drv.read_reg(0x08), 19);
        let mut cid = [0u8; 8];
        drv.transport.read(0x100, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), CID);
        let f = drv.device_features();
        assert!(drv.negotiate(f));
        for q in 0..3 {
            drv.setup_queue(q, 128);
        }
        drv.driver_ok();
        assert_eq!(drv.status() & status::DEVICE_NEEDS_RESET, 0);
        let tx_hdr = drv.alloc(HEADER_SIZE);
        let tx_data = drv.alloc(64 * 1024);
        let mut g = Guest {
            drv,
            rx_bufs: HashMap::new(),
            tx_hdr,
            tx_data,
            _dir: dir,
            uds,
        };
        for _ in 0..RX_CHAINS {
            let hdr = g.drv.alloc(HEADER_SIZE);
            let data = g.drv.alloc(RX_BUF as usize);
            g.post_rx(hdr, data);
        }
        g
    }

    fn post_rx(&mut self, hdr: u64, data: u64) {
        let head = self
            .drv
            .add_chain(0, &[(hdr, HEADER_SIZE as u32, true), (data, RX_BUF, true)]);
        self.rx_bufs.insert(head, (hdr, data));
    }

    /// Next packet from the device (re-posting its buffer), or None after `wait`.
    fn try_recv(&mut self, wait: Duration) -> Option<(PacketHeader, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((id, len)) = self.drv.try_used(0) {
                let (hdr, data) = self.rx_bufs.remove(&(id as u16)).expect("known rx head");
                let mut raw = [0u8; HEADER_SIZE];
                self.drv
                    .mem
                    .read_slice(&mut raw, GuestAddress(hdr))
                    .unwrap();
                let h = PacketHeader::from_bytes(&raw);
                assert_eq!(
                    len as usize,
                    HEADER_SIZE + h.len as usize,
                    "used length matches header"
                );
                let mut payload = vec![0u8; h.len as usize];
                self.drv
                    .mem
                    .read_slice(&mut payload, GuestAddress(data))
                    .unwrap();
                self.post_rx(hdr, data);
                return Some((h, payload));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn recv(&mut self) -> (PacketHeader, Vec<u8>) {
        self.try_recv(Duration::from_secs(10))
            .expect("device sent no packet")
    }

    /// Receive, skipping credit updates.
    fn recv_skip_credit(&mut self) -> (PacketHeader, Vec<u8>) {
        loop {
            let p = self.recv();
            if p.0.op != op::CREDIT_UPDATE {
                return p;
            }
        }
    }

    fn send(&mut self, h: PacketHeader, data: &[u8]) {
        self.drv
            .mem
            .write_slice(&h.to_bytes(), GuestAddress(self.tx_hdr))
            .unwrap();
        let mut bufs = vec![(self.tx_hdr, HEADER_SIZE as u32, false)];
        if !data.is_empty() {
            self.drv
                .mem
                .write_slice(data, GuestAddress(self.tx_data))
                .unwrap();
            bufs.push((self.tx_data, data.len() as u32, false));
        }
        self.drv.add_chain(1, &bufs);
        self.drv.wait_used(1);
    }

    fn header(
        &self,
        src_port: u32,
        dst_port: u32,
        op: u16,
        len: u32,
        fwd_cnt: u32,
    ) -> PacketHeader {
        PacketHeader {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 64 * 1024,
            fwd_cnt,
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Host side of a host-initiated connection: CONNECT, then the guest accepts.
fn host_connect(g: &mut Guest, guest_port: u32) -> (UnixStream, u32) {
    let mut host = UnixStream::connect(&g.uds).unwrap();
    host.write_all(format!("CONNECT {guest_port}\n").as_bytes())
        .unwrap();
    let (req, _) = g.recv();
    assert_eq!(req.op, op::REQUEST);
    assert_eq!(
        (req.src_cid, req.dst_cid, req.dst_port),
        (HOST_CID, CID, guest_port)
    );
    let local = req.src_port;
    g.send(g.header(guest_port, local, op::RESPONSE, 0, 0), &[]);
    let mut line = String::new();
    BufReader::new(host.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, format!("OK {local}\n"));
    (host, local)
}

/// Guest receives `total` bytes on (local, guest_port) as a Linux guest would,
/// with a 64 KiB window it re-opens only after consuming all of it; checks the
/// device never exceeds the window.
fn guest_receive(g: &mut Guest, local: u32, guest_port: u32, total: usize) -> Vec<u8> {
    let window = 64 * 1024u32;
    let mut got = Vec::new();
    let mut fwd_cnt = 0u32;
    let mut saw_credit_request = false;
    while got.len() < total {
        let (h, data) = g.recv();
        assert_eq!((h.src_port, h.dst_port), (local, guest_port));
        match h.op {
            op::RW => {
                got.extend_from_slice(&data);
                let in_flight = got.len() as u32 - fwd_cnt;
                assert!(
                    in_flight <= window,
                    "device exceeded guest credit: {in_flight}"
                );
                if in_flight == window {
                    // Window full: the device must stop until we update.
                    match g.try_recv(Duration::from_millis(50)) {
                        None => {}
                        Some((h2, _)) => {
                            assert_eq!(h2.op, op::CREDIT_REQUEST, "only a credit request may come");
                            saw_credit_request = true;
                        }
                    }
                    fwd_cnt = got.len() as u32;
                    g.send(
                        g.header(guest_port, local, op::CREDIT_UPDATE, 0, fwd_cnt),
                        &[],
                    );
                }
            }
            op::CREDIT_REQUEST => {
                saw_credit_request = true;
                g.send(
                    g.header(guest_port, local, op::CREDIT_UPDATE, 0, fwd_cnt),
                    &[],
                );
            }
            op::CREDIT_UPDATE => {}
            other => panic!("unexpected op {other}"),
        }
    }
    if total > window as usize {
        assert!(saw_credit_request, "device asked for credit when blocked");
    }
    got
}

/// Guest sends `data` on (local, guest_port) respecting the device's credit.
/// `guest_fwd` is the guest's own fwd_cnt (bytes it consumed so far).
fn guest_send(
    g: &mut Guest,
    local: u32,
    guest_port: u32,
    data: &[u8],
    peer: (u32, u32),
    guest_fwd: u32,
) {
    let (mut peer_buf, mut peer_fwd) = peer;
    let mut sent = 0usize;
    while sent < data.len() {
        let credit = peer_buf - (sent as u32).wrapping_sub(peer_fwd);
        if credit == 0 {
            let (h, _) = g.recv();
            if h.op == op::CREDIT_UPDATE || h.op == op::RW {
                peer_buf = h.buf_alloc;
                peer_fwd = h.fwd_cnt;
            }
            continue;
        }
        let n = (data.len() - sent).min(credit as usize).min(16 * 1024);
        g.send(
            g.header(guest_port, local, op::RW, n as u32, guest_fwd),
            &data[sent..sent + n],
        );
        sent += n;
    }
}

fn spawn_reader(mut s: UnixStream, n: usize) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).unwrap();
        buf
    })
}

#[test]
fn host_initiated_round_trip_with_credit() {
    let mut g = Guest::new();
    let (host, local) = host_connect(&mut g, 1234);

    // host -> guest: 300 KiB through a 64 KiB guest window.
    let down = pattern(300 * 1024, 7);
    let mut w = host.try_clone().unwrap();
    let d2 = down.clone();
    let writer = std::thread::spawn(move || w.write_all(&d2).unwrap());
    let got = guest_receive(&mut g, local, 1234, down.len());
    writer.join().unwrap();
    assert_eq!(got, down);

    // guest -> host: 400 KiB, respecting the device's 128 KiB window.
    let up = pattern(400 * 1024, 3);
    let reader = spawn_reader(host.try_clone().unwrap(), up.len());
    guest_send(
        &mut g,
        local,
        1234,
        &up,
        (CONN_BUF_SIZE, 0),
        down.len() as u32,
    );
    assert_eq!(reader.join().unwrap(), up);

    // Host closes: the guest gets SHUTDOWN(SEND).
    drop(host);
    let (h, _) = g.recv_skip_credit();
    assert_eq!(h.op, op::SHUTDOWN);
    assert_ne!(h.flags & SHUTDOWN_SEND, 0);
}

#[test]
fn guest_initiated_connection_to_uds_port() {
    let mut g = Guest::new();
    let listener = UnixListener::bind(unix::port_path(&g.uds, 5000)).unwrap();
    g.send(g.header(4000, 5000, op::REQUEST, 0, 0), &[]);
    let (h, _) = g.recv();
    assert_eq!(h.op, op::RESPONSE);
    assert_eq!(
        (h.src_cid, h.src_port, h.dst_cid, h.dst_port),
        (HOST_CID, 5000, CID, 4000)
    );
    let (mut host, _) = listener.accept().unwrap();

    let up = pattern(200 * 1024, 9);
    let reader = spawn_reader(host.try_clone().unwrap(), up.len());
    guest_send(&mut g, 5000, 4000, &up, (h.buf_alloc, h.fwd_cnt), 0);
    assert_eq!(reader.join().unwrap(), up);

    let down = pattern(100 * 1024, 1);
    let mut w = host.try_clone().unwrap();
    let d2 = down.clone();
    let writer = std::thread::spawn(move || w.write_all(&d2).unwrap());
    assert_eq!(guest_receive(&mut g, 5000, 4000, down.len()), down);
    writer.join().unwrap();

    // Guest closes both ways: the device flushes, resets, and the host sees EOF.
    g.send(
        PacketHeader {
            flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
            ..g.header(4000, 5000, op::SHUTDOWN, 0, 0)
        },
        &[],
    );
    let (h, _) = g.recv_skip_credit();
    assert_eq!(h.op, op::RST);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn refused_and_unknown_connections_get_rst() {
    let mut g = Guest::new();
    // Nobody listens on <uds>_6000.
    g.send(g.header(4001, 6000, op::REQUEST, 0, 0), &[]);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, 6000, 4001));
    // Data for a connection that does not exist.
    g.send(g.header(4002, 6001, op::RW, 4, 0), b"abcd");
    assert_eq!(g.recv().0.op, op::RST);
    // A RST for an unknown connection is not answered.
    g.send(g.header(4003, 6002, op::RST, 0, 0), &[]);
    assert!(g.try_recv(Duration::from_millis(50)).is_none());
    // Another destination CID is not routed.
    g.send(
        PacketHeader {
            dst_cid: 77,
            ..g.header(4004, 6003, op::REQUEST, 0, 0)
        },
        &[],
    );
    assert_eq!(g.recv().0.op, op::RST);
    // A spoofed source CID is dropped silently.
    g.send(
        PacketHeader {
            src_cid: 99,
            ..g.header(4005, 6004, op::REQUEST, 0, 0)
        },
        &[],
    );
    assert!(g.try_recv(Duration::from_millis(50)).is_none());
    // A host client with a bad handshake line is closed.
    let mut bad = UnixStream::connect(&g.uds).unwrap();
    bad.write_all(b"HELLO\n").unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(bad.read(&mut buf).unwrap(), 0);
}

#[test]
fn credit_violation_resets_and_memory_stays_bounded() {
    let mut g = Guest::new();
    let (host, local) = host_connect(&mut g, 2222);
    // The host never reads; the guest ignores our credit and floods 4 MiB.
    let chunk = vec![0x5au8; 64 * 1024];
    let mut reset = false;
    for _ in 0..64 {
        g.send(g.header(2222, local, op::RW, chunk.len() as u32, 0), &chunk);
        while let Some((h, _)) = g.try_recv(Duration::from_millis(0)) {
            if h.op == op::RST {
                reset = true;
            }
        }
        if reset {
            break;
        }
    }
    if !reset {
        reset = matches!(g.try_recv(Duration::from_millis(200)), Some((h, _)) if h.op == op::RST);
    }
    assert!(reset, "a guest exceeding its credit is reset");
    // What reached the host is bounded by our buffer plus the kernel socket buffer.
    host.set_nonblocking(true).unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut h = &host;
    loop {
        match h.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(_) => break,
        }
    }
    // Our buffer is dropped on reset, so the host saw at most what its socket
    // buffer absorbed; the flood was cut off long before 4 MiB.
    assert!(
        total < 1024 * 1024,
        "host received {total} bytes of the flood"
    );
}

#[test]
fn connection_and_reset_tables_are_bounded() {
    let mut g = Guest::new();
    let _listener = UnixListener::bind(unix::port_path(&g.uds, 7000)).unwrap();
    let mut responses = 0;
    let mut resets = 0;
    for port in 0..(MAX_CONNECTIONS as u32 + 20) {
        g.send(g.header(10_000 + port, 7000, op::REQUEST, 0, 0), &[]);
        match g.recv().0.op {
            op::RESPONSE => responses += 1,
            op::RST => resets += 1,
            other => panic!("unexpected op {other}"),
        }
    }
    assert_eq!(responses, MAX_CONNECTIONS);
    assert_eq!(resets, 20);

    // With no RX buffers posted, packets for unknown connections queue at most
    // MAX_PENDING_RST resets; the rest are dropped.
    let mut g2 = Guest::new_without_rx();
    for i in 0..(MAX_PENDING_RST as u32 * 3) {
        g2.send(g2.header(20_000 + i, 8000, op::RW, 1, 0), b"x");
    }
    for _ in 0..RX_CHAINS {
        let hdr = g2.drv.alloc(HEADER_SIZE);
        let data = g2.drv.alloc(RX_BUF as usize);
        g2.post_rx(hdr, data);
    }
    let mut rsts = 0;
    while let Some((h, _)) = g2.try_recv(Duration::from_millis(100)) {
        assert_eq!(h.op, op::RST);
        rsts += 1;
    }
    assert_eq!(rsts, MAX_PENDING_RST);
}

impl Guest {
    fn new_without_rx() -> Guest {
        let mut g = Guest::new_inner();
        g.rx_bufs.clear();
        g
    }

    fn new_inner() -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let dev = Vsock::new(CID, &uds).unwrap();
        let mut drv = TestDriver::new(Box::new(dev));
        let f = drv.device_features();
        assert!(drv.negotiate(f));
        for q in 0..3 {
            drv.setup_queue(q, 128);
        }
        drv.driver_ok();
        let tx_hdr = drv.alloc(HEADER_SIZE);
        let tx_data = drv.alloc(64 * 1024);
        Guest {
            drv,
            rx_bufs: HashMap::new(),
            tx_hdr,
            tx_data,
            _dir: dir,
            uds,
        }
    }
}

#[test]
fn hostile_tx_packets_are_dropped() {
    let mut g = Guest::new();
    // Header split across descriptors, header too short, lengths beyond the chain,
    // huge lengths, out-of-range addresses, write-only buffers: none may panic.
    let h = g.header(1, 2, op::RW, 1000, 0).to_bytes();
    g.drv.mem.write_slice(&h, GuestAddress(g.tx_hdr)).unwrap();
    let cases: Vec<Vec<(u64, u32, bool)>> = vec![
        vec![(g.tx_hdr, 10, false)],
        vec![
            (g.tx_hdr, HEADER_SIZE as u32, false),
            (g.tx_data, 10, false),
        ],
        vec![
            (g.tx_hdr, HEADER_SIZE as u32, false),
            (u64::MAX - 100, 1000, false),
        ],
        vec![(g.tx_hdr, u32::MAX, false)],
        vec![(g.tx_hdr, HEADER_SIZE as u32, true)],
        vec![(1 << 40, HEADER_SIZE as u32, false)],
    ];
    for c in cases {
        g.drv.add_chain(1, &c);
        g.drv.wait_used(1);
    }
    let huge = g.header(1, 2, op::RW, u32::MAX, 0);
    g.send(huge, &[]);
    // The split header [0..20) + [20..44) parses; with no connection it gets a RST.
    let hdr = g.header(4100, 9000, op::REQUEST, 0, 0).to_bytes();
    g.drv.mem.write_slice(&hdr, GuestAddress(g.tx_hdr)).unwrap();
    g.drv
        .add_chain(1, &[(g.tx_hdr, 20, false), (g.tx_hdr + 20, 24, false)]);
    g.drv.wait_used(1);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.dst_port), (op::RST, 4100));
    // Still working: a real connection succeeds.
    let (_host, _) = host_connect(&mut g, 77);
}

#[test]
fn uds_path_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.sock");
    let first = Vsock::new(CID, &p).unwrap();
    assert!(matches!(
        Vsock::new(CID, &p),
        Err(crate::virtio::Error::UdsInUse(_))
    ));
    drop(first);
    assert!(!p.exists(), "socket file removed on drop");
    // A stale socket file is replaced.
    let stale = UnixListener::bind(&p).unwrap();
    drop(stale);
    let again = Vsock::new(CID, &p).unwrap();
    drop(again);
    std::fs::write(&p, b"not a socket").unwrap();
    assert!(matches!(
        Vsock::new(CID, &p),
        Err(crate::virtio::Error::UdsNotSocket(_))
    ));
    assert!(matches!(
        Vsock::new(2, Path::new("/tmp/x")),
        Err(crate::virtio::Error::InvalidCid(2))
    ));
    let long = dir.path().join("x".repeat(120));
    assert!(matches!(
        Vsock::new(CID, &long),
        Err(crate::virtio::Error::UdsPathTooLong(_))
    ));
}
