//! virtio-vsock driven like a guest driver would (MMIO registers + real rings),
//! against real Unix sockets on the host side. This module holds the test
//! guest; `flow` checks data and credit, `hostile` checks misbehaving guests.

mod flow;
mod hostile;

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
        crate::seccomp::enable_for_tests_if_requested();
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

impl Guest {
    fn new_without_rx() -> Guest {
        let mut g = Guest::new_inner();
        g.rx_bufs.clear();
        g
    }

    fn new_inner() -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        crate::seccomp::enable_for_tests_if_requested();
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
