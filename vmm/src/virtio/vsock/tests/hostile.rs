//! Misbehaving guests and hosts: refused connections, credit violations,
//! table bounds, malformed chains, socket path errors.

use super::*;

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

#[test]
fn hostile_rx_buffers_are_skipped() {
    let mut g = Guest::new_without_rx();
    // Unusable RX chains first: read-only, too short for a header, huge, out of range.
    let ok_hdr = g.drv.alloc(HEADER_SIZE);
    let ok_data = g.drv.alloc(RX_BUF as usize);
    let bad: Vec<Vec<(u64, u32, bool)>> = vec![
        vec![(ok_hdr, HEADER_SIZE as u32, false)],
        vec![(ok_hdr, 8, true)],
        vec![(ok_hdr, HEADER_SIZE as u32, true), (ok_data, 1 << 30, true)],
        vec![(1 << 40, HEADER_SIZE as u32, true)],
    ];
    for c in &bad {
        g.drv.add_chain(0, c);
    }
    // A packet that needs an RX buffer: the RST for an unknown connection.
    g.send(g.header(4200, 9100, op::RW, 1, 0), b"x");
    for _ in 0..bad.len() {
        let (_, len) = g.drv.wait_used(0);
        assert_eq!(len, 0, "unusable buffers come back empty");
    }
    g.post_rx(ok_hdr, ok_data);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.dst_port), (op::RST, 4200));
}
